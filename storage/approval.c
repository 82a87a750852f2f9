/* approval.c - the request behind an approval link: load, decide, resend the code
 * SPDX-License-Identifier: MIT
 *
 * The approval page reads a request with storage_approval_get, checks the code the
 * user typed against otp_hmac, and then applies its decision as a compare-and-set on
 * (otp_generation, otp_attempts). A resend bumps otp_generation, so a code checked
 * against the previous HMAC can never approve or count as wrong.
 */
#include "storage/storage_int.h"

#include <string.h>

/* Columns read by approval_from_row, in order, over auth_req a joined with client c.
 * status reads 'expired' for a pending or approved request past expires_at. */
#define APPROVAL_COLUMNS                                                                 \
    " a.auth_req_id_hash, a.client_id, c.client_name, a.subject, a.phone_number,"        \
    " a.scope, a.binding_message,"                                                       \
    " coalesce((SELECT json_object_agg(s.name, s.description ORDER BY s.name)"           \
    "   FROM scope s WHERE s.name = ANY (string_to_array(a.scope, ' '))),"               \
    "   '{}')::text,"                                                                    \
    " CASE WHEN a.status IN ('pending', 'approved') AND now() >= a.expires_at"           \
    "   THEN 'expired' ELSE a.status END,"                                               \
    " floor(extract(epoch FROM a.expires_at))::int8,"                                    \
    " floor(extract(epoch FROM a.otp_expires_at))::int8,"                                \
    " floor(extract(epoch FROM a.otp_sent_at))::int8,"                                   \
    " a.otp_attempts, a.otp_generation, a.otp_hmac,"                                     \
    " floor(extract(epoch FROM now()))::int8, a.delivery_mode, a.notification_secrets,"  \
    " a.cnf_x5t_s256"

static const struct {
    const char *name;
    enum storage_auth_req_status status;
} statuses[] = {
    {"pending", STORAGE_AR_PENDING},   {"approved", STORAGE_AR_APPROVED},
    {"denied", STORAGE_AR_DENIED},     {"expired", STORAGE_AR_EXPIRED},
    {"redeemed", STORAGE_AR_REDEEMED},
};

/* Fills a from the APPROVAL_COLUMNS starting at column first. The decoded otp_hmac is
 * stored in *hmac for the caller to release with PQfreemem. Returns 0 or -1. */
static int approval_from_row(const PGresult *res, int first, struct storage_approval *a,
                             unsigned char **hmac)
{
    const char *status = storage_col_text(res, 0, first + 8);
    const char *escaped = storage_col_text(res, 0, first + 14);
    size_t i;

    for (i = 0; i < ARRAY_LEN(statuses); i++)
        if (status && strcmp(status, statuses[i].name) == 0)
            break;
    if (i == ARRAY_LEN(statuses) || escaped == NULL) {
        log_error("storage: an auth_req row has an unknown status or no otp_hmac");
        return -1;
    }
    *hmac = PQunescapeBytea((const unsigned char *)escaped, &a->otp_hmac_len);
    if (*hmac == NULL) {
        log_error("storage: decoding otp_hmac failed");
        return -1;
    }

    a->auth_req_id_hash = storage_col_text(res, 0, first + 0);
    a->client_id = storage_col_text(res, 0, first + 1);
    a->client_name = storage_col_text(res, 0, first + 2);
    a->subject = storage_col_text(res, 0, first + 3);
    a->phone_number = storage_col_text(res, 0, first + 4);
    a->scope = storage_col_text(res, 0, first + 5);
    a->binding_message = storage_col_text(res, 0, first + 6);
    a->scope_descriptions = storage_col_text(res, 0, first + 7);
    a->status = statuses[i].status;
    a->expires_at = storage_col_int64(res, 0, first + 9);
    a->otp_expires_at = storage_col_int64(res, 0, first + 10);
    a->otp_sent_at = storage_col_int64(res, 0, first + 11);
    a->otp_attempts = storage_col_int(res, 0, first + 12);
    a->otp_generation = storage_col_int(res, 0, first + 13);
    a->otp_hmac = *hmac;
    a->now = storage_col_int64(res, 0, first + 15);
    a->delivery_mode = storage_col_text(res, 0, first + 16);
    a->notification_secrets = storage_col_text(res, 0, first + 17);
    a->cnf_x5t_s256 = storage_col_text(res, 0, first + 18);
    return 0;
}

/* Calls cb with the row whose columns start at first. */
static void deliver_approval(union storage_cb cb, void *arg, const PGresult *res,
                             int first)
{
    struct storage_approval approval;
    unsigned char *hmac = NULL;

    if (approval_from_row(res, first, &approval, &hmac) != 0) {
        cb.approval(arg, STORAGE_ERROR, NULL);
        return;
    }
    cb.approval(arg, STORAGE_OK, &approval);
    PQfreemem(hmac);
}

/* ---- get --------------------------------------------------------------------------- */

static const char sql_approval_get[] =
    "SELECT" APPROVAL_COLUMNS
    " FROM auth_req a JOIN client c ON c.client_id = a.client_id"
    " WHERE a.ref_hash = $1";
static const struct storage_stmt stmt_approval_get = {"approval_get", sql_approval_get,
                                                      1};

static void finish_approval_get(union storage_cb cb, void *arg,
                                enum storage_status status, const PGresult *res)
{
    if (status != STORAGE_OK) {
        cb.approval(arg, status, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        cb.approval(arg, STORAGE_NOT_FOUND, NULL);
        return;
    }
    deliver_approval(cb, arg, res, 0);
}

int storage_approval_get(struct storage_conn *db, const char *ref_hash,
                         storage_approval_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.approval = cb};

    if (ref_hash == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, ref_hash);
    return storage_conn_send(db, &stmt_approval_get, &p, finish_approval_get, u, arg);
}

/* ---- decide ------------------------------------------------------------------------ */

/* cur locks the row and names the verdict: not_found (no longer pending, or expired),
 * conflict (generation or attempts changed since the page read them), code_expired
 * (approve after otp_expires_at), no_payload (approve a push request without $7) or
 * ok. Only ok updates the row, under the same compare-and-set conditions, and appends
 * the audit row. $4 is approve, wrong_code or deny; a wrong code that reaches $5
 * attempts denies the request. An approved push request becomes redeemed at once, since
 * its tokens ($7, sealed) go to the notification endpoint only. A final decision of a
 * ping or push request queues its notification. */
static const char sql_approval_decide[] =
    "WITH cur AS MATERIALIZED ("
    "  SELECT auth_req_id_hash,"
    "    CASE"
    "      WHEN status <> 'pending' OR now() >= expires_at THEN 'not_found'"
    "      WHEN otp_generation <> $2::int OR otp_attempts <> $3::int THEN 'conflict'"
    "      WHEN $4::text = 'approve' AND now() >= otp_expires_at THEN 'code_expired'"
    "      WHEN $4::text = 'approve' AND delivery_mode = 'push' AND $7::text IS NULL"
    "        THEN 'no_payload'"
    "      ELSE 'ok'"
    "    END AS verdict"
    "  FROM auth_req WHERE ref_hash = $1"
    "  FOR UPDATE"
    "), decided AS ("
    "  UPDATE auth_req a SET"
    "    status = CASE"
    "      WHEN $4::text = 'approve' AND a.delivery_mode = 'push' THEN 'redeemed'"
    "      WHEN $4::text = 'approve' THEN 'approved'"
    "      WHEN $4::text = 'deny' OR a.otp_attempts + 1 >= $5::int THEN 'denied'"
    "      ELSE a.status END,"
    "    otp_attempts = a.otp_attempts"
    "      + CASE WHEN $4::text = 'wrong_code' THEN 1 ELSE 0 END,"
    "    decided_at = CASE"
    "      WHEN $4::text <> 'wrong_code' OR a.otp_attempts + 1 >= $5::int THEN now()"
    "      ELSE a.decided_at END,"
    "    redeemed_at = CASE"
    "      WHEN $4::text = 'approve' AND a.delivery_mode = 'push' THEN now()"
    "      ELSE a.redeemed_at END"
    "  FROM cur"
    "  WHERE a.auth_req_id_hash = cur.auth_req_id_hash AND cur.verdict = 'ok'"
    "    AND a.status = 'pending' AND a.expires_at > now()"
    "    AND a.otp_generation = $2::int AND a.otp_attempts = $3::int"
    "  RETURNING a.*"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    auth_req_id_hash, attestation)"
    "  SELECT $6, client_id, subject, scope, 'approve',"
    "    CASE WHEN $4::text = 'approve' THEN 'approved'"
    "      WHEN $4::text = 'deny' THEN 'denied'"
    "      WHEN status = 'denied' THEN 'denied_too_many_attempts'"
    "      ELSE 'wrong_code' END,"
    "    auth_req_id_hash,"
    "    CASE WHEN $4::text = 'approve' THEN 'sms_otp' ELSE 'none' END"
    "  FROM decided"
    "  UNION ALL"
    "  SELECT $6, client_id, subject, scope, 'token', 'issued', auth_req_id_hash,"
    "    'sms_otp'"
    "  FROM decided WHERE status = 'redeemed'"
    "), notify AS ("
    "  INSERT INTO notification (auth_req_id_hash, client_id, mode, event, detail,"
    "    secrets, payload, request_id)"
    "  SELECT auth_req_id_hash, client_id, delivery_mode,"
    "    CASE WHEN status = 'denied' THEN 'denied' ELSE 'approved' END,"
    "    CASE WHEN status = 'denied' AND $4::text = 'deny' THEN 'denied_by_user'"
    "      WHEN status = 'denied' THEN 'too_many_wrong_codes' END,"
    "    notification_secrets,"
    "    CASE WHEN status = 'redeemed' THEN $7::text END, $6"
    "  FROM decided"
    "  WHERE delivery_mode IN ('ping', 'push')"
    "    AND status IN ('approved', 'denied', 'redeemed')"
    ")"
    " SELECT coalesce((SELECT verdict FROM cur), 'not_found'),"
    "   a.auth_req_id_hash IS NOT NULL," APPROVAL_COLUMNS " FROM (SELECT 1) AS one"
    " LEFT JOIN (decided a JOIN client c ON c.client_id = a.client_id) ON true";
static const struct storage_stmt stmt_approval_decide = {"approval_decide",
                                                         sql_approval_decide, 7};

static void finish_approval_decide(union storage_cb cb, void *arg,
                                   enum storage_status status, const PGresult *res)
{
    const char *verdict;

    if (status != STORAGE_OK) {
        cb.approval(arg, status, NULL);
        return;
    }
    if (PQntuples(res) != 1) {
        log_error("storage: approval_decide returned %d rows", PQntuples(res));
        cb.approval(arg, STORAGE_ERROR, NULL);
        return;
    }

    verdict = storage_col_text(res, 0, 0);
    if (verdict == NULL || strcmp(verdict, "not_found") == 0)
        cb.approval(arg, STORAGE_NOT_FOUND, NULL);
    else if (strcmp(verdict, "conflict") == 0)
        cb.approval(arg, STORAGE_CONFLICT, NULL);
    else if (strcmp(verdict, "code_expired") == 0)
        cb.approval(arg, STORAGE_LIMITED, NULL);
    else if (strcmp(verdict, "no_payload") == 0) {
        log_error("storage: approving a push request needs its token payload");
        cb.approval(arg, STORAGE_ERROR, NULL);
    } else if (strcmp(storage_col_text(res, 0, 1), "t") != 0)
        cb.approval(arg, STORAGE_CONFLICT, NULL); /* not reached: cur held the lock */
    else
        deliver_approval(cb, arg, res, 2);
}

int storage_approval_decide(struct storage_conn *db, const char *ref_hash,
                            int otp_generation, int otp_attempts,
                            enum storage_decision decision, int max_attempts,
                            const char *request_id, storage_approval_cb cb, void *arg)
{
    return storage_approval_decide_notify(db, ref_hash, otp_generation, otp_attempts,
                                          decision, max_attempts, NULL, request_id, cb,
                                          arg);
}

int storage_approval_decide_notify(struct storage_conn *db, const char *ref_hash,
                                   int otp_generation, int otp_attempts,
                                   enum storage_decision decision, int max_attempts,
                                   const char *push_payload, const char *request_id,
                                   storage_approval_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.approval = cb};
    const char *action;

    switch (decision) {
    case STORAGE_DECIDE_APPROVE:
        action = "approve";
        break;
    case STORAGE_DECIDE_WRONG_CODE:
        action = "wrong_code";
        break;
    case STORAGE_DECIDE_DENY:
        action = "deny";
        break;
    default:
        return -1;
    }
    if (ref_hash == NULL || cb == NULL || max_attempts <= 0)
        return -1;
    storage_param_text(&p, ref_hash);
    storage_param_int(&p, otp_generation);
    storage_param_int(&p, otp_attempts);
    storage_param_text(&p, action);
    storage_param_int(&p, max_attempts);
    storage_param_text(&p, request_id);
    storage_param_text(&p, push_payload);
    return storage_conn_send(db, &stmt_approval_decide, &p, finish_approval_decide, u,
                             arg);
}

/* ---- resend ------------------------------------------------------------------------ */

/* cur locks the row and names the verdict: not_found (no longer pending, or expired),
 * cooldown (the previous code went out less than $4 seconds ago) or ok. On ok the code
 * counts against the phone number's quota, and only if the quota allows it is the new
 * code stored. otp_attempts stay as they are, so wrong codes add up across resends. */
/* clang-format would split the SQL around the macro. */
/* clang-format off */
static const char sql_approval_resend[] =
    "WITH cur AS MATERIALIZED ("
    "  SELECT auth_req_id_hash, phone_number,"
    "    CASE"
    "      WHEN status <> 'pending' OR now() >= expires_at THEN 'not_found'"
    "      WHEN otp_sent_at + $4::int * interval '1 second' > now() THEN 'cooldown'"
    "      ELSE 'ok'"
    "    END AS verdict"
    "  FROM auth_req WHERE ref_hash = $1"
    "  FOR UPDATE"
    "), quota AS ("
    "  INSERT INTO sms_quota AS q (phone_number, sent_at)"
    "  SELECT phone_number, ARRAY[now()] FROM cur WHERE verdict = 'ok' AND $5::int > 0"
    STORAGE_SQL_QUOTA_UPSERT("$5", "$6")
    "  RETURNING phone_number"
    "), resent AS ("
    "  UPDATE auth_req a SET otp_hmac = $2::bytea,"
    "    otp_generation = a.otp_generation + 1, otp_sent_at = now(),"
    "    otp_expires_at = least(now() + $3::int * interval '1 second', a.expires_at)"
    "  FROM cur, quota"
    "  WHERE a.auth_req_id_hash = cur.auth_req_id_hash AND cur.verdict = 'ok'"
    "  RETURNING a.auth_req_id_hash, a.client_id, a.subject, a.scope"
    "), audit AS ("
    "  INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    "    detail, auth_req_id_hash)"
    "  SELECT $7, client_id, subject, scope, 'send_code', 'sent', 'resend',"
    "    auth_req_id_hash"
    "  FROM resent"
    ")"
    " SELECT coalesce((SELECT verdict FROM cur), 'not_found'),"
    "   (SELECT count(*) FROM resent)";
/* clang-format on */
static const struct storage_stmt stmt_approval_resend = {"approval_resend",
                                                         sql_approval_resend, 7};

static void finish_approval_resend(union storage_cb cb, void *arg,
                                   enum storage_status status, const PGresult *res)
{
    const char *verdict;

    if (status != STORAGE_OK) {
        cb.done(arg, status);
        return;
    }
    verdict = storage_col_text(res, 0, 0);
    if (verdict == NULL || strcmp(verdict, "not_found") == 0)
        cb.done(arg, STORAGE_NOT_FOUND);
    else if (strcmp(verdict, "ok") == 0 && storage_col_int64(res, 0, 1) > 0)
        cb.done(arg, STORAGE_OK);
    else
        cb.done(arg, STORAGE_LIMITED); /* cooldown, or the phone number's quota */
}

int storage_approval_resend(struct storage_conn *db, const char *ref_hash,
                            const unsigned char *otp_hmac, size_t otp_hmac_len,
                            int otp_lifetime, int cooldown, int sms_per_phone_max,
                            int sms_per_phone_window, const char *request_id,
                            storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (ref_hash == NULL || cb == NULL || otp_hmac == NULL || otp_hmac_len == 0 ||
        otp_lifetime <= 0 || cooldown < 0 || sms_per_phone_window <= 0)
        return -1;
    storage_param_text(&p, ref_hash);
    storage_param_bytes(&p, otp_hmac, otp_hmac_len);
    storage_param_int(&p, otp_lifetime);
    storage_param_int(&p, cooldown);
    storage_param_int(&p, sms_per_phone_max);
    storage_param_int(&p, sms_per_phone_window);
    storage_param_text(&p, request_id);
    return storage_conn_send(db, &stmt_approval_resend, &p, finish_approval_resend, u,
                             arg);
}
