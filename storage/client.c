/* client.c - OAuth clients: the asynchronous lookup with its cache, and the
 * command-line management
 * SPDX-License-Identifier: MIT
 *
 * The client cache belongs to one connection, so one loop thread, and takes no lock.
 * Every /token and /bc-authorize request looks its client up, and the cache saves that
 * statement. Entries are reference-counted: a hit hands its entry to a deferred
 * completion, and the entry outlives a forget or an expiry until that completion ran.
 */
#include "storage/storage_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* Bounds the memory of a cache. Only registered clients get in, so this caps it for
 * deployments with more clients than that, which then look the others up each time. */
#define CLIENT_CACHE_MAX     1024
#define CLIENT_CACHE_BUCKETS 256

/* Columns read by client_from_row, in order. */
#define CLIENT_COLUMNS                                                                   \
    "client_id, client_name, secret_hash, token_endpoint_auth_method, scope,"            \
    " backchannel_token_delivery_mode, backchannel_client_notification_endpoint,"        \
    " grant_types, floor(extract(epoch FROM created_at))::int8,"                         \
    " jwks::text, jwks_uri, token_endpoint_auth_signing_alg, client_secret_sealed,"      \
    " backchannel_user_code_parameter, tls_client_auth_subject_dn,"                      \
    " tls_client_auth_san_dns, tls_client_auth_san_uri, tls_client_auth_san_ip,"         \
    " tls_client_auth_san_email, backchannel_authentication_request_signing_alg"

static void client_from_row(const PGresult *res, int row, struct storage_client *c)
{
    c->client_id = storage_col_text(res, row, 0);
    c->client_name = storage_col_text(res, row, 1);
    c->secret_hash = storage_col_text(res, row, 2);
    c->token_endpoint_auth_method = storage_col_text(res, row, 3);
    c->scope = storage_col_text(res, row, 4);
    c->backchannel_token_delivery_mode = storage_col_text(res, row, 5);
    c->backchannel_client_notification_endpoint = storage_col_text(res, row, 6);
    c->grant_types = storage_col_text(res, row, 7);
    c->created_at = storage_col_int64(res, row, 8);
    c->jwks = storage_col_text(res, row, 9);
    c->jwks_uri = storage_col_text(res, row, 10);
    c->token_endpoint_auth_signing_alg = storage_col_text(res, row, 11);
    c->client_secret_sealed = storage_col_text(res, row, 12);
    c->backchannel_user_code_parameter = strcmp(storage_col_text(res, row, 13), "t") == 0;
    c->tls_client_auth_subject_dn = storage_col_text(res, row, 14);
    c->tls_client_auth_san_dns = storage_col_text(res, row, 15);
    c->tls_client_auth_san_uri = storage_col_text(res, row, 16);
    c->tls_client_auth_san_ip = storage_col_text(res, row, 17);
    c->tls_client_auth_san_email = storage_col_text(res, row, 18);
    c->backchannel_authentication_request_signing_alg = storage_col_text(res, row, 19);
}

/* ---- client cache ------------------------------------------------------------------ */

struct cached_client {
    struct cached_client *next; /* in its bucket */
    int refs;                   /* the cache's own, plus one per deferred hit */
    int64_t expires_ms;         /* monotonic */
    size_t text_len;
    struct storage_client row; /* its strings point into text */
    char text[];
};

struct storage_client_cache {
    int ttl_ms;
    size_t n;
    struct cached_client *buckets[CLIENT_CACHE_BUCKETS];
};

/* FNV-1a */
static size_t bucket_of(const char *client_id)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)client_id; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % CLIENT_CACHE_BUCKETS;
}

static void entry_unref(struct cached_client *e)
{
    if (--e->refs > 0)
        return;
    /* The text contains the secret hash and the sealed secret. */
    OPENSSL_cleanse(e->text, e->text_len);
    free(e);
}

/* The string fields of struct storage_client, for the copy below: every one must be
 * listed, or a cached copy would point into a freed result. */
#define CLIENT_STRING_FIELDS(X)                                                          \
    X(client_id)                                                                         \
    X(client_name)                                                                       \
    X(secret_hash)                                                                       \
    X(token_endpoint_auth_method)                                                        \
    X(scope)                                                                             \
    X(backchannel_token_delivery_mode)                                                   \
    X(backchannel_client_notification_endpoint)                                          \
    X(grant_types)                                                                       \
    X(jwks)                                                                              \
    X(jwks_uri)                                                                          \
    X(token_endpoint_auth_signing_alg)                                                   \
    X(client_secret_sealed)                                                              \
    X(tls_client_auth_subject_dn)                                                        \
    X(tls_client_auth_san_dns)                                                           \
    X(tls_client_auth_san_uri)                                                           \
    X(tls_client_auth_san_ip)                                                            \
    X(tls_client_auth_san_email)                                                         \
    X(backchannel_authentication_request_signing_alg)

/* Copies row into one allocation that owns its strings. */
static struct cached_client *entry_new(const struct storage_client *row)
{
    struct cached_client *e;
    size_t len = 0;
    char *p;

#define ADD_LEN(f) len += row->f ? strlen(row->f) + 1 : 0;
    CLIENT_STRING_FIELDS(ADD_LEN)
#undef ADD_LEN
    e = util_calloc(1, sizeof(*e) + len);
    e->refs = 1;
    e->text_len = len;
    e->row = *row;
    p = e->text;
#define COPY(f)                                                                          \
    if (row->f) {                                                                        \
        size_t n = strlen(row->f) + 1;                                                   \
        memcpy(p, row->f, n);                                                            \
        e->row.f = p;                                                                    \
        p += n;                                                                          \
    }
    CLIENT_STRING_FIELDS(COPY)
#undef COPY
    return e;
}

struct storage_client_cache *storage_client_cache_new(int ttl_ms)
{
    struct storage_client_cache *cache = util_calloc(1, sizeof(*cache));

    cache->ttl_ms = ttl_ms;
    return cache;
}

/* Unlinks *link from its bucket and drops the cache's reference. */
static void cache_remove(struct storage_client_cache *cache, struct cached_client **link)
{
    struct cached_client *e = *link;

    *link = e->next;
    cache->n--;
    entry_unref(e);
}

void storage_client_cache_forget(struct storage_client_cache *cache,
                                 const char *client_id)
{
    if (!cache)
        return;
    for (size_t b = 0; b < CLIENT_CACHE_BUCKETS; b++) {
        struct cached_client **link;

        if (client_id && b != bucket_of(client_id))
            continue;
        link = &cache->buckets[b];
        while (*link) {
            if (!client_id || strcmp((*link)->row.client_id, client_id) == 0)
                cache_remove(cache, link);
            else
                link = &(*link)->next;
        }
    }
}

void storage_client_cache_free(struct storage_client_cache *cache)
{
    storage_client_cache_forget(cache, NULL);
    free(cache);
}

/* Drops every expired entry. */
static void cache_prune(struct storage_client_cache *cache, int64_t now)
{
    for (size_t b = 0; b < CLIENT_CACHE_BUCKETS; b++) {
        struct cached_client **link = &cache->buckets[b];

        while (*link) {
            if ((*link)->expires_ms <= now)
                cache_remove(cache, link);
            else
                link = &(*link)->next;
        }
    }
}

/* Returns the fresh entry of client_id, or NULL; drops it when it has expired. */
static struct cached_client *cache_find(struct storage_client_cache *cache,
                                        const char *client_id, int64_t now)
{
    struct cached_client **link = &cache->buckets[bucket_of(client_id)];

    for (; *link; link = &(*link)->next) {
        if (strcmp((*link)->row.client_id, client_id) != 0)
            continue;
        if ((*link)->expires_ms > now)
            return *link;
        cache_remove(cache, link);
        return NULL;
    }
    return NULL;
}

/* Keeps a copy of row, in place of an older entry of the same client. When the cache is
 * full of fresh entries, the row is not kept. */
static void cache_put(struct storage_client_cache *cache,
                      const struct storage_client *row)
{
    int64_t now = util_mono_ms();
    struct cached_client *e;
    size_t b;

    if (!row->client_id)
        return;
    storage_client_cache_forget(cache, row->client_id);
    if (cache->n >= CLIENT_CACHE_MAX)
        cache_prune(cache, now);
    if (cache->n >= CLIENT_CACHE_MAX)
        return;
    e = entry_new(row);
    e->expires_ms = now + cache->ttl_ms;
    b = bucket_of(row->client_id);
    e->next = cache->buckets[b];
    cache->buckets[b] = e;
    cache->n++;
}

/* A lookup the cache served, waiting for its turn in the loop. */
struct client_hit {
    struct storage_deferred deferred; /* first member */
    struct cached_client *entry;      /* a reference of its own */
    storage_client_cb cb;
    void *arg;
};

static void on_hit(struct storage_deferred *d, enum storage_status status)
{
    struct client_hit *hit = (struct client_hit *)d;

    hit->cb(hit->arg, status, status == STORAGE_OK ? &hit->entry->row : NULL);
    entry_unref(hit->entry);
    free(hit);
}

/* ---- asynchronous lookup ----------------------------------------------------------- */

static const char sql_client_get[] =
    "SELECT " CLIENT_COLUMNS " FROM client WHERE client_id = $1";
static const struct storage_stmt stmt_client_get = {"client_get", sql_client_get, 1};

/* A lookup sent while the cache is on. */
struct client_lookup {
    struct storage_conn *db;
    void *arg; /* the caller's */
};

static void finish_client_get(union storage_cb cb, void *arg, enum storage_status status,
                              const PGresult *res)
{
    struct storage_client client;

    if (status != STORAGE_OK) {
        cb.client(arg, status, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        cb.client(arg, STORAGE_NOT_FOUND, NULL);
        return;
    }
    client_from_row(res, 0, &client);
    cb.client(arg, STORAGE_OK, &client);
}

/* Completes a lookup sent while the cache is on: keeps the client before the callback,
 * so lookups the callback starts find it. */
static void finish_client_get_cached(union storage_cb cb, void *arg,
                                     enum storage_status status, const PGresult *res)
{
    struct client_lookup *lookup = arg;
    struct storage_client_cache *cache = storage_conn_client_cache(lookup->db);
    struct storage_client client;

    arg = lookup->arg;
    free(lookup);
    if (status == STORAGE_OK && PQntuples(res) > 0 && cache) {
        client_from_row(res, 0, &client);
        cache_put(cache, &client);
    }
    finish_client_get(cb, arg, status, res);
}

int storage_client_get(struct storage_conn *db, const char *client_id,
                       storage_client_cb cb, void *arg)
{
    struct storage_params p = {0};
    union storage_cb u = {.client = cb};
    struct storage_client_cache *cache;
    struct client_lookup *lookup;
    struct cached_client *e;

    if (client_id == NULL || cb == NULL)
        return -1;
    storage_param_text(&p, client_id);
    cache = db ? storage_conn_client_cache(db) : NULL;
    if (!cache)
        return storage_conn_send(db, &stmt_client_get, &p, finish_client_get, u, arg);

    e = cache_find(cache, client_id, util_mono_ms());
    if (e) {
        struct client_hit *hit = util_calloc(1, sizeof(*hit));

        hit->deferred.run = on_hit;
        hit->entry = e;
        e->refs++;
        hit->cb = cb;
        hit->arg = arg;
        storage_conn_defer(db, &hit->deferred);
        return 0;
    }
    lookup = util_malloc(sizeof(*lookup));
    lookup->db = db;
    lookup->arg = arg;
    if (storage_conn_send(db, &stmt_client_get, &p, finish_client_get_cached, u,
                          lookup) != 0) {
        free(lookup);
        return -1;
    }
    return 0;
}

/* ---- command line ------------------------------------------------------------------ */

static const char sql_client_create[] =
    "INSERT INTO client (client_id, client_name, secret_hash, token_endpoint_auth_method,"
    " scope, backchannel_token_delivery_mode, backchannel_client_notification_endpoint,"
    " grant_types, jwks, jwks_uri, token_endpoint_auth_signing_alg, client_secret_sealed,"
    " backchannel_user_code_parameter, tls_client_auth_subject_dn, "
    "tls_client_auth_san_dns,"
    " tls_client_auth_san_uri, tls_client_auth_san_ip, tls_client_auth_san_email,"
    " backchannel_authentication_request_signing_alg)"
    " VALUES ($1, $2, $3, $4, $5, coalesce($6, 'poll'), $7,"
    " coalesce($8, 'urn:openid:params:grant-type:ciba'), $9::jsonb, $10, $11, $12, $13,"
    " $14, $15, $16, $17, $18, $19)";

/* Explains a rejected insert in words an operator can act on. */
static void describe_client_error(const PGresult *res, char *err, size_t err_len)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint =
        res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *message = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (state && strcmp(state, "23505") == 0)
        snprintf(err, err_len, "a client with this client_id already exists");
    else if (state && strcmp(state, "23502") == 0)
        snprintf(err, err_len, "a required client field is missing");
    else if (state && strcmp(state, "23514") == 0)
        snprintf(err, err_len, "invalid client field (constraint %s)",
                 constraint ? constraint : "unknown");
    else
        snprintf(err, err_len, "creating the client failed: %s",
                 message ? message : "no result from the database");
}

int storage_sync_client_create(struct storage_sync *s, const struct storage_client_new *c,
                               char *err, size_t err_len)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc = 0;

    storage_param_text(&p, c->client_id);
    storage_param_text(&p, c->client_name);
    storage_param_text(&p, c->secret_hash);
    storage_param_text(&p, c->token_endpoint_auth_method);
    storage_param_text(&p, c->scope);
    storage_param_text(&p, c->backchannel_token_delivery_mode);
    storage_param_text(&p, c->backchannel_client_notification_endpoint);
    storage_param_text(&p, c->grant_types);
    storage_param_text(&p, c->jwks);
    storage_param_text(&p, c->jwks_uri);
    storage_param_text(&p, c->token_endpoint_auth_signing_alg);
    storage_param_text(&p, c->client_secret_sealed);
    storage_param_bool(&p, c->backchannel_user_code_parameter);
    storage_param_text(&p, c->tls_client_auth_subject_dn);
    storage_param_text(&p, c->tls_client_auth_san_dns);
    storage_param_text(&p, c->tls_client_auth_san_uri);
    storage_param_text(&p, c->tls_client_auth_san_ip);
    storage_param_text(&p, c->tls_client_auth_san_email);
    storage_param_text(&p, c->backchannel_authentication_request_signing_alg);
    res = storage_sync_exec(s, sql_client_create, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        describe_client_error(res, err, err_len);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

static const char sql_client_each[] =
    "SELECT " CLIENT_COLUMNS " FROM client"
    " WHERE $1::text IS NULL OR client_id = $1 ORDER BY client_id";

int storage_sync_client_each(struct storage_sync *s, const char *client_id,
                             void (*fn)(void *arg, const struct storage_client *c),
                             void *arg)
{
    struct storage_params p = {0};
    PGresult *res;
    int n;

    storage_param_text(&p, client_id);
    res = storage_sync_exec(s, sql_client_each, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("listing clients", res);
        PQclear(res);
        return -1;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct storage_client c;

        client_from_row(res, i, &c);
        fn(arg, &c);
    }
    PQclear(res);
    return n;
}

/* The notification reaches every server's connections when the deletion commits. */
static const char sql_client_delete[] =
    "WITH deleted AS (DELETE FROM client WHERE client_id = $1 RETURNING client_id)"
    " SELECT pg_notify('" STORAGE_CLIENT_CHANNEL "', client_id) FROM deleted";

int storage_sync_client_delete(struct storage_sync *s, const char *client_id)
{
    struct storage_params p = {0};
    PGresult *res;
    int rc;

    storage_param_text(&p, client_id);
    res = storage_sync_exec(s, sql_client_delete, &p);
    if (storage_status_of(res) != STORAGE_OK) {
        storage_log_failure("deleting a client", res);
        rc = -1;
    } else {
        rc = PQntuples(res) == 0 ? 0 : 1;
    }
    PQclear(res);
    return rc;
}
