/* util.c - allocation, randomness, encoding and hashing helpers
 * SPDX-License-Identifier: MIT
 */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

static void die_oom(size_t size)
{
    log_error("out of memory allocating %zu bytes; aborting", size);
    abort();
}

void *util_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);

    if (!p)
        die_oom(size);
    return p;
}

void *util_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);

    if (!p)
        die_oom(count * size);
    return p;
}

void *util_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);

    if (!p)
        die_oom(size);
    return p;
}

char *util_strdup(const char *s)
{
    return util_strndup(s, strlen(s));
}

char *util_strndup(const char *s, size_t n)
{
    char *p = util_malloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *util_asprintf(const char *fmt, ...)
{
    va_list ap;
    int len;
    char *out;

    va_start(ap, fmt);
    len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0) {
        log_error("vsnprintf failed for format \"%s\"; aborting", fmt);
        abort();
    }

    out = util_malloc((size_t)len + 1);
    va_start(ap, fmt);
    vsnprintf(out, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return out;
}

void util_random_bytes(void *buf, size_t n)
{
    if (n > INT_MAX || RAND_bytes(buf, (int)n) != 1) {
        log_error("the OpenSSL random generator failed; aborting");
        abort();
    }
}

char *util_random_token(size_t nbytes)
{
    unsigned char buf[64];
    char *out;

    if (nbytes > sizeof(buf))
        abort();
    util_random_bytes(buf, nbytes);
    out = util_b64url_encode_new(buf, nbytes);
    OPENSSL_cleanse(buf, sizeof(buf));
    return out;
}

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t util_b64url_len(size_t n)
{
    return (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0);
}

static size_t encode_base64(const unsigned char *in, size_t n, char *out,
                            const char *alphabet, bool pad)
{
    size_t i, o = 0;

    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;

        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        if (pad) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;

        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        if (pad)
            out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

size_t util_b64url_encode(const void *in, size_t n, char *out)
{
    return encode_base64(in, n, out, b64url_alphabet, false);
}

char *util_b64url_encode_new(const void *in, size_t n)
{
    char *out = util_malloc(util_b64url_len(n) + 1);

    util_b64url_encode(in, n, out);
    return out;
}

char *util_b64_encode_new(const void *in, size_t n)
{
    char *out = util_malloc((n + 2) / 3 * 4 + 1);

    encode_base64(in, n, out, b64_alphabet, true);
    return out;
}

static int decode_base64(const char *in, size_t len, unsigned char *out, size_t *out_len,
                         const char *alphabet)
{
    size_t i, o = 0, need;
    uint32_t acc = 0;
    int bits = 0;

    if (len % 4 == 1)
        return -1;
    need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > *out_len)
        return -1;

    for (i = 0; i < len; i++) {
        const char *p = in[i] ? strchr(alphabet, in[i]) : NULL;

        if (!p)
            return -1;
        acc = acc << 6 | (uint32_t)(p - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    /* Leftover bits must be zero, so each byte string has exactly one encoding. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        return -1;
    *out_len = o;
    return 0;
}

int util_b64url_decode(const char *in, size_t len, void *out, size_t *out_len)
{
    return decode_base64(in, len, out, out_len, b64url_alphabet);
}

int util_b64_decode(const char *in, size_t len, void *out, size_t *out_len)
{
    if (len % 4 != 0)
        return -1;
    if (len > 0 && in[len - 1] == '=')
        len--;
    if (len > 0 && in[len - 1] == '=')
        len--;
    return decode_base64(in, len, out, out_len, b64_alphabet);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int util_form_urldecode(const char *in, size_t len, char *out, size_t *out_len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        char c = in[i];

        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < len ? hex_value(in[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(in[i + 2]) : -1;

            if (hi < 0 || lo < 0)
                return UTIL_URLDECODE_BAD_ESCAPE;
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (c == '\0')
            return UTIL_URLDECODE_NUL;
        out[n++] = c;
    }
    out[n] = '\0';
    *out_len = n;
    return 0;
}

int32_t util_utf8_next(const char **s, const char *end)
{
    const unsigned char *p = (const unsigned char *)*s;
    size_t avail = (size_t)(end - *s), extra;
    uint32_t cp, min;

    if (avail == 0)
        return -1;
    if (p[0] < 0x80) {
        *s += 1;
        return p[0];
    }
    if ((p[0] & 0xe0) == 0xc0) {
        extra = 1, cp = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        extra = 2, cp = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        extra = 3, cp = p[0] & 0x07, min = 0x10000;
    } else {
        return -1; /* a continuation byte without a lead byte, or 0xf8..0xff */
    }
    if (avail <= extra)
        return -1;
    for (size_t k = 1; k <= extra; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *s += extra + 1;
    return (int32_t)cp;
}

bool util_utf8_valid(const char *s, size_t len)
{
    const char *end = s + len;

    while (s < end) {
        if (util_utf8_next(&s, end) < 0)
            return false;
    }
    return true;
}

void util_sha256_hex(const void *data, size_t n, char out[65])
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    static const char hex[] = "0123456789abcdef";

    SHA256(data, n, digest);
    for (size_t i = 0; i < sizeof(digest); i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[64] = '\0';
}

void util_hmac_sha256(const void *key, size_t key_len, const void *data, size_t n,
                      unsigned char out[32])
{
    unsigned int out_len = 32;

    if (key_len > INT_MAX ||
        !HMAC(EVP_sha256(), key, (int)key_len, data, n, out, &out_len)) {
        log_error("HMAC-SHA-256 failed; aborting");
        abort();
    }
}

bool util_ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool util_ct_streq(const char *given, const char *expected)
{
    size_t n = strlen(expected), m = strlen(given);
    unsigned char diff = (unsigned char)(n != m);

    /* Read `given` only up to its own end, but always loop over `expected`. */
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(expected[i] ^ (i < m ? given[i] : 0));
    return diff == 0;
}

int64_t util_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_now_s(void)
{
    return (int64_t)time(NULL);
}

int64_t util_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int util_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v;

    if (!s || !*s || isspace((unsigned char)*s) || *s == '+')
        return -1;
    if (*s == '-' && min >= 0)
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int util_phone_normalize(const char *in, const char *default_cc, char out[17])
{
    char digits[32];
    size_t n = 0;
    bool international = false;
    const char *p = in;

    while (*p == ' ')
        p++;
    if (*p == '+') {
        international = true;
        p++;
    }
    for (; *p; p++) {
        if (isdigit((unsigned char)*p)) {
            if (n + 1 >= sizeof(digits))
                return -1;
            digits[n++] = *p;
        } else if (!strchr(" .-/()", *p)) {
            return -1;
        }
    }
    digits[n] = '\0';

    const char *national = digits;
    char full[40];

    if (!international && n > 2 && digits[0] == '0' && digits[1] == '0') {
        international = true;
        national = digits + 2;
    }
    if (international) {
        snprintf(full, sizeof(full), "%s", national);
    } else {
        size_t cc_len = strlen(default_cc);

        /* A number that already starts with the country code and is long enough to
         * include it (for example "1 555 555 0100" in North America) keeps it. */
        if (cc_len > 0 && n >= 11 && strncmp(digits, default_cc, cc_len) == 0)
            snprintf(full, sizeof(full), "%s", digits);
        else
            snprintf(full, sizeof(full), "%s%s", default_cc,
                     digits[0] == '0' ? digits + 1 : digits);
    }

    size_t len = strlen(full);

    if (len < 8 || len > 15 || full[0] == '0')
        return -1;
    out[0] = '+';
    memcpy(out + 1, full, len + 1);
    return 0;
}
