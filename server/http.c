/* http.c - the request context: creation, deadline, replies, accessors and access log
 * SPDX-License-Identifier: MIT
 *
 * Every request gets a struct server_req_state, whose first member is the struct
 * server_req handlers see. It lives until the handler replies. When the deadline
 * passes first, the 503 goes out at once and the context stays until the handler's own
 * reply call, which then only frees it (the contract in server/http.h).
 */
#include "server/server.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "oauth/oauth.h"

struct server_req_state {
    struct server_req sr; /* first member: a struct server_req * is one of these */
    struct server_thread *thread;
    struct server_req_state *prev, *next; /* in thread->reqs */
    const char *method;
    char *path;
    bool in_deadline; /* the deadline callback is sending its 503 */
    struct server_client_cert cert;
};

/* Headers that must not appear twice: evhttp keeps every copy and its lookups return
 * the first, so a proxy that reads the last one would see another request. */
static const char *const single_headers[] = {
    "Content-Length", "Content-Type", "Transfer-Encoding",
    "Authorization",  "Host",         "Origin",
};

static struct server_req_state *state_of(const struct server_req *sr)
{
    return (struct server_req_state *)sr;
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
    return "?";
}

static struct evbuffer *buffer_new(void)
{
    struct evbuffer *buf = evbuffer_new();

    if (!buf) {
        log_error("out of memory allocating a response buffer");
        abort();
    }
    return buf;
}

static void state_free(struct server_req_state *rs)
{
    struct server_thread *t = rs->thread;

    if (rs->sr.deadline)
        event_free(rs->sr.deadline);
    if (rs->prev)
        rs->prev->next = rs->next;
    else
        t->reqs = rs->next;
    if (rs->next)
        rs->next->prev = rs->prev;
    free(rs->path);
    free(rs->cert.subject);
    free(rs->cert.der);
    free(rs);
}

static void log_access(const struct server_req_state *rs)
{
    const struct server_req *sr = &rs->sr;
    char path[256];

    server_route_log_path(rs->path, path, sizeof(path));
    rlog_info(sr->rid, sr->client_id[0] ? sr->client_id : NULL, "%s %s %d %lld ms",
              rs->method, path, sr->status, (long long)(util_mono_ms() - sr->started_ms));
}

/* Sends the reply, or only frees the context when the deadline reply went out
 * already. Takes body. */
static void send_reply(struct server_req *sr, int status, const char *content_type,
                       struct evbuffer *body)
{
    struct server_req_state *rs = state_of(sr);
    struct evkeyvalq *headers;

    if (sr->replied) {
        rlog_debug(sr->rid, NULL, "handler replied %d after the deadline; dropped",
                   status);
        evbuffer_free(body);
        atomic_fetch_sub(&rs->thread->unanswered, 1);
        state_free(rs);
        return;
    }

    headers = evhttp_request_get_output_headers(sr->req);
    evhttp_remove_header(headers, "Content-Type");
    evhttp_add_header(headers, "Content-Type", content_type);
    sr->status = status;
    if (evhttp_request_get_command(sr->req) == EVHTTP_REQ_HEAD) {
        /* libevent 2.1 writes a HEAD reply's body anyway and leaves out its length, so
         * a keep-alive client would read the body as the next reply. */
        char length[24];

        snprintf(length, sizeof(length), "%zu", evbuffer_get_length(body));
        evhttp_add_header(headers, "Content-Length", length);
        evbuffer_drain(body, evbuffer_get_length(body));
    }
    evhttp_send_reply(sr->req, status, NULL, body);
    evbuffer_free(body);
    log_access(rs);

    if (rs->in_deadline) {
        /* The handler still owns sr and will reply later; that call frees it. Until
         * then the request stays counted, so a drain waits for the handler's work. */
        sr->replied = true;
        sr->req = NULL;
        return;
    }
    atomic_fetch_sub(&rs->thread->unanswered, 1);
    state_free(rs);
}

void server_reply_json(struct server_req *sr, int status, json_t *body)
{
    struct evbuffer *buf = buffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    if (!text) {
        /* Only a NULL body or a jansson allocation failure gets here. */
        rlog_error(sr->rid, NULL, "cannot encode the JSON reply; sending 500");
        status = 500;
        text = util_strdup("{\"error\":\"server_error\"}");
    }
    evbuffer_add(buf, text, strlen(text));
    free(text);
    if (sr->req)
        server_req_add_header(sr, "X-Content-Type-Options", "nosniff");
    send_reply(sr, status, "application/json", buf);
}

void server_reply_body(struct server_req *sr, int status, const char *content_type,
                       const char *body, size_t len)
{
    struct evbuffer *buf = buffer_new();

    evbuffer_add(buf, body, len);
    send_reply(sr, status, content_type, buf);
}

void server_req_add_header(struct server_req *sr, const char *name, const char *value)
{
    /* After the deadline reply the request is gone; the handler's headers go nowhere. */
    if (!sr->req)
        return;
    if (evhttp_add_header(evhttp_request_get_output_headers(sr->req), name, value) != 0)
        rlog_warn(sr->rid, NULL, "response header %s has an invalid value; not sent",
                  name);
}

const char *server_req_header(const struct server_req *sr, const char *name)
{
    if (!sr->req)
        return NULL;
    return evhttp_find_header(evhttp_request_get_input_headers(sr->req), name);
}

const char *server_req_method(const struct server_req *sr)
{
    return state_of(sr)->method;
}

const char *server_req_path(const struct server_req *sr)
{
    return state_of(sr)->path;
}

const char *server_req_query(const struct server_req *sr)
{
    const struct evhttp_uri *uri;

    if (!sr->req)
        return NULL;
    uri = evhttp_request_get_evhttp_uri(sr->req);
    return uri ? evhttp_uri_get_query(uri) : NULL;
}

int server_form_parse(const struct server_req *sr, struct server_form *form,
                      const char **error)
{
    struct evbuffer *body;
    size_t len;
    const char *text;

    form->count = 0;
    form->params = NULL;
    if (!sr->req) {
        *error = "the request was already answered";
        return -1;
    }
    if (!server_form_content_type_ok(server_req_header(sr, "Content-Type"))) {
        *error = "the Content-Type must be application/x-www-form-urlencoded";
        return -1;
    }
    body = evhttp_request_get_input_buffer(sr->req);
    len = evbuffer_get_length(body);
    text = len ? (const char *)evbuffer_pullup(body, -1) : "";
    return server_form_parse_text(text, len, form, error);
}

/* Returns the name of a header from single_headers that the request repeats, or NULL. */
static const char *repeated_header(struct evhttp_request *req)
{
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);

    for (size_t i = 0; i < ARRAY_LEN(single_headers); i++) {
        int seen = 0;

        for (struct evkeyval *h = headers->tqh_first; h; h = h->next.tqe_next) {
            if (strcasecmp(h->key, single_headers[i]) == 0 && ++seen > 1)
                return single_headers[i];
        }
    }
    return NULL;
}

/* Returns the header that makes the request's framing ambiguous, or NULL. libevent 2.1
 * ignores a Transfer-Encoding other than "chunked" and accepts a signed Content-Length.
 * The bytes it did not read as the body would then be parsed as a next request, so
 * RFC 9112 sections 6.1 and 6.3 require a 400 and a closed connection. */
static const char *framing_error(struct evhttp_request *req)
{
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    const char *te = evhttp_find_header(headers, "Transfer-Encoding");
    const char *length = evhttp_find_header(headers, "Content-Length");
    const char *repeated = repeated_header(req);

    if (repeated)
        return repeated;
    if (te && strcasecmp(te, "chunked") != 0)
        return "Transfer-Encoding";
    if (te && length)
        return "Content-Length";
    if (length && (!*length || strspn(length, "0123456789") != strlen(length)))
        return "Content-Length";
    /* RFC 9112 section 3.2: an HTTP/1.1 request without Host gets a 400. */
    if (req->major == 1 && req->minor >= 1 && !evhttp_find_header(headers, "Host"))
        return "Host";
    return NULL;
}

/* The deadline reply on the approval page, which people read in a browser. It has the
 * security headers of the pages ciba/approve.c sends, and no style, so its
 * Content-Security-Policy allows nothing at all. */
static const char deadline_page[] =
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
    "<title>Please try again</title></head><body><h1>Please try again</h1>"
    "<p>This took too long. Please try again in a moment.</p></body></html>\n";

static void reply_deadline_page(struct server_req *sr)
{
    server_req_add_header(sr, "Content-Security-Policy",
                          "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
                          "form-action 'none'");
    server_req_add_header(sr, "X-Frame-Options", "DENY");
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_req_add_header(sr, "Referrer-Policy", "no-referrer");
    server_req_add_header(sr, "X-Content-Type-Options", "nosniff");
    server_req_add_header(sr, "Retry-After", "5");
    server_reply_body(sr, 503, "text/html; charset=utf-8", deadline_page,
                      sizeof(deadline_page) - 1);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct server_req_state *rs = arg;
    struct server_req *sr = &rs->sr;

    (void)fd;
    (void)what;
    rlog_warn(sr->rid, sr->client_id[0] ? sr->client_id : NULL,
              "no reply after %d ms; sending 503", server_config->request_deadline_ms);
    rs->in_deadline = true;
    /* The router names the endpoint before it calls the handler. */
    if (sr->endpoint && strcmp(sr->endpoint, "approve") == 0)
        reply_deadline_page(sr);
    else
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
                          "The request took too long; try again");
    rs->in_deadline = false;
}

static struct server_req_state *state_new(struct server_thread *t,
                                          struct evhttp_request *req)
{
    struct server_req_state *rs = util_calloc(1, sizeof(*rs));
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    unsigned char id[8];

    rs->thread = t;
    rs->method = method_name(evhttp_request_get_command(req));
    rs->path = util_strdup(path ? path : "");
    rs->sr.req = req;
    rs->sr.worker = &t->w;
    rs->sr.started_ms = util_mono_ms();
    util_random_bytes(id, sizeof(id));
    for (size_t i = 0; i < sizeof(id); i++)
        snprintf(rs->sr.rid + 2 * i, 3, "%02x", id[i]);

    rs->next = t->reqs;
    if (t->reqs)
        t->reqs->prev = rs;
    t->reqs = rs;
    atomic_fetch_add(&t->unanswered, 1);
    return rs;
}

void server_http_on_request(struct evhttp_request *req, void *arg)
{
    struct server_thread *t = arg;
    struct server_req_state *rs = state_new(t, req);
    struct server_req *sr = &rs->sr;
    struct timeval deadline = {
        .tv_sec = server_config->request_deadline_ms / 1000,
        .tv_usec = (server_config->request_deadline_ms % 1000) * 1000,
    };
    const char *bad_header;

    /* The one place that sets X-Request-Id: every reply below goes through sr. */
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", sr->rid);
    if (t->draining)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");

    sr->deadline = evtimer_new(t->w.base, on_deadline, rs);
    if (!sr->deadline || evtimer_add(sr->deadline, &deadline) != 0) {
        rlog_error(sr->rid, NULL, "cannot start the request deadline timer");
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_SERVER_ERROR, NULL);
        return;
    }

    bad_header = framing_error(req);
    if (bad_header) {
        rlog_info(sr->rid, NULL, "invalid or repeated %s header; closing the connection",
                  bad_header);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_INVALID_REQUEST,
                          "A header is repeated, missing or invalid");
        return;
    }
    server_tls_client_cert(sr, &rs->cert);
    if (rs->cert.present)
        rlog_debug(sr->rid, NULL, "client certificate x5t#S256 %.8s..., %s",
                   rs->cert.thumbprint, rs->cert.verified ? "verified" : "not verified");
    server_route(sr);
}

const char *server_req_client_cert_thumbprint(const struct server_req *sr)
{
    const struct server_req_state *rs = state_of(sr);

    return rs->cert.present ? rs->cert.thumbprint : NULL;
}

const char *server_req_client_cert_subject(const struct server_req *sr)
{
    const struct server_req_state *rs = state_of(sr);

    return rs->cert.present ? rs->cert.subject : NULL;
}

const unsigned char *server_req_client_cert_der(const struct server_req *sr, size_t *len)
{
    const struct server_req_state *rs = state_of(sr);

    *len = rs->cert.present ? rs->cert.der_len : 0;
    return rs->cert.present ? rs->cert.der : NULL;
}

bool server_req_client_cert_verified(const struct server_req *sr)
{
    return state_of(sr)->cert.present && state_of(sr)->cert.verified;
}

void server_http_abandon_all(struct server_thread *t)
{
    size_t n = 0;

    while (t->reqs) {
        state_free(t->reqs);
        n++;
    }
    if (n)
        log_warn("worker %d: %zu requests were still unanswered at shutdown", t->w.index,
                 n);
}
