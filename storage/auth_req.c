/* auth_req.c - CIBA authentication requests: creation, polling, delivery failure, expiry
 * SPDX-License-Identifier: MIT
 *
 * Every state change is one statement, so it commits together with its audit row and
 * needs no client-side transaction. A request moves pending -> approved -> redeemed,
 * or to denied or expired. Expired and finished rows stay as tombstones until the sweep
 * purges them, so a late poll still gets expired_token rather than invalid_grant.
 */
#include "storage/storage_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- create ------------------------------------------------------------------------ */

/* Creates the requests of a batch (batch.c), one call per row of the input arrays.
 * (1) counts a code against each phone number's sms_quota row, (2) inserts the
 * requests whose phone number (1) returned, and (3) appends the audit row of each
 * inserted request. Returns per call whether it was inserted. The batch key is the
 * phone number, so one batch never counts two codes against one row. The quota rows
 * are written in phone number order, so two batches that share numbers wait for each
 * other instead of deadlocking. The per-phone limit and window come from the first
 * call (create_fits keeps calls with other limits apart). The first code's
 * otp_expires_at never falls after expires_at. An error in any row, such as a foreign
 * key error for a client or user deleted meanwhile, fails every call of the batch. */
/* clang-format would split the SQL around the macro. */
/* clang-format off */
static const char sql_auth_req_create[] =
    "WITH input AS ("
    "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
    "    $6::text[], $7::text[], $8::text[], $9::int[], $10::int[], $11::text[],"
    "    $12::int[], $13::int[], $14::int[], $15::text[], $16::text[], $17::text[],"
    "    $18::text[]) WITH ORDINALITY"
    "    AS i(phone_number, auth_req_id_hash, ref_hash, client_id, subject, scope,"
    "      binding_message, acr_values, expires_in, poll_interval, otp_hmac_hex,"
    "      otp_lifetime, quota_max, quota_window, request_id, delivery_mode,"
    "      notification_secrets, cnf_x5t_s256, n)"
    "), quota AS ("
    "  INSERT INTO sms_quota AS q (phone_number, sent_at)"
    "  SELECT phone_number, ARRAY[now()] FROM input WHERE quota_max > 0"
    "  ORDER BY phone_number"
    STORAGE_SQL_QUOTA_UPSERT("($13::int[])[1]", "($14::int[])[1]")
    "  RETURNING q.phone_number"
    "), created AS ("
    "  INSERT INTO auth_req (auth_req_id_hash, ref_hash, client_id, subject, phone_number,"
    "    scope, binding_message, acr_values, expires_at, poll_interval, otp_hmac,"
    "    otp_expires_at, otp_sent_at, delivery_mode, notification_secrets,"
    "    cnf_x5t_s256)"
    "  SELECT i.auth_req_id_hash, i.ref_hash, i.client_id, i.subject, i.phone_number,"
    "    i.scope, i.binding_message, i.acr_values,"
    "    now() + i.expires_in * interval '1 second', i.poll_interval,"
    "    decode(i.otp_hmac_hex, 'hex'),"
    "    now() + least(i.otp_lifetime, i.expires_in) * interval '1 second', now(),"
    "    coalesce(i.delivery_mode, 'poll'),"
    "    CASE WHEN coalesce(i.delivery_mode, 'poll') = 'poll' THEN NULL"
    "      ELSE i.notification_secrets END,"
    "    i.cnf_x5t_s256"
    "  FROM input i JOIN quota q ON q.phone_number = i.phone_number"
    "  RETURNING auth_req_id_hash, client_id, subject, scope"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    auth_req_id_hash)"
    "  SELECT i.request_id, c.client_id, c.subject, c.scope, 'bc_authorize', 'accepted',"
    "    c.auth_req_id_hash"
    "  FROM created c JOIN input i ON i.auth_req_id_hash = c.auth_req_id_hash"
    ")"
    " SELECT i.n, c.auth_req_id_hash IS NOT NULL FROM input i"
    "   LEFT JOIN created c ON c.auth_req_id_hash = i.auth_req_id_hash"
    " ORDER BY i.n";
/* clang-format on */
static const struct storage_stmt stmt_auth_req_create = {"auth_req_create",
                                                         sql_auth_req_create, 18};

/* The fields of one create call, in the order of the statement's parameters. */
enum create_field {
    CREATE_PHONE, /* the batch key */
    CREATE_AUTH_REQ_ID_HASH,
    CREATE_REF_HASH,
    CREATE_CLIENT_ID,
    CREATE_SUBJECT,
    CREATE_SCOPE,
    CREATE_BINDING_MESSAGE,
    CREATE_ACR_VALUES,
    CREATE_EXPIRES_IN,
    CREATE_INTERVAL,
    CREATE_OTP_HMAC_HEX,
    CREATE_OTP_LIFETIME,
    CREATE_QUOTA_MAX,
    CREATE_QUOTA_WINDOW,
    CREATE_REQUEST_ID,
    CREATE_DELIVERY_MODE,
    CREATE_NOTIFICATION_SECRETS,
    CREATE_CNF_X5T_S256,
    CREATE_FIELDS
};

/* Completes statements that return one count: 0 means the condition refused. */
static void finish_counted(union storage_cb cb, void *arg, enum storage_status status,
                           const PGresult *res, enum storage_status when_zero)
{
    if (status != STORAGE_OK) {
        cb.done(arg, status);
        return;
    }
    if (PQntuples(res) != 1) {
        log_error("storage: expected one count row, got %d", PQntuples(res));
        cb.done(arg, STORAGE_ERROR);
        return;
    }
    cb.done(arg, storage_col_int64(res, 0, 0) > 0 ? STORAGE_OK : when_zero);
}

/* Completes each call: row i is false when call i was not inserted because its phone
 * number is over quota. */
static void finish_creates(const struct storage_batch_call *calls, size_t n,
                           enum storage_status status, const PGresult *res)
{
    for (size_t i = 0; i < n; i++) {
        enum storage_status s = status;

        if (s == STORAGE_OK && strcmp(storage_col_text(res, (int)i, 1), "t") != 0)
            s = STORAGE_LIMITED;
        calls[i].cb.done(calls[i].arg, s);
    }
}

/* The statement applies the first call's quota limits to the whole batch. */
static bool create_fits(const struct storage_batch_call *first,
                        const char *const fields[])
{
    return strcmp(first->fields[CREATE_QUOTA_MAX], fields[CREATE_QUOTA_MAX]) == 0 &&
           strcmp(first->fields[CREATE_QUOTA_WINDOW], fields[CREATE_QUOTA_WINDOW]) == 0;
}

static const struct storage_batch_kind create_kind = {
    STORAGE_BATCH_CREATE, &stmt_auth_req_create, 1, finish_creates, create_fits};

int storage_auth_req_create(struct storage_conn *db,
                            const struct storage_auth_req_new *in, storage_done_cb cb,
                            void *arg)
{
    char ints[5][16];
    char *hmac_hex;
    const char *fields[CREATE_FIELDS];
    union storage_cb u = {.done = cb};
    int rc;

    if (in == NULL || cb == NULL || in->otp_hmac == NULL || in->otp_hmac_len == 0 ||
        in->otp_hmac_len > 64 || in->expires_in <= 0 || in->interval <= 0 ||
        in->otp_lifetime <= 0 || in->sms_per_phone_window <= 0 ||
        in->auth_req_id_hash == NULL || in->phone_number == NULL) {
        log_error("storage: storage_auth_req_create got an incomplete request");
        return -1;
    }
    snprintf(ints[0], sizeof(ints[0]), "%d", in->expires_in);
    snprintf(ints[1], sizeof(ints[1]), "%d", in->interval);
    snprintf(ints[2], sizeof(ints[2]), "%d", in->otp_lifetime);
    snprintf(ints[3], sizeof(ints[3]), "%d", in->sms_per_phone_max);
    snprintf(ints[4], sizeof(ints[4]), "%d", in->sms_per_phone_window);
    hmac_hex = util_malloc(2 * in->otp_hmac_len + 1);
    for (size_t i = 0; i < in->otp_hmac_len; i++)
        snprintf(hmac_hex + 2 * i, 3, "%02x", in->otp_hmac[i]);

    fields[CREATE_PHONE] = in->phone_number;
    fields[CREATE_AUTH_REQ_ID_HASH] = in->auth_req_id_hash;
    fields[CREATE_REF_HASH] = in->ref_hash;
    fields[CREATE_CLIENT_ID] = in->client_id;
    fields[CREATE_SUBJECT] = in->subject;
    fields[CREATE_SCOPE] = in->scope;
    fields[CREATE_BINDING_MESSAGE] = in->binding_message;
    fields[CREATE_ACR_VALUES] = in->acr_values;
    fields[CREATE_EXPIRES_IN] = ints[0];
    fields[CREATE_INTERVAL] = ints[1];
    fields[CREATE_OTP_HMAC_HEX] = hmac_hex;
    fields[CREATE_OTP_LIFETIME] = ints[2];
    fields[CREATE_QUOTA_MAX] = ints[3];
    fields[CREATE_QUOTA_WINDOW] = ints[4];
    fields[CREATE_REQUEST_ID] = in->request_id;
    fields[CREATE_DELIVERY_MODE] = in->delivery_mode;
    fields[CREATE_NOTIFICATION_SECRETS] = in->notification_secrets;
    fields[CREATE_CNF_X5T_S256] = in->cnf_x5t_s256;
    rc = storage_batch_add(db, &create_kind, fields, u, arg);
    free(hmac_hex);
    return rc;
}

/* ---- SMS delivery ------------------------------------------------------------------ */

static const char sql_code_sent[] =
    "WITH audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    auth_req_id_hash)"
    "  SELECT $2, client_id, subject, scope, 'send_code', 'sent', auth_req_id_hash"
    "  FROM auth_req WHERE auth_req_id_hash = $1"
    "  RETURNING 1"
    ")"
    " SELECT count(*) FROM audit";
static const struct storage_stmt stmt_code_sent = {"auth_req_code_sent", sql_code_sent,
                                                   2};

static void finish_not_found_on_zero(union storage_cb cb, void *arg,
                                     enum storage_status status, const PGresult *res)
{
    finish_counted(cb, arg, status, res, STORAGE_NOT_FOUND);
}

int storage_auth_req_code_sent(struct storage_conn *db, const char *auth_req_id_hash,
                               const char *request_id, storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (auth_req_id_hash == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, auth_req_id_hash);
    storage_param_text(&p, request_id);
    return storage_conn_send(db, &stmt_code_sent, &p, finish_not_found_on_zero, u, arg);
}

/* A ping or push request also gets a "failed" notification in the same statement. */
static const char sql_fail_delivery[] =
    "WITH denied AS ("
    "  UPDATE auth_req SET status = 'denied', decided_at = now()"
    "  WHERE auth_req_id_hash = $1 AND status = 'pending'"
    "  RETURNING auth_req_id_hash, client_id, subject, scope, delivery_mode,"
    "    notification_secrets"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    detail, auth_req_id_hash)"
    "  SELECT $3, client_id, subject, scope, 'send_code', 'failed', $2, auth_req_id_hash"
    "  FROM denied"
    "), notify AS ("
    "  INSERT INTO notification (auth_req_id_hash, client_id, mode, event, detail,"
    "    secrets, request_id)"
    "  SELECT auth_req_id_hash, client_id, delivery_mode, 'failed', 'sms_failed',"
    "    notification_secrets, $3"
    "  FROM denied WHERE delivery_mode IN ('ping', 'push')"
    ")"
    " SELECT count(*) FROM denied";
static const struct storage_stmt stmt_fail_delivery = {"auth_req_fail_delivery",
                                                       sql_fail_delivery, 3};

int storage_auth_req_fail_delivery(struct storage_conn *db, const char *auth_req_id_hash,
                                   const char *reason, const char *request_id,
                                   storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (auth_req_id_hash == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, auth_req_id_hash);
    storage_param_text(&p, reason);
    storage_param_text(&p, request_id);
    return storage_conn_send(db, &stmt_fail_delivery, &p, finish_not_found_on_zero, u,
                             arg);
}

/* ---- poll (token endpoint) --------------------------------------------------------- */

/* Polls go to the database in batches (batch.c): the statement takes the polls as
 * three arrays (auth_req_id_hash, client_id, request_id) and returns one row per poll,
 * in the order given. Two polls of one request never share a batch, because one
 * statement cannot see its own update of a row: a second poll of an approved request
 * would redeem it again.
 *
 * cur locks the rows in auth_req_id_hash order, so two batches that share requests
 * cannot deadlock. Polls of one request run one after another, and each sees the status
 * the previous one committed, so only the first poll of an approved request finds
 * 'approved' and redeems it. The outcome rules, in order:
 *   redeemed                          -> invalid (single use)
 *   now() >= expires_at, or expired   -> expired (tombstone: expired_token)
 *   denied                            -> denied
 *   approved                          -> redeemed (no slow_down for an approved request)
 *   pending, polled within interval   -> slow_down, interval + 5 s (CIBA Core 1.0 s. 11)
 *   pending                           -> pending
 * A pending poll of either kind records last_polled_at. Decisions (not plain pending
 * polls) get an audit row; an unknown id or another client's id gets one as well. */
static const char sql_poll[] =
    "WITH input AS ("
    "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY"
    "    AS i(auth_req_id_hash, client_id, request_id, n)"
    "), cur AS MATERIALIZED ("
    "  SELECT i.n, a.auth_req_id_hash, a.client_id, a.subject, a.scope, a.acr_values,"
    "    a.decided_at, a.poll_interval,"
    "    CASE"
    "      WHEN a.status = 'redeemed' THEN 'invalid'"
    "      WHEN now() >= a.expires_at OR a.status = 'expired' THEN 'expired'"
    "      WHEN a.status = 'denied' THEN 'denied'"
    "      WHEN a.status = 'approved' THEN 'redeemed'"
    "      WHEN a.last_polled_at IS NOT NULL"
    "        AND now() < a.last_polled_at + a.poll_interval * interval '1 second'"
    "        THEN 'slow_down'"
    "      ELSE 'pending'"
    "    END AS outcome"
    "  FROM input i JOIN auth_req a"
    "    ON a.auth_req_id_hash = i.auth_req_id_hash AND a.client_id = i.client_id"
    "  ORDER BY a.auth_req_id_hash"
    "  FOR UPDATE OF a"
    "), changed AS ("
    "  UPDATE auth_req a SET"
    "    status = CASE WHEN cur.outcome = 'redeemed' THEN 'redeemed' ELSE a.status END,"
    "    redeemed_at = CASE WHEN cur.outcome = 'redeemed' THEN now()"
    "                  ELSE a.redeemed_at END,"
    "    poll_interval = CASE WHEN cur.outcome = 'slow_down' THEN a.poll_interval + 5"
    "                    ELSE a.poll_interval END,"
    "    last_polled_at = CASE WHEN cur.outcome IN ('pending', 'slow_down') THEN now()"
    "                     ELSE a.last_polled_at END"
    "  FROM cur"
    "  WHERE a.auth_req_id_hash = cur.auth_req_id_hash"
    "    AND cur.outcome IN ('redeemed', 'pending', 'slow_down')"
    "  RETURNING a.auth_req_id_hash, a.poll_interval"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    detail, auth_req_id_hash, attestation)"
    "  SELECT i.request_id, c.client_id, c.subject, c.scope, 'token',"
    "    CASE WHEN c.outcome = 'redeemed' THEN 'issued' ELSE 'refused' END,"
    "    CASE c.outcome WHEN 'invalid' THEN 'invalid_grant'"
    "      WHEN 'expired' THEN 'expired_token' WHEN 'denied' THEN 'access_denied' END,"
    "    c.auth_req_id_hash,"
    "    CASE WHEN c.outcome = 'redeemed' THEN 'sms_otp' ELSE 'none' END"
    "  FROM cur c JOIN input i ON i.n = c.n"
    "  WHERE c.outcome NOT IN ('pending', 'slow_down')"
    "), audit_unknown AS ("
    "  INSERT INTO audit_log (request_id, client_id, action, decision, detail)"
    "  SELECT i.request_id, i.client_id, 'token', 'refused', 'invalid_grant'"
    "  FROM input i WHERE NOT EXISTS (SELECT 1 FROM cur c WHERE c.n = i.n)"
    ")"
    " SELECT i.n, c.outcome, c.subject, c.scope, c.acr_values,"
    "   floor(extract(epoch FROM c.decided_at))::int8,"
    "   coalesce(ch.poll_interval, c.poll_interval)"
    " FROM input i LEFT JOIN cur c ON c.n = i.n"
    "   LEFT JOIN changed ch ON ch.auth_req_id_hash = c.auth_req_id_hash"
    " ORDER BY i.n";
static const struct storage_stmt stmt_poll = {"auth_req_poll", sql_poll, 3};

static const struct {
    const char *name;
    enum storage_poll_outcome outcome;
} poll_outcomes[] = {
    {"pending", STORAGE_POLL_PENDING},   {"slow_down", STORAGE_POLL_SLOW_DOWN},
    {"redeemed", STORAGE_POLL_REDEEMED}, {"denied", STORAGE_POLL_DENIED},
    {"expired", STORAGE_POLL_EXPIRED},   {"invalid", STORAGE_POLL_INVALID},
};

/* Reads row `row` of the result into poll. Returns 0, or -1 for an unknown outcome. */
static int poll_from_row(const PGresult *res, int row, struct storage_poll *poll)
{
    const char *outcome = storage_col_text(res, row, 1);
    size_t i;

    *poll = (struct storage_poll){.outcome = STORAGE_POLL_INVALID};
    if (outcome == NULL)
        return 0; /* no such request for this client */
    for (i = 0; i < ARRAY_LEN(poll_outcomes); i++)
        if (strcmp(outcome, poll_outcomes[i].name) == 0)
            break;
    if (i == ARRAY_LEN(poll_outcomes)) {
        log_error("storage: auth_req_poll returned an unknown outcome");
        return -1;
    }
    poll->outcome = poll_outcomes[i].outcome;
    poll->interval = storage_col_int(res, row, 6);
    poll->acr_values = storage_col_text(res, row, 4);
    if (poll->outcome == STORAGE_POLL_REDEEMED) {
        poll->subject = storage_col_text(res, row, 2);
        poll->scope = storage_col_text(res, row, 3);
        poll->auth_time = storage_col_int64(res, row, 5);
    }
    return 0;
}

static void finish_polls(const struct storage_batch_call *calls, size_t n,
                         enum storage_status status, const PGresult *res)
{
    for (size_t i = 0; i < n; i++) {
        struct storage_poll poll;

        if (status != STORAGE_OK)
            calls[i].cb.poll(calls[i].arg, status, NULL);
        else if (poll_from_row(res, (int)i, &poll) != 0)
            calls[i].cb.poll(calls[i].arg, STORAGE_ERROR, NULL);
        else
            calls[i].cb.poll(calls[i].arg, STORAGE_OK, &poll);
    }
}

/* Keyed on auth_req_id_hash: two polls of one request never share a batch. */
static const struct storage_batch_kind poll_kind = {STORAGE_BATCH_POLL, &stmt_poll, 1,
                                                    finish_polls};

int storage_auth_req_poll(struct storage_conn *db, const char *auth_req_id_hash,
                          const char *client_id, const char *request_id,
                          storage_poll_cb cb, void *arg)
{
    const char *fields[] = {auth_req_id_hash, client_id, request_id};
    union storage_cb u = {.poll = cb};

    if (auth_req_id_hash == NULL || client_id == NULL || cb == NULL)
        return -1;
    return storage_batch_add(db, &poll_kind, fields, u, arg);
}

/* ---- sweep ------------------------------------------------------------------------- */

/* Expires up to 1000 open requests past expires_at, claimed with SKIP LOCKED so several
 * sweepers (one per worker and instance) share the work without waiting on each other
 * or on a poll. A pending ping or push request gets its "expired" notification in the
 * same statement. Purges up to 1000 rows that expired more than $1 seconds ago. Rows this
 * statement expires are left for the next run, because one statement must not change
 * a row twice. A caller with a backlog sweeps again while a count is 1000. */
static const char sql_sweep[] =
    "WITH claimed AS ("
    "  SELECT auth_req_id_hash, status FROM auth_req"
    "  WHERE status IN ('pending', 'approved') AND expires_at <= now()"
    "  ORDER BY expires_at LIMIT 1000"
    "  FOR UPDATE SKIP LOCKED"
    "), expired AS ("
    "  UPDATE auth_req a SET status = 'expired'"
    "  FROM claimed c"
    "  WHERE a.auth_req_id_hash = c.auth_req_id_hash"
    "    AND a.status IN ('pending', 'approved')"
    "  RETURNING a.auth_req_id_hash, a.client_id, a.subject, a.scope, a.delivery_mode,"
    "    a.notification_secrets, c.status AS was"
    "), audit AS ("
    "  INSERT INTO audit_log (client_id, subject, scope, action, decision,"
    "    auth_req_id_hash)"
    "  SELECT client_id, subject, scope, 'expire', 'expired', auth_req_id_hash"
    "  FROM expired"
    "), notify AS ("
    /* A ping client of an approved request was notified at the approval already. */
    "  INSERT INTO notification (auth_req_id_hash, client_id, mode, event, secrets)"
    "  SELECT auth_req_id_hash, client_id, delivery_mode, 'expired', notification_secrets"
    "  FROM expired WHERE delivery_mode IN ('ping', 'push') AND was = 'pending'"
    "), purged AS ("
    "  DELETE FROM auth_req WHERE auth_req_id_hash IN ("
    "    SELECT auth_req_id_hash FROM auth_req"
    "    WHERE expires_at < now() - $1::int * interval '1 second'"
    "      AND auth_req_id_hash NOT IN (SELECT auth_req_id_hash FROM claimed)"
    "    ORDER BY expires_at LIMIT 1000"
    "    FOR UPDATE SKIP LOCKED)"
    "  RETURNING 1"
    ")"
    " SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM purged)";
static const struct storage_stmt stmt_sweep = {"auth_req_sweep", sql_sweep, 1};

static void finish_sweep(union storage_cb cb, void *arg, enum storage_status status,
                         const PGresult *res)
{
    if (status != STORAGE_OK) {
        cb.sweep(arg, status, 0, 0);
        return;
    }
    cb.sweep(arg, STORAGE_OK, storage_col_int(res, 0, 0), storage_col_int(res, 0, 1));
}

int storage_auth_req_sweep(struct storage_conn *db, int tombstone_seconds,
                           storage_sweep_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.sweep = cb};

    if (cb == NULL || tombstone_seconds < 0)
        return -1;
    storage_param_int(&p, tombstone_seconds);
    return storage_conn_send(db, &stmt_sweep, &p, finish_sweep, u, arg);
}
