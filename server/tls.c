/* tls.c - HTTPS on the listener, and the client certificate each request carries
 * SPDX-License-Identifier: MIT
 *
 * One SSL_CTX serves the whole process: it is built at startup, before the worker
 * threads, and only read afterwards (SSL_new is safe from any thread then). A client
 * certificate is requested, never required. The verify callback accepts every
 * certificate, so a self-signed one reaches the application, and the verify result
 * tells whether it chains to tls_client_ca_file.
 *
 * Behind a TLS-terminating proxy the certificate comes from tls_client_cert_header as
 * URL-encoded PEM, and only when the peer is one of trusted_proxies.
 *
 * oauth/mtls.c checks the certificate for tls_client_auth and
 * self_signed_tls_client_auth (RFC 8705 section 2).
 */
#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

/* TLS 1.2 suites with forward secrecy and AEAD only. TLS 1.3 keeps OpenSSL's list. */
#define TLS12_CIPHERS                                                                    \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                         \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                         \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

#define MAX_PROXIES 64

struct tls_proxy {
    int family;
    unsigned char addr[16];
};

static SSL_CTX *tls_ctx;
static X509_STORE *client_ca_store; /* for certificates passed by a proxy */
static struct tls_proxy proxies[MAX_PROXIES];
static size_t n_proxies;

static const char *tls_error(void)
{
    unsigned long e = ERR_get_error();

    return e ? ERR_reason_error_string(e) : "unknown error";
}

/* Logs the errno reason when path cannot be read, which OpenSSL's message omits. */
static int file_readable(const char *setting, const char *path)
{
    if (access(path, R_OK) != 0) {
        log_error("%s %s: %s", setting, path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Accepts every client certificate: whether it chains to tls_client_ca_file is kept
 * in the verify result for the application. */
static int on_verify(int preverify_ok, X509_STORE_CTX *ctx)
{
    (void)preverify_ok;
    (void)ctx;
    return 1;
}

static int parse_proxies(const char *list)
{
    char *copy = util_strdup(list), *save = NULL;
    int rc = 0;

    n_proxies = 0;
    for (char *item = strtok_r(copy, ", \t", &save); item && rc == 0;
         item = strtok_r(NULL, ", \t", &save)) {
        struct tls_proxy *p = &proxies[n_proxies];

        if (n_proxies == MAX_PROXIES) {
            log_error("trusted_proxies: more than %d addresses", MAX_PROXIES);
            rc = -1;
        } else if (inet_pton(AF_INET, item, p->addr) == 1) {
            p->family = AF_INET;
            n_proxies++;
        } else if (inet_pton(AF_INET6, item, p->addr) == 1) {
            p->family = AF_INET6;
            n_proxies++;
        } else {
            log_error("trusted_proxies: %s is not an IP address", item);
            rc = -1;
        }
    }
    free(copy);
    return rc;
}

static int load_client_ca(const struct server_config *cfg)
{
    if (file_readable("tls_client_ca_file", cfg->tls_client_ca_file) != 0)
        return -1;
    client_ca_store = X509_STORE_new();
    if (!client_ca_store ||
        X509_STORE_load_file(client_ca_store, cfg->tls_client_ca_file) != 1) {
        log_error("tls_client_ca_file %s: cannot load the CA bundle: %s",
                  cfg->tls_client_ca_file, tls_error());
        return -1;
    }
    return 0;
}

static int ctx_open(const struct server_config *cfg)
{
    if (file_readable("tls_cert_file", cfg->tls_cert_file) != 0 ||
        file_readable("tls_key_file", cfg->tls_key_file) != 0)
        return -1;
    tls_ctx = SSL_CTX_new(TLS_server_method());
    if (!tls_ctx) {
        log_error("cannot create the TLS context: %s", tls_error());
        return -1;
    }
    if (SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(tls_ctx, TLS12_CIPHERS) != 1) {
        log_error("cannot set the TLS versions and ciphers: %s", tls_error());
        return -1;
    }
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                     SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Without a session id context, OpenSSL fails every resumed handshake with an
     * internal error alert once SSL_VERIFY_PEER is set (tls_request_client_cert). */
    if (SSL_CTX_set_session_id_context(tls_ctx, (const unsigned char *)"cibad", 5) != 1) {
        log_error("cannot set the TLS session id context: %s", tls_error());
        return -1;
    }
    if (SSL_CTX_use_certificate_chain_file(tls_ctx, cfg->tls_cert_file) != 1) {
        log_error("tls_cert_file %s: cannot load the certificate: %s", cfg->tls_cert_file,
                  tls_error());
        return -1;
    }
    ERR_clear_error();
    if (SSL_CTX_use_PrivateKey_file(tls_ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            log_error(
                "tls_key_file %s does not match the certificate in tls_cert_file %s",
                cfg->tls_key_file, cfg->tls_cert_file);
        else
            log_error("tls_key_file %s: cannot load the private key: %s",
                      cfg->tls_key_file, tls_error());
        return -1;
    }
    if (SSL_CTX_check_private_key(tls_ctx) != 1) {
        log_error("tls_key_file %s does not match the certificate in tls_cert_file %s",
                  cfg->tls_key_file, cfg->tls_cert_file);
        return -1;
    }
    if (cfg->tls_client_ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca_file);

        if (SSL_CTX_load_verify_locations(tls_ctx, cfg->tls_client_ca_file, NULL) != 1 ||
            !names) {
            log_error("tls_client_ca_file %s: cannot load the CA bundle: %s",
                      cfg->tls_client_ca_file, tls_error());
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            return -1;
        }
        SSL_CTX_set_client_CA_list(tls_ctx, names);
    }
    if (cfg->tls_request_client_cert)
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, on_verify);
    return 0;
}

int server_tls_init(const struct server_config *cfg)
{
    if (cfg->trusted_proxies && parse_proxies(cfg->trusted_proxies) != 0)
        goto fail;
    if (cfg->tls_client_ca_file && load_client_ca(cfg) != 0)
        goto fail;
    if (cfg->tls_cert_file && cfg->tls_key_file && ctx_open(cfg) != 0)
        goto fail;
    if (tls_ctx)
        log_info("TLS on: TLS 1.2 and 1.3, client certificate %s",
                 cfg->tls_request_client_cert ? "requested" : "not requested");
    return 0;
fail:
    server_tls_free();
    return -1;
}

void server_tls_free(void)
{
    SSL_CTX_free(tls_ctx);
    tls_ctx = NULL;
    X509_STORE_free(client_ca_store);
    client_ca_store = NULL;
    n_proxies = 0;
}

bool server_tls_enabled(void)
{
    return tls_ctx != NULL;
}

struct bufferevent *server_tls_on_accept(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(tls_ctx);
    struct bufferevent *bev;

    (void)arg;
    /* Returning NULL would make evhttp serve plain HTTP on this connection. */
    if (!ssl) {
        log_error("cannot create a TLS session: %s", tls_error());
        abort();
    }
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        log_error("cannot create a TLS bufferevent");
        abort();
    }
    return bev;
}

/* Fills cert's thumbprint, subject and DER form from x509. */
static int cert_describe(X509 *x509, struct server_client_cert *cert)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    BIO *bio = BIO_new(BIO_s_mem());
    unsigned char *der = NULL;
    int der_len;
    char *text;
    long len;
    int rc = -1;

    if (!bio || X509_digest(x509, EVP_sha256(), digest, &digest_len) != 1 ||
        digest_len != 32)
        goto out;
    der_len = i2d_X509(x509, &der);
    if (der_len <= 0)
        goto out;
    cert->der = util_malloc((size_t)der_len);
    memcpy(cert->der, der, (size_t)der_len);
    cert->der_len = (size_t)der_len;
    OPENSSL_free(der);
    util_b64url_encode(digest, digest_len, cert->thumbprint);
    if (X509_NAME_print_ex(bio, X509_get_subject_name(x509), 0, XN_FLAG_RFC2253) < 0)
        goto out;
    len = BIO_get_mem_data(bio, &text);
    cert->subject = util_strndup(text, (size_t)len);
    cert->present = true;
    rc = 0;
out:
    BIO_free(bio);
    return rc;
}

static bool peer_is_trusted_proxy(struct evhttp_connection *conn)
{
    char *host = NULL;
    ev_uint16_t port;
    unsigned char addr[16];

    if (!conn)
        return false;
    evhttp_connection_get_peer(conn, &host, &port);
    if (!host)
        return false;
    for (size_t i = 0; i < n_proxies; i++) {
        if (inet_pton(proxies[i].family, host, addr) == 1 &&
            memcmp(addr, proxies[i].addr, proxies[i].family == AF_INET ? 4 : 16) == 0)
            return true;
    }
    return false;
}

/* Reads the URL-encoded PEM certificate a proxy passed. */
static int cert_from_header(const char *value, struct server_client_cert *cert)
{
    size_t len = 0;
    char *pem = evhttp_uridecode(value, 0, &len);
    BIO *bio = pem ? BIO_new_mem_buf(pem, (int)len) : NULL;
    X509 *x509 = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    X509_STORE_CTX *vctx = NULL;
    int rc = -1;

    if (!x509 || cert_describe(x509, cert) != 0)
        goto out;
    if (client_ca_store) {
        vctx = X509_STORE_CTX_new();
        if (vctx && X509_STORE_CTX_init(vctx, client_ca_store, x509, NULL) == 1) {
            X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_CLIENT);
            cert->verified = X509_verify_cert(vctx) == 1;
        }
    }
    rc = 0;
out:
    X509_STORE_CTX_free(vctx);
    X509_free(x509);
    BIO_free(bio);
    free(pem);
    ERR_clear_error();
    return rc;
}

/* Counts the copies of header name in the request. */
static size_t header_count(const struct server_req *sr, const char *name)
{
    struct evkeyvalq *headers = evhttp_request_get_input_headers(sr->req);
    size_t n = 0;

    for (struct evkeyval *h = headers->tqh_first; h; h = h->next.tqe_next) {
        if (strcasecmp(h->key, name) == 0)
            n++;
    }
    return n;
}

void server_tls_client_cert(const struct server_req *sr, struct server_client_cert *cert)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(sr->req);
    const char *header_name = server_config->tls_client_cert_header;
    const char *header = header_name ? server_req_header(sr, header_name) : NULL;
    struct bufferevent *bev;
    SSL *ssl;
    X509 *x509;

    memset(cert, 0, sizeof(*cert));
    if (header_name && peer_is_trusted_proxy(conn)) {
        /* Behind the proxy only the header counts: a TLS certificate on this
         * connection would be the proxy's own. */
        if (header && header_count(sr, header_name) > 1)
            rlog_warn(sr->rid, NULL, "header %s is repeated; ignored", header_name);
        else if (header && cert_from_header(header, cert) != 0)
            rlog_warn(sr->rid, NULL, "header %s contains no PEM certificate; ignored",
                      header_name);
        return;
    }
    /* Debug only: any client can send the header, once per request. */
    if (header)
        rlog_debug(sr->rid, NULL, "header %s from a peer not in trusted_proxies; ignored",
                   header_name);
    if (!tls_ctx || !conn)
        return;
    bev = evhttp_connection_get_bufferevent(conn);
    ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    x509 = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (!x509 || cert_describe(x509, cert) != 0)
        return;
    cert->verified =
        server_config->tls_client_ca_file && SSL_get_verify_result(ssl) == X509_V_OK;
}
