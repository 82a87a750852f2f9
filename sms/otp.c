/* otp.c - one-time codes: generation without modulo bias, keyed storage form, and
 * constant-time verification
 * SPDX-License-Identifier: MIT
 */
#include "sms/sms_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* There are 10^SMS_OTP_DIGITS codes. OTP_ACCEPT_LIMIT is the largest multiple of
 * OTP_CODE_SPACE that fits in 32 bits. A value v below it maps to v % OTP_CODE_SPACE,
 * so every code comes from exactly 4294 values. A value at or above it is drawn again,
 * which happens with probability 967296 / 2^32 (about 2.3e-4). */
#define OTP_CODE_SPACE   1000000u
#define OTP_ACCEPT_LIMIT (UINT32_MAX - UINT32_MAX % OTP_CODE_SPACE)

/* Domain tag that keeps these HMAC inputs apart from any other use of the secret. */
static const char otp_hmac_label[] = "cibad sms otp v1";

_Static_assert(SMS_OTP_DIGITS == 6, "OTP_CODE_SPACE assumes six digits");
_Static_assert(OTP_ACCEPT_LIMIT == 4294000000u, "largest multiple of 10^6 below 2^32");

int sms_otp_from_random(uint32_t value, char code[SMS_OTP_DIGITS + 1])
{
    if (value >= OTP_ACCEPT_LIMIT)
        return -1;
    snprintf(code, SMS_OTP_DIGITS + 1, "%06u", (unsigned)(value % OTP_CODE_SPACE));
    return 0;
}

void sms_otp_generate(char code[SMS_OTP_DIGITS + 1])
{
    uint32_t value;

    do {
        util_random_bytes(&value, sizeof(value));
    } while (sms_otp_from_random(value, code) != 0);
    OPENSSL_cleanse(&value, sizeof(value));
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* The HMAC input is the label, then the binding, generation and code, each field
 * length-prefixed, so that no two different (binding, generation, code) triples
 * produce the same bytes. */
void sms_otp_hmac(const unsigned char *secret, size_t secret_len, const char *binding,
                  int generation, const char *code, unsigned char out[SMS_OTP_HMAC_LEN])
{
    size_t binding_len = strlen(binding), code_len = strlen(code);
    size_t len = sizeof(otp_hmac_label) - 1 + 4 + binding_len + 4 + 4 + code_len;
    unsigned char *msg = util_malloc(len), *p = msg;

    memcpy(p, otp_hmac_label, sizeof(otp_hmac_label) - 1);
    p += sizeof(otp_hmac_label) - 1;
    put_u32(p, (uint32_t)binding_len);
    p += 4;
    memcpy(p, binding, binding_len);
    p += binding_len;
    put_u32(p, (uint32_t)generation);
    p += 4;
    put_u32(p, (uint32_t)code_len);
    p += 4;
    memcpy(p, code, code_len);

    util_hmac_sha256(secret, secret_len, msg, len, out);
    OPENSSL_cleanse(msg, len);
    free(msg);
}

bool sms_otp_well_formed(const char *code)
{
    size_t i;

    if (!code)
        return false;
    for (i = 0; i < SMS_OTP_DIGITS; i++) {
        if (code[i] < '0' || code[i] > '9')
            return false;
    }
    return code[i] == '\0';
}

bool sms_otp_verify(const unsigned char *secret, size_t secret_len, const char *binding,
                    int generation, const char *code, const unsigned char *expected,
                    size_t expected_len)
{
    unsigned char actual[SMS_OTP_HMAC_LEN];
    bool equal;

    if (!binding || !expected || expected_len != SMS_OTP_HMAC_LEN ||
        !sms_otp_well_formed(code))
        return false;
    sms_otp_hmac(secret, secret_len, binding, generation, code, actual);
    equal = util_ct_equal(actual, expected, SMS_OTP_HMAC_LEN);
    OPENSSL_cleanse(actual, sizeof(actual));
    return equal;
}
