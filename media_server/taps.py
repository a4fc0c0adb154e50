"""The encoded outlet of a media node: whole encoded frames (for the archiver and for decoding) and loss.

Encoded: aiortc's RTCRtpReceiver reassembles frames in its jitter buffer and hands `(codec, frame)` to its
decoder thread; media_server/aiortc_compat.py taps that hand-over, which gives us every whole encoded frame
(VP8 or Opus) with its 90 kHz / 48 kHz RTP time, on the event loop, before decoding.

Loss: the jitter buffer does not check that a frame is complete. When it overflows (packets lost for good)
or resets after a misordered packet, it throws data away and the next frame it assembles may start
mid-frame; aiortc sends a PLI then, and the archive must also drop frames until the keyframe that answers it.

Decoded: the receiver's decoder thread fills the track's queue; a frame nobody reads stays there forever,
so the video track is drained, and only the frames a subscriber asked for (by rate) are handed over. Audio
never reaches aiortc's decoder: the voice detector's copy is decoded by the node's one audio thread
(media_server/audio.py), from these encoded frames. Subscribers convert pixels themselves, off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCRtpReceiver

from media_server import aiortc_compat
from media_server.outlets import EncodedFrame

log = logging.getLogger(__name__)


FrameSink = Callable[[EncodedFrame], None]


def tap_encoded(receiver: RTCRtpReceiver, kind: str, sink: FrameSink, decode: bool = True) -> None:
    """Call `sink` with each whole encoded frame the receiver passes to its decoder (on the event loop).

    With `decode=False` the frames stop here: aiortc's decoder thread per receiver would wake the loop for each of
    the 17-50 Opus packets a second per stream (AUDIO_PTIME_MS); the node decodes what the voice detector needs in
    one thread instead.
    The end of the stream still goes through, so the decoder thread and the track end as usual.
    """

    def on_frame(codec: str, clock_rate: int, data: bytes, timestamp: int, layer: int | None) -> None:
        try:
            sink(EncodedFrame(kind, codec, data, timestamp, clock_rate, layer))
        except Exception:  # a subscriber's bug must never stop the media path
            log.exception("encoded frame subscriber failed")

    aiortc_compat.tap_decoder_queue(receiver, on_frame, decode=decode)


def tap_loss(receiver: RTCRtpReceiver, on_loss: Callable[[], None]) -> None:
    """Call `on_loss` whenever the receiver's jitter buffer throws data away (overflow or misorder reset)."""
    aiortc_compat.on_jitter_loss(receiver, on_loss)


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send an RTCP PLI to the browser for this receiver's media; Chromium answers with a keyframe 50-70 ms later.
    False when nothing has arrived yet to name. Chromium also sends RTX (retransmissions, probing padding) on a
    second SSRC; a PLI must name the media SSRC or it is ignored."""
    media = aiortc_compat.media_ssrcs(receiver)
    if not media:
        return False
    await aiortc_compat.send_pli(receiver, media[0])
    return True
