"""Which addresses a webhook may reach. A webhook URL is chosen by an admin, but it is still a request our worker
makes from inside the deployment: by default it may not reach loopback, private (RFC 1918, ULA), link-local,
shared (CGNAT), multicast, unspecified or reserved addresses, nor a cloud metadata service, in IPv4 or IPv6
(IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry). WEBHOOK_ALLOW_PRIVATE lets loopback,
private and link-local through (single-host setups, tests), never the metadata address; WEBHOOK_ALLOWED_NETWORKS
names CIDRs allowed whatever they are (an internal receiver).

Checked twice: at registration on the URL's host when it is an address (or a localhost name), and at every
delivery on every address the host resolves to, before connecting to one of those very addresses
(webhooks/delivery.py), so a name that resolves elsewhere later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from core.net import Network, parse_networks

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6), Alibaba Cloud.
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class Policy:
    allow_private: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, allow_private: bool, allowed: tuple[str, ...]) -> Policy:
        return cls(allow_private, parse_networks(allowed))


def _kind(ip: IP) -> str | None:
    """What makes `ip` unfit for a webhook by default, or None for a public address."""
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved, not public"
    return None


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d; Python calls some of them global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # a NAT64 gateway forwards these to the IPv4 address inside


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), which is what it would reach."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def refusal(ip: IP, policy: Policy) -> str | None:
    """Why a webhook may not go to `ip` under `policy` ("loopback", ...), or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _IPV4_COMPATIBLE and not ip.is_loopback and not ip.is_unspecified:
            return "reserved, not public (IPv4-compatible IPv6)"
        ip = _embedded_ipv4(ip) or ip
    if any(ip.version == net.version and ip in net for net in policy.allowed):
        return None
    kind = _kind(ip)
    if kind in ("loopback", "private", "link-local") and policy.allow_private:
        return None
    return kind


def literal_address(host: str) -> IP | None:
    """The address a URL host spells, also in the legacy IPv4 forms resolvers accept ("127.1", "0x7f000001",
    "2130706433"), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def host_refusal(host: str, policy: Policy) -> str | None:
    """Why a URL host is refused before anything is resolved: an address (literal_address) refused by `policy`,
    or a localhost name unless private addresses are allowed."""
    ip = literal_address(host)
    if ip is not None:
        why = refusal(ip, policy)
        return f"{host} is {why}" if why else None
    name = host.lower().rstrip(".")
    if (name in LOCAL_NAMES or name.endswith(".localhost")) and not policy.allow_private:
        return f"{host} is loopback"
    return None
