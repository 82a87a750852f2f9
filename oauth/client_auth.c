/* client_auth.c - client authentication by client_secret_basic, client_secret_post,
 * private_key_jwt, client_secret_jwt, tls_client_auth or self_signed_tls_client_auth
 * SPDX-License-Identifier: MIT
 *
 * A JWT client assertion (RFC 7523) goes through these steps. Read the form and peek at
 * the unverified claims to learn which client it claims to be. Load that client and
 * get its keys: its inline jwks, its jwks_uri through the worker's cache, or its sealed
 * secret. Verify the signature with the alg registered for the client, check the
 * claims, and record the jti so the assertion cannot be used twice. Every failure after
 * the form is read gives the client the same invalid_client text, and the log line says
 * why.
 *
 * A TLS client certificate (RFC 8705 section 2) is a method of its own: a request with
 * a certificate names its client by the client_id parameter and carries no other
 * credentials. tls_client_auth needs a certificate that chains to tls_client_ca_file
 * and has the registered subject member. self_signed_tls_client_auth needs a
 * certificate whose public key is in the client's jwks or jwks_uri.
 */
#include "oauth/oauth_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

/* client_id matches the column's CHECK in migrations/0001_initial.sql. The secret and
 * header limits are far above what `cibad client add` generates and only stop abuse. */
#define CLIENT_ID_MAX     128
#define SECRET_MAX        256
#define AUTHORIZATION_MAX 1024

/* One text for an unknown client and a wrong secret, so replies do not reveal which
 * client_id values exist. */
static const char DESC_FAILED[] = "Client authentication failed";
static const char DESC_NONE[] =
    "Client authentication is required: use client_secret_basic or client_secret_post";
static const char DESC_NO_SECRET[] =
    "Client credentials are missing: send the client_secret, a client assertion or a "
    "TLS client certificate";
static const char DESC_TWO_METHODS[] =
    "More than one client authentication method was used";
static const char DESC_ID_MISMATCH[] =
    "The client_id in the body differs from the one in the Authorization header";
static const char DESC_MALFORMED[] = "The Authorization header is malformed";
static const char DESC_TOO_LONG[] = "The Authorization header is too long";
static const char DESC_SCHEME[] =
    "Unsupported authentication scheme: use Basic or client_secret_post";
static const char DESC_ASSERTION_PAIR[] =
    "client_assertion and client_assertion_type must be sent together";
static const char DESC_ASSERTION_TYPE[] =
    "Unsupported client_assertion_type: use "
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
static const char DESC_WRONG_METHOD[] =
    "The client must use its registered token_endpoint_auth_method";
static const char DESC_UNAVAILABLE[] = "The client registry is unavailable, retry later";
static const char DESC_CERT_NO_CLIENT_ID[] =
    "client_id is required with a TLS client certificate";

enum auth_method {
    METHOD_BASIC,
    METHOD_POST,
    METHOD_ASSERTION, /* private_key_jwt or client_secret_jwt, as registered */
    METHOD_CERT,      /* tls_client_auth or self_signed_tls_client_auth, as registered */
};

static const char *const method_names[] = {
    [METHOD_BASIC] = "client_secret_basic",
    [METHOD_POST] = "client_secret_post",
    [METHOD_ASSERTION] = "client_assertion",
    [METHOD_CERT] = "a TLS client certificate",
};

/* State of one authentication, from the request until the callback. */
struct auth_ctx {
    struct server_req *sr;
    oauth_client_cb cb;
    void *arg;
    enum auth_method method;
    char client_id[CLIENT_ID_MAX + 1];
    char secret_hash[65];
    enum oauth_err err; /* a failure found before the lookup, sent from the loop */
    const char *description;
    /* METHOD_ASSERTION only: */
    char *assertion;             /* the compact JWS */
    char *kid;                   /* its header's kid, or NULL */
    unsigned alg;                /* the OAUTH_ALG_* bit registered for the client */
    struct oauth_client *client; /* the loaded client, until the end */
    json_t *header;              /* the assertion's header and claims, decoded once */
    json_t *claims;              /* by oauth_jws_peek; trusted once verified */
    /* METHOD_CERT only: */
    X509 *cert; /* the client certificate, parsed */
};

void oauth_secret_hash(const char *secret, char out[65])
{
    util_sha256_hex(secret, strlen(secret), out);
}

bool oauth_scope_has(const char *scope, const char *name)
{
    size_t n = name ? strlen(name) : 0;

    if (!scope || n == 0)
        return false;
    for (const char *p = scope; *p;) {
        size_t len = strcspn(p, " ");

        if (len == n && memcmp(p, name, n) == 0)
            return true;
        p += len;
        p += strspn(p, " ");
    }
    return false;
}

void oauth_client_free(struct oauth_client *c)
{
    if (!c)
        return;
    free(c->client_id);
    free(c->client_name);
    free(c->token_endpoint_auth_method);
    free(c->scope);
    free(c->backchannel_token_delivery_mode);
    free(c->grant_types);
    free(c->cnf_x5t_s256);
    free(c->jwks);
    free(c->jwks_uri);
    free(c->token_endpoint_auth_signing_alg);
    free(c->backchannel_authentication_request_signing_alg);
    free(c);
}

static char *strdup_or_empty(const char *s)
{
    return util_strdup(s ? s : "");
}

static struct oauth_client *client_copy(const struct storage_client *row)
{
    struct oauth_client *c = util_calloc(1, sizeof(*c));

    c->client_id = strdup_or_empty(row->client_id);
    c->client_name = strdup_or_empty(row->client_name);
    c->token_endpoint_auth_method = strdup_or_empty(row->token_endpoint_auth_method);
    c->scope = strdup_or_empty(row->scope);
    c->backchannel_token_delivery_mode =
        strdup_or_empty(row->backchannel_token_delivery_mode);
    c->grant_types = strdup_or_empty(row->grant_types);
    c->backchannel_user_code_parameter = row->backchannel_user_code_parameter;
    c->jwks = row->jwks ? util_strdup(row->jwks) : NULL;
    c->jwks_uri = row->jwks_uri ? util_strdup(row->jwks_uri) : NULL;
    c->token_endpoint_auth_signing_alg =
        row->token_endpoint_auth_signing_alg
            ? util_strdup(row->token_endpoint_auth_signing_alg)
            : NULL;
    c->backchannel_authentication_request_signing_alg =
        row->backchannel_authentication_request_signing_alg
            ? util_strdup(row->backchannel_authentication_request_signing_alg)
            : NULL;
    return c;
}

static void finish(struct auth_ctx *ctx, enum oauth_err err, const char *description,
                   struct oauth_client *client)
{
    oauth_client_cb cb = ctx->cb;
    void *arg = ctx->arg;

    OPENSSL_cleanse(ctx->secret_hash, sizeof(ctx->secret_hash));
    if (ctx->client != client)
        oauth_client_free(ctx->client);
    json_decref(ctx->header);
    json_decref(ctx->claims);
    free(ctx->assertion);
    free(ctx->kid);
    X509_free(ctx->cert);
    free(ctx);
    cb(arg, err, description, client);
}

static void on_failure_deferred(evutil_socket_t fd, short what, void *arg)
{
    struct auth_ctx *ctx = arg;

    (void)fd;
    (void)what;
    finish(ctx, ctx->err, ctx->description, NULL);
}

/* Reports a failure from the next loop iteration, because the callback must never run
 * inside oauth_client_authenticate. */
static void fail_later(struct auth_ctx *ctx, enum oauth_err err, const char *description)
{
    const struct timeval now = {0, 0};

    ctx->err = err;
    ctx->description = description;
    if (event_base_once(ctx->sr->worker->base, -1, EV_TIMEOUT, on_failure_deferred, ctx,
                        &now) != 0) {
        /* Only an allocation failure inside libevent gets here; like util_malloc,
         * treat it as fatal rather than break the callback contract. */
        log_error("event_base_once failed; aborting");
        abort();
    }
}

/* Checks a claimed client_id and secret and stores the id and the secret's hash in
 * ctx. Too long or invalid values cannot belong to a registered client. */
static enum oauth_err take_credentials(struct auth_ctx *ctx, const char *client_id,
                                       const char *secret, const char **description)
{
    /* PostgreSQL rejects a text parameter that is not UTF-8. */
    if (!client_id || !*client_id || strlen(client_id) > CLIENT_ID_MAX ||
        !util_utf8_valid(client_id, strlen(client_id))) {
        *description = DESC_FAILED;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    strcpy(ctx->client_id, client_id);
    if (!secret || !*secret) {
        *description = DESC_NO_SECRET;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    if (strlen(secret) > SECRET_MAX) {
        *description = DESC_FAILED;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    oauth_secret_hash(secret, ctx->secret_hash);
    return OAUTH_OK;
}

/* Reads "Basic base64(urlencode(id) ':' urlencode(secret))" (RFC 6749 section 2.3.1:
 * split at the first ':', then form-urldecode each part). A header that cannot be read
 * is a failed authentication by Basic, so it gets invalid_client, which the error
 * reply sends as 401 with WWW-Authenticate (RFC 6749 section 5.2). */
static enum oauth_err read_basic(struct auth_ctx *ctx, const char *header,
                                 const char *body_client_id, const char **description)
{
    char decoded[AUTHORIZATION_MAX], id[AUTHORIZATION_MAX], secret[AUTHORIZATION_MAX];
    size_t decoded_len = sizeof(decoded) - 1, id_len, secret_len;
    const char *token, *colon;
    enum oauth_err err = OAUTH_ERR_INVALID_CLIENT;

    *description = DESC_MALFORMED;
    /* The scheme name is case-insensitive (RFC 9110 section 11.1). */
    if (strncasecmp(header, "Basic", 5) != 0 || (header[5] != ' ' && header[5] != '\0')) {
        *description = DESC_SCHEME;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    token = header + 5;
    token += strspn(token, " ");
    if (util_b64_decode(token, strlen(token), decoded, &decoded_len) != 0)
        return err;
    decoded[decoded_len] = '\0';
    colon = memchr(decoded, ':', decoded_len);
    /* Each part is shorter than decoded, so id and secret hold its decoded form. */
    if (!colon || strlen(decoded) != decoded_len ||
        util_form_urldecode(decoded, (size_t)(colon - decoded), id, &id_len) != 0 ||
        util_form_urldecode(colon + 1, decoded_len - (size_t)(colon + 1 - decoded),
                            secret, &secret_len) != 0)
        goto out;

    err = take_credentials(ctx, id, secret, description);
    if (err == OAUTH_OK && body_client_id && strcmp(body_client_id, id) != 0) {
        *description = DESC_ID_MISMATCH;
        err = OAUTH_ERR_INVALID_REQUEST;
    }

out:
    OPENSSL_cleanse(decoded, sizeof(decoded));
    OPENSSL_cleanse(secret, sizeof(secret));
    return err;
}

/* Reads client_assertion and client_assertion_type, and takes the client_id from the
 * assertion's iss without trusting it yet: the lookup only finds the keys that will
 * verify it. A client_id parameter, when sent, must name the same client (RFC 7521
 * section 4.2). */
static enum oauth_err read_assertion(struct auth_ctx *ctx, const struct server_form *form,
                                     const char *client_id, const char **description)
{
    const char *type = server_form_get(form, "client_assertion_type");
    const char *assertion = server_form_get(form, "client_assertion");
    json_t *header = NULL, *claims = NULL;
    const char *iss, *sub, *kid, *why = NULL;
    enum oauth_err err = OAUTH_ERR_INVALID_CLIENT;

    *description = DESC_FAILED;
    if (!type || !assertion) {
        *description = DESC_ASSERTION_PAIR;
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (strcmp(type, OAUTH_ASSERTION_TYPE_JWT) != 0) {
        *description = DESC_ASSERTION_TYPE;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    if (oauth_jws_peek(assertion, &header, &claims) != 0) {
        rlog_info(ctx->sr->rid, NULL,
                  "client authentication failed: client_assertion is not a JWS");
        return err;
    }
    iss = json_string_value(json_object_get(claims, "iss"));
    sub = json_string_value(json_object_get(claims, "sub"));
    kid = json_string_value(json_object_get(header, "kid"));
    if (!iss || !*iss || strlen(iss) > CLIENT_ID_MAX ||
        !util_utf8_valid(iss, strlen(iss)))
        why = "the assertion has no usable iss";
    else if (!sub || strcmp(sub, iss) != 0)
        why = "the assertion's sub differs from its iss";
    else if (client_id && strcmp(client_id, iss) != 0)
        why = "the client_id parameter differs from the assertion's iss";
    if (iss && !why)
        strcpy(ctx->client_id, iss);
    else if (client_id && strlen(client_id) <= CLIENT_ID_MAX &&
             util_utf8_valid(client_id, strlen(client_id)))
        strcpy(ctx->client_id, client_id);
    if (why) {
        rlog_info(ctx->sr->rid, ctx->client_id[0] ? ctx->client_id : NULL,
                  "client authentication failed: %s", why);
    } else {
        ctx->assertion = util_strdup(assertion);
        ctx->kid = kid ? util_strdup(kid) : NULL;
        /* Kept for assertion_verify, which checks the signature over them. */
        ctx->header = json_incref(header);
        ctx->claims = json_incref(claims);
        err = OAUTH_OK;
    }
    json_decref(header);
    json_decref(claims);
    return err;
}

/* Takes the client_id of a request that authenticates by its TLS client certificate
 * (RFC 8705 section 2: the client_id parameter is required) and parses the
 * certificate. */
static enum oauth_err read_cert(struct auth_ctx *ctx, const char *client_id,
                                const char **description)
{
    size_t der_len = 0;
    const unsigned char *der = server_req_client_cert_der(ctx->sr, &der_len);

    ctx->method = METHOD_CERT;
    *description = DESC_FAILED;
    if (!client_id) {
        *description = DESC_CERT_NO_CLIENT_ID;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    if (strlen(client_id) > CLIENT_ID_MAX ||
        !util_utf8_valid(client_id, strlen(client_id)))
        return OAUTH_ERR_INVALID_CLIENT;
    strcpy(ctx->client_id, client_id);
    ctx->cert = d2i_X509(NULL, &der, (long)der_len);
    if (!ctx->cert) {
        rlog_error(ctx->sr->rid, ctx->client_id,
                   "the client certificate cannot be parsed again");
        return OAUTH_ERR_INVALID_CLIENT;
    }
    return OAUTH_OK;
}

/* Finds the one authentication method the request uses and reads its credentials. */
static enum oauth_err read_credentials(struct auth_ctx *ctx,
                                       const struct server_form *form,
                                       const char **description)
{
    const char *header = server_req_header(ctx->sr, "Authorization");
    const char *client_id = server_form_get(form, "client_id");
    const char *secret = server_form_get(form, "client_secret");
    bool assertion = server_form_get(form, "client_assertion") ||
                     server_form_get(form, "client_assertion_type");
    size_t der_len = 0;
    bool cert = server_req_client_cert_der(ctx->sr, &der_len) != NULL;

    /* A certificate with any other credentials is two methods (RFC 6749 section 2.3). */
    if (cert && (header || secret || assertion)) {
        *description = DESC_TWO_METHODS;
        return OAUTH_ERR_INVALID_REQUEST;
    }
    if (cert)
        return read_cert(ctx, client_id, description);
    if (header) {
        if (strlen(header) > AUTHORIZATION_MAX) {
            *description = DESC_TOO_LONG;
            return OAUTH_ERR_INVALID_CLIENT;
        }
        if (secret || assertion) {
            *description = DESC_TWO_METHODS;
            return OAUTH_ERR_INVALID_REQUEST;
        }
        ctx->method = METHOD_BASIC;
        return read_basic(ctx, header, client_id, description);
    }

    if (assertion) {
        if (secret) {
            *description = DESC_TWO_METHODS;
            return OAUTH_ERR_INVALID_REQUEST;
        }
        ctx->method = METHOD_ASSERTION;
        return read_assertion(ctx, form, client_id, description);
    }
    if (!client_id && !secret) {
        *description = DESC_NONE;
        return OAUTH_ERR_INVALID_CLIENT;
    }
    ctx->method = METHOD_POST;
    return take_credentials(ctx, client_id, secret, description);
}

/* ---- client assertions ------------------------------------------------------------ */

/* Fails an assertion: the client learns only DESC_FAILED, the log the reason. */
static void assertion_fail(struct auth_ctx *ctx, const char *reason)
{
    rlog_info(ctx->sr->rid, ctx->client_id, "client authentication failed: %s", reason);
    finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_FAILED, NULL);
}

static void on_jti_recorded(void *arg, enum storage_status status)
{
    struct auth_ctx *ctx = arg;
    struct oauth_client *client = ctx->client;

    switch (status) {
    case STORAGE_OK:
        rlog_debug(ctx->sr->rid, ctx->client_id, "client authenticated by %s",
                   client->token_endpoint_auth_method);
        finish(ctx, OAUTH_OK, NULL, client);
        return;
    case STORAGE_CONFLICT:
        assertion_fail(ctx, "the assertion's jti was used before (replay)");
        return;
    case STORAGE_UNAVAILABLE:
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE, NULL);
        return;
    default:
        rlog_error(ctx->sr->rid, ctx->client_id,
                   "recording the assertion's jti failed (storage status %d)",
                   (int)status);
        finish(ctx, OAUTH_ERR_SERVER_ERROR, oauth_err_description(OAUTH_ERR_SERVER_ERROR),
               NULL);
    }
}

/* Verifies the assertion with the client's keys, checks its claims and records its
 * jti. set may be NULL, with error saying why there are no keys. */
static void assertion_verify(struct auth_ctx *ctx, const struct oauth_jwk_set *set,
                             const char *error)
{
    struct oauth_assertion_claims out;
    const char *reason = error;

    if (!set ||
        !oauth_jws_verify_peeked(set, ctx->assertion, ctx->header, ctx->alg, &reason)) {
        assertion_fail(ctx, reason ? reason : "no keys");
        return;
    }
    reason = oauth_assertion_check(ctx->claims, ctx->client_id, server_config->issuer,
                                   util_now_s(), &out);
    if (reason) {
        assertion_fail(ctx, reason);
        return;
    }
    if (storage_client_assertion_record(ctx->sr->worker->db, ctx->client_id, out.jti,
                                        out.jti_expires_at, on_jti_recorded, ctx) != 0)
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE, NULL);
}

static void on_remote_keys(void *arg, const struct oauth_jwk_set *set, const char *error)
{
    assertion_verify(arg, set, error);
}

/* Verifies with the client's secret, opened with the server secret. */
static void verify_with_secret(struct auth_ctx *ctx, const char *sealed)
{
    unsigned char *secret = NULL;
    size_t len = 0;
    struct oauth_jwk_set *set = NULL;

    if (sealed && oauth_unseal(server_config->secret, OAUTH_CLIENT_SECRET_SEAL_LABEL,
                               sealed, &secret, &len) == 0) {
        set = oauth_jwk_set_hmac(secret, len);
        OPENSSL_cleanse(secret, len);
        free(secret);
    }
    if (!set) {
        rlog_error(ctx->sr->rid, ctx->client_id,
                   "the client's sealed secret cannot be opened: wrong server secret?");
        finish(ctx, OAUTH_ERR_SERVER_ERROR, oauth_err_description(OAUTH_ERR_SERVER_ERROR),
               NULL);
        return;
    }
    assertion_verify(ctx, set, NULL);
    oauth_jwk_set_free(set);
}

/* The algorithms this server verifies in client assertions: RS256 only when the
 * allow_rs256 setting is on. */
static unsigned algs_enabled(void)
{
    unsigned algs = OAUTH_ALG_ES256 | OAUTH_ALG_PS256 | OAUTH_ALG_HS256;

    if (server_config->allow_rs256)
        algs |= OAUTH_ALG_RS256;
    return algs;
}

/* Continues an assertion once its client is loaded: the registered method must be a
 * JWT method, and the keys come from the registration. */
static void assertion_start(struct auth_ctx *ctx, const struct storage_client *row)
{
    const char *method = row->token_endpoint_auth_method;
    bool secret_jwt = method && strcmp(method, "client_secret_jwt") == 0;
    struct oauth_jwks_cache *cache = ctx->sr->worker->jwks;
    const struct oauth_jwk_set *set;
    char err[200];

    if (!secret_jwt && (!method || strcmp(method, "private_key_jwt") != 0)) {
        assertion_fail(ctx, "the client is registered for a method without assertions");
        return;
    }
    ctx->alg = oauth_jws_alg_parse(row->token_endpoint_auth_signing_alg) & algs_enabled();
    if (!ctx->alg) {
        assertion_fail(ctx,
                       "the client's token_endpoint_auth_signing_alg is not enabled");
        return;
    }
    ctx->client = client_copy(row);
    if (secret_jwt) {
        verify_with_secret(ctx, row->client_secret_sealed);
        return;
    }
    if (!cache) {
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE, NULL);
        return;
    }
    if (row->jwks) {
        set = oauth_jwks_cache_inline(cache, row->jwks, ctx->alg, err, sizeof(err));
        assertion_verify(ctx, set, set ? NULL : err);
        return;
    }
    if (!row->jwks_uri) {
        assertion_fail(ctx, "the client has neither jwks nor jwks_uri");
        return;
    }
    /* Cached keys verify at once; otherwise the fetch continues in on_remote_keys. */
    set = oauth_jwks_cache_peek(cache, row->jwks_uri, ctx->alg, ctx->kid);
    if (set)
        assertion_verify(ctx, set, NULL);
    else
        oauth_jwks_cache_get(cache, row->jwks_uri, ctx->alg, ctx->kid, on_remote_keys,
                             ctx);
}

/* ---- TLS client certificates (RFC 8705) ------------------------------------------- */

/* Fails a certificate authentication: the client learns only DESC_FAILED. */
static void cert_fail(struct auth_ctx *ctx, const char *reason)
{
    rlog_info(ctx->sr->rid, ctx->client_id,
              "client authentication by certificate failed: %s", reason);
    finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_FAILED, NULL);
}

/* Completes a certificate authentication. The client keeps the certificate's
 * thumbprint, so its access tokens are bound to it (RFC 8705 section 3). */
static void cert_succeed(struct auth_ctx *ctx)
{
    struct oauth_client *client = ctx->client;

    ctx->client = NULL;
    client->cnf_x5t_s256 = util_strdup(server_req_client_cert_thumbprint(ctx->sr));
    rlog_debug(ctx->sr->rid, ctx->client_id, "client authenticated by %s",
               client->token_endpoint_auth_method);
    finish(ctx, OAUTH_OK, NULL, client);
}

/* self_signed_tls_client_auth: the certificate's public key must be registered. Chain
 * and validity dates are not checked (RFC 8705 section 2.2): the registration is what
 * the key is trusted by. set may be NULL, with error saying why there are no keys. */
static void cert_key_check(struct auth_ctx *ctx, const struct oauth_jwk_set *set,
                           const char *error)
{
    if (!set) {
        cert_fail(ctx, error ? error : "no keys");
        return;
    }
    if (!oauth_mtls_key_registered(ctx->cert, set)) {
        cert_fail(ctx, "the certificate's public key is not in the client's keys");
        return;
    }
    cert_succeed(ctx);
}

static void on_cert_keys(void *arg, const struct oauth_jwk_set *set, const char *error)
{
    cert_key_check(arg, set, error);
}

/* Continues a certificate authentication once its client is loaded. */
static void cert_start(struct auth_ctx *ctx, const struct storage_client *row)
{
    const char *method = row->token_endpoint_auth_method;
    struct oauth_jwks_cache *cache = ctx->sr->worker->jwks;
    const struct oauth_jwk_set *set;
    const char *reason;
    char err[200];

    if (method && strcmp(method, "tls_client_auth") == 0) {
        /* The TLS layer (or the proxy's header) verified the chain against
         * tls_client_ca_file, the validity dates included. */
        if (!server_req_client_cert_verified(ctx->sr)) {
            cert_fail(ctx, "the certificate does not chain to tls_client_ca_file");
            return;
        }
        reason = oauth_mtls_subject_check(ctx->cert, row);
        if (reason) {
            cert_fail(ctx, reason);
            return;
        }
        ctx->client = client_copy(row);
        cert_succeed(ctx);
        return;
    }
    if (!method || strcmp(method, "self_signed_tls_client_auth") != 0) {
        rlog_info(ctx->sr->rid, ctx->client_id,
                  "client authentication failed: used %s, registered %s",
                  method_names[ctx->method], method ? method : "(none)");
        finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_FAILED, NULL);
        return;
    }
    if (!cache) {
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE, NULL);
        return;
    }
    ctx->client = client_copy(row);
    if (row->jwks) {
        set = oauth_jwks_cache_inline(cache, row->jwks, 0, err, sizeof(err));
        cert_key_check(ctx, set, set ? NULL : err);
        return;
    }
    if (!row->jwks_uri) {
        cert_fail(ctx, "the client has neither jwks nor jwks_uri");
        return;
    }
    /* A certificate names no kid. A cached set of one key that contains the certificate's
     * key is used at once. Otherwise the set is fetched again, at most once per
     * jwks_uri_refetch_seconds, by asking for a kid that it lacks (the certificate's
     * thumbprint), so a client that rotated its key is accepted soon after. */
    set = oauth_jwks_cache_peek(cache, row->jwks_uri, 0, NULL);
    if (set && oauth_mtls_key_registered(ctx->cert, set)) {
        cert_succeed(ctx);
        return;
    }
    oauth_jwks_cache_get(cache, row->jwks_uri, 0,
                         server_req_client_cert_thumbprint(ctx->sr), on_cert_keys, ctx);
}

static void on_client_loaded(void *arg, enum storage_status status,
                             const struct storage_client *row)
{
    struct auth_ctx *ctx = arg;
    const char *rid = ctx->sr->rid;

    switch (status) {
    case STORAGE_OK:
        break;
    case STORAGE_NOT_FOUND:
        rlog_info(rid, ctx->client_id, "client authentication failed: unknown client_id");
        finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_FAILED, NULL);
        return;
    case STORAGE_UNAVAILABLE:
        finish(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE, NULL);
        return;
    default:
        rlog_error(rid, ctx->client_id, "loading the client failed (storage status %d)",
                   (int)status);
        finish(ctx, OAUTH_ERR_SERVER_ERROR, oauth_err_description(OAUTH_ERR_SERVER_ERROR),
               NULL);
        return;
    }

    if (ctx->method == METHOD_ASSERTION) {
        assertion_start(ctx, row);
        return;
    }
    if (ctx->method == METHOD_CERT) {
        cert_start(ctx, row);
        return;
    }
    if (!row->secret_hash || strlen(row->secret_hash) != 64 ||
        !util_ct_equal(row->secret_hash, ctx->secret_hash, 64)) {
        /* No throttle: cibad generates every secret (32 bytes from the CSPRNG, and no
         * command sets a chosen one), so online guessing cannot succeed, which is
         * the brute-force protection RFC 6749 section 10.10 requires. */
        rlog_info(rid, ctx->client_id, "client authentication failed: wrong secret");
        finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_FAILED, NULL);
        return;
    }
    /* Checked after the secret, so only the holder of the secret learns the reason. */
    if (!row->token_endpoint_auth_method ||
        strcmp(row->token_endpoint_auth_method, method_names[ctx->method]) != 0) {
        rlog_info(
            rid, ctx->client_id, "client authentication failed: used %s, registered %s",
            method_names[ctx->method],
            row->token_endpoint_auth_method ? row->token_endpoint_auth_method : "(none)");
        finish(ctx, OAUTH_ERR_INVALID_CLIENT, DESC_WRONG_METHOD, NULL);
        return;
    }
    finish(ctx, OAUTH_OK, NULL, client_copy(row));
}

void oauth_client_authenticate(struct server_req *sr, const struct server_form *form,
                               oauth_client_cb cb, void *arg)
{
    struct auth_ctx *ctx = util_calloc(1, sizeof(*ctx));
    const char *description = NULL;
    enum oauth_err err;

    ctx->sr = sr;
    ctx->cb = cb;
    ctx->arg = arg;

    err = read_credentials(ctx, form, &description);
    if (ctx->client_id[0])
        snprintf(sr->client_id, sizeof(sr->client_id), "%s", ctx->client_id);
    if (err != OAUTH_OK) {
        fail_later(ctx, err, description);
        return;
    }
    if (!sr->worker->db ||
        storage_client_get(sr->worker->db, ctx->client_id, on_client_loaded, ctx) != 0)
        fail_later(ctx, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, DESC_UNAVAILABLE);
}
