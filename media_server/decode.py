"""One VP8 decoding thread for every stream on a media node, instead of aiortc's thread per receiver.

aiortc gives each receiver its own decoder thread, which hands every decoded frame (30/s/stream) to the event
loop through run_coroutine_threadsafe. At 12 streams that was ~10k context switches a second (GIL handoffs
between a dozen threads and the loop) and a loop wake-up per frame, for frames the analyzers mostly do not
want (they sample 1-4 a second). Here the encoded frames (from the encoded tap, already on the loop) go
into one queue; one thread decodes them with PyAV (GIL released inside FFmpeg), takes from the queue whatever
has piled up, and wakes the loop only for the frames a subscriber is due to receive.

A stream that falls too far behind (the machine is overloaded) drops its backlog, asks the browser for a
keyframe and resumes there: analysis of a late frame is worth less than analysis of a current one, and the
archive does not depend on this path.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error

from core import vp8
from media_server.outlets import FrameSubscriber
from proctor import priority

log = logging.getLogger(__name__)

# A stream's frames waiting to be decoded beyond this (12 s of a layered stream's 7.5 base-layer frames a second,
# 3 s of 30 fps without layers) are dropped: see the module doc.
MAX_BACKLOG_FRAMES = 90
# Frames taken from the queue per pass: bounds how long one pass runs before the deliveries go out.
BATCH = 64
# At most one keyframe request per stream this often (a lost keyframe answer is asked for again).
KEYFRAME_RETRY_S = 1.0


@dataclass(eq=False)
class StreamDecoder:
    """One stream's decoding state; touched only by the decoding thread, except `closed` and counters."""

    on_frame: Callable[[Any], list[Any]]  # decoding thread: the frame -> deliveries due (may be empty)
    deliver: Callable[[list[Any]], None]  # event loop: hand over the deliveries
    request_keyframe: Callable[[], Any]  # event loop: a coroutine function asking the browser for a keyframe
    codec: Any = None
    backlog: int = 0
    waiting_for_keyframe: bool = True  # decoding starts at a keyframe
    last_keyframe_request: float = 0.0
    closed: bool = False
    frames_decoded: int = 0
    frames_skipped: int = 0  # dropped behind (overload) or while waiting for a keyframe
    frames_above_base: int = 0  # temporal layer > 0: never decoded (see FrameSampler.submit)
    decode_errors: int = 0


class DecodePool:
    """The node's decoding thread. `submit` is called on the event loop; everything else runs in the thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[StreamDecoder, bytes, int] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="vp8-decode", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def queued(self) -> int:
        """Encoded frames waiting to be decoded, all streams (approximate)."""
        return self._queue.qsize()

    def submit(self, decoder: StreamDecoder, data: bytes, timestamp: int) -> None:
        if decoder.closed:
            return
        if decoder.backlog >= MAX_BACKLOG_FRAMES:
            # Behind by seconds: drop what is queued (the thread skips it) and restart at a keyframe.
            decoder.waiting_for_keyframe = True
        decoder.backlog += 1
        self._queue.put((decoder, data, timestamp))

    # --- the decoding thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        priority.lower_this_thread()  # decoding feeds only the analyzers: the loop carrying RTP comes first
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            deliveries: list[tuple[StreamDecoder, list[Any]]] = []
            for item in batch:
                if item is None:
                    self._flush(deliveries)
                    return
                decoder, data, timestamp = item
                decoder.backlog -= 1
                due = self._decode(decoder, data, timestamp)
                if due:
                    deliveries.append((decoder, due))
            self._flush(deliveries)

    def _flush(self, deliveries: list[tuple[StreamDecoder, list[Any]]]) -> None:
        if deliveries and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_deliver_all, deliveries)
            except RuntimeError:  # the loop is closed: the node is stopping
                pass

    def _decode(self, decoder: StreamDecoder, data: bytes, timestamp: int) -> list[Any]:
        if decoder.closed:
            return []
        if decoder.waiting_for_keyframe:
            if not vp8.is_keyframe(data) or decoder.backlog >= MAX_BACKLOG_FRAMES:
                decoder.frames_skipped += 1
                self._ask_keyframe(decoder)
                return []
            decoder.waiting_for_keyframe = False
        if decoder.codec is None:
            decoder.codec = av.CodecContext.create("vp8", "r")
            decoder.codec.thread_count = 1  # one thread for the whole node: no per-stream FFmpeg threads
        packet = av.Packet(data)
        packet.pts = timestamp
        try:
            frames = decoder.codec.decode(packet)
        except av.error.FFmpegError as exc:
            decoder.decode_errors += 1
            decoder.waiting_for_keyframe = True
            log.debug("VP8 decode error, waiting for a keyframe: %s", exc)
            self._ask_keyframe(decoder)
            return []
        due: list[Any] = []
        for frame in frames:
            decoder.frames_decoded += 1
            due += decoder.on_frame(frame)
        return due

    def _ask_keyframe(self, decoder: StreamDecoder) -> None:
        now = time.monotonic()
        if now - decoder.last_keyframe_request < KEYFRAME_RETRY_S or self._loop is None:
            return
        decoder.last_keyframe_request = now

        def ask() -> None:
            if not decoder.closed:
                task = asyncio.ensure_future(decoder.request_keyframe())
                task.add_done_callback(_ignore_result)

        try:
            self._loop.call_soon_threadsafe(ask)
        except RuntimeError:
            pass


def _deliver_all(deliveries: list[tuple[StreamDecoder, list[Any]]]) -> None:
    for decoder, due in deliveries:
        if decoder.closed:
            continue
        try:
            decoder.deliver(due)
        except Exception:  # a subscriber's bug must never stop the other streams' frames
            log.exception("frame delivery failed")


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("keyframe request failed: %r", task.exception())


# --- the sampler: which decoded frames go to which subscriber ------------------------------------------------------
@dataclass
class _Slot:
    subscriber: FrameSubscriber
    next_due: float = 0.0


class FrameSampler:
    """One stream's decoded outlet: frames decoded by the node's DecodePool; each subscriber gets the latest
    frame at its own rate. The due check runs in the decoding thread (the only writer of next_due), so the
    event loop only sees the frames someone will use."""

    def __init__(self, to_media_time: Callable[[int], float | None]) -> None:
        self._to_media_time = to_media_time
        self._slots: list[_Slot] = []
        self.frames_sampled = 0
        self.decoder: StreamDecoder | None = None
        self._pool: DecodePool | None = None

    def subscribe(self, subscriber: FrameSubscriber) -> None:
        self._slots.append(_Slot(subscriber))

    def start(self, pool: DecodePool, request_keyframe: Callable[[], Any]) -> None:
        self._pool = pool
        self.decoder = StreamDecoder(self._due, self._deliver, request_keyframe)

    def submit(self, data: bytes, timestamp: int, temporal_layer: int | None = None) -> None:
        """An encoded VP8 frame, on the event loop (from the encoded tap).

        When the browser encodes temporal layers (the page asks for VIDEO_SCALABILITY_MODE: L1T2's layers 0,1
        or L1T3's 0,2,1,2 repeating), base-layer frames reference only base-layer frames, so decoding those alone
        gives correct pictures at half or a quarter of the frame rate (7.5 of 15 or 30 fps), still at least what
        any detector samples (proctor/settings.py checks it): the frames above the base layer
        are not decoded at all (the archive keeps every frame: it takes them from the encoded outlet). Without
        layers every frame is decoded, as before."""
        if self._pool is None or self.decoder is None or not self._slots:
            return
        if temporal_layer:
            self.decoder.frames_above_base += 1
            return
        self._pool.submit(self.decoder, data, timestamp)

    @property
    def frames_above_base(self) -> int:
        return self.decoder.frames_above_base if self.decoder else 0

    @property
    def frames_decoded(self) -> int:
        return self.decoder.frames_decoded if self.decoder else 0

    @property
    def frames_skipped(self) -> int:
        return self.decoder.frames_skipped if self.decoder else 0

    def _due(self, frame: Any) -> list[Any]:
        """Decoding thread: (media time, frame, slots) if any subscriber is due for this frame."""
        if frame.pts is None:
            return []
        media_time = self._to_media_time(frame.pts)
        if media_time is None:
            return []
        slots = []
        for slot in self._slots:
            if media_time + 1e-6 >= slot.next_due:
                # Schedule from the due time, not from now, so the rate holds exactly on average.
                period = 1.0 / max(slot.subscriber.fps, 0.01)
                slot.next_due = max(slot.next_due + period, media_time - period)
                slots.append(slot)
        return [(media_time, frame, slots)] if slots else []

    def _deliver(self, due: list[Any]) -> None:
        """Event loop: hand the frames over."""
        for media_time, frame, slots in due:
            for slot in slots:
                self.frames_sampled += 1
                try:
                    slot.subscriber.on_frame(media_time, frame)
                except Exception:
                    log.exception("frame subscriber failed")

    async def stop(self) -> None:
        if self.decoder is not None:
            self.decoder.closed = True
