/* check_util.c - tests of util/: encodings, hashing, parsing, phone numbers, logging
 * SPDX-License-Identifier: MIT
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/un.h>

#include "check_runner.h"
#include "util/netaddr.h"
#include "util/util.h"

START_TEST(b64url_rfc4648_vectors)
{
    /* RFC 4648 section 10, in the URL-safe alphabet without padding. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",       "Zg",      "Zm8",     "Zm9v",
                                        "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};

    for (size_t i = 0; i < ARRAY_LEN(plain); i++) {
        char *out = util_b64url_encode_new(plain[i], strlen(plain[i]));
        unsigned char back[16];
        size_t back_len = sizeof(back);

        ck_assert_str_eq(out, coded[i]);
        ck_assert_uint_eq(util_b64url_len(strlen(plain[i])), strlen(coded[i]));
        ck_assert_int_eq(util_b64url_decode(out, strlen(out), back, &back_len), 0);
        ck_assert_uint_eq(back_len, strlen(plain[i]));
        ck_assert_mem_eq(back, plain[i], back_len);
        free(out);
    }
}
END_TEST

START_TEST(b64url_uses_url_alphabet)
{
    const unsigned char bytes[] = {0xfb, 0xff, 0xbf};
    char *out = util_b64url_encode_new(bytes, sizeof(bytes));

    ck_assert_str_eq(out, "-_-_");
    free(out);
}
END_TEST

START_TEST(b64url_decode_rejects_bad_input)
{
    unsigned char out[32];
    size_t len;
    /* padding, standard-alphabet characters, a space, an impossible length, non-zero
     * trailing bits (so one byte string has one encoding only) */
    static const char *const bad[] = {"Zg==",
                                      "Zm+v",
                                      "Zm/v",
                                      "Zm9 v",
                                      "Z",
                                      "Zh",
                                      "Zm9"
                                      "w\x01"};

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        len = sizeof(out);
        ck_assert_msg(util_b64url_decode(bad[i], strlen(bad[i]), out, &len) != 0,
                      "accepted \"%s\"", bad[i]);
    }
    len = 2; /* "Zm9v" needs 3 bytes */
    ck_assert_int_ne(util_b64url_decode("Zm9v", 4, out, &len), 0);
}
END_TEST

START_TEST(b64_standard_round_trip)
{
    char *out = util_b64_encode_new("a:b+c", 5);
    unsigned char back[8];
    size_t len = sizeof(back);

    ck_assert_str_eq(out, "YTpiK2M=");
    ck_assert_int_eq(util_b64_decode(out, strlen(out), back, &len), 0);
    ck_assert_mem_eq(back, "a:b+c", 5);
    len = sizeof(back);
    ck_assert_int_ne(util_b64_decode("YTpiK2M", 7, back, &len), 0);
    free(out);
}
END_TEST

START_TEST(random_token_is_unique_and_url_safe)
{
    char *a = util_random_token(24), *b = util_random_token(24);

    ck_assert_uint_eq(strlen(a), 32);
    ck_assert_str_ne(a, b);
    ck_assert_uint_eq(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                "0123456789-_"),
                      strlen(a));
    free(a);
    free(b);
}
END_TEST

START_TEST(sha256_hex_known_vector)
{
    char hex[65];

    util_sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex,
                     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

START_TEST(hmac_sha256_rfc4231_case2)
{
    unsigned char mac[32];
    static const unsigned char expected[32] = {
        0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
        0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
        0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};

    util_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    ck_assert_mem_eq(mac, expected, 32);
}
END_TEST

START_TEST(ct_compare_equal_and_different)
{
    ck_assert(util_ct_equal("abcdef", "abcdef", 6));
    ck_assert(!util_ct_equal("abcdef", "abcdeF", 6));
    ck_assert(util_ct_streq("secret", "secret"));
    ck_assert(!util_ct_streq("secre", "secret"));
    ck_assert(!util_ct_streq("secrets", "secret"));
    ck_assert(!util_ct_streq("", "secret"));
    ck_assert(util_ct_streq("", ""));
}
END_TEST

START_TEST(parse_int64_strict)
{
    int64_t v = 0;

    ck_assert_int_eq(util_parse_int64("120", 1, 1000, &v), 0);
    ck_assert_int_eq(v, 120);
    ck_assert_int_eq(util_parse_int64("-5", -10, 10, &v), 0);
    ck_assert_int_eq(v, -5);

    static const char *const bad[] = {"",
                                      " 1",
                                      "1 ",
                                      "+1",
                                      "1.5",
                                      "abc",
                                      "0x10",
                                      "-5",
                                      "0",
                                      "1001",
                                      "99999999999999999999"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        ck_assert_msg(util_parse_int64(bad[i], 1, 1000, &v) != 0, "accepted \"%s\"",
                      bad[i]);
}
END_TEST

START_TEST(phone_normalize_common_forms)
{
    static const char *const same[] = {
        "+15555550100", "+1 555 555 0100", "+1 (555) 555-0100", "15555550100",
        "555-555-0100", "555.555.0100",    "(555) 555 0100",    "0015555550100"};
    char out[17];

    for (size_t i = 0; i < ARRAY_LEN(same); i++) {
        ck_assert_msg(util_phone_normalize(same[i], "1", out) == 0, "rejected \"%s\"",
                      same[i]);
        ck_assert_str_eq(out, "+15555550100");
    }

    /* A national number with a trunk 0, in a country with code 44. */
    ck_assert_int_eq(util_phone_normalize("07700 900123", "44", out), 0);
    ck_assert_str_eq(out, "+447700900123");
}
END_TEST

START_TEST(phone_normalize_rejects_non_numbers)
{
    static const char *const bad[] = {
        "alice", "sub:123",           "+1 555 555 0100 ext 1",
        "+1234", "+1234567890123456", "+0123456789",
        "",      "++15555550100",     "+1\n5555550100"};
    char out[17];

    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        ck_assert_msg(util_phone_normalize(bad[i], "1", out) != 0, "accepted \"%s\"",
                      bad[i]);
}
END_TEST

/* Runs one log call with stderr sent to a pipe and returns what was written. */
static char *capture_log(const char *rid, const char *client_id, const char *message)
{
    int fds[2], saved = dup(STDERR_FILENO);
    static char buf[4096];
    ssize_t n;

    ck_assert_int_eq(pipe(fds), 0);
    dup2(fds[1], STDERR_FILENO);
    util_log(UTIL_LOG_WARN, rid, client_id, "%s", message);
    dup2(saved, STDERR_FILENO);
    close(fds[1]);
    n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    close(saved);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

START_TEST(form_urldecode_escapes)
{
    char out[32];
    size_t n = 99;

    ck_assert_int_eq(util_form_urldecode("a+b%41%7e%2B", 12, out, &n), 0);
    ck_assert_str_eq(out, "a bA~+");
    ck_assert_uint_eq(n, 6);
    ck_assert_int_eq(util_form_urldecode("", 0, out, &n), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(n, 0);
    /* Only len bytes count: the "%41" after them is not decoded. */
    ck_assert_int_eq(util_form_urldecode("xy%41", 2, out, &n), 0);
    ck_assert_str_eq(out, "xy");
    /* Bytes above 0x7f pass through unchecked. */
    ck_assert_int_eq(util_form_urldecode("%C3%A9", 6, out, &n), 0);
    ck_assert_str_eq(out, "\xc3\xa9");
}
END_TEST

START_TEST(form_urldecode_rejects_bad_input)
{
    static const char *const bad_escapes[] = {"%", "%4", "a%G1", "%1G", "%%41", "%-1"};
    char out[32];
    size_t n;

    for (size_t i = 0; i < ARRAY_LEN(bad_escapes); i++)
        ck_assert_msg(util_form_urldecode(bad_escapes[i], strlen(bad_escapes[i]), out,
                                          &n) == UTIL_URLDECODE_BAD_ESCAPE,
                      "\"%s\" was not rejected as a bad escape", bad_escapes[i]);
    /* The escape may not reach past len, even when the text goes on. */
    ck_assert_int_eq(util_form_urldecode("%41", 2, out, &n), UTIL_URLDECODE_BAD_ESCAPE);
    ck_assert_int_eq(util_form_urldecode("a%00b", 5, out, &n), UTIL_URLDECODE_NUL);
    ck_assert_int_eq(util_form_urldecode("a\0b", 3, out, &n), UTIL_URLDECODE_NUL);
}
END_TEST

/* Decodes every code point of s[0..len) with util_utf8_next into cps and returns the
 * count, or -1 at the first invalid sequence. */
static int utf8_decode_all(const char *s, size_t len, int32_t *cps, int max)
{
    const char *end = s + len;
    int n = 0;

    while (s < end && n < max) {
        const char *before = s;
        int32_t cp = util_utf8_next(&s, end);

        if (cp < 0) {
            ck_assert_ptr_eq(s, before); /* an error leaves the position alone */
            return -1;
        }
        cps[n++] = cp;
    }
    return n;
}

START_TEST(utf8_next_decodes_code_points)
{
    /* A, é (2 bytes), € (3 bytes), U+1F600 (4 bytes), NUL, and each boundary. */
    static const char text[] = "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    static const struct {
        const char *bytes;
        int32_t cp;
    } edges[] = {
        {"\x7f", 0x7f},
        {"\xc2\x80", 0x80},
        {"\xdf\xbf", 0x7ff},
        {"\xe0\xa0\x80", 0x800},
        {"\xed\x9f\xbf", 0xd7ff},
        {"\xee\x80\x80", 0xe000},
        {"\xef\xbf\xbf", 0xffff},
        {"\xf0\x90\x80\x80", 0x10000},
        {"\xf4\x8f\xbf\xbf", 0x10ffff},
    };
    int32_t cps[8];
    const char *p = "\0x";

    ck_assert_int_eq(utf8_decode_all(text, strlen(text), cps, 8), 4);
    ck_assert_int_eq(cps[0], 'A');
    ck_assert_int_eq(cps[1], 0xe9);
    ck_assert_int_eq(cps[2], 0x20ac);
    ck_assert_int_eq(cps[3], 0x1f600);
    for (size_t i = 0; i < ARRAY_LEN(edges); i++) {
        ck_assert_msg(utf8_decode_all(edges[i].bytes, strlen(edges[i].bytes), cps, 8) ==
                          1,
                      "edge %zu did not decode to one code point", i);
        ck_assert_int_eq(cps[0], edges[i].cp);
    }
    ck_assert_int_eq(util_utf8_next(&p, p + 2), 0);
    ck_assert_int_eq(*p, 'x');
}
END_TEST

START_TEST(utf8_rejects_invalid_sequences)
{
    static const char *const bad[] = {
        "\x80",             /* continuation byte without a lead byte */
        "x\xbfy",           /* the same, inside ASCII */
        "\xc0\xaf",         /* overlong '/' */
        "\xc1\xbf",         /* overlong, two bytes */
        "\xe0\x80\xaf",     /* overlong, three bytes */
        "\xf0\x80\x80\xaf", /* overlong, four bytes */
        "\xe2\x82",         /* cut short */
        "\xc3",             /* cut short */
        "\xc3(",            /* lead byte followed by ASCII */
        "\xed\xa0\x80",     /* UTF-16 surrogate U+D800 */
        "\xed\xbf\xbf",     /* UTF-16 surrogate U+DFFF */
        "\xf4\x90\x80\x80", /* U+110000 */
        "\xf5\x80\x80\x80", /* lead byte past U+10FFFF */
        "\xf8\x88\x80\x80\x80",
        "\xff",
    };
    const char *empty = "";

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        int32_t cps[8];

        ck_assert_msg(!util_utf8_valid(bad[i], strlen(bad[i])), "sequence %zu is valid",
                      i);
        ck_assert_msg(utf8_decode_all(bad[i], strlen(bad[i]), cps, 8) == -1,
                      "util_utf8_next decoded sequence %zu", i);
    }
    /* The end bounds a sequence even when more bytes follow in memory. */
    ck_assert(!util_utf8_valid("\xc3\xa9", 1));
    ck_assert(util_utf8_valid("\xc3\xa9", 2));
    ck_assert(util_utf8_valid("", 0));
    ck_assert_int_eq(util_utf8_next(&empty, empty), -1);
}
END_TEST

START_TEST(log_line_shape_and_escaping)
{
    char *line = capture_log("0123456789abcdef", "agent\n1", "a\nforged line\r");

    ck_assert_ptr_nonnull(
        strstr(line, " warn [0123456789abcdef] client_id=agent\\x0a1 "));
    ck_assert_ptr_nonnull(strstr(line, "a\\x0aforged line\\x0d\n"));
    /* exactly one newline: the one that ends the line */
    ck_assert_ptr_eq(strchr(line, '\n'), line + strlen(line) - 1);
}
END_TEST

START_TEST(log_client_id_spaces_escaped)
{
    char *line = capture_log(NULL, "agent token 200 issued", "x");

    /* Spaces in a client_id could forge fields of the line; in the message they stay. */
    ck_assert_ptr_nonnull(
        strstr(line, " client_id=agent\\x20token\\x20200\\x20issued x\n"));
}
END_TEST

START_TEST(log_level_filters)
{
    enum util_log_level level;

    ck_assert_int_eq(util_log_level_parse("error", &level), 0);
    util_log_set_level(level);
    ck_assert_str_eq(capture_log(NULL, NULL, "hidden"), "");
    ck_assert_int_ne(util_log_level_parse("verbose", &level), 0);
}
END_TEST

static bool netaddr_ok(const char *text, bool allow_loopback)
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
    return util_netaddr_allowed((const struct sockaddr *)&sa, allow_loopback);
}

/* The full table runs in check_notify; these are the cases jwks_uri fetches rely on. */
START_TEST(netaddr_policy)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};

    ck_assert(netaddr_ok("93.184.216.34", false));
    ck_assert(netaddr_ok("2606:2800:220:1::1", false));
    ck_assert(!netaddr_ok("127.0.0.1", false));
    ck_assert(netaddr_ok("127.0.0.1", true));
    ck_assert(!netaddr_ok("::1", false));
    ck_assert(netaddr_ok("::1", true));
    ck_assert(!netaddr_ok("::ffff:127.0.0.1", false));
    ck_assert(!netaddr_ok("169.254.169.254", true));
    ck_assert(!netaddr_ok("10.1.2.3", true));
    ck_assert(!netaddr_ok("192.168.0.1", true));
    ck_assert(!netaddr_ok("fd00::1", true));
    ck_assert(!netaddr_ok("fe80::1", true));
    ck_assert(!netaddr_ok("0.0.0.0", true));
    ck_assert(!util_netaddr_allowed((const struct sockaddr *)&un, true));
    ck_assert(!util_netaddr_allowed(NULL, true));
}
END_TEST

static Suite *util_suite(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, b64url_rfc4648_vectors);
    tcase_add_test(tc, b64url_uses_url_alphabet);
    tcase_add_test(tc, b64url_decode_rejects_bad_input);
    tcase_add_test(tc, b64_standard_round_trip);
    tcase_add_test(tc, random_token_is_unique_and_url_safe);
    tcase_add_test(tc, sha256_hex_known_vector);
    tcase_add_test(tc, hmac_sha256_rfc4231_case2);
    tcase_add_test(tc, ct_compare_equal_and_different);
    tcase_add_test(tc, parse_int64_strict);
    tcase_add_test(tc, phone_normalize_common_forms);
    tcase_add_test(tc, phone_normalize_rejects_non_numbers);
    tcase_add_test(tc, form_urldecode_escapes);
    tcase_add_test(tc, form_urldecode_rejects_bad_input);
    tcase_add_test(tc, utf8_next_decodes_code_points);
    tcase_add_test(tc, utf8_rejects_invalid_sequences);
    tcase_add_test(tc, log_line_shape_and_escaping);
    tcase_add_test(tc, log_client_id_spaces_escaped);
    tcase_add_test(tc, log_level_filters);
    tcase_add_test(tc, netaddr_policy);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(util_suite)
