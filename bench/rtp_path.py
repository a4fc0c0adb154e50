"""CPU cost of a media node's RTP receive path, per packet and per stream-second, with and without the fast path.

    .venv/bin/python -m bench.rtp_path [--streams 4] [--seconds 10] [--fast-path both|on|off] [--profile FILE]

What is measured: real aiortc peer connections on loopback UDP, set up as the node sets them up (batched UDP reads,
127.0.0.1 host candidates, recvonly answer, the encoded taps with decode=False, the loss tap and the stale-gap
give-up on the webcam, a data channel). The senders are aiortc peer connections in a SUBPROCESS replaying a
pre-encoded clip (bench/synthetic.py: 640x480 VP8, by default 30 fps at 1 Mbit/s in L1T3 temporal layers as
Chromium sends them, as the figures recorded since the fast path; `--fps 15 --video-kbps 667 --layers L1T2` is what
the page asks for now; 20 ms Opus), so their CPU is not ours: the figure is the receiving event loop thread's CPU
time (time.thread_time in that thread) over a window after warm-up, divided by the RTP packets that arrived in it.
That thread runs everything the node does per packet: the datagram read, ICE demux, SRTP unprotect, RTP parse,
the receiver's statistics, NACK generator, bandwidth estimator, RTCP, jitter buffer and our taps.

`--fast-path both` (the default) runs the phases off, on, off, on in one run (same machine state, same sender),
and prints the ratio. `--loop both` runs the receiver on the standard library's event loop and on uvloop
(EVENT_LOOP), asyncio, uvloop, asyncio, uvloop, each with a fresh sender, and prints that ratio (use it with
`--fast-path on` or `off`). Nothing here needs a network; the machine's CPU model is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_BITRATE = 1_000_000
CLIP_S = 10


# --- sender (subprocess) -----------------------------------------------------------------------------------


async def _sender(clip_path: Path) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from bench.synthetic import AUDIO_TB, VIDEO_TB, ReplayTrack, _video_start, install_layered_packetizer
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    clip = pickle.loads(await asyncio.to_thread(clip_path.read_bytes))
    if clip.layers is not None:
        install_layered_packetizer()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pcs: list[RTCPeerConnection] = []

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "offer":
            pc = RTCPeerConnection()
            start = _video_start(clip, len(pcs))
            pc.addTrack(ReplayTrack("video", [d for d, _ in clip.video], 1 / clip.fps, 90_000 // clip.fps,
                                    VIDEO_TB, start, clip.layers))
            pc.addTrack(ReplayTrack("audio", clip.audio, 0.02, 960, AUDIO_TB))
            pc.createDataChannel("signals")
            await pc.setLocalDescription(await pc.createOffer())
            pcs.append(pc)
            reply({"sdp": pc.localDescription.sdp, "type": "offer"})
        elif command["cmd"] == "answer":
            await pcs[-1].setRemoteDescription(RTCSessionDescription(sdp=command["sdp"], type="answer"))
            reply({"ok": True})
        elif command["cmd"] == "close":
            await asyncio.gather(*(pc.close() for pc in pcs))
            pcs.clear()
            reply({"ok": True})
        elif command["cmd"] == "exit":
            break


# --- receiver (this process) -------------------------------------------------------------------------------


@dataclass
class _Counts:
    video_frames: int = 0
    video_bytes: int = 0
    audio_frames: int = 0
    keyframes: int = 0
    losses: int = 0
    layers: dict[int | None, int] = field(default_factory=dict)


class _Sender:
    """The sender subprocess, driven over its stdin/stdout."""

    def __init__(self, clip_path: Path) -> None:
        self.clip_path = clip_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.rtp_path", "--sender", str(self.clip_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the sender subprocess ended")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "exit"}\n')
            await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def cpu_s(self) -> float:
        import psutil

        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)


async def _connect(sender: _Sender, counts: _Counts) -> Any:
    """One receiving peer connection, wired as media_server/stream.py wires a candidate's."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from media_server import aiortc_compat
    from media_server.outlets import EncodedFrame
    from media_server.taps import tap_encoded, tap_loss

    offer = await sender.ask({"cmd": "offer"})
    pc = RTCPeerConnection()

    def on_video(frame: EncodedFrame) -> None:
        counts.video_frames += 1
        counts.video_bytes += len(frame.data)
        counts.keyframes += frame.data[0] & 1 == 0
        counts.layers[frame.temporal_layer] = counts.layers.get(frame.temporal_layer, 0) + 1

    def on_audio(frame: EncodedFrame) -> None:
        counts.audio_frames += 1

    def on_loss() -> None:
        counts.losses += 1

    @pc.on("track")
    def on_track(track: Any) -> None:
        receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
        if track.kind == "video":
            tap_encoded(receiver, "video", on_video, decode=False)
            tap_loss(receiver, on_loss)
            aiortc_compat.give_up_stale_gaps(receiver, 1.0)
        else:
            tap_encoded(receiver, "audio", on_audio, decode=False)

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    if pc.sctp is not None:
        aiortc_compat.guard_data_channel_receive(pc.sctp, lambda exc: None)
    for transceiver in pc.getTransceivers():
        transceiver.direction = "recvonly"
    await pc.setLocalDescription(await pc.createAnswer())
    await sender.ask({"cmd": "answer", "sdp": pc.localDescription.sdp})
    return pc


async def _rtp_packets(pcs: list[Any]) -> int:
    from media_server import aiortc_compat

    total = 0
    for pc in pcs:
        for transceiver in pc.getTransceivers():
            total += sum(s.packets_received for s in aiortc_compat.receiver_stream_stats(transceiver.receiver))
    return total


@dataclass
class PhaseResult:
    loop: str
    fast_path: bool
    streams: int
    seconds: float
    packets: int
    loop_cpu_s: float
    process_cpu_s: float
    sender_cpu_s: float
    counts: _Counts

    @property
    def us_per_packet(self) -> float:
        return self.loop_cpu_s * 1e6 / max(1, self.packets)

    @property
    def ms_per_stream_s(self) -> float:
        return self.loop_cpu_s * 1000 / (self.streams * self.seconds)

    def line(self) -> str:
        c = self.counts
        return (f"{self.loop:7} fast path {'on ' if self.fast_path else 'off'}: {self.us_per_packet:6.1f} us/packet, "
                f"{self.ms_per_stream_s:5.2f} ms CPU per stream-second (loop thread; process "
                f"{self.process_cpu_s * 1000 / (self.streams * self.seconds):5.2f}, sender "
                f"{self.sender_cpu_s * 1000 / (self.streams * self.seconds):5.2f}); "
                f"{self.packets / (self.streams * self.seconds):5.1f} packets/s per stream; frames "
                f"{c.video_frames} video ({c.keyframes} key) {c.audio_frames} audio, layers "
                f"{dict(sorted(c.layers.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))}, "
                f"losses {c.losses}")


async def _phase(sender: _Sender, fast_path: bool, streams: int, seconds: float, warmup_s: float,
                 profiler: cProfile.Profile | None) -> PhaseResult:
    from media_server import aiortc_compat
    from proctor.loop import loop_name

    aiortc_compat.install_rtp_fast_path(fast_path)
    counts = _Counts()
    pcs = [await _connect(sender, counts) for _ in range(streams)]
    deadline = time.monotonic() + 30
    while counts.video_frames < streams * 10 and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll)
        await asyncio.sleep(0.1)
    if counts.video_frames < streams * 10:
        raise RuntimeError(f"media did not arrive ({counts.video_frames} frames)")
    await asyncio.sleep(warmup_s)
    counts.__init__()  # type: ignore[misc]
    packets0 = await _rtp_packets(pcs)
    sender0 = sender.cpu_s()
    process0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    loop0 = time.thread_time()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    loop_cpu = time.thread_time() - loop0
    elapsed = time.monotonic() - started
    if profiler is not None:
        profiler.disable()
    result = PhaseResult(loop_name(asyncio.get_running_loop()), fast_path, streams, elapsed,
                         await _rtp_packets(pcs) - packets0, loop_cpu,
                         time.process_time() - process0, sender.cpu_s() - sender0, counts)
    await asyncio.gather(*(pc.close() for pc in pcs))
    await sender.ask({"cmd": "close"})
    return result


# --- micro: the receiver stage alone, no sockets -------------------------------------------------------------


def _micro_packets(clip: Any) -> tuple[list[tuple[bytes, int]], tuple[bytes, int], Any]:
    """The clip as the receiver sees it: RTP datagrams (SRTP-protected) of VP8 (L1T3, as Chromium marks it) and Opus
    with abs-send-time, each with its arrival time in ms (30 fps, 50 Opus packets a second, packets of a frame
    1 ms apart), and the receiving SRTP session and header extension map."""
    import os as _os

    import av
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket
    from pylibsrtp import Policy, Session

    from bench.synthetic import VIDEO_TB, install_layered_packetizer

    install_layered_packetizer()
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(
        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    key = _os.urandom(44)
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM  # what aiortc and Chromium negotiate first
    tx = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    video_encoder = get_encoder(_micro_codecs()[0])
    timeline: list[tuple[int, int, RtpPacket]] = []  # (arrival ms, order, packet)
    seq = 0
    for i, (data, _) in enumerate(clip.video):
        packet = av.Packet(data)
        packet.opaque = clip.layers[i] if clip.layers is not None else None
        packet.pts, packet.time_base = i * 3000, VIDEO_TB
        payloads, timestamp = video_encoder.pack(packet)
        for n, payload in enumerate(payloads):
            rtp = RtpPacket(payload_type=96, marker=int(n == len(payloads) - 1), sequence_number=seq % 65536,
                            timestamp=timestamp, ssrc=1111, payload=payload)
            arrival = i * 1000 // 30 + n
            rtp.extensions.abs_send_time = (arrival * 262) & 0xFFFFFF
            timeline.append((arrival, len(timeline), rtp))
            seq += 1
    for i, data in enumerate(clip.audio[:len(clip.video) * 50 // clip.fps]):  # as long as the video
        rtp = RtpPacket(payload_type=111, sequence_number=i % 65536, timestamp=i * 960, ssrc=2222, payload=data)
        rtp.extensions.abs_send_time = (i * 20 * 262) & 0xFFFFFF
        timeline.append((i * 20, len(timeline), rtp))
    timeline.sort(key=lambda t: (t[0], t[1]))
    return [(tx.protect(p.serialize(extensions)), arrival) for arrival, _, p in timeline], (key, profile), extensions


def _micro_codecs() -> tuple[Any, Any]:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    return (RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
            RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111))


class _NoTransport:
    state = "connected"
    _stats_id = "micro"

    def _register_rtp_receiver(self, receiver: Any, parameters: Any) -> None:
        pass

    def _unregister_rtp_receiver(self, receiver: Any) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        pass


async def _micro_lap(datagrams: list[tuple[bytes, int]], srtp: tuple[bytes, int], extensions: Any,
                     fast: bool) -> tuple[float, int, _Counts]:
    """CPU seconds of this thread for SRTP unprotect, RTP parse and both receivers (wired as the node wires its
    webcam and microphone) over the clip once, the packets handled, and what came out. Fresh receivers and a fresh
    SRTP session each lap (SRTP refuses a replayed packet); their RTCP goes nowhere."""
    from aiortc import RTCRtpReceiver
    from aiortc.rtcrtpparameters import RTCRtpDecodingParameters, RTCRtpReceiveParameters
    from aiortc.rtcrtpreceiver import RemoteStreamTrack
    from aiortc.rtp import RtpPacket
    from pylibsrtp import Policy, Session

    from media_server import aiortc_compat
    from media_server.outlets import EncodedFrame
    from media_server.taps import tap_encoded, tap_loss

    aiortc_compat.install_rtp_fast_path(fast)
    parse = aiortc_compat._parse_rtp_fast if fast else RtpPacket.parse
    session = Session(policy=Policy(key=srtp[0], ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=srtp[1]))
    vp8, opus = _micro_codecs()
    counts = _Counts()

    def on_video(frame: EncodedFrame) -> None:
        counts.video_frames += 1
        counts.layers[frame.temporal_layer] = counts.layers.get(frame.temporal_layer, 0) + 1

    def on_audio(frame: EncodedFrame) -> None:
        counts.audio_frames += 1

    def on_loss() -> None:
        counts.losses += 1

    video = RTCRtpReceiver("video", _NoTransport())  # type: ignore[arg-type]
    audio = RTCRtpReceiver("audio", _NoTransport())  # type: ignore[arg-type]
    video._track, audio._track = RemoteStreamTrack(kind="video"), RemoteStreamTrack(kind="audio")
    for receiver in (video, audio):
        receiver._set_rtcp_ssrc(9)
    tap_encoded(video, "video", on_video, decode=False)
    tap_loss(video, on_loss)
    aiortc_compat.give_up_stale_gaps(video, 1.0)
    tap_encoded(audio, "audio", on_audio, decode=False)
    for receiver, codec, ssrc in ((video, vp8, 1111), (audio, opus, 2222)):
        await receiver.receive(RTCRtpReceiveParameters(
            codecs=[codec], encodings=[RTCRtpDecodingParameters(ssrc=ssrc, payloadType=codec.payloadType)]))
    routes = {1111: video, 2222: audio}
    started = time.thread_time()
    for data, arrival in datagrams:
        packet = parse(session.unprotect(data), extensions)
        await routes[packet.ssrc]._handle_rtp_packet(packet, arrival_time_ms=arrival)
    cpu = time.thread_time() - started
    await video.stop()
    await audio.stop()
    return cpu, len(datagrams), counts


async def _micro(args: argparse.Namespace) -> None:
    """The receiver stage alone, off and on alternately: CPU per packet, and per stream-second of the clip."""
    from bench.audio import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.pickle"
        await asyncio.to_thread(_encode_clip, path)
        clip = pickle.loads(await asyncio.to_thread(path.read_bytes))
    datagrams, srtp, extensions = _micro_packets(clip)
    clip_s = len(clip.video) / clip.fps
    print(f"CPU: {cpu_model()}; micro: SRTP unprotect + RTP parse + the node's receivers and taps, {len(datagrams)} "
          f"packets = {clip_s:.0f} s of one stream, {args.rounds} rounds", flush=True)
    totals: dict[bool, list[float]] = {False: [], True: []}
    seen: dict[bool, Any] = {}
    for _ in range(args.rounds):
        for fast in (False, True):
            cpu, packets, counts = await _micro_lap(datagrams, srtp, extensions, fast)
            totals[fast].append(cpu / packets)
            seen[fast] = (counts.video_frames, counts.audio_frames, counts.losses, sorted(counts.layers.items()))
    for fast in (False, True):
        per_packet = sorted(totals[fast])[len(totals[fast]) // 2]
        print(f"fast path {'on ' if fast else 'off'}: {per_packet * 1e6:6.1f} us/packet (median), "
              f"{per_packet * len(datagrams) / clip_s * 1000:5.2f} ms per stream-second; frames video, audio, "
              f"losses, layers: {seen[fast]}", flush=True)
    if seen[False] != seen[True]:
        raise RuntimeError(f"the fast path delivered other frames: {seen}")
    off, on = (sorted(totals[f])[len(totals[f]) // 2] for f in (False, True))
    print(f"on/off = {on / off:.2f}")


def _encode_clip(path: Path, fps: int = 30, kbps: int = VIDEO_BITRATE // 1000, layers: str = "L1T3") -> None:
    import numpy as np

    from bench.synthetic import encode_clip
    from tests.support.media import face_canvas

    base = face_canvas()
    rng = np.random.default_rng(1)
    frames = []
    for i in range(CLIP_S * fps):
        noisy = base.astype(np.int16) + rng.integers(-10, 11, base.shape, dtype=np.int16)
        sway = int(4 * np.sin(i * 30 / fps / 14))  # the same motion whatever the frame rate
        frames.append(np.clip(np.roll(noisy, sway, axis=1), 0, 255).astype(np.uint8))
    path.write_bytes(pickle.dumps(encode_clip(frames, fps=fps, bitrate=kbps * 1000, gop=2 * fps,
                                              temporal_layers=layers)))


async def _receiver(args: argparse.Namespace, clip: Path, profiler: cProfile.Profile | None) -> list[PhaseResult]:
    from media_server.ice import install_host_addresses
    from media_server.udp import install_batched_reads

    install_host_addresses(("127.0.0.1",))
    install_batched_reads()  # the node's setting: it applies to the asyncio loop only
    order = {"both": [False, True, False, True], "on": [True], "off": [False]}[args.fast_path]
    results = []
    sender = _Sender(clip)
    await sender.start()
    try:
        for fast in order:
            result = await _phase(sender, fast, args.streams, args.seconds, args.warmup, profiler)
            print(result.line(), flush=True)
            results.append(result)
    finally:
        await sender.stop()
    return results


def _compare(results: list[PhaseResult], key: str, first: Any, second: Any) -> None:
    """Print the two groups of phases (by `key`'s value) side by side: us per packet summed over the phases."""
    a = [r for r in results if getattr(r, key) == first]
    b = [r for r in results if getattr(r, key) == second]
    if not a or not b:
        return
    us_a = sum(r.loop_cpu_s for r in a) * 1e6 / sum(r.packets for r in a)
    us_b = sum(r.loop_cpu_s for r in b) * 1e6 / sum(r.packets for r in b)
    ms_a = sum(r.ms_per_stream_s for r in a) / len(a)
    ms_b = sum(r.ms_per_stream_s for r in b) / len(b)

    def name(value: Any) -> str:
        return f"fast path {'on' if value else 'off'}" if key == "fast_path" else str(value)

    print(f"{name(first)} {us_a:.1f} us/packet, {ms_a:.2f} ms/stream-s; {name(second)} {us_b:.1f} us/packet, "
          f"{ms_b:.2f} ms/stream-s; {name(second)}/{name(first)} = {us_b / us_a:.2f}")


def _run_receivers(args: argparse.Namespace) -> list[PhaseResult]:
    from bench.audio import cpu_model
    from proctor import loop as event_loop

    loops = ["asyncio", "uvloop", "asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    profiler = cProfile.Profile() if args.profile else None  # over every measured window, of every loop
    results: list[PhaseResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.pickle"
        _encode_clip(clip, args.fps, args.video_kbps, args.layers)
        print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; {args.streams} streams, {args.seconds:.0f} s a phase; "
              f"video {args.fps} fps, {args.video_kbps} kbit/s, layers {args.layers}", flush=True)
        for kind in loops:
            results += event_loop.run(_receiver(args, clip, profiler), kind)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    _compare(results, "fast_path", False, True)
    _compare(results, "loop", "asyncio", "uvloop")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frames, not measured")
    parser.add_argument("--fast-path", choices=("both", "on", "off"), default="both")
    parser.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="uvloop",
                        help="the receiver's event loop (EVENT_LOOP; default uvloop, as the node); both: alternate")
    parser.add_argument("--profile",
                        help="write a cProfile of the measured windows here (with --fast-path on or off)")
    parser.add_argument("--micro", action="store_true",
                        help="the receiver stage alone (SRTP, parse, receivers, taps), no sockets: steadier on a "
                             "busy machine")
    parser.add_argument("--rounds", type=int, default=5, help="--micro: off/on pairs (the median is reported)")
    parser.add_argument("--fps", type=int, default=30, help="the senders' frame rate")
    parser.add_argument("--video-kbps", type=int, default=VIDEO_BITRATE // 1000, help="the senders' video bitrate")
    parser.add_argument("--layers", choices=("L1T3", "L1T2", "off"), default="L1T3",
                        help="the senders' VP8 temporal layers")
    parser.add_argument("--sender", help=argparse.SUPPRESS)  # internal: run as the sender subprocess
    args = parser.parse_args(argv)
    if args.sender:
        asyncio.run(_sender(Path(args.sender)))
        return
    if args.micro:
        asyncio.run(_micro(args))
        return
    _run_receivers(args)


if __name__ == "__main__":
    main()
