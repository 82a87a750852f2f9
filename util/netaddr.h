/* netaddr.h - which IP addresses an outbound request chosen by a client or an operator
 * may reach
 * SPDX-License-Identifier: MIT
 *
 * A URL that someone else chooses (a client notification endpoint, a jwks_uri) could
 * otherwise make cibad send requests to services on its own network (server-side
 * request forgery). Every address a host name resolves to is judged here just before
 * connecting, through the address_allowed hook of util/http_client.h.
 */
#ifndef CIBAD_UTIL_NETADDR_H
#define CIBAD_UTIL_NETADDR_H

#include <stdbool.h>

#include <sys/socket.h>

/* True when addr may be reached: not unspecified, loopback (unless allow_loopback),
 * private (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), link-local
 * (169.254/16, where cloud metadata services listen, and fe80::/10), multicast,
 * broadcast, documentation, benchmarking or reserved. IPv4-mapped, IPv4-compatible,
 * NAT64 and 6to4 IPv6 addresses are judged by the IPv4 address inside. Any family
 * other than AF_INET and AF_INET6, and NULL, is rejected. */
bool util_netaddr_allowed(const struct sockaddr *addr, bool allow_loopback);

#endif
