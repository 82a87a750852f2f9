/* sweeper.c - periodic expiry of authentication requests, and purge of used client
 * assertion and request object jti values
 * SPDX-License-Identifier: MIT
 *
 * Polls already answer expired_token from expires_at alone; the sweep exists so an
 * expiry becomes an audited decision, and so old tombstones are deleted. Every instance
 * may run it: storage claims rows with SKIP LOCKED.
 */
#include "ciba/ciba.h"

#include <event2/event.h>

#include "server/config.h"
#include "server/http.h"
#include "storage/storage.h"

#define SWEEP_PERIOD_S 5

/* One sweeper per process, on worker 0's loop. */
static struct event *sweep_timer;
static bool sweep_running;
static bool jti_purge_running;
static bool request_jti_purge_running;

static void on_swept(void *arg, enum storage_status status, int expired, int purged)
{
    struct server_worker *w = arg;

    sweep_running = false;
    if (status != STORAGE_OK) {
        log_warn("expiry sweep failed (storage status %d); retrying in %d s", (int)status,
                 SWEEP_PERIOD_S);
        return;
    }
    if (expired > 0 || purged > 0)
        log_info("expiry sweep: %d requests expired, %d old requests deleted", expired,
                 purged);
    /* Expiring a pending ping or push request queued a notification. */
    if (expired > 0)
        ciba_notifier_kick(w);
}

/* The jti values of expired client assertions are no longer needed to stop replays. */
static void on_jti_purged(void *arg, enum storage_status status, int count)
{
    (void)arg;
    jti_purge_running = false;
    if (status != STORAGE_OK)
        log_warn("purging used client assertion jti values failed (storage status %d)",
                 (int)status);
    else if (count > 0)
        log_debug("expiry sweep: %d expired client assertion jti values deleted", count);
}

/* The jti values of expired request objects are no longer needed to stop replays. */
static void on_request_jti_purged(void *arg, enum storage_status status, int count)
{
    (void)arg;
    request_jti_purge_running = false;
    if (status != STORAGE_OK)
        log_warn("purging used request object jti values failed (storage status %d)",
                 (int)status);
    else if (count > 0)
        log_debug("expiry sweep: %d expired request object jti values deleted", count);
}

static void on_sweep_timer(evutil_socket_t fd, short events, void *arg)
{
    struct server_worker *w = arg;

    (void)fd;
    (void)events;
    if (!jti_purge_running &&
        storage_client_assertion_purge(w->db, on_jti_purged, NULL) == 0)
        jti_purge_running = true;
    if (!request_jti_purge_running &&
        storage_request_object_purge(w->db, on_request_jti_purged, NULL) == 0)
        request_jti_purge_running = true;
    if (sweep_running)
        return;
    if (storage_auth_req_sweep(w->db, server_config->tombstone_seconds, on_swept, w) == 0)
        sweep_running = true;
}

void ciba_sweeper_start(struct server_worker *w)
{
    struct timeval period = {SWEEP_PERIOD_S, 0};

    sweep_timer = event_new(w->base, -1, EV_PERSIST, on_sweep_timer, w);
    if (!sweep_timer || event_add(sweep_timer, &period) != 0) {
        log_error("could not start the expiry sweep timer");
        return;
    }
    log_info("expiry sweep started, every %d s", SWEEP_PERIOD_S);
}

void ciba_sweeper_stop(struct server_worker *w)
{
    (void)w;
    if (sweep_timer) {
        event_free(sweep_timer);
        sweep_timer = NULL;
    }
}
