/* check_sms.c - tests of one-time codes, the SMS gateway drivers and the outbound HTTP
 * client, against the loopback mock server over real sockets
 * SPDX-License-Identifier: MIT
 */
#include "check_runner.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "sms/sms.h"
#include "sms/sms_int.h"
#include "tests/mock_http.h"
#include "util/util.h"

static const unsigned char secret[] = "test secret of 32 bytes, not rnd";
static const char *const phone = "+15555550100";

/* ---- event loop and mock fixtures ---------------------------------------------------
 */

struct env {
    struct event_base *base;
    struct evdns_base *dns;
    struct mock_http *mock;
    struct mock_http_certs certs;
};

enum mock_kind { MOCK_PLAIN, MOCK_TLS, MOCK_TLS_WRONG_NAME };

/* Starts a loop with a resolver that reads only /etc/hosts (no name server, so no
 * query leaves the machine), and a mock of the given kind. */
static void env_start(struct env *e, enum mock_kind kind)
{
    memset(e, 0, sizeof(*e));
    e->base = event_base_new();
    ck_assert_ptr_nonnull(e->base);
    e->dns = evdns_base_new(e->base, 0);
    ck_assert_ptr_nonnull(e->dns);
    ck_assert_int_eq(evdns_base_load_hosts(e->dns, NULL), 0);

    ck_assert_int_eq(mock_http_certs_create(&e->certs), 0);
    if (kind == MOCK_PLAIN)
        e->mock = mock_http_start(NULL, NULL);
    else if (kind == MOCK_TLS)
        e->mock = mock_http_start(e->certs.cert_file, e->certs.key_file);
    else
        e->mock = mock_http_start(e->certs.wrong_cert_file, e->certs.wrong_key_file);
    ck_assert_ptr_nonnull(e->mock);
}

static void run_for(struct event_base *base, int ms);

/* Lets a canceled DNS lookup report back, which evdns does from the loop, so that
 * freeing the resolver leaks nothing. */
static void drain_loop(struct event_base *base)
{
    run_for(base, 20);
}

static void env_stop(struct env *e)
{
    drain_loop(e->base);
    mock_http_free(e->mock);
    mock_http_certs_free(&e->certs);
    evdns_base_free(e->dns, 0);
    event_base_free(e->base);
}

/* What an sms_send callback reported. */
struct sent {
    int calls;
    bool ok;
    bool in_send;     /* true while sms_send runs */
    bool synchronous; /* the callback ran inside sms_send */
    char reason[256];
};

static void on_sent(void *arg, bool ok, const char *reason)
{
    struct sent *r = arg;

    r->calls++;
    r->ok = ok;
    if (r->in_send)
        r->synchronous = true;
    snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : "");
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(bool *)arg = true;
}

/* Runs the loop until *calls is non-zero or limit_ms passed, so a bug fails the test
 * instead of hanging it. */
static void run_until(struct event_base *base, const int *calls, int limit_ms)
{
    bool expired = false;
    struct event *guard = evtimer_new(base, on_guard, &expired);
    struct timeval tv = {limit_ms / 1000, (limit_ms % 1000) * 1000};

    evtimer_add(guard, &tv);
    while (!expired && (!calls || *calls == 0))
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
}

/* Runs the loop for ms milliseconds whatever happens. */
static void run_for(struct event_base *base, int ms)
{
    run_until(base, NULL, ms);
}

static void send_and_wait(struct sms_sender *s, struct event_base *base, struct sent *r,
                          const char *to, const char *text)
{
    memset(r, 0, sizeof(*r));
    r->in_send = true;
    sms_send(s, "rid-test-0001", to, text, on_sent, r);
    r->in_send = false;
    run_until(base, &r->calls, 15000);
}

static struct sms_config http_config(const char *url)
{
    struct sms_config cfg = {
        .driver = SMS_DRIVER_HTTP,
        .http_url = url,
        .http_token = "tok-123",
        .timeout_ms = 3000,
        .allow_http_loopback = true,
    };

    return cfg;
}

/* A port on 127.0.0.1 with nothing listening: bound, then closed. */
static int closed_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port;

    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Captures what util_log writes to stderr between start and end. */
struct capture {
    int saved_fd;
    char path[64];
};

static void capture_start(struct capture *c)
{
    int fd;

    snprintf(c->path, sizeof(c->path), "/tmp/check_sms_log.XXXXXX");
    fd = mkstemp(c->path);
    ck_assert_int_ge(fd, 0);
    fflush(stderr);
    c->saved_fd = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

static char *capture_end(struct capture *c)
{
    FILE *f;
    char *text = util_calloc(1, 65536);
    size_t n;

    fflush(stderr);
    dup2(c->saved_fd, STDERR_FILENO);
    close(c->saved_fd);
    f = fopen(c->path, "r");
    ck_assert_ptr_nonnull(f);
    n = fread(text, 1, 65535, f);
    text[n] = '\0';
    fclose(f);
    unlink(c->path);
    /* Show the captured lines in the test's own stderr too. */
    fputs(text, stderr);
    return text;
}

/* ---- one-time codes ------------------------------------------------------------------
 */

static bool is_six_digits(const char *code)
{
    if (strlen(code) != 6)
        return false;
    for (int i = 0; i < 6; i++) {
        if (code[i] < '0' || code[i] > '9')
            return false;
    }
    return true;
}

START_TEST(otp_generate_format)
{
    char code[SMS_OTP_DIGITS + 1];

    for (int i = 0; i < 1000; i++) {
        memset(code, 'x', sizeof(code));
        sms_otp_generate(code);
        ck_assert_msg(is_six_digits(code), "code \"%s\" is not six digits", code);
    }
}
END_TEST

START_TEST(otp_generate_keeps_leading_zero)
{
    char code[SMS_OTP_DIGITS + 1];
    bool seen = false;

    /* One code in ten starts with 0; 100,000 tries all missing it has probability
     * 0.9^100000. */
    for (int i = 0; i < 100000 && !seen; i++) {
        sms_otp_generate(code);
        seen = code[0] == '0';
    }
    ck_assert(seen);
    ck_assert_uint_eq(strlen(code), 6);
}
END_TEST

START_TEST(otp_digit_distribution)
{
    enum { CODES = 100000 };
    static int counts[SMS_OTP_DIGITS][10];
    char code[SMS_OTP_DIGITS + 1];

    for (int i = 0; i < CODES; i++) {
        sms_otp_generate(code);
        for (int pos = 0; pos < SMS_OTP_DIGITS; pos++)
            counts[pos][code[pos] - '0']++;
    }
    /* Each count is binomial with mean 10,000 and standard deviation about 95, so
     * +-600 is more than 6 standard deviations: this cannot flake, but a biased or
     * stuck digit fails it. */
    for (int pos = 0; pos < SMS_OTP_DIGITS; pos++) {
        for (int d = 0; d < 10; d++) {
            ck_assert_msg(counts[pos][d] > 9400 && counts[pos][d] < 10600,
                          "digit %d at position %d appeared %d times", d, pos,
                          counts[pos][d]);
        }
    }
}
END_TEST

START_TEST(otp_rejection_sampling_bounds)
{
    char code[SMS_OTP_DIGITS + 1];

    ck_assert_int_eq(sms_otp_from_random(0, code), 0);
    ck_assert_str_eq(code, "000000");
    ck_assert_int_eq(sms_otp_from_random(12345, code), 0);
    ck_assert_str_eq(code, "012345");
    ck_assert_int_eq(sms_otp_from_random(1000000, code), 0);
    ck_assert_str_eq(code, "000000");
    /* 4,294,000,000 = 4294 * 10^6 is the first value of the biased top range. */
    ck_assert_int_eq(sms_otp_from_random(4293999999u, code), 0);
    ck_assert_str_eq(code, "999999");
    ck_assert_int_eq(sms_otp_from_random(4294000000u, code), -1);
    ck_assert_int_eq(sms_otp_from_random(UINT32_MAX, code), -1);
}
END_TEST

START_TEST(otp_verify_right_and_wrong_code)
{
    unsigned char mac[SMS_OTP_HMAC_LEN];

    sms_otp_hmac(secret, sizeof(secret), "binding-a", 1, "012345", mac);
    ck_assert(sms_otp_verify(secret, sizeof(secret), "binding-a", 1, "012345", mac,
                             sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 1, "012346", mac,
                              sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 1, "12345", mac,
                              sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 1, "0123456", mac,
                              sizeof(mac)));
}
END_TEST

/* Codes of the wrong form: sms_otp_well_formed rejects them, and so does
 * sms_otp_verify even against their own HMAC. */
static const char *const malformed_codes[] = {
    "12345",
    "1234567",
    "12345a",
    "a12345",
    " 12345",
    "12345 ",
    "+12345",
    "-12345",
    "12 345",
    "",
    "0x1234",
    "\xef\xbc\x91\xef\xbc\x92"
    "\xef\xbc\x93\xef\xbc\x94"
    "\xef\xbc\x95\xef\xbc\x96",
    "123456\n",
    "12345\xd9",
    "000000000",
};

START_TEST(otp_well_formed_checks_format)
{
    static const char *const good[] = {"000000", "012345", "123456", "999999"};

    for (size_t i = 0; i < ARRAY_LEN(good); i++)
        ck_assert_msg(sms_otp_well_formed(good[i]), "\"%s\" was rejected", good[i]);
    for (size_t i = 0; i < ARRAY_LEN(malformed_codes); i++)
        ck_assert_msg(!sms_otp_well_formed(malformed_codes[i]), "\"%s\" was accepted",
                      malformed_codes[i]);
    ck_assert(!sms_otp_well_formed(NULL));
}
END_TEST

START_TEST(otp_verify_rejects_bad_format)
{
    unsigned char mac[SMS_OTP_HMAC_LEN];

    /* Each string is verified against its own HMAC, so only the format check can
     * reject it. */
    for (size_t i = 0; i < ARRAY_LEN(malformed_codes); i++) {
        const char *code = malformed_codes[i];

        sms_otp_hmac(secret, sizeof(secret), "b", 1, code, mac);
        ck_assert_msg(
            !sms_otp_verify(secret, sizeof(secret), "b", 1, code, mac, sizeof(mac)),
            "\"%s\" was accepted", code);
    }
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "b", 1, NULL, mac, sizeof(mac)));
}
END_TEST

START_TEST(otp_leading_zero_is_significant)
{
    unsigned char mac_short[SMS_OTP_HMAC_LEN], mac_long[SMS_OTP_HMAC_LEN];

    sms_otp_hmac(secret, sizeof(secret), "b", 1, "012345", mac_long);
    sms_otp_hmac(secret, sizeof(secret), "b", 1, "12345", mac_short);
    ck_assert(memcmp(mac_short, mac_long, sizeof(mac_long)) != 0);
    ck_assert(sms_otp_verify(secret, sizeof(secret), "b", 1, "012345", mac_long,
                             sizeof(mac_long)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "b", 1, "12345", mac_long,
                              sizeof(mac_long)));
}
END_TEST

START_TEST(otp_verify_other_binding_generation_secret)
{
    static const unsigned char other_secret[] = "another secret of the same size!";
    unsigned char mac[SMS_OTP_HMAC_LEN];

    sms_otp_hmac(secret, sizeof(secret), "binding-a", 2, "654321", mac);
    ck_assert(sms_otp_verify(secret, sizeof(secret), "binding-a", 2, "654321", mac,
                             sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-b", 2, "654321", mac,
                              sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 1, "654321", mac,
                              sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 3, "654321", mac,
                              sizeof(mac)));
    ck_assert(!sms_otp_verify(other_secret, sizeof(other_secret), "binding-a", 2,
                              "654321", mac, sizeof(mac)));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 2, "654321", mac,
                              sizeof(mac) - 1));
    ck_assert(!sms_otp_verify(secret, sizeof(secret), "binding-a", 2, "654321", NULL,
                              sizeof(mac)));
}
END_TEST

START_TEST(otp_hmac_fields_do_not_run_together)
{
    unsigned char a[SMS_OTP_HMAC_LEN], b[SMS_OTP_HMAC_LEN];

    /* Moving a character between binding and code must change the HMAC. */
    sms_otp_hmac(secret, sizeof(secret), "bind1", 1, "234567", a);
    sms_otp_hmac(secret, sizeof(secret), "bind", 1, "1234567", b);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);

    sms_otp_hmac(secret, sizeof(secret), "bind", 1, "234567", a);
    sms_otp_hmac(secret, sizeof(secret), "bind", 1, "234567", b);
    ck_assert(memcmp(a, b, sizeof(a)) == 0);
}
END_TEST

/* ---- drivers and phone numbers -------------------------------------------------------
 */

START_TEST(driver_parse_names)
{
    enum sms_driver d = SMS_DRIVER_HTTP;

    ck_assert_int_eq(sms_driver_parse("console", &d), 0);
    ck_assert_int_eq(d, SMS_DRIVER_CONSOLE);
    ck_assert_int_eq(sms_driver_parse("http", &d), 0);
    ck_assert_int_eq(d, SMS_DRIVER_HTTP);
    ck_assert_int_eq(sms_driver_parse("twilio", &d), 0);
    ck_assert_int_eq(d, SMS_DRIVER_TWILIO);
    ck_assert_int_eq(sms_driver_parse("Console", &d), -1);
    ck_assert_int_eq(sms_driver_parse("", &d), -1);
    ck_assert_int_eq(sms_driver_parse("twilio ", &d), -1);
    ck_assert_int_eq(sms_driver_parse(NULL, &d), -1);
}
END_TEST

START_TEST(phone_mask_hides_middle)
{
    char out[SMS_PHONE_MASK_LEN];

    sms_phone_mask("+15555550100", out);
    ck_assert_str_eq(out, "+1555***0100");
    sms_phone_mask("+4915112345678", out);
    ck_assert_str_eq(out, "+4915***5678");
    sms_phone_mask("+12345678", out);
    ck_assert_str_eq(out, "+12***78");
    sms_phone_mask("+1234", out);
    ck_assert_str_eq(out, "***");
    sms_phone_mask(NULL, out);
    ck_assert_str_eq(out, "***");
    sms_phone_mask("+123456789012345678901234567890", out);
    ck_assert_str_eq(out, "***");
}
END_TEST

START_TEST(phone_e164_check)
{
    ck_assert(sms_phone_is_e164("+15555550100"));
    ck_assert(sms_phone_is_e164("+12345678"));
    ck_assert(sms_phone_is_e164("+123456789012345"));
    ck_assert(!sms_phone_is_e164("+1234567"));
    ck_assert(!sms_phone_is_e164("+1234567890123456"));
    ck_assert(!sms_phone_is_e164("15555550100"));
    ck_assert(!sms_phone_is_e164("+05555550100"));
    ck_assert(!sms_phone_is_e164("+1555555010a"));
    ck_assert(!sms_phone_is_e164("+1 555 555 0100"));
    ck_assert(!sms_phone_is_e164(""));
    ck_assert(!sms_phone_is_e164(NULL));
}
END_TEST

START_TEST(message_check_rejects_bad_text)
{
    static const char *const bad_utf8[] = {
        "caf\xc3",          /* truncated sequence */
        "\xc3\x28",         /* bad continuation byte */
        "\xc0\xaf",         /* overlong "/" */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xff",
    };
    char err[160];
    char *long_text = util_malloc(1602);

    ck_assert_int_eq(
        sms_message_check(phone, "Code 123456 \xc3\xa9\xe2\x9c\x93", err, sizeof(err)),
        0);
    ck_assert_int_eq(sms_message_check(phone, "", err, sizeof(err)), -1);
    ck_assert_int_eq(sms_message_check(phone, NULL, err, sizeof(err)), -1);
    ck_assert_int_eq(sms_message_check("5555550100", "hi", err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "E.164"));
    for (size_t i = 0; i < ARRAY_LEN(bad_utf8); i++) {
        ck_assert_msg(sms_message_check(phone, bad_utf8[i], err, sizeof(err)) == -1,
                      "invalid UTF-8 case %zu was accepted", i);
    }

    memset(long_text, 'a', 1600);
    long_text[1600] = '\0';
    ck_assert_int_eq(sms_message_check(phone, long_text, err, sizeof(err)), 0);
    long_text[1600] = 'a';
    long_text[1601] = '\0';
    ck_assert_int_eq(sms_message_check(phone, long_text, err, sizeof(err)), -1);
    free(long_text);
}
END_TEST

/* ---- sender configuration ------------------------------------------------------------
 */

START_TEST(sender_new_rejects_bad_config)
{
    struct event_base *base = event_base_new();
    struct evdns_base *dns = evdns_base_new(base, 0);
    struct sms_config twilio = {
        .driver = SMS_DRIVER_TWILIO,
        .twilio_base_url = "https://api.twilio.example",
        .twilio_account_sid = "AC0123",
        .twilio_auth_token = "tok",
        .twilio_from = "+15555550199",
        .timeout_ms = 1000,
    };
    struct {
        const char *name;
        struct sms_config cfg;
        struct evdns_base *dns;
    } cases[] = {
        {"http to a non-loopback address", http_config("http://192.0.2.1/sms"), dns},
        {"http to a public name", http_config("http://sms.example.com/sms"), dns},
        {"http to localhost by name", http_config("http://localhost:8080/sms"), dns},
        {"missing URL", http_config(NULL), dns},
        {"not a URL", http_config("not a url"), dns},
        {"ftp scheme", http_config("ftp://127.0.0.1/sms"), dns},
        {"credentials in the URL", http_config("https://u:p@sms.example.com/"), dns},
        {"port 0", http_config("https://sms.example.com:0/"), dns},
        {"no host", http_config("https:///sms"), dns},
        {"name without resolver", http_config("https://sms.example.com/sms"), NULL},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct sms_sender *s = sms_sender_new(base, cases[i].dns, &cases[i].cfg);

        ck_assert_msg(s == NULL, "accepted: %s", cases[i].name);
    }

    /* http:// to loopback needs allow_http_loopback. */
    {
        struct sms_config cfg = http_config("http://127.0.0.1:8080/sms");

        cfg.allow_http_loopback = false;
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
    }
    /* A missing token, a token that would inject a header, a bad timeout. */
    {
        struct sms_config cfg = http_config("https://sms.example.com/sms");

        cfg.http_token = NULL;
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg.http_token = "tok\r\nX-Injected: 1";
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg.http_token = "tok";
        cfg.timeout_ms = 0;
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg.timeout_ms = 1000;
        cfg.ca_file = "/nonexistent/ca.pem";
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
    }
    /* Twilio needs all four settings. */
    {
        struct sms_config cfg = twilio;

        cfg.twilio_account_sid = NULL;
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg = twilio;
        cfg.twilio_auth_token = "";
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg = twilio;
        cfg.twilio_from = NULL;
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
        cfg = twilio;
        cfg.twilio_base_url = "http://api.twilio.example";
        ck_assert_ptr_null(sms_sender_new(base, dns, &cfg));
    }
    ck_assert_ptr_null(sms_sender_new(base, dns, NULL));

    evdns_base_free(dns, 0);
    event_base_free(base);
}
END_TEST

START_TEST(sender_new_accepts_good_config)
{
    struct event_base *base = event_base_new();
    struct evdns_base *dns = evdns_base_new(base, 0);
    struct sms_config console = {.driver = SMS_DRIVER_CONSOLE};
    struct sms_config loopback = http_config("http://127.0.0.1:8080/sms");
    struct sms_config loopback6 = http_config("http://[::1]:8080/sms");
    struct sms_config https_name = http_config("https://sms.example.com/v1/sms");
    struct sms_config https_ip = http_config("https://192.0.2.1/sms");
    struct sms_sender *s;

    s = sms_sender_new(base, NULL, &console);
    ck_assert_ptr_nonnull(s);
    sms_sender_free(s);
    s = sms_sender_new(base, NULL, &loopback);
    ck_assert_ptr_nonnull(s);
    sms_sender_free(s);
    s = sms_sender_new(base, NULL, &loopback6);
    ck_assert_ptr_nonnull(s);
    sms_sender_free(s);
    s = sms_sender_new(base, dns, &https_name);
    ck_assert_ptr_nonnull(s);
    sms_sender_free(s);
    s = sms_sender_new(base, NULL, &https_ip);
    ck_assert_ptr_nonnull(s);
    sms_sender_free(s);
    sms_sender_free(NULL);

    evdns_base_free(dns, 0);
    event_base_free(base);
}
END_TEST

/* ---- drivers over HTTP ---------------------------------------------------------------
 */

START_TEST(console_driver_logs_message)
{
    struct event_base *base = event_base_new();
    struct sms_config cfg = {.driver = SMS_DRIVER_CONSOLE};
    struct sms_sender *s = sms_sender_new(base, NULL, &cfg);
    struct capture cap = {0};
    struct sent r;
    char *log;

    ck_assert_ptr_nonnull(s);
    capture_start(&cap);
    send_and_wait(s, base, &r, phone, "Your code is 012345");
    log = capture_end(&cap);

    ck_assert_int_eq(r.calls, 1);
    ck_assert(r.ok);
    ck_assert(!r.synchronous);
    ck_assert_ptr_nonnull(strstr(log, "Your code is 012345"));
    ck_assert_ptr_nonnull(strstr(log, "to=+15555550100"));
    ck_assert_ptr_nonnull(strstr(log, "[rid-test-0001]"));
    ck_assert_ptr_nonnull(strstr(log, "sms sent: driver=console"));

    free(log);
    sms_sender_free(s);
    event_base_free(base);
}
END_TEST

START_TEST(console_driver_rejects_bad_number)
{
    struct event_base *base = event_base_new();
    struct sms_config cfg = {.driver = SMS_DRIVER_CONSOLE};
    struct sms_sender *s = sms_sender_new(base, NULL, &cfg);
    struct sent r;

    send_and_wait(s, base, &r, "5555550100", "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert(!r.synchronous);
    ck_assert_ptr_nonnull(strstr(r.reason, "E.164"));

    sms_sender_free(s);
    event_base_free(base);
}
END_TEST

START_TEST(http_driver_posts_json)
{
    static const char text[] = "Code 012345 for \"Agent\" \\ ok\n\xc3\xa9\xe2\x9c\x93";
    struct env e;
    char *url;
    struct sms_config cfg;
    struct sms_sender *s;
    struct sent r;
    const struct mock_http_request *req;
    json_t *doc;
    json_error_t jerr;

    env_start(&e, MOCK_PLAIN);
    url = mock_http_url(e.mock, "127.0.0.1", "/v1/sms?tenant=a");
    cfg = http_config(url);
    s = sms_sender_new(e.base, e.dns, &cfg);
    ck_assert_ptr_nonnull(s);

    send_and_wait(s, e.base, &r, phone, text);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert(!r.synchronous);

    ck_assert_uint_eq(mock_http_count(e.mock), 1);
    req = mock_http_request_get(e.mock, 0);
    ck_assert_str_eq(req->method, "POST");
    ck_assert_str_eq(req->uri, "/v1/sms?tenant=a");
    ck_assert_uint_eq(mock_http_header_count(req, "Authorization"), 1);
    ck_assert_str_eq(mock_http_header(req, "Authorization"), "Bearer tok-123");
    ck_assert_str_eq(mock_http_header(req, "Content-Type"), "application/json");
    ck_assert_uint_eq(mock_http_header_count(req, "Host"), 1);

    doc = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(doc != NULL, "body is not JSON: %s", jerr.text);
    ck_assert(json_is_object(doc));
    ck_assert_uint_eq(json_object_size(doc), 2);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "to")), phone);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "text")), text);
    json_decref(doc);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

/* Splits a form body into fields, decoding each value; checks each name appears once. */
static void form_field(const char *body, const char *name, char **value_out)
{
    char *copy = util_strdup(body), *save = NULL;
    int seen = 0;

    *value_out = NULL;
    for (char *pair = strtok_r(copy, "&", &save); pair;
         pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        size_t len;

        ck_assert_ptr_nonnull(eq);
        *eq = '\0';
        if (strcmp(pair, name) != 0)
            continue;
        seen++;
        free(*value_out);
        *value_out = evhttp_uridecode(eq + 1, 1, &len);
        ck_assert_uint_eq(strlen(*value_out), len);
    }
    free(copy);
    ck_assert_msg(seen == 1, "form field %s appears %d times", name, seen);
}

static size_t form_field_count(const char *body)
{
    size_t n = 1;

    for (const char *p = body; *p; p++)
        n += *p == '&';
    return n;
}

START_TEST(twilio_driver_posts_form)
{
    static const char text[] = "Code 012345 & a=b + c% \xc3\xbcn\xc3\xaf\xe2\x9c\x93 ok";
    struct env e;
    char *base_url;
    struct sms_config cfg = {
        .driver = SMS_DRIVER_TWILIO,
        .twilio_account_sid = "AC0123abc",
        .twilio_auth_token = "auth-tok",
        .twilio_from = "+15555550199",
        .timeout_ms = 3000,
        .allow_http_loopback = true,
    };
    struct sms_sender *s;
    struct sent r;
    const struct mock_http_request *req;
    const char *auth;
    char decoded[128], *value;
    size_t decoded_len = sizeof(decoded) - 1;

    env_start(&e, MOCK_PLAIN);
    base_url = mock_http_url(e.mock, "127.0.0.1", "/");
    cfg.twilio_base_url = base_url;
    mock_http_set_default(e.mock, 201, "{\"sid\":\"SM1\"}");
    s = sms_sender_new(e.base, e.dns, &cfg);
    ck_assert_ptr_nonnull(s);

    send_and_wait(s, e.base, &r, phone, text);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 1);
    req = mock_http_request_get(e.mock, 0);
    ck_assert_str_eq(req->method, "POST");
    ck_assert_str_eq(req->uri, "/2010-04-01/Accounts/AC0123abc/Messages.json");
    ck_assert_str_eq(mock_http_header(req, "Content-Type"),
                     "application/x-www-form-urlencoded");

    auth = mock_http_header(req, "Authorization");
    ck_assert_ptr_nonnull(auth);
    ck_assert_uint_eq(mock_http_header_count(req, "Authorization"), 1);
    ck_assert_int_eq(strncmp(auth, "Basic ", 6), 0);
    ck_assert_int_eq(util_b64_decode(auth + 6, strlen(auth + 6), decoded, &decoded_len),
                     0);
    decoded[decoded_len] = '\0';
    ck_assert_str_eq(decoded, "AC0123abc:auth-tok");

    ck_assert_uint_eq(form_field_count(req->body), 3);
    form_field(req->body, "To", &value);
    ck_assert_str_eq(value, phone);
    free(value);
    form_field(req->body, "From", &value);
    ck_assert_str_eq(value, "+15555550199");
    free(value);
    form_field(req->body, "Body", &value);
    ck_assert_str_eq(value, text);
    free(value);

    sms_sender_free(s);
    free(base_url);
    env_stop(&e);
}
END_TEST

/* Starts a plain mock and an http-driver sender pointing at it. */
static struct sms_sender *http_sender(struct env *e, int timeout_ms, char **url)
{
    struct sms_config cfg;
    struct sms_sender *s;

    env_start(e, MOCK_PLAIN);
    *url = mock_http_url(e->mock, "127.0.0.1", "/sms");
    cfg = http_config(*url);
    cfg.timeout_ms = timeout_ms;
    s = sms_sender_new(e->base, e->dns, &cfg);
    ck_assert_ptr_nonnull(s);
    return s;
}

START_TEST(parallel_sends_complete)
{
    enum { SENDS = 5 };
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r[SENDS];
    int total = 0;
    int64_t deadline;

    memset(r, 0, sizeof(r));
    mock_http_push(e.mock, 200, "{}", 300);
    for (int i = 0; i < SENDS; i++)
        sms_send(s, "rid-parallel", phone, "text", on_sent, &r[i]);

    deadline = util_mono_ms() + 10000;
    while (total < SENDS && util_mono_ms() < deadline) {
        run_for(e.base, 50);
        total = 0;
        for (int i = 0; i < SENDS; i++)
            total += r[i].calls;
    }
    for (int i = 0; i < SENDS; i++) {
        ck_assert_int_eq(r[i].calls, 1);
        ck_assert_msg(r[i].ok, "send %d failed: %s", i, r[i].reason);
    }
    ck_assert_uint_eq(mock_http_count(e.mock), SENDS);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(retry_after_500_then_success)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    mock_http_push(e.mock, 500, "{\"error\":\"busy\"}", 0);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 2);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(retry_only_once_after_5xx)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    mock_http_push(e.mock, 503, NULL, 0);
    mock_http_push(e.mock, 502, NULL, 0);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "HTTP 502"));
    run_for(e.base, 400);
    ck_assert_uint_eq(mock_http_count(e.mock), 2);
    ck_assert_int_eq(r.calls, 1);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(no_retry_after_400)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    mock_http_push(e.mock, 400, "{\"error\":\"bad number\"}", 0);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "HTTP 400"));
    run_for(e.base, 400);
    ck_assert_uint_eq(mock_http_count(e.mock), 1);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(timeout_then_retry_succeeds)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 300, &url);
    struct sent r;
    int64_t started = util_mono_ms();

    mock_http_push(e.mock, 200, "{}", 3000);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 2);
    ck_assert_int_lt(util_mono_ms() - started, 2500);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(timeout_twice_fails)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 300, &url);
    struct sent r;

    mock_http_push(e.mock, 200, "{}", 3000);
    mock_http_push(e.mock, 200, "{}", 3000);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "timed out"));
    ck_assert_uint_eq(mock_http_count(e.mock), 2);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(gateway_down_fails_once)
{
    struct event_base *base = event_base_new();
    char *url = util_asprintf("http://127.0.0.1:%d/sms", closed_port());
    struct sms_config cfg = http_config(url);
    struct sms_sender *s = sms_sender_new(base, NULL, &cfg);
    struct sent r;

    ck_assert_ptr_nonnull(s);
    send_and_wait(s, base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert(!r.synchronous);
    ck_assert_ptr_nonnull(strstr(r.reason, "connection"));
    run_for(base, 500);
    ck_assert_int_eq(r.calls, 1);

    sms_sender_free(s);
    free(url);
    event_base_free(base);
}
END_TEST

START_TEST(dropped_connection_then_retry)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    mock_http_push(e.mock, MOCK_HTTP_CLOSE, NULL, 0);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 2);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(redirect_not_followed)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    char *target = mock_http_url(e.mock, "127.0.0.1", "/elsewhere");
    struct mock_http_reply redirect = {.status = 302, .location = target};
    struct sent r;

    mock_http_push_reply(e.mock, &redirect);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "HTTP 302"));
    ck_assert_ptr_nonnull(strstr(r.reason, "redirect"));
    run_for(e.base, 400);
    ck_assert_uint_eq(mock_http_count(e.mock), 1);
    ck_assert_str_eq(mock_http_request_get(e.mock, 0)->path, "/sms");

    sms_sender_free(s);
    free(target);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(oversized_response_fails)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    char *big = util_malloc(UTIL_HTTP_MAX_RESPONSE_BODY + 2);
    struct sent r;

    memset(big, 'x', UTIL_HTTP_MAX_RESPONSE_BODY + 1);
    big[UTIL_HTTP_MAX_RESPONSE_BODY + 1] = '\0';
    mock_http_push(e.mock, 200, big, 0);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "limit"));
    ck_assert_uint_eq(mock_http_count(e.mock), 1);

    sms_sender_free(s);
    free(big);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(bad_message_sends_nothing)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    send_and_wait(s, e.base, &r, "+1555", "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert(!r.synchronous);
    send_and_wait(s, e.base, &r, phone, "bad \xc3\x28 utf-8");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "UTF-8"));
    send_and_wait(s, e.base, &r, phone, NULL);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_uint_eq(mock_http_count(e.mock), 0);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(unresolvable_name_fails)
{
    struct event_base *base = event_base_new();
    struct evdns_base *dns = evdns_base_new(base, 0); /* no name server at all */
    struct sms_config cfg = http_config("https://sms.example.invalid/sms");
    struct sms_sender *s;
    struct sent r;
    int64_t started;

    /* With no name server the lookup never completes, so the attempt deadline ends
     * it. A resolver that returns NXDOMAIN ends it sooner, as a connection failure. */
    cfg.timeout_ms = 300;
    s = sms_sender_new(base, dns, &cfg);
    ck_assert_ptr_nonnull(s);
    started = util_mono_ms();
    send_and_wait(s, base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert(!r.synchronous);
    ck_assert_msg(strstr(r.reason, "timed out") || strstr(r.reason, "connection"),
                  "reason: %s", r.reason);
    ck_assert_int_lt(util_mono_ms() - started, 3000);

    sms_sender_free(s);
    drain_loop(base);
    evdns_base_free(dns, 0);
    event_base_free(base);
}
END_TEST

START_TEST(sender_free_ends_pending_send)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 5000, &url);
    struct sent r = {0};

    mock_http_push(e.mock, 200, "{}", 3000);
    sms_send(s, "rid-free", phone, "text", on_sent, &r);
    run_for(e.base, 300);
    ck_assert_int_eq(mock_http_wait(e.mock, 1, 2000), 0);
    ck_assert_int_eq(r.calls, 0);

    sms_sender_free(s);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_ptr_nonnull(strstr(r.reason, "freed"));
    run_for(e.base, 200);
    ck_assert_int_eq(r.calls, 1);

    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(log_masks_number_and_secrets)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct capture cap = {0};
    struct sent r;
    char *log;

    mock_http_push(e.mock, 500, NULL, 0);
    capture_start(&cap);
    send_and_wait(s, e.base, &r, phone, "Your code is 987654");
    log = capture_end(&cap);
    ck_assert(r.ok);

    ck_assert_ptr_nonnull(strstr(log, "[rid-test-0001]"));
    ck_assert_ptr_nonnull(strstr(log, "to=+1555***0100"));
    ck_assert_ptr_nonnull(strstr(log, "driver=http status=200 attempts=2 elapsed_ms="));
    ck_assert_ptr_nonnull(strstr(log, "retrying"));
    ck_assert_ptr_null(strstr(log, "+15555550100"));
    ck_assert_ptr_null(strstr(log, "987654"));
    ck_assert_ptr_null(strstr(log, "tok-123"));
    ck_assert_ptr_null(strstr(log, "Your code"));

    free(log);
    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

/* ---- HTTPS ---------------------------------------------------------------------------
 */

/* Sends one message over HTTPS to the mock as host, trusting ca_file. */
static void https_send(struct env *e, const char *host, const char *ca_file,
                       struct sent *r)
{
    char *url = mock_http_url(e->mock, host, "/sms");
    struct sms_config cfg = http_config(url);
    struct sms_sender *s;

    cfg.ca_file = ca_file;
    cfg.allow_http_loopback = false;
    s = sms_sender_new(e->base, e->dns, &cfg);
    ck_assert_ptr_nonnull(s);
    send_and_wait(s, e->base, r, phone, "text");
    run_for(e->base, 300); /* a second callback or a retry would show up here */
    sms_sender_free(s);
    free(url);
}

START_TEST(https_right_ca_succeeds)
{
    struct env e;
    struct sent r;

    env_start(&e, MOCK_TLS);
    https_send(&e, "127.0.0.1", e.certs.ca_file, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 1);
    /* No SNI for an IP address. */
    ck_assert_ptr_null(mock_http_request_get(e.mock, 0)->tls_server_name);
    env_stop(&e);
}
END_TEST

START_TEST(https_name_sends_sni)
{
    struct env e;
    struct sent r;

    env_start(&e, MOCK_TLS);
    https_send(&e, "localhost", e.certs.ca_file, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 1);
    ck_assert_str_eq(mock_http_request_get(e.mock, 0)->tls_server_name, "localhost");
    env_stop(&e);
}
END_TEST

START_TEST(https_wrong_name_fails)
{
    struct env e;
    struct sent r;

    env_start(&e, MOCK_TLS_WRONG_NAME);
    https_send(&e, "localhost", e.certs.ca_file, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_msg(strstr(r.reason, "hostname mismatch") != NULL, "reason: %s", r.reason);

    https_send(&e, "127.0.0.1", e.certs.ca_file, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_msg(strstr(r.reason, "IP address mismatch") != NULL, "reason: %s",
                  r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 0);
    env_stop(&e);
}
END_TEST

START_TEST(https_unknown_ca_fails)
{
    struct env e;
    struct sent r;

    env_start(&e, MOCK_TLS);
    https_send(&e, "localhost", e.certs.other_ca_file, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_msg(strstr(r.reason, "certificate verification failed") != NULL,
                  "reason: %s", r.reason);

    /* The system store does not know the throwaway CA either. */
    https_send(&e, "localhost", NULL, &r);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);
    ck_assert_msg(strstr(r.reason, "certificate verification failed") != NULL,
                  "reason: %s", r.reason);
    ck_assert_uint_eq(mock_http_count(e.mock), 0);
    env_stop(&e);
}
END_TEST

START_TEST(https_to_plain_server_fails)
{
    struct env e;
    char *plain, *url;
    struct sms_config cfg;
    struct sms_sender *s;
    struct sent r;

    env_start(&e, MOCK_PLAIN);
    plain = mock_http_url(e.mock, "127.0.0.1", "/sms");
    url = util_asprintf("https%s", plain + 4);
    cfg = http_config(url);
    cfg.ca_file = e.certs.ca_file;
    cfg.timeout_ms = 2000;
    s = sms_sender_new(e.base, e.dns, &cfg);
    ck_assert_ptr_nonnull(s);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_int_eq(r.calls, 1);
    ck_assert(!r.ok);

    sms_sender_free(s);
    free(url);
    free(plain);
    env_stop(&e);
}
END_TEST

/* ---- the HTTP client itself ----------------------------------------------------------
 */

struct http_result {
    int calls;
    enum util_http_error error;
    int status;
    bool reused;
    bool partial;
    char body[64];
};

static void on_http_done(void *arg, const struct util_http_response *res)
{
    struct http_result *r = arg;

    r->calls++;
    r->error = res->error;
    r->status = res->status;
    r->reused = res->reused;
    r->partial = res->partial;
    snprintf(r->body, sizeof(r->body), "%s", res->body);
}

START_TEST(http_client_get_with_headers)
{
    struct env e;
    char *url;
    const struct util_http_header headers[] = {{"X-Test", "value 1"}};
    struct util_http_request req = {
        .method = EVHTTP_REQ_GET,
        .headers = headers,
        .header_count = 1,
        .timeout_ms = 3000,
        .allow_http_loopback = true,
    };
    struct http_result r = {0};
    const struct mock_http_request *seen;

    env_start(&e, MOCK_PLAIN);
    url = mock_http_url(e.mock, "127.0.0.1", "/ping?x=1");
    req.url = url;
    mock_http_push(e.mock, 201, "hello", 0);
    ck_assert_ptr_nonnull(util_http_send(e.base, NULL, NULL, &req, on_http_done, &r));
    ck_assert_int_eq(r.calls, 0);
    run_until(e.base, &r.calls, 5000);

    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.error, UTIL_HTTP_OK);
    ck_assert_int_eq(r.status, 201);
    ck_assert_str_eq(r.body, "hello");
    seen = mock_http_request_get(e.mock, 0);
    ck_assert_str_eq(seen->method, "GET");
    ck_assert_str_eq(seen->uri, "/ping?x=1");
    ck_assert_str_eq(mock_http_header(seen, "X-Test"), "value 1");

    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(http_client_rejects_bad_headers)
{
    struct event_base *base = event_base_new();
    struct util_http_header headers[1];
    struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .url = "http://127.0.0.1:9/x",
        .headers = headers,
        .header_count = 1,
        .timeout_ms = 1000,
        .allow_http_loopback = true,
    };
    static const struct util_http_header bad[] = {
        {"X-Test", "a\r\nX-Injected: 1"},
        {"X-Test", "a\r\n b"},
        {"X Test", "a"},
        {"", "a"},
        {"Host", "evil.example"},
        {"content-length", "5"},
    };
    struct http_result r = {0};

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        headers[0] = bad[i];
        ck_assert_msg(util_http_send(base, NULL, NULL, &req, on_http_done, &r) == NULL,
                      "header case %zu was accepted", i);
    }
    /* An https URL needs a TLS context; an http URL needs allow_http_loopback. */
    req.header_count = 0;
    req.url = "https://127.0.0.1:9/x";
    ck_assert_ptr_null(util_http_send(base, NULL, NULL, &req, on_http_done, &r));
    req.url = "http://127.0.0.1:9/x";
    req.allow_http_loopback = false;
    ck_assert_ptr_null(util_http_send(base, NULL, NULL, &req, on_http_done, &r));
    run_for(base, 100);
    ck_assert_int_eq(r.calls, 0);
    event_base_free(base);
}
END_TEST

START_TEST(http_client_cancel_skips_callback)
{
    struct env e;
    char *url;
    struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .body = "{}",
        .body_len = 2,
        .timeout_ms = 3000,
        .allow_http_loopback = true,
    };
    struct http_result r = {0};
    struct util_http_call *call;

    env_start(&e, MOCK_PLAIN);
    url = mock_http_url(e.mock, "127.0.0.1", "/slow");
    req.url = url;
    mock_http_push(e.mock, 200, "{}", 1000);
    call = util_http_send(e.base, NULL, NULL, &req, on_http_done, &r);
    ck_assert_ptr_nonnull(call);
    run_for(e.base, 200);
    ck_assert_int_eq(mock_http_wait(e.mock, 1, 2000), 0);
    util_http_cancel(call);
    run_for(e.base, 1300);
    ck_assert_int_eq(r.calls, 0);
    ck_assert_str_eq(mock_http_request_get(e.mock, 0)->body, "{}");

    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(http_client_url_check)
{
    char err[160];

    ck_assert_int_eq(util_http_url_check("https://a.example/x", false, true, err, 160),
                     0);
    ck_assert_int_eq(
        util_http_url_check("https://[2001:db8::1]:8443/", false, false, err, 160), 0);
    ck_assert_int_eq(util_http_url_check("http://127.0.0.2:80/", true, false, err, 160),
                     0);
    ck_assert_int_eq(util_http_url_check("http://[::1]/", true, false, err, 160), 0);
    ck_assert_int_eq(util_http_url_check("http://[::2]/", true, false, err, 160), -1);
    ck_assert_int_eq(util_http_url_check("http://10.0.0.1/", true, false, err, 160), -1);
    ck_assert_int_eq(util_http_url_check("https://a_b.example/", false, true, err, 160),
                     -1);
    ck_assert_int_eq(util_http_url_check("https://a.example/", false, false, err, 160),
                     -1);
    ck_assert_int_eq(util_http_url_check("//a.example/", false, true, err, 160), -1);
    ck_assert_int_eq(util_http_url_check(NULL, false, true, err, 160), -1);
}
END_TEST

/* ---- the connection pool -------------------------------------------------------------
 */

/* A pool test: the env, a pool on its loop, and a plain or TLS URL of the mock. */
struct pool_env {
    struct env e;
    struct util_http_pool *pool;
    SSL_CTX *tls; /* NULL for the plain mock */
    char *url;
};

static void pool_env_start(struct pool_env *p, enum mock_kind kind, size_t max_idle,
                           int idle_ms)
{
    env_start(&p->e, kind);
    p->pool = util_http_pool_new(p->e.base, max_idle, idle_ms);
    ck_assert_ptr_nonnull(p->pool);
    if (kind == MOCK_PLAIN) {
        p->tls = NULL;
        p->url = mock_http_url(p->e.mock, "127.0.0.1", "/send");
    } else {
        p->tls = util_http_tls_ctx_new(p->e.certs.ca_file);
        ck_assert_ptr_nonnull(p->tls);
        p->url = mock_http_url(p->e.mock, "localhost", "/send");
    }
}

static void pool_env_stop(struct pool_env *p)
{
    util_http_pool_free(p->pool);
    SSL_CTX_free(p->tls);
    free(p->url);
    env_stop(&p->e);
}

/* Starts one POST through the pool; the result lands in r. */
static struct util_http_call *pool_start(struct pool_env *p, struct http_result *r,
                                         int timeout_ms)
{
    const struct util_http_request req = {
        .method = EVHTTP_REQ_POST,
        .url = p->url,
        .body = "{}",
        .body_len = 2,
        .timeout_ms = timeout_ms,
        .allow_http_loopback = true,
        .pool = p->pool,
    };
    struct util_http_call *call;

    memset(r, 0, sizeof(*r));
    call = util_http_send(p->e.base, p->e.dns, p->tls, &req, on_http_done, r);
    ck_assert_ptr_nonnull(call);
    return call;
}

/* Sends one POST through the pool and waits for its result. */
static void pool_send(struct pool_env *p, struct http_result *r, int timeout_ms)
{
    pool_start(p, r, timeout_ms);
    run_until(p->e.base, &r->calls, 10000);
    ck_assert_int_eq(r->calls, 1);
}

static void assert_ok(const struct http_result *r)
{
    ck_assert_int_eq(r->error, UTIL_HTTP_OK);
    ck_assert_int_eq(r->status, 200);
}

START_TEST(pool_reuses_connection)
{
    struct pool_env p;
    struct http_result r;
    struct util_http_request one_shot = {
        .method = EVHTTP_REQ_GET,
        .timeout_ms = 3000,
        .allow_http_loopback = true,
    };

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    for (int i = 0; i < 2; i++) {
        pool_send(&p, &r, 3000);
        assert_ok(&r);
        ck_assert(r.reused);
    }
    ck_assert_uint_eq(mock_http_count(p.e.mock), 3);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 1);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    for (size_t i = 0; i < 3; i++) {
        const struct mock_http_request *seen = mock_http_request_get(p.e.mock, i);

        ck_assert_ptr_null(mock_http_header(seen, "Connection"));
        ck_assert_str_eq(seen->body, "{}");
    }

    /* Without a pool: Connection: close over a connection of its own. */
    one_shot.url = p.url;
    memset(&r, 0, sizeof(r));
    ck_assert_ptr_nonnull(
        util_http_send(p.e.base, NULL, NULL, &one_shot, on_http_done, &r));
    run_until(p.e.base, &r.calls, 5000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_str_eq(mock_http_header(mock_http_request_get(p.e.mock, 3), "Connection"),
                     "close");
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 2);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    pool_env_stop(&p);
}
END_TEST

START_TEST(pool_connection_close_reply)
{
    struct pool_env p;
    struct http_result r;
    const struct mock_http_reply closing = {.status = 200, .close_connection = true};

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    mock_http_push_reply(p.e.mock, &closing);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);

    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(r.reused);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 2);
    pool_env_stop(&p);
}
END_TEST

/* The server closes idle connections after 200 ms. Once the loop has seen the close,
 * and also when it has not run since, the next request gets a new connection. */
static void check_server_closes_idle(enum mock_kind kind)
{
    struct pool_env p;
    struct http_result r;

    pool_env_start(&p, kind, 4, 5000);
    mock_http_set_idle_timeout(p.e.mock, 200);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    run_for(p.e.base, 700);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);

    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    usleep(700 * 1000); /* the loop does not run, so no close callback either */
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_uint_eq(mock_http_count(p.e.mock), 3);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 3);
    pool_env_stop(&p);
}

START_TEST(pool_server_closes_idle)
{
    check_server_closes_idle(MOCK_PLAIN);
}
END_TEST

START_TEST(pool_https_server_closes_idle)
{
    check_server_closes_idle(MOCK_TLS);
}
END_TEST

START_TEST(pool_idle_expiry)
{
    struct pool_env p;
    struct http_result r;

    pool_env_start(&p, MOCK_PLAIN, 4, 150);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 1);
    /* With the loop running, libevent closes the connection after idle_ms. */
    run_for(p.e.base, 500);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);

    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(r.reused);

    /* Without the loop running, the age check at reuse rejects it. */
    usleep(300 * 1000);
    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 3);
    pool_env_stop(&p);
}
END_TEST

/* Runs n requests at once, each replied to after 200 ms, and returns how many of them
 * reused a connection. */
static int pool_send_parallel(struct pool_env *p, int n)
{
    struct http_result r[8];
    int done = 0, reused = 0;
    int64_t deadline = util_mono_ms() + 10000;

    ck_assert_int_le(n, 8);
    for (int i = 0; i < n; i++)
        mock_http_push(p->e.mock, 200, "{}", 200);
    for (int i = 0; i < n; i++)
        pool_start(p, &r[i], 3000);
    while (done < n && util_mono_ms() < deadline) {
        run_for(p->e.base, 20);
        done = 0;
        for (int i = 0; i < n; i++)
            done += r[i].calls;
    }
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(r[i].calls, 1);
        assert_ok(&r[i]);
        reused += r[i].reused;
    }
    return reused;
}

START_TEST(pool_max_idle_bound)
{
    struct pool_env p;

    pool_env_start(&p, MOCK_PLAIN, 2, 5000);
    ck_assert_int_eq(pool_send_parallel(&p, 4), 0);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 4);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 2);

    ck_assert_int_eq(pool_send_parallel(&p, 4), 2);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 6);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 2);
    pool_env_stop(&p);
}
END_TEST

START_TEST(pool_timeout_frees_connection)
{
    struct pool_env p;
    struct http_result r;

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    pool_send(&p, &r, 3000);
    assert_ok(&r);

    mock_http_push(p.e.mock, 200, "{}", 1500);
    pool_send(&p, &r, 300);
    ck_assert_int_eq(r.error, UTIL_HTTP_ERR_TIMEOUT);
    ck_assert(r.reused);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);

    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 2);
    pool_env_stop(&p);
}
END_TEST

START_TEST(pool_cancel_frees_connection)
{
    struct pool_env p;
    struct http_result r, canceled;
    struct util_http_call *call;

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    pool_send(&p, &r, 3000);
    assert_ok(&r);

    mock_http_push(p.e.mock, 200, "{}", 1000);
    call = pool_start(&p, &canceled, 3000);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);
    run_for(p.e.base, 100);
    ck_assert_int_eq(mock_http_wait(p.e.mock, 2, 2000), 0);
    util_http_cancel(call);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), 0);

    pool_send(&p, &r, 3000);
    assert_ok(&r);
    ck_assert(!r.reused);
    run_for(p.e.base, 1200);
    ck_assert_int_eq(canceled.calls, 0);
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 2);
    pool_env_stop(&p);
}
END_TEST

START_TEST(pool_https_reuses_connection)
{
    struct pool_env p;
    struct http_result r;

    pool_env_start(&p, MOCK_TLS, 4, 5000);
    for (int i = 0; i < 3; i++) {
        pool_send(&p, &r, 3000);
        assert_ok(&r);
        ck_assert(r.reused == (i > 0));
    }
    ck_assert_uint_eq(mock_http_connection_count(p.e.mock), 1);
    for (size_t i = 0; i < 3; i++)
        ck_assert_str_eq(mock_http_request_get(p.e.mock, i)->tls_server_name,
                         "localhost");
    pool_env_stop(&p);
}
END_TEST

START_TEST(pool_free_with_call_running)
{
    struct pool_env p;
    struct http_result r, r2;

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    pool_send(&p, &r, 3000);
    mock_http_push(p.e.mock, 200, "{}", 200);
    pool_start(&p, &r, 3000);
    pool_start(&p, &r2, 3000);
    util_http_pool_free(p.pool);
    p.pool = NULL;
    run_until(p.e.base, &r.calls, 5000);
    run_until(p.e.base, &r2.calls, 5000);
    ck_assert_int_eq(r.calls, 1);
    assert_ok(&r);
    ck_assert_int_eq(r2.calls, 1);
    assert_ok(&r2);
    pool_env_stop(&p);
}
END_TEST

/* A raw HTTP server on 127.0.0.1 for replies evhttp's server does not send (HTTP/1.0).
 * Its thread replies to every request with the same response, leaves each connection
 * open, and counts accepted connections and requests. */
struct raw_server {
    int listen_fd;
    int port;
    const char *response;
    bool close_after; /* close each connection after its first response */
    atomic_bool stop;
    atomic_int connections;
    atomic_int requests;
    pthread_t thread;
};

enum { RAW_MAX_CLIENTS = 8 };

/* Reads what arrived on fd and replies to each complete request (headers ending in a
 * blank line and the 2-byte body the pool tests send). Returns -1 once the client closed.
 */
static int raw_serve_client(struct raw_server *srv, int fd, char *buf, size_t *len)
{
    ssize_t n = read(fd, buf + *len, 4095 - *len);
    char *end;

    if (n <= 0)
        return -1;
    *len += (size_t)n;
    buf[*len] = '\0';
    while ((end = strstr(buf, "\r\n\r\n")) != NULL && (size_t)(end + 6 - buf) <= *len) {
        size_t used = (size_t)(end + 6 - buf);

        atomic_fetch_add(&srv->requests, 1);
        ck_assert_int_eq(write(fd, srv->response, strlen(srv->response)),
                         (ssize_t)strlen(srv->response));
        if (srv->close_after)
            return -1;
        memmove(buf, buf + used, *len - used);
        *len -= used;
        buf[*len] = '\0';
    }
    return 0;
}

static void *raw_server_main(void *arg)
{
    struct raw_server *srv = arg;
    struct pollfd fds[1 + RAW_MAX_CLIENTS];
    char bufs[RAW_MAX_CLIENTS][4096];
    size_t lens[RAW_MAX_CLIENTS] = {0};
    int nfds = 1;

    fds[0] = (struct pollfd){.fd = srv->listen_fd, .events = POLLIN};
    while (!atomic_load(&srv->stop)) {
        if (poll(fds, (nfds_t)nfds, 20) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && nfds < 1 + RAW_MAX_CLIENTS) {
            int fd = accept(srv->listen_fd, NULL, NULL);

            if (fd >= 0) {
                atomic_fetch_add(&srv->connections, 1);
                lens[nfds - 1] = 0;
                fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
            }
        }
        for (int i = 1; i < nfds; i++) {
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                raw_serve_client(srv, fds[i].fd, bufs[i - 1], &lens[i - 1]) != 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
    }
    for (int i = 1; i < nfds; i++) {
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    }
    return NULL;
}

static void raw_server_start(struct raw_server *srv, const char *response)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);

    bool close_after = srv->close_after; /* the one setting a caller may preset */

    memset(srv, 0, sizeof(*srv));
    srv->close_after = close_after;
    srv->response = response;
    srv->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(srv->listen_fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(srv->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(srv->listen_fd, 16), 0);
    ck_assert_int_eq(getsockname(srv->listen_fd, (struct sockaddr *)&sa, &len), 0);
    srv->port = ntohs(sa.sin_port);
    ck_assert_int_eq(pthread_create(&srv->thread, NULL, raw_server_main, srv), 0);
}

static void raw_server_stop(struct raw_server *srv)
{
    atomic_store(&srv->stop, true);
    pthread_join(srv->thread, NULL);
    close(srv->listen_fd);
}

/* Sends two POSTs through a pool to a raw server that replies with response, and
 * returns how many connections the server accepted. */
static int raw_send_twice(const char *response)
{
    struct pool_env p;
    struct raw_server srv = {0};
    struct http_result r;
    int connections;

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    raw_server_start(&srv, response);
    free(p.url);
    p.url = util_asprintf("http://127.0.0.1:%d/send", srv.port);
    for (int i = 0; i < 2; i++) {
        pool_send(&p, &r, 3000);
        assert_ok(&r);
    }
    ck_assert_int_eq(atomic_load(&srv.requests), 2);
    connections = atomic_load(&srv.connections);
    ck_assert_uint_eq(util_http_pool_idle_count(p.pool), connections == 1 ? 1 : 0);
    raw_server_stop(&srv);
    pool_env_stop(&p);
    return connections;
}

START_TEST(pool_http10_reuse_rules)
{
    /* HTTP/1.0 closes after each response unless the server sends keep-alive. */
    ck_assert_int_eq(raw_send_twice("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"), 2);
    ck_assert_int_eq(raw_send_twice("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n"
                                    "Content-Length: 2\r\n\r\n{}"),
                     1);
    /* HTTP/1.1 keeps it open unless the server sends close, in any letter case. */
    ck_assert_int_eq(raw_send_twice("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), 1);
    ck_assert_int_eq(raw_send_twice("HTTP/1.1 200 OK\r\nConnection: x-other, CLOSE\r\n"
                                    "Content-Length: 2\r\n\r\n{}"),
                     2);
    ck_assert_int_eq(raw_send_twice("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                    "\r\n2\r\n{}\r\n0\r\n\r\n"),
                     1);
}
END_TEST

/* ---- bytes after a response never become the next request's response -------------- */

/* Sends count POSTs through a new pool to a raw server that replies to every request
 * with response, and stores each result in r[]. */
static void raw_send_n(const char *response, struct http_result *r, int count)
{
    struct pool_env p;
    struct raw_server srv = {0};

    pool_env_start(&p, MOCK_PLAIN, 4, 5000);
    raw_server_start(&srv, response);
    free(p.url);
    p.url = util_asprintf("http://127.0.0.1:%d/send", srv.port);
    for (int i = 0; i < count; i++)
        pool_send(&p, &r[i], 3000);
    raw_server_stop(&srv);
    pool_env_stop(&p);
}

/* Bytes that follow a complete response in the same read stay in the connection's input
 * buffer while the socket itself is not readable. They are no response of their own
 * (RFC 9112 section 6.3), so the connection must not be pooled: here the server replies
 * 503 to each request and appends a forged 200, and the second request must get its own
 * 503. */
START_TEST(pool_leftover_bytes_not_next_response)
{
    struct http_result r[2];

    raw_send_n("HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
               "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
               r, 2);
    ck_assert_int_eq(r[0].status, 503);
    ck_assert_int_eq(r[1].error, UTIL_HTTP_OK);
    ck_assert_int_eq(r[1].status, 503);
}
END_TEST

/* One stray CRLF after a body of known length, a body longer than Content-Length, or a
 * body on a 204. On a reused connection the next request would fail with a protocol
 * error after the server had handled it, so a notification would go out twice and an
 * SMS would be reported failed. The connection must not be pooled, so every request
 * succeeds. */
START_TEST(pool_stray_bytes_spare_next_request)
{
    static const char *const responses[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}--more",
        "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}",
    };

    for (size_t i = 0; i < ARRAY_LEN(responses); i++) {
        struct http_result r[2];

        raw_send_n(responses[i], r, 2);
        ck_assert_int_eq(r[0].status, i == 2 ? 204 : 200);
        ck_assert_int_eq(r[1].error, UTIL_HTTP_OK);
    }
}
END_TEST

/* A 1xx other than 100 (103 Early Hints, 102 Processing) is an interim response, and
 * the final one follows (RFC 9110 section 15.2). libevent 2.1.12 ends the request at
 * the 103, so the call reports status 103; a notification is then retried. What must
 * hold is that the final 204 left on that connection never becomes the next response:
 * the connection is not pooled, and the second request gets its own 103. */
START_TEST(pool_interim_1xx_not_final)
{
    struct http_result r[2];

    raw_send_n("HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
               "HTTP/1.1 204 No Content\r\n\r\n",
               r, 2);
    ck_assert_int_eq(r[0].error, UTIL_HTTP_OK);
    ck_assert_int_eq(r[0].status, 103);
    ck_assert_int_eq(r[1].error, UTIL_HTTP_OK);
    ck_assert(!r[1].reused);
    ck_assert_int_eq(r[1].status, 103);
}
END_TEST

/* A connection that closes after a status line arrived may have had its request acted
 * on, and the response reports it (partial), so that a caller does not send it again at
 * once. A close before any byte is no partial response. */
START_TEST(partial_response_is_reported)
{
    static const struct {
        const char *response;
        bool partial;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", true},
        {"HTTP/1.1 200 OK\r\nContent-Le", true},
        {"", false},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct pool_env p;
        struct raw_server srv = {.close_after = true};
        struct http_result r;

        pool_env_start(&p, MOCK_PLAIN, 4, 5000);
        raw_server_start(&srv, cases[i].response);
        free(p.url);
        p.url = util_asprintf("http://127.0.0.1:%d/send", srv.port);
        pool_send(&p, &r, 3000);
        raw_server_stop(&srv);
        pool_env_stop(&p);
        ck_assert_msg(r.error == UTIL_HTTP_ERR_CONNECT, "case %zu: error %d", i, r.error);
        ck_assert_msg(r.partial == cases[i].partial, "case %zu: partial %d", i,
                      r.partial);
    }
}
END_TEST

START_TEST(pool_new_rejects_bad_limits)
{
    struct event_base *base = event_base_new();

    ck_assert_ptr_null(util_http_pool_new(base, 0, 1000));
    ck_assert_ptr_null(util_http_pool_new(base, 1, 0));
    ck_assert_ptr_null(util_http_pool_new(base, 1, -5));
    ck_assert_uint_eq(util_http_pool_idle_count(NULL), 0);
    util_http_pool_free(NULL);
    event_base_free(base);
}
END_TEST

START_TEST(sender_reuses_gateway_connection)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct sent r;

    for (int i = 0; i < 3; i++) {
        send_and_wait(s, e.base, &r, phone, "text");
        ck_assert_msg(r.ok, "send %d failed: %s", i, r.reason);
    }
    ck_assert_uint_eq(mock_http_count(e.mock), 3);
    ck_assert_uint_eq(mock_http_connection_count(e.mock), 1);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

START_TEST(sender_https_reuses_connection)
{
    struct env e;
    char *url;
    struct sms_config cfg;
    struct sms_sender *s;
    struct sent r;

    env_start(&e, MOCK_TLS);
    url = mock_http_url(e.mock, "localhost", "/sms");
    cfg = http_config(url);
    cfg.ca_file = e.certs.ca_file;
    cfg.allow_http_loopback = false;
    s = sms_sender_new(e.base, e.dns, &cfg);
    ck_assert_ptr_nonnull(s);
    for (int i = 0; i < 3; i++) {
        send_and_wait(s, e.base, &r, phone, "text");
        ck_assert_msg(r.ok, "send %d failed: %s", i, r.reason);
    }
    ck_assert_uint_eq(mock_http_count(e.mock), 3);
    ck_assert_uint_eq(mock_http_connection_count(e.mock), 1);

    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

/* The gateway closes the idle connection while the worker's loop is busy elsewhere:
 * the next SMS goes out on a new connection at the first attempt. */
START_TEST(sender_gateway_idle_close_no_retry)
{
    struct env e;
    char *url;
    struct sms_sender *s = http_sender(&e, 3000, &url);
    struct capture cap = {0};
    struct sent r;
    char *log;

    mock_http_set_idle_timeout(e.mock, 200);
    send_and_wait(s, e.base, &r, phone, "text");
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    usleep(700 * 1000);
    capture_start(&cap);
    send_and_wait(s, e.base, &r, phone, "text");
    log = capture_end(&cap);
    ck_assert_msg(r.ok, "send failed: %s", r.reason);
    ck_assert_ptr_nonnull(strstr(log, "attempts=1 "));
    ck_assert_ptr_null(strstr(log, "retrying"));
    ck_assert_uint_eq(mock_http_count(e.mock), 2);
    ck_assert_uint_eq(mock_http_connection_count(e.mock), 2);

    free(log);
    sms_sender_free(s);
    free(url);
    env_stop(&e);
}
END_TEST

static Suite *sms_suite(void)
{
    Suite *s = suite_create("sms");
    TCase *otp = tcase_create("otp");
    TCase *drivers = tcase_create("drivers");
    TCase *sender = tcase_create("sender");
    TCase *https = tcase_create("https");
    TCase *client = tcase_create("http_client");
    TCase *pool = tcase_create("pool");

    tcase_add_test(otp, otp_generate_format);
    tcase_add_test(otp, otp_generate_keeps_leading_zero);
    tcase_add_test(otp, otp_digit_distribution);
    tcase_add_test(otp, otp_rejection_sampling_bounds);
    tcase_add_test(otp, otp_verify_right_and_wrong_code);
    tcase_add_test(otp, otp_well_formed_checks_format);
    tcase_add_test(otp, otp_verify_rejects_bad_format);
    tcase_add_test(otp, otp_leading_zero_is_significant);
    tcase_add_test(otp, otp_verify_other_binding_generation_secret);
    tcase_add_test(otp, otp_hmac_fields_do_not_run_together);
    tcase_set_timeout(otp, 30);
    suite_add_tcase(s, otp);

    tcase_add_test(drivers, driver_parse_names);
    tcase_add_test(drivers, phone_mask_hides_middle);
    tcase_add_test(drivers, phone_e164_check);
    tcase_add_test(drivers, message_check_rejects_bad_text);
    suite_add_tcase(s, drivers);

    tcase_add_test(sender, sender_new_rejects_bad_config);
    tcase_add_test(sender, sender_new_accepts_good_config);
    tcase_add_test(sender, console_driver_logs_message);
    tcase_add_test(sender, console_driver_rejects_bad_number);
    tcase_add_test(sender, http_driver_posts_json);
    tcase_add_test(sender, twilio_driver_posts_form);
    tcase_add_test(sender, parallel_sends_complete);
    tcase_add_test(sender, retry_after_500_then_success);
    tcase_add_test(sender, retry_only_once_after_5xx);
    tcase_add_test(sender, no_retry_after_400);
    tcase_add_test(sender, timeout_then_retry_succeeds);
    tcase_add_test(sender, timeout_twice_fails);
    tcase_add_test(sender, gateway_down_fails_once);
    tcase_add_test(sender, dropped_connection_then_retry);
    tcase_add_test(sender, redirect_not_followed);
    tcase_add_test(sender, oversized_response_fails);
    tcase_add_test(sender, bad_message_sends_nothing);
    tcase_add_test(sender, unresolvable_name_fails);
    tcase_add_test(sender, sender_free_ends_pending_send);
    tcase_add_test(sender, log_masks_number_and_secrets);
    tcase_set_timeout(sender, 30);
    suite_add_tcase(s, sender);

    tcase_add_test(https, https_right_ca_succeeds);
    tcase_add_test(https, https_name_sends_sni);
    tcase_add_test(https, https_wrong_name_fails);
    tcase_add_test(https, https_unknown_ca_fails);
    tcase_add_test(https, https_to_plain_server_fails);
    tcase_set_timeout(https, 30);
    suite_add_tcase(s, https);

    tcase_add_test(client, http_client_get_with_headers);
    tcase_add_test(client, http_client_rejects_bad_headers);
    tcase_add_test(client, http_client_cancel_skips_callback);
    tcase_add_test(client, http_client_url_check);
    tcase_set_timeout(client, 30);
    suite_add_tcase(s, client);

    tcase_add_test(pool, pool_reuses_connection);
    tcase_add_test(pool, pool_connection_close_reply);
    tcase_add_test(pool, pool_server_closes_idle);
    tcase_add_test(pool, pool_https_server_closes_idle);
    tcase_add_test(pool, pool_idle_expiry);
    tcase_add_test(pool, pool_max_idle_bound);
    tcase_add_test(pool, pool_timeout_frees_connection);
    tcase_add_test(pool, pool_cancel_frees_connection);
    tcase_add_test(pool, pool_https_reuses_connection);
    tcase_add_test(pool, pool_free_with_call_running);
    tcase_add_test(pool, pool_http10_reuse_rules);
    tcase_add_test(pool, pool_new_rejects_bad_limits);
    tcase_add_test(pool, pool_leftover_bytes_not_next_response);
    tcase_add_test(pool, pool_stray_bytes_spare_next_request);
    tcase_add_test(pool, pool_interim_1xx_not_final);
    tcase_add_test(pool, partial_response_is_reported);
    tcase_add_test(pool, sender_reuses_gateway_connection);
    tcase_add_test(pool, sender_https_reuses_connection);
    tcase_add_test(pool, sender_gateway_idle_close_no_retry);
    tcase_set_timeout(pool, 30);
    suite_add_tcase(s, pool);
    return s;
}

CHECK_MAIN(sms_suite)
