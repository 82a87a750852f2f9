/* mock_http.c - a loopback HTTP(S) server that records requests and plays scripted
 * replies, and a helper that creates throwaway certificates for it
 * SPDX-License-Identifier: MIT
 */
#include "tests/mock_http.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "util/util.h"

#define MOCK_MAX_BODY (1024 * 1024)

struct script_reply {
    int status;
    char *body;
    int delay_ms;
    char *content_type;
    char *location;
    bool close_connection;
    struct script_reply *next;
};

/* A reply waiting for its delay to pass, on the server thread. */
struct delayed_reply {
    struct mock_http *m;
    struct evhttp_request *req;
    struct script_reply *reply;
    struct event *timer;
    struct delayed_reply *prev, *next;
};

struct mock_http {
    struct event_base *base;
    struct evhttp *http;
    SSL_CTX *tls;
    int port;
    pthread_t thread;

    /* Everything below is shared with the test thread and guarded by lock. */
    pthread_mutex_t lock;
    pthread_cond_t recorded;
    struct script_reply *script_head, *script_tail;
    struct script_reply default_reply;
    struct mock_http_request **requests;
    size_t request_count, request_cap;

    /* Touched only on the server thread, then by mock_http_free after the join. */
    struct delayed_reply *delayed;
};

static char *strdup_or_null(const char *s)
{
    return s ? util_strdup(s) : NULL;
}

static void script_reply_free(struct script_reply *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->content_type);
    free(r->location);
    free(r);
}

static struct script_reply *script_reply_copy(const struct script_reply *r)
{
    struct script_reply *c = util_calloc(1, sizeof(*c));

    c->status = r->status;
    c->body = strdup_or_null(r->body);
    c->delay_ms = r->delay_ms;
    c->content_type = strdup_or_null(r->content_type);
    c->location = strdup_or_null(r->location);
    c->close_connection = r->close_connection;
    return c;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

static char *request_server_name(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    const char *name = ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;

    return strdup_or_null(name);
}

static struct mock_http_request *record_new(struct evhttp_request *req)
{
    struct mock_http_request *r = util_calloc(1, sizeof(*r));
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    struct evbuffer *input = evhttp_request_get_input_buffer(req);
    struct evkeyval *kv;
    const char *uri = evhttp_request_get_uri(req);
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    char *peer_address;
    ev_uint16_t peer_port = 0;
    size_t n = 0;

    r->method = util_strdup(method_name(evhttp_request_get_command(req)));
    r->uri = util_strdup(uri ? uri : "");
    r->path = util_strndup(r->uri, strcspn(r->uri, "?#"));

    TAILQ_FOREACH(kv, headers, next)
    n++;
    r->headers = util_calloc(n, sizeof(*r->headers));
    TAILQ_FOREACH(kv, headers, next)
    {
        r->headers[r->header_count].name = util_strdup(kv->key);
        r->headers[r->header_count].value = util_strdup(kv->value);
        r->header_count++;
    }

    r->body_len = evbuffer_get_length(input);
    r->body = util_malloc(r->body_len + 1);
    evbuffer_copyout(input, r->body, r->body_len);
    r->body[r->body_len] = '\0';
    r->tls_server_name = request_server_name(req);
    if (conn)
        evhttp_connection_get_peer(conn, &peer_address, &peer_port);
    r->client_port = peer_port;
    return r;
}

static void record_free(struct mock_http_request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->header_count; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->method);
    free(r->uri);
    free(r->path);
    free(r->body);
    free(r->tls_server_name);
    free(r);
}

/* Stores the request and takes the next scripted reply, under one lock so that the
 * n-th recorded request always gets the n-th reply. */
static struct script_reply *record_and_take_reply(struct mock_http *m,
                                                  struct mock_http_request *rec)
{
    struct script_reply *reply;

    pthread_mutex_lock(&m->lock);
    if (m->request_count == m->request_cap) {
        m->request_cap = m->request_cap ? m->request_cap * 2 : 16;
        m->requests = util_realloc(m->requests, m->request_cap * sizeof(*m->requests));
    }
    m->requests[m->request_count++] = rec;

    if (m->script_head) {
        reply = m->script_head;
        m->script_head = reply->next;
        if (!m->script_head)
            m->script_tail = NULL;
        reply->next = NULL;
    } else {
        reply = script_reply_copy(&m->default_reply);
    }
    pthread_cond_broadcast(&m->recorded);
    pthread_mutex_unlock(&m->lock);
    return reply;
}

/* Sends reply to req; frees reply. evhttp frees req after the reply is written. */
static void send_reply(struct evhttp_request *req, struct script_reply *reply)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();

    if (reply->status == MOCK_HTTP_CLOSE) {
        /* Shut the socket down so the client sees the connection close without a
         * reply, then release the request: evhttp's write fails and frees it. */
        struct evhttp_connection *conn = evhttp_request_get_connection(req);
        struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;

        if (bev && bufferevent_getfd(bev) >= 0)
            shutdown(bufferevent_getfd(bev), SHUT_RDWR);
        evhttp_send_reply(req, 500, NULL, NULL);
        evbuffer_free(body);
        script_reply_free(reply);
        return;
    }

    evhttp_add_header(out, "Content-Type",
                      reply->content_type ? reply->content_type : "application/json");
    if (reply->location)
        evhttp_add_header(out, "Location", reply->location);
    /* evhttp closes the connection after a reply with this header. */
    if (reply->close_connection)
        evhttp_add_header(out, "Connection", "close");
    if (reply->body)
        evbuffer_add(body, reply->body, strlen(reply->body));
    evhttp_send_reply(req, reply->status, NULL, body);
    evbuffer_free(body);
    script_reply_free(reply);
}

static void on_delay_passed(evutil_socket_t fd, short what, void *arg)
{
    struct delayed_reply *d = arg;
    struct mock_http *m = d->m;

    (void)fd;
    (void)what;
    if (d->prev)
        d->prev->next = d->next;
    else
        m->delayed = d->next;
    if (d->next)
        d->next->prev = d->prev;

    send_reply(d->req, d->reply);
    event_free(d->timer);
    free(d);
}

/* A TLS reply goes out as several records. With Nagle's algorithm, the second one waits
 * for the client's delayed ACK (about 40 ms on Linux) whenever the connection carries
 * more than one request. */
static void set_nodelay(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    int fd = bev ? bufferevent_getfd(bev) : -1;
    int one = 1;

    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct mock_http *m = arg;
    struct script_reply *reply = record_and_take_reply(m, record_new(req));
    struct delayed_reply *d;
    struct timeval tv;

    set_nodelay(req);
    if (reply->delay_ms <= 0) {
        send_reply(req, reply);
        return;
    }

    d = util_calloc(1, sizeof(*d));
    d->m = m;
    d->req = req;
    d->reply = reply;
    d->timer = evtimer_new(m->base, on_delay_passed, d);
    d->next = m->delayed;
    if (m->delayed)
        m->delayed->prev = d;
    m->delayed = d;
    tv.tv_sec = reply->delay_ms / 1000;
    tv.tv_usec = (reply->delay_ms % 1000) * 1000;
    evtimer_add(d->timer, &tv);
}

/* evhttp calls this for every accepted connection; TLS wraps the socket in OpenSSL. */
static struct bufferevent *on_tls_accept(struct event_base *base, void *arg)
{
    struct mock_http *m = arg;
    SSL *ssl = SSL_new(m->tls);
    struct bufferevent *bev;

    /* Returning NULL would make evhttp fall back to plaintext on the TLS port. */
    if (!ssl) {
        fprintf(stderr, "mock_http: SSL_new failed\n");
        abort();
    }
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        fprintf(stderr, "mock_http: bufferevent_openssl_socket_new failed\n");
        abort();
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

static void *server_thread_main(void *arg)
{
    struct mock_http *m = arg;

    event_base_dispatch(m->base);
    return NULL;
}

static SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx)
        return NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "mock_http: loading %s and %s failed: %s\n", cert_file, key_file,
                ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int bind_loopback(struct mock_http *m)
{
    struct evhttp_bound_socket *sock =
        evhttp_bind_socket_with_handle(m->http, "127.0.0.1", 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (!sock) {
        fprintf(stderr, "mock_http: binding 127.0.0.1 failed: %s\n", strerror(errno));
        return -1;
    }
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &len) !=
        0) {
        fprintf(stderr, "mock_http: getsockname failed: %s\n", strerror(errno));
        return -1;
    }
    m->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

struct mock_http *mock_http_start(const char *cert_file, const char *key_file)
{
    struct mock_http *m = util_calloc(1, sizeof(*m));

    /* A client that gives up makes a delayed reply's write fail with EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    /* Locks and cross-thread wake-ups, so mock_http_free can stop the loop. */
    evthread_use_pthreads();
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->recorded, NULL);
    m->default_reply.status = 200;
    m->default_reply.body = util_strdup("{}");

    m->base = event_base_new();
    m->http = m->base ? evhttp_new(m->base) : NULL;
    if (!m->http) {
        fprintf(stderr, "mock_http: creating the event base or evhttp failed\n");
        goto fail;
    }
    evhttp_set_allowed_methods(
        m->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                     EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
    evhttp_set_max_body_size(m->http, MOCK_MAX_BODY);
    evhttp_set_timeout(m->http, 30);
    evhttp_set_gencb(m->http, on_request, m);

    if (cert_file && key_file) {
        m->tls = tls_server_ctx_new(cert_file, key_file);
        if (!m->tls)
            goto fail;
        evhttp_set_bevcb(m->http, on_tls_accept, m);
    }
    if (bind_loopback(m) != 0)
        goto fail;
    if (pthread_create(&m->thread, NULL, server_thread_main, m) != 0) {
        fprintf(stderr, "mock_http: pthread_create failed\n");
        goto fail;
    }
    return m;

fail:
    if (m->http)
        evhttp_free(m->http);
    if (m->base)
        event_base_free(m->base);
    SSL_CTX_free(m->tls);
    free(m->default_reply.body);
    pthread_cond_destroy(&m->recorded);
    pthread_mutex_destroy(&m->lock);
    free(m);
    return NULL;
}

static void on_break(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

void mock_http_free(struct mock_http *m)
{
    struct script_reply *r, *next_reply;
    struct delayed_reply *d, *next_delayed;

    if (!m)
        return;
    /* An event, not event_base_loopbreak from here: a loop that has not started yet
     * clears the break flag when it starts, and would then never stop. */
    if (event_base_once(m->base, -1, EV_TIMEOUT, on_break, m->base, NULL) != 0) {
        fprintf(stderr, "mock_http: cannot schedule the server's stop\n");
        abort();
    }
    pthread_join(m->thread, NULL);

    /* The loop has stopped: drop delayed replies, then the connections and the
     * requests they still hold. */
    for (d = m->delayed; d; d = next_delayed) {
        next_delayed = d->next;
        event_free(d->timer);
        script_reply_free(d->reply);
        free(d);
    }
    evhttp_free(m->http);
    event_base_free(m->base);
    SSL_CTX_free(m->tls);

    for (r = m->script_head; r; r = next_reply) {
        next_reply = r->next;
        script_reply_free(r);
    }
    free(m->default_reply.body);
    free(m->default_reply.content_type);
    for (size_t i = 0; i < m->request_count; i++)
        record_free(m->requests[i]);
    free(m->requests);
    pthread_cond_destroy(&m->recorded);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

int mock_http_port(const struct mock_http *m)
{
    return m->port;
}

char *mock_http_url(const struct mock_http *m, const char *host, const char *path)
{
    return util_asprintf("%s://%s:%d%s", m->tls ? "https" : "http", host, m->port, path);
}

void mock_http_set_default(struct mock_http *m, int status, const char *body)
{
    pthread_mutex_lock(&m->lock);
    m->default_reply.status = status;
    free(m->default_reply.body);
    m->default_reply.body = strdup_or_null(body);
    pthread_mutex_unlock(&m->lock);
}

void mock_http_push_reply(struct mock_http *m, const struct mock_http_reply *reply)
{
    struct script_reply *r = util_calloc(1, sizeof(*r));

    r->status = reply->status;
    r->body = strdup_or_null(reply->body);
    r->delay_ms = reply->delay_ms;
    r->content_type = strdup_or_null(reply->content_type);
    r->location = strdup_or_null(reply->location);
    r->close_connection = reply->close_connection;

    pthread_mutex_lock(&m->lock);
    if (m->script_tail)
        m->script_tail->next = r;
    else
        m->script_head = r;
    m->script_tail = r;
    pthread_mutex_unlock(&m->lock);
}

void mock_http_push(struct mock_http *m, int status, const char *body, int delay_ms)
{
    struct mock_http_reply reply = {.status = status, .body = body, .delay_ms = delay_ms};

    mock_http_push_reply(m, &reply);
}

/* A timeout change that runs on the server thread, which owns the evhttp. */
struct timeout_change {
    struct mock_http *m;
    struct timeval tv;
    bool done;
};

static void on_timeout_change(evutil_socket_t fd, short what, void *arg)
{
    struct timeout_change *c = arg;

    (void)fd;
    (void)what;
    evhttp_set_timeout_tv(c->m->http, &c->tv);
    pthread_mutex_lock(&c->m->lock);
    c->done = true;
    pthread_cond_broadcast(&c->m->recorded);
    pthread_mutex_unlock(&c->m->lock);
}

void mock_http_set_idle_timeout(struct mock_http *m, int timeout_ms)
{
    struct timeout_change c = {
        .m = m,
        .tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000},
    };

    if (event_base_once(m->base, -1, EV_TIMEOUT, on_timeout_change, &c, NULL) != 0) {
        fprintf(stderr, "mock_http: cannot schedule the timeout change\n");
        abort();
    }
    pthread_mutex_lock(&m->lock);
    while (!c.done)
        pthread_cond_wait(&m->recorded, &m->lock);
    pthread_mutex_unlock(&m->lock);
}

size_t mock_http_connection_count(struct mock_http *m)
{
    size_t n = 0;

    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->request_count; i++) {
        size_t j = 0;

        while (j < i && m->requests[j]->client_port != m->requests[i]->client_port)
            j++;
        if (j == i)
            n++;
    }
    pthread_mutex_unlock(&m->lock);
    return n;
}

size_t mock_http_count(struct mock_http *m)
{
    size_t n;

    pthread_mutex_lock(&m->lock);
    n = m->request_count;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int mock_http_wait(struct mock_http *m, size_t n, int timeout_ms)
{
    struct timespec deadline;
    int rc = 0;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }

    pthread_mutex_lock(&m->lock);
    while (m->request_count < n && rc == 0)
        rc = pthread_cond_timedwait(&m->recorded, &m->lock, &deadline);
    rc = m->request_count >= n ? 0 : -1;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

const struct mock_http_request *mock_http_request_get(struct mock_http *m, size_t i)
{
    const struct mock_http_request *r = NULL;

    pthread_mutex_lock(&m->lock);
    if (i < m->request_count)
        r = m->requests[i];
    pthread_mutex_unlock(&m->lock);
    return r;
}

const char *mock_http_header(const struct mock_http_request *r, const char *name)
{
    for (size_t i = 0; i < r->header_count; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    }
    return NULL;
}

size_t mock_http_header_count(const struct mock_http_request *r, const char *name)
{
    size_t n = 0;

    for (size_t i = 0; i < r->header_count; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0)
            n++;
    }
    return n;
}

/* ---- throwaway certificates ------------------------------------------------------- */

static int add_extension(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int rc;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    rc = X509_add_ext(cert, ext, -1) == 1 ? 0 : -1;
    X509_EXTENSION_free(ext);
    return rc;
}

/* Creates a certificate for key. With issuer NULL it is a self-signed CA; otherwise a
 * server certificate for san, or a client certificate when san is NULL, signed by
 * issuer and issuer_key. */
static X509 *make_cert(EVP_PKEY *key, const char *common_name, X509 *issuer,
                       EVP_PKEY *issuer_key, const char *san)
{
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    bool is_ca = issuer == NULL;
    int ok;

    util_random_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    ok = cert && name && bn && X509_set_version(cert, 2) == 1 &&
         BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) &&
         X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)common_name, -1, -1, 0) == 1 &&
         X509_set_subject_name(cert, name) == 1 &&
         X509_set_issuer_name(cert, is_ca ? name : X509_get_subject_name(issuer)) == 1 &&
         X509_set_pubkey(cert, key) == 1;
    if (ok && is_ca) {
        ok = add_extension(cert, cert, NID_basic_constraints, "critical,CA:TRUE") == 0 &&
             add_extension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign") ==
                 0 &&
             add_extension(cert, cert, NID_subject_key_identifier, "hash") == 0;
    } else if (ok) {
        ok = add_extension(cert, issuer, NID_basic_constraints, "critical,CA:FALSE") ==
                 0 &&
             add_extension(cert, issuer, NID_key_usage, "critical,digitalSignature") ==
                 0 &&
             add_extension(cert, issuer, NID_ext_key_usage,
                           san ? "serverAuth" : "clientAuth") == 0 &&
             (!san || add_extension(cert, issuer, NID_subject_alt_name, san) == 0) &&
             add_extension(cert, issuer, NID_authority_key_identifier, "keyid") == 0;
    }
    if (ok)
        ok = X509_sign(cert, is_ca ? key : issuer_key, EVP_sha256()) > 0;

    BN_free(bn);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static int write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    int ok;

    if (!f)
        return -1;
    ok = cert ? PEM_write_X509(f, cert)
              : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Creates one key and a certificate for it, and writes both when paths are given. */
static int make_pair(const char *common_name, X509 *issuer, EVP_PKEY *issuer_key,
                     const char *san, const char *cert_path, const char *key_path,
                     X509 **cert_out, EVP_PKEY **key_out)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = key ? make_cert(key, common_name, issuer, issuer_key, san) : NULL;
    int rc = -1;

    if (!cert)
        goto out;
    if (write_pem(cert_path, cert, NULL) != 0)
        goto out;
    if (key_path && write_pem(key_path, NULL, key) != 0)
        goto out;
    rc = 0;
out:
    if (rc == 0 && cert_out) {
        *cert_out = cert;
        *key_out = key;
    } else {
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    return rc;
}

int mock_http_certs_create(struct mock_http_certs *out)
{
    const char *tmp = getenv("TMPDIR");
    X509 *ca = NULL;
    EVP_PKEY *ca_key = NULL;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    out->dir = util_asprintf("%s/mock-http-certs.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(out->dir)) {
        fprintf(stderr, "mock_http: mkdtemp %s failed: %s\n", out->dir, strerror(errno));
        free(out->dir);
        out->dir = NULL;
        return -1;
    }
    out->ca_file = util_asprintf("%s/ca.pem", out->dir);
    out->cert_file = util_asprintf("%s/server.pem", out->dir);
    out->key_file = util_asprintf("%s/server.key", out->dir);
    out->wrong_cert_file = util_asprintf("%s/wrong.pem", out->dir);
    out->wrong_key_file = util_asprintf("%s/wrong.key", out->dir);
    out->other_ca_file = util_asprintf("%s/other-ca.pem", out->dir);
    out->client_cert_file = util_asprintf("%s/client.pem", out->dir);
    out->client_key_file = util_asprintf("%s/client.key", out->dir);
    out->self_cert_file = util_asprintf("%s/self.pem", out->dir);
    out->self_key_file = util_asprintf("%s/self.key", out->dir);

    if (make_pair("cibad test CA", NULL, NULL, NULL, out->ca_file, NULL, &ca, &ca_key) ||
        make_pair("localhost", ca, ca_key, "DNS:localhost,IP:127.0.0.1", out->cert_file,
                  out->key_file, NULL, NULL) ||
        make_pair("wrong.example.invalid", ca, ca_key, "DNS:wrong.example.invalid",
                  out->wrong_cert_file, out->wrong_key_file, NULL, NULL) ||
        make_pair("cibad other test CA", NULL, NULL, NULL, out->other_ca_file, NULL, NULL,
                  NULL) ||
        make_pair("cibad test client", ca, ca_key, NULL, out->client_cert_file,
                  out->client_key_file, NULL, NULL) ||
        make_pair("cibad self-signed client", NULL, NULL, NULL, out->self_cert_file,
                  out->self_key_file, NULL, NULL)) {
        fprintf(stderr, "mock_http: creating test certificates failed: %s\n",
                ERR_reason_error_string(ERR_get_error()));
        goto out;
    }
    rc = 0;
out:
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    if (rc != 0)
        mock_http_certs_free(out);
    return rc;
}

void mock_http_certs_free(struct mock_http_certs *c)
{
    char *files[] = {c->ca_file,          c->cert_file,       c->key_file,
                     c->wrong_cert_file,  c->wrong_key_file,  c->other_ca_file,
                     c->client_cert_file, c->client_key_file, c->self_cert_file,
                     c->self_key_file};

    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        if (files[i])
            unlink(files[i]);
        free(files[i]);
    }
    if (c->dir)
        rmdir(c->dir);
    free(c->dir);
    memset(c, 0, sizeof(*c));
}
