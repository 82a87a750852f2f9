/* check_notify.c - ping and push delivery: the endpoint and address rules, and
 * end-to-end runs of the real cibad binary against callback servers on loopback
 * SPDX-License-Identifier: MIT
 *
 * The end-to-end tests drive cibad as check_e2e.c does: a real `cibad serve` per test,
 * an SMS gateway mock that receives the code, the approval page over HTTP, and one or
 * two mock callback servers (tests/mock_http.h) that play the client's notification
 * endpoint with scripted replies. The teardown checks that no auth_req_id,
 * client_notification_token, token or code reached the server's log. The audit log
 * and the outbox are read straight from the test database.
 *
 * The binary comes from $CIBAD_BIN; tests/run.sh provides the database.
 */
#include <check.h>
#include <ctype.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "ciba/ciba.h"
#include "ciba/ciba_int.h"
#include "tests/check_runner.h"
#include "tests/e2e_client.h"
#include "tests/mock_http.h"
#include "util/http_client.h"
#include "util/util.h"

#define CIBA_GRANT     "urn:openid:params:grant-type:ciba"
#define FORM_TYPE      "Content-Type: application/x-www-form-urlencoded"
#define SCOPE          "openid"
#define WAIT_MS        10000
#define TEST_TIMEOUT_S 90

/* ---- 1. addresses and endpoint URLs ------------------------------------------------ */

static bool address_ok(const char *text, bool allow_loopback)
{
    struct sockaddr_storage sa = {0};
    struct sockaddr_in *v4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&sa;

    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    else
        ck_abort_msg("test address %s does not parse", text);
    return ciba_address_allowed((const struct sockaddr *)&sa, allow_loopback);
}

START_TEST(address_rules_table)
{
    static const struct {
        const char *address;
        bool allowed;          /* with allow_loopback false */
        bool allowed_loopback; /* with allow_loopback true */
    } cases[] = {
        {"93.184.216.34", true, true},
        {"8.8.8.8", true, true},
        {"127.0.0.1", false, true},
        {"127.1.2.3", false, true},
        {"10.0.0.1", false, false},
        {"172.16.0.1", false, false},
        {"172.31.255.255", false, false},
        {"172.32.0.1", true, true},
        {"192.168.1.1", false, false},
        {"169.254.169.254", false, false},
        {"100.64.0.1", false, false},
        {"100.100.100.200", false, false},
        {"0.0.0.0", false, false},
        {"224.0.0.1", false, false},
        {"255.255.255.255", false, false},
        {"2606:2800:220:1::1", true, true},
        {"::1", false, true},
        {"::", false, false},
        {"fc00::1", false, false},
        {"fd00:ec2::254", false, false},
        {"fe80::1", false, false},
        {"ff02::1", false, false},
        {"::ffff:10.0.0.1", false, false},
        {"::ffff:127.0.0.1", false, true},
        {"::ffff:93.184.216.34", true, true},
        {"64:ff9b::a9fe:a9fe", false, false},
        {"2002:c0a8:0101::1", false, false},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        ck_assert_msg(address_ok(cases[i].address, false) == cases[i].allowed,
                      "%s: expected %s without loopback", cases[i].address,
                      cases[i].allowed ? "allowed" : "rejected");
        ck_assert_msg(address_ok(cases[i].address, true) == cases[i].allowed_loopback,
                      "%s: expected %s with loopback allowed", cases[i].address,
                      cases[i].allowed_loopback ? "allowed" : "rejected");
    }
}
END_TEST

START_TEST(endpoint_rules_table)
{
    static const struct {
        const char *url;
        bool ok;          /* with allow_loopback false */
        bool ok_loopback; /* with allow_loopback true */
    } cases[] = {
        {"https://cb.example.com/ciba", true, true},
        {"https://cb.example.com:8443/ciba?x=1", true, true},
        {"http://cb.example.com/ciba", false, false},
        {"http://127.0.0.1:9000/cb", false, true},
        {"https://127.0.0.1:9000/cb", false, true},
        {"https://[::1]:9000/cb", false, true},
        {"https://localhost/cb", false, true},
        {"https://api.localhost/cb", false, true},
        {"http://localhost/cb", false, false},
        {"https://10.1.2.3/cb", false, false},
        {"https://169.254.169.254/latest", false, false},
        {"https://[fe80::1]/cb", false, false},
        {"https://[::ffff:192.168.0.1]/cb", false, false},
        {"https://user:pw@cb.example.com/cb", false, false},
        {"https://cb.example.com/cb#frag", false, false},
        {"ftp://cb.example.com/cb", false, false},
        {"cb.example.com/cb", false, false},
        {"https:///cb", false, false},
        {"", false, false},
    };
    char err[256];

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        err[0] = '\0';
        ck_assert_msg((ciba_notification_endpoint_check(cases[i].url, false, err,
                                                        sizeof(err)) == 0) == cases[i].ok,
                      "%s: expected %s (%s)", cases[i].url,
                      cases[i].ok ? "accepted" : "rejected", err);
        ck_assert_msg(
            (ciba_notification_endpoint_check(cases[i].url, true, err, sizeof(err)) ==
             0) == cases[i].ok_loopback,
            "%s: expected %s with loopback allowed (%s)", cases[i].url,
            cases[i].ok_loopback ? "accepted" : "rejected", err);
    }
}
END_TEST

START_TEST(endpoint_too_long_rejected)
{
    char *url = util_calloc(1, 2200);
    char err[256];

    strcpy(url, "https://cb.example.com/");
    memset(url + strlen(url), 'a', 2100);
    ck_assert_int_eq(ciba_notification_endpoint_check(url, false, err, sizeof(err)), -1);
    url[2048] = '\0';
    ck_assert_int_eq(ciba_notification_endpoint_check(url, false, err, sizeof(err)), 0);
    free(url);
}
END_TEST

/* ---- the pool under the notification address rules ------------------------------- */

struct pool_result {
    int calls;
    enum util_http_error error;
    int status;
    bool reused;
};

static void on_pool_done(void *arg, const struct util_http_response *res)
{
    struct pool_result *r = arg;

    r->calls++;
    r->error = res->error;
    r->status = res->status;
    r->reused = res->reused;
}

static bool loopback_allowed(const struct sockaddr *addr, void *arg)
{
    (void)arg;
    return ciba_address_allowed(addr, true);
}

static bool loopback_rejected(const struct sockaddr *addr, void *arg)
{
    (void)arg;
    return ciba_address_allowed(addr, false);
}

/* Sends one POST to url over pool under the given address rule and waits for it. */
static struct pool_result pool_post(struct event_base *base, struct util_http_pool *pool,
                                    const char *url,
                                    bool (*rule)(const struct sockaddr *, void *))
{
    const struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .url = url,
        .body = "{}",
        .body_len = 2,
        .timeout_ms = 3000,
        .allow_http_loopback = true,
        .address_allowed = rule,
        .pool = pool,
    };
    struct pool_result r = {0};
    int64_t end = util_mono_ms() + 5000;

    ck_assert_ptr_nonnull(util_http_send(base, NULL, NULL, &req, on_pool_done, &r));
    while (r.calls == 0 && util_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_int_eq(r.calls, 1);
    return r;
}

/* An idle connection is never reused for a request whose address rule refuses the
 * address the connection goes to: the request fails before sending anything. The
 * notifier's rule is ciba_address_allowed, so this is the reuse path of a notification
 * whose endpoint address would now be refused. A request to another port never takes
 * the connection either. */
START_TEST(pooled_connection_rechecks_address)
{
    struct event_base *base = event_base_new();
    struct util_http_pool *pool = util_http_pool_new(base, 4, 5000);
    struct mock_http *m = mock_http_start(NULL, NULL);
    struct mock_http *other = mock_http_start(NULL, NULL);
    char *url = mock_http_url(m, "127.0.0.1", "/ciba/callback");
    char *other_url = mock_http_url(other, "127.0.0.1", "/ciba/callback");
    struct pool_result r;

    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(other);
    mock_http_set_default(m, 204, NULL);
    mock_http_set_default(other, 204, NULL);
    r = pool_post(base, pool, url, loopback_allowed);
    ck_assert_int_eq(r.error, UTIL_HTTP_OK);
    ck_assert_int_eq(r.status, 204);
    ck_assert_uint_eq(util_http_pool_idle_count(pool), 1);

    r = pool_post(base, pool, url, loopback_rejected);
    ck_assert_int_eq(r.error, UTIL_HTTP_ERR_ADDRESS);
    ck_assert(!r.reused);
    ck_assert_uint_eq(mock_http_count(m), 1);
    ck_assert_uint_eq(util_http_pool_idle_count(pool), 1);

    /* Another port: a connection of its own, and the request arrives there. */
    r = pool_post(base, pool, other_url, loopback_allowed);
    ck_assert_int_eq(r.error, UTIL_HTTP_OK);
    ck_assert(!r.reused);
    ck_assert_uint_eq(mock_http_count(other), 1);
    ck_assert_uint_eq(mock_http_count(m), 1);
    ck_assert_uint_eq(util_http_pool_idle_count(pool), 2);

    /* The first connection is still good for its own endpoint. */
    r = pool_post(base, pool, url, loopback_allowed);
    ck_assert_int_eq(r.error, UTIL_HTTP_OK);
    ck_assert(r.reused);
    ck_assert_uint_eq(mock_http_count(m), 2);
    ck_assert_uint_eq(mock_http_connection_count(m), 1);
    ck_assert_uint_eq(mock_http_connection_count(other), 1);

    util_http_pool_free(pool);
    event_base_free(base);
    mock_http_free(m);
    mock_http_free(other);
    free(url);
    free(other_url);
}
END_TEST

/* ---- the instance ------------------------------------------------------------------ */

static const char *const base_settings[] = {
    "CIBAD_SMS_DRIVER=http",
    "CIBAD_SMS_HTTP_TOKEN=t",
    "CIBAD_SMS_ALLOW_HTTP_LOOPBACK=true",
    "CIBAD_LOG_LEVEL=debug",
    "CIBAD_POLL_INTERVAL=1",
    "CIBAD_SMS_PER_PHONE_MAX=50",
    "CIBAD_AUTH_REQ_MIN_EXPIRY=2",
    "CIBAD_NOTIFICATION_ALLOW_LOOPBACK=true",
    "CIBAD_NOTIFICATION_TIMEOUT_MS=1000",
    "CIBAD_NOTIFICATION_RETRY_INITIAL_MS=300",
    NULL,
};

struct test_client {
    char *client_id;
    char *secret;
};

struct sms {
    char code[7];
    char ref[64];
};

/* A value that must never appear in the server log. */
struct secret {
    const char *label;
    char *value;
};

static struct e2e_server srv;
static struct mock_http *sink; /* SMS gateway */
static struct mock_http *cb;   /* the client's notification endpoint */
static struct mock_http_certs certs;
static bool have_certs;
static char *user_phone;
static struct secret secrets[256];
static size_t n_secrets;

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void remember_secret(const char *label, const char *value)
{
    if (!value || !*value || n_secrets == ARRAY_LEN(secrets))
        return;
    secrets[n_secrets].label = label;
    secrets[n_secrets].value = util_strdup(value);
    n_secrets++;
}

static const char *jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static char *log_tail(void)
{
    char *log = e2e_server_log(&srv);
    size_t len = strlen(log);
    char *tail = util_strdup(len > 3000 ? log + len - 3000 : log);

    free(log);
    return tail;
}

/* Registers a client; endpoint NULL for poll. */
static struct test_client create_client(const char *mode, const char *endpoint)
{
    struct test_client c;
    json_t *out;

    if (endpoint)
        out = e2e_cli_json(&srv, "client", "create", "--name", "Notified Agent",
                           "--scope", SCOPE, "--delivery-mode", mode,
                           "--notification-endpoint", endpoint, "--json", NULL);
    else
        out = e2e_cli_json(&srv, "client", "create", "--name", "Polling Agent", "--scope",
                           SCOPE, "--json", NULL);
    ck_assert_msg(out != NULL, "cibad client create (%s) printed no JSON object", mode);
    ck_assert_str_eq(jstr(out, "backchannel_token_delivery_mode"), mode);
    if (endpoint)
        ck_assert_str_eq(jstr(out, "backchannel_client_notification_endpoint"), endpoint);
    c.client_id = util_strdup(jstr(out, "client_id"));
    c.secret = util_strdup(jstr(out, "client_secret"));
    remember_secret("a client secret", c.secret);
    json_decref(out);
    return c;
}

static void client_free(struct test_client *c)
{
    free(c->client_id);
    free(c->secret);
}

static char *cb_url(struct mock_http *m, const char *host)
{
    return mock_http_url(m, host, "/ciba/callback");
}

/* Prepares the environment, the SMS sink, the callback mock and a user, without
 * starting serve. extra settings override the base ones. A TLS callback needs certs. */
static void prepare_instance(const char *const *extra, bool tls_callback)
{
    uint32_t n;

    if (tls_callback) {
        ck_assert_int_eq(mock_http_certs_create(&certs), 0);
        have_certs = true;
    }
    sink = mock_http_start(NULL, NULL);
    cb = tls_callback ? mock_http_start(certs.cert_file, certs.key_file)
                      : mock_http_start(NULL, NULL);
    ck_assert_msg(sink && cb, "a mock server did not start");
    mock_http_set_default(cb, 204, NULL);
    ck_assert_int_eq(e2e_server_init(&srv, base_settings), 0);
    {
        char *url = mock_http_url(sink, "127.0.0.1", "/sms");

        e2e_server_setenv(&srv, "CIBAD_SMS_HTTP_URL", url);
        free(url);
    }
    if (tls_callback)
        e2e_server_setenv(&srv, "CIBAD_NOTIFICATION_CA_FILE", certs.ca_file);
    for (size_t i = 0; extra && extra[i]; i++) {
        const char *eq = strchr(extra[i], '=');
        char *name = util_strndup(extra[i], (size_t)(eq - extra[i]));

        e2e_server_setenv(&srv, name, eq + 1);
        free(name);
    }
    ck_assert_msg(e2e_cli(&srv, NULL, "migrate", NULL) == 0, "cibad migrate failed");
    util_random_bytes(&n, sizeof(n));
    user_phone = util_asprintf("+1555%07u", n % 10000000u);
    ck_assert_msg(e2e_cli(&srv, NULL, "user", "create", "--phone", user_phone, NULL) == 0,
                  "cibad user create failed");
    remember_secret("the server secret", E2E_SERVER_SECRET);
}

static void start_server(void)
{
    if (e2e_server_start(&srv) != 0) {
        char *tail = log_tail();

        ck_abort_msg("cibad serve did not become ready; log:\n%s", tail);
    }
}

static void setup_default(void)
{
    prepare_instance(NULL, false);
    start_server();
}

static void teardown_instance(void)
{
    int rc = e2e_server_stop(&srv);
    char *log = e2e_server_log(&srv);

    ck_assert_msg(rc == 0, "cibad serve exited with status %d after SIGTERM", rc);
    for (size_t i = 0; i < n_secrets; i++)
        ck_assert_msg(!e2e_log_contains(log, secrets[i].value),
                      "the server log contains %s", secrets[i].label);
    for (size_t i = 0; i < n_secrets; i++)
        free(secrets[i].value);
    n_secrets = 0;
    free(log);
    mock_http_free(sink);
    mock_http_free(cb);
    sink = cb = NULL;
    if (have_certs)
        mock_http_certs_free(&certs);
    have_certs = false;
    free(user_phone);
    e2e_server_free(&srv);
}

/* ---- direct SQL -------------------------------------------------------------------- */

static PGconn *db_open(void)
{
    PGconn *pg = PQconnectdb(getenv("CIBAD_TEST_DATABASE_URL"));

    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "database: %s", PQerrorMessage(pg));
    return pg;
}

/* Runs sql with one text parameter and returns the first column of the first row as
 * a new string, or NULL when there is no row or it is NULL. */
static char *db_text(const char *sql, const char *param)
{
    PGconn *pg = db_open();
    const char *values[1] = {param};
    PGresult *res = PQexecParams(pg, sql, param ? 1 : 0, NULL, values, NULL, NULL, 0);
    char *out = NULL;

    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK ||
                      PQresultStatus(res) == PGRES_COMMAND_OK,
                  "%s: %s", sql, PQresultErrorMessage(res));
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 &&
        !PQgetisnull(res, 0, 0))
        out = util_strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(pg);
    return out;
}

static long long db_int(const char *sql, const char *param)
{
    char *text = db_text(sql, param);
    long long n = text ? strtoll(text, NULL, 10) : -1;

    free(text);
    return n;
}

static char *id_hash(const char *auth_req_id)
{
    char hash[65];

    util_sha256_hex(auth_req_id, strlen(auth_req_id), hash);
    return util_strdup(hash);
}

/* Counts the "notify" audit rows of a request with the given decision. */
static long long notify_audits(const char *auth_req_id, const char *decision)
{
    char *hash = id_hash(auth_req_id);
    char *sql = util_asprintf("SELECT count(*) FROM audit_log WHERE action = 'notify'"
                              " AND decision = '%s' AND auth_req_id_hash = $1",
                              decision);
    long long n = db_int(sql, hash);

    free(sql);
    free(hash);
    return n;
}

/* Waits until the request has n notify audit rows with decision. */
static void wait_notify_audits(const char *auth_req_id, const char *decision, long long n)
{
    int64_t end = util_mono_ms() + WAIT_MS;

    while (notify_audits(auth_req_id, decision) < n) {
        if (util_mono_ms() > end) {
            char *tail = log_tail();

            ck_abort_msg("no %lld \"%s\" notify audit rows; log:\n%s", n, decision, tail);
        }
        sleep_ms(50);
    }
}

/* ---- HTTP calls -------------------------------------------------------------------- */

static struct e2e_response post_as(const struct test_client *c, const char *path,
                                   char *form)
{
    char *basic = e2e_basic_header(c->client_id, c->secret);
    const char *headers[] = {FORM_TYPE, basic, NULL};
    struct e2e_response r;

    ck_assert_msg(e2e_request(srv.port, "POST", path, headers, form, strlen(form), &r) ==
                      0,
                  "POST %s: no reply", path);
    free(basic);
    free(form);
    return r;
}

static struct e2e_response bc_authorize(const struct test_client *c, const char *token,
                                        const char *expiry)
{
    return post_as(c, "/bc-authorize",
                   e2e_form("scope", SCOPE, "login_hint", user_phone,
                            "client_notification_token", token, "requested_expiry",
                            expiry, NULL));
}

static struct e2e_response poll_token(const struct test_client *c, const char *id)
{
    return post_as(c, "/token",
                   e2e_form("grant_type", CIBA_GRANT, "auth_req_id", id, NULL));
}

#define assert_error(r, status, code) assert_error_at(__LINE__, (r), (status), (code))

static void assert_error_at(int line, const struct e2e_response *r, int status,
                            const char *code)
{
    json_t *body = e2e_json(r);

    ck_assert_msg(r->status == status, "line %d: status %d, expected %d; body %s", line,
                  r->status, status, r->body);
    ck_assert_msg(body && jstr(body, "error") && strcmp(jstr(body, "error"), code) == 0,
                  "line %d: error %s, expected %s", line, r->body, code);
    json_decref(body);
}

/* Starts a request and returns its auth_req_id; checks interval is there unless push. */
static char *start_auth(const struct test_client *c, const char *token, bool push,
                        const char *expiry)
{
    struct e2e_response r = bc_authorize(c, token, expiry);
    json_t *body = e2e_json(&r);
    char *id;

    remember_secret("a client_notification_token", token);
    ck_assert_msg(r.status == 200, "bc-authorize: %d %s", r.status, r.body);
    ck_assert_msg(body && jstr(body, "auth_req_id"), "bc-authorize: no auth_req_id");
    if (push)
        ck_assert_msg(json_object_get(body, "interval") == NULL,
                      "bc-authorize: a push client got an interval: %s", r.body);
    else
        ck_assert_msg(json_is_integer(json_object_get(body, "interval")),
                      "bc-authorize: no interval: %s", r.body);
    id = util_strdup(jstr(body, "auth_req_id"));
    remember_secret("an auth_req_id", id);
    json_decref(body);
    e2e_response_free(&r);
    return id;
}

/* Waits for SMS number index (from 0) and takes the code and link reference from it. */
static void wait_sms(size_t index, struct sms *out)
{
    const struct mock_http_request *q;
    json_t *body;
    const char *text, *link;
    size_t n = 0;

    ck_assert_msg(mock_http_wait(sink, index + 1, WAIT_MS) == 0, "SMS %zu not sent",
                  index + 1);
    q = mock_http_request_get(sink, index);
    body = json_loadb(q->body, q->body_len, 0, NULL);
    text = jstr(body, "text");
    ck_assert_msg(text != NULL, "SMS body: %s", q->body);
    link = strstr(text, "/approve/");
    ck_assert_msg(link != NULL, "no link in the SMS");
    link += strlen("/approve/");
    while ((isalnum((unsigned char)link[n]) || link[n] == '-' || link[n] == '_') &&
           n < sizeof(out->ref) - 1)
        n++;
    memcpy(out->ref, link, n);
    out->ref[n] = '\0';
    out->code[0] = '\0';
    for (const char *p = strstr(text, "Code "); p && isdigit((unsigned char)p[5]);) {
        memcpy(out->code, p + 5, 6);
        out->code[6] = '\0';
        break;
    }
    ck_assert_msg(strlen(out->code) == 6, "no code in the SMS");
    remember_secret("an SMS code", out->code);
    remember_secret("an approval reference", out->ref);
    json_decref(body);
}

/* Approves (or denies) the request whose SMS is number index. */
static void decide(size_t sms_index, bool approve)
{
    const char *headers[] = {FORM_TYPE, NULL};
    struct sms sms;
    char *path, *form;
    struct e2e_response r;

    wait_sms(sms_index, &sms);
    path = util_asprintf("/approve/%s", sms.ref);
    form = approve ? e2e_form("code", sms.code, "action", "approve", NULL)
                   : e2e_form("action", "deny", NULL);
    ck_assert_int_eq(e2e_request(srv.port, "POST", path, headers, form, strlen(form), &r),
                     0);
    ck_assert_msg(r.status == 200 && strstr(r.body, approve ? "Approved" : "Denied"),
                  "approval page: %d %s", r.status, r.body);
    e2e_response_free(&r);
    free(path);
    free(form);
}

/* A client_notification_token of len characters from the whole b64token alphabet,
 * ending with "=" padding. New string. */
static char *make_token(size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
    unsigned char *random = util_malloc(len);
    char *token = util_malloc(len + 1);

    util_random_bytes(random, len);
    for (size_t i = 0; i < len; i++)
        token[i] = alphabet[random[i] % (sizeof(alphabet) - 1)];
    if (len > 4)
        token[len - 1] = token[len - 2] = '=';
    token[len] = '\0';
    free(random);
    return token;
}

static void wait_callbacks(struct mock_http *m, size_t n)
{
    if (mock_http_wait(m, n, WAIT_MS) != 0) {
        char *tail = log_tail();

        ck_abort_msg("the callback got %zu requests, expected %zu; log:\n%s",
                     mock_http_count(m), n, tail);
    }
}

/* Checks one callback request: POST, JSON, the Bearer token, and returns its body. */
static json_t *callback_body(struct mock_http *m, size_t index, const char *token)
{
    const struct mock_http_request *q = mock_http_request_get(m, index);
    const char *auth = mock_http_header(q, "Authorization");
    const char *type = mock_http_header(q, "Content-Type");
    char *expected = util_asprintf("Bearer %s", token);
    json_t *body;

    ck_assert_str_eq(q->method, "POST");
    ck_assert_str_eq(q->path, "/ciba/callback");
    ck_assert_msg(type && strncmp(type, "application/json", 16) == 0,
                  "callback Content-Type %s", type ? type : "(none)");
    ck_assert_msg(auth && strcmp(auth, expected) == 0,
                  "callback Authorization is not Bearer + the request's token (%zu vs "
                  "%zu characters)",
                  auth ? strlen(auth) : 0, strlen(expected));
    ck_assert_uint_eq(mock_http_header_count(q, "Authorization"), 1);
    body = json_loadb(q->body, q->body_len, JSON_REJECT_DUPLICATES, NULL);
    ck_assert_msg(json_is_object(body), "callback body is not a JSON object: %s",
                  q->body);
    free(expected);
    return body;
}

/* ---- 2. ping ----------------------------------------------------------------------- */

START_TEST(ping_delivered_once)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(1024);
    char *id = start_auth(&c, token, false, NULL);
    struct e2e_response r;
    json_t *body;

    /* A ping client may also poll, and gets the same replies as a poll client. */
    r = poll_token(&c, id);
    assert_error(&r, 400, "authorization_pending");
    e2e_response_free(&r);

    decide(0, true);
    wait_callbacks(cb, 1);
    body = callback_body(cb, 0, token);
    ck_assert_uint_eq(json_object_size(body), 1);
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    json_decref(body);

    r = poll_token(&c, id);
    ck_assert_msg(r.status == 200, "poll after ping: %d %s", r.status, r.body);
    {
        json_t *tokens = e2e_json(&r);

        remember_secret("an access token", jstr(tokens, "access_token"));
        remember_secret("an ID token", jstr(tokens, "id_token"));
        json_decref(tokens);
    }
    e2e_response_free(&r);

    wait_notify_audits(id, "delivered", 1);
    sleep_ms(1500);
    ck_assert_uint_eq(mock_http_count(cb), 1);
    {
        char *hash = id_hash(id);

        ck_assert_int_eq(db_int("SELECT count(*) FROM notification WHERE "
                                "auth_req_id_hash = $1",
                                hash),
                         0);
        free(hash);
    }
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(ping_tokens_stay_with_requests)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *t1 = make_token(40), *t2 = make_token(41);
    char *id1 = start_auth(&c, t1, false, NULL);
    char *id2;
    json_t *b1, *b2;

    decide(0, true);
    wait_callbacks(cb, 1);
    id2 = start_auth(&c, t2, false, NULL);
    decide(1, false);
    wait_callbacks(cb, 2);
    b1 = callback_body(cb, 0, t1);
    b2 = callback_body(cb, 1, t2);
    ck_assert_str_eq(jstr(b1, "auth_req_id"), id1);
    ck_assert_str_eq(jstr(b2, "auth_req_id"), id2);
    ck_assert_uint_eq(json_object_size(b2), 1);
    json_decref(b1);
    json_decref(b2);
    free(id1);
    free(id2);
    free(t1);
    free(t2);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(ping_on_expiry)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(32);
    char *id = start_auth(&c, token, false, "2");
    json_t *body;
    struct e2e_response r;

    /* The sweep runs every 5 s. */
    ck_assert_msg(mock_http_wait(cb, 1, 15000) == 0, "no ping after expiry");
    body = callback_body(cb, 0, token);
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    json_decref(body);
    r = poll_token(&c, id);
    assert_error(&r, 400, "expired_token");
    e2e_response_free(&r);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(poll_client_never_called)
{
    struct test_client c = create_client("poll", NULL);
    char *id = start_auth(&c, "ignored token with spaces", false, NULL);
    struct e2e_response r;

    decide(0, true);
    r = poll_token(&c, id);
    ck_assert_int_eq(r.status, 200);
    {
        json_t *tokens = e2e_json(&r);

        remember_secret("an access token", jstr(tokens, "access_token"));
        json_decref(tokens);
    }
    e2e_response_free(&r);
    sleep_ms(1500);
    ck_assert_uint_eq(mock_http_count(cb), 0);
    free(id);
    client_free(&c);
}
END_TEST

START_TEST(notification_token_checked)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client ping = create_client("ping", url);
    struct test_client push = create_client("push", url);
    char *long_token = make_token(1025);
    static const char *const bad[] = {"has space", "quote\"d",    "=leading",  "a=b",
                                      "tab\there", "caf\xc3\xa9", "semi;colon"};
    struct e2e_response r;

    r = bc_authorize(&ping, NULL, NULL);
    assert_error(&r, 400, "invalid_request");
    e2e_response_free(&r);
    r = bc_authorize(&push, NULL, NULL);
    assert_error(&r, 400, "invalid_request");
    e2e_response_free(&r);
    r = bc_authorize(&ping, "", NULL);
    assert_error(&r, 400, "invalid_request");
    e2e_response_free(&r);
    r = bc_authorize(&ping, long_token, NULL);
    assert_error(&r, 400, "invalid_request");
    e2e_response_free(&r);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        r = bc_authorize(&ping, bad[i], NULL);
        assert_error(&r, 400, "invalid_request");
        e2e_response_free(&r);
    }
    /* Duplicated parameter. */
    r = post_as(&ping, "/bc-authorize",
                e2e_form("scope", SCOPE, "login_hint", user_phone,
                         "client_notification_token", "abc", "client_notification_token",
                         "abc", NULL));
    assert_error(&r, 400, "invalid_request");
    e2e_response_free(&r);
    /* None of these started a request, so no SMS went out. */
    ck_assert_uint_eq(mock_http_count(sink), 0);
    free(long_token);
    free(url);
    client_free(&ping);
    client_free(&push);
}
END_TEST

/* ---- 3. push ----------------------------------------------------------------------- */

static json_t *fetch_jwks(void)
{
    struct e2e_response r;
    json_t *jwks;

    ck_assert_int_eq(e2e_request(srv.port, "GET", "/jwks", NULL, NULL, 0, &r), 0);
    jwks = e2e_json(&r);
    e2e_response_free(&r);
    ck_assert_ptr_nonnull(jwks);
    return jwks;
}

START_TEST(push_tokens_delivered_once)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(1024);
    char *id = start_auth(&c, token, true, NULL);
    json_t *body, *jwks, *claims = NULL;
    char err[256], *at_hash, *hash;
    struct e2e_response r;

    decide(0, true);
    wait_callbacks(cb, 1);
    body = callback_body(cb, 0, token);
    remember_secret("a pushed access token", jstr(body, "access_token"));
    remember_secret("a pushed ID token", jstr(body, "id_token"));
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    ck_assert_str_eq(jstr(body, "token_type"), "Bearer");
    ck_assert_msg(json_integer_value(json_object_get(body, "expires_in")) > 0,
                  "pushed expires_in is not positive");
    ck_assert_str_eq(jstr(body, "scope"), SCOPE);

    jwks = fetch_jwks();
    ck_assert_msg(e2e_jwt_verify(jstr(body, "access_token"), jwks, NULL, NULL, err,
                                 sizeof(err)) == 0,
                  "pushed access token: %s", err);
    ck_assert_msg(e2e_jwt_verify(jstr(body, "id_token"), jwks, NULL, &claims, err,
                                 sizeof(err)) == 0,
                  "pushed ID token: %s", err);
    at_hash = e2e_at_hash(jstr(body, "access_token"));
    ck_assert_str_eq(jstr(claims, "at_hash"), at_hash);
    ck_assert_str_eq(jstr(claims, "urn:openid:params:jwt:claim:auth_req_id"), id);
    ck_assert_str_eq(jstr(claims, "aud"), c.client_id);

    /* A push client gets its tokens pushed, so the token endpoint rejects it. */
    r = poll_token(&c, id);
    assert_error(&r, 400, "unauthorized_client");
    e2e_response_free(&r);

    wait_notify_audits(id, "delivered", 1);
    sleep_ms(1500);
    ck_assert_uint_eq(mock_http_count(cb), 1);
    hash = id_hash(id);
    ck_assert_int_eq(
        db_int("SELECT count(*) FROM notification WHERE auth_req_id_hash = $1", hash), 0);
    ck_assert_int_eq(db_int("SELECT count(*) FROM audit_log WHERE action = 'token'"
                            " AND decision = 'issued' AND auth_req_id_hash = $1",
                            hash),
                     1);
    free(hash);
    free(at_hash);
    json_decref(claims);
    json_decref(jwks);
    json_decref(body);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(push_result_not_redeemable)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(30);
    char *id = start_auth(&c, token, true, NULL);
    char *hash = id_hash(id);
    json_t *body;
    struct e2e_response r;
    char *status;

    decide(0, true);
    wait_callbacks(cb, 1);
    body = callback_body(cb, 0, token);
    remember_secret("a pushed access token", jstr(body, "access_token"));
    remember_secret("a pushed ID token", jstr(body, "id_token"));
    json_decref(body);

    status = db_text("SELECT status FROM auth_req WHERE auth_req_id_hash = $1", hash);
    ck_assert_str_eq(status, "redeemed");
    free(status);
    /* Even a client switched to poll afterwards cannot redeem the pushed result. The
     * notification makes every worker drop its cached copy of the client, as
     * `cibad client delete` does. */
    free(db_text("WITH changed AS (UPDATE client SET backchannel_token_delivery_mode ="
                 " 'poll' WHERE client_id = $1 RETURNING client_id)"
                 " SELECT pg_notify('cibad_client', client_id) FROM changed",
                 c.client_id));
    sleep_ms(300); /* the workers read the notification between requests */
    r = poll_token(&c, id);
    assert_error(&r, 400, "invalid_grant");
    e2e_response_free(&r);
    free(hash);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(push_denial_sends_error)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(30);
    char *id = start_auth(&c, token, true, NULL);
    json_t *body;

    decide(0, false);
    wait_callbacks(cb, 1);
    body = callback_body(cb, 0, token);
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    ck_assert_str_eq(jstr(body, "error"), "access_denied");
    ck_assert_msg(jstr(body, "error_description") != NULL, "no error_description");
    ck_assert_msg(json_object_get(body, "access_token") == NULL,
                  "denial carries a token");
    json_decref(body);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(push_payload_sealed_in_outbox)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(50);
    char *id, *hash, *payload, *secrets_text;
    json_t *body;

    /* Keep the row in the outbox for a while: the first attempt fails. */
    mock_http_push(cb, 503, "{}", 0);
    id = start_auth(&c, token, true, NULL);
    hash = id_hash(id);
    decide(0, true);
    wait_callbacks(cb, 1);
    payload =
        db_text("SELECT payload FROM notification WHERE auth_req_id_hash = $1", hash);
    secrets_text =
        db_text("SELECT secrets FROM notification WHERE auth_req_id_hash = $1", hash);
    if (payload) {
        ck_assert_msg(strncmp(payload, "v1.", 3) == 0, "payload is not sealed");
        ck_assert_msg(strstr(payload, "eyJ") == NULL, "payload holds a JWT in clear");
        ck_assert_msg(strstr(payload, id) == NULL, "payload holds the auth_req_id");
        ck_assert_msg(strstr(secrets_text, token) == NULL, "secrets hold the token");
    }
    wait_callbacks(cb, 2);
    body = callback_body(cb, 1, token);
    remember_secret("a pushed access token", jstr(body, "access_token"));
    remember_secret("a pushed ID token", jstr(body, "id_token"));
    json_decref(body);
    wait_notify_audits(id, "delivered", 1);
    /* Delivered: the sealed tokens are gone. */
    ck_assert_int_eq(
        db_int("SELECT count(*) FROM notification WHERE auth_req_id_hash = $1", hash), 0);
    {
        char *stored = db_text("SELECT notification_secrets FROM auth_req"
                               " WHERE auth_req_id_hash = $1",
                               hash);

        ck_assert_msg(stored && strncmp(stored, "v1.", 3) == 0, "secrets not sealed");
        ck_assert_msg(strstr(stored, token) == NULL, "auth_req holds the token in clear");
        free(stored);
    }
    ck_assert_msg(payload != NULL, "the push payload was not in the outbox after the "
                                   "first failed attempt");
    free(payload);
    free(secrets_text);
    free(hash);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* ---- 4. failures and retries ------------------------------------------------------- */

START_TEST(callback_500_then_recovers)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id;

    mock_http_push(cb, 500, "{}", 0);
    mock_http_push(cb, 502, "{}", 0);
    id = start_auth(&c, token, false, NULL);
    decide(0, true);
    wait_callbacks(cb, 3);
    wait_notify_audits(id, "delivered", 1);
    ck_assert_int_eq(notify_audits(id, "retry"), 2);
    for (size_t i = 0; i < 3; i++) {
        json_t *body = callback_body(cb, i, token);

        ck_assert_str_eq(jstr(body, "auth_req_id"), id);
        json_decref(body);
    }
    sleep_ms(1000);
    ck_assert_uint_eq(mock_http_count(cb), 3);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(callback_closed_then_recovers)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(20);
    char *id;
    json_t *body;

    mock_http_push(cb, MOCK_HTTP_CLOSE, NULL, 0);
    id = start_auth(&c, token, true, NULL);
    decide(0, false);
    wait_callbacks(cb, 2);
    wait_notify_audits(id, "delivered", 1);
    ck_assert_int_eq(notify_audits(id, "retry"), 1);
    body = callback_body(cb, 1, token);
    ck_assert_str_eq(jstr(body, "error"), "access_denied");
    json_decref(body);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(callback_slow_times_out)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id;
    int64_t started;

    mock_http_push(cb, 204, NULL, 3000); /* past CIBAD_NOTIFICATION_TIMEOUT_MS=1000 */
    id = start_auth(&c, token, false, NULL);
    started = util_mono_ms();
    decide(0, true);
    /* The approval page did not wait for the slow endpoint. */
    ck_assert_msg(util_mono_ms() - started < 2500, "approval waited for the callback");
    wait_callbacks(cb, 2);
    wait_notify_audits(id, "delivered", 1);
    ck_assert_int_eq(notify_audits(id, "retry"), 1);
    {
        char *hash = id_hash(id);
        char *detail = db_text("SELECT detail FROM audit_log WHERE action = 'notify'"
                               " AND decision = 'retry' AND auth_req_id_hash = $1",
                               hash);

        ck_assert_msg(detail && strstr(detail, "timed out"), "retry detail: %s",
                      detail ? detail : "(none)");
        free(detail);
        free(hash);
    }
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* Returns a loopback port that nothing listens on: bound once, then closed. */
static int closed_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

START_TEST(callback_down_gives_up)
{
    char *url = util_asprintf("http://127.0.0.1:%d/ciba/callback", closed_port());
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id;
    struct e2e_response r;

    id = start_auth(&c, token, false, NULL);
    decide(0, true);
    /* CIBAD_NOTIFICATION_MAX_ATTEMPTS=3 for this test case. */
    wait_notify_audits(id, "failed", 1);
    ck_assert_int_eq(notify_audits(id, "retry"), 2);
    ck_assert_int_eq(notify_audits(id, "delivered"), 0);
    /* A failed ping does not cancel the request: the client can still poll. */
    r = poll_token(&c, id);
    ck_assert_msg(r.status == 200, "poll after failed pings: %d %s", r.status, r.body);
    {
        json_t *tokens = e2e_json(&r);

        remember_secret("an access token", jstr(tokens, "access_token"));
        remember_secret("an ID token", jstr(tokens, "id_token"));
        json_decref(tokens);
    }
    e2e_response_free(&r);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

static void setup_three_attempts(void)
{
    static const char *const extra[] = {"CIBAD_NOTIFICATION_MAX_ATTEMPTS=3", NULL};

    prepare_instance(extra, false);
    start_server();
}

START_TEST(redirect_not_followed)
{
    struct mock_http *other = mock_http_start(NULL, NULL);
    char *url = cb_url(cb, "127.0.0.1");
    char *elsewhere = mock_http_url(other, "127.0.0.1", "/elsewhere");
    struct mock_http_reply redirect = {.status = 302, .location = elsewhere};
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id;

    mock_http_push_reply(cb, &redirect);
    id = start_auth(&c, token, false, NULL);
    decide(0, true);
    wait_notify_audits(id, "failed", 1);
    sleep_ms(1500);
    ck_assert_uint_eq(mock_http_count(other), 0);
    ck_assert_uint_eq(mock_http_count(cb), 1);
    mock_http_free(other);
    free(elsewhere);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(unauthorized_not_retried)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id;

    mock_http_set_default(cb, 401, "{}");
    id = start_auth(&c, token, false, NULL);
    decide(0, true);
    wait_notify_audits(id, "failed", 1);
    sleep_ms(2000);
    ck_assert_uint_eq(mock_http_count(cb), 1);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* ---- 5. restart between the decision and the delivery ------------------------------ */

static void setup_slow_retry(void)
{
    static const char *const extra[] = {"CIBAD_NOTIFICATION_RETRY_INITIAL_MS=4000", NULL};

    prepare_instance(extra, false);
    start_server();
}

START_TEST(killed_before_delivery_still_delivers)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *token = make_token(64);
    char *id;
    json_t *body;

    /* The first attempt fails, so the row waits 4 s in the outbox: then cibad dies. */
    mock_http_push(cb, MOCK_HTTP_CLOSE, NULL, 0);
    id = start_auth(&c, token, true, NULL);
    decide(0, true);
    wait_callbacks(cb, 1);
    wait_notify_audits(id, "retry", 1);
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    srv.pid = 0;
    ck_assert_uint_eq(mock_http_count(cb), 1);

    start_server();
    wait_callbacks(cb, 2);
    body = callback_body(cb, 1, token);
    remember_secret("a pushed access token", jstr(body, "access_token"));
    remember_secret("a pushed ID token", jstr(body, "id_token"));
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    ck_assert_msg(jstr(body, "access_token") != NULL, "no access token after restart");
    json_decref(body);
    wait_notify_audits(id, "delivered", 1);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(killed_during_attempt_redelivers)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *token = make_token(64);
    char *id;
    json_t *body;

    /* The endpoint holds the first attempt, and cibad dies while it waits; the row's
     * lease (timeout + 10 s) then ends and the restarted server sends it again. */
    mock_http_push(cb, 204, NULL, 5000);
    id = start_auth(&c, token, false, NULL);
    decide(0, true);
    wait_callbacks(cb, 1);
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    srv.pid = 0;
    start_server();
    ck_assert_msg(mock_http_wait(cb, 2, 30000) == 0, "no delivery after the restart");
    body = callback_body(cb, 1, token);
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    json_decref(body);
    wait_notify_audits(id, "delivered", 1);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* ---- 6. TLS and address rules ------------------------------------------------------ */

static void setup_tls(void)
{
    prepare_instance(NULL, true);
    start_server();
}

START_TEST(https_callback_by_name)
{
    char *url = cb_url(cb, "localhost");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id = start_auth(&c, token, false, NULL);
    const struct mock_http_request *q;
    json_t *body;

    decide(0, true);
    wait_callbacks(cb, 1);
    q = mock_http_request_get(cb, 0);
    ck_assert_msg(q->tls_server_name && strcmp(q->tls_server_name, "localhost") == 0,
                  "no SNI localhost");
    body = callback_body(cb, 0, token);
    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    json_decref(body);
    wait_notify_audits(id, "delivered", 1);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(untrusted_certificate_not_delivered)
{
    struct mock_http *wrong =
        mock_http_start(certs.wrong_cert_file, certs.wrong_key_file);
    char *url = cb_url(wrong, "localhost");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id = start_auth(&c, token, false, NULL);
    char *hash = id_hash(id);
    char *detail;

    decide(0, true);
    wait_notify_audits(id, "retry", 1);
    ck_assert_uint_eq(mock_http_count(wrong), 0);
    detail = db_text("SELECT detail FROM audit_log WHERE action = 'notify'"
                     " AND decision = 'retry' AND auth_req_id_hash = $1",
                     hash);
    ck_assert_msg(detail && strstr(detail, "TLS"), "retry detail: %s",
                  detail ? detail : "(none)");
    free(detail);
    free(hash);
    mock_http_free(wrong);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* The client is registered while loopback endpoints are allowed, then cibad runs with
 * the default rules: a host name that resolves to 127.0.0.1 must be refused after the
 * lookup, before anything is sent. */
static void setup_ssrf(void)
{
    prepare_instance(NULL, true);
}

START_TEST(resolved_loopback_rejected)
{
    char *url = cb_url(cb, "localhost");
    struct test_client c = create_client("ping", url);
    char *token = make_token(20);
    char *id, *hash, *detail;
    struct e2e_response r;

    e2e_server_setenv(&srv, "CIBAD_NOTIFICATION_ALLOW_LOOPBACK", "false");
    /* The command line refuses such endpoints under the default rules. */
    ck_assert_int_eq(e2e_cli(&srv, NULL, "client", "create", "--name", "x", "--scope",
                             SCOPE, "--delivery-mode", "ping", "--notification-endpoint",
                             url, NULL),
                     2);
    start_server();
    id = start_auth(&c, token, false, NULL);
    hash = id_hash(id);
    decide(0, true);
    wait_notify_audits(id, "failed", 1);
    ck_assert_uint_eq(mock_http_count(cb), 0);
    detail = db_text("SELECT detail FROM audit_log WHERE action = 'notify'"
                     " AND decision = 'failed' AND auth_req_id_hash = $1",
                     hash);
    ck_assert_msg(detail && strstr(detail, "not allowed"), "failure detail: %s",
                  detail ? detail : "(none)");
    /* The request itself stays usable by polling. */
    r = poll_token(&c, id);
    ck_assert_int_eq(r.status, 200);
    {
        json_t *tokens = e2e_json(&r);

        remember_secret("an access token", jstr(tokens, "access_token"));
        remember_secret("an ID token", jstr(tokens, "id_token"));
        json_decref(tokens);
    }
    e2e_response_free(&r);
    free(detail);
    free(hash);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(cli_endpoint_rules)
{
    static const char *const refused[][2] = {
        {"ping", NULL},
        {"push", NULL},
        {"ping", "http://cb.example.com/cb"},
        {"ping", "https://10.0.0.5/cb"},
        {"push", "https://169.254.169.254/cb"},
        {"poll", "https://cb.example.com/cb"},
        {"pong", "https://cb.example.com/cb"},
    };

    e2e_server_setenv(&srv, "CIBAD_NOTIFICATION_ALLOW_LOOPBACK", "false");
    for (size_t i = 0; i < ARRAY_LEN(refused); i++) {
        int rc;

        if (refused[i][1])
            rc = e2e_cli(&srv, NULL, "client", "create", "--name", "x", "--scope", SCOPE,
                         "--delivery-mode", refused[i][0], "--notification-endpoint",
                         refused[i][1], NULL);
        else
            rc = e2e_cli(&srv, NULL, "client", "create", "--name", "x", "--scope", SCOPE,
                         "--delivery-mode", refused[i][0], NULL);
        ck_assert_msg(rc == 2, "client create %s %s: exit %d, expected 2", refused[i][0],
                      refused[i][1] ? refused[i][1] : "(no endpoint)", rc);
    }
    ck_assert_int_eq(e2e_cli(&srv, NULL, "client", "create", "--name", "x", "--scope",
                             SCOPE, "--delivery-mode", "push", "--notification-endpoint",
                             "https://cb.example.com/ciba", NULL),
                     0);
}
END_TEST

/* ---- 7. connection reuse ---------------------------------------------------------- */

/* One worker, so every notification goes through the same notifier and its pool. */
static void setup_one_worker(void)
{
    static const char *const extra[] = {"CIBAD_WORKERS=1", NULL};

    prepare_instance(extra, false);
    start_server();
}

static void setup_tls_one_worker(void)
{
    static const char *const extra[] = {"CIBAD_WORKERS=1", NULL};

    prepare_instance(extra, true);
    start_server();
}

/* Starts a request of c, approves it (its SMS is number sms_index), waits until its
 * notification is recorded as delivered, and returns its auth_req_id. */
static char *deliver(const struct test_client *c, const char *token, bool push,
                     size_t sms_index)
{
    char *id = start_auth(c, token, push, NULL);

    decide(sms_index, true);
    wait_notify_audits(id, "delivered", 1);
    return id;
}

/* Checks that request index of m carries token and the auth_req_id id, and keeps
 * pushed tokens out of the server log. */
static void check_delivery(struct mock_http *m, size_t index, const char *token,
                           const char *id)
{
    json_t *body = callback_body(m, index, token);

    ck_assert_str_eq(jstr(body, "auth_req_id"), id);
    remember_secret("a pushed access token", jstr(body, "access_token"));
    remember_secret("a pushed ID token", jstr(body, "id_token"));
    json_decref(body);
}

/* Checks that each request was delivered once, in one attempt, and that m got exactly
 * n requests, the i-th for ids[i]. */
static void check_each_once(struct mock_http *m, char **tokens, char **ids, size_t n)
{
    sleep_ms(1500); /* time for a duplicate to arrive */
    ck_assert_uint_eq(mock_http_count(m), n);
    for (size_t i = 0; i < n; i++) {
        check_delivery(m, i, tokens[i], ids[i]);
        ck_assert_int_eq(notify_audits(ids[i], "delivered"), 1);
        ck_assert_int_eq(notify_audits(ids[i], "retry"), 0);
        ck_assert_int_eq(notify_audits(ids[i], "failed"), 0);
    }
}

static void free_all(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
}

START_TEST(pings_share_one_connection)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *tokens[4], *ids[4];

    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        tokens[i] = make_token(30 + i);
        ids[i] = deliver(&c, tokens[i], false, i);
    }
    check_each_once(cb, tokens, ids, ARRAY_LEN(ids));
    ck_assert_uint_eq(mock_http_connection_count(cb), 1);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++)
        ck_assert_ptr_null(mock_http_header(mock_http_request_get(cb, i), "Connection"));
    free_all(tokens, ARRAY_LEN(ids));
    free_all(ids, ARRAY_LEN(ids));
    free(url);
    client_free(&c);
}
END_TEST

/* Every reply sends "Connection: close", so no connection goes back to the pool. */
START_TEST(push_connection_close_each_once)
{
    struct mock_http_reply closing = {.status = 204, .close_connection = true};
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("push", url);
    char *tokens[3], *ids[3];

    for (size_t i = 0; i < ARRAY_LEN(ids); i++)
        mock_http_push_reply(cb, &closing);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        tokens[i] = make_token(40 + i);
        ids[i] = deliver(&c, tokens[i], true, i);
    }
    check_each_once(cb, tokens, ids, ARRAY_LEN(ids));
    ck_assert_uint_eq(mock_http_connection_count(cb), 3);
    free_all(tokens, ARRAY_LEN(ids));
    free_all(ids, ARRAY_LEN(ids));
    free(url);
    client_free(&c);
}
END_TEST

/* The endpoint closes connections idle for 300 ms, well before the pool would. */
START_TEST(push_idle_close_each_once)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c;
    char *tokens[3], *ids[3];

    mock_http_set_idle_timeout(cb, 300);
    c = create_client("push", url);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        tokens[i] = make_token(50 + i);
        ids[i] = deliver(&c, tokens[i], true, i);
        sleep_ms(700);
    }
    check_each_once(cb, tokens, ids, ARRAY_LEN(ids));
    ck_assert_uint_eq(mock_http_connection_count(cb), 3);
    free_all(tokens, ARRAY_LEN(ids));
    free_all(ids, ARRAY_LEN(ids));
    free(url);
    client_free(&c);
}
END_TEST

/* The endpoint closes a reused connection when the request arrives, without a reply,
 * as a server does that closes an idle connection at that moment. The notification is
 * sent again at once over a new connection, within the same attempt. */
START_TEST(reused_connection_closed_resent_at_once)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *t1 = make_token(20), *t2 = make_token(21);
    char *id1 = deliver(&c, t1, false, 0);
    char *id2, *hash, *detail;

    mock_http_push(cb, MOCK_HTTP_CLOSE, NULL, 0);
    id2 = deliver(&c, t2, false, 1);
    sleep_ms(1500);
    ck_assert_uint_eq(mock_http_count(cb), 3);
    check_delivery(cb, 0, t1, id1);
    check_delivery(cb, 1, t2, id2);
    check_delivery(cb, 2, t2, id2);
    ck_assert_int_eq(mock_http_request_get(cb, 1)->client_port,
                     mock_http_request_get(cb, 0)->client_port);
    ck_assert_int_ne(mock_http_request_get(cb, 2)->client_port,
                     mock_http_request_get(cb, 1)->client_port);
    ck_assert_int_eq(notify_audits(id2, "delivered"), 1);
    ck_assert_int_eq(notify_audits(id2, "retry"), 0);
    hash = id_hash(id2);
    detail = db_text("SELECT detail FROM audit_log WHERE action = 'notify'"
                     " AND decision = 'delivered' AND auth_req_id_hash = $1",
                     hash);
    ck_assert_msg(detail && strstr(detail, "reused connection") &&
                      strstr(detail, "attempt 1"),
                  "delivery detail: %s", detail ? detail : "(none)");
    free(detail);
    free(hash);
    free(id1);
    free(id2);
    free(t1);
    free(t2);
    free(url);
    client_free(&c);
}
END_TEST

START_TEST(clients_on_two_ports_never_share)
{
    struct mock_http *other = mock_http_start(NULL, NULL);
    char *url_a = cb_url(cb, "127.0.0.1");
    char *url_b = cb_url(other, "127.0.0.1");
    struct test_client a = create_client("ping", url_a);
    struct test_client b = create_client("ping", url_b);
    char *tokens_a[2], *ids_a[2], *tokens_b[2], *ids_b[2];

    mock_http_set_default(other, 204, NULL);
    for (size_t i = 0; i < 2; i++) {
        tokens_a[i] = make_token(60 + i);
        ids_a[i] = deliver(&a, tokens_a[i], false, 2 * i);
        tokens_b[i] = make_token(70 + i);
        ids_b[i] = deliver(&b, tokens_b[i], false, 2 * i + 1);
    }
    check_each_once(cb, tokens_a, ids_a, 2);
    check_each_once(other, tokens_b, ids_b, 2);
    ck_assert_uint_eq(mock_http_connection_count(cb), 1);
    ck_assert_uint_eq(mock_http_connection_count(other), 1);
    mock_http_free(other);
    free_all(tokens_a, 2);
    free_all(ids_a, 2);
    free_all(tokens_b, 2);
    free_all(ids_b, 2);
    free(url_a);
    free(url_b);
    client_free(&a);
    client_free(&b);
}
END_TEST

START_TEST(https_pings_share_one_connection)
{
    char *url = cb_url(cb, "localhost");
    struct test_client c = create_client("ping", url);
    char *tokens[3], *ids[3];

    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        tokens[i] = make_token(30 + i);
        ids[i] = deliver(&c, tokens[i], false, i);
    }
    check_each_once(cb, tokens, ids, ARRAY_LEN(ids));
    ck_assert_uint_eq(mock_http_connection_count(cb), 1);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        const struct mock_http_request *q = mock_http_request_get(cb, i);

        ck_assert_msg(q->tls_server_name && strcmp(q->tls_server_name, "localhost") == 0,
                      "request %zu: no SNI localhost", i);
    }
    free_all(tokens, ARRAY_LEN(ids));
    free_all(ids, ARRAY_LEN(ids));
    free(url);
    client_free(&c);
}
END_TEST

/* Two clients name the same TLS server by two host names: each name gets its own
 * connection, checked against its own name, even though address and port are the
 * same. */
START_TEST(https_host_names_never_share)
{
    char *url_a = cb_url(cb, "localhost");
    char *url_b = cb_url(cb, "127.0.0.1");
    struct test_client a = create_client("ping", url_a);
    struct test_client b = create_client("ping", url_b);
    char *tokens[4], *ids[4];
    int port_a = -1, port_b = -1;
    char host_a[64], host_b[64];

    snprintf(host_a, sizeof(host_a), "localhost:%d", mock_http_port(cb));
    snprintf(host_b, sizeof(host_b), "127.0.0.1:%d", mock_http_port(cb));
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        tokens[i] = make_token(80 + i);
        ids[i] = deliver(i % 2 ? &b : &a, tokens[i], false, i);
    }
    check_each_once(cb, tokens, ids, ARRAY_LEN(ids));
    ck_assert_uint_eq(mock_http_connection_count(cb), 2);
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        const struct mock_http_request *q = mock_http_request_get(cb, i);
        int *port = i % 2 ? &port_b : &port_a;

        ck_assert_str_eq(mock_http_header(q, "Host"), i % 2 ? host_b : host_a);
        if (*port < 0)
            *port = q->client_port;
        ck_assert_int_eq(q->client_port, *port);
    }
    ck_assert_int_ne(port_a, port_b);
    free_all(tokens, ARRAY_LEN(ids));
    free_all(ids, ARRAY_LEN(ids));
    free(url_a);
    free(url_b);
    client_free(&a);
    client_free(&b);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------- */

/* ---- responses that must not desynchronize a reused connection ----------------------
 */

/* A raw notification endpoint on 127.0.0.1 that replies to every request (headers and a
 * body of Content-Length bytes) with the same bytes and keeps the connection open, for
 * responses evhttp's server never sends. */
struct raw_endpoint {
    int listen_fd;
    int port;
    const char *response;
    atomic_bool stop;
    atomic_int requests;
    pthread_t thread;
};

enum { RAW_CLIENTS = 8, RAW_BUF = 16384 };

/* Replies to each complete request in buf. Returns -1 once the client closed. */
static int raw_endpoint_read(struct raw_endpoint *ep, int fd, char *buf, size_t *len)
{
    ssize_t n = read(fd, buf + *len, RAW_BUF - 1 - *len);
    char *end;

    if (n <= 0)
        return -1;
    *len += (size_t)n;
    buf[*len] = '\0';
    while ((end = strstr(buf, "\r\n\r\n")) != NULL) {
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
        size_t used = (size_t)(end + 4 - buf) + body;

        if (used > *len)
            break;
        atomic_fetch_add(&ep->requests, 1);
        if (write(fd, ep->response, strlen(ep->response)) < 0)
            return -1;
        memmove(buf, buf + used, *len - used + 1);
        *len -= used;
    }
    return 0;
}

static void *raw_endpoint_main(void *arg)
{
    struct raw_endpoint *ep = arg;
    struct pollfd fds[1 + RAW_CLIENTS];
    static char bufs[RAW_CLIENTS][RAW_BUF];
    size_t lens[RAW_CLIENTS] = {0};
    int nfds = 1;

    fds[0] = (struct pollfd){.fd = ep->listen_fd, .events = POLLIN};
    while (!atomic_load(&ep->stop)) {
        if (poll(fds, (nfds_t)nfds, 20) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && nfds < 1 + RAW_CLIENTS) {
            int fd = accept(ep->listen_fd, NULL, NULL);

            if (fd >= 0) {
                lens[nfds - 1] = 0;
                fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
            }
        }
        for (int i = 1; i < nfds; i++) {
            if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                raw_endpoint_read(ep, fds[i].fd, bufs[i - 1], &lens[i - 1]) != 0) {
                /* The client closed: its slot takes the last connection. */
                close(fds[i].fd);
                nfds--;
                if (i < nfds) {
                    fds[i] = fds[nfds];
                    memcpy(bufs[i - 1], bufs[nfds - 1], lens[nfds - 1] + 1);
                    lens[i - 1] = lens[nfds - 1];
                    i--;
                }
            }
        }
    }
    for (int i = 1; i < nfds; i++)
        close(fds[i].fd);
    return NULL;
}

static char *raw_endpoint_start(struct raw_endpoint *ep, const char *response)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);

    memset(ep, 0, sizeof(*ep));
    ep->response = response;
    ep->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(ep->listen_fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(ep->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(ep->listen_fd, 16), 0);
    ck_assert_int_eq(getsockname(ep->listen_fd, (struct sockaddr *)&sa, &len), 0);
    ep->port = ntohs(sa.sin_port);
    ck_assert_int_eq(pthread_create(&ep->thread, NULL, raw_endpoint_main, ep), 0);
    return util_asprintf("http://127.0.0.1:%d/ciba/callback", ep->port);
}

static void raw_endpoint_stop(struct raw_endpoint *ep)
{
    atomic_store(&ep->stop, true);
    pthread_join(ep->thread, NULL);
    close(ep->listen_fd);
}

static void wait_raw_requests(struct raw_endpoint *ep, int n)
{
    int64_t end = util_mono_ms() + WAIT_MS;

    while (atomic_load(&ep->requests) < n && util_mono_ms() < end)
        sleep_ms(20);
    ck_assert_int_ge(atomic_load(&ep->requests), n);
}

/* The endpoint replies 503 to every push and appends a second response, 204, to the same
 * write. The 204 stays in the connection's input buffer, and extra data after a
 * response is no response of its own (RFC 9112 section 6.3). So the connection must not
 * be pooled, and the push must never be recorded delivered. */
START_TEST(leftover_response_not_taken_as_delivery)
{
    struct raw_endpoint ep;
    char *url = raw_endpoint_start(&ep, "HTTP/1.1 503 Service Unavailable\r\n"
                                        "Content-Length: 4\r\n\r\nbusy"
                                        "HTTP/1.1 204 No Content\r\n\r\n");
    struct test_client c = create_client("push", url);
    char *token = make_token(50);
    char *id = start_auth(&c, token, true, NULL);

    decide(0, true);
    wait_raw_requests(&ep, 2);
    sleep_ms(1000);
    ck_assert_int_ge(notify_audits(id, "retry"), 1);
    ck_assert_int_eq(notify_audits(id, "delivered"), 0);
    raw_endpoint_stop(&ep);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* An endpoint that sends 103 Early Hints before its 204 (RFC 8297). libevent 2.1.12
 * ends the request at the 103, so the attempt counts as failed and is retried: the
 * endpoint gets the push again, as the README states. What must hold is that the 204 left
 * behind is never read as the response to the retry, so the push is never recorded
 * delivered on the strength of an earlier attempt's bytes. */
START_TEST(early_hints_never_answer_the_retry)
{
    struct raw_endpoint ep;
    char *url = raw_endpoint_start(&ep, "HTTP/1.1 103 Early Hints\r\n"
                                        "Link: </style.css>; rel=preload\r\n\r\n"
                                        "HTTP/1.1 204 No Content\r\n\r\n");
    struct test_client c = create_client("push", url);
    char *token = make_token(51);
    char *id = start_auth(&c, token, true, NULL);

    decide(0, true);
    wait_raw_requests(&ep, 2);
    sleep_ms(1000);
    ck_assert_int_ge(notify_audits(id, "retry"), 1);
    ck_assert_int_eq(notify_audits(id, "delivered"), 0);
    raw_endpoint_stop(&ep);
    free(id);
    free(token);
    free(url);
    client_free(&c);
}
END_TEST

/* One stray CRLF after each 204. Over a reused connection the second push would fail
 * with a protocol error after the endpoint had handled it, and go out again. The
 * connection must not be pooled, so each push is delivered once, in one attempt. */
START_TEST(stray_crlf_push_delivered_once)
{
    struct raw_endpoint ep;
    char *url = raw_endpoint_start(&ep, "HTTP/1.1 204 No Content\r\n\r\n\r\n");
    struct test_client c = create_client("push", url);
    char *t1 = make_token(52), *t2 = make_token(53);
    char *id1 = start_auth(&c, t1, true, NULL), *id2;
    int requests;

    decide(0, true);
    wait_notify_audits(id1, "delivered", 1);
    id2 = start_auth(&c, t2, true, NULL);
    decide(1, true);
    wait_notify_audits(id2, "delivered", 1);
    sleep_ms(1000);
    requests = atomic_load(&ep.requests);
    ck_assert_int_eq(requests, 2);
    ck_assert_int_eq(notify_audits(id2, "retry"), 0);
    raw_endpoint_stop(&ep);
    free(id1);
    free(id2);
    free(t1);
    free(t2);
    free(url);
    client_free(&c);
}
END_TEST

/* SIGTERM while the pool keeps an idle connection and a second notification waits for
 * its reply: cibad exits 0 (under SANITIZE=1, with no leak report). */
START_TEST(sigterm_with_pooled_and_running_calls)
{
    char *url = cb_url(cb, "127.0.0.1");
    struct test_client c = create_client("ping", url);
    char *t1 = make_token(54), *t2 = make_token(55);
    char *id1 = deliver(&c, t1, false, 0);
    char *id2;
    int rc;

    mock_http_push(cb, 204, NULL, 900);
    id2 = start_auth(&c, t2, false, NULL);
    decide(1, true);
    ck_assert_int_eq(mock_http_wait(cb, 2, WAIT_MS), 0);
    rc = e2e_server_stop(&srv);
    ck_assert_int_eq(rc, 0);
    free(id1);
    free(id2);
    free(t1);
    free(t2);
    free(url);
    client_free(&c);
}
END_TEST

static int count_fds(pid_t pid)
{
    char *cmd = util_asprintf("ls /proc/%d/fd | wc -l", (int)pid);
    FILE *f = popen(cmd, "r");
    int n = -1;

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%d", &n), 1);
    pclose(f);
    free(cmd);
    return n;
}

/* Many pings to endpoints that fail in different ways (a stray CRLF after each answer,
 * a forged second answer, a 103 first): cibad's open descriptors stay bounded by the
 * pool size. This one holds. */
START_TEST(failing_endpoints_leak_no_fds)
{
    static const char *const responses[] = {
        "HTTP/1.1 204 No Content\r\n\r\n\r\n",
        "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    };
    struct raw_endpoint eps[ARRAY_LEN(responses)];
    struct test_client clients[ARRAY_LEN(responses)];
    char *urls[ARRAY_LEN(responses)];
    int before, after;
    size_t sms = 0;

    for (size_t i = 0; i < ARRAY_LEN(responses); i++) {
        urls[i] = raw_endpoint_start(&eps[i], responses[i]);
        clients[i] = create_client("ping", urls[i]);
    }
    before = count_fds(srv.pid);
    for (int round = 0; round < 6; round++) {
        for (size_t i = 0; i < ARRAY_LEN(responses); i++) {
            char *token = make_token(60);
            char *id = start_auth(&clients[i], token, false, NULL);

            decide(sms++, true);
            free(id);
            free(token);
        }
    }
    sleep_ms(5000); /* retries finish and the pool's 4 s idle time runs out */
    after = count_fds(srv.pid);
    fprintf(stderr, "cibad fds: %d before, %d after\n", before, after);
    if (getenv("REVIEW_FD_DUMP")) {
        fprintf(stderr, "sink port %d, endpoint ports %d %d %d\n", mock_http_port(sink),
                eps[0].port, eps[1].port, eps[2].port);
        char *cmd = util_asprintf("ls -l /proc/%d/fd >&2; ss -tanp 2>/dev/null | grep "
                                  "'pid=%d,' >&2",
                                  (int)srv.pid, (int)srv.pid);

        if (system(cmd) != 0)
            fprintf(stderr, "the descriptor dump failed\n");
        sleep_ms(12000);
        fprintf(stderr, "12 s later: %d fds\n", count_fds(srv.pid));
        if (system(cmd) != 0)
            fprintf(stderr, "the descriptor dump failed\n");
        free(cmd);
    }
    ck_assert_int_le(after, before + 2);
    for (size_t i = 0; i < ARRAY_LEN(responses); i++) {
        raw_endpoint_stop(&eps[i]);
        client_free(&clients[i]);
        free(urls[i]);
    }
}
END_TEST

static TCase *tcase_new(const char *name, void (*setup)(void))
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    if (setup)
        tcase_add_checked_fixture(tc, setup, teardown_instance);
    return tc;
}

static Suite *notify_suite(void)
{
    Suite *s = suite_create("notify");
    TCase *tc;

    tc = tcase_new("rules", NULL);
    tcase_add_test(tc, address_rules_table);
    tcase_add_test(tc, endpoint_rules_table);
    tcase_add_test(tc, endpoint_too_long_rejected);
    tcase_add_test(tc, pooled_connection_rechecks_address);
    suite_add_tcase(s, tc);

    tc = tcase_new("ping", setup_default);
    tcase_add_test(tc, ping_delivered_once);
    tcase_add_test(tc, ping_tokens_stay_with_requests);
    tcase_add_test(tc, ping_on_expiry);
    tcase_add_test(tc, poll_client_never_called);
    tcase_add_test(tc, notification_token_checked);
    suite_add_tcase(s, tc);

    tc = tcase_new("push", setup_default);
    tcase_add_test(tc, push_tokens_delivered_once);
    tcase_add_test(tc, push_result_not_redeemable);
    tcase_add_test(tc, push_denial_sends_error);
    tcase_add_test(tc, push_payload_sealed_in_outbox);
    suite_add_tcase(s, tc);

    tc = tcase_new("retries", setup_default);
    tcase_add_test(tc, callback_500_then_recovers);
    tcase_add_test(tc, callback_closed_then_recovers);
    tcase_add_test(tc, callback_slow_times_out);
    tcase_add_test(tc, redirect_not_followed);
    tcase_add_test(tc, unauthorized_not_retried);
    suite_add_tcase(s, tc);

    tc = tcase_new("give_up", setup_three_attempts);
    tcase_add_test(tc, callback_down_gives_up);
    suite_add_tcase(s, tc);

    tc = tcase_new("restart", setup_slow_retry);
    tcase_add_test(tc, killed_before_delivery_still_delivers);
    tcase_add_test(tc, killed_during_attempt_redelivers);
    suite_add_tcase(s, tc);

    tc = tcase_new("tls", setup_tls);
    tcase_add_test(tc, https_callback_by_name);
    tcase_add_test(tc, untrusted_certificate_not_delivered);
    suite_add_tcase(s, tc);

    tc = tcase_new("ssrf", setup_ssrf);
    tcase_add_test(tc, resolved_loopback_rejected);
    tcase_add_test(tc, cli_endpoint_rules);
    suite_add_tcase(s, tc);

    tc = tcase_new("reuse", setup_one_worker);
    tcase_add_test(tc, pings_share_one_connection);
    tcase_add_test(tc, push_connection_close_each_once);
    tcase_add_test(tc, push_idle_close_each_once);
    tcase_add_test(tc, reused_connection_closed_resent_at_once);
    tcase_add_test(tc, clients_on_two_ports_never_share);
    suite_add_tcase(s, tc);

    tc = tcase_new("desync", setup_one_worker);
    tcase_add_test(tc, leftover_response_not_taken_as_delivery);
    tcase_add_test(tc, early_hints_never_answer_the_retry);
    tcase_add_test(tc, stray_crlf_push_delivered_once);
    tcase_add_test(tc, sigterm_with_pooled_and_running_calls);
    tcase_add_test(tc, failing_endpoints_leak_no_fds);
    suite_add_tcase(s, tc);

    tc = tcase_new("tls_reuse", setup_tls_one_worker);
    tcase_add_test(tc, https_pings_share_one_connection);
    tcase_add_test(tc, https_host_names_never_share);
    suite_add_tcase(s, tc);

    return s;
}

CHECK_MAIN(notify_suite)
