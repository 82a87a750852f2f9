/* conn.c - one asynchronous PostgreSQL connection driven by a libevent loop
 * SPDX-License-Identifier: MIT
 *
 * The connection runs libpq in non-blocking pipeline mode. Every statement is sent as
 * PQsendQueryPrepared followed by its own PQpipelineSync, so an error aborts only that
 * statement, and a FIFO of pending entries maps each result to its caller. For one
 * statement libpq yields its result, then NULL, then a PGRES_PIPELINE_SYNC result; the
 * entry completes at the sync.
 *
 * Statements are prepared on first use in each session, in the same pipeline just
 * before their first execution, so a reconnect re-prepares them by itself. After any
 * failure (lost socket, connect timeout, a statement past query_timeout_ms) every
 * pending entry fails with STORAGE_UNAVAILABLE and the connection retries with
 * back-off from 100 ms doubling to 5 s. While it is down, calls return -1 at once.
 *
 * With the client cache on, each session also runs LISTEN on STORAGE_CLIENT_CHANNEL, and
 * a notification on it drops that client from the cache. A lost session may have missed
 * notifications, so a reset empties the cache.
 */
#include "storage/storage_int.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONNECT_TIMEOUT_MS         5000
#define RETRY_FIRST_MS             100
#define RETRY_MAX_MS               5000
#define STATEMENT_TIMEOUT_EXTRA_MS 1000
#define QUERY_TIMEOUT_MAX_MS       3600000

enum conn_state {
    CONN_WAITING,    /* not connected; retry_timer is armed */
    CONN_CONNECTING, /* PQconnectPoll in progress */
    CONN_READY,      /* connected and in pipeline mode; statements may be queued */
    CONN_BROKEN,     /* a failure seen inside a call; reset_ev runs the reset */
    CONN_CLOSED,     /* storage_conn_free is running */
};

struct storage_conn;

/* Completion of a statement the connection sends for itself (session setup, prepare). */
typedef void (*internal_fn)(struct storage_conn *db, enum storage_status status,
                            const PGresult *res);

/* One statement sent and not yet answered. */
struct pending {
    struct pending *next;
    const char *name;         /* for logs */
    storage_finish_fn finish; /* the caller's statement, or NULL */
    internal_fn internal;     /* the connection's own statement, or NULL */
    union storage_cb cb;
    void *arg;
    int64_t deadline_ms; /* monotonic */
    PGresult *res;       /* the statement's first result, until its sync arrives */
    bool ended;          /* libpq returned the NULL that ends the statement's results */
};

struct storage_conn {
    struct event_base *base;
    char *conninfo;
    int query_timeout_ms;
    enum conn_state state;
    bool session_ready; /* statement_timeout set: the connection counts as up */
    bool ever_up;
    PGconn *pg;

    struct event *io_ev;    /* while connecting: one-shot; when ready: persistent read */
    struct event *write_ev; /* one-shot, armed while PQflush has data left */
    struct event *connect_timer;
    struct event *retry_timer;
    struct event *deadline_timer; /* the head entry's deadline */
    struct event *reset_ev;       /* activated by conn_fail_later */
    char reset_reason[256];

    int retry_delay_ms;
    int failed_attempts; /* since the connection was last up */

    struct pending *head, *tail;
    size_t n_caller; /* entries with a caller's callback */

    /* Completions that need no statement, run by defer_ev from the loop. */
    struct storage_deferred *deferred_head, *deferred_tail;
    size_t n_deferred;
    struct event *defer_ev;

    struct storage_client_cache *clients; /* NULL while the client cache is off */
    struct storage_batches batches[STORAGE_BATCH_KINDS]; /* batch.c's */

    const struct storage_stmt **prepared; /* prepared in this session */
    size_t n_prepared, cap_prepared;
};

static void conn_start(struct storage_conn *db);
static void conn_reset(struct storage_conn *db, const char *reason);
static int send_listen(struct storage_conn *db);
static void run_deferred(struct storage_conn *db, enum storage_status status);
static void on_deferred(evutil_socket_t fd, short what, void *arg);

/* ---- helpers ----------------------------------------------------------------------- */

/* Copies libpq's error text as one line: its line breaks and tabs become spaces. */
static void copy_error(char *out, size_t out_len, const char *message)
{
    size_t len, j = 0;

    snprintf(out, out_len, "%s", message && *message ? message : "unknown error");
    len = strlen(out);
    for (size_t i = 0; i < len; i++) {
        char c = out[i] == '\n' || out[i] == '\t' ? ' ' : out[i];

        if (c == ' ' && (j == 0 || out[j - 1] == ' '))
            continue;
        out[j++] = c;
    }
    while (j > 0 && out[j - 1] == ' ')
        j--;
    out[j] = '\0';
}

static void timer_add_ms(struct event *ev, int64_t ms)
{
    struct timeval tv;

    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(ev, &tv);
}

static void arm_deadline(struct storage_conn *db)
{
    if (db->head == NULL) {
        evtimer_del(db->deadline_timer);
        return;
    }
    /* Every entry has the same timeout, so the head always has the earliest deadline. */
    timer_add_ms(db->deadline_timer, db->head->deadline_ms - util_mono_ms());
}

static void push_pending(struct storage_conn *db, struct pending *p)
{
    p->deadline_ms = util_mono_ms() + db->query_timeout_ms;
    if (db->tail)
        db->tail->next = p;
    else
        db->head = p;
    db->tail = p;
    if (p->finish)
        db->n_caller++;
    if (db->head == p)
        arm_deadline(db);
}

static struct pending *pop_pending(struct storage_conn *db)
{
    struct pending *p = db->head;

    db->head = p->next;
    if (db->head == NULL)
        db->tail = NULL;
    if (p->finish)
        db->n_caller--;
    p->next = NULL;
    return p;
}

/* Hands an entry's outcome to its owner and frees it. */
static void complete(struct storage_conn *db, struct pending *p,
                     enum storage_status status)
{
    const PGresult *res = status == STORAGE_OK ? p->res : NULL;

    if (p->internal)
        p->internal(db, status, p->res);
    else
        p->finish(p->cb, p->arg, status, res);
    PQclear(p->res);
    free(p);
}

/* Fails every pending entry with STORAGE_UNAVAILABLE. The list is detached first, so
 * callbacks that queue statements meet an empty, refusing connection. */
static void fail_all(struct storage_conn *db)
{
    struct pending *p = db->head;

    db->head = db->tail = NULL;
    db->n_caller = 0;
    evtimer_del(db->deadline_timer);
    while (p) {
        struct pending *next = p->next;

        complete(db, p, STORAGE_UNAVAILABLE);
        p = next;
    }
}

static void close_pg(struct storage_conn *db)
{
    if (db->io_ev) {
        event_free(db->io_ev);
        db->io_ev = NULL;
    }
    if (db->write_ev) {
        event_free(db->write_ev);
        db->write_ev = NULL;
    }
    evtimer_del(db->connect_timer);
    if (db->pg) {
        PQfinish(db->pg);
        db->pg = NULL;
    }
    db->session_ready = false;
    db->n_prepared = 0;
}

/* Marks the connection broken from inside a storage_* call, where no callback may run,
 * and lets the loop do the reset. */
static void conn_fail_later(struct storage_conn *db, const char *reason)
{
    if (db->state != CONN_READY)
        return;
    copy_error(db->reset_reason, sizeof(db->reset_reason), reason);
    db->state = CONN_BROKEN;
    event_active(db->reset_ev, 0, 0);
}

/* Sends whatever libpq still buffers; arms the write event when the socket is full. */
static int conn_flush(struct storage_conn *db)
{
    int rc = PQflush(db->pg);

    if (rc < 0)
        return -1;
    if (rc == 1)
        event_add(db->write_ev, NULL);
    return 0;
}

/* ---- reading results --------------------------------------------------------------- */

/* Reads every result libpq has, completing entries at their sync. */
static void drain_results(struct storage_conn *db)
{
    while (db->state == CONN_READY && db->head && !PQisBusy(db->pg)) {
        struct pending *p = db->head;
        PGresult *res = PQgetResult(db->pg);

        if (res == NULL) {
            /* The end of one statement's results; its sync comes next. A second NULL
             * in a row would mean libpq has nothing more yet, so wait for input. */
            if (p->res == NULL) {
                log_error("storage: %s ended without a result", p->name);
                conn_reset(db, "pipeline out of step");
                return;
            }
            if (p->ended)
                break;
            p->ended = true;
            continue;
        }
        if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
            if (p->res == NULL)
                p->res = res;
            else
                PQclear(res);
            continue;
        }

        PQclear(res);
        pop_pending(db);
        arm_deadline(db);
        if (p->res == NULL) {
            log_error("storage: %s got a sync without a result", p->name);
            complete(db, p, STORAGE_ERROR);
            continue;
        }
        if (storage_status_of(p->res) != STORAGE_OK)
            storage_log_failure(p->name, p->res);
        complete(db, p, storage_status_of(p->res));
    }
}

/* Applies the notifications libpq has parsed. PQisBusy parses what PQconsumeInput read;
 * drain_results stops calling it once no statement is pending. */
static void read_notifications(struct storage_conn *db)
{
    PGnotify *n;

    (void)PQisBusy(db->pg);
    while ((n = PQnotifies(db->pg)) != NULL) {
        if (strcmp(n->relname, STORAGE_CLIENT_CHANNEL) == 0)
            storage_client_cache_forget(db->clients, n->extra);
        PQfreemem(n);
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;
    char reason[256];

    (void)fd;
    (void)what;
    if (db->state != CONN_READY)
        return;
    if (!PQconsumeInput(db->pg)) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
        return;
    }
    drain_results(db);
    if (db->state == CONN_READY)
        read_notifications(db);
    if (db->state == CONN_READY && PQstatus(db->pg) == CONNECTION_BAD) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
    }
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;
    char reason[256];

    (void)fd;
    (void)what;
    if (db->state != CONN_READY)
        return;
    if (conn_flush(db) != 0) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;

    (void)fd;
    (void)what;
    if (db->head == NULL)
        return;
    if (db->head->deadline_ms > util_mono_ms()) {
        arm_deadline(db);
        return;
    }
    log_warn("storage: %s timed out after %d ms; resetting the connection",
             db->head->name, db->query_timeout_ms);
    conn_reset(db, "statement timed out");
}

static void on_reset(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;

    (void)fd;
    (void)what;
    if (db->state == CONN_BROKEN)
        conn_reset(db, db->reset_reason);
}

/* ---- sending ----------------------------------------------------------------------- */

static bool is_prepared(const struct storage_conn *db, const struct storage_stmt *stmt)
{
    for (size_t i = 0; i < db->n_prepared; i++)
        if (db->prepared[i] == stmt)
            return true;
    return false;
}

static void on_prepared(struct storage_conn *db, enum storage_status status,
                        const PGresult *res)
{
    (void)db;
    (void)res;
    /* A failed prepare was logged when it completed; the execution queued behind it
     * fails with "prepared statement does not exist" and reports STORAGE_ERROR. */
    (void)status;
}

static struct pending *new_pending(const char *name)
{
    struct pending *p = util_calloc(1, sizeof(*p));

    p->name = name;
    return p;
}

/* Queues PQsendPrepare for stmt unless this session has it already. */
static int send_prepare(struct storage_conn *db, const struct storage_stmt *stmt)
{
    struct pending *p;

    if (is_prepared(db, stmt))
        return 0;
    if (!PQsendPrepare(db->pg, stmt->name, stmt->sql, stmt->n_params, NULL) ||
        !PQpipelineSync(db->pg))
        return -1;

    p = new_pending(stmt->name);
    p->internal = on_prepared;
    push_pending(db, p);
    if (db->n_prepared == db->cap_prepared) {
        db->cap_prepared = db->cap_prepared ? db->cap_prepared * 2 : 16;
        db->prepared =
            util_realloc(db->prepared, db->cap_prepared * sizeof(db->prepared[0]));
    }
    db->prepared[db->n_prepared++] = stmt;
    return 0;
}

int storage_conn_send(struct storage_conn *db, const struct storage_stmt *stmt,
                      const struct storage_params *params, storage_finish_fn finish,
                      union storage_cb cb, void *arg)
{
    struct pending *p;
    int n = params ? params->n : 0;

    if (db == NULL || db->state != CONN_READY)
        return -1;
    if (n != stmt->n_params) {
        log_error("storage: %s takes %d parameters, got %d", stmt->name, stmt->n_params,
                  n);
        return -1;
    }
    if (send_prepare(db, stmt) != 0)
        goto broken;
    if (!PQsendQueryPrepared(db->pg, stmt->name, n, params ? params->values : NULL,
                             params ? params->lengths : NULL,
                             params ? params->formats : NULL, 0) ||
        !PQpipelineSync(db->pg))
        goto broken;

    p = new_pending(stmt->name);
    p->finish = finish;
    p->cb = cb;
    p->arg = arg;
    push_pending(db, p);
    if (conn_flush(db) != 0) {
        /* The entry is queued, so the deferred reset fails it through the loop. */
        conn_fail_later(db, PQerrorMessage(db->pg));
    }
    return 0;

broken:
    conn_fail_later(db, PQerrorMessage(db->pg));
    return -1;
}

/* ---- connecting -------------------------------------------------------------------- */

static void on_session_ready(struct storage_conn *db, enum storage_status status,
                             const PGresult *res)
{
    (void)res;
    if (status != STORAGE_OK) {
        conn_reset(db, "session setup failed");
        return;
    }
    db->session_ready = true;
    if (db->ever_up)
        log_info("storage: database connection restored; failed attempts: %d",
                 db->failed_attempts);
    else
        log_info("storage: connected to the database");
    db->ever_up = true;
    db->failed_attempts = 0;
    db->retry_delay_ms = RETRY_FIRST_MS;
}

static void on_listening(struct storage_conn *db, enum storage_status status,
                         const PGresult *res)
{
    (void)res;
    /* A failure was logged when it completed; the cache then relies on its TTL. */
    (void)db;
    (void)status;
}

/* Queues LISTEN for the client cache's invalidations. */
static int send_listen(struct storage_conn *db)
{
    struct pending *p;

    if (!PQsendQueryParams(db->pg, "LISTEN " STORAGE_CLIENT_CHANNEL, 0, NULL, NULL, NULL,
                           NULL, 0) ||
        !PQpipelineSync(db->pg))
        return -1;
    p = new_pending("listen");
    p->internal = on_listening;
    push_pending(db, p);
    return 0;
}

/* Switches a fresh connection to non-blocking pipeline mode and sends the session
 * setup: statement_timeout, so the server also ends statements the client gave up on
 * (the client closes the socket, but a backend waiting on a lock does not notice). It
 * is STATEMENT_TIMEOUT_EXTRA_MS longer than query_timeout_ms, so the client's own
 * timer fires first and resets the connection as documented.
 *
 * The setup also turns off sequential scans, hash joins and merge joins for the session
 * (the planner still uses them where nothing else is possible). Every statement here
 * finds its rows by key, and a batch statement (batch.c) joins its input array to a
 * table. A prepared statement keeps its generic plan until the table is analyzed
 * again, and the poll batch planned while auth_req held 200 rows hash-joins over a
 * sequential scan of it. In a trial that batched another statement this way, such a
 * plan doubled PostgreSQL's CPU per /bc-authorize in `make bench` as the table grew.
 *
 * JIT compilation is off as well. With sequential scans off, a scan that has no index
 * to use (the signing keys, say) costs over jit_above_cost. Compiling it took about
 * 100 ms, in every worker at once when their key reload timers fired. That stall was
 * the polling p99 of 35 to 117 ms in `make bench`. No statement here runs long enough
 * to gain from JIT. */
static void conn_ready(struct storage_conn *db)
{
    static const char sql_setup[] = "SELECT set_config('statement_timeout', $1, false),"
                                    " set_config('enable_seqscan', 'off', false),"
                                    " set_config('enable_hashjoin', 'off', false),"
                                    " set_config('enable_mergejoin', 'off', false),"
                                    " set_config('jit', 'off', false)";
    char timeout[24];
    const char *values[1] = {timeout};
    evutil_socket_t fd = PQsocket(db->pg);
    struct pending *p;
    char reason[256];

    evtimer_del(db->connect_timer);
    event_free(db->io_ev);
    db->io_ev = event_new(db->base, fd, EV_READ | EV_PERSIST, on_readable, db);
    db->write_ev = event_new(db->base, fd, EV_WRITE, on_writable, db);
    event_add(db->io_ev, NULL);

    snprintf(timeout, sizeof(timeout), "%d",
             db->query_timeout_ms + STATEMENT_TIMEOUT_EXTRA_MS);
    if (PQsetnonblocking(db->pg, 1) != 0 || !PQenterPipelineMode(db->pg) ||
        !PQsendQueryParams(db->pg, sql_setup, 1, NULL, values, NULL, NULL, 0) ||
        !PQpipelineSync(db->pg)) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
        return;
    }
    db->state = CONN_READY;
    p = new_pending("session setup");
    p->internal = on_session_ready;
    push_pending(db, p);
    if (db->clients && send_listen(db) != 0) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
        return;
    }
    if (conn_flush(db) != 0) {
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
    }
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg);

/* Waits for the socket direction PQconnectPoll asked for. The socket is read again on
 * every step because libpq may replace it between calls. */
static void wait_connect_io(struct storage_conn *db, PostgresPollingStatusType want)
{
    short events = want == PGRES_POLLING_READING ? EV_READ : EV_WRITE;

    if (db->io_ev)
        event_free(db->io_ev);
    db->io_ev = event_new(db->base, PQsocket(db->pg), events, on_connect_io, db);
    event_add(db->io_ev, NULL);
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;
    PostgresPollingStatusType st;
    char reason[256];

    (void)fd;
    (void)what;
    st = PQconnectPoll(db->pg);
    switch (st) {
    case PGRES_POLLING_OK:
        conn_ready(db);
        break;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        wait_connect_io(db, st);
        break;
    default:
        copy_error(reason, sizeof(reason), PQerrorMessage(db->pg));
        conn_reset(db, reason);
        break;
    }
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct storage_conn *db = arg;
    char reason[64];

    (void)fd;
    (void)what;
    snprintf(reason, sizeof(reason), "connect timed out after %d ms", CONNECT_TIMEOUT_MS);
    conn_reset(db, reason);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_start(arg);
}

/* Starts a connection attempt. NOTE: libpq resolves a host name with a blocking
 * getaddrinfo() here; use a unix socket directory or hostaddr= in database_url to keep
 * the loop from waiting on DNS. */
static void conn_start(struct storage_conn *db)
{
    /* Keywords after dbname override its connection string. cibad sends and reads UTF-8
     * only, and storage/batch.c escapes array literals for UTF-8. */
    const char *keys[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
    const char *values[] = {db->conninfo, "cibad", "UTF8", NULL};
    char reason[256];

    db->pg = PQconnectStartParams(keys, values, 1);
    if (db->pg == NULL || PQstatus(db->pg) == CONNECTION_BAD) {
        copy_error(reason, sizeof(reason),
                   db->pg ? PQerrorMessage(db->pg) : "out of memory");
        conn_reset(db, reason);
        return;
    }
    PQsetNoticeProcessor(db->pg, storage_notice_to_log, NULL);
    db->state = CONN_CONNECTING;
    timer_add_ms(db->connect_timer, CONNECT_TIMEOUT_MS);
    /* libpq's documentation: start as if PQconnectPoll had returned WRITING. */
    wait_connect_io(db, PGRES_POLLING_WRITING);
}

/* Drops the connection, fails everything pending and schedules the next attempt. */
static void conn_reset(struct storage_conn *db, const char *reason)
{
    int delay = db->retry_delay_ms;
    bool was_up = db->session_ready;

    close_pg(db);
    db->state = CONN_WAITING;
    db->failed_attempts++;
    if (was_up)
        log_warn("storage: database connection lost: %s; reconnecting in %d ms", reason,
                 delay);
    else
        log_warn("storage: database connection failed: %s; retry %d in %d ms", reason,
                 db->failed_attempts, delay);
    timer_add_ms(db->retry_timer, delay);
    db->retry_delay_ms = delay * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : delay * 2;
    storage_client_cache_forget(db->clients, NULL);
    fail_all(db);
}

/* ---- public API -------------------------------------------------------------------- */

struct storage_conn *storage_conn_new(struct event_base *base, const char *conninfo,
                                      int query_timeout_ms)
{
    struct storage_conn *db;
    PQconninfoOption *opts;
    char *message = NULL;

    if (base == NULL || conninfo == NULL || query_timeout_ms <= 0 ||
        query_timeout_ms > QUERY_TIMEOUT_MAX_MS) {
        log_error("storage: storage_conn_new needs a base, a conninfo and a query timeout"
                  " of 1 to %d ms",
                  QUERY_TIMEOUT_MAX_MS);
        return NULL;
    }
    opts = PQconninfoParse(conninfo, &message);
    if (opts == NULL) {
        char reason[256];

        copy_error(reason, sizeof(reason), message ? message : "out of memory");
        log_error("storage: invalid database_url: %s", reason);
        PQfreemem(message);
        return NULL;
    }
    PQconninfoFree(opts);

    db = util_calloc(1, sizeof(*db));
    db->base = base;
    db->conninfo = util_strdup(conninfo);
    db->query_timeout_ms = query_timeout_ms;
    db->retry_delay_ms = RETRY_FIRST_MS;
    db->connect_timer = evtimer_new(base, on_connect_timeout, db);
    db->retry_timer = evtimer_new(base, on_retry, db);
    db->deadline_timer = evtimer_new(base, on_deadline, db);
    db->reset_ev = event_new(base, -1, 0, on_reset, db);
    db->defer_ev = event_new(base, -1, 0, on_deferred, db);
    conn_start(db);
    return db;
}

void storage_conn_free(struct storage_conn *db)
{
    if (db == NULL)
        return;
    db->state = CONN_CLOSED;
    close_pg(db);
    fail_all(db);
    run_deferred(db, STORAGE_UNAVAILABLE);
    storage_client_cache_free(db->clients);
    event_free(db->defer_ev);
    event_free(db->connect_timer);
    event_free(db->retry_timer);
    event_free(db->deadline_timer);
    event_free(db->reset_ev);
    free(db->prepared);
    free(db->conninfo);
    free(db);
}

bool storage_conn_is_up(const struct storage_conn *db)
{
    return db != NULL && db->state == CONN_READY && db->session_ready;
}

size_t storage_conn_pending(const struct storage_conn *db)
{
    return db ? db->n_caller + db->n_deferred : 0;
}

int storage_conn_set_client_cache(struct storage_conn *db, int ttl_ms)
{
    if (db == NULL || ttl_ms < 0 || db->clients)
        return -1;
    if (ttl_ms == 0)
        return 0;
    db->clients = storage_client_cache_new(ttl_ms);
    /* A session that is already up gets its LISTEN now; a later one in conn_ready. */
    if (db->state == CONN_READY && (send_listen(db) != 0 || conn_flush(db) != 0))
        conn_fail_later(db, PQerrorMessage(db->pg));
    return 0;
}

struct storage_client_cache *storage_conn_client_cache(struct storage_conn *db)
{
    return db->state == CONN_READY ? db->clients : NULL;
}

struct storage_batches *storage_conn_batches(struct storage_conn *db,
                                             enum storage_batch_id id)
{
    return &db->batches[id];
}

/* ---- completions without the database ---------------------------------------------- */

/* Runs every deferred completion queued so far with status. Those queued meanwhile wait
 * for the next activation of defer_ev. */
static void run_deferred(struct storage_conn *db, enum storage_status status)
{
    struct storage_deferred *d = db->deferred_head;

    db->deferred_head = db->deferred_tail = NULL;
    while (d) {
        struct storage_deferred *next = d->next;

        db->n_deferred--;
        d->run(d, status);
        d = next;
    }
}

static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run_deferred(arg, STORAGE_OK);
}

void storage_conn_defer(struct storage_conn *db, struct storage_deferred *d)
{
    d->next = NULL;
    if (db->deferred_tail)
        db->deferred_tail->next = d;
    else
        db->deferred_head = d;
    db->deferred_tail = d;
    db->n_deferred++;
    event_active(db->defer_ev, 0, 0);
}

/* ---- ping -------------------------------------------------------------------------- */

static const char sql_ping[] = "SELECT 1";
static const struct storage_stmt stmt_ping = {"ping", sql_ping, 0};

static void finish_done(union storage_cb cb, void *arg, enum storage_status status,
                        const PGresult *res)
{
    (void)res;
    if (cb.done)
        cb.done(arg, status);
}

int storage_ping(struct storage_conn *db, storage_done_cb cb, void *arg)
{
    union storage_cb u = {.done = cb};

    return storage_conn_send(db, &stmt_ping, NULL, finish_done, u, arg);
}
