/* params.c - statement parameters, column readers and error mapping for storage/
 * SPDX-License-Identifier: MIT
 */
#include "storage/storage_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int param_slot(struct storage_params *p)
{
    if (p->n >= STORAGE_MAX_PARAMS) {
        /* A statement with more parameters is a bug in storage/, not a runtime case. */
        log_error("storage: more than %d statement parameters", STORAGE_MAX_PARAMS);
        abort();
    }
    return p->n++;
}

void storage_param_text(struct storage_params *p, const char *value)
{
    int i = param_slot(p);

    p->values[i] = value;
    p->lengths[i] = 0;
    p->formats[i] = 0;
}

void storage_param_int(struct storage_params *p, int64_t value)
{
    int i = param_slot(p);

    snprintf(p->numbers[i], sizeof(p->numbers[i]), "%" PRId64, value);
    p->values[i] = p->numbers[i];
    p->lengths[i] = 0;
    p->formats[i] = 0;
}

void storage_param_bool(struct storage_params *p, bool value)
{
    storage_param_text(p, value ? "true" : "false");
}

void storage_param_bytes(struct storage_params *p, const void *data, size_t len)
{
    int i = param_slot(p);

    p->values[i] = data;
    p->lengths[i] = (int)len;
    p->formats[i] = 1;
}

const char *storage_col_text(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return PQgetvalue(res, row, col);
}

int64_t storage_col_int64(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

int storage_col_int(const PGresult *res, int row, int col)
{
    return (int)storage_col_int64(res, row, col);
}

enum storage_status storage_status_of(const PGresult *res)
{
    const char *state;

    if (res == NULL)
        return STORAGE_UNAVAILABLE;
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
        return STORAGE_OK;
    case PGRES_FATAL_ERROR:
        break;
    default:
        return STORAGE_ERROR;
    }

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == NULL) /* raised by libpq itself, e.g. a lost connection */
        return STORAGE_UNAVAILABLE;
    /* 57014 query_canceled (statement_timeout), 57P01..57P03 shutdown or startup,
     * class 08 connection exceptions. */
    if (strcmp(state, "57014") == 0 || strncmp(state, "57P", 3) == 0 ||
        strncmp(state, "08", 2) == 0)
        return STORAGE_UNAVAILABLE;
    /* Everything else, deadlocks included, is a fault of ours: the statements here run
     * in READ COMMITTED, and no two of them lock rows in opposite orders. */
    return STORAGE_ERROR;
}

void storage_log_failure(const char *statement, const PGresult *res)
{
    const char *message = NULL;
    const char *state = NULL;

    if (res != NULL) {
        message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (message == NULL)
            message = PQresStatus(PQresultStatus(res));
    }
    if (storage_status_of(res) == STORAGE_ERROR)
        log_error("storage: %s failed: %s (SQLSTATE %s)", statement,
                  message ? message : "no result", state ? state : "none");
    else
        log_warn("storage: %s failed: %s (SQLSTATE %s)", statement,
                 message ? message : "no result", state ? state : "none");
}

void storage_notice_to_log(void *arg, const char *message)
{
    size_t len = strlen(message);

    (void)arg;
    while (len > 0 && message[len - 1] == '\n')
        len--;
    log_debug("storage: server notice: %.*s", (int)len, message);
}
