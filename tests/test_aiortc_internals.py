"""Behavioural drift test for media_server/aiortc_compat.py, the one module that reaches into aiortc, aioice and
asyncio internals (aiortc and aioice are pinned exactly because of it).

Each hook is driven through the real library, network-free, the way aiortc's own tests do it: real RTP packets
(VP8 encoded here) into a real RTCRtpReceiver over a pair of in-memory DTLS transports (real DTLS-SRTP, so the
RTCP the receiver sends is decrypted and routed on the other side), a real SCTP association over the same kind
of pair, real aioice candidate gathering, a real loopback UDP socket. If an upgrade renames or reshapes what a
hook relies on, the test for that hook fails instead of the archive silently receiving nothing.

Tests may touch aiortc's private names to set a receiver up as RTCPeerConnection would (`_track`,
`_set_rtcp_ssrc`, `_handle_rtp_packet`); media_server code may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import importlib.metadata
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from struct import pack
from typing import Any, cast

import av
import numpy as np
import pytest
from aioice import Connection
from aiortc import RTCDataChannel, RTCDataChannelParameters, RTCPeerConnection, RTCRtpReceiver, RTCSctpTransport
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import VpxPayloadDescriptor, vp8_depayload
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtcsctptransport import WEBRTC_DCEP, WEBRTC_STRING
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket, wrap_rtx

from core import vp8
from media_server import aiortc_compat, udp
from media_server.decode import DecodePool
from media_server.ice import RECEIVE_BUFFER_BYTES, enlarge_receive_buffers
from media_server.outlets import EncodedFrame
from media_server.stream import CandidateStream
from media_server.taps import tap_encoded, tap_loss

VP8_PT, RTX_PT = 100, 101
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=VP8_PT)
RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=RTX_PT, parameters={"apt": VP8_PT})
MEDIA_SSRC = 1234
RTX_SSRC = 2345
RTCP_SSRC = 5678
FIRST_TS = 1_234_567  # RTP time of the first frame; aiortc hands frames on counted from 0
FRAME_TS = 3000  # 30 fps at 90 kHz
WIDTH, HEIGHT = 320, 240


def test_pinned_versions() -> None:
    assert importlib.metadata.version("aiortc") == "1.16.0"
    assert importlib.metadata.version("aioice") == "0.13.0"


# --- in-memory DTLS transports (after aiortc's tests/utils.py) ---------------------------------------------


class _DummyConnection:
    def __init__(self, rx: asyncio.Queue[bytes | None], tx: asyncio.Queue[bytes | None]) -> None:
        self.rx, self.tx, self.closed = rx, tx, False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.rx.put(None)

    async def recv(self) -> bytes:
        data = None if self.closed else await self.rx.get()
        if data is None:
            raise ConnectionError
        return data

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError
        await self.tx.put(data)


class _DummyIceTransport:
    def __init__(self, connection: _DummyConnection, role: str) -> None:
        self._connection = connection
        self.role = role

    async def stop(self) -> None:
        await self._connection.close()

    async def _recv(self) -> bytes:
        return await self._connection.recv()

    async def _send(self, data: bytes) -> None:
        await self._connection.send(data)


@contextlib.asynccontextmanager
async def _dtls_pair() -> AsyncIterator[tuple[RTCDtlsTransport, RTCDtlsTransport]]:
    a: asyncio.Queue[bytes | None] = asyncio.Queue()
    b: asyncio.Queue[bytes | None] = asyncio.Queue()
    ice_a = cast(RTCIceTransport, _DummyIceTransport(_DummyConnection(a, b), "controlling"))
    ice_b = cast(RTCIceTransport, _DummyIceTransport(_DummyConnection(b, a), "controlled"))
    dtls_a = RTCDtlsTransport(ice_a, [RTCCertificate.generateCertificate()])
    dtls_b = RTCDtlsTransport(ice_b, [RTCCertificate.generateCertificate()])
    await asyncio.gather(dtls_b.start(dtls_a.getLocalParameters()), dtls_a.start(dtls_b.getLocalParameters()))
    try:
        yield dtls_a, dtls_b
    finally:
        await dtls_a.stop()
        await dtls_b.stop()


async def _until(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# --- a real receiver fed real VP8 ----------------------------------------------------------------------------


class _RtcpSink:
    """Registered as the RTP sender of `ssrc` on the far DTLS transport: receives the RTCP feedback (PLI, NACK,
    receiver reports) the receiver sends about that SSRC, after real SRTCP protection and routing."""

    def __init__(self, ssrc: int) -> None:
        self._ssrc = ssrc
        self.packets: list[Any] = []

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        self.packets.append(packet)

    def plis(self) -> list[int]:
        return [p.media_ssrc for p in self.packets if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI]


@contextlib.asynccontextmanager
async def _receiver() -> AsyncIterator[tuple[RTCRtpReceiver, _RtcpSink]]:
    """A started video receiver (VP8 with RTX) as RTCPeerConnection sets one up, and what its peer hears."""
    async with _dtls_pair() as (local, remote):
        sink = _RtcpSink(MEDIA_SSRC)
        remote._register_rtp_sender(sink, RTCRtpSendParameters())
        receiver = RTCRtpReceiver("video", local)
        receiver._track = RemoteStreamTrack(kind="video")
        receiver._set_rtcp_ssrc(RTCP_SSRC)
        try:
            yield receiver, sink
        finally:
            await receiver.stop()


async def _start(receiver: RTCRtpReceiver) -> None:
    """Start receiving (after the taps are installed, as in CandidateStream: on 'track', before media)."""
    await receiver.receive(RTCRtpReceiveParameters(
        codecs=[VP8, RTX],
        encodings=[RTCRtpDecodingParameters(ssrc=MEDIA_SSRC, payloadType=VP8_PT,
                                            rtx=RTCRtpRtxParameters(ssrc=RTX_SSRC))]))


def _vp8_frames(count: int) -> list[tuple[int, list[bytes]]]:
    """`count` real VP8 frames (a keyframe, then inter frames) as (RTP timestamp, RTP payloads)."""
    encoder = get_encoder(VP8)
    rng = np.random.default_rng(7)
    frames = []
    for i in range(count):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)  # noise: keyframe spans packets
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * FRAME_TS, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=i == 0)
        frames.append((FIRST_TS + timestamp, payloads))
    return frames


def _packets(frames: list[tuple[int, list[bytes]]], seq: int = 0) -> list[RtpPacket]:
    packets = []
    for timestamp, payloads in frames:
        for n, payload in enumerate(payloads):
            packets.append(RtpPacket(payload_type=VP8_PT, marker=int(n == len(payloads) - 1),
                                     sequence_number=seq % 65536, timestamp=timestamp, ssrc=MEDIA_SSRC,
                                     payload=payload))
            seq += 1
    return packets


def _copy(packet: RtpPacket) -> RtpPacket:
    return RtpPacket(payload_type=packet.payload_type, marker=packet.marker, sequence_number=packet.sequence_number,
                     timestamp=packet.timestamp, ssrc=packet.ssrc, payload=packet.payload)


async def _feed(receiver: RTCRtpReceiver, packets: list[RtpPacket]) -> None:
    for packet in packets:
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)


@pytest.fixture(scope="module")
def frames() -> list[tuple[int, list[bytes]]]:
    return _vp8_frames(5)


@pytest.mark.parametrize("decode", [False, True])
async def test_encoded_tap_gets_whole_frames_with_rtp_time(frames: list[tuple[int, list[bytes]]],
                                                            decode: bool) -> None:
    assert len(frames[0][1]) > 1  # the keyframe spans several packets: reassembly is exercised
    tapped: list[EncodedFrame] = []
    async with _receiver() as (receiver, _):
        tap_encoded(receiver, "video", tapped.append, decode=decode)
        await _start(receiver)
        await _feed(receiver, _packets(frames))
        track = receiver.track
        await receiver.stop()  # the decoder thread finishes what it was given, then the track ends
        decoded: Any
        try:
            decoded = await asyncio.wait_for(track.recv(), 10)
        except MediaStreamError:
            decoded = None

    # The jitter buffer emits a frame when the next one starts: all but the last.
    expected = [(ts - FIRST_TS, b"".join(vp8_depayload(p) for p in payloads)) for ts, payloads in frames[:-1]]
    assert [(f.timestamp, f.data) for f in tapped] == expected
    assert {(f.kind, f.codec, f.clock_rate) for f in tapped} == {("video", "VP8", 90000)}
    assert vp8.frame_size(tapped[0].data) == (WIDTH, HEIGHT)
    if decode:
        assert decoded is not None and (decoded.width, decoded.height) == (WIDTH, HEIGHT)
    else:
        assert decoded is None, "with decode=False a frame reached aiortc's decoder"


@pytest.mark.parametrize("jump", [600, -150], ids=["overflow", "misorder_reset"])
async def test_loss_fires_on_overflow_and_on_misorder_reset(frames: list[tuple[int, list[bytes]]], jump: int) -> None:
    """aiortc's JitterBuffer gives up on data in two places: smart_remove() when a packet lands a whole buffer
    (512) ahead, and remove(capacity) on a misorder reset (a packet >= 100 behind). Frames delivered normally
    (which also remove() their packets) are no loss."""
    losses: list[int] = []
    async with _receiver() as (receiver, sink):
        tap_loss(receiver, lambda: losses.append(1))
        await _start(receiver)
        packets = _packets(frames)
        await _feed(receiver, packets)
        assert losses == [], "frames delivered in order counted as loss"
        # The buffer now holds the last frame (complete once the next one starts). A late duplicate just
        # behind it is dropped by itself, not a reset.
        origin = len(packets) - len(frames[-1][1])
        await _feed(receiver, [_copy(packets[origin - 1])])
        assert losses == []
        await _feed(receiver, [RtpPacket(payload_type=VP8_PT, sequence_number=(origin + jump) % 65536,
                                         timestamp=frames[-1][0] + FRAME_TS, ssrc=MEDIA_SSRC,
                                         payload=frames[1][1][0])])
        assert losses == [1], "the jitter buffer threw packets away and no loss was reported"
        assert await _until(lambda: MEDIA_SSRC in sink.plis())  # aiortc asks for a keyframe itself too


@pytest.mark.parametrize("repaired", [False, True], ids=["lost", "repaired_in_time"])
async def test_a_gap_no_retransmission_fills_is_given_up_after_max_wait(repaired: bool) -> None:
    """aiortc's video JitterBuffer holds every frame behind a missing packet until 512 later packets arrived (~17 s
    at 30 packets/s; issue 19): give_up_stale_gaps drops the gap and what is held before it once the gap has waited
    max_wait_s, reports the loss (the next frame starts mid-frame) and asks for a keyframe. A gap filled in time
    (a NACK answered) is no loss."""
    frames = _vp8_frames(8)
    packets = _packets(frames)
    starts = [sum(len(p) for _, p in frames[:i]) for i in range(len(frames))]
    hole = starts[3]  # the first packet of frame 3
    now = [100.0]
    tapped: list[EncodedFrame] = []
    losses: list[int] = []
    async with _receiver() as (receiver, sink):
        tap_encoded(receiver, "video", tapped.append, decode=False)
        tap_loss(receiver, lambda: losses.append(1))
        aiortc_compat.give_up_stale_gaps(receiver, max_wait_s=1.0, clock=lambda: now[0])
        await _start(receiver)
        await _feed(receiver, packets[:hole])
        await _feed(receiver, packets[hole + 1:starts[5]])  # frame 3 but its first packet, frame 4: held
        assert len(tapped) == 2  # frames 0 and 1; frame 2 ends where frame 3 starts, which is missing
        now[0] += 0.9
        await _feed(receiver, [packets[starts[5]]])
        assert len(tapped) == 2 and losses == [], "a gap given up before max_wait_s"
        if repaired:
            await _feed(receiver, [_copy(packets[hole])])  # the retransmission, late but in time
        else:
            now[0] += 0.2
        await _feed(receiver, packets[starts[5] + 1:])
        index = {ts - FIRST_TS: i for i, (ts, _) in enumerate(frames)}
        delivered = [index[f.timestamp] for f in tapped]
        if repaired:
            assert losses == [] and delivered == [0, 1, 2, 3, 4, 5, 6]
            return
        assert losses == [1], "the gap was not given up after max_wait_s"
        assert await _until(lambda: MEDIA_SSRC in sink.plis())
        assert delivered == [0, 1, 3, 4, 5, 6]  # frame 2 held before the gap went with it
        assert tapped[2].data != b"".join(vp8_depayload(p) for p in frames[3][1])  # frame 3 partial: the loss


async def test_pli_and_stats_name_the_media_ssrc_not_rtx(frames: list[tuple[int, list[bytes]]]) -> None:
    """Through CandidateStream: request_keyframe() sends a PLI for the media SSRC although the RTX SSRC was heard
    first, and refresh_receiver_stats() tells the RTX stream's counts from the media stream's."""
    async def on_closed(stream: CandidateStream) -> None:
        pass

    pc = RTCPeerConnection()
    stream = CandidateStream("s", pc, base_s=0.0, on_closed=on_closed, decode_pool=DecodePool())
    try:
        async with _receiver() as (receiver, sink):
            await _start(receiver)
            packets = _packets(frames)
            rtx = wrap_rtx(packets[0], payload_type=RTX_PT, sequence_number=0, ssrc=RTX_SSRC)
            await _feed(receiver, [rtx, *packets])
            assert aiortc_compat.rtx_ssrcs(receiver) == {RTX_SSRC: MEDIA_SSRC}
            assert aiortc_compat.media_ssrcs(receiver) == [MEDIA_SSRC]

            stream.video_receiver = receiver
            assert await stream.request_keyframe()
            assert await _until(lambda: sink.plis() == [MEDIA_SSRC]), sink.packets

            await stream.refresh_receiver_stats()
            assert (stream.stats.packets_received, stream.stats.packets_lost, stream.stats.rtx_packets) == (
                len(packets), 0, 1)
            assert stream.stats.jitter_ms >= 0
            by_ssrc = {s.ssrc: s for s in aiortc_compat.receiver_stream_stats(receiver)}
            assert (by_ssrc[MEDIA_SSRC].rtx, by_ssrc[RTX_SSRC].rtx) == (False, True)
    finally:
        await pc.close()


# --- data channels ---------------------------------------------------------------------------------------------


async def test_hostile_data_channel_messages_are_counted_drops() -> None:
    """Non-UTF-8 text and a malformed DCEP open, sent by a real SCTP peer: aiortc's parsing raises on both, which
    would end the DTLS transport. Guarded, each is reported and the association carries on."""
    errors: list[Exception] = []
    async with _dtls_pair() as (client_dtls, server_dtls):
        client, server = RTCSctpTransport(client_dtls), RTCSctpTransport(server_dtls)
        assert aiortc_compat.guard_data_channel_receive(server, errors.append)
        assert not aiortc_compat.guard_data_channel_receive(server, errors.append)  # once per transport
        received: list[Any] = []
        server.on("datachannel", lambda ch: ch.on("message", received.append))
        try:
            await server.start(client.getCapabilities(), client.port)
            await client.start(server.getCapabilities(), server.port)
            channel = RTCDataChannel(client, RTCDataChannelParameters(label="signals"))
            assert await _until(lambda: channel.readyState == "open")

            # Text (PPID 51) that is not UTF-8, on the open channel.
            client._data_channel_queue.append((channel, WEBRTC_STRING, b"\xff\xfe not utf-8"))
            await client._data_channel_flush()
            # A channel-open whose label is not UTF-8, on a new stream.
            label = b"\xff\xfe"
            assert channel.id is not None
            await client._send(channel.id + 2, WEBRTC_DCEP, pack("!BBHLHH", 0x03, 0, 0, 0, len(label), 0) + label)
            channel.send("still here")

            assert await _until(lambda: received == ["still here"] or server_dtls.state == "closed")
            assert [type(e) for e in errors] == [UnicodeDecodeError, UnicodeDecodeError]
            assert (server.state, server_dtls.state) == ("connected", "connected")
        finally:
            await asyncio.wait_for(client.stop(), 5)
            await asyncio.wait_for(server.stop(), 5)


# --- aioice ------------------------------------------------------------------------------------------------------


async def test_host_addresses_are_added_to_what_aioice_gathers() -> None:
    """127.0.0.2 is on no interface (aioice would never offer it) but is a bindable loopback address."""
    previous = aiortc_compat.extra_host_addresses()
    aiortc_compat.install_host_addresses(("127.0.0.2",))
    connection = Connection(ice_controlling=True, use_ipv6=False)
    try:
        await connection.gather_candidates()
        hosts = {c.host for c in connection.local_candidates if c.type == "host"}
    finally:
        await connection.close()
        aiortc_compat.install_host_addresses(previous)
    assert "127.0.0.2" in hosts


async def test_receive_buffers_are_enlarged_on_the_gathered_sockets() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("signals")
        await pc.setLocalDescription(await pc.createOffer())
        sockets = aiortc_compat.ice_udp_sockets(pc)
        assert sockets and all(s.type == socket.SOCK_DGRAM for s in sockets)
        assert enlarge_receive_buffers(pc) == len(sockets)
        rmem_max = _rmem_max()
        for sock in sockets:  # Linux doubles the value asked for (bookkeeping), capped by net.core.rmem_max
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(RECEIVE_BUFFER_BYTES, rmem_max)
    finally:
        await pc.close()


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


# --- asyncio -----------------------------------------------------------------------------------------------------


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


async def test_batched_reads_drain_queued_datagrams_in_one_callback() -> None:
    """Datagrams already queued on a loopback socket: the loop runs the reader once per iteration between two
    of this task's steps, so the first time anything has arrived, it all has (the stock transport: one). On the
    suite's loop: uvloop (EVENT_LOOP's default) drains a socket per wake by itself, the patch applies to asyncio's."""
    udp.install_batched_reads()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Collect, local_addr=("127.0.0.1", 0))
    try:
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(8):
                sender.sendto(f"p{i}".encode(), address)
        for _ in range(1000):
            await asyncio.sleep(0)
            if protocol.received:
                break
        assert protocol.received == [f"p{i}".encode() for i in range(8)]
    finally:
        transport.close()


# --- VP8 temporal layers (issue 14: decode only the base layer) ------------------------------------------------
L1T3_PATTERN = [0, 2, 1, 2]  # the temporal layer of each frame in Chromium's L1T3 (libvpx), repeating


def _with_layer(payload: bytes, layer: int, tl0: int) -> bytes:
    """The same VP8 RTP payload with a descriptor marking its temporal layer (as a layering sender writes it)."""
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    marked = VpxPayloadDescriptor(descriptor.partition_start, descriptor.partition_id, descriptor.picture_id,
                                  tl0picidx=tl0 % 256, tid=(layer, 0))
    return bytes(marked) + data


@pytest.mark.parametrize("picture_id", [5, 300], ids=["7-bit", "15-bit"])
def test_temporal_layer_read_from_the_descriptor_aiortc_writes(picture_id: int) -> None:
    for layer in (0, 1, 2):
        descriptor = VpxPayloadDescriptor(1, 0, picture_id, tl0picidx=9, tid=(layer, 1))
        assert vp8.temporal_layer(bytes(descriptor) + b"\x10\x02") == layer
    assert vp8.temporal_layer(bytes(VpxPayloadDescriptor(1, 0, picture_id)) + b"\x10") is None  # no layers
    assert vp8.temporal_layer(b"\x10\x02\x00") is None  # no extension byte at all
    assert vp8.temporal_layer(b"\x90\xe0\x81") is None  # cut short: never an IndexError from the network
    assert vp8.temporal_layer(b"") is None


async def test_encoded_tap_reports_each_frames_temporal_layer(frames: list[tuple[int, list[bytes]]]) -> None:
    """aiortc strips the payload descriptor; the tap still gives each whole frame the layer its packets carried,
    and None for a sender that marks no layers (the existing tests' frames)."""
    layers = [L1T3_PATTERN[i % 4] for i in range(len(frames))]
    layered = [(ts, [_with_layer(p, layers[i], i // 4) for p in payloads]) for i, (ts, payloads) in enumerate(frames)]
    tapped: list[EncodedFrame] = []
    async with _receiver() as (receiver, _):
        tap_encoded(receiver, "video", tapped.append, decode=False)
        await _start(receiver)
        await _feed(receiver, _packets(layered))
        await receiver.stop()
    assert [f.temporal_layer for f in tapped] == layers[:-1]
    # The frame bytes are the same whatever the descriptor said.
    assert [f.data for f in tapped] == [b"".join(vp8_depayload(p) for p in payloads) for _, payloads in frames[:-1]]
    plain: list[EncodedFrame] = []
    async with _receiver() as (receiver, _):
        tap_encoded(receiver, "video", plain.append, decode=False)
        await _start(receiver)
        await _feed(receiver, _packets(frames))
        await receiver.stop()
    assert plain and all(f.temporal_layer is None for f in plain)
