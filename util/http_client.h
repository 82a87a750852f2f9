/* http_client.h - outbound HTTP(S) requests on an event loop, one-shot or over pooled
 * keep-alive connections
 * SPDX-License-Identifier: MIT
 *
 * The client is deliberately small and reusable: the SMS gateway drivers, the JWKS
 * fetches of client authentication and ping/push delivery to client notification
 * endpoints all use it. It makes one attempt per call. Retry policy belongs to the
 * caller, which gets a transport failure and an HTTP status as different results.
 *
 * Without a pool, every call opens its own connection, sends "Connection: close" and
 * closes the connection after the response. With a pool (struct util_http_pool), a call
 * first takes an idle connection to the same scheme, host and port, and returns its
 * connection to the pool after a complete response that lets the connection stay open.
 */
#ifndef CIBAD_UTIL_HTTP_CLIENT_H
#define CIBAD_UTIL_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <event2/http.h>
#include <openssl/ssl.h>

#include "util/util.h"

struct event_base;
struct evdns_base;

/* Response bodies larger than this fail with UTIL_HTTP_ERR_TOO_LARGE unless the request
 * sets its own limit. */
#define UTIL_HTTP_MAX_RESPONSE_BODY (64 * 1024)

struct util_http_pool;

struct util_http_header {
    const char *name;
    const char *value;
};

/* One outbound request. Everything is copied by util_http_send, so the caller may free
 * it as soon as the call returns. */
struct util_http_request {
    enum evhttp_cmd_type method;            /* EVHTTP_REQ_POST, EVHTTP_REQ_GET, ... */
    const char *url;                        /* absolute http:// or https:// URL */
    const struct util_http_header *headers; /* added after Host, Content-Length and
                                              (without a pool) Connection, in order */
    size_t header_count;
    const char *body; /* may be NULL */
    size_t body_len;
    int timeout_ms;           /* whole attempt: DNS, connect, TLS, send and response */
    size_t max_response_body; /* 0: UTIL_HTTP_MAX_RESPONSE_BODY */
    bool allow_http_loopback; /* see util_http_url_check */
    /* Called with the address the request would connect to (the resolved one, or the
     * URL's IP literal) before connecting. When it returns false, nothing is sent and
     * the attempt fails with UTIL_HTTP_ERR_ADDRESS. NULL allows every address. */
    bool (*address_allowed)(const struct sockaddr *addr, void *arg);
    void *address_arg;
    /* Idle connections to reuse, and the place the connection goes back to after the
     * response. NULL: a new connection, closed after the response. */
    struct util_http_pool *pool;
};

/* Cause of an attempt that got no HTTP response. */
enum util_http_error {
    UTIL_HTTP_OK,            /* a response arrived; look at its status */
    UTIL_HTTP_ERR_TIMEOUT,   /* timeout_ms passed */
    UTIL_HTTP_ERR_CONNECT,   /* DNS, connect or the connection closed before a response */
    UTIL_HTTP_ERR_TLS,       /* handshake or certificate verification failed */
    UTIL_HTTP_ERR_TOO_LARGE, /* the response body or headers were over the limit */
    UTIL_HTTP_ERR_PROTOCOL,  /* the response could not be parsed */
    UTIL_HTTP_ERR_ADDRESS,   /* address_allowed rejected the address; nothing was sent */
};

/* The outcome of one attempt, valid only during the completion callback. */
struct util_http_response {
    enum util_http_error error;
    int status;         /* HTTP status when error is UTIL_HTTP_OK, otherwise 0 */
    const char *reason; /* why the attempt failed, for logs; NULL when error is OK */
    const char *body;   /* NUL-terminated response body ("" when none) */
    size_t body_len;
    int64_t elapsed_ms; /* from util_http_send to completion */
    bool reused;        /* the request went over an idle connection from the pool */
    /* The connection failed after the server had started to respond (a status line
     * arrived), so the server may have acted on the request. */
    bool partial;
};

/* Called once per started request, on the loop thread, never from inside
 * util_http_send. */
typedef void (*util_http_done_cb)(void *arg, const struct util_http_response *res);

struct util_http_call;

/* Creates a TLS client context that verifies the server against ca_file (PEM), or
 * against the system store when ca_file is NULL. It requires TLS 1.2 or newer and sets
 * SSL_OP_IGNORE_UNEXPECTED_EOF, because libevent 2.1.12 predates OpenSSL 3 and fails
 * otherwise on servers that close without close_notify. util_http_send sets the host
 * name check per connection. Returns NULL, with the reason logged, when ca_file cannot
 * be loaded. Free with SSL_CTX_free. */
SSL_CTX *util_http_tls_ctx_new(const char *ca_file);

/* Checks that url can be used for an outbound request: an absolute http or https URL
 * with a host, no user name or password and a valid port. Plain http is accepted only
 * when allow_http_loopback is true and the host is a loopback IP literal (127.0.0.0/8
 * or [::1]). A name such as "localhost" is rejected, because the resolver decides
 * what it points to. With have_dns false (no evdns_base), only IP literals are
 * accepted, because resolving a name without evdns blocks the loop. Returns 0, or -1
 * and a reason in err. */
int util_http_url_check(const char *url, bool allow_http_loopback, bool have_dns,
                        char *err, size_t err_len) MUST_CHECK;

/* Creates a pool of idle keep-alive connections for calls on base. One pool serves one
 * event loop and one user (the SMS sender of a worker, say), so its requests share one
 * address_allowed policy. It keeps at most max_idle idle connections (the most recently
 * used ones) and frees a connection that has been idle for idle_ms. Set idle_ms below
 * the server's own idle timeout, so that the client, not the server, closes first.
 * Returns NULL, with the reason logged, when max_idle or idle_ms is not positive. */
struct util_http_pool *util_http_pool_new(struct event_base *base, size_t max_idle,
                                          int idle_ms);

/* Frees the idle connections and the pool. Calls still running finish normally and
 * then close their connection instead of returning it. Safe with NULL. */
void util_http_pool_free(struct util_http_pool *pool);

/* Returns the number of idle connections the pool keeps now. */
size_t util_http_pool_idle_count(const struct util_http_pool *pool);

/* Starts one request on base. dns resolves host names without blocking, and the request
 * goes to the first address returned. dns may be NULL only for URLs with an IP literal.
 * tls verifies https servers (see util_http_tls_ctx_new), and may be NULL only for http
 * URLs. No redirect is followed and no retry is made.
 *
 * Without req->pool the request goes over a new connection, which is freed when the
 * request finishes. With a pool, the call reuses an idle connection to the same scheme,
 * host and port (and, for https, the same tls) when the pool has one whose socket is
 * still open and whose address address_allowed accepts, and then skips DNS, connect
 * and the TLS handshake. Otherwise it connects as without a pool. After a complete
 * response, the connection goes back to the pool unless the server asked to close it
 * (Connection: close, or HTTP/1.0 without keep-alive) or ended the body by closing. It
 * is freed instead after a failure, a timeout or a cancel, after an interim 1xx
 * response, when bytes follow the response, and once it is 60 s old. A server may
 * close a pooled connection just as a request is sent on it. The call then fails with
 * UTIL_HTTP_ERR_CONNECT (res->partial tells whether a status line had arrived), and the
 * caller's retry gets another connection.
 *
 * Returns a handle for util_http_cancel; cb then runs exactly once, later, unless the
 * call is canceled first. Returns NULL, with the reason logged, when the request could
 * not be started (invalid URL or header); cb is then never called. */
struct util_http_call *util_http_send(struct event_base *base, struct evdns_base *dns,
                                      SSL_CTX *tls, const struct util_http_request *req,
                                      util_http_done_cb cb, void *arg);

/* Stops a call that has not completed and frees it; its callback is not called. Never
 * call it from inside that call's own callback (the call is already gone). A DNS
 * lookup in progress is canceled, and evdns reports the cancel on a later loop
 * iteration, so run the loop once more before freeing the evdns_base at shutdown. */
void util_http_cancel(struct util_http_call *call);

#endif
