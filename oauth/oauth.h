/* oauth.h - OAuth 2.0 errors, client authentication, JWS signing keys and the token,
 * discovery and JWKS endpoints
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_OAUTH_H
#define CIBAD_OAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/util.h"

struct server_req;
struct server_form;
struct storage_key;

/* ---- protocol errors (one table in errors.c) --------------------------------------- */

enum oauth_err {
    OAUTH_OK = 0,
    OAUTH_ERR_INVALID_REQUEST,
    OAUTH_ERR_INVALID_CLIENT,
    OAUTH_ERR_INVALID_GRANT,
    OAUTH_ERR_UNAUTHORIZED_CLIENT,
    OAUTH_ERR_UNSUPPORTED_GRANT_TYPE,
    OAUTH_ERR_INVALID_SCOPE,
    OAUTH_ERR_ACCESS_DENIED,
    OAUTH_ERR_EXPIRED_LOGIN_HINT_TOKEN,
    OAUTH_ERR_UNKNOWN_USER_ID,
    OAUTH_ERR_MISSING_USER_CODE,
    OAUTH_ERR_INVALID_USER_CODE,
    OAUTH_ERR_INVALID_BINDING_MESSAGE,
    OAUTH_ERR_AUTHORIZATION_PENDING,
    OAUTH_ERR_SLOW_DOWN,
    OAUTH_ERR_EXPIRED_TOKEN,
    OAUTH_ERR_SERVER_ERROR,
    OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
    OAUTH_ERR_NOT_FOUND,          /* unknown path: 404 */
    OAUTH_ERR_METHOD_NOT_ALLOWED, /* known path, wrong method: 405 */
    OAUTH_ERR_COUNT
};

/* The endpoint an error is sent from, because some codes map to different statuses
 * (access_denied is 403 at the backchannel endpoint and 400 at the token endpoint). */
enum oauth_endpoint {
    OAUTH_EP_BACKCHANNEL,
    OAUTH_EP_TOKEN,
    OAUTH_EP_OTHER,
};

/* The error code string, for example "invalid_request". */
const char *oauth_err_code(enum oauth_err err);
int oauth_err_status(enum oauth_err err, enum oauth_endpoint ep);

/* The default error_description of err. */
const char *oauth_err_description(enum oauth_err err);

/* Sends the RFC 6749 section 5.2 error body {"error", "error_description"} with
 * Cache-Control: no-store and Pragma: no-cache. description may be NULL for the table's
 * default. It must not contain user input that could be a secret. A description with
 * characters outside %x20-21 / %x23-5B / %x5D-7E is replaced by the default.
 * Adds WWW-Authenticate: Basic realm="cibad" on every 401 (RFC 9110 section 15.5.2
 * requires the header on a 401; RFC 6749 section 5.2 requires the scheme the client
 * used, which is always Basic here) and Retry-After on a 503. For a 405 call
 * oauth_reply_method_not_allowed, which adds the Allow header. Logs the result at info
 * (client errors) or error (server errors). err OAUTH_OK is a caller bug and is sent as
 * server_error. */
void oauth_reply_error(struct server_req *sr, enum oauth_endpoint ep, enum oauth_err err,
                       const char *description);

/* Sends 405 with the body {"error":"invalid_request", ...} and the Allow header set to
 * allow, the methods the path accepts (for example "POST" or "GET, HEAD"). */
void oauth_reply_method_not_allowed(struct server_req *sr, const char *allow);

/* ---- protocol constants ------------------------------------------------------------ */

/* The CIBA grant type (CIBA Core 1.0 section 10.1). */
#define OAUTH_GRANT_TYPE_CIBA "urn:openid:params:grant-type:ciba"
/* The acr value of an authentication by a one-time code sent by SMS. */
#define OAUTH_ACR_SMS_OTP "urn:cibad:acr:sms-otp"
/* The amr values of that authentication (RFC 8176 section 2): "sms" for the
 * confirmation by text message and "otp" for the one-time code. OAUTH_AMR_VALUES
 * expands to both, for an array initializer: const char *amr[] = {OAUTH_AMR_VALUES}. */
#define OAUTH_AMR_SMS    "sms"
#define OAUTH_AMR_OTP    "otp"
#define OAUTH_AMR_VALUES OAUTH_AMR_SMS, OAUTH_AMR_OTP

/* ---- client authentication --------------------------------------------------------- */

struct oauth_client {
    char *client_id;
    char *client_name;
    char *token_endpoint_auth_method;
    char *scope;
    char *backchannel_token_delivery_mode;
    char *grant_types;
    bool backchannel_user_code_parameter; /* the client must send user_code */
    /* x5t#S256 of the TLS client certificate the client authenticated with (RFC 8705),
     * or NULL for the other methods; its access tokens are bound to it. */
    char *cnf_x5t_s256;
    /* Keys and algorithms for JWTs the client signs; NULL when not registered. */
    char *jwks;     /* JSON text {"keys":[...]} */
    char *jwks_uri; /* or the URL where the client publishes its keys */
    char *token_endpoint_auth_signing_alg;
    char *backchannel_authentication_request_signing_alg; /* ES256 | PS256 | RS256 */
};

void oauth_client_free(struct oauth_client *c);
/* True when scope (space-separated) lists name. */
bool oauth_scope_has(const char *scope, const char *name);

/* Completion of oauth_client_authenticate: client is NULL unless err is OAUTH_OK, and
 * then the callee owns it (free with oauth_client_free). description is static. */
typedef void (*oauth_client_cb)(void *arg, enum oauth_err err, const char *description,
                                struct oauth_client *client);

/* Authenticates the client of a request by client_secret_basic (RFC 6749 section 2.3.1:
 * the id and secret are form-urlencoded inside Basic), client_secret_post, or a JWT
 * client assertion (RFC 7523) for private_key_jwt and client_secret_jwt clients.
 * Exactly one method per request, and it must be the one registered for the client.
 * Secrets are compared as SHA-256 hashes in constant time. cb is called later, on the
 * loop thread, exactly once. The error is invalid_request for several methods, or for
 * a body client_id that differs from the Basic one. It is invalid_client (401) for
 * missing, unknown or wrong credentials, for an Authorization header that is
 * malformed, too long or not Basic, for an assertion that fails a check or was used
 * before, and for another method than the registered one. It is
 * temporarily_unavailable while the database is down, and otherwise server_error.
 * Copies the claimed client_id into sr->client_id for log lines as soon as it is read,
 * before it is verified: take the authenticated id from client->client_id. Assertions
 * need server_config (issuer, secret, allow_rs256) and sr->worker->jwks.
 *
 * A request with a TLS client certificate (server_req_client_cert_der) authenticates
 * by it, for tls_client_auth and self_signed_tls_client_auth clients (RFC 8705 section
 * 2). It names the client by the client_id parameter (invalid_client without it) and
 * carries no other credentials (invalid_request otherwise). tls_client_auth needs a
 * certificate verified against tls_client_ca_file that has the registered subject
 * member; self_signed_tls_client_auth needs its public key in the client's jwks or
 * jwks_uri. Any failure is invalid_client. On success client->cnf_x5t_s256 is set. */
void oauth_client_authenticate(struct server_req *sr, const struct server_form *form,
                               oauth_client_cb cb, void *arg);

/* Hashes a client secret for storage (SHA-256 hex). */
void oauth_secret_hash(const char *secret, char out[65]);

/* ---- client registration ----------------------------------------------------------- */

/* The client authentication options of `cibad client create`. */
struct oauth_client_auth_options {
    const char *method;        /* token_endpoint_auth_method */
    const char *jwks;          /* JSON text starting with "{", or a file name; or NULL */
    const char *jwks_uri;      /* or NULL */
    const char *signing_alg;   /* token_endpoint_auth_signing_alg, or NULL */
    const char *server_secret; /* seals a client_secret_jwt secret */
    bool allow_rs256;
    bool allow_http_loopback; /* accept an http:// jwks_uri on a loopback address */
    /* tls_client_auth: exactly one expected subject member (RFC 8705 section 2.1.2). */
    const char *tls_subject_dn; /* RFC 4514 text */
    const char *tls_san_dns;
    const char *tls_san_uri;
    const char *tls_san_ip;
    const char *tls_san_email;
};

/* What is stored for a new client's authentication; strings are owned. */
struct oauth_client_credentials {
    char *secret;        /* generated secret to show once; NULL for private_key_jwt */
    char *secret_hash;   /* client_secret_basic and client_secret_post */
    char *secret_sealed; /* client_secret_jwt */
    char *jwks;          /* compact JSON of the registered jwks */
    char *jwks_uri;
    const char *signing_alg; /* static name, or NULL for secret methods */
    /* tls_client_auth: the one subject member, normalized; the others NULL. */
    char *tls_subject_dn; /* RFC 2253 text as OpenSSL prints the parsed DN */
    char *tls_san_dns;    /* lower case */
    char *tls_san_uri;
    char *tls_san_ip; /* as inet_ntop writes it */
    char *tls_san_email;
};

/* Checks the options and prepares the credentials. private_key_jwt needs exactly one of
 * jwks and jwks_uri. Its keys must be public and fit the signing alg, which is
 * otherwise taken from the keys (required with jwks_uri). RS256 needs allow_rs256.
 * client_secret_jwt takes HS256 only and seals its new secret with server_secret.
 * tls_client_auth needs exactly one tls_* subject member. self_signed_tls_client_auth
 * needs exactly one of jwks and jwks_uri, with keys of any supported type and no
 * signing alg. Neither gets a secret. The secret methods take none of these
 * options. Returns 0, or -1 with a message for the operator in err. */
int oauth_client_credentials_new(const struct oauth_client_auth_options *options,
                                 struct oauth_client_credentials *out, char *err,
                                 size_t err_len) MUST_CHECK;
/* Frees the strings, wiping the secret first. */
void oauth_client_credentials_clear(struct oauth_client_credentials *c);

/* Checks --request-signing-alg, the backchannel_authentication_request_signing_alg of a
 * client whose credentials cred holds: ES256 or PS256, or RS256 with allow_rs256. The
 * client needs public keys to verify its requests with, so cred must have jwks or
 * jwks_uri, and every key of an inline jwks must be usable with the alg. Returns the
 * static name of the alg, or NULL with a message for the operator in err. */
const char *oauth_request_signing_alg_check(const char *alg,
                                            const struct oauth_client_credentials *cred,
                                            bool allow_rs256, char *err, size_t err_len);

/* ---- JWS signing keys -------------------------------------------------------------- */

struct oauth_keyset;

/* Generates a new ES256 (P-256) key. Writes a new kid (the RFC 7638 thumbprint), the
 * private key sealed with AES-256-GCM under a key derived from secret, and the public
 * JWK as JSON text; all three are new strings the caller frees. Returns 0 or -1. */
int oauth_key_generate(const char *secret, char **kid, char **sealed_private,
                       char **public_jwk) MUST_CHECK;

/* Returns the index of the key that signs at time now among keys (newest first, as
 * storage_keys_load lists them), or -1 when there is none: the newest key once it has
 * been published for prepublish_seconds, and until then the key it replaced. */
int oauth_key_signing_index(const struct storage_key *keys, size_t n,
                            int prepublish_seconds, int64_t now);

/* Builds a keyset from rows loaded by storage (newest first). The key whose retired_at
 * is 0 signs once it is prepublish_seconds old; until then the key it replaced signs,
 * so resource servers that cache the JWKS learn a new key before they meet it. Unseals
 * every private key once with secret and keeps the parsed keys, so signing never parses a
 * key again. Also checks that each row's kid and public_jwk match its private key.
 * Returns NULL and logs when a key cannot be opened. A keyset is used by one thread only:
 * each worker builds its own copy, and the cached OpenSSL objects inside are not locked.
 */
struct oauth_keyset *oauth_keyset_new(const struct storage_key *keys, size_t n,
                                      const char *secret, int prepublish_seconds);
void oauth_keyset_free(struct oauth_keyset *ks);
/* The JWKS document {"keys":[...]} with public parts only (new reference). */
json_t *oauth_keyset_jwks(const struct oauth_keyset *ks);
/* The kid of the signing key, or NULL when the set has none. */
const char *oauth_keyset_signing_kid(const struct oauth_keyset *ks);

/* Signs claims as a compact JWS with the current key: header {"alg","kid","typ"} where
 * typ is given (for example "at+jwt" for RFC 9068 access tokens, "JWT" for ID tokens).
 * Returns a new string, or NULL on failure. */
char *oauth_jws_sign(const struct oauth_keyset *ks, const char *typ, json_t *claims);

/* Verifies a compact JWS against the keyset: the kid must name one of its keys and the
 * alg must be that key's alg (never taken from the token alone). On success returns the
 * claims (new reference) and, if header is not NULL, the header (new reference).
 * Checks no claim; callers check exp, aud and the rest. Returns NULL on any failure. */
json_t *oauth_jws_verify(const struct oauth_keyset *ks, const char *token,
                         json_t **header);

/* ---- client keys (RFC 7517 JWK) and client-signed JWS ------------------------------ */

/* The JWS algorithms cibad verifies in tokens that clients sign, as bits, so a caller
 * can pass a set of allowed algorithms. */
enum oauth_jws_alg {
    OAUTH_ALG_ES256 = 1 << 0, /* ECDSA P-256 with SHA-256, raw r||s signature */
    OAUTH_ALG_PS256 = 1 << 1, /* RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt */
    OAUTH_ALG_RS256 = 1 << 2, /* RSASSA-PKCS1-v1_5 with SHA-256 */
    OAUTH_ALG_HS256 = 1 << 3, /* HMAC-SHA-256 under a shared secret */
};

/* The largest number of keys accepted in one client JWKS. */
#define OAUTH_JWKS_MAX_KEYS 20

/* Returns the bit of an algorithm name ("ES256", ...; case-sensitive), or 0 for any
 * other name, "none" included. */
unsigned oauth_jws_alg_parse(const char *name);
/* Returns the name of one algorithm bit, or NULL. */
const char *oauth_jws_alg_name(unsigned alg);

/* One public verification key, parsed once into an OpenSSL key, with the one algorithm
 * it may verify. */
struct oauth_jwk;
/* The verification keys of one client. */
struct oauth_jwk_set;

/* Imports one public JWK: an RSA key of 2048 to 8192 bits (alg PS256 or RS256) or an
 * EC key on P-256 (alg ES256). Rejects private members (d, p, q, dp, dq, qi, oth, k)
 * and every other kty and crv. Also rejects a "use" other than "sig", "key_ops"
 * without "verify", and a JWK alg that does not fit the key or differs from
 * registered_alg (one OAUTH_ALG_* bit, or 0 when the client registered none). The key's
 * algorithm is the JWK's alg, else registered_alg, else ES256 for EC and PS256 for RSA.
 * Returns NULL with the reason in err. */
struct oauth_jwk *oauth_jwk_import(const json_t *jwk, unsigned registered_alg, char *err,
                                   size_t err_len);
void oauth_jwk_free(struct oauth_jwk *key);
/* The key's kid, or NULL when its JWK had none. */
const char *oauth_jwk_kid(const struct oauth_jwk *key);
/* The one OAUTH_ALG_* bit the key verifies. */
unsigned oauth_jwk_alg(const struct oauth_jwk *key);

/* Builds a key set from a JWKS document {"keys":[...]} (RFC 7517 section 5). With
 * strict, every key must import (a JWKS given at registration). Without it, keys that
 * cannot import are skipped, because a published JWKS may also hold encryption keys or
 * key types cibad does not verify. A key with private members still fails the whole
 * set. Fails on a missing keys array, more than OAUTH_JWKS_MAX_KEYS keys, two keys with
 * one kid, or no usable key. Returns NULL with the reason in err. */
struct oauth_jwk_set *oauth_jwk_set_parse(const json_t *jwks, unsigned registered_alg,
                                          bool strict, char *err, size_t err_len);
/* Builds a set of one HS256 key from a shared secret (client_secret_jwt). The secret
 * is copied. Returns NULL when it is shorter than 32 bytes, as RFC 7518 section 3.2
 * requires of an HS256 key. */
struct oauth_jwk_set *oauth_jwk_set_hmac(const void *secret, size_t len);
void oauth_jwk_set_free(struct oauth_jwk_set *set);
size_t oauth_jwk_set_count(const struct oauth_jwk_set *set);
/* Returns the i-th key of the set (i < oauth_jwk_set_count). */
const struct oauth_jwk *oauth_jwk_set_get(const struct oauth_jwk_set *set, size_t i);
/* True when a key of the set has this kid. */
bool oauth_jwk_set_has_kid(const struct oauth_jwk_set *set, const char *kid);

/* Decodes a compact JWS without verifying it, under the structural rules of
 * oauth_jws_verify (length cap, base64url charset, three segments, JSON objects without
 * duplicate members). Used only to learn which client and key a token names before its
 * keys are loaded: nothing read here may be trusted. Returns 0 and two new references,
 * or -1. */
int oauth_jws_peek(const char *token, json_t **header, json_t **claims) MUST_CHECK;

/* Verifies a compact JWS signed by a client with one of its keys. The header's kid
 * picks the key; without a kid the set must hold exactly one key (OpenID Connect Core
 * 1.0 section 10.1). The header's alg must be exactly that key's algorithm and in
 * allowed_algs (OAUTH_ALG_* bits): the key fixes the algorithm, never the token, so
 * "none" or HS256 over a public key never verifies. A "crit" header fails. On success
 * returns the claims (new reference) and, if header is not NULL, the header (new
 * reference). Checks no claim. On failure returns NULL and, if reason is not NULL, sets
 * it to a static text for the log (never for the client). */
json_t *oauth_jws_verify_with(const struct oauth_jwk_set *set, const char *token,
                              unsigned allowed_algs, json_t **header,
                              const char **reason);

/* Verifies a token that oauth_jws_peek has already decoded into header and claims,
 * under the rules of oauth_jws_verify_with, without decoding it again. Returns true
 * when the signature is good, and only then may the caller trust the peeked claims.
 * On failure sets *reason, if reason is not NULL, as oauth_jws_verify_with does. */
bool oauth_jws_verify_peeked(const struct oauth_jwk_set *set, const char *token,
                             const json_t *header, unsigned allowed_algs,
                             const char **reason) MUST_CHECK;

/* Clock difference tolerated on exp, nbf and iat of JWTs that others sign (client
 * assertions, request objects, login_hint_token), in seconds. */
#define OAUTH_JWT_SKEW_S 30

/* Reads the NumericDate claim name (RFC 7519 section 2): a JSON number of seconds, which
 * may have a fraction, from 0 up to the year 5138. Returns 0 (absent), 1 (stored in
 * *out, rounded down) or -1 (not a usable time). */
int oauth_jwt_numeric_date(const json_t *claims, const char *name, int64_t *out);

/* ---- trusted issuers of login_hint_token ------------------------------------------- */

/* The OAUTH_ALG_* bits a login_hint_token may be signed with: ES256 and PS256, and
 * RS256 with allow_rs256. Never HS256: an issuer shares no secret with cibad. */
unsigned oauth_issuer_algs(bool allow_rs256);

/* Checks the keys of `cibad issuer add`: exactly one of jwks (JSON text starting with
 * "{", or the name of a file holding it) and jwks_uri. Every key of the JWKS must be a
 * public key that imports (oauth_jwk_import) with an algorithm of oauth_issuer_algs.
 * The URL must be https, or http to a loopback IP literal with allow_http_loopback.
 * An IP literal host must pass util_netaddr_allowed (loopback with allow_loopback).
 * Stores the compact JWKS text in *jwks_out (a new string; NULL for a jwks_uri).
 * Returns 0, or -1 with a message for the operator in err. */
int oauth_issuer_keys_check(const char *jwks, const char *jwks_uri, bool allow_rs256,
                            bool allow_http_loopback, bool allow_loopback,
                            char **jwks_out, char *err, size_t err_len) MUST_CHECK;

/* ---- client key sets of one worker ------------------------------------------------- */

struct event_base;
struct evdns_base;

/* A worker's cache of the key sets of clients and of trusted login_hint_token issuers:
 * inline jwks documents parsed once, and remote ones fetched from jwks_uri without
 * blocking the loop. Used by one thread only. */
struct oauth_jwks_cache;

struct oauth_jwks_cache_config {
    const char *ca_file;      /* CA bundle for https jwks_uri; NULL: the system store */
    int timeout_ms;           /* one fetch: DNS, connect, TLS and response */
    int ttl_seconds;          /* a fetched set is used this long */
    int refetch_seconds;      /* one URI is fetched at most once in this time */
    bool allow_http_loopback; /* accept http:// on a loopback IP literal (tests) */
    bool allow_loopback;      /* let https fetches reach loopback addresses (tests) */
};

/* Creates a cache on base. dns resolves jwks_uri host names; without it only IP
 * literals can be fetched. Returns NULL when libevent fails. */
struct oauth_jwks_cache *oauth_jwks_cache_new(struct event_base *base,
                                              struct evdns_base *dns,
                                              const struct oauth_jwks_cache_config *cfg);
/* Cancels fetches in flight, calls every waiting callback with an error (inside this
 * call), then frees the cache. NULL is a no-op. */
void oauth_jwks_cache_free(struct oauth_jwks_cache *c);

/* Returns the key set of an inline jwks document (JSON text), imported for the
 * registered alg (an OAUTH_ALG_* bit) and parsed at most once per document. The set
 * stays valid until the next call on this cache. Returns NULL with the reason in err. */
const struct oauth_jwk_set *oauth_jwks_cache_inline(struct oauth_jwks_cache *c,
                                                    const char *jwks_text, unsigned alg,
                                                    char *err, size_t err_len);

/* Returns the cached set of uri when it is fresh and fits kid (has that kid, or for a
 * NULL kid exactly one key), without any fetch; otherwise NULL. The set stays valid
 * until the next call on this cache. */
const struct oauth_jwk_set *oauth_jwks_cache_peek(struct oauth_jwks_cache *c,
                                                  const char *uri, unsigned alg,
                                                  const char *kid);

/* Completion of oauth_jwks_cache_get: set is borrowed until the callback returns, or
 * NULL with error, a static text for the log. */
typedef void (*oauth_jwks_cb)(void *arg, const struct oauth_jwk_set *set,
                              const char *error);

/* Gets the key set published at uri, imported for alg. Fetches it when it is not
 * cached, older than the TTL, or lacks kid (NULL: a token without kid), but at most
 * once per refetch_seconds per URI. cb runs exactly once, later, on the loop thread,
 * never inside this call. */
void oauth_jwks_cache_get(struct oauth_jwks_cache *c, const char *uri, unsigned alg,
                          const char *kid, oauth_jwks_cb cb, void *arg);

/* The left half of SHA-256 of token, base64url: at_hash for ID tokens. new string. */
char *oauth_half_hash(const char *token);

/* ---- sealing secrets at rest ------------------------------------------------------- */

/* The longest sealed text oauth_unseal accepts. */
#define OAUTH_SEAL_MAX_LEN 65536

/* Encrypts len bytes of data with AES-256-GCM under a key derived from the server
 * secret and label (each kind of secret has its own label, for example "cibad
 * notification seal v1"), with a fresh random nonce. Returns the sealed text
 * "v1.NONCE.CIPHERTEXT" (base64url parts; a new string), or NULL on failure. */
char *oauth_seal(const char *secret, const char *label, const void *data, size_t len);

/* Decrypts a text made by oauth_seal with the same secret and label. On success stores
 * a new buffer in *out (NUL-terminated after its *out_len bytes; the caller wipes and
 * frees it) and returns 0. Returns -1 for a malformed or oversized text, a wrong secret
 * or label, or a modified ciphertext. */
int oauth_unseal(const char *secret, const char *label, const char *sealed,
                 unsigned char **out, size_t *out_len) MUST_CHECK;

/* ---- token responses ----------------------------------------------------------------
 */

/* An approved CIBA grant, as the token endpoint redeems it and as push delivery sends
 * it. Strings are borrowed. */
struct oauth_grant {
    const char *client_id;
    const char *subject;
    const char *scope; /* the approved scope */
    const char
        *auth_req_id;  /* for the ID token's urn:openid:params:jwt:claim:auth_req_id */
    int64_t auth_time; /* Unix seconds of the approval */
    /* x5t#S256 of the client certificate the access token is bound to (RFC 8705
     * section 3), or NULL for a bearer token without cnf. */
    const char *cnf_x5t_s256;
};

/* Signs an RFC 9068 access token and an ID token (with at_hash and the auth_req_id
 * claim) for grant with the signing key of ks, and returns the token response
 * {"access_token", "token_type": "Bearer", "expires_in", "id_token", "scope"} as a new
 * reference, or NULL when signing failed (no usable signing key). With
 * grant->cnf_x5t_s256 the access token has the claim cnf {"x5t#S256"}. The tokens are
 * bearer secrets: wipe any text dumped from the result before freeing it. */
json_t *oauth_token_response_new(const struct oauth_keyset *ks,
                                 const struct oauth_grant *grant);

/* ---- endpoints --------------------------------------------------------------------- */

void oauth_token_handle(struct server_req *sr);
void oauth_discovery_handle(struct server_req *sr);
void oauth_jwks_handle(struct server_req *sr);

#endif
