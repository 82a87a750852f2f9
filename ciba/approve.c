/* approve.c - the page the SMS links to: the user reviews the request and approves it
 * with the code, denies it, or asks for a new code
 * SPDX-License-Identifier: MIT
 *
 * GET shows the request. POST carries action=approve (with code), deny or resend. Every
 * POST first reloads the request (on_loaded_for_post), acts on it, then reloads it once
 * more to render the outcome (on_loaded_for_render), so one function draws every state.
 */
#include "ciba/ciba.h"
#include "ciba/ciba_int.h"

#include <ctype.h>
#include <pthread.h>
#include <string.h>

#include <openssl/sha.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

#define APPROVE_PREFIX  "/approve/"
#define MAX_CAS_RETRIES 3

enum approve_action {
    ACTION_SHOW,
    ACTION_APPROVE,
    ACTION_DENY,
    ACTION_RESEND,
};

struct approve_ctx {
    struct server_req *sr;
    struct server_form form;
    enum approve_action action;
    char ref[CIBA_REF_LEN + 1];
    char ref_hash[65];
    const char *notice; /* a line shown above the form, static text */
    int retries;

    /* For a resend: the new code and what the SMS needs, copied from the row. */
    char code[SMS_OTP_DIGITS + 1];
    struct ciba_code_message sms;
};

static void approve_free(struct approve_ctx *ctx)
{
    server_form_free(&ctx->form);
    free((char *)ctx->sms.client_id);
    free((char *)ctx->sms.client_name);
    free((char *)ctx->sms.auth_req_id_hash);
    free((char *)ctx->sms.phone_number);
    free((char *)ctx->sms.binding_message);
    memset(ctx->code, 0, sizeof(ctx->code));
    free(ctx);
}

/* ---- HTML ----------------------------------------------------------------------------
 */

struct html {
    char *data;
    size_t len, cap;
};

static void html_append(struct html *h, const char *s, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        h->cap = (h->len + n + 1) * 2;
        h->data = util_realloc(h->data, h->cap);
    }
    memcpy(h->data + h->len, s, n);
    h->len += n;
    h->data[h->len] = '\0';
}

static void html_raw(struct html *h, const char *s)
{
    html_append(h, s, strlen(s));
}

/* Appends text with the five HTML-significant characters escaped: safe inside element
 * content and quoted attribute values. */
static void html_text(struct html *h, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            html_raw(h, "&amp;");
            break;
        case '<':
            html_raw(h, "&lt;");
            break;
        case '>':
            html_raw(h, "&gt;");
            break;
        case '"':
            html_raw(h, "&quot;");
            break;
        case '\'':
            html_raw(h, "&#39;");
            break;
        default:
            html_append(h, s, 1);
        }
    }
}

static void html_printf(struct html *h, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void html_printf(struct html *h, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        html_append(h, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* The only style on the page; the Content-Security-Policy allows it by its hash, so no
 * other inline style or any script can run. */
static const char page_style[] =
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:1rem auto;padding:0 "
    "1rem;"
    "color:#1a1a1a;line-height:1.4}"
    "h1{font-size:1.3rem}.msg{background:#f3f3f3;border-left:4px solid #555;"
    "padding:.5rem .75rem;white-space:pre-wrap;overflow-wrap:anywhere}"
    ".notice{background:#fff4d6;padding:.5rem .75rem}"
    "input{font-size:1.5rem;letter-spacing:.3rem;width:9rem;padding:.3rem}"
    "button{font-size:1rem;padding:.6rem 1.2rem;margin:.5rem .5rem 0 0}"
    ".approve{background:#1a7f37;color:#fff;border:0}.deny{background:#b42318;color:#fff;"
    "border:0}.link{background:none;border:0;color:#0645ad;text-decoration:underline;"
    "padding:0}";

static char csp_header[256];
static pthread_once_t csp_once = PTHREAD_ONCE_INIT;

static void build_csp(void)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char *b64;

    SHA256((const unsigned char *)page_style, strlen(page_style), digest);
    b64 = util_b64_encode_new(digest, sizeof(digest));
    snprintf(csp_header, sizeof(csp_header),
             "default-src 'none'; style-src 'sha256-%s'; form-action 'self'; "
             "frame-ancestors 'none'; base-uri 'none'",
             b64);
    free(b64);
}

static void page_begin(struct html *h, const char *title)
{
    html_raw(h, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
                "<title>");
    html_text(h, title);
    html_raw(h, "</title><style>");
    html_raw(h, page_style);
    html_raw(h, "</style></head><body><h1>");
    html_text(h, title);
    html_raw(h, "</h1>");
}

static void send_page(struct approve_ctx *ctx, int status, struct html *h)
{
    struct server_req *sr = ctx->sr;

    html_raw(h, "</body></html>\n");
    pthread_once(&csp_once, build_csp);
    server_req_add_header(sr, "Content-Security-Policy", csp_header);
    server_req_add_header(sr, "X-Frame-Options", "DENY");
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_req_add_header(sr, "Referrer-Policy", "no-referrer");
    server_req_add_header(sr, "X-Content-Type-Options", "nosniff");
    server_reply_body(sr, status, "text/html; charset=utf-8", h->data, h->len);
    free(h->data);
    approve_free(ctx);
}

/* Answers with a page that has only a title and one sentence. */
static void finish_message(struct approve_ctx *ctx, int status, const char *title,
                           const char *sentence)
{
    struct html h = {0};

    page_begin(&h, title);
    html_raw(&h, "<p>");
    html_text(&h, sentence);
    html_raw(&h, "</p>");
    send_page(ctx, status, &h);
}

static void finish_storage_error(struct approve_ctx *ctx, enum storage_status status)
{
    if (status == STORAGE_UNAVAILABLE)
        server_req_add_header(ctx->sr, "Retry-After", "5");
    finish_message(ctx, status == STORAGE_UNAVAILABLE ? 503 : 500, "Please try again",
                   "The service could not load this request.");
}

/* Lists each requested scope with its description, or its name when it has none. */
static void render_scopes(struct html *h, const struct storage_approval *a)
{
    json_t *descriptions =
        json_loads(a->scope_descriptions ? a->scope_descriptions : "{}", 0, NULL);
    char *scope = util_strdup(a->scope), *save = NULL;

    html_raw(h, "<p>It asks to:</p><ul>");
    for (char *s = strtok_r(scope, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
        const char *text = json_string_value(json_object_get(descriptions, s));

        html_raw(h, "<li>");
        html_text(h, text ? text : s);
        html_raw(h, "</li>");
    }
    html_raw(h, "</ul>");
    free(scope);
    json_decref(descriptions);
}

static void render_pending(struct approve_ctx *ctx, const struct storage_approval *a)
{
    struct html h = {0};
    int64_t left = a->expires_at - a->now;
    int attempts_left = server_config->otp_max_attempts - a->otp_attempts;

    page_begin(&h, "Approve this request?");
    html_raw(&h, "<p><strong>");
    html_text(&h, a->client_name);
    html_raw(&h, "</strong> is asking for your approval.</p>");
    if (a->binding_message) {
        html_raw(&h, "<p>Its message:</p><p class=\"msg\">");
        html_text(&h, a->binding_message);
        html_raw(&h, "</p>");
    }
    render_scopes(&h, a);
    html_printf(&h, "<p>This request expires in %lld min %lld s.</p>",
                (long long)(left / 60), (long long)(left % 60));
    if (ctx->notice) {
        html_raw(&h, "<p class=\"notice\">");
        html_text(&h, ctx->notice);
        if (a->otp_attempts > 0)
            html_printf(&h, " %d attempt%s left.", attempts_left,
                        attempts_left == 1 ? "" : "s");
        html_raw(&h, "</p>");
    }
    html_raw(&h,
             "<form method=\"post\"><p><label for=\"code\">Code from the SMS</label><br>"
             "<input id=\"code\" name=\"code\" inputmode=\"numeric\" "
             "autocomplete=\"one-time-code\" pattern=\"[0-9]{6}\" maxlength=\"6\" "
             "required></p>"
             "<button class=\"approve\" name=\"action\" value=\"approve\">Approve"
             "</button><button class=\"deny\" name=\"action\" value=\"deny\" "
             "formnovalidate>Deny</button><p><button class=\"link\" name=\"action\" "
             "value=\"resend\" formnovalidate>Send me a new code</button></p></form>");
    send_page(ctx, 200, &h);
}

/* Draws the page for the request as it is now. */
static void render(struct approve_ctx *ctx, const struct storage_approval *a)
{
    switch (a->status) {
    case STORAGE_AR_PENDING:
        render_pending(ctx, a);
        return;
    case STORAGE_AR_APPROVED:
    case STORAGE_AR_REDEEMED:
        finish_message(ctx, 200, "Approved",
                       "You approved this request. You can close this page.");
        return;
    case STORAGE_AR_DENIED:
        finish_message(ctx, 200, "Denied",
                       a->otp_attempts >= server_config->otp_max_attempts
                           ? "Too many wrong codes were entered, so the request was "
                             "denied. You can close this page."
                           : "This request was denied. You can close this page.");
        return;
    case STORAGE_AR_EXPIRED:
        finish_message(ctx, 200, "Expired",
                       "This request has expired. Nothing was approved.");
        return;
    }
}

/* ---- the flow ------------------------------------------------------------------------
 */

static void on_loaded_for_render(void *arg, enum storage_status status,
                                 const struct storage_approval *a)
{
    struct approve_ctx *ctx = arg;

    if (status == STORAGE_NOT_FOUND) {
        finish_message(ctx, 404, "Link not valid",
                       "This approval link is not valid. Check the SMS you received.");
        return;
    }
    if (status != STORAGE_OK) {
        finish_storage_error(ctx, status);
        return;
    }
    render(ctx, a);
}

static void reload_and_render(struct approve_ctx *ctx)
{
    if (storage_approval_get(ctx->sr->worker->db, ctx->ref_hash, on_loaded_for_render,
                             ctx) != 0)
        finish_storage_error(ctx, STORAGE_UNAVAILABLE);
}

static void start_post(struct approve_ctx *ctx);

static void on_decided(void *arg, enum storage_status status,
                       const struct storage_approval *a)
{
    struct approve_ctx *ctx = arg;

    switch (status) {
    case STORAGE_OK:
        if (a->status == STORAGE_AR_PENDING)
            ctx->notice = "Wrong code.";
        else if (a->delivery_mode && strcmp(a->delivery_mode, "poll") != 0)
            ciba_notifier_kick(ctx->sr->worker); /* the decision queued a notification */
        render(ctx, a);
        return;
    case STORAGE_CONFLICT:
        /* A resend or another attempt changed the row meanwhile: check again. */
        if (++ctx->retries < MAX_CAS_RETRIES) {
            start_post(ctx);
            return;
        }
        ctx->notice = "The request changed meanwhile. Please try again.";
        reload_and_render(ctx);
        return;
    case STORAGE_LIMITED:
        ctx->notice = "This code has expired. Ask for a new code.";
        reload_and_render(ctx);
        return;
    case STORAGE_NOT_FOUND:
        reload_and_render(ctx);
        return;
    default:
        finish_storage_error(ctx, status);
        return;
    }
}

/* Applies the decision. Approving a push request creates the tokens now: the same
 * statement stores them, sealed, for the notification endpoint, and marks the request
 * redeemed. */
static void decide(struct approve_ctx *ctx, const struct storage_approval *a,
                   enum storage_decision decision)
{
    char *push_payload = NULL;
    int rc;

    if (decision == STORAGE_DECIDE_APPROVE && a->delivery_mode &&
        strcmp(a->delivery_mode, "push") == 0) {
        push_payload = ciba_push_payload_new(ctx->sr->worker, a);
        if (!push_payload) {
            rlog_error(ctx->sr->rid, a->client_id,
                       "cannot create the tokens to push; the request stays pending");
            finish_storage_error(ctx, STORAGE_ERROR);
            return;
        }
    }
    rc = storage_approval_decide_notify(
        ctx->sr->worker->db, ctx->ref_hash, a->otp_generation, a->otp_attempts, decision,
        server_config->otp_max_attempts, push_payload, ctx->sr->rid, on_decided, ctx);
    free(push_payload);
    if (rc != 0)
        finish_storage_error(ctx, STORAGE_UNAVAILABLE);
}

static void approve_with_code(struct approve_ctx *ctx, const struct storage_approval *a)
{
    const char *code = server_form_get(&ctx->form, "code");

    /* Input that cannot be a code is not a guess: it does not use up an attempt. */
    if (!code || !sms_otp_well_formed(code)) {
        ctx->notice = "Enter the 6-digit code from the SMS.";
        render(ctx, a);
        return;
    }
    if (ciba_code_matches(a->auth_req_id_hash, a->otp_generation, code, a->otp_hmac,
                          a->otp_hmac_len))
        decide(ctx, a, STORAGE_DECIDE_APPROVE);
    else
        decide(ctx, a, STORAGE_DECIDE_WRONG_CODE);
}

static void on_resent(void *arg, enum storage_status status)
{
    struct approve_ctx *ctx = arg;

    switch (status) {
    case STORAGE_OK:
        ctx->sms.request_id = ctx->sr->rid;
        ctx->sms.code = ctx->code;
        ctx->sms.ref = ctx->ref;
        ciba_code_deliver(ctx->sr->worker, &ctx->sms);
        ctx->notice = "A new code was sent.";
        reload_and_render(ctx);
        return;
    case STORAGE_LIMITED:
        ctx->notice = "A new code cannot be sent yet. Wait a little and try again.";
        reload_and_render(ctx);
        return;
    case STORAGE_NOT_FOUND:
        reload_and_render(ctx);
        return;
    default:
        finish_storage_error(ctx, status);
        return;
    }
}

static void resend_code(struct approve_ctx *ctx, const struct storage_approval *a)
{
    const struct server_config *cfg = server_config;
    unsigned char otp_hmac[SMS_OTP_HMAC_LEN];
    int rc;

    /* The stored HMAC is for the next generation, which the resend creates. */
    sms_otp_generate(ctx->code);
    ciba_code_hmac(a->auth_req_id_hash, a->otp_generation + 1, ctx->code, otp_hmac);

    ctx->sms.client_id = util_strdup(a->client_id);
    ctx->sms.client_name = util_strdup(a->client_name);
    ctx->sms.auth_req_id_hash = util_strdup(a->auth_req_id_hash);
    ctx->sms.phone_number = util_strdup(a->phone_number);
    ctx->sms.binding_message =
        a->binding_message ? util_strdup(a->binding_message) : NULL;

    rc = storage_approval_resend(ctx->sr->worker->db, ctx->ref_hash, otp_hmac,
                                 sizeof(otp_hmac), cfg->otp_lifetime,
                                 cfg->otp_resend_cooldown, cfg->sms_per_phone_max,
                                 cfg->sms_per_phone_window, ctx->sr->rid, on_resent, ctx);
    if (rc != 0)
        finish_storage_error(ctx, STORAGE_UNAVAILABLE);
}

static void on_loaded_for_post(void *arg, enum storage_status status,
                               const struct storage_approval *a)
{
    struct approve_ctx *ctx = arg;

    if (status != STORAGE_OK || a->status != STORAGE_AR_PENDING) {
        on_loaded_for_render(arg, status, a);
        return;
    }
    snprintf(ctx->sr->client_id, sizeof(ctx->sr->client_id), "%s", a->client_id);

    switch (ctx->action) {
    case ACTION_APPROVE:
        approve_with_code(ctx, a);
        return;
    case ACTION_DENY:
        decide(ctx, a, STORAGE_DECIDE_DENY);
        return;
    case ACTION_RESEND:
        resend_code(ctx, a);
        return;
    case ACTION_SHOW:
        render(ctx, a);
        return;
    }
}

static void start_post(struct approve_ctx *ctx)
{
    if (storage_approval_get(ctx->sr->worker->db, ctx->ref_hash, on_loaded_for_post,
                             ctx) != 0)
        finish_storage_error(ctx, STORAGE_UNAVAILABLE);
}

/* ---- request parsing -----------------------------------------------------------------
 */

/* Copies the reference from /approve/REF; false when it cannot be one of ours. */
static bool parse_ref(struct approve_ctx *ctx)
{
    const char *path = server_req_path(ctx->sr);
    size_t prefix_len = strlen(APPROVE_PREFIX);
    const char *ref = path ? strrchr(path, '/') : NULL;

    /* The router has matched ISSUER_PATH/approve/REF, where the issuer's path (as in
     * https://host/tenant) may come first, so the reference is the last segment. */
    if (!ref || (size_t)(ref - path) + 1 < prefix_len ||
        strncmp(ref + 1 - prefix_len, APPROVE_PREFIX, prefix_len) != 0)
        return false;
    ref++;
    if (strlen(ref) != CIBA_REF_LEN)
        return false;
    for (const char *p = ref; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return false;
    memcpy(ctx->ref, ref, CIBA_REF_LEN + 1);
    util_sha256_hex(ctx->ref, CIBA_REF_LEN, ctx->ref_hash);
    return true;
}

/* Refuses form posts made from other sites. Browsers label a POST with Sec-Fetch-Site;
 * under this page's Referrer-Policy: no-referrer they send "Origin: null" even for a
 * same-origin form, so Origin alone cannot tell our own page from another site. Without
 * either header (curl, older browsers) the post is accepted: it still needs the
 * unguessable link and, to approve, the code. */
static bool origin_allowed(const struct server_req *sr)
{
    const char *site = server_req_header(sr, "Sec-Fetch-Site");
    const char *origin = server_req_header(sr, "Origin");
    const char *issuer = server_config->issuer;
    const char *host = strstr(issuer, "://");
    const char *path;
    size_t origin_len;

    if (site)
        return strcmp(site, "same-origin") == 0 || strcmp(site, "none") == 0;
    if (!origin || strcmp(origin, "null") == 0)
        return true;
    path = host ? strchr(host + 3, '/') : NULL;
    origin_len = path ? (size_t)(path - issuer) : strlen(issuer);
    return strlen(origin) == origin_len && strncmp(origin, issuer, origin_len) == 0;
}

static enum approve_action parse_action(const char *value)
{
    if (!value)
        return ACTION_SHOW;
    if (strcmp(value, "approve") == 0)
        return ACTION_APPROVE;
    if (strcmp(value, "deny") == 0)
        return ACTION_DENY;
    if (strcmp(value, "resend") == 0)
        return ACTION_RESEND;
    return ACTION_SHOW;
}

void ciba_approve_handle(struct server_req *sr)
{
    struct approve_ctx *ctx = util_calloc(1, sizeof(*ctx));
    const char *error;

    ctx->sr = sr;
    if (!parse_ref(ctx)) {
        finish_message(ctx, 404, "Link not valid",
                       "This approval link is not valid. Check the SMS you received.");
        return;
    }
    if (strcmp(server_req_method(sr), "POST") != 0) {
        reload_and_render(ctx);
        return;
    }

    if (!origin_allowed(sr)) {
        finish_message(ctx, 403, "Not allowed",
                       "This form must be sent from its own page.");
        return;
    }
    if (server_form_parse(sr, &ctx->form, &error) != 0) {
        finish_message(ctx, 400, "Invalid form", error);
        return;
    }
    ctx->action = parse_action(server_form_get(&ctx->form, "action"));
    if (ctx->action == ACTION_SHOW) {
        finish_message(ctx, 400, "Invalid form",
                       "The form must say approve, deny or resend.");
        return;
    }
    start_post(ctx);
}
