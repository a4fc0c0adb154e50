"""What a media node offers the rooms that work on its streams (the archiver, the analyzers): the outlets.

A plugin depends on these protocols, never on the concrete `CandidateStream` or `MediaNode`, so the node can
change how it terminates WebRTC without the archive or the detectors noticing, and a test can drive a plugin
with a plain object. Three outlets per stream, and one way back to the page:
- encoded: every whole encoded frame (VP8 video, Opus audio) with its session media time, on the event loop;
- decoded: video frames decoded by the node, handed to each subscriber at the rate it asks for;
- audio: the microphone decoded to 16 kHz mono in half-second windows, for subscribers that ask for it;
- signals: the page's small JSON messages (tab hidden, blur, copy/paste) with the media time they arrived at;
- notify_candidate: a small JSON message to the page (a notice it shows the candidate: "more light, please");
- holds: a proctor's pause or the candidate's break holds monitoring (no flags; the recording goes on): each
  hold sink is told when one begins or ends, with the media time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core import vp8


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    kind: str  # "video" or "audio"
    codec: str  # "VP8", "opus", ...
    data: bytes
    timestamp: int  # RTP time, unwrapped, in clock_rate units
    clock_rate: int
    # VP8 temporal layer (0 = base) when the sender encodes layers (the page asks for VIDEO_SCALABILITY_MODE),
    # else None.
    temporal_layer: int | None = None

    @property
    def is_keyframe(self) -> bool:
        return self.codec == "VP8" and vp8.is_keyframe(self.data)


# Encoded frame and its session media time (audio mapped onto the video timeline).
EncodedSink = Callable[[EncodedFrame, float], None]
# Media time the signal arrived at, and the parsed JSON object (a string `type` and scalar values).
SignalSink = Callable[[float, dict[str, Any]], None]
# Monitoring held (a pause or a break began: True) or resumed (False), and the media time it happened at.
HoldSink = Callable[[bool, float], None]


class FrameSubscriber(Protocol):
    """Receives decoded video frames at the rate it asks for, on the event loop; must not block (hand work to
    a thread)."""

    fps: float

    def on_frame(self, media_time_s: float, frame: Any) -> None: ...


class DecodedOutlet(Protocol):
    def subscribe(self, subscriber: FrameSubscriber) -> None: ...


class AudioSubscriber(Protocol):
    """Receives the candidate's decoded audio (16 kHz mono float32) in windows, each with the session media time
    of its first sample, in order, on the event loop; must not block (hand work to a thread)."""

    def on_audio(self, windows: list[tuple[float, Any]]) -> None: ...


class AudioOutletView(Protocol):
    def subscribe(self, subscriber: AudioSubscriber) -> None: ...


class Timeline(Protocol):
    @property
    def end_s(self) -> float:
        """Session media time just after the last video frame received."""
        ...


class Stream(Protocol):
    """One candidate's stream as a plugin sees it. `attach` runs before the answer is made, so a plugin can
    subscribe before the first frame; close hooks run (and are awaited when coroutines) as the stream ends."""

    session_id: str
    encoded_sinks: list[EncodedSink]
    signal_sinks: list[SignalSink]
    hold_sinks: list[HoldSink]
    close_hooks: list[Callable[[Any], Any]]

    @property
    def held(self) -> bool:
        """Whether monitoring is held now (a pause or a break): detectors raise no flags meanwhile."""
        ...

    @property
    def clock(self) -> Timeline: ...

    @property
    def sampler(self) -> DecodedOutlet: ...

    @property
    def audio(self) -> AudioOutletView:
        """The microphone's audio, decoded by the node (media_server/audio.py) only when someone subscribes."""
        ...

    @property
    def losses(self) -> int:
        """Times the jitter buffer threw packets away: frames after it may be corrupt until a keyframe."""
        ...

    async def request_keyframe(self) -> bool: ...

    def notify_candidate(self, message: dict[str, Any]) -> None:
        """Send a small JSON object to the candidate's page over its data channel (e.g. `{"type": "notice", ...}`,
        which the page shows), on the event loop. Best effort and non-blocking: nothing happens when the channel
        is not open, and a failure is logged, never raised."""
        ...


class Plugin(Protocol):
    """A room that works on every stream of the node without the node knowing what it does: `attach` runs
    before the answer is made; `start`/`stop` bracket the node's life; `stats` goes into the node's /stats."""

    def attach(self, stream: Stream) -> None: ...

    async def start(self, node_id: str) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...
