/* bc_authorize.c - the backchannel authentication endpoint (CIBA Core 1.0 section 7)
 * SPDX-License-Identifier: MIT
 *
 * The flow, one callback per step, in the order they run:
 *   handle -> on_client_authenticated [-> on_request_object_verified]
 *          [-> on_hint_token_verified] -> on_user_found
 *   [-> on_user_code_checked] -> on_auth_req_stored -> reply,
 * then the code goes out by SMS in the background (delivery.c). For a ping or push
 * client the request also stores its auth_req_id and client_notification_token, sealed,
 * for the notification sent when the request ends (notify.c).
 *
 * The authentication parameters come either from the form or, for a signed request,
 * only from the claims of the request object (request_object.c). Both sources fill one
 * struct ciba_bc_params, which check_request validates the same way.
 */
#include "ciba/ciba.h"
#include "ciba/ciba_int.h"
#include "ciba/request_object.h"

#include <string.h>
#include <time.h>

#include "oauth/oauth.h"
#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

#define MAX_HINT_LEN  255
#define MAX_SCOPE_LEN 1024
#define MAX_ACR_LEN   255

/* Seconds an id_token_hint's iat may lie in the future, for clocks of other instances. */
#define ID_TOKEN_HINT_SKEW_S 60

struct bc_ctx {
    struct server_req *sr;
    struct server_form form;
    struct oauth_client *client;

    /* The parameters as received, from the form or from the request object. */
    struct ciba_bc_params params;
    json_t *request_claims; /* the verified request object's claims, or NULL */
    char requested_expiry[CIBA_EXPIRY_TEXT_LEN];

    /* Validated request parameters. */
    char *scope; /* normalized: duplicates removed, single spaces */
    const char *login_hint;
    char *hint_subject;           /* the sub of a verified id_token_hint */
    const char *login_hint_token; /* verified in hint_token.c after the checks here */
    const char *binding_message;
    const char *acr_values;
    const char *notification_token; /* ping and push only; a bearer secret */
    const char *user_code;          /* only for clients registered for user codes */
    int expires_in;

    /* The user the hint names. */
    char *subject;
    char *phone_number;

    /* Generated for this request. */
    char *auth_req_id;
    char auth_req_id_hash[65];
    char *ref;
    char ref_hash[65];
    char code[SMS_OTP_DIGITS + 1];
};

static void bc_free(struct bc_ctx *ctx)
{
    server_form_free(&ctx->form);
    oauth_client_free(ctx->client);
    json_decref(ctx->request_claims);
    free(ctx->scope);
    free(ctx->hint_subject);
    free(ctx->subject);
    free(ctx->phone_number);
    free(ctx->auth_req_id);
    free(ctx->ref);
    memset(ctx->code, 0, sizeof(ctx->code));
    free(ctx);
}

/* Appends the "rejected" audit row of a refused request. The client is the one that
 * authenticated, or else the one the request claimed, so failed authentications are
 * traceable too. Nothing is recorded while the database is unreachable. */
static void audit_rejection(struct bc_ctx *ctx, enum oauth_err err)
{
    struct server_req *sr = ctx->sr;
    struct storage_audit row = {
        .request_id = sr->rid,
        .client_id = ctx->client ? ctx->client->client_id
                                 : (sr->client_id[0] ? sr->client_id : NULL),
        .subject = ctx->subject,
        .scope = ctx->scope,
        .action = "bc_authorize",
        .decision = "rejected",
        .detail = oauth_err_code(err),
    };

    if (err == OAUTH_ERR_TEMPORARILY_UNAVAILABLE)
        return;
    if (storage_audit_append(sr->worker->db, &row, NULL, NULL) != 0)
        rlog_warn(sr->rid, row.client_id, "audit row for a rejected request not written");
}

/* Sends an error reply and releases the request's state. */
static void finish_error(struct bc_ctx *ctx, enum oauth_err err, const char *description)
{
    audit_rejection(ctx, err);
    oauth_reply_error(ctx->sr, OAUTH_EP_BACKCHANNEL, err, description);
    bc_free(ctx);
}

static void finish_storage_error(struct bc_ctx *ctx, enum storage_status status)
{
    if (status == STORAGE_UNAVAILABLE)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
    else
        finish_error(ctx, OAUTH_ERR_SERVER_ERROR, NULL);
}

/* ---- parameter checks -------------------------------------------------------------- */

static bool is_scope_char(unsigned char c)
{
    /* scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), RFC 6749 section 3.3 */
    return c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

/* Checks scope against the grammar and the client's allowed scopes, and stores it with
 * duplicates removed. */
static enum oauth_err check_scope(struct bc_ctx *ctx, const char **description)
{
    const char *scope = ctx->params.scope;
    char *copy, *token, *save = NULL;
    bool has_openid = false;
    size_t len = 0;

    if (!scope) {
        *description = "scope is required";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (strlen(scope) > MAX_SCOPE_LEN) {
        *description = "scope is too long";
        return OAUTH_ERR_INVALID_SCOPE;
    }
    for (const char *p = scope; *p; p++) {
        if (*p == ' ' ? (p == scope || p[1] == '\0' || p[1] == ' ')
                      : !is_scope_char((unsigned char)*p)) {
            *description = "scope is malformed";
            return OAUTH_ERR_INVALID_SCOPE;
        }
    }

    copy = util_strdup(scope);
    ctx->scope = util_calloc(1, strlen(scope) + 1);
    for (token = strtok_r(copy, " ", &save); token; token = strtok_r(NULL, " ", &save)) {
        if (!oauth_scope_has(ctx->client->scope, token)) {
            free(copy);
            *description = "scope includes a value this client may not request";
            return OAUTH_ERR_INVALID_SCOPE;
        }
        if (oauth_scope_has(ctx->scope, token))
            continue;
        if (strcmp(token, "openid") == 0)
            has_openid = true;
        len += (size_t)sprintf(ctx->scope + len, "%s%s", len ? " " : "", token);
    }
    free(copy);

    if (!has_openid) {
        *description = "scope must include openid";
        return OAUTH_ERR_INVALID_SCOPE;
    }
    return OAUTH_OK;
}

/* True when the aud claim, a string or an array of strings, includes client_id. */
static bool aud_includes(const json_t *aud, const char *client_id)
{
    size_t i;
    json_t *value;

    if (json_is_string(aud))
        return strcmp(json_string_value(aud), client_id) == 0;
    if (!json_is_array(aud))
        return false;
    json_array_foreach(aud, i, value)
    {
        if (json_is_string(value) && strcmp(json_string_value(value), client_id) == 0)
            return true;
    }
    return false;
}

/* Checks an id_token_hint: an ID token that cibad issued to this client, signed by a
 * key it still publishes, at most id_token_hint_max_age seconds after its iat. An
 * expired ID token is accepted, because CIBA Core 1.0 lets an OP accept one as a hint,
 * and the age limit bounds how long it names a user. An ID token of another client is
 * unknown_user_id, as if its sub named nobody, so the reply reveals nothing about the
 * users of other clients. */
static enum oauth_err check_id_token_hint(struct bc_ctx *ctx, const char *token,
                                          const char **description)
{
    json_t *header = NULL;
    json_t *claims = oauth_jws_verify(ctx->sr->worker->keys, token, &header);
    json_t *iat, *exp;
    const char *iss, *sub, *typ;
    time_t now = time(NULL);
    enum oauth_err err = OAUTH_ERR_INVALID_REQUEST;

    if (!claims) {
        *description = "id_token_hint is not an ID token signed by this server";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    /* Access tokens are signed with the same keys; only an ID token is a hint. */
    typ = json_string_value(json_object_get(header, "typ"));
    if (!typ || strcmp(typ, "JWT") != 0) {
        *description = "id_token_hint is not an ID token";
        goto done;
    }
    iss = json_string_value(json_object_get(claims, "iss"));
    sub = json_string_value(json_object_get(claims, "sub"));
    iat = json_object_get(claims, "iat");
    exp = json_object_get(claims, "exp");
    if (!iss || strcmp(iss, server_config->issuer) != 0) {
        *description = "id_token_hint was not issued by this server";
        goto done;
    }
    if (!sub || sub[0] == '\0' || strlen(sub) > MAX_HINT_LEN || !json_is_integer(iat) ||
        !json_is_integer(exp)) {
        *description = "id_token_hint lacks sub, iat or exp";
        goto done;
    }
    if (json_integer_value(iat) > (json_int_t)now + ID_TOKEN_HINT_SKEW_S ||
        (json_int_t)now - json_integer_value(iat) >
            server_config->id_token_hint_max_age) {
        *description = "id_token_hint is too old or not yet valid";
        goto done;
    }
    if (!aud_includes(json_object_get(claims, "aud"), ctx->client->client_id)) {
        *description = "id_token_hint does not name a known user";
        err = OAUTH_ERR_UNKNOWN_USER_ID;
        goto done;
    }
    ctx->hint_subject = util_strdup(sub);
    err = OAUTH_OK;

done:
    json_decref(header);
    json_decref(claims);
    return err;
}

/* Exactly one hint (CIBA Core 1.0 section 7.1): login_hint, id_token_hint or
 * login_hint_token. */
static enum oauth_err check_hints(struct bc_ctx *ctx, const char **description)
{
    const char *login_hint = ctx->params.login_hint;
    const char *id_token_hint = ctx->params.id_token_hint;
    const char *login_hint_token = ctx->params.login_hint_token;
    int hints = !!login_hint + !!id_token_hint + !!login_hint_token;

    if (hints != 1) {
        *description = "exactly one of login_hint, id_token_hint and login_hint_token "
                       "is required";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (login_hint_token) {
        ctx->login_hint_token = login_hint_token;
        return OAUTH_OK;
    }
    if (id_token_hint)
        return check_id_token_hint(ctx, id_token_hint, description);
    if (strlen(login_hint) > MAX_HINT_LEN) {
        *description = "login_hint is too long";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    ctx->login_hint = login_hint;
    return OAUTH_OK;
}

/* Invisible format characters (Unicode category Cf), which would let the text shown
 * differ from the text the client sent: soft hyphen, zero-width characters, direction
 * marks and overrides, tags. */
static const unsigned long format_ranges[][2] = {
    {0x00ad, 0x00ad},   {0x0600, 0x0605},   {0x061c, 0x061c},   {0x06dd, 0x06dd},
    {0x070f, 0x070f},   {0x0890, 0x0891},   {0x08e2, 0x08e2},   {0x180e, 0x180e},
    {0x200b, 0x200f},   {0x202a, 0x202e},   {0x2060, 0x2064},   {0x2066, 0x206f},
    {0xfeff, 0xfeff},   {0xfff9, 0xfffb},   {0x110bd, 0x110bd}, {0x110cd, 0x110cd},
    {0x13430, 0x1343f}, {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a}, {0xe0001, 0xe0001},
    {0xe0020, 0xe007f},
};

/* Rejects what cannot be shown faithfully in an SMS or on the page: control characters,
 * line and paragraph separators, format characters, private-use characters (their
 * glyphs depend on the phone) and noncharacters. */
static bool is_displayable(unsigned long cp)
{
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
        return false;
    if (cp == 0x2028 || cp == 0x2029)
        return false;
    for (size_t i = 0; i < ARRAY_LEN(format_ranges); i++)
        if (cp >= format_ranges[i][0] && cp <= format_ranges[i][1])
            return false;
    if ((cp >= 0xe000 && cp <= 0xf8ff) || cp >= 0xf0000)
        return false;
    if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe)
        return false;
    return true;
}

static enum oauth_err check_binding_message(struct bc_ctx *ctx, const char **description)
{
    const char *message = ctx->params.binding_message;
    const char *p, *end;
    int chars = 0;

    if (!message)
        return OAUTH_OK;
    end = message + strlen(message);
    for (p = message; p < end; chars++) {
        int32_t cp = util_utf8_next(&p, end);

        if (cp < 0 || !is_displayable((unsigned long)cp)) {
            *description = "binding_message contains a character that cannot be shown";
            return OAUTH_ERR_INVALID_BINDING_MESSAGE;
        }
    }
    if (chars > server_config->binding_message_max) {
        *description = "binding_message is too long";
        return OAUTH_ERR_INVALID_BINDING_MESSAGE;
    }
    ctx->binding_message = message;
    return OAUTH_OK;
}

/* requested_expiry is a positive integer of seconds; we clamp it to the configured
 * range (CIBA Core 1.0 section 7.1 lets the server choose). */
static enum oauth_err check_expiry(struct bc_ctx *ctx, const char **description)
{
    const char *text = ctx->params.requested_expiry;
    const struct server_config *cfg = server_config;
    int64_t requested;

    ctx->expires_in = cfg->auth_req_default_expiry;
    if (!text)
        return OAUTH_OK;
    if (util_parse_int64(text, 1, INT32_MAX, &requested) != 0) {
        *description = "requested_expiry must be a positive integer of seconds";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (requested < cfg->auth_req_min_expiry)
        requested = cfg->auth_req_min_expiry;
    if (requested > cfg->auth_req_max_expiry)
        requested = cfg->auth_req_max_expiry;
    ctx->expires_in = (int)requested;
    return OAUTH_OK;
}

/* b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" (RFC 6750
 * section 2.1), the syntax CIBA Core 1.0 section 7.1 gives client_notification_token. */
static bool is_b64token(const char *s)
{
    const char *p = s;

    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
           (*p >= '0' && *p <= '9') || (*p && strchr("-._~+/", *p)))
        p++;
    if (p == s)
        return false;
    while (*p == '=')
        p++;
    return *p == '\0';
}

/* A ping or push client must send client_notification_token, the bearer token cibad
 * presents to its notification endpoint; a poll client's is ignored. The token is a
 * secret, so no description repeats it. */
static enum oauth_err check_notification_token(struct bc_ctx *ctx,
                                               const char **description)
{
    const char *token = ctx->params.client_notification_token;

    if (strcmp(ctx->client->backchannel_token_delivery_mode, "poll") == 0)
        return OAUTH_OK;
    if (!token) {
        *description = "client_notification_token is required in ping and push mode";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (strlen(token) > CIBA_NOTIFICATION_TOKEN_MAX) {
        *description = "client_notification_token is longer than 1024 characters";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (!is_b64token(token)) {
        *description = "client_notification_token must use the RFC 6750 b64token "
                       "characters";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    ctx->notification_token = token;
    return OAUTH_OK;
}

/* A client registered with backchannel_user_code_parameter must send user_code; from
 * any other client it is ignored. The code is a secret, so no description repeats it. */
static enum oauth_err check_user_code(struct bc_ctx *ctx, const char **description)
{
    const char *code = ctx->params.user_code;

    if (!ctx->client->backchannel_user_code_parameter)
        return OAUTH_OK;
    if (!code) {
        *description = "user_code is required for this client";
        return OAUTH_ERR_MISSING_USER_CODE;
    }
    if (strlen(code) > CIBA_USER_CODE_MAX) {
        *description = "user_code is invalid";
        return OAUTH_ERR_INVALID_USER_CODE;
    }
    ctx->user_code = code;
    return OAUTH_OK;
}

/* Checks the parameters in ctx->params, wherever they came from. */
static enum oauth_err check_request(struct bc_ctx *ctx, const char **description)
{
    enum oauth_err err;

    if ((err = check_scope(ctx, description)) != OAUTH_OK)
        return err;
    if ((err = check_hints(ctx, description)) != OAUTH_OK)
        return err;
    if ((err = check_binding_message(ctx, description)) != OAUTH_OK)
        return err;
    if ((err = check_expiry(ctx, description)) != OAUTH_OK)
        return err;
    if ((err = check_notification_token(ctx, description)) != OAUTH_OK)
        return err;
    if ((err = check_user_code(ctx, description)) != OAUTH_OK)
        return err;

    ctx->acr_values = ctx->params.acr_values;
    if (ctx->acr_values && strlen(ctx->acr_values) > MAX_ACR_LEN) {
        *description = "acr_values is too long";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    return OAUTH_OK;
}

/* ---- the flow ------------------------------------------------------------------------
 */

static void on_unseen_request_ended(void *arg, enum storage_status status)
{
    char *rid = arg;

    if (status != STORAGE_OK && status != STORAGE_NOT_FOUND)
        rlog_error(rid, NULL,
                   "ending a request stored after the deadline failed (storage status "
                   "%d); it stays pending until it expires",
                   (int)status);
    free(rid);
}

/* Ends a request stored after the deadline reply went out. The client got 503 and never
 * learns its auth_req_id, so no SMS is sent and the request is denied at once. */
static void end_unseen_request(struct bc_ctx *ctx)
{
    struct server_req *sr = ctx->sr;
    char *rid = util_strdup(sr->rid);

    rlog_warn(sr->rid, ctx->client->client_id,
              "request stored after the deadline reply; ending it without an SMS");
    if (storage_auth_req_fail_delivery(sr->worker->db, ctx->auth_req_id_hash,
                                       "stored after the deadline reply", rid,
                                       on_unseen_request_ended, rid) != 0) {
        rlog_error(rid, ctx->client->client_id,
                   "database unavailable; the request stays pending until it expires");
        free(rid);
    }
    finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

static void on_auth_req_stored(void *arg, enum storage_status status)
{
    struct bc_ctx *ctx = arg;
    struct server_req *sr = ctx->sr;
    struct server_worker *worker = sr->worker;
    json_t *body;

    if (status == STORAGE_LIMITED) {
        /* CIBA Core has no error code for a temporary limit, so the reply is
         * access_denied, and Retry-After gives the client the time when the per-phone
         * window has passed. */
        char retry_after[16];

        snprintf(retry_after, sizeof(retry_after), "%d",
                 server_config->sms_per_phone_window);
        server_req_add_header(sr, "Retry-After", retry_after);
        finish_error(ctx, OAUTH_ERR_ACCESS_DENIED,
                     "too many codes were sent to this user recently; try again later");
        return;
    }
    if (status != STORAGE_OK) {
        finish_storage_error(ctx, status);
        return;
    }
    if (sr->replied) {
        end_unseen_request(ctx);
        return;
    }

    struct ciba_code_message msg = {
        .request_id = sr->rid,
        .client_id = ctx->client->client_id,
        .client_name = ctx->client->client_name,
        .auth_req_id_hash = ctx->auth_req_id_hash,
        .phone_number = ctx->phone_number,
        .binding_message = ctx->binding_message,
        .code = ctx->code,
        .ref = ctx->ref,
    };

    /* The delivery copies what it needs and outlives this request. */
    ciba_code_deliver(worker, &msg);

    body = json_pack("{s:s, s:i}", "auth_req_id", ctx->auth_req_id, "expires_in",
                     ctx->expires_in);
    /* A push client never polls, so it gets no interval (CIBA Core 1.0 section 7.3). */
    if (strcmp(ctx->client->backchannel_token_delivery_mode, "push") != 0)
        json_object_set_new(body, "interval", json_integer(server_config->poll_interval));
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_reply_json(sr, 200, body);
    bc_free(ctx);
}

/* Creates the identifiers and the code, then stores the request. */
static void store_auth_req(struct bc_ctx *ctx)
{
    const struct server_config *cfg = server_config;
    unsigned char otp_hmac[SMS_OTP_HMAC_LEN];
    char *secrets = NULL;
    int rc;

    /* The client already got the deadline reply: store nothing, send nothing. */
    if (ctx->sr->replied) {
        rlog_info(ctx->sr->rid, ctx->client->client_id,
                  "deadline reply already sent; the request is not stored");
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
        return;
    }
    ctx->auth_req_id = util_random_token(CIBA_AUTH_REQ_ID_BYTES);
    util_sha256_hex(ctx->auth_req_id, strlen(ctx->auth_req_id), ctx->auth_req_id_hash);
    ctx->ref = util_random_token(CIBA_REF_BYTES);
    util_sha256_hex(ctx->ref, strlen(ctx->ref), ctx->ref_hash);
    sms_otp_generate(ctx->code);
    ciba_code_hmac(ctx->auth_req_id_hash, 0, ctx->code, otp_hmac);
    if (ctx->notification_token) {
        secrets =
            ciba_notification_secrets_seal(ctx->auth_req_id, ctx->notification_token);
        if (!secrets) {
            finish_error(ctx, OAUTH_ERR_SERVER_ERROR, NULL);
            return;
        }
    }

    struct storage_auth_req_new in = {
        .auth_req_id_hash = ctx->auth_req_id_hash,
        .ref_hash = ctx->ref_hash,
        .client_id = ctx->client->client_id,
        .subject = ctx->subject,
        .phone_number = ctx->phone_number,
        .scope = ctx->scope,
        .binding_message = ctx->binding_message,
        .acr_values = ctx->acr_values,
        .expires_in = ctx->expires_in,
        .interval = cfg->poll_interval,
        .otp_hmac = otp_hmac,
        .otp_hmac_len = sizeof(otp_hmac),
        .otp_lifetime = cfg->otp_lifetime,
        .sms_per_phone_max = cfg->sms_per_phone_max,
        .sms_per_phone_window = cfg->sms_per_phone_window,
        .request_id = ctx->sr->rid,
        .delivery_mode = ctx->client->backchannel_token_delivery_mode,
        .notification_secrets = secrets,
        /* Only a pushed token uses it; see ciba_push_payload_new. */
        .cnf_x5t_s256 = ctx->client->cnf_x5t_s256,
    };

    /* The statement copies its parameters when it is queued. */
    rc = storage_auth_req_create(ctx->sr->worker->db, &in, on_auth_req_stored, ctx);
    free(secrets);
    if (rc != 0)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

static void on_user_code_checked(void *arg, bool matched)
{
    struct bc_ctx *ctx = arg;
    struct server_req *sr = ctx->sr;

    /* The count is updated in the background: a lost update costs one more guess. */
    if (storage_user_code_result(sr->worker->db, ctx->subject, matched, NULL, NULL) != 0)
        rlog_warn(sr->rid, ctx->client->client_id, "user code result not recorded");
    if (!matched) {
        rlog_info(sr->rid, ctx->client->client_id, "wrong user code for a user");
        finish_error(ctx, OAUTH_ERR_INVALID_USER_CODE, "user_code is invalid");
        return;
    }
    store_auth_req(ctx);
}

/* Verifies the user code on the pool of ciba/user_code.c. A user with no code, or
 * with CIBA_USER_CODE_MAX_FAILURES wrong codes since it was set, never matches, and
 * takes as long as a wrong code. */
static void check_user_code_of(struct bc_ctx *ctx, const struct storage_user *user)
{
    const char *stored = user->user_code_failures < CIBA_USER_CODE_MAX_FAILURES
                             ? user->user_code_hash
                             : NULL;

    if (ciba_user_code_verify(ctx->sr->worker->base, stored, ctx->user_code,
                              on_user_code_checked, ctx) != 0)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

static void on_user_found(void *arg, enum storage_status status,
                          const struct storage_user *user)
{
    struct bc_ctx *ctx = arg;

    if (status == STORAGE_NOT_FOUND) {
        /* The description never repeats the hint: it may be a phone number. */
        finish_error(ctx, OAUTH_ERR_UNKNOWN_USER_ID,
                     ctx->hint_subject ? "id_token_hint does not name a known user"
                     : ctx->login_hint_token
                         ? "login_hint_token does not name a known user"
                         : "login_hint does not name a known user");
        return;
    }
    if (status != STORAGE_OK) {
        finish_storage_error(ctx, status);
        return;
    }

    ctx->subject = util_strdup(user->subject);
    ctx->phone_number = util_strdup(user->phone_number);
    if (ctx->user_code) {
        check_user_code_of(ctx, user);
        return;
    }
    store_auth_req(ctx);
}

/* The sub of an id_token_hint is looked up as a subject only. A login_hint that reads
 * as a phone number is looked up by its E.164 form, so every common way of writing one
 * number finds the same user; anything else is a username or a subject. */
static void find_user(struct bc_ctx *ctx)
{
    char e164[17];
    enum storage_hint_kind kind = STORAGE_HINT_NAME_OR_SUB;
    const char *value = ctx->login_hint;
    int rc;

    if (ctx->hint_subject) {
        kind = STORAGE_HINT_SUB;
        value = ctx->hint_subject;
    } else if (util_phone_normalize(ctx->login_hint, server_config->default_country_code,
                                    e164) == 0) {
        kind = STORAGE_HINT_PHONE;
        value = e164;
    }
    rc = storage_user_find(ctx->sr->worker->db, kind, value, on_user_found, ctx);
    if (rc != 0)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

static void on_hint_token_verified(void *arg, enum oauth_err err, const char *description,
                                   enum storage_hint_kind kind, const char *value)
{
    struct bc_ctx *ctx = arg;

    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    if (storage_user_find(ctx->sr->worker->db, kind, value, on_user_found, ctx) != 0)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

/* Validates the parameters, from either source, verifies a login_hint_token and goes
 * on to find the user. */
static void check_and_find_user(struct bc_ctx *ctx)
{
    const char *description = NULL;
    enum oauth_err err = check_request(ctx, &description);

    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    if (ctx->login_hint_token) {
        err = ciba_hint_token_verify(ctx->sr, ctx->login_hint_token,
                                     on_hint_token_verified, ctx, &description);
        if (err != OAUTH_OK)
            finish_error(ctx, err, description);
        return;
    }
    find_user(ctx);
}

static void on_request_object_verified(void *arg, enum oauth_err err,
                                       const char *description, json_t *claims)
{
    struct bc_ctx *ctx = arg;

    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    ctx->request_claims = claims;
    err = ciba_bc_params_from_claims(claims, ctx->requested_expiry, &ctx->params,
                                     &description);
    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    check_and_find_user(ctx);
}

/* Takes the parameters from the form, or verifies the request object that carries
 * them. A client registered with backchannel_authentication_request_signing_alg must
 * sign (CIBA Core 1.0 section 4). */
static void read_params(struct bc_ctx *ctx)
{
    const char *request = server_form_get(&ctx->form, "request");
    const char *conflict;

    if (server_form_get(&ctx->form, "request_uri")) {
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST,
                     "request_uri is not supported: send the request object itself in "
                     "request");
        return;
    }
    if (!request) {
        if (ctx->client->backchannel_authentication_request_signing_alg) {
            finish_error(ctx, OAUTH_ERR_INVALID_REQUEST,
                         "this client is registered to sign its requests: send the "
                         "parameters in a request object (request)");
            return;
        }
        ciba_bc_params_from_form(&ctx->form, &ctx->params);
        check_and_find_user(ctx);
        return;
    }
    conflict = ciba_request_object_form_conflict(&ctx->form);
    if (conflict) {
        rlog_info(ctx->sr->rid, ctx->client->client_id,
                  "request object rejected: %s is also a form field", conflict);
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST,
                     "with a request object, the authentication parameters must be sent "
                     "only inside it");
        return;
    }
    ciba_request_object_verify(ctx->sr, ctx->client, request, on_request_object_verified,
                               ctx);
}

static void on_client_authenticated(void *arg, enum oauth_err err,
                                    const char *description, struct oauth_client *client)
{
    struct bc_ctx *ctx = arg;

    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    ctx->client = client;

    if (!oauth_scope_has(client->grant_types, OAUTH_GRANT_TYPE_CIBA)) {
        finish_error(ctx, OAUTH_ERR_UNAUTHORIZED_CLIENT,
                     "the client is not registered for the CIBA grant");
        return;
    }
    read_params(ctx);
}

void ciba_bc_authorize_handle(struct server_req *sr)
{
    struct bc_ctx *ctx = util_calloc(1, sizeof(*ctx));
    const char *description;

    ctx->sr = sr;
    if (server_form_parse(sr, &ctx->form, &description) != 0) {
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST, description);
        return;
    }
    oauth_client_authenticate(sr, &ctx->form, on_client_authenticated, ctx);
}
