/* client.c - OAuth clients: the asynchronous lookup and the command-line management
 * SPDX-License-Identifier: MIT
 */
#include "storage/storage_int.h"

#include <stdio.h>
#include <string.h>

/* Columns read by client_from_row, in order. */
#define CLIENT_COLUMNS                                                                   \
    "client_id, client_name, secret_hash, token_endpoint_auth_method, scope,"            \
    " backchannel_token_delivery_mode, backchannel_client_notification_endpoint,"        \
    " grant_types, floor(extract(epoch FROM created_at))::int8,"                         \
    " jwks::text, jwks_uri, token_endpoint_auth_signing_alg, client_secret_sealed,"      \
    " backchannel_user_code_parameter, tls_client_auth_subject_dn,"                      \
    " tls_client_auth_san_dns, tls_client_auth_san_uri, tls_client_auth_san_ip,"         \
    " tls_client_auth_san_email, backchannel_authentication_request_signing_alg"

static void client_from_row(const PGresult *res, int row, struct storage_client *c)
{
    c->client_id = storage_col_text(res, row, 0);
    c->client_name = storage_col_text(res, row, 1);
    c->secret_hash = storage_col_text(res, row, 2);
    c->token_endpoint_auth_method = storage_col_text(res, row, 3);
    c->scope = storage_col_text(res, row, 4);
    c->backchannel_token_delivery_mode = storage_col_text(res, row, 5);
    c->backchannel_client_notification_endpoint = storage_col_text(res, row, 6);
    c->grant_types = storage_col_text(res, row, 7);
    c->created_at = storage_col_int64(res, row, 8);
    c->jwks = storage_col_text(res, row, 9);
    c->jwks_uri = storage_col_text(res, row, 10);
    c->token_endpoint_auth_signing_alg = storage_col_text(res, row, 11);
    c->client_secret_sealed = storage_col_text(res, row, 12);
    c->backchannel_user_code_parameter = strcmp(storage_col_text(res, row, 13), "t") == 0;
    c->tls_client_auth_subject_dn = storage_col_text(res, row, 14);
    c->tls_client_auth_san_dns = storage_col_text(res, row, 15);
    c->tls_client_auth_san_uri = storage_col_text(res, row, 16);
    c->tls_client_auth_san_ip = storage_col_text(res, row, 17);
    c->tls_client_auth_san_email = storage_col_text(res, row, 18);
    c->backchannel_authentication_request_signing_alg = storage_col_text(res, row, 19);
}

/* ---- asynchronous lookup ----------------------------------------------------------- */

static const char sql_client_get[] =
    "SELECT " CLIENT_COLUMNS " FROM client WHERE client_id = $1";
static const struct storage_stmt stmt_client_get = {"client_get", sql_client_get, 1};

static void finish_client_get(union storage_cb cb, void *arg, enum storage_status status,
                              const PGresult *res)
{
    struct storage_client client;

    if (status != STORAGE_OK) {
        cb.client(arg, status, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        cb.client(arg, STORAGE_NOT_FOUND, NULL);
        return;
    }
    client_from_row(res, 0, &client);
    cb.client(arg, STORAGE_OK, &client);
}

int storage_client_get(struct storage_conn *db, const char *client_id,
                       storage_client_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.client = cb};

    if (client_id == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, client_id);
    return storage_conn_send(db, &stmt_client_get, &p, finish_client_get, u, arg);
}

/* ---- command line ------------------------------------------------------------------ */

static const char sql_client_create[] =
    "INSERT INTO client (client_id, client_name, secret_hash, token_endpoint_auth_method,"
    " scope, backchannel_token_delivery_mode, backchannel_client_notification_endpoint,"
    " grant_types, jwks, jwks_uri, token_endpoint_auth_signing_alg, client_secret_sealed,"
    " backchannel_user_code_parameter, tls_client_auth_subject_dn, "
    "tls_client_auth_san_dns,"
    " tls_client_auth_san_uri, tls_client_auth_san_ip, tls_client_auth_san_email,"
    " backchannel_authentication_request_signing_alg)"
    " VALUES ($1, $2, $3, $4, $5, coalesce($6, 'poll'), $7,"
    " coalesce($8, 'urn:openid:params:grant-type:ciba'), $9::jsonb, $10, $11, $12, $13,"
    " $14, $15, $16, $17, $18, $19)";

/* Explains a rejected insert in words an operator can act on. */
static void describe_client_error(const PGresult *res, char *err, size_t err_len)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint =
        res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *message = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (state && strcmp(state, "23505") == 0)
        snprintf(err, err_len, "a client with this client_id already exists");
    else if (state && strcmp(state, "23502") == 0)
        snprintf(err, err_len, "a required client field is missing");
    else if (state && strcmp(state, "23514") == 0)
        snprintf(err, err_len, "invalid client field (constraint %s)",
                 constraint ? constraint : "unknown");
    else
        snprintf(err, err_len, "creating the client failed: %s",
                 message ? message : "no result from the database");
}

int storage_sync_client_create(struct storage_sync *s, const struct storage_client_new *c,
                               char *err, size_t err_len)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc = 0;

    storage_param_text(&p, c->client_id);
    storage_param_text(&p, c->client_name);
    storage_param_text(&p, c->secret_hash);
    storage_param_text(&p, c->token_endpoint_auth_method);
    storage_param_text(&p, c->scope);
    storage_param_text(&p, c->backchannel_token_delivery_mode);
    storage_param_text(&p, c->backchannel_client_notification_endpoint);
    storage_param_text(&p, c->grant_types);
    storage_param_text(&p, c->jwks);
    storage_param_text(&p, c->jwks_uri);
    storage_param_text(&p, c->token_endpoint_auth_signing_alg);
    storage_param_text(&p, c->client_secret_sealed);
    storage_param_bool(&p, c->backchannel_user_code_parameter);
    storage_param_text(&p, c->tls_client_auth_subject_dn);
    storage_param_text(&p, c->tls_client_auth_san_dns);
    storage_param_text(&p, c->tls_client_auth_san_uri);
    storage_param_text(&p, c->tls_client_auth_san_ip);
    storage_param_text(&p, c->tls_client_auth_san_email);
    storage_param_text(&p, c->backchannel_authentication_request_signing_alg);
    res = storage_sync_exec(s, sql_client_create, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        describe_client_error(res, err, err_len);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

static const char sql_client_each[] =
    "SELECT " CLIENT_COLUMNS " FROM client"
    " WHERE $1::text IS NULL OR client_id = $1 ORDER BY client_id";

int storage_sync_client_each(struct storage_sync *s, const char *client_id,
                             void (*fn)(void *arg, const struct storage_client *c),
                             void *arg)
{
    struct storage_params p = {0};
    PGresult *res;
    int n;

    storage_param_text(&p, client_id);
    res = storage_sync_exec(s, sql_client_each, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing clients", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct storage_client c;

        client_from_row(res, i, &c);
        fn(arg, &c);
    }
    PQclear(res);
    return n;
}

static const char sql_client_delete[] = "DELETE FROM client WHERE client_id = $1";

int storage_sync_client_delete(struct storage_sync *s, const char *client_id)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc;

    storage_param_text(&p, client_id);
    res = storage_sync_exec(s, sql_client_delete, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("deleting a client", res);
        rc = -1;
    } else {
        rc = strcmp(PQcmdTuples(res), "0") == 0 ? 0 : 1;
    }
    PQclear(res);
    return rc;
}
