/* batch.c - calls of one kind sent to the database together, as one statement
 * SPDX-License-Identifier: MIT
 *
 * Under load, PostgreSQL spends most of a small write's CPU on per-statement work: the
 * executor start, the commit, the wake-up of the WAL writer and the round trip. So the
 * most frequent statements (polls, client assertion jti values, new requests) take
 * arrays: their callers add calls to the connection's open batch of that kind, and one
 * statement serves them all, with one result row per call in the order given.
 *
 * A batch goes out at the end of the loop pass that opened it (a deferred completion
 * of the connection), unless a batch of the same kind is still in flight on the
 * connection. Then it takes more calls until the result of that one arrives. Under load
 * a batch therefore gathers the calls that arrived during one statement, and on an idle
 * connection each call goes out in the pass that made it, with no added wait. A full
 * batch, and one that meets a second call with the same key, goes out at the end of
 * the pass regardless. Statements of one connection run in the order sent. A batch
 * that fails with an error in one of its rows is sent again one call at a time.
 */
#include "storage/storage_int.h"

#include <stdlib.h>
#include <string.h>

struct storage_batch {
    struct storage_deferred flush; /* first member */
    struct storage_conn *db;
    const struct storage_batch_kind *kind;
    bool sealed;  /* full, or a second call with a key in it came: send at the flush */
    bool waiting; /* its flush found a batch in flight, and no flush is queued */
    size_t n;
    struct storage_batch_call calls[STORAGE_BATCH_MAX];
};

static void batch_free(struct storage_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        for (int f = 0; f < STORAGE_BATCH_FIELDS; f++)
            free(b->calls[i].fields[f]);
    free(b);
}

/* Completes every call of the batch, then frees it. res is NULL unless status is
 * STORAGE_OK. */
static void batch_finish(struct storage_batch *b, enum storage_status status,
                         const PGresult *res)
{
    b->kind->finish(b->calls, b->n, status, res);
    batch_free(b);
}

/* Queues the flush of the open batch that waited for the batches in flight. */
static void resume_waiting(struct storage_conn *db, struct storage_batches *q)
{
    if (q->in_flight == 0 && q->open && q->open->waiting) {
        q->open->waiting = false;
        storage_conn_defer(db, &q->open->flush);
    }
}

static void on_flush(struct storage_deferred *d, enum storage_status status);

/* Sends each call of a failed batch again in a batch of its own. A statement error
 * rolled back the whole statement, so no call took effect, and the call whose row
 * failed (a user deleted meanwhile, say) now fails alone. */
static void batch_split(struct storage_batch *b)
{
    log_warn("storage: %s failed for a batch of %zu calls; sending each call alone",
             b->kind->stmt->name, b->n);
    for (size_t i = 0; i < b->n; i++) {
        struct storage_batch *single = util_calloc(1, sizeof(*single));

        single->db = b->db;
        single->kind = b->kind;
        single->flush.run = on_flush;
        single->sealed = true;
        single->n = 1;
        single->calls[0] = b->calls[i]; /* takes over the field copies */
        storage_conn_defer(b->db, &single->flush);
    }
    free(b);
}

static void finish_batch(union storage_cb cb, void *arg, enum storage_status status,
                         const PGresult *res)
{
    struct storage_batch *b = arg;
    struct storage_conn *db = b->db;
    struct storage_batches *q = storage_conn_batches(db, b->kind->id);

    (void)cb;
    q->in_flight--;
    /* Only a statement that failed was rolled back and may go again. A lost connection
     * or a timeout would fail the calls again, one by one. */
    if (status == STORAGE_ERROR && b->n > 1) {
        batch_split(b);
        resume_waiting(db, q);
        return;
    }
    if (status == STORAGE_OK && PQntuples(res) != (int)b->n) {
        /* The statement committed, so its calls must not be sent again. */
        log_error("storage: %s returned %d rows for %zu calls", b->kind->stmt->name,
                  PQntuples(res), b->n);
        status = STORAGE_ERROR;
    }
    batch_finish(b, status, status == STORAGE_OK ? res : NULL);
    resume_waiting(db, q);
}

/* Builds the text[] literal of field f of every call: each value quoted, with a
 * backslash before " and \, and NULL unquoted. */
static char *array_of(const struct storage_batch *b, int f)
{
    size_t cap = 3, len = 0;
    char *buf;

    for (size_t i = 0; i < b->n; i++) {
        const char *v = b->calls[i].fields[f];

        cap += (v ? 2 * strlen(v) + 2 : 4) + 1;
    }
    buf = util_malloc(cap);
    buf[len++] = '{';
    for (size_t i = 0; i < b->n; i++) {
        const char *v = b->calls[i].fields[f];

        if (i > 0)
            buf[len++] = ',';
        if (!v) {
            memcpy(buf + len, "NULL", 4);
            len += 4;
            continue;
        }
        buf[len++] = '"';
        for (const char *p = v; *p; p++) {
            if (*p == '"' || *p == '\\')
                buf[len++] = '\\';
            buf[len++] = *p;
        }
        buf[len++] = '"';
    }
    buf[len++] = '}';
    buf[len] = '\0';
    return buf;
}

/* The batch's deferred flush: sends the statement, or leaves the batch open while
 * another of its kind is in flight, or fails every call when the connection is being
 * freed or refuses the statement. */
static void on_flush(struct storage_deferred *d, enum storage_status status)
{
    struct storage_batch *b = (struct storage_batch *)d;
    struct storage_batches *q = storage_conn_batches(b->db, b->kind->id);
    const struct storage_stmt *stmt = b->kind->stmt;
    struct storage_params p = {0};
    union storage_cb u = {0};
    char *arrays[STORAGE_BATCH_FIELDS] = {NULL};
    int rc;

    if (status == STORAGE_OK && !b->sealed && q->in_flight > 0) {
        b->waiting = true;
        return;
    }
    if (q->open == b)
        q->open = NULL;
    if (status != STORAGE_OK) {
        batch_finish(b, status, NULL);
        return;
    }
    for (int f = 0; f < stmt->n_params; f++) {
        arrays[f] = array_of(b, f);
        storage_param_text(&p, arrays[f]);
    }
    rc = storage_conn_send(b->db, stmt, &p, finish_batch, u, b);
    for (int f = 0; f < stmt->n_params; f++)
        free(arrays[f]);
    if (rc != 0)
        batch_finish(b, STORAGE_UNAVAILABLE, NULL);
    else
        q->in_flight++;
}

/* True when the batch has a call equal to fields in the kind's key fields. */
static bool batch_has(const struct storage_batch *b, const char *const fields[])
{
    for (size_t i = 0; i < b->n; i++) {
        int f = 0;

        while (f < b->kind->key_fields && b->calls[i].fields[f] && fields[f] &&
               strcmp(b->calls[i].fields[f], fields[f]) == 0)
            f++;
        if (f == b->kind->key_fields)
            return true;
    }
    return false;
}

int storage_batch_add(struct storage_conn *db, const struct storage_batch_kind *kind,
                      const char *const fields[], union storage_cb cb, void *arg)
{
    struct storage_batches *q;
    struct storage_batch *b;
    struct storage_batch_call *call;

    if (!storage_conn_is_up(db))
        return -1;
    q = storage_conn_batches(db, kind->id);
    b = q->open;
    if (b && (b->n == STORAGE_BATCH_MAX || batch_has(b, fields) ||
              (kind->fits && !kind->fits(&b->calls[0], fields)))) {
        b->sealed = true;
        if (b->waiting) {
            b->waiting = false;
            storage_conn_defer(db, &b->flush);
        }
        q->open = b = NULL;
    }
    if (!b) {
        b = util_calloc(1, sizeof(*b));
        b->db = db;
        b->kind = kind;
        b->flush.run = on_flush;
        q->open = b;
        storage_conn_defer(db, &b->flush);
    }
    call = &b->calls[b->n++];
    for (int f = 0; f < kind->stmt->n_params; f++)
        call->fields[f] = fields[f] ? util_strdup(fields[f]) : NULL;
    call->cb = cb;
    call->arg = arg;
    return 0;
}
