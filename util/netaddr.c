/* netaddr.c - the address policy of outbound requests to URLs that clients or
 * operators choose
 * SPDX-License-Identifier: MIT
 */
#include "util/netaddr.h"

#include <netinet/in.h>
#include <string.h>

/* Judges an IPv4 address given as 4 bytes in network order. */
static bool ipv4_allowed(const unsigned char a[4], bool allow_loopback)
{
    if (a[0] == 127)
        return allow_loopback;
    if (a[0] == 0 || a[0] == 10) /* "this network", private */
        return false;
    if (a[0] == 100 && (a[1] & 0xc0) == 64) /* shared address space */
        return false;
    if (a[0] == 169 && a[1] == 254) /* link-local, metadata */
        return false;
    if (a[0] == 172 && (a[1] & 0xf0) == 16) /* private */
        return false;
    if (a[0] == 192 && a[1] == 0 && (a[2] == 0 || a[2] == 2)) /* IETF, TEST-NET-1 */
        return false;
    if (a[0] == 192 && a[1] == 168) /* private */
        return false;
    if (a[0] == 198 && (a[1] & 0xfe) == 18) /* benchmarking */
        return false;
    if (a[0] == 198 && a[1] == 51 && a[2] == 100) /* TEST-NET-2 */
        return false;
    if (a[0] == 203 && a[1] == 0 && a[2] == 113) /* TEST-NET-3 */
        return false;
    return a[0] < 224; /* multicast, reserved */
}

static bool ipv6_allowed(const unsigned char a[16], bool allow_loopback)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
    static const unsigned char zero[16] = {0};

    if (memcmp(a, &in6addr_loopback, 16) == 0)
        return allow_loopback;
    if (memcmp(a, zero, 16) == 0)
        return false;
    /* IPv4-mapped, NAT64 and the deprecated IPv4-compatible form reach an IPv4 host. */
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0 ||
        memcmp(a, zero, 12) == 0)
        return ipv4_allowed(a + 12, allow_loopback);
    if (a[0] == 0x20 && a[1] == 0x02) /* 6to4: the IPv4 address follows */
        return ipv4_allowed(a + 2, allow_loopback);
    if ((a[0] & 0xfe) == 0xfc) /* unique local fc00::/7 */
        return false;
    if (a[0] == 0xfe && (a[1] & 0x80) == 0x80) /* link-local and site-local */
        return false;
    if (a[0] == 0xff) /* multicast */
        return false;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) /* documentation */
        return false;
    if (a[0] == 0x01 && a[1] == 0x00 && memcmp(a + 2, zero, 6) == 0) /* discard */
        return false;
    return true;
}

bool util_netaddr_allowed(const struct sockaddr *addr, bool allow_loopback)
{
    if (!addr)
        return false;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;

        return ipv4_allowed((const unsigned char *)&v4->sin_addr, allow_loopback);
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;

        return ipv6_allowed(v6->sin6_addr.s6_addr, allow_loopback);
    }
    return false;
}
