/* notify.c - ping and push delivery: the worker that drains the notification outbox
 * SPDX-License-Identifier: MIT
 *
 * Each worker runs one notifier on its own loop. Every NOTIFY_PERIOD_MS, and at once
 * when this worker decides a ping or push request (ciba_notifier_kick), it claims due
 * rows from the outbox (storage_notification_claim, FOR UPDATE SKIP LOCKED with a
 * lease), POSTs each to the client's notification endpoint with the non-blocking HTTP
 * client, and records the outcome: delivered (the row is deleted), a retry after an
 * exponential back-off, or failed. Rows come from any instance, so whichever instance
 * is up delivers, and a row whose deliverer died is retried when its lease ends.
 *
 * Delivery is at least once: when cibad dies after the endpoint replied and before
 * the outcome is recorded, the notification is sent again. Clients can tell repeats
 * apart by auth_req_id.
 *
 * Each notifier keeps a pool of idle keep-alive connections (util_http_pool), so a busy
 * endpoint gets one TCP connection and one TLS handshake instead of one per
 * notification. The pool hands a connection only to a request for the same scheme,
 * host name and port, over the notifier's one TLS context, so one client's endpoint
 * never receives another client's notification unless both name the same host and
 * port. It checks address_allowed again before each reuse. A reused connection skips
 * DNS and keeps the address it was opened to, which passed the same rules.
 *
 * An endpoint may close an idle connection just as a notification is sent on it. The
 * attempt then fails with UTIL_HTTP_ERR_CONNECT and no response, and is sent once more
 * at once over a new connection, within the same attempt and its time limit (see
 * resend_allowed).
 *
 * The flow of one attempt: claim -> on_claimed -> attempt_start -> (HTTP) ->
 * on_attempt_done -> attempt_record -> on_recorded.
 */
#include "ciba/ciba.h"
#include "ciba/ciba_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "oauth/oauth.h"
#include "server/config.h"
#include "server/http.h"
#include "util/http_client.h"
#include "storage/storage.h"

#define NOTIFY_PERIOD_MS 1000
/* Attempts in flight per worker; a claim asks for at most the free places. */
#define NOTIFY_MAX_IN_FLIGHT 64
/* A claim's lease is the attempt's timeout plus this margin for recording the
 * outcome, so a live worker never loses its row to another claimer. */
#define NOTIFY_LEASE_MARGIN_MS 10000
/* The longest wait between two attempts. */
#define NOTIFY_RETRY_MAX_MS (15 * 60 * 1000)
/* Response bodies are ignored (CIBA Core 1.0 section 10.2), but read up to this size. */
#define NOTIFY_MAX_RESPONSE_BODY (16 * 1024)

/* Idle connections each notifier keeps, and how long. Apache httpd 2.4 (KeepAliveTimeout)
 * and Node.js up to v22 (server.keepAliveTimeout) close an idle connection after 5 s by
 * default, and the pool should close first. Reuse pays off at busy endpoints, which get
 * notifications far less than 4 s apart. */
#define NOTIFY_POOL_MAX_IDLE 16
#define NOTIFY_POOL_IDLE_MS  4000
/* A resend over a new connection needs at least this much of the attempt's time. */
#define NOTIFY_RESEND_MIN_MS 100

#define SEAL_NOTIFICATION "cibad notification secrets seal v1"
#define SEAL_PUSH_PAYLOAD "cibad push payload seal v1"

struct attempt;

struct ciba_notifier {
    struct server_worker *worker;
    struct event *timer;
    struct event *kick_ev;
    SSL_CTX *tls;
    bool claiming;    /* a claim statement is in flight */
    int requested;    /* rows the claim in flight requested */
    bool claim_again; /* a kick or a full claim requested another one meanwhile */
    bool stopping;    /* ciba_notifier_stop ran; free once no statement is pending */
    int statements;   /* storage statements in flight that point to this notifier */
    struct attempt *attempts; /* in flight, doubly linked */
    int n_attempts;
    /* Idle connections to notification endpoints, for every attempt of this worker. */
    struct util_http_pool *pool;
};

/* One delivery attempt of one claimed row. */
struct attempt {
    struct attempt *prev, *next;
    struct ciba_notifier *notifier;
    struct util_http_call *call;
    int64_t id;
    int number;
    char *client_id;
    char *request_id; /* for log lines: the decision's request id, or NULL */
    char *mode;
    char *event;
    char host[280]; /* host:port of the endpoint, for logs; never the path or query */
    int64_t deadline_ms; /* Unix milliseconds after which no retry is made */
    /* Kept while the request runs, for a resend after a closed pooled connection. */
    char *url, *token, *body;
    bool resent;     /* the resend over a new connection was made */
    char stale[200]; /* why the pooled connection failed, when resent */
};

/* ---- sealed secrets ---------------------------------------------------------------- */

char *ciba_notification_secrets_seal(const char *auth_req_id, const char *token)
{
    json_t *pair = json_pack("{s:s, s:s}", "auth_req_id", auth_req_id,
                             "client_notification_token", token);
    char *text = pair ? json_dumps(pair, JSON_COMPACT) : NULL;
    char *sealed = NULL;

    if (text) {
        sealed = oauth_seal(server_config->secret, SEAL_NOTIFICATION, text, strlen(text));
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    json_decref(pair);
    return sealed;
}

int ciba_notification_secrets_open(const char *sealed, const char *auth_req_id_hash,
                                   char **auth_req_id, char **token)
{
    unsigned char *text = NULL;
    size_t len = 0;
    json_t *pair;
    const char *id, *tok;
    char hash[65];
    int rc = -1;

    if (!sealed || !auth_req_id_hash ||
        oauth_unseal(server_config->secret, SEAL_NOTIFICATION, sealed, &text, &len) != 0)
        return -1;
    pair = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, NULL);
    id = json_string_value(json_object_get(pair, "auth_req_id"));
    tok = json_string_value(json_object_get(pair, "client_notification_token"));
    if (id && tok) {
        util_sha256_hex(id, strlen(id), hash);
        if (util_ct_streq(hash, auth_req_id_hash)) {
            *auth_req_id = util_strdup(id);
            *token = util_strdup(tok);
            rc = 0;
        }
    }
    json_decref(pair);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

char *ciba_push_payload_seal(const char *text)
{
    return oauth_seal(server_config->secret, SEAL_PUSH_PAYLOAD, text, strlen(text));
}

int ciba_push_payload_open(const char *sealed, char **text)
{
    unsigned char *data = NULL;
    size_t len = 0;

    if (!sealed ||
        oauth_unseal(server_config->secret, SEAL_PUSH_PAYLOAD, sealed, &data, &len) != 0)
        return -1;
    *text = (char *)data;
    return 0;
}

/* Frees a string after overwriting it. */
static void wipe_free(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

char *ciba_push_payload_new(struct server_worker *w, const struct storage_approval *a)
{
    char *auth_req_id = NULL, *token = NULL, *text = NULL, *sealed = NULL;
    json_t *body = NULL;

    if (ciba_notification_secrets_open(a->notification_secrets, a->auth_req_id_hash,
                                       &auth_req_id, &token) != 0) {
        log_error("cannot open the sealed notification secrets of a push request (was "
                  "the server secret changed?)");
        goto out;
    }
    struct oauth_grant grant = {
        .client_id = a->client_id,
        .subject = a->subject,
        .scope = a->scope,
        .auth_req_id = auth_req_id,
        .auth_time = util_now_s(),
        /* A push client never calls the token endpoint, so the certificate it
         * authenticated with at the backchannel endpoint is the one it holds. */
        .cnf_x5t_s256 = a->cnf_x5t_s256,
    };
    body = oauth_token_response_new(w->keys, &grant);
    if (!body) {
        log_error("signing the tokens of a push request failed; no usable signing key?");
        goto out;
    }
    json_object_set_new(body, "auth_req_id", json_string(auth_req_id));
    text = json_dumps(body, JSON_COMPACT);
    if (text)
        sealed = ciba_push_payload_seal(text);
    if (!sealed)
        log_error("sealing the tokens of a push request failed");

out:
    json_decref(body);
    wipe_free(text);
    wipe_free(auth_req_id);
    wipe_free(token);
    return sealed;
}

/* ---- notifier lifetime ------------------------------------------------------------- */

static void notifier_free(struct ciba_notifier *n)
{
    util_http_pool_free(n->pool);
    if (n->timer)
        event_free(n->timer);
    if (n->kick_ev)
        event_free(n->kick_ev);
    SSL_CTX_free(n->tls);
    free(n);
}

/* Called after each statement callback: a stopped notifier goes with its last one. */
static void notifier_release(struct ciba_notifier *n)
{
    n->statements--;
    if (n->stopping && n->statements == 0)
        notifier_free(n);
}

static void attempt_free(struct attempt *a)
{
    struct ciba_notifier *n = a->notifier;

    if (a->prev)
        a->prev->next = a->next;
    else if (n->attempts == a)
        n->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
    n->n_attempts--;
    free(a->url);
    wipe_free(a->token);
    wipe_free(a->body);
    free(a->client_id);
    free(a->request_id);
    free(a->mode);
    free(a->event);
    free(a);
}

/* ---- recording outcomes ------------------------------------------------------------ */

static void on_recorded(void *arg, enum storage_status status)
{
    struct attempt *a = arg;
    struct ciba_notifier *n = a->notifier;

    if (status == STORAGE_NOT_FOUND)
        rlog_warn(a->request_id, a->client_id,
                  "notification %lld attempt %d: the row was claimed again after its "
                  "lease ended; outcome not recorded",
                  (long long)a->id, a->number);
    else if (status != STORAGE_OK)
        rlog_error(a->request_id, a->client_id,
                   "notification %lld attempt %d: recording the outcome failed (storage "
                   "status %d); the row is retried when its lease ends",
                   (long long)a->id, a->number, (int)status);
    attempt_free(a);
    notifier_release(n);
}

/* Records the attempt's outcome and frees the attempt once it is stored. */
static void attempt_record(struct attempt *a, enum storage_notification_outcome outcome,
                           int delay_ms, const char *detail)
{
    struct ciba_notifier *n = a->notifier;

    if (n->stopping ||
        storage_notification_record(n->worker->db, a->id, a->number, outcome, delay_ms,
                                    detail, on_recorded, a) != 0) {
        if (!n->stopping)
            rlog_error(a->request_id, a->client_id,
                       "notification %lld attempt %d: database unavailable, outcome not "
                       "recorded; the row is retried when its lease ends",
                       (long long)a->id, a->number);
        attempt_free(a);
        return;
    }
    n->statements++;
}

/* Gives up on a row without sending it. */
static void attempt_fail_now(struct attempt *a, const char *reason)
{
    char *detail =
        util_asprintf("%s %s: %s, attempt %d", a->mode, a->event, reason, a->number);

    rlog_error(a->request_id, a->client_id, "notification %lld to %s not sent: %s",
               (long long)a->id, a->host, detail);
    attempt_record(a, STORAGE_NOTIFICATION_FAILED, 0, detail);
    free(detail);
}

/* Back-off before attempt number+1: the initial wait doubled per attempt made, capped,
 * with up to 10 % random extra so retries from many rows spread out. */
static int retry_delay_ms(int number)
{
    int64_t delay = server_config->notification_retry_initial_ms;
    uint32_t jitter;

    for (int i = 1; i < number && delay < NOTIFY_RETRY_MAX_MS; i++)
        delay *= 2;
    if (delay > NOTIFY_RETRY_MAX_MS)
        delay = NOTIFY_RETRY_MAX_MS;
    util_random_bytes(&jitter, sizeof(jitter));
    return (int)(delay + jitter % (delay / 10 + 1));
}

/* True for answers that another attempt cannot change: a redirect (never followed,
 * CIBA Core 1.0 section 10.2) and a 4xx other than 408, 425 and 429. A 401 in
 * particular must not be retried. An address that the SSRF rules reject stays
 * rejected. */
static bool is_permanent(const struct util_http_response *res)
{
    if (res->error == UTIL_HTTP_ERR_ADDRESS)
        return true;
    if (res->error != UTIL_HTTP_OK)
        return false;
    if (res->status >= 300 && res->status <= 399)
        return true;
    return res->status >= 400 && res->status <= 499 && res->status != 408 &&
           res->status != 425 && res->status != 429;
}

static int attempt_send(struct attempt *a, bool fresh, int timeout_ms,
                        const char **reason);

/* True when a failed request is sent again at once over a new connection. The request
 * went over a reused pooled connection that closed before a response
 * (UTIL_HTTP_ERR_CONNECT, as a reused connection makes no DNS lookup or connect), it is
 * not a resend itself, and the attempt has time left. The resend then ends within the
 * attempt's timeout and thus within the row's lease.
 *
 * This keeps "a pushed result is never delivered twice to a healthy endpoint". A healthy
 * endpoint that closes an idle connection as a request arrives never read that request,
 * so the resend is its only copy. An endpoint that read the request and then closed
 * without a response is not healthy, and the retry rules would send it again too, only
 * after the back-off. The one send the retry rules would not make is the resend on a
 * row's last attempt. Without it, a healthy endpoint could lose its last notification
 * to an idle-close race that a new connection would not have had.
 * A close after a status line arrived (res->partial) is not resent at once, because
 * the endpoint had started to respond and may have acted on the request, so the retry
 * rules decide. A close inside the status line itself still looks like no response. A
 * timeout is never resent at once, because the endpoint may still be working on it. */
static bool resend_allowed(const struct attempt *a, const struct util_http_response *res)
{
    return res->reused && res->error == UTIL_HTTP_ERR_CONNECT && !res->partial &&
           !a->resent &&
           server_config->notification_timeout_ms - res->elapsed_ms >=
               NOTIFY_RESEND_MIN_MS;
}

static void on_attempt_done(void *arg, const struct util_http_response *res)
{
    struct attempt *a = arg;
    bool ok = res->error == UTIL_HTTP_OK && res->status >= 200 && res->status <= 299;
    int delay = retry_delay_ms(a->number);
    char result[480], *detail;

    a->call = NULL;
    if (resend_allowed(a, res)) {
        const char *reason = NULL;

        a->resent = true;
        snprintf(a->stale, sizeof(a->stale), "%s", res->reason ? res->reason : "failed");
        rlog_info(a->request_id, a->client_id,
                  "notification %lld to %s: the reused connection failed (%s); sending "
                  "again over a new connection",
                  (long long)a->id, a->host, a->stale);
        if (attempt_send(a, true,
                         server_config->notification_timeout_ms - (int)res->elapsed_ms,
                         &reason) == 0)
            return;
        /* Not started, so the first request's outcome is recorded. */
    }
    if (res->error == UTIL_HTTP_OK)
        snprintf(result, sizeof(result), "%s%sHTTP %d", a->resent ? a->stale : "",
                 a->resent ? " on a reused connection, then " : "", res->status);
    else
        snprintf(result, sizeof(result), "%s%s%s", a->resent ? a->stale : "",
                 a->resent ? " on a reused connection, then " : "",
                 res->reason ? res->reason : "failed");

    if (ok) {
        detail = util_asprintf("%s %s: %s, attempt %d, %lld ms", a->mode, a->event,
                               result, a->number, (long long)res->elapsed_ms);
        rlog_info(a->request_id, a->client_id, "notification %lld delivered to %s: %s",
                  (long long)a->id, a->host, detail);
        attempt_record(a, STORAGE_NOTIFICATION_DELIVERED, 0, detail);
    } else if (is_permanent(res) ||
               a->number >= server_config->notification_max_attempts ||
               util_now_ms() + delay > a->deadline_ms) {
        detail = util_asprintf("%s %s: %s, attempt %d, %lld ms; giving up", a->mode,
                               a->event, result, a->number, (long long)res->elapsed_ms);
        rlog_error(a->request_id, a->client_id, "notification %lld to %s failed: %s",
                   (long long)a->id, a->host, detail);
        attempt_record(a, STORAGE_NOTIFICATION_FAILED, 0, detail);
    } else {
        detail =
            util_asprintf("%s %s: %s, attempt %d, %lld ms; retrying in %d ms", a->mode,
                          a->event, result, a->number, (long long)res->elapsed_ms, delay);
        rlog_warn(a->request_id, a->client_id, "notification %lld to %s failed: %s",
                  (long long)a->id, a->host, detail);
        attempt_record(a, STORAGE_NOTIFICATION_RETRY, delay, detail);
    }
    free(detail);
}

/* ---- starting an attempt ----------------------------------------------------------- */

/* The error a push client receives for a request that ended without tokens (CIBA Core
 * 1.0 section 12). */
static json_t *push_error_body(const struct storage_notification *row,
                               const char *auth_req_id)
{
    const char *error, *description;

    if (strcmp(row->event, "expired") == 0) {
        error = "expired_token";
        description = "The authentication request expired before the user approved it";
    } else if (strcmp(row->event, "failed") == 0) {
        error = "transaction_failed";
        description = "The user could not be reached to approve the request";
    } else {
        error = "access_denied";
        description = row->detail && strcmp(row->detail, "too_many_wrong_codes") == 0
                          ? "Too many wrong codes were entered"
                          : "The user denied the request";
    }
    return json_pack("{s:s, s:s, s:s}", "auth_req_id", auth_req_id, "error", error,
                     "error_description", description);
}

/* Builds the JSON body of a row: {"auth_req_id"} for ping (nothing else, CIBA Core 1.0
 * section 10.2), the sealed token response for a push approval, or the push error.
 * Returns a new string, or NULL with the reason in *reason. */
static char *build_body(const struct storage_notification *row, const char *auth_req_id,
                        const char **reason)
{
    json_t *body;
    char *text = NULL;

    if (strcmp(row->mode, "push") == 0 && strcmp(row->event, "approved") == 0) {
        if (ciba_push_payload_open(row->payload, &text) != 0)
            *reason = "cannot open the sealed token response (was the server secret "
                      "changed?)";
        return text;
    }
    if (strcmp(row->mode, "push") == 0)
        body = push_error_body(row, auth_req_id);
    else
        body = json_pack("{s:s}", "auth_req_id", auth_req_id);
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text)
        *reason = "building the JSON body failed";
    return text;
}

/* Copies host:port of url for log lines. */
static void endpoint_host(const char *url, char *out, size_t out_len)
{
    struct evhttp_uri *uri = url ? evhttp_uri_parse(url) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    int port = uri ? evhttp_uri_get_port(uri) : -1;

    if (!host)
        snprintf(out, out_len, "(no valid endpoint)");
    else if (port > 0)
        snprintf(out, out_len, "%s:%d", host, port);
    else
        snprintf(out, out_len, "%s", host);
    if (uri)
        evhttp_uri_free(uri);
}

static bool address_allowed(const struct sockaddr *addr, void *arg)
{
    (void)arg;
    return ciba_address_allowed(addr, server_config->notification_allow_loopback);
}

/* Sends the attempt's body with its Bearer token: over the notifier's pool, or with
 * fresh set over a new connection of its own. Returns 0, or -1 with the reason in
 * *reason. */
static int attempt_send(struct attempt *a, bool fresh, int timeout_ms,
                        const char **reason)
{
    struct ciba_notifier *n = a->notifier;
    char *authorization = util_asprintf("Bearer %s", a->token);
    const struct util_http_header headers[] = {
        {"Content-Type", "application/json"},
        {"Authorization", authorization},
    };
    struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .url = a->url,
        .headers = headers,
        .header_count = ARRAY_LEN(headers),
        .body = a->body,
        .body_len = strlen(a->body),
        .timeout_ms = timeout_ms,
        .max_response_body = NOTIFY_MAX_RESPONSE_BODY,
        .allow_http_loopback = server_config->notification_allow_loopback,
        .address_allowed = address_allowed,
        .pool = fresh ? NULL : n->pool,
    };
    char err[160];

    if (ciba_notification_endpoint_check(
            a->url, server_config->notification_allow_loopback, err, sizeof(err)) != 0) {
        *reason = "the notification endpoint is not allowed";
        rlog_warn(a->request_id, a->client_id, "notification %lld: endpoint %s: %s",
                  (long long)a->id, a->host, err);
    } else {
        /* util_http_send copies the request, headers and body. */
        a->call = util_http_send(n->worker->base, n->worker->dns, n->tls, &req,
                                 on_attempt_done, a);
        if (!a->call)
            *reason = "the request could not be started";
    }
    wipe_free(authorization);
    return a->call ? 0 : -1;
}

static void attempt_start(struct ciba_notifier *n, const struct storage_notification *row)
{
    struct attempt *a = util_calloc(1, sizeof(*a));
    const struct server_config *cfg = server_config;
    char *auth_req_id = NULL;
    const char *reason = NULL;

    a->notifier = n;
    a->id = row->id;
    a->number = row->attempt;
    a->client_id = util_strdup(row->client_id ? row->client_id : "");
    a->request_id = row->request_id ? util_strdup(row->request_id) : NULL;
    a->mode = util_strdup(row->mode ? row->mode : "?");
    a->event = util_strdup(row->event ? row->event : "?");
    endpoint_host(row->endpoint, a->host, sizeof(a->host));
    a->deadline_ms = row->created_at_ms + (int64_t)cfg->notification_retry_window * 1000;
    /* Pushed tokens are useless once the access token has expired. */
    if (row->payload &&
        row->created_at_ms + (int64_t)cfg->access_token_lifetime * 1000 < a->deadline_ms)
        a->deadline_ms = row->created_at_ms + (int64_t)cfg->access_token_lifetime * 1000;
    a->next = n->attempts;
    if (n->attempts)
        n->attempts->prev = a;
    n->attempts = a;
    n->n_attempts++;

    if (!row->mode || !row->event)
        reason = "the row has no mode or event";
    else if (!row->endpoint)
        reason = "the client has no notification endpoint";
    else if (util_now_ms() > a->deadline_ms)
        reason = "the retry window passed before this attempt";
    else if (ciba_notification_secrets_open(row->secrets, row->auth_req_id_hash,
                                            &auth_req_id, &a->token) != 0)
        reason = "cannot open the sealed notification secrets (was the server secret "
                 "changed?)";
    else
        a->body = build_body(row, auth_req_id, &reason);

    if (a->body) {
        a->url = util_strdup(row->endpoint);
        attempt_send(a, false, cfg->notification_timeout_ms, &reason);
    }
    wipe_free(auth_req_id);
    if (reason)
        attempt_fail_now(a, reason);
}

/* ---- claiming ---------------------------------------------------------------------- */

static void claim(struct ciba_notifier *n);

static void on_claimed(void *arg, enum storage_status status,
                       const struct storage_notification *rows, size_t n_rows)
{
    struct ciba_notifier *n = arg;

    n->claiming = false;
    if (status != STORAGE_OK || n->stopping) {
        if (status != STORAGE_OK && !n->stopping)
            log_warn("claiming notifications failed (storage status %d); retrying in %d "
                     "ms",
                     (int)status, NOTIFY_PERIOD_MS);
        notifier_release(n);
        return;
    }
    /* A full batch suggests more rows are due. */
    if ((int)n_rows >= n->requested)
        n->claim_again = true;
    for (size_t i = 0; i < n_rows; i++)
        attempt_start(n, &rows[i]);
    if (n->claim_again)
        claim(n);
    notifier_release(n);
}

static void claim(struct ciba_notifier *n)
{
    int free_places = NOTIFY_MAX_IN_FLIGHT - n->n_attempts;
    int lease = server_config->notification_timeout_ms + NOTIFY_LEASE_MARGIN_MS;

    if (n->stopping)
        return;
    if (n->claiming || free_places <= 0) {
        n->claim_again = true;
        return;
    }
    n->claim_again = false;
    n->requested = free_places;
    if (storage_notification_claim(n->worker->db, free_places, lease, on_claimed, n) != 0)
        return; /* database down: the timer tries again */
    n->claiming = true;
    n->statements++;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    claim(arg);
}

/* ---- public API -------------------------------------------------------------------- */

int ciba_notifier_start(struct server_worker *w)
{
    struct ciba_notifier *n = util_calloc(1, sizeof(*n));
    struct timeval period = {NOTIFY_PERIOD_MS / 1000, (NOTIFY_PERIOD_MS % 1000) * 1000};

    n->worker = w;
    n->tls = util_http_tls_ctx_new(server_config->notification_ca_file);
    n->pool = util_http_pool_new(w->base, NOTIFY_POOL_MAX_IDLE, NOTIFY_POOL_IDLE_MS);
    n->timer = event_new(w->base, -1, EV_PERSIST, on_timer, n);
    n->kick_ev = event_new(w->base, -1, 0, on_timer, n);
    if (!n->tls || !n->pool || !n->timer || !n->kick_ev ||
        event_add(n->timer, &period) != 0) {
        log_error("worker %d: cannot start ping and push delivery", w->index);
        notifier_free(n);
        return -1;
    }
    w->notifier = n;
    return 0;
}

void ciba_notifier_stop(struct server_worker *w)
{
    struct ciba_notifier *n = w->notifier;

    if (!n)
        return;
    w->notifier = NULL;
    n->stopping = true;
    event_del(n->timer);
    event_del(n->kick_ev);
    /* Canceled attempts record nothing: their rows come back when the lease ends.
     * Attempts whose outcome is being recorded go when their statement completes. */
    for (struct attempt *a = n->attempts, *next; a; a = next) {
        next = a->next;
        if (a->call) {
            util_http_cancel(a->call);
            attempt_free(a);
        }
    }
    /* Closes the idle connections now rather than with the last statement. */
    util_http_pool_free(n->pool);
    n->pool = NULL;
    if (n->statements == 0)
        notifier_free(n);
}

void ciba_notifier_kick(struct server_worker *w)
{
    if (w && w->notifier)
        event_active(w->notifier->kick_ev, EV_TIMEOUT, 0);
}
