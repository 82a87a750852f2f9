/* audit.c - appending rows to the audit log
 * SPDX-License-Identifier: MIT
 *
 * Most audit rows are written by the statement that makes the decision (auth_req.c,
 * approval.c), so a decision and its record commit together. This file covers decisions
 * taken outside storage/, such as a request rejected before any row exists.
 */
#include "storage/storage_int.h"

static const char sql_audit_append[] =
    "INSERT INTO audit_log (request_id, client_id, subject, scope, action, decision,"
    " detail, auth_req_id_hash, attestation)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, 'none'))";
static const struct storage_stmt stmt_audit_append = {"audit_append", sql_audit_append,
                                                      9};

static void finish_audit_append(union storage_cb cb, void *arg,
                                enum storage_status status, const PGresult *res)
{
    (void)res;
    if (cb.done)
        cb.done(arg, status);
}

int storage_audit_append(struct storage_conn *db, const struct storage_audit *row,
                         storage_done_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.done = cb};

    if (row == NULL || row->action == NULL || row->decision == NULL)
        return -1;
    storage_param_text(&p, row->request_id);
    storage_param_text(&p, row->client_id);
    storage_param_text(&p, row->subject);
    storage_param_text(&p, row->scope);
    storage_param_text(&p, row->action);
    storage_param_text(&p, row->decision);
    storage_param_text(&p, row->detail);
    storage_param_text(&p, row->auth_req_id_hash);
    storage_param_text(&p, row->attestation);
    return storage_conn_send(db, &stmt_audit_append, &p, finish_audit_append, u, arg);
}
