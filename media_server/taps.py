"""The encoded outlet of a media node: whole encoded frames (for the archiver and for decoding) and loss.

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

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver

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
