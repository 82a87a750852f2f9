/* ciba_int.h - helpers shared by the files of ciba/
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CIBA_INT_H
#define CIBAD_CIBA_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "oauth/oauth.h"
#include "sms/sms.h"
#include "storage/storage.h"

struct server_worker;
struct storage_approval;

/* Bytes of randomness behind each identifier: 192 bits for auth_req_id (CIBA Core 1.0
 * section 7.3 asks for at least 128 and recommends 160) and 128 bits for the approval
 * link reference. */
#define CIBA_AUTH_REQ_ID_BYTES 24
#define CIBA_REF_BYTES         16
#define CIBA_REF_LEN           22 /* base64url characters of CIBA_REF_BYTES */

/* The maximum length of client_notification_token in characters (CIBA Core 1.0
 * section 7.1). */
#define CIBA_NOTIFICATION_TOKEN_MAX 1024

/* Seals what a ping or push notification needs from the request, the auth_req_id and
 * the client_notification_token, with the server secret. cibad stores only a hash of
 * the auth_req_id otherwise, and the token is a bearer credential, so neither is ever
 * stored in clear. Returns a new string, or NULL when sealing failed. */
char *ciba_notification_secrets_seal(const char *auth_req_id, const char *token);

/* Opens a text made by ciba_notification_secrets_seal and checks that the auth_req_id
 * inside hashes to auth_req_id_hash, so a sealed value copied to another row is
 * rejected. Stores two new strings (wipe them before freeing). Returns 0 or -1. */
int ciba_notification_secrets_open(const char *sealed, const char *auth_req_id_hash,
                                   char **auth_req_id, char **token) MUST_CHECK;

/* Seals and opens the token response pushed to a push client (label of its own). */
char *ciba_push_payload_seal(const char *text);
int ciba_push_payload_open(const char *sealed, char **text) MUST_CHECK;

/* Creates the token response pushed to the client of the approved push request a. It
 * signs an access token and an ID token with w's keys, with auth_time now because the
 * approval is being stored. It adds auth_req_id (CIBA Core 1.0 section 10.3.1) and
 * seals the JSON text. Returns the sealed text (a new string), or NULL after logging why.
 */
char *ciba_push_payload_new(struct server_worker *w, const struct storage_approval *a);

/* True when addr may be a notification endpoint's address: util_netaddr_allowed, the
 * policy that jwks_uri fetches use too. */
bool ciba_address_allowed(const struct sockaddr *addr, bool allow_loopback);

/* ---- login_hint_token (hint_token.c) ---------------------------------------------- */

struct server_req;

/* Completion of ciba_hint_token_verify. On OAUTH_OK, kind and value give the user
 * lookup for the user the token names (value is borrowed until the callback returns).
 * Otherwise err is the reply: invalid_request, expired_login_hint_token,
 * unknown_user_id, temporarily_unavailable or server_error, and description (static, or
 * NULL for the default) goes to the client. */
typedef void (*ciba_hint_token_cb)(void *arg, enum oauth_err err, const char *description,
                                   enum storage_hint_kind kind, const char *value);

/* Verifies a login_hint_token. It must be a compact JWS whose iss is a trusted issuer,
 * signed with the key's own algorithm by one of that issuer's keys (inline, or from its
 * jwks_uri through the worker's cache). exp must not be past, and nbf and iat not in
 * the future, with OAUTH_JWT_SKEW_S of skew. The issuer's configured claim (sub,
 * phone_number or email) then names the user. Returns OAUTH_OK when the check started,
 * and cb then runs exactly once, later, on sr's loop. Returns an error with
 * *description set, and never calls cb, when the token is malformed or too long
 * (invalid_request) or the database is unreachable (temporarily_unavailable). */
enum oauth_err ciba_hint_token_verify(struct server_req *sr, const char *token,
                                      ciba_hint_token_cb cb, void *arg,
                                      const char **description) MUST_CHECK;

/* What goes into one SMS. All strings are copied. */
struct ciba_code_message {
    const char *request_id;
    const char *client_id;
    const char *client_name;
    const char *auth_req_id_hash;
    const char *phone_number;
    const char *binding_message; /* may be NULL */
    const char *code;
    const char *ref;
};

/* Sends the code by SMS in the background, then records the outcome: a "code sent"
 * audit row, or, when the gateway could not take the message, the request ends denied
 * so the client learns it at once instead of polling until expiry. */
void ciba_code_deliver(struct server_worker *w, const struct ciba_code_message *msg);

/* Computes the stored HMAC of a code for a request and resend generation, under the
 * server secret. */
void ciba_code_hmac(const char *auth_req_id_hash, int generation, const char *code,
                    unsigned char out[SMS_OTP_HMAC_LEN]);

/* True when code matches the stored HMAC, compared in constant time. */
bool ciba_code_matches(const char *auth_req_id_hash, int generation, const char *code,
                       const unsigned char *hmac, size_t hmac_len);

#endif
