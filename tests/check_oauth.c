/* check_oauth.c - tests for oauth/: the error table and replies, client authentication,
 * signing keys, JWS signing and verification, the discovery and JWKS endpoints, and
 * the request object checks of ciba/request_object.c
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
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "check_runner.h"
#include "ciba/request_object.h"
#include "oauth/oauth.h"
#include "oauth/oauth_int.h"
#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"
#include "tests/mock_http.h"

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

/* The client certificate of the request: none until fake_cert_set. */
static unsigned char *fake_cert_der;
static size_t fake_cert_der_len;
static char fake_cert_x5t[44];
static bool fake_cert_verified;

const char *server_req_client_cert_thumbprint(const struct server_req *sr)
{
    (void)sr;
    return fake_cert_der ? fake_cert_x5t : NULL;
}

bool server_req_client_cert_verified(const struct server_req *sr)
{
    (void)sr;
    return fake_cert_der && fake_cert_verified;
}

const unsigned char *server_req_client_cert_der(const struct server_req *sr, size_t *len)
{
    (void)sr;
    *len = fake_cert_der_len;
    return fake_cert_der;
}

/* Makes cert (or none, for NULL) the request's client certificate. */
static void fake_cert_set(X509 *cert, bool verified)
{
    unsigned char digest[32];
    unsigned int digest_len = 0;
    unsigned char *der = NULL;
    int len;

    OPENSSL_free(fake_cert_der);
    fake_cert_der = NULL;
    fake_cert_der_len = 0;
    fake_cert_verified = verified;
    if (!cert)
        return;
    len = i2d_X509(cert, &der);
    ck_assert_int_gt(len, 0);
    fake_cert_der = der;
    fake_cert_der_len = (size_t)len;
    ck_assert_int_eq(X509_digest(cert, EVP_sha256(), digest, &digest_len), 1);
    util_b64url_encode(digest, digest_len, fake_cert_x5t);
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

/* Clients that authenticate by JWT, filled by the assertion tests. */
struct fake_jwt_client {
    const char *client_id;
    const char *method;
    const char *jwks;
    const char *jwks_uri;
    const char *alg;
    const char *sealed;
};
static struct fake_jwt_client jwt_clients[4];

/* Clients that authenticate by TLS client certificate, filled by the mTLS tests. */
struct fake_mtls_client {
    const char *client_id;
    const char *method;
    const char *dn, *dns, *uri, *ip, *email;
    const char *jwks, *jwks_uri;
};
static struct fake_mtls_client mtls_clients[8];

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
    for (size_t i = 0; fake_mode == FAKE_ANSWER && i < ARRAY_LEN(jwt_clients); i++) {
        const struct fake_jwt_client *j = &jwt_clients[i];

        if (!j->client_id || strcmp(j->client_id, lookup->client_id) != 0)
            continue;
        row.client_id = j->client_id;
        row.client_name = "JWT agent";
        row.token_endpoint_auth_method = j->method;
        row.scope = "openid";
        row.backchannel_token_delivery_mode = "poll";
        row.grant_types = OAUTH_GRANT_TYPE_CIBA;
        row.jwks = j->jwks;
        row.jwks_uri = j->jwks_uri;
        row.token_endpoint_auth_signing_alg = j->alg;
        row.client_secret_sealed = j->sealed;
        status = STORAGE_OK;
    }
    for (size_t i = 0; fake_mode == FAKE_ANSWER && i < ARRAY_LEN(mtls_clients); i++) {
        const struct fake_mtls_client *m = &mtls_clients[i];

        if (!m->client_id || strcmp(m->client_id, lookup->client_id) != 0)
            continue;
        row.client_id = m->client_id;
        row.client_name = "mTLS agent";
        row.token_endpoint_auth_method = m->method;
        row.scope = "openid";
        row.backchannel_token_delivery_mode = "poll";
        row.grant_types = OAUTH_GRANT_TYPE_CIBA;
        row.tls_client_auth_subject_dn = m->dn;
        row.tls_client_auth_san_dns = m->dns;
        row.tls_client_auth_san_uri = m->uri;
        row.tls_client_auth_san_ip = m->ip;
        row.tls_client_auth_san_email = m->email;
        row.jwks = m->jwks;
        row.jwks_uri = m->jwks_uri;
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

/* ---- storage_client_assertion_record double ---------------------------------------- */

/* The jti values recorded, as "client_id jti" lines. */
static char *used_jti[64];
static size_t n_used_jti;
static enum storage_status jti_status_override; /* STORAGE_OK: behave normally */

struct fake_record {
    storage_done_cb cb;
    void *arg;
    enum storage_status status;
};

static void on_fake_record(evutil_socket_t fd, short what, void *arg)
{
    struct fake_record *r = arg;

    (void)fd;
    (void)what;
    r->cb(r->arg, r->status);
    free(r);
}

int storage_client_assertion_record(struct storage_conn *db, const char *client_id,
                                    const char *jti, int64_t expires_at,
                                    storage_done_cb cb, void *arg)
{
    const struct timeval now = {0, 0};
    struct fake_record *r;
    char *line;

    ck_assert_ptr_nonnull(db);
    ck_assert_int_gt(expires_at, util_now_s());
    if (fake_mode == FAKE_QUEUE_FAILS)
        return -1;
    r = util_calloc(1, sizeof(*r));
    r->cb = cb;
    r->arg = arg;
    r->status = jti_status_override;
    line = util_asprintf("%s %s", client_id, jti);
    for (size_t i = 0; r->status == STORAGE_OK && i < n_used_jti; i++) {
        if (strcmp(used_jti[i], line) == 0)
            r->status = STORAGE_CONFLICT;
    }
    if (r->status == STORAGE_OK && n_used_jti < ARRAY_LEN(used_jti))
        used_jti[n_used_jti++] = line;
    else
        free(line);
    ck_assert_int_eq(event_base_once(test_base, -1, EV_TIMEOUT, on_fake_record, r, &now),
                     0);
    return 0;
}

/* The request object double shares the list and the override, with its lines marked
 * "ro", because the real table is separate from client_assertion_jti. */
int storage_request_object_record(struct storage_conn *db, const char *client_id,
                                  const char *jti, int64_t expires_at, storage_done_cb cb,
                                  void *arg)
{
    char *marked = util_asprintf("ro %s", client_id);
    int rc = storage_client_assertion_record(db, marked, jti, expires_at, cb, arg);

    free(marked);
    return rc;
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
    fake_cert_set(NULL, false);
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

/* ---- client keys: JWK import and oauth_jws_verify_with -------------------------------
 */

/* Builds the public JWK of an EC or RSA key with OpenSSL parameter getters, without
 * oauth/ code. kid and alg may be NULL. New reference. */
static json_t *public_jwk_of(EVP_PKEY *pkey, const char *kid, const char *alg)
{
    json_t *jwk = json_object();
    BIGNUM *a = NULL, *b = NULL;
    unsigned char buf[1024];
    char *text;
    bool ec = EVP_PKEY_is_a(pkey, "EC");
    const char *names[2] = {ec ? OSSL_PKEY_PARAM_EC_PUB_X : OSSL_PKEY_PARAM_RSA_N,
                            ec ? OSSL_PKEY_PARAM_EC_PUB_Y : OSSL_PKEY_PARAM_RSA_E};
    const char *members[2] = {ec ? "x" : "n", ec ? "y" : "e"};
    BIGNUM **bns[2] = {&a, &b};

    json_object_set_new(jwk, "kty", json_string(ec ? "EC" : "RSA"));
    if (ec) {
        char group[32];
        size_t coord = 32;

        ck_assert_int_eq(EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL), 1);
        if (strcmp(group, "secp384r1") == 0)
            coord = 48;
        json_object_set_new(jwk, "crv", json_string(coord == 48 ? "P-384" : "P-256"));
        for (int i = 0; i < 2; i++) {
            ck_assert_int_eq(EVP_PKEY_get_bn_param(pkey, names[i], bns[i]), 1);
            ck_assert_int_eq(BN_bn2binpad(*bns[i], buf, (int)coord), (int)coord);
            text = util_b64url_encode_new(buf, coord);
            json_object_set_new(jwk, members[i], json_string(text));
            free(text);
        }
    } else {
        for (int i = 0; i < 2; i++) {
            int len;

            ck_assert_int_eq(EVP_PKEY_get_bn_param(pkey, names[i], bns[i]), 1);
            len = BN_bn2bin(*bns[i], buf);
            text = util_b64url_encode_new(buf, (size_t)len);
            json_object_set_new(jwk, members[i], json_string(text));
            free(text);
        }
    }
    if (kid)
        json_object_set_new(jwk, "kid", json_string(kid));
    if (alg)
        json_object_set_new(jwk, "alg", json_string(alg));
    BN_free(a);
    BN_free(b);
    return jwk;
}

/* Signs header.claims with pkey under alg ("ES256", "PS256", "RS256") or with an HMAC
 * secret ("HS256"), all with OpenSSL directly. New string. */
static char *sign_token(const char *alg, EVP_PKEY *pkey, const void *secret,
                        size_t secret_len, const char *header, const char *claims)
{
    char *h = util_b64url_encode_new(header, strlen(header));
    char *p = util_b64url_encode_new(claims, strlen(claims));
    char *input = util_asprintf("%s.%s", h, p), *s, *token;
    unsigned char sig[1024];
    size_t sig_len = sizeof(sig);

    if (strcmp(alg, "ES256") == 0) {
        token = forge_segments(pkey, h, p, 64);
        free(h);
        free(p);
        free(input);
        return token;
    }
    if (strcmp(alg, "HS256") == 0) {
        unsigned int mac_len = 0;

        HMAC(EVP_sha256(), secret, (int)secret_len, (unsigned char *)input, strlen(input),
             sig, &mac_len);
        sig_len = mac_len;
    } else {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;

        ck_assert_int_eq(EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, pkey), 1);
        if (strcmp(alg, "PS256") == 0) {
            ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING),
                             1);
            ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32), 1);
        }
        ck_assert_int_eq(
            EVP_DigestSign(md, sig, &sig_len, (unsigned char *)input, strlen(input)), 1);
        EVP_MD_CTX_free(md);
    }
    s = util_b64url_encode_new(sig, sig_len);
    token = util_asprintf("%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return token;
}

static EVP_PKEY *ec_key;             /* P-256 */
static EVP_PKEY *ec_key2;            /* another P-256 key, "another client's" */
static EVP_PKEY *rsa_key;            /* 2048 bits */
static struct oauth_jwk_set *ec_set; /* ec_key as kid "k1", ES256 */

static struct oauth_jwk_set *set_of(json_t *jwk_stolen, unsigned alg)
{
    json_t *jwks = json_pack("{s:[o]}", "keys", jwk_stolen);
    char err[200] = "";
    struct oauth_jwk_set *set = oauth_jwk_set_parse(jwks, alg, true, err, sizeof(err));

    ck_assert_msg(set != NULL, "set rejected: %s", err);
    json_decref(jwks);
    return set;
}

/* Generates the keys once per test case, in the runner, so each forked test inherits
 * them: RSA key generation is slow enough to matter under load. */
static void keys_generate(void)
{
    ec_key = EVP_EC_gen("P-256");
    ec_key2 = EVP_EC_gen("P-256");
    rsa_key = EVP_RSA_gen(2048);
    ck_assert_ptr_nonnull(ec_key);
    ck_assert_ptr_nonnull(ec_key2);
    ck_assert_ptr_nonnull(rsa_key);
}

static void keys_free(void)
{
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ec_key2);
    EVP_PKEY_free(rsa_key);
    ec_key = ec_key2 = rsa_key = NULL;
}

static void jwk_setup(void)
{
    setup();
    ec_set = set_of(public_jwk_of(ec_key, "k1", NULL), 0);
}

static void jwk_teardown(void)
{
    oauth_jwk_set_free(ec_set);
    teardown();
}

#define CLAIMS "{\"iss\":\"c\",\"sub\":\"c\"}"

/* True when token verifies against set with the algorithms allowed; stores the reason
 * of a failure in last_reason. oauth_jws_verify_peeked must agree on the outcome and
 * the reason for every token that oauth_jws_peek can decode. */
static const char *last_reason;

static void peeked_agrees(const struct oauth_jwk_set *set, const char *token,
                          unsigned allowed, bool ok)
{
    json_t *header = NULL, *claims = NULL;
    const char *reason = NULL;

    if (oauth_jws_peek(token, &header, &claims) != 0) {
        ck_assert_msg(!ok, "verified a token that oauth_jws_peek cannot decode");
        return;
    }
    ck_assert_int_eq(oauth_jws_verify_peeked(set, token, header, allowed, &reason), ok);
    if (!ok)
        ck_assert_str_eq(reason, last_reason);
    json_decref(header);
    json_decref(claims);
}

static bool verifies_with(const struct oauth_jwk_set *set, const char *token,
                          unsigned allowed)
{
    json_t *header = NULL;
    json_t *claims = oauth_jws_verify_with(set, token, allowed, &header, &last_reason);
    bool ok = claims != NULL;

    peeked_agrees(set, token, allowed, ok);

    if (ok) {
        ck_assert_ptr_nonnull(header);
        ck_assert_str_eq(json_string_value(json_object_get(claims, "iss")), "c");
    } else {
        ck_assert_ptr_null(header);
        ck_assert_ptr_nonnull(last_reason);
    }
    json_decref(header);
    json_decref(claims);
    return ok;
}

/* Imports jwk (stolen) with registered alg, expecting a failure whose message holds
 * fragment. */
static void import_fails(json_t *jwk, unsigned registered, const char *fragment)
{
    char err[200] = "";
    struct oauth_jwk *key = oauth_jwk_import(jwk, registered, err, sizeof(err));
    char *text = json_dumps(jwk, JSON_COMPACT);

    ck_assert_msg(key == NULL, "accepted %s", text);
    ck_assert_msg(strstr(err, fragment) != NULL, "error \"%s\" lacks \"%s\" for %s", err,
                  fragment, text);
    free(text);
    json_decref(jwk);
}

START_TEST(jws_alg_names)
{
    ck_assert_uint_eq(oauth_jws_alg_parse("ES256"), OAUTH_ALG_ES256);
    ck_assert_uint_eq(oauth_jws_alg_parse("PS256"), OAUTH_ALG_PS256);
    ck_assert_uint_eq(oauth_jws_alg_parse("RS256"), OAUTH_ALG_RS256);
    ck_assert_uint_eq(oauth_jws_alg_parse("HS256"), OAUTH_ALG_HS256);
    ck_assert_uint_eq(oauth_jws_alg_parse("none"), 0);
    ck_assert_uint_eq(oauth_jws_alg_parse("es256"), 0);
    ck_assert_uint_eq(oauth_jws_alg_parse(NULL), 0);
    ck_assert_str_eq(oauth_jws_alg_name(OAUTH_ALG_PS256), "PS256");
    ck_assert_ptr_null(oauth_jws_alg_name(OAUTH_ALG_ES256 | OAUTH_ALG_PS256));
}
END_TEST

START_TEST(jwk_import_ec)
{
    char err[200];
    json_t *jwk = public_jwk_of(ec_key, "k1", NULL);
    struct oauth_jwk *key;

    json_object_set_new(jwk, "use", json_string("sig"));
    json_object_set_new(jwk, "key_ops", json_pack("[s]", "verify"));
    key = oauth_jwk_import(jwk, 0, err, sizeof(err));
    ck_assert_msg(key != NULL, "%s", err);
    ck_assert_str_eq(oauth_jwk_kid(key), "k1");
    ck_assert_uint_eq(oauth_jwk_alg(key), OAUTH_ALG_ES256);
    oauth_jwk_free(key);

    /* The registered alg fits an EC key only when it is ES256. */
    key = oauth_jwk_import(jwk, OAUTH_ALG_ES256, err, sizeof(err));
    ck_assert_ptr_nonnull(key);
    oauth_jwk_free(key);
    json_decref(jwk);
}
END_TEST

START_TEST(jwk_import_rsa)
{
    char err[200];
    json_t *jwk = public_jwk_of(rsa_key, NULL, NULL);
    struct oauth_jwk *key = oauth_jwk_import(jwk, 0, err, sizeof(err));

    /* Without any alg an RSA key verifies PS256, never RS256. */
    ck_assert_msg(key != NULL, "%s", err);
    ck_assert_ptr_null(oauth_jwk_kid(key));
    ck_assert_uint_eq(oauth_jwk_alg(key), OAUTH_ALG_PS256);
    oauth_jwk_free(key);

    key = oauth_jwk_import(jwk, OAUTH_ALG_RS256, err, sizeof(err));
    ck_assert_ptr_nonnull(key);
    ck_assert_uint_eq(oauth_jwk_alg(key), OAUTH_ALG_RS256);
    oauth_jwk_free(key);

    json_object_set_new(jwk, "alg", json_string("RS256"));
    key = oauth_jwk_import(jwk, 0, err, sizeof(err));
    ck_assert_ptr_nonnull(key);
    ck_assert_uint_eq(oauth_jwk_alg(key), OAUTH_ALG_RS256);
    oauth_jwk_free(key);
    json_decref(jwk);
}
END_TEST

START_TEST(jwk_import_rejects_private_keys)
{
    json_t *jwk;

    jwk = public_jwk_of(ec_key, "k1", NULL);
    json_object_set_new(jwk, "d", json_string("AAAA"));
    import_fails(jwk, 0, "private member \"d\"");
    for (size_t i = 0; i < 6; i++) {
        static const char *const members[] = {"d", "p", "q", "dp", "dq", "qi"};

        jwk = public_jwk_of(rsa_key, "r1", NULL);
        json_object_set_new(jwk, members[i], json_string("AQAB"));
        import_fails(jwk, 0, "private member");
    }
    /* A symmetric key is never imported: HS256 keys come only from a client secret. */
    import_fails(
        json_pack("{s:s, s:s, s:s}", "kty", "oct", "k", "c2VjcmV0", "alg", "HS256"), 0,
        "private member \"k\"");
    import_fails(json_pack("{s:s, s:s}", "kty", "oct", "alg", "HS256"), 0,
                 "unsupported kty oct");
}
END_TEST

START_TEST(jwk_import_rejects_bad_keys)
{
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    EVP_PKEY *rsa1024 = EVP_RSA_gen(1024);
    json_t *jwk;
    char *x;

    import_fails(public_jwk_of(p384, "k384", NULL), 0, "unsupported EC curve P-384");
    import_fails(public_jwk_of(rsa1024, "small", NULL), 0, "1024 bits");
    import_fails(json_pack("{s:s, s:s, s:s}", "kty", "OKP", "crv", "Ed25519", "x",
                           "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
                 0, "unsupported kty OKP");
    import_fails(json_pack("{s:s}", "crv", "P-256"), 0, "unsupported kty (missing)");
    import_fails(json_string("not an object"), 0, "not a JSON object");

    /* A point with a wrong x is not on the curve. */
    jwk = public_jwk_of(ec_key, "k1", NULL);
    x = util_strdup(json_string_value(json_object_get(jwk, "x")));
    x[5] = x[5] == 'A' ? 'B' : 'A';
    json_object_set_new(jwk, "x", json_string(x));
    free(x);
    import_fails(jwk, 0, "not on P-256");

    jwk = public_jwk_of(ec_key, "k1", NULL);
    json_object_set_new(jwk, "x", json_string("AAAA"));
    import_fails(jwk, 0, "32-byte");
    jwk = public_jwk_of(ec_key, "k1", NULL);
    json_object_del(jwk, "y");
    import_fails(jwk, 0, "32-byte");
    jwk = public_jwk_of(rsa_key, "r1", NULL);
    json_object_set_new(jwk, "n", json_string("not base64url!"));
    import_fails(jwk, 0, "base64url");

    jwk = public_jwk_of(ec_key, "k1", NULL);
    json_object_set_new(jwk, "use", json_string("enc"));
    import_fails(jwk, 0, "use is not");
    jwk = public_jwk_of(ec_key, "k1", NULL);
    json_object_set_new(jwk, "key_ops", json_pack("[s]", "sign"));
    import_fails(jwk, 0, "key_ops");
    jwk = public_jwk_of(ec_key, NULL, NULL);
    json_object_set_new(jwk, "kid", json_integer(7));
    import_fails(jwk, 0, "kid must be a string");
    jwk = public_jwk_of(ec_key, "", NULL);
    import_fails(jwk, 0, "kid must be a string");

    EVP_PKEY_free(p384);
    EVP_PKEY_free(rsa1024);
}
END_TEST

START_TEST(jwk_import_rejects_wrong_alg)
{
    import_fails(public_jwk_of(ec_key, "k1", "PS256"), 0,
                 "cannot be used with an EC key");
    import_fails(public_jwk_of(ec_key, "k1", "HS256"), 0,
                 "cannot be used with an EC key");
    import_fails(public_jwk_of(ec_key, "k1", "ES384"), 0, "unsupported alg ES384");
    import_fails(public_jwk_of(ec_key, "k1", "none"), 0, "unsupported alg none");
    import_fails(public_jwk_of(rsa_key, "r1", "ES256"), 0, "cannot be used with an RSA");
    import_fails(public_jwk_of(rsa_key, "r1", "RS256"), OAUTH_ALG_PS256,
                 "differs from the registered alg PS256");
    import_fails(public_jwk_of(ec_key, "k1", NULL), OAUTH_ALG_PS256,
                 "cannot be used with an EC key");
    import_fails(public_jwk_of(rsa_key, "r1", NULL), OAUTH_ALG_HS256,
                 "cannot be used with an RSA key");
}
END_TEST

START_TEST(jwk_set_rules)
{
    char err[200];
    json_t *enc = public_jwk_of(ec_key2, "enc1", NULL);
    json_t *jwks;
    struct oauth_jwk_set *set;

    json_object_set_new(enc, "use", json_string("enc"));

    /* A published set may hold an encryption key; a registered one may not. */
    jwks = json_pack("{s:[o, O]}", "keys", public_jwk_of(ec_key, "k1", NULL), enc);
    set = oauth_jwk_set_parse(jwks, 0, false, err, sizeof(err));
    ck_assert_msg(set != NULL, "%s", err);
    ck_assert_uint_eq(oauth_jwk_set_count(set), 1);
    ck_assert(oauth_jwk_set_has_kid(set, "k1"));
    ck_assert(!oauth_jwk_set_has_kid(set, "enc1"));
    oauth_jwk_set_free(set);
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, true, err, sizeof(err)));
    ck_assert_msg(strstr(err, "key 1: the key's use") != NULL, "%s", err);
    json_decref(jwks);

    /* Only the enc key: nothing left. */
    jwks = json_pack("{s:[O]}", "keys", enc);
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, false, err, sizeof(err)));
    ck_assert_msg(strstr(err, "no key usable") != NULL, "%s", err);
    json_decref(jwks);

    /* A private key in a published set fails the whole set. */
    jwks =
        json_pack("{s:[o, {s:s, s:s, s:s}]}", "keys", public_jwk_of(ec_key, "k1", NULL),
                  "kty", "oct", "k", "c2VjcmV0c2VjcmV0", "kid", "h");
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, false, err, sizeof(err)));
    ck_assert_msg(strstr(err, "private member") != NULL, "%s", err);
    json_decref(jwks);

    jwks = json_pack("{s:[o, o]}", "keys", public_jwk_of(ec_key, "same", NULL),
                     public_jwk_of(ec_key2, "same", NULL));
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, false, err, sizeof(err)));
    ck_assert_msg(strstr(err, "two keys have the kid") != NULL, "%s", err);
    json_decref(jwks);

    jwks = json_pack("{s:[]}", "keys");
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, true, err, sizeof(err)));
    json_decref(jwks);
    jwks = json_pack("{s:{}}", "keys");
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, true, err, sizeof(err)));
    ck_assert_msg(strstr(err, "\"keys\" array") != NULL, "%s", err);
    json_decref(jwks);
    jwks = json_pack("[]");
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, true, err, sizeof(err)));
    json_decref(jwks);

    jwks = json_pack("{s:[]}", "keys");
    for (int i = 0; i <= OAUTH_JWKS_MAX_KEYS; i++) {
        char kid[16];

        snprintf(kid, sizeof(kid), "k%d", i);
        json_array_append_new(json_object_get(jwks, "keys"),
                              public_jwk_of(ec_key, kid, NULL));
    }
    ck_assert_ptr_null(oauth_jwk_set_parse(jwks, 0, false, err, sizeof(err)));
    ck_assert_msg(strstr(err, "at most 20") != NULL, "%s", err);
    json_decref(jwks);
    json_decref(enc);
}
END_TEST

START_TEST(verify_with_es256)
{
    char *good = sign_token("ES256", ec_key, NULL, 0,
                            "{\"alg\":\"ES256\",\"kid\":\"k1\"}", CLAIMS);
    char *no_kid = sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\"}", CLAIMS);
    char *other = sign_token("ES256", ec_key2, NULL, 0,
                             "{\"alg\":\"ES256\",\"kid\":\"k1\"}", CLAIMS);
    char *unknown = sign_token("ES256", ec_key, NULL, 0,
                               "{\"alg\":\"ES256\",\"kid\":\"k2\"}", CLAIMS);

    ck_assert(verifies_with(ec_set, good, OAUTH_ALG_ES256));
    /* Without a kid, a set of one key is enough (OpenID Connect Core section 10.1). */
    ck_assert(verifies_with(ec_set, no_kid, OAUTH_ALG_ES256));
    /* Another client's key under the same kid. */
    ck_assert(!verifies_with(ec_set, other, OAUTH_ALG_ES256));
    ck_assert_str_eq(last_reason, "the signature does not verify");
    ck_assert(!verifies_with(ec_set, unknown, OAUTH_ALG_ES256));
    ck_assert_str_eq(last_reason, "unknown kid");
    /* ES256 not allowed here. */
    ck_assert(!verifies_with(ec_set, good, OAUTH_ALG_PS256));
    ck_assert_ptr_null(oauth_jws_verify_with(NULL, good, OAUTH_ALG_ES256, NULL, NULL));
    ck_assert_ptr_null(oauth_jws_verify_with(ec_set, NULL, OAUTH_ALG_ES256, NULL, NULL));
    {
        /* The peeked header is the one that picks the key: one of another token fails
         * unless it names the same key, and no header at all fails. */
        json_t *header = json_pack("{s:s, s:s}", "alg", "ES256", "kid", "k2");
        const char *reason = NULL;

        ck_assert(
            !oauth_jws_verify_peeked(ec_set, good, header, OAUTH_ALG_ES256, &reason));
        ck_assert_str_eq(reason, "unknown kid");
        ck_assert(!oauth_jws_verify_peeked(ec_set, good, NULL, OAUTH_ALG_ES256, &reason));
        ck_assert(!oauth_jws_verify_peeked(NULL, good, header, OAUTH_ALG_ES256, NULL));
        ck_assert(!oauth_jws_verify_peeked(ec_set, "a.b", header, OAUTH_ALG_ES256, NULL));
        json_decref(header);
    }
    free(good);
    free(no_kid);
    free(other);
    free(unknown);
}
END_TEST

START_TEST(verify_with_needs_kid_among_several)
{
    json_t *jwks = json_pack("{s:[o, o]}", "keys", public_jwk_of(ec_key, "a", NULL),
                             public_jwk_of(ec_key2, "b", NULL));
    char err[200];
    struct oauth_jwk_set *set;
    char *no_kid = sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\"}", CLAIMS);
    char *kid_a =
        sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"a\"}", CLAIMS);

    set = oauth_jwk_set_parse(jwks, 0, true, err, sizeof(err));
    ck_assert_msg(set != NULL, "%s", err);
    ck_assert(!verifies_with(set, no_kid, OAUTH_ALG_ES256));
    ck_assert_str_eq(last_reason, "no kid, and the client has several keys");
    ck_assert(verifies_with(set, kid_a, OAUTH_ALG_ES256));
    oauth_jwk_set_free(set);
    json_decref(jwks);
    free(no_kid);
    free(kid_a);
}
END_TEST

/* Runs the openssl command-line tool on the signing input with the PSS options given,
 * so PS256 is checked against an implementation other than ours. Returns the token. */
static char *openssl_cli_ps256(EVP_PKEY *pkey, const char *header, const char *claims,
                               const char *sigopts)
{
    char dir[] = "/tmp/check_oauth_pss.XXXXXX";
    char *key_path, *in_path, *sig_path, *cmd, *h, *p, *input, *s, *token;
    unsigned char sig[1024];
    size_t sig_len;
    FILE *f;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    key_path = util_asprintf("%s/key.pem", dir);
    in_path = util_asprintf("%s/input", dir);
    sig_path = util_asprintf("%s/sig", dir);
    f = fopen(key_path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    h = util_b64url_encode_new(header, strlen(header));
    p = util_b64url_encode_new(claims, strlen(claims));
    input = util_asprintf("%s.%s", h, p);
    f = fopen(in_path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(input, f);
    fclose(f);
    cmd = util_asprintf("openssl dgst -sha256 -sign '%s' %s -out '%s' '%s'", key_path,
                        sigopts, sig_path, in_path);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
    f = fopen(sig_path, "r");
    ck_assert_ptr_nonnull(f);
    sig_len = fread(sig, 1, sizeof(sig), f);
    fclose(f);
    ck_assert_uint_eq(sig_len, 256);
    s = util_b64url_encode_new(sig, sig_len);
    token = util_asprintf("%s.%s", input, s);

    unlink(key_path);
    unlink(in_path);
    unlink(sig_path);
    rmdir(dir);
    free(key_path);
    free(in_path);
    free(sig_path);
    free(cmd);
    free(h);
    free(p);
    free(input);
    free(s);
    return token;
}

START_TEST(verify_with_ps256_openssl_cli)
{
    struct oauth_jwk_set *set = set_of(public_jwk_of(rsa_key, "r1", "PS256"), 0);
    const char *header = "{\"alg\":\"PS256\",\"kid\":\"r1\"}";
    char *good = openssl_cli_ps256(rsa_key, header, CLAIMS,
                                   "-sigopt rsa_padding_mode:pss -sigopt "
                                   "rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256");
    char *salt20 = openssl_cli_ps256(rsa_key, header, CLAIMS,
                                     "-sigopt rsa_padding_mode:pss -sigopt "
                                     "rsa_pss_saltlen:20 -sigopt rsa_mgf1_md:sha256");
    char *mgf1_sha1 = openssl_cli_ps256(rsa_key, header, CLAIMS,
                                        "-sigopt rsa_padding_mode:pss -sigopt "
                                        "rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha1");
    char *pkcs1 = openssl_cli_ps256(rsa_key, header, CLAIMS, "");
    char *ours = sign_token("PS256", rsa_key, NULL, 0, header, CLAIMS);

    ck_assert_msg(verifies_with(set, good, OAUTH_ALG_PS256), "%s", last_reason);
    ck_assert(verifies_with(set, ours, OAUTH_ALG_PS256));
    /* PS256 fixes the salt to the hash length and MGF1 to SHA-256 (RFC 7518 3.5). */
    ck_assert(!verifies_with(set, salt20, OAUTH_ALG_PS256));
    ck_assert(!verifies_with(set, mgf1_sha1, OAUTH_ALG_PS256));
    /* A PKCS #1 v1.5 signature is not a PSS signature. */
    ck_assert(!verifies_with(set, pkcs1, OAUTH_ALG_PS256));
    oauth_jwk_set_free(set);
    free(good);
    free(salt20);
    free(mgf1_sha1);
    free(pkcs1);
    free(ours);
}
END_TEST

START_TEST(verify_with_rs256_only_if_allowed)
{
    struct oauth_jwk_set *rs = set_of(public_jwk_of(rsa_key, "r1", "RS256"), 0);
    struct oauth_jwk_set *ps = set_of(public_jwk_of(rsa_key, "r1", "PS256"), 0);
    char *token = sign_token("RS256", rsa_key, NULL, 0,
                             "{\"alg\":\"RS256\",\"kid\":\"r1\"}", CLAIMS);
    char *ps_header = sign_token("RS256", rsa_key, NULL, 0,
                                 "{\"alg\":\"PS256\",\"kid\":\"r1\"}", CLAIMS);
    char *cut;

    ck_assert(verifies_with(rs, token, OAUTH_ALG_RS256));
    ck_assert(!verifies_with(rs, token, OAUTH_ALG_ES256 | OAUTH_ALG_PS256));
    ck_assert_str_eq(last_reason, "the key's alg is not allowed here");
    /* The key is PS256, so an RS256 header fails, and a PKCS #1 signature under a
     * PS256 header too. */
    ck_assert(!verifies_with(ps, token, OAUTH_ALG_PS256 | OAUTH_ALG_RS256));
    ck_assert(!verifies_with(ps, ps_header, OAUTH_ALG_PS256 | OAUTH_ALG_RS256));
    /* A signature one byte short of the modulus size. */
    cut = util_strdup(token);
    cut[strlen(cut) - 2] = '\0';
    ck_assert(!verifies_with(rs, cut, OAUTH_ALG_RS256));
    oauth_jwk_set_free(rs);
    oauth_jwk_set_free(ps);
    free(token);
    free(ps_header);
    free(cut);
}
END_TEST

START_TEST(verify_with_alg_none_and_confusion)
{
    json_t *jwk = public_jwk_of(ec_key, "k1", NULL);
    char *jwk_text = json_dumps(jwk, JSON_COMPACT);
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem;
    long pem_len;
    const char *hs = "{\"alg\":\"HS256\",\"kid\":\"k1\"}";
    const char *none_header = "{\"alg\":\"none\",\"kid\":\"k1\"}";
    char *h = util_b64url_encode_new(none_header, strlen(none_header));
    char *p = util_b64url_encode_new(CLAIMS, strlen(CLAIMS));
    char *none = util_asprintf("%s.%s.", h, p);
    char *none_signed =
        sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"none\",\"kid\":\"k1\"}", CLAIMS);
    char *lower = sign_token("ES256", ec_key, NULL, 0,
                             "{\"alg\":\"es256\",\"kid\":\"k1\"}", CLAIMS);
    char *mac_jwk, *mac_pem, *mac_x;
    const char *x = json_string_value(json_object_get(jwk, "x"));

    ck_assert_int_eq(PEM_write_bio_PUBKEY(bio, ec_key), 1);
    pem_len = BIO_get_mem_data(bio, &pem);
    /* HS256 MACs keyed with every public form of the client's key. */
    mac_jwk = sign_token("HS256", NULL, jwk_text, strlen(jwk_text), hs, CLAIMS);
    mac_pem = sign_token("HS256", NULL, pem, (size_t)pem_len, hs, CLAIMS);
    mac_x = sign_token("HS256", NULL, x, strlen(x), hs, CLAIMS);

    ck_assert(!verifies_with(ec_set, none, ~0u));
    ck_assert(!verifies_with(ec_set, none_signed, ~0u));
    ck_assert(!verifies_with(ec_set, lower, ~0u));
    ck_assert(!verifies_with(ec_set, mac_jwk, ~0u));
    ck_assert_str_eq(last_reason, "the header's alg is not the key's alg");
    ck_assert(!verifies_with(ec_set, mac_pem, ~0u));
    ck_assert(!verifies_with(ec_set, mac_x, ~0u));

    BIO_free(bio);
    json_decref(jwk);
    free(jwk_text);
    free(h);
    free(p);
    free(none);
    free(none_signed);
    free(lower);
    free(mac_jwk);
    free(mac_pem);
    free(mac_x);
}
END_TEST

/* An ES256 header over a signature by a P-384 key: the P-384 key cannot be registered,
 * and its signature does not verify with the registered P-256 key. */
START_TEST(verify_with_wrong_curve)
{
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    const char *header = "{\"alg\":\"ES256\",\"kid\":\"k1\"}";
    char *h = util_b64url_encode_new(header, strlen(header));
    char *p = util_b64url_encode_new(CLAIMS, strlen(CLAIMS));
    char *input = util_asprintf("%s.%s", h, p), *s, *token;
    unsigned char der[120], raw[96];
    const unsigned char *dp = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig;

    ck_assert_int_eq(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, p384), 1);
    ck_assert_int_eq(
        EVP_DigestSign(md, der, &der_len, (unsigned char *)input, strlen(input)), 1);
    sig = d2i_ECDSA_SIG(NULL, &dp, (long)der_len);
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 48);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 48, 48);
    for (size_t len = 64; len <= 96; len += 32) {
        s = util_b64url_encode_new(raw, len);
        token = util_asprintf("%s.%s", input, s);
        ck_assert(!verifies_with(ec_set, token, OAUTH_ALG_ES256));
        free(s);
        free(token);
    }
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(p384);
    free(h);
    free(p);
    free(input);
}
END_TEST

START_TEST(verify_with_hs256_secret)
{
    const char *secret = "0123456789abcdef0123456789abcdef-secret";
    struct oauth_jwk_set *set = oauth_jwk_set_hmac(secret, strlen(secret));
    char *good =
        sign_token("HS256", NULL, secret, strlen(secret), "{\"alg\":\"HS256\"}", CLAIMS);
    char *wrong = sign_token("HS256", NULL, "another secret of more than 32 bytes", 36,
                             "{\"alg\":\"HS256\"}", CLAIMS);
    char *es = sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\"}", CLAIMS);

    ck_assert_ptr_nonnull(set);
    ck_assert(verifies_with(set, good, OAUTH_ALG_HS256));
    ck_assert(!verifies_with(set, good, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(set, wrong, OAUTH_ALG_HS256));
    ck_assert(!verifies_with(set, es, ~0u));
    /* RFC 7518 section 3.2: an HS256 key has at least 256 bits. */
    ck_assert_ptr_null(oauth_jwk_set_hmac("short", 5));
    ck_assert_ptr_null(oauth_jwk_set_hmac(NULL, 40));
    oauth_jwk_set_free(set);
    free(good);
    free(wrong);
    free(es);
}
END_TEST

START_TEST(verify_with_structure)
{
    char *good = sign_token("ES256", ec_key, NULL, 0,
                            "{\"alg\":\"ES256\",\"kid\":\"k1\"}", CLAIMS);
    char *crit =
        sign_token("ES256", ec_key, NULL, 0,
                   "{\"alg\":\"ES256\",\"kid\":\"k1\",\"crit\":[\"x\"],\"x\":1}", CLAIMS);
    char *dup = sign_token("ES256", ec_key, NULL, 0,
                           "{\"alg\":\"ES256\",\"kid\":\"k1\",\"kid\":\"k1\"}", CLAIMS);
    char *dup_claim =
        sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"k1\"}",
                   "{\"iss\":\"c\",\"iss\":\"c\"}");
    char *array =
        sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\",\"kid\":\"k1\"}", "[1]");
    char *kid_number =
        sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\",\"kid\":1}", CLAIMS);
    char *extra = util_asprintf("%s.x", good);
    char *space = util_asprintf(" %s", good);
    char *huge = util_calloc(1, 20000);
    json_t *header = NULL, *claims = NULL;

    ck_assert(verifies_with(ec_set, good, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, crit, OAUTH_ALG_ES256));
    ck_assert_str_eq(last_reason, "the header has crit");
    ck_assert(!verifies_with(ec_set, dup, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, dup_claim, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, array, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, kid_number, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, extra, OAUTH_ALG_ES256));
    ck_assert(!verifies_with(ec_set, space, OAUTH_ALG_ES256));
    memset(huge, 'A', 19999);
    huge[100] = '.';
    huge[200] = '.';
    ck_assert(!verifies_with(ec_set, huge, OAUTH_ALG_ES256));

    /* oauth_jws_peek reads without verifying, under the same structural rules. */
    ck_assert_int_eq(oauth_jws_peek(good, &header, &claims), 0);
    ck_assert_str_eq(json_string_value(json_object_get(header, "kid")), "k1");
    ck_assert_str_eq(json_string_value(json_object_get(claims, "sub")), "c");
    json_decref(header);
    json_decref(claims);
    ck_assert_int_eq(oauth_jws_peek(dup, &header, &claims), -1);
    ck_assert_int_eq(oauth_jws_peek(dup_claim, &header, &claims), -1);
    ck_assert_int_eq(oauth_jws_peek(extra, &header, &claims), -1);
    ck_assert_int_eq(oauth_jws_peek(huge, &header, &claims), -1);
    ck_assert_int_eq(oauth_jws_peek("a.b.c", &header, &claims), -1);

    free(good);
    free(crit);
    free(dup);
    free(dup_claim);
    free(array);
    free(kid_number);
    free(extra);
    free(space);
    free(huge);
}
END_TEST

/* ---- client authentication by JWT assertion ---------------------------------------- */

#define ISSUER         "https://as.example.test"
#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define HMAC_SECRET    "hmac-client-secret-0123456789abcdef-0123456789"

static struct server_config assertion_config = {
    .issuer = ISSUER,
    .secret = SECRET,
};
static char *inline_jwks; /* ec_key as "k1" */
static char *rsa_jwks;    /* rsa_key as "r1" */
static char *sealed_secret;
static struct mock_http *jwks_server;
static char *jwks_url;

/* Seals a client secret as oauth/ stores it, without oauth/ code. */
static char *test_seal_secret(const char *server_secret, const char *secret)
{
    unsigned char key[32], nonce[12], ct[256];
    int len, fin;
    char *nonce_text, *ct_text, *out;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    const char *label = "cibad client secret seal v1";

    RAND_bytes(nonce, sizeof(nonce));
    HMAC(EVP_sha256(), server_secret, (int)strlen(server_secret),
         (const unsigned char *)label, strlen(label), key, NULL);
    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce);
    EVP_EncryptUpdate(c, ct, &len, (const unsigned char *)secret, (int)strlen(secret));
    EVP_EncryptFinal_ex(c, ct + len, &fin);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, ct + len + fin);
    EVP_CIPHER_CTX_free(c);
    nonce_text = util_b64url_encode_new(nonce, sizeof(nonce));
    ct_text = util_b64url_encode_new(ct, (size_t)(len + fin) + 16);
    out = util_asprintf("v1.%s.%s", nonce_text, ct_text);
    free(nonce_text);
    free(ct_text);
    return out;
}

static void assertion_setup(void)
{
    json_t *jwks;

    jwk_setup();
    jwks = json_pack("{s:[o]}", "keys", public_jwk_of(ec_key, "k1", NULL));
    inline_jwks = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    jwks = json_pack("{s:[o]}", "keys", public_jwk_of(rsa_key, "r1", NULL));
    rsa_jwks = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    sealed_secret = test_seal_secret(SECRET, HMAC_SECRET);

    assertion_config.allow_rs256 = false;
    server_config = &assertion_config;
    worker.jwks = oauth_jwks_cache_new(test_base, NULL,
                                       &(struct oauth_jwks_cache_config){
                                           .timeout_ms = 1000,
                                           .ttl_seconds = 300,
                                           .refetch_seconds = 1,
                                           .allow_http_loopback = true,
                                       });
    ck_assert_ptr_nonnull(worker.jwks);
    jwks_server = mock_http_start(NULL, NULL);
    ck_assert_ptr_nonnull(jwks_server);
    jwks_url = mock_http_url(jwks_server, "127.0.0.1", "/jwks");

    memset(jwt_clients, 0, sizeof(jwt_clients));
    jwt_clients[0] = (struct fake_jwt_client){"c-pkj", "private_key_jwt", inline_jwks,
                                              NULL,    "ES256",           NULL};
    jwt_clients[1] = (struct fake_jwt_client){"c-uri",  "private_key_jwt", NULL,
                                              jwks_url, "ES256",           NULL};
    jwt_clients[2] = (struct fake_jwt_client){"c-csj", "client_secret_jwt", NULL, NULL,
                                              "HS256", sealed_secret};
    jwt_clients[3] = (struct fake_jwt_client){"c-rsa", "private_key_jwt", rsa_jwks,
                                              NULL,    "RS256",           NULL};
    jti_status_override = STORAGE_OK;
}

static void assertion_teardown(void)
{
    oauth_jwks_cache_free(worker.jwks);
    worker.jwks = NULL;
    mock_http_free(jwks_server);
    free(jwks_url);
    for (size_t i = 0; i < n_used_jti; i++)
        free(used_jti[i]);
    n_used_jti = 0;
    free(inline_jwks);
    free(rsa_jwks);
    free(sealed_secret);
    server_config = NULL;
    jwk_teardown();
}

/* Builds the claims of a good assertion by client_id, then applies changes: each
 * member of changes replaces the claim, and a null member removes it. */
static char *assertion_claims(const char *client_id, const char *changes)
{
    int64_t now = util_now_s();
    char *jti = util_random_token(12);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", client_id, "sub",
                               client_id, "aud", ISSUER, "iat", (json_int_t)now, "exp",
                               (json_int_t)(now + 60), "jti", jti);
    json_t *edit = changes ? json_loads(changes, 0, NULL) : NULL;
    const char *key;
    json_t *value;
    char *text;

    ck_assert(!changes || edit);
    json_object_foreach(edit, key, value)
    {
        if (json_is_null(value))
            json_object_del(claims, key);
        else
            json_object_set(claims, key, value);
    }
    text = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);
    json_decref(edit);
    free(jti);
    return text;
}

/* An ES256 assertion of client_id signed with pkey under kid, with claim changes. */
static char *es256_assertion(const char *client_id, EVP_PKEY *pkey, const char *kid,
                             const char *changes)
{
    char *claims = assertion_claims(client_id, changes);
    char *header = util_asprintf("{\"alg\":\"ES256\",\"kid\":\"%s\"}", kid);
    char *token = sign_token("ES256", pkey, NULL, 0, header, claims);

    free(claims);
    free(header);
    return token;
}

/* Authenticates with the assertion alone, or with a client_id parameter too. */
static void authenticate_assertion(const char *assertion, const char *client_id)
{
    const char *const form[] = {"client_assertion_type",
                                ASSERTION_TYPE,
                                "client_assertion",
                                assertion,
                                client_id ? "client_id" : NULL,
                                client_id,
                                NULL};

    authenticate(NULL, form);
}

static void expect_ok(const char *client_id)
{
    ck_assert_msg(auth.err == OAUTH_OK, "got %s: %s", oauth_err_code(auth.err),
                  auth.description);
    ck_assert_str_eq(auth.client->client_id, client_id);
    oauth_client_free(auth.client);
    auth.client = NULL;
}

/* The failure the client sees says nothing about which check failed. */
static void expect_invalid_client(void)
{
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_str_eq(auth.description, "Client authentication failed");
}

START_TEST(assertion_inline_jwks_ok)
{
    char *token = es256_assertion("c-pkj", ec_key, "k1", NULL);

    authenticate_assertion(token, NULL);
    expect_ok("c-pkj");
    ck_assert_str_eq(sr.client_id, "c-pkj");
    free(token);

    /* A client_id parameter naming the same client is fine. */
    token = es256_assertion("c-pkj", ec_key, "k1", NULL);
    authenticate_assertion(token, "c-pkj");
    expect_ok("c-pkj");
    free(token);
}
END_TEST

START_TEST(assertion_aud_values)
{
    static const char *const good[] = {
        "{\"aud\":\"" ISSUER "\"}",
        "{\"aud\":\"" ISSUER "/token\"}",
        "{\"aud\":\"" ISSUER "/bc-authorize\"}",
        "{\"aud\":[\"https://other.example\",\"" ISSUER "/token\"]}",
    };
    static const char *const bad[] = {
        "{\"aud\":\"https://evil.example\"}",
        "{\"aud\":\"" ISSUER "/\"}",
        "{\"aud\":\"" ISSUER "/jwks\"}",
        "{\"aud\":\"" ISSUER ".evil.example\"}",
        "{\"aud\":\"https://AS.example.test\"}",
        "{\"aud\":[\"https://other.example\"]}",
        "{\"aud\":[]}",
        "{\"aud\":7}",
        "{\"aud\":null}",
    };

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        char *token = es256_assertion("c-pkj", ec_key, "k1", good[i]);

        authenticate_assertion(token, NULL);
        ck_assert_msg(auth.err == OAUTH_OK, "rejected %s", good[i]);
        oauth_client_free(auth.client);
        free(token);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char *token = es256_assertion("c-pkj", ec_key, "k1", bad[i]);

        authenticate_assertion(token, NULL);
        ck_assert_msg(auth.err == OAUTH_ERR_INVALID_CLIENT, "accepted %s", bad[i]);
        expect_invalid_client();
        free(token);
    }
}
END_TEST

START_TEST(assertion_time_claims)
{
    int64_t now = util_now_s();
    char buf[16][96];
    size_t n = 0;
    const char *bad[16];

    /* Expired, beyond the 30 s skew. */
    snprintf(buf[n], sizeof(buf[n]), "{\"exp\":%lld}", (long long)(now - 60));
    bad[n] = buf[n], n++;
    /* Far in the future: more than 5 minutes ahead. */
    snprintf(buf[n], sizeof(buf[n]), "{\"exp\":%lld,\"iat\":null}",
             (long long)(now + 3600));
    bad[n] = buf[n], n++;
    snprintf(buf[n], sizeof(buf[n]), "{\"exp\":%lld}", (long long)(now + 400));
    bad[n] = buf[n], n++;
    /* Not yet valid. */
    snprintf(buf[n], sizeof(buf[n]), "{\"nbf\":%lld}", (long long)(now + 600));
    bad[n] = buf[n], n++;
    snprintf(buf[n], sizeof(buf[n]), "{\"iat\":%lld}", (long long)(now + 600));
    bad[n] = buf[n], n++;
    /* A lifetime longer than 5 minutes, though exp itself is near. */
    snprintf(buf[n], sizeof(buf[n]), "{\"iat\":%lld}", (long long)(now - 1000));
    bad[n] = buf[n], n++;
    bad[n++] = "{\"exp\":null}";
    bad[n++] = "{\"exp\":\"tomorrow\"}";
    bad[n++] = "{\"exp\":1e300}";
    bad[n++] = "{\"exp\":-5}";
    bad[n++] = "{\"nbf\":\"now\"}";
    bad[n++] = "{\"iat\":true}";

    for (size_t i = 0; i < n; i++) {
        char *token = es256_assertion("c-pkj", ec_key, "k1", bad[i]);

        authenticate_assertion(token, NULL);
        ck_assert_msg(auth.err == OAUTH_ERR_INVALID_CLIENT, "accepted %s", bad[i]);
        expect_invalid_client();
        free(token);
    }

    /* Within the skew, and with nbf and a fractional exp, it passes. */
    snprintf(buf[0], sizeof(buf[0]), "{\"exp\":%lld,\"nbf\":%lld}", (long long)(now - 10),
             (long long)(now + 10));
    snprintf(buf[1], sizeof(buf[1]), "{\"exp\":%lld.5,\"iat\":null}",
             (long long)(now + 100));
    for (size_t i = 0; i < 2; i++) {
        char *token = es256_assertion("c-pkj", ec_key, "k1", buf[i]);

        authenticate_assertion(token, NULL);
        ck_assert_msg(auth.err == OAUTH_OK, "rejected %s", buf[i]);
        oauth_client_free(auth.client);
        free(token);
    }
}
END_TEST

START_TEST(assertion_jti_single_use)
{
    char *token = es256_assertion("c-pkj", ec_key, "k1", NULL);
    char *no_jti = es256_assertion("c-pkj", ec_key, "k1", "{\"jti\":null}");
    char *empty_jti = es256_assertion("c-pkj", ec_key, "k1", "{\"jti\":\"\"}");
    char *number_jti = es256_assertion("c-pkj", ec_key, "k1", "{\"jti\":12}");
    char long_claim[400];
    char *long_jti;

    authenticate_assertion(token, NULL);
    expect_ok("c-pkj");
    /* The same assertion again: a replay. */
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    ck_assert_uint_eq(n_used_jti, 1);

    authenticate_assertion(no_jti, NULL);
    expect_invalid_client();
    authenticate_assertion(empty_jti, NULL);
    expect_invalid_client();
    authenticate_assertion(number_jti, NULL);
    expect_invalid_client();
    memset(long_claim, 0, sizeof(long_claim));
    strcpy(long_claim, "{\"jti\":\"");
    memset(long_claim + 8, 'j', 257);
    strcat(long_claim, "\"}");
    long_jti = es256_assertion("c-pkj", ec_key, "k1", long_claim);
    authenticate_assertion(long_jti, NULL);
    expect_invalid_client();
    ck_assert_uint_eq(n_used_jti, 1);
    free(token);
    free(no_jti);
    free(empty_jti);
    free(number_jti);
    free(long_jti);
}
END_TEST

START_TEST(assertion_names_the_client)
{
    char *other_sub = es256_assertion("c-pkj", ec_key, "k1", "{\"sub\":\"c-uri\"}");
    char *no_sub = es256_assertion("c-pkj", ec_key, "k1", "{\"sub\":null}");
    char *no_iss = es256_assertion("c-pkj", ec_key, "k1", "{\"iss\":null}");
    char *unknown = es256_assertion("c-nobody", ec_key, "k1", NULL);
    char *good = es256_assertion("c-pkj", ec_key, "k1", NULL);

    authenticate_assertion(other_sub, NULL);
    expect_invalid_client();
    authenticate_assertion(no_sub, NULL);
    expect_invalid_client();
    authenticate_assertion(no_iss, NULL);
    expect_invalid_client();
    ck_assert_int_eq(fake_calls, 0);
    /* An unknown client fails like a bad signature. */
    authenticate_assertion(unknown, NULL);
    expect_invalid_client();
    ck_assert_int_eq(fake_calls, 1);
    /* A client_id parameter naming another client. */
    authenticate_assertion(good, "c-uri");
    expect_invalid_client();
    ck_assert_int_eq(fake_calls, 1);
    free(other_sub);
    free(no_sub);
    free(no_iss);
    free(unknown);
    free(good);
}
END_TEST

START_TEST(assertion_signature_checks)
{
    json_t *jwk = public_jwk_of(ec_key, "k1", NULL);
    char *jwk_text = json_dumps(jwk, JSON_COMPACT);
    char *claims = assertion_claims("c-pkj", NULL);
    char *other_key = es256_assertion("c-pkj", ec_key2, "k1", NULL);
    char *unknown_kid = es256_assertion("c-pkj", ec_key, "k9", NULL);
    char *hs = sign_token("HS256", NULL, jwk_text, strlen(jwk_text),
                          "{\"alg\":\"HS256\",\"kid\":\"k1\"}", claims);
    char *h = util_b64url_encode_new("{\"alg\":\"none\"}", 14);
    char *p = util_b64url_encode_new(claims, strlen(claims));
    char *none = util_asprintf("%s.%s.", h, p);
    char *ps = sign_token("PS256", rsa_key, NULL, 0, "{\"alg\":\"PS256\",\"kid\":\"k1\"}",
                          claims);

    /* Another client's key, an unknown kid, alg none, an HS256 MAC keyed with the
     * client's public key, and an RSA signature for an EC client. */
    authenticate_assertion(other_key, NULL);
    expect_invalid_client();
    authenticate_assertion(unknown_kid, NULL);
    expect_invalid_client();
    authenticate_assertion(hs, NULL);
    expect_invalid_client();
    authenticate_assertion(none, NULL);
    expect_invalid_client();
    authenticate_assertion(ps, NULL);
    expect_invalid_client();
    authenticate_assertion("a.b.c", NULL);
    expect_invalid_client();
    ck_assert_uint_eq(n_used_jti, 0);
    json_decref(jwk);
    free(jwk_text);
    free(claims);
    free(other_key);
    free(unknown_kid);
    free(hs);
    free(h);
    free(p);
    free(none);
    free(ps);
}
END_TEST

/* ---- peeked assertion claims must be the signed ones ------------------------------- */

/* Replaces the payload segment of token with that of other. */
static char *splice_payload(const char *token, const char *other)
{
    const char *d1 = strchr(token, '.'), *d2 = strrchr(token, '.');
    const char *o1 = strchr(other, '.'), *o2 = strrchr(other, '.');

    return util_asprintf("%.*s%.*s%s", (int)(d1 - token), token, (int)(o2 - o1), o1, d2);
}

/* Replaces the ES256 signature's s with n - s: the same signature, other bytes. */
static char *high_s_variant(const char *token)
{
    const char *d2 = strrchr(token, '.');
    unsigned char raw[80];
    size_t raw_len = sizeof(raw);
    BIGNUM *s, *n = NULL;
    char *sig, *out;

    ck_assert_int_eq(util_b64url_decode(d2 + 1, strlen(d2 + 1), (char *)raw, &raw_len),
                     0);
    ck_assert_uint_eq(raw_len, 64);
    s = BN_bin2bn(raw + 32, 32, NULL);
    BN_hex2bn(&n, "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
    BN_sub(s, n, s);
    BN_bn2binpad(s, raw + 32, 32);
    sig = util_b64url_encode_new(raw, 64);
    out = util_asprintf("%.*s.%s", (int)(d2 - token), token, sig);
    BN_free(s);
    BN_free(n);
    free(sig);
    return out;
}

START_TEST(assertion_claims_bound_to_signature)
{
    char *signed_a = es256_assertion("c-pkj", ec_key, "k1", NULL);
    char *fresh_jti = es256_assertion("c-pkj", ec_key2, "k1", NULL);
    char *other_client = es256_assertion("c-uri", ec_key2, "k1", NULL);
    char *spliced = splice_payload(signed_a, fresh_jti);
    char *spliced_client = splice_payload(signed_a, other_client);
    char *claims = assertion_claims("c-pkj", NULL);
    char *dup_claims =
        util_asprintf("%.*s,\"jti\":\"second\"}", (int)strlen(claims) - 1, claims);
    char *dup_jti = sign_token("ES256", ec_key, NULL, 0,
                               "{\"alg\":\"ES256\",\"kid\":\"k1\"}", dup_claims);
    char *dup_kid =
        sign_token("ES256", ec_key, NULL, 0,
                   "{\"alg\":\"ES256\",\"kid\":\"k9\",\"kid\":\"k1\"}", claims);
    char *dup_alg =
        sign_token("ES256", ec_key, NULL, 0,
                   "{\"alg\":\"none\",\"alg\":\"ES256\",\"kid\":\"k1\"}", claims);
    json_t *jwk2 = public_jwk_of(ec_key2, "k1", NULL);
    char *jwk2_text = json_dumps(jwk2, JSON_COMPACT);
    char *embedded_header = util_asprintf("{\"alg\":\"ES256\",\"jwk\":%s}", jwk2_text);
    char *embedded = sign_token("ES256", ec_key2, NULL, 0, embedded_header, claims);
    char *csj_a_claims = assertion_claims("c-csj", NULL);
    char *csj_b_claims = assertion_claims("c-csj", NULL);
    char *csj_a = sign_token("HS256", NULL, HMAC_SECRET, strlen(HMAC_SECRET),
                             "{\"alg\":\"HS256\"}", csj_a_claims);
    char *csj_b = sign_token("HS256", NULL, "another secret that is long enough!!", 36,
                             "{\"alg\":\"HS256\"}", csj_b_claims);
    char *csj_spliced = splice_payload(csj_a, csj_b);
    char *replay, *high_s;

    /* A signed assertion's header and signature with another payload (a fresh jti,
     * or another client's iss and sub) never authenticate. */
    authenticate_assertion(spliced, NULL);
    expect_invalid_client();
    authenticate_assertion(spliced_client, NULL);
    expect_invalid_client();
    authenticate_assertion(csj_spliced, NULL);
    expect_invalid_client();
    /* Duplicate members in a signed payload or header. */
    authenticate_assertion(dup_jti, NULL);
    expect_invalid_client();
    authenticate_assertion(dup_kid, NULL);
    expect_invalid_client();
    authenticate_assertion(dup_alg, NULL);
    expect_invalid_client();
    /* A key in the header is not trusted. */
    authenticate_assertion(embedded, NULL);
    expect_invalid_client();
    ck_assert_uint_eq(n_used_jti, 0);

    /* The genuine one works once; its high-s twin is the same jti, so a replay. */
    authenticate_assertion(signed_a, NULL);
    expect_ok("c-pkj");
    high_s = high_s_variant(signed_a);
    authenticate_assertion(high_s, NULL);
    expect_invalid_client();
    replay = util_strdup(signed_a);
    authenticate_assertion(replay, NULL);
    expect_invalid_client();
    authenticate_assertion(csj_a, NULL);
    expect_ok("c-csj");

    free(signed_a);
    free(fresh_jti);
    free(other_client);
    free(spliced);
    free(spliced_client);
    free(claims);
    free(dup_claims);
    free(dup_jti);
    free(dup_kid);
    free(dup_alg);
    json_decref(jwk2);
    free(jwk2_text);
    free(embedded_header);
    free(embedded);
    free(csj_a_claims);
    free(csj_b_claims);
    free(csj_a);
    free(csj_b);
    free(csj_spliced);
    free(replay);
    free(high_s);
}
END_TEST

START_TEST(assertion_method_rules)
{
    char *token = es256_assertion("c-pkj", ec_key, "k1", NULL);
    char *as_basic = es256_assertion("c-basic", ec_key, "k1", NULL);
    const char *const with_secret[] = {"client_assertion_type",
                                       ASSERTION_TYPE,
                                       "client_assertion",
                                       token,
                                       "client_secret",
                                       "x",
                                       NULL};
    const char *const no_type[] = {"client_assertion", token, NULL};
    const char *const no_assertion[] = {"client_assertion_type", ASSERTION_TYPE, NULL};
    const char *const wrong_type[] = {"client_assertion_type", "urn:example:saml",
                                      "client_assertion", token, NULL};
    const char *const post[] = {"client_id", "c-pkj", "client_secret", "anything", NULL};

    /* Two methods at once. */
    authenticate(basic("c-pkj:anything"), with_secret + 2 * 0);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL, with_secret);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL, no_type);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL, no_assertion);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL, wrong_type);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 0);

    /* A secret client may not use an assertion, and a private_key_jwt client may not
     * use a secret. */
    authenticate_assertion(as_basic, NULL);
    expect_invalid_client();
    authenticate(NULL, post);
    expect_invalid_client();
    authenticate(basic("c-pkj:anything"), NULL);
    expect_invalid_client();
    free(token);
    free(as_basic);
}
END_TEST

START_TEST(assertion_client_secret_jwt)
{
    char *claims = assertion_claims("c-csj", NULL);
    char *good = sign_token("HS256", NULL, HMAC_SECRET, strlen(HMAC_SECRET),
                            "{\"alg\":\"HS256\"}", claims);
    char *wrong = sign_token("HS256", NULL, "another secret that is long enough!!", 36,
                             "{\"alg\":\"HS256\"}", claims);
    char *es = sign_token("ES256", ec_key, NULL, 0, "{\"alg\":\"ES256\"}", claims);

    authenticate_assertion(good, NULL);
    expect_ok("c-csj");
    free(claims);
    claims = assertion_claims("c-csj", NULL);
    authenticate_assertion(wrong, NULL);
    expect_invalid_client();
    authenticate_assertion(es, NULL);
    expect_invalid_client();

    /* A sealed secret that the server secret cannot open is a server fault. */
    jwt_clients[2].sealed = "v1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    free(good);
    good = sign_token("HS256", NULL, HMAC_SECRET, strlen(HMAC_SECRET),
                      "{\"alg\":\"HS256\"}", claims);
    authenticate_assertion(good, NULL);
    assert_auth_failed(OAUTH_ERR_SERVER_ERROR);
    free(claims);
    free(good);
    free(wrong);
    free(es);
}
END_TEST

START_TEST(assertion_rs256_needs_setting)
{
    char *claims = assertion_claims("c-rsa", NULL);
    char *token = sign_token("RS256", rsa_key, NULL, 0,
                             "{\"alg\":\"RS256\",\"kid\":\"r1\"}", claims);

    authenticate_assertion(token, NULL);
    expect_invalid_client();
    assertion_config.allow_rs256 = true;
    free(token);
    free(claims);
    claims = assertion_claims("c-rsa", NULL);
    token = sign_token("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\",\"kid\":\"r1\"}",
                       claims);
    authenticate_assertion(token, NULL);
    expect_ok("c-rsa");
    free(token);
    free(claims);
}
END_TEST

START_TEST(assertion_storage_failures)
{
    char *token = es256_assertion("c-pkj", ec_key, "k1", NULL);

    jti_status_override = STORAGE_UNAVAILABLE;
    authenticate_assertion(token, NULL);
    assert_auth_failed(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    jti_status_override = STORAGE_ERROR;
    authenticate_assertion(token, NULL);
    assert_auth_failed(OAUTH_ERR_SERVER_ERROR);
    jti_status_override = STORAGE_OK;
    fake_mode = FAKE_UNAVAILABLE;
    authenticate_assertion(token, NULL);
    assert_auth_failed(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    fake_mode = FAKE_ANSWER;
    authenticate_assertion(token, NULL);
    expect_ok("c-pkj");
    free(token);
}
END_TEST

START_TEST(assertion_logs_reason_not_token)
{
    int fd = capture_log();
    char *expired = es256_assertion("c-pkj", ec_key, "k1", "{\"exp\":1000}");
    char *log;

    authenticate_assertion(expired, NULL);
    expect_invalid_client();
    log = read_log(fd);
    ck_assert_msg(strstr(log, "client authentication failed: the assertion has expired"),
                  "%s", log);
    ck_assert_ptr_nonnull(strstr(log, "client_id=c-pkj"));
    ck_assert_ptr_nonnull(strstr(log, sr.rid));
    ck_assert_ptr_null(strstr(log, expired));
    ck_assert_ptr_null(strstr(log, strrchr(expired, '.') + 1));
    free(expired);
}
END_TEST

/* ---- jwks_uri ---------------------------------------------------------------------- */

static char *jwks_doc(EVP_PKEY *a, const char *kid_a, EVP_PKEY *b, const char *kid_b)
{
    json_t *jwks = json_pack("{s:[o]}", "keys", public_jwk_of(a, kid_a, NULL));
    char *text;

    if (b)
        json_array_append_new(json_object_get(jwks, "keys"),
                              public_jwk_of(b, kid_b, NULL));
    text = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    return text;
}

START_TEST(jwks_uri_fetched_and_cached)
{
    char *doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *token;
    const struct mock_http_request *r;

    mock_http_set_default(jwks_server, 200, doc);
    for (int i = 0; i < 3; i++) {
        token = es256_assertion("c-uri", ec_key, "k1", NULL);
        authenticate_assertion(token, NULL);
        expect_ok("c-uri");
        free(token);
    }
    /* One fetch served all three. */
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);
    r = mock_http_request_get(jwks_server, 0);
    ck_assert_str_eq(r->method, "GET");
    ck_assert_str_eq(r->path, "/jwks");

    /* The cached set still rejects another client's key. */
    token = es256_assertion("c-uri", ec_key2, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    free(token);
    free(doc);
}
END_TEST

START_TEST(jwks_uri_down_slow_or_garbage)
{
    static const char *const garbage[] = {
        "not json", "{\"keys\":\"x\"}", "[]",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}"};
    char *doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *token;
    int64_t started;

    /* Garbage, one reply each; the refetch interval is 1 s. */
    for (size_t i = 0; i < ARRAY_LEN(garbage); i++) {
        mock_http_push(jwks_server, 200, garbage[i], 0);
        token = es256_assertion("c-uri", ec_key, "k1", NULL);
        authenticate_assertion(token, NULL);
        ck_assert_msg(auth.err == OAUTH_ERR_INVALID_CLIENT, "accepted JWKS %s",
                      garbage[i]);
        free(token);
        usleep(1100 * 1000);
    }
    mock_http_push(jwks_server, 500, doc, 0);
    token = es256_assertion("c-uri", ec_key, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    free(token);
    usleep(1100 * 1000);

    /* Slow: the fetch times out after 1 s, and the request fails, not hangs. */
    mock_http_push(jwks_server, 200, doc, 5000);
    started = util_mono_ms();
    token = es256_assertion("c-uri", ec_key, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    ck_assert_int_lt(util_mono_ms() - started, 3000);
    free(token);
    usleep(1100 * 1000);

    /* Down: nothing listens at the address any more. */
    mock_http_free(jwks_server);
    jwks_server = NULL;
    token = es256_assertion("c-uri", ec_key, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    free(token);

    /* A failed fetch is not repeated within the refetch interval. */
    token = es256_assertion("c-uri", ec_key, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    free(token);
    free(doc);
}
END_TEST

START_TEST(jwks_uri_rotation_on_unknown_kid)
{
    char *old_doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *new_doc = jwks_doc(ec_key, "k1", ec_key2, "k2");
    char *token;

    mock_http_set_default(jwks_server, 200, old_doc);
    token = es256_assertion("c-uri", ec_key, "k1", NULL);
    authenticate_assertion(token, NULL);
    expect_ok("c-uri");
    free(token);

    /* The client publishes a new key and signs with it at once. Within the refetch
     * interval the cached set answers, so the unknown kid fails. */
    mock_http_set_default(jwks_server, 200, new_doc);
    token = es256_assertion("c-uri", ec_key2, "k2", NULL);
    authenticate_assertion(token, NULL);
    expect_invalid_client();
    free(token);
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);

    /* Once the interval passed, the unknown kid triggers one refetch, and only one for
     * a burst of unknown kids. */
    usleep(1100 * 1000);
    token = es256_assertion("c-uri", ec_key2, "k2", NULL);
    authenticate_assertion(token, NULL);
    expect_ok("c-uri");
    free(token);
    ck_assert_uint_eq(mock_http_count(jwks_server), 2);
    for (int i = 0; i < 5; i++) {
        char kid[32];

        snprintf(kid, sizeof(kid), "flood-%d", i);
        token = es256_assertion("c-uri", ec_key2, kid, NULL);
        authenticate_assertion(token, NULL);
        expect_invalid_client();
        free(token);
    }
    ck_assert_uint_le(mock_http_count(jwks_server), 3);
    free(old_doc);
    free(new_doc);
}
END_TEST

static int shared_fetch_ok;

static void on_shared_fetch_done(void *arg, enum oauth_err err, const char *description,
                                 struct oauth_client *client)
{
    (void)description;
    ck_assert_ptr_eq(arg, &auth);
    auth.calls++;
    if (err == OAUTH_OK)
        shared_fetch_ok++;
    oauth_client_free(client);
}

START_TEST(jwks_uri_waiters_share_fetch)
{
    char *doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *tokens[3];
    struct server_form_param params[3][2];
    struct server_form forms[3];

    mock_http_push(jwks_server, 200, doc, 200);
    /* Three requests start before the first fetch returns. */
    for (int i = 0; i < 3; i++) {
        tokens[i] = es256_assertion("c-uri", ec_key, "k1", NULL);
        params[i][0] =
            (struct server_form_param){"client_assertion_type", (char *)ASSERTION_TYPE};
        params[i][1] = (struct server_form_param){"client_assertion", tokens[i]};
        forms[i] = (struct server_form){2, params[i]};
    }
    auth.calls = 0;
    for (int i = 0; i < 3; i++)
        oauth_client_authenticate(&sr, &forms[i], on_shared_fetch_done, &auth);
    ck_assert_int_eq(event_base_dispatch(test_base), 1);
    ck_assert_int_eq(auth.calls, 3);
    ck_assert_int_eq(shared_fetch_ok, 3);
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);
    for (int i = 0; i < 3; i++)
        free(tokens[i]);
    free(doc);
}
END_TEST

/* Freeing the cache with a fetch in flight fails its waiter at once. */
START_TEST(jwks_cache_free_fails_waiters)
{
    char *doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *token = es256_assertion("c-uri", ec_key, "k1", NULL);
    const char *const form[] = {"client_assertion_type", ASSERTION_TYPE,
                                "client_assertion", token, NULL};
    struct server_form_param params[2] = {{(char *)form[0], (char *)form[1]},
                                          {(char *)form[2], (char *)form[3]}};
    struct server_form f = {2, params};

    mock_http_push(jwks_server, 200, doc, 2000);
    auth.calls = 0;
    oauth_client_authenticate(&sr, &f, on_authenticated, &auth);
    /* Run until the fetch has started and waits for the slow reply. */
    for (int i = 0; i < 50 && mock_http_count(jwks_server) == 0; i++)
        event_base_loop(test_base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(10000);
    ck_assert_int_eq(auth.calls, 0);
    oauth_jwks_cache_free(worker.jwks);
    worker.jwks = NULL;
    ck_assert_int_eq(auth.calls, 1);
    expect_invalid_client();
    free(doc);
    free(token);
}
END_TEST

struct keys_result {
    int calls;
    size_t n_keys;
    const char *error;
};

static void on_keys(void *arg, const struct oauth_jwk_set *set, const char *error)
{
    struct keys_result *r = arg;

    r->calls++;
    r->n_keys = oauth_jwk_set_count(set);
    r->error = error;
}

/* Fetches url through a new cache that trusts ca_file, and returns the result. */
static struct keys_result fetch_keys(const char *url, const char *ca_file,
                                     bool allow_loopback, bool allow_http_loopback)
{
    struct oauth_jwks_cache *c =
        oauth_jwks_cache_new(test_base, NULL,
                             &(struct oauth_jwks_cache_config){
                                 .ca_file = ca_file,
                                 .timeout_ms = 2000,
                                 .ttl_seconds = 300,
                                 .refetch_seconds = 1,
                                 .allow_http_loopback = allow_http_loopback,
                                 .allow_loopback = allow_loopback,
                             });
    struct keys_result r = {0};

    ck_assert_ptr_nonnull(c);
    oauth_jwks_cache_get(c, url, 0, "k1", on_keys, &r);
    ck_assert_int_eq(r.calls, 0);
    for (int i = 0; i < 500 && r.calls == 0; i++)
        event_base_loop(test_base, EVLOOP_ONCE);
    oauth_jwks_cache_free(c);
    ck_assert_int_eq(r.calls, 1);
    return r;
}

/* Every fetch goes through the address policy: https to a loopback address needs
 * allow_loopback, and nothing is sent without it. Plain http is only ever allowed to a
 * loopback literal, with allow_http_loopback. */
START_TEST(jwks_cache_address_policy)
{
    struct mock_http_certs certs;
    struct mock_http *tls;
    char *doc = jwks_doc(ec_key, "k1", NULL, NULL);
    char *url, *http_url;
    struct keys_result r;

    ck_assert_int_eq(mock_http_certs_create(&certs), 0);
    tls = mock_http_start(certs.cert_file, certs.key_file);
    ck_assert_ptr_nonnull(tls);
    mock_http_set_default(tls, 200, doc);
    mock_http_set_default(jwks_server, 200, doc);
    url = mock_http_url(tls, "127.0.0.1", "/jwks");
    http_url = mock_http_url(jwks_server, "127.0.0.1", "/jwks");

    r = fetch_keys(url, certs.ca_file, false, true);
    ck_assert_ptr_nonnull(r.error);
    ck_assert_uint_eq(r.n_keys, 0);
    ck_assert_uint_eq(mock_http_count(tls), 0);

    r = fetch_keys(url, certs.ca_file, true, false);
    ck_assert_msg(r.error == NULL, "https loopback with allow_loopback: %s", r.error);
    ck_assert_uint_eq(r.n_keys, 1);
    ck_assert_uint_eq(mock_http_count(tls), 1);

    r = fetch_keys(http_url, NULL, false, true);
    ck_assert_msg(r.error == NULL, "http loopback: %s", r.error);
    ck_assert_uint_eq(r.n_keys, 1);
    r = fetch_keys(http_url, NULL, true, false);
    ck_assert_ptr_nonnull(r.error);
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);

    mock_http_free(tls);
    mock_http_certs_free(&certs);
    free(url);
    free(http_url);
    free(doc);
}
END_TEST

/* The keys `cibad issuer add` accepts: public keys of ES256 or PS256 (RS256 only with
 * allow_rs256), or an https jwks_uri whose IP literal host is allowed; exactly one. */
START_TEST(issuer_keys_checked)
{
    json_t *ec = json_pack("{s:[o]}", "keys", public_jwk_of(ec_key, "i1", NULL));
    json_t *rs = json_pack("{s:[o]}", "keys", public_jwk_of(rsa_key, "r1", "RS256"));
    char *ec_text = json_dumps(ec, JSON_COMPACT), *rs_text = json_dumps(rs, JSON_COMPACT);
    char *out = NULL, err[256];
    const struct {
        const char *jwks, *jwks_uri;
        bool allow_rs256, allow_http_loopback, allow_loopback;
        int rc;
    } cases[] = {
        {ec_text, NULL, false, false, false, 0},
        {rs_text, NULL, false, false, false, -1},
        {rs_text, NULL, true, false, false, 0},
        {ec_text, "https://idp.example/jwks", false, false, false, -1},
        {NULL, NULL, false, false, false, -1},
        {"{\"keys\":[]}", NULL, false, false, false, -1},
        {"{oops", NULL, false, false, false, -1},
        {NULL, "https://idp.example/jwks", false, false, false, 0},
        {NULL, "http://idp.example/jwks", false, true, true, -1},
        {NULL, "http://127.0.0.1:9/jwks", false, false, true, -1},
        {NULL, "http://127.0.0.1:9/jwks", false, true, false, 0},
        /* IP literals are judged at once; nothing is sent to them. */
        {NULL, "https://10.0.0.1/jwks", false, false, true, -1},
        {NULL, "https://169.254.169.254/jwks", false, false, true, -1},
        {NULL, "https://[fd00::1]/jwks", false, false, true, -1},
        {NULL, "https://127.0.0.1/jwks", false, false, false, -1},
        {NULL, "https://[::1]/jwks", false, false, true, 0},
        {NULL, "https://93.184.216.34/jwks", false, false, false, 0},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc =
            oauth_issuer_keys_check(cases[i].jwks, cases[i].jwks_uri,
                                    cases[i].allow_rs256, cases[i].allow_http_loopback,
                                    cases[i].allow_loopback, &out, err, sizeof(err));

        ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d, err %s", i, rc, rc ? err : "");
        ck_assert_msg((out != NULL) == (rc == 0 && cases[i].jwks != NULL),
                      "case %zu: jwks_out %s", i, out ? out : "NULL");
        free(out);
        out = NULL;
    }
    ck_assert_int_eq(oauth_issuer_keys_check(rs_text, NULL, false, false, false, &out,
                                             err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "allow_rs256"), "err: %s", err);
    ck_assert_int_eq(oauth_issuer_keys_check(NULL, "https://127.0.0.1/jwks", false, false,
                                             false, &out, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "jwks_uri_allow_loopback"), "err: %s", err);
    ck_assert_uint_eq(oauth_issuer_algs(false), OAUTH_ALG_ES256 | OAUTH_ALG_PS256);
    ck_assert(oauth_issuer_algs(true) & OAUTH_ALG_RS256);
    ck_assert(!(oauth_issuer_algs(true) & OAUTH_ALG_HS256));
    json_decref(ec);
    json_decref(rs);
    free(ec_text);
    free(rs_text);
}
END_TEST

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
    ASSERT_ARRAY(sent.body, "token_endpoint_auth_methods_supported", "private_key_jwt",
                 "client_secret_jwt", "client_secret_basic", "client_secret_post");
    ASSERT_ARRAY(sent.body, "token_endpoint_auth_signing_alg_values_supported", "ES256",
                 "PS256", "HS256");
    ASSERT_ARRAY(sent.body, "subject_types_supported", "public");
    ASSERT_ARRAY(sent.body, "id_token_signing_alg_values_supported", "ES256");
    ASSERT_ARRAY(sent.body, "scopes_supported", "openid");
    ASSERT_ARRAY(sent.body, "acr_values_supported", "urn:cibad:acr:sms-otp");
    ASSERT_ARRAY(sent.body, "claims_supported", "sub", "iss", "aud", "exp", "iat",
                 "auth_time", "acr", "amr", "urn:openid:params:jwt:claim:auth_req_id");
    ck_assert_ptr_null(json_object_get(sent.body, "response_types_supported"));
    ck_assert_ptr_null(json_object_get(sent.body, "authorization_endpoint"));
    /* Signed authentication requests: RS256 only with request_object_allow_rs256. */
    ASSERT_ARRAY(sent.body,
                 "backchannel_authentication_request_signing_alg_values_supported",
                 "ES256", "PS256");
    ck_assert(json_is_true(json_object_get(sent.body, "request_parameter_supported")));
    ck_assert(
        json_is_false(json_object_get(sent.body, "request_uri_parameter_supported")));
    ck_assert_uint_eq(json_object_size(sent.body), 17);

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

START_TEST(discovery_rs256_when_allowed)
{
    static const struct server_config rs256_config = {
        .issuer = "https://as.example.test",
        .allow_rs256 = true,
    };

    server_config = &rs256_config;
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 200);
    ASSERT_ARRAY(sent.body, "token_endpoint_auth_signing_alg_values_supported", "ES256",
                 "PS256", "RS256", "HS256");
    /* allow_rs256 is for client assertions only. */
    ASSERT_ARRAY(sent.body,
                 "backchannel_authentication_request_signing_alg_values_supported",
                 "ES256", "PS256");
}
END_TEST

START_TEST(discovery_request_object_rs256_when_allowed)
{
    static const struct server_config rs256_config = {
        .issuer = "https://as.example.test",
        .request_object_allow_rs256 = true,
    };

    server_config = &rs256_config;
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 200);
    ASSERT_ARRAY(sent.body,
                 "backchannel_authentication_request_signing_alg_values_supported",
                 "ES256", "PS256", "RS256");
    ASSERT_ARRAY(sent.body, "token_endpoint_auth_signing_alg_values_supported", "ES256",
                 "PS256", "HS256");
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

/* ---- client authentication by TLS client certificate (RFC 8705) ------------------- */

static EVP_PKEY *ca_key, *agent_key, *self_key;
static X509 *ca_cert;
static X509 *agent_cert; /* by ca_cert: the DN and SANs below */
static X509 *self_cert;  /* self-signed with self_key */
static X509 *other_cert; /* self-signed with ec_key2 */
static char *self_jwks;  /* self_key's public JWK */
static char *mixed_jwks; /* ec_key's and self_key's, without kid */

#define AGENT_DN "CN=Agent One,OU=Agents,O=Example Corp,C=DE"
#define AGENT_SANS                                                                       \
    "DNS:agent-1.example.com,URI:spiffe://example.org/agent-1,IP:192.0.2.7,"             \
    "IP:2001:db8::7,email:Agent.One@Example.com"

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    ck_assert_ptr_nonnull(ext);
    ck_assert_int_eq(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for key with the subject given as X.509 order (C first) entries,
 * signed by issuer_key (itself when issuer is NULL). */
static X509 *cert_new(EVP_PKEY *key, const char *const *subject, X509 *issuer,
                      EVP_PKEY *issuer_key, const char *sans)
{
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();

    ck_assert_int_eq(X509_set_version(cert, 2), 1);
    ck_assert_int_eq(ASN1_INTEGER_set(X509_get_serialNumber(cert), 7), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    for (size_t i = 0; subject[i]; i += 2)
        ck_assert_int_eq(X509_NAME_add_entry_by_txt(name, subject[i], MBSTRING_UTF8,
                                                    (const unsigned char *)subject[i + 1],
                                                    -1, -1, 0),
                         1);
    X509_set_subject_name(cert, name);
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
    X509_set_pubkey(cert, key);
    if (!issuer)
        add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
    if (sans)
        add_ext(cert, issuer ? issuer : cert, NID_subject_alt_name, sans);
    ck_assert_int_gt(X509_sign(cert, issuer ? issuer_key : key, EVP_sha256()), 0);
    X509_NAME_free(name);
    return cert;
}

static void mtls_setup(void)
{
    static const char *const ca_subject[] = {"CN", "mtls test CA", NULL};
    static const char *const agent_subject[] = {
        "C", "DE", "O", "Example Corp", "OU", "Agents", "CN", "Agent One", NULL};
    static const char *const self_subject[] = {"CN", "self-signed agent", NULL};
    json_t *jwks;

    assertion_setup();
    ca_key = EVP_EC_gen("P-256");
    agent_key = EVP_EC_gen("P-256");
    self_key = EVP_EC_gen("P-256");
    ca_cert = cert_new(ca_key, ca_subject, NULL, NULL, NULL);
    agent_cert = cert_new(agent_key, agent_subject, ca_cert, ca_key, AGENT_SANS);
    self_cert = cert_new(self_key, self_subject, NULL, NULL, NULL);
    other_cert = cert_new(ec_key2, self_subject, NULL, NULL, NULL);
    jwks = json_pack("{s:[o]}", "keys", public_jwk_of(self_key, "s1", NULL));
    self_jwks = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    jwks = json_pack("{s:[o, o]}", "keys", public_jwk_of(ec_key, "e1", NULL),
                     public_jwk_of(self_key, "s1", NULL));
    mixed_jwks = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);

    memset(mtls_clients, 0, sizeof(mtls_clients));
    mtls_clients[0] =
        (struct fake_mtls_client){"m-dn", "tls_client_auth", .dn = AGENT_DN};
    mtls_clients[1] = (struct fake_mtls_client){"m-dns", "tls_client_auth",
                                                .dns = "agent-1.example.com"};
    mtls_clients[2] = (struct fake_mtls_client){"m-uri", "tls_client_auth",
                                                .uri = "spiffe://example.org/agent-1"};
    mtls_clients[3] =
        (struct fake_mtls_client){"m-ip", "tls_client_auth", .ip = "2001:db8::7"};
    mtls_clients[4] = (struct fake_mtls_client){"m-email", "tls_client_auth",
                                                .email = "Agent.One@example.COM"};
    mtls_clients[5] = (struct fake_mtls_client){"m-self", "self_signed_tls_client_auth",
                                                .jwks = mixed_jwks};
    mtls_clients[6] = (struct fake_mtls_client){
        "m-self-uri", "self_signed_tls_client_auth", .jwks_uri = jwks_url};
    mtls_clients[7] =
        (struct fake_mtls_client){"m-ip4", "tls_client_auth", .ip = "192.0.2.7"};
}

static void mtls_teardown(void)
{
    memset(mtls_clients, 0, sizeof(mtls_clients));
    X509_free(ca_cert);
    X509_free(agent_cert);
    X509_free(self_cert);
    X509_free(other_cert);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(agent_key);
    EVP_PKEY_free(self_key);
    free(self_jwks);
    free(mixed_jwks);
    assertion_teardown();
}

/* Authenticates as client_id with the current certificate and only a client_id. */
static void authenticate_cert(const char *client_id)
{
    authenticate(NULL, (const char *[]){"client_id", client_id, NULL});
}

static void assert_cert_auth_ok(const char *client_id)
{
    ck_assert_msg(auth.err == OAUTH_OK, "%s: got %s (%s)", client_id,
                  oauth_err_code(auth.err), auth.description);
    ck_assert_str_eq(auth.client->client_id, client_id);
    ck_assert_ptr_nonnull(auth.client->cnf_x5t_s256);
    ck_assert_str_eq(auth.client->cnf_x5t_s256, fake_cert_x5t);
    oauth_client_free(auth.client);
    auth.client = NULL;
}

START_TEST(mtls_each_subject_member)
{
    const char *ids[] = {"m-dn", "m-dns", "m-uri", "m-ip", "m-email", "m-ip4"};

    fake_cert_set(agent_cert, true);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        authenticate_cert(ids[i]);
        assert_cert_auth_ok(ids[i]);
    }
}
END_TEST

START_TEST(mtls_subject_mismatch)
{
    /* Each registration differs from the certificate in one way. */
    struct fake_mtls_client wrong[] = {
        {"w", "tls_client_auth", .dn = "CN=Agent Two,OU=Agents,O=Example Corp,C=DE"},
        {"w", "tls_client_auth", .dn = "CN=Agent One,O=Example Corp,C=DE"},
        {"w", "tls_client_auth", .dn = "OU=Agents,CN=Agent One,O=Example Corp,C=DE"},
        {"w", "tls_client_auth", .dn = "CN=Agent One+OU=Agents,O=Example Corp,C=DE"},
        {"w", "tls_client_auth", .dns = "agent-2.example.com"},
        {"w", "tls_client_auth", .dns = "example.com"},
        {"w", "tls_client_auth", .uri = "spiffe://example.org/agent-2"},
        {"w", "tls_client_auth", .uri = "SPIFFE://example.org/agent-1"},
        {"w", "tls_client_auth", .ip = "192.0.2.8"},
        {"w", "tls_client_auth", .email = "agent.one@example.com"},
        {"w", "tls_client_auth", .dn = "CN=Agent One,OU=Agents,O=Example Corp,C=DE,"},
    };

    fake_cert_set(agent_cert, true);
    for (size_t i = 0; i < ARRAY_LEN(wrong); i++) {
        mtls_clients[0] = wrong[i];
        authenticate_cert("w");
        ck_assert_msg(auth.err == OAUTH_ERR_INVALID_CLIENT, "case %zu: got %s", i,
                      oauth_err_code(auth.err));
        ck_assert_int_eq(sent.replies, 0);
    }
}
END_TEST

START_TEST(mtls_dn_canonical_form)
{
    /* Case, spaces and the string type do not matter; escapes are decoded. */
    const char *same[] = {
        "cn=agent one, ou=AGENTS, o=Example  Corp, c=de",
        "CN = Agent One ,OU=Agents,O=Example\\20Corp,C=DE",
        "CN=Agent\\20One,OU=Agents,O=Example Corp,C=DE",
        "2.5.4.3=Agent One,OU=Agents,O=Example Corp,C=DE",
    };

    fake_cert_set(agent_cert, true);
    for (size_t i = 0; i < ARRAY_LEN(same); i++) {
        mtls_clients[0].dn = same[i];
        authenticate_cert("m-dn");
        ck_assert_msg(auth.err == OAUTH_OK, "\"%s\" did not match", same[i]);
        oauth_client_free(auth.client);
        auth.client = NULL;
    }
}
END_TEST

START_TEST(mtls_dn_parse_rules)
{
    const char *bad[] = {
        "",        "CN",   "CN=",    "=x",          "CN=a,,O=b", "CN=#0403616263",
        "CN=a\\q", "XX=a", "CN=a\\", "CN=\\ff\\fe",
    };
    char err[200];
    X509_NAME *name;
    char *text;

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        name = oauth_mtls_dn_parse(bad[i], err, sizeof(err));
        ck_assert_msg(name == NULL, "\"%s\" was accepted", bad[i]);
        ck_assert_msg(err[0] != '\0', "no reason for \"%s\"", bad[i]);
    }
    /* A multi-valued RDN and escaped specials survive printing and parsing. */
    name = oauth_mtls_dn_parse("CN=a\\,b+UID=u1, O=x\\+y\\\\z ,DC=example", err,
                               sizeof(err));
    ck_assert_msg(name != NULL, "rejected: %s", err);
    ck_assert_int_eq(X509_NAME_entry_count(name), 4);
    text = oauth_mtls_dn_print(name);
    ck_assert_ptr_nonnull(text);
    /* X509_NAME_print_ex reverses the values inside an RDN too. */
    ck_assert_str_eq(text, "UID=u1+CN=a\\,b,O=x\\+y\\\\z,DC=example");
    X509_NAME *again = oauth_mtls_dn_parse(text, err, sizeof(err));
    ck_assert_ptr_nonnull(again);
    ck_assert_int_eq(X509_NAME_cmp(name, again), 0);
    X509_NAME_free(again);
    X509_NAME_free(name);
    free(text);
    /* UTF-8 stays as it is. */
    name = oauth_mtls_dn_parse("CN=J\\C3\\BCrgen,O=M\xc3\xbcnchen", err, sizeof(err));
    ck_assert_ptr_nonnull(name);
    text = oauth_mtls_dn_print(name);
    ck_assert_str_eq(text, "CN=J\xc3\xbcrgen,O=M\xc3\xbcnchen");
    free(text);
    X509_NAME_free(name);
}
END_TEST

START_TEST(mtls_unverified_chain)
{
    /* The same certificate, not chained to tls_client_ca_file: tls_client_auth
     * refuses it, self_signed_tls_client_auth takes it when its key is registered. */
    fake_cert_set(agent_cert, false);
    authenticate_cert("m-dn");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    authenticate_cert("m-dns");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    fake_cert_set(self_cert, false);
    authenticate_cert("m-self");
    assert_cert_auth_ok("m-self");
    fake_cert_set(self_cert, true);
    authenticate_cert("m-dn");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
}
END_TEST

START_TEST(mtls_self_signed_keys)
{
    fake_cert_set(other_cert, false);
    authenticate_cert("m-self");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_str_eq(auth.description, "Client authentication failed");

    /* The CA-issued certificate's key is not registered either. */
    fake_cert_set(agent_cert, true);
    authenticate_cert("m-self");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);

    /* Keys published at jwks_uri. */
    mock_http_push(jwks_server, 200, self_jwks, 0);
    fake_cert_set(self_cert, false);
    authenticate_cert("m-self-uri");
    assert_cert_auth_ok("m-self-uri");
    fake_cert_set(other_cert, false);
    authenticate_cert("m-self-uri");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(mock_http_count(jwks_server), 1);
}
END_TEST

START_TEST(mtls_self_signed_key_rotated)
{
    char *rotated;
    json_t *jwks = json_pack("{s:[o, o]}", "keys", public_jwk_of(self_key, "s1", NULL),
                             public_jwk_of(ec_key2, "s2", NULL));

    rotated = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    mock_http_set_default(jwks_server, 200, self_jwks);
    fake_cert_set(self_cert, false);
    authenticate_cert("m-self-uri");
    assert_cert_auth_ok("m-self-uri");

    /* The client publishes its new key next to the old one and uses it: within
     * refetch_seconds (1 s here) the cached set decides, after it a new fetch does. */
    mock_http_set_default(jwks_server, 200, rotated);
    fake_cert_set(other_cert, false);
    authenticate_cert("m-self-uri");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    usleep(1100 * 1000);
    authenticate_cert("m-self-uri");
    assert_cert_auth_ok("m-self-uri");
    ck_assert_uint_eq(mock_http_count(jwks_server), 2);
    free(rotated);
}
END_TEST

START_TEST(mtls_jwks_uri_down)
{
    mock_http_push(jwks_server, 500, "down", 0);
    fake_cert_set(self_cert, false);
    authenticate_cert("m-self-uri");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
}
END_TEST

START_TEST(mtls_two_methods)
{
    fake_cert_set(agent_cert, true);
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL, (const char *[]){"client_id", "c-post", "client_secret",
                                        "s3cret-post", NULL});
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    authenticate(NULL,
                 (const char *[]){"client_id", "m-dn", "client_assertion_type",
                                  ASSERTION_TYPE, "client_assertion", "x.y.z", NULL});
    assert_auth_failed(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_int_eq(fake_calls, 0);
}
END_TEST

START_TEST(mtls_client_id_required)
{
    char long_id[200];

    fake_cert_set(agent_cert, true);
    authenticate(NULL, NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_str_eq(auth.description,
                     "client_id is required with a TLS client certificate");
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    authenticate_cert(long_id);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    authenticate_cert("no-such-client");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_int_eq(fake_calls, 1);
}
END_TEST

START_TEST(mtls_only_registered_method)
{
    /* A secret client that sends only a certificate, and a certificate client that
     * sends a secret or nothing. */
    fake_cert_set(agent_cert, true);
    authenticate_cert("c-post");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    authenticate_cert("c-pkj");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    fake_cert_set(NULL, false);
    authenticate_cert("m-dn");
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    ck_assert_str_eq(auth.description,
                     "Client credentials are missing: send the client_secret, a client "
                     "assertion or a TLS client certificate");
    authenticate(NULL, (const char *[]){"client_id", "m-dn", "client_secret", "x", NULL});
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    authenticate(basic("m-self:x"), NULL);
    assert_auth_failed(OAUTH_ERR_INVALID_CLIENT);
    /* Other methods give no certificate binding. */
    authenticate(basic("c-basic:s3cret-basic"), NULL);
    ck_assert_int_eq(auth.err, OAUTH_OK);
    ck_assert_ptr_null(auth.client->cnf_x5t_s256);
    oauth_client_free(auth.client);
    auth.client = NULL;
}
END_TEST

/* Runs oauth_client_credentials_new and returns its result; err gets the message. */
static int register_client(const struct oauth_client_auth_options *o,
                           struct oauth_client_credentials *out, char *err)
{
    err[0] = '\0';
    return oauth_client_credentials_new(o, out, err, 300);
}

START_TEST(mtls_registration_rules)
{
    struct oauth_client_credentials c;
    char err[300];
    struct {
        struct oauth_client_auth_options o;
        const char *message;
    } bad[] = {
        {{.method = "tls_client_auth"}, "exactly one of --tls-subject-dn"},
        {{.method = "tls_client_auth", .tls_san_dns = "a.example", .tls_san_ip = "::1"},
         "exactly one of --tls-subject-dn"},
        {{.method = "tls_client_auth", .tls_subject_dn = "CN=#00"}, "--tls-subject-dn"},
        {{.method = "tls_client_auth", .tls_san_dns = "a..example"}, "--tls-san-dns"},
        {{.method = "tls_client_auth", .tls_san_dns = "a b"}, "--tls-san-dns"},
        {{.method = "tls_client_auth", .tls_san_uri = "no-scheme"}, "--tls-san-uri"},
        {{.method = "tls_client_auth", .tls_san_uri = "https://a b"}, "--tls-san-uri"},
        {{.method = "tls_client_auth", .tls_san_ip = "300.1.1.1"}, "--tls-san-ip"},
        {{.method = "tls_client_auth", .tls_san_email = "nobody"}, "--tls-san-email"},
        {{.method = "tls_client_auth", .tls_san_email = "@example.com"},
         "--tls-san-email"},
        {{.method = "tls_client_auth", .tls_san_dns = "a.example", .jwks = "{}"},
         "takes no --jwks"},
        {{.method = "client_secret_basic", .tls_san_dns = "a.example"},
         "for tls_client_auth only"},
        {{.method = "self_signed_tls_client_auth"}, "exactly one of --jwks"},
        {{.method = "self_signed_tls_client_auth", .jwks = "{}", .jwks_uri = "https://x"},
         "exactly one of --jwks"},
        {{.method = "self_signed_tls_client_auth",
          .jwks_uri = "https://x",
          .signing_alg = "ES256"},
         "--auth-signing-alg"},
        {{.method = "self_signed_tls_client_auth", .jwks = "{\"keys\":[]}"}, "--jwks"},
        {{.method = "self_signed_tls_client_auth", .jwks_uri = "ftp://x"}, "--jwks-uri"},
    };

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        ck_assert_msg(register_client(&bad[i].o, &c, err) == -1, "case %zu accepted", i);
        ck_assert_msg(strstr(err, bad[i].message), "case %zu: \"%s\"", i, err);
        ck_assert_ptr_null(c.secret);
    }

    /* Normalized values, and no secret. */
    ck_assert_int_eq(
        register_client(&(struct oauth_client_auth_options){.method = "tls_client_auth",
                                                            .tls_subject_dn =
                                                                " cn = Agent One , o=Ex"},
                        &c, err),
        0);
    ck_assert_str_eq(c.tls_subject_dn, "CN=Agent One,O=Ex");
    ck_assert_ptr_null(c.secret);
    ck_assert_ptr_null(c.secret_hash);
    ck_assert_ptr_null(c.signing_alg);
    oauth_client_credentials_clear(&c);
    ck_assert_int_eq(
        register_client(
            &(struct oauth_client_auth_options){.method = "tls_client_auth",
                                                .tls_san_ip = "2001:DB8:0::0:7"},
            &c, err),
        0);
    ck_assert_str_eq(c.tls_san_ip, "2001:db8::7");
    oauth_client_credentials_clear(&c);
    ck_assert_int_eq(
        register_client(
            &(struct oauth_client_auth_options){.method = "tls_client_auth",
                                                .tls_san_dns = "Agent-1.Example.COM"},
            &c, err),
        0);
    ck_assert_str_eq(c.tls_san_dns, "agent-1.example.com");
    oauth_client_credentials_clear(&c);
    ck_assert_int_eq(register_client(
                         &(struct oauth_client_auth_options){
                             .method = "self_signed_tls_client_auth", .jwks = mixed_jwks},
                         &c, err),
                     0);
    ck_assert_ptr_nonnull(c.jwks);
    ck_assert_ptr_null(c.signing_alg);
    ck_assert_ptr_null(c.secret);
    oauth_client_credentials_clear(&c);
}
END_TEST

static struct server_config mtls_discovery_config = {.issuer = "https://as.example.test"};

/* The discovery document for mtls_discovery_config. */
static json_t *discovery_with(void)
{
    sent_reset();
    server_config = &mtls_discovery_config;
    oauth_discovery_handle(&sr);
    ck_assert_int_eq(sent.status, 200);
    return sent.body;
}

static bool methods_have(const json_t *doc, const char *method)
{
    const json_t *methods = json_object_get(doc, "token_endpoint_auth_methods_supported");
    size_t i;
    const json_t *m;

    json_array_foreach(methods, i, m)
    {
        if (strcmp(json_string_value(m), method) == 0)
            return true;
    }
    return false;
}

START_TEST(discovery_mtls_members)
{
    struct server_config *c = &mtls_discovery_config;
    json_t *doc;

    doc = discovery_with();
    ck_assert(!methods_have(doc, "tls_client_auth"));
    ck_assert(!methods_have(doc, "self_signed_tls_client_auth"));
    ck_assert_ptr_null(
        json_object_get(doc, "tls_client_certificate_bound_access_tokens"));

    /* TLS without a client CA: only self-signed certificates can authenticate. */
    c->tls_cert_file = "cert.pem";
    c->tls_key_file = "key.pem";
    c->tls_request_client_cert = true;
    doc = discovery_with();
    ck_assert(!methods_have(doc, "tls_client_auth"));
    ck_assert(methods_have(doc, "self_signed_tls_client_auth"));
    ck_assert(
        json_is_true(json_object_get(doc, "tls_client_certificate_bound_access_tokens")));
    ck_assert_ptr_null(json_object_get(doc, "mtls_endpoint_aliases"));

    c->tls_client_ca_file = "ca.pem";
    doc = discovery_with();
    ck_assert(methods_have(doc, "tls_client_auth"));
    ck_assert(methods_have(doc, "self_signed_tls_client_auth"));

    /* TLS that does not request a certificate. */
    c->tls_request_client_cert = false;
    doc = discovery_with();
    ck_assert(!methods_have(doc, "tls_client_auth"));
    ck_assert_ptr_null(
        json_object_get(doc, "tls_client_certificate_bound_access_tokens"));

    /* Behind a proxy that passes the certificate. */
    c->tls_cert_file = c->tls_key_file = NULL;
    c->tls_client_cert_header = "X-Client-Cert";
    c->trusted_proxies = "127.0.0.1";
    doc = discovery_with();
    ck_assert(methods_have(doc, "tls_client_auth"));
    ck_assert(
        json_is_true(json_object_get(doc, "tls_client_certificate_bound_access_tokens")));
    server_config = NULL;
}
END_TEST

/* ---- signed authentication requests (ciba/request_object.c) ------------------------ */

#define RO_NOW 1800000000

/* The claims of a good request object of client "c-pkj" at RO_NOW, with changes. */
static json_t *ro_claims_at(const char *changes)
{
    json_t *claims =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:s}", "iss", "c-pkj", "aud", ISSUER, "iat",
                  (json_int_t)RO_NOW, "nbf", (json_int_t)RO_NOW, "exp",
                  (json_int_t)RO_NOW + 300, "jti", "jti-1");
    json_t *edit = changes ? json_loads(changes, 0, NULL) : NULL;
    const char *key;
    json_t *value;

    ck_assert_msg(!changes || edit, "bad changes: %s", changes);
    json_object_foreach(edit, key, value)
    {
        if (json_is_null(value))
            json_object_del(claims, key);
        else
            json_object_set(claims, key, value);
    }
    json_decref(edit);
    return claims;
}

/* Checks the claims with changes and returns the failure, or NULL. */
static const char *ro_check(const char *changes, struct ciba_request_object_jti *out)
{
    json_t *claims = ro_claims_at(changes);
    struct ciba_request_object_jti unused;
    const char *why =
        ciba_request_object_check(claims, "c-pkj", ISSUER, RO_NOW, out ? out : &unused);

    json_decref(claims);
    return why;
}

START_TEST(ro_claims_accepted)
{
    static const char *const good[] = {
        NULL,
        "{\"aud\":\"" ISSUER "/bc-authorize\"}",
        "{\"aud\":[\"https://other.example\",\"" ISSUER "\"]}",
        "{\"client_id\":\"c-pkj\"}",
        /* The clock skew is 30 s: exp 29 s ago, nbf and iat 30 s ahead. */
        "{\"exp\":1799999971,\"nbf\":1799999000,\"iat\":1799999000}",
        "{\"nbf\":1800000030,\"iat\":1800000030,\"exp\":1800000100}",
        /* Exactly 60 minutes of lifetime, fractions of seconds. */
        "{\"exp\":1800003600}",
        "{\"exp\":1800000100.75,\"iat\":1799999999.5}",
        "{\"sub\":\"anything\",\"foo\":[1,2]}",
    };
    struct ciba_request_object_jti out = {0};

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        const char *why = ro_check(good[i], &out);

        ck_assert_msg(why == NULL, "%s rejected: %s", good[i] ? good[i] : "{}", why);
    }
    /* The jti is borrowed from the claims, so read it before they are freed. */
    {
        json_t *claims = ro_claims_at(NULL);

        ck_assert_ptr_null(
            ciba_request_object_check(claims, "c-pkj", ISSUER, RO_NOW, &out));
        ck_assert_str_eq(out.jti, "jti-1");
        ck_assert_int_eq(out.expires_at, RO_NOW + 300 + OAUTH_JWT_SKEW_S);
        json_decref(claims);
    }
}
END_TEST

START_TEST(ro_claims_rejected)
{
    static const struct {
        const char *changes, *fragment;
    } bad[] = {
        {"{\"iss\":null}", "iss"},
        {"{\"iss\":\"c-other\"}", "iss"},
        {"{\"iss\":[\"c-pkj\"]}", "iss"},
        {"{\"client_id\":\"c-other\"}", "client_id"},
        {"{\"client_id\":7}", "client_id"},
        {"{\"aud\":null}", "aud is missing"},
        {"{\"aud\":\"https://other.example\"}", "aud"},
        {"{\"aud\":\"" ISSUER "/token\"}", "aud"},
        {"{\"aud\":\"" ISSUER "/\"}", "aud"},
        {"{\"aud\":[]}", "aud"},
        {"{\"aud\":7}", "aud"},
        {"{\"exp\":null}", "exp"},
        {"{\"exp\":\"1800000300\"}", "exp"},
        {"{\"iat\":null}", "iat"},
        {"{\"nbf\":null}", "nbf"},
        {"{\"nbf\":-1}", "nbf"},
        {"{\"exp\":1e300}", "exp"},
        {"{\"exp\":1799999970}", "expired"},
        {"{\"nbf\":1800000031,\"exp\":1800000100}", "not valid yet"},
        {"{\"iat\":1800000031}", "iat is in the future"},
        {"{\"exp\":1800003601}", "60 minutes"},
        {"{\"nbf\":1799995800,\"iat\":1799995800}", "60 minutes"},
        {"{\"exp\":1800000000}", "not after"},
        {"{\"jti\":null}", "jti"},
        {"{\"jti\":\"\"}", "jti"},
        {"{\"jti\":7}", "jti"},
        {"{\"request\":\"a.b.c\"}", "request_uri"},
        {"{\"request_uri\":\"https://x.example/r\"}", "request_uri"},
    };

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        const char *why = ro_check(bad[i].changes, NULL);

        ck_assert_msg(why != NULL, "%s accepted", bad[i].changes);
        ck_assert_msg(strstr(why, bad[i].fragment), "%s: \"%s\" lacks \"%s\"",
                      bad[i].changes, why, bad[i].fragment);
    }
}
END_TEST

START_TEST(ro_jti_length_limit)
{
    char jti[258], changes[300];

    memset(jti, 'j', 256);
    jti[256] = '\0';
    snprintf(changes, sizeof(changes), "{\"jti\":\"%s\"}", jti);
    ck_assert_ptr_null(ro_check(changes, NULL));
    strcat(jti, "j");
    snprintf(changes, sizeof(changes), "{\"jti\":\"%s\"}", jti);
    ck_assert_ptr_nonnull(ro_check(changes, NULL));
}
END_TEST

START_TEST(ro_params_from_claims)
{
    json_t *claims = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "scope", "openid", "login_hint",
        "alice", "id_token_hint", "", "binding_message", "Pay 5", "acr_values", "a b",
        "client_notification_token", "tok", "login_hint_token", "x.y.z", "user_code",
        "1234", "requested_expiry", (json_int_t)120);
    char expiry[CIBA_EXPIRY_TEXT_LEN];
    struct ciba_bc_params p;
    const char *description = NULL;

    ck_assert_int_eq(ciba_bc_params_from_claims(claims, expiry, &p, &description),
                     OAUTH_OK);
    ck_assert_str_eq(p.scope, "openid");
    ck_assert_str_eq(p.login_hint, "alice");
    ck_assert_ptr_null(p.id_token_hint); /* empty counts as absent */
    ck_assert_str_eq(p.binding_message, "Pay 5");
    ck_assert_str_eq(p.acr_values, "a b");
    ck_assert_str_eq(p.client_notification_token, "tok");
    ck_assert_str_eq(p.login_hint_token, "x.y.z");
    ck_assert_str_eq(p.user_code, "1234");
    ck_assert_str_eq(p.requested_expiry, "120");

    /* requested_expiry as a string passes through; negative numbers stay visible. */
    json_object_set_new(claims, "requested_expiry", json_string("30"));
    ck_assert_int_eq(ciba_bc_params_from_claims(claims, expiry, &p, &description),
                     OAUTH_OK);
    ck_assert_str_eq(p.requested_expiry, "30");
    json_object_set_new(claims, "requested_expiry", json_integer(-5));
    ck_assert_int_eq(ciba_bc_params_from_claims(claims, expiry, &p, &description),
                     OAUTH_OK);
    ck_assert_str_eq(p.requested_expiry, "-5");
    json_object_del(claims, "requested_expiry");
    ck_assert_int_eq(ciba_bc_params_from_claims(claims, expiry, &p, &description),
                     OAUTH_OK);
    ck_assert_ptr_null(p.requested_expiry);
    json_decref(claims);
}
END_TEST

START_TEST(ro_params_wrong_types)
{
    static const char *const bad[] = {
        "{\"scope\":7}",
        "{\"login_hint\":{\"a\":1}}",
        "{\"binding_message\":[\"x\"]}",
        "{\"user_code\":true}",
        "{\"acr_values\":null}",
        "{\"requested_expiry\":1.5}",
        "{\"requested_expiry\":[30]}",
        "{\"requested_expiry\":false}",
    };
    char expiry[CIBA_EXPIRY_TEXT_LEN];
    struct ciba_bc_params p;

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        json_t *claims = json_loads(bad[i], 0, NULL);
        const char *description = NULL;

        ck_assert_ptr_nonnull(claims);
        ck_assert_msg(ciba_bc_params_from_claims(claims, expiry, &p, &description) ==
                          OAUTH_ERR_INVALID_REQUEST,
                      "%s accepted", bad[i]);
        ck_assert_ptr_nonnull(description);
        json_decref(claims);
    }
    /* A NUL character inside a string would cut it short in C. */
    {
        json_t *claims = json_object();
        const char *description = NULL;

        json_object_set_new(claims, "login_hint", json_stringn("a\0b", 3));
        ck_assert_int_eq(ciba_bc_params_from_claims(claims, expiry, &p, &description),
                         OAUTH_ERR_INVALID_REQUEST);
        json_decref(claims);
    }
}
END_TEST

START_TEST(ro_form_conflicts)
{
    struct server_form_param params[4] = {
        {"client_assertion", "x"},
        {"client_id", "c-pkj"},
        {"request", "a.b.c"},
        {"scope", ""},
    };
    struct server_form form = {4, params};

    /* Client authentication stays outside; an empty value counts as absent. */
    ck_assert_ptr_null(ciba_request_object_form_conflict(&form));
    params[3].value = "openid";
    ck_assert_str_eq(ciba_request_object_form_conflict(&form), "scope");
    params[3].name = "authorization_details";
    ck_assert_str_eq(ciba_request_object_form_conflict(&form), "authorization_details");
}
END_TEST

/* The result of one ciba_request_object_verify. */
static struct {
    int calls;
    enum oauth_err err;
    const char *description;
    json_t *claims;
} ro;

static void on_ro_verified(void *arg, enum oauth_err err, const char *description,
                           json_t *claims)
{
    (void)arg;
    ro.calls++;
    ro.err = err;
    ro.description = description;
    json_decref(ro.claims);
    ro.claims = claims;
}

/* Verifies token as client and runs the loop until the callback has run. */
static void ro_verify(const struct oauth_client *client, const char *token)
{
    ro.calls = 0;
    ciba_request_object_verify(&sr, client, token, on_ro_verified, NULL);
    if (ro.calls == 0)
        ck_assert_int_eq(event_base_dispatch(test_base), 1);
    ck_assert_int_eq(ro.calls, 1);
}

static void ro_expect(enum oauth_err err)
{
    ck_assert_msg(ro.err == err, "got %s (%s), expected %s", oauth_err_code(ro.err),
                  ro.description ? ro.description : "", oauth_err_code(err));
    if (err == OAUTH_OK)
        ck_assert_ptr_nonnull(ro.claims);
    else
        ck_assert_ptr_null(ro.claims);
}

/* A request object of client_id signed with pkey under alg and kid, valid now. */
static char *ro_token(const char *client_id, const char *alg, EVP_PKEY *pkey,
                      const char *kid, const char *changes)
{
    int64_t now = util_now_s();
    char *jti = util_random_token(12);
    json_t *claims =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "iss", client_id, "aud", ISSUER,
                  "iat", (json_int_t)now, "nbf", (json_int_t)now, "exp",
                  (json_int_t)now + 300, "jti", jti, "scope", "openid");
    json_t *edit = changes ? json_loads(changes, 0, NULL) : NULL;
    char *claims_text, *header, *token;
    const char *key;
    json_t *value;

    json_object_foreach(edit, key, value) json_object_set(claims, key, value);
    claims_text = json_dumps(claims, JSON_COMPACT);
    header = util_asprintf("{\"alg\":\"%s\",\"kid\":\"%s\"}", alg, kid);
    token = sign_token(alg, pkey, NULL, 0, header, claims_text);
    json_decref(claims);
    json_decref(edit);
    free(claims_text);
    free(header);
    free(jti);
    return token;
}

static struct oauth_client ro_client(const char *client_id, const char *jwks,
                                     const char *jwks_uri, const char *auth_alg,
                                     const char *request_alg)
{
    return (struct oauth_client){
        .client_id = (char *)client_id,
        .jwks = (char *)jwks,
        .jwks_uri = (char *)jwks_uri,
        .token_endpoint_auth_signing_alg = (char *)auth_alg,
        .backchannel_authentication_request_signing_alg = (char *)request_alg,
    };
}

START_TEST(ro_verify_inline_keys)
{
    struct oauth_client es = ro_client("c-pkj", inline_jwks, NULL, "ES256", "ES256");
    struct oauth_client plain = ro_client("c-pkj", inline_jwks, NULL, "ES256", NULL);
    struct oauth_client ps = ro_client("c-rsa", rsa_jwks, NULL, "PS256", "PS256");
    struct oauth_client secret = ro_client("c-csj", NULL, NULL, "HS256", NULL);
    char *token = ro_token("c-pkj", "ES256", ec_key, "k1", NULL);

    ro_verify(&es, token);
    ro_expect(OAUTH_OK);
    ck_assert_str_eq(json_string_value(json_object_get(ro.claims, "scope")), "openid");
    /* The same token again: its jti is used. */
    ro_verify(&es, token);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_msg(strstr(ro.description, "used before"), "%s", ro.description);
    free(token);

    /* Without a registered alg, the key's alg of client authentication applies. */
    token = ro_token("c-pkj", "ES256", ec_key, "k1", NULL);
    ro_verify(&plain, token);
    ro_expect(OAUTH_OK);
    free(token);

    /* Another client's key, and an alg other than the registered one. */
    token = ro_token("c-pkj", "ES256", ec_key2, "k1", NULL);
    ro_verify(&es, token);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    free(token);
    token = ro_token("c-rsa", "PS256", rsa_key, "r1", NULL);
    ro_verify(&ps, token);
    ro_expect(OAUTH_OK);
    free(token);
    token = ro_token("c-rsa", "RS256", rsa_key, "r1", NULL);
    ro_verify(&ps, token);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    free(token);

    /* A client without keys cannot sign. */
    token = ro_token("c-csj", "ES256", ec_key, "k1", NULL);
    ro_verify(&secret, token);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    free(token);
}
END_TEST

START_TEST(ro_verify_rs256_needs_setting)
{
    struct oauth_client rs = ro_client("c-rsa", rsa_jwks, NULL, "PS256", "RS256");
    char *token = ro_token("c-rsa", "RS256", rsa_key, "r1", NULL);

    /* Registered before the setting was turned off: rejected, not trusted. */
    ro_verify(&rs, token);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_msg(strstr(ro.description, "not enabled"), "%s", ro.description);
    assertion_config.request_object_allow_rs256 = true;
    ro_verify(&rs, token);
    ro_expect(OAUTH_OK);
    assertion_config.request_object_allow_rs256 = false;
    free(token);
}
END_TEST

START_TEST(ro_verify_jwks_uri)
{
    struct oauth_client uri = ro_client("c-uri", NULL, jwks_url, "ES256", "ES256");
    json_t *jwks = json_pack("{s:[o]}", "keys", public_jwk_of(ec_key, "k1", NULL));
    char *doc = json_dumps(jwks, JSON_COMPACT);
    char *token = ro_token("c-uri", "ES256", ec_key, "k1", NULL);

    mock_http_set_default(jwks_server, 200, doc);
    ro_verify(&uri, token);
    ro_expect(OAUTH_OK);
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);
    free(token);
    /* The cached keys verify without another fetch. */
    token = ro_token("c-uri", "ES256", ec_key, "k1", NULL);
    ro_verify(&uri, token);
    ro_expect(OAUTH_OK);
    ck_assert_uint_eq(mock_http_count(jwks_server), 1);
    free(token);
    json_decref(jwks);
    free(doc);
}
END_TEST

START_TEST(ro_verify_storage_failures)
{
    struct oauth_client es = ro_client("c-pkj", inline_jwks, NULL, "ES256", "ES256");
    char *token = ro_token("c-pkj", "ES256", ec_key, "k1", NULL);

    jti_status_override = STORAGE_UNAVAILABLE;
    ro_verify(&es, token);
    ro_expect(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    jti_status_override = STORAGE_ERROR;
    ro_verify(&es, token);
    ro_expect(OAUTH_ERR_SERVER_ERROR);
    jti_status_override = STORAGE_OK;
    fake_mode = FAKE_QUEUE_FAILS;
    ro_verify(&es, token);
    ro_expect(OAUTH_ERR_TEMPORARILY_UNAVAILABLE);
    fake_mode = FAKE_ANSWER;
    ro_verify(&es, token);
    ro_expect(OAUTH_OK);
    json_decref(ro.claims);
    ro.claims = NULL;
    free(token);
}
END_TEST

START_TEST(ro_verify_malformed)
{
    struct oauth_client es = ro_client("c-pkj", inline_jwks, NULL, "ES256", "ES256");
    static const char *const bad[] = {
        "", "a", "a.b", "a.b.c.d.e", "a..c", "a.b!.c", "e30.e30.", "e30.e30.e30.e30",
    };
    char *big = util_malloc(CIBA_REQUEST_OBJECT_MAX_LEN + 2);

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        ro_verify(&es, bad[i]);
        ro_expect(OAUTH_ERR_INVALID_REQUEST);
    }
    ro_verify(&es, "a.b.c.d.e");
    ck_assert_msg(strstr(ro.description, "encrypted"), "%s", ro.description);
    memset(big, 'a', CIBA_REQUEST_OBJECT_MAX_LEN + 1);
    big[CIBA_REQUEST_OBJECT_MAX_LEN + 1] = '\0';
    ro_verify(&es, big);
    ro_expect(OAUTH_ERR_INVALID_REQUEST);
    ck_assert_msg(strstr(ro.description, "too long"), "%s", ro.description);
    free(big);
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
    TCase *client_keys = tcase_create("client_keys");
    TCase *assertion = tcase_create("assertion");
    TCase *request_object = tcase_create("request_object");
    TCase *mtls = tcase_create("mtls");

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

    tcase_add_unchecked_fixture(client_keys, keys_generate, keys_free);
    tcase_add_checked_fixture(client_keys, jwk_setup, jwk_teardown);
    tcase_add_test(client_keys, jws_alg_names);
    tcase_add_test(client_keys, jwk_import_ec);
    tcase_add_test(client_keys, jwk_import_rsa);
    tcase_add_test(client_keys, jwk_import_rejects_private_keys);
    tcase_add_test(client_keys, jwk_import_rejects_bad_keys);
    tcase_add_test(client_keys, jwk_import_rejects_wrong_alg);
    tcase_add_test(client_keys, jwk_set_rules);
    tcase_add_test(client_keys, verify_with_es256);
    tcase_add_test(client_keys, verify_with_needs_kid_among_several);
    tcase_add_test(client_keys, verify_with_ps256_openssl_cli);
    tcase_add_test(client_keys, verify_with_rs256_only_if_allowed);
    tcase_add_test(client_keys, verify_with_alg_none_and_confusion);
    tcase_add_test(client_keys, verify_with_wrong_curve);
    tcase_add_test(client_keys, verify_with_hs256_secret);
    tcase_add_test(client_keys, verify_with_structure);
    suite_add_tcase(s, client_keys);

    tcase_add_unchecked_fixture(assertion, keys_generate, keys_free);
    tcase_add_checked_fixture(assertion, assertion_setup, assertion_teardown);
    tcase_set_timeout(assertion, 30);
    tcase_add_test(assertion, assertion_inline_jwks_ok);
    tcase_add_test(assertion, assertion_aud_values);
    tcase_add_test(assertion, assertion_time_claims);
    tcase_add_test(assertion, assertion_jti_single_use);
    tcase_add_test(assertion, assertion_names_the_client);
    tcase_add_test(assertion, assertion_signature_checks);
    tcase_add_test(assertion, assertion_claims_bound_to_signature);
    tcase_add_test(assertion, assertion_method_rules);
    tcase_add_test(assertion, assertion_client_secret_jwt);
    tcase_add_test(assertion, assertion_rs256_needs_setting);
    tcase_add_test(assertion, assertion_storage_failures);
    tcase_add_test(assertion, assertion_logs_reason_not_token);
    tcase_add_test(assertion, jwks_uri_fetched_and_cached);
    tcase_add_test(assertion, jwks_uri_down_slow_or_garbage);
    tcase_add_test(assertion, jwks_uri_rotation_on_unknown_kid);
    tcase_add_test(assertion, jwks_uri_waiters_share_fetch);
    tcase_add_test(assertion, jwks_cache_free_fails_waiters);
    tcase_add_test(assertion, jwks_cache_address_policy);
    tcase_add_test(assertion, issuer_keys_checked);
    suite_add_tcase(s, assertion);

    tcase_add_unchecked_fixture(mtls, keys_generate, keys_free);
    tcase_add_checked_fixture(mtls, mtls_setup, mtls_teardown);
    tcase_set_timeout(mtls, 30);
    tcase_add_test(mtls, mtls_each_subject_member);
    tcase_add_test(mtls, mtls_subject_mismatch);
    tcase_add_test(mtls, mtls_dn_canonical_form);
    tcase_add_test(mtls, mtls_dn_parse_rules);
    tcase_add_test(mtls, mtls_unverified_chain);
    tcase_add_test(mtls, mtls_self_signed_keys);
    tcase_add_test(mtls, mtls_self_signed_key_rotated);
    tcase_add_test(mtls, mtls_jwks_uri_down);
    tcase_add_test(mtls, mtls_two_methods);
    tcase_add_test(mtls, mtls_client_id_required);
    tcase_add_test(mtls, mtls_only_registered_method);
    tcase_add_test(mtls, mtls_registration_rules);
    suite_add_tcase(s, mtls);

    tcase_add_unchecked_fixture(request_object, keys_generate, keys_free);
    tcase_add_checked_fixture(request_object, assertion_setup, assertion_teardown);
    tcase_add_test(request_object, ro_claims_accepted);
    tcase_add_test(request_object, ro_claims_rejected);
    tcase_add_test(request_object, ro_jti_length_limit);
    tcase_add_test(request_object, ro_params_from_claims);
    tcase_add_test(request_object, ro_params_wrong_types);
    tcase_add_test(request_object, ro_form_conflicts);
    tcase_add_test(request_object, ro_verify_inline_keys);
    tcase_add_test(request_object, ro_verify_rs256_needs_setting);
    tcase_add_test(request_object, ro_verify_jwks_uri);
    tcase_add_test(request_object, ro_verify_storage_failures);
    tcase_add_test(request_object, ro_verify_malformed);
    suite_add_tcase(s, request_object);

    tcase_add_checked_fixture(endpoints, key_setup, key_teardown);
    tcase_add_test(endpoints, discovery_document);
    tcase_add_test(endpoints, discovery_rs256_when_allowed);
    tcase_add_test(endpoints, discovery_request_object_rs256_when_allowed);
    tcase_add_test(endpoints, discovery_head_and_post);
    tcase_add_test(endpoints, discovery_without_issuer);
    tcase_add_test(endpoints, discovery_mtls_members);
    tcase_add_test(endpoints, jwks_endpoint);
    tcase_add_test(endpoints, jwks_endpoint_without_keys);
    suite_add_tcase(s, endpoints);

    return s;
}

CHECK_MAIN(oauth_suite)
