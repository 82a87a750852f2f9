/* delivery.c - sending a one-time code by SMS and recording the outcome
 * SPDX-License-Identifier: MIT
 */
#include "ciba/ciba.h"
#include "ciba/ciba_int.h"

#include <string.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

/* State of one background delivery; it outlives the HTTP request that started it. It
 * counts as background work of its worker from ciba_code_deliver to delivery_free, so a
 * graceful stop waits for the outcome to be recorded. */
struct delivery_ctx {
    struct server_worker *worker;
    char *request_id;
    char *client_id;
    char *auth_req_id_hash;
    bool failed; /* the SMS failed and the request is being denied */
};

static void delivery_free(struct delivery_ctx *ctx)
{
    server_worker_background_end(ctx->worker);
    free(ctx->request_id);
    free(ctx->client_id);
    free(ctx->auth_req_id_hash);
    free(ctx);
}

static void on_outcome_recorded(void *arg, enum storage_status status)
{
    struct delivery_ctx *ctx = arg;

    if (status != STORAGE_OK && status != STORAGE_NOT_FOUND)
        rlog_error(ctx->request_id, ctx->client_id,
                   "recording the SMS delivery outcome failed (storage status %d)",
                   (int)status);
    /* Denying a ping or push request queued a notification. */
    if (status == STORAGE_OK && ctx->failed)
        ciba_notifier_kick(ctx->worker);
    delivery_free(ctx);
}

static void on_sms_sent(void *arg, bool ok, const char *reason)
{
    struct delivery_ctx *ctx = arg;
    struct storage_conn *db = ctx->worker->db;
    int rc;

    if (ok) {
        rc = storage_auth_req_code_sent(db, ctx->auth_req_id_hash, ctx->request_id,
                                        on_outcome_recorded, ctx);
    } else {
        rlog_warn(ctx->request_id, ctx->client_id,
                  "SMS delivery failed (%s); denying the authentication request", reason);
        ctx->failed = true;
        rc = storage_auth_req_fail_delivery(db, ctx->auth_req_id_hash, reason,
                                            ctx->request_id, on_outcome_recorded, ctx);
    }
    if (rc != 0) {
        /* TODO: the outcome is lost while the database is down: an undeliverable
         * request then stays pending until it expires. */
        rlog_error(ctx->request_id, ctx->client_id,
                   "database unavailable; SMS delivery outcome not recorded");
        delivery_free(ctx);
    }
}

/* Builds the SMS text: the requesting agent, the code, the link and then what for. The
 * binding_message comes from the client, so it goes last, on its own line: a message
 * that imitates a code or a link cannot come before the real ones. */
static char *build_text(const struct ciba_code_message *msg)
{
    const char *issuer = server_config->issuer;

    if (msg->binding_message)
        return util_asprintf("%s asks for your approval. Code %s. Review: %s/approve/%s\n"
                             "Their message: \"%s\"",
                             msg->client_name, msg->code, issuer, msg->ref,
                             msg->binding_message);
    return util_asprintf("%s asks for your approval. Code %s. Review: %s/approve/%s",
                         msg->client_name, msg->code, issuer, msg->ref);
}

void ciba_code_deliver(struct server_worker *w, const struct ciba_code_message *msg)
{
    struct delivery_ctx *ctx = util_calloc(1, sizeof(*ctx));
    char *text = build_text(msg);

    ctx->worker = w;
    server_worker_background_begin(w);
    ctx->request_id = util_strdup(msg->request_id);
    ctx->client_id = util_strdup(msg->client_id);
    ctx->auth_req_id_hash = util_strdup(msg->auth_req_id_hash);

    sms_send(w->sms, ctx->request_id, msg->phone_number, text, on_sms_sent, ctx);

    /* The text holds the code: wipe it before freeing. */
    memset(text, 0, strlen(text));
    free(text);
}

void ciba_code_hmac(const char *auth_req_id_hash, int generation, const char *code,
                    unsigned char out[SMS_OTP_HMAC_LEN])
{
    const char *secret = server_config->secret;

    sms_otp_hmac((const unsigned char *)secret, strlen(secret), auth_req_id_hash,
                 generation, code, out);
}

bool ciba_code_matches(const char *auth_req_id_hash, int generation, const char *code,
                       const unsigned char *hmac, size_t hmac_len)
{
    const char *secret = server_config->secret;

    return sms_otp_verify((const unsigned char *)secret, strlen(secret), auth_req_id_hash,
                          generation, code, hmac, hmac_len);
}
