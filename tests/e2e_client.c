/* e2e_client.c - blocking HTTP client, JWT checks and process helpers for the
 * end-to-end suite
 * SPDX-License-Identifier: MIT
 */
#include "tests/e2e_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "util/util.h"

extern char **environ;

#define IO_TIMEOUT_S    15
#define READY_TIMEOUT_S 20
#define STOP_TIMEOUT_S  15
#define CLI_TIMEOUT_S   30

/* ---- HTTP client ------------------------------------------------------------------- */

/* A growing byte buffer. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;

        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = util_realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_addf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void buf_addf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    char *text;
    int len;

    va_start(ap, fmt);
    len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    text = util_malloc((size_t)len + 1);
    va_start(ap, fmt);
    vsnprintf(text, (size_t)len + 1, fmt, ap);
    va_end(ap);
    buf_add(b, text, (size_t)len);
    free(text);
}

static int connect_loopback(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Decodes a chunked body from p[0..n). Returns 1 and fills body when the last chunk and
 * the trailer end are there, 0 when more bytes are needed, -1 when the framing is bad. */
static int decode_chunked(const char *p, size_t n, struct buf *body)
{
    size_t pos = 0;

    body->len = 0;
    for (;;) {
        const char *eol = memmem(p + pos, n - pos, "\r\n", 2);
        unsigned long size;
        char *end;

        if (!eol)
            return 0;
        size = strtoul(p + pos, &end, 16);
        if (end == p + pos)
            return -1;
        pos = (size_t)(eol - p) + 2;
        if (size == 0) {
            /* Trailer fields end with an empty line. */
            if (n - pos >= 2 && memcmp(p + pos, "\r\n", 2) == 0)
                return 1;
            return memmem(p + pos, n - pos, "\r\n\r\n", 4) ? 1 : 0;
        }
        if (n - pos < size + 2)
            return 0;
        buf_add(body, p + pos, size);
        pos += size + 2;
    }
}

static void parse_headers(const char *p, size_t n, struct e2e_response *r)
{
    const char *line = memmem(p, n, "\r\n", 2);

    /* Skip the status line; each later line is "Name: value". */
    while (line && (size_t)(line - p) + 2 < n) {
        const char *start = line + 2;
        const char *eol = memmem(start, n - (size_t)(start - p), "\r\n", 2);
        const char *colon;
        const char *value;
        size_t value_len;

        if (!eol)
            eol = p + n;
        colon = memchr(start, ':', (size_t)(eol - start));
        if (colon) {
            r->headers =
                util_realloc(r->headers, (r->n_headers + 1) * sizeof(*r->headers));
            value = colon + 1;
            while (value < eol && (*value == ' ' || *value == '\t'))
                value++;
            value_len = (size_t)(eol - value);
            while (value_len > 0 &&
                   (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
                value_len--;
            r->headers[r->n_headers].name = util_strndup(start, (size_t)(colon - start));
            r->headers[r->n_headers].value = util_strndup(value, value_len);
            r->n_headers++;
        }
        line = eol < p + n ? eol : NULL;
    }
}

/* Tries to parse a complete reply from what was read so far. Returns 1 when complete
 * (out filled), 0 when more bytes are needed, -1 when the reply is malformed. At EOF a
 * reply without framing ends at the last byte. */
static int parse_reply(const struct buf *in, bool eof, struct e2e_response *out)
{
    const char *head_end;
    size_t head_len;
    const char *value;
    struct buf body = {0};
    int status;
    int rc;

    if (in->len < 12)
        return eof ? -1 : 0;
    head_end = memmem(in->data, in->len, "\r\n\r\n", 4);
    if (!head_end)
        return eof ? -1 : 0;
    if (strncmp(in->data, "HTTP/1.", 7) != 0 ||
        sscanf(in->data + 8, " %3d", &status) != 1)
        return -1;
    head_len = (size_t)(head_end - in->data) + 4;

    memset(out, 0, sizeof(*out));
    out->status = status;
    parse_headers(in->data, head_len - 2, out);

    value = e2e_header(out, "Transfer-Encoding");
    if (value && strcasestr(value, "chunked")) {
        rc = decode_chunked(in->data + head_len, in->len - head_len, &body);
        if (rc == 0 && eof)
            rc = -1;
    } else if ((value = e2e_header(out, "Content-Length")) != NULL) {
        unsigned long long length = strtoull(value, NULL, 10);

        rc = in->len - head_len >= length ? 1 : (eof ? -1 : 0);
        if (rc == 1)
            buf_add(&body, in->data + head_len, (size_t)length);
    } else if (status == 204 || status == 304 || status / 100 == 1) {
        rc = 1;
    } else {
        rc = eof ? 1 : 0;
        if (rc == 1)
            buf_add(&body, in->data + head_len, in->len - head_len);
    }

    if (rc != 1) {
        free(body.data);
        e2e_response_free(out);
        return rc;
    }
    out->body = body.data ? body.data : util_strdup("");
    out->body_len = body.len;
    return 1;
}

/* Reads until a complete reply is parsed, EOF or a timeout. */
static int read_reply(int fd, struct e2e_response *out)
{
    struct buf in = {0};
    char chunk[16384];
    int rc = 0;

    while (rc == 0) {
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* EOF, reset or timeout: whatever arrived is all there is. */
            rc = parse_reply(&in, true, out);
            break;
        }
        buf_add(&in, chunk, (size_t)n);
        rc = parse_reply(&in, false, out);
    }
    free(in.data);
    return rc == 1 ? 0 : -1;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);

        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return;
        p += sent;
        n -= (size_t)sent;
    }
}

int e2e_raw(int port, const void *bytes, size_t len, bool half_close,
            struct e2e_response *out)
{
    int fd = connect_loopback(port);
    int rc;

    memset(out, 0, sizeof(*out));
    if (fd < 0)
        return -1;
    send_all(fd, bytes, len);
    if (half_close)
        shutdown(fd, SHUT_WR);
    rc = read_reply(fd, out);
    close(fd);
    return rc;
}

int e2e_request(int port, const char *method, const char *path,
                const char *const *headers, const char *body, size_t body_len,
                struct e2e_response *out)
{
    struct buf req = {0};
    int rc;

    buf_addf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n",
             method, path, port);
    for (size_t i = 0; headers && headers[i]; i++)
        buf_addf(&req, "%s\r\n", headers[i]);
    if (body)
        buf_addf(&req, "Content-Length: %zu\r\n", body_len);
    buf_add(&req, "\r\n", 2);
    if (body)
        buf_add(&req, body, body_len);

    rc = e2e_raw(port, req.data, req.len, false, out);
    free(req.data);
    return rc;
}

const char *e2e_header(const struct e2e_response *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    }
    return NULL;
}

json_t *e2e_json(const struct e2e_response *r)
{
    json_t *json;

    if (!r->body)
        return NULL;
    json = json_loadb(r->body, r->body_len, 0, NULL);
    if (json && !json_is_object(json)) {
        json_decref(json);
        return NULL;
    }
    return json;
}

void e2e_response_free(struct e2e_response *r)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* ---- request builders -------------------------------------------------------------- */

char *e2e_form_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf out = {0};

    buf_add(&out, "", 0);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            buf_add(&out, p, 1);
        } else if (*p == ' ') {
            buf_add(&out, "+", 1);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};

            buf_add(&out, esc, 3);
        }
    }
    return out.data;
}

char *e2e_form(const char *name, ...)
{
    struct buf out = {0};
    va_list ap;

    buf_add(&out, "", 0);
    va_start(ap, name);
    for (const char *n = name; n; n = va_arg(ap, const char *)) {
        const char *value = va_arg(ap, const char *);
        char *enc_name;
        char *enc_value;

        if (!value)
            continue;
        enc_name = e2e_form_encode(n);
        enc_value = e2e_form_encode(value);
        buf_addf(&out, "%s%s=%s", out.len ? "&" : "", enc_name, enc_value);
        free(enc_name);
        free(enc_value);
    }
    va_end(ap);
    return out.data;
}

char *e2e_basic_header(const char *client_id, const char *secret)
{
    char *id = e2e_form_encode(client_id);
    char *pw = e2e_form_encode(secret);
    char *joined = util_asprintf("%s:%s", id, pw);
    char *b64 = util_b64_encode_new(joined, strlen(joined));
    char *line = util_asprintf("Authorization: Basic %s", b64);

    free(id);
    free(pw);
    free(joined);
    free(b64);
    return line;
}

/* ---- JWT --------------------------------------------------------------------------- */

static json_t *decode_b64url_json(const char *text, size_t len)
{
    size_t cap = len;
    unsigned char *raw = util_malloc(cap + 1);
    json_t *json = NULL;

    if (util_b64url_decode(text, len, raw, &cap) == 0)
        json = json_loadb((const char *)raw, cap, 0, NULL);
    free(raw);
    if (json && !json_is_object(json)) {
        json_decref(json);
        json = NULL;
    }
    return json;
}

/* Finds the two dots of a compact JWS. */
static int split_jws(const char *jwt, const char **dot1, const char **dot2)
{
    *dot1 = strchr(jwt, '.');
    if (!*dot1)
        return -1;
    *dot2 = strchr(*dot1 + 1, '.');
    if (!*dot2 || strchr(*dot2 + 1, '.'))
        return -1;
    return 0;
}

int e2e_jwt_decode(const char *jwt, json_t **header, json_t **claims)
{
    const char *dot1;
    const char *dot2;

    *header = NULL;
    *claims = NULL;
    if (split_jws(jwt, &dot1, &dot2) != 0)
        return -1;
    *header = decode_b64url_json(jwt, (size_t)(dot1 - jwt));
    *claims = decode_b64url_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (!*header || !*claims) {
        json_decref(*header);
        json_decref(*claims);
        *header = NULL;
        *claims = NULL;
        return -1;
    }
    return 0;
}

/* Decodes one base64url JWK coordinate that must be exactly 32 bytes. */
static int decode_coordinate(const json_t *jwk, const char *name, unsigned char out[32])
{
    const char *text = json_string_value(json_object_get(jwk, name));
    unsigned char raw[64];
    size_t len = sizeof(raw);

    if (!text || util_b64url_decode(text, strlen(text), raw, &len) != 0 || len != 32)
        return -1;
    memcpy(out, raw, 32);
    return 0;
}

/* Rebuilds a P-256 public key from a JWK's x and y with EVP_PKEY_fromdata. */
static EVP_PKEY *ec_key_from_jwk(const json_t *jwk)
{
    unsigned char point[65];
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    point[0] = 0x04; /* uncompressed point: 04 || x || y */
    if (decode_coordinate(jwk, "x", point + 1) != 0 ||
        decode_coordinate(jwk, "y", point + 33) != 0)
        return NULL;

    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1",
                                         0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point,
                                          sizeof(point)))
        goto end;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;

end:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

/* Converts a JWS ES256 signature (32-byte r, 32-byte s) to DER. New buffer or NULL. */
static unsigned char *ecdsa_raw_to_der(const unsigned char raw[64], size_t *der_len)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL);
    BIGNUM *s = BN_bin2bn(raw + 32, 32, NULL);
    unsigned char *der = NULL;
    int len;

    if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(sig);
        return NULL;
    }
    len = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    if (len <= 0)
        return NULL;
    *der_len = (size_t)len;
    return der;
}

static const json_t *jwks_find(const json_t *jwks, const char *kid)
{
    const json_t *keys = json_object_get(jwks, "keys");
    size_t i;
    const json_t *jwk;

    json_array_foreach(keys, i, jwk)
    {
        const char *id = json_string_value(json_object_get(jwk, "kid"));

        if (id && strcmp(id, kid) == 0)
            return jwk;
    }
    return NULL;
}

static int check_signature(const json_t *jwk, const char *input, size_t input_len,
                           const char *sig_b64, char *err, size_t err_len)
{
    unsigned char raw[128];
    size_t raw_len = sizeof(raw);
    unsigned char *der = NULL;
    size_t der_len = 0;
    EVP_PKEY *pkey = ec_key_from_jwk(jwk);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;

    if (!pkey) {
        snprintf(err, err_len, "JWK is not a valid P-256 public key");
        goto end;
    }
    if (util_b64url_decode(sig_b64, strlen(sig_b64), raw, &raw_len) != 0 ||
        raw_len != 64) {
        snprintf(err, err_len, "signature is not 64 bytes of base64url");
        goto end;
    }
    der = ecdsa_raw_to_der(raw, &der_len);
    if (!der || !md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) != 1) {
        snprintf(err, err_len, "OpenSSL could not set up the verification");
        goto end;
    }
    if (EVP_DigestVerify(md, der, der_len, (const unsigned char *)input, input_len) !=
        1) {
        snprintf(err, err_len, "signature does not verify");
        goto end;
    }
    rc = 0;

end:
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    return rc;
}

int e2e_jwt_verify(const char *jwt, const json_t *jwks, json_t **header, json_t **claims,
                   char *err, size_t err_len)
{
    json_t *h = NULL;
    json_t *c = NULL;
    const char *dot1;
    const char *dot2;
    const char *kid;
    const json_t *jwk;
    int rc = -1;

    if (split_jws(jwt, &dot1, &dot2) != 0 || e2e_jwt_decode(jwt, &h, &c) != 0) {
        snprintf(err, err_len, "not a compact JWS with JSON header and claims");
        goto end;
    }
    if (!json_is_string(json_object_get(h, "alg")) ||
        strcmp(json_string_value(json_object_get(h, "alg")), "ES256") != 0) {
        snprintf(err, err_len, "header alg is not ES256");
        goto end;
    }
    kid = json_string_value(json_object_get(h, "kid"));
    if (!kid) {
        snprintf(err, err_len, "header has no kid");
        goto end;
    }
    jwk = jwks_find(jwks, kid);
    if (!jwk) {
        snprintf(err, err_len, "kid %s is not in the JWKS", kid);
        goto end;
    }
    if (!json_is_string(json_object_get(jwk, "kty")) ||
        strcmp(json_string_value(json_object_get(jwk, "kty")), "EC") != 0 ||
        !json_is_string(json_object_get(jwk, "crv")) ||
        strcmp(json_string_value(json_object_get(jwk, "crv")), "P-256") != 0) {
        snprintf(err, err_len, "JWK %s is not an EC P-256 key", kid);
        goto end;
    }
    if (check_signature(jwk, jwt, (size_t)(dot2 - jwt), dot2 + 1, err, err_len) != 0)
        goto end;
    rc = 0;

end:
    if (rc == 0 && header)
        *header = json_incref(h);
    if (rc == 0 && claims)
        *claims = json_incref(c);
    json_decref(h);
    json_decref(c);
    return rc;
}

struct evp_pkey_st *e2e_key_new(void)
{
    return EVP_EC_gen("P-256");
}

struct evp_pkey_st *e2e_rsa_key_new(unsigned bits)
{
    return EVP_RSA_gen(bits);
}

struct evp_pkey_st *e2e_ec_key_new(const char *curve)
{
    return EVP_EC_gen(curve);
}

/* Returns the base64url form of a big-endian key parameter, or NULL. */
static char *bn_param_b64(EVP_PKEY *key, const char *name)
{
    BIGNUM *bn = NULL;
    unsigned char *buf;
    char *out = NULL;
    int len;

    if (EVP_PKEY_get_bn_param(key, name, &bn) != 1)
        return NULL;
    len = BN_num_bytes(bn);
    buf = util_malloc((size_t)len + 1);
    if (BN_bn2bin(bn, buf) == len)
        out = util_b64url_encode_new(buf, (size_t)len);
    free(buf);
    BN_free(bn);
    return out;
}

/* The public JWK of an RSA key, with kid and alg PS256. New reference or NULL. */
static json_t *rsa_public_jwk(EVP_PKEY *key, const char *kid)
{
    char *n = bn_param_b64(key, OSSL_PKEY_PARAM_RSA_N);
    char *e = bn_param_b64(key, OSSL_PKEY_PARAM_RSA_E);
    json_t *jwk = NULL;

    if (n && e)
        jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "n", n, "e", e,
                        "kid", kid, "alg", "PS256", "use", "sig");
    free(n);
    free(e);
    return jwk;
}

/* The public JWK of a P-256 key, with kid and alg ES256, or of an RSA key (see
 * rsa_public_jwk). New reference or NULL. */
static json_t *public_jwk(EVP_PKEY *key, const char *kid)
{
    const char *params[2] = {OSSL_PKEY_PARAM_EC_PUB_X, OSSL_PKEY_PARAM_EC_PUB_Y};
    char *coords[2] = {NULL, NULL};
    json_t *jwk = NULL;

    if (EVP_PKEY_is_a(key, "RSA"))
        return rsa_public_jwk(key, kid);
    for (int i = 0; i < 2; i++) {
        BIGNUM *bn = NULL;
        unsigned char buf[32];

        if (EVP_PKEY_get_bn_param(key, params[i], &bn) == 1 &&
            BN_bn2binpad(bn, buf, sizeof(buf)) == (int)sizeof(buf))
            coords[i] = util_b64url_encode_new(buf, sizeof(buf));
        BN_free(bn);
    }
    if (coords[0] && coords[1])
        jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv",
                        "P-256", "x", coords[0], "y", coords[1], "kid", kid, "alg",
                        "ES256", "use", "sig");
    free(coords[0]);
    free(coords[1]);
    return jwk;
}

char *e2e_jwks_text(struct evp_pkey_st *const *keys, const char *const *kids, size_t n)
{
    json_t *doc = json_pack("{s:[]}", "keys");
    char *text;

    for (size_t i = 0; i < n; i++)
        json_array_append_new(json_object_get(doc, "keys"), public_jwk(keys[i], kids[i]));
    text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return text;
}

/* Signs input with ES256 and returns the base64url raw r||s signature, or NULL. */
static char *es256_sign_b64(EVP_PKEY *key, const char *input)
{
    unsigned char der[80], raw[64];
    const unsigned char *p = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig = NULL;
    char *out = NULL;

    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, strlen(input)) ==
            1 &&
        (sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) &&
        BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32)
        out = util_b64url_encode_new(raw, sizeof(raw));
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return out;
}

char *e2e_client_assertion(struct evp_pkey_st *key, const char *kid, const char *alg,
                           const char *client_id, const char *aud, const char *changes)
{
    time_t now = time(NULL);
    char *jti = util_random_token(16);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", client_id, "sub",
                               client_id, "aud", aud, "iat", (json_int_t)now, "exp",
                               (json_int_t)now + 60, "jti", jti);
    json_t *header = json_pack("{s:s, s:s}", "alg", alg, "kid", kid);
    json_t *edit = changes ? json_loads(changes, 0, NULL) : NULL;
    char *header_text, *claims_text, *h, *c, *input, *sig, *token = NULL;
    const char *name;
    json_t *value;

    json_object_foreach(edit, name, value)
    {
        if (json_is_null(value))
            json_object_del(claims, name);
        else
            json_object_set(claims, name, value);
    }
    header_text = json_dumps(header, JSON_COMPACT);
    claims_text = json_dumps(claims, JSON_COMPACT);
    h = util_b64url_encode_new(header_text, strlen(header_text));
    c = util_b64url_encode_new(claims_text, strlen(claims_text));
    input = util_asprintf("%s.%s", h, c);
    sig = es256_sign_b64(key, input);
    if (sig)
        token = util_asprintf("%s.%s", input, sig);
    json_decref(claims);
    json_decref(header);
    json_decref(edit);
    free(jti);
    free(header_text);
    free(claims_text);
    free(h);
    free(c);
    free(input);
    free(sig);
    return token;
}

/* Signs input with ECDSA and returns the base64url JOSE signature: r and s, each as
 * long as the key's field (32 bytes for P-256, 48 for P-384). NULL on failure. */
static char *ecdsa_sign_b64(EVP_PKEY *key, const char *input)
{
    int half = (EVP_PKEY_get_bits(key) + 7) / 8;
    unsigned char der[160], raw[132];
    const unsigned char *p = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig = NULL;
    char *out = NULL;

    if (half * 2 <= (int)sizeof(raw) && md &&
        EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, strlen(input)) ==
            1 &&
        (sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) &&
        BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, half) == half &&
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + half, half) == half)
        out = util_b64url_encode_new(raw, (size_t)half * 2);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return out;
}

/* Signs input with RSA and SHA-256, PSS (salt as long as the hash) or PKCS #1 v1.5,
 * and returns the base64url signature, or NULL. */
static char *rsa_sign_b64(EVP_PKEY *key, bool pss, const char *input)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char sig[1024];
    size_t sig_len = sizeof(sig);
    char *out = NULL;

    if (md && EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) == 1 &&
        (!pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1)) &&
        EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)input, strlen(input)) ==
            1)
        out = util_b64url_encode_new(sig, sig_len);
    EVP_MD_CTX_free(md);
    return out;
}

char *e2e_jws_sign(struct evp_pkey_st *key, const char *header, const char *claims)
{
    json_t *h = json_loads(header, 0, NULL);
    const char *alg = json_string_value(json_object_get(h, "alg"));
    char *h64 = util_b64url_encode_new(header, strlen(header));
    char *c64 = util_b64url_encode_new(claims, strlen(claims));
    char *input = util_asprintf("%s.%s", h64, c64);
    char *sig, *token = NULL;

    if (EVP_PKEY_is_a(key, "RSA"))
        sig = rsa_sign_b64(key, !alg || strcmp(alg, "RS256") != 0, input);
    else
        sig = ecdsa_sign_b64(key, input);
    if (sig)
        token = util_asprintf("%s.%s", input, sig);
    json_decref(h);
    free(h64);
    free(c64);
    free(input);
    free(sig);
    return token;
}

char *e2e_at_hash(const char *access_token)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)access_token, strlen(access_token), digest);
    return util_b64url_encode_new(digest, sizeof(digest) / 2);
}

/* ---- the cibad process ------------------------------------------------------------- */

/* Asks the kernel for a free loopback port. Another process could take it before
 * cibad binds; the start then fails visibly. */
static int pick_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

void e2e_server_setenv(struct e2e_server *s, const char *name, const char *value)
{
    size_t name_len = strlen(name);
    char *entry = util_asprintf("%s=%s", name, value);

    for (size_t i = 0; i < s->n_env; i++) {
        if (strncmp(s->env[i], name, name_len) == 0 && s->env[i][name_len] == '=') {
            free(s->env[i]);
            s->env[i] = entry;
            return;
        }
    }
    s->env = util_realloc(s->env, (s->n_env + 2) * sizeof(*s->env));
    s->env[s->n_env++] = entry;
    s->env[s->n_env] = NULL;
}

static const char *log_dir(void)
{
    static char dir[PATH_MAX];
    const char *pg = getenv("CIBAD_TEST_PG_DIR");
    char *slash;

    /* Beside the test cluster, so tests/run.sh removes the logs with it (or keeps both
     * with CIBAD_TEST_KEEP=1). */
    if (!pg || strlen(pg) >= sizeof(dir))
        return "/tmp";
    strcpy(dir, pg);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return "/tmp";
    *slash = '\0';
    return dir;
}

int e2e_server_init(struct e2e_server *s, const char *const *settings)
{
    static unsigned counter;
    const char *db = getenv("CIBAD_TEST_DATABASE_URL");
    const char *migrations = getenv("CIBAD_TEST_MIGRATIONS");
    char *value;

    memset(s, 0, sizeof(*s));
    if (!db || !migrations || !getenv("CIBAD_BIN"))
        return -1;
    s->port = pick_port();
    if (s->port < 0)
        return -1;
    snprintf(s->issuer, sizeof(s->issuer), "http://127.0.0.1:%d", s->port);
    s->log_path =
        util_asprintf("%s/cibad-e2e-%d-%u.log", log_dir(), (int)getpid(), counter++);

    s->env = util_calloc(1, sizeof(*s->env));
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CIBAD_", 6) == 0)
            continue;
        s->env = util_realloc(s->env, (s->n_env + 2) * sizeof(*s->env));
        s->env[s->n_env++] = util_strdup(*e);
        s->env[s->n_env] = NULL;
    }

    e2e_server_setenv(s, "CIBAD_ISSUER", s->issuer);
    value = util_asprintf("127.0.0.1:%d", s->port);
    e2e_server_setenv(s, "CIBAD_LISTEN", value);
    free(value);
    e2e_server_setenv(s, "CIBAD_DATABASE_URL", db);
    e2e_server_setenv(s, "CIBAD_MIGRATIONS_DIR", migrations);
    e2e_server_setenv(s, "CIBAD_SECRET", E2E_SERVER_SECRET);
    e2e_server_setenv(s, "CIBAD_WORKERS", "2");

    for (size_t i = 0; settings && settings[i]; i++) {
        const char *eq = strchr(settings[i], '=');
        char *name;

        if (!eq)
            return -1;
        name = util_strndup(settings[i], (size_t)(eq - settings[i]));
        e2e_server_setenv(s, name, eq + 1);
        free(name);
    }
    return 0;
}

/* Waits for pid up to timeout_s. Returns the raw wait status, or -1 on timeout. */
static int wait_bounded(pid_t pid, int timeout_s)
{
    int64_t deadline = util_mono_ms() + (int64_t)timeout_s * 1000;
    int status;

    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);

        if (done == pid)
            return status;
        if (done < 0 && errno != EINTR)
            return -1;
        if (util_mono_ms() > deadline)
            return -1;
        usleep(20000);
    }
}

/* In a fresh child: dies with the test process, sets up output, execs cibad. */
static void exec_cibad(const struct e2e_server *s, pid_t parent, int out_fd, int err_fd,
                       char **argv)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
        _exit(127);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0)
        dup2(null_fd, STDIN_FILENO);
    execve(getenv("CIBAD_BIN"), argv, s->env);
    _exit(127);
}

static int run_cli(const struct e2e_server *s, char **out, const char *first, va_list ap)
{
    const char *argv[32] = {"cibad"};
    size_t argc = 1;
    int fds[2];
    pid_t parent = getpid();
    pid_t pid;
    struct buf text = {0};
    int64_t deadline = util_mono_ms() + CLI_TIMEOUT_S * 1000;
    int status;
    char *err_path = util_asprintf("%s.cli", s->log_path);
    int err_fd;

    for (const char *a = first; a && argc < ARRAY_LEN(argv) - 1;
         a = va_arg(ap, const char *))
        argv[argc++] = a;
    argv[argc] = NULL;

    err_fd = open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    free(err_path);
    if (err_fd < 0 || pipe2(fds, O_CLOEXEC) != 0) {
        if (err_fd >= 0)
            close(err_fd);
        return -1;
    }
    pid = fork();
    if (pid == 0)
        exec_cibad(s, parent, fds[1], err_fd, (char **)argv);
    close(fds[1]);
    close(err_fd);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }

    buf_add(&text, "", 0);
    for (;;) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        char chunk[4096];
        ssize_t n;

        if (poll(&pfd, 1, 200) <= 0) {
            if (util_mono_ms() > deadline)
                break;
            continue;
        }
        n = read(fds[0], chunk, sizeof(chunk));
        if (n <= 0)
            break;
        buf_add(&text, chunk, (size_t)n);
    }
    close(fds[0]);

    status = wait_bounded(pid, 5);
    if (status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    if (out)
        *out = text.data;
    else
        free(text.data);
    return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int e2e_cli(const struct e2e_server *s, char **out, const char *arg, ...)
{
    va_list ap;
    int rc;

    va_start(ap, arg);
    rc = run_cli(s, out, arg, ap);
    va_end(ap);
    return rc;
}

json_t *e2e_cli_json(const struct e2e_server *s, const char *arg, ...)
{
    va_list ap;
    char *out = NULL;
    json_t *json = NULL;
    int rc;

    va_start(ap, arg);
    rc = run_cli(s, &out, arg, ap);
    va_end(ap);
    if (rc == 0 && out)
        json = json_loads(out, 0, NULL);
    if (json && !json_is_object(json)) {
        json_decref(json);
        json = NULL;
    }
    free(out);
    return json;
}

static bool server_ready(const struct e2e_server *s)
{
    struct e2e_response r;
    bool ready;

    if (e2e_request(s->port, "GET", "/readyz", NULL, NULL, 0, &r) != 0)
        return false;
    ready = r.status == 200;
    e2e_response_free(&r);
    return ready;
}

int e2e_server_start(struct e2e_server *s)
{
    char *argv[] = {"cibad", "serve", NULL};
    pid_t parent = getpid();
    int64_t deadline = util_mono_ms() + READY_TIMEOUT_S * 1000;
    int log_fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

    if (log_fd < 0)
        return -1;
    s->pid = fork();
    if (s->pid == 0)
        exec_cibad(s, parent, log_fd, log_fd, argv);
    close(log_fd);
    if (s->pid < 0) {
        s->pid = 0;
        return -1;
    }

    while (util_mono_ms() < deadline) {
        if (!e2e_server_alive(s))
            return -1;
        if (server_ready(s))
            return 0;
        usleep(50000);
    }
    e2e_server_stop(s);
    return -1;
}

bool e2e_server_alive(struct e2e_server *s)
{
    int status;

    if (s->pid <= 0)
        return false;
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
        s->pid = 0;
        return false;
    }
    return true;
}

int e2e_server_stop(struct e2e_server *s)
{
    int status;

    if (s->pid <= 0)
        return 0;
    kill(s->pid, SIGTERM);
    status = wait_bounded(s->pid, STOP_TIMEOUT_S);
    if (status == -1) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
        return -1;
    }
    s->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool is_word_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_';
}

bool e2e_log_contains(const char *log, const char *value)
{
    size_t len = strlen(value);

    for (const char *p = strstr(log, value); p; p = strstr(p + 1, value)) {
        if ((p == log || !is_word_char(p[-1])) && !is_word_char(p[len]))
            return true;
    }
    return false;
}

char *e2e_server_log(const struct e2e_server *s)
{
    FILE *f = fopen(s->log_path, "r");
    struct buf text = {0};
    char chunk[8192];
    size_t n;

    buf_add(&text, "", 0);
    if (!f)
        return text.data;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_add(&text, chunk, n);
    fclose(f);
    return text.data;
}

void e2e_server_free(struct e2e_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    for (size_t i = 0; i < s->n_env; i++)
        free(s->env[i]);
    free(s->env);
    free(s->log_path);
    memset(s, 0, sizeof(*s));
}
