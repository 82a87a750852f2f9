/* server.h - running the HTTP server, and what the files of server/ share
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_SERVER_H
#define CIBAD_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "server/config.h"
#include "server/http.h"

#define CIBAD_VERSION "0.1.0"

/* Runs `cibad serve`: loads the signing keys (generating the first one when the
 * database has none), starts cfg->workers event loop threads on cfg->listen, logs
 * "ready", and returns after SIGTERM or SIGINT once in-flight requests have replies.
 * Returns 0 after a clean stop, or 1 when startup failed (the reason is logged). */
int server_run(const struct server_config *cfg);

/* Seconds a retired signing key stays in the JWKS: the longest token lifetime, plus the
 * time it may still sign while its successor is pre-published, plus a margin for JWKS
 * caches. */
int server_keys_publish_seconds(const struct server_config *cfg);

/* ---- shared between the files of server/ only ---------------------------------------
 */

struct evhttp;
struct evhttp_bound_socket;
struct event;
struct event_base;
struct server_req_state;

/* One worker thread. Handlers see only the public part, w. */
struct server_thread {
    struct server_worker w; /* first member: handlers get &t->w */
    pthread_t thread;
    struct evhttp *http;
    struct evhttp_bound_socket *bound; /* NULL once the listener is closed */
    struct event *keys_timer;
    char *keys_fingerprint; /* kid and retired_at of each loaded key */
    bool keys_loading;
    struct event *accept_timer; /* runs until the database is up, then starts accepting */
    struct event *accept_pause; /* re-enables the listener after accept() failed */
    int64_t accept_failures;    /* accept() failures since the last log line */
    int64_t accept_logged_ms;   /* when the last of those lines was written */
    int64_t started_ms;         /* when the loop started, for accept_timer */
    bool draining;              /* set on this thread when shutdown starts */
    struct server_req_state *reqs; /* every live request context */
    /* Requests whose handler has not finished, including those that got the deadline
     * reply already; the main thread reads it while draining. */
    atomic_size_t unanswered;
    atomic_bool
        accepting; /* the listener accepts; the main thread logs "ready" after all */
};

/* The evhttp callback for every request: creates the request context, starts its
 * deadline timer and routes it. arg is the struct server_thread. */
void server_http_on_request(struct evhttp_request *req, void *arg);
/* Frees every request context still live on t, without touching its evhttp_request;
 * used at shutdown, after the loop stopped and before evhttp_free. */
void server_http_abandon_all(struct server_thread *t);

/* Prepares the routing table for the issuer's path (for an issuer
 * https://host/tenant every endpoint lives under /tenant). */
void server_routes_init(const char *issuer);
/* Calls the handler for the request's method and path, or replies 404 or 405. */
void server_route(struct server_req *sr);
/* Writes the path as the access log shows it to out: a secret reference at the end of
 * a path (the approval link) is replaced by "*". */
void server_route_log_path(const char *path, char *out, size_t out_len);

/* ---- TLS (tls.c) ------------------------------------------------------------------ */

struct bufferevent;

/* The client certificate of one request. */
struct server_client_cert {
    bool present;
    bool verified;       /* chains to tls_client_ca_file */
    char thumbprint[44]; /* x5t#S256: base64url of the SHA-256 of the DER form */
    char *subject;       /* RFC 2253 distinguished name; free it */
    unsigned char *der;  /* the certificate, DER-encoded; free it */
    size_t der_len;
};

/* Loads the certificate, key and client CA bundle and parses trusted_proxies, once,
 * before the worker threads start. Logs the reason and returns -1 when a file is
 * missing or unreadable, or the key does not match the certificate. */
int server_tls_init(const struct server_config *cfg);
void server_tls_free(void);
/* True when the listener speaks TLS. */
bool server_tls_enabled(void);
/* The evhttp_set_bevcb callback of a TLS listener; aborts rather than return NULL,
 * which would make evhttp serve plain HTTP. */
struct bufferevent *server_tls_on_accept(struct event_base *base, void *arg);
/* Reads the client certificate of sr's connection, or of tls_client_cert_header when
 * the peer is a trusted proxy. cert is zeroed when there is none. */
void server_tls_client_cert(const struct server_req *sr, struct server_client_cert *cert);

#endif
