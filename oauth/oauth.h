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

/* ---- protocol errors (one table in errors.c) ---------------------------------------- */

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

/* Sends the RFC 6749 section 5.2 error body {"error", "error_description"} with
 * Cache-Control: no-store. description may be NULL for the table's default; it must
 * not contain user input that could be a secret. Adds WWW-Authenticate: Basic on a 401
 * when the request carried Basic credentials, Retry-After on a 503, and Allow on a 405
 * (allow names the methods). Logs the result at info (client errors) or error. */
void oauth_reply_error(struct server_req *sr, enum oauth_endpoint ep, enum oauth_err err,
                       const char *description);

/* ---- client authentication ----------------------------------------------------------- */

struct oauth_client {
    char *client_id;
    char *client_name;
    char *token_endpoint_auth_method;
    char *scope;
    char *backchannel_token_delivery_mode;
    char *grant_types;
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
 * exactly once. */
void oauth_client_authenticate(struct server_req *sr, const struct server_form *form,
                               oauth_client_cb cb, void *arg);

/* Hashes a client secret for storage (SHA-256 hex). */
void oauth_secret_hash(const char *secret, char out[65]);

/* ---- JWS signing keys ------------------------------------------------------------------ */

struct oauth_keyset;

/* Generates a new ES256 (P-256) key. Writes a new kid (the RFC 7638 thumbprint), the
 * private key sealed with AES-256-GCM under a key derived from secret, and the public
 * JWK as JSON text; all three are new strings the caller frees. Returns 0 or -1. */
int oauth_key_generate(const char *secret, char **kid, char **sealed_private,
                       char **public_jwk) MUST_CHECK;

/* Builds a keyset from rows loaded by storage (newest first; the first one whose
 * retired_at is 0 signs). Unseals the private keys with secret. Returns NULL and logs
 * when a key cannot be opened. */
struct oauth_keyset *oauth_keyset_new(const struct storage_key *keys, size_t n,
                                      const char *secret);
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
json_t *oauth_jws_verify(const struct oauth_keyset *ks, const char *token, json_t **header);

/* The left half of SHA-256 of token, base64url: at_hash for ID tokens. new string. */
char *oauth_half_hash(const char *token);

/* ---- endpoints ------------------------------------------------------------------------ */

void oauth_token_handle(struct server_req *sr);
void oauth_discovery_handle(struct server_req *sr);
void oauth_jwks_handle(struct server_req *sr);

#endif
