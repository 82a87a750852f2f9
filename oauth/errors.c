/* errors.c - the OAuth error table and the one function that sends an error reply
 * SPDX-License-Identifier: MIT
 */
#include "oauth/oauth.h"

#include "server/http.h"

/* Seconds a client should wait after temporarily_unavailable: long enough for the
 * database connection to come back after a restart, short enough not to stall a poll. */
#define RETRY_AFTER_SECONDS "5"

struct err_row {
    const char *code;
    int status_backchannel;
    int status_token;
    int status_other;
    const char *description; /* only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 section 5.2) */
};

/* One row per enum oauth_err. Statuses: RFC 6749 section 5.2 (400, and 401 for
 * invalid_client) and CIBA Core 1.0 section 13 (access_denied is 403 at the backchannel
 * endpoint). Codes that only the token endpoint sends still get 400 elsewhere. */
// clang-format off
static const struct err_row err_table[OAUTH_ERR_COUNT] = {
    [OAUTH_OK] = {NULL, 0, 0, 0, NULL},
    [OAUTH_ERR_INVALID_REQUEST] = {"invalid_request", 400, 400, 400,
        "The request is missing a parameter, repeats one or has an invalid value"},
    [OAUTH_ERR_INVALID_CLIENT] = {"invalid_client", 401, 401, 401,
        "Client authentication failed"},
    [OAUTH_ERR_INVALID_GRANT] = {"invalid_grant", 400, 400, 400,
        "The auth_req_id is invalid, was issued to another client or was already used"},
    [OAUTH_ERR_UNAUTHORIZED_CLIENT] = {"unauthorized_client", 400, 400, 400,
        "The client is not allowed to use this grant type or delivery mode"},
    [OAUTH_ERR_UNSUPPORTED_GRANT_TYPE] = {"unsupported_grant_type", 400, 400, 400,
        "The grant_type is not supported"},
    [OAUTH_ERR_INVALID_SCOPE] = {"invalid_scope", 400, 400, 400,
        "The scope is invalid or not allowed for this client"},
    [OAUTH_ERR_ACCESS_DENIED] = {"access_denied", 403, 400, 403,
        "The request was denied"},
    [OAUTH_ERR_EXPIRED_LOGIN_HINT_TOKEN] = {"expired_login_hint_token", 400, 400, 400,
        "The login_hint_token has expired"},
    [OAUTH_ERR_UNKNOWN_USER_ID] = {"unknown_user_id", 400, 400, 400,
        "No user matches the hint"},
    [OAUTH_ERR_MISSING_USER_CODE] = {"missing_user_code", 400, 400, 400,
        "A user_code is required"},
    [OAUTH_ERR_INVALID_USER_CODE] = {"invalid_user_code", 400, 400, 400,
        "The user_code is invalid"},
    [OAUTH_ERR_INVALID_BINDING_MESSAGE] = {"invalid_binding_message", 400, 400, 400,
        "The binding_message is invalid or too long"},
    [OAUTH_ERR_AUTHORIZATION_PENDING] = {"authorization_pending", 400, 400, 400,
        "The user has not answered yet"},
    [OAUTH_ERR_SLOW_DOWN] = {"slow_down", 400, 400, 400,
        "Polling too fast: wait at least interval seconds between requests"},
    [OAUTH_ERR_EXPIRED_TOKEN] = {"expired_token", 400, 400, 400,
        "The auth_req_id has expired"},
    [OAUTH_ERR_SERVER_ERROR] = {"server_error", 500, 500, 500,
        "Internal server error"},
    [OAUTH_ERR_TEMPORARILY_UNAVAILABLE] = {"temporarily_unavailable", 503, 503, 503,
        "The service is temporarily unavailable, retry later"},
    [OAUTH_ERR_NOT_FOUND] = {"not_found", 404, 404, 404,
        "No such endpoint"},
    /* RFC 6749 has no code for a wrong method; invalid_request is the nearest. */
    [OAUTH_ERR_METHOD_NOT_ALLOWED] = {"invalid_request", 405, 405, 405,
        "The HTTP method is not allowed for this endpoint"},
};
// clang-format on

/* Returns the row of err; OAUTH_OK and values outside the enum get server_error's. */
static const struct err_row *err_row(enum oauth_err err)
{
    if ((int)err <= OAUTH_OK || err >= OAUTH_ERR_COUNT)
        return &err_table[OAUTH_ERR_SERVER_ERROR];
    return &err_table[err];
}

const char *oauth_err_code(enum oauth_err err)
{
    return err_row(err)->code;
}

int oauth_err_status(enum oauth_err err, enum oauth_endpoint ep)
{
    const struct err_row *row = err_row(err);

    switch (ep) {
    case OAUTH_EP_BACKCHANNEL:
        return row->status_backchannel;
    case OAUTH_EP_TOKEN:
        return row->status_token;
    case OAUTH_EP_OTHER:
        break;
    }
    return row->status_other;
}

const char *oauth_err_description(enum oauth_err err)
{
    return err_row(err)->description;
}

/* True when s uses only the characters RFC 6749 section 5.2 allows in
 * error_description: printable ASCII except '"' and '\'. */
static bool description_valid(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* Sends the error and logs it; allow is the Allow header of a 405, or NULL. */
static void reply_error(struct server_req *sr, enum oauth_endpoint ep, enum oauth_err err,
                        const char *description, const char *allow)
{
    const struct err_row *row = err_row(err);
    const char *cid = sr->client_id[0] ? sr->client_id : NULL;
    int status = oauth_err_status(err, ep);
    json_t *body;

    if (err == OAUTH_OK)
        rlog_error(sr->rid, cid,
                   "error reply requested without an error; sending "
                   "server_error");
    if (!description || !*description)
        description = row->description;
    if (!description_valid(description)) {
        rlog_warn(sr->rid, cid,
                  "error_description for %s has characters RFC 6749 "
                  "forbids; sending the default",
                  row->code);
        description = row->description;
    }

    body = json_pack("{s:s, s:s}", "error", row->code, "error_description", description);
    server_req_add_header(sr, "Cache-Control", "no-store");
    server_req_add_header(sr, "Pragma", "no-cache");
    if (status == 401)
        server_req_add_header(sr, "WWW-Authenticate", "Basic realm=\"cibad\"");
    if (status == 503)
        server_req_add_header(sr, "Retry-After", RETRY_AFTER_SECONDS);
    if (status == 405)
        server_req_add_header(sr, "Allow", allow ? allow : "");

    util_log(status >= 500 ? UTIL_LOG_ERROR : UTIL_LOG_INFO, sr->rid, cid, "%s %d %s: %s",
             sr->endpoint ? sr->endpoint : "-", status, row->code, description);
    server_reply_json(sr, status, body);
}

void oauth_reply_error(struct server_req *sr, enum oauth_endpoint ep, enum oauth_err err,
                       const char *description)
{
    reply_error(sr, ep, err, description, NULL);
}

void oauth_reply_method_not_allowed(struct server_req *sr, const char *allow)
{
    reply_error(sr, OAUTH_EP_OTHER, OAUTH_ERR_METHOD_NOT_ALLOWED, NULL, allow);
}
