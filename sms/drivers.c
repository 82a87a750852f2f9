/* drivers.c - the request each SMS gateway driver sends, and phone number helpers
 * SPDX-License-Identifier: MIT
 */
#include "sms/sms_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <jansson.h>
#include <openssl/crypto.h>

/* Maximum message text length, in bytes. Twilio's Messages API rejects a Body over
 * 1,600 characters (Twilio error 21617), and a CIBA message (code, binding_message,
 * link) is far shorter. */
#define SMS_MAX_TEXT_BYTES 1600

int sms_driver_parse(const char *name, enum sms_driver *out)
{
    static const struct {
        const char *name;
        enum sms_driver driver;
    } drivers[] = {
        {"console", SMS_DRIVER_CONSOLE},
        {"http", SMS_DRIVER_HTTP},
        {"twilio", SMS_DRIVER_TWILIO},
    };

    if (!name)
        return -1;
    for (size_t i = 0; i < ARRAY_LEN(drivers); i++) {
        if (strcmp(name, drivers[i].name) == 0) {
            *out = drivers[i].driver;
            return 0;
        }
    }
    return -1;
}

bool sms_phone_is_e164(const char *s)
{
    size_t digits = 0;

    if (!s || s[0] != '+' || s[1] < '1' || s[1] > '9')
        return false;
    for (const char *p = s + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        digits++;
    }
    return digits >= 8 && digits <= 15;
}

void sms_phone_mask(const char *phone, char out[SMS_PHONE_MASK_LEN])
{
    size_t len = phone ? strlen(phone) : 0, head, tail;

    if (len >= 12 && len < SMS_PHONE_MASK_LEN - 3) {
        head = 5;
        tail = 4;
    } else if (len >= 8 && len < 12) {
        head = 3;
        tail = 2;
    } else {
        snprintf(out, SMS_PHONE_MASK_LEN, "***");
        return;
    }
    snprintf(out, SMS_PHONE_MASK_LEN, "%.*s***%s", (int)head, phone, phone + len - tail);
}

/* Checks that s is well-formed UTF-8 (no overlong forms, surrogates or values above
 * U+10FFFF), as JSON and SMS gateways require. */
static bool is_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p) {
        unsigned char c = *p;
        size_t n;
        uint32_t cp;

        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        p += n + 1;
    }
    return true;
}

/* {"to": "+1...", "text": "..."} with a Bearer token, for the generic http driver. */
static int build_http(const struct sms_config *cfg, const char *to, const char *text,
                      struct sms_gateway_request *out, char *err, size_t err_len)
{
    json_t *doc = json_pack("{s:s, s:s}", "to", to, "text", text);

    if (!doc) {
        snprintf(err, err_len, "encoding the JSON body failed");
        return -1;
    }
    out->body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!out->body) {
        snprintf(err, err_len, "encoding the JSON body failed");
        return -1;
    }
    out->body_len = strlen(out->body);
    out->url = util_strdup(cfg->http_url);
    out->content_type = util_strdup("application/json");
    out->authorization = util_asprintf("Bearer %s", cfg->http_token);
    return 0;
}

/* Returns evhttp_uriencode's result as a util_ string, so every string in the request
 * is freed the same way. space_as_plus selects form encoding. */
static char *uri_encode(const char *s, bool space_as_plus)
{
    char *enc = evhttp_uriencode(s, -1, space_as_plus);
    char *copy;

    if (!enc) {
        log_error("evhttp_uriencode failed; aborting");
        abort();
    }
    copy = util_strdup(enc);
    OPENSSL_cleanse(enc, strlen(enc));
    free(enc);
    return copy;
}

/* POST BASE/2010-04-01/Accounts/{AccountSid}/Messages.json with the form fields To,
 * From and Body and HTTP Basic authentication as AccountSid:AuthToken, which is how
 * Twilio's Messages API takes a new message. */
static int build_twilio(const struct sms_config *cfg, const char *to, const char *text,
                        struct sms_gateway_request *out)
{
    size_t base_len = strlen(cfg->twilio_base_url);
    char *sid = uri_encode(cfg->twilio_account_sid, false);
    char *enc_to = uri_encode(to, true), *enc_from = uri_encode(cfg->twilio_from, true);
    char *enc_body = uri_encode(text, true);
    char *credentials, *basic;

    while (base_len > 0 && cfg->twilio_base_url[base_len - 1] == '/')
        base_len--;
    out->url = util_asprintf("%.*s/2010-04-01/Accounts/%s/Messages.json", (int)base_len,
                             cfg->twilio_base_url, sid);
    out->body = util_asprintf("To=%s&From=%s&Body=%s", enc_to, enc_from, enc_body);
    out->body_len = strlen(out->body);
    out->content_type = util_strdup("application/x-www-form-urlencoded");

    credentials = util_asprintf("%s:%s", cfg->twilio_account_sid, cfg->twilio_auth_token);
    basic = util_b64_encode_new(credentials, strlen(credentials));
    out->authorization = util_asprintf("Basic %s", basic);

    OPENSSL_cleanse(credentials, strlen(credentials));
    OPENSSL_cleanse(basic, strlen(basic));
    OPENSSL_cleanse(enc_body, strlen(enc_body));
    free(credentials);
    free(basic);
    free(sid);
    free(enc_to);
    free(enc_from);
    free(enc_body);
    return 0;
}

int sms_message_check(const char *to, const char *text, char *err, size_t err_len)
{
    if (!sms_phone_is_e164(to)) {
        snprintf(err, err_len, "the phone number is not in E.164 form");
        return -1;
    }
    if (!text || !*text) {
        snprintf(err, err_len, "the message text is empty");
        return -1;
    }
    if (strlen(text) > SMS_MAX_TEXT_BYTES) {
        snprintf(err, err_len, "the message text is longer than %d bytes",
                 SMS_MAX_TEXT_BYTES);
        return -1;
    }
    if (!is_utf8(text)) {
        snprintf(err, err_len, "the message text is not valid UTF-8");
        return -1;
    }
    return 0;
}

int sms_gateway_request_build(const struct sms_config *cfg, const char *to,
                              const char *text, struct sms_gateway_request *out,
                              char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    if (sms_message_check(to, text, err, err_len) != 0)
        return -1;

    switch (cfg->driver) {
    case SMS_DRIVER_HTTP:
        return build_http(cfg, to, text, out, err, err_len);
    case SMS_DRIVER_TWILIO:
        return build_twilio(cfg, to, text, out);
    case SMS_DRIVER_CONSOLE:
        break;
    }
    snprintf(err, err_len, "the console driver sends no HTTP request");
    return -1;
}

static void free_wiped(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void sms_gateway_request_clear(struct sms_gateway_request *r)
{
    free(r->url);
    free(r->content_type);
    /* The authorization contains the gateway credentials and the body the one-time code.
     */
    free_wiped(r->authorization);
    free_wiped(r->body);
    memset(r, 0, sizeof(*r));
}
