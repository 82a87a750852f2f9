/* hint_token.c - login_hint_token: a JWT in which an issuer the operator trusts names
 * the user (CIBA Core 1.0 sections 7.1 and 7.2)
 * SPDX-License-Identifier: MIT
 *
 * The flow, one callback per step:
 *   ciba_hint_token_verify -> on_issuer_found [-> on_issuer_keys] -> verify -> cb.
 * Nothing in the token is trusted before its signature checks out. Its iss only picks
 * the trusted issuer (registered with `cibad issuer add`), and its kid only picks that
 * issuer's key. The key alone fixes the algorithm, so "none", HS256 keyed with a
 * public key, or a signature of another curve never verify (oauth_jws_verify_with).
 * An unknown issuer gets the same reply as a bad signature, so the reply does not tell
 * which issuers are trusted.
 */
#include "ciba/ciba_int.h"

#include <ctype.h>
#include <string.h>

#include "oauth/oauth.h"
#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

/* Maximum length of an iss that is looked up, as the trusted_issuer table allows. */
#define ISS_MAX 255
/* Maximum token length: the maximum compact JWS length that oauth/jose.c verifies. */
#define HINT_TOKEN_MAX 16384
/* Maximum length of a sub or phone_number claim, as the app_user table allows. */
#define USER_CLAIM_MAX 255
/* Maximum length of an email claim, as the app_user table allows (RFC 5321 section
 * 4.5.3.1.3 limits a path to 256 octets, so an address to 254). */
#define EMAIL_MAX 254

/* The one description of every token that does not verify, whatever the reason. */
#define DESC_INVALID "login_hint_token is not a valid token of a trusted issuer"

struct hint_ctx {
    struct server_req *sr;
    char *token;
    char *iss;
    char *kid;        /* the header's kid, or NULL */
    char *user_claim; /* "sub", "phone_number" or "email", from the issuer's row */
    ciba_hint_token_cb cb;
    void *arg;
};

static void hint_free(struct hint_ctx *hc)
{
    free(hc->token);
    free(hc->iss);
    free(hc->kid);
    free(hc->user_claim);
    free(hc);
}

/* Calls the caller back once and frees the state. */
static void finish(struct hint_ctx *hc, enum oauth_err err, const char *description,
                   enum storage_hint_kind kind, const char *value)
{
    hc->cb(hc->arg, err, description, kind, value);
    hint_free(hc);
}

static void fail(struct hint_ctx *hc, enum oauth_err err, const char *description)
{
    finish(hc, err, description, STORAGE_HINT_SUB, NULL);
}

/* Logs why a token was rejected (never the token) and fails with DESC_INVALID. */
static void reject(struct hint_ctx *hc, const char *reason)
{
    rlog_info(hc->sr->rid, hc->sr->client_id[0] ? hc->sr->client_id : NULL,
              "login_hint_token rejected: %s", reason);
    fail(hc, OAUTH_ERR_INVALID_REQUEST, DESC_INVALID);
}

/* ---- claims ------------------------------------------------------------------------ */

/* Checks exp, nbf and iat with the clock skew of client assertions. exp is required,
 * because a hint without one would name the user forever. Returns OAUTH_OK, or the
 * error with *description set. */
static enum oauth_err check_times(const json_t *claims, const char **description)
{
    int64_t now = util_now_s(), exp = 0, nbf = 0, iat = 0;
    int has_exp = oauth_jwt_numeric_date(claims, "exp", &exp);
    int has_nbf = oauth_jwt_numeric_date(claims, "nbf", &nbf);
    int has_iat = oauth_jwt_numeric_date(claims, "iat", &iat);

    if (has_exp != 1 || has_nbf < 0 || has_iat < 0) {
        *description = "login_hint_token needs a numeric exp, and numeric nbf and iat "
                       "when present";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (exp + OAUTH_JWT_SKEW_S <= now) {
        *description = "login_hint_token has expired";
        return OAUTH_ERR_EXPIRED_LOGIN_HINT_TOKEN;
    }
    if (has_nbf && nbf > now + OAUTH_JWT_SKEW_S) {
        *description = "login_hint_token is not valid yet (nbf)";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (has_iat && iat > now + OAUTH_JWT_SKEW_S) {
        *description = "login_hint_token was issued in the future (iat)";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    return OAUTH_OK;
}

/* True when the token has no aud, or an aud (a string or an array of strings) that
 * names cibad's issuer. A token that an identity provider issued for another
 * audience must not name a user here. */
static bool audience_ok(const json_t *claims)
{
    const json_t *aud = json_object_get(claims, "aud");
    const char *issuer = server_config->issuer;
    const json_t *item;
    size_t i;

    if (!aud)
        return true;
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), issuer) == 0;
    if (!json_is_array(aud))
        return false;
    json_array_foreach(aud, i, item)
    {
        if (json_is_string(item) && strcmp(json_string_value(item), issuer) == 0)
            return true;
    }
    return false;
}

/* Turns the configured claim into a user lookup: a subject as it is, a phone number in
 * its E.164 form, an email address lower-cased. Writes the value to out (256 bytes).
 * Returns 0, or -1 when the claim is missing or cannot name a user. */
static int user_lookup(const json_t *claims, const char *user_claim,
                       enum storage_hint_kind *kind, char out[256])
{
    const json_t *v = json_object_get(claims, user_claim);
    const char *s = json_string_value(v);
    size_t len = s ? json_string_length(v) : 0;

    if (!s || len == 0 || len > USER_CLAIM_MAX || strlen(s) != len ||
        !util_utf8_valid(s, len))
        return -1;
    if (strcmp(user_claim, "phone_number") == 0) {
        *kind = STORAGE_HINT_PHONE;
        return util_phone_normalize(s, server_config->default_country_code, out);
    }
    if (strcmp(user_claim, "email") == 0) {
        if (len > EMAIL_MAX)
            return -1;
        *kind = STORAGE_HINT_EMAIL;
        for (size_t i = 0; i <= len; i++)
            out[i] = (char)tolower((unsigned char)s[i]);
        return 0;
    }
    *kind = STORAGE_HINT_SUB;
    memcpy(out, s, len + 1);
    return 0;
}

/* Verifies the token with the issuer's keys, then its times and the user claim. */
static void verify(struct hint_ctx *hc, const struct oauth_jwk_set *set)
{
    const char *reason = NULL, *description = NULL, *iss;
    json_t *claims = oauth_jws_verify_with(
        set, hc->token, oauth_issuer_algs(server_config->allow_rs256), NULL, &reason);
    enum storage_hint_kind kind = STORAGE_HINT_SUB;
    enum oauth_err err;
    char value[256];

    if (!claims) {
        reject(hc, reason ? reason : "no keys");
        return;
    }
    iss = json_string_value(json_object_get(claims, "iss"));
    if (!iss || strcmp(iss, hc->iss) != 0) {
        json_decref(claims);
        reject(hc, "iss changed between the first and the verified reading");
        return;
    }
    if (!audience_ok(claims)) {
        json_decref(claims);
        reject(hc, "its aud does not name this issuer");
        return;
    }
    err = check_times(claims, &description);
    if (err != OAUTH_OK) {
        rlog_info(hc->sr->rid, hc->sr->client_id, "login_hint_token of %.100s: %s",
                  hc->iss, description);
        json_decref(claims);
        fail(hc, err, description);
        return;
    }
    if (user_lookup(claims, hc->user_claim, &kind, value) != 0) {
        rlog_info(hc->sr->rid, hc->sr->client_id,
                  "login_hint_token of %.100s: its %s claim names no user", hc->iss,
                  hc->user_claim);
        json_decref(claims);
        fail(hc, OAUTH_ERR_UNKNOWN_USER_ID,
             "login_hint_token does not name a known user");
        return;
    }
    json_decref(claims);
    finish(hc, OAUTH_OK, NULL, kind, value);
}

/* ---- the flow ---------------------------------------------------------------------- */

/* The keys of an issuer's jwks_uri, from the worker's cache. A jwks_uri that is down,
 * slow or returns no JWKS is a fault on the issuer's side that the client can only wait
 * out, so it gets 503 temporarily_unavailable, not an error about its request. */
static void on_issuer_keys(void *arg, const struct oauth_jwk_set *set, const char *error)
{
    struct hint_ctx *hc = arg;

    if (!set) {
        rlog_warn(hc->sr->rid, hc->sr->client_id,
                  "no keys for login_hint_token issuer %.100s: %s", hc->iss,
                  error ? error : "unknown error");
        fail(hc, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
             "the keys of the login_hint_token issuer cannot be fetched now; try again "
             "later");
        return;
    }
    verify(hc, set);
}

static void on_issuer_found(void *arg, enum storage_status status,
                            const struct storage_issuer *issuer)
{
    struct hint_ctx *hc = arg;
    struct server_worker *w = hc->sr->worker;
    const struct oauth_jwk_set *set;
    char err[200];

    if (status == STORAGE_NOT_FOUND) {
        reject(hc, "its iss is not a trusted issuer");
        return;
    }
    if (status != STORAGE_OK) {
        fail(hc,
             status == STORAGE_UNAVAILABLE ? OAUTH_ERR_TEMPORARILY_UNAVAILABLE
                                           : OAUTH_ERR_SERVER_ERROR,
             NULL);
        return;
    }
    hc->user_claim = util_strdup(issuer->user_claim);
    if (issuer->jwks_uri) {
        oauth_jwks_cache_get(w->jwks, issuer->jwks_uri, 0, hc->kid, on_issuer_keys, hc);
        return;
    }
    set = oauth_jwks_cache_inline(w->jwks, issuer->jwks, 0, err, sizeof(err));
    if (!set) {
        /* `cibad issuer add` checked the keys, so this is the operator's to fix. */
        rlog_error(hc->sr->rid, hc->sr->client_id,
                   "the registered jwks of issuer %.100s does not load: %s", hc->iss,
                   err);
        fail(hc, OAUTH_ERR_SERVER_ERROR, NULL);
        return;
    }
    verify(hc, set);
}

enum oauth_err ciba_hint_token_verify(struct server_req *sr, const char *token,
                                      ciba_hint_token_cb cb, void *arg,
                                      const char **description)
{
    json_t *header = NULL, *claims = NULL;
    const json_t *kid;
    const char *iss;
    struct hint_ctx *hc;

    *description = DESC_INVALID;
    if (strnlen(token, HINT_TOKEN_MAX + 1) > HINT_TOKEN_MAX) {
        *description = "login_hint_token is too long";
        return OAUTH_ERR_INVALID_REQUEST;
    }
    /* Read without trust: iss and kid only choose the keys that verify the token. */
    if (oauth_jws_peek(token, &header, &claims) != 0) {
        rlog_info(sr->rid, sr->client_id, "login_hint_token rejected: not a compact JWS");
        return OAUTH_ERR_INVALID_REQUEST;
    }
    iss = json_string_value(json_object_get(claims, "iss"));
    kid = json_object_get(header, "kid");
    /* A \u0000 inside iss would make strlen stop short of the JSON string. */
    if (!iss || !*iss || strlen(iss) > ISS_MAX ||
        strlen(iss) != json_string_length(json_object_get(claims, "iss")) ||
        (kid && !json_is_string(kid))) {
        rlog_info(sr->rid, sr->client_id,
                  "login_hint_token rejected: no usable iss, or a kid that is not a "
                  "string");
        json_decref(header);
        json_decref(claims);
        return OAUTH_ERR_INVALID_REQUEST;
    }

    hc = util_calloc(1, sizeof(*hc));
    hc->sr = sr;
    hc->token = util_strdup(token);
    hc->iss = util_strdup(iss);
    hc->kid = kid ? util_strdup(json_string_value(kid)) : NULL;
    hc->cb = cb;
    hc->arg = arg;
    json_decref(header);
    json_decref(claims);
    if (storage_issuer_find(sr->worker->db, hc->iss, on_issuer_found, hc) != 0) {
        hint_free(hc);
        *description = NULL;
        return OAUTH_ERR_TEMPORARILY_UNAVAILABLE;
    }
    return OAUTH_OK;
}
