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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/bn.h>
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

/* Sends GET /healthz on a connection that offers *session (when not NULL), replaces
 * *session with the connection's own, and returns whether the server resumed it. Fails
 * the test when the handshake or the reply fails. */
static bool tls_get_resumed(SSL_CTX *ctx, SSL_SESSION **session)
{
    const char *request =
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    int fd = connect_loopback(srv.port);
    SSL *ssl = SSL_new(ctx);
    char buf[4096];
    int n, total = 0;
    bool resumed;

    ck_assert_ptr_nonnull(ssl);
    ck_assert_int_eq(SSL_set_fd(ssl, fd), 1);
    if (*session)
        ck_assert_int_eq(SSL_set_session(ssl, *session), 1);
    ck_assert_msg(SSL_connect(ssl) == 1, "the handshake failed%s",
                  *session ? " when resuming a session" : "");
    ck_assert_int_eq(SSL_write(ssl, request, (int)strlen(request)), (int)strlen(request));
    /* Reading also takes in a TLS 1.3 session ticket. */
    while ((n = SSL_read(ssl, buf + total, (int)sizeof(buf) - 1 - total)) > 0)
        total += n;
    buf[total] = '\0';
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "no 200 reply over TLS: %s",
                  buf);
    resumed = SSL_session_reused(ssl) == 1;
    SSL_SESSION_free(*session);
    *session = SSL_get1_session(ssl);
    SSL_shutdown(ssl);
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return resumed;
}

START_TEST(tls_session_resumed)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};

    /* With client certificates requested, a resumed handshake must work too. */
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        SSL_CTX *ctx = client_ctx(certs.client_cert_file, certs.client_key_file, 0);
        SSL_SESSION *session = NULL;

        ck_assert_int_eq(SSL_CTX_set_max_proto_version(ctx, versions[i]), 1);
        ck_assert_msg(!tls_get_resumed(ctx, &session), "a first handshake was resumed");
        ck_assert_ptr_nonnull(session);
        ck_assert_msg(tls_get_resumed(ctx, &session),
                      "the server did not resume the session (version 0x%x)",
                      versions[i]);
        SSL_SESSION_free(session);
        SSL_CTX_free(ctx);
    }
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

/* ---- 5. client authentication by certificate (RFC 8705) --------------------------- */

/* Certificates for the clients, from a CA of this suite (tls_client_ca_file), so that
 * the tests can give them the subjects and SANs they need. */
struct mtls_files {
    char *ca;                /* the client CA */
    char *agent, *agent_key; /* by ca: AGENT_DN and AGENT_SANS */
    char *other, *other_key; /* by ca: another DN, no SANs */
    char *stray, *stray_key; /* AGENT_DN, by a CA that is not tls_client_ca_file */
    char *self, *self_key;   /* self-signed, its key registered */
    char *self2, *self2_key; /* self-signed, its key not registered */
    char *jwks;              /* the public keys of self and stray */
};

#define AGENT_DN "CN=Agent One,OU=Agents,O=Example Corp,C=DE"
#define AGENT_SANS                                                                       \
    "DNS:agent-1.example.com,URI:spiffe://example.org/agent-1,IP:192.0.2.7,"             \
    "email:agent-1@example.com"
#define MTLS_SCOPE "openid"

static struct mtls_files mf;
static struct mock_http *sms_sink;
static struct mock_http *push_sink;
static char *user_phone;

static void ext_add(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;

    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    ck_assert_ptr_nonnull(ext);
    ck_assert_int_eq(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* Writes a new P-256 key and its certificate, subject in X.509 order (C first),
 * signed by issuer (self-signed when NULL). Returns the key and certificate, which the
 * caller frees, when out pointers are given. */
static void pem_pair(const char *dir, const char *name, const char *const *subject,
                     X509 *issuer, EVP_PKEY *issuer_key, const char *sans, bool ca,
                     char **cert_path, char **key_path, X509 **cert_out,
                     EVP_PKEY **key_out)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    X509_NAME *subj = X509_NAME_new();
    FILE *f;

    ck_assert_ptr_nonnull(key);
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), (long)(util_mono_ms() & 0xffffff));
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    for (size_t i = 0; subject[i]; i += 2)
        ck_assert_int_eq(X509_NAME_add_entry_by_txt(subj, subject[i], MBSTRING_UTF8,
                                                    (const unsigned char *)subject[i + 1],
                                                    -1, -1, 0),
                         1);
    X509_set_subject_name(cert, subj);
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : subj);
    X509_set_pubkey(cert, key);
    ext_add(cert, issuer ? issuer : cert, NID_basic_constraints,
            ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    if (!ca)
        ext_add(cert, issuer ? issuer : cert, NID_ext_key_usage, "clientAuth");
    if (sans)
        ext_add(cert, issuer ? issuer : cert, NID_subject_alt_name, sans);
    ck_assert_int_gt(X509_sign(cert, issuer ? issuer_key : key, EVP_sha256()), 0);
    X509_NAME_free(subj);

    *cert_path = util_asprintf("%s/%s.pem", dir, name);
    f = fopen(*cert_path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(PEM_write_X509(f, cert), 1);
    fclose(f);
    if (key_path) {
        *key_path = util_asprintf("%s/%s.key", dir, name);
        f = fopen(*key_path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
        fclose(f);
    }
    if (cert_out) {
        *cert_out = cert;
        *key_out = key;
    } else {
        X509_free(cert);
        EVP_PKEY_free(key);
    }
}

/* The public JWK of the key in a PEM certificate file, built from its x and y. */
static json_t *jwk_of_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = cert ? X509_get0_pubkey(cert) : NULL;
    BIGNUM *x = NULL, *y = NULL;
    unsigned char bx[32], by[32];
    char ex[44], ey[44];

    ck_assert_ptr_nonnull(key);
    fclose(f);
    ck_assert_int_eq(EVP_PKEY_get_bn_param(key, "qx", &x), 1);
    ck_assert_int_eq(EVP_PKEY_get_bn_param(key, "qy", &y), 1);
    ck_assert_int_eq(BN_bn2binpad(x, bx, 32), 32);
    ck_assert_int_eq(BN_bn2binpad(y, by, 32), 32);
    util_b64url_encode(bx, 32, ex);
    util_b64url_encode(by, 32, ey);
    BN_free(x);
    BN_free(y);
    X509_free(cert);
    return json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", ex, "y",
                     ey);
}

static void mtls_files_create(const char *dir)
{
    static const char *const ca_subject[] = {"CN", "cibad mtls test CA", NULL};
    static const char *const stray_ca_subject[] = {"CN", "cibad stray CA", NULL};
    static const char *const agent_subject[] = {
        "C", "DE", "O", "Example Corp", "OU", "Agents", "CN", "Agent One", NULL};
    static const char *const other_subject[] = {"CN", "Agent Two", NULL};
    static const char *const self_subject[] = {"CN", "self-signed agent", NULL};
    X509 *ca, *stray_ca;
    EVP_PKEY *ca_key, *stray_ca_key;
    char *stray_ca_path;
    json_t *jwks;
    FILE *f;

    pem_pair(dir, "mtls-ca", ca_subject, NULL, NULL, NULL, true, &mf.ca, NULL, &ca,
             &ca_key);
    pem_pair(dir, "stray-ca", stray_ca_subject, NULL, NULL, NULL, true, &stray_ca_path,
             NULL, &stray_ca, &stray_ca_key);
    pem_pair(dir, "agent", agent_subject, ca, ca_key, AGENT_SANS, false, &mf.agent,
             &mf.agent_key, NULL, NULL);
    pem_pair(dir, "other", other_subject, ca, ca_key, NULL, false, &mf.other,
             &mf.other_key, NULL, NULL);
    pem_pair(dir, "stray", agent_subject, stray_ca, stray_ca_key, AGENT_SANS, false,
             &mf.stray, &mf.stray_key, NULL, NULL);
    pem_pair(dir, "self", self_subject, NULL, NULL, NULL, false, &mf.self, &mf.self_key,
             NULL, NULL);
    pem_pair(dir, "self2", self_subject, NULL, NULL, NULL, false, &mf.self2,
             &mf.self2_key, NULL, NULL);
    X509_free(ca);
    X509_free(stray_ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(stray_ca_key);
    unlink(stray_ca_path);
    free(stray_ca_path);

    jwks = json_pack("{s:[o, o]}", "keys", jwk_of_cert(mf.self), jwk_of_cert(mf.stray));
    mf.jwks = util_asprintf("%s/self-jwks.json", dir);
    f = fopen(mf.jwks, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(json_dumpf(jwks, f, JSON_COMPACT), 0);
    fclose(f);
    json_decref(jwks);
}

static void mtls_files_free(void)
{
    char *paths[] = {mf.ca,        mf.agent, mf.agent_key, mf.other,
                     mf.other_key, mf.stray, mf.stray_key, mf.self,
                     mf.self_key,  mf.self2, mf.self2_key, mf.jwks};

    for (size_t i = 0; i < ARRAY_LEN(paths); i++) {
        if (paths[i])
            unlink(paths[i]);
        free(paths[i]);
    }
    memset(&mf, 0, sizeof(mf));
}

/* Registers a client with `cibad client create` and the extra arguments given
 * (NULL-terminated). Returns its client_id (new string). */
static char *mtls_client(const char *first, ...)
{
    char *argv[24] = {"client",  "create",   "--name", "mTLS agent",
                      "--scope", MTLS_SCOPE, "--json"};
    size_t n = 7;
    va_list ap;
    json_t *out;
    char *id;

    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        ck_assert_uint_lt(n, ARRAY_LEN(argv) - 1);
        argv[n++] = (char *)a;
    }
    va_end(ap);
    out = e2e_cli_json(&srv, argv[0], argv[1], argv[2], argv[3], argv[4], argv[5],
                       argv[6], argv[7], argv[8], argv[9], argv[10], argv[11], argv[12],
                       argv[13], argv[14], argv[15], argv[16], argv[17], NULL);
    ck_assert_msg(out != NULL, "client create %s %s failed", first, argv[8]);
    id = util_strdup(json_string_value(json_object_get(out, "client_id")));
    json_decref(out);
    return id;
}

static void mtls_prepare(void)
{
    char *url;
    json_t *out;

    setup_server((const char *[]){"CIBAD_SMS_DRIVER", "http", "CIBAD_SMS_HTTP_TOKEN", "t",
                                  "CIBAD_SMS_ALLOW_HTTP_LOOPBACK", "true",
                                  "CIBAD_POLL_INTERVAL", "1",
                                  "CIBAD_NOTIFICATION_ALLOW_LOOPBACK", "true",
                                  "CIBAD_SMS_PER_PHONE_MAX", "50", NULL});
    mtls_files_create(certs.dir);
    sms_sink = mock_http_start(NULL, NULL);
    push_sink = mock_http_start(NULL, NULL);
    ck_assert_ptr_nonnull(sms_sink);
    ck_assert_ptr_nonnull(push_sink);
    url = mock_http_url(sms_sink, "127.0.0.1", "/sms");
    e2e_server_setenv(&srv, "CIBAD_SMS_HTTP_URL", url);
    free(url);
    user_phone = util_asprintf("+1555%07u", (unsigned)(util_mono_ms() % 10000000));
    out = e2e_cli_json(&srv, "user", "create", "--phone", user_phone, "--json", NULL);
    ck_assert_msg(out != NULL, "user create failed");
    json_decref(out);
}

static void setup_mtls(void)
{
    mtls_prepare();
    e2e_server_setenv(&srv, "CIBAD_TLS_CERT_FILE", certs.cert_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_KEY_FILE", certs.key_file);
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CA_FILE", mf.ca);
    e2e_server_setenv(&srv, "CIBAD_TLS_REQUEST_CLIENT_CERT", "true");
}

static void teardown_mtls(void)
{
    e2e_server_free(&srv);
    mock_http_free(sms_sink);
    mock_http_free(push_sink);
    sms_sink = push_sink = NULL;
    free(user_phone);
    user_phone = NULL;
    mtls_files_free();
    mock_http_certs_free(&certs);
}

static void start_mtls(void)
{
    if (serve(true) != 0) {
        char *log = e2e_server_log(&srv);

        ck_abort_msg("cibad serve with TLS did not get ready:\n%s", log);
    }
}

struct tls_reply {
    int status;
    char *body;
};

/* Sends one request over TLS with the client certificate given (or none) and returns
 * the status and body. headers may be NULL or hold "Name: value\r\n" lines. */
static struct tls_reply tls_request(const char *cert, const char *key, const char *method,
                                    const char *path, const char *headers,
                                    const char *body)
{
    SSL_CTX *ctx = client_ctx(cert, key, 0);
    int fd = connect_loopback(srv.port);
    SSL *ssl = SSL_new(ctx);
    char *request;
    struct tls_reply r = {0};
    char *reply = util_strdup(""), buf[4096], *end;
    size_t len = 0;
    int n;

    if (body)
        request =
            util_asprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                          "%sContent-Type: application/x-www-form-urlencoded\r\n"
                          "Content-Length: %zu\r\n\r\n%s",
                          method, path, headers ? headers : "", strlen(body), body);
    else
        request = util_asprintf(
            "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n", method,
            path, headers ? headers : "");
    ck_assert_int_eq(SSL_set_fd(ssl, fd), 1);
    ck_assert_msg(SSL_connect(ssl) == 1, "TLS handshake failed");
    ck_assert_int_eq(SSL_write(ssl, request, (int)strlen(request)), (int)strlen(request));
    while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
        reply = util_realloc(reply, len + (size_t)n + 1);
        memcpy(reply + len, buf, (size_t)n);
        len += (size_t)n;
        reply[len] = '\0';
    }
    ck_assert_msg(sscanf(reply, "HTTP/1.1 %d", &r.status) == 1, "no reply: %.60s", reply);
    end = strstr(reply, "\r\n\r\n");
    r.body = util_strdup(end ? end + 4 : "");
    free(reply);
    free(request);
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return r;
}

/* The "error" member of a JSON reply, or "" (the string lives until the next call). */
static const char *reply_error(const struct tls_reply *r)
{
    static char code[64];
    json_t *body = json_loads(r->body, 0, NULL);

    snprintf(code, sizeof(code), "%s",
             body && json_string_value(json_object_get(body, "error"))
                 ? json_string_value(json_object_get(body, "error"))
                 : "");
    json_decref(body);
    return code;
}

/* POSTs a backchannel authentication request for the test user as client_id (not
 * sent when NULL), with extra form text appended. */
static struct tls_reply bc_authorize_tls(const char *cert, const char *key,
                                         const char *client_id, const char *extra)
{
    char *phone = e2e_form_encode(user_phone);
    char *body = util_asprintf("scope=%s&login_hint=%s%s%s%s", MTLS_SCOPE, phone,
                               client_id ? "&client_id=" : "", client_id ? client_id : "",
                               extra ? extra : "");
    struct tls_reply r = tls_request(cert, key, "POST", "/bc-authorize", NULL, body);

    free(body);
    free(phone);
    return r;
}

static void assert_reply(const struct tls_reply *r, int status, const char *error,
                         const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %d, body %s", what, r->status,
                  r->body);
    if (error)
        ck_assert_msg(strcmp(reply_error(r), error) == 0, "%s: body %s", what, r->body);
}

/* Returns the auth_req_id of a 200 reply (new string). */
static char *auth_req_id_of(const struct tls_reply *r)
{
    json_t *body = json_loads(r->body, 0, NULL);
    const char *id = json_string_value(json_object_get(body, "auth_req_id"));
    char *copy;

    ck_assert_msg(id != NULL, "no auth_req_id in %s", r->body);
    copy = util_strdup(id);
    json_decref(body);
    return copy;
}

/* Approves the request whose SMS is the index-th at the gateway (from 0), over TLS
 * or, with plain, over HTTP. */
static void approve_sms_over(size_t index, bool plain)
{
    const struct mock_http_request *q;
    json_t *sms;
    const char *text, *link, *p;
    char ref[64] = "", code[7] = "", *path, *form;
    size_t n = 0;
    struct tls_reply r;

    ck_assert_msg(mock_http_wait(sms_sink, index + 1, 10000) == 0, "no SMS");
    q = mock_http_request_get(sms_sink, index);
    sms = json_loadb(q->body, q->body_len, 0, NULL);
    text = json_string_value(json_object_get(sms, "text"));
    ck_assert_ptr_nonnull(text);
    link = strstr(text, "/approve/");
    ck_assert_ptr_nonnull(link);
    link += strlen("/approve/");
    while ((isalnum((unsigned char)link[n]) || link[n] == '-' || link[n] == '_') &&
           n < sizeof(ref) - 1)
        n++;
    memcpy(ref, link, n);
    ref[n] = '\0';
    /* The code is the run of exactly six digits outside the link. */
    for (p = text; *p; p++) {
        size_t run = strspn(p, "0123456789");

        if (run == 6 && (p < link || p > link + n))
            memcpy(code, p, 6);
        if (run)
            p += run - 1;
    }
    ck_assert_msg(code[0], "no code in the SMS");
    json_decref(sms);
    path = util_asprintf("/approve/%s", ref);
    form = util_asprintf("code=%s&action=approve", code);
    if (plain) {
        const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
        struct e2e_response plain_reply;

        ck_assert_int_eq(e2e_request(srv.port, "POST", path, headers, form, strlen(form),
                                     &plain_reply),
                         0);
        r.status = plain_reply.status;
        r.body = util_strdup(plain_reply.body ? plain_reply.body : "");
        e2e_response_free(&plain_reply);
    } else {
        r = tls_request(NULL, NULL, "POST", path, NULL, form);
    }
    ck_assert_msg(r.status == 200 && strstr(r.body, "Approved"), "approval: %d",
                  r.status);
    free(r.body);
    free(path);
    free(form);
}

static void approve_sms(size_t index)
{
    approve_sms_over(index, false);
}

/* The cnf.x5t#S256 of an access token, or "" (static buffer). */
static const char *token_x5t(const char *access_token)
{
    static char x5t[64];
    json_t *header = NULL, *claims = NULL;
    const char *value;

    ck_assert_int_eq(e2e_jwt_decode(access_token, &header, &claims), 0);
    value =
        json_string_value(json_object_get(json_object_get(claims, "cnf"), "x5t#S256"));
    snprintf(x5t, sizeof(x5t), "%s", value ? value : "");
    json_decref(header);
    json_decref(claims);
    return x5t;
}

START_TEST(mtls_each_subject_member_e2e)
{
    const char *members[][2] = {
        {"--tls-subject-dn", "cn=agent one, ou=Agents, o=Example Corp, c=DE"},
        {"--tls-san-dns", "Agent-1.example.com"},
        {"--tls-san-uri", "spiffe://example.org/agent-1"},
        {"--tls-san-ip", "192.0.2.7"},
        {"--tls-san-email", "agent-1@example.com"},
    };
    char *ids[ARRAY_LEN(members)];

    for (size_t i = 0; i < ARRAY_LEN(members); i++)
        ids[i] = mtls_client("--auth-method", "tls_client_auth", members[i][0],
                             members[i][1], NULL);
    start_mtls();
    for (size_t i = 0; i < ARRAY_LEN(members); i++) {
        struct tls_reply r = bc_authorize_tls(mf.agent, mf.agent_key, ids[i], NULL);

        assert_reply(&r, 200, NULL, members[i][0]);
        free(r.body);
        /* Another certificate from the same CA has none of these members. */
        r = bc_authorize_tls(mf.other, mf.other_key, ids[i], NULL);
        assert_reply(&r, 401, "invalid_client", members[i][0]);
        free(r.body);
        free(ids[i]);
    }
}
END_TEST

START_TEST(mtls_rejections_e2e)
{
    char *dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                           AGENT_DN, NULL);
    char *wrong_dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                                 "CN=Agent One,O=Example Corp,C=DE", NULL);
    char *self = mtls_client("--auth-method", "self_signed_tls_client_auth", "--jwks",
                             mf.jwks, NULL);
    char *secret_client = mtls_client("--auth-method", "client_secret_post", NULL);
    struct tls_reply r;

    start_mtls();
    r = bc_authorize_tls(mf.agent, mf.agent_key, wrong_dn, NULL);
    assert_reply(&r, 401, "invalid_client", "wrong DN");
    free(r.body);
    /* Not chained to tls_client_ca_file: refused by tls_client_auth, accepted by
     * self_signed_tls_client_auth because its key is registered. */
    r = bc_authorize_tls(mf.stray, mf.stray_key, dn, NULL);
    assert_reply(&r, 401, "invalid_client", "unchained certificate");
    free(r.body);
    r = bc_authorize_tls(mf.stray, mf.stray_key, self, NULL);
    assert_reply(&r, 200, NULL, "unchained certificate, key registered");
    free(r.body);
    r = bc_authorize_tls(mf.self, mf.self_key, self, NULL);
    assert_reply(&r, 200, NULL, "self-signed, key registered");
    free(r.body);
    r = bc_authorize_tls(mf.self2, mf.self2_key, self, NULL);
    assert_reply(&r, 401, "invalid_client", "self-signed, key not registered");
    free(r.body);
    r = bc_authorize_tls(mf.agent, mf.agent_key, self, NULL);
    assert_reply(&r, 401, "invalid_client", "CA certificate, key not registered");
    free(r.body);
    /* No certificate. */
    r = bc_authorize_tls(NULL, NULL, dn, NULL);
    assert_reply(&r, 401, "invalid_client", "no certificate");
    free(r.body);
    /* No client_id. */
    r = bc_authorize_tls(mf.agent, mf.agent_key, NULL, NULL);
    assert_reply(&r, 401, "invalid_client", "no client_id");
    free(r.body);
    /* A certificate and a second method. */
    r = bc_authorize_tls(mf.agent, mf.agent_key, secret_client, "&client_secret=x");
    assert_reply(&r, 400, "invalid_request", "certificate and client_secret");
    free(r.body);
    r = bc_authorize_tls(mf.agent, mf.agent_key, dn,
                         "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-"
                         "assertion-type%3Ajwt-bearer&client_assertion=a.b.c");
    assert_reply(&r, 400, "invalid_request", "certificate and client_assertion");
    free(r.body);
    /* A secret client that sends only a certificate. */
    r = bc_authorize_tls(mf.agent, mf.agent_key, secret_client, NULL);
    assert_reply(&r, 401, "invalid_client", "secret client with a certificate");
    free(r.body);
    free(dn);
    free(wrong_dn);
    free(self);
    free(secret_client);
    /* A clean exit: under the sanitizers, no leak on these paths either. */
    ck_assert_int_eq(e2e_server_stop(&srv), 0);
}
END_TEST

START_TEST(mtls_poll_token_bound)
{
    char *dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                           AGENT_DN, NULL);
    char *form, *id, x5t[44];
    struct tls_reply r;
    json_t *body;
    int64_t deadline = util_mono_ms() + 10000;

    start_mtls();
    r = bc_authorize_tls(mf.agent, mf.agent_key, dn, NULL);
    assert_reply(&r, 200, NULL, "bc-authorize");
    id = auth_req_id_of(&r);
    free(r.body);
    approve_sms(0);
    form = util_asprintf("grant_type=urn%%3Aopenid%%3Aparams%%3Agrant-type%%3Aciba&"
                         "auth_req_id=%s&client_id=%s",
                         id, dn);
    /* Without the certificate the client cannot redeem. */
    r = tls_request(NULL, NULL, "POST", "/token", NULL, form);
    assert_reply(&r, 401, "invalid_client", "token without certificate");
    free(r.body);
    do {
        usleep(200000);
        r = tls_request(mf.agent, mf.agent_key, "POST", "/token", NULL, form);
        if (r.status == 200 || util_mono_ms() > deadline)
            break;
        free(r.body);
    } while (true);
    assert_reply(&r, 200, NULL, "token");
    body = json_loads(r.body, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(body, "token_type")), "Bearer");
    thumbprint_of(mf.agent, x5t);
    ck_assert_str_eq(token_x5t(json_string_value(json_object_get(body, "access_token"))),
                     x5t);
    json_decref(body);
    free(r.body);
    free(form);
    free(id);
    free(dn);

    /* Discovery advertises bound tokens. */
    r = tls_request(NULL, NULL, "GET", "/.well-known/openid-configuration", NULL, NULL);
    body = json_loads(r.body, 0, NULL);
    ck_assert(json_is_true(
        json_object_get(body, "tls_client_certificate_bound_access_tokens")));
    ck_assert_ptr_nonnull(strstr(r.body, "\"tls_client_auth\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"self_signed_tls_client_auth\""));
    json_decref(body);
    free(r.body);
    ck_assert_int_eq(e2e_server_stop(&srv), 0);
}
END_TEST

START_TEST(mtls_push_token_bound)
{
    char *endpoint = mock_http_url(push_sink, "127.0.0.1", "/cb");
    char *self =
        mtls_client("--auth-method", "self_signed_tls_client_auth", "--jwks", mf.jwks,
                    "--delivery-mode", "push", "--notification-endpoint", endpoint, NULL);
    const struct mock_http_request *q;
    struct tls_reply r;
    json_t *body;
    char x5t[44];

    start_mtls();
    r = bc_authorize_tls(mf.self, mf.self_key, self,
                         "&client_notification_token=push-token-0123456789");
    assert_reply(&r, 200, NULL, "bc-authorize");
    free(r.body);
    approve_sms(0);
    ck_assert_msg(mock_http_wait(push_sink, 1, 10000) == 0, "nothing was pushed");
    q = mock_http_request_get(push_sink, 0);
    body = json_loadb(q->body, q->body_len, 0, NULL);
    ck_assert_msg(body != NULL, "pushed body is not JSON");
    thumbprint_of(mf.self, x5t);
    ck_assert_str_eq(token_x5t(json_string_value(json_object_get(body, "access_token"))),
                     x5t);
    json_decref(body);
    free(endpoint);
    free(self);
}
END_TEST

START_TEST(mtls_cli_registration)
{
    char *out = NULL;
    char *id = mtls_client("--auth-method", "tls_client_auth", "--tls-san-ip",
                           "2001:DB8::0:7", "--client-id", "cli-mtls", NULL);
    json_t *shown;

    ck_assert_str_eq(id, "cli-mtls");
    ck_assert_int_eq(e2e_cli(&srv, &out, "client", "show", "cli-mtls", NULL), 0);
    ck_assert_msg(strstr(out, "tls_client_auth_san_ip") && strstr(out, "2001:db8::7"),
                  "client show: %.300s", out);
    free(out);
    shown = e2e_cli_json(&srv, "client", "show", "cli-mtls", "--json", NULL);
    ck_assert_ptr_nonnull(shown);
    ck_assert_str_eq(
        json_string_value(json_object_get(shown, "token_endpoint_auth_method")),
        "tls_client_auth");
    ck_assert_str_eq(json_string_value(json_object_get(shown, "tls_client_auth_san_ip")),
                     "2001:db8::7");
    ck_assert_ptr_null(json_object_get(shown, "tls_client_auth_subject_dn"));
    json_decref(shown);
    free(id);

    id = mtls_client("--auth-method", "self_signed_tls_client_auth", "--jwks", mf.jwks,
                     "--client-id", "cli-self", NULL);
    shown = e2e_cli_json(&srv, "client", "show", "cli-self", "--json", NULL);
    ck_assert_ptr_nonnull(shown);
    ck_assert(json_is_object(json_object_get(shown, "jwks")));
    ck_assert_ptr_null(json_object_get(shown, "token_endpoint_auth_signing_alg"));
    json_decref(shown);
    free(id);

    /* Refused: no subject member, two, a bad value, a member for another method. */
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "create", "--name", "x", "--scope",
                             "openid", "--auth-method", "tls_client_auth", NULL),
                     0);
    free(out);
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "create", "--name", "x", "--scope",
                             "openid", "--auth-method", "tls_client_auth",
                             "--tls-san-dns", "a.example", "--tls-subject-dn", "CN=a",
                             NULL),
                     0);
    free(out);
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "create", "--name", "x", "--scope",
                             "openid", "--auth-method", "tls_client_auth",
                             "--tls-subject-dn", "CN=#0101", NULL),
                     0);
    free(out);
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "create", "--name", "x", "--scope",
                             "openid", "--tls-san-dns", "a.example", NULL),
                     0);
    free(out);
    ck_assert_int_ne(e2e_cli(&srv, &out, "client", "create", "--name", "x", "--scope",
                             "openid", "--auth-method", "self_signed_tls_client_auth",
                             NULL),
                     0);
    free(out);
    /* None of the refused clients was stored. */
    ck_assert_int_eq(e2e_cli(&srv, &out, "client", "list", "--json", NULL), 0);
    shown = json_loads(out, 0, NULL);
    ck_assert_ptr_nonnull(shown);
    for (size_t i = 0; i < json_array_size(shown); i++) {
        const char *name =
            json_string_value(json_object_get(json_array_get(shown, i), "client_name"));

        ck_assert_str_ne(name, "x");
    }
    json_decref(shown);
    free(out);
}
END_TEST

/* ---- 6. client authentication by a proxy's certificate header ---------------------- */

/* POSTs /bc-authorize over plain HTTP with the header line given (or none). */
static struct e2e_response bc_authorize_plain(const char *client_id, const char *header)
{
    char *phone = e2e_form_encode(user_phone);
    char *body = util_asprintf("scope=%s&login_hint=%s&client_id=%s", MTLS_SCOPE, phone,
                               client_id);
    const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", header,
                             NULL};
    struct e2e_response r;

    ck_assert_int_eq(
        e2e_request(srv.port, "POST", "/bc-authorize", headers, body, strlen(body), &r),
        0);
    free(body);
    free(phone);
    return r;
}

static void serve_mtls_behind_proxy(const char *proxies)
{
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CERT_HEADER", "X-Client-Cert");
    e2e_server_setenv(&srv, "CIBAD_TRUSTED_PROXIES", proxies);
    e2e_server_setenv(&srv, "CIBAD_TLS_CLIENT_CA_FILE", mf.ca);
    ck_assert_msg(e2e_server_start(&srv) == 0, "cibad serve behind a proxy failed");
}

START_TEST(mtls_proxy_header_trusted)
{
    char *dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                           AGENT_DN, NULL);
    char *self = mtls_client("--auth-method", "self_signed_tls_client_auth", "--jwks",
                             mf.jwks, NULL);
    char *agent = cert_header("X-Client-Cert", mf.agent);
    char *stray = cert_header("X-Client-Cert", mf.stray);
    char *self2 = cert_header("X-Client-Cert", mf.self2);
    struct e2e_response r;

    serve_mtls_behind_proxy("127.0.0.1");
    r = bc_authorize_plain(dn, agent);
    ck_assert_msg(r.status == 200, "trusted header: %d %s", r.status, r.body);
    e2e_response_free(&r);
    r = bc_authorize_plain(dn, stray);
    ck_assert_int_eq(r.status, 401);
    e2e_response_free(&r);
    r = bc_authorize_plain(self, stray);
    ck_assert_int_eq(r.status, 200);
    e2e_response_free(&r);
    r = bc_authorize_plain(self, self2);
    ck_assert_int_eq(r.status, 401);
    e2e_response_free(&r);
    /* A malformed value is no certificate at all. */
    r = bc_authorize_plain(dn, "X-Client-Cert: -----BEGIN%20CERTIFICATE-----%0Agarbage");
    ck_assert_int_eq(r.status, 401);
    ck_assert(log_has("header X-Client-Cert contains no PEM certificate; ignored"));
    e2e_response_free(&r);
    r = bc_authorize_plain(dn, "X-Client-Cert: %ZZ");
    ck_assert_int_eq(r.status, 401);
    e2e_response_free(&r);
    free(agent);
    free(stray);
    free(self2);
    free(dn);
    free(self);
    ck_assert_int_eq(e2e_server_stop(&srv), 0);
}
END_TEST

START_TEST(mtls_proxy_token_bound)
{
    char *dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                           AGENT_DN, NULL);
    char *agent = cert_header("X-Client-Cert", mf.agent);
    const char *headers[] = {"Content-Type: application/x-www-form-urlencoded", agent,
                             NULL};
    struct e2e_response r;
    json_t *body;
    char *id, *form, x5t[44];
    int64_t deadline = util_mono_ms() + 10000;

    serve_mtls_behind_proxy("127.0.0.1");
    r = bc_authorize_plain(dn, agent);
    ck_assert_msg(r.status == 200, "bc-authorize: %d %s", r.status, r.body);
    body = e2e_json(&r);
    id = util_strdup(json_string_value(json_object_get(body, "auth_req_id")));
    json_decref(body);
    e2e_response_free(&r);
    approve_sms_over(0, true);
    form = util_asprintf("grant_type=urn%%3Aopenid%%3Aparams%%3Agrant-type%%3Aciba&"
                         "auth_req_id=%s&client_id=%s",
                         id, dn);
    for (;;) {
        usleep(200000);
        ck_assert_int_eq(
            e2e_request(srv.port, "POST", "/token", headers, form, strlen(form), &r), 0);
        if (r.status == 200 || util_mono_ms() > deadline)
            break;
        e2e_response_free(&r);
    }
    ck_assert_msg(r.status == 200, "token: %d %s", r.status, r.body);
    body = e2e_json(&r);
    thumbprint_of(mf.agent, x5t);
    ck_assert_str_eq(token_x5t(json_string_value(json_object_get(body, "access_token"))),
                     x5t);
    json_decref(body);
    e2e_response_free(&r);
    free(form);
    free(id);
    free(agent);
    free(dn);
}
END_TEST

START_TEST(mtls_proxy_header_untrusted)
{
    char *dn = mtls_client("--auth-method", "tls_client_auth", "--tls-subject-dn",
                           AGENT_DN, NULL);
    char *agent = cert_header("X-Client-Cert", mf.agent);
    struct e2e_response r;
    json_t *body;

    serve_mtls_behind_proxy("10.1.2.3");
    r = bc_authorize_plain(dn, agent);
    ck_assert_msg(r.status == 401, "untrusted header: %d %s", r.status, r.body);
    body = e2e_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(body, "error")), "invalid_client");
    json_decref(body);
    e2e_response_free(&r);
    ck_assert(
        log_has("header X-Client-Cert from a peer not in trusted_proxies; ignored"));
    free(agent);
    free(dn);
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
    tcase_add_test(tc, tls_session_resumed);
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

    tc = tcase_create("mtls");
    tcase_add_checked_fixture(tc, setup_mtls, teardown_mtls);
    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    tcase_add_test(tc, mtls_each_subject_member_e2e);
    tcase_add_test(tc, mtls_rejections_e2e);
    tcase_add_test(tc, mtls_poll_token_bound);
    tcase_add_test(tc, mtls_push_token_bound);
    tcase_add_test(tc, mtls_cli_registration);
    suite_add_tcase(s, tc);

    tc = tcase_create("mtls_proxy");
    tcase_add_checked_fixture(tc, mtls_prepare, teardown_mtls);
    tcase_set_timeout(tc, TEST_TIMEOUT_S);
    tcase_add_test(tc, mtls_proxy_header_trusted);
    tcase_add_test(tc, mtls_proxy_header_untrusted);
    tcase_add_test(tc, mtls_proxy_token_bound);
    suite_add_tcase(s, tc);

    return s;
}

CHECK_MAIN(tls_suite)
