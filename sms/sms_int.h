/* sms_int.h - what the files of sms/ share: driver helpers
 * SPDX-License-Identifier: MIT
 *
 * The outbound HTTP client the drivers use is util/http_client.h.
 */
#ifndef CIBAD_SMS_INT_H
#define CIBAD_SMS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sms/sms.h"
#include "util/http_client.h"

/* ---- helpers shared by the drivers and tests -------------------------------------- */

/* Maps 4 random bytes to a code: stores SMS_OTP_DIGITS digits plus NUL and returns 0,
 * or returns -1 when value falls in the biased top range and must be redrawn. */
int sms_otp_from_random(uint32_t value, char code[SMS_OTP_DIGITS + 1]) MUST_CHECK;

/* True when s is "+" followed by 8 to 15 ASCII digits, the first not 0 (E.164). */
bool sms_phone_is_e164(const char *s);

/* Checks a message before any driver sends it: `to` in E.164 form, and text that is
 * non-empty, valid UTF-8 and at most 1,600 bytes. Returns 0, or -1 with a reason in
 * err. */
int sms_message_check(const char *to, const char *text, char *err,
                      size_t err_len) MUST_CHECK;

/* A prepared gateway request for one message; strings are owned. */
struct sms_gateway_request {
    char *url;
    char *content_type;
    char *authorization;
    char *body;
    size_t body_len;
};

/* Builds the request a driver sends for text to `to`: JSON {"to","text"} with a
 * Bearer token for SMS_DRIVER_HTTP, or the form To, From, Body with Basic auth for
 * SMS_DRIVER_TWILIO. Checks the message with sms_message_check first. Returns 0, or -1
 * with a reason in err. */
int sms_gateway_request_build(const struct sms_config *cfg, const char *to,
                              const char *text, struct sms_gateway_request *out,
                              char *err, size_t err_len) MUST_CHECK;
void sms_gateway_request_clear(struct sms_gateway_request *r);

#endif
