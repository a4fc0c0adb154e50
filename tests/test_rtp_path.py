"""The RTP receive fast path (media_server/aiortc_compat.py, RTP_FAST_PATH) gives what aiortc gives.

Each replacement is run against aiortc's own method on the same scripted input, network-free: the same frames
(bytes, RTP time, temporal layer), the same statistics, the same NACK/PLI/REMB bytes, the same estimator and jitter
buffer state, the same parse errors. Last, two real peer connections on loopback (aioice, DTLS-SRTP, batched
reads) carry a replayed VP8 clip through the fast path and every frame arrives whole and in order.
"""

from __future__ import annotations

import asyncio
import copy
import fractions
import random
import struct
import types
from collections.abc import Callable, Iterator
from typing import Any

import aioice.ice
import aiortc.rate
import aiortc.rtcrtpreceiver
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.codecs import get_encoder, vp8_depayload
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import HeaderExtensionsMap, RtcpRrPacket, RtpPacket, wrap_rtx

from media_server import aiortc_compat
from media_server.ice import install_host_addresses
from media_server.outlets import EncodedFrame
from media_server.taps import tap_encoded, tap_loss
from media_server.udp import install_batched_reads

VP8_PT, RTX_PT = 100, 101
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=VP8_PT)
RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=RTX_PT, parameters={"apt": VP8_PT})
MEDIA_SSRC, RTX_SSRC, RTCP_SSRC = 1234, 2345, 5678
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TID_PATTERN = (0, 2, 1, 2)  # L1T3, as Chromium sends it


@pytest.fixture(autouse=True)
def _restore_fast_path() -> Iterator[None]:
    """The fast path is process-wide: leave it as this test found it."""
    before = aiortc_compat.rtp_fast_path_installed()
    yield
    aiortc_compat.install_rtp_fast_path(before)


def _both(run: Callable[[], Any]) -> tuple[Any, Any]:
    """`run()` with aiortc's methods, then with the fast path."""
    assert aiortc_compat.fast_path_supported()
    aiortc_compat.install_rtp_fast_path(False)
    slow = run()
    assert aiortc_compat.install_rtp_fast_path(True)
    return slow, run()


def _state(obj: Any, depth: int = 0) -> Any:
    """Everything an object holds, as comparable plain values (enums and numbers as they are)."""
    if depth > 6:
        return repr(obj)
    if isinstance(obj, list | tuple):
        return [_state(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {k: _state(v, depth + 1) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {k: _state(v, depth + 1) for k, v in vars(obj).items()}
    return obj


def test_fast_path_refuses_a_version_it_was_not_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert aiortc_compat.install_rtp_fast_path(True)
    assert RTCRtpReceiver._handle_rtp_packet is aiortc_compat._handle_rtp_packet_fast
    monkeypatch.setitem(aiortc_compat.FAST_PATH_VERSIONS, "aiortc", "1.17.0")
    assert aiortc_compat.install_rtp_fast_path(True) is False
    assert not aiortc_compat.rtp_fast_path_installed()
    for (cls, name), original in aiortc_compat._ORIGINALS.items():
        assert getattr(cls, name) is original, name


# --- the bandwidth estimator (REMB) ----------------------------------------------------------------------------


def _arrivals(seed: int) -> list[tuple[int, int, int, int]]:
    """(arrival ms, abs-send-time, size, ssrc): 30 fps frames of 1-8 packets, jitter, bursts, reordering, a 1.5 s
    stall, a wall-clock step back, the 24-bit abs-send-time wrap (64 s) and a second SSRC (RTX)."""
    rng = random.Random(seed)
    out = []
    now = 1_000_000
    send = (1 << 24) - 200_000  # wraps after ~0.8 s
    for frame in range(900):
        packets = rng.randint(1, 8)
        for i in range(packets):
            size = rng.randint(200, 1200)
            ssrc = RTX_SSRC if rng.random() < 0.03 else MEDIA_SSRC
            ast = (send + i * 20) & 0xFFFFFF
            if rng.random() < 0.02:
                ast = (ast - 3000) & 0xFFFFFF  # out of order
            out.append((now + rng.randint(0, 3), ast, size, ssrc))
        step = rng.choice([33, 33, 33, 30, 36, 5, 4, 6, 2, 70])  # late frames arrive in bursts
        if frame == 400:
            step = 1500  # a stall: the incoming rate empties and restarts
        if frame == 600:
            step = -40  # the wall clock stepped back
        now += step
        send = (send + 33 * 262) & 0xFFFFFF  # 1 ms = 262.144 abs-send-time units
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_remb_estimator_gives_the_same_estimates_and_state(seed: int) -> None:
    arrivals = _arrivals(seed)

    def run() -> list[Any]:
        estimator = aiortc.rate.RemoteBitrateEstimator()
        steps = []
        for i, (now, ast, size, ssrc) in enumerate(arrivals):
            result = estimator.add(arrival_time_ms=now, abs_send_time=ast, payload_size=size, ssrc=ssrc)
            steps.append((result, estimator.detector.state(), estimator.estimator.offset(),
                          estimator.incoming_bitrate._total.value))
            if i % 401 == 0:
                steps.append(_state(estimator))
        steps.append(_state(estimator))
        return steps

    slow, fast = _both(run)
    assert sum(1 for s in slow if isinstance(s, tuple) and s[0] is not None) > 20, "too few REMBs to compare"
    assert fast == slow


def test_rate_counter_erases_the_same_buckets() -> None:
    rng = random.Random(3)

    def run() -> list[Any]:
        counter = aiortc.rate.RateCounter(1000, 8000)
        now, out = 10_000, []
        for _ in range(3000):
            now += rng.choice([0, 1, 3, 8, 33, 200, 999, 1000, 1001, 2500, -5])
            counter.add(rng.randint(1, 1500), now)
            out.append((counter.rate(now), counter._origin_index, counter._origin_ms, _state(counter._total)))
        return out + [[(b.count, b.value) for b in counter._buckets]]

    aiortc_compat.install_rtp_fast_path(False)
    rng.seed(3)
    slow = run()
    assert aiortc_compat.install_rtp_fast_path(True)
    rng.seed(3)
    assert run() == slow


# --- the jitter buffer ---------------------------------------------------------------------------------------


def _jitter_script(seed: int, count: int) -> list[RtpPacket]:
    """Packets of frames 1-6 packets long with loss, reordering, duplicates and a sequence-number wrap."""
    rng = random.Random(seed)
    packets = []
    seq, ts = 65_000, 4_000_000_000
    for _ in range(count):
        for _ in range(rng.randint(1, 6)):
            packet = RtpPacket(payload_type=VP8_PT, sequence_number=seq % 65536, timestamp=ts % (1 << 32),
                               ssrc=MEDIA_SSRC, payload=rng.randbytes(8))
            packet._data = packet.payload  # type: ignore[attr-defined]
            packets.append(packet)
            seq += 1
        ts += 3000
    out: list[RtpPacket] = []
    for packet in packets:
        roll = rng.random()
        if roll < 0.05:
            continue  # lost
        if roll < 0.08 and out:
            out.insert(len(out) - rng.randint(1, min(5, len(out))), packet)  # late
        elif roll < 0.10:
            out += [packet, packet]  # duplicated
        else:
            out.append(packet)
    return out


@pytest.mark.parametrize(("capacity", "prefetch", "video"), [(512, 0, True), (16, 4, False), (128, 0, True)])
def test_jitter_buffer_assembles_the_same_frames(capacity: int, prefetch: int, video: bool) -> None:
    script = _jitter_script(capacity, 3000)
    script += [copy.copy(script[-1]) for _ in range(2)]
    script[-1].sequence_number = (script[-1].sequence_number + 700) % 65536  # overflow: smart_remove
    script.insert(len(script) // 2, copy.copy(script[len(script) // 2]))
    script[len(script) // 2].sequence_number = (script[len(script) // 2].sequence_number - 300) % 65536  # reset

    def run() -> list[Any]:
        jitter = JitterBuffer(capacity=capacity, prefetch=prefetch, is_video=video)
        out = []
        for packet in script:
            pli, frame = jitter.add(packet)
            out.append((pli, None if frame is None else (frame.data, frame.timestamp), jitter._origin,
                        [p.sequence_number if p is not None else None for p in jitter._packets]))
        return out

    slow, fast = _both(run)
    assert sum(1 for s in slow if s[1] is not None) > 100
    assert fast == slow


# --- parsing -------------------------------------------------------------------------------------------------


def _outcome(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return ("ok", _state(call(*args)))
    except Exception as exc:  # the same exception type and message
        return ("error", type(exc).__name__, str(exc))


def _descriptors() -> list[bytes]:
    rng = random.Random(5)
    out = [b"", b"\x80", b"\x90\x80", b"\x90\x80\x80", b"\x90\x40", b"\x90\x20", b"\x90\x10", b"\x10abc"]
    for _ in range(400):
        descriptor = VpxPayloadDescriptor(
            partition_start=rng.randint(0, 1), partition_id=rng.randint(0, 7),
            picture_id=rng.choice([None, rng.randint(0, 127), rng.randint(128, 32767)]),
            tl0picidx=rng.choice([None, rng.randint(0, 255)]),
            tid=rng.choice([None, (rng.randint(0, 3), rng.randint(0, 1))]),
            keyidx=rng.choice([None, rng.randint(0, 31)]))
        head = bytes(descriptor)
        out += [head + rng.randbytes(rng.randint(0, 20)), head[:rng.randint(0, len(head))]]
    return out


def test_vp8_depayload_strips_the_same_descriptor() -> None:
    for payload in _descriptors():
        assert _outcome(aiortc_compat._vp8_depayload_fast, payload) == _outcome(vp8_depayload, payload)


def _rtp_datagrams() -> tuple[list[bytes], HeaderExtensionsMap]:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri=ABS_SEND_TIME),
        RTCRtpHeaderExtensionParameters(id=5, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")]))
    rng = random.Random(9)
    out = []
    for i in range(300):
        packet = RtpPacket(payload_type=rng.randint(0, 127), marker=rng.randint(0, 1),
                           sequence_number=i * 211 % 65536, timestamp=rng.getrandbits(32), ssrc=rng.getrandbits(32),
                           payload=rng.randbytes(rng.randint(0, 40)))
        packet.csrc = [rng.getrandbits(32) for _ in range(rng.choice([0, 0, 0, 2]))]
        if rng.random() < 0.7:
            packet.extensions.abs_send_time = rng.getrandbits(24)
        if rng.random() < 0.3:
            packet.extensions.mid = str(rng.randint(0, 9))
        if rng.random() < 0.3:
            packet.extensions.audio_level = (bool(rng.randint(0, 1)), rng.randint(0, 127))
        if rng.random() < 0.2:
            packet.padding_size = rng.randint(1, 8)
        data = packet.serialize(extensions)
        out.append(data)
        out.append(data[:rng.randint(0, len(data))])  # truncated anywhere
    out += [b"\x00" * 12, b"\x90\x60" + bytes(10) + b"\xbe\xde\x00\x05", b"\xa0" + bytes(11) + b"\x00"]
    return out, extensions


def test_rtp_parse_gives_the_same_packets_and_errors() -> None:
    datagrams, extensions = _rtp_datagrams()
    outcomes = [(_outcome(RtpPacket.parse, d, extensions), _outcome(aiortc_compat._parse_rtp_fast, d, extensions))
                for d in datagrams]
    assert sum(1 for slow, _ in outcomes if slow[0] == "ok") > 250
    assert sum(1 for slow, _ in outcomes if slow[0] == "error") > 50
    for slow, fast in outcomes:
        assert fast == slow


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.calls.append(("data", data, component))

    def request_received(self, message: Any, addr: Any, protocol: Any) -> None:
        self.calls.append(("request", message.transaction_id, addr))


async def test_stun_demux_hands_on_the_same_datagrams() -> None:  # aioice makes a future: needs a loop
    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    datagrams = [bytes(request), bytes(response), b"\x16\xfe\xfd" + bytes(30), b"\x80\x60" + bytes(30),
                 b"\x80\x60\x00\x0a" + bytes(26), b"\x02" + bytes(5), b"\x02\x01\x00\x00" + bytes(16), b"\x03",
                 b"\xff\x01", b"\x40" + bytes(40)]

    def run() -> list[Any]:
        recorder = _Recorder()
        protocol = aioice.ice.StunProtocol(recorder)  # type: ignore[arg-type]
        protocol.local_candidate = types.SimpleNamespace(component=1)  # type: ignore[assignment]
        for data in datagrams:
            protocol.datagram_received(data, ("127.0.0.1", 5000, 0, 0))
        return recorder.calls

    slow, fast = _both(run)
    assert [c[0] for c in slow].count("data") == 8 and [c[0] for c in slow].count("request") == 1
    assert fast == slow


# --- a receiver, as the node wires it, on a scripted loss pattern -----------------------------------------------


class _Transport:
    """What an RTCRtpReceiver needs of its DTLS transport when nothing is sent (its RTCP is captured instead)."""

    state = "connected"
    _stats_id = "transport"

    def _register_rtp_receiver(self, receiver: Any, parameters: Any) -> None:
        pass

    def _unregister_rtp_receiver(self, receiver: Any) -> None:
        pass


def _layered_payloads(data: bytes, picture_id: int, layer: int, tl0: int, size: int) -> list[bytes]:
    out = []
    for pos in range(0, len(data), size):
        head = VpxPayloadDescriptor(partition_start=int(pos == 0), partition_id=0, picture_id=picture_id,
                                    tl0picidx=tl0, tid=(layer, 0))
        out.append(bytes(head) + data[pos:pos + size])
    return out


def _vp8_stream(frames: int) -> list[tuple[int, list[bytes]]]:
    """Real VP8 frames (small, so keyframes span several packets) as (RTP time, payloads with TID/TL0PICIDX)."""
    encoder = get_encoder(VP8)
    rng = np.random.default_rng(11)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    out = []
    tl0 = 0
    for i in range(frames):
        image = np.roll(base, i * 3, axis=1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=i % 40 == 0)
        data = b"".join(vp8_depayload(p) for p in payloads)
        layer = 0 if i % 40 == 0 else TID_PATTERN[i % 4]
        tl0 += layer == 0
        out.append((timestamp, _layered_payloads(data, i % 32768, layer, tl0 % 256, 300)))
    return out


def _scripted_packets(stream: list[tuple[int, list[bytes]]]) -> list[tuple[RtpPacket, int]]:
    """(packet, arrival ms): media with loss (some repaired by RTX later, some never), reordering, duplicates,
    a stall, a sequence-number wrap, an abs-send-time wrap; RTX padding (probing) on the RTX SSRC."""
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=3, uri=ABS_SEND_TIME)]))
    rng = random.Random(21)
    media: list[tuple[RtpPacket, int]] = []
    seq, now, send = 65_300, 50_000, (1 << 24) - 40_000
    for frame_index, (timestamp, payloads) in enumerate(stream):
        for n, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=VP8_PT, marker=int(n == len(payloads) - 1), sequence_number=seq % 65536,
                               timestamp=(timestamp + 3_000_000_000) % (1 << 32), ssrc=MEDIA_SSRC, payload=payload)
            packet.extensions.abs_send_time = (send + n * 30) & 0xFFFFFF
            media.append((RtpPacket.parse(packet.serialize(extensions), extensions), now + rng.randint(0, 4)))
            seq += 1
        now += 2000 if frame_index == 150 else 33
        send = (send + 33 * 262) & 0xFFFFFF
    out: list[tuple[RtpPacket, int]] = []
    rtx_seq = 100
    pending: list[tuple[int, RtpPacket]] = []  # (deliver after this many packets, RTX copy)
    for i, (packet, arrival) in enumerate(media):
        roll = rng.random()
        if roll < 0.04:
            pending.append((i + rng.randint(2, 12), wrap_rtx(packet, payload_type=RTX_PT, sequence_number=rtx_seq,
                                                              ssrc=RTX_SSRC)))
            rtx_seq += 1
        elif roll < 0.06:
            pass  # lost for good
        elif roll < 0.08 and out:
            out.insert(len(out) - 1, (packet, arrival))  # one place late
        elif roll < 0.09:
            out += [(packet, arrival), (packet, arrival)]
        else:
            out.append((packet, arrival))
        for due, rtx in [p for p in pending if p[0] <= i]:
            pending.remove((due, rtx))
            out.append((rtx, arrival + 1))
        if i % 50 == 0:
            padding = RtpPacket(payload_type=RTX_PT, sequence_number=rtx_seq, timestamp=0, ssrc=RTX_SSRC, payload=b"")
            padding.padding_size = 200
            padding.extensions.abs_send_time = send
            out.append((padding, arrival + 2))
            rtx_seq += 1
    return out


async def _receive(script: list[tuple[RtpPacket, int]], monkeypatch: pytest.MonkeyPatch,
                   direct: bool = False) -> dict[str, Any]:
    """Feed the script into a video receiver wired as media_server/stream.py wires the webcam's. `direct`: as the
    fast path's direct dispatch does (aiortc_compat._receive_now): the packet handled without awaiting, its RTCP
    sent from a task."""
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "time", types.SimpleNamespace(time=lambda: clock.now))
    receiver = RTCRtpReceiver("video", _Transport())  # type: ignore[arg-type]
    receiver._track = RemoteStreamTrack(kind="video")
    receiver._set_rtcp_ssrc(RTCP_SSRC)
    rtcp: list[bytes] = []

    async def send_rtcp(packet: Any) -> None:
        if not isinstance(packet, RtcpRrPacket):  # receiver reports go out on a random timer: compared as stats
            rtcp.append(bytes(packet))

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
    frames: list[EncodedFrame] = []
    losses: list[float] = []
    tap_encoded(receiver, "video", frames.append, decode=False)
    tap_loss(receiver, lambda: losses.append(clock.now))
    aiortc_compat.give_up_stale_gaps(receiver, 1.0, clock=lambda: clock.now)
    await receiver.receive(RTCRtpReceiveParameters(codecs=[VP8, RTX], encodings=[
        RTCRtpDecodingParameters(ssrc=MEDIA_SSRC, payloadType=VP8_PT, rtx=RTCRtpRtxParameters(ssrc=RTX_SSRC))]))
    try:
        sending: list[asyncio.Task[None]] = []
        for packet, arrival in script:
            clock.now = arrival / 1000
            if direct:
                sends = aiortc_compat._rtp_packet_now(receiver, copy.copy(packet), arrival)
                if sends:
                    sending.append(asyncio.get_running_loop().create_task(aiortc_compat._send_in_order(sends)))
            else:
                await receiver._handle_rtp_packet(copy.copy(packet), arrival_time_ms=arrival)
        await asyncio.gather(*sending)
        stats = [(s.ssrc, s.rtx, s.packets_received, s.packets_lost, s.jitter)
                 for s in aiortc_compat.receiver_stream_stats(receiver)]
        streams = getattr(receiver, aiortc_compat._REMOTE_STREAMS)
        fractions_lost = {ssrc: s.fraction_lost for ssrc, s in streams.items()}
        return {"frames": [(f.timestamp, f.data, f.temporal_layer) for f in frames], "losses": losses,
                "rtcp": rtcp, "stats": stats, "fraction_lost": fractions_lost,
                "sources": sorted(s.source for s in receiver.getSynchronizationSources()),
                "media": aiortc_compat.media_ssrcs(receiver)}
    finally:
        await receiver.stop()


async def test_receiver_gives_the_same_frames_stats_and_rtcp(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _vp8_stream(240)
    script = _scripted_packets(stream)
    aiortc_compat.install_rtp_fast_path(False)
    slow = await _receive(script, monkeypatch)
    assert aiortc_compat.install_rtp_fast_path(True)
    fast = await _receive(script, monkeypatch)
    direct = await _receive(script, monkeypatch, direct=True)

    # The script exercises what it should: NACKs, PLIs and REMBs sent, frames lost and given up, layers seen.
    kinds = [struct.unpack_from("!BB", p) for p in slow["rtcp"]]
    assert (0x81, 205) in kinds, "no NACK"  # RTPFB, FMT 1
    assert (0x81, 206) in kinds, "no PLI"  # PSFB, FMT 1
    assert (0x8F, 206) in kinds, "no REMB"  # PSFB, FMT 15
    assert slow["losses"], "nothing given up"
    assert {layer for _, _, layer in slow["frames"]} == {0, 1, 2}
    assert len(slow["frames"]) > 120
    assert slow["sources"] == [MEDIA_SSRC, RTX_SSRC] and slow["media"] == [MEDIA_SSRC]

    for key in slow:
        assert fast[key] == slow[key], key
        assert direct[key] == slow[key], key


# --- end to end: real peer connections on loopback ------------------------------------------------------------


class _Replay(aiortc.MediaStreamTrack):
    kind = "video"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self._packets = packets
        self._index = 0

    async def recv(self) -> av.Packet:
        await asyncio.sleep(1 / 30)
        if self._index >= len(self._packets):
            await asyncio.sleep(3600)
        packet = av.Packet(self._packets[self._index])
        packet.pts, packet.time_base = self._index * 3000, fractions.Fraction(1, 90000)
        self._index += 1
        return packet


async def test_loopback_peer_connection_delivers_every_frame_through_the_fast_path() -> None:
    """Two real RTCPeerConnections on 127.0.0.1 (aioice, DTLS-SRTP, batched reads): the receiving side on the fast
    path gets the sender's frames whole, in order, with its RTP times, and its statistics count every packet;
    the packets took the direct dispatch."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base, encoder.bit_rate, encoder.gop_size = fractions.Fraction(1, 30), 600_000, 30
    encoder.options = {"deadline": "realtime", "lag-in-frames": "0"}
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    clip: list[bytes] = []
    for i in range(45):
        frame = av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        clip += [bytes(p) for p in encoder.encode(frame)]
    clip += [bytes(p) for p in encoder.encode(None)]

    install_host_addresses(("127.0.0.1",))
    install_batched_reads()
    assert aiortc_compat.install_rtp_fast_path(True)
    sender, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    frames: list[EncodedFrame] = []
    done = asyncio.Event()
    midway: list[int] = []  # direct packets and received RTP packets when the 15th frame arrived

    def on_frame(frame: EncodedFrame) -> None:
        frames.append(frame)
        if len(frames) == 15:
            receiver = receiver_pc.getTransceivers()[0].receiver
            midway[:] = [aiortc_compat.direct_packets,
                         sum(s.packets_received for s in aiortc_compat.receiver_stream_stats(receiver) if not s.rtx)]
        if len(frames) >= len(clip) - 1:
            done.set()

    @receiver_pc.on("track")
    def on_track(track: Any) -> None:
        receiver = next(t.receiver for t in receiver_pc.getTransceivers() if t.receiver.track is track)
        tap_encoded(receiver, "video", on_frame, decode=False)

    try:
        sender.addTrack(_Replay(clip))
        await sender.setLocalDescription(await sender.createOffer())
        await receiver_pc.setRemoteDescription(sender.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender.setRemoteDescription(RTCSessionDescription(sdp=receiver_pc.localDescription.sdp, type="answer"))
        await asyncio.wait_for(done.wait(), 60)
        receiver = receiver_pc.getTransceivers()[0].receiver
        stats = aiortc_compat.receiver_stream_stats(receiver)
    finally:
        await sender.close()
        await receiver_pc.close()

    # The jitter buffer hands a frame on when the next one starts: all but the last, exactly as encoded.
    assert [f.data for f in frames[:len(clip) - 1]] == clip[:len(clip) - 1]
    assert [f.timestamp for f in frames[:len(clip) - 1]] == [i * 3000 for i in range(len(clip) - 1)]
    received = sum(s.packets_received for s in stats if not s.rtx)
    assert received >= sum(1 for _ in clip[:-1])
    assert all(s.packets_lost <= 0 for s in stats)
    # Once running, RTP goes straight from the socket's callback to the receiver (aiortc_compat._receive_now), but
    # for datagrams read while one was still queued (the packets that came before the receiver's DTLS was up, and
    # after a queued RTCP packet, those read in the same wake).
    direct, received_then = midway
    assert aiortc_compat.direct_packets - direct >= 0.5 * (received - received_then) > 0
