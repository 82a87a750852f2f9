/* check_server.c - tests of the strict form parser, of configuration loading and of
 * the request deadline
 * SPDX-License-Identifier: MIT
 */
#include "check_runner.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include "server/config.h"
#include "server/http.h"
#include "server/server.h"
#include "tests/e2e_client.h"

extern char **environ;

/* ---- form parser ------------------------------------------------------------------- */

/* Parses text and expects success. */
static void parse_ok(const char *text, struct server_form *form)
{
    const char *error = NULL;

    ck_assert_msg(server_form_parse_text(text, strlen(text), form, &error) == 0,
                  "\"%s\" was rejected: %s", text, error ? error : "(no error)");
}

/* Parses text and expects a failure whose description contains want. */
static void parse_fails(const char *text, size_t len, const char *want)
{
    struct server_form form = {0};
    const char *error = NULL;

    ck_assert_msg(server_form_parse_text(text, len, &form, &error) == -1,
                  "\"%s\" was accepted", text);
    ck_assert_ptr_nonnull(error);
    ck_assert_msg(strstr(error, want), "error \"%s\" lacks \"%s\"", error, want);
    ck_assert_uint_eq(form.count, 0);
    ck_assert_ptr_null(form.params);
}

START_TEST(form_plain)
{
    struct server_form form;

    parse_ok("grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id=abc-_.~",
             &form);
    ck_assert_uint_eq(form.count, 2);
    ck_assert_str_eq(server_form_get(&form, "grant_type"),
                     "urn:openid:params:grant-type:ciba");
    ck_assert_str_eq(server_form_get(&form, "auth_req_id"), "abc-_.~");
    ck_assert_ptr_null(server_form_get(&form, "scope"));
    server_form_free(&form);
}
END_TEST

START_TEST(form_plus_is_space)
{
    struct server_form form;

    parse_ok("scope=openid+payments&a+b=c", &form);
    ck_assert_str_eq(server_form_get(&form, "scope"), "openid payments");
    ck_assert_str_eq(server_form_get(&form, "a b"), "c");
    server_form_free(&form);
}
END_TEST

START_TEST(form_percent_escapes)
{
    struct server_form form;

    parse_ok("a=x%20y&b=1%2B1&c=%c3%A9&d=caf\xc3\xa9", &form);
    ck_assert_str_eq(server_form_get(&form, "a"), "x y");
    ck_assert_str_eq(server_form_get(&form, "b"), "1+1");
    ck_assert_str_eq(server_form_get(&form, "c"), "\xc3\xa9");
    ck_assert_str_eq(server_form_get(&form, "d"), "caf\xc3\xa9");
    server_form_free(&form);
}
END_TEST

START_TEST(form_bad_escapes)
{
    parse_fails("a=%G1", 5, "percent-encoding");
    parse_fails("a=%1G", 5, "percent-encoding");
    parse_fails("a=%4", 4, "percent-encoding");
    parse_fails("a=%", 3, "percent-encoding");
    parse_fails("a=1&b=%4&c=2", 12, "percent-encoding");
    parse_fails("%zz=1", 5, "percent-encoding");
}
END_TEST

START_TEST(form_nul_rejected)
{
    parse_fails("client_id=abc%00def", 19, "NUL");
    parse_fails("a%00=1", 6, "NUL");
    parse_fails("client_id=abc\0def", 17, "NUL");
}
END_TEST

START_TEST(form_invalid_utf8)
{
    parse_fails("a=%C0%AF", 8, "UTF-8");        /* overlong '/' */
    parse_fails("a=%E0%80%AF", 11, "UTF-8");    /* overlong, three bytes */
    parse_fails("a=%80", 5, "UTF-8");           /* lone continuation byte */
    parse_fails("a=x%BFy", 7, "UTF-8");         /* continuation inside ASCII */
    parse_fails("a=%E2%82", 8, "UTF-8");        /* truncated sequence */
    parse_fails("a=%ED%A0%80", 11, "UTF-8");    /* UTF-16 surrogate */
    parse_fails("a=%F4%90%80%80", 14, "UTF-8"); /* above U+10FFFF */
    parse_fails("a=%FF", 5, "UTF-8");
    parse_fails("a=\xc3(", 4, "UTF-8"); /* raw bytes are checked too */
}
END_TEST

START_TEST(form_utf8_boundaries)
{
    struct server_form form;

    /* U+007F, U+0080, U+07FF, U+0800, U+FFFF, U+10000 and U+10FFFF */
    parse_ok("a=%7F&b=%C2%80&c=%DF%BF&d=%E0%A0%80&e=%EF%BF%BF&f=%F0%90%80%80"
             "&g=%F4%8F%BF%BF",
             &form);
    ck_assert_uint_eq(form.count, 7);
    ck_assert_str_eq(server_form_get(&form, "g"), "\xf4\x8f\xbf\xbf");
    server_form_free(&form);
}
END_TEST

START_TEST(form_duplicate_rejected)
{
    parse_fails("a=1&a=2", 7, "repeated");
    parse_fails("a=&a=1", 6, "repeated");
    parse_fails("a=1&b=2&%61=3", 13, "repeated");
    parse_fails("a&a", 3, "repeated");
}
END_TEST

START_TEST(form_empty_name_rejected)
{
    parse_fails("=1", 2, "empty name");
    parse_fails("a=1&=", 5, "empty name");
}
END_TEST

START_TEST(form_empty_value_absent)
{
    struct server_form form;

    parse_ok("a=&b&c=1", &form);
    ck_assert_uint_eq(form.count, 3);
    ck_assert_ptr_null(server_form_get(&form, "a"));
    ck_assert_ptr_null(server_form_get(&form, "b"));
    ck_assert_str_eq(server_form_get(&form, "c"), "1");
    server_form_free(&form);
}
END_TEST

START_TEST(form_empty_pieces_skipped)
{
    struct server_form form;

    parse_ok("", &form);
    ck_assert_uint_eq(form.count, 0);
    server_form_free(&form);

    parse_ok("&&a=1&&", &form);
    ck_assert_uint_eq(form.count, 1);
    ck_assert_str_eq(server_form_get(&form, "a"), "1");
    server_form_free(&form);
}
END_TEST

START_TEST(form_parameter_count_limit)
{
    char text[2048];
    size_t len = 0;
    struct server_form form;
    const char *error = NULL;

    for (int i = 0; i < SERVER_FORM_MAX_PARAMS; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%sp%d=%d", i ? "&" : "",
                                i, i);
    parse_ok(text, &form);
    ck_assert_uint_eq(form.count, SERVER_FORM_MAX_PARAMS);
    ck_assert_str_eq(server_form_get(&form, "p99"), "99");
    server_form_free(&form);

    snprintf(text + len, sizeof(text) - len, "&p100=100");
    ck_assert_int_eq(server_form_parse_text(text, strlen(text), &form, &error), -1);
    ck_assert_str_eq(error, "the form has too many parameters");
}
END_TEST

START_TEST(form_long_value)
{
    size_t n = 60000;
    char *text = util_malloc(n + 3);
    struct server_form form;

    memcpy(text, "v=", 2);
    memset(text + 2, 'x', n);
    text[n + 2] = '\0';
    parse_ok(text, &form);
    ck_assert_uint_eq(strlen(server_form_get(&form, "v")), n);
    server_form_free(&form);
    free(text);
}
END_TEST

START_TEST(form_body_over_max_body)
{
    struct server_config cfg = {.max_body = 16};
    struct server_form form;

    server_config = &cfg;
    parse_ok("a=0123456789abcd", &form); /* exactly 16 bytes */
    server_form_free(&form);
    parse_fails("a=0123456789abcde", 17, "too large");
    server_config = NULL;
}
END_TEST

START_TEST(form_content_type)
{
    ck_assert(server_form_content_type_ok("application/x-www-form-urlencoded"));
    ck_assert(server_form_content_type_ok("Application/X-WWW-Form-URLEncoded"));
    ck_assert(
        server_form_content_type_ok("application/x-www-form-urlencoded;charset=utf-8"));
    ck_assert(
        server_form_content_type_ok("application/x-www-form-urlencoded; charset=UTF-8"));
    ck_assert(server_form_content_type_ok(
        "application/x-www-form-urlencoded; charset=\"utf-8\""));
    ck_assert(server_form_content_type_ok(
        "application/x-www-form-urlencoded ; charset=utf-8 "));
    ck_assert(!server_form_content_type_ok(NULL));
    ck_assert(!server_form_content_type_ok(""));
    ck_assert(!server_form_content_type_ok("application/json"));
    ck_assert(!server_form_content_type_ok("multipart/form-data; boundary=x"));
    ck_assert(!server_form_content_type_ok("application/x-www-form-urlencodedx"));
    ck_assert(!server_form_content_type_ok(
        "application/x-www-form-urlencoded; charset=latin1"));
    ck_assert(!server_form_content_type_ok("application/x-www-form-urlencoded; a=b"));
    ck_assert(!server_form_content_type_ok(
        "application/x-www-form-urlencoded; charset=utf-8; charset=utf-8"));
    ck_assert(!server_form_content_type_ok("application/x-www-form-urlencoded;"));
}
END_TEST

START_TEST(form_free_twice_safe)
{
    struct server_form form;

    parse_ok("a=1", &form);
    server_form_free(&form);
    server_form_free(&form);
    server_form_free(NULL);
    ck_assert_uint_eq(form.count, 0);
}
END_TEST

/* ---- configuration ------------------------------------------------------------------
 */

/* Removes every CIBAD_* setting variable inherited from the test harness, so each test
 * starts from the defaults. The harness's own CIBAD_TEST_* variables stay. */
static void config_setup(void)
{
    for (;;) {
        char name[128] = "";

        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "CIBAD_", 6) == 0 && strncmp(*e, "CIBAD_TEST_", 11) != 0 &&
                strncmp(*e, "CIBAD_BIN=", 10) != 0) {
                snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
                break;
            }
        }
        if (!name[0])
            return;
        unsetenv(name);
    }
}

/* Writes text to a new temporary file and returns its path (static buffer). */
static const char *write_config(const char *text)
{
    static char path[64];
    int fd;

    snprintf(path, sizeof(path), "/tmp/check_server.XXXXXX");
    fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* Loads the file text (NULL for none) and expects a failure whose message contains
 * want. */
static void load_fails(const char *text, const char *want)
{
    struct server_config cfg;
    char err[256] = "";
    const char *path = text ? write_config(text) : NULL;
    int rc = server_config_load(&cfg, path, err, sizeof(err));

    if (path)
        unlink(path);
    ck_assert_msg(rc == -1, "config was accepted, expected \"%s\"", want);
    ck_assert_msg(strstr(err, want), "error \"%s\" lacks \"%s\"", err, want);
}

static void load_ok(const char *text, struct server_config *cfg)
{
    char err[256] = "";
    const char *path = text ? write_config(text) : NULL;
    int rc = server_config_load(cfg, path, err, sizeof(err));

    if (path)
        unlink(path);
    ck_assert_msg(rc == 0, "config was rejected: %s", err);
}

START_TEST(config_defaults_valid)
{
    struct server_config cfg;

    load_ok(NULL, &cfg);
    ck_assert_str_eq(cfg.issuer, "http://127.0.0.1:8080");
    ck_assert_str_eq(cfg.listen, "127.0.0.1:8080");
    ck_assert_str_eq(cfg.migrations_dir, "migrations");
    ck_assert_str_eq(cfg.log_level, "info");
    ck_assert_str_eq(cfg.sms_driver, "console");
    ck_assert_str_eq(cfg.sms_twilio_base_url, "https://api.twilio.com");
    ck_assert_str_eq(cfg.default_country_code, "1");
    ck_assert_ptr_null(cfg.secret);
    ck_assert_ptr_null(cfg.sms_http_url);
    ck_assert_int_eq(cfg.workers, 2);
    ck_assert_int_eq(cfg.sms_timeout_ms, 5000);
    ck_assert(!cfg.sms_allow_http_loopback);
    ck_assert_int_eq(cfg.sms_per_phone_max, 3);
    ck_assert_int_eq(cfg.sms_per_phone_window, 60);
    ck_assert_int_eq(cfg.otp_lifetime, 60);
    ck_assert_int_eq(cfg.otp_max_attempts, 3);
    ck_assert_int_eq(cfg.otp_resend_cooldown, 30);
    ck_assert_int_eq(cfg.access_token_lifetime, 300);
    ck_assert_int_eq(cfg.id_token_lifetime, 300);
    ck_assert_int_eq(cfg.auth_req_default_expiry, 300);
    ck_assert_int_eq(cfg.auth_req_min_expiry, 10);
    ck_assert_int_eq(cfg.auth_req_max_expiry, 600);
    ck_assert_int_eq(cfg.poll_interval, 5);
    ck_assert_int_eq(cfg.binding_message_max, 64);
    ck_assert_int_eq(cfg.tombstone_seconds, 86400);
    ck_assert_int_eq(cfg.http_timeout, 30);
    ck_assert_int_eq(cfg.request_deadline_ms, 10000);
    ck_assert_int_eq(cfg.db_timeout_ms, 2000);
    ck_assert_int_eq(cfg.max_body, 65536);
    ck_assert_int_eq(cfg.max_headers, 8192);
    server_config_free(&cfg);
    ck_assert_ptr_null(cfg.issuer);
}
END_TEST

START_TEST(config_file_parsed)
{
    struct server_config cfg;

    load_ok("# cibad settings\n"
            "\n"
            "   # an indented comment\n"
            "issuer = https://as.example.com/ciba\n"
            "workers=4\n"
            "\tlog_level\t=  debug  \n"
            "database_url = host=/run/pg port=5433 dbname=cibad\n"
            "sms_twilio_from = \" +15550001111 \"\n"
            "sms_allow_http_loopback = yes\n"
            "otp_lifetime = 300\n",
            &cfg);
    ck_assert_str_eq(cfg.issuer, "https://as.example.com/ciba");
    ck_assert_int_eq(cfg.workers, 4);
    ck_assert_str_eq(cfg.log_level, "debug");
    ck_assert_str_eq(cfg.database_url, "host=/run/pg port=5433 dbname=cibad");
    ck_assert_str_eq(cfg.sms_twilio_from, " +15550001111 ");
    ck_assert(cfg.sms_allow_http_loopback);
    ck_assert_int_eq(cfg.otp_lifetime, 300);
    ck_assert_str_eq(cfg.listen, "127.0.0.1:8080"); /* untouched default */
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_file_no_trailing_newline)
{
    struct server_config cfg;

    load_ok("workers = 3", &cfg);
    ck_assert_int_eq(cfg.workers, 3);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_file_bad_line)
{
    load_fails("# comment\nworkers = 2\nthis line has no equals sign\n", "line 3");
    load_fails("# comment\nworkers = 2\nthis line has no equals sign\n", "name = value");
}
END_TEST

START_TEST(config_file_unknown_setting)
{
    load_fails("workers = 2\n\nworkerz = 3\n", "line 3: unknown setting \"workerz\"");
}
END_TEST

START_TEST(config_file_repeated_setting)
{
    load_fails("workers = 2\nworkers = 3\n", "line 2: workers is already set on line 1");
}
END_TEST

START_TEST(config_file_nul_byte)
{
    static const char text[] = "workers = 2\nissuer = http://a\0b\n";
    char path[] = "/tmp/check_server.XXXXXX";
    struct server_config cfg;
    char err[256] = "";
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(fd);
    ck_assert_int_eq(server_config_load(&cfg, path, err, sizeof(err)), -1);
    unlink(path);
    ck_assert_msg(strstr(err, "line 2: contains a NUL byte"), "error: %s", err);
}
END_TEST

START_TEST(config_file_missing)
{
    struct server_config cfg;
    char err[256] = "";

    ck_assert_int_eq(
        server_config_load(&cfg, "/nonexistent/cibad.conf", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "/nonexistent/cibad.conf"), "error: %s", err);
}
END_TEST

START_TEST(config_env_overrides_file)
{
    struct server_config cfg;

    setenv("CIBAD_WORKERS", "8", 1);
    setenv("CIBAD_ISSUER", "https://env.example.com", 1);
    load_ok("workers = 4\nissuer = https://file.example.com\nlog_level = warn\n", &cfg);
    ck_assert_int_eq(cfg.workers, 8);
    ck_assert_str_eq(cfg.issuer, "https://env.example.com");
    ck_assert_str_eq(cfg.log_level, "warn");
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_env_bad_value_names_variable)
{
    setenv("CIBAD_OTP_LIFETIME", "soon", 1);
    load_fails(NULL, "CIBAD_OTP_LIFETIME: invalid value \"soon\" for otp_lifetime");
}
END_TEST

START_TEST(config_env_empty_unsets_string)
{
    struct server_config cfg;

    setenv("CIBAD_SECRET", "", 1);
    load_ok("secret = 0123456789abcdef0123456789abcdef\n", &cfg);
    ck_assert_ptr_null(cfg.secret);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_int_out_of_range)
{
    load_fails("otp_lifetime = 301\n", "expected an integer from 30 to 300");
    load_fails("otp_lifetime = 29\n", "otp_lifetime");
    load_fails("workers = 0\n", "line 1: invalid value \"0\" for workers");
    load_fails("workers = 65\n", "workers");
    load_fails("workers = -1\n", "workers");
    load_fails("workers = 2x\n", "workers");
    load_fails("workers = +2\n", "workers");
    load_fails("workers = \n", "workers");
    load_fails("max_body = 99999999999999999999\n", "max_body");
}
END_TEST

START_TEST(config_bad_bool)
{
    struct server_config cfg;

    load_fails("sms_allow_http_loopback = maybe\n", "expected true or false");
    load_fails("sms_allow_http_loopback = \n", "expected true or false");
    setenv("CIBAD_SMS_ALLOW_HTTP_LOOPBACK", "TRUE", 1);
    load_ok("sms_allow_http_loopback = off\n", &cfg);
    ck_assert(cfg.sms_allow_http_loopback);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_bad_issuer)
{
    load_fails("issuer = https://as.example.com/\n", "trailing slash");
    load_fails("issuer = as.example.com\n", "absolute");
    load_fails("issuer = ftp://as.example.com\n", "absolute");
    load_fails("issuer = https://\n", "absolute");
    load_fails("issuer = https:///path\n", "absolute");
    load_fails("issuer = https://as.example.com#frag\n", "fragment");
    load_fails("issuer = https://as.example.com/?a=b\n", "query");
    load_fails("issuer = https://user:pw@as.example.com\n", "user information");
    load_fails("issuer = https://as.example.com/a b\n", "space");
    load_fails("issuer = \n", "issuer is not set");
}
END_TEST

START_TEST(config_issuer_with_path)
{
    struct server_config cfg;

    load_ok("issuer = https://as.example.com:8443/tenant/a\n", &cfg);
    ck_assert_str_eq(cfg.issuer, "https://as.example.com:8443/tenant/a");
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_expiry_order)
{
    load_fails("auth_req_min_expiry = 400\n", "auth_req_min_expiry (400)");
    load_fails("auth_req_max_expiry = 200\n", "does not hold");
    load_fails("auth_req_default_expiry = 700\n", "does not hold");
}
END_TEST

START_TEST(config_deadline_covers_db_timeouts)
{
    struct server_config cfg;

    load_fails("db_timeout_ms = 3000\n",
               "request_deadline_ms (10000) is less than 4 x "
               "db_timeout_ms (3000): set it to at least 12000");
    load_fails("request_deadline_ms = 7999\n", "request_deadline_ms (7999)");
    load_fails("request_deadline_ms = 1000\ndb_timeout_ms = 251\n", "at least 1004");
    load_ok("request_deadline_ms = 8000\n", &cfg);
    ck_assert_int_eq(cfg.request_deadline_ms, 8000);
    server_config_free(&cfg);
    load_ok("request_deadline_ms = 1000\ndb_timeout_ms = 250\n", &cfg);
    ck_assert_int_eq(cfg.db_timeout_ms, 250);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_listen_address)
{
    struct server_config cfg;
    char host[64];
    int port = 0;

    load_fails("listen = localhost:8080\n", "invalid listen address");
    load_fails("listen = 127.0.0.1\n", "invalid listen address");
    load_fails("listen = 127.0.0.1:0\n", "invalid listen address");
    load_fails("listen = 127.0.0.1:65536\n", "invalid listen address");
    load_fails("listen = ::1:8080\n", "invalid listen address");
    load_fails("listen = [::1]8080\n", "invalid listen address");
    load_fails("listen = [::1:8080\n", "invalid listen address");
    load_fails("listen = [zz::q]:8080\n", "invalid listen address");
    load_fails("listen = []:8080\n", "invalid listen address");
    load_fails("listen = 999.0.0.1:8080\n", "invalid listen address");
    load_fails("listen = :8080\n", "invalid listen address");
    load_ok("listen = [::1]:9000\n", &cfg);
    ck_assert_int_eq(server_config_parse_listen(cfg.listen, host, sizeof(host), &port),
                     0);
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(port, 9000);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_other_validation)
{
    load_fails("log_level = verbose\n", "invalid log_level");
    load_fails("sms_driver = carrier-pigeon\n", "invalid sms_driver");
    load_fails("default_country_code = +44\n", "invalid default_country_code");
    load_fails("default_country_code = 0\n", "invalid default_country_code");
    load_fails("default_country_code = 1234\n", "invalid default_country_code");
    load_fails("secret = short\n", "secret is too short");
    load_fails("database_url = \n", "database_url is not set");
    load_fails("migrations_dir = \n", "migrations_dir is not set");
}
END_TEST

START_TEST(config_check_serve)
{
    struct server_config cfg;
    char err[256] = "";

    load_ok(NULL, &cfg);
    ck_assert_int_eq(server_config_check_serve(&cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "secret is not set"), "error: %s", err);
    server_config_free(&cfg);

    load_ok("secret = 0123456789abcdef0123456789abcdef\nsms_driver = http\n", &cfg);
    ck_assert_int_eq(server_config_check_serve(&cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "sms_http_url"), "error: %s", err);
    server_config_free(&cfg);

    load_ok("secret = 0123456789abcdef0123456789abcdef\nsms_driver = twilio\n"
            "sms_twilio_account_sid = AC1\nsms_twilio_auth_token = t\n",
            &cfg);
    ck_assert_int_eq(server_config_check_serve(&cfg, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "sms_twilio_from"), "error: %s", err);
    server_config_free(&cfg);

    load_ok("secret = 0123456789abcdef0123456789abcdef\n", &cfg);
    ck_assert_int_eq(server_config_check_serve(&cfg, err, sizeof(err)), 0);
    server_config_free(&cfg);
}
END_TEST

/* Runs server_config_log with stderr redirected into a pipe and returns what it wrote
 * (a new string). */
static char *capture_config_log(const struct server_config *cfg)
{
    int fds[2], saved;
    char *out = util_calloc(1, 65536);
    ssize_t n, len = 0;

    ck_assert_int_eq(pipe(fds), 0);
    saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    server_config_log(cfg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    while ((n = read(fds[0], out + len, 65535 - (size_t)len)) > 0)
        len += n;
    close(fds[0]);
    return out;
}

START_TEST(config_log_hides_secrets)
{
    struct server_config cfg;
    char *out;

    setenv("CIBAD_SECRET", "server-secret-0123456789abcdef0123", 1);
    setenv("CIBAD_SMS_HTTP_TOKEN", "bearer-token-value", 1);
    setenv("CIBAD_SMS_TWILIO_AUTH_TOKEN", "twilio-token-value", 1);
    setenv("CIBAD_DATABASE_URL", "host=/run/pg dbname=cibad password=db-password-value",
           1);
    load_ok(NULL, &cfg);
    out = capture_config_log(&cfg);

    ck_assert_msg(!strstr(out, "server-secret"), "secret logged:\n%s", out);
    ck_assert_msg(!strstr(out, "bearer-token-value"), "token logged:\n%s", out);
    ck_assert_msg(!strstr(out, "twilio-token-value"), "token logged:\n%s", out);
    ck_assert_msg(!strstr(out, "db-password-value"), "password logged:\n%s", out);
    ck_assert_ptr_nonnull(strstr(out, "config secret = (set)"));
    ck_assert_ptr_nonnull(strstr(out, "config sms_http_token = (set)"));
    ck_assert_ptr_nonnull(strstr(out, "config database_url = (set)"));
    ck_assert_ptr_nonnull(strstr(out, "config sms_http_url = (not set)"));
    ck_assert_ptr_nonnull(strstr(out, "config workers = 2"));
    ck_assert_ptr_nonnull(strstr(out, "config issuer = http://127.0.0.1:8080"));
    free(out);
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_database_url_shown_without_password)
{
    struct server_config cfg;
    char *value;

    setenv("CIBAD_DATABASE_URL", "postgresql://cibad@db.example.com/cibad", 1);
    load_ok(NULL, &cfg);
    value = server_config_format_value(&cfg, "database_url");
    ck_assert_str_eq(value, "postgresql://cibad@db.example.com/cibad");
    free(value);
    server_config_free(&cfg);

    setenv("CIBAD_DATABASE_URL", "postgresql://cibad:pw@db.example.com/cibad", 1);
    load_ok(NULL, &cfg);
    value = server_config_format_value(&cfg, "database_url");
    ck_assert_str_eq(value, "(set)");
    free(value);
    ck_assert_ptr_null(server_config_format_value(&cfg, "no_such_setting"));
    server_config_free(&cfg);
}
END_TEST

START_TEST(config_help_lists_settings)
{
    int fds[2], saved;
    char out[32768];
    ssize_t n, len = 0;

    ck_assert_int_eq(pipe(fds), 0);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[1]);
    server_config_print_help();
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    while ((n = read(fds[0], out + len, sizeof(out) - 1 - (size_t)len)) > 0)
        len += n;
    out[len] = '\0';
    close(fds[0]);

    ck_assert_ptr_nonnull(strstr(out, "otp_lifetime"));
    ck_assert_ptr_nonnull(strstr(out, "CIBAD_OTP_LIFETIME"));
    ck_assert_ptr_nonnull(strstr(out, "integer 30..300"));
    ck_assert_ptr_nonnull(strstr(out, "CIBAD_MAX_HEADERS"));
    ck_assert_ptr_nonnull(strstr(out, "default: 8192"));
}
END_TEST

/* ---- request deadline ---------------------------------------------------------------
 */

/* server/http.c runs here on a real evhttp over loopback. A stand-in router holds each
 * request past the deadline, so the deadline reply goes out, and replies later as a
 * slow handler would. */

#define DEADLINE_MS 300

struct deadline_server {
    struct server_config cfg;
    struct server_thread t;
    pthread_t loop;
    int port;
};

static atomic_int late_replies;

/* The handler's own reply after the deadline reply went out: it only frees the request
 * context (the contract in server/http.h). */
static void on_late_reply(evutil_socket_t fd, short what, void *arg)
{
    struct server_req *sr = arg;

    (void)fd;
    (void)what;
    server_reply_json(sr, 200, json_pack("{s:s}", "status", "late"));
    atomic_fetch_add(&late_replies, 1);
}

/* Stands in for server/routes.c, which this suite does not link: names the endpoint as
 * the router does, then replies only after twice the deadline. */
void server_route(struct server_req *sr)
{
    struct timeval late = {0, 2 * DEADLINE_MS * 1000};

    sr->endpoint =
        strncmp(server_req_path(sr), "/approve/", 9) == 0 ? "approve" : "token";
    ck_assert_int_eq(
        event_base_once(sr->worker->base, -1, EV_TIMEOUT, on_late_reply, sr, &late), 0);
}

void server_route_log_path(const char *path, char *out, size_t out_len)
{
    snprintf(out, out_len, "%s", path);
}

static void *run_loop(void *arg)
{
    struct deadline_server *ds = arg;

    event_base_loop(ds->t.w.base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static void deadline_server_start(struct deadline_server *ds)
{
    struct evhttp_bound_socket *bound;
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);

    memset(ds, 0, sizeof(*ds));
    ck_assert_int_eq(evthread_use_pthreads(), 0);
    ds->cfg.request_deadline_ms = DEADLINE_MS;
    server_config = &ds->cfg;
    ds->t.w.base = event_base_new();
    ck_assert_ptr_nonnull(ds->t.w.base);
    ds->t.http = evhttp_new(ds->t.w.base);
    ck_assert_ptr_nonnull(ds->t.http);
    bound = evhttp_bind_socket_with_handle(ds->t.http, "127.0.0.1", 0);
    ck_assert_ptr_nonnull(bound);
    ck_assert_int_eq(
        getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&addr, &len),
        0);
    ds->port = ntohs(addr.sin_port);
    evhttp_set_gencb(ds->t.http, server_http_on_request, &ds->t);
    ck_assert_int_eq(pthread_create(&ds->loop, NULL, run_loop, ds), 0);
}

/* Waits for the late replies, so every request context is freed, then stops. */
static void deadline_server_stop(struct deadline_server *ds, int late_expected)
{
    for (int i = 0; i < 100 && atomic_load(&late_replies) < late_expected; i++)
        usleep(50 * 1000);
    ck_assert_int_eq(atomic_load(&late_replies), late_expected);
    event_base_loopbreak(ds->t.w.base);
    pthread_join(ds->loop, NULL);
    ck_assert_ptr_null(ds->t.reqs);
    ck_assert_uint_eq(atomic_load(&ds->t.unanswered), 0);
    evhttp_free(ds->t.http);
    event_base_free(ds->t.w.base);
    server_config = NULL;
}

START_TEST(deadline_approve_page_is_html)
{
    struct deadline_server ds;
    struct e2e_response r;
    const char *csp, *type;

    deadline_server_start(&ds);
    ck_assert_int_eq(e2e_request(ds.port, "GET", "/approve/abc", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    type = e2e_header(&r, "Content-Type");
    ck_assert_msg(type && strncmp(type, "text/html", 9) == 0, "Content-Type %s",
                  type ? type : "(none)");
    ck_assert_msg(strstr(r.body, "<title>Please try again</title>"), "body: %s", r.body);
    csp = e2e_header(&r, "Content-Security-Policy");
    ck_assert_msg(csp && strstr(csp, "default-src 'none'"), "CSP %s",
                  csp ? csp : "(none)");
    ck_assert_msg(strstr(csp, "frame-ancestors 'none'"), "CSP %s", csp);
    ck_assert_pstr_eq(e2e_header(&r, "Cache-Control"), "no-store");
    ck_assert_pstr_eq(e2e_header(&r, "Referrer-Policy"), "no-referrer");
    ck_assert_pstr_eq(e2e_header(&r, "X-Content-Type-Options"), "nosniff");
    ck_assert_pstr_eq(e2e_header(&r, "X-Frame-Options"), "DENY");
    ck_assert_ptr_nonnull(e2e_header(&r, "Retry-After"));
    ck_assert_ptr_nonnull(e2e_header(&r, "X-Request-Id"));
    e2e_response_free(&r);
    deadline_server_stop(&ds, 1);
}
END_TEST

START_TEST(deadline_api_reply_is_json)
{
    struct deadline_server ds;
    struct e2e_response r;
    const char *type;
    json_t *body;

    deadline_server_start(&ds);
    ck_assert_int_eq(e2e_request(ds.port, "POST", "/token", NULL, "a=b", 3, &r), 0);
    ck_assert_int_eq(r.status, 503);
    type = e2e_header(&r, "Content-Type");
    ck_assert_msg(type && strncmp(type, "application/json", 16) == 0, "Content-Type %s",
                  type ? type : "(none)");
    body = e2e_json(&r);
    ck_assert_msg(body != NULL, "body is not JSON: %s", r.body);
    ck_assert_str_eq(json_string_value(json_object_get(body, "error")),
                     "temporarily_unavailable");
    ck_assert_pstr_eq(e2e_header(&r, "Cache-Control"), "no-store");
    ck_assert_ptr_null(e2e_header(&r, "Content-Security-Policy"));
    json_decref(body);
    e2e_response_free(&r);
    deadline_server_stop(&ds, 1);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *form = tcase_create("form");
    TCase *config = tcase_create("config");
    TCase *deadline;

    tcase_add_test(form, form_plain);
    tcase_add_test(form, form_plus_is_space);
    tcase_add_test(form, form_percent_escapes);
    tcase_add_test(form, form_bad_escapes);
    tcase_add_test(form, form_nul_rejected);
    tcase_add_test(form, form_invalid_utf8);
    tcase_add_test(form, form_utf8_boundaries);
    tcase_add_test(form, form_duplicate_rejected);
    tcase_add_test(form, form_empty_name_rejected);
    tcase_add_test(form, form_empty_value_absent);
    tcase_add_test(form, form_empty_pieces_skipped);
    tcase_add_test(form, form_parameter_count_limit);
    tcase_add_test(form, form_long_value);
    tcase_add_test(form, form_body_over_max_body);
    tcase_add_test(form, form_content_type);
    tcase_add_test(form, form_free_twice_safe);
    suite_add_tcase(s, form);

    tcase_add_checked_fixture(config, config_setup, NULL);
    tcase_add_test(config, config_defaults_valid);
    tcase_add_test(config, config_file_parsed);
    tcase_add_test(config, config_file_no_trailing_newline);
    tcase_add_test(config, config_file_bad_line);
    tcase_add_test(config, config_file_unknown_setting);
    tcase_add_test(config, config_file_repeated_setting);
    tcase_add_test(config, config_file_nul_byte);
    tcase_add_test(config, config_file_missing);
    tcase_add_test(config, config_env_overrides_file);
    tcase_add_test(config, config_env_bad_value_names_variable);
    tcase_add_test(config, config_env_empty_unsets_string);
    tcase_add_test(config, config_int_out_of_range);
    tcase_add_test(config, config_bad_bool);
    tcase_add_test(config, config_bad_issuer);
    tcase_add_test(config, config_issuer_with_path);
    tcase_add_test(config, config_expiry_order);
    tcase_add_test(config, config_deadline_covers_db_timeouts);
    tcase_add_test(config, config_listen_address);
    tcase_add_test(config, config_other_validation);
    tcase_add_test(config, config_check_serve);
    tcase_add_test(config, config_log_hides_secrets);
    tcase_add_test(config, config_database_url_shown_without_password);
    tcase_add_test(config, config_help_lists_settings);
    suite_add_tcase(s, config);

    deadline = tcase_create("deadline");
    tcase_add_test(deadline, deadline_approve_page_is_html);
    tcase_add_test(deadline, deadline_api_reply_is_json);
    suite_add_tcase(s, deadline);
    return s;
}

CHECK_MAIN(server_suite)
