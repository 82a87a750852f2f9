/* notification.c - the outbox of ping and push notifications: claiming due rows and
 * recording each attempt
 * SPDX-License-Identifier: MIT
 *
 * Rows are inserted by the statements that decide a request (approval.c, auth_req.c).
 * A claim moves next_attempt_at ahead by a lease and raises attempts; the attempt
 * number then identifies the claim, so an outcome recorded by a worker whose lease
 * ran out (and whose row another worker claimed again) changes nothing.
 */
#include "storage/storage_int.h"

#include <stdlib.h>

/* ---- claim ------------------------------------------------------------------------- */

static const char sql_claim[] =
    "WITH due AS ("
    "  SELECT id FROM notification"
    "  WHERE next_attempt_at <= now()"
    "  ORDER BY next_attempt_at LIMIT $1"
    "  FOR UPDATE SKIP LOCKED"
    "), claimed AS ("
    "  UPDATE notification n SET attempts = n.attempts + 1,"
    "    next_attempt_at = clock_timestamp() + $2::int * interval '1 millisecond'"
    "  FROM due WHERE n.id = due.id"
    "  RETURNING n.*"
    ")"
    " SELECT n.id, n.attempts, n.auth_req_id_hash, n.client_id, n.mode, n.event,"
    "   n.detail, n.secrets, n.payload, n.request_id,"
    "   c.backchannel_client_notification_endpoint,"
    "   floor(extract(epoch FROM n.created_at) * 1000)::int8"
    " FROM claimed n LEFT JOIN client c ON c.client_id = n.client_id"
    " ORDER BY n.id";
static const struct storage_stmt stmt_claim = {"notification_claim", sql_claim, 2};

static void finish_claim(union storage_cb cb, void *arg, enum storage_status status,
                         const PGresult *res)
{
    struct storage_notification *rows;
    int n;

    if (status != STORAGE_OK) {
        cb.notifications(arg, status, NULL, 0);
        return;
    }
    n = PQntuples(res);
    rows = util_calloc(n > 0 ? (size_t)n : 1, sizeof(*rows));
    for (int i = 0; i < n; i++) {
        struct storage_notification *r = &rows[i];

        r->id = storage_col_int64(res, i, 0);
        r->attempt = storage_col_int(res, i, 1);
        r->auth_req_id_hash = storage_col_text(res, i, 2);
        r->client_id = storage_col_text(res, i, 3);
        r->mode = storage_col_text(res, i, 4);
        r->event = storage_col_text(res, i, 5);
        r->detail = storage_col_text(res, i, 6);
        r->secrets = storage_col_text(res, i, 7);
        r->payload = storage_col_text(res, i, 8);
        r->request_id = storage_col_text(res, i, 9);
        r->endpoint = storage_col_text(res, i, 10);
        r->created_at_ms = storage_col_int64(res, i, 11);
    }
    cb.notifications(arg, STORAGE_OK, rows, (size_t)n);
    free(rows);
}

int storage_notification_claim(struct storage_conn *db, int max_rows, int lease_ms,
                               storage_notifications_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.notifications = cb};

    if (cb == NULL || max_rows <= 0 || lease_ms <= 0)
        return -1;
    storage_param_int(&p, max_rows);
    storage_param_int(&p, lease_ms);
    return storage_conn_send(db, &stmt_claim, &p, finish_claim, u, arg);
}

/* ---- record ------------------------------------------------------------------------ */

/* cur locks the row only while it still belongs to this claim ($2 = attempts). A
 * delivered or failed row is deleted, which also drops its sealed secrets and payload;
 * a retry moves next_attempt_at to the back-off time. */
static const char sql_record[] =
    "WITH cur AS MATERIALIZED ("
    "  SELECT id, auth_req_id_hash, client_id, request_id FROM notification"
    "  WHERE id = $1 AND attempts = $2::int"
    "  FOR UPDATE"
    "), removed AS ("
    "  DELETE FROM notification n USING cur"
    "  WHERE n.id = cur.id AND $3::text IN ('delivered', 'failed')"
    "  RETURNING n.id"
    "), retried AS ("
    "  UPDATE notification n SET"
    "    next_attempt_at = now() + $4::int * interval '1 millisecond', last_error = $5"
    "  FROM cur WHERE n.id = cur.id AND $3::text = 'retry'"
    "  RETURNING n.id"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, action, decision, detail,"
    "    auth_req_id_hash)"
    "  SELECT request_id, client_id, 'notify', $3::text, $5, auth_req_id_hash FROM cur"
    ")"
    " SELECT (SELECT count(*) FROM removed) + (SELECT count(*) FROM retried)";
static const struct storage_stmt stmt_record = {"notification_record", sql_record, 5};

static void finish_record(union storage_cb cb, void *arg, enum storage_status status,
                          const PGresult *res)
{
    if (status != STORAGE_OK) {
        cb.done(arg, status);
        return;
    }
    if (PQntuples(res) != 1) {
        log_error("storage: notification_record returned %d rows", PQntuples(res));
        cb.done(arg, STORAGE_ERROR);
        return;
    }
    cb.done(arg, storage_col_int64(res, 0, 0) > 0 ? STORAGE_OK : STORAGE_NOT_FOUND);
}

int storage_notification_record(struct storage_conn *db, int64_t id, int attempt,
                                enum storage_notification_outcome outcome,
                                int retry_delay_ms, const char *detail,
                                storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};
    const char *decision;

    switch (outcome) {
    case STORAGE_NOTIFICATION_DELIVERED:
        decision = "delivered";
        break;
    case STORAGE_NOTIFICATION_RETRY:
        decision = "retry";
        break;
    case STORAGE_NOTIFICATION_FAILED:
        decision = "failed";
        break;
    default:
        return -1;
    }
    if (cb == NULL || attempt <= 0 || retry_delay_ms < 0)
        return -1;
    storage_param_int(&p, id);
    storage_param_int(&p, attempt);
    storage_param_text(&p, decision);
    storage_param_int(&p, retry_delay_ms);
    storage_param_text(&p, detail);
    return storage_conn_send(db, &stmt_record, &p, finish_record, u, arg);
}
