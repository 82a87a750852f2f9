/* client_assertion.c - the jti values of client assertions already used (RFC 7523)
 * SPDX-License-Identifier: MIT
 */
#include "storage/storage_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Inserts each jti, or takes over a row whose assertion has expired (a jti may come
 * back once the assertion that used it can no longer be replayed). The values come as
 * three arrays, in batches (batch.c). Each gets a row saying whether it was recorded,
 * and false means the jti is in use, which is a replay. Rows are inserted in key order,
 * so two batches that share a jti wait for each other instead of deadlocking. One batch
 * never contains a key twice, because ON CONFLICT DO UPDATE cannot change a row twice. */
static const char sql_record[] =
    "WITH input AS ("
    "  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY"
    "    AS i(client_id, jti, expires_at, n)"
    "), recorded AS ("
    "  INSERT INTO client_assertion_jti AS j (client_id, jti, expires_at)"
    "  SELECT client_id, jti, to_timestamp(expires_at) FROM input"
    "  ORDER BY client_id, jti"
    "  ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at"
    "  WHERE j.expires_at <= now()"
    "  RETURNING j.client_id, j.jti"
    ")"
    " SELECT i.n, r.jti IS NOT NULL FROM input i"
    "   LEFT JOIN recorded r ON r.client_id = i.client_id AND r.jti = i.jti"
    " ORDER BY i.n";
static const struct storage_stmt stmt_record = {"client_assertion_record", sql_record, 3};

static void finish_records(const struct storage_batch_call *calls, size_t n,
                           enum storage_status status, const PGresult *res)
{
    for (size_t i = 0; i < n; i++) {
        enum storage_status s = status;

        if (s == STORAGE_OK && strcmp(storage_col_text(res, (int)i, 1), "t") != 0)
            s = STORAGE_CONFLICT;
        calls[i].cb.done(calls[i].arg, s);
    }
}

static const struct storage_batch_kind record_kind = {STORAGE_BATCH_JTI, &stmt_record, 2,
                                                      finish_records};

int storage_client_assertion_record(struct storage_conn *db, const char *client_id,
                                    const char *jti, int64_t expires_at,
                                    storage_done_cb cb, void *arg)
{
    char expires[24];
    const char *fields[] = {client_id, jti, expires};
    union storage_cb u = {.done = cb};

    if (!client_id || !jti || !cb)
        return -1;
    snprintf(expires, sizeof(expires), "%" PRId64, expires_at);
    return storage_batch_add(db, &record_kind, fields, u, arg);
}

/* SKIP LOCKED lets sweeps on several instances share the work. */
static const char sql_purge[] =
    "WITH purged AS ("
    "  DELETE FROM client_assertion_jti WHERE (client_id, jti) IN ("
    "    SELECT client_id, jti FROM client_assertion_jti WHERE expires_at <= now()"
    "    ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED)"
    "  RETURNING 1"
    ")"
    " SELECT count(*) FROM purged";
static const struct storage_stmt stmt_purge = {"client_assertion_purge", sql_purge, 0};

static void finish_purge(union storage_cb cb, void *arg, enum storage_status status,
                         const PGresult *res)
{
    cb.count(arg, status, status == STORAGE_OK ? storage_col_int(res, 0, 0) : 0);
}

int storage_client_assertion_purge(struct storage_conn *db, storage_count_cb cb,
                                   void *arg)
{
    union storage_cb u = {.count = cb};

    if (!cb)
        return -1;
    return storage_conn_send(db, &stmt_purge, NULL, finish_purge, u, arg);
}
