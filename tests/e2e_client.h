/* e2e_client.h - what the end-to-end suite needs to drive cibad from outside: a blocking
 * HTTP/1.1 client over loopback, form and Basic builders, JWT checks against the JWKS
 * alone, and helpers that run the cibad binary (serve and the command line)
 * SPDX-License-Identifier: MIT
 *
 * Nothing here links server code: the suite drives cibad only over HTTP, as an OAuth
 * client, a phone user and a resource server do.
 */
#ifndef CIBAD_TESTS_E2E_CLIENT_H
#define CIBAD_TESTS_E2E_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

/* ---- HTTP client ------------------------------------------------------------------- */

struct e2e_header {
    char *name;
    char *value;
};

struct e2e_response {
    int status;
    size_t n_headers;
    struct e2e_header *headers;
    char *body; /* NUL-terminated; body_len excludes the NUL */
    size_t body_len;
};

/* Sends one request to 127.0.0.1:port with "Connection: close" and reads the reply.
 * headers is a NULL-terminated list of "Name: value" lines (may be NULL). When body is
 * not NULL, Content-Length is added. Returns 0 and fills out (free it with
 * e2e_response_free), or -1 when the connection failed or closed without a complete
 * reply. Every socket operation times out after 15 s. */
int e2e_request(int port, const char *method, const char *path,
                const char *const *headers, const char *body, size_t body_len,
                struct e2e_response *out);

/* Sends raw bytes as they are (a malformed request, for example) and reads the reply
 * the same way as e2e_request. Send errors are ignored, because the server may close
 * early on purpose: what counts is whether a reply came back. With half_close the
 * sending side is shut down after the bytes, so a server waiting for the rest of an
 * incomplete request sees the end of the stream at once. */
int e2e_raw(int port, const void *bytes, size_t len, bool half_close,
            struct e2e_response *out);

/* Returns the first header named name (case-insensitive), or NULL. */
const char *e2e_header(const struct e2e_response *r, const char *name);
/* Parses the body as a JSON object. Returns a new reference, or NULL. */
json_t *e2e_json(const struct e2e_response *r);
void e2e_response_free(struct e2e_response *r);

/* ---- request builders -------------------------------------------------------------- */

/* Percent-encodes s as application/x-www-form-urlencoded does: unreserved characters
 * stay, space becomes "+", everything else becomes %XX. Returns a new string. */
char *e2e_form_encode(const char *s);
/* Builds a form body from name, value pairs ending with a NULL name. A pair whose value
 * is NULL is left out; a name may repeat. Returns a new string. */
char *e2e_form(const char *name, ...) __attribute__((sentinel));
/* Returns the "Authorization: Basic ..." header line for client_secret_basic: id and
 * secret are form-encoded, joined by ":" and base64-encoded (RFC 6749 section 2.3.1).
 * New string. */
char *e2e_basic_header(const char *client_id, const char *secret);

/* ---- JWT --------------------------------------------------------------------------- */

/* Splits a compact JWS and decodes its header and claims without checking anything.
 * Returns 0 and two new references, or -1. */
int e2e_jwt_decode(const char *jwt, json_t **header, json_t **claims);

/* Verifies a compact ES256 JWS the way a resource server does, from the JWKS document
 * alone: the header's kid picks an EC P-256 key, the key is rebuilt from x and y, and the
 * 64-byte r||s signature is checked with OpenSSL. Returns 0 and the decoded parts (new
 * references; either pointer may be NULL), or -1 with the reason in err. */
int e2e_jwt_verify(const char *jwt, const json_t *jwks, json_t **header, json_t **claims,
                   char *err, size_t err_len);

/* The at_hash of an access token: base64url of the left half of its SHA-256. New
 * string. */
char *e2e_at_hash(const char *access_token);

/* ---- client assertions (private_key_jwt) ------------------------------------------- */

struct evp_pkey_st;

/* Generates a new P-256 key pair (free with EVP_PKEY_free). */
struct evp_pkey_st *e2e_key_new(void);

/* Generates a new RSA key pair of bits bits, or an EC key pair on the named curve
 * ("P-256", "P-384"); free with EVP_PKEY_free. */
struct evp_pkey_st *e2e_rsa_key_new(unsigned bits);
struct evp_pkey_st *e2e_ec_key_new(const char *curve);

/* Returns the JWKS document {"keys":[...]} with the public halves of keys[0..n), each
 * with its kid from kids, as compact JSON text (new string). A P-256 key gets alg
 * ES256 and an RSA key alg PS256. */
char *e2e_jwks_text(struct evp_pkey_st *const *keys, const char *const *kids, size_t n);

/* Signs a client assertion (RFC 7523) with key under kid: header {"alg":"ES256","kid"},
 * claims iss = sub = client_id, aud, iat now, exp now + 60 and a random jti. changes
 * is NULL or a JSON object text whose members replace claims, a null member removing
 * one. alg other than "ES256" goes into the header as given, with the same ES256
 * signature. Returns the compact JWS (new string). */
char *e2e_client_assertion(struct evp_pkey_st *key, const char *kid, const char *alg,
                           const char *client_id, const char *aud, const char *changes);

/* Signs claims (JSON text) as a compact JWS whose protected header is the JSON text
 * header, as given. An RSA key signs RS256 when the header's alg is "RS256" and PS256
 * otherwise. An EC key signs ECDSA with SHA-256, r and s each as long as its field,
 * whatever alg the header names, so a test can lie about the algorithm. Returns a new
 * string, or NULL. */
char *e2e_jws_sign(struct evp_pkey_st *key, const char *header, const char *claims);

/* ---- the cibad process ------------------------------------------------------------- */

/* The server secret of every instance. It is fixed because the signing keys that the
 * first instance creates in the suite's database are sealed with it. */
#define E2E_SERVER_SECRET "e2e-test-secret-6f1d0c3b9a8e47d2b5c4a3f2e1d0c9b8"

struct e2e_server {
    pid_t pid; /* 0 while not running */
    int port;
    char issuer[64];
    char *log_path; /* stdout and stderr of `cibad serve` */
    char **env;     /* NULL-terminated: the environment of serve and of the CLI */
    size_t n_env;
};

/* Prepares an instance: picks a free loopback port and builds the environment from the
 * process's own (less any CIBAD_* variable), the test database, the migrations,
 * E2E_SERVER_SECRET, 2 workers, then settings ("NAME=value", NULL-terminated, may be
 * NULL), which override. The binary is $CIBAD_BIN. Returns 0 or -1. */
int e2e_server_init(struct e2e_server *s, const char *const *settings);
/* Replaces or adds one "NAME=value" setting for later starts and commands. */
void e2e_server_setenv(struct e2e_server *s, const char *name, const char *value);

/* Runs `cibad ARGS...` (NULL-terminated) with the instance's environment and waits up
 * to 30 s. Stores its stdout in *out (new string) when out is not NULL. Returns the exit
 * status, or -1 when it could not run, timed out or died from a signal. */
int e2e_cli(const struct e2e_server *s, char **out, const char *arg, ...)
    __attribute__((sentinel));
/* Runs `cibad ARGS...` like e2e_cli and parses its stdout as JSON. Returns a new
 * reference, or NULL when the command failed or printed no JSON object. */
json_t *e2e_cli_json(const struct e2e_server *s, const char *arg, ...)
    __attribute__((sentinel));

/* Starts `cibad serve` with its output in log_path and waits up to 20 s for GET /readyz
 * to return 200. The child gets SIGKILL if the test process dies first. Returns 0, or
 * -1 (the process is stopped then). */
int e2e_server_start(struct e2e_server *s);
/* True while the serve process has not exited. */
bool e2e_server_alive(struct e2e_server *s);
/* Sends SIGTERM and waits up to 15 s (then SIGKILL). Returns the exit status, or -1
 * when the process died from a signal or had to be killed. Not running: returns 0. */
int e2e_server_stop(struct e2e_server *s);
/* Returns the whole serve log so far (new string, "" when there is none). */
char *e2e_server_log(const struct e2e_server *s);

/* True when value appears in log as a whole word: not next to a letter, digit, '-' or
 * '_'. A 6-digit code can turn up inside a timestamp or a port number by chance, and
 * that is no leak. */
bool e2e_log_contains(const char *log, const char *value);
/* Stops the process if it runs, then frees everything. */
void e2e_server_free(struct e2e_server *s);

#endif
