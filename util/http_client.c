/* http_client.c - outbound HTTP(S) requests on an event loop, with certificate and host
 * name checks, a deadline per attempt, a response size limit and an optional pool of
 * idle keep-alive connections
 * SPDX-License-Identifier: MIT
 *
 * Every completion path (response, libevent error, connection failure) only records the
 * outcome and activates finish_ev. finish() then returns the connection to its pool or
 * frees it, and calls the user's callback from a fresh event. libevent may still touch
 * the connection after our request callback returns, so freeing it there would be a
 * use after free.
 *
 * A pool must never hand out a connection whose socket is closed. evhttp (libevent
 * 2.1.12) reconnects a disconnected connection when a request is made on it, and for
 * TLS that reuses the SSL object of the closed session, which does not work. So while a
 * connection sits idle, its close callback marks it closed (libevent calls it when the
 * server closes the connection or when the idle timeout, idle_ms while idle, runs out)
 * and sweep_ev frees it later, outside libevent's callback. Before reuse, the pool also
 * polls the socket: an idle HTTP/1.1 connection receives nothing, so a readable socket
 * means the server closed it and the loop has not run the close callback yet. Retries
 * are 0 on every connection, so evhttp never reconnects after a failure either.
 */
#include "util/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <ctype.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* the response's HTTP version; 2.1 has no getter */
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* Status lines and headers larger than this fail the request. */
#define MAX_RESPONSE_HEADERS (16 * 1024)

/* A pending DNS lookup. evdns reports a canceled lookup later, from the loop, so the
 * lookup gets its own small struct that outlives a canceled call. */
struct lookup {
    struct util_http_call *call; /* NULL once the call no longer waits for it */
};

/* A connection is not reused once it is this old, so that a changed DNS answer for
 * its host takes effect even when traffic never lets it sit idle. */
#define POOL_MAX_AGE_MS (60 * 1000)

/* An idle connection in a pool. */
struct idle_conn {
    struct util_http_pool *pool;
    struct evhttp_connection *conn;
    struct bufferevent *bev; /* the TLS bufferevent conn owns; NULL on plain HTTP */
    SSL_CTX *tls;            /* context of the TLS session; NULL on plain HTTP */
    bool is_tls;
    char host[256];
    int port;
    struct sockaddr_storage addr; /* the address connected to */
    int64_t created_ms;           /* when it was opened */
    int64_t idle_since_ms;
    bool closed; /* libevent closed it; sweep_ev frees it */
    struct idle_conn *prev, *next;
};

struct util_http_pool {
    struct event_base *base;
    size_t max_idle;
    int idle_ms;
    struct idle_conn *idle; /* most recently returned first */
    size_t idle_count;
    struct util_http_call *calls; /* running calls that return their connection here */
    struct event *sweep_ev;       /* frees the connections marked closed */
};

struct util_http_call {
    struct event_base *base;
    SSL_CTX *tls; /* a reference of our own; NULL on plain HTTP */
    bool is_tls;
    char host[256]; /* URL host without IPv6 brackets: SNI and certificate name */
    int port;
    char *target; /* "/path?query" */
    enum evhttp_cmd_type method;
    struct timeval timeout;
    size_t max_response_body;

    struct lookup *lookup; /* set while DNS runs */
    struct evdns_getaddrinfo_request
        *dns_req;                 /* its handle, if it did not finish at once */
    struct evhttp_request *evreq; /* ours until evhttp_make_request takes it */
    struct evhttp_request *sent;  /* evhttp's from then on: read only in its callbacks */
    int64_t conn_created_ms;      /* when conn was opened */
    struct evhttp_connection *conn; /* NULL before connecting and once freed */
    struct bufferevent *bev;        /* owned by conn; NULL on plain HTTP */
    struct sockaddr_storage addr;   /* the address conn connects to */
    struct event *deadline;
    struct event *finish_ev;

    bool (*address_allowed)(const struct sockaddr *addr, void *arg);
    void *address_arg;

    util_http_done_cb cb;
    void *arg;
    struct util_http_pool *pool;                  /* NULL for a one-shot request */
    struct util_http_call *pool_prev, *pool_next; /* in pool->calls */
    bool keep_alive; /* the response lets the connection carry another request */

    bool completed; /* the outcome is recorded; later events are ignored */
    int64_t started_ms;
    enum evhttp_request_error libevent_error; /* from on_request_error */
    bool have_libevent_error;
    struct util_http_response res;
    char *body;
    char reason[200];
};

/* ---- URL checks ------------------------------------------------------------------- */

/* Copies the URL host without the brackets of an IPv6 literal. Returns 0 or -1. */
static int host_unbracketed(const char *host, char *out, size_t out_len)
{
    size_t len = strlen(host);

    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    if (len == 0 || len >= out_len)
        return -1;
    memcpy(out, host, len);
    out[len] = '\0';
    return 0;
}

/* Returns AF_INET or AF_INET6 for an IP literal, or 0 for a name. */
static int ip_literal_family(const char *host, void *addr)
{
    unsigned char buf[sizeof(struct in6_addr)];

    if (!addr)
        addr = buf;
    if (inet_pton(AF_INET, host, addr) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, host, addr) == 1)
        return AF_INET6;
    return 0;
}

static bool is_loopback_literal(const char *host)
{
    unsigned char addr[sizeof(struct in6_addr)];

    switch (ip_literal_family(host, addr)) {
    case AF_INET:
        return addr[0] == 127;
    case AF_INET6:
        return memcmp(addr, &in6addr_loopback, sizeof(in6addr_loopback)) == 0;
    default:
        return false;
    }
}

/* A host must be an IP literal or a DNS name made of letters, digits, '-' and '.'. */
static bool is_valid_host(const char *host)
{
    if (ip_literal_family(host, NULL))
        return true;
    for (const char *p = host; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
            return false;
    }
    return *host != '\0';
}

int util_http_url_check(const char *url, bool allow_http_loopback, bool have_dns,
                        char *err, size_t err_len)
{
    struct evhttp_uri *uri = url ? evhttp_uri_parse(url) : NULL;
    const char *scheme, *raw_host;
    char host[256];
    int rc = -1;

    if (!uri) {
        snprintf(err, err_len, "the URL is missing or not a valid absolute URL");
        return -1;
    }
    scheme = evhttp_uri_get_scheme(uri);
    raw_host = evhttp_uri_get_host(uri);

    if (!scheme ||
        (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0)) {
        snprintf(err, err_len, "the URL scheme must be https");
    } else if (!raw_host || host_unbracketed(raw_host, host, sizeof(host)) != 0 ||
               !is_valid_host(host)) {
        snprintf(err, err_len, "the URL has no valid host");
    } else if (evhttp_uri_get_userinfo(uri)) {
        snprintf(err, err_len, "the URL must not contain a user name or password");
    } else if (evhttp_uri_get_port(uri) == 0) {
        snprintf(err, err_len, "the URL port must be between 1 and 65535");
    } else if (strcasecmp(scheme, "http") == 0 && !allow_http_loopback) {
        snprintf(err, err_len, "plain http:// is not allowed; use https://");
    } else if (strcasecmp(scheme, "http") == 0 && !is_loopback_literal(host)) {
        snprintf(err, err_len,
                 "plain http:// is allowed only to a loopback IP address such as "
                 "127.0.0.1");
    } else if (!have_dns && !ip_literal_family(host, NULL)) {
        snprintf(err, err_len, "a host name needs a DNS resolver; none was given");
    } else {
        rc = 0;
    }
    evhttp_uri_free(uri);
    return rc;
}

/* ---- TLS -------------------------------------------------------------------------- */

static const char *openssl_error_text(unsigned long e)
{
    const char *text = e ? ERR_reason_error_string(e) : NULL;

    return text ? text : "unknown error";
}

SSL_CTX *util_http_tls_ctx_new(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int loaded;

    if (!ctx) {
        log_error("creating the TLS client context failed: %s",
                  openssl_error_text(ERR_get_error()));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);

    if (ca_file)
        loaded = SSL_CTX_load_verify_locations(ctx, ca_file, NULL);
    else
        loaded = SSL_CTX_set_default_verify_paths(ctx);
    if (loaded != 1) {
        log_error("loading the CA certificates from %s failed: %s",
                  ca_file ? ca_file : "the system store",
                  openssl_error_text(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Creates the TLS bufferevent for one connection, with SNI and the host name (or IP
 * address) the certificate must match. SSL_VERIFY_PEER alone accepts a certificate
 * for any name the CA vouches for, so the name check is what makes this safe. */
static struct bufferevent *tls_bufferevent_new(struct event_base *base, SSL_CTX *tls,
                                               const char *host)
{
    SSL *ssl = SSL_new(tls);
    struct bufferevent *bev;
    int ok;

    if (!ssl)
        return NULL;
    if (ip_literal_family(host, NULL)) {
        /* SNI carries names only (RFC 6066 section 3), so an IP address gets none. */
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    } else {
        ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
    }
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }

    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* ---- connection pool -------------------------------------------------------------- */

static void on_sweep(evutil_socket_t fd, short what, void *arg);

struct util_http_pool *util_http_pool_new(struct event_base *base, size_t max_idle,
                                          int idle_ms)
{
    struct util_http_pool *pool;

    if (max_idle == 0 || idle_ms <= 0) {
        log_error("HTTP connection pool not created: max_idle %zu and idle_ms %d must be "
                  "positive",
                  max_idle, idle_ms);
        return NULL;
    }
    pool = util_calloc(1, sizeof(*pool));
    pool->base = base;
    pool->max_idle = max_idle;
    pool->idle_ms = idle_ms;
    pool->sweep_ev = event_new(base, -1, 0, on_sweep, pool);
    if (!pool->sweep_ev) {
        log_error("HTTP connection pool not created: event_new failed");
        free(pool);
        return NULL;
    }
    return pool;
}

size_t util_http_pool_idle_count(const struct util_http_pool *pool)
{
    return pool ? pool->idle_count : 0;
}

/* Takes ic off its pool's list, and frees ic but not its connection. */
static void idle_conn_unlink(struct idle_conn *ic)
{
    struct util_http_pool *pool = ic->pool;

    if (ic->prev)
        ic->prev->next = ic->next;
    else
        pool->idle = ic->next;
    if (ic->next)
        ic->next->prev = ic->prev;
    pool->idle_count--;
    free(ic);
}

/* Frees an idle connection. The close callback is cleared first, because
 * evhttp_connection_free calls it for an open connection. Safe only outside libevent's
 * callbacks for this connection. */
static void idle_conn_free(struct idle_conn *ic)
{
    struct evhttp_connection *conn = ic->conn;

    idle_conn_unlink(ic);
    evhttp_connection_set_closecb(conn, NULL, NULL);
    evhttp_connection_free(conn);
}

/* libevent closed an idle connection: the server closed it or sent something, or the
 * idle timeout ran out. This runs inside libevent's handling of the connection, so it
 * only marks the connection, and on_sweep frees it. */
static void on_idle_close(struct evhttp_connection *conn, void *arg)
{
    struct idle_conn *ic = arg;

    (void)conn;
    ic->closed = true;
    event_active(ic->pool->sweep_ev, EV_TIMEOUT, 0);
}

static bool idle_conn_expired(const struct idle_conn *ic, int64_t now_ms)
{
    return ic->closed || now_ms - ic->idle_since_ms >= ic->pool->idle_ms;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct util_http_pool *pool = arg;
    int64_t now_ms = util_mono_ms();
    struct idle_conn *ic, *next;

    (void)fd;
    (void)what;
    for (ic = pool->idle; ic; ic = next) {
        next = ic->next;
        if (idle_conn_expired(ic, now_ms))
            idle_conn_free(ic);
    }
}

void util_http_pool_free(struct util_http_pool *pool)
{
    struct util_http_call *call, *next;

    if (!pool)
        return;
    while (pool->idle)
        idle_conn_free(pool->idle);
    for (call = pool->calls; call; call = next) {
        next = call->pool_next;
        call->pool = NULL;
        call->pool_prev = call->pool_next = NULL;
    }
    event_free(pool->sweep_ev);
    free(pool);
}

/* True when the socket of conn is open and has nothing to read. An idle HTTP/1.1
 * connection receives nothing, so a readable socket means the server closed it (FIN,
 * reset or a TLS close_notify) and the loop has not handled that yet. */
static bool socket_is_idle(struct evhttp_connection *conn)
{
    struct pollfd pfd = {
        .fd = bufferevent_getfd(evhttp_connection_get_bufferevent(conn)),
        .events = POLLIN,
    };

    return pfd.fd >= 0 && poll(&pfd, 1, 0) == 0;
}

/* True when bytes that no request asked for wait in conn's buffers: libevent's input
 * buffer, or for TLS, OpenSSL's. Extra bytes after a complete response are no response
 * of their own (RFC 9112 section 6.3), so such a connection must never be reused: the
 * next request would read them as its response. */
static bool has_buffered_input(struct evhttp_connection *conn)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
    SSL *ssl = bufferevent_openssl_get_ssl(bev);

    return evbuffer_get_length(bufferevent_get_input(bev)) > 0 ||
           (ssl && SSL_pending(ssl) > 0);
}

/* True when ic may carry another request now: open, idle, younger than the pool's
 * maximum age, and with nothing unread. */
static bool idle_conn_usable(const struct idle_conn *ic, int64_t now_ms)
{
    return now_ms - ic->created_ms < POOL_MAX_AGE_MS && socket_is_idle(ic->conn) &&
           !has_buffered_input(ic->conn);
}

static bool idle_conn_matches(const struct idle_conn *ic,
                              const struct util_http_call *call)
{
    return ic->is_tls == call->is_tls && ic->tls == call->tls && ic->port == call->port &&
           strcasecmp(ic->host, call->host) == 0;
}

/* Gives call an idle connection to its scheme, host, port and TLS context whose socket
 * is open and whose address call->address_allowed accepts. Frees the expired and
 * closed connections it passes. Returns true when call->conn is set. */
static bool pool_take(struct util_http_pool *pool, struct util_http_call *call)
{
    int64_t now_ms = util_mono_ms();
    struct idle_conn *ic, *next;

    for (ic = pool->idle; ic; ic = next) {
        next = ic->next;
        if (idle_conn_expired(ic, now_ms)) {
            idle_conn_free(ic);
            continue;
        }
        if (!idle_conn_matches(ic, call))
            continue;
        if (!idle_conn_usable(ic, now_ms)) {
            idle_conn_free(ic);
            continue;
        }
        if (call->address_allowed &&
            !call->address_allowed((const struct sockaddr *)&ic->addr, call->address_arg))
            continue;

        evhttp_connection_set_closecb(ic->conn, NULL, NULL);
        call->conn = ic->conn;
        call->bev = ic->bev;
        call->addr = ic->addr;
        call->conn_created_ms = ic->created_ms;
        idle_conn_unlink(ic);
        return true;
    }
    return false;
}

/* Returns the connection of a call that got a complete response to the pool, when the
 * response lets the connection stay open and its socket is still open. This runs in
 * finish_ev, outside libevent's callbacks for the connection. When the pool is full,
 * the connection idle the longest is freed. */
static void pool_put(struct util_http_call *call)
{
    struct util_http_pool *pool = call->pool;
    struct timeval idle_tv;
    struct idle_conn *ic, *oldest;

    if (!pool || !call->conn || call->res.error != UTIL_HTTP_OK || !call->keep_alive ||
        !socket_is_idle(call->conn) || has_buffered_input(call->conn) ||
        util_mono_ms() - call->conn_created_ms >= POOL_MAX_AGE_MS)
        return;

    ic = util_calloc(1, sizeof(*ic));
    ic->pool = pool;
    ic->conn = call->conn;
    ic->bev = call->bev;
    ic->tls = call->tls;
    ic->is_tls = call->is_tls;
    memcpy(ic->host, call->host, sizeof(ic->host));
    ic->port = call->port;
    ic->addr = call->addr;
    ic->created_ms = call->conn_created_ms;
    ic->idle_since_ms = util_mono_ms();
    call->conn = NULL;
    call->bev = NULL;

    /* evhttp keeps reading an idle connection to detect a close, with the connection's
     * timeout as read timeout. Set to idle_ms, it closes the connection when idle_ms
     * runs out, and on_idle_close then marks it. */
    idle_tv.tv_sec = pool->idle_ms / 1000;
    idle_tv.tv_usec = (pool->idle_ms % 1000) * 1000;
    evhttp_connection_set_timeout_tv(ic->conn, &idle_tv);
    evhttp_connection_set_closecb(ic->conn, on_idle_close, ic);

    ic->next = pool->idle;
    if (pool->idle)
        pool->idle->prev = ic;
    pool->idle = ic;
    pool->idle_count++;

    while (pool->idle_count > pool->max_idle) {
        for (oldest = pool->idle; oldest->next; oldest = oldest->next)
            ;
        idle_conn_free(oldest);
    }
}

/* ---- completion ------------------------------------------------------------------- */

/* Stops whatever the call is still doing: the DNS lookup, the connection and the
 * request not yet handed to a connection. Safe only outside libevent's callbacks for
 * this connection. */
static void stop_activity(struct util_http_call *call)
{
    if (call->lookup) {
        call->lookup->call = NULL;
        call->lookup = NULL;
        if (call->dns_req)
            evdns_getaddrinfo_cancel(call->dns_req);
        call->dns_req = NULL;
    }
    if (call->conn) {
        evhttp_connection_free(call->conn);
        call->conn = NULL;
        call->bev = NULL;
    }
    if (call->evreq) {
        evhttp_request_free(call->evreq);
        call->evreq = NULL;
    }
}

static void finish(struct util_http_call *call)
{
    call->res.elapsed_ms = util_mono_ms() - call->started_ms;
    call->res.body = call->body ? call->body : "";
    /* Before the callback, so a request the callback starts can reuse the connection. */
    pool_put(call);
    stop_activity(call);
    call->cb(call->arg, &call->res);
    util_http_cancel(call);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish(arg);
}

/* Records a failure, unless an outcome is already recorded, and schedules finish(). */
static void fail(struct util_http_call *call, enum util_http_error error, const char *fmt,
                 ...) __attribute__((format(printf, 3, 4)));

static void fail(struct util_http_call *call, enum util_http_error error, const char *fmt,
                 ...)
{
    va_list ap;

    if (call->completed)
        return;
    call->completed = true;
    evtimer_del(call->deadline);
    call->res.error = error;
    call->res.status = 0;
    va_start(ap, fmt);
    vsnprintf(call->reason, sizeof(call->reason), fmt, ap);
    va_end(ap);
    call->res.reason = call->reason;
    event_active(call->finish_ev, EV_TIMEOUT, 0);
}

/* Explains a failed TLS connection: the certificate check result when there is one,
 * otherwise the first OpenSSL error the bufferevent saw. Returns false when TLS was
 * not the cause. */
static bool describe_tls_failure(struct util_http_call *call, char *out, size_t out_len)
{
    SSL *ssl = call->bev ? bufferevent_openssl_get_ssl(call->bev) : NULL;
    unsigned long e;
    long verify;

    if (!ssl)
        return false;
    verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        snprintf(out, out_len, "TLS certificate verification failed: %s",
                 X509_verify_cert_error_string(verify));
        return true;
    }
    e = bufferevent_get_openssl_error(call->bev);
    if (e) {
        snprintf(out, out_len, "TLS handshake failed: %s", openssl_error_text(e));
        return true;
    }
    return false;
}

/* A request that ended without a response: name the cause as precisely as libevent
 * lets us. */
static void fail_without_response(struct util_http_call *call)
{
    char tls_reason[160];

    if (call->is_tls && describe_tls_failure(call, tls_reason, sizeof(tls_reason))) {
        fail(call, UTIL_HTTP_ERR_TLS, "%s", tls_reason);
        return;
    }
    if (!call->have_libevent_error) {
        /* libevent reports a failed connect or DNS lookup without an error code. */
        fail(call, UTIL_HTTP_ERR_CONNECT, "connection failed");
        return;
    }
    switch (call->libevent_error) {
    case EVREQ_HTTP_TIMEOUT:
        fail(call, UTIL_HTTP_ERR_TIMEOUT, "timed out (no activity)");
        break;
    case EVREQ_HTTP_DATA_TOO_LONG:
        fail(call, UTIL_HTTP_ERR_TOO_LARGE, "response body over the limit or malformed");
        break;
    case EVREQ_HTTP_INVALID_HEADER:
        fail(call, UTIL_HTTP_ERR_PROTOCOL, "invalid or oversized response header");
        break;
    case EVREQ_HTTP_EOF:
        fail(call, UTIL_HTTP_ERR_CONNECT, "connection closed before a complete response");
        break;
    default:
        fail(call, UTIL_HTTP_ERR_CONNECT, "connection failed (libevent error %d)",
             (int)call->libevent_error);
        break;
    }
}

/* libevent calls this before on_request_done(NULL) when a request fails. */
static void on_request_error(enum evhttp_request_error error, void *arg)
{
    struct util_http_call *call = arg;

    call->libevent_error = error;
    call->have_libevent_error = true;
    /* The request is still evhttp's and valid here. A status line means the server
     * had started to respond. */
    if (call->sent && evhttp_request_get_response_code(call->sent) != 0)
        call->res.partial = true;
}

/* True when the comma-separated header value list contains token, ignoring case. */
static bool header_has_token(const char *list, const char *token)
{
    size_t token_len = strlen(token);
    const char *p = list;

    if (!list)
        return false;
    while (*p) {
        size_t len, trimmed;

        p += strspn(p, " \t,");
        len = strcspn(p, ",");
        trimmed = len;
        while (trimmed > 0 && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (trimmed == token_len && strncasecmp(p, token, token_len) == 0)
            return true;
        p += len;
    }
    return false;
}

/* True when the connection may carry another request after this response: HTTP/1.1
 * without "Connection: close", or HTTP/1.0 with "Connection: keep-alive", and a body
 * that ended by its length or chunked encoding, not by the server closing. */
/* True when one of the response's Connection header lines lists token. */
static bool connection_has_token(struct evkeyvalq *headers, const char *token)
{
    /* keyvalq_struct.h declares the list, but not TAILQ_FOREACH. */
    for (struct evkeyval *h = headers->tqh_first; h; h = h->next.tqe_next) {
        if (strcasecmp(h->key, "Connection") == 0 && header_has_token(h->value, token))
            return true;
    }
    return false;
}

static bool response_allows_reuse(struct evhttp_request *req)
{
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    int status = evhttp_request_get_response_code(req);

    /* libevent 2.1 ends a request at an interim 1xx other than 100 Continue, and the
     * final response still follows on the connection. */
    if (status < 200)
        return false;
    if (connection_has_token(headers, "close"))
        return false;
    if (req->major != 1 ||
        (req->minor == 0 && !connection_has_token(headers, "keep-alive")))
        return false;
    return evhttp_find_header(headers, "Content-Length") ||
           evhttp_find_header(headers, "Transfer-Encoding") || status == 204 ||
           status == 304;
}

static void on_request_done(struct evhttp_request *req, void *arg)
{
    struct util_http_call *call = arg;
    struct evbuffer *input;
    size_t len;

    call->sent = NULL; /* evhttp frees it after this callback */
    if (call->completed)
        return;
    if (!req || evhttp_request_get_response_code(req) == 0) {
        fail_without_response(call);
        return;
    }

    /* evhttp already enforced max_response_body through the connection limit. */
    input = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(input);
    call->body = util_malloc(len + 1);
    evbuffer_copyout(input, call->body, len);
    call->body[len] = '\0';

    call->keep_alive = response_allows_reuse(req);
    call->completed = true;
    evtimer_del(call->deadline);
    call->res.error = UTIL_HTTP_OK;
    call->res.status = evhttp_request_get_response_code(req);
    call->res.body_len = len;
    event_active(call->finish_ev, EV_TIMEOUT, 0);
}

/* The attempt's deadline passed. We are in our own timer event, so the lookup and the
 * connection (with the request it holds) can be stopped at once, which stops any
 * callback. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct util_http_call *call = arg;

    (void)fd;
    (void)what;
    if (call->completed)
        return;
    stop_activity(call);
    fail(call, UTIL_HTTP_ERR_TIMEOUT, "timed out");
}

/* ---- starting a request ----------------------------------------------------------- */

/* Header names are tokens, values visible ASCII or UTF-8 plus spaces and tabs, so a
 * value from configuration cannot inject a header line. */
static bool is_valid_header(const char *name, const char *value)
{
    if (!*name)
        return false;
    for (const char *p = name; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p))
            return false;
    }
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    }
    return true;
}

/* Headers the client sets itself; a caller's copy would duplicate or contradict them. */
static bool is_reserved_header(const char *name)
{
    static const char *const reserved[] = {"Host", "Connection", "Content-Length",
                                           "Transfer-Encoding"};

    for (size_t i = 0; i < ARRAY_LEN(reserved); i++) {
        if (strcasecmp(name, reserved[i]) == 0)
            return true;
    }
    return false;
}

static int add_headers(struct evhttp_request *evreq, const struct util_http_request *req,
                       const char *host_header)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(evreq);
    char length[32];

    /* HTTP/1.1 keeps the connection open unless a side sends "Connection: close". */
    if (evhttp_add_header(out, "Host", host_header) != 0 ||
        (!req->pool && evhttp_add_header(out, "Connection", "close") != 0))
        return -1;
    if (req->body_len > 0 || req->method == EVHTTP_REQ_POST ||
        req->method == EVHTTP_REQ_PUT) {
        snprintf(length, sizeof(length), "%zu", req->body_len);
        if (evhttp_add_header(out, "Content-Length", length) != 0)
            return -1;
    }
    for (size_t i = 0; i < req->header_count; i++) {
        const struct util_http_header *h = &req->headers[i];

        if (!is_valid_header(h->name, h->value) || is_reserved_header(h->name) ||
            evhttp_add_header(out, h->name, h->value) != 0)
            return -1;
    }
    return 0;
}

/* Fills the call's scheme, host, port and target from a checked URL, and returns the
 * Host header value (owned by the caller), or NULL when the URL does not parse. */
static char *url_split(struct util_http_call *call, const char *url)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *path, *query, *raw_host;
    char *host_header;
    int port;

    if (!uri)
        return NULL;
    raw_host = evhttp_uri_get_host(uri);
    if (host_unbracketed(raw_host, call->host, sizeof(call->host)) != 0) {
        evhttp_uri_free(uri);
        return NULL;
    }
    call->is_tls = strcasecmp(evhttp_uri_get_scheme(uri), "https") == 0;
    port = evhttp_uri_get_port(uri);
    if (port > 0)
        call->port = port;
    else if (call->is_tls)
        call->port = 443;
    else
        call->port = 80;

    path = evhttp_uri_get_path(uri);
    query = evhttp_uri_get_query(uri);
    call->target = util_asprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "",
                                 query ? query : "");
    if (port > 0)
        host_header = util_asprintf("%s:%d", raw_host, port);
    else
        host_header = util_strdup(raw_host);
    evhttp_uri_free(uri);
    return host_header;
}

/* Sets the connection limits: no libevent-level retry (a POST must not be repeated
 * behind the caller's back), an inactivity timeout as a backstop for the deadline
 * timer, and caps on the response headers and body. */
static void connection_configure(struct util_http_call *call)
{
    evhttp_connection_set_retries(call->conn, 0);
    evhttp_connection_set_timeout_tv(call->conn, &call->timeout);
    evhttp_connection_set_max_headers_size(call->conn, MAX_RESPONSE_HEADERS);
    evhttp_connection_set_max_body_size(call->conn, (ev_ssize_t)call->max_response_body);
}

/* Sends the request over call->conn, new or reused. The limits are set for every
 * request, because a reused connection still has the pool's idle timeout. evhttp owns
 * the request from here on, whatever evhttp_make_request returns. A connect that fails
 * at once makes libevent run on_request_done from inside it, which only records the
 * failure and activates finish_ev. */
static void start_request(struct util_http_call *call)
{
    struct evhttp_request *evreq = call->evreq;

    connection_configure(call);
    call->evreq = NULL;
    call->sent = evreq;
    if (evhttp_make_request(call->conn, evreq, call->method, call->target) != 0) {
        call->sent = NULL;
        fail(call, UTIL_HTTP_ERR_CONNECT, "starting the request failed");
        return;
    }
    if (!call->res.reused) {
        /* A TLS request goes out as several records, so several segments. With Nagle's
         * algorithm the second one waits for the server's delayed ACK (44 ms against
         * the test server). evhttp has created the socket by now. */
        int on = 1;
        evutil_socket_t fd =
            bufferevent_getfd(evhttp_connection_get_bufferevent(call->conn));

        if (fd >= 0)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
}

/* Connects to address (an IP literal, so evhttp never resolves anything) and sends
 * the request. TLS checks the certificate against the URL host, not the address. */
static void start_connection(struct util_http_call *call, const char *address)
{
    struct sockaddr_in *v4 = (struct sockaddr_in *)&call->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&call->addr;

    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    if (call->address_allowed &&
        (call->addr.ss_family == 0 ||
         !call->address_allowed((const struct sockaddr *)&call->addr,
                                call->address_arg))) {
        fail(call, UTIL_HTTP_ERR_ADDRESS, "the address %s of %s is not allowed", address,
             call->host);
        return;
    }
    if (call->is_tls) {
        call->bev = tls_bufferevent_new(call->base, call->tls, call->host);
        if (!call->bev) {
            fail(call, UTIL_HTTP_ERR_TLS, "TLS setup failed: %s",
                 openssl_error_text(ERR_get_error()));
            return;
        }
    }
    call->conn_created_ms = util_mono_ms();
    call->conn = evhttp_connection_base_bufferevent_new(
        call->base, NULL, call->bev, address, (unsigned short)call->port);
    if (!call->conn) {
        if (call->bev)
            bufferevent_free(call->bev);
        call->bev = NULL;
        fail(call, UTIL_HTTP_ERR_CONNECT, "creating the connection failed");
        return;
    }
    start_request(call);
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct lookup *lookup = arg;
    struct util_http_call *call = lookup->call;
    char address[INET6_ADDRSTRLEN];
    const void *raw;

    free(lookup);
    if (!call) {
        /* The call was canceled or timed out, and is gone. */
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    call->lookup = NULL;
    call->dns_req = NULL;

    if (result != 0 || !res) {
        fail(call, UTIL_HTTP_ERR_CONNECT,
             "connection failed: DNS lookup of %s failed: %s", call->host,
             evutil_gai_strerror(result));
    } else {
        /* Only the first address is tried, as libevent's own connect does. */
        if (res->ai_family == AF_INET6)
            raw = &((const struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
        else
            raw = &((const struct sockaddr_in *)res->ai_addr)->sin_addr;
        if (!evutil_inet_ntop(res->ai_family, raw, address, sizeof(address)))
            fail(call, UTIL_HTTP_ERR_CONNECT, "DNS lookup of %s returned a bad address",
                 call->host);
        else
            start_connection(call, address);
    }
    if (res)
        evutil_freeaddrinfo(res);
}

/* Resolves the URL host through evdns. We resolve it ourselves instead of letting
 * evhttp do it, because a TLS bufferevent in libevent 2.1.12 does not cancel its DNS
 * lookup when freed, so a timed-out attempt would stay allocated until DNS answers. */
static void start_lookup(struct util_http_call *call, struct evdns_base *dns)
{
    struct evutil_addrinfo hints = {0};
    struct evdns_getaddrinfo_request *handle;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;

    call->lookup = util_calloc(1, sizeof(*call->lookup));
    call->lookup->call = call;
    /* evdns may return a result at once (from /etc/hosts, or an error). on_resolved
     * has then run and cleared call->lookup, and the handle is NULL. */
    handle = evdns_getaddrinfo(dns, call->host, NULL, &hints, on_resolved, call->lookup);
    if (call->lookup)
        call->dns_req = handle;
}

/* Builds the request with its headers and body. Returns NULL when a header is
 * invalid. */
static struct evhttp_request *request_new(struct util_http_call *call,
                                          const struct util_http_request *req,
                                          const char *host_header)
{
    struct evhttp_request *evreq = evhttp_request_new(on_request_done, call);

    evhttp_request_set_error_cb(evreq, on_request_error);
    if (add_headers(evreq, req, host_header) != 0) {
        evhttp_request_free(evreq);
        return NULL;
    }
    /* NOTE: libevent frees its buffers without wiping them, so the body (for an SMS,
     * the one-time code) stays in freed heap memory until it is reused. */
    if (req->body_len > 0)
        evbuffer_add(evhttp_request_get_output_buffer(evreq), req->body, req->body_len);
    return evreq;
}

struct util_http_call *util_http_send(struct event_base *base, struct evdns_base *dns,
                                      SSL_CTX *tls, const struct util_http_request *req,
                                      util_http_done_cb cb, void *arg)
{
    struct util_http_call *call;
    char *host_header;
    char err[160];

    if (util_http_url_check(req->url, req->allow_http_loopback, dns != NULL, err,
                            sizeof(err)) != 0) {
        log_error("outbound HTTP request not started: %s", err);
        return NULL;
    }
    if (req->timeout_ms <= 0) {
        log_error("outbound HTTP request not started: timeout_ms %d is not positive",
                  req->timeout_ms);
        return NULL;
    }

    call = util_calloc(1, sizeof(*call));
    call->base = base;
    call->cb = cb;
    call->arg = arg;
    call->method = req->method;
    call->address_allowed = req->address_allowed;
    call->address_arg = req->address_arg;
    call->timeout.tv_sec = req->timeout_ms / 1000;
    call->timeout.tv_usec = (req->timeout_ms % 1000) * 1000;
    call->max_response_body =
        req->max_response_body ? req->max_response_body : UTIL_HTTP_MAX_RESPONSE_BODY;
    call->pool = req->pool;
    if (call->pool) {
        call->pool_next = call->pool->calls;
        if (call->pool->calls)
            call->pool->calls->pool_prev = call;
        call->pool->calls = call;
    }
    host_header = url_split(call, req->url);
    if (!host_header || (call->is_tls && !tls)) {
        log_error("outbound HTTP request not started: %s",
                  host_header ? "https needs a TLS context" : "the URL does not parse");
        free(host_header);
        util_http_cancel(call);
        return NULL;
    }
    if (call->is_tls) {
        SSL_CTX_up_ref(tls);
        call->tls = tls;
    }
    call->evreq = request_new(call, req, host_header);
    free(host_header);
    if (!call->evreq) {
        log_error("outbound HTTP request not started: invalid request header");
        util_http_cancel(call);
        return NULL;
    }

    call->started_ms = util_mono_ms();
    call->deadline = evtimer_new(base, on_deadline, call);
    call->finish_ev = event_new(base, -1, 0, on_finish, call);
    evtimer_add(call->deadline, &call->timeout);
    if (call->pool && pool_take(call->pool, call)) {
        /* Like curl, a reused connection skips DNS: the address is the one it has. */
        call->res.reused = true;
        start_request(call);
    } else if (ip_literal_family(call->host, NULL))
        start_connection(call, call->host);
    else
        start_lookup(call, dns);
    return call;
}

void util_http_cancel(struct util_http_call *call)
{
    if (!call)
        return;
    stop_activity(call);
    if (call->pool) {
        if (call->pool_prev)
            call->pool_prev->pool_next = call->pool_next;
        else
            call->pool->calls = call->pool_next;
        if (call->pool_next)
            call->pool_next->pool_prev = call->pool_prev;
    }
    if (call->deadline)
        event_free(call->deadline);
    if (call->finish_ev)
        event_free(call->finish_ev);
    SSL_CTX_free(call->tls);
    free(call->target);
    free(call->body);
    free(call);
}
