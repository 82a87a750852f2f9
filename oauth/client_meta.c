/* client_meta.c - the client authentication metadata of `cibad client create`: checks
 * and the credentials to store
 * SPDX-License-Identifier: MIT
 */
#include "oauth/oauth_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "util/http_client.h"
#include "util/netaddr.h"

/* Bytes of randomness in a generated client secret: 256 bits, which also makes it a
 * long enough HS256 key for client_secret_jwt (RFC 7518 section 3.2). */
#define SECRET_BYTES 32
/* Largest jwks document accepted, inline or from a file. */
#define JWKS_TEXT_MAX (64 * 1024)

/* Reads the JSON text of --jwks: the value itself when it starts with "{", otherwise
 * the file it names. Returns a new string, or NULL with the reason in err. */
static char *jwks_text_read(const char *value, char *err, size_t err_len)
{
    FILE *f;
    char *text;
    size_t n;

    value += strspn(value, " \t\r\n");
    if (*value == '{')
        return util_strdup(value);
    f = fopen(value, "r");
    if (!f) {
        snprintf(err, err_len, "cannot read --jwks file %s: %s", value, strerror(errno));
        return NULL;
    }
    text = util_malloc(JWKS_TEXT_MAX + 1);
    n = fread(text, 1, JWKS_TEXT_MAX + 1, f);
    fclose(f);
    if (n > JWKS_TEXT_MAX) {
        snprintf(err, err_len, "--jwks file %s is larger than %d bytes", value,
                 JWKS_TEXT_MAX);
        free(text);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/* The one algorithm all keys of set share, or 0 when they differ. */
static unsigned set_alg(const struct oauth_jwk_set *set)
{
    unsigned alg = oauth_jwk_alg(oauth_jwk_set_get(set, 0));

    for (size_t i = 1; i < oauth_jwk_set_count(set); i++) {
        if (oauth_jwk_alg(oauth_jwk_set_get(set, i)) != alg)
            return 0;
    }
    return alg;
}

/* Checks an inline JWKS: JSON, public keys only, every key usable with alg (0: any
 * one algorithm shared by all keys). Stores the compact JSON and, with need_alg, the
 * alg. */
static int prepare_jwks(const char *value, unsigned alg, bool need_alg,
                        struct oauth_client_credentials *out, char *err, size_t err_len)
{
    char key_err[256];
    char *text = jwks_text_read(value, err, err_len);
    json_error_t json_err;
    json_t *doc = text ? json_loads(text, JSON_REJECT_DUPLICATES, &json_err) : NULL;
    struct oauth_jwk_set *set = NULL;
    int rc = -1;

    if (!text)
        return -1;
    if (!doc) {
        snprintf(err, err_len, "--jwks is not valid JSON: %s (line %d)", json_err.text,
                 json_err.line);
        goto out;
    }
    set = oauth_jwk_set_parse(doc, alg, true, key_err, sizeof(key_err));
    if (!set) {
        snprintf(err, err_len, "invalid --jwks: %s", key_err);
        goto out;
    }
    if (!need_alg) {
        out->jwks = json_dumps(doc, JSON_COMPACT);
        rc = out->jwks ? 0 : -1;
        goto out;
    }
    if (!alg)
        alg = set_alg(set);
    if (!alg) {
        snprintf(err, err_len,
                 "the --jwks keys use different algorithms: give --auth-signing-alg");
        goto out;
    }
    out->jwks = json_dumps(doc, JSON_COMPACT);
    out->signing_alg = oauth_jws_alg_name(alg);
    rc = out->jwks ? 0 : -1;

out:
    oauth_jwk_set_free(set);
    json_decref(doc);
    free(text);
    return rc;
}

/* Generates the client secret; client_secret_jwt stores it sealed, the others as a
 * hash. */
static int prepare_secret(bool sealed, const char *server_secret,
                          struct oauth_client_credentials *out, char *err, size_t err_len)
{
    out->secret = util_random_token(SECRET_BYTES);
    if (!sealed) {
        out->secret_hash = util_malloc(65);
        oauth_secret_hash(out->secret, out->secret_hash);
        return 0;
    }
    if (!server_secret || !*server_secret) {
        snprintf(err, err_len,
                 "client_secret_jwt needs the server secret (setting secret or "
                 "CIBAD_SECRET) to seal the client secret");
        return -1;
    }
    out->secret_sealed =
        oauth_seal(server_secret, OAUTH_CLIENT_SECRET_SEAL_LABEL,
                   (const unsigned char *)out->secret, strlen(out->secret));
    if (!out->secret_sealed) {
        snprintf(err, err_len, "sealing the client secret failed");
        return -1;
    }
    out->signing_alg = "HS256";
    return 0;
}

/* Checks the options that only private_key_jwt takes. */
static int prepare_private_key_jwt(const struct oauth_client_auth_options *o,
                                   struct oauth_client_credentials *out, char *err,
                                   size_t err_len)
{
    unsigned alg = 0;
    char url_err[200];

    if (!o->jwks == !o->jwks_uri) {
        snprintf(err, err_len,
                 "private_key_jwt needs exactly one of --jwks and --jwks-uri");
        return -1;
    }
    if (o->signing_alg) {
        alg = oauth_jws_alg_parse(o->signing_alg);
        if (!(alg & (OAUTH_ALG_ES256 | OAUTH_ALG_PS256 | OAUTH_ALG_RS256))) {
            snprintf(err, err_len,
                     "invalid --auth-signing-alg \"%s\" for private_key_jwt: expected "
                     "ES256, PS256 or RS256",
                     o->signing_alg);
            return -1;
        }
        if (alg == OAUTH_ALG_RS256 && !o->allow_rs256) {
            snprintf(
                err, err_len,
                "RS256 is disabled: set allow_rs256 = true to register RS256 clients");
            return -1;
        }
    }
    if (o->jwks)
        return prepare_jwks(o->jwks, alg, true, out, err, err_len);

    if (!alg) {
        snprintf(err, err_len,
                 "--jwks-uri needs --auth-signing-alg (ES256, PS256 or RS256), because "
                 "its keys are not known before the first fetch");
        return -1;
    }
    if (util_http_url_check(o->jwks_uri, o->allow_http_loopback, true, url_err,
                            sizeof(url_err)) != 0) {
        snprintf(err, err_len, "invalid --jwks-uri: %s", url_err);
        return -1;
    }
    out->jwks_uri = util_strdup(o->jwks_uri);
    out->signing_alg = oauth_jws_alg_name(alg);
    return 0;
}

/* Checks the options of self_signed_tls_client_auth: the keys of the client's
 * certificates, inline or published, and no signing alg. */
static int prepare_self_signed(const struct oauth_client_auth_options *o,
                               struct oauth_client_credentials *out, char *err,
                               size_t err_len)
{
    char url_err[200];

    if (!o->jwks == !o->jwks_uri) {
        snprintf(
            err, err_len,
            "self_signed_tls_client_auth needs exactly one of --jwks and --jwks-uri");
        return -1;
    }
    if (o->signing_alg) {
        snprintf(err, err_len,
                 "--auth-signing-alg is for private_key_jwt and client_secret_jwt only");
        return -1;
    }
    if (o->jwks)
        return prepare_jwks(o->jwks, 0, false, out, err, err_len);
    if (util_http_url_check(o->jwks_uri, o->allow_http_loopback, true, url_err,
                            sizeof(url_err)) != 0) {
        snprintf(err, err_len, "invalid --jwks-uri: %s", url_err);
        return -1;
    }
    out->jwks_uri = util_strdup(o->jwks_uri);
    return 0;
}

/* True when s is a host name: dot-separated labels of letters, digits and "-", at
 * most 253 characters (RFC 1123 section 2.1). */
static bool is_dns_name(const char *s)
{
    size_t label = 0, n = strlen(s);

    if (n == 0 || n > 253)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (isalnum((unsigned char)*p) || *p == '-') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* True when s is printable ASCII without spaces, 1 to max characters long. */
static bool is_visible_ascii(const char *s, size_t max)
{
    size_t n = strlen(s);

    for (const char *p = s; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f)
            return false;
    }
    return n > 0 && n <= max;
}

/* Checks and normalizes the expected subject member of a tls_client_auth client. */
static int prepare_tls_client_auth(const struct oauth_client_auth_options *o,
                                   struct oauth_client_credentials *out, char *err,
                                   size_t err_len)
{
    int members = !!o->tls_subject_dn + !!o->tls_san_dns + !!o->tls_san_uri +
                  !!o->tls_san_ip + !!o->tls_san_email;
    unsigned char ip[16];
    char text[INET6_ADDRSTRLEN], dn_err[200];
    const char *at;

    if (members != 1) {
        snprintf(err, err_len,
                 "tls_client_auth needs exactly one of --tls-subject-dn, --tls-san-dns, "
                 "--tls-san-uri, --tls-san-ip and --tls-san-email");
        return -1;
    }
    if (o->jwks || o->jwks_uri || o->signing_alg) {
        snprintf(err, err_len,
                 "tls_client_auth takes no --jwks, --jwks-uri or "
                 "--auth-signing-alg");
        return -1;
    }
    if (o->tls_subject_dn) {
        X509_NAME *name = oauth_mtls_dn_parse(o->tls_subject_dn, dn_err, sizeof(dn_err));

        if (!name) {
            snprintf(err, err_len, "invalid --tls-subject-dn: %s", dn_err);
            return -1;
        }
        out->tls_subject_dn = oauth_mtls_dn_print(name);
        X509_NAME_free(name);
        return out->tls_subject_dn ? 0 : -1;
    }
    if (o->tls_san_dns) {
        if (!is_dns_name(o->tls_san_dns)) {
            snprintf(err, err_len, "invalid --tls-san-dns: expected a host name");
            return -1;
        }
        out->tls_san_dns = util_strdup(o->tls_san_dns);
        for (char *p = out->tls_san_dns; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        return 0;
    }
    if (o->tls_san_uri) {
        const char *colon = strchr(o->tls_san_uri, ':');
        size_t scheme = colon ? (size_t)(colon - o->tls_san_uri) : 0;

        if (!is_visible_ascii(o->tls_san_uri, 2048) || scheme == 0 ||
            !isalpha((unsigned char)o->tls_san_uri[0]) ||
            strspn(o->tls_san_uri, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789+.-") != scheme) {
            snprintf(err, err_len,
                     "invalid --tls-san-uri: expected an absolute URI such as "
                     "spiffe://example.org/agent");
            return -1;
        }
        out->tls_san_uri = util_strdup(o->tls_san_uri);
        return 0;
    }
    if (o->tls_san_ip) {
        int family = strchr(o->tls_san_ip, ':') ? AF_INET6 : AF_INET;

        if (inet_pton(family, o->tls_san_ip, ip) != 1 ||
            !inet_ntop(family, ip, text, sizeof(text))) {
            snprintf(err, err_len,
                     "invalid --tls-san-ip: expected an IPv4 or IPv6 "
                     "address");
            return -1;
        }
        out->tls_san_ip = util_strdup(text);
        return 0;
    }
    at = strrchr(o->tls_san_email, '@');
    if (!is_visible_ascii(o->tls_san_email, 320) || !at || at == o->tls_san_email ||
        !is_dns_name(at + 1)) {
        snprintf(err, err_len, "invalid --tls-san-email: expected local@domain");
        return -1;
    }
    out->tls_san_email = util_strdup(o->tls_san_email);
    return 0;
}

int oauth_client_credentials_new(const struct oauth_client_auth_options *o,
                                 struct oauth_client_credentials *out, char *err,
                                 size_t err_len)
{
    const char *m = o->method;
    bool secret_jwt = strcmp(m, "client_secret_jwt") == 0;
    bool tls_members = o->tls_subject_dn || o->tls_san_dns || o->tls_san_uri ||
                       o->tls_san_ip || o->tls_san_email;
    int rc;

    memset(out, 0, sizeof(*out));
    if (strcmp(m, "tls_client_auth") == 0) {
        rc = prepare_tls_client_auth(o, out, err, err_len);
    } else if (tls_members) {
        snprintf(err, err_len,
                 "--tls-subject-dn and --tls-san-* are for tls_client_auth "
                 "only");
        rc = -1;
    } else if (strcmp(m, "self_signed_tls_client_auth") == 0) {
        rc = prepare_self_signed(o, out, err, err_len);
    } else if (strcmp(m, "private_key_jwt") == 0) {
        rc = prepare_private_key_jwt(o, out, err, err_len);
    } else if (!secret_jwt && strcmp(m, "client_secret_basic") != 0 &&
               strcmp(m, "client_secret_post") != 0) {
        snprintf(err, err_len,
                 "invalid --auth-method \"%s\": expected private_key_jwt, "
                 "client_secret_jwt, client_secret_basic, client_secret_post, "
                 "tls_client_auth or self_signed_tls_client_auth",
                 m);
        rc = -1;
    } else if (o->jwks || o->jwks_uri) {
        snprintf(err, err_len,
                 "--jwks and --jwks-uri are for private_key_jwt and "
                 "self_signed_tls_client_auth only");
        rc = -1;
    } else if (o->signing_alg && (!secret_jwt || strcmp(o->signing_alg, "HS256") != 0)) {
        snprintf(err, err_len,
                 secret_jwt ? "client_secret_jwt signs with HS256 only"
                            : "--auth-signing-alg is for private_key_jwt and "
                              "client_secret_jwt only");
        rc = -1;
    } else {
        rc = prepare_secret(secret_jwt, o->server_secret, out, err, err_len);
    }
    if (rc != 0)
        oauth_client_credentials_clear(out);
    return rc;
}

void oauth_client_credentials_clear(struct oauth_client_credentials *c)
{
    if (c->secret) {
        OPENSSL_cleanse(c->secret, strlen(c->secret));
        free(c->secret);
    }
    free(c->secret_hash);
    free(c->secret_sealed);
    free(c->jwks);
    free(c->jwks_uri);
    free(c->tls_subject_dn);
    free(c->tls_san_dns);
    free(c->tls_san_uri);
    free(c->tls_san_ip);
    free(c->tls_san_email);
    memset(c, 0, sizeof(*c));
}

/* ---- trusted issuers of login_hint_token ------------------------------------------- */

unsigned oauth_issuer_algs(bool allow_rs256)
{
    return OAUTH_ALG_ES256 | OAUTH_ALG_PS256 | (allow_rs256 ? OAUTH_ALG_RS256 : 0);
}

/* Parses an issuer's inline JWKS strictly and checks each key's algorithm. */
static int issuer_jwks_check(const char *value, unsigned algs, char **jwks_out, char *err,
                             size_t err_len)
{
    char key_err[256];
    char *text = jwks_text_read(value, err, err_len);
    json_error_t json_err;
    json_t *doc = text ? json_loads(text, JSON_REJECT_DUPLICATES, &json_err) : NULL;
    struct oauth_jwk_set *set = NULL;
    int rc = -1;

    if (!text)
        return -1;
    if (!doc) {
        snprintf(err, err_len, "--jwks is not valid JSON: %s (line %d)", json_err.text,
                 json_err.line);
        goto out;
    }
    set = oauth_jwk_set_parse(doc, 0, true, key_err, sizeof(key_err));
    if (!set) {
        snprintf(err, err_len, "invalid --jwks: %s", key_err);
        goto out;
    }
    for (size_t i = 0; i < oauth_jwk_set_count(set); i++) {
        unsigned alg = oauth_jwk_alg(oauth_jwk_set_get(set, i));

        if (!(alg & algs)) {
            snprintf(err, err_len,
                     alg == OAUTH_ALG_RS256
                         ? "invalid --jwks: key %zu is for RS256, which is disabled (set "
                           "allow_rs256 = true)"
                         : "invalid --jwks: key %zu has an algorithm cibad does not "
                           "verify",
                     i);
            goto out;
        }
    }
    *jwks_out = json_dumps(doc, JSON_COMPACT);
    rc = *jwks_out ? 0 : -1;

out:
    oauth_jwk_set_free(set);
    json_decref(doc);
    free(text);
    return rc;
}

/* True unless the host of url is an IP literal that util_netaddr_allowed rejects. A
 * host name is checked after each DNS lookup, when the keys are fetched. */
static bool literal_host_allowed(const char *url, bool allow_loopback)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    struct sockaddr_storage sa = {0};
    struct sockaddr_in *v4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&sa;
    char literal[64] = "";
    size_t len = host ? strlen(host) : 0;
    bool ok = true;

    if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof(literal))
        memcpy(literal, host + 1, len - 2);
    else if (host && len < sizeof(literal))
        memcpy(literal, host, len);
    if (inet_pton(AF_INET, literal, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        ok = util_netaddr_allowed((const struct sockaddr *)&sa, allow_loopback);
    } else if (inet_pton(AF_INET6, literal, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        ok = util_netaddr_allowed((const struct sockaddr *)&sa, allow_loopback);
    }
    if (uri)
        evhttp_uri_free(uri);
    return ok;
}

int oauth_issuer_keys_check(const char *jwks, const char *jwks_uri, bool allow_rs256,
                            bool allow_http_loopback, bool allow_loopback,
                            char **jwks_out, char *err, size_t err_len)
{
    char url_err[200];

    *jwks_out = NULL;
    if (!jwks == !jwks_uri) {
        snprintf(err, err_len, "exactly one of --jwks and --jwks-uri is required");
        return -1;
    }
    if (jwks)
        return issuer_jwks_check(jwks, oauth_issuer_algs(allow_rs256), jwks_out, err,
                                 err_len);
    if (strlen(jwks_uri) > 2048) {
        snprintf(err, err_len, "--jwks-uri is longer than 2048 characters");
        return -1;
    }
    if (util_http_url_check(jwks_uri, allow_http_loopback, true, url_err,
                            sizeof(url_err)) != 0) {
        snprintf(err, err_len, "invalid --jwks-uri: %s", url_err);
        return -1;
    }
    /* Plain http passed util_http_url_check only on a loopback literal. */
    if (!literal_host_allowed(jwks_uri,
                              allow_loopback || strncmp(jwks_uri, "http:", 5) == 0)) {
        snprintf(err, err_len,
                 "invalid --jwks-uri: its address is loopback, private, link-local or "
                 "reserved (set jwks_uri_allow_loopback = true for a loopback one)");
        return -1;
    }
    return 0;
}

const char *oauth_request_signing_alg_check(const char *alg,
                                            const struct oauth_client_credentials *cred,
                                            bool allow_rs256, char *err, size_t err_len)
{
    unsigned bit = oauth_jws_alg_parse(alg);
    char key_err[200];
    json_t *doc;
    struct oauth_jwk_set *set;

    if (!(bit & (OAUTH_ALG_ES256 | OAUTH_ALG_PS256 | OAUTH_ALG_RS256))) {
        snprintf(err, err_len,
                 "invalid --request-signing-alg \"%s\": expected ES256 or PS256 (RS256 "
                 "with request_object_allow_rs256 = true)",
                 alg);
        return NULL;
    }
    if (bit == OAUTH_ALG_RS256 && !allow_rs256) {
        snprintf(err, err_len,
                 "RS256 signed requests are disabled: set request_object_allow_rs256 = "
                 "true to register them");
        return NULL;
    }
    if (!cred->jwks && !cred->jwks_uri) {
        snprintf(err, err_len,
                 "--request-signing-alg needs the client's public keys to verify its "
                 "requests: register it with --auth-method private_key_jwt or "
                 "self_signed_tls_client_auth and --jwks or --jwks-uri");
        return NULL;
    }
    if (!cred->jwks)
        return oauth_jws_alg_name(bit);

    /* Request objects are verified with the inline keys imported for this alg. */
    snprintf(key_err, sizeof(key_err), "the JWKS is not JSON");
    doc = json_loads(cred->jwks, JSON_REJECT_DUPLICATES, NULL);
    set = doc ? oauth_jwk_set_parse(doc, bit, true, key_err, sizeof(key_err)) : NULL;
    json_decref(doc);
    if (!set) {
        snprintf(err, err_len, "the --jwks keys cannot verify %s signed requests: %s",
                 oauth_jws_alg_name(bit), key_err);
        return NULL;
    }
    oauth_jwk_set_free(set);
    return oauth_jws_alg_name(bit);
}
