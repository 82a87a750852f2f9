/* check_storage.c - tests of storage/ against a real PostgreSQL cluster
 * SPDX-License-Identifier: MIT
 *
 * tests/run.sh starts the cluster and sets CIBAD_TEST_DATABASE_URL (a key=value libpq
 * string with dbname=), CIBAD_TEST_MIGRATIONS, CIBAD_TEST_PG_DIR and CIBAD_TEST_ROOT.
 * Check forks per test, so every test opens its own event_base and connections. Tests
 * share one database and create their own clients and users with random names.
 */
#include "check_runner.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "storage/storage.h"
#include "util/util.h"

#define WAIT_MS 10000

/* ---- environment, loop and direct SQL ---------------------------------------------- */

static const char *env(const char *name)
{
    const char *value = getenv(name);

    ck_assert_msg(value != NULL && *value, "%s is not set: run through tests/run.sh",
                  name);
    return value;
}

static struct event_base *base;
static struct event *tick;

static void on_tick(evutil_socket_t fd, short events, void *arg)
{
    (void)fd;
    (void)events;
    (void)arg;
}

/* Opens this test's loop, with a ticking timer so EVLOOP_ONCE always returns. */
static void loop_open(void)
{
    struct timeval tv = {0, 10000};

    base = event_base_new();
    ck_assert_ptr_nonnull(base);
    tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    event_add(tick, &tv);
}

static void loop_close(void)
{
    event_free(tick);
    event_base_free(base);
    base = NULL;
}

static void wait_calls(const int *calls, int want)
{
    int64_t end = util_mono_ms() + WAIT_MS;

    while (*calls < want) {
        ck_assert_msg(util_mono_ms() < end, "timed out waiting for %d callbacks, got %d",
                      want, *calls);
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static void run_loop_ms(int ms)
{
    int64_t end = util_mono_ms() + ms;

    while (util_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
}

static void wait_up(struct storage_conn *db, int timeout_ms)
{
    int64_t end = util_mono_ms() + timeout_ms;

    while (!storage_conn_is_up(db)) {
        ck_assert_msg(util_mono_ms() < end, "connection not up after %d ms", timeout_ms);
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static struct storage_conn *conn_open(int timeout_ms)
{
    struct storage_conn *db =
        storage_conn_new(base, env("CIBAD_TEST_DATABASE_URL"), timeout_ms);

    ck_assert_ptr_nonnull(db);
    wait_up(db, WAIT_MS);
    return db;
}

static struct storage_sync *sync_open_url(const char *url)
{
    char err[256] = "";
    struct storage_sync *s = storage_sync_connect(url, err, sizeof(err));

    ck_assert_msg(s != NULL, "connect failed: %s", err);
    return s;
}

static struct storage_sync *sync_open(void)
{
    return sync_open_url(env("CIBAD_TEST_DATABASE_URL"));
}

/* Checked fixture: the shared test database has the current schema. */
static void schema_setup(void)
{
    struct storage_sync *s = sync_open();

    ck_assert_int_eq(storage_sync_migrate(s, env("CIBAD_TEST_MIGRATIONS")), 0);
    storage_sync_close(s);
}

static PGconn *raw_open_url(const char *url)
{
    PGconn *pg = PQconnectdb(url);

    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "raw connect failed: %s",
                  PQerrorMessage(pg));
    return pg;
}

static PGconn *raw_open(void)
{
    return raw_open_url(env("CIBAD_TEST_DATABASE_URL"));
}

/* Runs sql with up to one text parameter and checks that it succeeded. */
static PGresult *raw_query(PGconn *pg, const char *sql, const char *param)
{
    const char *values[1] = {param};
    PGresult *res = PQexecParams(pg, sql, param ? 1 : 0, NULL, values, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);

    ck_assert_msg(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, "%s: %s", sql,
                  PQresultErrorMessage(res));
    return res;
}

static void raw_exec(PGconn *pg, const char *sql, const char *param)
{
    PQclear(raw_query(pg, sql, param));
}

/* Returns the first column of the first row as an integer (-1 for no row or NULL). */
static long long raw_int(PGconn *pg, const char *sql, const char *param)
{
    PGresult *res = raw_query(pg, sql, param);
    long long value = -1;

    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        value = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return value;
}

/* Returns the first column of the first row as a new string, or NULL. */
static char *raw_text(PGconn *pg, const char *sql, const char *param)
{
    PGresult *res = raw_query(pg, sql, param);
    char *value = NULL;

    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        value = util_strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return value;
}

static long long audit_count(PGconn *pg, const char *id_hash, const char *action,
                             const char *decision)
{
    const char *values[3] = {id_hash, action, decision};
    PGresult *res =
        PQexecParams(pg,
                     "SELECT count(*) FROM audit_log WHERE auth_req_id_hash = $1"
                     " AND action = $2 AND decision = $3",
                     3, NULL, values, NULL, NULL, 0);
    long long n;

    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

/* ---- fixtures: people and requests ------------------------------------------------- */

static void random_hex(char *out, size_t bytes)
{
    unsigned char buf[32];

    ck_assert_uint_le(bytes, sizeof(buf));
    util_random_bytes(buf, bytes);
    for (size_t i = 0; i < bytes; i++)
        sprintf(out + 2 * i, "%02x", buf[i]);
}

struct people {
    char client_id[40];
    char other_client_id[40];
    char subject[40];
    char username[40];
    char phone[17];
};

static void client_add(struct storage_sync *s, const char *client_id)
{
    struct storage_client_new c = {
        .client_id = client_id,
        .client_name = "Test Agent",
        .secret_hash = "0000000000000000000000000000000000000000000000000000000000000000",
        .token_endpoint_auth_method = "client_secret_basic",
        .scope = "openid email",
        .backchannel_token_delivery_mode = "poll",
    };
    char err[256] = "";

    ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0,
                  "client create failed: %s", err);
}

/* Creates two clients and one user with random names. */
static void people_create(struct people *p)
{
    struct storage_sync *s = sync_open();
    char hex[17];
    unsigned digits;
    char err[256] = "";

    random_hex(hex, 8);
    snprintf(p->client_id, sizeof(p->client_id), "client-%s", hex);
    snprintf(p->other_client_id, sizeof(p->other_client_id), "other-%s", hex);
    snprintf(p->subject, sizeof(p->subject), "sub-%s", hex);
    snprintf(p->username, sizeof(p->username), "user-%s", hex);
    util_random_bytes(&digits, sizeof(digits));
    snprintf(p->phone, sizeof(p->phone), "+1555%07u", digits % 10000000u);

    client_add(s, p->client_id);
    client_add(s, p->other_client_id);
    ck_assert_msg(storage_sync_user_create(s, p->subject, p->username, p->phone, err,
                                           sizeof(err)) == 0,
                  "user create failed: %s", err);
    storage_sync_close(s);
}

struct req {
    char id_hash[65];
    char ref_hash[65];
    unsigned char hmac[32];
    struct storage_auth_req_new in;
};

/* Fills a request for p with defaults a test may change before creating it. */
static void req_init(struct req *r, const struct people *p)
{
    random_hex(r->id_hash, 32);
    random_hex(r->ref_hash, 32);
    util_random_bytes(r->hmac, sizeof(r->hmac));
    r->in = (struct storage_auth_req_new){
        .auth_req_id_hash = r->id_hash,
        .ref_hash = r->ref_hash,
        .client_id = p->client_id,
        .subject = p->subject,
        .phone_number = p->phone,
        .scope = "openid email custom",
        .binding_message = "Pay 10 EUR",
        .acr_values = "urn:test:acr",
        .expires_in = 120,
        .interval = 5,
        .otp_hmac = r->hmac,
        .otp_hmac_len = sizeof(r->hmac),
        .otp_lifetime = 60,
        .sms_per_phone_max = 100,
        .sms_per_phone_window = 3600,
        .request_id = "rid-test",
    };
}

struct done_res {
    int calls;
    enum storage_status status;
};

static void on_done(void *arg, enum storage_status status)
{
    struct done_res *r = arg;

    r->calls++;
    r->status = status;
}

static enum storage_status req_create(struct storage_conn *db, struct req *r)
{
    struct done_res res = {0};

    ck_assert_int_eq(storage_auth_req_create(db, &r->in, on_done, &res), 0);
    ck_assert_int_eq(res.calls, 0);
    wait_calls(&res.calls, 1);
    return res.status;
}

struct poll_res {
    int calls;
    enum storage_status status;
    enum storage_poll_outcome outcome;
    int interval;
    char subject[64];
    char scope[128];
    char acr_values[64];
    int64_t auth_time;
};

static void on_poll(void *arg, enum storage_status status,
                    const struct storage_poll *poll)
{
    struct poll_res *r = arg;

    r->calls++;
    r->status = status;
    if (poll == NULL)
        return;
    r->outcome = poll->outcome;
    r->interval = poll->interval;
    r->auth_time = poll->auth_time;
    snprintf(r->subject, sizeof(r->subject), "%s", poll->subject ? poll->subject : "");
    snprintf(r->scope, sizeof(r->scope), "%s", poll->scope ? poll->scope : "");
    snprintf(r->acr_values, sizeof(r->acr_values), "%s",
             poll->acr_values ? poll->acr_values : "");
}

static struct poll_res poll_once(struct storage_conn *db, const char *id_hash,
                                 const char *client_id)
{
    struct poll_res res = {0};

    ck_assert_int_eq(
        storage_auth_req_poll(db, id_hash, client_id, "rid-poll", on_poll, &res), 0);
    wait_calls(&res.calls, 1);
    ck_assert_int_eq(res.status, STORAGE_OK);
    return res;
}

struct approval_res {
    int calls;
    enum storage_status status;
    bool has_row;
    enum storage_auth_req_status ar_status;
    char client_name[64];
    char subject[64];
    char phone[20];
    char scope[128];
    char binding_message[64];
    char scope_descriptions[512];
    int64_t expires_at, otp_expires_at, otp_sent_at, now;
    int otp_attempts, otp_generation;
    unsigned char hmac[64];
    size_t hmac_len;
};

static void on_approval(void *arg, enum storage_status status,
                        const struct storage_approval *a)
{
    struct approval_res *r = arg;

    r->calls++;
    r->status = status;
    r->has_row = a != NULL;
    if (a == NULL)
        return;
    r->ar_status = a->status;
    snprintf(r->client_name, sizeof(r->client_name), "%s", a->client_name);
    snprintf(r->subject, sizeof(r->subject), "%s", a->subject);
    snprintf(r->phone, sizeof(r->phone), "%s", a->phone_number);
    snprintf(r->scope, sizeof(r->scope), "%s", a->scope);
    snprintf(r->binding_message, sizeof(r->binding_message), "%s",
             a->binding_message ? a->binding_message : "");
    snprintf(r->scope_descriptions, sizeof(r->scope_descriptions), "%s",
             a->scope_descriptions);
    r->expires_at = a->expires_at;
    r->otp_expires_at = a->otp_expires_at;
    r->otp_sent_at = a->otp_sent_at;
    r->now = a->now;
    r->otp_attempts = a->otp_attempts;
    r->otp_generation = a->otp_generation;
    r->hmac_len = a->otp_hmac_len < sizeof(r->hmac) ? a->otp_hmac_len : sizeof(r->hmac);
    memcpy(r->hmac, a->otp_hmac, r->hmac_len);
}

static struct approval_res approval_get_now(struct storage_conn *db, const char *ref_hash)
{
    struct approval_res res = {0};

    ck_assert_int_eq(storage_approval_get(db, ref_hash, on_approval, &res), 0);
    wait_calls(&res.calls, 1);
    return res;
}

static struct approval_res decide_now(struct storage_conn *db, const char *ref_hash,
                                      int generation, int attempts,
                                      enum storage_decision decision, int max_attempts)
{
    struct approval_res res = {0};

    ck_assert_int_eq(storage_approval_decide(db, ref_hash, generation, attempts, decision,
                                             max_attempts, "rid-decide", on_approval,
                                             &res),
                     0);
    wait_calls(&res.calls, 1);
    return res;
}

static enum storage_status resend_now(struct storage_conn *db, const char *ref_hash,
                                      const unsigned char *hmac, int cooldown, int max)
{
    struct done_res res = {0};

    ck_assert_int_eq(storage_approval_resend(db, ref_hash, hmac, 32, 60, cooldown, max,
                                             3600, "rid-resend", on_done, &res),
                     0);
    wait_calls(&res.calls, 1);
    return res.status;
}

/* Creates a request and approves it with the right code. */
static void req_create_approved(struct storage_conn *db, struct req *r)
{
    struct approval_res a;

    ck_assert_int_eq(req_create(db, r), STORAGE_OK);
    a = decide_now(db, r->ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_APPROVED);
}

/* ---- migrations -------------------------------------------------------------------- */

/* Creates an empty database and returns a connection string for it (a new string). */
static char *fresh_database(void)
{
    const char *url = env("CIBAD_TEST_DATABASE_URL");
    const char *at = strstr(url, "dbname=");
    const char *end;
    char hex[13], name[32];
    char *sql, *fresh;
    PGconn *pg;

    ck_assert_msg(at != NULL, "CIBAD_TEST_DATABASE_URL has no dbname=");
    end = strchr(at, ' ');
    random_hex(hex, 6);
    snprintf(name, sizeof(name), "mig_%s", hex);
    fresh = util_asprintf("%.*sdbname=%s%s", (int)(at - url), url, name, end ? end : "");

    pg = raw_open();
    sql = util_asprintf("CREATE DATABASE %s", name);
    raw_exec(pg, sql, NULL);
    free(sql);
    PQfinish(pg);
    return fresh;
}

static long long count_files(const char *dir)
{
    char *cmd = util_asprintf("ls %s | grep -cE '^[0-9]{4}_[a-z0-9_]+\\.sql$'", dir);
    FILE *f = popen(cmd, "r");
    long long n = -1;

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%lld", &n), 1);
    pclose(f);
    free(cmd);
    return n;
}

/* Copies the real migrations into a new temporary directory. */
static char *copy_migrations(void)
{
    char tmpl[] = "/tmp/cibad-mig.XXXXXX";
    char *dir, *cmd;

    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    dir = util_strdup(tmpl);
    cmd = util_asprintf("cp %s/*.sql %s/", env("CIBAD_TEST_MIGRATIONS"), dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    return dir;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *path = util_asprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");

    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(path);
}

static void remove_dir(char *dir)
{
    char *cmd = util_asprintf("rm -rf %s", dir);

    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(dir);
}

START_TEST(migrate_fresh_then_noop)
{
    char *url = fresh_database();
    const char *dir = env("CIBAD_TEST_MIGRATIONS");
    struct storage_sync *s = sync_open_url(url);
    PGconn *pg = raw_open_url(url);
    long long files = count_files(dir);
    int behind = -1;

    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), 0);
    ck_assert_int_eq(behind, files);
    ck_assert_int_eq(storage_sync_migrate(s, dir), 0);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM schema_migrations", NULL), files);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM scope", NULL), 5);
    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), 0);
    ck_assert_int_eq(behind, 0);

    /* A second run applies nothing: the seeded scope rows are not inserted twice. */
    ck_assert_int_eq(storage_sync_migrate(s, dir), 0);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM schema_migrations", NULL), files);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM scope", NULL), 5);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM schema_migrations WHERE version = $1",
                             "0001_initial"),
                     1);
    PQfinish(pg);
    storage_sync_close(s);
    free(url);
}
END_TEST

START_TEST(migrate_two_processes)
{
    char *url = fresh_database();
    const char *dir = env("CIBAD_TEST_MIGRATIONS");
    pid_t pids[2];
    PGconn *pg;

    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            char err[256];
            struct storage_sync *s = storage_sync_connect(url, err, sizeof(err));
            int rc = s ? storage_sync_migrate(s, dir) : -1;

            storage_sync_close(s);
            _exit(rc == 0 ? 0 : 1);
        }
    }
    for (int i = 0; i < 2; i++) {
        int status = 0;

        ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "migrator %d failed (status %d)", i, status);
    }
    pg = raw_open_url(url);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM schema_migrations", NULL),
                     count_files(dir));
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM scope", NULL), 5);
    PQfinish(pg);
    free(url);
}
END_TEST

START_TEST(schema_behind_counts_new_file)
{
    char *url = fresh_database();
    char *dir = copy_migrations();
    struct storage_sync *s = sync_open_url(url);
    PGconn *pg = raw_open_url(url);
    int behind = -1;

    ck_assert_int_eq(storage_sync_migrate(s, dir), 0);
    write_file(dir, "0099_extra.sql",
               "CREATE TABLE extra (x int);\n"
               "INSERT INTO extra VALUES (1), (2);\n");
    write_file(dir, "README.txt", "not a migration");
    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), 0);
    ck_assert_int_eq(behind, 1);
    ck_assert_int_eq(storage_sync_migrate(s, dir), 0);
    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), 0);
    ck_assert_int_eq(behind, 0);
    ck_assert_int_eq(raw_int(pg, "SELECT count(*) FROM extra", NULL), 2);
    PQfinish(pg);
    storage_sync_close(s);
    remove_dir(dir);
    free(url);
}
END_TEST

START_TEST(migrate_failure_rolls_back)
{
    char *url = fresh_database();
    char *dir = copy_migrations();
    struct storage_sync *s = sync_open_url(url);
    PGconn *pg = raw_open_url(url);
    int behind = -1;

    write_file(dir, "0098_broken.sql", "CREATE TABLE half_done (x int);\nSELEC 1;\n");
    ck_assert_int_eq(storage_sync_migrate(s, dir), -1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM schema_migrations WHERE version = $1",
                             "0098_broken"),
                     0);
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM pg_class WHERE relname = $1", "half_done"), 0);
    /* The files before the broken one stay applied. */
    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), 0);
    ck_assert_int_eq(behind, 1);
    /* The lock was released: another session can take it at once. */
    ck_assert_int_eq(raw_int(pg, "SELECT pg_try_advisory_lock(426969817444)::int", NULL),
                     1);
    PQfinish(pg);
    storage_sync_close(s);
    remove_dir(dir);
    free(url);
}
END_TEST

START_TEST(migrate_bad_directory)
{
    struct storage_sync *s = sync_open();
    char *dir = copy_migrations();
    int behind = -1;

    ck_assert_int_eq(storage_sync_migrate(s, "/nonexistent/migrations"), -1);
    ck_assert_int_eq(storage_sync_schema_behind(s, "/nonexistent/migrations", &behind),
                     -1);

    /* Two files with one number have no defined order. */
    write_file(dir, "0001_again.sql", "SELECT 1;\n");
    ck_assert_int_eq(storage_sync_migrate(s, dir), -1);
    ck_assert_int_eq(storage_sync_schema_behind(s, dir, &behind), -1);
    storage_sync_close(s);
    remove_dir(dir);
}
END_TEST

START_TEST(sync_connect_bad_url)
{
    char err[256] = "";

    ck_assert_ptr_null(
        storage_sync_connect("host=/nonexistent port=1 dbname=x", err, sizeof(err)));
    ck_assert_msg(err[0] != '\0', "no reason given");
    err[0] = '\0';
    ck_assert_ptr_null(storage_sync_connect("not a = valid = string", err, sizeof(err)));
    ck_assert_msg(err[0] != '\0', "no reason given");
    ck_assert_ptr_null(storage_sync_connect(NULL, err, sizeof(err)));
}
END_TEST

/* ---- clients, users, scopes -------------------------------------------------------- */

struct list_res {
    int n;
    char first[64];
};

static void on_client_row(void *arg, const struct storage_client *c)
{
    struct list_res *r = arg;

    if (r->n++ == 0)
        snprintf(r->first, sizeof(r->first), "%s", c->client_id);
}

START_TEST(client_create_list_delete)
{
    struct storage_sync *s = sync_open();
    char hex[13], id[32], err[256] = "";
    struct list_res list = {0};
    struct storage_client_new c = {
        .client_name = "Agent",
        .secret_hash = "ab",
        .token_endpoint_auth_method = "client_secret_post",
        .scope = "openid",
        .backchannel_token_delivery_mode = "ping",
        .backchannel_client_notification_endpoint = "https://agent.example/cb",
        .grant_types = "urn:openid:params:grant-type:ciba",
    };

    random_hex(hex, 6);
    snprintf(id, sizeof(id), "c-%s", hex);
    c.client_id = id;
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "already exists") != NULL, "err: %s", err);

    ck_assert_int_eq(storage_sync_client_each(s, id, on_client_row, &list), 1);
    ck_assert_str_eq(list.first, id);
    list.n = 0;
    ck_assert_int_ge(storage_sync_client_each(s, NULL, on_client_row, &list), 1);
    ck_assert_int_eq(storage_sync_client_each(s, "no-such-client", on_client_row, &list),
                     0);

    ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
    ck_assert_int_eq(storage_sync_client_delete(s, id), 0);
    storage_sync_close(s);
}
END_TEST

START_TEST(client_create_rejects_bad_fields)
{
    struct storage_sync *s = sync_open();
    char hex[13], id[32], err[256] = "";
    char long_id[200];
    struct storage_client_new c = {
        .client_name = "Agent",
        .secret_hash = "ab",
        .token_endpoint_auth_method = "private_key_jwt",
        .scope = "openid",
    };

    random_hex(hex, 6);
    snprintf(id, sizeof(id), "c-%s", hex);
    c.client_id = id;
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "invalid client field") != NULL, "err: %s", err);

    c.token_endpoint_auth_method = "client_secret_basic";
    c.backchannel_token_delivery_mode = "email";
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);

    c.backchannel_token_delivery_mode = NULL;
    c.client_name = NULL;
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "missing") != NULL, "err: %s", err);

    c.client_name = "Agent";
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    c.client_id = long_id;
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);
    c.client_id = "";
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);

    /* Defaults fill the delivery mode and grant types. */
    c.client_id = id;
    ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
    storage_sync_close(s);
}
END_TEST

struct client_res {
    int calls;
    enum storage_status status;
    char name[64];
    char mode[16];
    char grant_types[64];
    bool endpoint_null;
    int64_t created_at;
};

static void on_client(void *arg, enum storage_status status,
                      const struct storage_client *c)
{
    struct client_res *r = arg;

    r->calls++;
    r->status = status;
    if (c == NULL)
        return;
    snprintf(r->name, sizeof(r->name), "%s", c->client_name);
    snprintf(r->mode, sizeof(r->mode), "%s", c->backchannel_token_delivery_mode);
    snprintf(r->grant_types, sizeof(r->grant_types), "%s", c->grant_types);
    r->endpoint_null = c->backchannel_client_notification_endpoint == NULL;
    r->created_at = c->created_at;
}

START_TEST(client_get_found_and_missing)
{
    struct people p;
    struct storage_conn *db;
    struct client_res found = {0}, missing = {0};

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_client_get(db, p.client_id, on_client, &found), 0);
    ck_assert_int_eq(storage_client_get(db, "no-such-client", on_client, &missing), 0);
    ck_assert_int_eq(storage_client_get(db, NULL, on_client, &missing), -1);
    wait_calls(&found.calls, 1);
    wait_calls(&missing.calls, 1);

    ck_assert_int_eq(found.status, STORAGE_OK);
    ck_assert_str_eq(found.name, "Test Agent");
    ck_assert_str_eq(found.mode, "poll");
    ck_assert_str_eq(found.grant_types, "urn:openid:params:grant-type:ciba");
    ck_assert(found.endpoint_null);
    ck_assert_int_ge(found.created_at, util_now_s() - 60);
    ck_assert_int_le(found.created_at, util_now_s() + 60);
    ck_assert_int_eq(missing.status, STORAGE_NOT_FOUND);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- the client cache ------------------------------------------------------------ */

static void wait_recovered(struct storage_conn *db, int timeout_ms, int *rejected,
                           int *failed_calls);

static struct storage_conn *conn_open_cached(int ttl_ms)
{
    struct storage_conn *db =
        storage_conn_new(base, env("CIBAD_TEST_DATABASE_URL"), 5000);

    ck_assert_ptr_nonnull(db);
    ck_assert_int_eq(storage_conn_set_client_cache(db, ttl_ms), 0);
    wait_up(db, WAIT_MS);
    return db;
}

static struct client_res client_get_now(struct storage_conn *db, const char *client_id)
{
    struct client_res r = {0};

    ck_assert_int_eq(storage_client_get(db, client_id, on_client, &r), 0);
    wait_calls(&r.calls, 1);
    return r;
}

START_TEST(client_cache_settings_checked)
{
    struct storage_conn *db;

    loop_open();
    db = storage_conn_new(base, env("CIBAD_TEST_DATABASE_URL"), 5000);
    ck_assert_ptr_nonnull(db);
    ck_assert_int_eq(storage_conn_set_client_cache(db, -1), -1);
    ck_assert_int_eq(storage_conn_set_client_cache(NULL, 1000), -1);
    ck_assert_int_eq(storage_conn_set_client_cache(db, 1000), 0);
    ck_assert_int_eq(storage_conn_set_client_cache(db, 1000), -1);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* A client deleted by hand sends no notification, so it stays cached until the TTL
 * ends. */
START_TEST(client_cache_hit_deferred_until_ttl)
{
    struct people p;
    struct storage_conn *db;
    struct client_res first, hit = {0}, after;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open_cached(500);
    first = client_get_now(db, p.client_id);
    ck_assert_int_eq(first.status, STORAGE_OK);
    raw_exec(pg, "DELETE FROM client WHERE client_id = $1", p.client_id);

    ck_assert_int_eq(storage_client_get(db, p.client_id, on_client, &hit), 0);
    ck_assert_int_eq(hit.calls, 0);
    ck_assert_uint_eq(storage_conn_pending(db), 1);
    wait_calls(&hit.calls, 1);
    ck_assert_int_eq(hit.status, STORAGE_OK);
    ck_assert_str_eq(hit.name, "Test Agent");
    ck_assert_str_eq(hit.mode, "poll");
    ck_assert_str_eq(hit.grant_types, "urn:openid:params:grant-type:ciba");
    ck_assert(hit.endpoint_null);
    ck_assert_int_eq(hit.created_at, first.created_at);
    ck_assert_uint_eq(storage_conn_pending(db), 0);

    run_loop_ms(550);
    after = client_get_now(db, p.client_id);
    ck_assert_int_eq(after.status, STORAGE_NOT_FOUND);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(client_cache_dropped_on_delete)
{
    struct people p;
    struct storage_conn *db;
    struct storage_sync *s = sync_open();
    struct client_res r;
    int64_t deleted_ms;

    people_create(&p);
    loop_open();
    db = conn_open_cached(60000);
    ck_assert_int_eq(client_get_now(db, p.client_id).status, STORAGE_OK);
    ck_assert_int_eq(client_get_now(db, p.other_client_id).status, STORAGE_OK);
    ck_assert_int_eq(storage_sync_client_delete(s, p.client_id), 1);
    ck_assert_int_eq(storage_sync_client_delete(s, p.client_id), 0);
    deleted_ms = util_mono_ms();

    /* The notification comes through the loop: wait for it, but not for the TTL. */
    for (;;) {
        r = client_get_now(db, p.client_id);
        if (r.status != STORAGE_OK)
            break;
        ck_assert_msg(util_mono_ms() - deleted_ms < 2000,
                      "the deleted client is still cached after 2 s");
        run_loop_ms(10);
    }
    ck_assert_int_eq(r.status, STORAGE_NOT_FOUND);
    /* Only the deleted client was dropped. */
    ck_assert_int_eq(client_get_now(db, p.other_client_id).status, STORAGE_OK);
    storage_sync_close(s);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(client_cache_skips_unknown_ids)
{
    struct storage_conn *db;
    struct storage_sync *s = sync_open();
    char client_id[40] = "later-";

    random_hex(client_id + strlen(client_id), 8);
    loop_open();
    db = conn_open_cached(60000);
    ck_assert_int_eq(client_get_now(db, client_id).status, STORAGE_NOT_FOUND);
    client_add(s, client_id);
    ck_assert_int_eq(client_get_now(db, client_id).status, STORAGE_OK);
    storage_sync_close(s);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(client_cache_free_fails_hits)
{
    struct people p;
    struct storage_conn *db;
    struct client_res hit = {0};

    people_create(&p);
    loop_open();
    db = conn_open_cached(60000);
    ck_assert_int_eq(client_get_now(db, p.client_id).status, STORAGE_OK);
    ck_assert_int_eq(storage_client_get(db, p.client_id, on_client, &hit), 0);
    storage_conn_free(db);
    ck_assert_int_eq(hit.calls, 1);
    ck_assert_int_eq(hit.status, STORAGE_UNAVAILABLE);
    run_loop_ms(50);
    ck_assert_int_eq(hit.calls, 1);
    loop_close();
}
END_TEST

/* Notifications sent while the connection was down are lost, so a reset empties the
 * cache. */
START_TEST(client_cache_emptied_on_reset)
{
    struct people p;
    struct storage_conn *db;
    PGconn *admin = raw_open();
    int rejected = 0, failed_calls = 0;

    people_create(&p);
    loop_open();
    db = conn_open_cached(60000);
    ck_assert_int_eq(client_get_now(db, p.client_id).status, STORAGE_OK);
    ck_assert_int_ge(
        raw_int(admin,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'cibad' AND datname ="
                " current_database()",
                NULL),
        1);
    raw_exec(admin, "DELETE FROM client WHERE client_id = $1", p.client_id);
    wait_recovered(db, 10000, &rejected, &failed_calls);
    ck_assert_int_eq(client_get_now(db, p.client_id).status, STORAGE_NOT_FOUND);
    PQfinish(admin);
    storage_conn_free(db);
    loop_close();
}
END_TEST

static void on_user_row(void *arg, const struct storage_user *u)
{
    struct list_res *r = arg;

    (void)u;
    r->n++;
}

START_TEST(user_create_list_delete)
{
    struct storage_sync *s = sync_open();
    char hex[13], sub[32], name[32], sub2[32], err[256] = "";
    struct list_res list = {0};

    random_hex(hex, 6);
    snprintf(sub, sizeof(sub), "s-%s", hex);
    snprintf(name, sizeof(name), "n-%s", hex);
    snprintf(sub2, sizeof(sub2), "t-%s", hex);
    ck_assert_int_eq(
        storage_sync_user_create(s, sub, name, "+4915112345678", err, sizeof(err)), 0);

    ck_assert_int_eq(
        storage_sync_user_create(s, sub, "other", "+4915112345679", err, sizeof(err)),
        -1);
    ck_assert_msg(strstr(err, "subject already exists") != NULL, "err: %s", err);
    ck_assert_int_eq(
        storage_sync_user_create(s, sub2, name, "+4915112345679", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "username") != NULL, "err: %s", err);
    ck_assert_int_eq(
        storage_sync_user_create(s, sub2, NULL, "+4915112345678", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "phone number") != NULL, "err: %s", err);
    ck_assert_int_eq(
        storage_sync_user_create(s, sub2, NULL, "015112345678", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "invalid phone number") != NULL, "err: %s", err);
    ck_assert_int_eq(
        storage_sync_user_create(s, NULL, NULL, "+4915112345670", err, sizeof(err)), -1);
    /* A username equal to another user's subject would make login_hint ambiguous. */
    ck_assert_int_eq(
        storage_sync_user_create(s, sub2, sub, "+4915112345670", err, sizeof(err)), -1);
    ck_assert_int_eq(
        storage_sync_user_create(s, name, NULL, "+4915112345670", err, sizeof(err)), -1);

    ck_assert_int_ge(storage_sync_user_each(s, on_user_row, &list), 1);

    ck_assert_int_eq(storage_sync_user_delete(s, name), 1); /* by username */
    ck_assert_int_eq(storage_sync_user_delete(s, sub), 0);
    ck_assert_int_eq(
        storage_sync_user_create(s, sub, NULL, "+4915112345678", err, sizeof(err)), 0);
    ck_assert_int_eq(storage_sync_user_delete(s, sub), 1); /* by subject */
    storage_sync_close(s);
}
END_TEST

struct user_res {
    int calls;
    enum storage_status status;
    char subject[64];
    char phone[20];
};

static void on_user(void *arg, enum storage_status status, const struct storage_user *u)
{
    struct user_res *r = arg;

    r->calls++;
    r->status = status;
    if (u == NULL)
        return;
    snprintf(r->subject, sizeof(r->subject), "%s", u->subject);
    snprintf(r->phone, sizeof(r->phone), "%s", u->phone_number);
}

START_TEST(user_find_by_each_hint)
{
    struct people p;
    struct storage_conn *db;
    struct user_res by_phone = {0}, by_name = {0}, by_sub = {0}, missing = {0},
                    wrong_kind = {0};

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_PHONE, p.phone, on_user, &by_phone), 0);
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_NAME_OR_SUB, p.username, on_user, &by_name),
        0);
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_NAME_OR_SUB, p.subject, on_user, &by_sub), 0);
    /* A phone number is not a username, and a subject is not a phone number. */
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_NAME_OR_SUB, p.phone, on_user, &missing), 0);
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_PHONE, p.subject, on_user, &wrong_kind), 0);
    ck_assert_int_eq(
        storage_user_find(db, (enum storage_hint_kind)7, p.subject, on_user, &wrong_kind),
        -1);
    ck_assert_int_eq(
        storage_user_find(db, STORAGE_HINT_PHONE, NULL, on_user, &wrong_kind), -1);
    wait_calls(&by_phone.calls, 1);
    wait_calls(&by_name.calls, 1);
    wait_calls(&by_sub.calls, 1);
    wait_calls(&missing.calls, 1);
    wait_calls(&wrong_kind.calls, 1);

    ck_assert_int_eq(by_phone.status, STORAGE_OK);
    ck_assert_str_eq(by_phone.subject, p.subject);
    ck_assert_int_eq(by_name.status, STORAGE_OK);
    ck_assert_str_eq(by_name.subject, p.subject);
    ck_assert_str_eq(by_name.phone, p.phone);
    ck_assert_int_eq(by_sub.status, STORAGE_OK);
    ck_assert_str_eq(by_sub.subject, p.subject);
    ck_assert_int_eq(missing.status, STORAGE_NOT_FOUND);
    ck_assert_int_eq(wrong_kind.status, STORAGE_NOT_FOUND);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(user_email_stored_and_found)
{
    struct storage_sync *s = sync_open();
    struct storage_conn *db;
    char hex[13], sub[32], sub2[32], email[64], upper[64], err[256] = "";
    struct user_res found = {0}, missing = {0}, by_case = {0};

    random_hex(hex, 6);
    snprintf(sub, sizeof(sub), "e-%s", hex);
    snprintf(sub2, sizeof(sub2), "f-%s", hex);
    snprintf(email, sizeof(email), "ann.%s@example.com", hex);
    snprintf(upper, sizeof(upper), "Ann.%s@Example.com", hex);
    ck_assert_int_eq(storage_sync_user_create_email(s, sub, NULL, "+4915112340001", email,
                                                    err, sizeof(err)),
                     0);
    /* One address per user, stored lower-cased and shaped NAME@DOMAIN. */
    ck_assert_int_eq(storage_sync_user_create_email(s, sub2, NULL, "+4915112340002",
                                                    email, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "email address") != NULL, "err: %s", err);
    ck_assert_int_eq(storage_sync_user_create_email(s, sub2, NULL, "+4915112340002",
                                                    upper, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "invalid email") != NULL, "err: %s", err);
    ck_assert_int_eq(storage_sync_user_create_email(s, sub2, NULL, "+4915112340002",
                                                    "no-at-sign", err, sizeof(err)),
                     -1);
    ck_assert_int_eq(storage_sync_user_create_email(s, sub2, NULL, "+4915112340002",
                                                    "a b@c", err, sizeof(err)),
                     -1);

    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_user_find(db, STORAGE_HINT_EMAIL, email, on_user, &found),
                     0);
    ck_assert_int_eq(storage_user_find(db, STORAGE_HINT_EMAIL, upper, on_user, &by_case),
                     0);
    ck_assert_int_eq(storage_user_find(db, STORAGE_HINT_EMAIL, sub, on_user, &missing),
                     0);
    wait_calls(&found.calls, 1);
    wait_calls(&by_case.calls, 1);
    wait_calls(&missing.calls, 1);
    ck_assert_int_eq(found.status, STORAGE_OK);
    ck_assert_str_eq(found.subject, sub);
    /* The caller lower-cases; the lookup itself is exact. */
    ck_assert_int_eq(by_case.status, STORAGE_NOT_FOUND);
    ck_assert_int_eq(missing.status, STORAGE_NOT_FOUND);
    storage_conn_free(db);
    loop_close();
    ck_assert_int_eq(storage_sync_user_delete(s, sub), 1);
    storage_sync_close(s);
}
END_TEST

/* ---- trusted issuers --------------------------------------------------------------- */

#define ISSUER_JWKS                                                                      \
    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"i1\","                       \
    "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","                             \
    "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}"

struct issuer_row {
    int n;
    const char *want;
    bool found;
    char jwks[512];
    char jwks_uri[128];
    char user_claim[16];
    int64_t created_at;
};

static void on_issuer_row(void *arg, const struct storage_issuer *i)
{
    struct issuer_row *r = arg;

    r->n++;
    if (strcmp(i->issuer, r->want) != 0)
        return;
    r->found = true;
    snprintf(r->jwks, sizeof(r->jwks), "%s", i->jwks ? i->jwks : "");
    snprintf(r->jwks_uri, sizeof(r->jwks_uri), "%s", i->jwks_uri ? i->jwks_uri : "");
    snprintf(r->user_claim, sizeof(r->user_claim), "%s", i->user_claim);
    r->created_at = i->created_at;
}

START_TEST(issuer_add_list_delete)
{
    struct storage_sync *s = sync_open();
    char hex[13], iss[64], iss2[64], err[256] = "";
    struct issuer_row row = {.want = iss}, row2 = {.want = iss2};
    struct storage_issuer in = {.jwks = ISSUER_JWKS, .user_claim = "email"};

    random_hex(hex, 6);
    snprintf(iss, sizeof(iss), "https://idp-%s.example", hex);
    snprintf(iss2, sizeof(iss2), "https://idp2-%s.example", hex);
    in.issuer = iss;
    ck_assert_msg(storage_sync_issuer_add(s, &in, err, sizeof(err)) == 0, "add: %s", err);
    ck_assert_int_eq(storage_sync_issuer_add(s, &in, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "already trusted") != NULL, "err: %s", err);

    in.issuer = iss2;
    in.jwks = NULL;
    in.jwks_uri = "https://idp2.example/jwks";
    in.user_claim = "sub";
    ck_assert_msg(storage_sync_issuer_add(s, &in, err, sizeof(err)) == 0, "add: %s", err);

    ck_assert_int_ge(storage_sync_issuer_each(s, on_issuer_row, &row), 2);
    ck_assert(row.found);
    ck_assert_msg(strstr(row.jwks, "\"i1\"") != NULL, "jwks: %s", row.jwks);
    ck_assert_str_eq(row.jwks_uri, "");
    ck_assert_str_eq(row.user_claim, "email");
    ck_assert_int_gt(row.created_at, util_now_s() - 60);
    ck_assert_int_ge(storage_sync_issuer_each(s, on_issuer_row, &row2), 2);
    ck_assert(row2.found);
    ck_assert_str_eq(row2.jwks, "");
    ck_assert_str_eq(row2.jwks_uri, "https://idp2.example/jwks");
    ck_assert_str_eq(row2.user_claim, "sub");

    ck_assert_int_eq(storage_sync_issuer_delete(s, iss), 1);
    ck_assert_int_eq(storage_sync_issuer_delete(s, iss), 0);
    ck_assert_int_eq(storage_sync_issuer_delete(s, iss2), 1);
    row.found = false;
    ck_assert_int_ge(storage_sync_issuer_each(s, on_issuer_row, &row), 0);
    ck_assert(!row.found);
    storage_sync_close(s);
}
END_TEST

START_TEST(issuer_add_rejects_bad_fields)
{
    struct storage_sync *s = sync_open();
    char hex[13], iss[64], long_iss[300], err[256] = "";
    struct issuer_row row = {.want = iss};
    const struct storage_issuer bad[] = {
        /* both key sources, then neither */
        {iss, ISSUER_JWKS, "https://idp.example/jwks", "sub", 0},
        {iss, NULL, NULL, "sub", 0},
        {iss, ISSUER_JWKS, NULL, "username", 0},
        {iss, ISSUER_JWKS, NULL, NULL, 0},
        {iss, "{not json", NULL, "sub", 0},
        {NULL, ISSUER_JWKS, NULL, "sub", 0},
        {"", ISSUER_JWKS, NULL, "sub", 0},
        {long_iss, ISSUER_JWKS, NULL, "sub", 0},
    };

    random_hex(hex, 6);
    snprintf(iss, sizeof(iss), "https://bad-%s.example", hex);
    memset(long_iss, 'a', sizeof(long_iss) - 1);
    long_iss[sizeof(long_iss) - 1] = '\0';
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        ck_assert_msg(storage_sync_issuer_add(s, &bad[i], err, sizeof(err)) == -1,
                      "bad issuer %zu was stored", i);
        ck_assert_msg(err[0] != '\0', "bad issuer %zu: no reason", i);
    }
    ck_assert_int_ge(storage_sync_issuer_each(s, on_issuer_row, &row), 0);
    ck_assert(!row.found);
    storage_sync_close(s);
}
END_TEST

struct issuer_res {
    int calls;
    enum storage_status status;
    char jwks_uri[128];
    char user_claim[16];
};

static void on_issuer(void *arg, enum storage_status status,
                      const struct storage_issuer *i)
{
    struct issuer_res *r = arg;

    r->calls++;
    r->status = status;
    if (i == NULL)
        return;
    snprintf(r->jwks_uri, sizeof(r->jwks_uri), "%s", i->jwks_uri ? i->jwks_uri : "");
    snprintf(r->user_claim, sizeof(r->user_claim), "%s", i->user_claim);
}

START_TEST(issuer_find_found_and_missing)
{
    struct storage_sync *s = sync_open();
    struct storage_conn *db;
    char hex[13], iss[64], err[256] = "";
    struct storage_issuer in = {.jwks_uri = "https://idp.example/jwks",
                                .user_claim = "phone_number"};
    struct issuer_res found = {0}, missing = {0}, by_case = {0};

    random_hex(hex, 6);
    snprintf(iss, sizeof(iss), "https://find-%s.example", hex);
    in.issuer = iss;
    ck_assert_msg(storage_sync_issuer_add(s, &in, err, sizeof(err)) == 0, "add: %s", err);

    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_issuer_find(db, iss, on_issuer, &found), 0);
    ck_assert_int_eq(
        storage_issuer_find(db, "https://nobody.example", on_issuer, &missing), 0);
    /* iss is compared byte for byte (RFC 7519 section 4.1.1 calls it case-sensitive). */
    iss[0] = 'H';
    ck_assert_int_eq(storage_issuer_find(db, iss, on_issuer, &by_case), 0);
    ck_assert_int_eq(storage_issuer_find(db, NULL, on_issuer, &missing), -1);
    ck_assert_int_eq(storage_issuer_find(db, "x", NULL, NULL), -1);
    wait_calls(&found.calls, 1);
    wait_calls(&missing.calls, 1);
    wait_calls(&by_case.calls, 1);
    ck_assert_int_eq(found.status, STORAGE_OK);
    ck_assert_str_eq(found.jwks_uri, "https://idp.example/jwks");
    ck_assert_str_eq(found.user_claim, "phone_number");
    ck_assert_int_eq(missing.status, STORAGE_NOT_FOUND);
    ck_assert_int_eq(by_case.status, STORAGE_NOT_FOUND);
    storage_conn_free(db);
    loop_close();
    iss[0] = 'h';
    ck_assert_int_eq(storage_sync_issuer_delete(s, iss), 1);
    storage_sync_close(s);
}
END_TEST

struct scope_res {
    int n;
    char description[128];
    const char *name;
};

static void on_scope_row(void *arg, const char *name, const char *description)
{
    struct scope_res *r = arg;

    r->n++;
    if (strcmp(name, r->name) == 0)
        snprintf(r->description, sizeof(r->description), "%s", description);
}

START_TEST(scope_set_and_list)
{
    struct storage_sync *s = sync_open();
    struct scope_res list = {.name = "payments"};

    ck_assert_int_eq(storage_sync_scope_set(s, "payments", "Make payments"), 0);
    ck_assert_int_eq(storage_sync_scope_set(s, "payments", "Make payments for you"), 0);
    ck_assert_int_ge(storage_sync_scope_each(s, on_scope_row, &list), 6);
    ck_assert_str_eq(list.description, "Make payments for you");

    ck_assert_int_eq(storage_sync_scope_set(s, "two words", "x"), -1);
    ck_assert_int_eq(storage_sync_scope_set(s, "", "x"), -1);
    ck_assert_int_eq(storage_sync_scope_set(s, "quo\"te", "x"), -1);
    ck_assert_int_eq(storage_sync_scope_set(s, NULL, "x"), -1);
    ck_assert_int_eq(storage_sync_scope_set(s, "empty", ""), -1);
    ck_assert_int_eq(storage_sync_scope_set(s, "empty", NULL), -1);
    storage_sync_close(s);
}
END_TEST

/* ---- authentication requests ------------------------------------------------------- */

START_TEST(create_counts_phone_quota)
{
    struct people p;
    struct storage_conn *db;
    struct req r[5];
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    for (int i = 0; i < 4; i++) {
        req_init(&r[i], &p);
        r[i].in.sms_per_phone_max = 3;
    }
    ck_assert_int_eq(req_create(db, &r[0]), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &r[1]), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &r[2]), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &r[3]), STORAGE_LIMITED);

    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1",
                             r[3].id_hash),
                     0);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT cardinality(sent_at) FROM sms_quota"
                             " WHERE phone_number = $1",
                             p.phone),
                     3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(audit_count(pg, r[i].id_hash, "bc_authorize", "accepted"), 1);
    ck_assert_int_eq(audit_count(pg, r[3].id_hash, "bc_authorize", "accepted"), 0);

    /* Send times that fell out of the window no longer count. */
    raw_exec(pg,
             "UPDATE sms_quota SET sent_at = ARRAY[now() - interval '2 hours',"
             " now() - interval '2 hours', now() - interval '1 minute']"
             " WHERE phone_number = $1",
             p.phone);
    ck_assert_int_eq(req_create(db, &r[3]), STORAGE_OK);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT cardinality(sent_at) FROM sms_quota"
                             " WHERE phone_number = $1",
                             p.phone),
                     2);

    /* A maximum of 0 refuses even the first code of a number. */
    req_init(&r[4], &p);
    r[4].in.sms_per_phone_max = 0;
    ck_assert_int_eq(req_create(db, &r[4]), STORAGE_LIMITED);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* Creates made in one loop pass share one statement (batch.c), keyed on the phone
 * number: each call still gets its own outcome, and the second call for a number goes
 * into a later batch, so the quota counts it after the first. */
START_TEST(create_batches_calls)
{
    struct people p[3];
    struct storage_conn *db;
    struct req r[6];
    struct done_res res[6] = {{0}};
    PGconn *pg = raw_open();
    char *stored;

    for (int i = 0; i < 3; i++)
        people_create(&p[i]);
    loop_open();
    db = conn_open(5000);
    for (int i = 0; i < 3; i++)
        req_init(&r[i], &p[i]);
    /* p[0] twice, with room for one code only. */
    req_init(&r[3], &p[0]);
    r[0].in.sms_per_phone_max = 1;
    r[3].in.sms_per_phone_max = 1;
    /* Other limits than the open batch's: a batch of its own. */
    req_init(&r[4], &p[1]);
    r[4].in.sms_per_phone_window = 60;
    /* A ping request, with notification secrets and a certificate thumbprint. */
    req_init(&r[5], &p[2]);
    r[5].in.delivery_mode = "ping";
    r[5].in.notification_secrets = "sealed-secrets";
    r[5].in.cnf_x5t_s256 = "x5t-S256-thumbprint-of-43-base64url-chars_0";
    r[5].in.binding_message = "quote \" and backslash \\";
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(storage_auth_req_create(db, &r[i].in, on_done, &res[i]), 0);
    for (int i = 0; i < 6; i++)
        wait_calls(&res[i].calls, 1);

    ck_assert_int_eq(res[0].status, STORAGE_OK);
    ck_assert_int_eq(res[1].status, STORAGE_OK);
    ck_assert_int_eq(res[2].status, STORAGE_OK);
    ck_assert_int_eq(res[3].status, STORAGE_LIMITED);
    ck_assert_int_eq(res[4].status, STORAGE_OK);
    ck_assert_int_eq(res[5].status, STORAGE_OK);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(
            raw_int(pg, "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1",
                    r[i].id_hash),
            i == 3 ? 0 : 1);
        ck_assert_int_eq(audit_count(pg, r[i].id_hash, "bc_authorize", "accepted"),
                         i == 3 ? 0 : 1);
    }
    /* Each row has its own call's values, the HMAC byte for byte. */
    for (int i = 0; i < 6; i++) {
        char hex[2 * sizeof(r[i].hmac) + 1];

        if (i == 3)
            continue;
        for (size_t b = 0; b < sizeof(r[i].hmac); b++)
            snprintf(hex + 2 * b, 3, "%02x", r[i].hmac[b]);
        stored = raw_text(pg,
                          "SELECT encode(otp_hmac, 'hex') || ' ' || phone_number || ' '"
                          " || subject FROM auth_req WHERE auth_req_id_hash = $1",
                          r[i].id_hash);
        ck_assert_ptr_nonnull(stored);
        ck_assert_msg(strncmp(stored, hex, strlen(hex)) == 0, "row %d: %s", i, stored);
        ck_assert_ptr_nonnull(strstr(stored, r[i].in.phone_number));
        ck_assert_ptr_nonnull(strstr(stored, r[i].in.subject));
        free(stored);
    }
    stored = raw_text(pg,
                      "SELECT delivery_mode || '|' || notification_secrets || '|'"
                      " || cnf_x5t_s256 || '|' || binding_message FROM auth_req"
                      " WHERE auth_req_id_hash = $1",
                      r[5].id_hash);
    ck_assert_str_eq(stored, "ping|sealed-secrets|x5t-S256-thumbprint-of-43-base64url-"
                             "chars_0|quote \" and backslash \\");
    free(stored);
    /* A poll request keeps no notification secrets. */
    ck_assert_int_eq(
        raw_int(pg,
                "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1"
                " AND delivery_mode = 'poll' AND notification_secrets IS NULL"
                " AND binding_message = 'Pay 10 EUR'",
                r[1].id_hash),
        1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT cardinality(sent_at) FROM sms_quota"
                             " WHERE phone_number = $1",
                             p[0].phone),
                     1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(create_rejects_bad_input)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct done_res res = {0};
    char long_hash[300];

    people_create(&p);
    loop_open();
    db = conn_open(5000);

    req_init(&r, &p);
    r.in.otp_hmac = NULL;
    ck_assert_int_eq(storage_auth_req_create(db, &r.in, on_done, &res), -1);
    req_init(&r, &p);
    r.in.expires_in = 0;
    ck_assert_int_eq(storage_auth_req_create(db, &r.in, on_done, &res), -1);
    req_init(&r, &p);
    r.in.interval = -5;
    ck_assert_int_eq(storage_auth_req_create(db, &r.in, on_done, &res), -1);
    ck_assert_int_eq(storage_auth_req_create(db, NULL, on_done, &res), -1);
    ck_assert_int_eq(storage_auth_req_create(db, &r.in, NULL, &res), -1);
    ck_assert_int_eq(res.calls, 0);

    /* Unknown client or user: the foreign keys reject the row. */
    req_init(&r, &p);
    r.in.client_id = "no-such-client";
    ck_assert_int_eq(req_create(db, &r), STORAGE_ERROR);
    req_init(&r, &p);
    r.in.subject = "no-such-subject";
    ck_assert_int_eq(req_create(db, &r), STORAGE_ERROR);
    req_init(&r, &p);
    r.in.scope = NULL;
    ck_assert_int_eq(req_create(db, &r), STORAGE_ERROR);

    /* The same auth_req_id hash twice is refused by the primary key. */
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &r), STORAGE_ERROR);

    /* Oversized text is stored as given; the caller limits lengths. */
    req_init(&r, &p);
    memset(long_hash, 'a', sizeof(long_hash) - 1);
    long_hash[sizeof(long_hash) - 1] = '\0';
    r.in.auth_req_id_hash = long_hash;
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    /* The connection is still usable after the failed statements. */
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(code_sent_and_fail_delivery)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct done_res sent = {0}, unknown = {0}, failed = {0}, again = {0};
    struct poll_res poll;
    PGconn *pg = raw_open();
    char *detail;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    ck_assert_int_eq(storage_auth_req_code_sent(db, r.id_hash, "rid-1", on_done, &sent),
                     0);
    ck_assert_int_eq(storage_auth_req_code_sent(db, "feed", "rid-1", on_done, &unknown),
                     0);
    wait_calls(&sent.calls, 1);
    wait_calls(&unknown.calls, 1);
    ck_assert_int_eq(sent.status, STORAGE_OK);
    ck_assert_int_eq(unknown.status, STORAGE_NOT_FOUND);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "send_code", "sent"), 1);

    ck_assert_int_eq(storage_auth_req_fail_delivery(db, r.id_hash, "gateway returned 500",
                                                    "rid-2", on_done, &failed),
                     0);
    wait_calls(&failed.calls, 1);
    ck_assert_int_eq(failed.status, STORAGE_OK);
    ck_assert_int_eq(
        storage_auth_req_fail_delivery(db, r.id_hash, "again", "rid-3", on_done, &again),
        0);
    wait_calls(&again.calls, 1);
    ck_assert_int_eq(again.status, STORAGE_NOT_FOUND);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "send_code", "failed"), 1);
    detail = raw_text(pg,
                      "SELECT detail FROM audit_log WHERE auth_req_id_hash = $1"
                      " AND decision = 'failed'",
                      r.id_hash);
    ck_assert_str_eq(detail, "gateway returned 500");
    free(detail);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_DENIED);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- poll -------------------------------------------------------------------------- */

START_TEST(poll_unknown_and_foreign_id)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct poll_res poll;
    PGconn *pg = raw_open();
    struct poll_res unused = {0};

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    poll = poll_once(db, "0000", p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE client_id = $1"
                             " AND action = 'token' AND detail = 'invalid_grant'",
                             p.client_id),
                     1);

    /* Another client's id is invalid_grant, and the poll leaves the row alone. */
    poll = poll_once(db, r.id_hash, p.other_client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1"
                             " AND last_polled_at IS NULL",
                             r.id_hash),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE client_id = $1"
                             " AND action = 'token' AND detail = 'invalid_grant'",
                             p.other_client_id),
                     1);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_PENDING);

    ck_assert_int_eq(
        storage_auth_req_poll(db, NULL, p.client_id, "rid", on_poll, &unused), -1);
    ck_assert_int_eq(storage_auth_req_poll(db, r.id_hash, NULL, "rid", on_poll, &unused),
                     -1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* Polls made in one pass of the loop share one statement. Two polls of one request
 * never do: the later one must see what the earlier one changed. */
START_TEST(poll_batch_in_one_pass)
{
    struct people p;
    struct storage_conn *db;
    struct storage_sync *s = sync_open();
    struct req pending, approved, odd;
    struct poll_res a[3] = {{0}}, b[2] = {{0}}, unknown = {0}, foreign = {0},
                    odd_poll = {0};
    PGconn *pg = raw_open();
    /* Array literal syntax in a client_id: quotes, backslash, comma, braces, space. */
    const char odd_client[] = "odd \"client\\\",{x}";

    people_create(&p);
    client_add(s, odd_client);
    loop_open();
    db = conn_open(5000);
    req_init(&pending, &p);
    ck_assert_int_eq(req_create(db, &pending), STORAGE_OK);
    req_init(&approved, &p);
    req_create_approved(db, &approved);
    req_init(&odd, &p);
    odd.in.client_id = odd_client;
    ck_assert_int_eq(req_create(db, &odd), STORAGE_OK);

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(storage_auth_req_poll(db, approved.id_hash, p.client_id, "rid-a",
                                               on_poll, &a[i]),
                         0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(storage_auth_req_poll(db, pending.id_hash, p.client_id, "rid-b",
                                               on_poll, &b[i]),
                         0);
    ck_assert_int_eq(
        storage_auth_req_poll(db, "0000", p.client_id, "rid-u", on_poll, &unknown), 0);
    ck_assert_int_eq(storage_auth_req_poll(db, pending.id_hash, p.other_client_id,
                                           "rid-f", on_poll, &foreign),
                     0);
    ck_assert_int_eq(
        storage_auth_req_poll(db, odd.id_hash, odd_client, NULL, on_poll, &odd_poll), 0);
    ck_assert_int_eq(a[0].calls, 0);
    wait_calls(&a[2].calls, 1);
    wait_calls(&b[1].calls, 1);
    wait_calls(&odd_poll.calls, 1);

    ck_assert_int_eq(a[0].status, STORAGE_OK);
    ck_assert_int_eq(a[0].outcome, STORAGE_POLL_REDEEMED);
    ck_assert_str_eq(a[0].subject, p.subject);
    ck_assert_str_eq(a[0].scope, "openid email custom");
    ck_assert_str_eq(a[0].acr_values, "urn:test:acr");
    ck_assert_int_eq(a[1].outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(a[2].outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(b[0].outcome, STORAGE_POLL_PENDING);
    ck_assert_int_eq(b[0].interval, 5);
    ck_assert_int_eq(b[1].outcome, STORAGE_POLL_SLOW_DOWN);
    ck_assert_int_eq(b[1].interval, 10);
    ck_assert_int_eq(unknown.status, STORAGE_OK);
    ck_assert_int_eq(unknown.outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(foreign.outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(odd_poll.status, STORAGE_OK);
    ck_assert_int_eq(odd_poll.outcome, STORAGE_POLL_PENDING);

    ck_assert_int_eq(audit_count(pg, approved.id_hash, "token", "issued"), 1);
    ck_assert_int_eq(audit_count(pg, approved.id_hash, "token", "refused"), 2);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE request_id = 'rid-u'"
                             " AND action = 'token' AND detail = 'invalid_grant'",
                             NULL),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE client_id = $1"
                             " AND request_id = 'rid-f' AND detail = 'invalid_grant'",
                             p.other_client_id),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE client_id = $1"
                             " AND last_polled_at IS NOT NULL",
                             odd_client),
                     1);
    PQfinish(pg);
    storage_sync_close(s);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* More polls in one pass than one statement takes. */
START_TEST(poll_batch_overflow)
{
    enum { N = 150 };
    struct people p;
    struct storage_conn *db;
    static struct req reqs[N];
    static struct poll_res res[N];

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    for (int i = 0; i < N; i++) {
        req_init(&reqs[i], &p);
        reqs[i].in.sms_per_phone_max = N;
        ck_assert_int_eq(req_create(db, &reqs[i]), STORAGE_OK);
    }
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(storage_auth_req_poll(db, reqs[i].id_hash, p.client_id, "rid",
                                               on_poll, &res[i]),
                         0);
    for (int i = 0; i < N; i++) {
        wait_calls(&res[i].calls, 1);
        ck_assert_int_eq(res[i].calls, 1);
        ck_assert_int_eq(res[i].status, STORAGE_OK);
        ck_assert_int_eq(res[i].outcome, STORAGE_POLL_PENDING);
    }
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(poll_slow_down_grows_interval)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct poll_res poll;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_PENDING);
    ck_assert_int_eq(poll.interval, 5);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_SLOW_DOWN);
    ck_assert_int_eq(poll.interval, 10);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_SLOW_DOWN);
    ck_assert_int_eq(poll.interval, 15);

    /* Once the interval has passed since the last poll, the outcome is pending again and
     * the grown interval stays. */
    raw_exec(pg,
             "UPDATE auth_req SET last_polled_at = now() - interval '16 seconds'"
             " WHERE auth_req_id_hash = $1",
             r.id_hash);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_PENDING);
    ck_assert_int_eq(poll.interval, 15);
    raw_exec(pg,
             "UPDATE auth_req SET last_polled_at = now() - interval '14 seconds'"
             " WHERE auth_req_id_hash = $1",
             r.id_hash);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_SLOW_DOWN);
    ck_assert_int_eq(poll.interval, 20);

    /* Plain pending polls are not decisions and leave no audit row. */
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE auth_req_id_hash = $1"
                             " AND action = 'token'",
                             r.id_hash),
                     0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(poll_approved_redeems_once)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct poll_res poll;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    req_create_approved(db, &r);

    /* A poll right after the previous one is not slowed down once approved. */
    raw_exec(pg, "UPDATE auth_req SET last_polled_at = now() WHERE auth_req_id_hash = $1",
             r.id_hash);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_REDEEMED);
    ck_assert_str_eq(poll.subject, p.subject);
    ck_assert_str_eq(poll.scope, "openid email custom");
    ck_assert_str_eq(poll.acr_values, "urn:test:acr");
    ck_assert_int_ge(poll.auth_time, util_now_s() - 60);
    ck_assert_int_le(poll.auth_time, util_now_s() + 60);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_INVALID);
    ck_assert_str_eq(poll.subject, "");

    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "issued"), 1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "refused"), 1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE auth_req_id_hash = $1"
                             " AND decision = 'issued' AND attestation = 'sms_otp'",
                             r.id_hash),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1"
                             " AND status = 'redeemed' AND redeemed_at IS NOT NULL",
                             r.id_hash),
                     1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

#define N_POLLS 50
#define N_CONNS 5

START_TEST(poll_concurrent_connections)
{
    struct people p;
    struct storage_conn *db[N_CONNS];
    struct req r;
    struct poll_res polls[N_POLLS];
    int calls = 0, redeemed = 0, invalid = 0;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    for (int i = 0; i < N_CONNS; i++)
        db[i] = conn_open(10000);
    req_init(&r, &p);
    req_create_approved(db[0], &r);

    memset(polls, 0, sizeof(polls));
    for (int i = 0; i < N_POLLS; i++)
        ck_assert_int_eq(storage_auth_req_poll(db[i % N_CONNS], r.id_hash, p.client_id,
                                               "rid-race", on_poll, &polls[i]),
                         0);
    ck_assert_uint_eq(storage_conn_pending(db[0]), N_POLLS / N_CONNS);
    for (int64_t end = util_mono_ms() + WAIT_MS;;) {
        calls = 0;
        for (int i = 0; i < N_POLLS; i++)
            calls += polls[i].calls;
        if (calls == N_POLLS)
            break;
        ck_assert_msg(util_mono_ms() < end, "only %d of %d polls answered", calls,
                      N_POLLS);
        event_base_loop(base, EVLOOP_ONCE);
    }
    for (int i = 0; i < N_POLLS; i++) {
        ck_assert_int_eq(polls[i].calls, 1);
        ck_assert_int_eq(polls[i].status, STORAGE_OK);
        if (polls[i].outcome == STORAGE_POLL_REDEEMED)
            redeemed++;
        else if (polls[i].outcome == STORAGE_POLL_INVALID)
            invalid++;
    }
    ck_assert_int_eq(redeemed, 1);
    ck_assert_int_eq(invalid, N_POLLS - 1);
    ck_assert_int_eq(poll_once(db[1], r.id_hash, p.client_id).outcome,
                     STORAGE_POLL_INVALID);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "issued"), 1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "refused"), N_POLLS);
    for (int i = 0; i < N_CONNS; i++) {
        ck_assert_uint_eq(storage_conn_pending(db[i]), 0);
        storage_conn_free(db[i]);
    }
    PQfinish(pg);
    loop_close();
}
END_TEST

/* One poll from a process of its own: connect, report ready, wait for the start signal
 * (the parent closing go_fd's other end), poll, and exit with the outcome. */
static void poll_child(const char *id_hash, const char *client_id, int ready_fd,
                       int go_fd)
{
    struct event_base *child_base = event_base_new();
    struct storage_conn *db;
    struct poll_res res = {0};
    int64_t end = util_mono_ms() + WAIT_MS;
    char byte = 'r';

    if (child_base == NULL)
        _exit(100);
    db = storage_conn_new(child_base, getenv("CIBAD_TEST_DATABASE_URL"), 10000);
    while (db && !storage_conn_is_up(db) && util_mono_ms() < end)
        event_base_loop(child_base, EVLOOP_ONCE);
    if (!storage_conn_is_up(db))
        _exit(101);
    if (write(ready_fd, &byte, 1) != 1 || read(go_fd, &byte, 1) != 0)
        _exit(102);
    if (storage_auth_req_poll(db, id_hash, client_id, "rid-proc", on_poll, &res) != 0)
        _exit(103);
    while (res.calls == 0 && util_mono_ms() < end)
        event_base_loop(child_base, EVLOOP_ONCE);
    if (res.calls != 1 || res.status != STORAGE_OK)
        _exit(104);
    _exit((int)res.outcome);
}

START_TEST(poll_concurrent_processes)
{
    struct people p;
    struct req r;
    pid_t pids[N_POLLS];
    int ready[2], go[2], redeemed = 0, invalid = 0;
    char byte;

    people_create(&p);
    req_init(&r, &p);
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(go), 0);
    /* Fork before this process opens its loop: a child must not share an epoll set. */
    for (int i = 0; i < N_POLLS; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            close(ready[0]);
            close(go[1]);
            poll_child(r.id_hash, p.client_id, ready[1], go[0]);
        }
    }
    close(ready[1]);
    close(go[0]);

    loop_open();
    {
        struct storage_conn *db = conn_open(5000);

        req_create_approved(db, &r);
        storage_conn_free(db);
    }
    for (int i = 0; i < N_POLLS; i++)
        ck_assert_int_eq(read(ready[0], &byte, 1), 1);
    close(go[1]); /* every child's read returns 0: poll now */

    for (int i = 0; i < N_POLLS; i++) {
        int status = 0;

        ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
        ck_assert_msg(WIFEXITED(status), "child %d did not exit", i);
        if (WEXITSTATUS(status) == STORAGE_POLL_REDEEMED)
            redeemed++;
        else if (WEXITSTATUS(status) == STORAGE_POLL_INVALID)
            invalid++;
        else
            ck_abort_msg("child %d exited with %d", i, WEXITSTATUS(status));
    }
    ck_assert_int_eq(redeemed, 1);
    ck_assert_int_eq(invalid, N_POLLS - 1);
    close(ready[0]);
    loop_close();
}
END_TEST

START_TEST(poll_denied_stays_denied)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    struct poll_res poll;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_DENY, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_DENIED);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_DENIED);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_DENIED);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "denied"), 1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "refused"), 2);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

struct sweep_res {
    int calls;
    enum storage_status status;
    int expired, purged;
};

static void on_sweep(void *arg, enum storage_status status, int expired, int purged)
{
    struct sweep_res *r = arg;

    r->calls++;
    r->status = status;
    r->expired = expired;
    r->purged = purged;
}

static struct sweep_res sweep_now(struct storage_conn *db, int tombstone_seconds)
{
    struct sweep_res res = {0};

    ck_assert_int_eq(storage_auth_req_sweep(db, tombstone_seconds, on_sweep, &res), 0);
    wait_calls(&res.calls, 1);
    ck_assert_int_eq(res.status, STORAGE_OK);
    return res;
}

START_TEST(poll_expired_tombstone)
{
    struct people p;
    struct storage_conn *db;
    struct req r, approved;
    struct poll_res poll;
    struct sweep_res sweep;
    struct approval_res a;
    PGconn *pg = raw_open();
    char *status;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    r.in.expires_in = 1;
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    req_init(&approved, &p);
    approved.in.expires_in = 1;
    req_create_approved(db, &approved);
    usleep(1200 * 1000);

    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_EXPIRED);
    poll = poll_once(db, approved.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_EXPIRED);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_EXPIRED);

    sweep = sweep_now(db, 3600);
    ck_assert_int_ge(sweep.expired, 2);
    status = raw_text(pg, "SELECT status FROM auth_req WHERE auth_req_id_hash = $1",
                      r.id_hash);
    ck_assert_str_eq(status, "expired");
    free(status);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "expire", "expired"), 1);
    ck_assert_int_eq(audit_count(pg, approved.id_hash, "expire", "expired"), 1);

    /* The tombstone still yields expired_token, and a second sweep leaves it alone. */
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_EXPIRED);
    sweep_now(db, 3600);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "expire", "expired"), 1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1",
                             r.id_hash),
                     1);

    /* Past the tombstone time the row is purged, and the id is simply unknown. */
    sweep = sweep_now(db, 0);
    ck_assert_int_ge(sweep.purged, 2);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1",
                             r.id_hash),
                     0);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_INVALID);
    ck_assert_int_eq(storage_auth_req_sweep(db, -1, on_sweep, &sweep), -1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- approval page ----------------------------------------------------------------- */

START_TEST(approval_get_fields)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    r.in.expires_in = 100;
    r.in.otp_lifetime = 300; /* longer than the request: capped at expires_at */
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_PENDING);
    ck_assert_str_eq(a.client_name, "Test Agent");
    ck_assert_str_eq(a.subject, p.subject);
    ck_assert_str_eq(a.phone, p.phone);
    ck_assert_str_eq(a.scope, "openid email custom");
    ck_assert_str_eq(a.binding_message, "Pay 10 EUR");
    ck_assert_str_eq(a.scope_descriptions, "{ \"email\" : \"See your email address\","
                                           " \"openid\" : \"Confirm that it is you\" }");
    ck_assert_int_eq(a.otp_generation, 0);
    ck_assert_int_eq(a.otp_attempts, 0);
    ck_assert_uint_eq(a.hmac_len, sizeof(r.hmac));
    ck_assert_mem_eq(a.hmac, r.hmac, sizeof(r.hmac));
    ck_assert_int_le(a.now - util_now_s(), 5);
    ck_assert_int_le(util_now_s() - a.now, 5);
    ck_assert_int_ge(a.expires_at - a.now, 99);
    ck_assert_int_le(a.expires_at - a.now, 100);
    ck_assert_int_eq(a.otp_expires_at, a.expires_at);
    ck_assert_int_le(a.otp_sent_at, a.now);

    a = approval_get_now(db, "no-such-ref");
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);
    ck_assert(!a.has_row);
    ck_assert_int_eq(storage_approval_get(db, NULL, on_approval, &a), -1);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(approval_get_no_known_scope)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    r.in.scope = "custom";
    r.in.binding_message = NULL;
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_str_eq(a.scope_descriptions, "{}");
    ck_assert_str_eq(a.binding_message, "");
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(decide_approve)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert(a.has_row);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_APPROVED);
    ck_assert_str_eq(a.client_name, "Test Agent");
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE auth_req_id_hash = $1"
                             " AND action = 'approve' AND decision = 'approved'"
                             " AND attestation = 'sms_otp' AND request_id = 'rid-decide'",
                             r.id_hash),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM auth_req WHERE auth_req_id_hash = $1"
                             " AND decided_at IS NOT NULL",
                             r.id_hash),
                     1);

    /* No longer pending: a second decision of any kind finds nothing. */
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);
    ck_assert(!a.has_row);
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_DENY, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);
    a = decide_now(db, "no-such-ref", 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);

    ck_assert_int_eq(storage_approval_decide(db, r.ref_hash, 0, 0,
                                             (enum storage_decision)9, 3, "rid",
                                             on_approval, &a),
                     -1);
    ck_assert_int_eq(storage_approval_decide(db, r.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE,
                                             0, "rid", on_approval, &a),
                     -1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "approved"), 1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(decide_wrong_code_three_times)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    struct poll_res poll;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_PENDING);
    ck_assert_int_eq(a.otp_attempts, 1);

    /* A decision based on the old attempt count is a conflict and counts nothing. */
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_CONFLICT);
    ck_assert(!a.has_row);
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_CONFLICT);

    a = decide_now(db, r.ref_hash, 0, 1, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_PENDING);
    ck_assert_int_eq(a.otp_attempts, 2);
    a = decide_now(db, r.ref_hash, 0, 2, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_DENIED);
    ck_assert_int_eq(a.otp_attempts, 3);

    a = decide_now(db, r.ref_hash, 0, 3, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_DENIED);

    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "wrong_code"), 2);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "denied_too_many_attempts"),
                     1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "approved"), 0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(decide_conflict_after_resend)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res before, a;
    unsigned char new_hmac[32];

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    before = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(before.otp_generation, 0);

    util_random_bytes(new_hmac, sizeof(new_hmac));
    ck_assert_int_eq(resend_now(db, r.ref_hash, new_hmac, 0, 100), STORAGE_OK);

    /* The page checked the code against generation 0: that check no longer counts. */
    a = decide_now(db, r.ref_hash, before.otp_generation, before.otp_attempts,
                   STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_CONFLICT);
    a = decide_now(db, r.ref_hash, before.otp_generation, before.otp_attempts,
                   STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_CONFLICT);

    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.otp_generation, 1);
    ck_assert_int_eq(a.otp_attempts, 0);
    ck_assert_mem_eq(a.hmac, new_hmac, sizeof(new_hmac));
    a = decide_now(db, r.ref_hash, 1, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_APPROVED);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(decide_after_expiry)
{
    struct people p;
    struct storage_conn *db;
    struct req expired, code_old;
    struct approval_res a;
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&expired, &p);
    expired.in.expires_in = 1;
    ck_assert_int_eq(req_create(db, &expired), STORAGE_OK);
    req_init(&code_old, &p);
    code_old.in.otp_lifetime = 1;
    ck_assert_int_eq(req_create(db, &code_old), STORAGE_OK);
    usleep(1200 * 1000);

    a = decide_now(db, expired.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);
    a = decide_now(db, expired.ref_hash, 0, 0, STORAGE_DECIDE_DENY, 3);
    ck_assert_int_eq(a.status, STORAGE_NOT_FOUND);

    /* An expired code cannot approve (LIMITED), but a wrong one still counts and the
     * user may still deny. */
    a = decide_now(db, code_old.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_LIMITED);
    ck_assert_int_eq(audit_count(pg, code_old.id_hash, "approve", "approved"), 0);
    a = decide_now(db, code_old.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.otp_attempts, 1);
    a = decide_now(db, code_old.ref_hash, 0, 1, STORAGE_DECIDE_DENY, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_DENIED);
    ck_assert_int_eq(audit_count(pg, code_old.id_hash, "approve", "denied"), 1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE auth_req_id_hash = $1"
                             " AND decision = 'denied' AND attestation = 'none'",
                             code_old.id_hash),
                     1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(resend_cooldown_and_quota)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a, before;
    unsigned char hmac[32];
    struct done_res res = {0};
    PGconn *pg = raw_open();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    r.in.sms_per_phone_max = 2;
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    before = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 5);
    ck_assert_int_eq(before.status, STORAGE_OK);
    util_random_bytes(hmac, sizeof(hmac));

    /* The first code went out just now. */
    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 60, 2), STORAGE_LIMITED);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.otp_generation, 0);

    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 0, 2), STORAGE_OK);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.otp_generation, 1);
    ck_assert_int_eq(a.otp_attempts, 1); /* wrong codes add up across resends */
    ck_assert_mem_eq(a.hmac, hmac, sizeof(hmac));
    ck_assert_int_ge(a.otp_sent_at, before.otp_sent_at);
    ck_assert_int_ge(a.otp_expires_at - a.now, 59);
    ck_assert_int_le(a.otp_expires_at - a.now, 60);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "send_code", "sent"), 1);

    /* The number has had its two codes in the window. */
    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 0, 2), STORAGE_LIMITED);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.otp_generation, 1);
    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 0, 3), STORAGE_OK);

    ck_assert_int_eq(resend_now(db, "no-such-ref", hmac, 0, 100), STORAGE_NOT_FOUND);
    a = decide_now(db, r.ref_hash, 2, 1, STORAGE_DECIDE_DENY, 5);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 0, 100), STORAGE_NOT_FOUND);

    ck_assert_int_eq(storage_approval_resend(db, r.ref_hash, NULL, 0, 60, 0, 3, 3600,
                                             "rid", on_done, &res),
                     -1);
    ck_assert_int_eq(storage_approval_resend(db, r.ref_hash, hmac, 32, 0, 0, 3, 3600,
                                             "rid", on_done, &res),
                     -1);
    ck_assert_int_eq(res.calls, 0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(resend_capped_at_expiry)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    unsigned char hmac[32];

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init(&r, &p);
    r.in.expires_in = 30;
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    util_random_bytes(hmac, sizeof(hmac));
    ck_assert_int_eq(resend_now(db, r.ref_hash, hmac, 0, 100), STORAGE_OK);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.otp_expires_at, a.expires_at);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- keys -------------------------------------------------------------------------- */

struct keys_res {
    int calls;
    enum storage_status status;
    size_t n;
    char kids[8][32];
    int64_t retired_at[8];
    char jwk[128];
};

static void on_keys(void *arg, enum storage_status status, const struct storage_key *keys,
                    size_t n)
{
    struct keys_res *r = arg;

    r->calls++;
    r->status = status;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->kids[i], sizeof(r->kids[i]), "%s", keys[i].kid);
        r->retired_at[i] = keys[i].retired_at;
    }
    if (n > 0)
        snprintf(r->jwk, sizeof(r->jwk), "%s", keys[0].public_jwk);
}

static struct keys_res keys_now(struct storage_conn *db, int publish_seconds)
{
    struct keys_res res = {0};

    ck_assert_int_eq(storage_keys_load(db, publish_seconds, on_keys, &res), 0);
    wait_calls(&res.calls, 1);
    ck_assert_int_eq(res.status, STORAGE_OK);
    return res;
}

static void on_key_row(void *arg, const struct storage_key *k)
{
    struct list_res *r = arg;

    if (r->n++ == 0)
        snprintf(r->first, sizeof(r->first), "%s", k->kid);
}

START_TEST(keys_add_rotate_load)
{
    struct storage_sync *s = sync_open();
    struct storage_conn *db;
    struct keys_res keys;
    struct list_res list = {0};
    PGconn *pg = raw_open();

    loop_open();
    db = conn_open(5000);
    keys = keys_now(db, 3600);
    ck_assert_uint_eq(keys.n, 0);

    ck_assert_int_eq(
        storage_sync_key_add(s, "k1", "ES256", "sealed-1", "{\"kid\":\"k1\"}"), 0);
    keys = keys_now(db, 3600);
    ck_assert_uint_eq(keys.n, 1);
    ck_assert_str_eq(keys.kids[0], "k1");
    ck_assert_int_eq(keys.retired_at[0], 0);
    ck_assert_str_eq(keys.jwk, "{\"kid\": \"k1\"}");

    ck_assert_int_eq(
        storage_sync_key_add(s, "k2", "ES256", "sealed-2", "{\"kid\":\"k2\"}"), 0);
    keys = keys_now(db, 3600);
    ck_assert_uint_eq(keys.n, 2);
    ck_assert_str_eq(keys.kids[0], "k2");
    ck_assert_int_eq(keys.retired_at[0], 0);
    ck_assert_str_eq(keys.kids[1], "k1");
    ck_assert_int_ge(keys.retired_at[1], util_now_s() - 60);

    /* With no publishing window only the current key is left. */
    keys = keys_now(db, 0);
    ck_assert_uint_eq(keys.n, 1);
    ck_assert_str_eq(keys.kids[0], "k2");

    /* k1 retired two hours ago: out of a one-hour window, still listed with all. */
    raw_exec(
        pg,
        "UPDATE signing_key SET retired_at = now() - interval '2 hours' WHERE kid = $1",
        "k1");
    keys = keys_now(db, 3600);
    ck_assert_uint_eq(keys.n, 1);
    ck_assert_int_eq(storage_sync_key_each(s, 3600, false, on_key_row, &list), 1);
    list.n = 0;
    ck_assert_int_eq(storage_sync_key_each(s, 3600, true, on_key_row, &list), 2);
    ck_assert_str_eq(list.first, "k2");

    /* A failed addition leaves the current key in place. */
    ck_assert_int_eq(storage_sync_key_add(s, "k3", "RS256", "sealed-3", "{}"), -1);
    ck_assert_int_eq(storage_sync_key_add(s, "k3", "ES256", "sealed-3", "not json"), -1);
    ck_assert_int_eq(storage_sync_key_add(s, "k2", "ES256", "sealed-3", "{}"), -1);
    keys = keys_now(db, 3600);
    ck_assert_uint_eq(keys.n, 1);
    ck_assert_str_eq(keys.kids[0], "k2");
    ck_assert_int_eq(keys.retired_at[0], 0);
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM signing_key WHERE retired_at IS NULL", NULL),
        1);
    ck_assert_int_eq(storage_keys_load(db, -1, on_keys, &keys), -1);

    PQfinish(pg);
    storage_conn_free(db);
    storage_sync_close(s);
    loop_close();
}
END_TEST

/* ---- audit ------------------------------------------------------------------------- */

START_TEST(audit_append_rows)
{
    struct storage_conn *db;
    struct done_res res = {0};
    char rid[32], hex[13];
    PGconn *pg = raw_open();
    struct storage_audit row = {
        .client_id = "c1",
        .action = "bc_authorize",
        .decision = "rejected",
        .detail = "unknown_user_id",
    };

    random_hex(hex, 6);
    snprintf(rid, sizeof(rid), "rid-%s", hex);
    row.request_id = rid;
    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_audit_append(db, &row, on_done, &res), 0);
    row.attestation = "sms_otp";
    ck_assert_int_eq(storage_audit_append(db, &row, NULL, NULL), 0);
    wait_calls(&res.calls, 1);
    ck_assert_int_eq(res.status, STORAGE_OK);
    /* The second append has no callback; a ping behind it proves it has run. */
    res.calls = 0;
    ck_assert_int_eq(storage_ping(db, on_done, &res), 0);
    wait_calls(&res.calls, 1);

    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE request_id = $1"
                             " AND decision = 'rejected' AND detail = 'unknown_user_id'"
                             " AND attestation = 'none'",
                             rid),
                     1);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM audit_log WHERE request_id = $1"
                             " AND attestation = 'sms_otp'",
                             rid),
                     1);

    row.action = NULL;
    ck_assert_int_eq(storage_audit_append(db, &row, on_done, &res), -1);
    ck_assert_int_eq(storage_audit_append(db, NULL, on_done, &res), -1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- the connection ---------------------------------------------------------------- */

START_TEST(conn_ping_is_deferred)
{
    struct storage_conn *db;
    struct done_res a = {0}, b = {0};

    loop_open();
    db = conn_open(5000);
    ck_assert(storage_conn_is_up(db));
    ck_assert_int_eq(storage_ping(db, on_done, &a), 0);
    ck_assert_int_eq(storage_ping(db, on_done, &b), 0);
    ck_assert_int_eq(a.calls, 0);
    ck_assert_uint_eq(storage_conn_pending(db), 2);
    wait_calls(&b.calls, 1);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(b.status, STORAGE_OK);
    ck_assert_uint_eq(storage_conn_pending(db), 0);
    storage_conn_free(db);
    storage_conn_free(NULL);
    ck_assert(!storage_conn_is_up(NULL));
    ck_assert_uint_eq(storage_conn_pending(NULL), 0);
    ck_assert_int_eq(storage_ping(NULL, on_done, &a), -1);
    loop_close();
}
END_TEST

START_TEST(conn_free_fails_pending)
{
    struct storage_conn *db;
    struct done_res a = {0};
    struct poll_res poll = {0};

    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_ping(db, on_done, &a), 0);
    ck_assert_int_eq(storage_auth_req_poll(db, "x", "y", "rid", on_poll, &poll), 0);
    storage_conn_free(db);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.status, STORAGE_UNAVAILABLE);
    ck_assert_int_eq(poll.calls, 1);
    ck_assert_int_eq(poll.status, STORAGE_UNAVAILABLE);
    run_loop_ms(100);
    ck_assert_int_eq(a.calls, 1);
    loop_close();
}
END_TEST

START_TEST(conn_bad_conninfo)
{
    struct storage_conn *db;
    struct done_res a = {0};

    loop_open();
    ck_assert_ptr_null(storage_conn_new(base, "host = = nonsense", 1000));
    ck_assert_ptr_null(storage_conn_new(base, "postgresql://[bad", 1000));
    ck_assert_ptr_null(storage_conn_new(base, env("CIBAD_TEST_DATABASE_URL"), 0));
    ck_assert_ptr_null(storage_conn_new(NULL, env("CIBAD_TEST_DATABASE_URL"), 1000));

    /* No server behind the socket: the connection keeps retrying, calls fail at once. */
    db = storage_conn_new(base, "host=/nonexistent port=1 dbname=x", 1000);
    ck_assert_ptr_nonnull(db);
    for (int i = 0; i < 5; i++) {
        ck_assert(!storage_conn_is_up(db));
        ck_assert_int_eq(storage_ping(db, on_done, &a), -1);
        run_loop_ms(150);
    }
    ck_assert_int_eq(a.calls, 0);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* A server that accepts the connection and never replies: the connection gives up
 * after its 5 s connect timeout and tries again. */
START_TEST(conn_connect_timeout)
{
    char dir[] = "/tmp/cibad-silent.XXXXXX";
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct storage_conn *db;
    char *conninfo;
    int listener, accepted = 0;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/.s.PGSQL.5999", dir);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ck_assert_int_ge(listener, 0);
    ck_assert_int_eq(bind(listener, (struct sockaddr *)&addr, sizeof(addr)), 0);
    ck_assert_int_eq(listen(listener, 8), 0);

    loop_open();
    conninfo = util_asprintf("host=%s port=5999 dbname=x user=x", dir);
    db = storage_conn_new(base, conninfo, 1000);
    ck_assert_ptr_nonnull(db);
    run_loop_ms(4500);
    while (accept(listener, NULL, NULL) >= 0)
        accepted++;
    ck_assert_int_eq(accepted, 1);
    ck_assert(!storage_conn_is_up(db));

    /* 5 s after the first attempt the timer fires, and the retry follows 100 ms later. */
    run_loop_ms(1500);
    while (accept(listener, NULL, NULL) >= 0)
        accepted++;
    ck_assert_int_eq(accepted, 2);
    ck_assert(!storage_conn_is_up(db));

    storage_conn_free(db);
    loop_close();
    close(listener);
    unlink(addr.sun_path);
    rmdir(dir);
    free(conninfo);
}
END_TEST

/* Waits until a ping succeeds, counting the calls that were rejected or failed. */
static void wait_recovered(struct storage_conn *db, int timeout_ms, int *rejected,
                           int *failed_calls)
{
    int64_t end = util_mono_ms() + timeout_ms;

    for (;;) {
        struct done_res res = {0};

        ck_assert_msg(util_mono_ms() < end, "no recovery within %d ms", timeout_ms);
        if (storage_ping(db, on_done, &res) != 0) {
            (*rejected)++;
            run_loop_ms(50);
            continue;
        }
        wait_calls(&res.calls, 1);
        if (res.status == STORAGE_OK)
            return;
        ck_assert_int_eq(res.status, STORAGE_UNAVAILABLE);
        (*failed_calls)++;
    }
}

START_TEST(conn_recovers_after_restart)
{
    struct people p;
    struct storage_conn *db;
    struct done_res in_flight = {0};
    struct client_res client = {0};
    struct user_res user = {0};
    int rejected = 0, failed_calls = 0;
    char *cmd;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    /* Prepare a statement in this session; it must be prepared again afterwards. */
    ck_assert_int_eq(storage_client_get(db, p.client_id, on_client, &client), 0);
    wait_calls(&client.calls, 1);
    ck_assert_int_eq(client.status, STORAGE_OK);

    ck_assert_int_eq(storage_ping(db, on_done, &in_flight), 0);
    cmd = util_asprintf("%s/tests/pg.sh restart %s", env("CIBAD_TEST_ROOT"),
                        env("CIBAD_TEST_PG_DIR"));
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);

    /* The ping either completed before the shutdown or failed with it. */
    wait_calls(&in_flight.calls, 1);
    ck_assert(in_flight.status == STORAGE_OK || in_flight.status == STORAGE_UNAVAILABLE);
    wait_recovered(db, 15000, &rejected, &failed_calls);
    ck_assert_msg(rejected + failed_calls > 0 || in_flight.status == STORAGE_UNAVAILABLE,
                  "the restart went unnoticed");
    ck_assert(storage_conn_is_up(db));

    client.calls = 0;
    ck_assert_int_eq(storage_client_get(db, p.client_id, on_client, &client), 0);
    ck_assert_int_eq(storage_user_find(db, STORAGE_HINT_PHONE, p.phone, on_user, &user),
                     0);
    wait_calls(&client.calls, 1);
    wait_calls(&user.calls, 1);
    ck_assert_int_eq(client.status, STORAGE_OK);
    ck_assert_int_eq(user.status, STORAGE_OK);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(conn_recovers_after_terminate)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct poll_res blocked = {0};
    struct done_res refused_ping = {0};
    PGconn *locker = raw_open(), *admin = raw_open();
    int rejected = 0, failed_calls = 0;
    struct poll_res poll;

    people_create(&p);
    loop_open();
    db = conn_open(10000);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    /* Hold the row so the poll waits in the server, then kill the poll's session. */
    raw_exec(locker, "BEGIN", NULL);
    raw_exec(locker, "SELECT 1 FROM auth_req WHERE auth_req_id_hash = $1 FOR UPDATE",
             r.id_hash);
    ck_assert_int_eq(
        storage_auth_req_poll(db, r.id_hash, p.client_id, "rid", on_poll, &blocked), 0);
    run_loop_ms(200);
    ck_assert_int_eq(blocked.calls, 0);
    ck_assert_int_eq(
        raw_int(admin,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'cibad' AND datname ="
                " current_database() AND wait_event_type = 'Lock'",
                NULL),
        1);
    wait_calls(&blocked.calls, 1);
    ck_assert_int_eq(blocked.status, STORAGE_UNAVAILABLE);
    ck_assert(!storage_conn_is_up(db));
    ck_assert_int_eq(storage_ping(db, on_done, &refused_ping), -1);

    raw_exec(locker, "COMMIT", NULL);
    wait_recovered(db, 10000, &rejected, &failed_calls);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_PENDING);
    ck_assert_int_eq(refused_ping.calls, 0);
    PQfinish(locker);
    PQfinish(admin);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(conn_statement_timeout)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct poll_res blocked = {0};
    struct done_res behind = {0};
    PGconn *locker = raw_open(), *admin = raw_open();
    int rejected = 0, failed_calls = 0;
    int64_t started, waited;
    struct poll_res poll;

    people_create(&p);
    loop_open();
    db = conn_open(400);
    req_init(&r, &p);
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    raw_exec(locker, "BEGIN", NULL);
    raw_exec(locker, "SELECT 1 FROM auth_req WHERE auth_req_id_hash = $1 FOR UPDATE",
             r.id_hash);
    started = util_mono_ms();
    ck_assert_int_eq(
        storage_auth_req_poll(db, r.id_hash, p.client_id, "rid", on_poll, &blocked), 0);
    /* Polls go out at the end of the loop pass, so let it send this one first. */
    run_loop_ms(50);
    ck_assert_int_eq(blocked.calls, 0);
    ck_assert_int_eq(storage_ping(db, on_done, &behind), 0);
    wait_calls(&blocked.calls, 1);
    waited = util_mono_ms() - started;
    ck_assert_int_eq(blocked.status, STORAGE_UNAVAILABLE);
    ck_assert_int_ge(waited, 350);
    ck_assert_int_le(waited, 2000);
    /* The reset failed everything queued behind the statement too. */
    ck_assert_int_eq(behind.calls, 1);
    ck_assert_int_eq(behind.status, STORAGE_UNAVAILABLE);

    /* The abandoned backend is ended by the session's statement_timeout, although the
     * row is still locked. */
    {
        int64_t end = util_mono_ms() + 5000;

        while (raw_int(admin,
                       "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                       " 'cibad' AND datname = current_database()"
                       " AND wait_event_type = 'Lock'",
                       NULL) != 0) {
            ck_assert_msg(util_mono_ms() < end, "the abandoned poll still waits");
            usleep(50 * 1000);
        }
    }

    raw_exec(locker, "COMMIT", NULL);
    wait_recovered(db, 10000, &rejected, &failed_calls);
    poll = poll_once(db, r.id_hash, p.client_id);
    ck_assert_int_eq(poll.outcome, STORAGE_POLL_PENDING);
    PQfinish(locker);
    PQfinish(admin);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* A callback may queue the next statement on the same connection. */
struct chain {
    struct storage_conn *db;
    int calls;
    int queued;
};

static void on_chain_ping(void *arg, enum storage_status status)
{
    struct chain *c = arg;

    ck_assert_int_eq(status, STORAGE_OK);
    c->calls++;
    if (c->queued < 20) {
        c->queued++;
        ck_assert_int_eq(storage_ping(c->db, on_chain_ping, c), 0);
    }
}

START_TEST(conn_callback_queues_more)
{
    struct chain c = {0};

    loop_open();
    c.db = conn_open(5000);
    c.queued = 1;
    ck_assert_int_eq(storage_ping(c.db, on_chain_ping, &c), 0);
    wait_calls(&c.calls, 20);
    ck_assert_int_eq(c.queued, 20);
    run_loop_ms(50);
    ck_assert_int_eq(c.calls, 20);
    storage_conn_free(c.db);
    loop_close();
}
END_TEST

/* ---- signed-JWT client authentication ---------------------------------------------- */

#define TEST_JWKS                                                                        \
    "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"x\", \"y\": \"y\"}]}"

struct jwt_client_res {
    int calls;
    enum storage_status status;
    char method[32];
    char jwks[256];
    char jwks_uri[128];
    char alg[8];
    char sealed[64];
    bool secret_hash_null, jwks_null, jwks_uri_null, sealed_null;
    char request_alg[8]; /* backchannel_authentication_request_signing_alg, "" for NULL */
};

static void on_jwt_client(void *arg, enum storage_status status,
                          const struct storage_client *c)
{
    struct jwt_client_res *r = arg;

    r->calls++;
    r->status = status;
    if (!c)
        return;
    snprintf(r->method, sizeof(r->method), "%s", c->token_endpoint_auth_method);
    snprintf(r->jwks, sizeof(r->jwks), "%s", c->jwks ? c->jwks : "");
    snprintf(r->jwks_uri, sizeof(r->jwks_uri), "%s", c->jwks_uri ? c->jwks_uri : "");
    snprintf(r->alg, sizeof(r->alg), "%s",
             c->token_endpoint_auth_signing_alg ? c->token_endpoint_auth_signing_alg
                                                : "");
    snprintf(r->sealed, sizeof(r->sealed), "%s",
             c->client_secret_sealed ? c->client_secret_sealed : "");
    r->secret_hash_null = c->secret_hash == NULL;
    r->jwks_null = c->jwks == NULL;
    r->jwks_uri_null = c->jwks_uri == NULL;
    r->sealed_null = c->client_secret_sealed == NULL;
    snprintf(r->request_alg, sizeof(r->request_alg), "%s",
             c->backchannel_authentication_request_signing_alg
                 ? c->backchannel_authentication_request_signing_alg
                 : "");
}

static struct jwt_client_res jwt_client_get(const char *client_id)
{
    struct storage_conn *db;
    struct jwt_client_res r = {0};

    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(storage_client_get(db, client_id, on_jwt_client, &r), 0);
    wait_calls(&r.calls, 1);
    ck_assert_int_eq(r.status, STORAGE_OK);
    storage_conn_free(db);
    loop_close();
    return r;
}

START_TEST(client_jwt_methods_stored)
{
    struct storage_sync *s = sync_open();
    char hex[13], inline_id[32], uri_id[32], hmac_id[32], err[256] = "";
    struct storage_client_new c = {
        .client_name = "Agent",
        .token_endpoint_auth_method = "private_key_jwt",
        .scope = "openid",
        .jwks = TEST_JWKS,
        .token_endpoint_auth_signing_alg = "ES256",
    };
    struct jwt_client_res r;

    random_hex(hex, 6);
    snprintf(inline_id, sizeof(inline_id), "pkj-%s", hex);
    snprintf(uri_id, sizeof(uri_id), "uri-%s", hex);
    snprintf(hmac_id, sizeof(hmac_id), "csj-%s", hex);
    c.client_id = inline_id;
    ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s", err);
    c.client_id = uri_id;
    c.jwks = NULL;
    c.jwks_uri = "https://agent.example/jwks";
    c.token_endpoint_auth_signing_alg = "PS256";
    ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s", err);
    c.client_id = hmac_id;
    c.jwks_uri = NULL;
    c.token_endpoint_auth_method = "client_secret_jwt";
    c.token_endpoint_auth_signing_alg = "HS256";
    c.client_secret_sealed = "v1.sealed";
    ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s", err);

    r = jwt_client_get(inline_id);
    ck_assert_str_eq(r.method, "private_key_jwt");
    ck_assert_msg(strstr(r.jwks, "\"keys\"") && strstr(r.jwks, "P-256"), "%s", r.jwks);
    ck_assert_str_eq(r.alg, "ES256");
    ck_assert(r.secret_hash_null);
    ck_assert(r.jwks_uri_null);
    ck_assert(r.sealed_null);
    r = jwt_client_get(uri_id);
    ck_assert(r.jwks_null);
    ck_assert_str_eq(r.jwks_uri, "https://agent.example/jwks");
    ck_assert_str_eq(r.alg, "PS256");
    r = jwt_client_get(hmac_id);
    ck_assert_str_eq(r.method, "client_secret_jwt");
    ck_assert_str_eq(r.sealed, "v1.sealed");
    ck_assert_str_eq(r.alg, "HS256");
    ck_assert(r.secret_hash_null);

    ck_assert_int_eq(storage_sync_client_delete(s, inline_id), 1);
    ck_assert_int_eq(storage_sync_client_delete(s, uri_id), 1);
    ck_assert_int_eq(storage_sync_client_delete(s, hmac_id), 1);
    storage_sync_close(s);
}
END_TEST

/* Each method must carry exactly its own credentials. */
START_TEST(client_jwt_credentials_checked)
{
    struct storage_sync *s = sync_open();
    char hex[13], id[32], err[256];
    const char *hash = "0000000000000000000000000000000000000000000000000000000000000000";
    const struct {
        const char *method, *secret_hash, *jwks, *jwks_uri, *alg, *sealed;
    } bad[] = {
        {"private_key_jwt", NULL, NULL, NULL, "ES256", NULL},
        {"private_key_jwt", NULL, TEST_JWKS, "https://a.example/j", "ES256", NULL},
        {"private_key_jwt", hash, TEST_JWKS, NULL, "ES256", NULL},
        {"private_key_jwt", NULL, TEST_JWKS, NULL, NULL, NULL},
        {"private_key_jwt", NULL, TEST_JWKS, NULL, "HS256", NULL},
        {"private_key_jwt", NULL, TEST_JWKS, NULL, "none", NULL},
        {"private_key_jwt", NULL, TEST_JWKS, NULL, "ES256", "v1.x"},
        {"client_secret_jwt", NULL, NULL, NULL, "HS256", NULL},
        {"client_secret_jwt", NULL, NULL, NULL, "ES256", "v1.x"},
        {"client_secret_jwt", hash, NULL, NULL, "HS256", "v1.x"},
        {"client_secret_jwt", NULL, TEST_JWKS, NULL, "HS256", "v1.x"},
        {"client_secret_basic", NULL, NULL, NULL, NULL, NULL},
        {"client_secret_basic", hash, TEST_JWKS, NULL, NULL, NULL},
        {"client_secret_post", hash, NULL, NULL, "ES256", NULL},
        {"tls_client_auth", hash, NULL, NULL, NULL, NULL},
    };

    random_hex(hex, 6);
    snprintf(id, sizeof(id), "bad-%s", hex);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct storage_client_new c = {
            .client_id = id,
            .client_name = "Agent",
            .secret_hash = bad[i].secret_hash,
            .token_endpoint_auth_method = bad[i].method,
            .scope = "openid",
            .jwks = bad[i].jwks,
            .jwks_uri = bad[i].jwks_uri,
            .token_endpoint_auth_signing_alg = bad[i].alg,
            .client_secret_sealed = bad[i].sealed,
        };

        err[0] = '\0';
        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == -1,
                      "case %zu accepted", i);
        ck_assert_msg(strstr(err, "invalid client field") != NULL, "case %zu: %s", i,
                      err);
    }

    /* jwks must be JSON. */
    {
        struct storage_client_new c = {
            .client_id = id,
            .client_name = "Agent",
            .token_endpoint_auth_method = "private_key_jwt",
            .scope = "openid",
            .jwks = "{not json",
            .token_endpoint_auth_signing_alg = "ES256",
        };

        ck_assert_int_eq(storage_sync_client_create(s, &c, err, sizeof(err)), -1);
    }
    ck_assert_int_eq(storage_sync_client_delete(s, id), 0);
    storage_sync_close(s);
}
END_TEST

static void collect_tls_member(void *arg, const struct storage_client *c)
{
    char **out = arg;

    *out =
        util_asprintf("%s|%s|%s|%s|%s|%s", c->token_endpoint_auth_method,
                      c->tls_client_auth_subject_dn ? c->tls_client_auth_subject_dn : "",
                      c->tls_client_auth_san_dns ? c->tls_client_auth_san_dns : "",
                      c->tls_client_auth_san_uri ? c->tls_client_auth_san_uri : "",
                      c->tls_client_auth_san_ip ? c->tls_client_auth_san_ip : "",
                      c->tls_client_auth_san_email ? c->tls_client_auth_san_email : "");
}

/* tls_client_auth has exactly one subject member; no other method has one. */
START_TEST(client_mtls_credentials_checked)
{
    struct storage_sync *s = sync_open();
    char hex[13], id[32], err[256];
    char *row = NULL;
    const char *hash = "0000000000000000000000000000000000000000000000000000000000000000";
    const struct {
        const char *method, *secret_hash, *jwks, *jwks_uri, *alg, *dn, *dns;
    } bad[] = {
        {"tls_client_auth", NULL, NULL, NULL, NULL, NULL, NULL},
        {"tls_client_auth", NULL, NULL, NULL, NULL, "CN=a", "a.example"},
        {"tls_client_auth", hash, NULL, NULL, NULL, "CN=a", NULL},
        {"tls_client_auth", NULL, TEST_JWKS, NULL, NULL, "CN=a", NULL},
        {"tls_client_auth", NULL, NULL, NULL, "ES256", "CN=a", NULL},
        {"self_signed_tls_client_auth", NULL, NULL, NULL, NULL, NULL, NULL},
        {"self_signed_tls_client_auth", NULL, TEST_JWKS, "https://a.example/j", NULL,
         NULL, NULL},
        {"self_signed_tls_client_auth", hash, TEST_JWKS, NULL, NULL, NULL, NULL},
        {"self_signed_tls_client_auth", NULL, TEST_JWKS, NULL, "ES256", NULL, NULL},
        {"self_signed_tls_client_auth", NULL, TEST_JWKS, NULL, NULL, "CN=a", NULL},
        {"client_secret_basic", hash, NULL, NULL, NULL, NULL, "a.example"},
        {"private_key_jwt", NULL, TEST_JWKS, NULL, "ES256", "CN=a", NULL},
    };

    random_hex(hex, 6);
    snprintf(id, sizeof(id), "mtls-%s", hex);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct storage_client_new c = {
            .client_id = id,
            .client_name = "Agent",
            .secret_hash = bad[i].secret_hash,
            .token_endpoint_auth_method = bad[i].method,
            .scope = "openid",
            .jwks = bad[i].jwks,
            .jwks_uri = bad[i].jwks_uri,
            .token_endpoint_auth_signing_alg = bad[i].alg,
            .tls_client_auth_subject_dn = bad[i].dn,
            .tls_client_auth_san_dns = bad[i].dns,
        };

        err[0] = '\0';
        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == -1,
                      "case %zu accepted", i);
        ck_assert_msg(strstr(err, "invalid client field") != NULL, "case %zu: %s", i,
                      err);
    }

    /* Each member is stored and read back. */
    {
        struct storage_client_new c = {
            .client_id = id,
            .client_name = "Agent",
            .token_endpoint_auth_method = "tls_client_auth",
            .scope = "openid",
            .tls_client_auth_san_ip = "2001:db8::7",
        };

        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s",
                      err);
        ck_assert_int_eq(storage_sync_client_each(s, id, collect_tls_member, &row), 1);
        ck_assert_str_eq(row, "tls_client_auth||||2001:db8::7|");
        free(row);
        ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
        c.tls_client_auth_san_ip = NULL;
        c.tls_client_auth_san_email = "a@example.com";
        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s",
                      err);
        ck_assert_int_eq(storage_sync_client_each(s, id, collect_tls_member, &row), 1);
        ck_assert_str_eq(row, "tls_client_auth|||||a@example.com");
        free(row);
        ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
        c.tls_client_auth_san_email = NULL;
        c.token_endpoint_auth_method = "self_signed_tls_client_auth";
        c.jwks_uri = "https://a.example/j";
        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0, "%s",
                      err);
        ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
    }
    storage_sync_close(s);
}
END_TEST

static enum storage_status jti_record(struct storage_conn *db, const char *client_id,
                                      const char *jti, int64_t expires_at)
{
    struct done_res r = {0};

    ck_assert_int_eq(
        storage_client_assertion_record(db, client_id, jti, expires_at, on_done, &r), 0);
    wait_calls(&r.calls, 1);
    return r.status;
}

struct count_res {
    int calls;
    enum storage_status status;
    int count;
};

static void on_count(void *arg, enum storage_status status, int count)
{
    struct count_res *r = arg;

    r->calls++;
    r->status = status;
    r->count = count;
}

START_TEST(assertion_jti_single_use)
{
    struct people p;
    struct storage_conn *db;
    PGconn *pg;
    int64_t later = util_now_s() + 120;
    char long_jti[300];

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    pg = raw_open();

    ck_assert_int_eq(jti_record(db, p.client_id, "jti-1", later), STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, "jti-1", later), STORAGE_CONFLICT);
    ck_assert_int_eq(jti_record(db, p.client_id, "jti-1", later + 500), STORAGE_CONFLICT);
    /* The jti is per client. */
    ck_assert_int_eq(jti_record(db, p.other_client_id, "jti-1", later), STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, "JTI-1", later), STORAGE_OK);

    /* Once its assertion has expired, a jti may be used again. */
    raw_exec(pg,
             "UPDATE client_assertion_jti SET expires_at = now() - interval '1 second'"
             " WHERE client_id = $1 AND jti = 'jti-1'",
             p.client_id);
    ck_assert_int_eq(jti_record(db, p.client_id, "jti-1", later), STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, "jti-1", later), STORAGE_CONFLICT);

    memset(long_jti, 'j', sizeof(long_jti) - 1);
    long_jti[sizeof(long_jti) - 1] = '\0';
    ck_assert_int_eq(jti_record(db, p.client_id, long_jti, later), STORAGE_ERROR);
    ck_assert_int_eq(jti_record(db, "no-such-client", "jti-x", later), STORAGE_ERROR);
    ck_assert_int_eq(storage_client_assertion_record(db, NULL, "j", later, on_done, NULL),
                     -1);
    ck_assert_int_eq(
        storage_client_assertion_record(db, p.client_id, NULL, later, on_done, NULL), -1);

    /* Deleting the client deletes its jti values. */
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM client_assertion_jti"
                             " WHERE client_id = $1",
                             p.other_client_id),
                     1);
    raw_exec(pg, "DELETE FROM client WHERE client_id = $1", p.other_client_id);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM client_assertion_jti"
                             " WHERE client_id = $1",
                             p.other_client_id),
                     0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* jti values recorded in one pass of the loop share one statement; a jti repeated in
 * that pass is still a replay. */
START_TEST(assertion_jti_batch_in_one_pass)
{
    struct people p;
    struct storage_conn *db;
    struct done_res first = {0}, again = {0}, other = {0}, odd = {0}, foreign = {0};
    int64_t exp = util_now_s() + 60;
    char jti[40] = "batch-";
    const char odd_jti[] = "odd \"jti\\\",{x} NULL";

    random_hex(jti + strlen(jti), 8);
    people_create(&p);
    loop_open();
    db = conn_open(5000);
    ck_assert_int_eq(
        storage_client_assertion_record(db, p.client_id, jti, exp, on_done, &first), 0);
    ck_assert_int_eq(
        storage_client_assertion_record(db, p.client_id, jti, exp, on_done, &again), 0);
    ck_assert_int_eq(storage_client_assertion_record(db, p.client_id, "other-jti", exp,
                                                     on_done, &other),
                     0);
    ck_assert_int_eq(
        storage_client_assertion_record(db, p.client_id, odd_jti, exp, on_done, &odd), 0);
    ck_assert_int_eq(storage_client_assertion_record(db, p.other_client_id, jti, exp,
                                                     on_done, &foreign),
                     0);
    ck_assert_int_eq(first.calls, 0);
    wait_calls(&first.calls, 1);
    wait_calls(&again.calls, 1);
    wait_calls(&other.calls, 1);
    wait_calls(&odd.calls, 1);
    wait_calls(&foreign.calls, 1);
    ck_assert_int_eq(first.status, STORAGE_OK);
    ck_assert_int_eq(again.status, STORAGE_CONFLICT);
    ck_assert_int_eq(other.status, STORAGE_OK);
    ck_assert_int_eq(odd.status, STORAGE_OK);
    /* The same jti from another client is another key. */
    ck_assert_int_eq(foreign.status, STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, odd_jti, exp), STORAGE_CONFLICT);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(assertion_jti_purge)
{
    struct people p;
    struct storage_conn *db;
    PGconn *pg;
    struct count_res purge = {0};
    int64_t now = util_now_s();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    pg = raw_open();
    ck_assert_int_eq(jti_record(db, p.client_id, "old-1", now + 60), STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, "old-2", now + 60), STORAGE_OK);
    ck_assert_int_eq(jti_record(db, p.client_id, "live", now + 60), STORAGE_OK);
    raw_exec(pg,
             "UPDATE client_assertion_jti SET expires_at = now() - interval '1 second'"
             " WHERE client_id = $1 AND jti LIKE 'old-%'",
             p.client_id);

    ck_assert_int_eq(storage_client_assertion_purge(db, on_count, &purge), 0);
    wait_calls(&purge.calls, 1);
    ck_assert_int_eq(purge.status, STORAGE_OK);
    /* Other tests share the database, so at least this test's two rows went. */
    ck_assert_int_ge(purge.count, 2);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM client_assertion_jti"
                             " WHERE client_id = $1",
                             p.client_id),
                     1);
    ck_assert_int_eq(jti_record(db, p.client_id, "live", now + 60), STORAGE_CONFLICT);
    ck_assert_int_eq(storage_client_assertion_purge(db, NULL, NULL), -1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- signed authentication requests ------------------------------------------------ */

START_TEST(client_request_signing_alg_stored)
{
    struct storage_sync *s = sync_open();
    char hex[13], id[32], bad_id[32], err[256];
    struct jwt_client_res r;
    const struct {
        const char *jwks, *jwks_uri, *alg;
    } bad[] = {
        {TEST_JWKS, NULL, "HS256"},
        {TEST_JWKS, NULL, "none"},
        {TEST_JWKS, NULL, "es256"},
        {NULL, NULL, "ES256"}, /* no keys to verify with */
    };

    random_hex(hex, 6);
    snprintf(id, sizeof(id), "ro-%s", hex);
    snprintf(bad_id, sizeof(bad_id), "ro-bad-%s", hex);
    {
        struct storage_client_new c = {
            .client_id = id,
            .client_name = "Signing Agent",
            .token_endpoint_auth_method = "private_key_jwt",
            .scope = "openid",
            .jwks = TEST_JWKS,
            .token_endpoint_auth_signing_alg = "ES256",
            .backchannel_authentication_request_signing_alg = "PS256",
        };

        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0,
                      "client create failed: %s", err);
    }
    r = jwt_client_get(id);
    ck_assert_str_eq(r.request_alg, "PS256");
    /* Without the setting the column stays NULL. */
    {
        struct people p;

        people_create(&p);
        r = jwt_client_get(p.client_id);
        ck_assert_str_eq(r.request_alg, "");
    }

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct storage_client_new c = {
            .client_id = bad_id,
            .client_name = "Agent",
            .secret_hash = bad[i].jwks ? NULL : "00",
            .token_endpoint_auth_method =
                bad[i].jwks ? "private_key_jwt" : "client_secret_basic",
            .scope = "openid",
            .jwks = bad[i].jwks,
            .jwks_uri = bad[i].jwks_uri,
            .token_endpoint_auth_signing_alg = bad[i].jwks ? "ES256" : NULL,
            .backchannel_authentication_request_signing_alg = bad[i].alg,
        };

        err[0] = '\0';
        ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == -1,
                      "case %zu accepted", i);
        ck_assert_msg(strstr(err, "invalid client field") != NULL, "case %zu: %s", i,
                      err);
    }
    ck_assert_int_eq(storage_sync_client_delete(s, id), 1);
    storage_sync_close(s);
}
END_TEST

static enum storage_status request_jti_record(struct storage_conn *db,
                                              const char *client_id, const char *jti,
                                              int64_t expires_at)
{
    struct done_res r = {0};

    ck_assert_int_eq(
        storage_request_object_record(db, client_id, jti, expires_at, on_done, &r), 0);
    wait_calls(&r.calls, 1);
    return r.status;
}

START_TEST(request_object_jti_single_use)
{
    struct people p;
    struct storage_conn *db;
    PGconn *pg;
    int64_t later = util_now_s() + 120;
    char long_jti[300];

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    pg = raw_open();

    ck_assert_int_eq(request_jti_record(db, p.client_id, "ro-1", later), STORAGE_OK);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "ro-1", later),
                     STORAGE_CONFLICT);
    ck_assert_int_eq(request_jti_record(db, p.other_client_id, "ro-1", later),
                     STORAGE_OK);
    /* Client assertion jti values are a separate namespace. */
    ck_assert_int_eq(jti_record(db, p.client_id, "ro-1", later), STORAGE_OK);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "ro-1", later),
                     STORAGE_CONFLICT);

    /* Once its request object has expired, a jti may be used again. */
    raw_exec(pg,
             "UPDATE request_object_jti SET expires_at = now() - interval '1 second'"
             " WHERE client_id = $1 AND jti = 'ro-1'",
             p.client_id);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "ro-1", later), STORAGE_OK);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "ro-1", later),
                     STORAGE_CONFLICT);

    memset(long_jti, 'j', sizeof(long_jti) - 1);
    long_jti[sizeof(long_jti) - 1] = '\0';
    ck_assert_int_eq(request_jti_record(db, p.client_id, long_jti, later), STORAGE_ERROR);
    ck_assert_int_eq(request_jti_record(db, "no-such-client", "ro-x", later),
                     STORAGE_ERROR);
    ck_assert_int_eq(storage_request_object_record(db, NULL, "j", later, on_done, NULL),
                     -1);
    ck_assert_int_eq(
        storage_request_object_record(db, p.client_id, NULL, later, on_done, NULL), -1);

    /* Deleting the client deletes its jti values. */
    raw_exec(pg, "DELETE FROM client WHERE client_id = $1", p.other_client_id);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM request_object_jti"
                             " WHERE client_id = $1",
                             p.other_client_id),
                     0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(request_object_jti_purge)
{
    struct people p;
    struct storage_conn *db;
    PGconn *pg;
    struct count_res purge = {0};
    int64_t now = util_now_s();

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    pg = raw_open();
    ck_assert_int_eq(request_jti_record(db, p.client_id, "old-1", now + 60), STORAGE_OK);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "old-2", now + 60), STORAGE_OK);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "live", now + 60), STORAGE_OK);
    raw_exec(pg,
             "UPDATE request_object_jti SET expires_at = now() - interval '1 second'"
             " WHERE client_id = $1 AND jti LIKE 'old-%'",
             p.client_id);

    ck_assert_int_eq(storage_request_object_purge(db, on_count, &purge), 0);
    wait_calls(&purge.calls, 1);
    ck_assert_int_eq(purge.status, STORAGE_OK);
    ck_assert_int_ge(purge.count, 2);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM request_object_jti"
                             " WHERE client_id = $1",
                             p.client_id),
                     1);
    ck_assert_int_eq(request_jti_record(db, p.client_id, "live", now + 60),
                     STORAGE_CONFLICT);
    ck_assert_int_eq(storage_request_object_purge(db, NULL, NULL), -1);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- notification outbox ----------------------------------------------------------- */

/* Registers a ping or push client for p. */
static void client_add_mode(const char *client_id, const char *mode)
{
    struct storage_sync *s = sync_open();
    struct storage_client_new c = {
        .client_id = client_id,
        .client_name = "Notified Agent",
        .secret_hash = "0000000000000000000000000000000000000000000000000000000000000000",
        .token_endpoint_auth_method = "client_secret_basic",
        .scope = "openid email",
        .backchannel_token_delivery_mode = mode,
        .backchannel_client_notification_endpoint = "https://cb.example.com/ciba",
    };
    char err[256] = "";

    ck_assert_msg(storage_sync_client_create(s, &c, err, sizeof(err)) == 0,
                  "client create failed: %s", err);
    storage_sync_close(s);
}

/* Fills r as req_init does, for a new client of the given delivery mode. */
static void req_init_mode(struct req *r, struct people *p, const char *mode)
{
    char hex[17];

    random_hex(hex, 8);
    snprintf(p->other_client_id, sizeof(p->other_client_id), "%s-%s", mode, hex);
    client_add_mode(p->other_client_id, mode);
    req_init(r, p);
    r->in.client_id = p->other_client_id;
    r->in.delivery_mode = mode;
    r->in.notification_secrets = "v1.sealed-secrets";
}

static long long outbox_count(PGconn *pg, const char *id_hash)
{
    return raw_int(pg, "SELECT count(*) FROM notification WHERE auth_req_id_hash = $1",
                   id_hash);
}

static char *outbox_text(PGconn *pg, const char *column, const char *id_hash)
{
    char *sql =
        util_asprintf("SELECT %s FROM notification WHERE auth_req_id_hash = $1", column);
    char *value = raw_text(pg, sql, id_hash);

    free(sql);
    return value;
}

static struct approval_res decide_notify_now(struct storage_conn *db,
                                             const char *ref_hash,
                                             enum storage_decision decision,
                                             const char *payload)
{
    struct approval_res res = {0};

    ck_assert_int_eq(storage_approval_decide_notify(db, ref_hash, 0, 0, decision, 3,
                                                    payload, "rid-decide", on_approval,
                                                    &res),
                     0);
    wait_calls(&res.calls, 1);
    return res;
}

START_TEST(outbox_ping_decisions)
{
    struct people p;
    struct storage_conn *db;
    struct req approved, denied, polled;
    struct approval_res a;
    PGconn *pg = raw_open();
    char *text;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init_mode(&approved, &p, "ping");
    req_init_mode(&denied, &p, "ping");
    req_init(&polled, &p);
    ck_assert_int_eq(req_create(db, &approved), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &denied), STORAGE_OK);

    text = raw_text(pg, "SELECT delivery_mode FROM auth_req WHERE auth_req_id_hash = $1",
                    approved.id_hash);
    ck_assert_str_eq(text, "ping");
    free(text);

    /* A wrong code is not final: nothing is queued. */
    a = decide_now(db, approved.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(outbox_count(pg, approved.id_hash), 0);

    a = decide_now(db, approved.ref_hash, 0, 1, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_APPROVED);
    ck_assert_int_eq(outbox_count(pg, approved.id_hash), 1);
    text = outbox_text(pg, "mode || ' ' || event || ' ' || secrets || ' ' || request_id",
                       approved.id_hash);
    ck_assert_str_eq(text, "ping approved v1.sealed-secrets rid-decide");
    free(text);
    text = outbox_text(pg, "payload", approved.id_hash);
    ck_assert_ptr_null(text);

    a = decide_now(db, denied.ref_hash, 0, 0, STORAGE_DECIDE_DENY, 3);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_DENIED);
    text = outbox_text(pg, "event || ' ' || detail", denied.id_hash);
    ck_assert_str_eq(text, "denied denied_by_user");
    free(text);

    /* A ping client may still poll the approved request. */
    ck_assert_int_eq(poll_once(db, approved.id_hash, p.other_client_id).outcome,
                     STORAGE_POLL_REDEEMED);

    /* Poll requests never get a notification. */
    req_create_approved(db, &polled);
    ck_assert_int_eq(outbox_count(pg, polled.id_hash), 0);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(outbox_too_many_wrong_codes)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    PGconn *pg = raw_open();
    char *text;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init_mode(&r, &p, "push");
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);
    a = decide_now(db, r.ref_hash, 0, 0, STORAGE_DECIDE_WRONG_CODE, 2);
    ck_assert_int_eq(outbox_count(pg, r.id_hash), 0);
    a = decide_now(db, r.ref_hash, 0, 1, STORAGE_DECIDE_WRONG_CODE, 2);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_DENIED);
    text = outbox_text(pg, "mode || ' ' || event || ' ' || detail", r.id_hash);
    ck_assert_str_eq(text, "push denied too_many_wrong_codes");
    free(text);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(outbox_push_approval_redeems)
{
    struct people p;
    struct storage_conn *db;
    struct req r;
    struct approval_res a;
    PGconn *pg = raw_open();
    char *text;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init_mode(&r, &p, "push");
    ck_assert_int_eq(req_create(db, &r), STORAGE_OK);

    /* Without the token payload nothing changes. */
    a = decide_notify_now(db, r.ref_hash, STORAGE_DECIDE_APPROVE, NULL);
    ck_assert_int_eq(a.status, STORAGE_ERROR);
    ck_assert_int_eq(outbox_count(pg, r.id_hash), 0);
    a = approval_get_now(db, r.ref_hash);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_PENDING);

    a = decide_notify_now(db, r.ref_hash, STORAGE_DECIDE_APPROVE, "v1.sealed-tokens");
    ck_assert_int_eq(a.status, STORAGE_OK);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_REDEEMED);
    text = outbox_text(pg, "mode || ' ' || event || ' ' || payload", r.id_hash);
    ck_assert_str_eq(text, "push approved v1.sealed-tokens");
    free(text);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "token", "issued"), 1);
    ck_assert_int_eq(audit_count(pg, r.id_hash, "approve", "approved"), 1);

    /* The pushed result cannot be redeemed by polling. */
    ck_assert_int_eq(poll_once(db, r.id_hash, p.other_client_id).outcome,
                     STORAGE_POLL_INVALID);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

struct sweep_outbox_res {
    int calls;
    enum storage_status status;
};

static void on_sweep_outbox(void *arg, enum storage_status status, int expired,
                            int purged)
{
    struct sweep_outbox_res *r = arg;

    (void)expired;
    (void)purged;
    r->calls++;
    r->status = status;
}

START_TEST(outbox_expiry_and_sms_failure)
{
    struct people p;
    struct storage_conn *db;
    struct req pending, approved, failed;
    struct sweep_outbox_res sweep = {0};
    struct done_res done = {0};
    struct approval_res a;
    PGconn *pg = raw_open();
    char *text;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    req_init_mode(&pending, &p, "ping");
    req_init_mode(&approved, &p, "ping");
    req_init_mode(&failed, &p, "push");
    pending.in.expires_in = 1;
    approved.in.expires_in = 1;
    ck_assert_int_eq(req_create(db, &pending), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &approved), STORAGE_OK);
    ck_assert_int_eq(req_create(db, &failed), STORAGE_OK);
    a = decide_now(db, approved.ref_hash, 0, 0, STORAGE_DECIDE_APPROVE, 3);
    ck_assert_int_eq(a.ar_status, STORAGE_AR_APPROVED);
    usleep(1200 * 1000);

    ck_assert_int_eq(storage_auth_req_sweep(db, 3600, on_sweep_outbox, &sweep), 0);
    wait_calls(&sweep.calls, 1);
    ck_assert_int_eq(sweep.status, STORAGE_OK);
    text = outbox_text(pg, "mode || ' ' || event", pending.id_hash);
    ck_assert_str_eq(text, "ping expired");
    free(text);
    /* The approved request was notified at its approval, not again at its expiry. */
    ck_assert_int_eq(outbox_count(pg, approved.id_hash), 1);

    ck_assert_int_eq(storage_auth_req_fail_delivery(db, failed.id_hash, "gateway down",
                                                    "rid-fail", on_done, &done),
                     0);
    wait_calls(&done.calls, 1);
    ck_assert_int_eq(done.status, STORAGE_OK);
    text = outbox_text(pg, "mode || ' ' || event || ' ' || detail", failed.id_hash);
    ck_assert_str_eq(text, "push failed sms_failed");
    free(text);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

struct claim_res {
    int calls;
    enum storage_status status;
    size_t n;
    int64_t ids[64];
    int attempts[64];
    char endpoint[128];
};

static void on_claim(void *arg, enum storage_status status,
                     const struct storage_notification *rows, size_t n_rows)
{
    struct claim_res *r = arg;

    r->calls++;
    r->status = status;
    for (size_t i = 0; i < n_rows && r->n < ARRAY_LEN(r->ids); i++) {
        r->ids[r->n] = rows[i].id;
        r->attempts[r->n] = rows[i].attempt;
        r->n++;
        if (rows[i].endpoint)
            snprintf(r->endpoint, sizeof(r->endpoint), "%s", rows[i].endpoint);
    }
}

/* Inserts n due notifications for a new ping client; returns the client id (new). */
static char *outbox_fill(PGconn *pg, int n)
{
    char hex[17], *client_id, *sql;

    random_hex(hex, 8);
    client_id = util_asprintf("outbox-%s", hex);
    client_add_mode(client_id, "ping");
    sql = util_asprintf("INSERT INTO notification (auth_req_id_hash, client_id, mode,"
                        " event, secrets, next_attempt_at)"
                        " SELECT md5(random()::text), $1, 'ping', 'approved', 'v1.x',"
                        " now() - interval '1 hour' FROM generate_series(1, %d)",
                        n);
    raw_exec(pg, sql, client_id);
    free(sql);
    return client_id;
}

START_TEST(outbox_claims_never_overlap)
{
    struct storage_conn *db1, *db2;
    PGconn *pg = raw_open();
    char *client_id;

    loop_open();
    db1 = conn_open(5000);
    db2 = conn_open(5000);
    /* Rows of earlier tests may be due too; claim them away first. */
    for (int round = 0; round < 100; round++) {
        struct claim_res drain = {0};

        ck_assert_int_eq(storage_notification_claim(db1, 64, 600000, on_claim, &drain),
                         0);
        wait_calls(&drain.calls, 1);
        if (drain.n == 0)
            break;
    }
    client_id = outbox_fill(pg, 60);

    for (int round = 0; round < 3; round++) {
        struct claim_res a = {0}, b = {0};
        size_t total;

        if (round > 0) {
            raw_exec(pg,
                     "UPDATE notification SET next_attempt_at = now() - interval '1 s'"
                     " WHERE client_id = $1",
                     client_id);
        }
        /* Both claims run at the same time on two connections. */
        ck_assert_int_eq(storage_notification_claim(db1, 40, 60000, on_claim, &a), 0);
        ck_assert_int_eq(storage_notification_claim(db2, 40, 60000, on_claim, &b), 0);
        wait_calls(&a.calls, 1);
        wait_calls(&b.calls, 1);
        ck_assert_int_eq(a.status, STORAGE_OK);
        ck_assert_int_eq(b.status, STORAGE_OK);
        total = a.n + b.n;
        ck_assert_uint_eq(total, 60);
        for (size_t i = 0; i < a.n; i++)
            for (size_t j = 0; j < b.n; j++)
                ck_assert_msg(a.ids[i] != b.ids[j], "row %lld claimed twice in round %d",
                              (long long)a.ids[i], round);
        for (size_t i = 0; i < a.n; i++)
            ck_assert_int_eq(a.attempts[i], round + 1);
        for (size_t i = 0; i < b.n; i++)
            ck_assert_int_eq(b.attempts[i], round + 1);
        ck_assert_str_eq(a.n ? a.endpoint : b.endpoint, "https://cb.example.com/ciba");

        /* While the leases run, nothing is claimable. */
        {
            struct claim_res again = {0};

            ck_assert_int_eq(storage_notification_claim(db1, 64, 60000, on_claim, &again),
                             0);
            wait_calls(&again.calls, 1);
            ck_assert_uint_eq(again.n, 0);
        }
    }
    free(client_id);
    PQfinish(pg);
    storage_conn_free(db1);
    storage_conn_free(db2);
    loop_close();
}
END_TEST

static enum storage_status record_now(struct storage_conn *db, int64_t id, int attempt,
                                      enum storage_notification_outcome outcome,
                                      int delay)
{
    struct done_res res = {0};

    ck_assert_int_eq(storage_notification_record(db, id, attempt, outcome, delay,
                                                 "ping approved: HTTP 500", on_done,
                                                 &res),
                     0);
    wait_calls(&res.calls, 1);
    return res.status;
}

START_TEST(outbox_lease_and_record)
{
    struct storage_conn *db;
    PGconn *pg = raw_open();
    struct claim_res first = {0}, early = {0}, second = {0}, third = {0};
    char *client_id, *id_text, *hash;
    int64_t id;

    loop_open();
    db = conn_open(5000);
    client_id = outbox_fill(pg, 1);
    id_text = raw_text(pg, "SELECT id FROM notification WHERE client_id = $1", client_id);
    hash = raw_text(pg, "SELECT auth_req_id_hash FROM notification WHERE client_id = $1",
                    client_id);
    id = strtoll(id_text, NULL, 10);
    /* Make it the only due row: push every other row away. */
    raw_exec(pg,
             "UPDATE notification SET next_attempt_at = now() + interval '1 day'"
             " WHERE client_id <> $1",
             client_id);

    ck_assert_int_eq(storage_notification_claim(db, 10, 300, on_claim, &first), 0);
    wait_calls(&first.calls, 1);
    ck_assert_uint_eq(first.n, 1);
    ck_assert_int_eq(first.ids[0], id);
    ck_assert_int_eq(first.attempts[0], 1);
    ck_assert_int_eq(storage_notification_claim(db, 10, 300, on_claim, &early), 0);
    wait_calls(&early.calls, 1);
    ck_assert_uint_eq(early.n, 0);

    /* The lease ends; another worker claims it again, and the first claim is stale. */
    run_loop_ms(400);
    ck_assert_int_eq(storage_notification_claim(db, 10, 60000, on_claim, &second), 0);
    wait_calls(&second.calls, 1);
    ck_assert_uint_eq(second.n, 1);
    ck_assert_int_eq(second.attempts[0], 2);
    ck_assert_int_eq(record_now(db, id, 1, STORAGE_NOTIFICATION_DELIVERED, 0),
                     STORAGE_NOT_FOUND);
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM notification WHERE id = $1", id_text), 1);

    /* A retry makes it due after the delay, with last_error kept. */
    ck_assert_int_eq(record_now(db, id, 2, STORAGE_NOTIFICATION_RETRY, 0), STORAGE_OK);
    ck_assert_int_eq(raw_int(pg,
                             "SELECT count(*) FROM notification WHERE id = $1"
                             " AND last_error = 'ping approved: HTTP 500'",
                             id_text),
                     1);
    ck_assert_int_eq(storage_notification_claim(db, 10, 60000, on_claim, &third), 0);
    wait_calls(&third.calls, 1);
    ck_assert_uint_eq(third.n, 1);
    ck_assert_int_eq(third.attempts[0], 3);
    ck_assert_int_eq(record_now(db, id, 3, STORAGE_NOTIFICATION_DELIVERED, 0),
                     STORAGE_OK);
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM notification WHERE id = $1", id_text), 0);
    ck_assert_int_eq(record_now(db, id, 3, STORAGE_NOTIFICATION_DELIVERED, 0),
                     STORAGE_NOT_FOUND);
    ck_assert_int_eq(audit_count(pg, hash, "notify", "retry"), 1);
    ck_assert_int_eq(audit_count(pg, hash, "notify", "delivered"), 1);

    /* Bad arguments queue nothing. */
    ck_assert_int_eq(storage_notification_claim(db, 0, 1000, on_claim, &third), -1);
    ck_assert_int_eq(storage_notification_claim(db, 5, 0, on_claim, &third), -1);
    ck_assert_int_eq(storage_notification_record(db, id, 0, STORAGE_NOTIFICATION_FAILED,
                                                 0, NULL, on_done, NULL),
                     -1);
    ck_assert_int_eq(storage_notification_record(db, id, 1, STORAGE_NOTIFICATION_RETRY,
                                                 -1, NULL, on_done, NULL),
                     -1);
    free(hash);
    free(id_text);
    free(client_id);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

START_TEST(outbox_failed_row_deleted)
{
    struct storage_conn *db;
    PGconn *pg = raw_open();
    struct claim_res claimed = {0};
    char *client_id, *id_text, *hash;

    loop_open();
    db = conn_open(5000);
    client_id = outbox_fill(pg, 1);
    id_text = raw_text(pg, "SELECT id FROM notification WHERE client_id = $1", client_id);
    hash = raw_text(pg, "SELECT auth_req_id_hash FROM notification WHERE client_id = $1",
                    client_id);
    raw_exec(pg,
             "UPDATE notification SET next_attempt_at = now() + interval '1 day'"
             " WHERE client_id <> $1",
             client_id);
    ck_assert_int_eq(storage_notification_claim(db, 10, 60000, on_claim, &claimed), 0);
    wait_calls(&claimed.calls, 1);
    ck_assert_uint_eq(claimed.n, 1);
    ck_assert_int_eq(record_now(db, claimed.ids[0], 1, STORAGE_NOTIFICATION_FAILED, 0),
                     STORAGE_OK);
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM notification WHERE id = $1", id_text), 0);
    ck_assert_int_eq(audit_count(pg, hash, "notify", "failed"), 1);
    /* Deleting the client drops its notifications. */
    client_id = (free(client_id), outbox_fill(pg, 2));
    {
        struct storage_sync *s = sync_open();

        ck_assert_int_eq(storage_sync_client_delete(s, client_id), 1);
        storage_sync_close(s);
    }
    ck_assert_int_eq(
        raw_int(pg, "SELECT count(*) FROM notification WHERE client_id = $1", client_id),
        0);
    free(hash);
    free(id_text);
    free(client_id);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- requests created by one batched statement ------------------------------------- */

/* Creates a user with the given subject and a random phone number, copied to phone. */
static void special_user_create(const char *subject, char phone[17])
{
    struct storage_sync *s = sync_open();
    unsigned digits;
    char err[256] = "";

    util_random_bytes(&digits, sizeof(digits));
    snprintf(phone, 17, "+1666%07u", digits % 10000000u);
    ck_assert_msg(storage_sync_user_create(s, subject, NULL, phone, err, sizeof(err)) ==
                      0,
                  "user create failed: %s", err);
    storage_sync_close(s);
}

/* Values that the text[] literal of batch.c array_of() must carry unchanged. */
static const char *const nasty[] = {
    "NULL",
    "null",
    "",
    " ",
    "  padded  ",
    "\"",
    "\\",
    "\\\\",
    "\"\"",
    "{",
    "}",
    "{}",
    "{a,b}",
    ",",
    "a,b",
    "\\N",
    "NULL,NULL",
    "{\"NULL\"}",
    "a\"b\\c{d}e,f",
    "\xe2\x82\xac 10 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89",
    "tab\there",
    "line\nbreak",
    "'single'",
    "$1",
    "ARRAY[1]",
    "\\\"",
    "x\\",
    "(1,2)",
};
#define NASTY_N ((int)ARRAY_LEN(nasty))

/* Every value, as binding_message, acr_values, scope and even subject, travels
 * through one batched statement unchanged, and a NULL binding_message stays NULL. */
START_TEST(create_special_values)
{
    struct people p;
    struct storage_conn *db;
    struct req r[NASTY_N + 1];
    struct done_res res[NASTY_N + 1] = {{0}};
    char subjects[NASTY_N + 1][64], phones[NASTY_N + 1][17];
    PGconn *pg = raw_open();
    char *stored;

    people_create(&p);
    loop_open();
    db = conn_open(5000);
    for (int i = 0; i <= NASTY_N; i++) {
        const char *v = i < NASTY_N ? nasty[i] : "x";

        snprintf(subjects[i], sizeof(subjects[i]), "%s-%d", v, i);
        special_user_create(subjects[i], phones[i]);
        req_init(&r[i], &p);
        r[i].in.subject = subjects[i];
        r[i].in.phone_number = phones[i];
        r[i].in.binding_message = i < NASTY_N ? v : NULL;
        r[i].in.acr_values = i < NASTY_N ? v : NULL;
        r[i].in.scope = v;
    }
    for (int i = 0; i <= NASTY_N; i++)
        ck_assert_int_eq(storage_auth_req_create(db, &r[i].in, on_done, &res[i]), 0);
    for (int i = 0; i <= NASTY_N; i++)
        wait_calls(&res[i].calls, 1);
    for (int i = 0; i <= NASTY_N; i++) {
        ck_assert_msg(res[i].status == STORAGE_OK, "call %d: status %d", i,
                      res[i].status);
        stored = raw_text(pg,
                          "SELECT binding_message FROM auth_req"
                          " WHERE auth_req_id_hash = $1",
                          r[i].id_hash);
        if (i == NASTY_N)
            ck_assert_ptr_null(stored);
        else
            ck_assert_msg(stored && strcmp(stored, nasty[i]) == 0,
                          "binding_message %d: [%s] stored as [%s]", i, nasty[i],
                          stored ? stored : "(NULL)");
        free(stored);
        stored = raw_text(pg,
                          "SELECT acr_values FROM auth_req"
                          " WHERE auth_req_id_hash = $1",
                          r[i].id_hash);
        if (i == NASTY_N)
            ck_assert_ptr_null(stored);
        else
            ck_assert_str_eq(stored, nasty[i]);
        free(stored);
        stored = raw_text(pg,
                          "SELECT scope || '|' || subject FROM auth_req"
                          " WHERE auth_req_id_hash = $1",
                          r[i].id_hash);
        {
            char *want = util_asprintf("%s|%s", r[i].in.scope, subjects[i]);

            ck_assert_str_eq(stored, want);
            free(want);
        }
        free(stored);
        stored = raw_text(pg,
                          "SELECT scope || '|' || subject FROM audit_log"
                          " WHERE auth_req_id_hash = $1 AND action = 'bc_authorize'",
                          r[i].id_hash);
        {
            char *want = util_asprintf("%s|%s", r[i].in.scope, subjects[i]);

            ck_assert_str_eq(stored, want);
            free(want);
        }
        free(stored);
    }
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* A user deleted while a request for them was queued fails that request only: the
 * other requests of the same batch, for other users and clients, are created. Before
 * batching each request ran its own statement and only the orphan failed. */
START_TEST(create_row_error_spares_batch)
{
    struct people p[3];
    struct storage_conn *db;
    struct req r[3];
    struct done_res res[3] = {{0}};
    PGconn *pg = raw_open();

    for (int i = 0; i < 3; i++)
        people_create(&p[i]);
    loop_open();
    db = conn_open(5000);
    for (int i = 0; i < 3; i++)
        req_init(&r[i], &p[i]);
    /* The user of r[1] is deleted after the lookup, before the create runs. */
    raw_exec(pg, "DELETE FROM app_user WHERE subject = $1", p[1].subject);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(storage_auth_req_create(db, &r[i].in, on_done, &res[i]), 0);
    for (int i = 0; i < 3; i++)
        wait_calls(&res[i].calls, 1);
    ck_assert_int_ne(res[1].status, STORAGE_OK);
    ck_assert_msg(res[0].status == STORAGE_OK && res[2].status == STORAGE_OK,
                  "innocent calls failed with the orphan: statuses %d %d %d",
                  res[0].status, res[1].status, res[2].status);
    PQfinish(pg);
    storage_conn_free(db);
    loop_close();
}
END_TEST

#define RACE_PHONES 70
#define RACE_ROUNDS 4

/* Two connections (as two workers) create requests for the same 70 numbers at the
 * same time, in opposite orders, four per number each: every number gets exactly
 * sms_per_phone_max codes, no call fails, and each audit row has its call's id. */
START_TEST(create_two_connections_quota)
{
    struct people p[RACE_PHONES];
    struct storage_conn *db[2];
    static struct req r[2][RACE_ROUNDS][RACE_PHONES];
    static struct done_res res[2][RACE_ROUNDS][RACE_PHONES];
    static char rids[2][RACE_ROUNDS][RACE_PHONES][32];
    int ok[RACE_PHONES] = {0};
    PGconn *pg = raw_open();

    memset(res, 0, sizeof(res));
    for (int i = 0; i < RACE_PHONES; i++)
        people_create(&p[i]);
    loop_open();
    db[0] = conn_open(5000);
    db[1] = conn_open(5000);
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < RACE_ROUNDS; k++)
            for (int j = 0; j < RACE_PHONES; j++) {
                int i = c == 0 ? j : RACE_PHONES - 1 - j;
                struct req *q = &r[c][k][i];

                req_init(q, &p[i]);
                q->in.sms_per_phone_max = 3;
                q->in.sms_per_phone_window = 3600;
                snprintf(rids[c][k][i], sizeof(rids[c][k][i]), "rid-%d-%d-%d", c, k, i);
                q->in.request_id = rids[c][k][i];
                ck_assert_int_eq(
                    storage_auth_req_create(db[c], &q->in, on_done, &res[c][k][i]), 0);
            }
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < RACE_ROUNDS; k++)
            for (int i = 0; i < RACE_PHONES; i++)
                wait_calls(&res[c][k][i].calls, 1);
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < RACE_ROUNDS; k++)
            for (int i = 0; i < RACE_PHONES; i++) {
                enum storage_status s = res[c][k][i].status;
                char *rid;

                ck_assert_msg(s == STORAGE_OK || s == STORAGE_LIMITED,
                              "conn %d round %d phone %d: status %d", c, k, i, s);
                if (s != STORAGE_OK)
                    continue;
                ok[i]++;
                rid = raw_text(pg,
                               "SELECT string_agg(request_id, ',') FROM audit_log"
                               " WHERE auth_req_id_hash = $1",
                               r[c][k][i].id_hash);
                ck_assert_str_eq(rid, rids[c][k][i]);
                free(rid);
            }
    for (int i = 0; i < RACE_PHONES; i++) {
        ck_assert_msg(ok[i] == 3, "phone %d got %d codes", i, ok[i]);
        ck_assert_int_eq(raw_int(pg,
                                 "SELECT count(*) FROM auth_req WHERE phone_number = $1",
                                 p[i].phone),
                         3);
        ck_assert_int_eq(raw_int(pg,
                                 "SELECT cardinality(sent_at) FROM sms_quota"
                                 " WHERE phone_number = $1",
                                 p[i].phone),
                         3);
    }
    PQfinish(pg);
    storage_conn_free(db[0]);
    storage_conn_free(db[1]);
    loop_close();
}
END_TEST

/* The backend dies while a batch waits on a quota row lock, with a second batch
 * queued behind it: every call completes (none hangs), nothing is half created, and
 * the connection creates again once it is back. */
START_TEST(create_backend_killed_mid_batch)
{
    struct people p[3];
    struct storage_conn *db;
    struct req r[4], again;
    struct done_res res[4] = {{0}};
    PGconn *pg = raw_open(), *admin = raw_open();
    int64_t end;

    for (int i = 0; i < 3; i++)
        people_create(&p[i]);
    loop_open();
    db = conn_open(20000);
    /* Holds p[0]'s quota row so the first batch waits on it. */
    raw_exec(pg, "INSERT INTO sms_quota (phone_number, sent_at) VALUES ($1, '{}')",
             p[0].phone);
    raw_exec(pg, "BEGIN", NULL);
    raw_exec(pg, "SELECT 1 FROM sms_quota WHERE phone_number = $1 FOR UPDATE",
             p[0].phone);
    req_init(&r[0], &p[0]);
    req_init(&r[1], &p[1]);
    ck_assert_int_eq(storage_auth_req_create(db, &r[0].in, on_done, &res[0]), 0);
    ck_assert_int_eq(storage_auth_req_create(db, &r[1].in, on_done, &res[1]), 0);
    run_loop_ms(300);
    /* A later batch waits behind the one in flight. */
    req_init(&r[2], &p[2]);
    req_init(&r[3], &p[1]);
    ck_assert_int_eq(storage_auth_req_create(db, &r[2].in, on_done, &res[2]), 0);
    ck_assert_int_eq(storage_auth_req_create(db, &r[3].in, on_done, &res[3]), 0);
    run_loop_ms(300);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(res[i].calls, 0);
    ck_assert_int_ge(
        raw_int(admin,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'cibad' AND datname ="
                " current_database()",
                NULL),
        1);
    for (int i = 0; i < 4; i++)
        wait_calls(&res[i].calls, 1);
    raw_exec(pg, "ROLLBACK", NULL);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_ne(res[i].status, STORAGE_OK);
        ck_assert_int_eq(raw_int(admin,
                                 "SELECT count(*) FROM auth_req"
                                 " WHERE auth_req_id_hash = $1",
                                 r[i].id_hash),
                         0);
    }
    for (int i = 2; i < 4; i++) {
        long long rows = raw_int(admin,
                                 "SELECT count(*) FROM auth_req"
                                 " WHERE auth_req_id_hash = $1",
                                 r[i].id_hash);

        ck_assert_int_eq(rows, res[i].status == STORAGE_OK ? 1 : 0);
    }
    end = util_mono_ms() + 10000;
    while (!storage_conn_is_up(db) && util_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    req_init(&again, &p[2]);
    ck_assert_int_eq(req_create(db, &again), STORAGE_OK);
    PQfinish(pg);
    PQfinish(admin);
    storage_conn_free(db);
    loop_close();
}
END_TEST

/* ---- suite ------------------------------------------------------------------------- */

static TCase *tcase_new(const char *name, int timeout_s, bool schema)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, timeout_s);
    if (schema)
        tcase_add_checked_fixture(tc, schema_setup, NULL);
    return tc;
}

static Suite *storage_suite(void)
{
    Suite *s = suite_create("storage");
    TCase *tc;

    tc = tcase_new("migrations", 60, false);
    tcase_add_test(tc, migrate_fresh_then_noop);
    tcase_add_test(tc, migrate_two_processes);
    tcase_add_test(tc, schema_behind_counts_new_file);
    tcase_add_test(tc, migrate_failure_rolls_back);
    tcase_add_test(tc, migrate_bad_directory);
    tcase_add_test(tc, sync_connect_bad_url);
    suite_add_tcase(s, tc);

    tc = tcase_new("catalog", 30, true);
    tcase_add_test(tc, client_create_list_delete);
    tcase_add_test(tc, client_create_rejects_bad_fields);
    tcase_add_test(tc, client_get_found_and_missing);
    tcase_add_test(tc, client_cache_settings_checked);
    tcase_add_test(tc, client_cache_hit_deferred_until_ttl);
    tcase_add_test(tc, client_cache_dropped_on_delete);
    tcase_add_test(tc, client_cache_skips_unknown_ids);
    tcase_add_test(tc, client_cache_free_fails_hits);
    tcase_add_test(tc, client_cache_emptied_on_reset);
    tcase_add_test(tc, client_jwt_methods_stored);
    tcase_add_test(tc, client_jwt_credentials_checked);
    tcase_add_test(tc, client_mtls_credentials_checked);
    tcase_add_test(tc, assertion_jti_single_use);
    tcase_add_test(tc, assertion_jti_batch_in_one_pass);
    tcase_add_test(tc, assertion_jti_purge);
    tcase_add_test(tc, client_request_signing_alg_stored);
    tcase_add_test(tc, request_object_jti_single_use);
    tcase_add_test(tc, request_object_jti_purge);
    tcase_add_test(tc, user_create_list_delete);
    tcase_add_test(tc, user_find_by_each_hint);
    tcase_add_test(tc, user_email_stored_and_found);
    tcase_add_test(tc, issuer_add_list_delete);
    tcase_add_test(tc, issuer_add_rejects_bad_fields);
    tcase_add_test(tc, issuer_find_found_and_missing);
    tcase_add_test(tc, scope_set_and_list);
    suite_add_tcase(s, tc);

    tc = tcase_new("auth_req", 30, true);
    tcase_add_test(tc, create_counts_phone_quota);
    tcase_add_test(tc, create_batches_calls);
    tcase_add_test(tc, create_rejects_bad_input);
    tcase_add_test(tc, code_sent_and_fail_delivery);
    suite_add_tcase(s, tc);

    tc = tcase_new("create_batch", 60, true);
    tcase_add_test(tc, create_special_values);
    tcase_add_test(tc, create_row_error_spares_batch);
    tcase_add_test(tc, create_two_connections_quota);
    tcase_add_test(tc, create_backend_killed_mid_batch);
    suite_add_tcase(s, tc);

    tc = tcase_new("poll", 60, true);
    tcase_add_test(tc, poll_unknown_and_foreign_id);
    tcase_add_test(tc, poll_batch_in_one_pass);
    tcase_add_test(tc, poll_batch_overflow);
    tcase_add_test(tc, poll_slow_down_grows_interval);
    tcase_add_test(tc, poll_approved_redeems_once);
    tcase_add_test(tc, poll_concurrent_connections);
    tcase_add_test(tc, poll_concurrent_processes);
    tcase_add_test(tc, poll_denied_stays_denied);
    tcase_add_test(tc, poll_expired_tombstone);
    suite_add_tcase(s, tc);

    tc = tcase_new("approval", 30, true);
    tcase_add_test(tc, approval_get_fields);
    tcase_add_test(tc, approval_get_no_known_scope);
    tcase_add_test(tc, decide_approve);
    tcase_add_test(tc, decide_wrong_code_three_times);
    tcase_add_test(tc, decide_conflict_after_resend);
    tcase_add_test(tc, decide_after_expiry);
    tcase_add_test(tc, resend_cooldown_and_quota);
    tcase_add_test(tc, resend_capped_at_expiry);
    suite_add_tcase(s, tc);

    tc = tcase_new("outbox", 60, true);
    tcase_add_test(tc, outbox_ping_decisions);
    tcase_add_test(tc, outbox_too_many_wrong_codes);
    tcase_add_test(tc, outbox_push_approval_redeems);
    tcase_add_test(tc, outbox_expiry_and_sms_failure);
    tcase_add_test(tc, outbox_claims_never_overlap);
    tcase_add_test(tc, outbox_lease_and_record);
    tcase_add_test(tc, outbox_failed_row_deleted);
    suite_add_tcase(s, tc);

    tc = tcase_new("keys_audit", 30, true);
    tcase_add_test(tc, keys_add_rotate_load);
    tcase_add_test(tc, audit_append_rows);
    suite_add_tcase(s, tc);

    tc = tcase_new("conn", 60, true);
    tcase_add_test(tc, conn_ping_is_deferred);
    tcase_add_test(tc, conn_free_fails_pending);
    tcase_add_test(tc, conn_bad_conninfo);
    tcase_add_test(tc, conn_connect_timeout);
    tcase_add_test(tc, conn_callback_queues_more);
    tcase_add_test(tc, conn_recovers_after_terminate);
    tcase_add_test(tc, conn_statement_timeout);
    tcase_add_test(tc, conn_recovers_after_restart);
    suite_add_tcase(s, tc);

    return s;
}

CHECK_MAIN(storage_suite)
