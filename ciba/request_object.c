/* request_object.c - signed authentication requests: the request parameter of the
 * backchannel endpoint (CIBA Core 1.0 section 7.1.1)
 * SPDX-License-Identifier: MIT
 *
 * A request object goes through these steps. Check its shape and read its kid without
 * trusting it. Get the authenticated client's keys for the algorithm it registered:
 * its inline jwks, or its jwks_uri through the worker's cache, without blocking the
 * loop. Verify the signature, check the claims, and record the jti so the request
 * object cannot be sent twice. The caller then takes the authentication parameters
 * from the claims only and checks them exactly as it checks form fields.
 */
#include "ciba/request_object.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

/* The path of the backchannel endpoint after the issuer, also accepted as aud. */
#define BACKCHANNEL_PATH "/bc-authorize"
/* Maximum number of aud values looked at in an array. */
#define AUD_MAX 16
/* Maximum jti length, as the request_object_jti table allows. */
#define JTI_MAX 256

/* The authentication request parameters of CIBA Core 1.0 section 7.1, and the
 * extensions that also belong only inside a request object. */
static const char *const auth_params[] = {
    "scope",
    "client_notification_token",
    "acr_values",
    "login_hint_token",
    "id_token_hint",
    "login_hint",
    "binding_message",
    "user_code",
    "requested_expiry",
    "authorization_details",
    "request_context",
};

static const char DESC_UNAVAILABLE[] = "The client keys are unavailable, retry later";
static const char DESC_SIGNATURE[] =
    "the request object's signature does not verify with the client's registered keys";

void ciba_bc_params_from_form(const struct server_form *form, struct ciba_bc_params *out)
{
    out->scope = server_form_get(form, "scope");
    out->client_notification_token = server_form_get(form, "client_notification_token");
    out->acr_values = server_form_get(form, "acr_values");
    out->login_hint_token = server_form_get(form, "login_hint_token");
    out->id_token_hint = server_form_get(form, "id_token_hint");
    out->login_hint = server_form_get(form, "login_hint");
    out->binding_message = server_form_get(form, "binding_message");
    out->user_code = server_form_get(form, "user_code");
    out->requested_expiry = server_form_get(form, "requested_expiry");
}

const char *ciba_request_object_form_conflict(const struct server_form *form)
{
    for (size_t i = 0; i < ARRAY_LEN(auth_params); i++) {
        if (server_form_get(form, auth_params[i]))
            return auth_params[i];
    }
    return NULL;
}

/* ---- claims ------------------------------------------------------------------------ */

/* Reads a string claim into *out: NULL when absent or empty. Returns -1 for any other
 * JSON type, or for a string with a NUL character, which a C string would cut short. */
static int string_claim(const json_t *claims, const char *name, const char **out)
{
    const json_t *v = json_object_get(claims, name);

    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return -1;
    if (json_string_length(v) > 0)
        *out = json_string_value(v);
    return 0;
}

enum oauth_err ciba_bc_params_from_claims(const json_t *claims,
                                          char expiry_text[CIBA_EXPIRY_TEXT_LEN],
                                          struct ciba_bc_params *out,
                                          const char **description)
{
    const json_t *expiry = json_object_get(claims, "requested_expiry");
    const struct {
        const char *name;
        const char **field;
    } strings[] = {
        {"scope", &out->scope},
        {"client_notification_token", &out->client_notification_token},
        {"acr_values", &out->acr_values},
        {"login_hint_token", &out->login_hint_token},
        {"id_token_hint", &out->id_token_hint},
        {"login_hint", &out->login_hint},
        {"binding_message", &out->binding_message},
        {"user_code", &out->user_code},
    };

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < ARRAY_LEN(strings); i++) {
        if (string_claim(claims, strings[i].name, strings[i].field) != 0) {
            *description = "every authentication parameter in the request object must be "
                           "a string, except requested_expiry";
            return OAUTH_ERR_INVALID_REQUEST;
        }
    }
    /* CIBA Core 1.0 section 7.1.1 allows requested_expiry as a number or a string. */
    if (json_is_integer(expiry)) {
        snprintf(expiry_text, CIBA_EXPIRY_TEXT_LEN, "%lld",
                 (long long)json_integer_value(expiry));
        out->requested_expiry = expiry_text;
    } else if (string_claim(claims, "requested_expiry", &out->requested_expiry) != 0) {
        *description = "requested_expiry must be an integer or a string of digits";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    return OAUTH_OK;
}

/* True when aud names this server: the issuer or the backchannel endpoint URL. */
static bool aud_is_ours(const char *aud, const char *issuer)
{
    size_t n = strlen(issuer);

    if (strncmp(aud, issuer, n) != 0)
        return false;
    return aud[n] == '\0' || strcmp(aud + n, BACKCHANNEL_PATH) == 0;
}

static bool aud_ok(const json_t *aud, const char *issuer)
{
    size_t i;
    json_t *item;

    if (json_is_string(aud))
        return aud_is_ours(json_string_value(aud), issuer);
    if (!json_is_array(aud) || json_array_size(aud) > AUD_MAX)
        return false;
    json_array_foreach(aud, i, item)
    {
        if (json_is_string(item) && aud_is_ours(json_string_value(item), issuer))
            return true;
    }
    return false;
}

/* Reads a required NumericDate (RFC 7519 section 2): a JSON number of seconds, which
 * may have a fraction. Returns 0 and stores it in *out, or -1 when it is missing or not
 * a usable time. */
static int numeric_date(const json_t *claims, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(claims, name);
    double d;

    if (!json_is_number(v))
        return -1;
    d = json_number_value(v);
    /* Up to the year 5138: far enough, and safe to convert. */
    if (!isfinite(d) || d < 0 || d > 1e11)
        return -1;
    *out = (int64_t)d; /* d >= 0, so this is floor(d) */
    return 0;
}

static bool string_claim_is(const json_t *claims, const char *name, const char *value)
{
    const char *s = json_string_value(json_object_get(claims, name));

    return s && strcmp(s, value) == 0;
}

/* Checks exp, nbf and iat: all present, the request object valid now within the clock
 * skew, and a lifetime of at most CIBA_REQUEST_OBJECT_MAX_LIFETIME_S. */
static const char *check_times(const json_t *claims, int64_t now, int64_t *exp)
{
    const int64_t skew = OAUTH_JWT_SKEW_S;
    int64_t nbf, iat;

    if (numeric_date(claims, "exp", exp) != 0)
        return "the request object's exp is missing or not a number";
    if (numeric_date(claims, "iat", &iat) != 0)
        return "the request object's iat is missing or not a number";
    if (numeric_date(claims, "nbf", &nbf) != 0)
        return "the request object's nbf is missing or not a number";
    if (*exp + skew <= now)
        return "the request object has expired";
    if (nbf > now + skew)
        return "the request object is not valid yet (nbf)";
    if (iat > now + skew)
        return "the request object's iat is in the future";
    if (*exp <= nbf)
        return "the request object's exp is not after its nbf";
    if (*exp - nbf > CIBA_REQUEST_OBJECT_MAX_LIFETIME_S)
        return "the request object's lifetime (exp - nbf) is longer than 60 minutes";
    return NULL;
}

const char *ciba_request_object_check(const json_t *claims, const char *client_id,
                                      const char *issuer, int64_t now,
                                      struct ciba_request_object_jti *out)
{
    const json_t *jti = json_object_get(claims, "jti");
    const char *why;
    int64_t exp;

    if (!string_claim_is(claims, "iss", client_id))
        return "the request object's iss is missing or is not the client_id";
    if (json_object_get(claims, "client_id") &&
        !string_claim_is(claims, "client_id", client_id))
        return "the request object's client_id claim is not the authenticated client";
    if (!json_object_get(claims, "aud"))
        return "the request object's aud is missing";
    if (!aud_ok(json_object_get(claims, "aud"), issuer))
        return "the request object's aud is not the issuer of this server";
    why = check_times(claims, now, &exp);
    if (why)
        return why;
    if (!json_is_string(jti) || json_string_length(jti) == 0 ||
        json_string_length(jti) > JTI_MAX)
        return "the request object's jti is missing, empty or longer than 256 characters";
    /* OpenID Connect Core 1.0 section 6.1 forbids them inside a request object. */
    if (json_object_get(claims, "request") || json_object_get(claims, "request_uri"))
        return "a request object must not contain request or request_uri";
    out->jti = json_string_value(jti);
    /* Keep the jti until the skew no longer lets the request object pass. */
    out->expires_at = exp + OAUTH_JWT_SKEW_S;
    return NULL;
}

/* ---- verification ------------------------------------------------------------------ */

/* State of one verification, from the request until the callback. */
struct ro_ctx {
    struct server_req *sr;
    const char *client_id; /* borrowed from the client, which outlives the ctx */
    char *token;
    char *kid;    /* the header's kid, or NULL */
    unsigned alg; /* the one OAUTH_ALG_* bit the token must use */
    json_t *claims;
    ciba_request_object_cb cb;
    void *arg;
};

static void finish(struct ro_ctx *ctx, enum oauth_err err, const char *description)
{
    ciba_request_object_cb cb = ctx->cb;
    void *arg = ctx->arg;
    json_t *claims = err == OAUTH_OK ? ctx->claims : NULL;

    if (err != OAUTH_OK)
        json_decref(ctx->claims);
    free(ctx->token);
    free(ctx->kid);
    free(ctx);
    cb(arg, err, description, claims);
}

/* Rejects the request object with invalid_request and logs the reason. */
static void reject(struct ro_ctx *ctx, const char *description, const char *reason)
{
    rlog_info(ctx->sr->rid, ctx->client_id, "request object rejected: %s",
              reason ? reason : description);
    finish(ctx, OAUTH_ERR_INVALID_REQUEST, description);
}

static void on_jti_recorded(void *arg, enum storage_status status)
{
    struct ro_ctx *ctx = arg;

    switch (status) {
    case STORAGE_OK:
        rlog_debug(ctx->sr->rid, ctx->client_id, "request object verified (%s)",
                   oauth_jws_alg_name(ctx->alg));
        finish(ctx, OAUTH_OK, NULL);
        return;
    case STORAGE_CONFLICT:
        reject(ctx, "the request object was used before (its jti is not new)", NULL);
        return;
    case STORAGE_UNAVAILABLE:
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
        return;
    default:
        rlog_error(ctx->sr->rid, ctx->client_id,
                   "recording the request object's jti failed (storage status %d)",
                   (int)status);
        finish(ctx, OAUTH_ERR_SERVER_ERROR, NULL);
    }
}

/* Verifies the signature with set, checks the claims and records the jti. set may be
 * NULL, with error saying why there are no keys. */
static void verify_with(struct ro_ctx *ctx, const struct oauth_jwk_set *set,
                        const char *error)
{
    struct ciba_request_object_jti jti;
    const char *reason = error;
    const char *why;

    if (set)
        ctx->claims = oauth_jws_verify_with(set, ctx->token, ctx->alg, NULL, &reason);
    if (!ctx->claims) {
        reject(ctx, DESC_SIGNATURE, reason ? reason : "no keys");
        return;
    }
    why = ciba_request_object_check(ctx->claims, ctx->client_id, server_config->issuer,
                                    util_now_s(), &jti);
    if (why) {
        reject(ctx, why, NULL);
        return;
    }
    if (storage_request_object_record(ctx->sr->worker->db, ctx->client_id, jti.jti,
                                      jti.expires_at, on_jti_recorded, ctx) != 0)
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);
}

static void on_remote_keys(void *arg, const struct oauth_jwk_set *set, const char *error)
{
    verify_with(arg, set, error);
}

/* The algorithms accepted in request objects: RS256 only with the setting. */
static unsigned algs_enabled(void)
{
    unsigned algs = OAUTH_ALG_ES256 | OAUTH_ALG_PS256;

    if (server_config->request_object_allow_rs256)
        algs |= OAUTH_ALG_RS256;
    return algs;
}

/* Settles the one algorithm of the client's request objects. A client that registered
 * no backchannel_authentication_request_signing_alg may still sign with the key and
 * alg of its private_key_jwt authentication. Returns 0 with the reason in *why. */
static unsigned client_alg(const struct oauth_client *client, const char **why)
{
    const char *registered = client->backchannel_authentication_request_signing_alg;
    unsigned alg;

    if (!client->jwks && !client->jwks_uri) {
        *why = "the client has no registered keys to verify a request object with";
        return 0;
    }
    if (registered) {
        alg = oauth_jws_alg_parse(registered) & algs_enabled();
        if (!alg)
            *why = "the client's registered request signing alg is not enabled on this "
                   "server";
        return alg;
    }
    alg = oauth_jws_alg_parse(client->token_endpoint_auth_signing_alg) & algs_enabled();
    if (!alg)
        *why = "the client registered no request signing alg and its key alg is not "
               "accepted for request objects (register --request-signing-alg)";
    return alg;
}

/* Checks the shape of the token before any key is loaded, and reads its kid. */
static const char *read_token(struct ro_ctx *ctx, const char *request)
{
    size_t len = strnlen(request, CIBA_REQUEST_OBJECT_MAX_LEN + 1);
    json_t *header = NULL, *claims = NULL;
    const json_t *kid;
    size_t dots = 0;

    if (len > CIBA_REQUEST_OBJECT_MAX_LEN)
        return "the request object is too long";
    for (size_t i = 0; i < len; i++)
        dots += request[i] == '.';
    /* A JWE in compact form has five parts (RFC 7516 section 7.1). */
    if (dots == 4)
        return "encrypted request objects are not supported: sign it (JWS) instead";
    if (oauth_jws_peek(request, &header, &claims) != 0)
        return "the request object is not a compact JWS of base64url-encoded JSON "
               "objects";
    kid = json_object_get(header, "kid");
    if (json_is_string(kid))
        ctx->kid = util_strdup(json_string_value(kid));
    json_decref(header);
    json_decref(claims);
    if (kid && !ctx->kid)
        return "the request object's kid is not a string";
    ctx->token = util_strdup(request);
    return NULL;
}

void ciba_request_object_verify(struct server_req *sr, const struct oauth_client *client,
                                const char *request, ciba_request_object_cb cb, void *arg)
{
    struct ro_ctx *ctx = util_calloc(1, sizeof(*ctx));
    struct oauth_jwks_cache *cache = sr->worker->jwks;
    const struct oauth_jwk_set *set;
    const char *why = NULL;
    char err[200];

    ctx->sr = sr;
    ctx->client_id = client->client_id;
    ctx->cb = cb;
    ctx->arg = arg;

    why = read_token(ctx, request);
    if (why) {
        reject(ctx, why, NULL);
        return;
    }
    ctx->alg = client_alg(client, &why);
    if (!ctx->alg) {
        reject(ctx, why, NULL);
        return;
    }
    if (!cache) {
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE);
        return;
    }
    if (client->jwks) {
        set = oauth_jwks_cache_inline(cache, client->jwks, ctx->alg, err, sizeof(err));
        verify_with(ctx, set, set ? NULL : err);
        return;
    }
    /* Cached keys verify at once; otherwise the fetch continues in on_remote_keys. */
    set = oauth_jwks_cache_peek(cache, client->jwks_uri, ctx->alg, ctx->kid);
    if (set)
        verify_with(ctx, set, NULL);
    else
        oauth_jwks_cache_get(cache, client->jwks_uri, ctx->alg, ctx->kid, on_remote_keys,
                             ctx);
}
