/* token.c - the token endpoint for the CIBA grant (CIBA Core 1.0 section 10)
 * SPDX-License-Identifier: MIT
 *
 * The flow: handle -> on_client_authenticated -> on_polled -> issue tokens. Whether a
 * poll is pending, too fast, denied, expired or redeems the grant is decided by one
 * atomic statement in storage, so concurrent polls of one approved request yield
 * exactly one token response.
 */
#include "oauth/oauth.h"

#include <string.h>

#include <openssl/crypto.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

#define AUTH_REQ_ID_MAX_LEN 128
#define JTI_BYTES           16
#define CLAIM_AUTH_REQ_ID   "urn:openid:params:jwt:claim:auth_req_id"

struct token_ctx {
    struct server_req *sr;
    struct server_form form;
    struct oauth_client *client;
    const char *auth_req_id; /* borrowed from form */
};

static void token_free(struct token_ctx *ctx)
{
    server_form_free(&ctx->form);
    oauth_client_free(ctx->client);
    free(ctx);
}

static void finish_error(struct token_ctx *ctx, enum oauth_err err,
                         const char *description)
{
    oauth_reply_error(ctx->sr, OAUTH_EP_TOKEN, err, description);
    token_free(ctx);
}

/* The amr values (RFC 8176) and acr of an approval by SMS one-time code. */
static json_t *sms_otp_amr(void)
{
    return json_pack("[s, s]", "sms", "otp");
}

/* The RFC 9068 access token: bound to the approved scope and this client. */
static char *issue_access_token(const struct oauth_keyset *ks,
                                const struct oauth_grant *grant, int64_t now)
{
    const struct server_config *cfg = server_config;
    char *jti = util_random_token(JTI_BYTES);
    json_t *claims;
    char *token;

    /* One configured audience for every token: RFC 9068 section 3 asks for a default
     * resource when the request names none, and resource indicators (RFC 8707) are
     * not supported yet. */
    const char *audience =
        cfg->access_token_audience ? cfg->access_token_audience : cfg->issuer;

    claims = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:s, s:o}", "iss",
                       cfg->issuer, "sub", grant->subject, "aud", audience, "client_id",
                       grant->client_id, "scope", grant->scope, "iat", (json_int_t)now,
                       "exp", (json_int_t)(now + cfg->access_token_lifetime), "jti", jti,
                       "auth_time", (json_int_t)grant->auth_time, "acr",
                       OAUTH_ACR_SMS_OTP, "amr", sms_otp_amr());
    free(jti);
    if (!claims)
        return NULL;
    /* A certificate-bound token (RFC 8705 section 3.1); token_type stays Bearer. */
    if (grant->cnf_x5t_s256)
        json_object_set_new(claims, "cnf",
                            json_pack("{s:s}", "x5t#S256", grant->cnf_x5t_s256));
    token = oauth_jws_sign(ks, "at+jwt", claims);
    json_decref(claims);
    return token;
}

/* The ID token (OpenID Connect Core section 2, as CIBA Core 1.0 section 10.1.1 adds
 * the auth_req_id claim). */
static char *issue_id_token(const struct oauth_keyset *ks,
                            const struct oauth_grant *grant, const char *access_token,
                            int64_t now)
{
    const struct server_config *cfg = server_config;
    char *at_hash = oauth_half_hash(access_token);
    json_t *claims;
    char *token;

    claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:o, s:s, s:s}", "iss",
                       cfg->issuer, "sub", grant->subject, "aud", grant->client_id, "iat",
                       (json_int_t)now, "exp", (json_int_t)(now + cfg->id_token_lifetime),
                       "auth_time", (json_int_t)grant->auth_time, "acr",
                       OAUTH_ACR_SMS_OTP, "amr", sms_otp_amr(), "at_hash", at_hash,
                       CLAIM_AUTH_REQ_ID, grant->auth_req_id);
    free(at_hash);
    if (!claims)
        return NULL;
    token = oauth_jws_sign(ks, "JWT", claims);
    json_decref(claims);
    return token;
}

/* Frees a token after overwriting it, since freed heap memory may be read later. */
static void token_wipe_free(char *token)
{
    if (token) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
}

json_t *oauth_token_response_new(const struct oauth_keyset *ks,
                                 const struct oauth_grant *grant)
{
    int64_t now = util_now_s();
    char *access_token = issue_access_token(ks, grant, now);
    char *id_token = access_token ? issue_id_token(ks, grant, access_token, now) : NULL;
    json_t *body = NULL;

    if (access_token && id_token)
        body = json_pack("{s:s, s:s, s:i, s:s, s:s}", "access_token", access_token,
                         "token_type", "Bearer", "expires_in",
                         server_config->access_token_lifetime, "id_token", id_token,
                         "scope", grant->scope);
    token_wipe_free(access_token);
    token_wipe_free(id_token);
    return body;
}

static void finish_tokens(struct token_ctx *ctx, const struct storage_poll *poll)
{
    struct oauth_grant grant = {
        .client_id = ctx->client->client_id,
        .subject = poll->subject,
        .scope = poll->scope,
        .auth_req_id = ctx->auth_req_id,
        .auth_time = poll->auth_time,
        /* Bound to the certificate of this token request, which the client has now,
         * rather than to the one it used at the backchannel endpoint. */
        .cnf_x5t_s256 = ctx->client->cnf_x5t_s256,
    };
    json_t *body = oauth_token_response_new(ctx->sr->worker->keys, &grant);

    if (!body) {
        /* The grant is already redeemed: the client must start a new request. */
        rlog_error(ctx->sr->rid, ctx->client->client_id,
                   "signing tokens failed after redemption; no usable signing key?");
        finish_error(ctx, OAUTH_ERR_SERVER_ERROR, NULL);
        return;
    }
    server_req_add_header(ctx->sr, "Cache-Control", "no-store");
    server_req_add_header(ctx->sr, "Pragma", "no-cache");
    server_reply_json(ctx->sr, 200, body);
    token_free(ctx);
}

static void on_polled(void *arg, enum storage_status status,
                      const struct storage_poll *poll)
{
    struct token_ctx *ctx = arg;

    if (status != STORAGE_OK) {
        finish_error(ctx,
                     status == STORAGE_UNAVAILABLE ? OAUTH_ERR_TEMPORARILY_UNAVAILABLE
                                                   : OAUTH_ERR_SERVER_ERROR,
                     NULL);
        return;
    }

    switch (poll->outcome) {
    case STORAGE_POLL_REDEEMED:
        finish_tokens(ctx, poll);
        return;
    case STORAGE_POLL_PENDING:
        finish_error(ctx, OAUTH_ERR_AUTHORIZATION_PENDING, NULL);
        return;
    case STORAGE_POLL_SLOW_DOWN:
        finish_error(ctx, OAUTH_ERR_SLOW_DOWN, NULL);
        return;
    case STORAGE_POLL_DENIED:
        finish_error(ctx, OAUTH_ERR_ACCESS_DENIED, NULL);
        return;
    case STORAGE_POLL_EXPIRED:
        finish_error(ctx, OAUTH_ERR_EXPIRED_TOKEN, NULL);
        return;
    case STORAGE_POLL_INVALID:
        finish_error(ctx, OAUTH_ERR_INVALID_GRANT, NULL);
        return;
    }
}

/* An auth_req_id we issued is base64url of CSPRNG bytes; anything else cannot match. */
static bool is_auth_req_id_shaped(const char *id)
{
    if (strlen(id) > AUTH_REQ_ID_MAX_LEN)
        return false;
    for (const char *p = id; *p; p++)
        if (!(*p >= 'A' && *p <= 'Z') && !(*p >= 'a' && *p <= 'z') &&
            !(*p >= '0' && *p <= '9') && *p != '-' && *p != '_')
            return false;
    return true;
}

static void on_client_authenticated(void *arg, enum oauth_err err,
                                    const char *description, struct oauth_client *client)
{
    struct token_ctx *ctx = arg;
    const char *grant_type = server_form_get(&ctx->form, "grant_type");
    char id_hash[65];

    if (err != OAUTH_OK) {
        finish_error(ctx, err, description);
        return;
    }
    ctx->client = client;

    if (!grant_type) {
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST, "grant_type is required");
        return;
    }
    if (strcmp(grant_type, OAUTH_GRANT_TYPE_CIBA) != 0) {
        finish_error(ctx, OAUTH_ERR_UNSUPPORTED_GRANT_TYPE,
                     "only " OAUTH_GRANT_TYPE_CIBA " is supported");
        return;
    }
    if (!oauth_scope_has(client->grant_types, OAUTH_GRANT_TYPE_CIBA)) {
        finish_error(ctx, OAUTH_ERR_UNAUTHORIZED_CLIENT,
                     "the client is not registered for the CIBA grant");
        return;
    }
    /* A push client receives its tokens at its notification endpoint and may not use
     * the token endpoint (CIBA Core 1.0 section 11). */
    if (strcmp(client->backchannel_token_delivery_mode, "push") == 0) {
        finish_error(ctx, OAUTH_ERR_UNAUTHORIZED_CLIENT,
                     "a push mode client receives its tokens at its notification "
                     "endpoint");
        return;
    }

    ctx->auth_req_id = server_form_get(&ctx->form, "auth_req_id");
    if (!ctx->auth_req_id) {
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST, "auth_req_id is required");
        return;
    }
    if (!is_auth_req_id_shaped(ctx->auth_req_id)) {
        finish_error(ctx, OAUTH_ERR_INVALID_GRANT, NULL);
        return;
    }

    /* After the deadline reply the client would never see the tokens, so the grant
     * stays unredeemed for its next poll. */
    if (ctx->sr->replied) {
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
        return;
    }
    util_sha256_hex(ctx->auth_req_id, strlen(ctx->auth_req_id), id_hash);
    if (storage_auth_req_poll(ctx->sr->worker->db, id_hash, client->client_id,
                              ctx->sr->rid, on_polled, ctx) != 0)
        finish_error(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

void oauth_token_handle(struct server_req *sr)
{
    struct token_ctx *ctx = util_calloc(1, sizeof(*ctx));
    const char *description;

    ctx->sr = sr;
    if (server_form_parse(sr, &ctx->form, &description) != 0) {
        finish_error(ctx, OAUTH_ERR_INVALID_REQUEST, description);
        return;
    }
    oauth_client_authenticate(sr, &ctx->form, on_client_authenticated, ctx);
}
