/* http.h - the request context every endpoint handler receives, and how it replies
 * SPDX-License-Identifier: MIT
 *
 * Each worker thread runs its own event_base with its own evhttp, database connection,
 * DNS resolver, SMS sender and signing keys; a request is handled entirely on the
 * thread that accepted it.
 *
 * Reply contract: a handler receives a struct server_req and must call exactly one
 * server_reply_* function for it, now or later from a callback on the same thread.
 * If the request deadline passes first, the server has already answered 503 and the
 * handler's reply call only releases the context. Never touch sr after replying.
 */
#ifndef CIBAD_SERVER_HTTP_H
#define CIBAD_SERVER_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/util.h"

struct evhttp_request;
struct event_base;
struct evdns_base;
struct storage_conn;
struct sms_sender;
struct oauth_keyset;
struct oauth_jwks_cache;
struct ciba_notifier;

/* A handler reads keys when it signs or verifies and keeps no pointer to it across a
 * callback, because the worker replaces the keyset when the keys in the database
 * change. */
struct server_worker {
    int index;
    struct event_base *base;
    struct evdns_base *dns;
    struct storage_conn *db;
    struct sms_sender *sms;
    struct oauth_keyset *keys;      /* this thread's copy, refreshed from the database */
    struct oauth_jwks_cache *jwks;  /* key sets of clients and login_hint_token issuers */
    struct ciba_notifier *notifier; /* ping and push delivery; see ciba/ciba.h */
    /* Background work in progress (SMS deliveries), which may outlive its request; the
     * main thread reads it while draining. Change it only through the functions below. */
    atomic_uint background;
};

/* Counts one piece of background work on w, such as an SMS delivery that a request
 * starts and that ends after its reply. server_worker_background_end ends the count.
 * The graceful stop keeps w's loop, database connection and SMS sender running until
 * every begin has its end, or until the drain time limit passes. Call both on w's
 * thread, and call end exactly once per begin. */
void server_worker_background_begin(struct server_worker *w);
void server_worker_background_end(struct server_worker *w);

// clang-format off
struct server_req {
    struct evhttp_request *req;
    struct server_worker *worker;
    char rid[17];        /* request id: in every log line and the X-Request-Id header */
    char client_id[129]; /* set once the client is known, for the log; may stay "" */
    const char *endpoint;
    int64_t started_ms;  /* monotonic */
    struct event *deadline;
    bool replied;        /* the deadline already sent its reply */
    int status;          /* status code sent */
};
// clang-format on

/* Adds a response header; call before replying. */
void server_req_add_header(struct server_req *sr, const char *name, const char *value);
/* Returns a request header or NULL. */
const char *server_req_header(const struct server_req *sr, const char *name);
/* The request method as text ("GET", "POST", ...). */
const char *server_req_method(const struct server_req *sr);
/* The path part of the URI, without the query. */
const char *server_req_path(const struct server_req *sr);
/* The query string of the URI (without "?"), or NULL when there is none. */
const char *server_req_query(const struct server_req *sr);

/* The client certificate of the request: from the TLS connection, or from
 * tls_client_cert_header when the peer is one of trusted_proxies. The thumbprint is
 * x5t#S256 (RFC 8705: base64url of the SHA-256 of the DER certificate), or NULL when
 * the request has no client certificate; the subject is its RFC 2253 distinguished
 * name, or NULL. verified is true only when the certificate chains to
 * tls_client_ca_file; a self-signed certificate is present but not verified. The
 * strings live as long as sr. */
const char *server_req_client_cert_thumbprint(const struct server_req *sr);
const char *server_req_client_cert_subject(const struct server_req *sr);
bool server_req_client_cert_verified(const struct server_req *sr);
/* The DER form of the same certificate, with its length in *len, or NULL (and 0) when
 * the request has none. It lives as long as sr. */
const unsigned char *server_req_client_cert_der(const struct server_req *sr, size_t *len);

/* Sends body (reference stolen) as application/json with the given status. */
void server_reply_json(struct server_req *sr, int status, json_t *body);
/* Sends len bytes with the content type given. */
void server_reply_body(struct server_req *sr, int status, const char *content_type,
                       const char *body, size_t len);

/* ---- strict application/x-www-form-urlencoded bodies ------------------------------ */

struct server_form_param {
    char *name;
    char *value;
};

/* The maximum number of parameters in a form; a form with more is rejected. */
#define SERVER_FORM_MAX_PARAMS 100

struct server_form {
    size_t count;
    struct server_form_param *params;
};

/* Parses the request body as a form. Rejects a content type other than
 * application/x-www-form-urlencoded, bad percent-encoding, a NUL byte, invalid UTF-8,
 * an empty parameter name, any parameter name that appears twice (RFC 6749 section
 * 3.1), more than SERVER_FORM_MAX_PARAMS parameters and a body over max_body bytes. On
 * failure returns -1, leaves form empty and sets *error to a static description for
 * error_description. */
int server_form_parse(const struct server_req *sr, struct server_form *form,
                      const char **error) MUST_CHECK;
/* Parses a query string or a body given directly; same rules, no content-type check. */
int server_form_parse_text(const char *text, size_t len, struct server_form *form,
                           const char **error) MUST_CHECK;
/* True when content_type is application/x-www-form-urlencoded, with no parameter but
 * an optional charset=utf-8 (case-insensitive). */
bool server_form_content_type_ok(const char *content_type);
/* Returns the value of name, or NULL when absent or empty (an empty value counts as
 * absent, as RFC 6749 section 3.1 says). */
const char *server_form_get(const struct server_form *form, const char *name);
void server_form_free(struct server_form *form);

#endif
