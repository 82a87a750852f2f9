/* sender.c - sends one SMS per sms_send through the configured driver, with one retry
 * SPDX-License-Identifier: MIT
 *
 * The gateway drivers send over a pool of keep-alive connections, one pool per sender
 * (so per worker loop). A connection the gateway closes just as a send reuses it fails
 * that attempt with a connection error, which the retry covers.
 *
 * Each sms_send gets a struct send_ctx that lives until its callback has run. The
 * steps run in file order. sms_send checks the message and starts the first attempt.
 * on_attempt_done picks success, a retry (after a timeout, a connection failure or a
 * 5xx) or failure. on_timer starts the retry or completes the send. finish() logs the
 * result line and calls the caller's callback.
 */
#include "sms/sms_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/crypto.h>

/* Two attempts in all: the first and one retry. */
#define SMS_MAX_ATTEMPTS 2
/* Pause before the retry, so a gateway that just failed gets a moment to recover. */
#define SMS_RETRY_DELAY_MS 200
/* Idle gateway connections a sender keeps, and how long. Every send in flight uses one
 * connection, so 16 lets a worker run 16 sends at a time without connecting again. The
 * 15 s is an estimate meant to stay below the gateway's own idle timeout, so that the
 * sender, not the gateway, closes an idle connection. */
#define SMS_POOL_MAX_IDLE 16
#define SMS_POOL_IDLE_MS  15000
/* Bounds for sms_config.timeout_ms. */
#define SMS_MIN_TIMEOUT_MS 1
#define SMS_MAX_TIMEOUT_MS 120000

enum send_state {
    SEND_IN_FLIGHT,   /* an HTTP attempt is running */
    SEND_RETRY_WAIT,  /* timer set: start the next attempt */
    SEND_FINISH_WAIT, /* timer set: report the result */
};

struct send_ctx {
    struct sms_sender *sender;
    enum send_state state;
    char rid[40];
    char masked_to[SMS_PHONE_MASK_LEN];
    struct sms_gateway_request gw; /* empty for the console driver */
    struct util_http_call *call;   /* the running attempt, or NULL */
    struct event *timer;
    int attempts;
    int status; /* HTTP status of the last attempt, 0 when none arrived */
    int64_t started_ms;
    bool ok;
    char reason[240];
    sms_sent_cb cb;
    void *arg;
    struct send_ctx *prev, *next; /* the sender's list of unfinished sends */
};

struct sms_sender {
    struct event_base *base;
    struct evdns_base *dns;
    struct sms_config cfg;       /* strings owned */
    SSL_CTX *tls;                /* for https gateways; NULL for the console driver */
    struct util_http_pool *pool; /* gateway connections; NULL for the console driver */
    struct send_ctx *active;
};

static const char *driver_name(enum sms_driver driver)
{
    switch (driver) {
    case SMS_DRIVER_CONSOLE:
        return "console";
    case SMS_DRIVER_HTTP:
        return "http";
    case SMS_DRIVER_TWILIO:
        return "twilio";
    }
    return "unknown";
}

/* ---- configuration ---------------------------------------------------------------- */

/* True when s is set and has no control characters, so it can go into a header. */
static bool is_header_safe(const char *s)
{
    if (!s || !*s)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return false;
    }
    return true;
}

/* Checks the settings a driver needs. Returns 0, or -1 with the reason in err. */
static int config_check(const struct sms_config *cfg, bool have_dns, char *err,
                        size_t err_len)
{
    char url_err[160];
    const char *url =
        cfg->driver == SMS_DRIVER_HTTP ? cfg->http_url : cfg->twilio_base_url;

    if (cfg->driver == SMS_DRIVER_CONSOLE)
        return 0;
    if (cfg->timeout_ms < SMS_MIN_TIMEOUT_MS || cfg->timeout_ms > SMS_MAX_TIMEOUT_MS) {
        snprintf(err, err_len, "timeout_ms %d is outside %d..%d", cfg->timeout_ms,
                 SMS_MIN_TIMEOUT_MS, SMS_MAX_TIMEOUT_MS);
        return -1;
    }
    if (util_http_url_check(url, cfg->allow_http_loopback, have_dns, url_err,
                            sizeof(url_err)) != 0) {
        snprintf(err, err_len, "invalid %s: %s",
                 cfg->driver == SMS_DRIVER_HTTP ? "http_url" : "twilio_base_url",
                 url_err);
        return -1;
    }
    if (cfg->driver == SMS_DRIVER_HTTP && !is_header_safe(cfg->http_token)) {
        snprintf(err, err_len, "http_token is missing or contains control characters");
        return -1;
    }
    if (cfg->driver == SMS_DRIVER_TWILIO &&
        (!is_header_safe(cfg->twilio_account_sid) ||
         !is_header_safe(cfg->twilio_auth_token) || !is_header_safe(cfg->twilio_from))) {
        snprintf(err, err_len,
                 "twilio_account_sid, twilio_auth_token and twilio_from must all be set, "
                 "without control characters");
        return -1;
    }
    return 0;
}

static char *strdup_or_null(const char *s)
{
    return s ? util_strdup(s) : NULL;
}

static void config_copy(struct sms_config *dst, const struct sms_config *src)
{
    *dst = *src;
    dst->http_url = strdup_or_null(src->http_url);
    dst->http_token = strdup_or_null(src->http_token);
    dst->twilio_base_url = strdup_or_null(src->twilio_base_url);
    dst->twilio_account_sid = strdup_or_null(src->twilio_account_sid);
    dst->twilio_auth_token = strdup_or_null(src->twilio_auth_token);
    dst->twilio_from = strdup_or_null(src->twilio_from);
    dst->ca_file = strdup_or_null(src->ca_file);
}

static void free_secret(const char *s)
{
    if (s) {
        OPENSSL_cleanse((char *)s, strlen(s));
        free((char *)s);
    }
}

static void config_clear(struct sms_config *cfg)
{
    free((char *)cfg->http_url);
    free((char *)cfg->twilio_base_url);
    free((char *)cfg->twilio_account_sid);
    free((char *)cfg->twilio_from);
    free((char *)cfg->ca_file);
    free_secret(cfg->http_token);
    free_secret(cfg->twilio_auth_token);
    memset(cfg, 0, sizeof(*cfg));
}

struct sms_sender *sms_sender_new(struct event_base *base, struct evdns_base *dns,
                                  const struct sms_config *cfg)
{
    struct sms_sender *s;
    char err[240];

    if (!base || !cfg) {
        log_error("SMS sender not created: no event base or configuration");
        return NULL;
    }
    if (config_check(cfg, dns != NULL, err, sizeof(err)) != 0) {
        log_error("SMS sender not created: driver %s: %s", driver_name(cfg->driver), err);
        return NULL;
    }

    s = util_calloc(1, sizeof(*s));
    s->base = base;
    s->dns = dns;
    config_copy(&s->cfg, cfg);
    if (cfg->driver != SMS_DRIVER_CONSOLE) {
        s->tls = util_http_tls_ctx_new(cfg->ca_file);
        if (!s->tls) {
            log_error("SMS sender not created: driver %s: the TLS setup failed",
                      driver_name(cfg->driver));
            sms_sender_free(s);
            return NULL;
        }
        s->pool = util_http_pool_new(base, SMS_POOL_MAX_IDLE, SMS_POOL_IDLE_MS);
        if (!s->pool) {
            log_error(
                "SMS sender not created: driver %s: the connection pool setup failed",
                driver_name(cfg->driver));
            sms_sender_free(s);
            return NULL;
        }
    }
    log_info("SMS sender ready: driver=%s timeout_ms=%d", driver_name(cfg->driver),
             cfg->timeout_ms);
    return s;
}

/* ---- one send --------------------------------------------------------------------- */

static const char *state_name(enum send_state state)
{
    switch (state) {
    case SEND_IN_FLIGHT:
        return "in_flight";
    case SEND_RETRY_WAIT:
        return "retry_wait";
    case SEND_FINISH_WAIT:
        return "finish_wait";
    }
    return "unknown";
}

/* Every state change goes through here, so a debug log shows each send's steps. */
static void set_state(struct send_ctx *ctx, enum send_state state)
{
    rlog_debug(ctx->rid, NULL, "sms send state %s -> %s", state_name(ctx->state),
               state_name(state));
    ctx->state = state;
}

static void ctx_unlink(struct send_ctx *ctx)
{
    struct sms_sender *s = ctx->sender;

    if (ctx->prev)
        ctx->prev->next = ctx->next;
    else
        s->active = ctx->next;
    if (ctx->next)
        ctx->next->prev = ctx->prev;
    ctx->prev = ctx->next = NULL;
}

static void ctx_free(struct send_ctx *ctx)
{
    util_http_cancel(ctx->call);
    event_free(ctx->timer);
    sms_gateway_request_clear(&ctx->gw);
    free(ctx);
}

/* Logs the result line, calls the caller's callback and frees ctx. The callback runs
 * last and ctx is already off the sender's list, so the callback may send again or
 * even free the sender. */
static void finish(struct send_ctx *ctx)
{
    int64_t elapsed_ms = util_mono_ms() - ctx->started_ms;
    const char *driver = driver_name(ctx->sender->cfg.driver);
    sms_sent_cb cb = ctx->cb;
    void *arg = ctx->arg;
    char reason[sizeof(ctx->reason)];
    bool ok;

    if (ctx->ok) {
        rlog_info(ctx->rid, NULL,
                  "sms sent: driver=%s status=%d attempts=%d elapsed_ms=%lld to=%s",
                  driver, ctx->status, ctx->attempts, (long long)elapsed_ms,
                  ctx->masked_to);
    } else {
        rlog_warn(ctx->rid, NULL,
                  "sms failed: driver=%s status=%d attempts=%d elapsed_ms=%lld to=%s "
                  "reason=%s",
                  driver, ctx->status, ctx->attempts, (long long)elapsed_ms,
                  ctx->masked_to, ctx->reason);
    }
    ok = ctx->ok;
    memcpy(reason, ctx->reason, sizeof(reason));
    ctx_unlink(ctx);
    ctx_free(ctx);
    cb(arg, ok, ok ? NULL : reason);
}

/* Reports the result from a fresh event, so the callback never runs inside sms_send. */
static void finish_later(struct send_ctx *ctx)
{
    struct timeval now = {0, 0};

    set_state(ctx, SEND_FINISH_WAIT);
    evtimer_add(ctx->timer, &now);
}

static void fail_later(struct send_ctx *ctx, const char *reason)
{
    ctx->ok = false;
    snprintf(ctx->reason, sizeof(ctx->reason), "%s", reason);
    finish_later(ctx);
}

static void on_attempt_done(void *arg, const struct util_http_response *res);

/* Starts the next HTTP attempt. Returns 0, or -1 when it could not start. */
static int start_attempt(struct send_ctx *ctx)
{
    struct sms_sender *s = ctx->sender;
    const struct util_http_header headers[] = {
        {"Content-Type", ctx->gw.content_type},
        {"Authorization", ctx->gw.authorization},
        {"Accept", "application/json"},
        {"User-Agent", "cibad"},
    };
    const struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .url = ctx->gw.url,
        .headers = headers,
        .header_count = ARRAY_LEN(headers),
        .body = ctx->gw.body,
        .body_len = ctx->gw.body_len,
        .timeout_ms = s->cfg.timeout_ms,
        .allow_http_loopback = s->cfg.allow_http_loopback,
        .pool = s->pool,
    };

    ctx->attempts++;
    ctx->status = 0;
    set_state(ctx, SEND_IN_FLIGHT);
    ctx->call = util_http_send(s->base, s->dns, s->tls, &req, on_attempt_done, ctx);
    return ctx->call ? 0 : -1;
}

/* A timeout, a failed or dropped connection and a 5xx may be passing problems, so
 * they get one retry. A TLS failure, a 3xx or 4xx, or an unreadable response would
 * fail the same way again. */
static bool is_retryable(const struct util_http_response *res)
{
    switch (res->error) {
    case UTIL_HTTP_ERR_TIMEOUT:
    case UTIL_HTTP_ERR_CONNECT:
        return true;
    case UTIL_HTTP_OK:
        return res->status >= 500 && res->status <= 599;
    default:
        return false;
    }
}

static void on_attempt_done(void *arg, const struct util_http_response *res)
{
    struct send_ctx *ctx = arg;
    struct timeval delay = {SMS_RETRY_DELAY_MS / 1000,
                            (SMS_RETRY_DELAY_MS % 1000) * 1000};

    ctx->call = NULL; /* the HTTP client frees it after this callback */
    ctx->status = res->status;
    if (res->error == UTIL_HTTP_OK && res->status >= 200 && res->status <= 299) {
        ctx->ok = true;
        finish(ctx);
        return;
    }

    if (res->error != UTIL_HTTP_OK)
        snprintf(ctx->reason, sizeof(ctx->reason), "gateway request failed: %s",
                 res->reason);
    else if (res->status >= 300 && res->status <= 399)
        snprintf(ctx->reason, sizeof(ctx->reason),
                 "gateway answered HTTP %d; redirects are not followed", res->status);
    else
        snprintf(ctx->reason, sizeof(ctx->reason), "gateway answered HTTP %d",
                 res->status);

    if (!is_retryable(res) || ctx->attempts >= SMS_MAX_ATTEMPTS) {
        finish(ctx);
        return;
    }
    rlog_warn(ctx->rid, NULL, "sms attempt %d via %s failed (%s); retrying in %d ms",
              ctx->attempts, driver_name(ctx->sender->cfg.driver), ctx->reason,
              SMS_RETRY_DELAY_MS);
    set_state(ctx, SEND_RETRY_WAIT);
    evtimer_add(ctx->timer, &delay);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct send_ctx *ctx = arg;

    (void)fd;
    (void)what;
    if (ctx->state == SEND_RETRY_WAIT && start_attempt(ctx) != 0) {
        snprintf(ctx->reason, sizeof(ctx->reason), "the retry could not be started");
        finish(ctx);
        return;
    }
    if (ctx->state == SEND_FINISH_WAIT)
        finish(ctx);
}

void sms_send(struct sms_sender *s, const char *request_id, const char *to,
              const char *text, sms_sent_cb cb, void *arg)
{
    struct send_ctx *ctx = util_calloc(1, sizeof(*ctx));
    char err[160];

    ctx->sender = s;
    snprintf(ctx->rid, sizeof(ctx->rid), "%s", request_id ? request_id : "-");
    sms_phone_mask(to, ctx->masked_to);
    ctx->timer = evtimer_new(s->base, on_timer, ctx);
    ctx->started_ms = util_mono_ms();
    ctx->cb = cb;
    ctx->arg = arg;
    ctx->next = s->active;
    if (s->active)
        s->active->prev = ctx;
    s->active = ctx;

    if (sms_message_check(to, text, err, sizeof(err)) != 0) {
        fail_later(ctx, err);
        return;
    }

    if (s->cfg.driver == SMS_DRIVER_CONSOLE) {
        /* The console driver exists to show the message on a developer's terminal, so
         * this is the one place where an SMS number and text are logged. Never
         * configure it in production. */
        rlog_info(ctx->rid, NULL, "sms console driver: to=%s text=%s", to, text);
        ctx->attempts = 1;
        ctx->ok = true;
        finish_later(ctx);
        return;
    }

    if (sms_gateway_request_build(&s->cfg, to, text, &ctx->gw, err, sizeof(err)) != 0) {
        fail_later(ctx, err);
        return;
    }
    if (start_attempt(ctx) != 0)
        fail_later(ctx, "the gateway request could not be started");
}

void sms_sender_free(struct sms_sender *s)
{
    if (!s)
        return;

    /* Every send still running gets its callback, so callers can release their
     * state; finish() takes each one off the list. */
    while (s->active) {
        struct send_ctx *ctx = s->active;

        util_http_cancel(ctx->call);
        ctx->call = NULL;
        ctx->ok = false;
        snprintf(ctx->reason, sizeof(ctx->reason),
                 "the SMS sender was freed before the send finished");
        finish(ctx);
    }
    util_http_pool_free(s->pool);
    SSL_CTX_free(s->tls);
    config_clear(&s->cfg);
    free(s);
}
