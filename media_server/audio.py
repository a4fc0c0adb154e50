"""One audio decoding thread for every stream on a media node: Opus -> 16 kHz mono float PCM, in half-second
windows, for the voice detector (analyzers/voice.py).

The encoded tap (media_server/taps.py) hands every Opus packet to the event loop (50 a second per stream) with its
session media time; a stream whose audio someone subscribed to puts them on one queue, and one thread (like the
VP8 thread of media_server/decode.py, never one per stream, never a decode on the loop) decodes them with PyAV,
resamples to what the VAD model takes (16 kHz mono: a third of the samples of 48 kHz stereo), and wakes the loop
once per pass with the whole windows that are ready, not once per packet. Nobody subscribed: nothing is decoded
(the archive copies the encoded Opus).

A gap in the media time of the packets (packets lost, the browser stopped sending: a stopped track, DTX) ends the
window being filled: a window never spans a gap, so the detector sees silence as silence and absence as absence.
A stream that falls seconds behind (an overloaded machine) drops its backlog: a late audio window is worth less
than a current one, and the archive does not depend on this path.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import av.error
import numpy as np

from media_server.outlets import AudioSubscriber

log = logging.getLogger(__name__)

AUDIO_RATE = 16_000  # what the VAD model takes
WINDOW_S = 0.5
WINDOW_SAMPLES = int(AUDIO_RATE * WINDOW_S)
# A packet this far from where the previous one ended starts a new window (Opus packets are 20 ms; jitter in the
# mapping onto the video timeline is far below this).
GAP_S = 0.1
# A partial window shorter than this is not worth a model call at a gap: dropped.
MIN_PARTIAL_SAMPLES = AUDIO_RATE // 10
# Packets of one stream waiting beyond this (5 s at 50 packets/s) are dropped: see the module doc.
MAX_BACKLOG_PACKETS = 250
# Packets taken from the queue per pass: bounds how long one pass runs before the windows go out.
BATCH = 128

Window = tuple[float, np.ndarray]  # (media time of the first sample, float32 PCM at AUDIO_RATE)


@dataclass(eq=False)
class AudioStreamDecoder:
    """One stream's decoding state; touched only by the decoding thread, except `closed` and `backlog`."""

    deliver: Callable[[list[Window]], None]  # event loop: hand over whole windows
    codec: Any = None
    resampler: Any = None
    backlog: int = 0
    closed: bool = False
    parts: list[np.ndarray] = field(default_factory=list)
    filled: int = 0  # samples in parts
    start_s: float | None = None  # media time of the first sample in parts
    next_s: float | None = None  # media time where the last decoded packet ended
    packets_decoded: int = 0
    packets_dropped: int = 0
    decode_errors: int = 0
    windows: int = 0


class AudioDecodePool:
    """The node's audio decoding thread. `submit` is called on the event loop; everything else runs in the
    thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[AudioStreamDecoder, bytes, float] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="audio-decode", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, decoder: AudioStreamDecoder, data: bytes, media_time_s: float) -> None:
        if decoder.closed:
            return
        if decoder.backlog >= MAX_BACKLOG_PACKETS:
            decoder.packets_dropped += 1
            return
        decoder.backlog += 1
        self._queue.put((decoder, data, media_time_s))

    # --- the decoding thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ready: dict[AudioStreamDecoder, list[Window]] = {}
            for item in batch:
                if item is None:
                    self._flush(ready)
                    return
                decoder, data, media_time = item
                decoder.backlog -= 1
                try:
                    windows = self._decode(decoder, data, media_time)
                except Exception:  # one stream's bad packet must never stop the others' audio
                    decoder.decode_errors += 1
                    log.exception("audio decoding failed")
                    windows = []
                if windows:
                    ready.setdefault(decoder, []).extend(windows)
            self._flush(ready)

    def _flush(self, ready: dict[AudioStreamDecoder, list[Window]]) -> None:
        if ready and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_deliver_all, list(ready.items()))
            except RuntimeError:  # the loop is closed: the node is stopping
                pass

    def _decode(self, decoder: AudioStreamDecoder, data: bytes, media_time: float) -> list[Window]:
        if decoder.closed:
            return []
        if decoder.codec is None:
            decoder.codec = av.CodecContext.create("opus", "r")
            decoder.codec.sample_rate = 48_000
            decoder.codec.layout = "stereo"  # what WebRTC negotiates (opus/48000/2); mono content decodes alike
            decoder.resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        out: list[Window] = []
        if decoder.next_s is not None and abs(media_time - decoder.next_s) > GAP_S:
            out += _cut(decoder, partial=True)
            decoder.start_s = None
        try:
            frames = decoder.codec.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            decoder.decode_errors += 1
            log.debug("Opus decode error: %s", exc)
            return out
        decoder.packets_decoded += 1
        for frame in frames:
            duration = frame.samples / frame.sample_rate
            decoder.next_s = media_time + duration
            for resampled in decoder.resampler.resample(frame):
                pcm = resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                if decoder.start_s is None:
                    decoder.start_s = media_time
                decoder.parts.append(pcm)
                decoder.filled += len(pcm)
            out += _cut(decoder, partial=False)
        return out


def _cut(decoder: AudioStreamDecoder, partial: bool) -> list[Window]:
    """The whole windows in the buffer (and, at a gap, what is left if it is long enough); the rest stays."""
    out: list[Window] = []
    if decoder.start_s is None or not decoder.parts:
        return out
    if decoder.filled < WINDOW_SAMPLES and not partial:
        return out
    pcm = np.concatenate(decoder.parts)
    start = decoder.start_s
    offset = 0
    while len(pcm) - offset >= WINDOW_SAMPLES:
        out.append((start + offset / AUDIO_RATE, pcm[offset:offset + WINDOW_SAMPLES]))
        offset += WINDOW_SAMPLES
    rest = pcm[offset:]
    if partial:
        if len(rest) >= MIN_PARTIAL_SAMPLES:
            out.append((start + offset / AUDIO_RATE, rest))
        rest = rest[:0]
    decoder.parts = [rest] if len(rest) else []
    decoder.filled = len(rest)
    decoder.start_s = start + offset / AUDIO_RATE if len(rest) else None
    decoder.windows += len(out)
    return out


def _deliver_all(ready: list[tuple[AudioStreamDecoder, list[Window]]]) -> None:
    for decoder, windows in ready:
        if decoder.closed:
            continue
        try:
            decoder.deliver(windows)
        except Exception:  # a subscriber's bug must never stop the other streams' audio
            log.exception("audio delivery failed")


class AudioOutlet:
    """One stream's decoded audio outlet: Opus packets in (event loop, from the encoded tap), 16 kHz mono windows
    out to each subscriber (event loop). Decodes only once someone subscribed and the node's pool is running."""

    def __init__(self) -> None:
        self._subscribers: list[AudioSubscriber] = []
        self._pool: AudioDecodePool | None = None
        self.decoder = AudioStreamDecoder(self._deliver)

    def subscribe(self, subscriber: AudioSubscriber) -> None:
        self._subscribers.append(subscriber)

    def start(self, pool: AudioDecodePool | None) -> None:
        self._pool = pool

    def submit(self, data: bytes, media_time_s: float) -> None:
        """An encoded Opus packet and its session media time, on the event loop."""
        if self._pool is not None and self._subscribers and self._pool.running:
            self._pool.submit(self.decoder, data, media_time_s)

    def _deliver(self, windows: list[Window]) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.on_audio(windows)
            except Exception:
                log.exception("audio subscriber failed")

    def stop(self) -> None:
        self.decoder.closed = True

    def stats(self) -> dict[str, int]:
        d = self.decoder
        return {"packets_decoded": d.packets_decoded, "packets_dropped": d.packets_dropped,
                "decode_errors": d.decode_errors, "windows": d.windows}
