"""ICE configuration of a media node: STUN/TURN servers and extra host addresses.

aioice gathers host candidates from the machine's interfaces but leaves 127.0.0.1 out; loopback tests and
some single-host deployments need it, so ICE_HOST_ADDRESSES adds addresses to what aioice gathers.
"""

from __future__ import annotations

from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_get_host_addresses = aioice.ice.get_host_addresses
_extra: tuple[str, ...] = ()


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = list(_original_get_host_addresses(use_ipv4, use_ipv6))
    for address in _extra:
        is_v6 = ":" in address
        if address not in addresses and ((use_ipv6 and is_v6) or (use_ipv4 and not is_v6)):
            addresses.append(address)
    return addresses


def install_host_addresses(addresses: tuple[str, ...]) -> None:
    global _extra
    _extra = tuple(addresses)
    aioice.ice.get_host_addresses = _get_host_addresses


def rtc_configuration(ice_servers: tuple[dict[str, Any], ...]) -> RTCConfiguration:
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in ice_servers]
    return RTCConfiguration(iceServers=servers)
