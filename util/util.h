/* util.h - allocation, randomness, encoding, hashing and logging shared by every module
 * SPDX-License-Identifier: MIT
 *
 * This is the leaf of the dependency graph: it includes no other cibad header, so
 * storage/, sms/, oauth/, ciba/ and server/ may all use it.
 */
#ifndef CIBAD_UTIL_H
#define CIBAD_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MUST_CHECK   __attribute__((warn_unused_result))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation: these log and abort on out-of-memory, so callers never check. */
void *util_malloc(size_t size);
void *util_calloc(size_t count, size_t size);
void *util_realloc(void *ptr, size_t size);
char *util_strdup(const char *s);
char *util_strndup(const char *s, size_t n);
/* Returns a new string formatted like printf; aborts on out-of-memory. */
char *util_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Fills buf with n bytes from OpenSSL's CSPRNG; aborts if the generator fails. */
void util_random_bytes(void *buf, size_t n);
/* Returns a new URL-safe string encoding nbytes random bytes (unpadded base64url). */
char *util_random_token(size_t nbytes);

/* Length of the unpadded base64url text for n input bytes, without the NUL. */
size_t util_b64url_len(size_t n);
/* Writes the unpadded base64url form of in[0..n) to out, NUL-terminated; out must hold
 * util_b64url_len(n) + 1 bytes. Returns the text length. */
size_t util_b64url_encode(const void *in, size_t n, char *out);
/* Returns a new NUL-terminated base64url string of in[0..n). */
char *util_b64url_encode_new(const void *in, size_t n);
/* Decodes unpadded base64url text of length len into out (capacity *out_len). Rejects any
 * character outside the alphabet, padding, and impossible lengths. On success stores the
 * decoded length in *out_len and returns 0; returns -1 otherwise. */
int util_b64url_decode(const char *in, size_t len, void *out, size_t *out_len) MUST_CHECK;

/* Standard base64 with padding (for HTTP Basic credentials). Same contract as above. */
int util_b64_decode(const char *in, size_t len, void *out, size_t *out_len) MUST_CHECK;
char *util_b64_encode_new(const void *in, size_t n);

/* Decodes application/x-www-form-urlencoded text in[0..len) into out, which must hold
 * len + 1 bytes: '+' becomes a space and %XX the byte with that hex value. Writes a NUL
 * after the decoded bytes and stores their count in *out_len. Returns 0,
 * UTIL_URLDECODE_BAD_ESCAPE for a '%' not followed by two hex digits, or
 * UTIL_URLDECODE_NUL for a NUL byte, raw or as %00, which a C string cannot carry. The
 * result is not checked for UTF-8. */
#define UTIL_URLDECODE_BAD_ESCAPE (-1)
#define UTIL_URLDECODE_NUL        (-2)
int util_form_urldecode(const char *in, size_t len, char *out,
                        size_t *out_len) MUST_CHECK;

/* Decodes the UTF-8 sequence that starts at *s, which must lie before end, moves *s past
 * it and returns its code point. Returns -1 and leaves *s unchanged when the bytes are
 * not well-formed UTF-8 (RFC 3629 section 4): a continuation byte without a lead byte,
 * a sequence cut short by end, an overlong form, a UTF-16 surrogate or a value above
 * U+10FFFF. A NUL byte is the code point 0. */
int32_t util_utf8_next(const char **s, const char *end) MUST_CHECK;
/* True when s[0..len) is well-formed UTF-8, as util_utf8_next defines it. */
bool util_utf8_valid(const char *s, size_t len);

/* SHA-256 of data as 64 lowercase hex characters plus NUL. */
void util_sha256_hex(const void *data, size_t n, char out[65]);
/* HMAC-SHA-256 of data under key, 32 raw bytes. */
void util_hmac_sha256(const void *key, size_t key_len, const void *data, size_t n,
                      unsigned char out[32]);
/* Constant-time comparison of two equal-length buffers; true when equal. */
bool util_ct_equal(const void *a, const void *b, size_t n);
/* Constant-time comparison of two strings; the running time depends only on the
 * length of b (the expected value). */
bool util_ct_streq(const char *given, const char *expected);

/* Wall-clock time in milliseconds and seconds since the Unix epoch. */
int64_t util_now_ms(void);
int64_t util_now_s(void);
/* Monotonic clock in milliseconds, for durations. */
int64_t util_mono_ms(void);

/* Parses a decimal integer that must fill the whole string, lie in [min, max] and have
 * no sign other than a leading '-' when min < 0. Returns 0 and stores the value, or -1.
 */
int util_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out) MUST_CHECK;

/* Normalizes a phone number to E.164 ("+" and 8 to 15 digits). Accepts spaces, dots,
 * dashes, slashes and parentheses as separators, a leading "+" or "00" for an
 * international number, and otherwise prefixes default_cc (digits only, for example
 * "1"), dropping one national trunk "0". Returns 0 and writes out (17 bytes), or -1 when
 * the text is not a phone number. */
int util_phone_normalize(const char *in, const char *default_cc, char out[17]) MUST_CHECK;

/* Log levels, lowest first. */
enum util_log_level {
    UTIL_LOG_DEBUG,
    UTIL_LOG_INFO,
    UTIL_LOG_WARN,
    UTIL_LOG_ERROR,
};

void util_log_set_level(enum util_log_level level);
/* Parses "debug", "info", "warn" or "error". Returns 0 or -1. */
int util_log_level_parse(const char *name, enum util_log_level *out) MUST_CHECK;
bool util_log_enabled(enum util_log_level level);

/* Writes one line to stderr with one write(2), so lines from threads never interleave:
 *   2026-12-04T15:32:12.123Z info [rid] client_id=abc message
 * rid and client_id may be NULL. Newlines and control characters in the message are
 * escaped, so a value from a request cannot forge a log line. */
void util_log(enum util_log_level level, const char *rid, const char *client_id,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void util_vlog(enum util_log_level level, const char *rid, const char *client_id,
               const char *fmt, va_list ap);

#define log_debug(...) util_log(UTIL_LOG_DEBUG, NULL, NULL, __VA_ARGS__)
#define log_info(...)  util_log(UTIL_LOG_INFO, NULL, NULL, __VA_ARGS__)
#define log_warn(...)  util_log(UTIL_LOG_WARN, NULL, NULL, __VA_ARGS__)
#define log_error(...) util_log(UTIL_LOG_ERROR, NULL, NULL, __VA_ARGS__)

/* Request-scoped lines: rid is the request id, cid the client id (either may be NULL). */
#define rlog_debug(rid, cid, ...) util_log(UTIL_LOG_DEBUG, rid, cid, __VA_ARGS__)
#define rlog_info(rid, cid, ...)  util_log(UTIL_LOG_INFO, rid, cid, __VA_ARGS__)
#define rlog_warn(rid, cid, ...)  util_log(UTIL_LOG_WARN, rid, cid, __VA_ARGS__)
#define rlog_error(rid, cid, ...) util_log(UTIL_LOG_ERROR, rid, cid, __VA_ARGS__)

#endif
