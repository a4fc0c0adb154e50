"""IP networks as settings name them (TRUSTED_PROXIES)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """"10.0.0.0/8", "192.0.2.7", "::1" -> networks; ValueError names the bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"expected an IP address or CIDR network, got {entry!r}") from None
    return tuple(networks)
