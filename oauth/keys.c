/* keys.c - ES256 signing keys: generation, sealing with the server secret, keysets and
 * the JWKS document
 * SPDX-License-Identifier: MIT
 *
 * A private key is stored sealed: "v1." base64url(12-byte nonce) "."
 * base64url(AES-256-GCM ciphertext || 16-byte tag) of its PKCS#8 DER form. The AES key is
 * HMAC-SHA-256(server secret, "cibad signing key seal v1"), so changing the secret makes
 * every stored key unreadable and a wrong secret is detected by the GCM tag.
 * oauth_seal and oauth_unseal use the same format for other secrets, each kind under
 * its own label, so a value sealed for one purpose never opens as another.
 */
#include "oauth/oauth_int.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "storage/storage.h"

#define SEAL_PREFIX    "v1."
#define SEAL_LABEL     "cibad signing key seal v1"
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN   16
/* A sealed P-256 PKCS#8 key is about 200 characters; this leaves room to spare. */
#define SEAL_KEY_MAX_LEN 2048

static void seal_key_derive(const char *secret, const char *label, unsigned char key[32])
{
    util_hmac_sha256(secret, strlen(secret), label, strlen(label), key);
}

/* Encrypts der under the key derived from secret and label. Returns the sealed text or
 * NULL. */
static char *seal(const char *secret, const char *label, const unsigned char *der,
                  size_t der_len)
{
    unsigned char key[32], nonce[SEAL_NONCE_LEN];
    unsigned char *ct = util_malloc(der_len + SEAL_TAG_LEN);
    char *nonce_text = NULL, *ct_text = NULL, *out = NULL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;

    seal_key_derive(secret, label, key);
    util_random_bytes(nonce, sizeof(nonce));
    if (!ctx || der_len > INT_MAX / 2 ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, ct, &len, der, (int)der_len) != 1 ||
        EVP_EncryptFinal_ex(ctx, ct + len, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, ct + len + fin) !=
            1) {
        log_error("sealing a secret failed: AES-256-GCM encryption error");
        goto out;
    }

    nonce_text = util_b64url_encode_new(nonce, sizeof(nonce));
    ct_text = util_b64url_encode_new(ct, (size_t)(len + fin) + SEAL_TAG_LEN);
    out = util_asprintf(SEAL_PREFIX "%s.%s", nonce_text, ct_text);

out:
    OPENSSL_cleanse(key, sizeof(key));
    EVP_CIPHER_CTX_free(ctx);
    free(ct);
    free(nonce_text);
    free(ct_text);
    return out;
}

/* Decrypts a sealed text of at most max_len characters into *der (new buffer; the
 * caller cleanses and frees it). Returns 0, or -1 for a malformed text or a wrong secret
 * or label. */
static int unseal(const char *secret, const char *label, const char *sealed,
                  size_t max_len, unsigned char **der, size_t *der_len)
{
    unsigned char key[32], nonce[SEAL_NONCE_LEN];
    size_t sealed_len = strnlen(sealed, max_len + 1);
    size_t nonce_len = sizeof(nonce), buf_len = sealed_len;
    const char *body, *dot;
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *buf = NULL, *pt = NULL;
    int len = 0, fin = 0, rc = -1;

    if (sealed_len > max_len || strncmp(sealed, SEAL_PREFIX, 3) != 0)
        return -1;
    body = sealed + strlen(SEAL_PREFIX);
    dot = strchr(body, '.');
    buf = util_malloc(buf_len);
    if (!dot || util_b64url_decode(body, (size_t)(dot - body), nonce, &nonce_len) != 0 ||
        nonce_len != sizeof(nonce) ||
        util_b64url_decode(dot + 1, strlen(dot + 1), buf, &buf_len) != 0 ||
        buf_len <= SEAL_TAG_LEN || buf_len > INT_MAX)
        goto out;

    seal_key_derive(secret, label, key);
    ctx = EVP_CIPHER_CTX_new();
    pt = util_malloc(buf_len);
    if (!ctx || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_DecryptUpdate(ctx, pt, &len, buf, (int)(buf_len - SEAL_TAG_LEN)) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN,
                            buf + buf_len - SEAL_TAG_LEN) != 1 ||
        EVP_DecryptFinal_ex(ctx, pt + len, &fin) != 1)
        goto out;

    *der = pt;
    *der_len = (size_t)(len + fin);
    pt = NULL;
    rc = 0;

out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(buf, sealed_len);
    free(buf);
    if (pt) {
        OPENSSL_cleanse(pt, buf_len);
        free(pt);
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

char *oauth_seal(const char *secret, const char *label, const void *data, size_t len)
{
    if (!secret || !*secret || !label)
        return NULL;
    return seal(secret, label, data, len);
}

int oauth_unseal(const char *secret, const char *label, const char *sealed,
                 unsigned char **out, size_t *out_len)
{
    unsigned char *data = NULL;
    size_t len = 0;

    if (!secret || !*secret || !label || !sealed ||
        unseal(secret, label, sealed, OAUTH_SEAL_MAX_LEN, &data, &len) != 0)
        return -1;
    /* unseal's buffer has room for the 16-byte tag past the plaintext, so the text is
     * NUL-terminated without a copy. */
    data[len] = '\0';
    *out = data;
    *out_len = len;
    return 0;
}

/* True when pkey is an EC key on P-256, the only curve ES256 allows. */
static bool key_is_p256(const EVP_PKEY *pkey)
{
    char group[32];

    return EVP_PKEY_is_a(pkey, "EC") &&
           EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL) == 1 &&
           strcmp(group, "prime256v1") == 0;
}

/* Writes the base64url form of one public coordinate, zero-padded to 32 bytes as
 * RFC 7518 section 6.2.1.2 requires. */
static int coordinate_b64url(const EVP_PKEY *pkey, const char *param,
                             char out[OAUTH_P256_LEN * 2])
{
    unsigned char buf[OAUTH_P256_LEN];
    BIGNUM *bn = NULL;
    int rc = -1;

    if (EVP_PKEY_get_bn_param(pkey, param, &bn) == 1 &&
        BN_bn2binpad(bn, buf, sizeof(buf)) == (int)sizeof(buf)) {
        util_b64url_encode(buf, sizeof(buf), out);
        rc = 0;
    }
    BN_free(bn);
    return rc;
}

/* Builds the public JWK of pkey and its RFC 7638 thumbprint, which is its kid: the
 * SHA-256 of the required members in lexicographic order, without whitespace. */
static json_t *public_jwk(const EVP_PKEY *pkey, char **kid)
{
    char x[OAUTH_P256_LEN * 2], y[OAUTH_P256_LEN * 2];
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char *canonical;

    if (!key_is_p256(pkey) || coordinate_b64url(pkey, OSSL_PKEY_PARAM_EC_PUB_X, x) != 0 ||
        coordinate_b64url(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, y) != 0)
        return NULL;

    canonical = util_asprintf(
        "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", x, y);
    SHA256((const unsigned char *)canonical, strlen(canonical), digest);
    free(canonical);
    *kid = util_b64url_encode_new(digest, sizeof(digest));

    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256",
                     "x", x, "y", y, "kid", *kid, "alg", OAUTH_JWS_ALG, "use", "sig");
}

int oauth_key_generate(const char *secret, char **kid, char **sealed_private,
                       char **public_jwk_text)
{
    EVP_PKEY *pkey = NULL;
    PKCS8_PRIV_KEY_INFO *p8 = NULL;
    unsigned char *der = NULL;
    json_t *jwk = NULL;
    char *new_kid = NULL, *sealed = NULL, *jwk_text = NULL;
    int der_len = 0, rc = -1;

    if (!secret || !*secret) {
        log_error("cannot generate a signing key: the server secret is empty");
        return -1;
    }

    pkey = EVP_EC_gen("P-256");
    if (!pkey || !(p8 = EVP_PKEY2PKCS8(pkey)) ||
        (der_len = i2d_PKCS8_PRIV_KEY_INFO(p8, &der)) <= 0) {
        log_error("generating a P-256 signing key failed");
        goto out;
    }
    jwk = public_jwk(pkey, &new_kid);
    sealed = seal(secret, SEAL_LABEL, der, (size_t)der_len);
    if (!jwk || !sealed)
        goto out;
    jwk_text = json_dumps(jwk, JSON_COMPACT);
    if (!jwk_text)
        goto out;

    *kid = new_kid;
    *sealed_private = sealed;
    *public_jwk_text = jwk_text;
    new_kid = sealed = NULL;
    rc = 0;

out:
    if (der) {
        OPENSSL_cleanse(der, (size_t)der_len);
        OPENSSL_free(der);
    }
    PKCS8_PRIV_KEY_INFO_free(p8);
    EVP_PKEY_free(pkey);
    json_decref(jwk);
    free(new_kid);
    free(sealed);
    return rc;
}

/* Opens a sealed PKCS#8 key. Returns the key or NULL. */
static EVP_PKEY *open_private_key(const char *secret, const char *sealed)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t der_len = 0;
    PKCS8_PRIV_KEY_INFO *p8 = NULL;
    EVP_PKEY *pkey = NULL;

    if (unseal(secret, SEAL_LABEL, sealed, SEAL_KEY_MAX_LEN, &der, &der_len) != 0 ||
        der_len > LONG_MAX)
        return NULL;
    p = der;
    p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)der_len);
    if (p8 && p == der + der_len)
        pkey = EVP_PKCS82PKEY(p8);
    PKCS8_PRIV_KEY_INFO_free(p8);
    OPENSSL_cleanse(der, der_len);
    free(der);
    return pkey;
}

/* True when the stored public JWK text has the same x, y and kid as the one derived
 * from the private key, so the JWKS publishes exactly the key that signs. */
static bool stored_jwk_matches(const char *stored_text, const json_t *derived)
{
    static const char *const members[] = {"kty", "crv", "x", "y", "kid"};
    json_t *stored = json_loads(stored_text, JSON_REJECT_DUPLICATES, NULL);
    bool same = json_is_object(stored);

    for (size_t i = 0; same && i < ARRAY_LEN(members); i++) {
        const char *a = json_string_value(json_object_get(stored, members[i]));
        const char *b = json_string_value(json_object_get(derived, members[i]));

        same = a && b && strcmp(a, b) == 0;
    }
    json_decref(stored);
    return same;
}

/* Opens one stored key into k. Returns 0, or -1 after logging why. */
static int key_open(struct oauth_key *k, const struct storage_key *row,
                    const char *secret)
{
    if (!row->kid || !row->alg || !row->private_key || !row->public_jwk) {
        log_error("signing key has a missing column");
        return -1;
    }
    if (strcmp(row->alg, OAUTH_JWS_ALG) != 0) {
        log_error("signing key %s has unsupported alg %s", row->kid, row->alg);
        return -1;
    }
    k->alg = OAUTH_JWS_ALG;
    k->pkey = open_private_key(secret, row->private_key);
    if (!k->pkey) {
        log_error("signing key %s cannot be unsealed: wrong server secret or damaged "
                  "private_key",
                  row->kid);
        return -1;
    }
    k->jwk = public_jwk(k->pkey, &k->kid);
    if (!k->jwk) {
        log_error("signing key %s is not a P-256 key", row->kid);
        return -1;
    }
    if (strcmp(k->kid, row->kid) != 0 || !stored_jwk_matches(row->public_jwk, k->jwk)) {
        log_error("signing key %s: kid or public_jwk does not match the private key",
                  row->kid);
        return -1;
    }
    return 0;
}

/* The key that signs is the current one once it has been published for
 * prepublish_seconds, and until then the key it replaced, so a resource server that
 * cached the JWKS before the rotation never sees a token with an unknown kid. The very
 * first key signs at once, since there is nothing to fall back to. */
int oauth_key_signing_index(const struct storage_key *keys, size_t n,
                            int prepublish_seconds, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        if (keys[i].retired_at != 0)
            continue;
        if (keys[i].created_at > now - prepublish_seconds && i + 1 < n &&
            keys[i + 1].retired_at != 0)
            return (int)i + 1;
        return (int)i;
    }
    return -1;
}

struct oauth_keyset *oauth_keyset_new(const struct storage_key *keys, size_t n,
                                      const char *secret, int prepublish_seconds)
{
    struct oauth_keyset *ks = util_calloc(1, sizeof(*ks));
    int signing;

    if (!secret || !*secret) {
        log_error("cannot open signing keys: the server secret is empty");
        oauth_keyset_free(ks);
        return NULL;
    }
    ks->keys = util_calloc(n ? n : 1, sizeof(*ks->keys));
    for (size_t i = 0; i < n; i++) {
        struct oauth_key *k = &ks->keys[ks->n++];

        if (key_open(k, &keys[i], secret) != 0) {
            oauth_keyset_free(ks);
            return NULL;
        }
        for (size_t j = 0; j + 1 < ks->n; j++) {
            if (strcmp(ks->keys[j].kid, k->kid) == 0) {
                log_error("signing key %s appears twice", k->kid);
                oauth_keyset_free(ks);
                return NULL;
            }
        }
    }
    signing = oauth_key_signing_index(keys, n, prepublish_seconds, util_now_s());
    ks->signing = signing >= 0 ? &ks->keys[signing] : NULL;
    return ks;
}

void oauth_keyset_free(struct oauth_keyset *ks)
{
    if (!ks)
        return;
    for (size_t i = 0; i < ks->n; i++) {
        free(ks->keys[i].kid);
        EVP_PKEY_free(ks->keys[i].pkey);
        json_decref(ks->keys[i].jwk);
    }
    free(ks->keys);
    free(ks);
}

json_t *oauth_keyset_jwks(const struct oauth_keyset *ks)
{
    json_t *keys = json_array();

    for (size_t i = 0; ks && i < ks->n; i++)
        json_array_append_new(keys, json_deep_copy(ks->keys[i].jwk));
    return json_pack("{s:o}", "keys", keys);
}

const char *oauth_keyset_signing_kid(const struct oauth_keyset *ks)
{
    return ks && ks->signing ? ks->signing->kid : NULL;
}

const struct oauth_key *oauth_keyset_find(const struct oauth_keyset *ks, const char *kid)
{
    for (size_t i = 0; ks && i < ks->n; i++) {
        if (strcmp(ks->keys[i].kid, kid) == 0)
            return &ks->keys[i];
    }
    return NULL;
}
