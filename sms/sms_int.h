/* sms_int.h - what the files of sms/ share: the outbound HTTP client and driver helpers
 * SPDX-License-Identifier: MIT
 *
 * The HTTP client is deliberately small and reusable: it is written for the SMS
 * gateways, and ping/push delivery to client notification endpoints can use it too.
 * It makes one attempt per call. Retry policy belongs to the caller, which gets a
 * transport failure and an HTTP status as different results.
 */
#ifndef CIBAD_SMS_INT_H
#define CIBAD_SMS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <event2/http.h>
#include <openssl/ssl.h>

#include "sms/sms.h"

/* ---- outbound HTTP client --------------------------------------------------------- */

/* Response bodies larger than this fail with SMS_HTTP_ERR_TOO_LARGE unless the request
 * sets its own limit. */
#define SMS_HTTP_MAX_RESPONSE_BODY (64 * 1024)

struct sms_http_header {
    const char *name;
    const char *value;
};

/* One outbound request. Everything is copied by sms_http_send, so the caller may free
 * it as soon as the call returns. */
struct sms_http_request {
    enum evhttp_cmd_type method;           /* EVHTTP_REQ_POST, EVHTTP_REQ_GET, ... */
    const char *url;                       /* absolute http:// or https:// URL */
    const struct sms_http_header *headers; /* added after Host, Content-Length and
                                              Connection, in order */
    size_t header_count;
    const char *body; /* may be NULL */
    size_t body_len;
    int timeout_ms;           /* whole attempt: DNS, connect, TLS, send and response */
    size_t max_response_body; /* 0: SMS_HTTP_MAX_RESPONSE_BODY */
    bool allow_http_loopback; /* see sms_http_url_check */
    /* Called with the address the request would connect to (the resolved one, or the
     * URL's IP literal) before connecting. When it returns false, nothing is sent and
     * the attempt fails with SMS_HTTP_ERR_ADDRESS. NULL allows every address. */
    bool (*address_allowed)(const struct sockaddr *addr, void *arg);
    void *address_arg;
};

/* Cause of an attempt that got no HTTP response. */
enum sms_http_error {
    SMS_HTTP_OK,            /* a response arrived; look at its status */
    SMS_HTTP_ERR_TIMEOUT,   /* timeout_ms passed */
    SMS_HTTP_ERR_CONNECT,   /* DNS, connect or the connection closed before a response */
    SMS_HTTP_ERR_TLS,       /* handshake or certificate verification failed */
    SMS_HTTP_ERR_TOO_LARGE, /* the response body or headers were over the limit */
    SMS_HTTP_ERR_PROTOCOL,  /* the response could not be parsed */
    SMS_HTTP_ERR_ADDRESS,   /* address_allowed rejected the address; nothing was sent */
};

/* The outcome of one attempt, valid only during the completion callback. */
struct sms_http_response {
    enum sms_http_error error;
    int status;         /* HTTP status when error is SMS_HTTP_OK, otherwise 0 */
    const char *reason; /* why the attempt failed, for logs; NULL when error is OK */
    const char *body;   /* NUL-terminated response body ("" when none) */
    size_t body_len;
    int64_t elapsed_ms; /* from sms_http_send to completion */
};

/* Called once per started request, on the loop thread, never from inside
 * sms_http_send. */
typedef void (*sms_http_done_cb)(void *arg, const struct sms_http_response *res);

struct sms_http_call;

/* Creates a TLS client context that verifies the server against ca_file (PEM), or
 * against the system store when ca_file is NULL. It requires TLS 1.2 or newer and sets
 * SSL_OP_IGNORE_UNEXPECTED_EOF, because libevent 2.1.12 predates OpenSSL 3 and fails
 * otherwise on servers that close without close_notify. sms_http_send sets the host
 * name check per connection. Returns NULL, with the reason logged, when ca_file cannot
 * be loaded. Free with SSL_CTX_free. */
SSL_CTX *sms_http_tls_ctx_new(const char *ca_file);

/* Checks that url can be used for an outbound request: an absolute http or https URL
 * with a host, no user name or password and a valid port. Plain http is accepted only
 * when allow_http_loopback is true and the host is a loopback IP literal (127.0.0.0/8
 * or [::1]). A name such as "localhost" is rejected, because the resolver decides
 * what it points to. With have_dns false (no evdns_base), only IP literals are
 * accepted, because resolving a name without evdns blocks the loop. Returns 0, or -1
 * and a reason in err. */
int sms_http_url_check(const char *url, bool allow_http_loopback, bool have_dns,
                       char *err, size_t err_len) MUST_CHECK;

/* Starts one request on base over a new connection, which is freed when the request
 * finishes. dns resolves host names without blocking, and the request goes to the
 * first address returned; dns may be NULL only for URLs with an IP literal. tls verifies
 * https servers (see sms_http_tls_ctx_new); it may be NULL only for http URLs. No
 * redirect is followed and no retry is made.
 *
 * Returns a handle for sms_http_cancel; cb then runs exactly once, later, unless the
 * call is canceled first. Returns NULL, with the reason logged, when the request could
 * not be started (invalid URL or header); cb is then never called. */
struct sms_http_call *sms_http_send(struct event_base *base, struct evdns_base *dns,
                                    SSL_CTX *tls, const struct sms_http_request *req,
                                    sms_http_done_cb cb, void *arg);

/* Stops a call that has not completed and frees it; its callback is not called. Never
 * call it from inside that call's own callback (the call is already gone). A DNS
 * lookup in progress is canceled, and evdns reports the cancel on a later loop
 * iteration, so run the loop once more before freeing the evdns_base at shutdown. */
void sms_http_cancel(struct sms_http_call *call);

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
