/* oauth_int.h - declarations shared inside oauth/ only: the parsed signing keys, client
 * verification keys and sealing
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_OAUTH_INT_H
#define CIBAD_OAUTH_INT_H

#include <openssl/evp.h>

#include "oauth/oauth.h"

/* The one JWS algorithm cibad signs with, and the size of a P-256 coordinate, scalar
 * and of each half (r, s) of a raw ES256 signature (RFC 7518 section 3.4). */
#define OAUTH_JWS_ALG       "ES256"
#define OAUTH_P256_LEN      32
#define OAUTH_ES256_SIG_LEN (2 * OAUTH_P256_LEN)
/* Maximum length of a compact JWS that oauth_jws_verify accepts. A longer token is
 * rejected before any decoding. */
#define OAUTH_JWS_MAX_LEN 16384

/* One signing key, opened once when its keyset is built. */
struct oauth_key {
    char *kid;       /* RFC 7638 thumbprint */
    const char *alg; /* the only alg accepted with this key: OAUTH_JWS_ALG */
    EVP_PKEY *pkey;  /* the P-256 private key; it also verifies */
    json_t *jwk;     /* the public JWK published in the JWKS */
};

struct oauth_keyset {
    struct oauth_key *keys;
    size_t n;
    const struct oauth_key *signing; /* NULL when every key is retired */
};

/* Returns the key named kid, or NULL. */
const struct oauth_key *oauth_keyset_find(const struct oauth_keyset *ks, const char *kid);

/* One client verification key: an OpenSSL public key, or an HMAC secret for HS256. */
struct oauth_jwk {
    char *kid;             /* NULL when the JWK had none */
    unsigned alg;          /* exactly one OAUTH_ALG_* bit */
    EVP_PKEY *pkey;        /* NULL for HS256 */
    unsigned char *secret; /* HS256 only */
    size_t secret_len;
};

struct oauth_jwk_set {
    struct oauth_jwk **keys;
    size_t n;
};

/* ---- client assertions (RFC 7523) ---------------------------------------------------
 */

/* client_assertion_type of a JWT client assertion (RFC 7523 section 2.2). */
#define OAUTH_ASSERTION_TYPE_JWT "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
/* Clock difference tolerated on exp, nbf and iat, in seconds. */
#define OAUTH_ASSERTION_SKEW_S OAUTH_JWT_CLOCK_SKEW_S
/* Longest lifetime of an assertion: exp at most this far after now and after iat. */
#define OAUTH_ASSERTION_MAX_LIFETIME_S 300
/* The label that seals client_secret_jwt secrets apart from signing keys. */
#define OAUTH_CLIENT_SECRET_SEAL_LABEL "cibad client secret seal v1"

/* What the caller needs from an assertion that passed oauth_assertion_check. */
struct oauth_assertion_claims {
    const char *jti;        /* borrowed from the claims */
    int64_t jti_expires_at; /* Unix seconds until which the jti must stay unused */
};

/* Checks the claims of a verified client assertion for client_id at this server
 * (issuer): iss and sub equal client_id, aud names the issuer or its token or
 * backchannel endpoint (a string or an array), exp is present, not past and at most
 * OAUTH_ASSERTION_MAX_LIFETIME_S ahead, nbf and iat are honoured when present, and jti
 * is a string of 1 to 256 characters. now is Unix seconds. Returns NULL and fills out,
 * or returns a static reason for the log. */
const char *oauth_assertion_check(const json_t *claims, const char *client_id,
                                  const char *issuer, int64_t now,
                                  struct oauth_assertion_claims *out);

#endif
