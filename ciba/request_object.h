/* request_object.h - the authentication request parameters of the backchannel endpoint,
 * and signed authentication requests: the request parameter (CIBA Core 1.0 section
 * 7.1.1), shared by bc_authorize.c and request_object.c only
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CIBA_REQUEST_OBJECT_H
#define CIBAD_CIBA_REQUEST_OBJECT_H

#include <stdint.h>

#include <jansson.h>

#include "oauth/oauth.h"

struct server_req;
struct server_form;

/* The authentication request parameters (CIBA Core 1.0 section 7.1), taken either from
 * the form or from a verified request object, and then checked by one validator. Each
 * is NULL when absent; an empty value counts as absent. The strings are borrowed from
 * the form or from the request object's claims. */
struct ciba_bc_params {
    const char *scope;
    const char *client_notification_token;
    const char *acr_values;
    const char *login_hint_token;
    const char *id_token_hint;
    const char *login_hint;
    const char *binding_message;
    const char *user_code;
    const char *requested_expiry; /* decimal text, not yet checked */
};

/* Room for requested_expiry written as decimal text when a request object gives it as
 * a JSON number. */
#define CIBA_EXPIRY_TEXT_LEN 24

/* Maximum length of the request parameter, in characters. Longer tokens are rejected
 * before any decoding, as oauth_jws_verify_with also does. */
#define CIBA_REQUEST_OBJECT_MAX_LEN 16384

/* Maximum lifetime of a request object, exp - nbf, in seconds: 60 minutes, as the FAPI
 * CIBA profile requires. */
#define CIBA_REQUEST_OBJECT_MAX_LIFETIME_S 3600

/* Fills out from the form fields of the same names. */
void ciba_bc_params_from_form(const struct server_form *form, struct ciba_bc_params *out);

/* Returns the name of the first authentication request parameter that the form carries
 * next to a request object (CIBA Core 1.0 section 7.1.1 allows them only inside it),
 * or NULL when there is none. Client authentication parameters may stay outside. */
const char *ciba_request_object_form_conflict(const struct server_form *form);

/* Fills out from the claims of a verified request object. Every parameter must be a
 * JSON string without NUL characters, except requested_expiry, which may also be a
 * JSON integer and is then written into expiry_text. Returns OAUTH_OK, or
 * OAUTH_ERR_INVALID_REQUEST with a static *description. */
enum oauth_err ciba_bc_params_from_claims(const json_t *claims,
                                          char expiry_text[CIBA_EXPIRY_TEXT_LEN],
                                          struct ciba_bc_params *out,
                                          const char **description);

/* The jti of a request object that passed ciba_request_object_check. */
struct ciba_request_object_jti {
    const char *jti;    /* borrowed from the claims */
    int64_t expires_at; /* Unix seconds until which the jti must stay unused */
};

/* Checks the claims of a request object whose signature verified, for client_id at
 * this server. iss (and client_id, when present) must be client_id. aud must be the
 * issuer or the backchannel endpoint URL, as a string or in an array. exp, iat, nbf and
 * jti must be present. exp must not be past, and nbf and iat not in the future, with
 * OAUTH_JWT_SKEW_S of tolerance. exp - nbf must be at most
 * CIBA_REQUEST_OBJECT_MAX_LIFETIME_S, and request and request_uri claims are rejected.
 * now is Unix seconds. Returns NULL and fills out, or returns a static description of the
 * failure. */
const char *ciba_request_object_check(const json_t *claims, const char *client_id,
                                      const char *issuer, int64_t now,
                                      struct ciba_request_object_jti *out);

/* Completion of ciba_request_object_verify: on OAUTH_OK, claims is a new reference the
 * callee owns; otherwise claims is NULL and description static. */
typedef void (*ciba_request_object_cb)(void *arg, enum oauth_err err,
                                       const char *description, json_t *claims);

/* Verifies request, a compact JWS signed by the authenticated client, then records its
 * jti so it is used once. The key comes from the client's jwks or jwks_uri and is
 * chosen by the header's kid. The algorithm is the client's
 * backchannel_authentication_request_signing_alg, or its
 * token_endpoint_auth_signing_alg when it registered none, and must be ES256, PS256, or
 * RS256 with request_object_allow_rs256. The token never chooses it. Every failure is
 * invalid_request (CIBA Core 1.0 section 13), except temporarily_unavailable and
 * server_error for faults of ours. cb runs exactly once, on the loop thread, possibly
 * before this function returns. client must stay valid until then. */
void ciba_request_object_verify(struct server_req *sr, const struct oauth_client *client,
                                const char *request, ciba_request_object_cb cb,
                                void *arg);

#endif
