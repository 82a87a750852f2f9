/* bench_sink.c - a minimal SMS gateway for `make bench`: replies 200 to every POST and
 * appends each request body, as one line, to a file
 * SPDX-License-Identifier: MIT
 *
 *   bench_sink PORT FILE TOKEN
 *
 * Listens on 127.0.0.1:PORT with one libevent loop. A POST whose Authorization header is
 * not "Bearer TOKEN" gets 401, any other method 405, so a misconfigured driver shows up
 * as failed deliveries rather than as silently recorded messages. Each accepted body is
 * written with a single write(2) that ends with its newline, on a file opened with
 * O_APPEND, so bench.sh can count the lines while the sink runs and counts only whole
 * messages. Newlines inside a body become spaces. SIGTERM or SIGINT stops the loop, and
 * the sink prints the number of accepted messages on stderr.
 *
 * evhttp keeps HTTP/1.1 connections open between requests by default, so cibad's http
 * driver, which reuses its gateway connections, sends many messages per connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define SINK_MAX_BODY (64 * 1024)

struct sink {
    struct event_base *base;
    int fd;
    char *authorization; /* "Bearer TOKEN" */
    unsigned long accepted;
    struct evbuffer *ok_body;
};

/* Appends body plus '\n' to the file in one write. Returns 0 or -1. */
static int sink_append(struct sink *s, struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    char *line = malloc(len + 1);
    ssize_t written;

    if (!line)
        return -1;
    evbuffer_copyout(body, line, len);
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len] = '\n';
    written = write(s->fd, line, len + 1);
    free(line);
    return written == (ssize_t)(len + 1) ? 0 : -1;
}

static void sink_reply(struct evhttp_request *req, int status, const char *reason,
                       const char *body)
{
    struct evbuffer *out = evbuffer_new();

    if (out)
        evbuffer_add(out, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, status, reason, out);
    if (out)
        evbuffer_free(out);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct sink *s = arg;
    const char *auth;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        sink_reply(req, 405, "Method Not Allowed", "{\"error\":\"POST only\"}");
        return;
    }
    auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!auth || strcmp(auth, s->authorization) != 0) {
        sink_reply(req, 401, "Unauthorized", "{\"error\":\"wrong bearer token\"}");
        return;
    }
    if (sink_append(s, evhttp_request_get_input_buffer(req)) != 0) {
        fprintf(stderr, "bench_sink: writing the message failed: %s\n", strerror(errno));
        sink_reply(req, 500, "Internal Server Error", "{\"error\":\"write failed\"}");
        return;
    }
    s->accepted++;
    sink_reply(req, 200, "OK", "{\"status\":\"queued\"}");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct sink *s = arg;

    (void)sig;
    (void)what;
    event_base_loopexit(s->base, NULL);
}

int main(int argc, char **argv)
{
    struct sink s = {0};
    struct evhttp *http = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    char *end;
    long port;
    int status = 1;

    if (argc != 4) {
        fprintf(stderr, "usage: bench_sink PORT FILE TOKEN\n");
        return 2;
    }
    port = strtol(argv[1], &end, 10);
    if (*end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "bench_sink: invalid port %s: expected 1..65535\n", argv[1]);
        return 2;
    }
    s.fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (s.fd < 0) {
        fprintf(stderr, "bench_sink: cannot open %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    s.authorization = malloc(strlen(argv[3]) + sizeof("Bearer "));
    if (!s.authorization)
        goto out;
    sprintf(s.authorization, "Bearer %s", argv[3]);

    signal(SIGPIPE, SIG_IGN);
    s.base = event_base_new();
    http = s.base ? evhttp_new(s.base) : NULL;
    if (!http) {
        fprintf(stderr, "bench_sink: cannot create the libevent HTTP server\n");
        goto out;
    }
    evhttp_set_max_body_size(http, SINK_MAX_BODY);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(http, on_request, &s);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
        fprintf(stderr, "bench_sink: cannot listen on 127.0.0.1:%ld: %s\n", port,
                strerror(errno));
        goto out;
    }
    sigterm = evsignal_new(s.base, SIGTERM, on_signal, &s);
    sigint = evsignal_new(s.base, SIGINT, on_signal, &s);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "bench_sink: cannot install the signal handlers\n");
        goto out;
    }

    if (event_base_dispatch(s.base) != 0) {
        fprintf(stderr, "bench_sink: the event loop failed\n");
        goto out;
    }
    fprintf(stderr, "bench_sink: %lu messages accepted\n", s.accepted);
    status = 0;

out:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (http)
        evhttp_free(http);
    if (s.base)
        event_base_free(s.base);
    free(s.authorization);
    close(s.fd);
    return status;
}
