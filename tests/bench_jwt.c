/* bench_jwt.c - ES256 and PS256 client assertions (RFC 7523) for the private_key_jwt
 * runs of `make bench`
 * SPDX-License-Identifier: MIT
 *
 *   bench_jwt jwks KEY.pem KID
 *       prints the JWKS {"keys":[...]} with the public half of KEY.pem: a P-256 key
 *       (alg ES256) or an RSA key (alg PS256)
 *   bench_jwt sign KEY.pem KID CLIENT_ID AUD COUNT
 *       prints COUNT compact JWS assertions, one per line, each with iss and sub
 *       CLIENT_ID, aud AUD, iat now, exp now + 300 s and a jti of its own, signed
 *       with the key's algorithm
 *
 * A Lua script in wrk cannot sign an assertion per request fast enough, and the server
 * accepts each jti only once, so bench.sh makes the assertions before a run and the
 * wrk scripts cycle through them. The jti values are 16 random bytes (base64url) from
 * OpenSSL's CSPRNG followed by the line number, so two processes never repeat one.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

/* The server accepts an exp at most 300 s ahead (plus 30 s of skew). */
#define ASSERTION_LIFETIME_S 300
#define P256_COORD_BYTES     32

static void b64url(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i, j = 0;

    for (i = 0; i + 2 < len; i += 3) {
        out[j++] = abc[in[i] >> 2];
        out[j++] = abc[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        out[j++] = abc[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
        out[j++] = abc[in[i + 2] & 63];
    }
    if (len - i == 1) {
        out[j++] = abc[in[i] >> 2];
        out[j++] = abc[(in[i] & 3) << 4];
    } else if (len - i == 2) {
        out[j++] = abc[in[i] >> 2];
        out[j++] = abc[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        out[j++] = abc[(in[i + 1] & 15) << 2];
    }
    out[j] = '\0';
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *key;

    if (!f) {
        perror(path);
        return NULL;
    }
    key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!key || !(EVP_PKEY_is_a(key, "EC") || EVP_PKEY_is_a(key, "RSA"))) {
        fprintf(stderr, "bench_jwt: %s is not a PEM EC or RSA private key\n", path);
        EVP_PKEY_free(key);
        return NULL;
    }
    return key;
}

/* Prints the JWKS of an RSA key: n and e as unsigned big-endian base64url. */
static int print_rsa_jwks(EVP_PKEY *key, const char *kid)
{
    BIGNUM *n = NULL, *e = NULL;
    unsigned char buf[1024];
    char n_text[1400], e_text[16];
    int n_len, e_len, rc = -1;

    if (!EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) ||
        (n_len = BN_num_bytes(n)) > (int)sizeof(buf) || (e_len = BN_num_bytes(e)) > 8) {
        fprintf(stderr, "bench_jwt: the RSA key is unusable or over 8192 bits\n");
        goto out;
    }
    BN_bn2bin(n, buf);
    b64url(buf, (size_t)n_len, n_text);
    BN_bn2bin(e, buf);
    b64url(buf, (size_t)e_len, e_text);
    printf("{\"keys\":[{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"PS256\","
           "\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"}]}\n",
           kid, n_text, e_text);
    rc = 0;
out:
    BN_free(n);
    BN_free(e);
    return rc;
}

static int print_jwks(EVP_PKEY *key, const char *kid)
{
    unsigned char point[1 + 2 * P256_COORD_BYTES];
    char x[64], y[64];
    size_t len = 0;

    if (EVP_PKEY_is_a(key, "RSA"))
        return print_rsa_jwks(key, kid);
    if (!EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point,
                                         sizeof(point), &len) ||
        len != sizeof(point) || point[0] != 4) {
        fprintf(stderr, "bench_jwt: the key is not an uncompressed P-256 key\n");
        return -1;
    }
    b64url(point + 1, P256_COORD_BYTES, x);
    b64url(point + 1 + P256_COORD_BYTES, P256_COORD_BYTES, y);
    printf(
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"sig\",\"alg\":\"ES256\","
        "\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"}]}\n",
        kid, x, y);
    return 0;
}

/* Signs input with PS256 (RSASSA-PSS, SHA-256, MGF1 with SHA-256, a 32-byte salt) into
 * the base64url of the signature. */
static int sign_ps256(EVP_PKEY *key, const char *input, char *out)
{
    unsigned char sig[1024];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = -1;

    if (!md || EVP_PKEY_get_size(key) > (int)sizeof(sig) ||
        EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1 ||
        EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) !=
            1)
        goto out;
    b64url(sig, sig_len, out);
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    return rc;
}

/* Signs input with ES256 into the 86-character base64url of r || s. */
static int sign_es256(EVP_PKEY *key, const char *input, char *out)
{
    unsigned char der[128], raw[2 * P256_COORD_BYTES];
    const unsigned char *p = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig = NULL;
    int rc = -1;

    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, strlen(input)) !=
            1)
        goto out;
    sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!sig ||
        BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, P256_COORD_BYTES) != P256_COORD_BYTES ||
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + P256_COORD_BYTES, P256_COORD_BYTES) !=
            P256_COORD_BYTES)
        goto out;
    b64url(raw, sizeof(raw), out);
    rc = 0;
out:
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return rc;
}

static int print_assertions(EVP_PKEY *key, const char *kid, const char *client_id,
                            const char *aud, long count)
{
    unsigned char nonce[16];
    char header[256], claims[1024], prefix[32], input[2048], signature[1400];
    char json[1024];
    long now = (long)time(NULL);
    bool rsa = EVP_PKEY_is_a(key, "RSA");

    if (RAND_bytes(nonce, sizeof(nonce)) != 1)
        return -1;
    b64url(nonce, sizeof(nonce), prefix);
    snprintf(json, sizeof(json), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
             rsa ? "PS256" : "ES256", kid);
    b64url((const unsigned char *)json, strlen(json), header);
    for (long i = 0; i < count; i++) {
        snprintf(json, sizeof(json),
                 "{\"iss\":\"%s\",\"sub\":\"%s\",\"aud\":\"%s\",\"iat\":%ld,\"exp\":%ld,"
                 "\"jti\":\"%s-%ld\"}",
                 client_id, client_id, aud, now, now + ASSERTION_LIFETIME_S, prefix, i);
        b64url((const unsigned char *)json, strlen(json), claims);
        snprintf(input, sizeof(input), "%s.%s", header, claims);
        if ((rsa ? sign_ps256(key, input, signature)
                 : sign_es256(key, input, signature)) != 0) {
            fprintf(stderr, "bench_jwt: signing failed\n");
            return -1;
        }
        printf("%s.%s\n", input, signature);
    }
    return fflush(stdout) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    EVP_PKEY *key = NULL;
    int rc = -1;

    if (argc == 4 && strcmp(argv[1], "jwks") == 0) {
        key = read_key(argv[2]);
        rc = key ? print_jwks(key, argv[3]) : -1;
    } else if (argc == 7 && strcmp(argv[1], "sign") == 0 && atol(argv[6]) > 0 &&
               strlen(argv[3]) < 64 && strlen(argv[4]) < 128 && strlen(argv[5]) < 256) {
        key = read_key(argv[2]);
        rc = key ? print_assertions(key, argv[3], argv[4], argv[5], atol(argv[6])) : -1;
    } else {
        fprintf(stderr, "usage: bench_jwt jwks KEY.pem KID\n"
                        "       bench_jwt sign KEY.pem KID CLIENT_ID AUD COUNT\n");
    }
    EVP_PKEY_free(key);
    return rc == 0 ? 0 : 1;
}
