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

#endif
