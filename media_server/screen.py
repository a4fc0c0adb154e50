"""The candidate's shared screen: the second video track of the peer connection, archived, never analysed.

Which track is the screen: the candidate page adds its camera tracks first and the screen transceiver after them
(always, with no track until the candidate shares), so the offer's second video m-line (in m-line order, which is
transceiver order in aiortc) is the screen and the first is the webcam. The m-line order is part of the offer
and cannot change during a connection; a `replaceTrack` (the candidate shares again) keeps it. Labels and msids
would also do, but the page can set those to anything; the order is what the page's own code fixes. A third
video m-line is refused (made inactive).

Timeline: the screen has its own RTP clock and origin (90 kHz, a random start). It is anchored to the session
media timeline at its first frame (the webcam clock's time of the latest webcam frame plus the wall time since
it arrived), like the audio, and re-anchored when it drifts more than MAX_DRIFT_S from that estimate (a new
sender after a reconnect). Frames never go backwards: one that would is dropped.

Watchdog: the page says when the track ends or is muted; the node does not take its word for the end of it.
Screen frames arriving again (for longer than RESUME_AFTER_S after the stop) end `screen_share_stopped`, and no
screen frame for NO_FRAMES_S (Chromium sends even a still screen at its minimum rate, and a PLI makes it send a
keyframe now) starts it, so a page that stops sending without saying so is flagged too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver

from core import vp8
from media_server import aiortc_compat
from media_server.outlets import EncodedFrame, EncodedSink, HoldSink, SignalSink
from media_server.taps import request_keyframe, tap_encoded, tap_loss

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
MAX_DRIFT_S = 1.0
# The page asks for at most 2 fps: a frame "lasts" this long when nothing follows it (the last one of a segment).
NOMINAL_FRAME_S = 0.5
# No screen frame for this long after the webcam's first one: the screen is not being shared (a PLI first).
NO_FRAMES_S = 6.0
PLI_AFTER_S = 2.0
# Frames already on the wire when the page said the share stopped must not end the flag it just started.
RESUME_AFTER_S = 1.0
WATCH_PERIOD_S = 1.0
# Signal types only the node may raise: a page saying so is not believed (counted as a bad signal).
NODE_ONLY_SIGNALS = frozenset({"screen_share_resumed"})


def rebundle(pc: RTCPeerConnection) -> int:
    """Put every bundled transceiver on the BUNDLE group's transport; returns how many were moved.

    aiortc 1.16 with its default BALANCED policy gives a second transceiver of a kind the transport of the first
    one of that kind and marks it bundled; applying the offer's BUNDLE group then moves only the transceivers not
    yet marked to the group's transport. The webcam's transceiver moves, the screen's stays on the webcam's old
    transport, which aiortc stops: the screen's RTP never reaches its receiver (measured: no frames, transport
    'new'). Call after setRemoteDescription, before the answer."""
    description = pc.remoteDescription
    if description is None:
        return 0
    mids: list[str] = []
    for line in description.sdp.splitlines():
        if line.startswith("a=group:BUNDLE "):
            mids = line.split()[1:]
            break
    transceivers = pc.getTransceivers()
    primary = next((t.receiver.transport for t in transceivers if mids and t.mid == mids[0]), None)
    if primary is None and pc.sctp is not None and mids and getattr(pc.sctp, "mid", None) == mids[0]:
        primary = pc.sctp.transport
    moved = 0
    for transceiver in transceivers:
        if primary is not None and transceiver.mid in mids[1:] and transceiver.receiver.transport is not primary:
            transceiver.receiver.setTransport(primary)
            transceiver.sender.setTransport(primary)
            moved += 1
    return moved


_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"


def share_bandwidth_estimate(webcam: RTCRtpReceiver, screen: RTCRtpReceiver) -> None:
    """Only the webcam's receiver reports the connection's bandwidth (REMB); the screen's says nothing.

    aiortc gives every video receiver its own RemoteBitrateEstimator, and each sends REMB with its own estimate;
    Chromium takes a REMB as the estimate of the whole connection, so the screen's (from a 2-fps stream of a few
    hundred kbit/s at most) capped the webcam too. Measured here (headless Chromium, loopback): the webcam at
    170-350 kbit/s 8 s after connecting, against 510-610 kbit/s without a screen. One estimator fed by both
    receivers was worse (Chromium's estimate fell to 163 kbit/s, the webcam to 4-6 fps): aiortc's estimator
    assumes one stream's packet groups. With the webcam's estimate alone the screen (very-low priority, 1-2 fps)
    takes a small share of it. Private aiortc name (pinned version; tests/test_screen_share.py fails loudly if it
    changes)."""
    if getattr(webcam, _ESTIMATOR, None) is None or not hasattr(screen, _ESTIMATOR):
        raise RuntimeError("aiortc's receiver bandwidth estimator moved: check media_server/screen.py")
    setattr(screen, _ESTIMATOR, None)


@dataclass
class ScreenStats:
    frames: int = 0
    bytes: int = 0
    keyframes: int = 0
    width: int = 0
    height: int = 0
    dropped: int = 0  # before the webcam's first frame, or going backwards
    reanchored: int = 0
    first_wall: float | None = None
    last_wall: float | None = None


class ScreenClock:
    """Media time of the screen's frames on the session timeline (see the module's docstring)."""

    def __init__(self, estimate: Callable[[], float | None]) -> None:
        self._estimate = estimate  # the webcam's "now" on the session timeline; None before its first frame
        self._anchor: tuple[int, float] | None = None
        self.last_s: float | None = None
        self.reanchored = 0

    def media_time(self, timestamp: int) -> float | None:
        estimate = self._estimate()
        if estimate is None:
            return None
        t: float | None = None
        if self._anchor is not None:
            anchor_ts, anchor_s = self._anchor
            t = anchor_s + (timestamp - anchor_ts) / VIDEO_CLOCK
            if abs(t - estimate) > MAX_DRIFT_S:
                t = None
                self.reanchored += 1
        if t is None:
            self._anchor = (timestamp, estimate)
            t = estimate
        if self.last_s is not None and t <= self.last_s:
            if self.last_s - t > MAX_DRIFT_S:
                return None
            t = self.last_s + 0.001  # a re-anchor a hair behind the last frame: keep the order
        self.last_s = t
        return t

    @property
    def end_s(self) -> float:
        """Just after the last screen frame (its nominal duration): where the screen's last segment ends."""
        return 0.0 if self.last_s is None else self.last_s + NOMINAL_FRAME_S


class ScreenTrack:
    """The screen track of one candidate stream, as the archive sees it: the same outlets as the webcam's
    (encoded frames with their session media time, loss count, keyframe requests, close hooks), so the webcam's
    segmenter records it unchanged. Frames arrive only once the page has shared a screen."""

    def __init__(self, owner: Any, estimate: Callable[[], float | None],
                 signal: Callable[[float, dict[str, Any]], None]) -> None:
        self._owner = owner  # the CandidateStream (held, notify_candidate, sampler are its)
        self.session_id: str = owner.session_id
        self.clock = ScreenClock(estimate)
        self.stats = ScreenStats()
        self.encoded_sinks: list[EncodedSink] = []
        self.signal_sinks: list[SignalSink] = []  # unused: screen signals go through the stream's sinks
        self.hold_sinks: list[HoldSink] = []
        self.close_hooks: list[Callable[[Any], Any]] = []
        self.losses = 0
        self.receiver: RTCRtpReceiver | None = None
        self._signal = signal
        self._estimate = estimate
        # Watchdog state: whether screen_share_stopped is on (the page's word or ours), since when (wall).
        self.stopped = False
        self._stopped_wall = 0.0
        self._last_pli = 0.0

    # --- the Stream outlet protocol (archiver.segmenter uses these) --------------------------------------------
    @property
    def held(self) -> bool:
        return bool(self._owner.held)

    @property
    def sampler(self) -> Any:
        return self._owner.sampler  # the webcam's: nothing decodes the screen

    def notify_candidate(self, message: dict[str, Any]) -> None:
        self._owner.notify_candidate(message)

    async def request_keyframe(self) -> bool:
        receiver = self.receiver
        return receiver is not None and await request_keyframe(receiver)

    # --- media -------------------------------------------------------------------------------------------------
    def attach(self, receiver: RTCRtpReceiver, max_gap_wait_s: float) -> None:
        """Tap the screen receiver's encoded frames; never decoded (no analyzer looks at the screen)."""
        self.receiver = receiver
        tap_encoded(receiver, "video", self._on_frame, decode=False)
        tap_loss(receiver, self._on_loss)
        aiortc_compat.give_up_stale_gaps(receiver, max_gap_wait_s)

    def _on_loss(self) -> None:
        self.losses += 1

    def _on_frame(self, frame: EncodedFrame) -> None:
        media_time = self.clock.media_time(frame.timestamp)
        if media_time is None:
            self.stats.dropped += 1
            return
        now = time.time()
        self.stats.frames += 1
        self.stats.bytes += len(frame.data)
        self.stats.first_wall = self.stats.first_wall or now
        self.stats.last_wall = now
        self.stats.reanchored = self.clock.reanchored
        size = vp8.frame_size(frame.data)
        if size is not None:
            self.stats.keyframes += 1
            self.stats.width, self.stats.height = size
        if self.stopped and now - self._stopped_wall >= RESUME_AFTER_S:
            self.stopped = False
            self._signal(media_time, {"type": "screen_share_resumed"})
        for sink in self.encoded_sinks:
            sink(frame, media_time)

    # --- the page's word and the watchdog ---------------------------------------------------------------------
    def page_says_stopped(self) -> None:
        """The page reported the track ended or muted (its signal goes to the rules as it is)."""
        self.stopped = True
        self._stopped_wall = time.time()

    def watch(self, now: float, webcam_started_wall: float | None) -> None:
        """Once a second: a PLI when the screen has been quiet for PLI_AFTER_S, the flag after NO_FRAMES_S."""
        if webcam_started_wall is None:
            return
        last = self.stats.last_wall or webcam_started_wall
        quiet = now - last
        if quiet >= PLI_AFTER_S and now - self._last_pli >= PLI_AFTER_S and self.receiver is not None:
            self._last_pli = now
            asyncio.ensure_future(self.request_keyframe())
        if quiet >= NO_FRAMES_S and not self.stopped:
            self.stopped = True
            self._stopped_wall = now
            estimate = self._estimate()
            if self.clock.last_s is not None:
                at = self.clock.end_s
            else:  # never shared on this connection: flagged from the connection's first webcam frame
                at = self._owner.clock.base_s
            if estimate is not None:
                at = min(at, estimate)
            self._signal(at, {"type": "screen_share_stopped", "reason": "no_frames" if self.clock.last_s is not None
                              else "never_shared"})

    async def close(self) -> None:
        for hook in self.close_hooks:
            try:
                result = hook(self)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("screen close hook failed for session %s", self.session_id)

    def snapshot(self) -> dict[str, Any]:
        return {"frames": self.stats.frames, "kbytes": round(self.stats.bytes / 1000, 1),
                "keyframes": self.stats.keyframes, "width": self.stats.width, "height": self.stats.height,
                "dropped": self.stats.dropped, "reanchored": self.stats.reanchored, "stopped": self.stopped,
                "media_time_s": None if self.clock.last_s is None else round(self.clock.last_s, 3)}
