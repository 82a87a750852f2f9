/* check_util.c - tests of util/: encodings, hashing, parsing, phone numbers, logging
 * SPDX-License-Identifier: MIT
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_runner.h"
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

START_TEST(log_level_filters)
{
    enum util_log_level level;

    ck_assert_int_eq(util_log_level_parse("error", &level), 0);
    util_log_set_level(level);
    ck_assert_str_eq(capture_log(NULL, NULL, "hidden"), "");
    ck_assert_int_ne(util_log_level_parse("verbose", &level), 0);
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
    tcase_add_test(tc, log_line_shape_and_escaping);
    tcase_add_test(tc, log_level_filters);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(util_suite)
