/* jwk.c - public JWK import (RFC 7517, RFC 7518 section 6) into cached OpenSSL keys, and
 * the key sets of clients
 * SPDX-License-Identifier: MIT
 *
 * A client's key is parsed once into an EVP_PKEY and carries exactly one algorithm, so
 * verification never lets a token choose how its signature is checked. HMAC secrets
 * never come from a JWK: kty "oct" is rejected, and oauth_jwk_set_hmac is the only way
 * to make an HS256 key.
 */
#include "oauth/oauth_int.h"

#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/param_build.h>

/* RSA moduli outside this range are refused: below 2048 bits is too weak (RFC 7518
 * section 3.3 requires at least 2048), above 8192 only costs verification time. */
#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 8192
/* Longest kid accepted. */
#define KID_MAX 256
/* Shortest HS256 secret: the size of the hash output (RFC 7518 section 3.2). */
#define HMAC_MIN_LEN 32

// clang-format off
static const struct {
    unsigned alg;
    const char *name;
} alg_names[] = {
    {OAUTH_ALG_ES256, "ES256"},
    {OAUTH_ALG_PS256, "PS256"},
    {OAUTH_ALG_RS256, "RS256"},
    {OAUTH_ALG_HS256, "HS256"},
};
// clang-format on

/* Members that only a private or symmetric key has (RFC 7518 sections 6.2.2, 6.3.2 and
 * 6.4.1). */
static const char *const private_members[] = {"d",  "p",  "q",   "dp",
                                              "dq", "qi", "oth", "k"};

unsigned oauth_jws_alg_parse(const char *name)
{
    for (size_t i = 0; name && i < ARRAY_LEN(alg_names); i++) {
        if (strcmp(name, alg_names[i].name) == 0)
            return alg_names[i].alg;
    }
    return 0;
}

const char *oauth_jws_alg_name(unsigned alg)
{
    for (size_t i = 0; i < ARRAY_LEN(alg_names); i++) {
        if (alg == alg_names[i].alg)
            return alg_names[i].name;
    }
    return NULL;
}

/* Decodes the base64url string member name of jwk into a new buffer. Returns NULL when
 * it is missing, not a string or not base64url. */
static unsigned char *member_bytes(const json_t *jwk, const char *name, size_t *len)
{
    const char *text = json_string_value(json_object_get(jwk, name));
    size_t text_len = text ? strlen(text) : 0;
    unsigned char *out;

    if (!text || text_len == 0 || text_len > 4096)
        return NULL;
    *len = text_len / 4 * 3 + 3;
    out = util_malloc(*len);
    if (util_b64url_decode(text, text_len, out, len) != 0 || *len == 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* Builds a public key of type "EC" or "RSA" from OpenSSL parameters. */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;

    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    OSSL_PARAM_free(params);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/* Checks the public key with OpenSSL (an EC point on the curve, a sane RSA modulus and
 * exponent) and frees it when the check fails. */
static EVP_PKEY *pkey_checked(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *ctx = pkey ? EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL) : NULL;
    bool ok = ctx && EVP_PKEY_public_check(ctx) == 1;

    EVP_PKEY_CTX_free(ctx);
    if (!ok) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return pkey;
}

/* Imports an EC JWK: P-256 only, x and y of exactly 32 bytes each. */
static EVP_PKEY *ec_import(const json_t *jwk, char *err, size_t err_len)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    unsigned char point[1 + 2 * OAUTH_P256_LEN], *x = NULL, *y = NULL;
    size_t x_len = 0, y_len = 0;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;

    if (!crv || strcmp(crv, "P-256") != 0) {
        snprintf(err, err_len, "unsupported EC curve %s: only P-256 is accepted",
                 crv ? crv : "(missing)");
        return NULL;
    }
    x = member_bytes(jwk, "x", &x_len);
    y = member_bytes(jwk, "y", &y_len);
    if (!x || !y || x_len != OAUTH_P256_LEN || y_len != OAUTH_P256_LEN) {
        snprintf(err, err_len, "x and y must be 32-byte base64url values");
        goto out;
    }
    point[0] = 0x04; /* uncompressed point: 0x04 || x || y */
    memcpy(point + 1, x, OAUTH_P256_LEN);
    memcpy(point + 1 + OAUTH_P256_LEN, y, OAUTH_P256_LEN);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point,
                                          sizeof(point)))
        goto out;
    pkey = pkey_checked(pkey_from_params("EC", bld));
    if (!pkey)
        snprintf(err, err_len, "the EC point is not on P-256");

out:
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

/* Imports an RSA JWK with a modulus of RSA_MIN_BITS to RSA_MAX_BITS. */
static EVP_PKEY *rsa_import(const json_t *jwk, char *err, size_t err_len)
{
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    int bits;

    n = member_bytes(jwk, "n", &n_len);
    e = member_bytes(jwk, "e", &e_len);
    if (!n || !e || e_len > 8) {
        snprintf(err, err_len, "n and e must be base64url values (e of at most 8 bytes)");
        goto out;
    }
    bn_n = BN_bin2bn(n, (int)n_len, NULL);
    bn_e = BN_bin2bn(e, (int)e_len, NULL);
    bits = bn_n ? BN_num_bits(bn_n) : 0;
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
        snprintf(err, err_len, "the RSA key has %d bits: %d to %d are accepted", bits,
                 RSA_MIN_BITS, RSA_MAX_BITS);
        goto out;
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !bn_e || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
        goto out;
    pkey = pkey_checked(pkey_from_params("RSA", bld));
    if (!pkey)
        snprintf(err, err_len, "the RSA public key is invalid");

out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return pkey;
}

/* Checks "use" and "key_ops" (RFC 7517 sections 4.2 and 4.3): the key must be meant
 * for verifying signatures when either is present. */
static int check_usage(const json_t *jwk, char *err, size_t err_len)
{
    const json_t *use = json_object_get(jwk, "use");
    const json_t *ops = json_object_get(jwk, "key_ops");
    bool verify = false;
    size_t i;
    json_t *op;

    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) {
        snprintf(err, err_len, "the key's use is not \"sig\"");
        return -1;
    }
    if (!ops)
        return 0;
    json_array_foreach(ops, i, op)
    {
        if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
            verify = true;
    }
    if (!json_is_array(ops) || !verify) {
        snprintf(err, err_len, "the key's key_ops do not include \"verify\"");
        return -1;
    }
    return 0;
}

/* Settles the key's one algorithm from the JWK's alg, the registered alg and the key
 * type. Returns the OAUTH_ALG_* bit, or 0 with the reason in err. */
static unsigned settle_alg(const json_t *jwk, bool is_ec, unsigned registered_alg,
                           char *err, size_t err_len)
{
    const json_t *member = json_object_get(jwk, "alg");
    unsigned fits = is_ec ? OAUTH_ALG_ES256 : OAUTH_ALG_PS256 | OAUTH_ALG_RS256;
    unsigned alg = registered_alg;

    if (member) {
        alg = oauth_jws_alg_parse(json_string_value(member));
        if (!alg) {
            snprintf(err, err_len, "unsupported alg %s",
                     json_is_string(member) ? json_string_value(member)
                                            : "(not a string)");
            return 0;
        }
        if (registered_alg && alg != registered_alg) {
            snprintf(err, err_len, "the key's alg %s differs from the registered alg %s",
                     oauth_jws_alg_name(alg), oauth_jws_alg_name(registered_alg));
            return 0;
        }
    }
    if (!alg)
        alg = is_ec ? OAUTH_ALG_ES256 : OAUTH_ALG_PS256;
    if (!(alg & fits)) {
        snprintf(err, err_len, "alg %s cannot be used with an %s key",
                 oauth_jws_alg_name(alg), is_ec ? "EC" : "RSA");
        return 0;
    }
    return alg;
}

struct oauth_jwk *oauth_jwk_import(const json_t *jwk, unsigned registered_alg, char *err,
                                   size_t err_len)
{
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    const json_t *kid = json_object_get(jwk, "kid");
    struct oauth_jwk *key;
    unsigned alg;
    bool is_ec;

    if (!json_is_object(jwk)) {
        snprintf(err, err_len, "a key is not a JSON object");
        return NULL;
    }
    for (size_t i = 0; i < ARRAY_LEN(private_members); i++) {
        if (json_object_get(jwk, private_members[i])) {
            snprintf(err, err_len,
                     "the key has the private member \"%s\": register public keys only",
                     private_members[i]);
            return NULL;
        }
    }
    if (!kty || (strcmp(kty, "EC") != 0 && strcmp(kty, "RSA") != 0)) {
        snprintf(err, err_len, "unsupported kty %s: EC (P-256) and RSA are accepted",
                 kty ? kty : "(missing)");
        return NULL;
    }
    if (kid && (!json_is_string(kid) || json_string_length(kid) == 0 ||
                json_string_length(kid) > KID_MAX)) {
        snprintf(err, err_len, "kid must be a string of 1 to %d characters", KID_MAX);
        return NULL;
    }
    is_ec = strcmp(kty, "EC") == 0;
    if (check_usage(jwk, err, err_len) != 0)
        return NULL;
    alg = settle_alg(jwk, is_ec, registered_alg, err, err_len);
    if (!alg)
        return NULL;

    key = util_calloc(1, sizeof(*key));
    key->alg = alg;
    key->pkey = is_ec ? ec_import(jwk, err, err_len) : rsa_import(jwk, err, err_len);
    if (!key->pkey) {
        free(key);
        return NULL;
    }
    key->kid = kid ? util_strdup(json_string_value(kid)) : NULL;
    return key;
}

void oauth_jwk_free(struct oauth_jwk *key)
{
    if (!key)
        return;
    free(key->kid);
    EVP_PKEY_free(key->pkey);
    if (key->secret) {
        OPENSSL_cleanse(key->secret, key->secret_len);
        free(key->secret);
    }
    free(key);
}

const char *oauth_jwk_kid(const struct oauth_jwk *key)
{
    return key->kid;
}

unsigned oauth_jwk_alg(const struct oauth_jwk *key)
{
    return key->alg;
}

static void set_add(struct oauth_jwk_set *set, struct oauth_jwk *key)
{
    set->keys = util_realloc(set->keys, (set->n + 1) * sizeof(*set->keys));
    set->keys[set->n++] = key;
}

/* True when a key of jwk carries a private member; such a set is refused whole, since
 * its owner has published a private key by mistake. */
static bool has_private_member(const json_t *jwk)
{
    for (size_t i = 0; i < ARRAY_LEN(private_members); i++) {
        if (json_object_get(jwk, private_members[i]))
            return true;
    }
    return false;
}

struct oauth_jwk_set *oauth_jwk_set_parse(const json_t *jwks, unsigned registered_alg,
                                          bool strict, char *err, size_t err_len)
{
    const json_t *keys = json_object_get(jwks, "keys");
    struct oauth_jwk_set *set;
    char key_err[200];
    size_t i;
    json_t *jwk;

    if (!json_is_object(jwks) || !json_is_array(keys)) {
        snprintf(err, err_len, "the JWKS is not an object with a \"keys\" array");
        return NULL;
    }
    if (json_array_size(keys) > OAUTH_JWKS_MAX_KEYS) {
        snprintf(err, err_len, "the JWKS has %zu keys: at most %d are accepted",
                 json_array_size(keys), OAUTH_JWKS_MAX_KEYS);
        return NULL;
    }
    set = util_calloc(1, sizeof(*set));
    json_array_foreach(keys, i, jwk)
    {
        struct oauth_jwk *key;

        if (!strict && has_private_member(jwk)) {
            snprintf(err, err_len, "key %zu has a private member", i);
            goto fail;
        }
        key = oauth_jwk_import(jwk, registered_alg, key_err, sizeof(key_err));
        if (!key && strict) {
            snprintf(err, err_len, "key %zu: %s", i, key_err);
            goto fail;
        }
        if (!key) {
            log_debug("JWKS key %zu skipped: %s", i, key_err);
            continue;
        }
        if (key->kid && oauth_jwk_set_has_kid(set, key->kid)) {
            snprintf(err, err_len, "two keys have the kid \"%s\"", key->kid);
            oauth_jwk_free(key);
            goto fail;
        }
        set_add(set, key);
    }
    if (set->n == 0) {
        snprintf(err, err_len, "the JWKS has no key usable for signatures");
        goto fail;
    }
    return set;

fail:
    oauth_jwk_set_free(set);
    return NULL;
}

struct oauth_jwk_set *oauth_jwk_set_hmac(const void *secret, size_t len)
{
    struct oauth_jwk_set *set;
    struct oauth_jwk *key;

    if (!secret || len < HMAC_MIN_LEN)
        return NULL;
    key = util_calloc(1, sizeof(*key));
    key->alg = OAUTH_ALG_HS256;
    key->secret = util_malloc(len);
    memcpy(key->secret, secret, len);
    key->secret_len = len;
    set = util_calloc(1, sizeof(*set));
    set_add(set, key);
    return set;
}

void oauth_jwk_set_free(struct oauth_jwk_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++)
        oauth_jwk_free(set->keys[i]);
    free(set->keys);
    free(set);
}

size_t oauth_jwk_set_count(const struct oauth_jwk_set *set)
{
    return set ? set->n : 0;
}

const struct oauth_jwk *oauth_jwk_set_get(const struct oauth_jwk_set *set, size_t i)
{
    return set->keys[i];
}

bool oauth_jwk_set_has_kid(const struct oauth_jwk_set *set, const char *kid)
{
    for (size_t i = 0; set && kid && i < set->n; i++) {
        if (set->keys[i]->kid && strcmp(set->keys[i]->kid, kid) == 0)
            return true;
    }
    return false;
}
