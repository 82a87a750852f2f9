/* ciba_int.h - helpers shared by the files of ciba/
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CIBA_INT_H
#define CIBAD_CIBA_INT_H

#include <stddef.h>

#include "sms/sms.h"

struct server_worker;

/* Bytes of randomness behind each identifier: 192 bits for auth_req_id (CIBA Core 1.0
 * section 7.3 asks for at least 128 and recommends 160) and 128 bits for the approval
 * link reference. */
#define CIBA_AUTH_REQ_ID_BYTES 24
#define CIBA_REF_BYTES         16
#define CIBA_REF_LEN           22 /* base64url characters of CIBA_REF_BYTES */

/* What goes into one SMS. All strings are copied. */
struct ciba_code_message {
    const char *request_id;
    const char *client_id;
    const char *client_name;
    const char *auth_req_id_hash;
    const char *phone_number;
    const char *binding_message; /* may be NULL */
    const char *code;
    const char *ref;
};

/* Sends the code by SMS in the background, then records the outcome: a "code sent"
 * audit row, or, when the gateway could not take the message, the request ends denied
 * so the client learns it at once instead of polling until expiry. */
void ciba_code_deliver(struct server_worker *w, const struct ciba_code_message *msg);

/* Computes the stored HMAC of a code for a request and resend generation, under the
 * server secret. */
void ciba_code_hmac(const char *auth_req_id_hash, int generation, const char *code,
                    unsigned char out[SMS_OTP_HMAC_LEN]);

/* True when code matches the stored HMAC, compared in constant time. */
bool ciba_code_matches(const char *auth_req_id_hash, int generation, const char *code,
                       const unsigned char *hmac, size_t hmac_len);

#endif
