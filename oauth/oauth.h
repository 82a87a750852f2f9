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

/* Where an error is sent: some codes map to different statuses (access_denied is 403 at
 * the backchannel endpoint and 400 at the token endpoint). */
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
};

void oauth_client_free(struct oauth_client *c);
/* True when scope (space-separated) lists name. */
bool oauth_scope_has(const char *scope, const char *name);

/* Completion of oauth_client_authenticate: client is NULL unless err is OAUTH_OK, and
 * then the callee owns it (free with oauth_client_free). description is static. */
typedef void (*oauth_client_cb)(void *arg, enum oauth_err err, const char *description,
                                struct oauth_client *client);

/* Authenticates the client of a request by client_secret_basic (RFC 6749 section 2.3.1:
 * the id and secret are form-urlencoded inside Basic) or client_secret_post. Exactly
 * one method per request, and it must be the one registered for the client. Secrets are
 * compared as SHA-256 hashes in constant time. cb is called later, on the loop thread,
 * exactly once. The error is invalid_request for several methods, or for a body
 * client_id that differs from the Basic one. It is invalid_client (401) for missing,
 * unknown or wrong credentials, for an Authorization header that is malformed, too long
 * or not Basic, and for another method than the registered one. It is
 * temporarily_unavailable while the database is down, and otherwise server_error.
 * Copies the claimed client_id into sr->client_id for log lines as soon as it is read,
 * before it is verified: take the authenticated id from client->client_id. */
void oauth_client_authenticate(struct server_req *sr, const struct server_form *form,
                               oauth_client_cb cb, void *arg);

/* Hashes a client secret for storage (SHA-256 hex). */
void oauth_secret_hash(const char *secret, char out[65]);

/* ---- JWS signing keys -------------------------------------------------------------- */

struct oauth_keyset;

/* Generates a new ES256 (P-256) key. Writes a new kid (the RFC 7638 thumbprint), the
 * private key sealed with AES-256-GCM under a key derived from secret, and the public
 * JWK as JSON text; all three are new strings the caller frees. Returns 0 or -1. */
int oauth_key_generate(const char *secret, char **kid, char **sealed_private,
                       char **public_jwk) MUST_CHECK;

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
};

/* Signs an RFC 9068 access token and an ID token (with at_hash and the auth_req_id
 * claim) for grant with the signing key of ks, and returns the token response
 * {"access_token", "token_type": "Bearer", "expires_in", "id_token", "scope"} as a new
 * reference, or NULL when signing failed (no usable signing key). The tokens are
 * bearer secrets: wipe any text dumped from the result before freeing it. */
json_t *oauth_token_response_new(const struct oauth_keyset *ks,
                                 const struct oauth_grant *grant);

/* ---- endpoints --------------------------------------------------------------------- */

void oauth_token_handle(struct server_req *sr);
void oauth_discovery_handle(struct server_req *sr);
void oauth_jwks_handle(struct server_req *sr);

#endif
