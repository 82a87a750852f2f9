/* issuer.c - trusted issuers of login_hint_token: the asynchronous lookup and the
 * command-line management
 * SPDX-License-Identifier: MIT
 */
#include "storage/storage_int.h"

#include <stdio.h>
#include <string.h>

/* Columns read by issuer_from_row, in order. */
#define ISSUER_COLUMNS                                                                   \
    "issuer, jwks::text, jwks_uri, user_claim, floor(extract(epoch FROM "                \
    "created_at))::int8"

static void issuer_from_row(const PGresult *res, int row, struct storage_issuer *i)
{
    i->issuer = storage_col_text(res, row, 0);
    i->jwks = storage_col_text(res, row, 1);
    i->jwks_uri = storage_col_text(res, row, 2);
    i->user_claim = storage_col_text(res, row, 3);
    i->created_at = storage_col_int64(res, row, 4);
}

/* ---- asynchronous lookup ----------------------------------------------------------- */

static const char sql_issuer_find[] =
    "SELECT " ISSUER_COLUMNS " FROM trusted_issuer WHERE issuer = $1";
static const struct storage_stmt stmt_issuer_find = {"issuer_find", sql_issuer_find, 1};

static void finish_issuer_find(union storage_cb cb, void *arg, enum storage_status status,
                               const PGresult *res)
{
    struct storage_issuer issuer;

    if (status != STORAGE_OK) {
        cb.issuer(arg, status, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        cb.issuer(arg, STORAGE_NOT_FOUND, NULL);
        return;
    }
    issuer_from_row(res, 0, &issuer);
    cb.issuer(arg, STORAGE_OK, &issuer);
}

int storage_issuer_find(struct storage_conn *db, const char *issuer, storage_issuer_cb cb,
                        void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.issuer = cb};

    if (issuer == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, issuer);
    return storage_conn_send(db, &stmt_issuer_find, &p, finish_issuer_find, u, arg);
}

/* ---- command line ------------------------------------------------------------------ */

static const char sql_issuer_add[] =
    "INSERT INTO trusted_issuer (issuer, jwks, jwks_uri, user_claim)"
    " VALUES ($1, $2::jsonb, $3, $4)";

/* Explains a rejected insert in words an operator can act on. */
static void describe_issuer_error(const PGresult *res, char *err, size_t err_len)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint =
        res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *message = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (state && strcmp(state, "23505") == 0)
        snprintf(err, err_len, "this issuer is already trusted; delete it first");
    else if (state && strcmp(state, "23514") == 0 && constraint &&
             strcmp(constraint, "trusted_issuer_one_key_source") == 0)
        snprintf(err, err_len, "exactly one of jwks and jwks_uri is required");
    else if (state && (strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0))
        snprintf(err, err_len, "invalid issuer field (constraint %s)",
                 constraint ? constraint : "not null");
    else if (state && strcmp(state, "22P02") == 0)
        snprintf(err, err_len, "the jwks is not valid JSON");
    else
        snprintf(err, err_len, "adding the issuer failed: %s",
                 message ? message : "no result from the database");
}

int storage_sync_issuer_add(struct storage_sync *s, const struct storage_issuer *in,
                            char *err, size_t err_len)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc = 0;

    storage_param_text(&p, in->issuer);
    storage_param_text(&p, in->jwks);
    storage_param_text(&p, in->jwks_uri);
    storage_param_text(&p, in->user_claim);
    res = storage_sync_exec(s, sql_issuer_add, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        describe_issuer_error(res, err, err_len);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

static const char sql_issuer_each[] =
    "SELECT " ISSUER_COLUMNS " FROM trusted_issuer ORDER BY issuer";

int storage_sync_issuer_each(struct storage_sync *s,
                             void (*fn)(void *arg, const struct storage_issuer *i),
                             void *arg)
{
    PGresult *res = storage_sync_exec(s, sql_issuer_each, NULL);
    int n;

    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing trusted issuers", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int row = 0; row < n; row++) {
        struct storage_issuer i;

        issuer_from_row(res, row, &i);
        fn(arg, &i);
    }
    PQclear(res);
    return n;
}

static const char sql_issuer_delete[] = "DELETE FROM trusted_issuer WHERE issuer = $1";

int storage_sync_issuer_delete(struct storage_sync *s, const char *issuer)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc;

    storage_param_text(&p, issuer);
    res = storage_sync_exec(s, sql_issuer_delete, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("deleting a trusted issuer", res);
        rc = -1;
    } else {
        rc = strcmp(PQcmdTuples(res), "0") == 0 ? 0 : 1;
    }
    PQclear(res);
    return rc;
}
