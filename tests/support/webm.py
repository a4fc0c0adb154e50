"""Synthetic WebM media, made offline: VP8 frames that carry their own number, an Opus tone, and segments
written from them with archiver.webm.WebmWriter.

The video is encoded with libvpx, a keyframe forced every GOP frames; each frame carries its own number as BITS
black/white bands across the top, so a decoded frame says which source frame it is (read_number). The audio is a
220 Hz Opus tone in 20 ms packets. Frame n sits at n*1000//FPS ms on the session timeline (frame_ms), so 2-s
segments (60 frames) are exactly 2000 ms and their durations sum with no drift.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from archiver.webm import WebmWriter

FPS = 30
GOP = 30
BITS = 10


def frame_ms(n: int) -> int:
    """Timeline position of source frame n (ms); the durations (33/33/34) sum exactly."""
    return n * 1000 // FPS


@dataclass
class Clip:
    video: list[tuple[bytes, bool]]  # (VP8 frame, keyframe), frame i has number first + i
    audio: list[bytes]  # 20 ms Opus packets; packet k at 20k ms
    width: int
    height: int
    first: int = 0


def _picture(n: int, width: int, height: int, noise: np.ndarray) -> np.ndarray:
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    img = np.empty((height, width, 3), np.int32)
    img[..., 0] = (x + 6 * n) % 256
    img[..., 1] = (y + 4 * n) % 256
    img[..., 2] = ((x + y) // 2 + 3 * n) % 256
    img += noise
    strip = height // 6
    band = width // BITS
    for bit in range(BITS):
        img[:strip, bit * band:(bit + 1) * band] = 255 if n >> bit & 1 else 0
    return np.clip(img, 0, 255).astype(np.uint8)


def read_number(frame: av.VideoFrame) -> int:
    """The frame number the bands of a decoded frame spell."""
    gray = frame.to_ndarray(format="gray")
    height, width = gray.shape
    strip, band = height // 6, width // BITS
    n = 0
    for bit in range(BITS):
        block = gray[strip // 4:strip * 3 // 4, bit * band + band // 4:(bit + 1) * band - band // 4]
        if block.mean() > 128:
            n |= 1 << bit
    return n


def encode_video(count: int, width: int, height: int, first: int = 0) -> list[tuple[bytes, bool]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.bit_rate = 1_000_000
    codec.gop_size = 10_000  # keyframes only where forced
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(7)
    noises = [rng.integers(-12, 13, (height, width, 3), dtype=np.int32) for _ in range(4)]
    out: list[tuple[bytes, bool]] = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(_picture(first + i, width, height, noises[i % 4]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.pict_type = av.video.frame.PictureType.I if i % GOP == 0 else av.video.frame.PictureType.NONE
        out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    assert len(out) == count
    assert [i for i, (_, key) in enumerate(out) if key] == list(range(0, count, GOP))
    return out


def encode_tone(seconds: float) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48_000, "stereo", "s16"
    codec.bit_rate = 48_000
    samples = 960
    out: list[bytes] = []
    for i in range(round(seconds * 50)):
        t = (np.arange(samples) + i * samples) / 48_000
        mono = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, i * samples
        out += [bytes(p) for p in codec.encode(frame)]
    out += [bytes(p) for p in codec.encode(None)]
    return out[:round(seconds * 50)]


def write_segment(path: Path, clip: Clip, start: int, stop: int, audio: list[bytes] | None = None) -> WebmWriter:
    """Source frames [start, stop) of `clip` as one segment, audio interleaved by time, pts from the segment start.

    Frame times are those of the clip's own timeline, so consecutive segments tile it exactly.
    """
    audio = clip.audio if audio is None else audio
    base = frame_ms(start)
    writer = WebmWriter(path, clip.width, clip.height)
    k = next((k for k in range(len(audio)) if 20 * k >= base), len(audio))
    for n in range(start, stop):
        pts = frame_ms(n) - base
        while k < len(audio) and 20 * k - base <= pts and 20 * k < frame_ms(stop):
            writer.write_audio(audio[k], 20 * k - base, 20)
            k += 1
        data, key = clip.video[n]
        writer.write_video(data, pts, frame_ms(n + 1) - frame_ms(n), key)
    while k < len(audio) and 20 * k < frame_ms(stop):
        writer.write_audio(audio[k], 20 * k - base, 20)
        k += 1
    writer.close()
    return writer
