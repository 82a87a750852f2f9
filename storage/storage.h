/* storage.h - PostgreSQL access for cibad: every SQL statement lives behind this header
 * SPDX-License-Identifier: MIT
 *
 * Two APIs:
 *  - the asynchronous one (struct storage_conn), used by the event loops of `cibad
 *    serve`. One connection per loop thread, driven by that thread's event_base through
 *    libpq's non-blocking API in pipeline mode, so many requests share one connection
 *    and the loop never waits on the database.
 *  - the blocking one (struct storage_sync), used by the command-line subcommands and
 *    at startup, before any loop runs.
 *
 * Asynchronous contract: a storage_* call returns 0 when the statement was queued, and
 * then calls its callback exactly once, later, on the loop thread, never from inside the
 * call itself. It returns -1 when nothing was queued (for example while the database is
 * down, or for a missing required argument), and then the callback is never called.
 * Pointers inside a result struct are borrowed: they stay valid only until the callback
 * returns, and the struct pointer is NULL unless the status is STORAGE_OK. A callback
 * may queue further statements on the same connection, but must not call
 * storage_conn_free on it.
 *
 * Secrets: the layer stores only what callers hand it. Callers hash client secrets,
 * auth_req_id values, approval references and one-time codes before they get here.
 */
#ifndef CIBAD_STORAGE_H
#define CIBAD_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

struct event_base;

enum storage_status {
    STORAGE_OK = 0,
    STORAGE_NOT_FOUND,   /* no row matched */
    STORAGE_LIMITED,     /* a rate limit or cooldown refused the change */
    STORAGE_CONFLICT,    /* the row changed since it was read; read again and retry */
    STORAGE_UNAVAILABLE, /* the database is unreachable or the statement timed out */
    STORAGE_ERROR,       /* any other failure; the details are in the log */
};

/* ---- asynchronous connection ------------------------------------------------------ */

struct storage_conn;

/* Creates a connection bound to base and starts connecting. After a failure it
 * reconnects by itself, with back-off from 100 ms doubling to 5 s, and logs each retry
 * at warn and the recovery at info. A connection attempt is abandoned after 5 s.
 * conninfo is a libpq connection string or URI. Returns NULL when conninfo does not
 * parse or query_timeout_ms is outside 1 to 3600000. Give a unix socket directory or
 * hostaddr=, because libpq resolves a host name with a blocking getaddrinfo().
 * query_timeout_ms bounds each statement, from queueing to result: past it the statement
 * is failed with STORAGE_UNAVAILABLE and the connection is reset, which fails every
 * other queued statement too. The session's statement_timeout is 1 s longer, so the
 * server also ends a statement the client gave up on. */
struct storage_conn *storage_conn_new(struct event_base *base, const char *conninfo,
                                      int query_timeout_ms);
/* Fails every queued statement with STORAGE_UNAVAILABLE (those callbacks run inside
 * this call), then closes. NULL is a no-op. Never call it from a callback of db. */
void storage_conn_free(struct storage_conn *db);
/* True while connected and ready for statements. */
bool storage_conn_is_up(const struct storage_conn *db);
/* Number of statements queued and still waiting for their result, plus client lookups
 * served from the cache whose callback has not run yet. A batch of polls or of jti
 * records counts once. Zero only when no callback is due. */
size_t storage_conn_pending(const struct storage_conn *db);

/* Turns on the client cache of db: storage_client_get keeps each client it found for
 * ttl_ms and serves it from memory until then, with the callback still deferred to the
 * loop. Unknown client_id values are never cached. storage_sync_client_delete notifies
 * every connection (LISTEN/NOTIFY), which drops the client at once; a change made
 * outside storage/ shows after at most ttl_ms. The cache holds at most 1024 clients
 * and is emptied when the connection is lost. 0 leaves it off, the default. Call it
 * once, right after storage_conn_new. Returns 0, or -1 for a negative ttl_ms or a
 * second call. */
int storage_conn_set_client_cache(struct storage_conn *db, int ttl_ms) MUST_CHECK;

/* Generic completion for statements that return no rows of interest. */
typedef void (*storage_done_cb)(void *arg, enum storage_status status);

/* SELECT 1: the readiness probe. */
int storage_ping(struct storage_conn *db, storage_done_cb cb, void *arg) MUST_CHECK;

/* ---- clients ---------------------------------------------------------------------- */

struct storage_client {
    const char *client_id;
    const char *client_name;
    const char *secret_hash;                     /* SHA-256 hex of the secret */
    const char *token_endpoint_auth_method;      /* client_secret_basic | _post */
    const char *scope;                           /* space-separated allowed scopes */
    const char *backchannel_token_delivery_mode; /* poll | ping | push */
    const char *backchannel_client_notification_endpoint; /* NULL for poll */
    const char *grant_types;                              /* space-separated */
    int64_t created_at;                                   /* Unix seconds */
    /* Client authentication by signed JWT (RFC 7523); NULL when not used. */
    const char *jwks;     /* JSON text {"keys":[...]} for private_key_jwt */
    const char *jwks_uri; /* or the URL where the client publishes it */
    const char *token_endpoint_auth_signing_alg; /* ES256 | PS256 | RS256 | HS256 */
    const char *client_secret_sealed;            /* client_secret_jwt: sealed by oauth/ */
    bool backchannel_user_code_parameter;        /* the client must send user_code */
    /* tls_client_auth (RFC 8705 section 2.1.2): exactly one is set, else all NULL. */
    const char *tls_client_auth_subject_dn; /* RFC 2253 string, most specific first */
    const char *tls_client_auth_san_dns;
    const char *tls_client_auth_san_uri;
    const char *tls_client_auth_san_ip; /* IPv4 or IPv6 text, as inet_ntop writes it */
    const char *tls_client_auth_san_email;
    /* The JWS alg of the client's signed authentication requests (ES256 | PS256 |
     * RS256), or NULL when it registered none. */
    const char *backchannel_authentication_request_signing_alg;
};

typedef void (*storage_client_cb)(void *arg, enum storage_status status,
                                  const struct storage_client *client);

/* Loads one client; STORAGE_NOT_FOUND when there is none. With the client cache on
 * (storage_conn_set_client_cache), a client found within the TTL comes from memory. */
int storage_client_get(struct storage_conn *db, const char *client_id,
                       storage_client_cb cb, void *arg) MUST_CHECK;

/* ---- client assertions ------------------------------------------------------------ */

/* Records the jti of a client assertion (RFC 7523) as used until expires_at (Unix
 * seconds), in one INSERT ... ON CONFLICT statement. STORAGE_OK when it was not used
 * before (or only by an assertion that has expired since), STORAGE_CONFLICT when it was
 * already used: a replay. Batched like storage_auth_req_poll. */
int storage_client_assertion_record(struct storage_conn *db, const char *client_id,
                                    const char *jti, int64_t expires_at,
                                    storage_done_cb cb, void *arg) MUST_CHECK;

/* Completion of a statement that deletes rows: count is how many. */
typedef void (*storage_count_cb)(void *arg, enum storage_status status, int count);

/* Deletes up to 1000 recorded jti values whose assertion has expired. */
int storage_client_assertion_purge(struct storage_conn *db, storage_count_cb cb,
                                   void *arg) MUST_CHECK;

/* ---- request objects -------------------------------------------------------------- */

/* Records the jti of a signed authentication request (the request parameter of CIBA
 * Core 1.0 section 7.1.1) as used until expires_at (Unix seconds), with the same
 * contract as storage_client_assertion_record: STORAGE_OK when it was not used before
 * (or only by a request object that has expired since), STORAGE_CONFLICT for a replay.
 * The values are kept apart from client assertion jti values. */
int storage_request_object_record(struct storage_conn *db, const char *client_id,
                                  const char *jti, int64_t expires_at, storage_done_cb cb,
                                  void *arg) MUST_CHECK;

/* Deletes up to 1000 recorded request object jti values that have expired. */
int storage_request_object_purge(struct storage_conn *db, storage_count_cb cb,
                                 void *arg) MUST_CHECK;

/* ---- users ------------------------------------------------------------------------ */

enum storage_hint_kind {
    STORAGE_HINT_PHONE,       /* value is E.164, already normalized */
    STORAGE_HINT_NAME_OR_SUB, /* value is a username or a subject identifier */
    STORAGE_HINT_SUB,         /* value is a subject identifier only (id_token_hint) */
    STORAGE_HINT_EMAIL        /* value is an email address, already lower-cased */
};

struct storage_user {
    const char *subject;
    const char *username;
    const char *phone_number;   /* E.164 */
    const char *user_code_hash; /* NULL when the user has no user code */
    int user_code_failures;     /* wrong user codes since it was set or last matched */
    const char *email;          /* lower-cased, or NULL; set by storage_sync_user_each */
};

typedef void (*storage_user_cb)(void *arg, enum storage_status status,
                                const struct storage_user *user);

/* Finds the user a login_hint names; STORAGE_NOT_FOUND when there is none. A subject
 * match wins over a username match (storage_sync_user_create keeps the two apart). */
int storage_user_find(struct storage_conn *db, enum storage_hint_kind kind,
                      const char *value, storage_user_cb cb, void *arg) MUST_CHECK;

/* Records the outcome of a user code check for a subject: a match resets the count of
 * wrong codes to zero, a wrong code adds one. cb may be NULL. */
int storage_user_code_result(struct storage_conn *db, const char *subject, bool matched,
                             storage_done_cb cb, void *arg) MUST_CHECK;

/* ---- trusted issuers of login_hint_token ------------------------------------------ */

/* An issuer whose signed login_hint_token names a user (CIBA Core 1.0 section 7.1). */
struct storage_issuer {
    const char *issuer;     /* the iss of its tokens */
    const char *jwks;       /* JSON text of its public keys, or NULL */
    const char *jwks_uri;   /* where it publishes them, or NULL; exactly one is set */
    const char *user_claim; /* "sub", "phone_number" or "email" */
    int64_t created_at;     /* Unix seconds; ignored by storage_sync_issuer_add */
};

typedef void (*storage_issuer_cb)(void *arg, enum storage_status status,
                                  const struct storage_issuer *issuer);

/* Finds the trusted issuer whose iss is issuer; STORAGE_NOT_FOUND when there is none. */
int storage_issuer_find(struct storage_conn *db, const char *issuer, storage_issuer_cb cb,
                        void *arg) MUST_CHECK;

/* ---- authentication requests (CIBA) ----------------------------------------------- */

/* The fields the backchannel endpoint stores for a new request. */
struct storage_auth_req_new {
    const char *auth_req_id_hash; /* SHA-256 hex of auth_req_id */
    const char *ref_hash;         /* SHA-256 hex of the approval link reference */
    const char *client_id;
    const char *subject;
    const char *phone_number;
    const char *scope;
    const char *binding_message; /* may be NULL */
    const char *acr_values;      /* may be NULL */
    int expires_in;              /* seconds from now */
    int interval;                /* initial poll interval, seconds */
    const unsigned char *otp_hmac;
    size_t otp_hmac_len;
    int otp_lifetime;         /* seconds the first code stays valid */
    int sms_per_phone_max;    /* codes allowed per phone number ... */
    int sms_per_phone_window; /* ... in this many seconds */
    const char *request_id;   /* for the audit row */
    /* poll, ping or push, as the client is registered; NULL means poll. */
    const char *delivery_mode;
    /* Sealed auth_req_id and client_notification_token, as ciba/ wrote them; required
     * for ping and push, ignored for poll. */
    const char *notification_secrets;
    /* x5t#S256 of the client certificate the client authenticated with, or NULL; a
     * pushed access token is bound to it. */
    const char *cnf_x5t_s256;
};

/* Inserts the request, counts a code against the phone number's quota and appends the
 * "request accepted" audit row, all in one statement. STORAGE_LIMITED when the phone
 * number has reached its quota (nothing is inserted then). */
int storage_auth_req_create(struct storage_conn *db,
                            const struct storage_auth_req_new *in, storage_done_cb cb,
                            void *arg) MUST_CHECK;

/* Appends "code sent" to the audit log. STORAGE_NOT_FOUND when there is no such
 * request. */
int storage_auth_req_code_sent(struct storage_conn *db, const char *auth_req_id_hash,
                               const char *request_id, storage_done_cb cb,
                               void *arg) MUST_CHECK;

/* Ends a pending request as denied because its SMS could not be delivered; reason goes
 * to the audit row. For a ping or push request the same statement queues a "failed"
 * notification. STORAGE_NOT_FOUND when it was no longer pending. */
int storage_auth_req_fail_delivery(struct storage_conn *db, const char *auth_req_id_hash,
                                   const char *reason, const char *request_id,
                                   storage_done_cb cb, void *arg) MUST_CHECK;

/* Outcome of one token request for the CIBA grant. */
enum storage_poll_outcome {
    STORAGE_POLL_PENDING,   /* authorization_pending */
    STORAGE_POLL_SLOW_DOWN, /* polled before interval passed; interval grew by 5 s */
    STORAGE_POLL_REDEEMED,  /* approved, and this call redeemed it: issue tokens */
    STORAGE_POLL_DENIED,    /* access_denied */
    STORAGE_POLL_EXPIRED,   /* expired_token */
    STORAGE_POLL_INVALID,   /* unknown, another client's, or already redeemed */
};

struct storage_poll {
    enum storage_poll_outcome outcome;
    const char *subject;    /* set for REDEEMED */
    const char *scope;      /* the approved scope, set for REDEEMED */
    const char *acr_values; /* as requested, may be NULL */
    int64_t auth_time;      /* Unix seconds of the approval, set for REDEEMED */
    int interval;           /* the current interval, seconds */
};

typedef void (*storage_poll_cb)(void *arg, enum storage_status status,
                                const struct storage_poll *poll);

/* Records a poll and, when the request is approved, redeems it, in one atomic
 * statement: of many concurrent polls of one approved request exactly one gets
 * STORAGE_POLL_REDEEMED. The interval rule (CIBA Core 1.0 section 11): a poll of a
 * pending request before `interval` seconds since the previous poll gets SLOW_DOWN and
 * adds 5 s to the interval. Appends "token issued" or "redemption refused" audit rows.
 * Polls made while another batch of polls of this connection is in flight wait for it
 * and then go out together, as one statement of up to 64 polls: when that statement
 * fails, each of them gets the failure. */
int storage_auth_req_poll(struct storage_conn *db, const char *auth_req_id_hash,
                          const char *client_id, const char *request_id,
                          storage_poll_cb cb, void *arg) MUST_CHECK;

/* Lifecycle state of a request, as the approval page shows it. */
enum storage_auth_req_status {
    STORAGE_AR_PENDING,
    STORAGE_AR_APPROVED,
    STORAGE_AR_DENIED,
    STORAGE_AR_EXPIRED, /* pending or approved, and expires_at has passed */
    STORAGE_AR_REDEEMED,
};

struct storage_approval {
    const char *auth_req_id_hash;
    const char *client_id;
    const char *client_name;
    const char *subject;
    const char *phone_number;
    const char *scope;
    const char *binding_message; /* may be NULL */
    /* JSON object text mapping each requested scope that has a row in the scope table
     * to its description, for example {"openid":"Confirm who you are"}. */
    const char *scope_descriptions;
    enum storage_auth_req_status status;
    int64_t expires_at;     /* Unix seconds */
    int64_t otp_expires_at; /* Unix seconds */
    int64_t otp_sent_at;    /* Unix seconds of the latest code */
    int otp_attempts;       /* wrong codes entered so far */
    int otp_generation;     /* bumped on every resend; used as a version */
    const unsigned char *otp_hmac;
    size_t otp_hmac_len;
    int64_t now;                      /* the database's clock, Unix seconds */
    const char *delivery_mode;        /* poll, ping or push */
    const char *notification_secrets; /* sealed; NULL for poll */
    const char *cnf_x5t_s256;         /* see storage_auth_req_new; may be NULL */
};

typedef void (*storage_approval_cb)(void *arg, enum storage_status status,
                                    const struct storage_approval *approval);

/* Loads the request behind an approval link. */
int storage_approval_get(struct storage_conn *db, const char *ref_hash,
                         storage_approval_cb cb, void *arg) MUST_CHECK;

enum storage_decision {
    STORAGE_DECIDE_APPROVE,    /* the right code: pending -> approved */
    STORAGE_DECIDE_WRONG_CODE, /* count a wrong code; denied at max_attempts */
    STORAGE_DECIDE_DENY,       /* the user pressed Deny: pending -> denied */
};

/* Applies a decision as a compare-and-set on (otp_generation, otp_attempts) read by
 * storage_approval_get: STORAGE_CONFLICT when either changed meanwhile, so a code
 * checked against an old HMAC never counts. STORAGE_NOT_FOUND when the request is no
 * longer pending or has expired. STORAGE_LIMITED for STORAGE_DECIDE_APPROVE when the
 * code itself has expired (otp_expires_at passed): nothing changes, and the page should
 * offer a new code; WRONG_CODE and DENY still apply to an expired code. On success the
 * callback gets the row as it is now. Appends the audit row (action "approve",
 * decision "approved", "wrong_code", "denied" or "denied_too_many_attempts"; an
 * approval is attested as "sms_otp"). */
int storage_approval_decide(struct storage_conn *db, const char *ref_hash,
                            int otp_generation, int otp_attempts,
                            enum storage_decision decision, int max_attempts,
                            const char *request_id, storage_approval_cb cb,
                            void *arg) MUST_CHECK;

/* storage_approval_decide for every delivery mode. A final decision (approved, denied,
 * denied_too_many_attempts) of a ping or push request also queues its notification in
 * the same statement. Approving a push request needs push_payload, the sealed token
 * response to push: the request then becomes redeemed at once (its tokens go only to
 * the notification endpoint), the payload is queued, and a "token issued" audit row is
 * appended. Approving a push request without push_payload fails with STORAGE_ERROR and
 * changes nothing. push_payload is ignored for other requests and decisions. */
int storage_approval_decide_notify(struct storage_conn *db, const char *ref_hash,
                                   int otp_generation, int otp_attempts,
                                   enum storage_decision decision, int max_attempts,
                                   const char *push_payload, const char *request_id,
                                   storage_approval_cb cb, void *arg) MUST_CHECK;

/* Replaces the code of a pending request with a new one, if the previous code was sent
 * at least cooldown seconds ago and the phone number's quota allows another code.
 * STORAGE_LIMITED otherwise; STORAGE_NOT_FOUND when no longer pending or expired. The
 * caller computes otp_hmac for the next generation (otp_generation as read + 1), which
 * this call stores; otp_attempts are not reset, so wrong codes add up across resends.
 * The new code's otp_expires_at is now + otp_lifetime, but never after expires_at.
 * Appends the "code sent" audit row on success. */
int storage_approval_resend(struct storage_conn *db, const char *ref_hash,
                            const unsigned char *otp_hmac, size_t otp_hmac_len,
                            int otp_lifetime, int cooldown, int sms_per_phone_max,
                            int sms_per_phone_window, const char *request_id,
                            storage_done_cb cb, void *arg) MUST_CHECK;

/* Marks pending and approved requests past expires_at as expired (one audit row each,
 * and an "expired" notification for each pending ping or push request), and deletes
 * requests that expired more than tombstone_seconds ago. Safe to run on
 * many instances at once (rows are claimed with FOR UPDATE SKIP LOCKED). Each call
 * handles at most 1000 rows of each kind; sweep again while a count is 1000. */
typedef void (*storage_sweep_cb)(void *arg, enum storage_status status, int expired,
                                 int purged);
int storage_auth_req_sweep(struct storage_conn *db, int tombstone_seconds,
                           storage_sweep_cb cb, void *arg) MUST_CHECK;

/* ---- ping and push notifications (the outbox) ---------------------------------------
 */

/* One notification claimed for delivery. */
struct storage_notification {
    int64_t id;
    int attempt; /* the number of this attempt, from 1; identifies the claim */
    const char *auth_req_id_hash;
    const char *client_id;
    const char *mode;       /* ping | push */
    const char *event;      /* approved | denied | expired | failed */
    const char *detail;     /* why it was denied or failed, or NULL */
    const char *secrets;    /* sealed auth_req_id and client_notification_token */
    const char *payload;    /* sealed token response for a push approval, or NULL */
    const char *request_id; /* of the request that made the decision, or NULL */
    const char *endpoint;   /* the client's notification endpoint now, or NULL */
    int64_t created_at_ms;  /* Unix milliseconds of the decision */
};

typedef void (*storage_notifications_cb)(void *arg, enum storage_status status,
                                         const struct storage_notification *rows,
                                         size_t n_rows);

/* Claims up to max_rows notifications that are due, oldest first, and returns them.
 * Rows are picked with FOR UPDATE SKIP LOCKED. The same statement moves each claimed
 * row's next attempt lease_ms ahead and raises its attempt count, so concurrent claims
 * on any connection or instance never return one row twice while a lease runs. A row
 * whose claimer dies becomes due again when its lease ends. */
int storage_notification_claim(struct storage_conn *db, int max_rows, int lease_ms,
                               storage_notifications_cb cb, void *arg) MUST_CHECK;

enum storage_notification_outcome {
    STORAGE_NOTIFICATION_DELIVERED, /* the endpoint replied 2xx: delete the row */
    STORAGE_NOTIFICATION_RETRY,     /* try again after retry_delay_ms */
    STORAGE_NOTIFICATION_FAILED,    /* give up: delete the row */
};

/* Records the outcome of attempt `attempt` of notification id, with its audit row
 * (action "notify", decision "delivered", "retry" or "failed", detail as given, never a
 * secret). last_error keeps detail for a retry. STORAGE_NOT_FOUND when the row is gone
 * or was claimed again after this claim's lease ended; nothing changes then. */
int storage_notification_record(struct storage_conn *db, int64_t id, int attempt,
                                enum storage_notification_outcome outcome,
                                int retry_delay_ms, const char *detail,
                                storage_done_cb cb, void *arg) MUST_CHECK;

/* ---- signing keys ----------------------------------------------------------------- */

struct storage_key {
    const char *kid;
    const char *alg;         /* ES256 */
    const char *private_key; /* sealed private key, as oauth/ wrote it */
    const char *public_jwk;  /* JSON object text */
    int64_t created_at;      /* Unix seconds */
    int64_t retired_at;      /* 0 while it is the current signing key */
};

typedef void (*storage_keys_cb)(void *arg, enum storage_status status,
                                const struct storage_key *keys, size_t n_keys);

/* Loads the keys still published: the current one and every retired key whose
 * retired_at is less than publish_seconds ago. Newest first. */
int storage_keys_load(struct storage_conn *db, int publish_seconds, storage_keys_cb cb,
                      void *arg) MUST_CHECK;

/* ---- audit --------------------------------------------------------------------------
 */

struct storage_audit {
    const char *request_id;
    const char *client_id;        /* may be NULL */
    const char *subject;          /* may be NULL */
    const char *scope;            /* may be NULL */
    const char *action;           /* bc_authorize, token, approve, ... */
    const char *decision;         /* accepted, rejected, issued, refused, ... */
    const char *detail;           /* error code or reason, may be NULL; never a secret */
    const char *auth_req_id_hash; /* may be NULL */
    const char *attestation;      /* "sms_otp" or NULL for "none" */
};

/* Appends one audit row. cb may be NULL. */
int storage_audit_append(struct storage_conn *db, const struct storage_audit *row,
                         storage_done_cb cb, void *arg) MUST_CHECK;

/* ---- blocking API for the command line and startup ------------------------------------
 */

struct storage_sync;

/* Connects; on failure writes the reason to err and returns NULL. */
struct storage_sync *storage_sync_connect(const char *conninfo, char *err,
                                          size_t err_len);
void storage_sync_close(struct storage_sync *s);

/* Applies every migrations/NNNN_name.sql in dir not yet recorded, in order, each in its
 * own transaction, under an advisory lock. Logs each applied file. Returns 0 or -1. */
int storage_sync_migrate(struct storage_sync *s, const char *dir) MUST_CHECK;
/* Sets *behind to the number of files in dir not applied yet. Returns 0 or -1. */
int storage_sync_schema_behind(struct storage_sync *s, const char *dir,
                               int *behind) MUST_CHECK;

struct storage_client_new {
    const char *client_id;
    const char *client_name;
    const char *secret_hash;
    const char *token_endpoint_auth_method;
    const char *scope;
    const char *backchannel_token_delivery_mode;
    const char *backchannel_client_notification_endpoint; /* may be NULL */
    const char *grant_types;
    const char *jwks;                            /* may be NULL; JSON text */
    const char *jwks_uri;                        /* may be NULL */
    const char *token_endpoint_auth_signing_alg; /* may be NULL */
    const char *client_secret_sealed;            /* may be NULL */
    bool backchannel_user_code_parameter;
    /* tls_client_auth only: exactly one of these, the others NULL. */
    const char *tls_client_auth_subject_dn;
    const char *tls_client_auth_san_dns;
    const char *tls_client_auth_san_uri;
    const char *tls_client_auth_san_ip;
    const char *tls_client_auth_san_email;
    const char *backchannel_authentication_request_signing_alg; /* may be NULL */
};

/* Returns 0, or -1 (with err) for a duplicate client_id or any failure. */
int storage_sync_client_create(struct storage_sync *s, const struct storage_client_new *c,
                               char *err, size_t err_len) MUST_CHECK;
/* Calls fn for each client (or for the one named, when client_id is not NULL) in
 * client_id order. Returns the number of clients, or -1. */
int storage_sync_client_each(struct storage_sync *s, const char *client_id,
                             void (*fn)(void *arg, const struct storage_client *c),
                             void *arg) MUST_CHECK;
/* Returns 1 when deleted, 0 when there was no such client, -1 on failure. The same
 * statement notifies the client caches of every running server. */
int storage_sync_client_delete(struct storage_sync *s, const char *client_id) MUST_CHECK;

/* Creates a user. Returns 0, or -1 (with err) for a duplicate or any failure. */
int storage_sync_user_create(struct storage_sync *s, const char *subject,
                             const char *username, const char *phone_number, char *err,
                             size_t err_len) MUST_CHECK;
int storage_sync_user_each(struct storage_sync *s,
                           void (*fn)(void *arg, const struct storage_user *u),
                           void *arg) MUST_CHECK;
/* Sets the user code hash of the user with this subject or username and resets the
 * count of wrong codes. Returns 1, 0 when not found, or -1. */
int storage_sync_user_set_code(struct storage_sync *s, const char *subject_or_name,
                               const char *code_hash) MUST_CHECK;
/* Deletes by subject or username. Returns 1, 0 when not found, or -1. */
int storage_sync_user_delete(struct storage_sync *s,
                             const char *subject_or_name) MUST_CHECK;

/* Creates a user like storage_sync_user_create, with an email address (lower-cased by
 * the caller; NULL for none) that no other user has. */
int storage_sync_user_create_email(struct storage_sync *s, const char *subject,
                                   const char *username, const char *phone_number,
                                   const char *email, char *err,
                                   size_t err_len) MUST_CHECK;

/* Registers a trusted issuer. Returns 0, or -1 (with err) for a duplicate issuer or any
 * failure. */
int storage_sync_issuer_add(struct storage_sync *s, const struct storage_issuer *in,
                            char *err, size_t err_len) MUST_CHECK;
/* Calls fn for each trusted issuer in issuer order. Returns their number, or -1. */
int storage_sync_issuer_each(struct storage_sync *s,
                             void (*fn)(void *arg, const struct storage_issuer *i),
                             void *arg) MUST_CHECK;
/* Returns 1 when deleted, 0 when there was no such issuer, -1 on failure. */
int storage_sync_issuer_delete(struct storage_sync *s, const char *issuer) MUST_CHECK;

/* Sets the plain-words description shown on the approval page for a scope (inserted or
 * replaced). Returns 0 or -1. */
int storage_sync_scope_set(struct storage_sync *s, const char *name,
                           const char *description) MUST_CHECK;
int storage_sync_scope_each(struct storage_sync *s,
                            void (*fn)(void *arg, const char *name,
                                       const char *description),
                            void *arg) MUST_CHECK;

/* Adds a key and makes it the current signing key: the previous current key gets
 * retired_at = now. Returns 0 or -1. */
int storage_sync_key_add(struct storage_sync *s, const char *kid, const char *alg,
                         const char *private_key, const char *public_jwk) MUST_CHECK;
/* Lists keys as storage_keys_load does, plus older ones when all is true. Returns the
 * number of keys or -1. */
int storage_sync_key_each(struct storage_sync *s, int publish_seconds, bool all,
                          void (*fn)(void *arg, const struct storage_key *k),
                          void *arg) MUST_CHECK;

#endif
