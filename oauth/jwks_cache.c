/* jwks_cache.c - the client key sets of one worker: parsed inline JWKS documents and
 * remote ones fetched from jwks_uri without blocking the loop
 * SPDX-License-Identifier: MIT
 *
 * Each worker thread owns one cache, so nothing here is locked. Key sets are parsed
 * once into OpenSSL keys and shared by reference counts, so a set handed to a callback
 * stays valid even if a refetch replaces it meanwhile.
 *
 * A remote set is fetched on first use, again after ttl_seconds, and again when a
 * token names a kid the set lacks (the client rotated its keys; OpenID Connect Core
 * 1.0 section 10.1.1). Each worker fetches a URI at most once per refetch_seconds,
 * whether the last fetch succeeded or failed, so a flood of unknown kid values or a
 * client whose jwks_uri is down costs one fetch per worker and interval, not one per
 * request. Requests that
 * arrive while a fetch runs wait for it. A jwks_uri that is down, slow (past
 * timeout_ms) or returns anything but a JWKS gives its waiters an error, never a hang.
 *
 * Every address a jwks_uri resolves to is checked before connecting (util/netaddr.h):
 * a client or an issuer could otherwise make cibad fetch from its own network. The
 * cache is keyed by URI and algorithm, so clients and trusted issuers of
 * login_hint_token share it.
 */
#include "oauth/oauth_int.h"

#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "util/http_client.h"
#include "util/netaddr.h"

/* Entries kept; the least recently used one without a fetch in flight goes first. */
#define CACHE_MAX_ENTRIES 256
/* Largest JWKS document accepted. */
#define JWKS_MAX_BYTES (64 * 1024)

/* A parsed key set shared by the cache and the callbacks still to run. */
struct keys_ref {
    int refs;
    struct oauth_jwk_set *set;
};

/* A callback to run from the cache's delivery event. */
struct delivery {
    struct delivery *next;
    oauth_jwks_cb cb;
    void *arg;
    struct keys_ref *keys; /* NULL with an error */
    const char *error;     /* static text */
};

struct entry {
    struct entry *prev, *next; /* most recently used first */
    bool remote;
    char *key;    /* the URI, or the SHA-256 hex of an inline document */
    unsigned alg; /* the registered alg the keys were imported with */
    struct keys_ref *keys;
    int64_t fetched_ms; /* monotonic time of the fetch that gave keys */
    int64_t attempt_ms; /* monotonic time of the latest fetch start; 0 for none */
    struct util_http_call *call; /* the fetch in flight, or NULL */
    struct delivery *waiters;    /* callbacks waiting for that fetch */
    struct oauth_jwks_cache *cache;
};

struct oauth_jwks_cache {
    struct event_base *base;
    struct evdns_base *dns;
    SSL_CTX *tls; /* NULL until the first https fetch */
    char *ca_file;
    int timeout_ms;
    int64_t ttl_ms, refetch_ms;
    bool allow_http_loopback;
    bool allow_loopback;
    struct entry *head, *tail;
    size_t n_entries;
    struct delivery *ready, *ready_tail; /* run by deliver_ev */
    struct event *deliver_ev;
};

static void keys_put(struct keys_ref *keys)
{
    if (keys && --keys->refs == 0) {
        oauth_jwk_set_free(keys->set);
        free(keys);
    }
}

static struct keys_ref *keys_get(struct keys_ref *keys)
{
    if (keys)
        keys->refs++;
    return keys;
}

/* ---- delivery -------------------------------------------------------------------- */

static void on_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct oauth_jwks_cache *c = arg;
    struct delivery *d = c->ready;

    (void)fd;
    (void)what;
    /* Take the whole queue first: a callback may queue new deliveries. */
    c->ready = c->ready_tail = NULL;
    while (d) {
        struct delivery *next = d->next;

        d->cb(d->arg, d->keys ? d->keys->set : NULL, d->error);
        keys_put(d->keys);
        free(d);
        d = next;
    }
}

static void deliver_later(struct oauth_jwks_cache *c, struct delivery *d)
{
    d->next = NULL;
    if (c->ready_tail)
        c->ready_tail->next = d;
    else
        c->ready = d;
    c->ready_tail = d;
    event_active(c->deliver_ev, EV_TIMEOUT, 0);
}

static struct delivery *delivery_new(oauth_jwks_cb cb, void *arg)
{
    struct delivery *d = util_calloc(1, sizeof(*d));

    d->cb = cb;
    d->arg = arg;
    return d;
}

/* ---- entries --------------------------------------------------------------------- */

static void entry_unlink(struct oauth_jwks_cache *c, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void entry_push_front(struct oauth_jwks_cache *c, struct entry *e)
{
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void entry_free(struct entry *e)
{
    keys_put(e->keys);
    free(e->key);
    free(e);
}

/* Returns the entry for key and alg, moved to the front, or NULL. */
static struct entry *entry_find(struct oauth_jwks_cache *c, bool remote, const char *key,
                                unsigned alg)
{
    for (struct entry *e = c->head; e; e = e->next) {
        if (e->remote == remote && e->alg == alg && strcmp(e->key, key) == 0) {
            if (e != c->head) {
                entry_unlink(c, e);
                entry_push_front(c, e);
            }
            return e;
        }
    }
    return NULL;
}

/* Drops least recently used entries without a fetch in flight until there is room. */
static void evict(struct oauth_jwks_cache *c)
{
    struct entry *e = c->tail;

    while (e && c->n_entries >= CACHE_MAX_ENTRIES) {
        struct entry *prev = e->prev;

        if (!e->call) {
            entry_unlink(c, e);
            entry_free(e);
            c->n_entries--;
        }
        e = prev;
    }
}

static struct entry *entry_add(struct oauth_jwks_cache *c, bool remote, const char *key,
                               unsigned alg)
{
    struct entry *e = util_calloc(1, sizeof(*e));

    evict(c);
    e->remote = remote;
    e->key = util_strdup(key);
    e->alg = alg;
    e->cache = c;
    entry_push_front(c, e);
    c->n_entries++;
    return e;
}

/* ---- the cache -------------------------------------------------------------------- */

struct oauth_jwks_cache *oauth_jwks_cache_new(struct event_base *base,
                                              struct evdns_base *dns,
                                              const struct oauth_jwks_cache_config *cfg)
{
    struct oauth_jwks_cache *c = util_calloc(1, sizeof(*c));

    c->base = base;
    c->dns = dns;
    c->ca_file = cfg->ca_file ? util_strdup(cfg->ca_file) : NULL;
    c->timeout_ms = cfg->timeout_ms;
    c->ttl_ms = (int64_t)cfg->ttl_seconds * 1000;
    c->refetch_ms = (int64_t)cfg->refetch_seconds * 1000;
    c->allow_http_loopback = cfg->allow_http_loopback;
    c->allow_loopback = cfg->allow_loopback;
    c->deliver_ev = event_new(base, -1, 0, on_deliver, c);
    if (!c->deliver_ev) {
        log_error("cannot create the JWKS cache's delivery event");
        free(c->ca_file);
        free(c);
        return NULL;
    }
    return c;
}

void oauth_jwks_cache_free(struct oauth_jwks_cache *c)
{
    struct entry *e;

    if (!c)
        return;
    /* Fail every waiter, so the requests behind them still get a reply. */
    for (e = c->head; e; e = e->next) {
        if (e->call) {
            util_http_cancel(e->call);
            e->call = NULL;
        }
        while (e->waiters) {
            struct delivery *d = e->waiters;

            e->waiters = d->next;
            d->error = "the server is stopping";
            deliver_later(c, d);
        }
    }
    on_deliver(-1, 0, c);
    while ((e = c->head)) {
        entry_unlink(c, e);
        entry_free(e);
    }
    event_free(c->deliver_ev);
    if (c->tls)
        SSL_CTX_free(c->tls);
    free(c->ca_file);
    free(c);
}

const struct oauth_jwk_set *oauth_jwks_cache_inline(struct oauth_jwks_cache *c,
                                                    const char *jwks_text, unsigned alg,
                                                    char *err, size_t err_len)
{
    char key[65];
    struct entry *e;
    json_t *doc;
    struct oauth_jwk_set *set;

    util_sha256_hex(jwks_text, strlen(jwks_text), key);
    e = entry_find(c, false, key, alg);
    if (e)
        return e->keys->set;

    doc = json_loads(jwks_text, JSON_REJECT_DUPLICATES, NULL);
    /* Registration checked every key, so the set is parsed strictly again. */
    set = doc ? oauth_jwk_set_parse(doc, alg, true, err, err_len) : NULL;
    if (!doc)
        snprintf(err, err_len, "the registered jwks is not JSON");
    json_decref(doc);
    if (!set)
        return NULL;
    e = entry_add(c, false, key, alg);
    e->keys = util_calloc(1, sizeof(*e->keys));
    e->keys->refs = 1;
    e->keys->set = set;
    return set;
}

/* True when the cached set of e can verify a token that names kid (NULL: none). */
static bool keys_fit(const struct entry *e, const char *kid)
{
    if (!e->keys)
        return false;
    if (kid)
        return oauth_jwk_set_has_kid(e->keys->set, kid);
    return oauth_jwk_set_count(e->keys->set) == 1;
}

static bool keys_fresh(const struct oauth_jwks_cache *c, const struct entry *e,
                       int64_t now)
{
    return e->keys && now - e->fetched_ms < c->ttl_ms;
}

const struct oauth_jwk_set *oauth_jwks_cache_peek(struct oauth_jwks_cache *c,
                                                  const char *uri, unsigned alg,
                                                  const char *kid)
{
    struct entry *e = entry_find(c, true, uri, alg);

    if (e && keys_fresh(c, e, util_mono_ms()) && keys_fit(e, kid))
        return e->keys->set;
    return NULL;
}

/* Parses a fetched JWKS document. Returns the set, or NULL with *error set. */
static struct oauth_jwk_set *parse_fetched(const struct entry *e,
                                           const struct util_http_response *res,
                                           const char **error)
{
    char err[200];
    json_t *doc;
    struct oauth_jwk_set *set;

    if (res->error != UTIL_HTTP_OK) {
        *error = res->error == UTIL_HTTP_ERR_TIMEOUT ? "fetching the jwks_uri timed out"
                                                     : "fetching the jwks_uri failed";
        log_info("JWKS fetch from %s failed: %s", e->key, res->reason);
        return NULL;
    }
    if (res->status != 200) {
        *error = "the jwks_uri answered with a status other than 200";
        log_info("JWKS fetch from %s: status %d", e->key, res->status);
        return NULL;
    }
    doc = json_loadb(res->body, res->body_len, JSON_REJECT_DUPLICATES, NULL);
    set = doc ? oauth_jwk_set_parse(doc, e->alg, false, err, sizeof(err)) : NULL;
    json_decref(doc);
    if (!set) {
        *error = "the jwks_uri returned no valid JWKS";
        log_info("JWKS from %s rejected: %s", e->key, doc ? err : "not JSON");
        return NULL;
    }
    return set;
}

static void on_fetched(void *arg, const struct util_http_response *res)
{
    struct entry *e = arg;
    struct oauth_jwks_cache *c = e->cache;
    const char *error = NULL;
    struct oauth_jwk_set *set = parse_fetched(e, res, &error);

    e->call = NULL;
    if (set) {
        keys_put(e->keys);
        e->keys = util_calloc(1, sizeof(*e->keys));
        e->keys->refs = 1;
        e->keys->set = set;
        e->fetched_ms = util_mono_ms();
        log_debug("JWKS from %s: %zu keys, fetched in %lld ms", e->key,
                  oauth_jwk_set_count(set), (long long)res->elapsed_ms);
    } else if (e->keys && !keys_fresh(c, e, util_mono_ms())) {
        /* A failed refresh does not extend the life of keys past the TTL. */
        keys_put(e->keys);
        e->keys = NULL;
    }
    while (e->waiters) {
        struct delivery *d = e->waiters;

        e->waiters = d->next;
        if (set)
            d->keys = keys_get(e->keys);
        else
            d->error = error;
        deliver_later(c, d);
    }
}

/* The address policy of every fetch (util/netaddr.h). Loopback is allowed with the
 * allow_loopback setting, and for a plain http URL, which util_http_url_check accepts
 * only on a loopback IP literal and only when allow_http_loopback is set. */
static bool fetch_address_allowed(const struct sockaddr *addr, void *arg)
{
    const struct entry *e = arg;
    bool loopback = e->cache->allow_loopback || strncmp(e->key, "http:", 5) == 0;

    if (util_netaddr_allowed(addr, loopback))
        return true;
    log_warn("jwks_uri %s resolves to a loopback, private, link-local or reserved "
             "address; not fetched",
             e->key);
    return false;
}

/* Starts fetching e. Returns 0, or -1 with *error set. */
static int fetch_start(struct oauth_jwks_cache *c, struct entry *e, const char **error)
{
    static const struct util_http_header headers[] = {
        {"Accept", "application/jwk-set+json, application/json"},
    };
    struct util_http_request req = {
        .method = EVHTTP_REQ_GET,
        .url = e->key,
        .headers = headers,
        .header_count = ARRAY_LEN(headers),
        .timeout_ms = c->timeout_ms,
        .max_response_body = JWKS_MAX_BYTES,
        .allow_http_loopback = c->allow_http_loopback,
        .address_allowed = fetch_address_allowed,
        .address_arg = e,
    };
    char url_err[200];

    e->attempt_ms = util_mono_ms();
    if (util_http_url_check(e->key, c->allow_http_loopback, c->dns != NULL, url_err,
                            sizeof(url_err)) != 0) {
        log_info("jwks_uri %s cannot be fetched: %s", e->key, url_err);
        *error = "the jwks_uri is not a usable URL";
        return -1;
    }
    if (strncmp(e->key, "https:", 6) == 0 && !c->tls) {
        c->tls = util_http_tls_ctx_new(c->ca_file);
        if (!c->tls) {
            *error = "no TLS context for the jwks_uri";
            return -1;
        }
    }
    e->call = util_http_send(c->base, c->dns, c->tls, &req, on_fetched, e);
    if (!e->call) {
        *error = "fetching the jwks_uri could not start";
        return -1;
    }
    return 0;
}

void oauth_jwks_cache_get(struct oauth_jwks_cache *c, const char *uri, unsigned alg,
                          const char *kid, oauth_jwks_cb cb, void *arg)
{
    struct entry *e = entry_find(c, true, uri, alg);
    struct delivery *d = delivery_new(cb, arg);
    int64_t now = util_mono_ms();
    const char *error = NULL;

    if (!e)
        e = entry_add(c, true, uri, alg);
    if (e->call) {
        d->next = e->waiters;
        e->waiters = d;
        return;
    }
    if (keys_fresh(c, e, now) && keys_fit(e, kid)) {
        d->keys = keys_get(e->keys);
        deliver_later(c, d);
        return;
    }
    if (e->attempt_ms && now - e->attempt_ms < c->refetch_ms) {
        /* Fetched too recently: answer from what there is. A fresh set without the kid
         * fails verification with "unknown kid". */
        if (keys_fresh(c, e, now))
            d->keys = keys_get(e->keys);
        else
            d->error = "the jwks_uri failed recently and is not fetched again yet";
        deliver_later(c, d);
        return;
    }
    if (fetch_start(c, e, &error) != 0) {
        d->error = error;
        deliver_later(c, d);
        return;
    }
    d->next = e->waiters;
    e->waiters = d;
}
