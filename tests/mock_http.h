/* mock_http.h - a loopback HTTP(S) server for tests of code that calls a third party
 * SPDX-License-Identifier: MIT
 *
 * The mock is a real HTTP server: it runs its own thread with its own event_base and
 * evhttp, listens on 127.0.0.1 on an ephemeral port, and optionally speaks TLS with a
 * given certificate. It records every request (method, URI, headers, body) in a
 * thread-safe list that a test can read and wait on, and replies from a script: a
 * default reply plus a queue of scripted replies consumed in order, so a test can say
 * "first 500, then 200" or "reply after 3 s".
 *
 * Typical use:
 *
 *     struct mock_http *m = mock_http_start(NULL, NULL);
 *     mock_http_push(m, 500, "{}", 0);            first request gets 500
 *     mock_http_set_default(m, 200, "{\"ok\":1}"); every later one gets 200
 *     char *url = mock_http_url(m, "127.0.0.1", "/send");
 *     ... drive the code under test against url ...
 *     ck_assert_int_eq(mock_http_wait(m, 2, 5000), 0);
 *     const struct mock_http_request *r = mock_http_request_get(m, 1);
 *     mock_http_free(m);
 *
 * mock_http_start ignores SIGPIPE for the whole process, because a client that gives
 * up while a delayed reply is pending makes the reply's write fail with EPIPE.
 */
#ifndef CIBAD_TESTS_MOCK_HTTP_H
#define CIBAD_TESTS_MOCK_HTTP_H

#include <stdbool.h>
#include <stddef.h>

/* Status value for a scripted reply that closes the connection without replying. */
#define MOCK_HTTP_CLOSE 0

struct mock_http;

struct mock_http_header {
    char *name;
    char *value;
};

/* One recorded request. Records are never changed once stored and stay valid until
 * mock_http_free. */
struct mock_http_request {
    char *method;                     /* "GET", "POST", ... */
    char *uri;                        /* request target as sent: "/path?query" */
    char *path;                       /* the path part of uri, still percent-encoded */
    struct mock_http_header *headers; /* in the order received */
    size_t header_count;
    char *body; /* NUL-terminated copy of the body; body_len excludes the NUL */
    size_t body_len;
    char *tls_server_name; /* SNI the client sent; NULL on plain HTTP or without SNI */
    int client_port;       /* TCP port of the client's end: one per connection */
};

/* A scripted reply. Strings are copied. */
struct mock_http_reply {
    int status;               /* HTTP status, or MOCK_HTTP_CLOSE */
    const char *body;         /* NULL for an empty body */
    int delay_ms;             /* delay before the reply is sent */
    const char *content_type; /* NULL: application/json */
    const char *location;     /* Location header, for redirects; NULL: none */
    bool close_connection;    /* send "Connection: close" and close after the reply */
};

/* Starts a server on 127.0.0.1 with an ephemeral port. With cert_file and key_file
 * (PEM) it serves HTTPS, otherwise plain HTTP. The default reply is 200 with "{}".
 * Returns NULL, with the reason on stderr, when the server cannot start. */
struct mock_http *mock_http_start(const char *cert_file, const char *key_file);

/* Stops the server thread, drops any reply still delayed, and frees every record.
 * mock_http_free(NULL) does nothing. */
void mock_http_free(struct mock_http *m);

/* The TCP port the server listens on. */
int mock_http_port(const struct mock_http *m);

/* Returns a new string "http[s]://HOST:PORT/PATH" for this server; the caller frees
 * it. host is the name or address to put in the URL ("127.0.0.1", "localhost"); path
 * starts with "/". */
char *mock_http_url(const struct mock_http *m, const char *host, const char *path);

/* Sets the reply used when the script queue is empty. */
void mock_http_set_default(struct mock_http *m, int status, const char *body);

/* Appends a reply to the script queue; each request consumes the oldest one. */
void mock_http_push(struct mock_http *m, int status, const char *body, int delay_ms);
void mock_http_push_reply(struct mock_http *m, const struct mock_http_reply *reply);

/* Sets how long the server keeps an idle connection open before it closes it (evhttp's
 * timeout, 30 s by default). It applies to connections accepted afterwards. */
void mock_http_set_idle_timeout(struct mock_http *m, int timeout_ms);

/* Number of different client connections (by client port) the requests came over. */
size_t mock_http_connection_count(struct mock_http *m);

/* Number of requests recorded so far. */
size_t mock_http_count(struct mock_http *m);

/* Waits until at least n requests have been recorded. Returns 0 when they have, or -1
 * after timeout_ms. */
int mock_http_wait(struct mock_http *m, size_t n, int timeout_ms);

/* Returns the i-th recorded request (from 0), or NULL when fewer were recorded. */
const struct mock_http_request *mock_http_request_get(struct mock_http *m, size_t i);

/* Returns the value of the first header called name (case-insensitive), or NULL. */
const char *mock_http_header(const struct mock_http_request *r, const char *name);

/* Counts the headers called name (case-insensitive), to catch duplicates. */
size_t mock_http_header_count(const struct mock_http_request *r, const char *name);

/* ---- throwaway certificates ------------------------------------------------------- */

/* PEM files in a fresh temporary directory. EC P-256 keys, valid from one hour ago
 * for one day. */
struct mock_http_certs {
    char *dir;
    char *ca_file;          /* a throwaway CA */
    char *cert_file;        /* server certificate for localhost and 127.0.0.1, by ca */
    char *key_file;         /* its private key */
    char *wrong_cert_file;  /* server certificate for wrong.example.invalid only, by ca */
    char *wrong_key_file;   /* its private key */
    char *other_ca_file;    /* a second CA that signed none of the certificates above */
    char *client_cert_file; /* client certificate (clientAuth, CN "cibad test client"), by
                               ca */
    char *client_key_file;
    char *self_cert_file; /* self-signed certificate (CN "cibad self-signed client") */
    char *self_key_file;
};

/* Creates the CA, the certificates and their keys with OpenSSL under a new directory
 * in $TMPDIR (or /tmp). Returns 0, or -1 with the reason on stderr. */
int mock_http_certs_create(struct mock_http_certs *out);

/* Removes the files and the directory and frees the paths. */
void mock_http_certs_free(struct mock_http_certs *c);

#endif
