/* mtls.c - what tls_client_auth and self_signed_tls_client_auth (RFC 8705 section 2)
 * check in a client certificate: the registered subject member, or a registered key
 * SPDX-License-Identifier: MIT
 *
 * A subject DN is compared in OpenSSL's canonical form of an X509_NAME, the form that
 * X509_NAME_cmp and X509_NAME_hash use. In it every string value is converted to UTF-8
 * and loses its leading and trailing white space. Inner runs of white space become one
 * space, and ASCII letters become lower case. The attribute types, their order and the
 * grouping into RDNs must match exactly. So "CN=Agent 1, O=Example" registered matches
 * a certificate whose subject is O=example,CN=agent  1 in X.509 order, but not one that
 * adds an OU.
 */
#include "oauth/oauth_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "storage/storage.h"

/* The maximum number of attribute values in one registered DN, and the maximum length
 * of its text. */
#define DN_MAX_AVAS 32
#define DN_MAX_LEN  1024

struct ava {
    char type[64];
    char value[DN_MAX_LEN + 1];
    size_t value_len;
    bool starts_rdn;
};

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Reads "type=value" from *p up to an unescaped ',' or '+', RFC 4514 section 3
 * escapes included. Leaves *p on that separator or the end. */
static int ava_read(const char **p, struct ava *a, char *err, size_t err_len)
{
    const char *s = *p;
    size_t n = 0, keep = 0; /* keep: length up to the last escaped or non-space byte */

    s += strspn(s, " ");
    while (*s && *s != '=' && *s != ' ' && n < sizeof(a->type) - 1)
        a->type[n++] = *s++;
    a->type[n] = '\0';
    s += strspn(s, " ");
    if (n == 0 || *s != '=') {
        snprintf(err, err_len, "expected TYPE=value at \"%.20s\"", *p);
        return -1;
    }
    s++;
    s += strspn(s, " ");
    if (*s == '#') {
        snprintf(err, err_len, "hex-encoded values (#...) are not supported");
        return -1;
    }
    n = 0;
    while (*s && *s != ',' && *s != '+') {
        int hi, lo;

        if (*s == '\\') {
            hi = hex_digit(s[1]);
            lo = hi >= 0 ? hex_digit(s[2]) : -1;
            if (hi >= 0 && lo >= 0) {
                a->value[n++] = (char)(hi << 4 | lo);
                s += 3;
            } else if (s[1] && strchr(" \"#+,;<=>\\", s[1])) {
                a->value[n++] = s[1];
                s += 2;
            } else {
                snprintf(err, err_len, "invalid escape in the value of %s", a->type);
                return -1;
            }
            keep = n;
        } else {
            a->value[n++] = *s;
            if (*s != ' ')
                keep = n;
            s++;
        }
    }
    a->value_len = keep;
    a->value[keep] = '\0';
    if (keep == 0) {
        snprintf(err, err_len, "the value of %s is empty", a->type);
        return -1;
    }
    if (memchr(a->value, '\0', keep) || !util_utf8_valid(a->value, keep)) {
        snprintf(err, err_len, "the value of %s is not valid UTF-8 text", a->type);
        return -1;
    }
    *p = s;
    return 0;
}

/* Returns the NID of an attribute type name as RFC 4514 writes it (CN, O, OU, C, L, ST,
 * DC, UID, STREET...) or a dotted OID, or NID_undef. */
static int type_nid(const char *type)
{
    char other[64];
    int nid = OBJ_txt2nid(type);

    for (int pass = 0; nid == NID_undef && pass < 2; pass++) {
        size_t i;

        for (i = 0; i < sizeof(other) - 1 && type[i]; i++)
            other[i] = (char)(pass == 0 ? toupper((unsigned char)type[i])
                                        : tolower((unsigned char)type[i]));
        other[i] = '\0';
        nid = OBJ_txt2nid(other);
    }
    return nid;
}

X509_NAME *oauth_mtls_dn_parse(const char *text, char *err, size_t err_len)
{
    struct ava *avas = NULL;
    size_t n = 0;
    X509_NAME *name = NULL;
    const char *p = text;
    bool new_rdn = true;

    if (!text || !*text || strlen(text) > DN_MAX_LEN) {
        snprintf(err, err_len, "the DN is empty or longer than %d characters",
                 DN_MAX_LEN);
        return NULL;
    }
    avas = util_calloc(DN_MAX_AVAS, sizeof(*avas));
    for (;;) {
        if (n == DN_MAX_AVAS) {
            snprintf(err, err_len, "the DN has more than %d attributes", DN_MAX_AVAS);
            goto out;
        }
        avas[n].starts_rdn = new_rdn;
        if (ava_read(&p, &avas[n], err, err_len) != 0)
            goto out;
        n++;
        if (!*p)
            break;
        new_rdn = *p == ',';
        p++;
    }

    /* RFC 4514 writes the most specific RDN first; X.509 stores it last. */
    name = X509_NAME_new();
    if (!name) {
        snprintf(err, err_len, "out of memory");
        goto out;
    }
    for (size_t end = n; end > 0;) {
        size_t start = end - 1;

        while (!avas[start].starts_rdn)
            start--;
        for (size_t i = start; i < end; i++) {
            int nid = type_nid(avas[i].type);

            if (nid == NID_undef) {
                snprintf(err, err_len, "unknown attribute type %s", avas[i].type);
                goto fail;
            }
            if (X509_NAME_add_entry_by_NID(
                    name, nid, MBSTRING_UTF8, (const unsigned char *)avas[i].value,
                    (int)avas[i].value_len, -1, i == start ? 0 : -1) != 1) {
                snprintf(err, err_len, "invalid value for %s", avas[i].type);
                goto fail;
            }
        }
        end = start;
    }
    goto out;
fail:
    X509_NAME_free(name);
    name = NULL;
    ERR_clear_error();
out:
    free(avas);
    return name;
}

char *oauth_mtls_dn_print(const X509_NAME *name)
{
    /* RFC 2253 order and escaping, with UTF-8 kept as it is, and never a #hex value,
     * so that oauth_mtls_dn_parse reads the text back. */
    unsigned long flags =
        XN_FLAG_RFC2253 & ~(ASN1_STRFLGS_ESC_MSB | XN_FLAG_DUMP_UNKNOWN_FIELDS);
    BIO *bio = BIO_new(BIO_s_mem());
    char *data, *text = NULL;
    long len;

    if (bio && X509_NAME_print_ex(bio, name, 0, flags) >= 0) {
        len = BIO_get_mem_data(bio, &data);
        text = util_strndup(data, (size_t)len);
    }
    BIO_free(bio);
    return text;
}

/* True when the ASN1 string contains exactly the len bytes of s, compared as is or
 * ignoring ASCII case. */
static bool asn1_equals(const ASN1_STRING *a, const char *s, size_t len, bool nocase)
{
    const unsigned char *data = ASN1_STRING_get0_data(a);

    if ((size_t)ASN1_STRING_length(a) != len)
        return false;
    return nocase ? strncasecmp((const char *)data, s, len) == 0 && !memchr(data, 0, len)
                  : memcmp(data, s, len) == 0;
}

/* An rfc822Name matches with its local part as is and its domain in any case. */
static bool email_equals(const ASN1_STRING *a, const char *email)
{
    const char *at = strrchr(email, '@');
    size_t local = at ? (size_t)(at - email) : 0;
    const unsigned char *data = ASN1_STRING_get0_data(a);

    if (!at || (size_t)ASN1_STRING_length(a) != strlen(email) ||
        memcmp(data, email, local + 1) != 0)
        return false;
    return asn1_equals(a, email, strlen(email), true);
}

/* True when the certificate has a subjectAltName entry of type with value. */
static bool san_matches(X509 *cert, int type, const char *value)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    unsigned char ip[16];
    int ip_len = 0;
    bool found = false;

    if (type == GEN_IPADD) {
        if (inet_pton(AF_INET, value, ip) == 1)
            ip_len = 4;
        else if (inet_pton(AF_INET6, value, ip) == 1)
            ip_len = 16;
    }
    for (int i = 0; names && !found && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);

        if (gn->type != type)
            continue;
        switch (type) {
        case GEN_DNS:
            found = asn1_equals(gn->d.dNSName, value, strlen(value), true);
            break;
        case GEN_URI:
            found =
                asn1_equals(gn->d.uniformResourceIdentifier, value, strlen(value), false);
            break;
        case GEN_EMAIL:
            found = email_equals(gn->d.rfc822Name, value);
            break;
        case GEN_IPADD:
            found = ip_len > 0 &&
                    asn1_equals(gn->d.iPAddress, (const char *)ip, (size_t)ip_len, false);
            break;
        }
    }
    GENERAL_NAMES_free(names);
    return found;
}

const char *oauth_mtls_subject_check(X509 *cert, const struct storage_client *row)
{
    X509_NAME *expected;
    char err[200];
    bool match;

    if (row->tls_client_auth_subject_dn) {
        expected = oauth_mtls_dn_parse(row->tls_client_auth_subject_dn, err, sizeof(err));
        if (!expected)
            return "the registered tls_client_auth_subject_dn cannot be parsed";
        match = X509_NAME_cmp(X509_get_subject_name(cert), expected) == 0;
        X509_NAME_free(expected);
        return match ? NULL
                     : "the certificate's subject DN differs from the registered one";
    }
    if (row->tls_client_auth_san_dns)
        return san_matches(cert, GEN_DNS, row->tls_client_auth_san_dns)
                   ? NULL
                   : "the certificate has no dNSName SAN equal to the registered one";
    if (row->tls_client_auth_san_uri)
        return san_matches(cert, GEN_URI, row->tls_client_auth_san_uri)
                   ? NULL
                   : "the certificate has no URI SAN equal to the registered one";
    if (row->tls_client_auth_san_ip)
        return san_matches(cert, GEN_IPADD, row->tls_client_auth_san_ip)
                   ? NULL
                   : "the certificate has no iPAddress SAN equal to the registered one";
    if (row->tls_client_auth_san_email)
        return san_matches(cert, GEN_EMAIL, row->tls_client_auth_san_email)
                   ? NULL
                   : "the certificate has no rfc822Name SAN equal to the registered one";
    return "the client has no registered subject member";
}

bool oauth_mtls_key_registered(X509 *cert, const struct oauth_jwk_set *set)
{
    EVP_PKEY *key = X509_get0_pubkey(cert);

    for (size_t i = 0; key && set && i < set->n; i++) {
        if (set->keys[i]->pkey && EVP_PKEY_eq(set->keys[i]->pkey, key) == 1)
            return true;
    }
    return false;
}
