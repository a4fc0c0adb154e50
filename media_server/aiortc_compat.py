"""Every place the media node reaches into aiortc, aioice or asyncio internals, behind small typed functions.

aiortc 1.16.0 and aioice 0.13.0 are pinned exactly because of what this module does; nothing else in
media_server touches their private names. tests/test_aiortc_internals.py drives each function below through
real aiortc/aioice/asyncio objects (RTP packets into a real RTCRtpReceiver, a real SCTP association, real
ICE gathering, a real UDP socket) and fails if any hook stops working; run it first after an upgrade.

Private names relied on, and why:

aiortc.rtcrtpreceiver.RTCRtpReceiver
  `_RTCRtpReceiver__decoder_queue`  queue.Queue of `(codec, JitterFrame)` put by `_handle_rtp_packet` for the
      decoder thread: wrapping its `put` is the only place whole encoded frames (VP8/Opus) are visible, with
      their unwrapped RTP time; `tap_decoder_queue`.
  `_RTCRtpReceiver__jitter_buffer`  the receiver's JitterBuffer: it throws packets away without telling anyone;
      `on_jitter_loss`.
  `_RTCRtpReceiver__rtx_ssrc`  {rtx ssrc: media ssrc} from the receive parameters: a PLI must name the media
      SSRC, and statistics must tell the RTX stream from the media stream; `rtx_ssrcs`, `media_ssrcs`.
  `_RTCRtpReceiver__remote_streams`  {ssrc: StreamStatistics}: per-SSRC counts (getStats() gives every SSRC's
      inbound-rtp entry the same id, so it reports whichever came last); `receiver_stream_stats`.
  `_send_rtcp_pli(media_ssrc)`  sends an RTCP PLI (there is no public keyframe request); `send_pli`.

aiortc.jitterbuffer.JitterBuffer (the object above)
  `smart_remove(count)`  called by `add()` on overflow (delta >= capacity): gives up on the oldest sequence
      numbers, packets held or still missing, so the next frame may start mid-frame.
  `remove(count)`  called by `add()` on a misorder reset (a packet >= MAX_MISORDER behind the origin) with
      `capacity`: every held packet is discarded; and by `_remove_frame` after a frame is assembled (those
      packets were delivered, not lost).
  `_remove_frame`  wrapped only to tell those two `remove` calls apart; called by `give_up_stale_gaps` for the
      frame a given-up gap was holding back.
  `_packets`, `_origin`  read to count the held packets a misorder reset discards, and to see a gap at the head.
  `add(packet)`  wrapped by `give_up_stale_gaps`.

aiortc.rtcsctptransport.RTCSctpTransport
  `_data_channel_receive(stream_id, pp_id, data)`  parses every data-channel message (DCEP with asserts, text
      as UTF-8) before any handler runs; an exception there ends the DTLS transport and the whole connection;
      `guard_data_channel_receive`. (`_proctor_guarded` is our own marker on that object.)

aioice.ice
  `get_host_addresses(use_ipv4, use_ipv6)`  module function that `Connection.gather_candidates` looks up at
      call time; it leaves 127.0.0.1 out; `install_host_addresses` wraps it to add configured addresses.
  `Connection._protocols`  (reached as `RTCIceGatherer._connection`) the StunProtocols whose UDP sockets ICE
      gathered; `ice_udp_sockets`, to enlarge their receive buffers.
  `Connection.get_component_candidates(component, addresses, timeout)`  binds one UDP socket per host address
      with `asyncio.get_running_loop().create_datagram_endpoint(..., local_addr=(address, 0))` (port 0: any
      port), and its TURN task (`turn.create_turn_endpoint`) one more with `remote_addr=(server)` and no local
      address; `install_udp_port_range` wraps it so that, while it runs (a context variable), the running loop's
      `create_datagram_endpoint` gets a socket bound inside the configured range instead (`sock=`). The loop
      method is wrapped on the loop instance, once; it passes every other call through untouched.

asyncio.selector_events._SelectorDatagramTransport
  `_read_ready`  the readiness callback, reading ONE datagram per wake; replaced by the standard body looped
      (it uses `_conn_lost`, `_sock`, `max_size`, `_protocol`, `_fatal_error`); `install_batched_reads`.
      Only transports created after installation use it (the loop binds the method at creation).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events as selector_events
import contextvars
import datetime
import errno
import importlib.metadata
import logging
import queue
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aiortc.rate
import aiortc.rtcdtlstransport
import aiortc.rtcrtpreceiver
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSctpTransport
from aiortc.codecs import h264_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import (
    RTCP_PSFB_APP,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unwrap_rtx,
)
from aiortc.utils import uint32_gt
from OpenSSL import SSL

from core import vp8

log = logging.getLogger(__name__)

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_GUARD_MARK = "_proctor_guarded"

# --- RTCRtpReceiver ---------------------------------------------------------------------------------------

# codec name ("VP8", "opus"), clock rate, frame bytes, RTP timestamp (unwrapped, from 0 at the first frame),
# VP8 temporal layer (None: the sender marks none, or not VP8)
EncodedFrameSink = Callable[[str, int, bytes, int, int | None], None]


def tap_decoder_queue(receiver: RTCRtpReceiver, sink: EncodedFrameSink, *, decode: bool = True) -> None:
    """Call `sink(codec, clock_rate, data, timestamp, temporal_layer)` with each whole encoded frame the receiver
    hands its decoder thread, on the event loop. With `decode=False` the frames stop here (the decoder thread
    never sees them); the end-of-stream None still goes through so the thread and the track end as usual. The
    sink must not raise (it runs inside aiortc's receive path).

    aiortc strips the VP8 payload descriptor when it depayloads a packet, so the temporal layer is read from the
    raw payload of the frame's first packet as the jitter buffer assembles it (`_stamp_temporal_layer`)."""
    decoder_queue: queue.Queue[Any] = getattr(receiver, _DECODER_QUEUE)
    original_put = decoder_queue.put
    _stamp_temporal_layer(getattr(receiver, _JITTER_BUFFER))

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            layer = getattr(frame, _LAYER_ATTR, None) if codec.name == "VP8" else None
            sink(codec.name, codec.clockRate, frame.data, frame.timestamp, layer)
            if not decode:
                return
        original_put(item, block, timeout)

    decoder_queue.put = put  # type: ignore[method-assign]


_LAYER_ATTR = "proctor_temporal_layer"


def _stamp_temporal_layer(jitter: Any) -> None:
    """Give each JitterFrame the VP8 temporal layer of its first packet (None when the sender marks none).

    `_remove_frame` builds the first whole frame starting at the buffer's origin, so the packet at the origin
    before the call is that frame's first packet; every packet of a frame carries the same TID (RFC 7741)."""
    original = jitter._remove_frame

    def remove_frame(sequence_number: int) -> Any:
        first = jitter._packets[jitter._origin % jitter._capacity] if jitter._origin is not None else None
        frame = original(sequence_number)
        if frame is not None:
            payload = getattr(first, "payload", b"") if first is not None else b""
            setattr(frame, _LAYER_ATTR, vp8.temporal_layer(payload) if payload else None)
        return frame

    jitter._remove_frame = remove_frame


def on_jitter_loss(receiver: RTCRtpReceiver, callback: Callable[[], None]) -> None:
    """Call `callback()` each time the receiver's jitter buffer gives up on data, so the frames that follow may be
    corrupt until a keyframe (aiortc sends a PLI in both cases, for video):

    - overflow: `smart_remove(count)` skips at least `count` sequence numbers for good, whether it throws held
      packets away or stops waiting for lost ones; either way the next frame may start mid-frame;
    - misorder reset: `remove(capacity)` discards every held packet; fires only if there was one.

    The `remove()` that follows each assembled frame delivers its packets and is not a loss."""
    jitter = getattr(receiver, _JITTER_BUFFER)
    original_smart_remove = jitter.smart_remove
    original_remove = jitter.remove
    original_remove_frame = jitter._remove_frame
    delivering = False

    def fire() -> None:
        try:
            callback()
        except Exception:  # never break the media path
            log.exception("jitter loss callback failed")

    def smart_remove(count: int) -> bool:
        fire()
        return bool(original_smart_remove(count))

    def remove_frame(sequence_number: int) -> Any:
        nonlocal delivering
        delivering = True
        try:
            return original_remove_frame(sequence_number)
        finally:
            delivering = False

    def remove(count: int) -> None:
        if not delivering and _held_packets(jitter, count):
            fire()
        original_remove(count)

    jitter.smart_remove = smart_remove
    jitter.remove = remove
    jitter._remove_frame = remove_frame


def give_up_stale_gaps(receiver: RTCRtpReceiver, max_wait_s: float,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """Stop the video jitter buffer from holding every frame behind a missing packet for longer than max_wait_s.

    aiortc's video JitterBuffer waits for a missing packet until 512 later ones have arrived; its NACK asks for it
    once, and the sender keeps only its last 128 packets to resend. A packet that one NACK does not bring back
    (the retransmission lost too, or asked for too late) freezes every frame behind it for 512 packets: ~17 s at
    30 packets/s (measured, issue 19: a data-channel flood overflowed the node's socket, 5620 datagrams dropped,
    then no frame delivered for 9 s and more while packets kept arriving). Once a gap has waited max_wait_s while
    later packets kept coming, `smart_remove` drops what is held before it and the gap itself (so on_jitter_loss's
    callback fires: the next frame may start mid-frame, the archive waits for a keyframe), the next frame is handed
    on and aiortc sends a PLI. Call it on 'track', before media arrives."""
    jitter = getattr(receiver, _JITTER_BUFFER)
    original_add = jitter.add
    waiting: tuple[int, float] | None = None  # (sequence number of the first missing packet, since when)

    def add(packet: Any) -> tuple[bool, Any]:
        nonlocal waiting
        pli_flag, frame = original_add(packet)
        if frame is not None or not _held(jitter, packet.sequence_number):
            # Moving (a gap further on keeps its clock, looked at once frames stop), or a late duplicate.
            return pli_flag, frame
        gap = _first_gap(jitter, packet.sequence_number)
        if gap is None:
            waiting = None
            return pli_flag, frame
        offset, missing = gap
        first_missing = (jitter._origin + offset) % 65536
        now = clock()
        if waiting is None or waiting[0] != first_missing:
            waiting = (first_missing, now)
        elif now - waiting[1] >= max_wait_s:
            waiting = None
            log.info("jitter buffer: %d packet(s) missing for %.1f s; given up", missing, max_wait_s)
            jitter.smart_remove(offset + missing)  # the instance's: on_jitter_loss's wrapper when installed
            return True, jitter._remove_frame(packet.sequence_number)
        return pli_flag, frame

    jitter.add = add


def _held(jitter: Any, sequence_number: int) -> bool:
    """Whether `sequence_number` is within the jitter buffer's window (not behind its origin)."""
    origin: int | None = jitter._origin
    return origin is not None and (sequence_number - origin) % 65536 < len(jitter._packets)


def _first_gap(jitter: Any, newest: int) -> tuple[int, int] | None:
    """(offset from the origin of the first missing packet, how many are missing in a row) before sequence number
    `newest`, which the jitter buffer holds; None when nothing is missing before it."""
    packets: list[Any] = jitter._packets
    origin: int = jitter._origin
    capacity = len(packets)
    span = (newest - origin) % 65536
    for offset in range(span):
        if packets[(origin + offset) % capacity] is None:
            missing = 1
            while offset + missing < span and packets[(origin + offset + missing) % capacity] is None:
                missing += 1
            return offset, missing
    return None


def _held_packets(jitter: Any, count: int) -> int:
    """How many packets the next `count` slots from the jitter buffer's origin hold."""
    packets: list[Any] = jitter._packets
    origin: int | None = jitter._origin
    if origin is None:
        return 0
    capacity = len(packets)
    if count >= capacity:
        return sum(p is not None for p in packets)
    return sum(packets[(origin + i) % capacity] is not None for i in range(count))


def rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """{retransmission SSRC: media SSRC} from the negotiated parameters (a copy)."""
    return dict(getattr(receiver, _RTX_SSRC, {}))


def media_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """SSRCs heard from in the last 10 s that carry media, not retransmissions (Chromium also sends RTX and
    padding on a second SSRC; a PLI naming it is ignored)."""
    rtx = rtx_ssrcs(receiver)
    return [s.source for s in receiver.getSynchronizationSources() if s.source not in rtx]


@dataclass(frozen=True, slots=True)
class RemoteStreamStats:
    ssrc: int
    rtx: bool  # a retransmission stream (answers to our NACKs, bandwidth probing)
    packets_received: int
    packets_lost: int  # RFC 3550 cumulative loss, may be negative with duplicates
    jitter: float  # RFC 3550 interarrival jitter, in RTP clock units


def receiver_stream_stats(receiver: RTCRtpReceiver) -> list[RemoteStreamStats]:
    """The receiver's per-SSRC RTCP receive statistics."""
    rtx = rtx_ssrcs(receiver)
    streams: dict[int, Any] = getattr(receiver, _REMOTE_STREAMS, {})
    return [RemoteStreamStats(ssrc, ssrc in rtx, int(s.packets_received), int(s.packets_lost), float(s.jitter))
            for ssrc, s in list(streams.items())]


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Coroutine[Any, Any, None]:
    """An RTCP Picture Loss Indication for `media_ssrc` (awaitable); the sender answers with a keyframe."""
    return receiver._send_rtcp_pli(media_ssrc)


# --- RTCSctpTransport ------------------------------------------------------------------------------------


def guard_data_channel_receive(transport: RTCSctpTransport, on_error: Callable[[Exception], None]) -> bool:
    """Make a data-channel message that aiortc's own parsing rejects (non-UTF-8 text, a malformed or duplicate
    DCEP open, ...) a call to `on_error(exc)` instead of an exception that ends the connection. Once per
    transport (later calls return False); install it before any message can arrive."""
    receive = getattr(transport, "_data_channel_receive", None)
    if receive is None or getattr(transport, _GUARD_MARK, False):
        return False

    async def guarded(stream_id: int, pp_id: int, data: bytes) -> None:
        try:
            await receive(stream_id, pp_id, data)
        except Exception as exc:  # one bad message from the peer: reported, never fatal
            on_error(exc)

    transport._data_channel_receive = guarded  # type: ignore[method-assign]
    setattr(transport, _GUARD_MARK, True)
    return True


# --- aioice ------------------------------------------------------------------------------------------------

_original_get_host_addresses = aioice.ice.get_host_addresses
_extra_host_addresses: tuple[str, ...] = ()


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = list(_original_get_host_addresses(use_ipv4, use_ipv6))
    for address in _extra_host_addresses:
        is_v6 = ":" in address
        if address not in addresses and ((use_ipv6 and is_v6) or (use_ipv4 and not is_v6)):
            addresses.append(address)
    return addresses


def install_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather host candidates on `addresses` too (e.g. 127.0.0.1, which aioice leaves out), for every ICE
    connection created afterwards in this process. Replaces the previous extra addresses."""
    global _extra_host_addresses
    _extra_host_addresses = tuple(addresses)
    aioice.ice.get_host_addresses = _get_host_addresses


def extra_host_addresses() -> tuple[str, ...]:
    """The addresses install_host_addresses added (empty if none)."""
    return _extra_host_addresses


def ice_udp_sockets(pc: RTCPeerConnection) -> list[socket.socket]:
    """The UDP sockets ICE gathered for `pc`'s transports (after setLocalDescription), each once."""
    ice_transports = {id(t.receiver.transport.transport): t.receiver.transport.transport
                      for t in pc.getTransceivers()}
    if pc.sctp is not None:
        ice_transports[id(pc.sctp.transport.transport)] = pc.sctp.transport.transport
    sockets: dict[int, socket.socket] = {}
    for ice in ice_transports.values():
        connection = getattr(ice.iceGatherer, "_connection", None)
        for protocol in getattr(connection, "_protocols", ()):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None and sock.type == socket.SOCK_DGRAM:
                sockets[sock.fileno()] = sock
    return list(sockets.values())


class PortRangeExhausted(RuntimeError):
    """Every port of MEDIA_UDP_PORTS is taken on the address asked for: the node cannot take another peer
    connection now. Not an OSError on purpose: aioice skips a host address whose bind fails with OSError and
    would answer with no candidate at all; this one ends the gathering (and the offer: 503)."""


@dataclass(frozen=True, slots=True)
class UdpPortRange:
    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


_port_range: UdpPortRange | None = None
_port_cursor = 0  # where the next search starts: recently closed ports are reused last (stale packets)
# The transports bound in range by the gathering that runs in this context; None outside a gathering.
_range_binds: contextvars.ContextVar[list[asyncio.BaseTransport] | None] = contextvars.ContextVar(
    "proctor_udp_range_binds", default=None)
_LOOP_MARK = "_proctor_udp_range"
_original_get_component_candidates = aioice.ice.Connection.get_component_candidates


def bind_udp_in_range(host: str, ports: UdpPortRange, prefer: int | None = None) -> socket.socket:
    """A UDP socket bound to `host` on a free port of `ports`: `prefer` if given and free, else searched from
    after the last one handed out. Raises PortRangeExhausted when every port is taken on `host`, OSError when
    `host` cannot be bound at all. A port is taken per address: (10.0.0.5, p) and (127.0.0.1, p) coexist."""
    global _port_cursor
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    preferred = [prefer] if prefer is not None and prefer in ports else []
    searched = [ports.first + (_port_cursor + i) % len(ports) for i in range(len(ports))]
    try:
        for port in preferred + searched:
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            if port not in preferred:
                _port_cursor = port - ports.first + 1
            sock.setblocking(False)
            return sock
    except BaseException:
        sock.close()
        raise
    sock.close()
    raise PortRangeExhausted(f"every UDP port in {ports.first}-{ports.last} is in use on {host}")


async def _range_datagram_endpoint(loop: asyncio.AbstractEventLoop, original: Callable[..., Any],
                                   protocol_factory: Callable[[], Any], local_addr: Any = None,
                                   remote_addr: Any = None, **kwargs: Any) -> Any:
    binds = _range_binds.get()
    ports = _port_range
    if binds is None or ports is None or kwargs.get("sock") is not None:
        return await original(protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs)
    if local_addr is not None and remote_addr is None and local_addr[1] == 0:  # a host candidate's socket
        # One port number for all of a connection's host addresses where free: the range then bounds peer
        # connections, whatever the number of interfaces.
        used = [t.get_extra_info("sockname")[1] for t in binds if t.get_extra_info("peername") is None]
        sock = bind_udp_in_range(local_addr[0], ports, prefer=used[0] if used else None)
    elif local_addr is None and remote_addr is not None:  # the TURN client's socket towards its server
        infos = await loop.getaddrinfo(remote_addr[0], remote_addr[1], type=socket.SOCK_DGRAM,
                                       family=kwargs.get("family", 0))
        family, _, _, _, server = infos[0]
        sock = bind_udp_in_range("::" if family == socket.AF_INET6 else "0.0.0.0", ports)
        try:
            sock.connect(server)  # UDP: no packet sent, only the peer fixed (TURN sends with no address)
        except OSError:
            sock.close()
            raise
    else:
        return await original(protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs)
    try:
        transport, protocol = await original(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    binds.append(transport)
    return transport, protocol


def _install_on_loop(loop: asyncio.AbstractEventLoop) -> None:
    if getattr(loop, _LOOP_MARK, False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(protocol_factory: Callable[[], Any], local_addr: Any = None,
                                       remote_addr: Any = None, **kwargs: Any) -> Any:
        return await _range_datagram_endpoint(loop, original, protocol_factory, local_addr, remote_addr, **kwargs)

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]
    setattr(loop, _LOOP_MARK, True)


async def _get_component_candidates(self: aioice.ice.Connection, component: int, addresses: list[str],
                                    timeout: int = 5) -> list[aioice.Candidate]:  # noqa: ASYNC109 (aioice's signature)
    if _port_range is None:
        return await _original_get_component_candidates(self, component, addresses, timeout)
    _install_on_loop(asyncio.get_running_loop())
    binds: list[asyncio.BaseTransport] = []
    token = _range_binds.set(binds)
    try:
        return await _original_get_component_candidates(self, component, addresses, timeout)
    except PortRangeExhausted:
        # aioice had not yet recorded what this call bound: close it here, or the ports stay taken.
        for transport in binds:
            transport.close()
        raise
    finally:
        _range_binds.reset(token)


def install_udp_port_range(ports: tuple[int, int] | None) -> None:
    """Bind every UDP socket ICE gathers from now on in this process (host candidates, and the TURN client's
    socket) inside `ports` (first, last inclusive); None: any port, as aioice does. Process-wide, idempotent."""
    global _port_range
    _port_range = UdpPortRange(*ports) if ports is not None else None
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]


def udp_port_range() -> UdpPortRange | None:
    return _port_range


# --- asyncio -----------------------------------------------------------------------------------------------

_DatagramTransport: Any = selector_events._SelectorDatagramTransport  # type: ignore[attr-defined]
_original_read_ready = _DatagramTransport._read_ready
_max_datagrams_per_wake = 16


def _batched_read_ready(self: Any) -> None:
    """The standard library's `_SelectorDatagramTransport._read_ready` body, looped."""
    for _ in range(_max_datagrams_per_wake):
        if self._conn_lost:
            return
        try:
            data, addr = self._sock.recvfrom(self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
            return
        else:
            self._protocol.datagram_received(data, addr)


def install_batched_reads(max_per_wake: int) -> None:
    """Read up to `max_per_wake` datagrams per readiness callback on every selector event loop's datagram
    transports created from now on (process-wide). Idempotent."""
    global _max_datagrams_per_wake
    _max_datagrams_per_wake = max(1, int(max_per_wake))
    _DatagramTransport._read_ready = _batched_read_ready


def batched_reads_installed() -> bool:
    return _DatagramTransport._read_ready is _batched_read_ready


# --- RTP receive fast path (issue 14) ----------------------------------------------------------------------
#
# Every RTP packet a node receives (~180 a second per candidate: VP8 640x480 at 1 Mbit/s, Opus, RTX) runs through
# aioice, aiortc and pylibsrtp in Python on the event loop; bench/rtp_path.py measures it. The replacements
# below do the same work with fewer Python calls and objects per packet. Each one is written against aiortc
# 1.16.0 / aioice 0.13.0 (the source of the original is quoted in its docstring's "as" line) and must give the
# same result: tests/test_rtp_path.py feeds scripted packets (loss, reordering, duplicates, RTX, wraps) through
# both and compares frames, statistics, NACK/PLI/REMB/RTCP bytes and the taps. `install_rtp_fast_path(False)`
# (RTP_FAST_PATH=false) puts aiortc's own methods back, for before/after measurements.
#
# Private names relied on (besides those listed at the top of this module):
#   aioice.ice.StunProtocol.datagram_received, .receiver, .local_candidate; aioice.ice.Connection._queue,
#   ._nominated (its recvfrom's checks); aiortc.rtcdtlstransport.RTCDtlsTransport._recv_next and
#   _handle_rtp_data, its private counters `_RTCDtlsTransport__rx_bytes/__rx_packets/__handshake_done`, `_rx_srtp`,
#   `_rtp_router`, `_rtp_header_extensions_map`, `_handle_rtcp_data`, `_write_ssl`, `_data_receiver`, `_ssl`;
#   aiortc.rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet and getSynchronizationSources with the receiver's
#   private attributes named in _handle_rtp_packet_fast; aiortc.jitterbuffer.JitterBuffer._remove_frame
#   (`_packets`, `_capacity`, `_origin`, `_prefetch`); aiortc.rate.RemoteBitrateEstimator.add with the
#   RateCounter (`_erase_old`, `_origin_ms`, `_origin_index`, `_buckets`, `_total`, `_window_size`) and
#   InterArrival (`current_group`, `previous_group`, `group_length`, `timestamp_to_ms`) state it updates;
#   aiortc.rate.OveruseEstimator.update_min_frame_period (`ts_delta_hist`).
#
# Measured (bench/rtp_path.py, AMD EPYC 2 cores, AVX2, a busy machine): the receiver stage (SRTP, parse, receiver,
# taps) 42 -> 34 us a packet (7.2 -> 5.9 ms CPU per stream-second). Not touched, and larger on this machine: the
# event loop's own cost per datagram (epoll wake, recvfrom, task wake-up), 80 us a datagram for a bare asyncio
# protocol; fewer wake-ups (reading on a shared tick, arrival times from SO_TIMESTAMPNS so REMB and jitter stay
# exact) is the next lever.

FAST_PATH_VERSIONS = {"aiortc": "1.16.0", "aioice": "0.13.0"}
_SEEN = "_proctor_ssrc_seen"  # {ssrc: time.time() of its latest packet}, our own attribute on a receiver
_NTP_UNIX_OFFSET_MS = 2_208_988_800_000  # 1900-01-01 to 1970-01-01
_fast_path = False

_Dtls: Any = aiortc.rtcdtlstransport.RTCDtlsTransport
_Receiver: Any = aiortc.rtcrtpreceiver.RTCRtpReceiver
_StreamStatistics: Any = aiortc.rtcrtpreceiver.StreamStatistics
_ORIGINALS: dict[tuple[Any, str], Any] = {
    (aioice.ice.StunProtocol, "datagram_received"): aioice.ice.StunProtocol.datagram_received,
    (_Dtls, "_recv_next"): _Dtls._recv_next,
    (_Dtls, "_handle_rtp_data"): _Dtls._handle_rtp_data,
    (_Receiver, "_handle_rtp_packet"): _Receiver._handle_rtp_packet,
    (_Receiver, "getSynchronizationSources"): _Receiver.getSynchronizationSources,
    (JitterBuffer, "_remove_frame"): JitterBuffer._remove_frame,
    (aiortc.rate.RateCounter, "_erase_old"): aiortc.rate.RateCounter._erase_old,
    (aiortc.rate.OveruseEstimator, "update_min_frame_period"): aiortc.rate.OveruseEstimator.update_min_frame_period,
    (aiortc.rate.RemoteBitrateEstimator, "add"): aiortc.rate.RemoteBitrateEstimator.add,
}


def _datagram_received_fast(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
    """aioice StunProtocol.datagram_received, as 0.13.0, for what cannot be STUN.

    aioice tries to parse every datagram as STUN first and hands it on when that raises: an exception per media
    packet. RFC 7983 demultiplexes by the first byte (STUN 0-3, DTLS 20-63, RTP/RTCP 128-191), so anything else goes
    straight on. For VP8, Opus, RTX (dynamic payload types) and RTCP, aioice's parser always raises on these (their
    second byte is no STUN method), so nothing changes. The one difference: aioice checks no magic cookie, so an RTP
    packet with a static payload type 0-9 (PCMU, PCMA), no marker and a sequence number equal to its length minus 20
    parses as a STUN request there and is lost; here it is delivered.

    An SRTP datagram for a connected DTLS transport with nothing queued before it is handled here and now
    (`_receive_now`): no queue, no task wake-up, no chain of awaits per packet."""
    if data and data[0] > 3:
        connection = self.receiver
        if 127 < data[0] < 192:
            dtls = connection.__dict__.get(_DIRECT)
            if dtls is not None and _receive_now(dtls, connection, data):
                return
        connection.data_received(data, self.local_candidate.component)
        return
    _ORIGINALS[(aioice.ice.StunProtocol, "datagram_received")](self, data, addr)


async def _recv_next_fast(self: Any) -> None:
    """aiortc RTCDtlsTransport._recv_next, as 1.16.0, once the handshake is done, for every datagram already queued.

    aiortc takes one datagram per call through four awaits (recv, recvfrom, Queue.get); a batched socket read
    (install_batched_reads) queues up to 16 at once. Those already queued are handled here in order, with no await
    in between them that could yield (Queue.get does not yield when the queue holds something: same order, same
    interleaving with other tasks as aiortc's loop). Before the handshake ends aiortc's own method runs (timeouts)."""
    if not self._RTCDtlsTransport__handshake_done:
        await _ORIGINALS[(_Dtls, "_recv_next")](self)
        return
    connection = getattr(self.transport, "_connection", None)
    if isinstance(connection, aioice.ice.Connection) and _DIRECT not in connection.__dict__ \
            and self.transport._recv == connection.recv:
        connection.__dict__[_DIRECT] = self  # from now on its SRTP datagrams may skip the queue: _receive_now
    await _handle_datagram(self, await self.transport._recv())
    queue = getattr(connection, "_queue", None)
    if not isinstance(connection, aioice.ice.Connection) or not isinstance(queue, asyncio.Queue):
        return
    while queue.qsize() and self.transport._recv == connection.recv:
        if not len(connection._nominated):  # Connection.recvfrom's checks
            raise ConnectionError("Cannot receive data, not connected")
        item = queue.get_nowait()
        if item is None:
            raise ConnectionError("Connection lost while receiving data")
        await _handle_datagram(self, item[0])


_DIRECT = "_proctor_direct_dtls"  # our attribute on an aioice Connection: the connected DTLS transport reading it
_CONNECTED = aiortc.rtcdtlstransport.State.CONNECTED
direct_packets = 0  # SRTP datagrams handled by _receive_now (tests and bench/rtp_path read it)


def _receive_now(self: Any, connection: Any, data: bytes) -> bool:
    """What `_recv_next_fast` would do with this SRTP datagram, done as it arrives: False (the caller queues it as
    aioice does) unless the transport is connected, nothing is queued before it (order: the queue's task never
    stops inside an item, so an empty queue means every earlier datagram is handled), the connection is nominated
    (Connection.recvfrom's check) and it is RTP, not RTCP (rare; its handlers await). Only reached while the fast
    path is installed (this module's methods are the classes'). Its RTCP replies (REMB, NACK, PLI) go out from a
    task, in order."""
    global direct_packets
    if self._state is not _CONNECTED or connection._queue.qsize() or not connection._nominated or is_rtcp(data):
        return False
    srtp = self._rx_srtp
    if srtp is None:
        return False
    self._RTCDtlsTransport__rx_bytes += len(data)
    self._RTCDtlsTransport__rx_packets += 1
    direct_packets += 1
    arrival_time_ms = time.time_ns() // 1_000_000 + _NTP_UNIX_OFFSET_MS
    try:
        plain = srtp.unprotect(data)
    except pylibsrtp.Error:
        return True  # aiortc drops it (logged at debug level)
    routed = _routed(self, plain)
    if routed is None:
        return True
    sends = _rtp_packet_now(*routed, arrival_time_ms)  # what _handle_rtp_packet_fast (class-wide) does
    if sends:
        asyncio.get_running_loop().create_task(_send_in_order(sends))
    return True


async def _handle_datagram(self: Any, data: bytes) -> None:
    """The rest of aiortc 1.16.0's RTCDtlsTransport._recv_next, for one received datagram."""
    self._RTCDtlsTransport__rx_bytes += len(data)
    self._RTCDtlsTransport__rx_packets += 1
    first_byte = data[0]
    if 19 < first_byte < 64:  # DTLS
        self._ssl.bio_write(data)
        received: bytes | None
        try:
            received = self._ssl.recv(1500)
        except SSL.ZeroReturnError:
            received = None
        except SSL.Error:
            received = b""
        await self._write_ssl()
        if received is None:
            raise ConnectionError
        if received and self._data_receiver:
            await self._data_receiver._handle_data(received)
    elif 127 < first_byte < 192 and self._rx_srtp:  # SRTP / SRTCP
        # clock.current_ms() without two datetime objects: milliseconds since 1900 on the same wall clock.
        arrival_time_ms = time.time_ns() // 1_000_000 + _NTP_UNIX_OFFSET_MS
        try:
            if is_rtcp(data):
                await self._handle_rtcp_data(self._rx_srtp.unprotect_rtcp(data))
            else:
                await self._handle_rtp_data(self._rx_srtp.unprotect(data), arrival_time_ms=arrival_time_ms)
        except pylibsrtp.Error:
            pass  # aiortc logs it at debug level


_CODEC_NAMES: dict[str, str] = {}  # mimeType -> name: RTCRtpCodecParameters.name splits the string each time


def _codec_name(codec: Any) -> str:
    mime: str = codec.mimeType
    name = _CODEC_NAMES.get(mime)
    if name is None:
        name = _CODEC_NAMES[mime] = codec.name
    return name


RtcpSend = tuple[Callable[..., Coroutine[Any, Any, None]], tuple[Any, ...]]


async def _handle_rtp_packet_fast(self: Any, packet: RtpPacket, arrival_time_ms: int) -> None:
    """aiortc RTCRtpReceiver._handle_rtp_packet, as 1.16.0: `_rtp_packet_now`, then the RTCP it asks for."""
    sends = _rtp_packet_now(self, packet, arrival_time_ms)
    if sends:
        await _send_in_order(sends)


async def _send_in_order(sends: list[RtcpSend]) -> None:
    for send, args in sends:
        await send(*args)


def _rtp_packet_now(self: Any, packet: RtpPacket, arrival_time_ms: int) -> list[RtcpSend] | None:
    """aiortc RTCRtpReceiver._handle_rtp_packet, as 1.16.0, without awaiting: the same steps in the same order
    (bitrate estimate and REMB, source bookkeeping, RTCP statistics, RTX unwrapping, NACK, depayloading, jitter
    buffer, PLI, decoder queue), with attribute lookups hoisted, the codec name cached and the source's time kept
    as a float (aiortc builds a timezone-aware datetime per packet; getSynchronizationSources converts on read).
    The RTCP aiortc sends on the way (REMB, NACK, PLI: a few a second at most) is returned, in aiortc's order, for
    the caller to send: sending changes no receiver state, so sending it after the packet is handled gives the
    same packets as sending it in between."""
    if not self._enabled:
        return None
    sends: list[RtcpSend] | None = None
    estimator = self._RTCRtpReceiver__remote_bitrate_estimator
    if estimator is not None:
        abs_send_time = packet.extensions.abs_send_time
        if abs_send_time is not None:
            remb = estimator.add(abs_send_time=abs_send_time, arrival_time_ms=arrival_time_ms,
                                 payload_size=len(packet.payload) + packet.padding_size, ssrc=packet.ssrc)
            rtcp_ssrc = self._RTCRtpReceiver__rtcp_ssrc
            if rtcp_ssrc is not None and remb is not None:
                sends = [(self._send_rtcp, (RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                           fci=pack_remb_fci(*remb)),))]
    ssrc = packet.ssrc
    seen = self.__dict__.get(_SEEN)
    if seen is None:
        seen = self.__dict__[_SEEN] = {}
    seen[ssrc] = time.time()
    codecs = self._RTCRtpReceiver__codecs
    codec = codecs.get(packet.payload_type)
    if codec is None:
        return sends
    streams = self._RTCRtpReceiver__remote_streams
    stream = streams.get(ssrc)
    if stream is None:
        stream = streams[ssrc] = _StreamStatistics(codec.clockRate)
    stream.add(packet)
    name = _codec_name(codec)
    if name.lower() == "rtx":
        original_ssrc = self._RTCRtpReceiver__rtx_ssrc.get(ssrc)
        if original_ssrc is None:
            return sends
        apt = codec.parameters.get("apt")
        if len(packet.payload) < 2 or not isinstance(apt, int) or apt not in codecs:
            return sends
        packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        codec = codecs[apt]
        name = _codec_name(codec)
    nack = self._RTCRtpReceiver__nack_generator
    if nack is not None and nack.add(packet):
        sends = (sends or []) + [(self._send_rtcp_nack, (packet.ssrc, sorted(nack.missing)))]
    payload = packet.payload
    try:
        if not payload:
            data = b""
        elif name == "VP8":
            data = _vp8_depayload_fast(payload)
        elif name == "H264":
            data = h264_depayload(payload)
        else:
            data = payload
    except ValueError:
        return sends
    packet._data = data  # type: ignore[attr-defined]
    pli_flag, encoded_frame = self._RTCRtpReceiver__jitter_buffer.add(packet)
    decoder_error = self._RTCRtpReceiver__decoder_error
    if decoder_error.is_set():
        decoder_error.clear()
        if self._RTCRtpReceiver__kind == "video":
            pli_flag = True
    if pli_flag:
        sends = (sends or []) + [(self._send_rtcp_pli, (packet.ssrc,))]
    if encoded_frame is not None and self._RTCRtpReceiver__decoder_thread:
        encoded_frame.timestamp = self._RTCRtpReceiver__timestamp_mapper.map(encoded_frame.timestamp)
        self._RTCRtpReceiver__decoder_queue.put((codec, encoded_frame))
    return sends


def _synchronization_sources_fast(self: Any) -> list[Any]:
    """aiortc RTCRtpReceiver.getSynchronizationSources, as 1.16.0, also reading the float times the fast
    _handle_rtp_packet keeps (the later of the two per source; datetime.now(utc) is fromtimestamp(time.time()))."""
    latest: dict[int, datetime.datetime] = dict(self._RTCRtpReceiver__active_ssrc)
    for source, seen in list(self.__dict__.get(_SEEN, {}).items()):
        when = datetime.datetime.fromtimestamp(seen, datetime.UTC)
        if source not in latest or when > latest[source]:
            latest[source] = when
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=10)
    return [aiortc.rtcrtpreceiver.RTCRtpSynchronizationSource(source=source, timestamp=when)
            for source, when in latest.items() if when >= cutoff]


def _remove_frame_fast(self: Any, sequence_number: int) -> JitterFrame | None:
    """aiortc JitterBuffer._remove_frame, as 1.16.0: scan the packets from the origin for a complete frame (the
    run up to a timestamp change; `prefetch` more frames held), hand the first one on and remove its packets
    through `self.remove` (so wrappers of it still see the call). Locals instead of attribute lookups, and no
    list of the frame's packets built on every call (it runs once per packet)."""
    packets = self._packets
    capacity = self._capacity
    origin = self._origin
    prefetch = self._prefetch
    frame = None
    frames = 0
    remove = 0
    timestamp = None
    for count in range(capacity):
        packet = packets[(origin + count) % capacity]
        if packet is None:
            break
        if timestamp is None:
            timestamp = packet.timestamp
        elif packet.timestamp != timestamp:
            if frame is None:  # only the first frame is handed on: its packets start at the origin
                frame = JitterFrame(data=b"".join([packets[(origin + i) % capacity]._data for i in range(count)]),
                                    timestamp=timestamp)
                remove = count
            frames += 1
            if frames >= prefetch:
                self.remove(remove)
                return frame
            timestamp = packet.timestamp
    return None


def _erase_old_fast(self: Any, now_ms: int) -> None:
    """aiortc RateCounter._erase_old, as 1.16.0 (the REMB estimator's 1-ms buckets): the same buckets emptied in
    the same order, with locals instead of six attribute writes per elapsed millisecond."""
    steps = now_ms - self._window_size + 1 - self._origin_ms
    if steps <= 0:
        return
    buckets = self._buckets
    window = self._window_size
    index = self._origin_index
    total = self._total
    for _ in range(steps):
        bucket = buckets[index]
        if bucket.count or bucket.value:
            total.count -= bucket.count
            total.value -= bucket.value
            bucket.count = 0
            bucket.value = 0
        index = (index + 1) % window
    self._origin_index = index
    self._origin_ms += steps


_RTP_HEADER = struct.Struct("!BBHLL")
_UINT32 = struct.Struct("!L")
_TWO_UINT16 = struct.Struct("!HH")


def _routed(self: Any, data: bytes) -> tuple[Any, RtpPacket] | None:
    """aiortc RTCDtlsTransport._handle_rtp_data's parse and route, as 1.16.0, parsing with _parse_rtp_fast: the
    receiver and the packet, or None (unparsable: aiortc logs it at debug level; or no receiver for it)."""
    try:
        packet = _parse_rtp_fast(data, self._rtp_header_extensions_map)
    except ValueError:
        return None
    receiver = self._rtp_router.route_rtp(packet)
    return None if receiver is None else (receiver, packet)


async def _handle_rtp_data_fast(self: Any, data: bytes, arrival_time_ms: int) -> None:
    """aiortc RTCDtlsTransport._handle_rtp_data, as 1.16.0 (`_routed`)."""
    routed = _routed(self, data)
    if routed is not None:
        await routed[0]._handle_rtp_packet(routed[1], arrival_time_ms=arrival_time_ms)


def _parse_rtp_fast(data: bytes, extensions_map: HeaderExtensionsMap) -> RtpPacket:
    """aiortc RtpPacket.parse, as 1.16.0: the same checks (the same ValueErrors), the same attributes, without
    building a HeaderExtensions that the extension header then replaces, and with precompiled structs."""
    if len(data) < 12:
        raise ValueError("RTP packet length is less than 12 bytes")
    v_p_x_cc, m_pt, sequence_number, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
    cc = v_p_x_cc & 0x0F
    if v_p_x_cc >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    if len(data) < 12 + 4 * cc:
        raise ValueError("RTP packet has truncated CSRC")
    packet = RtpPacket.__new__(RtpPacket)
    packet.version = 2
    packet.marker = m_pt >> 7
    packet.payload_type = m_pt & 0x7F
    packet.sequence_number = sequence_number
    packet.timestamp = timestamp
    packet.ssrc = ssrc
    packet.csrc = [_UINT32.unpack_from(data, 12 + 4 * i)[0] for i in range(cc)]
    packet.padding_size = 0
    pos = 12 + 4 * cc
    if (v_p_x_cc >> 4) & 1:
        if len(data) < pos + 4:
            raise ValueError("RTP packet has truncated extension profile / length")
        extension_profile, extension_length = _TWO_UINT16.unpack_from(data, pos)
        extension_length *= 4
        pos += 4
        if len(data) < pos + extension_length:
            raise ValueError("RTP packet has truncated extension value")
        packet.extensions = extensions_map.get(extension_profile, data[pos:pos + extension_length])
        pos += extension_length
    else:
        packet.extensions = HeaderExtensions()
    if (v_p_x_cc >> 5) & 1:
        padding_len = data[-1]
        if not padding_len or padding_len > len(data) - pos:
            raise ValueError("RTP packet padding length is invalid")
        packet.padding_size = padding_len
        packet.payload = data[pos:-padding_len]
    else:
        packet.payload = data[pos:]
    return packet


def _vp8_depayload_fast(payload: bytes) -> bytes:
    """aiortc vp8_depayload, as 1.16.0: the VP8 payload descriptor's length (the same ValueErrors on a truncated
    one) and what follows it, without building the VpxPayloadDescriptor that aiortc then throws away."""
    size = len(payload)
    if size < 1:
        raise ValueError("VPX descriptor is too short")
    pos = 1
    if payload[0] & 0x80:
        if size < 2:
            raise ValueError("VPX descriptor has truncated extended bits")
        extension = payload[1]
        pos = 2
        if extension & 0x80:  # PictureID, 7 or 15 bits
            if size < pos + 1:
                raise ValueError("VPX descriptor has truncated PictureID")
            if payload[pos] & 0x80:
                if size < pos + 2:
                    raise ValueError("VPX descriptor has truncated long PictureID")
                pos += 2
            else:
                pos += 1
        if extension & 0x40:  # TL0PICIDX
            if size < pos + 1:
                raise ValueError("VPX descriptor has truncated TL0PICIDX")
            pos += 1
        if extension & 0x30:  # TID / KEYIDX
            if size < pos + 1:
                raise ValueError("VPX descriptor has truncated T/K")
            pos += 1
    return payload[pos:]


def _update_min_frame_period_fast(self: Any, ts_delta: float) -> float:
    """aiortc OveruseEstimator.update_min_frame_period, as 1.16.0: the minimum over the last 60 deltas and this
    one, with builtin min over the history instead of a Python loop of 60 min() calls per packet group."""
    history: list[float] = self.ts_delta_hist
    if len(history) >= aiortc.rate.MIN_FRAME_PERIOD_HISTORY_LENGTH:
        history.pop(0)
    min_frame_period = min(ts_delta, min(history)) if history else ts_delta
    history.append(ts_delta)
    return min_frame_period


def _remb_add_fast(self: Any, arrival_time_ms: int, abs_send_time: int, payload_size: int,
                   ssrc: int) -> tuple[int, list[int]] | None:
    """aiortc RemoteBitrateEstimator.add, as 1.16.0 (called for every video packet with abs-send-time): the same
    state changes and result, with the per-packet parts of RateCounter.rate/add and InterArrival.compute_deltas
    inlined (six method calls per packet in aiortc); the per-group Kalman filter, detector and rate control are
    aiortc's own methods, called exactly when aiortc calls them."""
    timestamp = abs_send_time << 8
    self.ssrcs[ssrc] = arrival_time_ms

    # self.incoming_bitrate.rate(arrival_time_ms) is not None, then .add(payload_size, arrival_time_ms)
    counter = self.incoming_bitrate
    has_rate = False
    if counter._origin_ms is not None:
        counter._erase_old(arrival_time_ms)
        has_rate = counter._total.count > 0 and arrival_time_ms - counter._origin_ms + 1 > 1
    if has_rate:
        self.incoming_bitrate_initialized = True
    elif self.incoming_bitrate_initialized:
        counter.reset()
        self.incoming_bitrate_initialized = False
    if counter._origin_ms is None:
        counter._origin_ms = arrival_time_ms
    else:
        counter._erase_old(arrival_time_ms)
    bucket = counter._buckets[(counter._origin_index + arrival_time_ms - counter._origin_ms) % counter._window_size]
    bucket.count += 1
    bucket.value += payload_size
    counter._total.count += 1
    counter._total.value += payload_size

    # deltas = self.inter_arrival.compute_deltas(timestamp, arrival_time_ms, payload_size)
    inter_arrival = self.inter_arrival
    group = inter_arrival.current_group
    deltas = None
    if group is None:
        group = inter_arrival.current_group = aiortc.rate.TimestampGroup(timestamp)
        group.size += payload_size
        group.arrival_time = arrival_time_ms
    elif (timestamp - group.first_timestamp) & 0xFFFFFFFF < 0x80000000:  # not out of order
        timestamp_delta_ms = round(inter_arrival.timestamp_to_ms * ((timestamp - group.last_timestamp) & 0xFFFFFFFF))
        arrival_time_delta = arrival_time_ms - group.arrival_time
        in_burst = timestamp_delta_ms == 0 or (
            arrival_time_delta - timestamp_delta_ms < 0
            and arrival_time_delta <= aiortc.rate.BURST_DELTA_THRESHOLD_MS)
        if not in_burst and (timestamp - group.first_timestamp) & 0xFFFFFFFF > inter_arrival.group_length:
            previous = inter_arrival.previous_group
            if previous is not None:
                deltas = aiortc.rate.InterArrivalDelta(
                    timestamp=(group.last_timestamp - previous.last_timestamp) & 0xFFFFFFFF,
                    arrival_time=group.arrival_time - previous.arrival_time,
                    size=group.size - previous.size)
            inter_arrival.previous_group = group
            group = inter_arrival.current_group = aiortc.rate.TimestampGroup(timestamp=timestamp)
        elif uint32_gt(timestamp, group.last_timestamp):
            group.last_timestamp = timestamp
        group.size += payload_size
        group.arrival_time = arrival_time_ms

    if deltas is not None:
        timestamp_delta_ms_f = deltas.timestamp * aiortc.rate.TIMESTAMP_TO_MS
        self.estimator.update(deltas.arrival_time, timestamp_delta_ms_f, deltas.size, self.detector.state(),
                              arrival_time_ms)
        self.detector.detect(self.estimator.offset(), timestamp_delta_ms_f, self.estimator.num_of_deltas(),
                             arrival_time_ms)

    if (self.last_update_ms is None
            or arrival_time_ms - self.last_update_ms > self.rate_control.feedback_interval()
            or self.detector.state() == aiortc.rate.BandwidthUsage.OVERUSING):
        target_bitrate = self.rate_control.update(self.detector.state(), self.incoming_bitrate.rate(arrival_time_ms),
                                                  arrival_time_ms)
        if target_bitrate is not None:
            self.last_update_ms = arrival_time_ms
            return target_bitrate, list(self.ssrcs.keys())
    return None


_FAST: dict[tuple[Any, str], Any] = {
    (aioice.ice.StunProtocol, "datagram_received"): _datagram_received_fast,
    (_Dtls, "_recv_next"): _recv_next_fast,
    (_Dtls, "_handle_rtp_data"): _handle_rtp_data_fast,
    (_Receiver, "_handle_rtp_packet"): _handle_rtp_packet_fast,
    (_Receiver, "getSynchronizationSources"): _synchronization_sources_fast,
    (JitterBuffer, "_remove_frame"): _remove_frame_fast,
    (aiortc.rate.RateCounter, "_erase_old"): _erase_old_fast,
    (aiortc.rate.OveruseEstimator, "update_min_frame_period"): _update_min_frame_period_fast,
    (aiortc.rate.RemoteBitrateEstimator, "add"): _remb_add_fast,
}


def fast_path_supported() -> bool:
    """Whether the installed aiortc/aioice are the versions the fast path was written against."""
    return all(importlib.metadata.version(name) == version for name, version in FAST_PATH_VERSIONS.items())


def install_rtp_fast_path(enabled: bool) -> bool:
    """Process-wide: the fast RTP receive path on (True) or aiortc's own methods back (False), for peer connections
    and receivers created afterwards (and those existing: the methods are the classes'). Refuses (logs, returns
    False) on an aiortc/aioice version it was not written against. Returns whether the fast path is now on."""
    global _fast_path
    if enabled and not fast_path_supported():
        log.warning("RTP fast path not installed: written for %s, found aiortc %s / aioice %s", FAST_PATH_VERSIONS,
                    importlib.metadata.version("aiortc"), importlib.metadata.version("aioice"))
        enabled = False
    for (cls, name), original in _ORIGINALS.items():
        setattr(cls, name, _FAST[(cls, name)] if enabled else original)
    _fast_path = enabled
    return enabled


def rtp_fast_path_installed() -> bool:
    return _fast_path
