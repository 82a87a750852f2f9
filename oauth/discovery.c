/* discovery.c - the discovery document (OpenID Connect Discovery 1.0, RFC 8414) and the
 * JWKS endpoint
 * SPDX-License-Identifier: MIT
 */
#include "oauth/oauth.h"

#include <string.h>

#include "server/config.h"
#include "server/http.h"

/* Discovery changes only with the configuration; keys rotate, so the JWKS is cached for
 * a shorter time. A retired key stays published until every token it signed has
 * expired, so a cached JWKS never lacks a key that signed a live token. */
#define DISCOVERY_CACHE_CONTROL "public, max-age=300"
#define JWKS_CACHE_CONTROL      "public, max-age=60"

static json_t *string_array(const char *const *values, size_t n)
{
    json_t *a = json_array();

    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(values[i]));
    return a;
}

#define STRING_ARRAY(...)                                                                \
    string_array((const char *const[]){__VA_ARGS__},                                     \
                 sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* Builds the metadata from the issuer. Lists only what cibad implements: RS256 for
 * client assertions only with allow_rs256.
 *
 * authorization_endpoint is left out, as RFC 8414 section 2 allows when no supported
 * grant type uses it: cibad serves only the CIBA grant and has no authorization
 * endpoint. response_types_supported is left out on purpose, although RFC 8414
 * section 2 marks it REQUIRED. Its values are response_type values of the
 * authorization endpoint, so any value would advertise a flow cibad does not have, and
 * section 3.2 forbids an empty array. RFC 8414 erratum 7793 (reported, not verified)
 * asks to make the member required only with the authorization endpoint. NOTE: a
 * client that validates the metadata strictly may reject it for the missing member. */
static json_t *discovery_document(const struct server_config *cfg)
{
    const char *issuer = cfg->issuer;
    json_t *doc = json_object();
    json_t *auth_algs = STRING_ARRAY("ES256", "PS256");
    json_t *auth_methods = STRING_ARRAY("private_key_jwt", "client_secret_jwt",
                                        "client_secret_basic", "client_secret_post");
    /* A client certificate reaches cibad over its own TLS when it requests one, or in
     * the header of a trusted proxy. tls_client_auth also needs a CA to verify it. */
    bool certs =
        (cfg->tls_cert_file && cfg->tls_key_file && cfg->tls_request_client_cert) ||
        (cfg->tls_client_cert_header && cfg->trusted_proxies);

    json_object_set_new(doc, "issuer", json_string(issuer));
    json_object_set_new(doc, "token_endpoint", json_sprintf("%s/token", issuer));
    json_object_set_new(doc, "jwks_uri", json_sprintf("%s/jwks", issuer));
    json_object_set_new(doc, "backchannel_authentication_endpoint",
                        json_sprintf("%s/bc-authorize", issuer));
    json_object_set_new(doc, "backchannel_token_delivery_modes_supported",
                        STRING_ARRAY("poll", "ping", "push"));
    json_object_set_new(doc, "backchannel_user_code_parameter_supported", json_true());
    json_object_set_new(doc, "grant_types_supported",
                        STRING_ARRAY(OAUTH_GRANT_TYPE_CIBA));
    if (certs && cfg->tls_client_ca_file)
        json_array_append_new(auth_methods, json_string("tls_client_auth"));
    if (certs)
        json_array_append_new(auth_methods, json_string("self_signed_tls_client_auth"));
    json_object_set_new(doc, "token_endpoint_auth_methods_supported", auth_methods);
    /* Tokens of clients that authenticate by certificate are bound to it (RFC 8705
     * section 3.3). The endpoints are the same with and without a certificate, so
     * there are no mtls_endpoint_aliases. */
    if (certs)
        json_object_set_new(doc, "tls_client_certificate_bound_access_tokens",
                            json_true());
    /* The algorithms client assertions may use; HS256 is for client_secret_jwt only. */
    if (cfg->allow_rs256)
        json_array_append_new(auth_algs, json_string("RS256"));
    json_array_append_new(auth_algs, json_string("HS256"));
    json_object_set_new(doc, "token_endpoint_auth_signing_alg_values_supported",
                        auth_algs);
    json_object_set_new(doc, "subject_types_supported", STRING_ARRAY("public"));
    json_object_set_new(doc, "id_token_signing_alg_values_supported",
                        STRING_ARRAY("ES256"));
    json_object_set_new(doc, "scopes_supported", STRING_ARRAY("openid"));
    json_object_set_new(doc, "acr_values_supported", STRING_ARRAY(OAUTH_ACR_SMS_OTP));
    json_object_set_new(doc, "claims_supported",
                        STRING_ARRAY("sub", "iss", "aud", "exp", "iat", "auth_time",
                                     "acr", "amr",
                                     "urn:openid:params:jwt:claim:auth_req_id"));
    return doc;
}

/* Adds the members of signed authentication requests (CIBA Core 1.0 section 4): the
 * algorithms request objects may use (RS256 only with request_object_allow_rs256), and
 * request_parameter_supported, because the backchannel endpoint takes the request
 * parameter. request_uri is not supported, and OpenID Connect Discovery 1.0 section 3
 * makes request_uri_parameter_supported true when it is absent, so it is set false. */
static void add_request_object_metadata(json_t *doc, bool allow_rs256)
{
    json_t *algs = STRING_ARRAY("ES256", "PS256");

    if (allow_rs256)
        json_array_append_new(algs, json_string("RS256"));
    json_object_set_new(
        doc, "backchannel_authentication_request_signing_alg_values_supported", algs);
    json_object_set_new(doc, "request_parameter_supported", json_true());
    json_object_set_new(doc, "request_uri_parameter_supported", json_false());
}

/* True for GET and HEAD, the only methods of these read-only documents; otherwise
 * sends 405 and returns false. */
static bool method_is_get(struct server_req *sr)
{
    const char *method = server_req_method(sr);

    if (method && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
        return true;
    oauth_reply_method_not_allowed(sr, "GET, HEAD");
    return false;
}

void oauth_discovery_handle(struct server_req *sr)
{
    json_t *doc;

    if (!method_is_get(sr))
        return;
    if (!server_config || !server_config->issuer) {
        rlog_error(sr->rid, NULL, "discovery requested before the issuer is configured");
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_SERVER_ERROR, NULL);
        return;
    }
    doc = discovery_document(server_config);
    add_request_object_metadata(doc, server_config->request_object_allow_rs256);
    server_req_add_header(sr, "Cache-Control", DISCOVERY_CACHE_CONTROL);
    server_reply_json(sr, 200, doc);
}

void oauth_jwks_handle(struct server_req *sr)
{
    if (!method_is_get(sr))
        return;
    /* A worker whose keys are not loaded yet must not get an empty JWKS cached. */
    if (!sr->worker->keys) {
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
                          "The signing keys are not loaded yet");
        return;
    }
    server_req_add_header(sr, "Cache-Control", JWKS_CACHE_CONTROL);
    server_reply_json(sr, 200, oauth_keyset_jwks(sr->worker->keys));
}
