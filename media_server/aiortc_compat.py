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
import errno
import logging
import queue
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSctpTransport

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
