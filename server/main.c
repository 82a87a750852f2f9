/* main.c - the cibad command line: serve, migrate, and the client, user, issuer, keys
 * and scope administration commands
 * SPDX-License-Identifier: MIT
 *
 * Exit status: 0 on success, 1 when the command failed, 2 for a usage error. Errors go
 * to stderr; --json output is one JSON object (create, show) or array (list) on stdout.
 */
#include "server/server.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "ciba/ciba.h"
#include "oauth/oauth.h"
#include "storage/storage.h"

#define EXIT_USAGE 2
/* parse_args result when --help was given and the usage is printed. */
#define ARGS_HELP (-1)

#define CLIENT_NAME_MAX       100 /* characters, as the client table allows */
#define ID_MAX                128 /* client_id bytes, as the client table allows */
#define USER_FIELD_MAX        255 /* subject and username characters */
#define SCOPE_DESCRIPTION_MAX 200
#define EMAIL_MAX             254 /* characters, as the app_user table allows */
#define ISSUER_MAX            255 /* iss characters, as the trusted_issuer table allows */

struct command;

/* The state every command gets. */
struct cli {
    const struct command *cmd;
    struct server_config cfg;
};

struct command {
    const char *group; /* "client", or NULL for a top-level command */
    const char *name;
    const char *usage;
    const char *summary;
    int (*run)(struct cli *cli, int argc, char **argv);
};

/* One option of a command: a value option (--name VALUE or --name=VALUE) when value is
 * set, otherwise a flag. */
struct cli_opt {
    const char *name;
    const char **value;
    bool *flag;
};

static void print_usage(FILE *out, const struct command *cmd)
{
    fprintf(out, "usage: cibad [--config FILE] %s\n  %s\n", cmd->usage, cmd->summary);
}

/* Reads argv[1..argc) into opts and exactly n_pos positional arguments. Returns 0,
 * ARGS_HELP after printing the usage for --help, or EXIT_USAGE after printing why. */
static int parse_args(const struct command *cmd, int argc, char **argv,
                      struct cli_opt *opts, size_t n_opts, const char **pos, int n_pos)
{
    int got = 0;
    bool options_done = false;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        struct cli_opt *o = NULL;
        size_t len = strcspn(arg, "=");

        if (!options_done && strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (!options_done && (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)) {
            print_usage(stdout, cmd);
            return ARGS_HELP;
        }
        if (options_done || strncmp(arg, "--", 2) != 0) {
            if (got == n_pos) {
                fprintf(stderr, "cibad: unexpected argument \"%s\"\n", arg);
                goto usage;
            }
            pos[got++] = arg;
            continue;
        }
        for (size_t k = 0; k < n_opts; k++) {
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, arg, len) == 0)
                o = &opts[k];
        }
        if (!o) {
            fprintf(stderr, "cibad: unknown option %.*s\n", (int)len, arg);
            goto usage;
        }
        if (o->flag) {
            if (arg[len] == '=') {
                fprintf(stderr, "cibad: option %s takes no value\n", o->name);
                goto usage;
            }
            *o->flag = true;
            continue;
        }
        if (*o->value) {
            fprintf(stderr, "cibad: option %s is given twice\n", o->name);
            goto usage;
        }
        if (arg[len] == '=') {
            *o->value = arg + len + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            fprintf(stderr, "cibad: option %s needs a value\n", o->name);
            goto usage;
        }
    }
    if (got < n_pos) {
        fprintf(stderr, "cibad: missing argument\n");
        goto usage;
    }
    return 0;
usage:
    print_usage(stderr, cmd);
    return EXIT_USAGE;
}

/* Connects the blocking database API, or prints why not and returns NULL. */
static struct storage_sync *open_db(const struct cli *cli)
{
    char err[512];
    struct storage_sync *s =
        storage_sync_connect(cli->cfg.database_url, err, sizeof(err));

    if (!s)
        fprintf(stderr, "cibad: cannot connect to the database: %s\n", err);
    return s;
}

static void print_json(json_t *value)
{
    json_dumpf(value, stdout, JSON_INDENT(2));
    putchar('\n');
    json_decref(value);
}

static void format_time(int64_t unix_seconds, char out[32])
{
    time_t t = (time_t)unix_seconds;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- input checks ---------------------------------------------------------------------
 */

/* True when s is valid UTF-8 with 1 to max characters (code points) and no control
 * character. */
static bool text_ok(const char *s, size_t max)
{
    size_t chars = 0;

    if (!util_utf8_valid(s, strlen(s)))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return false;
        if ((*p & 0xc0) != 0x80)
            chars++;
    }
    return chars >= 1 && chars <= max;
}

/* True when s has 1 to max printable ASCII characters other than space (the VSCHAR
 * set of RFC 6749 Appendix A without space). */
static bool token_ok(const char *s, size_t max)
{
    size_t len = strlen(s);

    if (len < 1 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return false;
    }
    return true;
}

/* True when s is a scope-token: %x21 / %x23-5B / %x5D-7E (RFC 6749 section 3.3). */
static bool scope_token_ok(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '"' || s[i] == '\\')
            return false;
    }
    return true;
}

/* Checks a space-separated scope list: valid tokens, no token twice, openid present.
 * Returns the list with single spaces (a new string), or NULL after printing why. */
static char *scope_normalize(const char *scope)
{
    char *out = util_calloc(1, strlen(scope) + 1);
    const char *p = scope;
    size_t n = 0;

    while (*p) {
        size_t len;
        char *token;

        p += strspn(p, " ");
        len = strcspn(p, " ");
        if (len == 0)
            break;
        token = util_strndup(p, len);
        if (!scope_token_ok(token, len) || oauth_scope_has(out, token)) {
            fprintf(stderr, "cibad: invalid scope \"%s\": %s\n", token,
                    scope_token_ok(token, len) ? "listed twice" : "bad characters");
            free(token);
            free(out);
            return NULL;
        }
        n += (size_t)sprintf(out + n, "%s%s", n ? " " : "", token);
        free(token);
        p += len;
    }
    if (!oauth_scope_has(out, "openid")) {
        fprintf(stderr, "cibad: --scope must include openid\n");
        free(out);
        return NULL;
    }
    return out;
}

/* ---- serve and migrate ----------------------------------------------------------------
 */

static int cmd_serve(struct cli *cli, int argc, char **argv)
{
    char err[256];
    int rc = parse_args(cli->cmd, argc, argv, NULL, 0, NULL, 0);

    if (rc == ARGS_HELP) {
        printf("\n");
        server_config_print_help();
        return 0;
    }
    if (rc != 0)
        return rc;
    if (server_config_check_serve(&cli->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: %s\n", err);
        return 1;
    }
    return server_run(&cli->cfg);
}

static int cmd_migrate(struct cli *cli, int argc, char **argv)
{
    int rc = parse_args(cli->cmd, argc, argv, NULL, 0, NULL, 0);
    struct storage_sync *s;

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    rc = storage_sync_migrate(s, cli->cfg.migrations_dir);
    storage_sync_close(s);
    if (rc != 0) {
        fprintf(stderr, "cibad: migration failed; see the log lines above\n");
        return 1;
    }
    printf("database schema is up to date\n");
    return 0;
}

/* ---- clients --------------------------------------------------------------------------
 */

/* Adds the tls_client_auth subject member (RFC 8705 section 2.1.2) that is not NULL. */
static void add_tls_members(json_t *out, const char *dn, const char *dns, const char *uri,
                            const char *ip, const char *email)
{
    const char *names[] = {"tls_client_auth_subject_dn", "tls_client_auth_san_dns",
                           "tls_client_auth_san_uri", "tls_client_auth_san_ip",
                           "tls_client_auth_san_email"};
    const char *values[] = {dn, dns, uri, ip, email};

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (values[i])
            json_object_set_new(out, names[i], json_string(values[i]));
    }
}

static json_t *client_json(const struct storage_client *c)
{
    const char *endpoint = c->backchannel_client_notification_endpoint;
    json_t *out =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:I}", "client_id", c->client_id,
                  "client_name", c->client_name, "token_endpoint_auth_method",
                  c->token_endpoint_auth_method, "scope", c->scope,
                  "backchannel_token_delivery_mode", c->backchannel_token_delivery_mode,
                  "backchannel_client_notification_endpoint",
                  endpoint ? json_string(endpoint) : json_null(), "grant_types",
                  c->grant_types, "created_at", (json_int_t)c->created_at);

    /* The JWT method's metadata; a client_secret_jwt secret is never shown. */
    if (c->token_endpoint_auth_signing_alg)
        json_object_set_new(out, "token_endpoint_auth_signing_alg",
                            json_string(c->token_endpoint_auth_signing_alg));
    if (c->jwks_uri)
        json_object_set_new(out, "jwks_uri", json_string(c->jwks_uri));
    if (c->jwks)
        json_object_set_new(out, "jwks", json_loads(c->jwks, 0, NULL));
    add_tls_members(out, c->tls_client_auth_subject_dn, c->tls_client_auth_san_dns,
                    c->tls_client_auth_san_uri, c->tls_client_auth_san_ip,
                    c->tls_client_auth_san_email);
    json_object_set_new(out, "backchannel_user_code_parameter",
                        json_boolean(c->backchannel_user_code_parameter));
    if (c->backchannel_authentication_request_signing_alg)
        json_object_set_new(
            out, "backchannel_authentication_request_signing_alg",
            json_string(c->backchannel_authentication_request_signing_alg));
    return out;
}

/* Checks the options of `client create`; prints why and returns EXIT_USAGE on error. */
static int client_create_check(const char *name, const char *client_id, const char *mode)
{
    if (!text_ok(name, CLIENT_NAME_MAX)) {
        fprintf(stderr,
                "cibad: --name must be UTF-8 with 1 to %d characters and no control "
                "characters\n",
                CLIENT_NAME_MAX);
        return EXIT_USAGE;
    }
    if (client_id && !token_ok(client_id, ID_MAX)) {
        fprintf(stderr,
                "cibad: --client-id must have 1 to %d printable ASCII characters "
                "and no space\n",
                ID_MAX);
        return EXIT_USAGE;
    }
    if (strcmp(mode, "poll") != 0 && strcmp(mode, "ping") != 0 &&
        strcmp(mode, "push") != 0) {
        fprintf(stderr,
                "cibad: invalid --delivery-mode \"%s\": expected poll, ping or push\n",
                mode);
        return EXIT_USAGE;
    }
    return 0;
}

/* Checks --notification-endpoint against --delivery-mode (CIBA Core 1.0 section 4: ping
 * and push clients need an https endpoint, poll clients have none). */
static int client_endpoint_check(const char *mode, const char *endpoint,
                                 const struct server_config *cfg)
{
    char err[256];

    if (strcmp(mode, "poll") == 0) {
        if (!endpoint)
            return 0;
        fprintf(stderr, "cibad: --notification-endpoint is only for the ping and push "
                        "delivery modes\n");
        return EXIT_USAGE;
    }
    if (!endpoint) {
        fprintf(stderr, "cibad: --delivery-mode %s needs --notification-endpoint URL\n",
                mode);
        return EXIT_USAGE;
    }
    if (ciba_notification_endpoint_check(endpoint, cfg->notification_allow_loopback, err,
                                         sizeof(err)) != 0) {
        fprintf(stderr, "cibad: invalid --notification-endpoint: %s\n", err);
        return EXIT_USAGE;
    }
    return 0;
}

static int cmd_client_create(struct cli *cli, int argc, char **argv)
{
    const char *name = NULL, *scope = NULL, *client_id = NULL, *method = NULL,
               *mode = NULL, *endpoint = NULL, *jwks = NULL, *jwks_uri = NULL,
               *signing_alg = NULL, *tls_dn = NULL, *tls_dns = NULL, *tls_uri = NULL,
               *tls_ip = NULL, *tls_email = NULL, *request_alg = NULL;
    bool as_json = false, user_code = false;
    struct cli_opt opts[] = {
        {"--name", &name, NULL},
        {"--scope", &scope, NULL},
        {"--client-id", &client_id, NULL},
        {"--auth-method", &method, NULL},
        {"--delivery-mode", &mode, NULL},
        {"--json", NULL, &as_json},
        {"--notification-endpoint", &endpoint, NULL},
        {"--jwks", &jwks, NULL},
        {"--jwks-uri", &jwks_uri, NULL},
        {"--auth-signing-alg", &signing_alg, NULL},
        {"--user-code", NULL, &user_code},
        {"--tls-subject-dn", &tls_dn, NULL},
        {"--tls-san-dns", &tls_dns, NULL},
        {"--tls-san-uri", &tls_uri, NULL},
        {"--tls-san-ip", &tls_ip, NULL},
        {"--tls-san-email", &tls_email, NULL},
        {"--request-signing-alg", &request_alg, NULL},
    };
    char *scope_list = NULL, *id = NULL, err[512];
    const char *request_alg_name = NULL;
    struct oauth_client_credentials cred = {0};
    struct storage_sync *s = NULL;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    if (!name || !scope) {
        fprintf(stderr, "cibad: --name and --scope are required\n");
        print_usage(stderr, cli->cmd);
        return EXIT_USAGE;
    }
    method = method ? method : "client_secret_basic";
    mode = mode ? mode : "poll";
    rc = client_create_check(name, client_id, mode);
    if (rc == 0)
        rc = client_endpoint_check(mode, endpoint, &cli->cfg);
    if (rc != 0)
        return rc;
    if (oauth_client_credentials_new(
            &(struct oauth_client_auth_options){
                .method = method,
                .jwks = jwks,
                .jwks_uri = jwks_uri,
                .signing_alg = signing_alg,
                .server_secret = cli->cfg.secret,
                .allow_rs256 = cli->cfg.allow_rs256,
                .allow_http_loopback = cli->cfg.jwks_uri_allow_http_loopback,
                .tls_subject_dn = tls_dn,
                .tls_san_dns = tls_dns,
                .tls_san_uri = tls_uri,
                .tls_san_ip = tls_ip,
                .tls_san_email = tls_email,
            },
            &cred, err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: %s\n", err);
        return EXIT_USAGE;
    }
    if (request_alg) {
        request_alg_name = oauth_request_signing_alg_check(
            request_alg, &cred, cli->cfg.request_object_allow_rs256, err, sizeof(err));
        if (!request_alg_name) {
            fprintf(stderr, "cibad: %s\n", err);
            oauth_client_credentials_clear(&cred);
            return EXIT_USAGE;
        }
    }
    scope_list = scope_normalize(scope);
    if (!scope_list) {
        oauth_client_credentials_clear(&cred);
        return EXIT_USAGE;
    }

    rc = 1;
    id = client_id ? util_strdup(client_id) : util_random_token(16);
    s = open_db(cli);
    if (!s)
        goto out;

    struct storage_client_new c = {
        .client_id = id,
        .client_name = name,
        .secret_hash = cred.secret_hash,
        .token_endpoint_auth_method = method,
        .scope = scope_list,
        .backchannel_token_delivery_mode = mode,
        .backchannel_client_notification_endpoint = endpoint,
        .grant_types = OAUTH_GRANT_TYPE_CIBA,
        .jwks = cred.jwks,
        .jwks_uri = cred.jwks_uri,
        .token_endpoint_auth_signing_alg = cred.signing_alg,
        .client_secret_sealed = cred.secret_sealed,
        .backchannel_user_code_parameter = user_code,
        .tls_client_auth_subject_dn = cred.tls_subject_dn,
        .tls_client_auth_san_dns = cred.tls_san_dns,
        .tls_client_auth_san_uri = cred.tls_san_uri,
        .tls_client_auth_san_ip = cred.tls_san_ip,
        .tls_client_auth_san_email = cred.tls_san_email,
        .backchannel_authentication_request_signing_alg = request_alg_name,
    };
    if (storage_sync_client_create(s, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: cannot create client %s: %s\n", id, err);
        goto out;
    }
    if (as_json) {
        json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "client_id", id,
                                "client_name", name, "token_endpoint_auth_method", method,
                                "scope", scope_list, "backchannel_token_delivery_mode",
                                mode, "backchannel_client_notification_endpoint",
                                endpoint ? json_string(endpoint) : json_null(),
                                "grant_types", OAUTH_GRANT_TYPE_CIBA);

        if (cred.secret)
            json_object_set_new(out, "client_secret", json_string(cred.secret));
        if (cred.signing_alg)
            json_object_set_new(out, "token_endpoint_auth_signing_alg",
                                json_string(cred.signing_alg));
        if (cred.jwks_uri)
            json_object_set_new(out, "jwks_uri", json_string(cred.jwks_uri));
        if (cred.jwks)
            json_object_set_new(out, "jwks", json_loads(cred.jwks, 0, NULL));
        add_tls_members(out, cred.tls_subject_dn, cred.tls_san_dns, cred.tls_san_uri,
                        cred.tls_san_ip, cred.tls_san_email);
        json_object_set_new(out, "backchannel_user_code_parameter",
                            json_boolean(user_code));
        if (request_alg_name)
            json_object_set_new(out, "backchannel_authentication_request_signing_alg",
                                json_string(request_alg_name));
        print_json(out);
    } else {
        printf("client_id:     %s\n", id);
    }
    if (!as_json && cred.secret) {
        printf("client_secret: %s\n", cred.secret);
        printf("Store the secret now: cibad cannot show it again.\n");
    }
    rc = 0;
out:
    storage_sync_close(s);
    free(scope_list);
    free(id);
    oauth_client_credentials_clear(&cred);
    return rc;
}

static void collect_client(void *arg, const struct storage_client *c)
{
    json_array_append_new(arg, client_json(c));
}

static int cmd_client_list(struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    struct cli_opt opts[] = {{"--json", NULL, &as_json}};
    struct storage_sync *s;
    json_t *list;
    size_t i;
    json_t *c;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_client_each(s, NULL, collect_client, list);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot list the clients\n");
        json_decref(list);
        return 1;
    }
    if (as_json) {
        print_json(list);
        return 0;
    }
    printf("%-24s %-20s %-20s %s\n", "CLIENT_ID", "NAME", "AUTH_METHOD", "SCOPE");
    json_array_foreach(list, i, c)
    {
        printf("%-24s %-20s %-20s %s\n",
               json_string_value(json_object_get(c, "client_id")),
               json_string_value(json_object_get(c, "client_name")),
               json_string_value(json_object_get(c, "token_endpoint_auth_method")),
               json_string_value(json_object_get(c, "scope")));
    }
    json_decref(list);
    return 0;
}

/* Prints one "name value" line with value as compact JSON (a client's jwks). */
static void print_compact(const char *key, const json_t *value)
{
    char *text = json_dumps(value, JSON_COMPACT);

    printf("%-42s %s\n", key, text ? text : "");
    free(text);
}

static int cmd_client_show(struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    struct cli_opt opts[] = {{"--json", NULL, &as_json}};
    const char *id;
    struct storage_sync *s;
    json_t *list, *c;
    const char *key;
    json_t *value;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), &id, 1);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_client_each(s, id, collect_client, list);
    storage_sync_close(s);
    if (rc <= 0) {
        fprintf(stderr,
                rc < 0 ? "cibad: cannot read client %s\n"
                       : "cibad: client %s not found\n",
                id);
        json_decref(list);
        return 1;
    }
    c = json_incref(json_array_get(list, 0));
    json_decref(list);
    if (as_json) {
        print_json(c);
        return 0;
    }
    json_object_foreach(c, key, value)
    {
        if (json_is_string(value))
            printf("%-42s %s\n", key, json_string_value(value));
        else if (json_is_integer(value))
            printf("%-42s %lld\n", key, (long long)json_integer_value(value));
        else if (json_is_object(value))
            print_compact(key, value);
    }
    json_decref(c);
    return 0;
}

/* The object a delete command removes, and what goes with it. */
struct delete_cmd {
    int (*delete_one)(struct storage_sync *s, const char *name);
    const char *noun;    /* "client" */
    const char *matches; /* the field the argument is compared with, for "not found" */
    const char *also;    /* the rows deleted with it, "" for none */
};

/* Runs a delete command that takes one argument: deletes and reports the outcome. */
static int run_delete(struct cli *cli, int argc, char **argv, const struct delete_cmd *d)
{
    const char *name;
    struct storage_sync *s;
    int rc = parse_args(cli->cmd, argc, argv, NULL, 0, &name, 1);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    rc = d->delete_one(s, name);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot delete %s %s\n", d->noun, name);
        return 1;
    }
    if (rc == 0) {
        fprintf(stderr, "cibad: %s %s not found (no %s matches)\n", d->noun, name,
                d->matches);
        return 1;
    }
    printf("deleted %s %s%s\n", d->noun, name, d->also);
    return 0;
}

static int cmd_client_delete(struct cli *cli, int argc, char **argv)
{
    static const struct delete_cmd d = {storage_sync_client_delete, "client", "client_id",
                                        " and its requests"};

    return run_delete(cli, argc, argv, &d);
}

/* ---- users ----------------------------------------------------------------------------
 */

static json_t *user_json(const struct storage_user *u)
{
    return json_pack("{s:s, s:o, s:s, s:o}", "subject", u->subject, "username",
                     u->username ? json_string(u->username) : json_null(), "phone_number",
                     u->phone_number, "email",
                     u->email ? json_string(u->email) : json_null());
}

static void collect_user(void *arg, const struct storage_user *u)
{
    json_array_append_new(arg, user_json(u));
}

/* A login_hint is looked up as a username or a subject, so a new username or subject
 * must not equal any existing username or subject. Returns the clashing value or
 * NULL. */
static const char *user_name_clash(json_t *users, const char *subject,
                                   const char *username)
{
    size_t i;
    json_t *u;

    json_array_foreach(users, i, u)
    {
        const char *sub = json_string_value(json_object_get(u, "subject"));
        const char *name = json_string_value(json_object_get(u, "username"));

        if (strcmp(sub, subject) == 0 || (name && strcmp(name, subject) == 0))
            return subject;
        if (username &&
            (strcmp(sub, username) == 0 || (name && strcmp(name, username) == 0)))
            return username;
    }
    return NULL;
}

/* True when value reads as a phone number under any default_country_code the setting
 * allows (1 to 999), so a later change of the setting cannot make it read as one. */
static bool reads_as_phone(const char *value)
{
    char e164[17], cc[12]; /* room for any int, which -O1 cannot bound to 999 */

    for (int code = 1; code <= 999; code++) {
        snprintf(cc, sizeof(cc), "%d", code);
        if (util_phone_normalize(value, cc, e164) == 0)
            return true;
    }
    return false;
}

/* Checks --subject and --username. A login_hint that reads as a phone number is looked
 * up by phone number only, so a subject or username that reads as one would never find
 * its user, and could find another user who has that number. The database cannot
 * enforce this: a CHECK constraint cannot run util_phone_normalize. */
static int user_create_check(const char *subject, const char *username)
{
    if (subject && reads_as_phone(subject)) {
        fprintf(stderr,
                "cibad: invalid --subject \"%s\": it reads as a phone number, and a "
                "login_hint that does is looked up by phone number only; include a "
                "letter\n",
                subject);
        return EXIT_USAGE;
    }
    if (username && reads_as_phone(username)) {
        fprintf(stderr,
                "cibad: invalid --username \"%s\": it reads as a phone number, and a "
                "login_hint that does is looked up by phone number only; include a "
                "letter\n",
                username);
        return EXIT_USAGE;
    }
    if (subject && !token_ok(subject, USER_FIELD_MAX)) {
        fprintf(stderr,
                "cibad: --subject must have 1 to %d printable ASCII characters and "
                "no space\n",
                USER_FIELD_MAX);
        return EXIT_USAGE;
    }
    if (username && (!text_ok(username, USER_FIELD_MAX) || strchr(username, ' '))) {
        fprintf(
            stderr,
            "cibad: --username must be UTF-8 with 1 to %d characters, no space and no "
            "control characters\n",
            USER_FIELD_MAX);
        return EXIT_USAGE;
    }
    return 0;
}

/* Checks --email and stores it lower-cased in out (EMAIL_MAX + 1 bytes): 3 to
 * EMAIL_MAX printable ASCII characters without space, one "@" with text on both sides.
 * A login_hint_token issuer that names users by email is matched against this form. */
static int user_email_check(const char *email, char *out)
{
    const char *at = strchr(email, '@');
    size_t len = strlen(email);

    if (!token_ok(email, EMAIL_MAX) || len < 3 || !at || at == email || !at[1] ||
        strchr(at + 1, '@')) {
        fprintf(stderr,
                "cibad: invalid --email \"%s\": expected NAME@DOMAIN, at most %d "
                "printable ASCII characters\n",
                email, EMAIL_MAX);
        return EXIT_USAGE;
    }
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)email[i]);
    return 0;
}

static int cmd_user_create(struct cli *cli, int argc, char **argv)
{
    const char *phone = NULL, *username = NULL, *subject = NULL, *email = NULL, *clash;
    bool as_json = false;
    // clang-format off
    struct cli_opt opts[] = {
        {"--phone", &phone, NULL},
        {"--username", &username, NULL},
        {"--subject", &subject, NULL},
        {"--email", &email, NULL},
        {"--json", NULL, &as_json},
    };
    // clang-format on
    char e164[17], err[512], *sub = NULL, email_lower[EMAIL_MAX + 1];
    struct storage_sync *s = NULL;
    json_t *users = json_array();
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0) {
        rc = rc == ARGS_HELP ? 0 : rc;
        goto out;
    }
    rc = EXIT_USAGE;
    if (!phone) {
        fprintf(stderr, "cibad: --phone is required\n");
        print_usage(stderr, cli->cmd);
        goto out;
    }
    if (util_phone_normalize(phone, cli->cfg.default_country_code, e164) != 0) {
        fprintf(stderr,
                "cibad: invalid --phone \"%s\": expected a phone number such as "
                "+15555550100\n",
                phone);
        goto out;
    }
    if (user_create_check(subject, username) != 0)
        goto out;
    if (email && user_email_check(email, email_lower) != 0)
        goto out;

    rc = 1;
    if (subject) {
        sub = util_strdup(subject);
    } else {
        /* 22 base64url characters read as a phone number only when all are digits or
         * '-', which is unlikely but possible. */
        do {
            free(sub);
            sub = util_random_token(16);
        } while (reads_as_phone(sub));
    }
    s = open_db(cli);
    if (!s)
        goto out;
    if (storage_sync_user_each(s, collect_user, users) < 0) {
        fprintf(stderr, "cibad: cannot read the users\n");
        goto out;
    }
    clash = user_name_clash(users, sub, username);
    if (clash) {
        fprintf(stderr, "cibad: \"%s\" is already a username or subject\n", clash);
        goto out;
    }
    if (storage_sync_user_create_email(s, sub, username, e164, email ? email_lower : NULL,
                                       err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: cannot create the user: %s\n", err);
        goto out;
    }
    if (as_json)
        print_json(user_json(&(struct storage_user){
            .subject = sub,
            .username = username,
            .phone_number = e164,
            .email = email ? email_lower : NULL,
        }));
    else
        printf("subject:      %s\nusername:     %s\nphone_number: %s\nemail:        "
               "%s\n",
               sub, username ? username : "(none)", e164, email ? email_lower : "(none)");
    rc = 0;
out:
    storage_sync_close(s);
    json_decref(users);
    free(sub);
    return rc;
}

static int cmd_user_list(struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    struct cli_opt opts[] = {{"--json", NULL, &as_json}};
    struct storage_sync *s;
    json_t *list, *u;
    size_t i;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_user_each(s, collect_user, list);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot list the users\n");
        json_decref(list);
        return 1;
    }
    if (as_json) {
        print_json(list);
        return 0;
    }
    printf("%-24s %-20s %-16s %s\n", "SUBJECT", "USERNAME", "PHONE_NUMBER", "EMAIL");
    json_array_foreach(list, i, u)
    {
        const char *name = json_string_value(json_object_get(u, "username"));
        const char *email = json_string_value(json_object_get(u, "email"));

        printf("%-24s %-20s %-16s %s\n", json_string_value(json_object_get(u, "subject")),
               name ? name : "-", json_string_value(json_object_get(u, "phone_number")),
               email ? email : "-");
    }
    json_decref(list);
    return 0;
}

static int cmd_user_delete(struct cli *cli, int argc, char **argv)
{
    static const struct delete_cmd d = {storage_sync_user_delete, "user",
                                        "subject or username", " and their requests"};

    return run_delete(cli, argc, argv, &d);
}

/* Reads one line of at most CIBA_USER_CODE_MAX bytes from stdin, without its line end,
 * into buf. Returns 0, or -1 when there is no line or it is too long. */
static int read_code_line(char *buf, size_t size)
{
    size_t len;

    if (!fgets(buf, (int)size, stdin))
        return -1;
    len = strlen(buf);
    if (len > 0 && buf[len - 1] == '\n')
        buf[--len] = '\0';
    else if (!feof(stdin))
        return -1;
    if (len > 0 && buf[len - 1] == '\r')
        buf[--len] = '\0';
    return 0;
}

static int cmd_user_set_code(struct cli *cli, int argc, char **argv)
{
    const char *subject_or_name, *code = NULL;
    struct cli_opt opts[] = {{"--code", &code, NULL}};
    char line[CIBA_USER_CODE_MAX + 3], *hash = NULL;
    struct storage_sync *s = NULL;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), &subject_or_name, 1);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    if (!code) {
        if (read_code_line(line, sizeof(line)) != 0) {
            fprintf(stderr,
                    "cibad: no user code on stdin, or longer than %d "
                    "characters\n",
                    CIBA_USER_CODE_MAX);
            return EXIT_USAGE;
        }
        code = line;
    }
    /* The error never repeats the code: it is a secret. */
    if (ciba_user_code_check(code) != 0) {
        fprintf(stderr,
                "cibad: a user code must have %d to %d printable ASCII "
                "characters\n",
                CIBA_USER_CODE_MIN, CIBA_USER_CODE_MAX);
        rc = EXIT_USAGE;
        goto out;
    }
    rc = 1;
    hash = ciba_user_code_hash(code);
    if (!hash) {
        fprintf(stderr, "cibad: hashing the user code failed\n");
        goto out;
    }
    s = open_db(cli);
    if (!s)
        goto out;
    switch (storage_sync_user_set_code(s, subject_or_name, hash)) {
    case 1:
        printf("set the user code of %s\n", subject_or_name);
        rc = 0;
        break;
    case 0:
        fprintf(stderr, "cibad: no user has the subject or username %s\n",
                subject_or_name);
        break;
    default:
        fprintf(stderr, "cibad: cannot set the user code of %s\n", subject_or_name);
        break;
    }
out:
    storage_sync_close(s);
    OPENSSL_cleanse(line, sizeof(line));
    free(hash);
    return rc;
}

/* ---- trusted issuers of login_hint_token
 * ------------------------------------------------
 */

static json_t *issuer_json(const struct storage_issuer *i)
{
    json_t *out = json_pack("{s:s, s:s, s:I}", "issuer", i->issuer, "user_claim",
                            i->user_claim, "created_at", (json_int_t)i->created_at);

    if (i->jwks_uri)
        json_object_set_new(out, "jwks_uri", json_string(i->jwks_uri));
    if (i->jwks)
        json_object_set_new(out, "jwks", json_loads(i->jwks, 0, NULL));
    return out;
}

static void collect_issuer(void *arg, const struct storage_issuer *i)
{
    json_array_append_new(arg, issuer_json(i));
}

/* Checks ISSUER and --claim of `issuer add`; prints why and returns EXIT_USAGE. */
static int issuer_add_check(const char *issuer, const char *claim)
{
    if (!token_ok(issuer, ISSUER_MAX)) {
        fprintf(stderr,
                "cibad: ISSUER must have 1 to %d printable ASCII characters and no "
                "space: the exact iss of the issuer's tokens\n",
                ISSUER_MAX);
        return EXIT_USAGE;
    }
    if (!claim) {
        fprintf(stderr, "cibad: --claim sub|phone_number|email is required\n");
        return EXIT_USAGE;
    }
    if (strcmp(claim, "sub") != 0 && strcmp(claim, "phone_number") != 0 &&
        strcmp(claim, "email") != 0) {
        fprintf(stderr,
                "cibad: invalid --claim \"%s\": expected sub, phone_number or email\n",
                claim);
        return EXIT_USAGE;
    }
    return 0;
}

static int cmd_issuer_add(struct cli *cli, int argc, char **argv)
{
    const char *issuer, *jwks = NULL, *jwks_uri = NULL, *claim = NULL;
    bool as_json = false;
    struct cli_opt opts[] = {
        {"--jwks", &jwks, NULL},
        {"--jwks-uri", &jwks_uri, NULL},
        {"--claim", &claim, NULL},
        {"--json", NULL, &as_json},
    };
    char err[512], *jwks_text = NULL;
    struct storage_sync *s = NULL;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), &issuer, 1);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    rc = issuer_add_check(issuer, claim);
    if (rc != 0)
        return rc;
    if (oauth_issuer_keys_check(
            jwks, jwks_uri, cli->cfg.allow_rs256, cli->cfg.jwks_uri_allow_http_loopback,
            cli->cfg.jwks_uri_allow_loopback, &jwks_text, err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: %s\n", err);
        return EXIT_USAGE;
    }

    rc = 1;
    s = open_db(cli);
    if (!s)
        goto out;

    struct storage_issuer in = {
        .issuer = issuer,
        .jwks = jwks_text,
        .jwks_uri = jwks_uri,
        .user_claim = claim,
    };
    if (storage_sync_issuer_add(s, &in, err, sizeof(err)) != 0) {
        fprintf(stderr, "cibad: cannot add issuer %s: %s\n", issuer, err);
        goto out;
    }
    in.created_at = util_now_s();
    if (as_json)
        print_json(issuer_json(&in));
    else
        printf("trusted issuer %s: its login_hint_token names users by %s\n", issuer,
               claim);
    rc = 0;
out:
    storage_sync_close(s);
    free(jwks_text);
    return rc;
}

static int cmd_issuer_list(struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    struct cli_opt opts[] = {{"--json", NULL, &as_json}};
    struct storage_sync *s;
    json_t *list, *i;
    size_t n;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_issuer_each(s, collect_issuer, list);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot list the trusted issuers\n");
        json_decref(list);
        return 1;
    }
    if (as_json) {
        print_json(list);
        return 0;
    }
    printf("%-40s %-13s %s\n", "ISSUER", "CLAIM", "KEYS");
    json_array_foreach(list, n, i)
    {
        const char *uri = json_string_value(json_object_get(i, "jwks_uri"));

        printf("%-40s %-13s %s\n", json_string_value(json_object_get(i, "issuer")),
               json_string_value(json_object_get(i, "user_claim")),
               uri ? uri : "(inline jwks)");
    }
    json_decref(list);
    return 0;
}

static int cmd_issuer_delete(struct cli *cli, int argc, char **argv)
{
    static const struct delete_cmd d = {storage_sync_issuer_delete, "trusted issuer",
                                        "trusted issuer", ""};

    return run_delete(cli, argc, argv, &d);
}

/* ---- signing keys ---------------------------------------------------------------------
 */

static int cmd_keys_rotate(struct cli *cli, int argc, char **argv)
{
    char *kid = NULL, *sealed = NULL, *jwk = NULL;
    struct storage_sync *s = NULL;
    int rc = parse_args(cli->cmd, argc, argv, NULL, 0, NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    if (!cli->cfg.secret) {
        fprintf(stderr, "cibad: secret is not set; the new key is sealed with it\n");
        return 1;
    }
    rc = 1;
    if (oauth_key_generate(cli->cfg.secret, &kid, &sealed, &jwk) != 0) {
        fprintf(stderr, "cibad: cannot generate a signing key\n");
        goto out;
    }
    s = open_db(cli);
    if (!s)
        goto out;
    if (storage_sync_key_add(s, kid, "ES256", sealed, jwk) != 0) {
        fprintf(stderr, "cibad: cannot store the new signing key\n");
        goto out;
    }
    printf("%s is stored; every instance publishes it within 30 s and signs with it %d s "
           "from now, once JWKS caches know it; the previous key stays published for %d "
           "s\n",
           kid, cli->cfg.key_prepublish_seconds, server_keys_publish_seconds(&cli->cfg));
    rc = 0;
out:
    storage_sync_close(s);
    free(kid);
    free(sealed);
    free(jwk);
    return rc;
}

static void collect_key(void *arg, const struct storage_key *k)
{
    json_t *jwk = json_loads(k->public_jwk, 0, NULL);

    json_array_append_new(
        arg,
        json_pack("{s:s, s:s, s:b, s:I, s:o, s:o}", "kid", k->kid, "alg", k->alg,
                  "current", k->retired_at == 0, "created_at", (json_int_t)k->created_at,
                  "retired_at", k->retired_at ? json_integer(k->retired_at) : json_null(),
                  "public_jwk", jwk ? jwk : json_null()));
}

/* Sets "signing" on each listed key: true for the one key that signs now, which the
 * workers pick the same way once they reload the keys (every 30 s). */
static void mark_signing_key(json_t *list, int prepublish_seconds)
{
    size_t n = json_array_size(list);
    struct storage_key *keys = util_calloc(n ? n : 1, sizeof(*keys));
    int signing;

    for (size_t i = 0; i < n; i++) {
        json_t *k = json_array_get(list, i);

        keys[i].created_at = json_integer_value(json_object_get(k, "created_at"));
        keys[i].retired_at = json_integer_value(json_object_get(k, "retired_at"));
    }
    signing = oauth_key_signing_index(keys, n, prepublish_seconds, util_now_s());
    for (size_t i = 0; i < n; i++)
        json_object_set_new(json_array_get(list, i), "signing",
                            json_boolean((int)i == signing));
    free(keys);
}

static int cmd_keys_list(struct cli *cli, int argc, char **argv)
{
    bool as_json = false, all = false;
    struct cli_opt opts[] = {{"--all", NULL, &all}, {"--json", NULL, &as_json}};
    struct storage_sync *s;
    json_t *list, *k;
    size_t i;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_key_each(s, server_keys_publish_seconds(&cli->cfg), all,
                               collect_key, list);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot list the signing keys\n");
        json_decref(list);
        return 1;
    }
    mark_signing_key(list, cli->cfg.key_prepublish_seconds);
    if (as_json) {
        print_json(list);
        return 0;
    }
    printf("%-44s %-6s %-21s %-21s %s\n", "KID", "ALG", "CREATED", "RETIRED", "SIGNS");
    json_array_foreach(list, i, k)
    {
        char created[32], retired[32] = "-";
        json_t *r = json_object_get(k, "retired_at");

        format_time(json_integer_value(json_object_get(k, "created_at")), created);
        if (json_is_integer(r))
            format_time(json_integer_value(r), retired);
        printf("%-44s %-6s %-21s %-21s %s\n",
               json_string_value(json_object_get(k, "kid")),
               json_string_value(json_object_get(k, "alg")), created, retired,
               json_is_true(json_object_get(k, "signing")) ? "yes" : "no");
    }
    json_decref(list);
    return 0;
}

/* ---- scopes ---------------------------------------------------------------------------
 */

static int cmd_scope_set(struct cli *cli, int argc, char **argv)
{
    const char *pos[2];
    struct storage_sync *s;
    int rc = parse_args(cli->cmd, argc, argv, NULL, 0, pos, 2);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    if (!scope_token_ok(pos[0], strlen(pos[0]))) {
        fprintf(stderr,
                "cibad: invalid scope name \"%s\": use printable ASCII without "
                "space, quote or backslash\n",
                pos[0]);
        return EXIT_USAGE;
    }
    if (!text_ok(pos[1], SCOPE_DESCRIPTION_MAX)) {
        fprintf(stderr,
                "cibad: the description must be UTF-8 with 1 to %d characters and no "
                "control characters\n",
                SCOPE_DESCRIPTION_MAX);
        return EXIT_USAGE;
    }
    s = open_db(cli);
    if (!s)
        return 1;
    rc = storage_sync_scope_set(s, pos[0], pos[1]);
    storage_sync_close(s);
    if (rc != 0) {
        fprintf(stderr, "cibad: cannot set scope %s\n", pos[0]);
        return 1;
    }
    printf("scope %s: %s\n", pos[0], pos[1]);
    return 0;
}

static void collect_scope(void *arg, const char *name, const char *description)
{
    json_array_append_new(
        arg, json_pack("{s:s, s:s}", "name", name, "description", description));
}

static int cmd_scope_list(struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    struct cli_opt opts[] = {{"--json", NULL, &as_json}};
    struct storage_sync *s;
    json_t *list, *sc;
    size_t i;
    int rc = parse_args(cli->cmd, argc, argv, opts, ARRAY_LEN(opts), NULL, 0);

    if (rc != 0)
        return rc == ARGS_HELP ? 0 : rc;
    s = open_db(cli);
    if (!s)
        return 1;
    list = json_array();
    rc = storage_sync_scope_each(s, collect_scope, list);
    storage_sync_close(s);
    if (rc < 0) {
        fprintf(stderr, "cibad: cannot list the scopes\n");
        json_decref(list);
        return 1;
    }
    if (as_json) {
        print_json(list);
        return 0;
    }
    json_array_foreach(list, i, sc)
    {
        printf("%-20s %s\n", json_string_value(json_object_get(sc, "name")),
               json_string_value(json_object_get(sc, "description")));
    }
    json_decref(list);
    return 0;
}

/* ---- dispatch -------------------------------------------------------------------------
 */

// clang-format off
static const struct command commands[] = {
    {NULL, "serve", "serve", "Run the authorization server until SIGTERM or SIGINT.", cmd_serve},
    {NULL, "migrate", "migrate", "Apply the database migrations not applied yet.", cmd_migrate},
    {"client", "create",
     "client create --name NAME --scope \"openid ...\" [--client-id ID]\n"
     "         [--auth-method private_key_jwt|client_secret_jwt|client_secret_basic|client_secret_post\n"
     "                        |tls_client_auth|self_signed_tls_client_auth]\n"
     "         [--jwks FILE_OR_JSON | --jwks-uri URL] [--auth-signing-alg ES256|PS256|RS256|HS256]\n"
     "         [--tls-subject-dn DN | --tls-san-dns NAME | --tls-san-uri URI | --tls-san-ip IP\n"
     "          | --tls-san-email ADDRESS]   (tls_client_auth: exactly one)\n"
     "         [--delivery-mode poll|ping|push [--notification-endpoint https://...]]\n"
     "         [--user-code] [--request-signing-alg ES256|PS256|RS256] [--json]",
     "Register a client and print its secret, if it has one, once.", cmd_client_create},
    {"client", "list", "client list [--json]", "List the registered clients.", cmd_client_list},
    {"client", "show", "client show ID [--json]", "Show one client.", cmd_client_show},
    {"client", "delete", "client delete ID", "Delete a client and its requests.", cmd_client_delete},
    {"user", "create", "user create --phone NUMBER [--username NAME] [--subject SUB] [--email ADDRESS] [--json]",
     "Add a user who approves requests by SMS.", cmd_user_create},
    {"user", "list", "user list [--json]", "List the users.", cmd_user_list},
    {"user", "delete", "user delete SUB|NAME", "Delete a user and their requests.", cmd_user_delete},
    {"user", "set-code", "user set-code SUB|NAME [--code CODE]",
     "Set the user code clients registered with --user-code must send (read from stdin without --code).", cmd_user_set_code},
    {"issuer", "add", "issuer add ISSUER (--jwks FILE_OR_JSON | --jwks-uri URL) --claim sub|phone_number|email [--json]",
     "Trust the login_hint_token of an issuer; --claim names the claim that identifies the user.", cmd_issuer_add},
    {"issuer", "list", "issuer list [--json]", "List the trusted issuers of login_hint_token.", cmd_issuer_list},
    {"issuer", "delete", "issuer delete ISSUER", "Stop trusting an issuer's login_hint_token.", cmd_issuer_delete},
    {"keys", "rotate", "keys rotate", "Make a new signing key current; the old one stays published.", cmd_keys_rotate},
    {"keys", "list", "keys list [--all] [--json]", "List the published (or, with --all, every) signing key.", cmd_keys_list},
    {"scope", "set", "scope set NAME DESCRIPTION", "Set the words the approval page shows for a scope.", cmd_scope_set},
    {"scope", "list", "scope list [--json]", "List the scope descriptions.", cmd_scope_list},
};
// clang-format on

static void print_help(FILE *out)
{
    fprintf(out, "usage: cibad [--config FILE] COMMAND [ARGS]\n"
                 "       cibad --version\n\n"
                 "cibad is an OpenID CIBA authorization server. Commands:\n\n");
    for (size_t i = 0; i < ARRAY_LEN(commands); i++)
        fprintf(out, "  %s\n      %s\n", commands[i].usage, commands[i].summary);
    fprintf(out,
            "\nEach command takes --help. `cibad serve --help` lists every setting.\n"
            "Exit status: 0 on success, 1 on failure, 2 for a usage error.\n");
}

/* True when name is the group of at least one command ("client", "user", ...). */
static bool group_exists(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        if (commands[i].group && strcmp(commands[i].group, name) == 0)
            return true;
    }
    return false;
}

/* Prints the commands of one group, as `cibad GROUP --help` shows them. */
static void print_group_help(FILE *out, const char *group)
{
    fprintf(out, "usage: cibad [--config FILE] %s COMMAND [ARGS]\n\nCommands:\n\n",
            group);
    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        if (commands[i].group && strcmp(commands[i].group, group) == 0)
            fprintf(out, "  %s\n      %s\n", commands[i].usage, commands[i].summary);
    }
    fprintf(out, "\nEach command takes --help.\n");
}

/* Finds the command named by argv[0] (and argv[1] for a group). Sets *used to the
 * number of words consumed. Returns NULL after printing why. */
static const struct command *command_find(int argc, char **argv, int *used)
{
    bool group_known = false;

    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        const struct command *c = &commands[i];

        if (!c->group && strcmp(argv[0], c->name) == 0) {
            *used = 1;
            return c;
        }
        if (c->group && strcmp(argv[0], c->group) == 0) {
            group_known = true;
            if (argc > 1 && strcmp(argv[1], c->name) == 0) {
                *used = 2;
                return c;
            }
        }
    }
    if (!group_known) {
        fprintf(stderr, "cibad: unknown command \"%s\"; see cibad --help\n", argv[0]);
        return NULL;
    }
    fprintf(stderr, "cibad: %s needs one of these commands:\n", argv[0]);
    for (size_t i = 0; i < ARRAY_LEN(commands); i++) {
        if (commands[i].group && strcmp(argv[0], commands[i].group) == 0)
            fprintf(stderr, "  cibad %s\n", commands[i].usage);
    }
    return NULL;
}

/* True when the command's arguments ask for --help, which needs no configuration. */
static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    struct cli cli = {0};
    const char *config_path = NULL;
    enum util_log_level level;
    char err[512];
    int i = 1, used, rc;

    for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("cibad %s\n", CIBAD_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc && !config_path) {
            config_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0 && !config_path) {
            config_path = argv[i] + 9;
        } else {
            fprintf(stderr, "cibad: invalid option %s\n", argv[i]);
            print_help(stderr);
            return EXIT_USAGE;
        }
    }
    if (i == argc) {
        print_help(stderr);
        return EXIT_USAGE;
    }
    if (group_exists(argv[i]) && i + 1 < argc &&
        (strcmp(argv[i + 1], "--help") == 0 || strcmp(argv[i + 1], "-h") == 0)) {
        print_group_help(stdout, argv[i]);
        return 0;
    }
    cli.cmd = command_find(argc - i, argv + i, &used);
    if (!cli.cmd)
        return EXIT_USAGE;
    /* The command gets its name in argv[0], followed by its own arguments. */
    argv += i + used - 1;
    argc -= i + used - 1;

    if (!wants_help(argc, argv)) {
        if (server_config_load(&cli.cfg, config_path, err, sizeof(err)) != 0) {
            fprintf(stderr, "cibad: invalid configuration: %s\n", err);
            return 1;
        }
        if (util_log_level_parse(cli.cfg.log_level, &level) == 0)
            util_log_set_level(level);
        server_config = &cli.cfg;
    }
    rc = cli.cmd->run(&cli, argc, argv);
    server_config = NULL;
    server_config_free(&cli.cfg);
    return rc;
}
