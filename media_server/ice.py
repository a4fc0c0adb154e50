"""ICE configuration of a media node: STUN/TURN servers and extra host addresses.

aioice gathers host candidates from the machine's interfaces but leaves 127.0.0.1 out; loopback tests and
some single-host deployments need it, so ICE_HOST_ADDRESSES adds addresses to what aioice gathers.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

log = logging.getLogger(__name__)

# A stream's UDP socket must absorb the packets that arrive while the event loop is busy elsewhere (a long
# callback, a GC pause). Linux's default, 208 KiB of skb truesize, is only ~90 datagrams: a few hundred ms of
# 1 Mbit/s video, and past it the kernel drops packets (UdpRcvbufErrors) that show up as loss and freezes
# under load. 1 MiB (the kernel doubles it, capped by net.core.rmem_max) holds seconds.
RECEIVE_BUFFER_BYTES = 1 << 20

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


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER_BYTES) -> int:
    """Raise SO_RCVBUF on every UDP socket ICE gathered for `pc` (call after setLocalDescription).

    Relies on aiortc/aioice private names (iceGatherer._connection._protocols), checked by
    tests/test_aiortc_internals.py. Returns how many sockets were changed."""
    changed = 0
    transports = {id(t.receiver.transport.transport): t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports[id(pc.sctp.transport.transport)] = pc.sctp.transport.transport
    for ice in transports.values():
        connection = getattr(ice.iceGatherer, "_connection", None)
        for protocol in getattr(connection, "_protocols", ()):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None or sock.type != socket.SOCK_DGRAM:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                changed += 1
            except OSError as exc:  # never fatal: the default buffer still works, with more loss under load
                log.warning("could not enlarge a UDP receive buffer: %s", exc)
    return changed
