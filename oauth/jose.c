/* jose.c - compact JWS signing with ES256 and strict verification with ES256, PS256,
 * RS256 and HS256 (RFC 7515, RFC 7518)
 * SPDX-License-Identifier: MIT
 *
 * Built on OpenSSL 3 EVP and jansson rather than libjwt 1.10.2. That libjwt lets the
 * token choose the algorithm and verifies nothing without a key. It also always writes
 * typ "JWT", so it cannot emit RFC 9068 "at+jwt" tokens, and it parses a PEM key on
 * every call. Here the key is parsed once per keyset, and the algorithm comes from the
 * key. The same strict parsing serves cibad's own tokens (oauth_jws_verify) and tokens
 * that clients sign (oauth_jws_verify_with, with the keys of oauth/jwk.c).
 */
#include "oauth/oauth_int.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

/* Signs input with the P-256 key and writes the JOSE form of the signature: r and s as
 * 32-byte big-endian numbers (RFC 7518 section 3.4), not OpenSSL's DER. */
static int es256_sign(EVP_PKEY *pkey, const char *input, size_t input_len,
                      unsigned char out[OAUTH_ES256_SIG_LEN])
{
    unsigned char der[80];
    size_t der_len = sizeof(der);
    const unsigned char *p = der;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig = NULL;
    const BIGNUM *r, *s;
    int rc = -1;

    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) != 1 ||
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, input_len) != 1)
        goto out;
    sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!sig)
        goto out;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, out, OAUTH_P256_LEN) != OAUTH_P256_LEN ||
        BN_bn2binpad(s, out + OAUTH_P256_LEN, OAUTH_P256_LEN) != OAUTH_P256_LEN)
        goto out;
    rc = 0;

out:
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return rc;
}

/* Verifies a raw r||s signature, which must be exactly 64 bytes. */
static bool es256_verify(EVP_PKEY *pkey, const char *input, size_t input_len,
                         const unsigned char *raw, size_t raw_len)
{
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    EVP_MD_CTX *md = NULL;
    int der_len;
    bool ok = false;

    if (raw_len != OAUTH_ES256_SIG_LEN)
        return false;
    sig = ECDSA_SIG_new();
    r = BN_bin2bn(raw, OAUTH_P256_LEN, NULL);
    s = BN_bin2bn(raw + OAUTH_P256_LEN, OAUTH_P256_LEN, NULL);
    if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1)
        goto out;
    r = s = NULL; /* owned by sig now */
    der_len = i2d_ECDSA_SIG(sig, &der);
    md = EVP_MD_CTX_new();
    if (der_len <= 0 || !md ||
        EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) != 1)
        goto out;
    ok = EVP_DigestVerify(md, der, (size_t)der_len, (const unsigned char *)input,
                          input_len) == 1;

out:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    return ok;
}

char *oauth_jws_sign(const struct oauth_keyset *ks, const char *typ, json_t *claims)
{
    const struct oauth_key *key = ks ? ks->signing : NULL;
    unsigned char sig[OAUTH_ES256_SIG_LEN];
    char sig_text[OAUTH_ES256_SIG_LEN * 2];
    char *header_json = NULL, *claims_json = NULL, *header_b64 = NULL, *claims_b64 = NULL;
    char *input = NULL, *token = NULL;
    json_t *header;

    if (!key || !json_is_object(claims)) {
        log_error("cannot sign a JWS: %s",
                  key ? "claims are not an object" : "no current signing key");
        return NULL;
    }

    header = json_pack("{s:s, s:s}", "alg", key->alg, "kid", key->kid);
    if (header && typ)
        json_object_set_new(header, "typ", json_string(typ));
    header_json = header ? json_dumps(header, JSON_COMPACT) : NULL;
    claims_json = json_dumps(claims, JSON_COMPACT);
    json_decref(header);
    if (!header_json || !claims_json) {
        log_error("cannot sign a JWS: encoding the header or claims failed");
        goto out;
    }

    header_b64 = util_b64url_encode_new(header_json, strlen(header_json));
    claims_b64 = util_b64url_encode_new(claims_json, strlen(claims_json));
    input = util_asprintf("%s.%s", header_b64, claims_b64);
    if (es256_sign(key->pkey, input, strlen(input), sig) != 0) {
        log_error("ES256 signing with key %s failed", key->kid);
        goto out;
    }
    util_b64url_encode(sig, sizeof(sig), sig_text);
    token = util_asprintf("%s.%s", input, sig_text);

out:
    free(header_json);
    free(claims_json);
    free(header_b64);
    free(claims_b64);
    free(input);
    return token;
}

/* Decodes one base64url segment and parses it as a JSON object, rejecting duplicate
 * member names (RFC 7515 section 4 requires a parser that does not take the last one
 * silently). Returns a new reference or NULL. */
static json_t *segment_json(const char *b64, size_t len)
{
    size_t cap = len / 4 * 3 + 3, out_len = cap;
    char *buf = util_malloc(cap);
    json_t *obj = NULL;

    if (util_b64url_decode(b64, len, buf, &out_len) == 0)
        obj = json_loadb(buf, out_len, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (obj && !json_is_object(obj)) {
        json_decref(obj);
        obj = NULL;
    }
    return obj;
}

/* Checks the protected header against the keyset and returns the key it names, or
 * NULL. The alg must be exactly the key's alg: "none", HS256 keyed with our public key
 * (the algorithm confusion libjwt allows), other curves and other spellings all fail. */
static const struct oauth_key *header_key(const struct oauth_keyset *ks,
                                          const json_t *header)
{
    const char *alg = json_string_value(json_object_get(header, "alg"));
    const char *kid = json_string_value(json_object_get(header, "kid"));
    const struct oauth_key *key;

    if (!alg || !kid)
        return NULL;
    /* We understand no extension, so any "crit" makes the JWS invalid
     * (RFC 7515 section 4.1.11). */
    if (json_object_get(header, "crit"))
        return NULL;
    key = oauth_keyset_find(ks, kid);
    if (!key || strcmp(alg, key->alg) != 0)
        return NULL;
    return key;
}

/* The parts of a compact JWS that passed the structural checks. */
struct jws_parts {
    size_t len, dot1, dot2; /* token length and the positions of its two dots */
    json_t *header;         /* decoded protected header */
};

/* Checks the structure of a compact JWS: at most OAUTH_JWS_MAX_LEN characters and
 * exactly three non-empty base64url segments (no padding, no whitespace). Fills the
 * length and dot positions of parts, not its header. Returns 0, or -1. */
static int jws_scan(const char *token, struct jws_parts *parts)
{
    size_t len, dot1 = 0, dot2 = 0, dots = 0;

    if (!token)
        return -1;
    len = strnlen(token, OAUTH_JWS_MAX_LEN + 1);
    if (len > OAUTH_JWS_MAX_LEN)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = token[i];

        if (c == '.') {
            if (++dots == 1)
                dot1 = i;
            else
                dot2 = i;
        } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                     (c >= '0' && c <= '9') || c == '-' || c == '_')) {
            return -1;
        }
    }
    if (dots != 2 || dot1 == 0 || dot2 == dot1 + 1 || dot2 + 1 == len)
        return -1;

    parts->len = len;
    parts->dot1 = dot1;
    parts->dot2 = dot2;
    return 0;
}

/* Runs jws_scan, then decodes the header, which must be a JSON object without
 * duplicate members. Returns 0, or -1. */
static int jws_split(const char *token, struct jws_parts *parts)
{
    if (jws_scan(token, parts) != 0)
        return -1;
    parts->header = segment_json(token, parts->dot1);
    return parts->header ? 0 : -1;
}

/* Decodes the signature segment into a new buffer of at most max bytes. */
static unsigned char *jws_signature(const char *token, const struct jws_parts *parts,
                                    size_t max, size_t *sig_len)
{
    unsigned char *sig = util_malloc(max + 3);

    *sig_len = max + 3;
    if (util_b64url_decode(token + parts->dot2 + 1, parts->len - parts->dot2 - 1, sig,
                           sig_len) != 0 ||
        *sig_len > max) {
        free(sig);
        return NULL;
    }
    return sig;
}

/* Returns the claims of a token whose signature checked out, or NULL. */
static json_t *jws_claims(const char *token, const struct jws_parts *parts)
{
    return segment_json(token + parts->dot1 + 1, parts->dot2 - parts->dot1 - 1);
}

json_t *oauth_jws_verify(const struct oauth_keyset *ks, const char *token,
                         json_t **header)
{
    struct jws_parts parts = {0};
    const struct oauth_key *key;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    json_t *claims = NULL;

    if (!ks || jws_split(token, &parts) != 0)
        goto out;
    key = header_key(ks, parts.header);
    if (!key)
        goto out;

    /* The signature is checked before the payload is parsed at all. */
    sig = jws_signature(token, &parts, OAUTH_ES256_SIG_LEN, &sig_len);
    if (!sig || !es256_verify(key->pkey, token, parts.dot2, sig, sig_len))
        goto out;
    claims = jws_claims(token, &parts);

out:
    free(sig);
    if (claims && header) {
        *header = parts.header;
        parts.header = NULL;
    }
    json_decref(parts.header);
    return claims;
}

int oauth_jws_peek(const char *token, json_t **header, json_t **claims)
{
    struct jws_parts parts = {0};
    json_t *payload;

    if (jws_split(token, &parts) != 0)
        return -1;
    payload = jws_claims(token, &parts);
    if (!payload) {
        json_decref(parts.header);
        return -1;
    }
    *header = parts.header;
    *claims = payload;
    return 0;
}

/* Verifies an RSA signature with SHA-256: PSS with MGF1-SHA-256 and a salt as long as
 * the hash for PS256 (RFC 7518 section 3.5), PKCS #1 v1.5 for RS256. The signature must
 * be exactly as long as the modulus. */
static bool rsa_verify(EVP_PKEY *pkey, bool pss, const char *input, size_t input_len,
                       const unsigned char *sig, size_t sig_len)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = false;

    if (!md || sig_len != (size_t)EVP_PKEY_get_size(pkey) ||
        EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pkey) != 1)
        goto out;
    if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
                EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1))
        goto out;
    if (!pss && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
        goto out;
    ok = EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)input, input_len) == 1;

out:
    EVP_MD_CTX_free(md);
    return ok;
}

/* Verifies an HS256 MAC, comparing in constant time. */
static bool hs256_verify(const struct oauth_jwk *key, const char *input, size_t input_len,
                         const unsigned char *sig, size_t sig_len)
{
    unsigned char mac[32];
    bool ok;

    if (sig_len != sizeof(mac))
        return false;
    util_hmac_sha256(key->secret, key->secret_len, input, input_len, mac);
    ok = CRYPTO_memcmp(mac, sig, sizeof(mac)) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

static bool jwk_verify(const struct oauth_jwk *key, const char *input, size_t input_len,
                       const unsigned char *sig, size_t sig_len)
{
    switch (key->alg) {
    case OAUTH_ALG_ES256:
        return es256_verify(key->pkey, input, input_len, sig, sig_len);
    case OAUTH_ALG_PS256:
        return rsa_verify(key->pkey, true, input, input_len, sig, sig_len);
    case OAUTH_ALG_RS256:
        return rsa_verify(key->pkey, false, input, input_len, sig, sig_len);
    case OAUTH_ALG_HS256:
        return hs256_verify(key, input, input_len, sig, sig_len);
    default:
        return false;
    }
}

/* Picks the key of set that the header names and checks the header's alg against it.
 * Returns the key, or NULL with *reason set. */
static const struct oauth_jwk *set_key(const struct oauth_jwk_set *set,
                                       const json_t *header, unsigned allowed_algs,
                                       const char **reason)
{
    const json_t *alg = json_object_get(header, "alg");
    const json_t *kid = json_object_get(header, "kid");
    const struct oauth_jwk *key = NULL;

    if (!json_is_string(alg) || (kid && !json_is_string(kid))) {
        *reason = "the header's alg or kid is missing or not a string";
        return NULL;
    }
    if (json_object_get(header, "crit")) {
        *reason = "the header has crit";
        return NULL;
    }
    for (size_t i = 0; kid && i < set->n; i++) {
        if (set->keys[i]->kid && strcmp(set->keys[i]->kid, json_string_value(kid)) == 0)
            key = set->keys[i];
    }
    if (!kid && set->n == 1)
        key = set->keys[0];
    if (!key) {
        *reason = kid ? "unknown kid" : "no kid, and the client has several keys";
        return NULL;
    }
    /* Exact comparison with the key's own algorithm: "none", "es256" and HS256 over an
     * RSA or EC key all fail here. */
    if (strcmp(json_string_value(alg), oauth_jws_alg_name(key->alg)) != 0) {
        *reason = "the header's alg is not the key's alg";
        return NULL;
    }
    if (!(key->alg & allowed_algs)) {
        *reason = "the key's alg is not allowed here";
        return NULL;
    }
    return key;
}

/* The longest signature of any algorithm: RSA with an 8192-bit modulus. */
#define SIG_MAX 1024

/* Picks the key that header names and checks the signature of token with it. Returns
 * true, or false with *why set. */
static bool set_verify(const struct oauth_jwk_set *set, const char *token,
                       const struct jws_parts *parts, const json_t *header,
                       unsigned allowed_algs, const char **why)
{
    const struct oauth_jwk *key = set_key(set, header, allowed_algs, why);
    unsigned char *sig;
    size_t sig_len = 0;
    bool ok;

    if (!key)
        return false;
    sig = jws_signature(token, parts, SIG_MAX, &sig_len);
    ok = sig && jwk_verify(key, token, parts->dot2, sig, sig_len);
    free(sig);
    if (!ok)
        *why = "the signature does not verify";
    return ok;
}

json_t *oauth_jws_verify_with(const struct oauth_jwk_set *set, const char *token,
                              unsigned allowed_algs, json_t **header, const char **reason)
{
    struct jws_parts parts = {0};
    json_t *claims = NULL;
    const char *why = "the token is not a well-formed compact JWS";

    if (!set || jws_split(token, &parts) != 0)
        goto out;
    /* The signature is checked before the payload is parsed at all. */
    if (!set_verify(set, token, &parts, parts.header, allowed_algs, &why))
        goto out;
    claims = jws_claims(token, &parts);
    if (!claims)
        why = "the payload is not a JSON object";

out:
    if (claims && header) {
        *header = parts.header;
        parts.header = NULL;
    }
    json_decref(parts.header);
    if (!claims && reason)
        *reason = why;
    return claims;
}

bool oauth_jws_verify_peeked(const struct oauth_jwk_set *set, const char *token,
                             const json_t *header, unsigned allowed_algs,
                             const char **reason)
{
    struct jws_parts parts = {0};
    const char *why = "the token is not a well-formed compact JWS";
    bool ok = false;

    if (set && json_is_object(header) && jws_scan(token, &parts) == 0)
        ok = set_verify(set, token, &parts, header, allowed_algs, &why);
    if (!ok && reason)
        *reason = why;
    return ok;
}

char *oauth_half_hash(const char *token)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    /* OpenID Connect Core 1.0 section 3.1.3.6: the left-most half of the hash of the
     * ASCII octets, with the hash of the ID token's alg (SHA-256 for ES256). */
    SHA256((const unsigned char *)token, strlen(token), digest);
    return util_b64url_encode_new(digest, sizeof(digest) / 2);
}
