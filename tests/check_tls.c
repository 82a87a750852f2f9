/* check_tls.c - cibad serving HTTPS itself: versions, plain HTTP on the TLS port, the
 * client certificate a request carries, and the certificate header from a proxy
 * SPDX-License-Identifier: MIT
 *
 * Each test runs the real `cibad serve` ($CIBAD_BIN) against the test database, with
 * certificates from tests/mock_http.h, and talks to it with an OpenSSL client over
 * loopback. At debug level the server logs the first characters of the x5t#S256 of
 * every client certificate it receives and whether it chains to tls_client_ca_file.
 * The tests compare that line with the thumbprint they compute themselves.
 */
#include <check.h>
#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tests/check_runner.h"
#include "tests/e2e_client.h"
#include "tests/mock_http.h"
#include "util/util.h"

#define READY_MS       20000
#define TEST_TIMEOUT_S 60

static struct e2e_server srv;
static struct mock_http_certs certs;

/* ---- the server ------------------------------------------------------------------- */

/* Starts `cibad serve` with its output in the log. With wait_ready, waits for "ready"
 * in the log, because GET /readyz over plain HTTP cannot reach a TLS listener. Without
 * it, waits for the process to exit. Returns 0 when that happened in time. */
static int serve(bool wait_ready)
{
    char *argv[] = {"cibad", "serve", NULL};
    pid_t parent = getpid();
    int64_t deadline = util_mono_ms() + READY_MS;
    int fd = open(srv.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

    if (fd < 0)
        return -1;
    srv.pid = fork();
    if (srv.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent || dup2(fd, STDOUT_FILENO) < 0 ||
            dup2(fd, STDERR_FILENO) < 0)
            _exit(127);
        execve(getenv("CIBAD_BIN"), argv, srv.env);
        _exit(127);
    }
    close(fd);
    if (srv.pid < 0) {
        srv.pid = 0;
        return -1;
    }
    while (util_mono_ms() < deadline) {
        if (!e2e_server_alive(&srv))
            return wait_ready ? -1 : 0;
        if (wait_ready) {
            char *log = e2e_server_log(&srv);
            bool ready = strstr(log, " ready\n") != NULL;

            free(log);
            if (ready)
                return 0;
        }
        usleep(50000);
    }
    return -1;
}

static void setup_server(const char *const *settings)
{
    const char *base[] = {"CIBAD_LOG_LEVEL=debug", "CIBAD_WORKERS=1", NULL};

    ck_assert_int_eq(mock_http_certs_create(&certs), 0);
    ck_assert_msg(
        e2e_server_init(&srv, base) == 0,
        "e2e_server_init failed: are CIBAD_BIN and CIBAD_TEST_DATABASE_URL set?");
    snprintf(srv.issuer, sizeof(srv.issuer), "https://127.0.0.1:%d", srv.port);
    e2e_server_setenv(&srv, "CIBAD_ISSUER", srv.issuer);
    for (size_t i = 0; settings && settings[i]; i += 2)
        e2e_server_setenv(&srv, settings[i], settings[i + 1]);
    ck_assert_msg(e2e_cli(&srv, NULL, "migrate", NULL) == 0, "cibad migrate failed");
}

static void setup_tls(void)
{
    setup_server(NULL);
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", certs.cert_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.key_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CA_FILE", certs.ca_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_REQUEST_CLIENT_CERT", "true");
    ck_assert_msg(serve(true) == 0, "cibad serve with TLS did not get ready");
}

static void setup_plain(void)
{
    setup_server(NULL);
}

static void teardown(void)
{
    e2e_server_free(&srv);
    mock_http_certs_free(&certs);
}

/* ---- an OpenSSL client ------------------------------------------------------------ */

/* A client context that trusts the test CA, with the client certificate given (or
 * none) and the highest protocol version given (0: any). */
static SSL_CTX *client_ctx(const char *cert_file, const char *key_file, int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(SSL_CTX_load_verify_locations(ctx, certs.ca_file, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (max_version) {
        /* OpenSSL 3 allows TLS 1.1 at security level 0 only. */
        SSL_CTX_set_security_level(ctx, 0);
        ck_assert_int_eq(SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0"), 1);
        ck_assert_int_eq(SSL_CTX_set_min_proto_version(ctx, 0), 1);
        ck_assert_int_eq(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
    }
    if (cert_file) {
        ck_assert_int_eq(SSL_CTX_use_certificate_file(ctx, cert_file, SSL_FILETYPE_PEM),
                         1);
        ck_assert_int_eq(SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM), 1);
    }
    return ctx;
}

static int connect_loopback(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {10, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Sends GET /healthz over TLS and returns the whole reply (new string), or NULL when
 * the handshake failed. */
static char *tls_get(SSL_CTX *ctx)
{
    const char *request =
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    int fd = connect_loopback(srv.port);
    SSL *ssl = SSL_new(ctx);
    char *reply = NULL;
    size_t len = 0;
    char buf[4096];
    int n;

    ck_assert_ptr_nonnull(ssl);
    ck_assert_int_eq(SSL_set_fd(ssl, fd), 1);
    ck_assert_int_eq(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1"), 1);
    if (SSL_connect(ssl) != 1)
        goto out;
    ck_assert_int_eq(SSL_write(ssl, request, (int)strlen(request)), (int)strlen(request));
    reply = util_strdup("");
    while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
        reply = util_realloc(reply, len + (size_t)n + 1);
        memcpy(reply + len, buf, (size_t)n);
        len += (size_t)n;
        reply[len] = '\0';
    }
out:
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return reply;
}

/* The x5t#S256 of the certificate in path. */
static void thumbprint_of(const char *path, char out[44])
{
    FILE *f = fopen(path, "r");
    X509 *x509 = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    unsigned char digest[32];
    unsigned int len = 0;

    ck_assert_ptr_nonnull(x509);
    ck_assert_int_eq(X509_digest(x509, EVP_sha256(), digest, &len), 1);
    ck_assert_uint_eq(len, 32);
    util_b64url_encode(digest, len, out);
    X509_free(x509);
    fclose(f);
}

/* The server's log line for a client certificate with this thumbprint. */
static bool log_has_cert(const char *cert_file, const char *verdict)
{
    char x5t[44], line[128];
    char *log = e2e_server_log(&srv);
    bool found;

    thumbprint_of(cert_file, x5t);
    snprintf(line, sizeof(line), "client certificate x5t#S256 %.8s..., %s\n", x5t,
             verdict);
    found = strstr(log, line) != NULL;
    free(log);
    return found;
}

static bool log_has(const char *text)
{
    char *log = e2e_server_log(&srv);
    bool found = strstr(log, text) != NULL;

    free(log);
    return found;
}

/* ---- 1. HTTPS itself -------------------------------------------------------------- */

START_TEST(https_healthz_answers)
{
    SSL_CTX *ctx = client_ctx(NULL, NULL, 0);
    char *reply = tls_get(ctx);

    ck_assert_msg(reply, "TLS handshake with cibad failed");
    ck_assert_msg(strncmp(reply, "HTTP/1.1 200", 12) == 0, "reply: %.80s", reply);
    ck_assert_ptr_nonnull(strstr(reply, "X-Request-Id: "));
    free(reply);
    SSL_CTX_free(ctx);
    /* No certificate, no certificate line. */
    ck_assert(!log_has("client certificate x5t#S256"));
}
END_TEST

START_TEST(plain_http_gets_no_http_answer)
{
    const char request[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    struct e2e_response r;
    int rc = e2e_raw(srv.port, request, sizeof(request) - 1, true, &r);

    if (rc == 0) {
        int status = r.status;

        e2e_response_free(&r);
        ck_abort_msg("plain HTTP on the TLS port got an HTTP %d reply", status);
    }
    /* The server is still well. */
    SSL_CTX *ctx = client_ctx(NULL, NULL, 0);
    char *reply = tls_get(ctx);

    ck_assert_msg(reply && strncmp(reply, "HTTP/1.1 200", 12) == 0,
                  "HTTPS after plain HTTP failed");
    free(reply);
    SSL_CTX_free(ctx);
}
END_TEST

START_TEST(tls11_rejected)
{
    SSL_CTX *ctx = client_ctx(NULL, NULL, TLS1_1_VERSION);
    char *reply = tls_get(ctx);

    ck_assert_msg(!reply, "a TLS 1.1 handshake succeeded");
    SSL_CTX_free(ctx);
    ctx = client_ctx(NULL, NULL, TLS1_2_VERSION);
    reply = tls_get(ctx);
    ck_assert_msg(reply && strncmp(reply, "HTTP/1.1 200", 12) == 0, "TLS 1.2 failed");
    free(reply);
    SSL_CTX_free(ctx);
}
END_TEST

/* ---- 2. client certificates ------------------------------------------------------- */

START_TEST(ca_client_cert_seen_and_verified)
{
    SSL_CTX *ctx = client_ctx(certs.client_cert_file, certs.client_key_file, 0);
    char *reply = tls_get(ctx);

    ck_assert_msg(reply && strncmp(reply, "HTTP/1.1 200", 12) == 0, "HTTPS failed");
    free(reply);
    SSL_CTX_free(ctx);
    ck_assert_msg(log_has_cert(certs.client_cert_file, "verified"),
                  "no verified certificate line in the log");
}
END_TEST

START_TEST(tls12_client_cert_seen)
{
    SSL_CTX *ctx = client_ctx(certs.client_cert_file, certs.client_key_file, 0);
    char *reply;

    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    reply = tls_get(ctx);
    ck_assert_msg(reply && strncmp(reply, "HTTP/1.1 200", 12) == 0, "TLS 1.2 failed");
    free(reply);
    SSL_CTX_free(ctx);
    ck_assert(log_has_cert(certs.client_cert_file, "verified"));
}
END_TEST

START_TEST(self_signed_client_cert_seen_unverified)
{
    SSL_CTX *ctx = client_ctx(certs.self_cert_file, certs.self_key_file, 0);
    char *reply = tls_get(ctx);

    ck_assert_msg(reply && strncmp(reply, "HTTP/1.1 200", 12) == 0,
                  "a self-signed client certificate was refused");
    free(reply);
    SSL_CTX_free(ctx);
    ck_assert_msg(log_has_cert(certs.self_cert_file, "not verified"),
                  "no unverified certificate line in the log");
    ck_assert(!log_has_cert(certs.self_cert_file, "verified"));
}
END_TEST

/* ---- 3. startup errors ------------------------------------------------------------ */

static void expect_startup_error(const char *message)
{
    ck_assert_msg(serve(false) == 0, "cibad serve did not exit");
    ck_assert_msg(log_has(message), "the log lacks \"%s\"", message);
}

START_TEST(mismatched_key_rejected)
{
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", certs.cert_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.wrong_key_file);
    expect_startup_error("does not match the certificate");
}
END_TEST

START_TEST(missing_cert_file_rejected)
{
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", "/nonexistent/cert.pem");
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.key_file);
    expect_startup_error("tls_cert_file /nonexistent/cert.pem: No such file");
}
END_TEST

START_TEST(garbage_cert_file_rejected)
{
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", certs.key_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.key_file);
    expect_startup_error("cannot load the certificate");
}
END_TEST

START_TEST(config_rules)
{
    char *out = NULL;

    /* Each of these is refused by the settings check, before anything is opened. */
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", certs.cert_file);
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.key_file);
    e2e_server_setenv(&srv, "CIBAD_ISSUER", "http://127.0.0.1:1");
    expect_startup_error("issuer must be an https:// URL when TLS is on");
}
END_TEST

/* ---- 4. the certificate header from a proxy --------------------------------------- */

/* Percent-encodes every byte but the unreserved ones, as nginx's
 * $ssl_client_escaped_cert does: a space is %20 and a "+" of the base64 is %2B. */
static char *uri_encode(const char *s)
{
    char *out = util_calloc(1, 3 * strlen(s) + 1), *p = out;

    for (; *s; s++) {
        if (isalnum((unsigned char)*s) || strchr("-._~", *s))
            *p++ = *s;
        else
            p += sprintf(p, "%%%02X", (unsigned char)*s);
    }
    return out;
}

/* The header line a proxy sends: name, then the URL-encoded PEM in path. */
static char *cert_header(const char *name, const char *path)
{
    FILE *f = fopen(path, "r");
    char pem[8192];
    size_t n;
    char *encoded, *line;

    ck_assert_ptr_nonnull(f);
    n = fread(pem, 1, sizeof(pem) - 1, f);
    fclose(f);
    pem[n] = '\0';
    encoded = uri_encode(pem);
    line = util_asprintf("%s: %s", name, encoded);
    free(encoded);
    return line;
}

static int get_with_headers(const char *header, const char *header2)
{
    const char *headers[] = {header, header2, NULL};
    struct e2e_response r;
    int status;

    ck_assert_int_eq(e2e_request(srv.port, "GET", "/healthz", headers, NULL, 0, &r), 0);
    status = r.status;
    e2e_response_free(&r);
    return status;
}

static int get_with_header(const char *header)
{
    return get_with_headers(header, NULL);
}

static void serve_behind_proxy(const char *proxies)
{
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CERT_HEADER", "X-Client-Cert");
    e2e_server_setenv(&srv, "CIBAD_TRUSTED_PROXIES", proxies);
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CA_FILE", certs.ca_file);
    ck_assert_msg(e2e_server_start(&srv) == 0, "cibad serve behind a proxy failed");
}

START_TEST(proxy_header_from_trusted_address)
{
    char *client = cert_header("X-Client-Cert", certs.client_cert_file);
    char *self = cert_header("X-Client-Cert", certs.self_cert_file);

    serve_behind_proxy("10.1.2.3, 127.0.0.1");
    ck_assert_int_eq(get_with_header(client), 200);
    ck_assert_int_eq(get_with_header(self), 200);
    ck_assert_int_eq(get_with_header("X-Client-Cert: not%20a%20certificate"), 200);
    ck_assert_msg(log_has_cert(certs.client_cert_file, "verified"),
                  "the proxy's header was not honoured");
    ck_assert(log_has_cert(certs.self_cert_file, "not verified"));
    ck_assert(log_has("header X-Client-Cert contains no PEM certificate; ignored"));
    free(client);
    free(self);
}
END_TEST

START_TEST(proxy_header_repeated_ignored)
{
    char *client = cert_header("X-Client-Cert", certs.client_cert_file);
    char *self = cert_header("x-client-cert", certs.self_cert_file);

    serve_behind_proxy("127.0.0.1");
    ck_assert_int_eq(get_with_headers(self, client), 200);
    ck_assert(log_has("header X-Client-Cert is repeated; ignored"));
    ck_assert_msg(!log_has("client certificate x5t#S256"),
                  "a repeated certificate header was honoured");
    free(client);
    free(self);
}
END_TEST

START_TEST(proxy_header_from_other_address_ignored)
{
    char *client = cert_header("X-Client-Cert", certs.client_cert_file);

    serve_behind_proxy("10.1.2.3,::1");
    ck_assert_int_eq(get_with_header(client), 200);
    ck_assert_msg(!log_has("client certificate x5t#S256"),
                  "a header from an untrusted peer was honoured");
    ck_assert(
        log_has("header X-Client-Cert from a peer not in trusted_proxies; ignored"));
    free(client);
}
END_TEST

START_TEST(proxy_settings_checked)
{
    char *out = NULL;

    e2e_server_setenv(&srv, "CIBAD_ISSUER", "http://127.0.0.1:1");
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CERT_HEADER", "X-Client-Cert");
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL),
                     0); /* no trusted_proxies */
    free(out);
    e2e_server_setenv(&srv, "CIBAD_TRUSTED_PROXIES", "127.0.0.1,proxy.example");
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
    e2e_server_setenv(&srv, "CIBAD_TRUSTED_PROXIES", ",");
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
    e2e_server_setenv(&srv, "CIBAD_TRUSTED_PROXIES", "127.0.0.1");
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CERT_HEADER", "X-Client Cert");
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CERT_HEADER", "X-Client-Cert");
    ck_assert_int_eq(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
    /* Requesting a certificate needs TLS. */
    e2e_server_setenv(&srv, "CIBAD_TLS_REQUEST_CLIENT_CERT", "true");
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "list", NULL), 0);
    free(out);
}
END_TEST

static Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc;

    tc = tcase_create("https");
    tcase_add_checked_fixture(tc, setup_tls, teardown);
    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    tcase_add_test(tc, https_healthz_answers);
    tcase_add_test(tc, plain_http_gets_no_http_answer);
    tcase_add_test(tc, tls11_rejected);
    tcase_add_test(tc, ca_client_cert_seen_and_verified);
    tcase_add_test(tc, tls12_client_cert_seen);
    tcase_add_test(tc, self_signed_client_cert_seen_unverified);
    suite_add_tcase(s, tc);

    tc = tcase_create("startup");
    tcase_add_checked_fixture(tc, setup_plain, teardown);
    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    tcase_add_test(tc, mismatched_key_rejected);
    tcase_add_test(tc, missing_cert_file_rejected);
    tcase_add_test(tc, garbage_cert_file_rejected);
    tcase_add_test(tc, config_rules);
    suite_add_tcase(s, tc);

    tc = tcase_create("proxy");
    tcase_add_checked_fixture(tc, setup_plain, teardown);
    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    tcase_add_test(tc, proxy_header_from_trusted_address);
    tcase_add_test(tc, proxy_header_repeated_ignored);
    tcase_add_test(tc, proxy_header_from_other_address_ignored);
    tcase_add_test(tc, proxy_settings_checked);
    suite_add_tcase(s, tc);

    return s;
}

CHECK_MAIN(tls_suite)
