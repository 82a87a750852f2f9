/* endpoint.c - which client notification endpoints and addresses cibad may call
 * SPDX-License-Identifier: MIT
 *
 * A notification endpoint is chosen by the client, so without rules cibad could be made
 * to POST to services on its own network (server-side request forgery). The URL is
 * checked at registration, and every address a host name resolves to is checked again
 * just before connecting (ciba_address_allowed), which is the check that counts: a name
 * can point anywhere, and can change after registration.
 */
#include "ciba/ciba.h"
#include "ciba/ciba_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>

#include "util/http_client.h"
#include "util/netaddr.h"

#define ENDPOINT_MAX_LEN 2048

bool ciba_address_allowed(const struct sockaddr *addr, bool allow_loopback)
{
    return util_netaddr_allowed(addr, allow_loopback);
}

/* Checks the host of a parsed URL when it names an address without DNS: an IP literal,
 * or "localhost". Other names are checked at delivery time. */
static int check_literal_host(const char *raw_host, bool allow_loopback, char *err,
                              size_t err_len)
{
    struct sockaddr_storage sa = {0};
    struct sockaddr_in *v4 = (struct sockaddr_in *)&sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&sa;
    char host[64];
    size_t len = strlen(raw_host);

    if (strcasecmp(raw_host, "localhost") == 0 ||
        (len > 10 && strcasecmp(raw_host + len - 10, ".localhost") == 0)) {
        if (allow_loopback)
            return 0;
        snprintf(err, err_len, "the endpoint host is a loopback name");
        return -1;
    }
    if (len >= 2 && raw_host[0] == '[' && raw_host[len - 1] == ']' &&
        len - 2 < sizeof(host)) {
        memcpy(host, raw_host + 1, len - 2);
        host[len - 2] = '\0';
    } else {
        snprintf(host, sizeof(host), "%s", raw_host);
    }
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    else
        return 0;
    if (!ciba_address_allowed((const struct sockaddr *)&sa, allow_loopback)) {
        snprintf(err, err_len,
                 "the endpoint address is loopback, private, link-local or reserved");
        return -1;
    }
    return 0;
}

/* TODO: nothing checks that the endpoint's host belongs to the client (for example a
 * list of the client's verified domains), so the operator who registers a client must
 * check it, or pings and pushed tokens can go to a third party. */
int ciba_notification_endpoint_check(const char *url, bool allow_loopback, char *err,
                                     size_t err_len)
{
    struct evhttp_uri *uri;
    int rc;

    if (!url || strnlen(url, ENDPOINT_MAX_LEN + 1) > ENDPOINT_MAX_LEN) {
        snprintf(err, err_len, "the endpoint must be a URL of at most %d characters",
                 ENDPOINT_MAX_LEN);
        return -1;
    }
    if (util_http_url_check(url, allow_loopback, true, err, err_len) != 0)
        return -1;
    /* util_http_url_check parsed it already. */
    uri = evhttp_uri_parse(url);
    if (!uri) {
        snprintf(err, err_len, "the endpoint is not a valid absolute URL");
        return -1;
    }
    if (evhttp_uri_get_fragment(uri)) {
        snprintf(err, err_len, "the endpoint must not have a fragment");
        rc = -1;
    } else {
        rc = check_literal_host(evhttp_uri_get_host(uri), allow_loopback, err, err_len);
    }
    evhttp_uri_free(uri);
    return rc;
}
