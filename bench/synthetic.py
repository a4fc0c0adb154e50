"""Synthetic candidates: aiortc senders that replay pre-encoded VP8 (640x480, 30 fps unless told) and Opus, with
no encoding on the sender side, so a load test measures the server, not the load generator.

The clip is a face (offline test photo) with grain and motion, encoded once with libvpx at the target bitrate
and a keyframe every `gop` frames; each sender replays the packets in a loop at real time.

With `temporal_layers=True` the clip is encoded as Chromium encodes VP8 under `scalabilityMode: "L1T3"`: three
temporal layers in the repeating pattern 0, 2, 1, 2, each frame told by libvpx's per-frame reference flags what
it may reference and update (WebRTC's pattern: the base layer references and updates only LAST; layer 1 references
LAST and updates GOLDEN; layer 2 references both and updates nothing; no layer above 0 updates the entropy
context), so the base-layer frames decode on their own. `temporal_layers="L1T2"` encodes two layers, 0, 1
repeating, layer 1 as L1T3's first layer-2 frame (references LAST, updates nothing): what a page asking for
L1T2 gets. FFmpeg's libvpx wrapper takes the flags from the frame's
`vp8-flags` metadata, which PyAV can only set through a filter (`metadata=mode=add`). The senders then mark each
frame's TID and TL0PICIDX in the VP8 payload descriptor (RFC 7741), as Chromium does (`install_layered_packetizer`).

The audio is an exam room, not a test tone (`exam_room_audio`): EXAM_ROOM_S of a quiet room (deterministic noise
around -60 dBFS) with espeak-ng speech at a microphone's level for ~10 % of it, so the voice detector's energy gate
skips the quiet part as in a real exam while the benchmark still runs the model and raises a talking flag now and
then. It loops on its own (its length is not the video clip's); each sender starts at another point of it.

Audio packets as long as the answer asks (AUDIO_PTIME_MS): like Chromium, a sender reads the answer's `a=ptime` and
sends Opus frames of the next supported length up (core.opus.browser_frame_ms), the clip's track encoded again
once per length (`EncodedClip.audio_packets`); without one, 20-ms frames (`EncodedClip.audio`), as before.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import logging
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import av.filter
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import vpx

from core import opus

VIDEO_TB = fractions.Fraction(1, 90_000)
AUDIO_TB = fractions.Fraction(1, 48_000)
log = logging.getLogger(__name__)


# libvpx vp8cx.h encoder flags (VP8_EFLAG_*)
_NO_REF_GF, _NO_UPD_LAST, _NO_UPD_ENTROPY, _NO_REF_ARF, _NO_UPD_GF, _NO_UPD_ARF = (
    1 << 17, 1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23)
# L1T3: the layer of frame i is L1T3_PATTERN[i % 4]; the flags of each position (see the module doc).
L1T3_PATTERN = (0, 2, 1, 2)
_L1T3_FLAGS = (
    _NO_REF_GF | _NO_REF_ARF | _NO_UPD_GF | _NO_UPD_ARF,
    _NO_REF_GF | _NO_REF_ARF | _NO_UPD_LAST | _NO_UPD_GF | _NO_UPD_ARF | _NO_UPD_ENTROPY,
    _NO_REF_GF | _NO_REF_ARF | _NO_UPD_LAST | _NO_UPD_ARF | _NO_UPD_ENTROPY,
    _NO_REF_ARF | _NO_UPD_LAST | _NO_UPD_GF | _NO_UPD_ARF | _NO_UPD_ENTROPY,
)
# L1T2: base as L1T3's, layer 1 references LAST and updates nothing
L1T2_PATTERN = (0, 1)
_L1T2_FLAGS = _L1T3_FLAGS[:2]
# VIDEO_SCALABILITY_MODE -> (layer of each position, libvpx flags of each position)
LAYER_MODES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "L1T3": (L1T3_PATTERN, _L1T3_FLAGS), "L1T2": (L1T2_PATTERN, _L1T2_FLAGS)}
# Each layer's share of the bitrate, cumulative, as libwebrtc configures libvpx's temporal-layer rate control for
# VP8 (modules/video_coding/utility/simulcast_rate_allocator.cc kLayerRateAllocation): the base layer gets 40 %
# with three layers, 60 % with two.
LAYER_RATES = {"L1T3": (0.4, 0.6, 1.0), "L1T2": (0.6, 1.0)}


def _layer_rate_control(mode: str, bitrate: int) -> dict[str, str]:
    """FFmpeg's libvpx `ts-parameters` for `mode`: libvpx then gives each layer its share of `bitrate` (without it
    one rate control for all frames gave the L1T3 base layer 31 % of the bits, not Chromium's 40 %). The frames'
    reference flags stay ours (no ts_layering_mode)."""
    pattern, _ = LAYER_MODES[mode]
    rates = LAYER_RATES[mode]
    targets = ",".join(str(round(bitrate * share / 1000)) for share in rates)
    decimators = ",".join(str(2 ** (len(rates) - 1 - i)) for i in range(len(rates)))
    return {"ts-parameters": f"ts_number_layers={len(rates)}:ts_target_bitrate={targets}:"
                             f"ts_rate_decimator={decimators}:ts_periodicity={len(pattern)}:"
                             f"ts_layer_id={','.join(map(str, pattern))}"}


@dataclass
class EncodedClip:
    video: list[tuple[bytes, bool]]  # (VP8 frame, is keyframe)
    audio: list[bytes]  # 20 ms Opus packets of the exam-room track
    fps: int
    layers: list[int] | None = None  # each video frame's temporal layer; None: no layers

    # frame length -> (the `audio` list it was made from, its packets in that length)
    _reframed: dict[int, tuple[list[bytes], list[bytes]]] = field(default_factory=dict, repr=False, compare=False)

    def audio_packets(self, frame_ms: int) -> list[bytes]:
        """The clip's audio in Opus packets of frame_ms (20: `audio` itself; else re-encoded from it once, whatever
        track a caller put in `audio`)."""
        if frame_ms == opus.BROWSER_DEFAULT_MS:
            return self.audio
        source, packets = self._reframed.get(frame_ms, (None, []))
        if source is not self.audio:
            packets = reframe_opus(self.audio, frame_ms)
            self._reframed[frame_ms] = (self.audio, packets)
        return packets


def _flag_graph(width: int, height: int, fps: int, flags: int) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format="yuv420p", time_base=fractions.Fraction(1, fps))
    tag = graph.add("metadata", f"mode=add:key=vp8-flags:value={flags}")
    sink = graph.add("buffersink")
    source.link_to(tag)
    tag.link_to(sink)
    graph.configure()
    return graph


def encode_clip(frames: list[np.ndarray], fps: int = 30, bitrate: int = 1_000_000, gop: int = 60,
                temporal_layers: bool | str = False) -> EncodedClip:
    """`temporal_layers`: True or "L1T3" (as Chromium encodes by default), "L1T2", or False / "off" / "L1T1"."""
    mode = "L1T3" if temporal_layers is True else (temporal_layers or "off")
    if mode not in (*LAYER_MODES, "off", "L1T1"):
        raise ValueError(f"no such layer mode: {mode!r}")
    pattern, flags = LAYER_MODES.get(mode, ((), ()))
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = frames[0].shape[1], frames[0].shape[0]
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    codec.options = {"deadline": "good", "cpu-used": "5", "lag-in-frames": "0",
                     **(_layer_rate_control(mode, bitrate) if pattern else {})}
    graphs = [_flag_graph(codec.width, codec.height, fps, each) for each in flags]
    video: list[tuple[bytes, bool]] = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = codec.time_base
        if graphs:
            graphs[i % len(graphs)].push(frame)
            frame = graphs[i % len(graphs)].pull()
        # lag-in-frames 0: one packet per frame, in order, so packet i is frame i
        video += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    video += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    audio = exam_room_audio()
    # A keyframe (libvpx may place one anywhere) refreshes every reference: it belongs to the base layer.
    layers = ([0 if key else pattern[i % len(pattern)] for i, (_, key) in enumerate(video)]
              if pattern else None)
    return EncodedClip(video, audio, fps, layers)


# The exam-room track: EXAM_ROOM_S seconds, speech from EXAM_ROOM_SPEECH_AT_S (about 10 % of the track: one
# remark long enough for a talking flag, ~2 s of speech, at most once per loop per sender).
EXAM_ROOM_S = 40.0
EXAM_ROOM_SPEECH_AT_S = 20.0
EXAM_ROOM_NOISE_DBFS = -60.0
EXAM_ROOM_SPEECH = "Can you tell me the answer to question four? I think it is B."  # 3.7 s: ~9 % of the track
EXAM_ROOM_SPEECH_RMS_DBFS = -28.0  # speech at a laptop microphone after the browser's gain control


def _espeak(text: str, rate: int = 48_000) -> np.ndarray | None:
    """espeak-ng's speech of `text` at `rate` (float32, silence trimmed), or None without espeak-ng."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([espeak, "-v", "en", "-s", "160", "-w", str(path), text], check=True, capture_output=True,
                       timeout=60)
        with wave.open(str(path)) as w:
            source_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768
    n = int(round(len(pcm) * rate / source_rate))
    pcm = np.interp(np.arange(n) * source_rate / rate, np.arange(len(pcm)), pcm)
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    return pcm[loud[0]:loud[-1] + 1].astype(np.float32) if len(loud) else None


def exam_room_pcm(rate: int = 48_000, speech: bool = True) -> np.ndarray:
    """EXAM_ROOM_S of a quiet exam room at `rate`, mono float32: room noise (deterministic: white plus a low
    rumble, about EXAM_ROOM_NOISE_DBFS RMS) and one spoken remark at EXAM_ROOM_SPEECH_AT_S (without espeak-ng,
    the room alone, with a warning)."""
    rng = np.random.default_rng(20_260_214)
    n = int(EXAM_ROOM_S * rate)
    white = rng.standard_normal(n)
    rumble = np.cumsum(rng.standard_normal(n))
    rumble -= _moving_average(rumble, 2401)  # a fan's rumble, no DC drift
    rumble /= np.sqrt(np.mean(rumble ** 2))
    room = (white * 0.6 + rumble * 0.8) * 10 ** (EXAM_ROOM_NOISE_DBFS / 20)  # RMS: 1.0 x the room level
    if not speech:  # a candidate who says nothing
        return room.astype(np.float32)
    remark = _espeak(EXAM_ROOM_SPEECH, rate)
    if remark is None:
        log.warning("espeak-ng is not installed: the synthetic candidates' audio is a quiet room without speech")
    else:
        remark = remark * 10 ** (EXAM_ROOM_SPEECH_RMS_DBFS / 20) / np.sqrt(np.mean(remark.astype(np.float64) ** 2))
        at = int(EXAM_ROOM_SPEECH_AT_S * rate)
        room[at:at + len(remark)] += remark[:n - at]
    return room.astype(np.float32)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (edges over what exists), by cumulative sums: O(n), not np.convolve's O(n * width)."""
    sums = np.concatenate([[0.0], np.cumsum(x)])
    hi = np.minimum(np.arange(len(x)) + width // 2 + 1, len(x))
    lo = np.maximum(np.arange(len(x)) - width // 2, 0)
    return (sums[hi] - sums[lo]) / (hi - lo)


def encode_opus(pcm48k: np.ndarray, frame_ms: int = 20, channels: int = 1, bitrate: int = 32_000) -> list[bytes]:
    """Mono float PCM at 48 kHz (-1..1) as Opus packets of frame_ms (one of core.opus.FRAME_LENGTHS_MS), with
    libopus through PyAV (its `frame_duration`); channels=2 sends the mono signal as stereo, as a browser does.
    A partial last frame is left out."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48_000
    codec.layout = "stereo" if channels == 2 else "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.options = {"frame_duration": str(frame_ms)}
    samples = 48 * frame_ms
    pcm = (np.clip(pcm48k, -1, 1) * 32767).astype(np.int16)
    packets: list[bytes] = []
    for i in range(len(pcm) // samples):
        chunk = pcm[i * samples:(i + 1) * samples]
        if channels == 2:
            chunk = np.repeat(chunk, 2)  # interleaved L R
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=codec.layout.name)
        frame.sample_rate = 48_000
        frame.pts = i * samples
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


def reframe_opus(packets: list[bytes], frame_ms: int) -> list[bytes]:
    """Opus packets (any lengths) decoded and encoded again in packets of frame_ms: mono, 32 kbit/s."""
    codec = av.CodecContext.create("opus", "r")
    codec.sample_rate = 48_000
    codec.layout = "stereo"  # what WebRTC negotiates; a mono packet decodes alike
    pcm = [frame.to_ndarray().reshape(-1, 2).mean(axis=1) if frame.format.is_packed
           else frame.to_ndarray().mean(axis=0)
           for packet in packets for frame in codec.decode(av.Packet(packet))]
    return encode_opus(np.concatenate(pcm) if pcm else np.zeros(0, np.float32), frame_ms)


@functools.lru_cache(maxsize=2)
def _exam_room_packets(speech: bool = True) -> tuple[bytes, ...]:
    return tuple(encode_opus(exam_room_pcm(speech=speech)))


def exam_room_audio(speech: bool = True) -> list[bytes]:
    """The exam-room track as 20-ms Opus packets (module doc); built once per process (~1 s), then copied.
    speech=False: the room alone (a candidate who says nothing). Other lengths: EncodedClip.audio_packets."""
    return list(_exam_room_packets(speech))


def _audio_start(clip: EncodedClip, nth: int, frame_ms: int = 20) -> int:
    """Where the nth sender starts in the audio loop: 7.3 s apart, so the senders do not all talk at once."""
    return (nth * 7300 // frame_ms) % max(1, len(clip.audio_packets(frame_ms)))


def answer_frame_ms(sdp: str) -> int:
    """The Opus frame length Chromium sends for this answer: its audio m-section's `a=ptime`, rounded up to a
    supported length (core.opus.browser_frame_ms); 20 without one."""
    audio = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            audio = line.startswith("m=audio")
        elif audio and line.startswith("a=ptime:"):
            return opus.browser_frame_ms(int(line[len("a=ptime:"):].strip()))
    return opus.BROWSER_DEFAULT_MS


class ReplayTrack(MediaStreamTrack):
    """Replays encoded packets at real time; aiortc packetizes av.Packet without re-encoding."""

    def __init__(self, kind: str, packets: list[bytes], period_s: float, step: int, time_base: fractions.Fraction,
                 start_index: int = 0, layers: list[int] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._layers = layers
        self._period = period_s
        self._step = step
        self._tb = time_base
        self._index = start_index
        self._start: float | None = None
        self._count = 0

    def retime(self, packets: list[bytes], period_s: float, step: int, start_index: int = 0) -> None:
        """Other packets before the track starts (the answer asked for another audio frame length)."""
        assert self._start is None, "the track already started"
        self._packets, self._period, self._step, self._index = packets, period_s, step, start_index

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count * self._period
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data = self._packets[self._index % len(self._packets)]
        packet = av.Packet(data)
        if self._layers is not None:  # read by the layered packetizer
            packet.opaque = self._layers[self._index % len(self._layers)]
        packet.pts = self._count * self._step
        packet.time_base = self._tb
        self._index += 1
        self._count += 1
        return packet


def _video_start(clip: EncodedClip, nth: int = 0) -> int:
    """Index of the clip's nth keyframe (modulo how many it has): where a sender may start."""
    keys = [i for i, (_, key) in enumerate(clip.video) if key]
    return keys[nth % len(keys)]


async def connect_sender(clip: EncodedClip, offer_url: str, token: str, http: Any,
                         start_keyframe: int = 0) -> RTCPeerConnection:
    """One synthetic candidate: offer through signaling with the join token, like the browser does.
    `start_keyframe` picks where in the clip it starts, so many senders are not in lockstep."""
    pc = RTCPeerConnection()
    start = _video_start(clip, start_keyframe)
    if clip.layers is not None:
        install_layered_packetizer()
    pc.addTrack(ReplayTrack("video", [d for d, _ in clip.video], 1 / clip.fps, 90_000 // clip.fps, VIDEO_TB, start,
                            clip.layers))
    audio = ReplayTrack("audio", clip.audio, 0.02, 960, AUDIO_TB, _audio_start(clip, start_keyframe))
    pc.addTrack(audio)
    pc.createDataChannel("signals")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(offer_url, json={"sdp": pc.localDescription.sdp, "type": "offer"},
                         headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
        if response.status != 200:
            await pc.close()
            raise RuntimeError(f"offer refused: {response.status} {body}")
    frame_ms = answer_frame_ms(body["sdp"])
    if frame_ms != opus.BROWSER_DEFAULT_MS:  # before the remote description: that starts the senders
        audio.retime(clip.audio_packets(frame_ms), frame_ms / 1000, 48 * frame_ms,
                     _audio_start(clip, start_keyframe, frame_ms))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return pc


_ORIGINAL_PACK = vpx.Vp8Encoder.pack


def _pack_layered(self: vpx.Vp8Encoder, packet: av.Packet) -> tuple[list[bytes], int]:
    """aiortc's Vp8Encoder.pack, with the frame's TID and TL0PICIDX in every packet's payload descriptor (as
    Chromium sends L1T3) when the packet carries its layer in `opaque`."""
    layer = packet.opaque
    if not isinstance(layer, int):
        return _ORIGINAL_PACK(self, packet)
    tl0 = getattr(self, "_bench_tl0picidx", 0)
    if layer == 0:
        tl0 = (tl0 + 1) % 256
        self._bench_tl0picidx = tl0  # type: ignore[attr-defined]
    buffer = bytes(packet)
    descriptor = vpx.VpxPayloadDescriptor(partition_start=1, partition_id=0, picture_id=self.picture_id,
                                          tl0picidx=tl0, tid=(layer, 0))
    payloads = []
    pos = 0
    while pos < len(buffer):
        head = bytes(descriptor)
        size = min(len(buffer) - pos, vpx.PACKET_MAX - len(head))
        payloads.append(head + buffer[pos:pos + size])
        descriptor.partition_start = 0
        pos += size
    timestamp = vpx.convert_timebase(packet.pts, packet.time_base, vpx.VIDEO_TIME_BASE)
    self.picture_id = (self.picture_id + 1) % (1 << 15)
    return payloads, timestamp


def install_layered_packetizer() -> None:
    """Senders in this process mark temporal layers (a bench/test load generator only; the node never sends)."""
    vpx.Vp8Encoder.pack = _pack_layered  # type: ignore[method-assign]
