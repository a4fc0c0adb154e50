"""ICE configuration of a media node: STUN/TURN servers, extra host addresses and the UDP port range.

aioice gathers host candidates from the machine's interfaces but leaves 127.0.0.1 out; loopback tests and
some single-host deployments need it, so ICE_HOST_ADDRESSES adds addresses to what aioice gathers. Both that
and the receive-buffer change below reach into aioice; media_server/aiortc_compat.py does it. So does
MEDIA_UDP_PORTS: aioice binds each host candidate's socket to a random port, which no firewall rule or
Kubernetes hostPort can name; with a range set every socket ICE opens is bound inside it.

TURN: the node's own RTCConfiguration gets a credential derived per session (core/turn.py), like the page's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from core.turn import ice_servers as derive_ice_servers
from media_server import aiortc_compat
from media_server.aiortc_compat import PortRangeExhausted
from proctor.settings import Settings

__all__ = ["PortRangeExhausted", "enlarge_receive_buffers", "install_host_addresses", "install_udp_port_range",
           "node_rtc_configuration", "resolve_mdns", "rtc_configuration"]

log = logging.getLogger(__name__)

# A stream's UDP socket must absorb the packets that arrive while the event loop is busy elsewhere (a long
# callback, a GC pause). Linux's default, 208 KiB of skb truesize, is only ~90 datagrams: a few hundred ms of
# 1 Mbit/s video, and past it the kernel drops packets (UdpRcvbufErrors) that show up as loss and freezes
# under load. 1 MiB (the kernel doubles it, capped by net.core.rmem_max) holds seconds.
RECEIVE_BUFFER_BYTES = 1 << 20


def install_host_addresses(addresses: tuple[str, ...]) -> None:
    """Add `addresses` (e.g. 127.0.0.1) to the host candidates every later ICE connection gathers."""
    aiortc_compat.install_host_addresses(addresses)


def install_udp_port_range(ports: tuple[int, int] | None) -> None:
    """Bind every UDP socket later ICE connections open inside `ports` (MEDIA_UDP_PORTS); None: any port.
    A connection that finds the range full fails with PortRangeExhausted (the node answers 503)."""
    aiortc_compat.install_udp_port_range(ports)


async def resolve_mdns(names: list[str], timeout_s: float = 1.0) -> dict[str, str | None]:
    """The address each mDNS (`.local`) name resolves to on this node's link, None where none answers in time
    (aioice's own resolver, as aioice would use for the candidate)."""
    if not names:
        return {}
    from aioice import mdns

    try:
        protocol = await mdns.create_mdns_protocol()
    except OSError as exc:  # no multicast here: nothing resolves
        log.info("mDNS unavailable: %s", exc)
        return dict.fromkeys(names)
    try:
        addresses = await asyncio.gather(*(protocol.resolve(name, timeout=timeout_s) for name in names))
    finally:
        await protocol.close()
    return dict(zip(names, addresses, strict=True))


def rtc_configuration(ice_servers: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> RTCConfiguration:
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in ice_servers]
    return RTCConfiguration(iceServers=servers)


def node_rtc_configuration(settings: Settings, session_id: str, now: float | None = None) -> RTCConfiguration:
    """The node's configuration for one session's connection: ICE_SERVERS as given, plus TURN_URLS with a
    credential derived for this session (valid TURN_TTL_S). aioice uses the first STUN and the first TURN URL
    it finds (udp or tcp transport; turns: over TLS)."""
    return rtc_configuration(derive_ice_servers(settings.ice_servers, settings.turn_urls, settings.turn_secret,
                                                session_id, time.time() if now is None else now,
                                                settings.turn_ttl_s))


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER_BYTES) -> int:
    """Raise SO_RCVBUF on every UDP socket ICE gathered for `pc` (call after setLocalDescription).
    Returns how many sockets were changed."""
    changed = 0
    for sock in aiortc_compat.ice_udp_sockets(pc):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            changed += 1
        except OSError as exc:  # never fatal: the default buffer still works, with more loss under load
            log.warning("could not enlarge a UDP receive buffer: %s", exc)
    return changed
