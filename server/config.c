/* config.c - the settings table, and loading it from defaults, a file and CIBAD_*
 * variables SPDX-License-Identifier: MIT
 *
 * Every setting is one row of `settings` below: its name in the file, its environment
 * variable, its type, where it lives in struct server_config, its default, its range
 * and whether it is a secret. Loading, validation, --help and the startup log all
 * read that one table.
 */
#include "server/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct server_config *server_config;

enum setting_type {
    SETTING_STRING,
    SETTING_INT,
    SETTING_BOOL,
};

struct setting {
    const char *name;
    const char *env;
    enum setting_type type;
    size_t offset;
    const char *default_value; /* as text; NULL for none */
    int min, max;              /* SETTING_INT only */
    bool secret;
    const char *description;
};

#define FIELD(f) offsetof(struct server_config, f)

// clang-format off
static const struct setting settings[] = {
    {"issuer", "CIBAD_ISSUER", SETTING_STRING, FIELD(issuer), "http://127.0.0.1:8080", 0, 0, false,
     "Issuer URL published in discovery and in every token (http or https, no trailing slash)"},
    {"listen", "CIBAD_LISTEN", SETTING_STRING, FIELD(listen), "127.0.0.1:8080", 0, 0, false,
     "Address and port to listen on: IPv4:PORT or [IPv6]:PORT"},
    {"database_url", "CIBAD_DATABASE_URL", SETTING_STRING, FIELD(database_url), "dbname=cibad", 0, 0, false,
     "libpq connection string or URI; shown as (set) when it contains a password"},
    {"migrations_dir", "CIBAD_MIGRATIONS_DIR", SETTING_STRING, FIELD(migrations_dir), "migrations", 0, 0, false,
     "Directory holding the NNNN_name.sql schema migrations"},
    {"workers", "CIBAD_WORKERS", SETTING_INT, FIELD(workers), "2", 1, 64, false,
     "Event loop threads, each with its own database connection"},
    {"log_level", "CIBAD_LOG_LEVEL", SETTING_STRING, FIELD(log_level), "info", 0, 0, false,
     "Lowest level logged: debug, info, warn or error"},
    {"secret", "CIBAD_SECRET", SETTING_STRING, FIELD(secret), NULL, 0, 0, true,
     "Server secret (at least 32 characters): keys one-time code HMACs and seals signing keys"},
    {"sms_driver", "CIBAD_SMS_DRIVER", SETTING_STRING, FIELD(sms_driver), "console", 0, 0, false,
     "SMS gateway: console (writes messages to the log, local use only), http or twilio"},
    {"sms_http_url", "CIBAD_SMS_HTTP_URL", SETTING_STRING, FIELD(sms_http_url), NULL, 0, 0, false,
     "http driver: URL that receives POST {\"to\",\"text\"}"},
    {"sms_http_token", "CIBAD_SMS_HTTP_TOKEN", SETTING_STRING, FIELD(sms_http_token), NULL, 0, 0, true,
     "http driver: Bearer token"},
    {"sms_twilio_base_url", "CIBAD_SMS_TWILIO_BASE_URL", SETTING_STRING, FIELD(sms_twilio_base_url), "https://api.twilio.com", 0, 0, false,
     "twilio driver: API base URL"},
    {"sms_twilio_account_sid", "CIBAD_SMS_TWILIO_ACCOUNT_SID", SETTING_STRING, FIELD(sms_twilio_account_sid), NULL, 0, 0, false,
     "twilio driver: account SID"},
    {"sms_twilio_auth_token", "CIBAD_SMS_TWILIO_AUTH_TOKEN", SETTING_STRING, FIELD(sms_twilio_auth_token), NULL, 0, 0, true,
     "twilio driver: auth token"},
    {"sms_twilio_from", "CIBAD_SMS_TWILIO_FROM", SETTING_STRING, FIELD(sms_twilio_from), NULL, 0, 0, false,
     "twilio driver: sender phone number in E.164 form"},
    {"sms_ca_file", "CIBAD_SMS_CA_FILE", SETTING_STRING, FIELD(sms_ca_file), NULL, 0, 0, false,
     "CA bundle for the gateway's HTTPS certificate; the system store when unset"},
    {"sms_timeout_ms", "CIBAD_SMS_TIMEOUT_MS", SETTING_INT, FIELD(sms_timeout_ms), "5000", 100, 60000, false,
     "Milliseconds for one gateway attempt (connect, send, response)"},
    {"sms_allow_http_loopback", "CIBAD_SMS_ALLOW_HTTP_LOOPBACK", SETTING_BOOL, FIELD(sms_allow_http_loopback), "false", 0, 0, false,
     "Accept a plain http:// gateway URL on a loopback address (tests and local use)"},
    {"sms_per_phone_max", "CIBAD_SMS_PER_PHONE_MAX", SETTING_INT, FIELD(sms_per_phone_max), "3", 1, 1000, false,
     "Codes sent to one phone number per window"},
    {"sms_per_phone_window", "CIBAD_SMS_PER_PHONE_WINDOW", SETTING_INT, FIELD(sms_per_phone_window), "60", 1, 86400, false,
     "Seconds of the per-number window"},
    {"default_country_code", "CIBAD_DEFAULT_COUNTRY_CODE", SETTING_STRING, FIELD(default_country_code), "1", 0, 0, false,
     "Country calling code (1 to 3 digits) for phone numbers written without +"},
    {"otp_lifetime", "CIBAD_OTP_LIFETIME", SETTING_INT, FIELD(otp_lifetime), "60", 30, 300, false,
     "Seconds a one-time code stays valid"},
    {"otp_max_attempts", "CIBAD_OTP_MAX_ATTEMPTS", SETTING_INT, FIELD(otp_max_attempts), "3", 1, 10, false,
     "Wrong codes allowed before the request is denied"},
    {"otp_resend_cooldown", "CIBAD_OTP_RESEND_COOLDOWN", SETTING_INT, FIELD(otp_resend_cooldown), "30", 0, 3600, false,
     "Seconds before the user may ask for a new code"},
    {"key_prepublish_seconds", "CIBAD_KEY_PREPUBLISH_SECONDS", SETTING_INT, FIELD(key_prepublish_seconds), "120", 0, 86400, false,
     "Seconds a new signing key is in the JWKS before it signs, so JWKS caches learn it first"},
    {"access_token_audience", "CIBAD_ACCESS_TOKEN_AUDIENCE", SETTING_STRING, FIELD(access_token_audience), NULL, 0, 0, false,
     "aud claim of access tokens: the resource server's identifier (default: the issuer)"},
    {"access_token_lifetime", "CIBAD_ACCESS_TOKEN_LIFETIME", SETTING_INT, FIELD(access_token_lifetime), "300", 30, 86400, false,
     "Seconds an access token is valid"},
    {"id_token_lifetime", "CIBAD_ID_TOKEN_LIFETIME", SETTING_INT, FIELD(id_token_lifetime), "300", 30, 86400, false,
     "Seconds an ID token is valid"},
    {"id_token_hint_max_age", "CIBAD_ID_TOKEN_HINT_MAX_AGE", SETTING_INT, FIELD(id_token_hint_max_age), "86400", 30, 2592000, false,
     "Seconds after its iat that an ID token is still accepted as id_token_hint, expired or not"},
    {"auth_req_default_expiry", "CIBAD_AUTH_REQ_DEFAULT_EXPIRY", SETTING_INT, FIELD(auth_req_default_expiry), "300", 1, 86400, false,
     "expires_in, in seconds, of a request without requested_expiry"},
    {"auth_req_min_expiry", "CIBAD_AUTH_REQ_MIN_EXPIRY", SETTING_INT, FIELD(auth_req_min_expiry), "10", 1, 86400, false,
     "Smallest expires_in, in seconds: a smaller requested_expiry is raised to it"},
    {"auth_req_max_expiry", "CIBAD_AUTH_REQ_MAX_EXPIRY", SETTING_INT, FIELD(auth_req_max_expiry), "600", 1, 86400, false,
     "Largest expires_in, in seconds: a larger requested_expiry is lowered to it"},
    {"poll_interval", "CIBAD_POLL_INTERVAL", SETTING_INT, FIELD(poll_interval), "5", 1, 60, false,
     "interval, in seconds, that clients must wait between token polls"},
    {"binding_message_max", "CIBAD_BINDING_MESSAGE_MAX", SETTING_INT, FIELD(binding_message_max), "64", 1, 1024, false,
     "Longest binding_message accepted, in characters"},
    {"tombstone_seconds", "CIBAD_TOMBSTONE_SECONDS", SETTING_INT, FIELD(tombstone_seconds), "86400", 0, 2592000, false,
     "Seconds an expired request is kept so polls get expired_token"},
    {"notification_ca_file", "CIBAD_NOTIFICATION_CA_FILE", SETTING_STRING, FIELD(notification_ca_file), NULL, 0, 0, false,
     "CA bundle for the HTTPS certificates of ping and push endpoints; the system store when unset"},
    {"notification_timeout_ms", "CIBAD_NOTIFICATION_TIMEOUT_MS", SETTING_INT, FIELD(notification_timeout_ms), "5000", 100, 60000, false,
     "Milliseconds for one ping or push attempt (DNS, connect, TLS, send and response)"},
    {"notification_max_attempts", "CIBAD_NOTIFICATION_MAX_ATTEMPTS", SETTING_INT, FIELD(notification_max_attempts), "10", 1, 100, false,
     "Attempts to deliver one ping or push notification before giving up"},
    {"notification_retry_window", "CIBAD_NOTIFICATION_RETRY_WINDOW", SETTING_INT, FIELD(notification_retry_window), "3600", 1, 86400, false,
     "Seconds after the decision during which a failed notification is retried"},
    {"notification_retry_initial_ms", "CIBAD_NOTIFICATION_RETRY_INITIAL_MS", SETTING_INT, FIELD(notification_retry_initial_ms), "5000", 10, 600000, false,
     "Milliseconds before the first retry of a notification; each later wait doubles, up to 15 minutes"},
    {"notification_allow_loopback", "CIBAD_NOTIFICATION_ALLOW_LOOPBACK", SETTING_BOOL, FIELD(notification_allow_loopback), "false", 0, 0, false,
     "Let notification endpoints be on loopback addresses, over https or plain http (tests and local use)"},
    {"http_timeout", "CIBAD_HTTP_TIMEOUT", SETTING_INT, FIELD(http_timeout), "30", 1, 3600, false,
     "Seconds of read or write inactivity before a client connection is closed"},
    {"request_deadline_ms", "CIBAD_REQUEST_DEADLINE_MS", SETTING_INT, FIELD(request_deadline_ms), "10000", 400, 600000, false,
     "Milliseconds after which an unanswered request gets 503. At least 4 x db_timeout_ms, because /bc-authorize runs "
     "three statements in a row and must not get 503 while the last one commits and its SMS goes out"},
    {"db_timeout_ms", "CIBAD_DB_TIMEOUT_MS", SETTING_INT, FIELD(db_timeout_ms), "2000", 100, 150000, false,
     "Milliseconds one database statement may take; request_deadline_ms must be at least 4 times this"},
    {"client_cache_ttl_ms", "CIBAD_CLIENT_CACHE_TTL_MS", SETTING_INT, FIELD(client_cache_ttl_ms), "5000", 0, 3600000, false,
     "Milliseconds each worker answers client lookups from memory (0: off). `cibad client delete` takes effect at once; "
     "a change made in the database by hand takes up to this long"},
    {"max_body", "CIBAD_MAX_BODY", SETTING_INT, FIELD(max_body), "65536", 1024, 16777216, false,
     "Largest request body accepted, in bytes"},
    {"max_headers", "CIBAD_MAX_HEADERS", SETTING_INT, FIELD(max_headers), "8192", 1024, 1048576, false,
     "Largest request line plus headers accepted, in bytes"},
    {"allow_rs256", "CIBAD_ALLOW_RS256", SETTING_BOOL, FIELD(allow_rs256), "false", 0, 0, false,
     "Accept RS256 client assertions (FAPI allows only PS256 and ES256)"},
    {"jwks_uri_ca_file", "CIBAD_JWKS_URI_CA_FILE", SETTING_STRING, FIELD(jwks_uri_ca_file), NULL, 0, 0, false,
     "CA bundle for the HTTPS certificates of client jwks_uri; the system store when unset"},
    {"jwks_uri_timeout_ms", "CIBAD_JWKS_URI_TIMEOUT_MS", SETTING_INT, FIELD(jwks_uri_timeout_ms), "2000", 100, 30000, false,
     "Milliseconds for one fetch of a client's jwks_uri"},
    {"jwks_uri_cache_seconds", "CIBAD_JWKS_URI_CACHE_SECONDS", SETTING_INT, FIELD(jwks_uri_cache_seconds), "300", 1, 86400, false,
     "Seconds a fetched client JWKS is used before it is fetched again"},
    {"jwks_uri_refetch_seconds", "CIBAD_JWKS_URI_REFETCH_SECONDS", SETTING_INT, FIELD(jwks_uri_refetch_seconds), "30", 1, 3600, false,
     "Least seconds between two fetches of one jwks_uri (on an unknown kid or after a failure)"},
    {"jwks_uri_allow_http_loopback", "CIBAD_JWKS_URI_ALLOW_HTTP_LOOPBACK", SETTING_BOOL, FIELD(jwks_uri_allow_http_loopback), "false", 0, 0, false,
     "Accept a plain http:// jwks_uri on a loopback address (tests and local use)"},
    {"jwks_uri_allow_loopback", "CIBAD_JWKS_URI_ALLOW_LOOPBACK", SETTING_BOOL, FIELD(jwks_uri_allow_loopback), "false", 0, 0, false,
     "Let jwks_uri fetches (client keys, trusted issuer keys) reach loopback addresses; private and link-local ones stay refused (tests and local use)"},
    {"tls_cert_file", "CIBAD_TLS_CERT_FILE", SETTING_STRING, FIELD(tls_cert_file), NULL, 0, 0, false,
     "PEM certificate chain; with tls_key_file set too, the listener speaks HTTPS only (TLS 1.2 and 1.3)"},
    {"tls_key_file", "CIBAD_TLS_KEY_FILE", SETTING_STRING, FIELD(tls_key_file), NULL, 0, 0, false,
     "PEM private key of tls_cert_file"},
    {"tls_client_ca_file", "CIBAD_TLS_CLIENT_CA_FILE", SETTING_STRING, FIELD(tls_client_ca_file), NULL, 0, 0, false,
     "CA bundle that client certificates are verified against; unset: no client certificate counts as verified"},
    {"tls_request_client_cert", "CIBAD_TLS_REQUEST_CLIENT_CERT", SETTING_BOOL, FIELD(tls_request_client_cert), "false", 0, 0, false,
     "Ask TLS clients for a certificate (never required; self-signed ones are accepted and marked unverified)"},
    {"tls_client_cert_header", "CIBAD_TLS_CLIENT_CERT_HEADER", SETTING_STRING, FIELD(tls_client_cert_header), NULL, 0, 0, false,
     "Header in which a TLS-terminating proxy passes the client certificate as URL-encoded PEM, such as X-Client-Cert"},
    {"trusted_proxies", "CIBAD_TRUSTED_PROXIES", SETTING_STRING, FIELD(trusted_proxies), NULL, 0, 0, false,
     "Comma-separated IP addresses whose tls_client_cert_header is believed; from any other peer it is ignored"},
    {"request_object_allow_rs256", "CIBAD_REQUEST_OBJECT_ALLOW_RS256", SETTING_BOOL, FIELD(request_object_allow_rs256), "false", 0, 0, false,
     "Accept RS256 signed authentication requests (the request parameter; FAPI allows only PS256 and ES256)"},
};
// clang-format on

/* The secret must carry enough entropy to key HMAC-SHA-256 and AES-256-GCM. */
#define SECRET_MIN_LEN 32
/* request_deadline_ms must be at least this many times db_timeout_ms. /bc-authorize
 * runs three statements one after the other (client, user, request), and each may take
 * db_timeout_ms. With a shorter deadline the client could get 503 while the last
 * statement still commits the request and its SMS goes out. The fourth share leaves
 * room for the rest of the handler. */
#define DEADLINE_DB_TIMEOUTS 4

static char **string_field(struct server_config *cfg, const struct setting *s)
{
    return (char **)((char *)cfg + s->offset);
}

static int *int_field(struct server_config *cfg, const struct setting *s)
{
    return (int *)((char *)cfg + s->offset);
}

static bool *bool_field(struct server_config *cfg, const struct setting *s)
{
    return (bool *)((char *)cfg + s->offset);
}

static const struct setting *setting_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        if (strcmp(settings[i].name, name) == 0)
            return &settings[i];
    }
    return NULL;
}

static int parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Stores text into the setting's field. An empty string unsets a string setting.
 * Returns 0, or -1 after writing why the value is invalid to err. */
static int setting_apply(struct server_config *cfg, const struct setting *s,
                         const char *text, char *err, size_t err_len)
{
    int64_t n;
    char **str;

    switch (s->type) {
    case SETTING_STRING:
        str = string_field(cfg, s);
        free(*str);
        *str = *text ? util_strdup(text) : NULL;
        return 0;
    case SETTING_INT:
        if (util_parse_int64(text, s->min, s->max, &n) != 0) {
            snprintf(err, err_len,
                     "invalid value \"%.32s\" for %s: expected an integer from %d to %d",
                     text, s->name, s->min, s->max);
            return -1;
        }
        *int_field(cfg, s) = (int)n;
        return 0;
    case SETTING_BOOL:
        if (parse_bool(text, bool_field(cfg, s)) != 0) {
            snprintf(err, err_len,
                     "invalid value \"%.32s\" for %s: expected true or false", text,
                     s->name);
            return -1;
        }
        return 0;
    }
    return -1;
}

static void apply_defaults(struct server_config *cfg)
{
    char err[128];

    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        const struct setting *s = &settings[i];

        /* The defaults are constants, and config_defaults_valid in
         * tests/check_server.c loads them, so this cannot fail. */
        if (s->default_value && setting_apply(cfg, s, s->default_value, err, sizeof(err)))
            abort();
    }
}

static char *trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    *end = '\0';
    return s;
}

/* Applies one `name = value` line. seen[] remembers the line that set each setting, so
 * a setting given twice is reported. Returns 0 or -1 with err set (without position). */
static int parse_line(struct server_config *cfg, char *line, int lineno, int *seen,
                      char *err, size_t err_len)
{
    char *eq, *name, *value;
    const struct setting *s;
    size_t len;

    line = trim(line);
    if (*line == '\0' || *line == '#')
        return 0;

    eq = strchr(line, '=');
    if (!eq) {
        snprintf(err, err_len, "expected `name = value`");
        return -1;
    }
    *eq = '\0';
    name = trim(line);
    value = trim(eq + 1);

    /* One pair of double quotes around the value is removed, so a value may keep
     * leading or trailing spaces. */
    len = strlen(value);
    if (len >= 2 && value[0] == '"' && value[len - 1] == '"') {
        value[len - 1] = '\0';
        value++;
    }

    s = setting_find(name);
    if (!s) {
        snprintf(err, err_len, "unknown setting \"%.64s\"", name);
        return -1;
    }
    if (seen[s - settings]) {
        snprintf(err, err_len, "%s is already set on line %d", s->name,
                 seen[s - settings]);
        return -1;
    }
    seen[s - settings] = lineno;
    return setting_apply(cfg, s, value, err, err_len);
}

static int load_file(struct server_config *cfg, const char *path, char *err,
                     size_t err_len)
{
    FILE *f;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    int seen[ARRAY_LEN(settings)] = {0};
    char reason[256];

    f = fopen(path, "r");
    if (!f) {
        snprintf(err, err_len, "cannot open config file %s: %s", path, strerror(errno));
        return -1;
    }
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if ((size_t)n != strlen(line))
            snprintf(reason, sizeof(reason), "contains a NUL byte");
        if ((size_t)n != strlen(line) ||
            parse_line(cfg, line, lineno, seen, reason, sizeof(reason)) != 0) {
            snprintf(err, err_len, "%s line %d: %s", path, lineno, reason);
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, err_len, "cannot read config file %s: %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

static int load_environment(struct server_config *cfg, char *err, size_t err_len)
{
    char reason[256];

    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        const char *value = getenv(settings[i].env);

        if (!value)
            continue;
        if (setting_apply(cfg, &settings[i], value, reason, sizeof(reason)) != 0) {
            snprintf(err, err_len, "%s: %s", settings[i].env, reason);
            return -1;
        }
    }
    return 0;
}

/* Checks an issuer: http or https, a host, and no userinfo, query, fragment or trailing
 * slash. RFC 8414 section 2 forbids the query and fragment, and a trailing slash would
 * put "//" into every endpoint URL built from the issuer. */
static int check_issuer(const char *issuer, char *err, size_t err_len)
{
    const char *host, *end;

    if (strncmp(issuer, "https://", 8) == 0)
        host = issuer + 8;
    else if (strncmp(issuer, "http://", 7) == 0)
        host = issuer + 7;
    else
        host = NULL;

    if (!host || *host == '\0' || *host == '/') {
        snprintf(err, err_len,
                 "invalid issuer: expected an absolute http:// or https:// URL");
        return -1;
    }
    for (const char *p = issuer; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            snprintf(err, err_len,
                     "invalid issuer: contains a space or control character");
            return -1;
        }
    }
    if (strpbrk(issuer, "?#")) {
        snprintf(err, err_len, "invalid issuer: must not have a query or fragment");
        return -1;
    }
    end = strchr(host, '/');
    if (memchr(host, '@', end ? (size_t)(end - host) : strlen(host))) {
        snprintf(err, err_len, "invalid issuer: must not contain user information");
        return -1;
    }
    if (issuer[strlen(issuer) - 1] == '/') {
        snprintf(err, err_len, "invalid issuer: remove the trailing slash");
        return -1;
    }
    return 0;
}

int server_config_parse_listen(const char *listen, char *host, size_t host_len, int *port)
{
    const char *colon;
    size_t len;
    int64_t n;
    unsigned char addr[16];

    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');

        if (!close || close[1] != ':')
            return -1;
        len = (size_t)(close - listen - 1);
        colon = close + 1;
        if (len == 0 || len >= host_len)
            return -1;
        memcpy(host, listen + 1, len);
        host[len] = '\0';
        if (inet_pton(AF_INET6, host, addr) != 1)
            return -1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon)
            return -1;
        len = (size_t)(colon - listen);
        if (len == 0 || len >= host_len)
            return -1;
        memcpy(host, listen, len);
        host[len] = '\0';
        if (inet_pton(AF_INET, host, addr) != 1)
            return -1;
    }
    if (util_parse_int64(colon + 1, 1, 65535, &n) != 0)
        return -1;
    *port = (int)n;
    return 0;
}

static int check_country_code(const char *cc)
{
    size_t len = strlen(cc);

    if (len < 1 || len > 3 || cc[0] == '0')
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)cc[i]))
            return -1;
    }
    return 0;
}

/* Checks the rules that span fields or go beyond a type's range. */
/* True when text is an HTTP header name (an RFC 9110 token). */
static bool header_name_ok(const char *text)
{
    if (!*text)
        return false;
    for (const char *p = text; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p))
            return false;
    }
    return true;
}

/* Checks the TLS settings: the certificate and key go together, the issuer of a TLS
 * listener is https, client certificate settings need a way to receive one, and
 * trusted_proxies holds IP addresses only. The files themselves are read by
 * server_tls_init at startup. */
static int check_tls(const struct server_config *cfg, char *err, size_t err_len)
{
    bool tls = cfg->tls_cert_file && cfg->tls_key_file;

    if (!!cfg->tls_cert_file != !!cfg->tls_key_file) {
        snprintf(err, err_len, "tls_cert_file and tls_key_file must be set together");
        return -1;
    }
    if (tls && strncmp(cfg->issuer, "https://", 8) != 0) {
        snprintf(err, err_len, "issuer must be an https:// URL when TLS is on");
        return -1;
    }
    if (!tls && cfg->tls_request_client_cert) {
        snprintf(err, err_len,
                 "tls_request_client_cert needs tls_cert_file and tls_key_file");
        return -1;
    }
    if (!tls && cfg->tls_client_ca_file && !cfg->tls_client_cert_header) {
        snprintf(err, err_len,
                 "tls_client_ca_file needs tls_cert_file and tls_key_file, or "
                 "tls_client_cert_header behind a proxy");
        return -1;
    }
    if (cfg->tls_client_cert_header && !header_name_ok(cfg->tls_client_cert_header)) {
        snprintf(err, err_len, "invalid tls_client_cert_header: expected a header name");
        return -1;
    }
    if (!!cfg->tls_client_cert_header != !!cfg->trusted_proxies) {
        snprintf(err, err_len,
                 "tls_client_cert_header and trusted_proxies must be set together");
        return -1;
    }
    if (cfg->trusted_proxies) {
        char *list = util_strdup(cfg->trusted_proxies), *save = NULL;
        int n = 0, rc = 0;

        for (char *item = strtok_r(list, ",", &save); item && rc == 0;
             item = strtok_r(NULL, ",", &save)) {
            unsigned char addr[16];

            item = trim(item);
            if (inet_pton(AF_INET, item, addr) != 1 &&
                inet_pton(AF_INET6, item, addr) != 1)
                rc = -1;
            n++;
        }
        free(list);
        if (rc != 0 || n == 0) {
            snprintf(err, err_len,
                     "invalid trusted_proxies: expected comma-separated IP addresses");
            return -1;
        }
    }
    return 0;
}

static int validate(const struct server_config *cfg, char *err, size_t err_len)
{
    enum util_log_level level;
    char host[64];
    int port;

    if (!cfg->issuer) {
        snprintf(err, err_len, "issuer is not set");
        return -1;
    }
    if (check_issuer(cfg->issuer, err, err_len) != 0)
        return -1;
    if (!cfg->listen ||
        server_config_parse_listen(cfg->listen, host, sizeof(host), &port) != 0) {
        snprintf(err, err_len,
                 "invalid listen address: expected IPv4:PORT or [IPv6]:PORT, such as "
                 "127.0.0.1:8080");
        return -1;
    }
    if (!cfg->database_url) {
        snprintf(err, err_len, "database_url is not set");
        return -1;
    }
    if (!cfg->migrations_dir) {
        snprintf(err, err_len, "migrations_dir is not set");
        return -1;
    }
    if (!cfg->log_level || util_log_level_parse(cfg->log_level, &level) != 0) {
        snprintf(err, err_len, "invalid log_level: expected debug, info, warn or error");
        return -1;
    }
    if (!cfg->sms_driver || (strcmp(cfg->sms_driver, "console") != 0 &&
                             strcmp(cfg->sms_driver, "http") != 0 &&
                             strcmp(cfg->sms_driver, "twilio") != 0)) {
        snprintf(err, err_len, "invalid sms_driver: expected console, http or twilio");
        return -1;
    }
    if (!cfg->default_country_code ||
        check_country_code(cfg->default_country_code) != 0) {
        snprintf(err, err_len,
                 "invalid default_country_code: expected 1 to 3 digits, such as 1 or 44");
        return -1;
    }
    if (cfg->secret && strlen(cfg->secret) < SECRET_MIN_LEN) {
        snprintf(err, err_len, "secret is too short: use at least %d random characters",
                 SECRET_MIN_LEN);
        return -1;
    }
    if (cfg->request_deadline_ms < DEADLINE_DB_TIMEOUTS * cfg->db_timeout_ms) {
        snprintf(
            err, err_len,
            "request_deadline_ms (%d) is less than %d x db_timeout_ms (%d): set it to "
            "at least %d or lower db_timeout_ms, so no request gets 503 while its "
            "database statements still commit",
            cfg->request_deadline_ms, DEADLINE_DB_TIMEOUTS, cfg->db_timeout_ms,
            DEADLINE_DB_TIMEOUTS * cfg->db_timeout_ms);
        return -1;
    }
    if (check_tls(cfg, err, err_len) != 0)
        return -1;
    if (cfg->auth_req_min_expiry > cfg->auth_req_default_expiry ||
        cfg->auth_req_default_expiry > cfg->auth_req_max_expiry) {
        snprintf(err, err_len,
                 "auth_req_min_expiry (%d) <= auth_req_default_expiry (%d) <= "
                 "auth_req_max_expiry (%d) does not hold",
                 cfg->auth_req_min_expiry, cfg->auth_req_default_expiry,
                 cfg->auth_req_max_expiry);
        return -1;
    }
    return 0;
}

int server_config_load(struct server_config *cfg, const char *path, char *err,
                       size_t err_len)
{
    memset(cfg, 0, sizeof(*cfg));
    apply_defaults(cfg);

    if ((path && load_file(cfg, path, err, err_len) != 0) ||
        load_environment(cfg, err, err_len) != 0 || validate(cfg, err, err_len) != 0) {
        server_config_free(cfg);
        return -1;
    }
    return 0;
}

int server_config_check_serve(const struct server_config *cfg, char *err, size_t err_len)
{
    if (!cfg->secret) {
        snprintf(
            err, err_len,
            "secret is not set: set CIBAD_SECRET or `secret = ...` in the config file "
            "to at least %d random characters",
            SECRET_MIN_LEN);
        return -1;
    }
    if (strcmp(cfg->sms_driver, "http") == 0 &&
        (!cfg->sms_http_url || !cfg->sms_http_token)) {
        snprintf(err, err_len, "sms_driver http needs sms_http_url and sms_http_token");
        return -1;
    }
    if (strcmp(cfg->sms_driver, "twilio") == 0 &&
        (!cfg->sms_twilio_account_sid || !cfg->sms_twilio_auth_token ||
         !cfg->sms_twilio_from || !cfg->sms_twilio_base_url)) {
        snprintf(err, err_len,
                 "sms_driver twilio needs sms_twilio_account_sid, sms_twilio_auth_token "
                 "and sms_twilio_from");
        return -1;
    }
    return 0;
}

void server_config_free(struct server_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        if (settings[i].type == SETTING_STRING) {
            char **str = string_field(cfg, &settings[i]);

            free(*str);
            *str = NULL;
        }
    }
}

/* True when a libpq connection string or URI carries a password. */
static bool conninfo_has_password(const char *conninfo)
{
    const char *scheme_end, *at, *colon;

    if (strstr(conninfo, "password"))
        return true;

    /* postgresql://user:password@host/db */
    scheme_end = strstr(conninfo, "://");
    if (!scheme_end)
        return false;
    at = strchr(scheme_end + 3, '@');
    colon = strchr(scheme_end + 3, ':');
    return at && colon && colon < at;
}

char *server_config_format_value(const struct server_config *cfg, const char *name)
{
    const struct setting *s = setting_find(name);
    struct server_config *c = (struct server_config *)cfg;
    const char *str;

    if (!s)
        return NULL;
    switch (s->type) {
    case SETTING_INT:
        return util_asprintf("%d", *int_field(c, s));
    case SETTING_BOOL:
        return util_strdup(*bool_field(c, s) ? "true" : "false");
    case SETTING_STRING:
        break;
    }

    str = *string_field(c, s);
    if (!str)
        return util_strdup("(not set)");
    if (s->secret || (s->offset == FIELD(database_url) && conninfo_has_password(str)))
        return util_strdup("(set)");
    return util_strdup(str);
}

void server_config_log(const struct server_config *cfg)
{
    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        char *value = server_config_format_value(cfg, settings[i].name);

        log_info("config %s = %s", settings[i].name, value);
        free(value);
    }
}

void server_config_print_help(void)
{
    printf("Settings come from defaults, then the --config file (`name = value` lines,\n"
           "# starts a comment line), then the environment variables, which win.\n\n");
    for (size_t i = 0; i < ARRAY_LEN(settings); i++) {
        const struct setting *s = &settings[i];
        char kind[48];

        if (s->type == SETTING_INT)
            snprintf(kind, sizeof(kind), "integer %d..%d", s->min, s->max);
        else
            snprintf(kind, sizeof(kind), "%s",
                     s->type == SETTING_BOOL ? "boolean" : "string");

        printf("  %-26s %-30s %s\n", s->name, s->env, kind);
        printf("      %s\n", s->description);
        printf("      default: %s\n", s->default_value ? s->default_value : "(none)");
    }
}
