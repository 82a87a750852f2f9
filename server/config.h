/* config.h - settings for every part of cibad, from a file and CIBAD_* variables
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_SERVER_CONFIG_H
#define CIBAD_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "util/util.h"

// clang-format off
struct server_config {
    char *issuer;        /* https://as.example.com, no trailing slash */
    char *listen;        /* host:port */
    char *database_url;  /* libpq connection string or URI */
    char *migrations_dir;
    int workers;         /* event loop threads */
    char *log_level;

    char *secret;        /* server secret: keys the OTP HMAC and seals signing keys */

    char *sms_driver;    /* console | http | twilio */
    char *sms_http_url;
    char *sms_http_token;
    char *sms_twilio_base_url;
    char *sms_twilio_account_sid;
    char *sms_twilio_auth_token;
    char *sms_twilio_from;
    char *sms_ca_file;
    int sms_timeout_ms;
    bool sms_allow_http_loopback;
    int sms_per_phone_max;   /* codes per phone number per window */
    int sms_per_phone_window;

    char *default_country_code; /* for phone numbers written without "+" */

    int otp_lifetime;        /* seconds, 30 to 300 */
    int otp_max_attempts;
    int otp_resend_cooldown; /* seconds */

    int key_prepublish_seconds; /* a new key signs only after this long in the JWKS */
    char *access_token_audience; /* aud of access tokens; NULL means the issuer */
    int access_token_lifetime; /* seconds */
    int id_token_lifetime;     /* seconds */
    int id_token_hint_max_age; /* seconds since iat an id_token_hint is accepted */
    int auth_req_default_expiry;
    int auth_req_min_expiry;
    int auth_req_max_expiry;
    int poll_interval;
    int binding_message_max; /* characters */
    int tombstone_seconds;   /* keep finished requests this long for expired_token */

    /* Ping and push delivery to client notification endpoints. */
    char *notification_ca_file;
    int notification_timeout_ms;       /* one attempt */
    int notification_max_attempts;
    int notification_retry_window;     /* seconds after the decision to keep trying */
    int notification_retry_initial_ms; /* first back-off; doubles per attempt */
    bool notification_allow_loopback;  /* tests and local development only */

    int http_timeout;        /* seconds of read or write inactivity */
    int request_deadline_ms; /* a request not answered by then gets 503 */
    int db_timeout_ms;
    int client_cache_ttl_ms; /* 0: every client lookup asks the database */
    int max_body;            /* bytes */
    int max_headers;         /* bytes */

    bool allow_rs256;        /* accept RS256 in client assertions */
    char *jwks_uri_ca_file;  /* CA bundle for client jwks_uri fetches */
    int jwks_uri_timeout_ms;
    int jwks_uri_cache_seconds;
    int jwks_uri_refetch_seconds;
    bool jwks_uri_allow_http_loopback;
    bool jwks_uri_allow_loopback; /* jwks_uri fetches may reach loopback addresses */
    /* HTTPS served by cibad itself; see server/tls.c. */
    char *tls_cert_file;       /* PEM chain; with tls_key_file the listener is TLS only */
    char *tls_key_file;
    char *tls_client_ca_file;  /* CA bundle that client certificates are verified against */
    bool tls_request_client_cert; /* request, never require, a client certificate */
    char *tls_client_cert_header; /* client certificate from a TLS-terminating proxy */
    char *trusted_proxies;     /* comma-separated addresses allowed to send that header */
    bool request_object_allow_rs256; /* accept RS256 in signed authentication requests */
};
// clang-format on

/* Loads defaults, then the file (when path is not NULL), then CIBAD_* environment
 * variables, which win. Validates ranges. Returns 0, or -1 after writing the reason to
 * err. */
int server_config_load(struct server_config *cfg, const char *path, char *err,
                       size_t err_len) MUST_CHECK;
void server_config_free(struct server_config *cfg);
/* Logs every setting at info level, except secrets, which show as "(set)". */
void server_config_log(const struct server_config *cfg);
/* Checks what `cibad serve` needs beyond server_config_load: the secret, and the
 * settings the chosen SMS driver requires. Returns 0, or -1 with the reason in err. */
int server_config_check_serve(const struct server_config *cfg, char *err,
                              size_t err_len) MUST_CHECK;
/* Returns the value of the setting called name as text (a new string), as the startup
 * log shows it: secrets, and a database_url with a password, as "(set)", and unset
 * strings as "(not set)". Returns NULL for an unknown name. */
char *server_config_format_value(const struct server_config *cfg, const char *name);
/* Splits a listen address, IPv4:PORT or [IPv6]:PORT, into the numeric host (without
 * brackets) and the port. Returns 0 or -1. */
int server_config_parse_listen(const char *listen, char *host, size_t host_len,
                               int *port) MUST_CHECK;
/* Prints the settings table (name, variable, default, description) for --help. */
void server_config_print_help(void);

/* The configuration of the running process, set once by main before threads start. */
extern const struct server_config *server_config;

#endif
