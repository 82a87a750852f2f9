/* client_meta.c - the client authentication metadata of `cibad client create`: checks
 * and the credentials to store
 * SPDX-License-Identifier: MIT
 */
#include "oauth/oauth_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "util/http_client.h"

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
 * one algorithm shared by all keys). Stores the compact JSON and the alg. */
static int prepare_jwks(const char *value, unsigned alg,
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
        return prepare_jwks(o->jwks, alg, out, err, err_len);

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

int oauth_client_credentials_new(const struct oauth_client_auth_options *o,
                                 struct oauth_client_credentials *out, char *err,
                                 size_t err_len)
{
    const char *m = o->method;
    bool secret_jwt = strcmp(m, "client_secret_jwt") == 0;
    int rc;

    memset(out, 0, sizeof(*out));
    if (strcmp(m, "private_key_jwt") == 0) {
        rc = prepare_private_key_jwt(o, out, err, err_len);
    } else if (!secret_jwt && strcmp(m, "client_secret_basic") != 0 &&
               strcmp(m, "client_secret_post") != 0) {
        snprintf(err, err_len,
                 "invalid --auth-method \"%s\": expected private_key_jwt, "
                 "client_secret_jwt, client_secret_basic or client_secret_post",
                 m);
        rc = -1;
    } else if (o->jwks || o->jwks_uri) {
        snprintf(err, err_len, "--jwks and --jwks-uri are for private_key_jwt only");
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
    memset(c, 0, sizeof(*c));
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
                 "requests: register it with --auth-method private_key_jwt and --jwks "
                 "or --jwks-uri");
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
