"""The client behind a reverse proxy: X-Forwarded-For / X-Forwarded-Proto, from trusted proxies only.

Behind nginx, a load balancer or Cloudflare every request arrives from the proxy's address. Login throttling
(keyed by name and client), the audit log's IPs and the access log would all see one client, so one attacker's
failed logins would lock a name out for everyone. With TRUSTED_PROXIES set, a request whose peer is a trusted
proxy gets its client from X-Forwarded-For: walking from the right (the hop nearest us), the first address that
is not itself a trusted proxy. Anything a client writes further left is ignored, so it cannot pose as another
address. Requests from anyone else keep their peer address, whatever headers they send.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.net import Network

# The client address the middleware settled on, for the access log (which gets the request before the clone).
CLIENT: web.RequestKey[str] = web.RequestKey("client_ip", str)


def _address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = raw.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_of(peer: str | None, forwarded_for: str, networks: tuple[Network, ...]) -> str | None:
    """The client address for a request from `peer` carrying `forwarded_for`; None: keep the peer."""
    if not networks or not forwarded_for or not _trusted(_address(peer or ""), networks):
        return None
    hops = [_address(hop) for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if hop is None:
            return None  # a garbled chain: trust none of it
        if not _trusted(hop, networks):
            return str(hop)
    return str(hops[0])  # every hop is a proxy of ours: the first one is the client


def scheme_of(peer: str | None, forwarded_proto: str, networks: tuple[Network, ...]) -> str | None:
    if not networks or not _trusted(_address(peer or ""), networks):
        return None
    proto = forwarded_proto.split(",")[-1].strip().lower()  # the hop nearest us
    return proto if proto in ("http", "https") else None


def forwarded(networks: tuple[Network, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        client = client_of(request.remote, request.headers.get("X-Forwarded-For", ""), networks)
        scheme = scheme_of(request.remote, request.headers.get("X-Forwarded-Proto", ""), networks)
        if client is None and scheme is None:
            return await handler(request)
        request[CLIENT] = client or request.remote or ""
        return await handler(request.clone(remote=client or request.remote or "", scheme=scheme or request.scheme))

    return middleware
