/* request_object.c - the jti values of signed authentication requests already used
 * (CIBA Core 1.0 section 7.1.1)
 * SPDX-License-Identifier: MIT
 */
#include "storage/storage_int.h"

/* Inserts the jti, or takes over a row whose request object has expired. No row comes
 * back when the jti is in use: a replay. */
static const char sql_record[] =
    "INSERT INTO request_object_jti AS j (client_id, jti, expires_at)"
    " VALUES ($1, $2, to_timestamp($3::int8))"
    " ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE j.expires_at <= now()"
    " RETURNING 1";
static const struct storage_stmt stmt_record = {"request_object_record", sql_record, 3};

static void finish_record(union storage_cb cb, void *arg, enum storage_status status,
                          const PGresult *res)
{
    if (status == STORAGE_OK && PQntuples(res) == 0)
        status = STORAGE_CONFLICT;
    cb.done(arg, status);
}

int storage_request_object_record(struct storage_conn *db, const char *client_id,
                                  const char *jti, int64_t expires_at, storage_done_cb cb,
                                  void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (!client_id || !jti || !cb)
        return -1;
    storage_param_text(&p, client_id);
    storage_param_text(&p, jti);
    storage_param_int(&p, expires_at);
    return storage_conn_send(db, &stmt_record, &p, finish_record, u, arg);
}

/* SKIP LOCKED lets sweeps on several instances share the work. */
static const char sql_purge[] =
    "WITH purged AS ("
    "  DELETE FROM request_object_jti WHERE (client_id, jti) IN ("
    "    SELECT client_id, jti FROM request_object_jti WHERE expires_at <= now()"
    "    ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED)"
    "  RETURNING 1"
    ")"
    " SELECT count(*) FROM purged";
static const struct storage_stmt stmt_purge = {"request_object_purge", sql_purge, 0};

static void finish_purge(union storage_cb cb, void *arg, enum storage_status status,
                         const PGresult *res)
{
    cb.count(arg, status, status == STORAGE_OK ? storage_col_int(res, 0, 0) : 0);
}

int storage_request_object_purge(struct storage_conn *db, storage_count_cb cb, void *arg)
{
    union storage_cb u = {.count = cb};

    if (!cb)
        return -1;
    return storage_conn_send(db, &stmt_purge, NULL, finish_purge, u, arg);
}
