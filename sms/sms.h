/* sms.h - one-time codes and the SMS gateway drivers
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_SMS_H
#define CIBAD_SMS_H

#include <stdbool.h>
#include <stddef.h>

#include "util/util.h"

struct event_base;
struct evdns_base;

/* ---- one-time codes --------------------------------------------------------------- */

#define SMS_OTP_DIGITS   6
#define SMS_OTP_HMAC_LEN 32

/* Writes a new code of SMS_OTP_DIGITS decimal digits plus NUL, drawn from the CSPRNG by
 * rejection sampling so every code is equally likely. Codes are strings: "012345" and
 * "12345" differ. */
void sms_otp_generate(char code[SMS_OTP_DIGITS + 1]);

/* Computes the stored form of a code: HMAC-SHA-256 under the server secret over the
 * request's binding (the auth_req_id hash), the generation and the code, so a code
 * matches only its own request and resend generation. */
void sms_otp_hmac(const unsigned char *secret, size_t secret_len, const char *binding,
                  int generation, const char *code, unsigned char out[SMS_OTP_HMAC_LEN]);

/* True when code is exactly SMS_OTP_DIGITS ASCII digits, so "012345" never matches
 * "12345" and neither full-width digits nor signs or spaces get through. NULL is not
 * well formed. */
bool sms_otp_well_formed(const char *code);

/* True when code has exactly SMS_OTP_DIGITS ASCII digits and its HMAC equals expected
 * (compared in constant time). */
bool sms_otp_verify(const unsigned char *secret, size_t secret_len, const char *binding,
                    int generation, const char *code, const unsigned char *expected,
                    size_t expected_len);

/* ---- gateway drivers -------------------------------------------------------------- */

enum sms_driver {
    SMS_DRIVER_CONSOLE, /* writes the message to the log: local use only */
    SMS_DRIVER_HTTP,    /* POST {"to","text"} as JSON with a Bearer token */
    SMS_DRIVER_TWILIO,  /* POST To, From, Body form-encoded with Basic auth */
};

struct sms_config {
    enum sms_driver driver;
    const char *http_url;        /* http driver: full URL */
    const char *http_token;      /* http driver: Bearer token */
    const char *twilio_base_url; /* e.g. https://api.twilio.com */
    const char *twilio_account_sid;
    const char *twilio_auth_token;
    const char *twilio_from; /* sender number, E.164 */
    const char *ca_file;     /* CA bundle for HTTPS; NULL = system store */
    int timeout_ms;          /* per attempt: connect, send and response */
    /* Plain http:// is accepted only to a loopback address when this is true (local
     * development and tests); otherwise only https:// with certificate and host name
     * checks. */
    bool allow_http_loopback;
};

/* Parses "console", "http" or "twilio". Returns 0 or -1. */
int sms_driver_parse(const char *name, enum sms_driver *out) MUST_CHECK;

struct sms_sender;

/* Creates a sender for one event loop. dns resolves gateway host names without
 * blocking. cfg is copied. Returns NULL (with the reason logged) when the
 * configuration is invalid, for example a missing URL or an http:// URL that is not
 * allowed. */
struct sms_sender *sms_sender_new(struct event_base *base, struct evdns_base *dns,
                                  const struct sms_config *cfg);
/* Frees the sender. Sends still running are stopped, and their callbacks run with ok
 * false before this returns; such a callback must not call sms_send on s.
 * sms_sender_free(NULL) does nothing. */
void sms_sender_free(struct sms_sender *s);

/* Called once per sms_send, on the loop thread: ok is true when the gateway accepted the
 * message (a 2xx answer); otherwise reason says why, without any message content. */
typedef void (*sms_sent_cb)(void *arg, bool ok, const char *reason);

/* Sends text to the E.164 number `to` (both are copied). Makes one retry after a timeout,
 * a connection failure or a 5xx answer, none after a 4xx. Never blocks; cb is always
 * called later, never from inside this call. request_id goes to the log lines. The text
 * and the number are never logged, except by the console driver, whose job is to show
 * them. */
void sms_send(struct sms_sender *s, const char *request_id, const char *to,
              const char *text, sms_sent_cb cb, void *arg);

/* ---- phone numbers in logs -------------------------------------------------------- */

/* Size of the buffer that sms_phone_mask writes. */
#define SMS_PHONE_MASK_LEN 24

/* Writes a form of a phone number that is safe for log lines: "+15555550100" becomes
 * "+1555***0100" (first five characters and last four kept). Numbers of 8 to 11
 * characters keep three and two, shorter ones or NULL become "***". */
void sms_phone_mask(const char *phone, char out[SMS_PHONE_MASK_LEN]);

#endif
