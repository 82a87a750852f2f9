/* check_oauth.c - tests for oauth/: the error table and replies, client authentication,
 * signing keys, JWS signing and verification, and the discovery and JWKS endpoints
 * SPDX-License-Identifier: MIT
 *
 * The suite links oauth/ without server/ or storage/, so it provides its own versions of
 * the few server/http.h functions oauth/ calls (they record the reply instead of
 * writing HTTP) and of storage_client_get (an in-memory client table that replies on
 * the next loop iteration, as the real one does, and can play a database outage).
 * The token endpoint, which needs the real server and storage, is tested by check_e2e.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "check_runner.h"
#include "oauth/oauth.h"
#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

#define SECRET "test server secret"

/* ---- server/http.h and server/config.h doubles ------------------------------------- */

struct header {
    char *name;
    char *value;
};

/* What one handler sent: status, headers and body, and how many replies it made. */
static struct {
    int replies;
    int status;
    json_t *body;
    struct header headers[16];
    size_t n_headers;
} sent;

static struct header request_headers[8];
static size_t n_request_headers;
static const char *request_method = "GET";

const struct server_config *server_config;

void server_req_add_header(struct server_req *sr, const char *name, const char *value)
{
    (void)sr;
    ck_assert_int_eq(sent.replies, 0);
    ck_assert_uint_lt(sent.n_headers, ARRAY_LEN(sent.headers));
    sent.headers[sent.n_headers].name = util_strdup(name);
    sent.headers[sent.n_headers].value = util_strdup(value);
    sent.n_headers++;
}

const char *server_req_header(const struct server_req *sr, const char *name)
{
    (void)sr;
    for (size_t i = 0; i < n_request_headers; i++) {
        if (strcasecmp(request_headers[i].name, name) == 0)
            return request_headers[i].value;
    }
    return NULL;
}

const char *server_req_method(const struct server_req *sr)
{
    (void)sr;
    return request_method;
}

void server_reply_json(struct server_req *sr, int status, json_t *body)
{
    sent.replies++;
    sent.status = status;
    sr->status = status;
    json_decref(sent.body);
    sent.body = body;
}

const char *server_form_get(const struct server_form *form, const char *name)
{
    for (size_t i = 0; form && i < form->count; i++) {
        if (strcmp(form->params[i].name, name) == 0)
            return form->params[i].value[0] ? form->params[i].value : NULL;
    }
    return NULL;
}

/* Returns the value of a response header, or NULL. Fails when it was sent twice. */
static const char *sent_header(const char *name)
{
    const char *found = NULL;

    for (size_t i = 0; i < sent.n_headers; i++) {
        if (strcasecmp(sent.headers[i].name, name) == 0) {
            ck_assert_msg(!found, "header %s sent twice", name);
            found = sent.headers[i].value;
        }
    }
    return found;
}

/* Forgets the reply recorded so far, so a test can send another. */
static void sent_reset(void)
{
    for (size_t i = 0; i < sent.n_headers; i++) {
        free(sent.headers[i].name);
        free(sent.headers[i].value);
    }
    json_decref(sent.body);
    memset(&sent, 0, sizeof(sent));
}

static void request_header_add(const char *name, const char *value)
{
    request_headers[n_request_headers].name = util_strdup(name);
    request_headers[n_request_headers].value = util_strdup(value);
    n_request_headers++;
}

/* ---- storage_client_get double ----------------------------------------------------- */

struct fake_client {
    const char *client_id;
    const char *secret;
    const char *method;
};

static const struct fake_client fake_clients[] = {
    {"c-basic", "s3cret-basic", "client_secret_basic"},
    {"c-post", "s3cret-post", "client_secret_post"},
    {"c-1", "p@ss:w+rd/%\xc3\xa9", "client_secret_basic"},
    {"a:b", "x y", "client_secret_basic"},
};

static enum {
    FAKE_ANSWER,      /* look the client up */
    FAKE_QUEUE_FAILS, /* return -1, as while the database is down */
    FAKE_UNAVAILABLE, /* answer STORAGE_UNAVAILABLE */
    FAKE_ERROR,       /* answer STORAGE_ERROR */
} fake_mode;
static int fake_calls;
static struct event_base *test_base;

struct fake_lookup {
    storage_client_cb cb;
    void *arg;
    char *client_id;
};

static void on_fake_lookup(evutil_socket_t fd, short what, void *arg)
{
    struct fake_lookup *lookup = arg;
    enum storage_status status = STORAGE_NOT_FOUND;
    struct storage_client row = {0};
    char hash[65];

    (void)fd;
    (void)what;
    if (fake_mode == FAKE_UNAVAILABLE)
        status = STORAGE_UNAVAILABLE;
    else if (fake_mode == FAKE_ERROR)
        status = STORAGE_ERROR;
    for (size_t i = 0; fake_mode == FAKE_ANSWER && i < ARRAY_LEN(fake_clients); i++) {
        if (strcmp(fake_clients[i].client_id, lookup->client_id) != 0)
            continue;
        util_sha256_hex(fake_clients[i].secret, strlen(fake_clients[i].secret), hash);
        row.client_id = fake_clients[i].client_id;
        row.client_name = "Fake agent";
        row.secret_hash = hash;
        row.token_endpoint_auth_method = fake_clients[i].method;
        row.scope = "openid profile";
        row.backchannel_token_delivery_mode = "poll";
        row.grant_types = OAUTH_GRANT_TYPE_CIBA;
        status = STORAGE_OK;
    }
    lookup->cb(lookup->arg, status, status == STORAGE_OK ? &row : NULL);
    free(lookup->client_id);
    free(lookup);
}

int storage_client_get(struct storage_conn *db, const char *client_id,
                       storage_client_cb cb, void *arg)
{
    const struct timeval now = {0, 0};
    struct fake_lookup *lookup;

    ck_assert_ptr_nonnull(db);
    fake_calls++;
    if (fake_mode == FAKE_QUEUE_FAILS)
        return -1;
    lookup = util_calloc(1, sizeof(*lookup));
    lookup->cb = cb;
    lookup->arg = arg;
    lookup->client_id = util_strdup(client_id);
    ck_assert_int_eq(
        event_base_once(test_base, -1, EV_TIMEOUT, on_fake_lookup, lookup, &now), 0);
    return 0;
}

/* ---- request fixture --------------------------------------------------------------- */

static struct server_worker worker;
static struct server_req sr;
static int fake_db; /* its address stands for the connection */

static void setup(void)
{
    test_base = event_base_new();
    ck_assert_ptr_nonnull(test_base);
    worker.base = test_base;
    worker.db = (struct storage_conn *)&fake_db;
    sr.worker = &worker;
    sr.endpoint = "/test";
    strcpy(sr.rid, "rid0123456789abc");
}

static void teardown(void)
{
    event_base_free(test_base);
    sent_reset();
    for (size_t i = 0; i < n_request_headers; i++) {
        free(request_headers[i].name);
        free(request_headers[i].value);
    }
    n_request_headers = 0;
}

/* Sends fd 2 to a new temporary file, so a test can read the log lines. Returns the
 * file's descriptor. */
static int capture_log(void)
{
    char path[] = "/tmp/check_oauth_log.XXXXXX";
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    unlink(path);
    ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    return fd;
}

static char *read_log(int fd)
{
    static char buf[8192];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    return buf;
}

/* ---- the error table --------------------------------------------------------------- */

static const struct {
    enum oauth_err err;
    const char *code;
    int backchannel, token, other;
} expected_errors[] = {
    {OAUTH_ERR_INVALID_REQUEST, "invalid_request", 400, 400, 400},
    {OAUTH_ERR_INVALID_CLIENT, "invalid_client", 401, 401, 401},
    {OAUTH_ERR_INVALID_GRANT, "invalid_grant", 400, 400, 400},
    {OAUTH_ERR_UNAUTHORIZED_CLIENT, "unauthorized_client", 400, 400, 400},
    {OAUTH_ERR_UNSUPPORTED_GRANT_TYPE, "unsupported_grant_type", 400, 400, 400},
    {OAUTH_ERR_INVALID_SCOPE, "invalid_scope", 400, 400, 400},
    {OAUTH_ERR_ACCESS_DENIED, "access_denied", 403, 400, 403},
    {OAUTH_ERR_EXPIRED_LOGIN_HINT_TOKEN, "expired_login_hint_token", 400, 400, 400},
    {OAUTH_ERR_UNKNOWN_USER_ID, "unknown_user_id", 400, 400, 400},
    {OAUTH_ERR_MISSING_USER_CODE, "missing_user_code", 400, 400, 400},
    {OAUTH_ERR_INVALID_USER_CODE, "invalid_user_code", 400, 400, 400},
    {OAUTH_ERR_INVALID_BINDING_MESSAGE, "invalid_binding_message", 400, 400, 400},
    {OAUTH_ERR_AUTHORIZATION_PENDING, "authorization_pending", 400, 400, 400},
    {OAUTH_ERR_SLOW_DOWN, "slow_down", 400, 400, 400},
    {OAUTH_ERR_EXPIRED_TOKEN, "expired_token", 400, 400, 400},
    {OAUTH_ERR_SERVER_ERROR, "server_error", 500, 500, 500},
    {OAUTH_ERR_TEMPORARILY_UNAVAILABLE, "temporarily_unavailable", 503, 503, 503},
    {OAUTH_ERR_NOT_FOUND, "not_found", 404, 404, 404},
    {OAUTH_ERR_METHOD_NOT_ALLOWED, "invalid_request", 405, 405, 405},
};

/* RFC 6749 section 5.2: error_description uses %x20-21 / %x23-5B / %x5D-7E only. */
static bool description_charset_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (!(c == 0x20 || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
              (c >= 0x5d && c <= 0x7e)))
            return false;
    }
    return true;
}

START_TEST(error_table_statuses)
{
    ck_assert_uint_eq(ARRAY_LEN(expected_errors), OAUTH_ERR_COUNT - 1);
    for (size_t i = 0; i < ARRAY_LEN(expected_errors); i++) {
        enum oauth_err err = expected_errors[i].err;

        ck_assert_str_eq(oauth_err_code(err), expected_errors[i].code);
        ck_assert_int_eq(oauth_err_status(err, OAUTH_EP_BACKCHANNEL),
                         expected_errors[i].backchannel);
        ck_assert_int_eq(oauth_err_status(err, OAUTH_EP_TOKEN), expected_errors[i].token);
        ck_assert_int_eq(oauth_err_status(err, OAUTH_EP_OTHER), expected_errors[i].other);
    }
}
END_TEST

START_TEST(error_table_descriptions)
{
    for (int err = OAUTH_OK + 1; err < OAUTH_ERR_COUNT; err++) {
        const char *d = oauth_err_description((enum oauth_err)err);

        ck_assert_ptr_nonnull(d);
        ck_assert_uint_gt(strlen(d), 0);
        ck_assert_msg(description_charset_ok(d), "description of %d: %s", err, d);
    }
}
END_TEST

START_TEST(error_ok_maps_to_server_error)
{
    ck_assert_str_eq(oauth_err_code(OAUTH_OK), "server_error");
    ck_assert_int_eq(oauth_err_status(OAUTH_OK, OAUTH_EP_TOKEN), 500);
    ck_assert_str_eq(oauth_err_code(OAUTH_ERR_COUNT), "server_error");
    ck_assert_str_eq(oauth_err_code((enum oauth_err) - 1), "server_error");
}
END_TEST

/* The body has exactly the members error and error_description. */
static void assert_error_body(const char *code, const char *description)
{
    ck_assert_ptr_nonnull(sent.body);
    ck_assert_uint_eq(json_object_size(sent.body), 2);
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "error")), code);
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "error_description")),
                     description);
}

START_TEST(reply_error_body_and_headers)
{
    oauth_reply_error(&sr, OAUTH_EP_BACKCHANNEL, OAUTH_ERR_INVALID_SCOPE, NULL);

    ck_assert_int_eq(sent.replies, 1);
    ck_assert_int_eq(sent.status, 400);
    assert_error_body("invalid_scope", oauth_err_description(OAUTH_ERR_INVALID_SCOPE));
    ck_assert_str_eq(sent_header("Cache-Control"), "no-store");
    ck_assert_str_eq(sent_header("Pragma"), "no-cache");
    ck_assert_ptr_null(sent_header("WWW-Authenticate"));
    ck_assert_ptr_null(sent_header("Retry-After"));
}
END_TEST

START_TEST(reply_error_custom_description)
{
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_INVALID_REQUEST,
                      "grant_type is required");

    ck_assert_int_eq(sent.status, 400);
    assert_error_body("invalid_request", "grant_type is required");
}
END_TEST

START_TEST(reply_error_bad_description_replaced)
{
    static const char *const bad[] = {"has \"quote\"", "back\\slash", "new\nline",
                                      "caf\xc3\xa9", "tab\there"};

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        sent_reset();
        oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_INVALID_REQUEST, bad[i]);
        assert_error_body("invalid_request",
                          oauth_err_description(OAUTH_ERR_INVALID_REQUEST));
    }
}
END_TEST

START_TEST(reply_error_401_www_authenticate)
{
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_INVALID_CLIENT, NULL);

    ck_assert_int_eq(sent.status, 401);
    assert_error_body("invalid_client", oauth_err_description(OAUTH_ERR_INVALID_CLIENT));
    ck_assert_str_eq(sent_header("WWW-Authenticate"), "Basic realm=\"cibad\"");
}
END_TEST

START_TEST(reply_error_access_denied_by_endpoint)
{
    oauth_reply_error(&sr, OAUTH_EP_BACKCHANNEL, OAUTH_ERR_ACCESS_DENIED, NULL);
    ck_assert_int_eq(sent.status, 403);

    sent_reset();
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_ACCESS_DENIED, NULL);
    ck_assert_int_eq(sent.status, 400);
    assert_error_body("access_denied", oauth_err_description(OAUTH_ERR_ACCESS_DENIED));
}
END_TEST

START_TEST(reply_error_503_retry_after)
{
    const char *retry;
    int64_t seconds;

    oauth_reply_error(&sr, OAUTH_EP_BACKCHANNEL, OAUTH_ERR_TEMPORARILY_UNAVAILABLE, NULL);

    ck_assert_int_eq(sent.status, 503);
    retry = sent_header("Retry-After");
    ck_assert_ptr_nonnull(retry);
    ck_assert_int_eq(util_parse_int64(retry, 1, 30, &seconds), 0);
}
END_TEST

START_TEST(reply_method_not_allowed)
{
    oauth_reply_method_not_allowed(&sr, "POST");

    ck_assert_int_eq(sent.status, 405);
    assert_error_body("invalid_request",
                      oauth_err_description(OAUTH_ERR_METHOD_NOT_ALLOWED));
    ck_assert_str_eq(sent_header("Allow"), "POST");
    ck_assert_str_eq(sent_header("Cache-Control"), "no-store");
}
END_TEST

START_TEST(reply_error_logs_one_line)
{
    int fd = capture_log();
    char *log;
    size_t lines = 0;

    strcpy(sr.client_id, "c-log");
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_SLOW_DOWN, NULL);
    sent_reset();
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_ERR_SERVER_ERROR, NULL);
    log = read_log(fd);
    for (const char *p = log; (p = strchr(p, '\n')); p++)
        lines++;

    ck_assert_ptr_nonnull(strstr(log, " info [rid0123456789abc] client_id=c-log "));
    ck_assert_ptr_nonnull(strstr(log, "400 slow_down: Polling too fast"));
    ck_assert_ptr_nonnull(strstr(log, " error [rid0123456789abc] client_id=c-log "));
    ck_assert_ptr_nonnull(strstr(log, "500 server_error: Internal server error"));
    ck_assert_uint_eq(lines, 2);
}
END_TEST

START_TEST(reply_error_ok_sends_server_error)
{
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, OAUTH_OK, NULL);

    ck_assert_int_eq(sent.status, 500);
    assert_error_body("server_error", oauth_err_description(OAUTH_ERR_SERVER_ERROR));
}
END_TEST

/* ---- client authentication --------------------------------------------------------- */

static struct {
    int calls;
    enum oauth_err err;
    const char *description;
    struct oauth_client *client;
} auth;
static bool inside_authenticate;

static void on_authenticated(void *arg, enum oauth_err err, const char *description,
                             struct oauth_client *client)
{
    ck_assert_ptr_eq(arg, &auth);
    ck_assert_msg(!inside_authenticate, "callback ran inside oauth_client_authenticate");
    auth.calls++;
    auth.err = err;
    auth.description = description;
    auth.client = client;
    ck_assert(err == OAUTH_OK ? client != NULL : client == NULL);
}

/* Runs one authentication with the Authorization header given (or none) and the form
 * given as NULL-terminated name, value pairs, then runs the loop until it finishes. */
static void authenticate(const char *authorization, const char *const *pairs)
{
    struct server_form_param params[8];
    struct server_form form = {0, params};

    auth.calls = 0;
    for (size_t i = 0; i < n_request_headers; i++) {
        free(request_headers[i].name);
        free(request_headers[i].value);
    }
    n_request_headers = 0;
    for (; pairs && pairs[0]; pairs += 2) {
        params[form.count].name = (char *)pairs[0];
        params[form.count].value = (char *)pairs[1];
        form.count++;
    }
    if (authorization)
        request_header_add("Authorization", authorization);

    inside_authenticate = true;
    oauth_client_authenticate(&sr, &form, on_authenticated, &auth);
    inside_authenticate = false;
    ck_assert_int_eq(auth.calls, 0);
    ck_assert_int_eq(event_base_dispatch(test_base), 1); /* 1: no events left */
    ck_assert_int_eq(auth.calls, 1);
}

/* Returns "Basic " followed by base64 of text, in a buffer the next call reuses. */
static char *basic(const char *text)
{
    static char header[2048];
    char *b64 = util_b64_encode_new(text, strlen(text));

    ck_assert_uint_lt(strlen(b64) + 7, sizeof(header));
    snprintf(header, sizeof(header), "Basic %s", b64);
    free(b64);
    return header;
}

static void assert_auth_failed(enum oauth_err err)
{
    ck_assert_msg(auth.err == err, "got %s, expected %s", oauth_err_code(auth.err),
                  oauth_err_code(err));
    ck_assert_ptr_nonnull(auth.description);
    ck_assert(description_charset_ok(auth.description));
}

START_TEST(auth_basic_ok)
{
    authenticate(basic("c-basic:s3cret-basic"), NULL);

    ck_assert_int_eq(auth.err, OAUTH_OK);
    ck_assert_str_eq(auth.client->client_id, "c-basic");
    ck_assert_str_eq(auth.client->client_name, "Fake agent");
    ck_assert_str_eq(auth.client->token_endpoint_auth_method, "client_secret_basic");
    ck_assert_str_eq(auth.client->scope, "openid profile");
    ck_assert_str_eq(auth.client->backchannel_token_delivery_mode, "poll");
    ck_assert_str_eq(auth.client->grant_types, OAUTH_GRANT_TYPE_CIBA);
    ck_assert_str_eq(sr.client_id, "c-basic");
    ck_assert_int_eq(fake_calls, 1);
    oauth_client_free(auth.client);
}
END_TEST

START_TEST(auth_basic_scheme_case_insensitive)
{
    char *header = basic("c-basic:s3cret-basic");

    memcpy(header, "bASIC", 5);
    authenticate(header, NULL);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    oauth_client_free(auth.client);
}
END_TEST

START_TEST(auth_post_ok)
{
    const char *const form[] = {"client_id", "c-post", "client_secret", "s3cret-post",
                                NULL};

    authenticate(NULL, form);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    ck_assert_str_eq(auth.client->client_id, "c-post");
    ck_assert_str_eq(sr.client_id, "c-post");
    oauth_client_free(auth.client);
}
END_TEST

/* RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding. */
START_TEST(auth_basic_urlencoded_secret)
{
    authenticate(basic("c-1:p%40ss%3Aw%2Brd%2F%25%C3%A9"), NULL);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    ck_assert_str_eq(auth.client->client_id, "c-1");
    oauth_client_free(auth.client);
}
END_TEST

START_TEST(auth_basic_urlencoded_client_id)
{
    authenticate(basic("a%3Ab:x+y"), NULL);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    ck_assert_str_eq(auth.client->client_id, "a:b");
    oauth_client_free(auth.client);
}
END_TEST

START_TEST(auth_basic_raw_secret_rejected)
{
    /* Unencoded, '+' decodes to a space and the secret no longer matches. */
    authenticate(basic("c-1:p@ss:w+rd/%25\xc3\xa9"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
}
END_TEST

/* A malformed Basic header is a failed client authentication: 401 invalid_client with
 * WWW-Authenticate (RFC 6749 section 5.2), at both endpoints. */
static void assert_basic_rejected(const char *header)
{
    ck_assert_msg(auth.err == OAUTH_ERR_INVALID_CLIENT, "%s: got %s", header,
                  oauth_err_code(auth.err));
    ck_assert_ptr_nonnull(auth.description);
    ck_assert(description_charset_ok(auth.description));
    sent_reset();
    oauth_reply_error(&sr, OAUTH_EP_TOKEN, auth.err, auth.description);
    ck_assert_msg(sent.status == 401, "%s: status %d at the token endpoint", header,
                  sent.status);
    ck_assert_pstr_eq(sent_header("WWW-Authenticate"), "Basic realm=\"cibad\"");
    ck_assert_int_eq(oauth_err_status(auth.err, OAUTH_EP_BACKCHANNEL), 401);
}

START_TEST(auth_basic_bad_percent_escape)
{
    authenticate(basic("c-1:p@ss:w+rd/%\xc3\xa9"), NULL);
    assert_basic_rejected("bad percent escape");
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_nul_escape)
{
    authenticate(basic("c-basic:s3cret%00-basic"), NULL);
    assert_basic_rejected("%00 in the secret");
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_wrong_secret)
{
    authenticate(basic("c-basic:wrong"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 1);

    oauth_reply_error(&sr, OAUTH_EP_TOKEN, auth.err, auth.description);
    ck_assert_int_eq(sent.status, 401);
    ck_assert_str_eq(sent_header("WWW-Authenticate"), "Basic realm=\"cibad\"");
}
END_TEST

START_TEST(auth_unknown_client_same_as_wrong_secret)
{
    const char *wrong_secret;

    authenticate(basic("c-basic:wrong"), NULL);
    wrong_secret = auth.description;
    authenticate(basic("nobody:wrong"), NULL);

    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_str_eq(auth.description, wrong_secret);
}
END_TEST

START_TEST(auth_registered_method_enforced)
{
    const char *const form[] = {"client_id", "c-basic", "client_secret", "s3cret-basic",
                                NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    authenticate(basic("c-post:s3cret-post"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
}
END_TEST

START_TEST(auth_basic_and_body_secret)
{
    const char *const form[] = {"client_secret", "s3cret-basic", NULL};

    authenticate(basic("c-basic:s3cret-basic"), form);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_body_client_id_differs)
{
    const char *const form[] = {"client_id", "c-post", NULL};

    authenticate(basic("c-basic:s3cret-basic"), form);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_body_client_id_same)
{
    const char *const form[] = {"client_id", "c-basic", NULL};

    authenticate(basic("c-basic:s3cret-basic"), form);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    oauth_client_free(auth.client);
}
END_TEST

START_TEST(auth_no_credentials)
{
    const char *const form[] = {"scope", "openid", NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(oauth_err_status(auth.err, OAUTH_EP_BACKCHANNEL), 401);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_client_id_only)
{
    const char *const form[] = {"client_id", "c-post", NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);
    ck_assert_str_eq(sr.client_id, "c-post");
}
END_TEST

START_TEST(auth_empty_secret_counts_as_absent)
{
    const char *const form[] = {"client_id", "c-post", "client_secret", "", NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_secret_only)
{
    const char *const form[] = {"client_secret", "s3cret-post", NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_empty_parts)
{
    authenticate(basic("c-basic:"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    authenticate(basic(":s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_basic_malformed)
{
    static const char *const headers[] = {
        "Basic",                  /* no credentials */
        "Basic !!!!",             /* not base64 */
        "Basic YWJj",             /* "abc": no colon */
        "Basic YzpzZWNyZXQ",      /* missing padding */
        "Basic YzpzZWNyZXQ=x",    /* bad length */
        "Basic Yzpz ZWNy",        /* space inside */
        "Basic YwBiOnNlY3JldA==", /* "c\0b:secret": NUL byte */
        "Basic ",                 /* empty credentials */
        "Basic YzpzZWNyZXQ= x",   /* trailing junk */
        "Basic YzpzZWNyZXQ=x==",  /* junk after the padding */
    };

    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        authenticate(headers[i], NULL);
        assert_basic_rejected(headers[i]);
    }
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_other_scheme)
{
    authenticate("Bearer abc.def.ghi", NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    authenticate("Basically YzpzZWNyZXQ=", NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_client_assertion)
{
    const char *const form[] = {"client_id",
                                "c-post",
                                "client_assertion_type",
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                "client_assertion",
                                "a.b.c",
                                NULL};

    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    authenticate(basic("c-basic:s3cret-basic"), form + 2);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_length_caps)
{
    char id[200], secret[300], *text, *header;
    const char *form[] = {"client_id", id, "client_secret", "x", NULL};

    memset(id, 'i', 129);
    id[129] = '\0';
    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    /* 128 characters is still a valid client_id: the lookup happens. */
    id[128] = '\0';
    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 1);

    memset(secret, 's', 257);
    secret[257] = '\0';
    form[1] = "c-post";
    form[3] = secret;
    authenticate(NULL, form);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 1);

    text = util_asprintf("c-basic:%0800d", 0);
    header = basic(text);
    free(text);
    ck_assert_uint_gt(strlen(header), 1024);
    authenticate(header, NULL);
    assert_basic_rejected("an Authorization header over 1024 bytes");
    ck_assert_int_eq(fake_calls, 1);
}
END_TEST

START_TEST(auth_invalid_utf8_client_id)
{
    static const char *const ids[] = {"c-\xff", "c-\xc0\xaf", "c-\xed\xa0\x80",
                                      "c-\xe2\x82"};

    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        const char *form[] = {"client_id", ids[i], "client_secret", "x", NULL};

        authenticate(NULL, form);
        assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    }
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(auth_database_down)
{
    fake_mode = FAKE_QUEUE_FAILS;
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);

    fake_mode = FAKE_UNAVAILABLE;
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    ck_assert_int_eq(fake_calls, 2);

    /* No connection at all: no lookup is attempted. */
    worker.db = NULL;
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    ck_assert_int_eq(fake_calls, 2);
}
END_TEST

START_TEST(auth_storage_error)
{
    fake_mode = FAKE_ERROR;
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_SERVER_ERROR);
}
END_TEST

START_TEST(auth_logs_no_secret)
{
    int fd = capture_log();
    char *log;

    authenticate(basic("c-basic:wrong-secret-value"), NULL);
    log = read_log(fd);
    ck_assert_ptr_nonnull(strstr(log, "client_id=c-basic"));
    ck_assert_ptr_null(strstr(log, "wrong-secret-value"));
}
END_TEST

START_TEST(scope_has)
{
    ck_assert(oauth_scope_has("openid profile", "openid"));
    ck_assert(oauth_scope_has("openid profile", "profile"));
    ck_assert(oauth_scope_has("  openid   profile ", "profile"));
    ck_assert(!oauth_scope_has("openid profile", "open"));
    ck_assert(!oauth_scope_has("openid profile", "openid profile"));
    ck_assert(!oauth_scope_has("openidx", "openid"));
    ck_assert(!oauth_scope_has("", "openid"));
    ck_assert(!oauth_scope_has(NULL, "openid"));
    ck_assert(!oauth_scope_has("openid", ""));
    ck_assert(
        oauth_scope_has(OAUTH_GRANT_TYPE_CIBA " refresh_token", OAUTH_GRANT_TYPE_CIBA));
}
END_TEST

START_TEST(secret_hash_vector)
{
    char out[65];

    /* FIPS 180-2 test vector. */
    oauth_secret_hash("abc", out);
    ck_assert_str_eq(out,
                     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

/* ---- keys: independent implementations of the formats ------------------------------ */

struct gen_key {
    char *kid;
    char *sealed;
    char *jwk;
};

static void key_free(struct gen_key *g)
{
    free(g->kid);
    free(g->sealed);
    free(g->jwk);
}

static struct gen_key key_new(void)
{
    struct gen_key g = {0};

    ck_assert_int_eq(oauth_key_generate(SECRET, &g.kid, &g.sealed, &g.jwk), 0);
    return g;
}

static struct storage_key key_row(const struct gen_key *g, int64_t retired_at)
{
    struct storage_key row = {g->kid, "ES256", g->sealed, g->jwk, 1700000000, retired_at};

    return row;
}

static unsigned char *b64url_decode_new(const char *text, size_t *len)
{
    size_t cap = strlen(text) + 3;
    unsigned char *out = util_malloc(cap);

    *len = cap;
    ck_assert_int_eq(util_b64url_decode(text, strlen(text), out, len), 0);
    return out;
}

/* Opens a sealed key the way the stored format describes it, without oauth/ code. */
static EVP_PKEY *test_unseal(const char *secret, const char *sealed)
{
    unsigned char key[32], *nonce, *ct, pt[1024];
    const unsigned char *p = pt;
    size_t nonce_len, ct_len;
    char *copy = util_strdup(sealed), *dot;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len, fin, ok;
    PKCS8_PRIV_KEY_INFO *p8;
    EVP_PKEY *pkey;

    ck_assert(strncmp(copy, "v1.", 3) == 0);
    dot = strchr(copy + 3, '.');
    ck_assert_ptr_nonnull(dot);
    *dot = '\0';
    nonce = b64url_decode_new(copy + 3, &nonce_len);
    ct = b64url_decode_new(dot + 1, &ct_len);
    ck_assert_uint_eq(nonce_len, 12);
    ck_assert_uint_gt(ct_len, 16);

    HMAC(EVP_sha256(), secret, (int)strlen(secret),
         (const unsigned char *)"cibad signing key seal v1", 25, key, NULL);
    EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce);
    EVP_DecryptUpdate(c, pt, &len, ct, (int)ct_len - 16);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, ct + ct_len - 16);
    ok = EVP_DecryptFinal_ex(c, pt + len, &fin);
    EVP_CIPHER_CTX_free(c);
    free(copy);
    free(nonce);
    free(ct);
    if (ok != 1)
        return NULL;

    p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, len + fin);
    ck_assert_ptr_nonnull(p8);
    pkey = EVP_PKCS82PKEY(p8);
    PKCS8_PRIV_KEY_INFO_free(p8);
    return pkey;
}

/* Seals pkey in the stored format, without oauth/ code. */
static char *test_seal(const char *secret, EVP_PKEY *pkey)
{
    unsigned char key[32], nonce[12], *der = NULL, ct[1024];
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(pkey);
    int der_len = i2d_PKCS8_PRIV_KEY_INFO(p8, &der), len, fin;
    char *nonce_text, *ct_text, *out;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();

    ck_assert_int_gt(der_len, 0);
    RAND_bytes(nonce, sizeof(nonce));
    HMAC(EVP_sha256(), secret, (int)strlen(secret),
         (const unsigned char *)"cibad signing key seal v1", 25, key, NULL);
    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce);
    EVP_EncryptUpdate(c, ct, &len, der, der_len);
    EVP_EncryptFinal_ex(c, ct + len, &fin);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, ct + len + fin);
    EVP_CIPHER_CTX_free(c);

    nonce_text = util_b64url_encode_new(nonce, sizeof(nonce));
    ct_text = util_b64url_encode_new(ct, (size_t)(len + fin) + 16);
    out = util_asprintf("v1.%s.%s", nonce_text, ct_text);
    free(nonce_text);
    free(ct_text);
    OPENSSL_free(der);
    PKCS8_PRIV_KEY_INFO_free(p8);
    return out;
}

/* Builds a P-256 public key from a JWK's x and y, as a resource server does. */
static EVP_PKEY *jwk_public_key(const json_t *jwk)
{
    unsigned char point[65], *x, *y;
    size_t x_len, y_len;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;

    x = b64url_decode_new(json_string_value(json_object_get(jwk, "x")), &x_len);
    y = b64url_decode_new(json_string_value(json_object_get(jwk, "y")), &y_len);
    ck_assert_uint_eq(x_len, 32);
    ck_assert_uint_eq(y_len, 32);
    point[0] = 0x04;
    memcpy(point + 1, x, 32);
    memcpy(point + 33, y, 32);
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point));
    params = OSSL_PARAM_BLD_to_param(bld);
    ck_assert_int_eq(EVP_PKEY_fromdata_init(ctx), 1);
    ck_assert_int_eq(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params), 1);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    free(x);
    free(y);
    return pkey;
}

/* RFC 7638 thumbprint computed through jansson's sorted output. */
static char *thumbprint(const json_t *jwk)
{
    json_t *req = json_pack("{s:O, s:O, s:O, s:O}", "kty", json_object_get(jwk, "kty"),
                            "crv", json_object_get(jwk, "crv"), "x",
                            json_object_get(jwk, "x"), "y", json_object_get(jwk, "y"));
    char *text = json_dumps(req, JSON_COMPACT | JSON_SORT_KEYS);
    unsigned char digest[32];
    unsigned int digest_len = 0;

    EVP_Digest(text, strlen(text), digest, &digest_len, EVP_sha256(), NULL);
    free(text);
    json_decref(req);
    return util_b64url_encode_new(digest, digest_len);
}

/* Signs the base64url segments h.p with pkey in JOSE form, so tests can build tokens
 * that carry a valid signature over any header. sig_len other than 64 truncates or
 * extends the signature. */
static char *forge_segments(EVP_PKEY *pkey, const char *h, const char *p, size_t sig_len)
{
    char *input = util_asprintf("%s.%s", h, p), *s, *token;
    unsigned char der[80], raw[80] = {0};
    const unsigned char *dp = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig;

    ck_assert_int_eq(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey), 1);
    ck_assert_int_eq(
        EVP_DigestSign(md, der, &der_len, (unsigned char *)input, strlen(input)), 1);
    sig = d2i_ECDSA_SIG(NULL, &dp, (long)der_len);
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32);
    s = util_b64url_encode_new(raw, sig_len);
    token = util_asprintf("%s.%s", input, s);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    free(input);
    free(s);
    return token;
}

/* The same, from the header and payload text. */
static char *forge(EVP_PKEY *pkey, const char *header_text, const char *payload_text,
                   size_t sig_len)
{
    char *h = util_b64url_encode_new(header_text, strlen(header_text));
    char *p = util_b64url_encode_new(payload_text, strlen(payload_text));
    char *token = forge_segments(pkey, h, p, sig_len);

    free(h);
    free(p);
    return token;
}

/* A keyset with one current key, plus the key itself for forging. */
static struct oauth_keyset *ks;
static struct gen_key gk;
static EVP_PKEY *gk_pkey;
static char *gk_header; /* {"alg":"ES256","kid":...} */

static void key_setup(void)
{
    struct storage_key row;

    setup();
    gk = key_new();
    row = key_row(&gk, 0);
    ks = oauth_keyset_new(&row, 1, SECRET, 0);
    ck_assert_ptr_nonnull(ks);
    gk_pkey = test_unseal(SECRET, gk.sealed);
    ck_assert_ptr_nonnull(gk_pkey);
    gk_header = util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\"}", gk.kid);
}

static void key_teardown(void)
{
    oauth_keyset_free(ks);
    EVP_PKEY_free(gk_pkey);
    key_free(&gk);
    free(gk_header);
    teardown();
}

static bool verifies(const char *token)
{
    json_t *claims = oauth_jws_verify(ks, token, NULL);
    bool ok = claims != NULL;

    json_decref(claims);
    return ok;
}

START_TEST(key_generate_format)
{
    json_t *jwk = json_loads(gk.jwk, JSON_REJECT_DUPLICATES, NULL);
    size_t n;
    unsigned char *x;

    ck_assert_ptr_nonnull(jwk);
    ck_assert_uint_eq(strlen(gk.kid), 43);
    ck_assert_uint_eq(strspn(gk.kid,
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                             "0123456789-_"),
                      43);
    ck_assert_uint_eq(json_object_size(jwk), 7);
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "kty")), "EC");
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "crv")), "P-256");
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "kid")), gk.kid);
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "alg")), "ES256");
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "use")), "sig");
    ck_assert_ptr_null(json_object_get(jwk, "d"));
    x = b64url_decode_new(json_string_value(json_object_get(jwk, "x")), &n);
    ck_assert_uint_eq(n, 32);
    free(x);
    x = b64url_decode_new(json_string_value(json_object_get(jwk, "y")), &n);
    ck_assert_uint_eq(n, 32);
    free(x);
    ck_assert(strncmp(gk.sealed, "v1.", 3) == 0);
    json_decref(jwk);
}
END_TEST

START_TEST(key_seal_format_independent)
{
    /* The sealed text opens with an independent implementation of the format, and the
     * key inside is the one the JWK publishes. */
    json_t *jwk = json_loads(gk.jwk, 0, NULL);
    EVP_PKEY *pub = jwk_public_key(jwk);

    ck_assert_int_eq(EVP_PKEY_eq(gk_pkey, pub), 1);
    EVP_PKEY_free(pub);
    json_decref(jwk);
}
END_TEST

START_TEST(key_thumbprint_independent)
{
    json_t *jwk = json_loads(gk.jwk, 0, NULL);
    char *tp = thumbprint(jwk);

    ck_assert_str_eq(tp, gk.kid);
    free(tp);
    json_decref(jwk);
}
END_TEST

/* RFC 7515 appendix A.3 P-256 key: a sealed key made outside oauth/ opens, and its JWK
 * carries the published coordinates. */
START_TEST(key_known_p256_key)
{
    static const char x_text[] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    static const char y_text[] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    static const char d_text[] = "jpsQnnGQmL-YBIffH1136cLNp-_oKzDVj2_5e-9PiKI";
    unsigned char point[65], *x, *y, *d;
    size_t x_len, y_len, d_len;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    BIGNUM *priv;
    json_t *jwks, *jwk;
    char *sealed, *kid, *jwk_text;
    struct storage_key row;
    struct oauth_keyset *known;

    x = b64url_decode_new(x_text, &x_len);
    y = b64url_decode_new(y_text, &y_len);
    d = b64url_decode_new(d_text, &d_len);
    point[0] = 0x04;
    memcpy(point + 1, x, 32);
    memcpy(point + 33, y, 32);
    priv = BN_bin2bn(d, (int)d_len, NULL);
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point));
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv);
    params = OSSL_PARAM_BLD_to_param(bld);
    ck_assert_int_eq(EVP_PKEY_fromdata_init(ctx), 1);
    ck_assert_int_eq(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params), 1);

    jwk = json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", x_text, "y",
                    y_text);
    kid = thumbprint(jwk);
    json_object_set_new(jwk, "kid", json_string(kid));
    jwk_text = json_dumps(jwk, 0);
    json_decref(jwk);
    sealed = test_seal(SECRET, pkey);
    row = (struct storage_key){kid, "ES256", sealed, jwk_text, 1700000000, 0};
    known = oauth_keyset_new(&row, 1, SECRET, 0);
    ck_assert_ptr_nonnull(known);
    ck_assert_str_eq(oauth_keyset_signing_kid(known), kid);

    jwks = oauth_keyset_jwks(known);
    jwk = json_array_get(json_object_get(jwks, "keys"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "x")), x_text);
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "y")), y_text);
    ck_assert_str_eq(json_string_value(json_object_get(jwk, "kid")), kid);

    json_decref(jwks);
    oauth_keyset_free(known);
    free(kid);
    free(jwk_text);
    free(sealed);
    EVP_PKEY_free(pkey);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(priv);
    free(x);
    free(y);
    free(d);
}
END_TEST

START_TEST(keyset_wrong_secret)
{
    struct storage_key row = key_row(&gk, 0);

    ck_assert_ptr_null(oauth_keyset_new(&row, 1, "another secret", 0));
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, "", 0));
    ck_assert_ptr_null(test_unseal("another secret", gk.sealed));
}
END_TEST

START_TEST(keyset_damaged_rows)
{
    struct gen_key other = key_new();
    struct storage_key row;
    char *sealed = util_strdup(gk.sealed);
    size_t last = strlen(sealed) - 2;

    /* One flipped character of the ciphertext fails the GCM tag. */
    sealed[last] = sealed[last] == 'A' ? 'B' : 'A';
    row = key_row(&gk, 0);
    row.private_key = sealed;
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));

    row = key_row(&gk, 0);
    row.private_key = "v2.abc.def";
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));
    row.private_key = "v1.abc";
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));

    row = key_row(&gk, 0);
    row.kid = other.kid;
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));

    row = key_row(&gk, 0);
    row.public_jwk = other.jwk;
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));

    row = key_row(&gk, 0);
    row.public_jwk = "not json";
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));

    row = key_row(&gk, 0);
    row.alg = "RS256";
    ck_assert_ptr_null(oauth_keyset_new(&row, 1, SECRET, 0));
    key_free(&other);
    free(sealed);
}
END_TEST

START_TEST(keyset_duplicate_kid)
{
    struct storage_key rows[2] = {key_row(&gk, 0), key_row(&gk, 1)};

    ck_assert_ptr_null(oauth_keyset_new(rows, 2, SECRET, 0));
}
END_TEST

START_TEST(keyset_signing_choice)
{
    struct gen_key older = key_new(), oldest = key_new();
    struct storage_key rows[3] = {key_row(&gk, 1700000100), key_row(&older, 0),
                                  key_row(&oldest, 1700000000)};
    struct oauth_keyset *set = oauth_keyset_new(rows, 3, SECRET, 0);
    json_t *claims = json_pack("{s:s}", "sub", "u1");
    char *token;

    ck_assert_ptr_nonnull(set);
    ck_assert_str_eq(oauth_keyset_signing_kid(set), older.kid);
    token = oauth_jws_sign(set, "JWT", claims);
    ck_assert_ptr_nonnull(token);
    ck_assert(!verifies(token)); /* ks holds only gk */
    oauth_keyset_free(set);
    free(token);

    /* Every key retired: nothing signs, but tokens from retired keys still verify. */
    rows[1].retired_at = 1700000050;
    set = oauth_keyset_new(rows, 3, SECRET, 0);
    ck_assert_ptr_nonnull(set);
    ck_assert_ptr_null(oauth_keyset_signing_kid(set));
    ck_assert_ptr_null(oauth_jws_sign(set, "JWT", claims));
    token = oauth_jws_sign(ks, "JWT", claims);
    json_decref(claims);
    claims = oauth_jws_verify(set, token, NULL);
    ck_assert_ptr_nonnull(claims);
    json_decref(claims);
    free(token);
    oauth_keyset_free(set);

    set = oauth_keyset_new(NULL, 0, SECRET, 0);
    ck_assert_ptr_nonnull(set);
    ck_assert_ptr_null(oauth_keyset_signing_kid(set));
    claims = oauth_keyset_jwks(set);
    ck_assert_uint_eq(json_array_size(json_object_get(claims, "keys")), 0);
    json_decref(claims);
    oauth_keyset_free(set);
    key_free(&older);
    key_free(&oldest);
}
END_TEST

START_TEST(keyset_prepublishes_new_key)
{
    struct gen_key fresh = key_new();
    int64_t now = util_now_s();
    struct storage_key rows[2] = {key_row(&fresh, 0), key_row(&gk, now - 5)};
    struct oauth_keyset *set;

    /* Added 10 s ago: published, but the key it replaced still signs. */
    rows[0].created_at = now - 10;
    set = oauth_keyset_new(rows, 2, SECRET, 120);
    ck_assert_ptr_nonnull(set);
    ck_assert_str_eq(oauth_keyset_signing_kid(set), gk.kid);
    oauth_keyset_free(set);

    /* Old enough: the new key signs. */
    rows[0].created_at = now - 121;
    set = oauth_keyset_new(rows, 2, SECRET, 120);
    ck_assert_str_eq(oauth_keyset_signing_kid(set), fresh.kid);
    oauth_keyset_free(set);

    /* No delay configured: the new key signs at once. */
    rows[0].created_at = now;
    set = oauth_keyset_new(rows, 2, SECRET, 0);
    ck_assert_str_eq(oauth_keyset_signing_kid(set), fresh.kid);
    oauth_keyset_free(set);

    /* The very first key has no predecessor, so it signs at once. */
    set = oauth_keyset_new(rows, 1, SECRET, 120);
    ck_assert_str_eq(oauth_keyset_signing_kid(set), fresh.kid);
    oauth_keyset_free(set);
    key_free(&fresh);
}
END_TEST

START_TEST(jwks_public_members_only)
{
    struct gen_key second = key_new();
    struct storage_key rows[2] = {key_row(&second, 0), key_row(&gk, 1700000000)};
    struct oauth_keyset *set = oauth_keyset_new(rows, 2, SECRET, 0);
    json_t *jwks = oauth_keyset_jwks(set), *keys = json_object_get(jwks, "keys"), *k;
    size_t i;

    ck_assert_uint_eq(json_object_size(jwks), 1);
    ck_assert_uint_eq(json_array_size(keys), 2);
    json_array_foreach(keys, i, k)
    {
        static const char *const private_members[] = {"d",  "p",  "q", "dp",
                                                      "dq", "qi", "k"};

        ck_assert_uint_eq(json_object_size(k), 7);
        ck_assert_str_eq(json_string_value(json_object_get(k, "kid")),
                         i == 0 ? second.kid : gk.kid);
        ck_assert_ptr_nonnull(json_string_value(json_object_get(k, "x")));
        ck_assert_ptr_nonnull(json_string_value(json_object_get(k, "y")));
        ck_assert_str_eq(json_string_value(json_object_get(k, "alg")), "ES256");
        ck_assert_str_eq(json_string_value(json_object_get(k, "use")), "sig");
        for (size_t j = 0; j < ARRAY_LEN(private_members); j++)
            ck_assert_ptr_null(json_object_get(k, private_members[j]));
    }
    json_decref(jwks);
    oauth_keyset_free(set);
    key_free(&second);
}
END_TEST

/* ---- JWS --------------------------------------------------------------------------- */

START_TEST(jws_round_trip)
{
    json_t *claims =
        json_pack("{s:s, s:I, s:[s,s], s:s}", "sub", "u1", "exp", (json_int_t)2000000000,
                  "amr", OAUTH_AMR_VALUES, "acr", OAUTH_ACR_SMS_OTP);
    json_t *header = NULL, *got;
    char *token = oauth_jws_sign(ks, "JWT", claims);

    ck_assert_ptr_nonnull(token);
    got = oauth_jws_verify(ks, token, &header);
    ck_assert_ptr_nonnull(got);
    ck_assert(json_equal(got, claims));
    ck_assert_uint_eq(json_object_size(header), 3);
    ck_assert_str_eq(json_string_value(json_object_get(header, "alg")), "ES256");
    ck_assert_str_eq(json_string_value(json_object_get(header, "kid")), gk.kid);
    ck_assert_str_eq(json_string_value(json_object_get(header, "typ")), "JWT");
    json_decref(got);
    json_decref(header);
    json_decref(claims);
    free(token);
}
END_TEST

START_TEST(jws_typ_at_jwt)
{
    json_t *claims = json_pack("{s:s}", "sub", "u1"), *header = NULL, *got;
    char *token = oauth_jws_sign(ks, "at+jwt", claims);
    size_t len;
    unsigned char *raw = b64url_decode_new(strtok(util_strdup(token), "."), &len);

    /* The header is exactly this text, in this order and without whitespace. */
    char *expected =
        util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\",\"typ\":\"at+jwt\"}", gk.kid);
    ck_assert_uint_eq(len, strlen(expected));
    ck_assert_mem_eq(raw, expected, len);

    got = oauth_jws_verify(ks, token, &header);
    ck_assert_ptr_nonnull(got);
    ck_assert_str_eq(json_string_value(json_object_get(header, "typ")), "at+jwt");
    json_decref(got);
    json_decref(header);
    json_decref(claims);
    free(token);
    free(raw);
    free(expected);
}
END_TEST

START_TEST(jws_compact_claims)
{
    json_t *claims = json_pack("{s:s, s:i}", "sub", "u1", "iat", 5);
    char *token = oauth_jws_sign(ks, "JWT", claims);
    char *payload = strchr(token, '.') + 1;
    size_t len;
    unsigned char *raw;

    *strchr(payload, '.') = '\0';
    raw = b64url_decode_new(payload, &len);
    ck_assert_uint_eq(len, strlen("{\"sub\":\"u1\",\"iat\":5}"));
    ck_assert_mem_eq(raw, "{\"sub\":\"u1\",\"iat\":5}", len);
    json_decref(claims);
    free(token);
    free(raw);
}
END_TEST

START_TEST(jws_sign_rejects_non_object)
{
    json_t *array = json_array();

    ck_assert_ptr_null(oauth_jws_sign(ks, "JWT", array));
    ck_assert_ptr_null(oauth_jws_sign(ks, "JWT", NULL));
    ck_assert_ptr_null(oauth_jws_sign(NULL, "JWT", array));
    json_decref(array);
}
END_TEST

/* What a resource server does: rebuild the key from the JWKS alone and check the raw
 * r||s signature with OpenSSL. */
START_TEST(jws_verify_with_jwks_only)
{
    json_t *claims = json_pack("{s:s}", "sub", "u1");
    char *token = oauth_jws_sign(ks, "at+jwt", claims);
    json_t *jwks = oauth_keyset_jwks(ks);
    EVP_PKEY *pub = jwk_public_key(json_array_get(json_object_get(jwks, "keys"), 0));
    char *last_dot = strrchr(token, '.');
    unsigned char *raw, *der = NULL;
    size_t raw_len;
    int der_len;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    raw = b64url_decode_new(last_dot + 1, &raw_len);
    ck_assert_uint_eq(raw_len, 64);
    ECDSA_SIG_set0(sig, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    der_len = i2d_ECDSA_SIG(sig, &der);
    ck_assert_int_gt(der_len, 0);
    ck_assert_int_eq(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
    ck_assert_int_eq(EVP_DigestVerify(md, der, (size_t)der_len, (unsigned char *)token,
                                      (size_t)(last_dot - token)),
                     1);

    /* The same check fails for a changed input, so it is not vacuous. */
    token[0] ^= 1;
    ck_assert_int_eq(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
    ck_assert_int_ne(EVP_DigestVerify(md, der, (size_t)der_len, (unsigned char *)token,
                                      (size_t)(last_dot - token)),
                     1);

    EVP_MD_CTX_free(md);
    ECDSA_SIG_free(sig);
    OPENSSL_free(der);
    free(raw);
    EVP_PKEY_free(pub);
    json_decref(jwks);
    json_decref(claims);
    free(token);
}
END_TEST

START_TEST(jws_forge_baseline)
{
    /* The forging helper makes tokens that verify, so each rejection below is caused by
     * the one thing that test changes. */
    char *token = forge(gk_pkey, gk_header, "{\"sub\":\"u1\"}", 64);

    ck_assert(verifies(token));
    free(token);
}
END_TEST

START_TEST(jws_tampered_payload)
{
    json_t *claims = json_pack("{s:s}", "sub", "alice");
    char *token = oauth_jws_sign(ks, "JWT", claims);
    char *p = strchr(token, '.') + 1, *evil, *forged;
    char *tail = strchr(p, '.');

    evil = util_b64url_encode_new("{\"sub\":\"mallory\"}", 17);
    forged = util_asprintf("%.*s.%s%s", (int)(p - token - 1), token, evil, tail);
    ck_assert(verifies(token));
    ck_assert(!verifies(forged));
    json_decref(claims);
    free(token);
    free(evil);
    free(forged);
}
END_TEST

START_TEST(jws_tampered_signature)
{
    json_t *claims = json_pack("{s:s}", "sub", "alice");
    char *token = oauth_jws_sign(ks, "JWT", claims);
    char *last_dot = strrchr(token, '.');
    size_t len;
    unsigned char *raw = b64url_decode_new(last_dot + 1, &len);
    char *sig, *forged;

    for (size_t bit = 0; bit < 64 * 8; bit += 37) {
        raw[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        sig = util_b64url_encode_new(raw, len);
        forged = util_asprintf("%.*s.%s", (int)(last_dot - token), token, sig);
        ck_assert_msg(!verifies(forged), "bit %zu", bit);
        raw[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        free(sig);
        free(forged);
    }
    json_decref(claims);
    free(token);
    free(raw);
}
END_TEST

START_TEST(jws_signature_length)
{
    static const size_t lengths[] = {0, 1, 32, 63, 65, 66, 72};

    for (size_t i = 0; i < ARRAY_LEN(lengths); i++) {
        char *token = forge(gk_pkey, gk_header, "{\"sub\":\"u1\"}", lengths[i]);

        ck_assert_msg(!verifies(token), "signature of %zu bytes", lengths[i]);
        free(token);
    }
}
END_TEST

START_TEST(jws_der_signature_rejected)
{
    /* A DER ECDSA signature (OpenSSL's own format) is not a JWS signature. */
    char *h = util_b64url_encode_new(gk_header, strlen(gk_header));
    char *p = util_b64url_encode_new("{}", 2);
    char *input = util_asprintf("%s.%s", h, p), *s, *token;
    unsigned char der[80];
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, gk_pkey);
    EVP_DigestSign(md, der, &der_len, (unsigned char *)input, strlen(input));
    s = util_b64url_encode_new(der, der_len);
    token = util_asprintf("%s.%s", input, s);
    ck_assert(!verifies(token));
    EVP_MD_CTX_free(md);
    free(h);
    free(p);
    free(input);
    free(s);
    free(token);
}
END_TEST

START_TEST(jws_alg_none)
{
    char *header = util_asprintf("{\"alg\":\"none\",\"kid\":\"%s\"}", gk.kid);
    char *h = util_b64url_encode_new(header, strlen(header));
    char *p = util_b64url_encode_new("{\"sub\":\"u1\"}", 12);
    char *unsigned_token = util_asprintf("%s.%s.", h, p);
    char *signed_token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);

    ck_assert(!verifies(unsigned_token));
    ck_assert(!verifies(signed_token));
    free(header);
    free(h);
    free(p);
    free(unsigned_token);
    free(signed_token);
}
END_TEST

START_TEST(jws_alg_variants)
{
    static const char *const algs[] = {"es256", "Es256", "ES384", "ES512",  "RS256",
                                       "PS256", "HS256", "EdDSA", "ES256 ", ""};

    for (size_t i = 0; i < ARRAY_LEN(algs); i++) {
        char *header = util_asprintf("{\"alg\":\"%s\",\"kid\":\"%s\"}", algs[i], gk.kid);
        char *token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);

        ck_assert_msg(!verifies(token), "alg %s accepted", algs[i]);
        free(header);
        free(token);
    }
}
END_TEST

/* The libjwt 1.10.2 algorithm confusion: an HS256 MAC keyed with the server's public key
 * PEM, which anyone can build from the JWKS. */
START_TEST(jws_hs256_with_public_pem)
{
    json_t *jwks = oauth_keyset_jwks(ks);
    EVP_PKEY *pub = jwk_public_key(json_array_get(json_object_get(jwks, "keys"), 0));
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem, *header, *h, *p, *input, *s, *token;
    long pem_len;
    unsigned char mac[32];
    unsigned int mac_len = 0;

    ck_assert_int_eq(PEM_write_bio_PUBKEY(bio, pub), 1);
    pem_len = BIO_get_mem_data(bio, &pem);
    header = util_asprintf("{\"alg\":\"HS256\",\"kid\":\"%s\",\"typ\":\"JWT\"}", gk.kid);
    h = util_b64url_encode_new(header, strlen(header));
    p = util_b64url_encode_new("{\"sub\":\"admin\"}", 15);
    input = util_asprintf("%s.%s", h, p);
    HMAC(EVP_sha256(), pem, (int)pem_len, (unsigned char *)input, strlen(input), mac,
         &mac_len);
    s = util_b64url_encode_new(mac, mac_len);
    token = util_asprintf("%s.%s", input, s);

    ck_assert(!verifies(token));

    BIO_free(bio);
    EVP_PKEY_free(pub);
    json_decref(jwks);
    free(header);
    free(h);
    free(p);
    free(input);
    free(s);
    free(token);
}
END_TEST

START_TEST(jws_kid_checks)
{
    static const char *const headers[] = {
        "{\"alg\":\"ES256\",\"kid\":\"unknown-kid\"}",
        "{\"alg\":\"ES256\"}",
        "{\"alg\":\"ES256\",\"kid\":7}",
        "{\"alg\":\"ES256\",\"kid\":null}",
        "{\"kid\":\"KID\"}",
        "{\"alg\":[\"ES256\"],\"kid\":\"KID\"}",
    };

    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        char *header = util_strdup(headers[i]), *at = strstr(header, "KID"), *token;

        if (at) {
            char *h =
                util_asprintf("%.*s%s%s", (int)(at - header), header, gk.kid, at + 3);

            free(header);
            header = h;
        }
        token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);
        ck_assert_msg(!verifies(token), "header %s accepted", header);
        free(header);
        free(token);
    }
}
END_TEST

START_TEST(jws_crit_rejected)
{
    char *header = util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\",\"crit\":[\"exp\"],"
                                 "\"exp\":1}",
                                 gk.kid);
    char *token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);

    ck_assert(!verifies(token));
    free(header);
    free(token);

    header = util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\",\"crit\":[]}", gk.kid);
    token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);
    ck_assert(!verifies(token));
    free(header);
    free(token);
}
END_TEST

START_TEST(jws_duplicate_members)
{
    char *header =
        util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\",\"alg\":\"ES256\"}", gk.kid);
    char *token = forge(gk_pkey, header, "{\"sub\":\"u1\"}", 64);

    ck_assert(!verifies(token));
    free(token);

    /* In the payload too: a duplicated sub must not silently pick one value. */
    token = forge(gk_pkey, gk_header, "{\"sub\":\"alice\",\"sub\":\"mallory\"}", 64);
    ck_assert(!verifies(token));
    free(header);
    free(token);
}
END_TEST

START_TEST(jws_payload_must_be_object)
{
    static const char *const payloads[] = {"[1,2]", "\"text\"",    "42",      "null",
                                           "{",     "{\"a\":1} x", "not json"};

    for (size_t i = 0; i < ARRAY_LEN(payloads); i++) {
        char *token = forge(gk_pkey, gk_header, payloads[i], 64);

        ck_assert_msg(!verifies(token), "payload %s accepted", payloads[i]);
        free(token);
    }
}
END_TEST

START_TEST(jws_header_must_be_object)
{
    static const char *const headers[] = {"[\"ES256\"]", "\"ES256\"", "{", ""};

    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        char *token = forge(gk_pkey, headers[i], "{}", 64);

        ck_assert_msg(!verifies(token), "header %s accepted", headers[i]);
        free(token);
    }
}
END_TEST

START_TEST(jws_segment_structure)
{
    char *good = forge(gk_pkey, gk_header, "{\"sub\":\"u1\"}", 64);
    char *first_dot = strchr(good, '.'), *last_dot = strrchr(good, '.');
    char *bad[10];

    bad[0] = util_asprintf("%s.", good);                 /* 3 dots, empty fourth */
    bad[1] = util_asprintf("%s.%s", good, last_dot + 1); /* 3 dots */
    bad[2] = util_asprintf("%.*s", (int)(last_dot - good), good); /* 1 dot */
    bad[3] = util_asprintf("%s=", good);                          /* padding */
    bad[4] = util_asprintf(" %s", good);                          /* whitespace */
    bad[5] = util_asprintf("%.*s+%s", (int)(first_dot - good), good, first_dot); /* '+' */
    bad[6] = util_asprintf("%.*s/%s", (int)(first_dot - good), good, first_dot); /* '/' */
    bad[7] =
        util_asprintf("%.*sA%s", (int)(first_dot - good), good, first_dot); /* length */
    bad[8] = util_asprintf(".%s", first_dot); /* empty header */
    bad[9] = util_asprintf("%.*s..%s", (int)(first_dot - good), good, last_dot + 1);

    ck_assert(verifies(good));
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        ck_assert_msg(!verifies(bad[i]), "case %zu accepted", i);
        free(bad[i]);
    }
    ck_assert(!verifies(""));
    ck_assert(!verifies(".."));
    ck_assert_ptr_null(oauth_jws_verify(ks, NULL, NULL));
    ck_assert_ptr_null(oauth_jws_verify(NULL, good, NULL));
    free(good);
}
END_TEST

START_TEST(jws_non_canonical_base64)
{
    /* "e30" is "{}"; "e31" decodes to the same byte with nonzero leftover bits, which the
     * decoder rejects so each token has one spelling. */
    char *h = util_b64url_encode_new(gk_header, strlen(gk_header));
    char *good = forge_segments(gk_pkey, h, "e30", 64);
    char *bad = forge_segments(gk_pkey, h, "e31", 64);

    ck_assert(verifies(good));
    ck_assert(!verifies(bad));
    free(h);
    free(good);
    free(bad);
}
END_TEST

START_TEST(jws_length_cap)
{
    char *pad = util_malloc(13000), *payload, *token;

    memset(pad, 'a', 11000);
    pad[11000] = '\0';
    payload = util_asprintf("{\"pad\":\"%s\"}", pad);
    token = forge(gk_pkey, gk_header, payload, 64);
    ck_assert_uint_le(strlen(token), 16384);
    ck_assert(verifies(token));
    free(payload);
    free(token);

    memset(pad, 'a', 12500);
    pad[12500] = '\0';
    payload = util_asprintf("{\"pad\":\"%s\"}", pad);
    token = forge(gk_pkey, gk_header, payload, 64);
    ck_assert_uint_gt(strlen(token), 16384);
    ck_assert(!verifies(token));
    free(payload);
    free(token);
    free(pad);
}
END_TEST

START_TEST(jws_retired_key_verifies)
{
    struct gen_key next = key_new();
    struct storage_key rows[2] = {key_row(&next, 0), key_row(&gk, 1700000000)};
    struct oauth_keyset *rotated = oauth_keyset_new(rows, 2, SECRET, 0);
    json_t *claims = json_pack("{s:s}", "sub", "u1"), *got;
    char *old_token = oauth_jws_sign(ks, "JWT", claims);

    got = oauth_jws_verify(rotated, old_token, NULL);
    ck_assert_ptr_nonnull(got);
    json_decref(got);
    json_decref(claims);
    free(old_token);
    oauth_keyset_free(rotated);
    key_free(&next);
}
END_TEST

START_TEST(half_hash_vector)
{
    /* OpenID Connect Core 1.0 appendix A.4: this access_token has
     * at_hash 77QmUPtjPfzWtF2AnpK9RQ. */
    char *h = oauth_half_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y");

    ck_assert_str_eq(h, "77QmUPtjPfzWtF2AnpK9RQ");
    free(h);
    h = oauth_half_hash("");
    /* SHA-256("") = e3b0c442 98fc1c14 9afbf4c8 996fb924 ...; left half, base64url. */
    ck_assert_str_eq(h, "47DEQpj8HBSa-_TImW-5JA");
    free(h);
}
END_TEST

/* ---- discovery and JWKS endpoints -------------------------------------------------- */

static const struct server_config test_config = {.issuer = "https://as.example.test"};

static void assert_string_array(const json_t *doc, const char *name,
                                const char *const *want, size_t n)
{
    const json_t *a = json_object_get(doc, name);

    ck_assert_msg(json_is_array(a), "%s is not an array", name);
    ck_assert_uint_eq(json_array_size(a), n);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(json_string_value(json_array_get(a, i)), want[i]);
}

#define ASSERT_ARRAY(doc, name, ...)                                                     \
    assert_string_array(doc, name, (const char *const[]){__VA_ARGS__},                   \
                        ARRAY_LEN(((const char *const[]){__VA_ARGS__})))

START_TEST(discovery_document)
{
    const char *key;
    json_t *value;

    server_config = &test_config;
    oauth_discovery_handle(&sr);

    ck_assert_int_eq(sent.replies, 1);
    ck_assert_int_eq(sent.status, 200);
    ck_assert_str_eq(sent_header("Cache-Control"), "public, max-age=300");
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "issuer")),
                     "https://as.example.test");
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "token_endpoint")),
                     "https://as.example.test/token");
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "jwks_uri")),
                     "https://as.example.test/jwks");
    ck_assert_str_eq(json_string_value(json_object_get(
                         sent.body, "backchannel_authentication_endpoint")),
                     "https://as.example.test/bc-authorize");
    ck_assert(json_is_true(
        json_object_get(sent.body, "backchannel_user_code_parameter_supported")));
    ASSERT_ARRAY(sent.body, "backchannel_token_delivery_modes_supported", "poll", "ping",
                 "push");
    ASSERT_ARRAY(sent.body, "grant_types_supported", "urn:openid:params:grant-type:ciba");
    ASSERT_ARRAY(sent.body, "token_endpoint_auth_methods_supported",
                 "client_secret_basic", "client_secret_post");
    ASSERT_ARRAY(sent.body, "subject_types_supported", "public");
    ASSERT_ARRAY(sent.body, "id_token_signing_alg_values_supported", "ES256");
    ASSERT_ARRAY(sent.body, "scopes_supported", "openid");
    ASSERT_ARRAY(sent.body, "acr_values_supported", "urn:cibad:acr:sms-otp");
    ASSERT_ARRAY(sent.body, "claims_supported", "sub", "iss", "aud", "exp", "iat",
                 "auth_time", "acr", "amr", "urn:openid:params:jwt:claim:auth_req_id");
    ck_assert_ptr_null(json_object_get(sent.body, "response_types_supported"));
    ck_assert_ptr_null(json_object_get(sent.body, "authorization_endpoint"));
    ck_assert_uint_eq(json_object_size(sent.body), 13);

    /* RFC 8414 section 3.2: no empty arrays; every URL is under the issuer. */
    json_object_foreach(sent.body, key, value)
    {
        ck_assert_msg(!json_is_array(value) || json_array_size(value) > 0, "%s empty",
                      key);
        if (strcmp(key, "jwks_uri") == 0 ||
            strstr(key, "_endpoint") == key + strlen(key) - 9)
            ck_assert(strncmp(json_string_value(value), "https://as.example.test/", 24) ==
                      0);
    }
}
END_TEST

START_TEST(discovery_head_and_post)
{
    server_config = &test_config;
    request_method = "HEAD";
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 200);

    sent_reset();
    request_method = "POST";
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 405);
    ck_assert_str_eq(sent_header("Allow"), "GET, HEAD");
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "error")),
                     "invalid_request");
}
END_TEST

START_TEST(discovery_without_issuer)
{
    server_config = NULL;
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 500);
}
END_TEST

START_TEST(jwks_endpoint)
{
    json_t *expected = oauth_keyset_jwks(ks);

    worker.keys = ks;
    oauth_jwks_handle(&sr);
    ck_assert_int_eq(sent.replies, 1);
    ck_assert_int_eq(sent.status, 200);
    ck_assert_str_eq(sent_header("Cache-Control"), "public, max-age=60");
    ck_assert(json_equal(sent.body, expected));
    ck_assert_ptr_null(
        json_object_get(json_array_get(json_object_get(sent.body, "keys"), 0), "d"));
    json_decref(expected);

    sent_reset();
    request_method = "DELETE";
    oauth_jwks_handle(&sr);
    ck_assert_int_eq(sent.status, 405);
}
END_TEST

START_TEST(jwks_endpoint_without_keys)
{
    worker.keys = NULL;
    oauth_jwks_handle(&sr);
    ck_assert_int_eq(sent.status, 503);
    ck_assert_str_eq(json_string_value(json_object_get(sent.body, "error")),
                     "temporarily_unavailable");
}
END_TEST

static Suite *oauth_suite(void)
{
    Suite *s = suite_create("oauth");
    TCase *errors = tcase_create("errors");
    TCase *client = tcase_create("client_auth");
    TCase *keys = tcase_create("keys");
    TCase *jws = tcase_create("jws");
    TCase *endpoints = tcase_create("endpoints");

    tcase_add_checked_fixture(errors, setup, teardown);
    tcase_add_test(errors, error_table_statuses);
    tcase_add_test(errors, error_table_descriptions);
    tcase_add_test(errors, error_ok_maps_to_server_error);
    tcase_add_test(errors, reply_error_body_and_headers);
    tcase_add_test(errors, reply_error_custom_description);
    tcase_add_test(errors, reply_error_bad_description_replaced);
    tcase_add_test(errors, reply_error_401_www_authenticate);
    tcase_add_test(errors, reply_error_access_denied_by_endpoint);
    tcase_add_test(errors, reply_error_503_retry_after);
    tcase_add_test(errors, reply_method_not_allowed);
    tcase_add_test(errors, reply_error_logs_one_line);
    tcase_add_test(errors, reply_error_ok_sends_server_error);
    suite_add_tcase(s, errors);

    tcase_add_checked_fixture(client, setup, teardown);
    tcase_add_test(client, auth_basic_ok);
    tcase_add_test(client, auth_basic_scheme_case_insensitive);
    tcase_add_test(client, auth_post_ok);
    tcase_add_test(client, auth_basic_urlencoded_secret);
    tcase_add_test(client, auth_basic_urlencoded_client_id);
    tcase_add_test(client, auth_basic_raw_secret_rejected);
    tcase_add_test(client, auth_basic_bad_percent_escape);
    tcase_add_test(client, auth_basic_nul_escape);
    tcase_add_test(client, auth_basic_wrong_secret);
    tcase_add_test(client, auth_unknown_client_same_as_wrong_secret);
    tcase_add_test(client, auth_registered_method_enforced);
    tcase_add_test(client, auth_basic_and_body_secret);
    tcase_add_test(client, auth_basic_body_client_id_differs);
    tcase_add_test(client, auth_basic_body_client_id_same);
    tcase_add_test(client, auth_no_credentials);
    tcase_add_test(client, auth_client_id_only);
    tcase_add_test(client, auth_empty_secret_counts_as_absent);
    tcase_add_test(client, auth_secret_only);
    tcase_add_test(client, auth_basic_empty_parts);
    tcase_add_test(client, auth_basic_malformed);
    tcase_add_test(client, auth_other_scheme);
    tcase_add_test(client, auth_client_assertion);
    tcase_add_test(client, auth_length_caps);
    tcase_add_test(client, auth_invalid_utf8_client_id);
    tcase_add_test(client, auth_database_down);
    tcase_add_test(client, auth_storage_error);
    tcase_add_test(client, auth_logs_no_secret);
    tcase_add_test(client, scope_has);
    tcase_add_test(client, secret_hash_vector);
    suite_add_tcase(s, client);

    tcase_add_checked_fixture(keys, key_setup, key_teardown);
    tcase_add_test(keys, key_generate_format);
    tcase_add_test(keys, key_seal_format_independent);
    tcase_add_test(keys, key_thumbprint_independent);
    tcase_add_test(keys, key_known_p256_key);
    tcase_add_test(keys, keyset_wrong_secret);
    tcase_add_test(keys, keyset_damaged_rows);
    tcase_add_test(keys, keyset_duplicate_kid);
    tcase_add_test(keys, keyset_signing_choice);
    tcase_add_test(keys, keyset_prepublishes_new_key);
    tcase_add_test(keys, jwks_public_members_only);
    suite_add_tcase(s, keys);

    tcase_add_checked_fixture(jws, key_setup, key_teardown);
    tcase_add_test(jws, jws_round_trip);
    tcase_add_test(jws, jws_typ_at_jwt);
    tcase_add_test(jws, jws_compact_claims);
    tcase_add_test(jws, jws_sign_rejects_non_object);
    tcase_add_test(jws, jws_verify_with_jwks_only);
    tcase_add_test(jws, jws_forge_baseline);
    tcase_add_test(jws, jws_tampered_payload);
    tcase_add_test(jws, jws_tampered_signature);
    tcase_add_test(jws, jws_signature_length);
    tcase_add_test(jws, jws_der_signature_rejected);
    tcase_add_test(jws, jws_alg_none);
    tcase_add_test(jws, jws_alg_variants);
    tcase_add_test(jws, jws_hs256_with_public_pem);
    tcase_add_test(jws, jws_kid_checks);
    tcase_add_test(jws, jws_crit_rejected);
    tcase_add_test(jws, jws_duplicate_members);
    tcase_add_test(jws, jws_payload_must_be_object);
    tcase_add_test(jws, jws_header_must_be_object);
    tcase_add_test(jws, jws_segment_structure);
    tcase_add_test(jws, jws_non_canonical_base64);
    tcase_add_test(jws, jws_length_cap);
    tcase_add_test(jws, jws_retired_key_verifies);
    tcase_add_test(jws, half_hash_vector);
    suite_add_tcase(s, jws);

    tcase_add_checked_fixture(endpoints, key_setup, key_teardown);
    tcase_add_test(endpoints, discovery_document);
    tcase_add_test(endpoints, discovery_head_and_post);
    tcase_add_test(endpoints, discovery_without_issuer);
    tcase_add_test(endpoints, jwks_endpoint);
    tcase_add_test(endpoints, jwks_endpoint_without_keys);
    suite_add_tcase(s, endpoints);

    return s;
}

CHECK_MAIN(oauth_suite)
