/* worker.c - `cibad serve`: worker threads, signing keys, signals and the graceful stop
 * SPDX-License-Identifier: MIT
 *
 * Layout: N worker threads, each with its own event_base, evhttp, listening socket on
 * the same port (SO_REUSEPORT, so the kernel spreads connections), database connection,
 * DNS resolver, SMS sender and signing keyset. The main thread only waits for SIGTERM
 * and SIGINT on its own event_base and runs the shutdown.
 */
#include "server/server.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "ciba/ciba.h"
#include "oauth/oauth.h"
#include "sms/sms.h"
#include "storage/storage.h"

/* Seconds between two reloads of the signing keys on each worker, so a key added by
 * `cibad keys rotate` is used within this time. */
#define KEYS_REFRESH_S 30
/* Retired keys stay published this long past the longest token lifetime, so a client
 * that fetched the JWKS just before the rotation can still verify. */
#define KEYS_PUBLISH_MARGIN_S 60
/* How often a starting worker checks whether its database connection is up, and the
 * main thread whether every worker accepts. */
#define ACCEPT_POLL_MS 10
/* How long a worker stops accepting after accept() failed, and how often it logs it. */
#define ACCEPT_PAUSE_MS      100
#define ACCEPT_LOG_PERIOD_MS 10000
/* While draining, how often the main thread checks the workers' counters. */
#define DRAIN_TICK_MS 50
/* After the last reply is sent and the last delivery recorded, how long the loops keep
 * running so the reply is written. */
#define DRAIN_FLUSH_MS 250
/* The pause sms/sender.c makes between the two attempts of one SMS. */
#define SMS_RETRY_PAUSE_MS 200
/* While the database is unreachable at startup, the wait before the next attempt: it
 * starts at DB_RETRY_FIRST_MS and doubles up to DB_RETRY_MAX_MS. */
#define DB_RETRY_FIRST_MS 1000
#define DB_RETRY_MAX_MS   10000

/* The main thread's state while serving. */
struct server_main {
    const struct server_config *cfg;
    struct event_base *base;
    struct event *sigterm, *sigint, *drain_timer, *ready_timer;
    struct server_thread *threads;
    int n_threads;
    bool serving;        /* the worker threads run */
    bool stop_requested; /* a signal came before serving started */
    bool draining;
    int64_t drain_started_ms;
    int64_t idle_ms; /* since when no request and no delivery is open; 0 while some are */
};

/* Outcome of prepare_database. */
enum db_prepare {
    DB_READY,
    DB_UNREACHABLE, /* no connection: worth another attempt */
    DB_FAILED,      /* connected, but the schema or the keys are wrong */
};

/* Owned copies of key rows read at startup. */
struct key_rows {
    struct storage_key *keys;
    size_t n;
};

int server_keys_publish_seconds(const struct server_config *cfg)
{
    int longest = cfg->access_token_lifetime > cfg->id_token_lifetime
                      ? cfg->access_token_lifetime
                      : cfg->id_token_lifetime;

    /* A retired key may still sign for key_prepublish_seconds after its retirement,
     * while its successor is being published. */
    return longest + KEYS_PUBLISH_MARGIN_S + cfg->key_prepublish_seconds;
}

/* ---- libevent hooks
 * --------------------------------------------------------------------- */

static void on_libevent_fatal(int err)
{
    log_error("libevent reported a fatal error (%d); aborting", err);
    abort();
}

static void on_libevent_log(int severity, const char *msg)
{
    enum util_log_level level = severity >= EVENT_LOG_ERR    ? UTIL_LOG_ERROR
                                : severity >= EVENT_LOG_WARN ? UTIL_LOG_WARN
                                                             : UTIL_LOG_DEBUG;

    util_log(level, NULL, NULL, "libevent: %s", msg);
}

/* ---- signing keys at startup
 * ------------------------------------------------------------ */

static void collect_key(void *arg, const struct storage_key *k)
{
    struct key_rows *rows = arg;
    struct storage_key *copy;

    rows->keys = util_realloc(rows->keys, (rows->n + 1) * sizeof(*rows->keys));
    copy = &rows->keys[rows->n++];
    copy->kid = util_strdup(k->kid);
    copy->alg = util_strdup(k->alg);
    copy->private_key = util_strdup(k->private_key);
    copy->public_jwk = util_strdup(k->public_jwk);
    copy->created_at = k->created_at;
    copy->retired_at = k->retired_at;
}

static void key_rows_free(struct key_rows *rows)
{
    for (size_t i = 0; i < rows->n; i++) {
        free((char *)rows->keys[i].kid);
        free((char *)rows->keys[i].alg);
        free((char *)rows->keys[i].private_key);
        free((char *)rows->keys[i].public_jwk);
    }
    free(rows->keys);
    rows->keys = NULL;
    rows->n = 0;
}

/* Generates the first signing key and stores it as the current one. */
static int generate_first_key(struct storage_sync *s, const struct server_config *cfg)
{
    char *kid = NULL, *sealed = NULL, *jwk = NULL;
    int rc = -1;

    if (oauth_key_generate(cfg->secret, &kid, &sealed, &jwk) != 0) {
        log_error("cannot generate a signing key");
        goto out;
    }
    if (storage_sync_key_add(s, kid, "ES256", sealed, jwk) != 0) {
        log_error("cannot store the new signing key");
        goto out;
    }
    log_info("the database had no signing key; generated %s", kid);
    rc = 0;
out:
    free(kid);
    free(sealed);
    free(jwk);
    return rc;
}

/* Checks the schema and reads the signing keys, generating the first key when there is
 * none, all with one blocking connection before any loop runs. When the connection
 * fails, returns DB_UNREACHABLE with libpq's reason in err. */
static enum db_prepare prepare_database(const struct server_config *cfg,
                                        struct key_rows *rows, char *err, size_t err_len)
{
    struct storage_sync *s = storage_sync_connect(cfg->database_url, err, err_len);
    int behind = 0, publish = server_keys_publish_seconds(cfg);
    enum db_prepare rc = DB_FAILED;

    if (!s)
        return DB_UNREACHABLE;
    if (storage_sync_schema_behind(s, cfg->migrations_dir, &behind) != 0) {
        log_error("cannot compare the database schema with %s", cfg->migrations_dir);
        goto out;
    }
    if (behind > 0) {
        log_error("database schema is %d migrations behind; run `cibad migrate`", behind);
        goto out;
    }
    if (storage_sync_key_each(s, publish, false, collect_key, rows) < 0) {
        log_error("cannot read the signing keys");
        goto out;
    }
    if (rows->n == 0) {
        if (generate_first_key(s, cfg) != 0 ||
            storage_sync_key_each(s, publish, false, collect_key, rows) < 0)
            goto out;
    }
    rc = DB_READY;
out:
    storage_sync_close(s);
    return rc;
}

/* ---- signing keys refresh, on each worker
 * ------------------------------------------------ */

/* A string that changes whenever the set of keys or their state changes, including
 * when the current key's pre-publication delay runs out and it starts to sign. */
static char *keys_fingerprint(const struct storage_key *keys, size_t n)
{
    int64_t signs_after = util_now_s() - server_config->key_prepublish_seconds;
    char *fp = util_strdup("");

    for (size_t i = 0; i < n; i++) {
        bool published_long_enough = keys[i].created_at <= signs_after;
        char *next = util_asprintf("%s%s:%lld:%d,", fp, keys[i].kid,
                                   (long long)keys[i].retired_at, published_long_enough);

        free(fp);
        fp = next;
    }
    return fp;
}

static void on_keys_loaded(void *arg, enum storage_status status,
                           const struct storage_key *keys, size_t n_keys)
{
    struct server_thread *t = arg;
    struct oauth_keyset *ks;
    char *fp;

    t->keys_loading = false;
    if (status != STORAGE_OK || n_keys == 0) {
        if (!t->draining)
            log_warn("worker %d: cannot reload the signing keys (status %d, %zu keys); "
                     "keeping the current ones",
                     t->w.index, (int)status, n_keys);
        return;
    }
    fp = keys_fingerprint(keys, n_keys);
    if (t->keys_fingerprint && strcmp(fp, t->keys_fingerprint) == 0) {
        free(fp);
        return;
    }

    ks = oauth_keyset_new(keys, n_keys, server_config->secret,
                          server_config->key_prepublish_seconds);
    if (!ks) {
        log_error("worker %d: cannot open the reloaded signing keys; keeping the current "
                  "ones",
                  t->w.index);
        free(fp);
        return;
    }
    /* Handlers read w.keys when they sign or verify and keep no pointer across a
     * callback, so the old set can go now. */
    oauth_keyset_free(t->w.keys);
    t->w.keys = ks;
    free(t->keys_fingerprint);
    t->keys_fingerprint = fp;
    log_info("worker %d: signing keys reloaded; signing with %s", t->w.index,
             oauth_keyset_signing_kid(ks) ? oauth_keyset_signing_kid(ks) : "(none)");
}

static void on_keys_timer(evutil_socket_t fd, short what, void *arg)
{
    struct server_thread *t = arg;

    (void)fd;
    (void)what;
    if (t->keys_loading || t->draining)
        return;
    if (storage_keys_load(t->w.db, server_keys_publish_seconds(server_config),
                          on_keys_loaded, t) != 0) {
        log_warn("worker %d: database unavailable; signing keys not reloaded",
                 t->w.index);
        return;
    }
    t->keys_loading = true;
}

/* ---- worker threads
 * -------------------------------------------------------------------- */

static int sms_config_from(const struct server_config *cfg, struct sms_config *sc)
{
    memset(sc, 0, sizeof(*sc));
    if (sms_driver_parse(cfg->sms_driver, &sc->driver) != 0)
        return -1;
    sc->http_url = cfg->sms_http_url;
    sc->http_token = cfg->sms_http_token;
    sc->twilio_base_url = cfg->sms_twilio_base_url;
    sc->twilio_account_sid = cfg->sms_twilio_account_sid;
    sc->twilio_auth_token = cfg->sms_twilio_auth_token;
    sc->twilio_from = cfg->sms_twilio_from;
    sc->ca_file = cfg->sms_ca_file;
    sc->timeout_ms = cfg->sms_timeout_ms;
    sc->allow_http_loopback = cfg->sms_allow_http_loopback;
    return 0;
}

/* The worker whose loop runs on this thread; the listener's error callback gets only
 * the evhttp as its argument. */
static _Thread_local struct server_thread *worker_self;

/* Resumes accepting after a pause that on_accept_failed started, unless the worker
 * has closed its listener since. */
static void on_accept_pause_end(evutil_socket_t fd, short what, void *arg)
{
    struct server_thread *t = arg;

    (void)fd;
    (void)what;
    if (t->bound && !t->draining &&
        evconnlistener_enable(evhttp_bound_socket_get_listener(t->bound)) != 0)
        log_error("worker %d: cannot enable its listener after a pause", t->w.index);
}

/* Pauses accepting for ACCEPT_PAUSE_MS after accept() failed, for example with EMFILE
 * when every file descriptor is in use. The listener would otherwise see the same
 * pending connection at once and fail again in a busy loop. Logs the first failure
 * and then at most one line every ACCEPT_LOG_PERIOD_MS, with the count since the last
 * line. */
static void on_accept_failed(struct evconnlistener *listener, void *arg)
{
    struct server_thread *t = worker_self;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval pause = {0, ACCEPT_PAUSE_MS * 1000};
    int64_t now = util_mono_ms();

    (void)arg; /* the evhttp that owns the listener */
    t->accept_failures++;
    if (t->accept_logged_ms == 0 || now - t->accept_logged_ms >= ACCEPT_LOG_PERIOD_MS) {
        log_warn("worker %d: accept failed %" PRId64 " times (%s); pausing new "
                 "connections for %d ms after each failure",
                 t->w.index, t->accept_failures, evutil_socket_error_to_string(err),
                 ACCEPT_PAUSE_MS);
        t->accept_logged_ms = now;
        t->accept_failures = 0;
    }
    evconnlistener_disable(listener);
    if (evtimer_add(t->accept_pause, &pause) != 0)
        log_error("worker %d: cannot start the accept pause timer", t->w.index);
}

static int worker_listen(struct server_thread *t, const struct server_config *cfg)
{
    struct sockaddr_storage addr;
    int addr_len = sizeof(addr);
    struct evconnlistener *listener;

    if (evutil_parse_sockaddr_port(cfg->listen, (struct sockaddr *)&addr, &addr_len) !=
        0) {
        log_error("invalid listen address %s", cfg->listen);
        return -1;
    }
    listener = evconnlistener_new_bind(t->w.base, NULL, NULL,
                                       LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT |
                                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                           LEV_OPT_DISABLED,
                                       -1, (struct sockaddr *)&addr, addr_len);
    if (!listener) {
        log_error("cannot listen on %s: %s", cfg->listen, strerror(errno));
        return -1;
    }
    t->bound = evhttp_bind_listener(t->http, listener);
    if (!t->bound) {
        evconnlistener_free(listener);
        log_error("cannot attach the listener on %s to evhttp", cfg->listen);
        return -1;
    }
    t->accept_pause = evtimer_new(t->w.base, on_accept_pause_end, t);
    if (!t->accept_pause) {
        log_error("worker %d: cannot create the accept pause timer", t->w.index);
        return -1;
    }
    evconnlistener_set_error_cb(listener, on_accept_failed);
    return 0;
}

static int worker_open_http(struct server_thread *t, const struct server_config *cfg)
{
    t->http = evhttp_new(t->w.base);
    if (!t->http) {
        log_error("worker %d: cannot create the HTTP server", t->w.index);
        return -1;
    }
    /* evhttp 2.1.12 has no limits and no server-side timeout by default. */
    evhttp_set_max_headers_size(t->http, (ev_ssize_t)cfg->max_headers);
    /* NOTE: evhttp itself replies to a body over max_body (413) and to headers over
     * max_headers (400), with an HTML body, no X-Request-Id and no access log line,
     * because 2.1.12 calls no application hook for these errors. */
    evhttp_set_max_body_size(t->http, (ev_ssize_t)cfg->max_body);
    /* TODO: evhttp_set_timeout is an inactivity timeout, so a client that sends one
     * header line every few seconds keeps its connection open for ever, and 2.1.12 has no
     * connection limit either. Put a proxy with header and connection limits in front. */
    evhttp_set_timeout(t->http, cfg->http_timeout);
    evhttp_set_default_content_type(t->http, "application/json");
    /* Every method reaches the router, which replies with a JSON 405 and an Allow
     * header (or a 404). evhttp itself would reply 501 with an HTML body and no
     * X-Request-Id. */
    evhttp_set_allowed_methods(
        t->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                     EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH |
                     EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
    evhttp_set_gencb(t->http, server_http_on_request, t);
    if (server_tls_enabled())
        evhttp_set_bevcb(t->http, server_tls_on_accept, NULL);
    return worker_listen(t, cfg);
}

/* Creates everything worker t needs, on the calling thread, before its loop runs. */
static int worker_open(struct server_thread *t, int index,
                       const struct server_config *cfg, const struct key_rows *rows)
{
    struct sms_config sc;
    struct timeval refresh = {KEYS_REFRESH_S, 0};

    t->w.index = index;
    t->w.base = event_base_new();
    if (!t->w.base) {
        log_error("worker %d: cannot create an event base", index);
        return -1;
    }
    t->w.dns = evdns_base_new(t->w.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!t->w.dns) {
        log_error("worker %d: cannot create a DNS resolver (check /etc/resolv.conf)",
                  index);
        return -1;
    }
    t->w.db = storage_conn_new(t->w.base, cfg->database_url, cfg->db_timeout_ms);
    if (!t->w.db ||
        storage_conn_set_client_cache(t->w.db, cfg->client_cache_ttl_ms) != 0) {
        log_error("worker %d: cannot create the database connection", index);
        return -1;
    }
    if (sms_config_from(cfg, &sc) != 0 ||
        !(t->w.sms = sms_sender_new(t->w.base, t->w.dns, &sc))) {
        log_error("worker %d: invalid SMS settings for driver %s", index,
                  cfg->sms_driver);
        return -1;
    }
    t->w.jwks =
        oauth_jwks_cache_new(t->w.base, t->w.dns,
                             &(struct oauth_jwks_cache_config){
                                 .ca_file = cfg->jwks_uri_ca_file,
                                 .timeout_ms = cfg->jwks_uri_timeout_ms,
                                 .ttl_seconds = cfg->jwks_uri_cache_seconds,
                                 .refetch_seconds = cfg->jwks_uri_refetch_seconds,
                                 .allow_http_loopback = cfg->jwks_uri_allow_http_loopback,
                                 .allow_loopback = cfg->jwks_uri_allow_loopback,
                             });
    if (!t->w.jwks)
        return -1;
    t->w.keys =
        oauth_keyset_new(rows->keys, rows->n, cfg->secret, cfg->key_prepublish_seconds);
    if (!t->w.keys) {
        log_error(
            "cannot open the signing keys: is `secret` the one they were sealed with?");
        return -1;
    }
    t->keys_fingerprint = keys_fingerprint(rows->keys, rows->n);
    t->keys_timer = event_new(t->w.base, -1, EV_PERSIST, on_keys_timer, t);
    if (!t->keys_timer || event_add(t->keys_timer, &refresh) != 0) {
        log_error("worker %d: cannot start the key reload timer", index);
        return -1;
    }
    return worker_open_http(t, cfg);
}

/* Frees what worker_open created, on the worker's own thread once its loop has stopped
 * (or on the main thread for a worker that never ran). */
static void worker_close(struct server_thread *t)
{
    if (t->keys_timer)
        event_free(t->keys_timer);
    if (t->accept_timer)
        event_free(t->accept_timer);
    if (t->accept_pause)
        event_free(t->accept_pause);
    if (t->bound)
        evhttp_del_accept_socket(t->http, t->bound);
    /* Both call the callbacks still pending, whose handlers reply while evhttp still
     * exists. The drain has waited for the deliveries, so sends are pending here only
     * when it hit its time limit. The SMS sender goes first because a send's callback
     * queues a statement, which storage_conn_free then fails; a failed statement starts
     * no SMS. */
    sms_sender_free(t->w.sms);
    /* Fails requests still waiting for a jwks_uri; they reply while evhttp exists. */
    oauth_jwks_cache_free(t->w.jwks);
    storage_conn_free(t->w.db);
    server_http_abandon_all(t);
    if (t->http)
        evhttp_free(t->http);
    oauth_keyset_free(t->w.keys);
    free(t->keys_fingerprint);
    if (t->w.dns)
        evdns_base_free(t->w.dns, 0);
    if (t->w.base)
        event_base_free(t->w.base);
    /* t->thread stays: the main thread joins it after this returns. */
    t->keys_timer = NULL;
    t->accept_timer = NULL;
    t->accept_pause = NULL;
    t->bound = NULL;
    t->http = NULL;
    t->keys_fingerprint = NULL;
    memset(&t->w, 0, sizeof(t->w));
}

/* Enables the listener once the database connection is up, or after db_timeout_ms
 * without it. Until then connections wait in the kernel's backlog, so no request that
 * arrives right after "ready" fails for a database connection still being opened. */
static void on_accept_timer(evutil_socket_t fd, short what, void *arg)
{
    struct server_thread *t = arg;
    bool up = storage_conn_is_up(t->w.db);

    (void)fd;
    (void)what;
    if (!up && util_mono_ms() - t->started_ms < server_config->db_timeout_ms)
        return;
    if (!up)
        log_warn("worker %d: no database connection after %d ms; accepting requests "
                 "anyway, and they get 503 until it connects",
                 t->w.index, server_config->db_timeout_ms);
    if (t->bound &&
        evconnlistener_enable(evhttp_bound_socket_get_listener(t->bound)) != 0)
        log_error("worker %d: cannot enable its listener", t->w.index);
    event_free(t->accept_timer);
    t->accept_timer = NULL;
    atomic_store(&t->accepting, true);
}

static void start_accept_timer(struct server_thread *t)
{
    struct timeval period = {0, ACCEPT_POLL_MS * 1000};

    t->started_ms = util_mono_ms();
    t->accept_timer = event_new(t->w.base, -1, EV_PERSIST, on_accept_timer, t);
    if (!t->accept_timer || event_add(t->accept_timer, &period) != 0) {
        log_error("worker %d: cannot start the accept timer; exiting", t->w.index);
        _exit(1);
    }
}

static void *worker_main(void *arg)
{
    struct server_thread *t = arg;

    worker_self = t;
    start_accept_timer(t);
    if (t->w.index == 0)
        ciba_sweeper_start(&t->w);
    /* Without it, pings and pushes still go out from the other workers and instances. */
    if (ciba_notifier_start(&t->w) != 0)
        log_error("worker %d: no ping and push delivery on this worker", t->w.index);
    if (event_base_loop(t->w.base, EVLOOP_NO_EXIT_ON_EMPTY) < 0)
        log_error("worker %d: event loop failed", t->w.index);
    if (t->w.index == 0)
        ciba_sweeper_stop(&t->w);
    ciba_notifier_stop(&t->w);
    worker_close(t);
    return NULL;
}

/* Runs on the worker's thread: closes its listening socket, so the kernel sends new
 * connections to no one, and marks replies "Connection: close". */
static void on_stop_accepting(evutil_socket_t fd, short what, void *arg)
{
    struct server_thread *t = arg;

    (void)fd;
    (void)what;
    t->draining = true;
    if (t->bound) {
        evhttp_del_accept_socket(t->http, t->bound);
        t->bound = NULL;
    }
    log_debug("worker %d: listener closed", t->w.index);
}

void server_worker_background_begin(struct server_worker *w)
{
    atomic_fetch_add(&w->background, 1);
}

void server_worker_background_end(struct server_worker *w)
{
    atomic_fetch_sub(&w->background, 1);
}

/* ---- shutdown, on the main thread ----------------------------------------------------
 */

static size_t count_unanswered(const struct server_main *m)
{
    size_t n = 0;

    for (int i = 0; i < m->n_threads; i++)
        n += atomic_load(&m->threads[i].unanswered);
    return n;
}

static size_t count_background(const struct server_main *m)
{
    size_t n = 0;

    for (int i = 0; i < m->n_threads; i++)
        n += atomic_load(&m->threads[i].w.background);
    return n;
}

/* The maximum time a graceful stop waits. A request in flight gets its reply by
 * request_deadline_ms, and an SMS delivery it started may then take two gateway
 * attempts, the pause between them and the statement that records the outcome. The
 * extra second covers the loops' own latency. */
static int64_t drain_limit_ms(const struct server_config *cfg)
{
    return (int64_t)cfg->request_deadline_ms + 2 * (int64_t)cfg->sms_timeout_ms +
           SMS_RETRY_PAUSE_MS + cfg->db_timeout_ms + 1000;
}

static void on_break(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

/* Stops every loop. A worker's break goes through event_base_once rather than
 * event_base_loopbreak, because a loop that has not started yet would clear the flag
 * when it starts and then run forever. */
static void stop_loops(struct server_main *m, int n_started)
{
    for (int i = 0; i < n_started; i++) {
        struct event_base *base = m->threads[i].w.base;

        if (event_base_once(base, -1, EV_TIMEOUT, on_break, base, NULL) != 0) {
            log_error("worker %d: cannot schedule its stop; exiting", i);
            _exit(1);
        }
    }
    event_base_loopbreak(m->base);
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct server_main *m = arg;
    int64_t now = util_mono_ms(), limit = drain_limit_ms(m->cfg);
    size_t open = count_unanswered(m), deliveries = count_background(m);

    (void)fd;
    (void)what;
    if (open > 0 || deliveries > 0) {
        /* A reply may start a delivery right after it, so idleness starts over. */
        m->idle_ms = 0;
    } else if (m->idle_ms == 0) {
        log_info("every request handler and every delivery has finished after "
                 "%lld ms",
                 (long long)(now - m->drain_started_ms));
        m->idle_ms = now;
    }
    if (m->idle_ms && now - m->idle_ms >= DRAIN_FLUSH_MS) {
        stop_loops(m, m->n_threads);
        return;
    }
    /* Requests and deliveries have their own timeouts, so this only passes when a
     * worker is stuck. */
    if (now - m->drain_started_ms > limit) {
        log_warn("%zu requests and %zu deliveries still open after %lld ms; stopping "
                 "anyway",
                 open, deliveries, (long long)limit);
        stop_loops(m, m->n_threads);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct server_main *m = arg;
    const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    struct timeval tick = {0, DRAIN_TICK_MS * 1000};

    (void)what;
    if (!m->serving) {
        log_info("received %s before serving started; stopping", name);
        m->stop_requested = true;
        event_base_loopbreak(m->base);
        return;
    }
    if (m->draining) {
        log_warn("received %s again; exiting now without waiting for requests", name);
        _exit(1);
    }
    m->draining = true;
    m->drain_started_ms = util_mono_ms();
    log_info("received %s, draining %zu requests and %zu deliveries", name,
             count_unanswered(m), count_background(m));

    for (int i = 0; i < m->n_threads; i++) {
        if (event_base_once(m->threads[i].w.base, -1, EV_TIMEOUT, on_stop_accepting,
                            &m->threads[i], NULL) != 0)
            log_error("worker %d: cannot schedule closing its listener", i);
    }
    m->drain_timer = event_new(m->base, -1, EV_PERSIST, on_drain_tick, m);
    if (!m->drain_timer || event_add(m->drain_timer, &tick) != 0) {
        log_error("cannot start the drain timer; stopping at once");
        stop_loops(m, m->n_threads);
    }
}

/* ---- startup
 * ---------------------------------------------------------------------------- */

static void log_versions(const struct server_config *cfg)
{
    int pq = PQlibVersion();

    log_info("cibad %s starting: libevent %s, %s, libpq %d.%d, jansson %s; listen %s, %d "
             "workers",
             CIBAD_VERSION, event_get_version(), OpenSSL_version(OPENSSL_VERSION),
             pq / 10000, pq % 10000, jansson_version_str(), cfg->listen, cfg->workers);
}

/* Fails early, with a clear message, when another process already listens on the
 * address: with SO_REUSEPORT the kernel would otherwise let us share its port. */
static int check_address_free(const char *listen)
{
    struct sockaddr_storage addr;
    int addr_len = sizeof(addr), one = 1, rc = 0;
    int fd;

    if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&addr, &addr_len) != 0) {
        log_error("invalid listen address %s", listen);
        return -1;
    }
    fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_error("cannot create a socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&addr, (socklen_t)addr_len) != 0) {
        log_error("cannot listen on %s: %s", listen, strerror(errno));
        rc = -1;
    }
    close(fd);
    return rc;
}

static void on_accepting_check(evutil_socket_t fd, short what, void *arg)
{
    struct server_main *m = arg;

    (void)fd;
    (void)what;
    for (int i = 0; i < m->n_threads; i++) {
        if (!atomic_load(&m->threads[i].accepting))
            return;
    }
    log_info("ready");
    event_free(m->ready_timer);
    m->ready_timer = NULL;
}

/* Logs "ready" from the main loop once every worker accepts connections. */
static int main_wait_accepting(struct server_main *m)
{
    struct timeval period = {0, ACCEPT_POLL_MS * 1000};

    m->ready_timer = event_new(m->base, -1, EV_PERSIST, on_accepting_check, m);
    if (!m->ready_timer || event_add(m->ready_timer, &period) != 0) {
        log_error("cannot start the readiness timer");
        return -1;
    }
    return 0;
}

static int main_open(struct server_main *m)
{
    m->base = event_base_new();
    if (!m->base) {
        log_error("cannot create the main event base");
        return -1;
    }
    m->sigterm = evsignal_new(m->base, SIGTERM, on_signal, m);
    m->sigint = evsignal_new(m->base, SIGINT, on_signal, m);
    if (!m->sigterm || !m->sigint || evsignal_add(m->sigterm, NULL) != 0 ||
        evsignal_add(m->sigint, NULL) != 0) {
        log_error("cannot install the SIGTERM and SIGINT handlers");
        return -1;
    }
    return 0;
}

/* Runs the main loop, which handles only SIGTERM and SIGINT yet, for ms milliseconds.
 * Returns true when a signal asked to stop. */
static bool main_sleep(struct server_main *m, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (event_base_loopexit(m->base, &tv) != 0 || event_base_dispatch(m->base) < 0) {
        log_error("the main event loop failed while waiting for the database");
        return true;
    }
    return m->stop_requested;
}

/* Prepares the database, trying again while it is unreachable: after 1 s, then twice as
 * long each time up to 10 s, until it connects or SIGTERM or SIGINT arrives. A signal
 * that arrives during a connection attempt is handled when the attempt returns.
 * Returns 0 when ready, 1 when a signal ended the wait, or -1 on a failure that another
 * attempt cannot fix (logged). */
static int wait_for_database(struct server_main *m, struct key_rows *rows)
{
    int delay_ms = DB_RETRY_FIRST_MS;
    char err[512];

    for (int attempt = 1;; attempt++) {
        switch (prepare_database(m->cfg, rows, err, sizeof(err))) {
        case DB_READY:
            if (attempt > 1)
                log_info("connected to the database after %d attempts", attempt);
            return 0;
        case DB_FAILED:
            return -1;
        case DB_UNREACHABLE:
            break;
        }
        err[strcspn(err, "\n")] = '\0';
        log_warn("cannot connect to the database (attempt %d): %s; next attempt in %d ms",
                 attempt, err, delay_ms);
        if (main_sleep(m, delay_ms))
            return 1;
        delay_ms = delay_ms * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : delay_ms * 2;
    }
}

static void main_close(struct server_main *m)
{
    if (m->drain_timer)
        event_free(m->drain_timer);
    if (m->ready_timer)
        event_free(m->ready_timer);
    if (m->sigterm)
        event_free(m->sigterm);
    if (m->sigint)
        event_free(m->sigint);
    if (m->base)
        event_base_free(m->base);
}

/* Starts the worker threads with SIGTERM and SIGINT blocked, so only the main thread
 * receives them. Returns the number started. */
static int start_threads(struct server_main *m)
{
    sigset_t block, old;
    int started = 0;

    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (; started < m->n_threads; started++) {
        int err = pthread_create(&m->threads[started].thread, NULL, worker_main,
                                 &m->threads[started]);

        if (err != 0) {
            log_error("cannot start worker thread %d: %s", started, strerror(err));
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return started;
}

int server_run(const struct server_config *cfg)
{
    struct server_main m = {.cfg = cfg, .n_threads = cfg->workers};
    struct key_rows rows = {0};
    int opened = 0, started = 0, rc = 1;

    /* Handlers and the deadline read the global; main.c sets it too. */
    server_config = cfg;
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0) {
        log_error("cannot enable libevent's thread support");
        return 1;
    }
    event_set_fatal_callback(on_libevent_fatal);
    event_set_log_callback(on_libevent_log);
    log_versions(cfg);
    server_config_log(cfg);
    server_routes_init(cfg->issuer);

    if (server_tls_init(cfg) != 0 || check_address_free(cfg->listen) != 0 ||
        main_open(&m) != 0)
        goto out;
    switch (wait_for_database(&m, &rows)) {
    case 0:
        break;
    case 1:
        log_info("stopped");
        rc = 0;
        goto out;
    default:
        goto out;
    }
    m.threads = util_calloc((size_t)m.n_threads, sizeof(*m.threads));
    for (; opened < m.n_threads; opened++) {
        if (worker_open(&m.threads[opened], opened, cfg, &rows) != 0) {
            opened++; /* close the partly opened one too */
            goto out;
        }
    }

    started = start_threads(&m);
    m.serving = true;
    if (started == m.n_threads && main_wait_accepting(&m) == 0) {
        if (event_base_dispatch(m.base) < 0)
            log_error("the main event loop failed");
        rc = 0;
    } else {
        stop_loops(&m, started);
    }
    for (int i = 0; i < started; i++)
        pthread_join(m.threads[i].thread, NULL);
    if (rc == 0)
        log_info("stopped");
out:
    for (int i = started; i < opened; i++)
        worker_close(&m.threads[i]);
    free(m.threads);
    main_close(&m);
    key_rows_free(&rows);
    server_tls_free();
    return rc;
}
