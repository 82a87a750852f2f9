/* ciba.h - the CIBA backchannel authentication endpoint and the user's approval page
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CIBA_H
#define CIBAD_CIBA_H

#include <stdbool.h>
#include <stddef.h>

#include "util/util.h"

struct server_req;
struct server_worker;

/* POST /bc-authorize (backchannel_authentication_endpoint, CIBA Core 1.0 section 7). */
void ciba_bc_authorize_handle(struct server_req *sr);

/* GET and POST /approve/REF: the page the SMS links to. */
void ciba_approve_handle(struct server_req *sr);

/* Starts the periodic sweep that expires finished requests on this worker's loop. */
void ciba_sweeper_start(struct server_worker *w);
void ciba_sweeper_stop(struct server_worker *w);

/* Starts ping and push delivery on this worker's loop (w->notifier). Every second, and
 * after each ciba_notifier_kick, it claims due notifications from the outbox and POSTs
 * them to the clients' notification endpoints, retrying failures with exponential
 * back-off. Returns 0, or -1 after logging why (a CA file that does not
 * load, for example). */
int ciba_notifier_start(struct server_worker *w);
/* Stops the timers and cancels the attempts in flight; their rows stay claimed until
 * their lease ends, and then any instance retries them. Call it on the worker's thread
 * after its loop stopped and before its database connection is freed. */
void ciba_notifier_stop(struct server_worker *w);
/* Makes the worker's notifier claim due notifications on its next loop iteration,
 * after this worker decided a ping or push request. Does nothing without a notifier. */
void ciba_notifier_kick(struct server_worker *w);

/* Checks a backchannel_client_notification_endpoint at registration: an absolute https
 * URL of at most 2048 characters with a host, no user name, password or fragment. An IP
 * literal or "localhost" host must not be a loopback, private, link-local or otherwise
 * non-public address. allow_loopback accepts loopback addresses, and plain http to a
 * loopback IP literal too. Host names are checked
 * again after each DNS lookup at delivery time. Returns 0, or -1 with the reason in
 * err. */
int ciba_notification_endpoint_check(const char *url, bool allow_loopback, char *err,
                                     size_t err_len) MUST_CHECK;

/* ---- user codes -------------------------------------------------------------------- */

/* Length limits of a user code, in bytes. */
#define CIBA_USER_CODE_MIN 4
#define CIBA_USER_CODE_MAX 64

/* Wrong user codes after which every code of that user is rejected until the operator
 * sets a new one. */
#define CIBA_USER_CODE_MAX_FAILURES 5

/* Checks a user code chosen with `cibad user set-code`: CIBA_USER_CODE_MIN to
 * CIBA_USER_CODE_MAX printable ASCII characters. Returns 0 or -1. */
int ciba_user_code_check(const char *code);

/* Hashes a user code with PBKDF2-HMAC-SHA256 and a random 16-byte salt, as
 * "pbkdf2-sha256$ITERATIONS$SALT$HASH" (base64url). Slow on purpose, so call it off the
 * event loop. Returns a new string, or NULL on failure. */
char *ciba_user_code_hash(const char *code);

/* Completion of ciba_user_code_verify, on the loop thread of the base given: matched
 * is true when the code matches the stored hash. */
typedef void (*ciba_user_code_cb)(void *arg, bool matched);

struct event_base;

/* Verifies code against stored (a ciba_user_code_hash result, or NULL for a user with
 * no code, which never matches but costs the same time) on a thread of a small pool,
 * so PBKDF2 never blocks an event loop, and calls cb on base's loop. Returns 0, or -1
 * when the pool's queue is full and cb will not be called. */
int ciba_user_code_verify(struct event_base *base, const char *stored, const char *code,
                          ciba_user_code_cb cb, void *arg) MUST_CHECK;

#endif
