/* user_code.c - user codes: hashing with PBKDF2 and verification off the event loops
 * SPDX-License-Identifier: MIT
 *
 * A user code is a secret that the user chose, so it may have little entropy and is
 * stored only as a slow salted hash. One PBKDF2 run with ITERATIONS takes about 25 ms
 * on a 2-core machine, which would stall every other request of a worker, so verification
 * runs on a small pool of threads shared by all workers. Each result goes back to the
 * requesting worker's loop with event_base_once (the bases are thread-safe because
 * server/worker.c calls evthread_use_pthreads).
 */
#include "ciba/ciba.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/evp.h>

#define ITERATIONS   100000
#define SALT_LEN     16
#define HASH_LEN     32
#define POOL_THREADS 2
#define QUEUE_MAX    64 /* waiting verifications; more get -1 (temporarily_unavailable) */
#define PREFIX       "pbkdf2-sha256$"

struct job {
    struct job *next;
    struct event_base *base;
    char *stored; /* NULL: no code set, never matches */
    char code[CIBA_USER_CODE_MAX + 1];
    ciba_user_code_cb cb;
    void *arg;
    bool matched;
};

static struct {
    pthread_once_t once;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    struct job *head, *tail;
    size_t queued;
    bool started;
} pool = {PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

int ciba_user_code_check(const char *code)
{
    size_t len = code ? strlen(code) : 0;

    if (len < CIBA_USER_CODE_MIN || len > CIBA_USER_CODE_MAX)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (code[i] < 0x20 || code[i] > 0x7e)
            return -1;
    return 0;
}

static int derive(const char *code, const unsigned char *salt, size_t salt_len,
                  int iterations, unsigned char out[HASH_LEN])
{
    return PKCS5_PBKDF2_HMAC(code, (int)strlen(code), salt, (int)salt_len, iterations,
                             EVP_sha256(), HASH_LEN, out) == 1
               ? 0
               : -1;
}

char *ciba_user_code_hash(const char *code)
{
    unsigned char salt[SALT_LEN], hash[HASH_LEN];
    char *salt_text, *hash_text, *out = NULL;

    util_random_bytes(salt, sizeof(salt));
    if (derive(code, salt, sizeof(salt), ITERATIONS, hash) != 0)
        return NULL;
    salt_text = util_b64url_encode_new(salt, sizeof(salt));
    hash_text = util_b64url_encode_new(hash, sizeof(hash));
    out = util_malloc(strlen(PREFIX) + 16 + strlen(salt_text) + strlen(hash_text) + 3);
    sprintf(out, PREFIX "%d$%s$%s", ITERATIONS, salt_text, hash_text);
    OPENSSL_cleanse(hash, sizeof(hash));
    free(salt_text);
    free(hash_text);
    return out;
}

/* Checks code against a stored hash in constant time. A malformed stored value never
 * matches. */
static bool code_matches(const char *stored, const char *code)
{
    unsigned char salt[64], want[HASH_LEN + 3], got[HASH_LEN];
    size_t salt_len = sizeof(salt), want_len = sizeof(want);
    const char *p, *salt_end;
    char *end;
    long iterations;
    bool ok;

    if (strncmp(stored, PREFIX, strlen(PREFIX)) != 0)
        return false;
    p = stored + strlen(PREFIX);
    iterations = strtol(p, &end, 10);
    if (end == p || *end != '$' || iterations < 1 || iterations > 10000000)
        return false;
    p = end + 1;
    salt_end = strchr(p, '$');
    if (!salt_end ||
        util_b64url_decode(p, (size_t)(salt_end - p), salt, &salt_len) != 0 ||
        util_b64url_decode(salt_end + 1, strlen(salt_end + 1), want, &want_len) != 0 ||
        want_len != HASH_LEN)
        return false;
    if (derive(code, salt, salt_len, (int)iterations, got) != 0)
        return false;
    ok = util_ct_equal(got, want, HASH_LEN);
    OPENSSL_cleanse(got, sizeof(got));
    return ok;
}

/* Runs PBKDF2 with a fixed salt for a user with no code, so that case takes as long
 * as a wrong code. */
static void run_without_code(const char *code)
{
    static const unsigned char salt[SALT_LEN] = {0};
    unsigned char got[HASH_LEN];

    if (derive(code, salt, sizeof(salt), ITERATIONS, got) == 0)
        OPENSSL_cleanse(got, sizeof(got));
}

/* Calls the job's callback on the loop of the worker that queued it. */
static void on_job_done(evutil_socket_t fd, short what, void *arg)
{
    struct job *job = arg;

    (void)fd;
    (void)what;
    job->cb(job->arg, job->matched);
    free(job->stored);
    free(job);
}

static void *pool_main(void *unused)
{
    (void)unused;
    for (;;) {
        struct job *job;

        pthread_mutex_lock(&pool.lock);
        while (!pool.head)
            pthread_cond_wait(&pool.ready, &pool.lock);
        job = pool.head;
        pool.head = job->next;
        if (!pool.head)
            pool.tail = NULL;
        pool.queued--;
        pthread_mutex_unlock(&pool.lock);

        if (job->stored) {
            job->matched = code_matches(job->stored, job->code);
        } else {
            run_without_code(job->code);
            job->matched = false;
        }
        OPENSSL_cleanse(job->code, sizeof(job->code));
        /* NOTE: a worker's base must outlive the jobs it queued. The drain at shutdown
         * waits for open requests, and so for their jobs, unless it hits its limit. */
        if (event_base_once(job->base, -1, EV_TIMEOUT, on_job_done, job, NULL) != 0) {
            log_error("event_base_once failed for a user code result; aborting");
            abort();
        }
    }
    return NULL;
}

static void pool_start(void)
{
    pthread_t thread;

    for (int i = 0; i < POOL_THREADS; i++) {
        int err = pthread_create(&thread, NULL, pool_main, NULL);

        if (err != 0) {
            log_error("starting a user code thread failed: %s", strerror(err));
            continue;
        }
        pthread_detach(thread);
        pool.started = true;
    }
}

int ciba_user_code_verify(struct event_base *base, const char *stored, const char *code,
                          ciba_user_code_cb cb, void *arg)
{
    struct job *job;

    if (strlen(code) > CIBA_USER_CODE_MAX)
        return -1;
    pthread_once(&pool.once, pool_start);
    if (!pool.started)
        return -1;

    job = util_calloc(1, sizeof(*job));
    job->base = base;
    job->stored = stored ? util_strdup(stored) : NULL;
    strcpy(job->code, code);
    job->cb = cb;
    job->arg = arg;

    pthread_mutex_lock(&pool.lock);
    if (pool.queued >= QUEUE_MAX) {
        pthread_mutex_unlock(&pool.lock);
        OPENSSL_cleanse(job->code, sizeof(job->code));
        free(job->stored);
        free(job);
        return -1;
    }
    if (pool.tail)
        pool.tail->next = job;
    else
        pool.head = job;
    pool.tail = job;
    pool.queued++;
    pthread_cond_signal(&pool.ready);
    pthread_mutex_unlock(&pool.lock);
    return 0;
}
