"""One audio decoding thread for every stream on a media node: Opus -> 16 kHz mono float PCM, in half-second
windows, for the voice detector (analyzers/voice.py).

The encoded tap (media_server/taps.py) hands every Opus packet to the event loop (17 a second per stream with the
default AUDIO_PTIME_MS=60, 50 with 20-ms packets) with its session media time; a stream whose audio someone
subscribed to puts them on one queue, and one thread (like the VP8 thread of media_server/decode.py, never one per
stream, never a decode on the loop) decodes them to what the VAD model takes (16 kHz mono) and wakes the loop once
per pass with the whole windows that are ready, not once per packet. Nobody subscribed: nothing is decoded (the
archive copies the encoded Opus).

Two decoders (AUDIO_DECODER): `opus16k` (default) calls libopus through ctypes with a decoder created at 16 kHz
mono, so libopus itself skips the upper band and downmixes, and each packet's samples go straight into the window
being filled (one preallocated buffer, no frame objects, no resampler, no concatenation): 1.6-2.0 ms CPU per second
of audio against 5.9-6.7 for `pyav` (FFmpeg's Opus decoder at 48 kHz stereo, then swresample), measured per packet
with thread CPU time (bench/audio.py). The same signal (correlation 0.99997), except that FFmpeg's stereo -> mono
downmix made a voice 3 dB louder than it was sent; libopus' keeps its level. libopus is the system's (Debian
libopus0) or, without it, the copy the PyAV wheel bundles.

Every packet is decoded: its level cannot be told without decoding (Opus codes band energies relative to earlier
frames), and its size does not tell it either (measured at 32 kbit/s: a -60 dBFS room 38-60 bytes, whispered speech
in it 59-89, speech 45-103; only digital silence stands out, at 3 bytes, and costs next to nothing to decode).

A gap in the media time of the packets (packets lost, the browser stopped sending: a stopped track, DTX) ends the
window being filled: a window never spans a gap, so the detector sees silence as silence and absence as absence.
A stream that falls seconds behind (an overloaded machine) drops its backlog: a late audio window is worth less
than a current one, and the archive does not depend on this path.

Nothing here assumes a packet length: each packet's samples are whatever libopus (or FFmpeg) decodes from it, 10 to
120 ms (the TOC byte says which, core.opus), and the backlog is counted in seconds of audio, not in packets.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from core import opus
from media_server.outlets import AudioSubscriber
from proctor import priority

log = logging.getLogger(__name__)

AUDIO_RATE = 16_000  # what the VAD model takes
WINDOW_S = 0.5
WINDOW_SAMPLES = int(AUDIO_RATE * WINDOW_S)
# A packet this far from where the previous one ended starts a new window (one lost 20- or 60-ms packet does not;
# jitter in the mapping onto the video timeline is far below this).
GAP_S = 0.1
# A partial window shorter than this is not worth a model call at a gap: dropped.
MIN_PARTIAL_SAMPLES = AUDIO_RATE // 10
# Audio of one stream waiting beyond this is dropped (see the module doc): seconds, not packets, so that the bound
# is the same whatever packet length the browser sends.
MAX_BACKLOG_S = 5.0
# Packets taken from the queue per pass: bounds how long one pass runs before the windows go out.
BATCH = 128

Window = tuple[float, np.ndarray]  # (media time of the first sample, float32 PCM at AUDIO_RATE)

DECODERS = ("opus16k", "pyav")
MAX_PACKET_SAMPLES = AUDIO_RATE * 120 // 1000  # an Opus packet holds at most 120 ms


class _LibOpus:
    """libopus's decoder API through ctypes (opus_decoder_create / opus_decode_float / opus_decoder_destroy)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode_float.restype = ctypes.c_int
        lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p,
                                          ctypes.c_int, ctypes.c_int]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [ctypes.c_int]
        self.lib = lib
        self.path = path


_libopus: _LibOpus | None = None
_libopus_lock = threading.Lock()


def libopus() -> _LibOpus:
    """The system's libopus, else the one bundled in the PyAV wheel (av.libs); loaded once."""
    global _libopus
    with _libopus_lock:
        if _libopus is None:
            candidates = [ctypes.util.find_library("opus")]
            bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
            candidates += sorted(str(f) for f in bundled.glob("libopus*.so*"))
            errors = []
            for path in candidates:
                if not path:
                    continue
                try:
                    _libopus = _LibOpus(path)
                    break
                except (OSError, AttributeError) as exc:
                    errors.append(f"{path}: {exc}")
            else:
                raise RuntimeError("libopus not found (apt-get install libopus0, or AUDIO_DECODER=pyav): "
                                   + "; ".join(errors))
        return _libopus


class Opus16k:
    """One stream's libopus decoder at 16 kHz mono; freed when the object goes (never while the thread uses it:
    only the decoding thread holds it)."""

    def __init__(self) -> None:
        self.opus = libopus()
        error = ctypes.c_int(0)
        handle = self.opus.lib.opus_decoder_create(AUDIO_RATE, 1, ctypes.byref(error))
        if not handle or error.value != 0:
            raise RuntimeError(f"opus_decoder_create failed: {self.opus.lib.opus_strerror(error.value)!r}")
        self.handle = handle
        self.scratch = np.empty(MAX_PACKET_SAMPLES, np.float32)
        self._address = self.scratch.ctypes.data
        weakref.finalize(self, self.opus.lib.opus_decoder_destroy, handle)

    def decode(self, data: bytes) -> np.ndarray:
        """The packet's samples (a view of a scratch buffer, valid until the next call); ValueError when libopus
        refuses the packet."""
        if not data:  # libopus would conceal a lost packet (120 ms of made-up audio): an empty payload is an error
            raise ValueError("empty Opus packet")
        n = self.opus.lib.opus_decode_float(self.handle, data, len(data), self._address, MAX_PACKET_SAMPLES, 0)
        if n < 0:
            raise ValueError(self.opus.lib.opus_strerror(n).decode(errors="replace"))
        return self.scratch[:n]


@dataclass(eq=False)
class AudioStreamDecoder:
    """One stream's decoding state; touched only by the decoding thread, except `closed` and `backlog_s`."""

    deliver: Callable[[list[Window]], None]  # event loop: hand over whole windows
    codec: Any = None  # Opus16k, or PyAV's codec context (pyav)
    resampler: Any = None  # pyav only
    backlog_s: float = 0.0  # audio queued for the thread, by the packets' TOC
    closed: bool = False
    # The window being filled: samples go straight into it; a full one is handed over and a fresh one allocated.
    window: np.ndarray = field(default_factory=lambda: np.empty(WINDOW_SAMPLES, np.float32))
    filled: int = 0  # samples in window
    start_s: float | None = None  # media time of the window's first sample
    next_s: float | None = None  # media time where the last decoded packet ended
    packets_decoded: int = 0
    packets_dropped: int = 0
    decode_errors: int = 0
    windows: int = 0


class AudioDecodePool:
    """The node's audio decoding thread. `submit` is called on the event loop; everything else runs in the
    thread. `decoder`: one of DECODERS (AUDIO_DECODER, module doc)."""

    def __init__(self, decoder: str = "opus16k") -> None:
        if decoder not in DECODERS:
            raise ValueError(f"audio decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.decoder = decoder
        # (stream, packet, its media time, its duration in s)
        self._queue: queue.SimpleQueue[tuple[AudioStreamDecoder, bytes, float, float] | None] = queue.SimpleQueue()
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
        if decoder.backlog_s >= MAX_BACKLOG_S:
            decoder.packets_dropped += 1
            return
        seconds = max(opus.packet_duration_ms(data), 2.5) / 1000  # a malformed packet still counts
        decoder.backlog_s += seconds
        self._queue.put((decoder, data, media_time_s, seconds))

    # --- the decoding thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        priority.lower_this_thread()  # audio decoding feeds only the voice detector: RTP comes first
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
                decoder, data, media_time, seconds = item
                decoder.backlog_s -= seconds
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
        out: list[Window] = []
        if decoder.next_s is not None and abs(media_time - decoder.next_s) > GAP_S:
            _flush_partial(decoder, out)
        if self.decoder == "opus16k":
            if decoder.codec is None:
                decoder.codec = Opus16k()
            try:
                pcm = decoder.codec.decode(data)
            except ValueError as exc:
                decoder.decode_errors += 1
                log.debug("Opus decode error: %s", exc)
                return out
            decoder.packets_decoded += 1
            if len(pcm):
                decoder.next_s = media_time + len(pcm) / AUDIO_RATE
                _append(decoder, pcm, media_time, out)
            return out
        if decoder.codec is None:
            decoder.codec = av.CodecContext.create("opus", "r")
            decoder.codec.sample_rate = 48_000
            decoder.codec.layout = "stereo"  # what WebRTC negotiates (opus/48000/2); mono content decodes alike
            decoder.resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        if not data:  # to FFmpeg an empty packet means "end of stream": every later packet would fail
            decoder.decode_errors += 1
            return out
        try:
            frames = decoder.codec.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            decoder.decode_errors += 1
            log.debug("Opus decode error: %s", exc)
            return out
        decoder.packets_decoded += 1
        for frame in frames:
            decoder.next_s = media_time + frame.samples / frame.sample_rate
            for resampled in decoder.resampler.resample(frame):
                _append(decoder, resampled.to_ndarray().reshape(-1), media_time, out)
        return out


def _append(decoder: AudioStreamDecoder, pcm: np.ndarray, media_time: float, out: list[Window]) -> None:
    """Copy one packet's samples into the window being filled; each window that fills up goes to `out`."""
    if decoder.start_s is None:
        decoder.start_s = media_time
        decoder.filled = 0
    done = 0
    while done < len(pcm):
        take = min(WINDOW_SAMPLES - decoder.filled, len(pcm) - done)
        decoder.window[decoder.filled:decoder.filled + take] = pcm[done:done + take]
        decoder.filled += take
        done += take
        if decoder.filled == WINDOW_SAMPLES:
            out.append((decoder.start_s, decoder.window))
            decoder.windows += 1
            decoder.window = np.empty(WINDOW_SAMPLES, np.float32)  # the full one now belongs to the detector
            decoder.start_s += WINDOW_S
            decoder.filled = 0


def _flush_partial(decoder: AudioStreamDecoder, out: list[Window]) -> None:
    """At a gap: the part-filled window goes out if it is long enough, else it is dropped; the next packet
    starts a new window."""
    if decoder.start_s is not None and decoder.filled >= MIN_PARTIAL_SAMPLES:
        out.append((decoder.start_s, decoder.window[:decoder.filled].copy()))
        decoder.windows += 1
    decoder.start_s = None
    decoder.filled = 0


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
