/* keys.c - JWS signing keys: the current one and recently retired ones
 * SPDX-License-Identifier: MIT
 *
 * A retired key stays published (in the JWKS) for publish_seconds after retirement,
 * so tokens it signed can still be verified until they expire.
 */
#include "storage/storage_int.h"

#include <stdlib.h>

/* Keys still published, current key first, then newest first. $2 true lists all. */
static const char sql_keys_load[] =
    "SELECT kid, alg, private_key, public_jwk::text,"
    " floor(extract(epoch FROM created_at))::int8,"
    " floor(extract(epoch FROM retired_at))::int8"
    " FROM signing_key"
    " WHERE retired_at IS NULL OR retired_at > now() - $1::int * interval '1 second'"
    "  OR $2::bool"
    " ORDER BY retired_at IS NULL DESC, created_at DESC, kid";
static const struct storage_stmt stmt_keys_load = {"keys_load", sql_keys_load, 2};

static void key_from_row(const PGresult *res, int row, struct storage_key *k)
{
    k->kid = storage_col_text(res, row, 0);
    k->alg = storage_col_text(res, row, 1);
    k->private_key = storage_col_text(res, row, 2);
    k->public_jwk = storage_col_text(res, row, 3);
    k->created_at = storage_col_int64(res, row, 4);
    k->retired_at = storage_col_int64(res, row, 5);
}

static void finish_keys_load(union storage_cb cb, void *arg, enum storage_status status,
                             const PGresult *res)
{
    struct storage_key *keys;
    int n;

    if (status != STORAGE_OK) {
        cb.keys(arg, status, NULL, 0);
        return;
    }
    n = PQntuples(res);
    keys = util_calloc(n > 0 ? (size_t)n : 1, sizeof(*keys));
    for (int i = 0; i < n; i++)
        key_from_row(res, i, &keys[i]);
    cb.keys(arg, STORAGE_OK, keys, (size_t)n);
    free(keys);
}

int storage_keys_load(struct storage_conn *db, int publish_seconds, storage_keys_cb cb,
                      void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.keys = cb};

    if (cb == NULL || publish_seconds < 0)
        return -1;
    storage_param_int(&p, publish_seconds);
    storage_param_bool(&p, false);
    return storage_conn_send(db, &stmt_keys_load, &p, finish_keys_load, u, arg);
}

/* ---- command line ------------------------------------------------------------------ */

/* The table lock makes concurrent key additions take turns, so each one retires the key
 * the previous one added instead of failing on signing_key_one_current. */
static const char sql_key_lock[] = "LOCK TABLE signing_key IN SHARE ROW EXCLUSIVE MODE";
static const char sql_key_retire[] =
    "UPDATE signing_key SET retired_at = clock_timestamp() WHERE retired_at IS NULL";
static const char sql_key_insert[] =
    "INSERT INTO signing_key (kid, alg, private_key, public_jwk)"
    " VALUES ($1, $2, $3, $4::jsonb)";

/* Runs one statement of the key transaction; logs a failure. */
static int key_step(struct storage_sync *s, const char *what, const char *sql,
                    const struct storage_params *p)
{
    PGresult *res = storage_sync_exec(s, sql, p);
    int rc = 0;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure(what, res);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

int storage_sync_key_add(struct storage_sync *s, const char *kid, const char *alg,
                         const char *private_key, const char *public_jwk)
{
    struct storage_params p = {0};

    storage_param_text(&p, kid);
    storage_param_text(&p, alg);
    storage_param_text(&p, private_key);
    storage_param_text(&p, public_jwk);
    if (key_step(s, "starting the key transaction", "BEGIN", NULL) != 0)
        return -1;
    if (key_step(s, "locking signing_key", sql_key_lock, NULL) != 0 ||
        key_step(s, "retiring the current key", sql_key_retire, NULL) != 0 ||
        key_step(s, "adding a signing key", sql_key_insert, &p) != 0) {
        if (key_step(s, "rolling back the key transaction", "ROLLBACK", NULL) != 0)
            log_error("storage: rollback of the key transaction failed");
        return -1;
    }
    return key_step(s, "committing the new key", "COMMIT", NULL);
}

int storage_sync_key_each(struct storage_sync *s, int publish_seconds, bool all,
                          void (*fn)(void *arg, const struct storage_key *k), void *arg)
{
    struct storage_params p = {0};
    PGresult *res;
    int n;

    storage_param_int(&p, publish_seconds);
    storage_param_bool(&p, all);
    res = storage_sync_exec(s, sql_keys_load, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing signing keys", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct storage_key k;

        key_from_row(res, i, &k);
        fn(arg, &k);
    }
    PQclear(res);
    return n;
}
