/* storage_int.h - what the files of storage/ share: statement descriptors, parameter
 * lists, result helpers and the two connection types
 * SPDX-License-Identifier: MIT
 *
 * Nothing outside storage/ includes this header, so PGresult and PGconn stay inside.
 */
#ifndef CIBAD_STORAGE_INT_H
#define CIBAD_STORAGE_INT_H

#include <libpq-fe.h>

#include "storage/storage.h"

/* A statement the asynchronous connection prepares once per session, on first use. The
 * name must be unique across storage/ and sql must stay valid for the process. */
struct storage_stmt {
    const char *name;
    const char *sql;
    int n_params;
};

#define STORAGE_MAX_PARAMS 20

/* Parameters of one statement, in $1..$n order. Text values are borrowed and must stay
 * valid until the statement is sent; integers are formatted into the list itself. */
struct storage_params {
    int n;
    const char *values[STORAGE_MAX_PARAMS];
    int lengths[STORAGE_MAX_PARAMS];
    int formats[STORAGE_MAX_PARAMS]; /* 0 text, 1 binary */
    char numbers[STORAGE_MAX_PARAMS][24];
};

/* Appends a text parameter; NULL becomes SQL NULL. */
void storage_param_text(struct storage_params *p, const char *value);
void storage_param_int(struct storage_params *p, int64_t value);
void storage_param_bool(struct storage_params *p, bool value);
/* Appends a bytea parameter sent in binary format. */
void storage_param_bytes(struct storage_params *p, const void *data, size_t len);

/* Column values of a text-format result. storage_col_text returns NULL for SQL NULL;
 * the integer readers return 0 for SQL NULL. */
const char *storage_col_text(const PGresult *res, int row, int col);
int64_t storage_col_int64(const PGresult *res, int row, int col);
int storage_col_int(const PGresult *res, int row, int col);

/* Maps a finished statement to a status: OK for rows or a command tag, UNAVAILABLE for
 * a cancelled statement (statement_timeout), a server shutting down or a lost
 * connection, and ERROR otherwise. */
enum storage_status storage_status_of(const PGresult *res);
/* Logs a failed statement: its name, the primary message and the SQLSTATE. The detail
 * and the statement's values are left out because they may contain personal data. */
void storage_log_failure(const char *statement, const PGresult *res);
/* Routes server notices to the debug log instead of libpq's stderr printer. */
void storage_notice_to_log(void *arg, const char *message);

/* The ON CONFLICT clause of an INSERT INTO sms_quota AS q that counts one more code
 * for the phone number. It keeps the send times inside the last window seconds and
 * appends now() only while fewer than max remain, so a refused upsert returns no row.
 * max and window are parameter references such as "$13". */
#define STORAGE_SQL_QUOTA_UPSERT(max, window)                                            \
    " ON CONFLICT (phone_number) DO UPDATE"                                              \
    " SET sent_at = ARRAY(SELECT t FROM unnest(q.sent_at) AS t"                          \
    "   WHERE t > now() - " window "::int * interval '1 second' ORDER BY t) || now()"    \
    " WHERE (SELECT count(*) FROM unnest(q.sent_at) AS t"                                \
    "   WHERE t > now() - " window "::int * interval '1 second') < " max "::int"

/* The caller's callback, kept in a pending statement until its result arrives. */
union storage_cb {
    storage_done_cb done;
    storage_client_cb client;
    storage_user_cb user;
    storage_issuer_cb issuer;
    storage_poll_cb poll;
    storage_approval_cb approval;
    storage_sweep_cb sweep;
    storage_keys_cb keys;
    storage_count_cb count;
    storage_notifications_cb notifications;
};

/* Turns one statement's outcome into the caller's callback. res is the statement's
 * result when status is STORAGE_OK and NULL otherwise; it is freed after the call. */
typedef void (*storage_finish_fn)(union storage_cb cb, void *arg,
                                  enum storage_status status, const PGresult *res);

/* Queues stmt with params on db (preparing it first if this session has not) and calls
 * finish once with its outcome, later, from the loop. Returns 0, or -1 when nothing was
 * queued because the connection is not ready or sending failed. */
int storage_conn_send(struct storage_conn *db, const struct storage_stmt *stmt,
                      const struct storage_params *params, storage_finish_fn finish,
                      union storage_cb cb, void *arg) MUST_CHECK;

/* A completion the connection runs from its loop without asking the database, such as a
 * lookup the client cache serves. */
struct storage_deferred {
    struct storage_deferred *next;
    /* status is STORAGE_OK, or STORAGE_UNAVAILABLE from inside storage_conn_free. */
    void (*run)(struct storage_deferred *d, enum storage_status status);
};

/* Queues d to run once, later, from db's loop, never inside this call. d stays the
 * caller's until it runs. */
void storage_conn_defer(struct storage_conn *db, struct storage_deferred *d);

/* ---- batches (batch.c) ------------------------------------------------------------- */

#define STORAGE_BATCH_MAX    64 /* calls in one statement */
#define STORAGE_BATCH_FIELDS 18 /* text fields of one call, at most */

/* The kinds of batched statement; each connection keeps one queue per kind. */
enum storage_batch_id {
    STORAGE_BATCH_POLL,
    STORAGE_BATCH_JTI,
    STORAGE_BATCH_CREATE,
    STORAGE_BATCH_KINDS,
};

/* One call in a batch: its fields (owned copies, or NULL for SQL NULL) and its
 * caller's callback. */
struct storage_batch_call {
    char *fields[STORAGE_BATCH_FIELDS];
    union storage_cb cb;
    void *arg;
};

struct storage_batch_kind {
    enum storage_batch_id id;
    /* Takes one text[] parameter per field, as many as n_params, and returns one row
     * per call in the order given. */
    const struct storage_stmt *stmt;
    /* Two calls that are equal in their first key_fields fields never share a batch. */
    int key_fields;
    /* Completes each of the n calls. res is the statement's result when status is
     * STORAGE_OK, with row i for calls[i], and NULL otherwise. */
    void (*finish)(const struct storage_batch_call *calls, size_t n,
                   enum storage_status status, const PGresult *res);
    /* Returns false when a call with these fields cannot join the batch that starts
     * with first, because the statement takes some values from the first call only.
     * NULL when every call can join. */
    bool (*fits)(const struct storage_batch_call *first, const char *const fields[]);
};

struct storage_batch;

/* The batches of one kind on one connection. */
struct storage_batches {
    struct storage_batch *open; /* the batch new calls join, or NULL */
    int in_flight;              /* batches sent whose results have not arrived */
};

struct storage_batches *storage_conn_batches(struct storage_conn *db,
                                             enum storage_batch_id id);

/* Adds a call with kind->stmt->n_params fields to db's open batch of that kind, or
 * to a new one. The strings are copied. Its completion comes later, from the loop,
 * like a statement's. Returns 0, or -1 when the connection is not ready. */
int storage_batch_add(struct storage_conn *db, const struct storage_batch_kind *kind,
                      const char *const fields[], union storage_cb cb,
                      void *arg) MUST_CHECK;

/* ---- the client cache of one connection (client.c) ----------------------------------
 */

/* The channel on which storage_sync_client_delete notifies every connection. */
#define STORAGE_CLIENT_CHANNEL "cibad_client"

struct storage_client_cache;

struct storage_client_cache *storage_client_cache_new(int ttl_ms);
/* NULL is a no-op. Entries that a deferred completion still uses live until it runs. */
void storage_client_cache_free(struct storage_client_cache *cache);
/* Drops the entry of client_id, or every entry when client_id is NULL. NULL cache is a
 * no-op. */
void storage_client_cache_forget(struct storage_client_cache *cache,
                                 const char *client_id);
/* The cache of db, or NULL when it is off or the connection is not ready. */
struct storage_client_cache *storage_conn_client_cache(struct storage_conn *db);

/* The blocking connection of the command line. */
struct storage_sync {
    PGconn *pg;
};

/* Runs one statement with params (may be NULL) and returns its result, successful or
 * not, which the caller frees with PQclear. NULL only when libpq could not build a
 * result at all; storage_status_of and storage_log_failure accept NULL. */
PGresult *storage_sync_exec(struct storage_sync *s, const char *sql,
                            const struct storage_params *params);

#endif
