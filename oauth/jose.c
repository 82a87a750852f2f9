/* jose.c - compact JWS signing and strict verification with ES256 (RFC 7515, RFC 7518)
 * SPDX-License-Identifier: MIT
 *
 * Built on OpenSSL 3 EVP and jansson rather than libjwt 1.10.2. That libjwt lets the
 * token choose the algorithm and verifies nothing without a key. It also always writes
 * typ "JWT", so it cannot emit RFC 9068 "at+jwt" tokens, and it parses a PEM key on
 * every call. Here the key is parsed once per keyset, and the algorithm comes from the
 * key.
 */
#include "oauth/oauth_int.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
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

json_t *oauth_jws_verify(const struct oauth_keyset *ks, const char *token,
                         json_t **header)
{
    size_t len, dot1 = 0, dot2 = 0, dots = 0, sig_len;
    unsigned char sig[OAUTH_ES256_SIG_LEN + 3];
    const struct oauth_key *key;
    json_t *hdr = NULL, *claims = NULL;

    if (!ks || !token)
        return NULL;
    len = strnlen(token, OAUTH_JWS_MAX_LEN + 1);
    if (len > OAUTH_JWS_MAX_LEN)
        return NULL;

    /* Exactly three non-empty base64url segments; no padding, no whitespace. */
    for (size_t i = 0; i < len; i++) {
        char c = token[i];

        if (c == '.') {
            if (++dots == 1)
                dot1 = i;
            else
                dot2 = i;
        } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                     (c >= '0' && c <= '9') || c == '-' || c == '_')) {
            return NULL;
        }
    }
    if (dots != 2 || dot1 == 0 || dot2 == dot1 + 1 || dot2 + 1 == len)
        return NULL;

    hdr = segment_json(token, dot1);
    key = hdr ? header_key(ks, hdr) : NULL;
    if (!key)
        goto fail;

    /* The signature is checked before the payload is parsed at all. */
    sig_len = sizeof(sig);
    if (util_b64url_decode(token + dot2 + 1, len - dot2 - 1, sig, &sig_len) != 0 ||
        !es256_verify(key->pkey, token, dot2, sig, sig_len))
        goto fail;

    claims = segment_json(token + dot1 + 1, dot2 - dot1 - 1);
    if (!claims)
        goto fail;

    if (header)
        *header = hdr;
    else
        json_decref(hdr);
    return claims;

fail:
    json_decref(hdr);
    return NULL;
}

char *oauth_half_hash(const char *token)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    /* OpenID Connect Core 1.0 section 3.1.3.6: the left-most half of the hash of the
     * ASCII octets, with the hash of the ID token's alg (SHA-256 for ES256). */
    SHA256((const unsigned char *)token, strlen(token), digest);
    return util_b64url_encode_new(digest, sizeof(digest) / 2);
}
