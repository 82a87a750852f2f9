/* routes.c - which handler serves each method and path, plus /healthz and /readyz
 * SPDX-License-Identifier: MIT
 */
#include "server/server.h"

#include <string.h>

#include "ciba/ciba.h"
#include "oauth/oauth.h"
#include "storage/storage.h"

enum route_method {
    ROUTE_GET = 1 << 0, /* GET and HEAD */
    ROUTE_POST = 1 << 1,
};

enum route_base {
    ROUTE_UNDER_ISSUER, /* the issuer's path, then the route's path */
    ROUTE_AT_ROOT,      /* only the route's path (health probes) */
    ROUTE_WELL_KNOWN,   /* the route's path, then the issuer's path (RFC 8414 section 3.1)
                         */
};

struct route {
    const char *path;
    enum route_base base;
    bool prefix;      /* the path is followed by a secret reference: /approve/REF */
    bool body_only;   /* a form endpoint: parameters in the query string are rejected */
    unsigned methods; /* enum route_method bits */
    const char *allow;
    const char *endpoint; /* the name in log lines */
    void (*handle)(struct server_req *sr);
};

static void healthz_handle(struct server_req *sr);
static void readyz_handle(struct server_req *sr);

// clang-format off
static const struct route routes[] = {
    {"/.well-known/openid-configuration", ROUTE_UNDER_ISSUER, false, false, ROUTE_GET, "GET, HEAD", "discovery", oauth_discovery_handle},
    {"/.well-known/oauth-authorization-server", ROUTE_WELL_KNOWN, false, false, ROUTE_GET, "GET, HEAD", "discovery", oauth_discovery_handle},
    {"/jwks", ROUTE_UNDER_ISSUER, false, false, ROUTE_GET, "GET, HEAD", "jwks", oauth_jwks_handle},
    {"/token", ROUTE_UNDER_ISSUER, false, true, ROUTE_POST, "POST", "token", oauth_token_handle},
    {"/bc-authorize", ROUTE_UNDER_ISSUER, false, true, ROUTE_POST, "POST", "bc-authorize", ciba_bc_authorize_handle},
    {"/approve/", ROUTE_UNDER_ISSUER, true, false, ROUTE_GET | ROUTE_POST, "GET, HEAD, POST", "approve", ciba_approve_handle},
    {"/healthz", ROUTE_AT_ROOT, false, false, ROUTE_GET, "GET, HEAD", "healthz", healthz_handle},
    {"/readyz", ROUTE_AT_ROOT, false, false, ROUTE_GET, "GET, HEAD", "readyz", readyz_handle},
};
// clang-format on

/* The path of the issuer URL ("" for https://host, "/tenant" for https://host/tenant),
 * set once before the worker threads start. */
static char issuer_path[256];

void server_routes_init(const char *issuer)
{
    const char *host = strstr(issuer, "://");
    const char *path = host ? strchr(host + 3, '/') : NULL;

    snprintf(issuer_path, sizeof(issuer_path), "%s", path ? path : "");
}

/* True when path is the route's path, placed where the route's base requires. */
static bool route_matches(const struct route *r, const char *path)
{
    size_t ip_len = strlen(issuer_path), r_len = strlen(r->path);

    switch (r->base) {
    case ROUTE_AT_ROOT:
        break;
    case ROUTE_UNDER_ISSUER:
        if (strncmp(path, issuer_path, ip_len) != 0)
            return false;
        path += ip_len;
        break;
    case ROUTE_WELL_KNOWN:
        return strncmp(path, r->path, r_len) == 0 &&
               strcmp(path + r_len, issuer_path) == 0;
    }

    if (r->prefix) {
        /* A reference must follow, and no further path segment. */
        return strncmp(path, r->path, r_len) == 0 && path[r_len] != '\0' &&
               !strchr(path + r_len, '/');
    }
    return strcmp(path, r->path) == 0;
}

static const struct route *route_find(const char *path)
{
    for (size_t i = 0; i < ARRAY_LEN(routes); i++) {
        if (route_matches(&routes[i], path))
            return &routes[i];
    }
    return NULL;
}

static unsigned method_bit(const char *method)
{
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
        return ROUTE_GET;
    if (strcmp(method, "POST") == 0)
        return ROUTE_POST;
    return 0;
}

void server_route(struct server_req *sr)
{
    const char *path = server_req_path(sr);
    const struct route *r = route_find(path);

    if (!r) {
        sr->endpoint = "not-found";
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_NOT_FOUND, NULL);
        return;
    }
    sr->endpoint = r->endpoint;
    if (!(r->methods & method_bit(server_req_method(sr)))) {
        oauth_reply_method_not_allowed(sr, r->allow);
        return;
    }
    /* Parameters of the token and backchannel endpoints go in the body. A secret in the
     * URL ends up in proxy and server logs, so RFC 6749 section 2.3.1 forbids it. */
    if (r->body_only && server_req_query(sr)) {
        oauth_reply_error(
            sr, strcmp(r->endpoint, "token") == 0 ? OAUTH_EP_TOKEN : OAUTH_EP_BACKCHANNEL,
            OAUTH_ERR_INVALID_REQUEST,
            "Parameters must be sent in the request body, not in the URL");
        return;
    }
    r->handle(sr);
}

void server_route_log_path(const char *path, char *out, size_t out_len)
{
    /* Whatever follows a prefix route's path may be a secret reference, also when the
     * request does not match the route (a trailing slash, an extra segment, a missing
     * issuer path), so everything after the first occurrence is cut. */
    for (size_t i = 0; i < ARRAY_LEN(routes); i++) {
        const char *at = routes[i].prefix ? strstr(path, routes[i].path) : NULL;

        if (at) {
            snprintf(out, out_len, "%.*s*", (int)(at - path + strlen(routes[i].path)),
                     path);
            return;
        }
    }
    snprintf(out, out_len, "%s", path);
}

/* ---- health probes ------------------------------------------------------------------
 */

static void healthz_handle(struct server_req *sr)
{
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_reply_json(sr, 200, json_pack("{s:s}", "status", "ok"));
}

static void on_ping_done(void *arg, enum storage_status status)
{
    struct server_req *sr = arg;

    if (status != STORAGE_OK) {
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
                          "The database is unavailable");
        return;
    }
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_reply_json(sr, 200, json_pack("{s:s}", "status", "ready"));
}

/* Ready means this worker can serve tokens: its signing keys are loaded and its
 * database connection responds. */
static void readyz_handle(struct server_req *sr)
{
    if (!sr->worker->keys) {
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
                          "The signing keys are not loaded");
        return;
    }
    if (storage_ping(sr->worker->db, on_ping_done, sr) != 0)
        oauth_reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_TEMPORARILY_UNAVAILABLE,
                          "The database is unavailable");
}
