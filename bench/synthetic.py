"""Synthetic candidates: aiortc senders that replay pre-encoded VP8 (640x480@30) and Opus, with no encoding on
the sender side, so a load test measures the server, not the load generator.

The clip is a face (offline test photo) with grain and motion, encoded once with libvpx at the target bitrate
and a keyframe every `gop` frames; each sender replays the packets in a loop at real time.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

VIDEO_TB = fractions.Fraction(1, 90_000)
AUDIO_TB = fractions.Fraction(1, 48_000)


@dataclass
class EncodedClip:
    video: list[tuple[bytes, bool]]  # (VP8 frame, is keyframe)
    audio: list[bytes]  # 20 ms Opus packets
    fps: int


def encode_clip(frames: list[np.ndarray], fps: int = 30, bitrate: int = 1_000_000, gop: int = 60) -> EncodedClip:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = frames[0].shape[1], frames[0].shape[0]
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    codec.options = {"deadline": "good", "cpu-used": "5", "lag-in-frames": "0"}
    video: list[tuple[bytes, bool]] = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        video += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    video += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    audio = _opus_tone(seconds=len(frames) / fps)
    return EncodedClip(video, audio, fps)


def _opus_tone(seconds: float) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48_000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32_000
    packets: list[bytes] = []
    samples = 960  # 20 ms
    for i in range(int(seconds * 50)):
        t = (np.arange(samples) + i * samples) / 48_000
        pcm = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = i * samples
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


class ReplayTrack(MediaStreamTrack):
    """Replays encoded packets at real time; aiortc packetizes av.Packet without re-encoding."""

    def __init__(self, kind: str, packets: list[bytes], period_s: float, step: int, time_base: fractions.Fraction,
                 start_index: int = 0) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._period = period_s
        self._step = step
        self._tb = time_base
        self._index = start_index
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count * self._period
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data = self._packets[self._index % len(self._packets)]
        packet = av.Packet(data)
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
    pc.addTrack(ReplayTrack("video", [d for d, _ in clip.video], 1 / clip.fps, 90_000 // clip.fps, VIDEO_TB, start))
    pc.addTrack(ReplayTrack("audio", clip.audio, 0.02, 960, AUDIO_TB))
    pc.createDataChannel("signals")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(offer_url, json={"sdp": pc.localDescription.sdp, "type": "offer"},
                         headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
        if response.status != 200:
            await pc.close()
            raise RuntimeError(f"offer refused: {response.status} {body}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return pc
