"""The two outlets of a media node: encoded frames (for the archiver) and sampled decoded frames (analyzers).

Encoded: aiortc's RTCRtpReceiver reassembles frames in its jitter buffer and puts `(codec, JitterFrame)` on a
private queue read by its decoder thread. Wrapping that queue's `put` hands us every whole encoded frame
(VP8 or Opus) with its 90 kHz / 48 kHz RTP time, on the event loop, before decoding. It relies on private
names: aiortc is pinned exactly and tests/test_aiortc_internals.py fails loudly if they change.

Decoded: the receiver's decoder thread fills the track's queue; a frame nobody reads stays there forever,
so the video track is drained, and only the frames a subscriber asked for (by rate) are handed over. Audio
never reaches its decoder (nothing reads decoded audio). Subscribers
convert pixels themselves, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    kind: str  # "video" or "audio"
    codec: str  # "VP8", "opus", ...
    data: bytes
    timestamp: int  # RTP time, unwrapped by aiortc, in clock_rate units
    clock_rate: int

    @property
    def is_keyframe(self) -> bool:
        return self.codec == "VP8" and is_vp8_keyframe(self.data)


def is_vp8_keyframe(data: bytes) -> bool:
    return len(data) >= 10 and data[0] & 1 == 0 and data[3:6] == b"\x9d\x01\x2a"


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header."""
    if not is_vp8_keyframe(data):
        return None
    return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF


EncodedSink = Callable[[EncodedFrame], None]


def tap_encoded(receiver: RTCRtpReceiver, kind: str, sink: EncodedSink, decode: bool = True) -> None:
    """Call `sink` with each whole encoded frame the receiver passes to its decoder (on the event loop).

    With `decode=False` the frames stop here: nothing reads decoded audio, and decoding 50 Opus packets a
    second per stream in a thread that wakes the loop for each cost CPU for nothing. The end-of-stream None
    still goes through, so the decoder thread and the track end as usual.
    """
    decoder_queue: queue.Queue[Any] = getattr(receiver, DECODER_QUEUE_ATTR)
    original_put = decoder_queue.put

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            try:
                sink(EncodedFrame(kind, codec.name, frame.data, frame.timestamp, codec.clockRate))
            except Exception:  # a subscriber's bug must never stop the media path
                log.exception("encoded frame subscriber failed")
            if not decode:
                return
        original_put(item, block, timeout)

    decoder_queue.put = put  # type: ignore[method-assign]


def tap_loss(receiver: RTCRtpReceiver, on_loss: Callable[[], None]) -> None:
    """Call `on_loss` whenever the receiver's jitter buffer throws packets away.

    The jitter buffer does not check that a frame is complete: when it overflows (packets lost for good) it
    drops the oldest packets, and the next frame it assembles may start mid-frame. aiortc sends a PLI then;
    the archive must also drop frames until the keyframe that answers it.
    """
    jitter = getattr(receiver, JITTER_BUFFER_ATTR)
    original_smart_remove = jitter.smart_remove

    def smart_remove(count: int) -> bool:
        on_loss()
        return bool(original_smart_remove(count))

    jitter.smart_remove = smart_remove


class FrameSubscriber(Protocol):
    """Receives decoded video frames at the rate it asks for; must not block (hand work to a thread)."""

    fps: float

    def on_frame(self, media_time_s: float, frame: Any) -> None: ...


@dataclass
class _Slot:
    subscriber: FrameSubscriber
    next_due: float = 0.0


class FrameSampler:
    """Drains a decoded track and hands each subscriber the latest frame at its own rate."""

    def __init__(self, to_media_time: Callable[[int], float | None]) -> None:
        self.track: MediaStreamTrack | None = None
        self._to_media_time = to_media_time
        self._slots: list[_Slot] = []
        self.frames_decoded = 0
        self.frames_sampled = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, subscriber: FrameSubscriber) -> None:
        self._slots.append(_Slot(subscriber))

    def start(self, track: MediaStreamTrack) -> None:
        self.track = track
        self._task = asyncio.create_task(self._run(track), name=f"sampler-{track.id}")

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_decoded += 1
            if frame.pts is None:
                continue
            media_time = self._to_media_time(frame.pts)
            if media_time is None:
                continue
            for slot in self._slots:
                if media_time + 1e-6 >= slot.next_due:
                    # Schedule from the due time, not from now, so the rate holds exactly on average.
                    period = 1.0 / max(slot.subscriber.fps, 0.01)
                    slot.next_due = max(slot.next_due + period, media_time - period)
                    self.frames_sampled += 1
                    try:
                        slot.subscriber.on_frame(media_time, frame)
                    except Exception:
                        log.exception("frame subscriber failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
