"""One candidate's WebRTC connection on a media node: peer connection, outlets, timeline and stats."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel

from core import vp8
from media_server import aiortc_compat
from media_server.audio import AudioDecodePool, AudioOutlet
from media_server.decode import DecodePool, FrameSampler
from media_server.outlets import EncodedFrame, EncodedSink, HoldSink, SignalSink
from media_server.screen import NODE_ONLY_SIGNALS, ScreenTrack, rebundle, share_bandwidth_estimate
from media_server.taps import request_keyframe, tap_encoded, tap_loss

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
MAX_AV_DRIFT_S = 1.0
# ...for this long (audio RTP time) before it re-anchors: a busy event loop handles packets a second or two late
# (the wall-clock estimate runs ahead, then back), which is no clock reset. Re-anchoring at once made the audio
# timeline jump back and forth under load (the voice detector's windows overlapped and its flags came late).
AV_DRIFT_PERSIST_S = 2.0
# A forward jump larger than this between consecutive video frames is a broken timestamp, not real time.
MAX_TS_JUMP_S = 10.0
MAX_SIGNAL_BYTES = 4096
# How long the video jitter buffer may hold every later frame back waiting for a lost packet before it gives the
# packet up (and asks for a keyframe): a NACK is answered within a round trip or two, and aiortc alone waits for
# 512 more packets (~17 s at 30 packets/s), which froze the video after a data-channel flood (issue 19).
MAX_VIDEO_GAP_WAIT_S = 1.0


@dataclass
class MediaClock:
    """Session media time from the video RTP clock: base (media already received before this connection)
    plus the RTP time since this connection's first video frame. Backward steps and absurd jumps are
    refused (they would read as hours) and counted."""

    base_s: float
    first_ts: int | None = None
    last_ts: int | None = None
    offset_ts: int = 0  # RTP units removed after a refused forward jump
    refused: int = 0

    def media_time(self, timestamp: int) -> float | None:
        if self.first_ts is None:
            self.first_ts = self.last_ts = timestamp
        assert self.last_ts is not None
        delta = timestamp - self.offset_ts - self.last_ts
        if delta < -VIDEO_CLOCK:  # more than a second backwards: not a reordering
            self.refused += 1
            return None
        if delta > MAX_TS_JUMP_S * VIDEO_CLOCK:
            # Treat the jump as one frame interval so the timeline stays continuous.
            self.offset_ts += delta - VIDEO_CLOCK // 30
            self.refused += 1
        adjusted = timestamp - self.offset_ts
        if adjusted > self.last_ts:
            self.last_ts = adjusted
        return self.base_s + (adjusted - self.first_ts) / VIDEO_CLOCK

    def at(self, timestamp: int) -> float | None:
        """Media time of a timestamp without advancing the clock (decoded frames lag the encoded tap)."""
        if self.first_ts is None:
            return None
        adjusted = timestamp - self.offset_ts
        if adjusted < self.first_ts:
            return None
        return self.base_s + (adjusted - self.first_ts) / VIDEO_CLOCK

    @property
    def end_s(self) -> float:
        """Media time just after the last frame received (one nominal frame after its start)."""
        if self.first_ts is None or self.last_ts is None:
            return self.base_s
        return self.base_s + (self.last_ts - self.first_ts) / VIDEO_CLOCK + 1 / 30


@dataclass
class StreamStats:
    started_wall: float = field(default_factory=time.time)
    first_frame_wall: float | None = None
    last_frame_wall: float | None = None
    video_frames: int = 0
    video_bytes: int = 0
    audio_frames: int = 0
    audio_bytes: int = 0
    keyframes: int = 0
    width: int = 0
    height: int = 0
    resolution_changes: int = 0
    signals: int = 0
    bad_signals: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    jitter_ms: float = 0.0
    rtx_packets: int = 0  # retransmissions received (answers to our NACKs)
    _window: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=600))

    def add_video(self, frame: EncodedFrame) -> None:
        now = time.time()
        if self.first_frame_wall is None:
            self.first_frame_wall = now
        self.last_frame_wall = now
        self.video_frames += 1
        self.video_bytes += len(frame.data)
        self._window.append((now, frame.timestamp, len(frame.data)))
        size = vp8.frame_size(frame.data)
        if size is not None:
            self.keyframes += 1
            if size != (self.width, self.height):
                if self.width:
                    self.resolution_changes += 1
                self.width, self.height = size

    def rates(self, window_s: float = 2.0) -> tuple[float, float]:
        """(fps, kbit/s) over the frames that arrived in the last `window_s` seconds, timed by their RTP
        timestamps (capture time), so a burst after a stall does not read as a high frame rate."""
        now = time.time()
        recent = [(ts, n) for t, ts, n in self._window if now - t <= window_s]
        if len(recent) < 2:
            return 0.0, 0.0
        span = (recent[-1][0] - recent[0][0]) / VIDEO_CLOCK
        if span <= 0:
            return 0.0, 0.0
        return (len(recent) - 1) / span, sum(n for _, n in recent[1:]) * 8 / 1000 / span


@dataclass
class TokenBucket:
    """`burst` at once, then `rate_per_s`."""

    burst: float
    rate_per_s: float
    tokens: float = field(init=False)
    at: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class CandidateStream:
    """A candidate's peer connection. Other rooms attach to it through `on_encoded`, `sampler` and `on_signal`, and
    tell the page things through `notify_candidate`, without this class knowing what they do."""

    def __init__(self, session_id: str, pc: RTCPeerConnection, base_s: float, on_closed: Callable[[CandidateStream],
                 Any], decode_pool: DecodePool, audio_pool: AudioDecodePool | None = None) -> None:
        self.session_id = session_id
        self.pc = pc
        self.clock = MediaClock(base_s)
        self.stats = StreamStats()
        self.sampler = FrameSampler(self.clock.at)
        self._decode_pool = decode_pool
        # The microphone decoded to 16 kHz mono by the node's audio thread, for the voice detector (none: not
        # decoded at all; media_server/audio.py).
        self.audio = AudioOutlet()
        self._audio_pool = audio_pool
        # Encoded frames with their session media time (audio mapped onto the video clock).
        self.encoded_sinks: list[EncodedSink] = []
        # Times the jitter buffer threw packets away: the frames after it may be corrupt until a keyframe.
        self.losses = 0
        self._audio_anchor: tuple[int, float] | None = None
        self._audio_last_ts: int | None = None
        self._audio_drift_since: int | None = None  # RTP time the audio first drifted from the estimate
        self.signal_sinks: list[SignalSink] = []
        # Live intervention (media_server/intervention.py): the hold on now (an `exam_paused` or `exam_break`
        # event's kind, None when monitoring runs), who is told when it changes, and the interventions whose
        # acknowledgement the page may send (event ids: a page can only acknowledge what was sent to it).
        self.hold: str | None = None
        self.hold_sinks: list[HoldSink] = []
        self.on_ack: Callable[[CandidateStream, int, str], None] | None = None
        self._awaiting_ack: dict[int, str] = {}  # event id -> the notice kind it was sent under
        self.close_hooks: list[Callable[[CandidateStream], Any]] = []
        self.video_receiver: RTCRtpReceiver | None = None
        # The shared screen (media_server/screen.py): the offer's second video m-line. Watched (flagged when no
        # screen frames come) only when the offer has one.
        self.screen = ScreenTrack(self, self._video_now, self._screen_signal)
        self.screen_offered = False
        self._channels = 0  # data channels the peer opened
        self._page_channel: RTCDataChannel | None = None  # the first one: the page's, for notices back to it
        self._notices: dict[str, dict[str, Any]] = {}  # kind -> the notice the page should be showing now
        # One bucket per connection, not per channel: opening more channels must not refill it.
        self._signals = TokenBucket(self.SIGNAL_BURST, self.SIGNAL_RATE_PER_S)
        self._pongs = TokenBucket(self.PONG_BURST, self.PONG_RATE_PER_S)
        self.first_frame = asyncio.Event()
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_closed = on_closed
        self._closing = False
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)

    # --- setup ---------------------------------------------------------------------------------------
    async def answer(self, sdp: str) -> RTCSessionDescription:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        rebundle(self.pc)  # aiortc leaves a second video m-line (the screen) on a dead transport
        if self.pc.sctp is not None:
            # Before any channel opens: the first message can already be a hostile channel-open.
            self._guard_receive(self.pc.sctp)
        videos = 0
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                _prefer_codec(transceiver, "video/VP8")
                videos += 1
            # Webcam, screen: a third video m-line is nobody's and is refused (not decoded, not archived).
            transceiver.direction = "inactive" if transceiver.kind == "video" and videos > 2 else "recvonly"
        self.screen_offered = videos >= 2
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is None:
            return
        videos = [t.receiver for t in self.pc.getTransceivers() if t.kind == "video"]
        if track.kind == "video" and receiver in videos[1:2]:
            self.screen.attach(receiver, MAX_VIDEO_GAP_WAIT_S)  # the second video m-line: the screen
            share_bandwidth_estimate(videos[0], receiver)  # REMB from the webcam only: the screen's capped both
        elif track.kind == "video" and receiver not in videos[:1]:
            return  # a third one: inactive, nothing comes
        elif track.kind == "video":
            self.video_receiver = receiver
            # Decoded by the node's one decoding thread (media_server/decode.py), not aiortc's per receiver.
            tap_encoded(receiver, "video", self._on_video, decode=False)
            tap_loss(receiver, self._on_loss)
            aiortc_compat.give_up_stale_gaps(receiver, MAX_VIDEO_GAP_WAIT_S)
            self.sampler.start(self._decode_pool, self.request_keyframe)
        else:
            # The archive keeps the encoded Opus; the voice detector's copy is decoded by the node's one audio
            # thread (media_server/audio.py), never by aiortc's per-receiver decoder.
            tap_encoded(receiver, "audio", self._on_audio, decode=False)
            self.audio.start(self._audio_pool)

    def _on_video(self, frame: EncodedFrame) -> None:
        media_time = self.clock.media_time(frame.timestamp)
        if media_time is None:
            return
        self.stats.add_video(frame)
        if not self.first_frame.is_set():
            self.first_frame.set()
        self.sampler.submit(frame.data, frame.timestamp, frame.temporal_layer)
        for sink in self.encoded_sinks:
            sink(frame, media_time)

    def _on_loss(self) -> None:
        self.losses += 1

    def _on_audio(self, frame: EncodedFrame) -> None:
        media_time = self._audio_time(frame.timestamp)
        if media_time is None:
            return
        self.stats.audio_frames += 1
        self.stats.audio_bytes += len(frame.data)
        for sink in self.encoded_sinks:
            sink(frame, media_time)
        self.audio.submit(frame.data, media_time)

    def _video_now(self) -> float | None:
        """The session media time now, from the latest webcam frame (None before the first one)."""
        last_video = self.stats.last_frame_wall
        if last_video is None:
            return None
        return self.clock.end_s - 1 / 30 + (time.time() - last_video)

    def _screen_signal(self, media_time: float, data: dict[str, Any]) -> None:
        """A screen-share signal the node raises itself (media_server/screen.py), to the same sinks as the page's."""
        for sink in self.signal_sinks:
            try:
                sink(media_time, data)
            except Exception:
                log.exception("signal subscriber failed")

    def _audio_time(self, timestamp: int) -> float | None:
        """Audio has its own RTP clock and origin: anchor it to the video timeline at the first audio frame
        (the latest video frame's media time plus the wall time since it arrived), re-anchoring if it drifts
        more than MAX_AV_DRIFT_S from that estimate for AV_DRIFT_PERSIST_S, or at once when the RTP time steps
        back or jumps (a sender clock reset)."""
        last_video = self.stats.last_frame_wall
        if last_video is None:
            return None  # the timeline starts with video
        estimate = self.clock.end_s - 1 / 30 + (time.time() - last_video)
        if self._audio_anchor is not None:
            anchor_ts, anchor_time = self._audio_anchor
            media_time = anchor_time + (timestamp - anchor_ts) / AUDIO_CLOCK
            last, self._audio_last_ts = self._audio_last_ts, timestamp
            reset = last is not None and not -AUDIO_CLOCK < timestamp - last < MAX_TS_JUMP_S * AUDIO_CLOCK
            if not reset:
                if abs(media_time - estimate) <= MAX_AV_DRIFT_S:
                    self._audio_drift_since = None
                    return media_time
                if self._audio_drift_since is None:
                    self._audio_drift_since = timestamp
                if timestamp - self._audio_drift_since < AV_DRIFT_PERSIST_S * AUDIO_CLOCK:
                    return media_time
        self._audio_anchor = (timestamp, estimate)
        self._audio_last_ts, self._audio_drift_since = timestamp, None
        return estimate

    # Signals passed on to the rules (and so to Postgres and the live monitor): a burst, then a steady rate. A real
    # page sends a few a minute; a flood (a script on the page, a hostile peer) would otherwise become thousands
    # of events a second (every copy/cut/paste message is an event).
    SIGNAL_BURST = 40
    SIGNAL_RATE_PER_S = 10.0
    # The page opens one channel; a peer opening more gets a few (harmless), then each new one is closed.
    MAX_CHANNELS = 4
    # The page pings once a second; a ping flood is not answered (each pong costs the node a send).
    PONG_BURST = 5
    PONG_RATE_PER_S = 2.0

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self._guard_receive(channel.transport)
        self._channels += 1
        if self._channels > self.MAX_CHANNELS:
            self.stats.bad_signals += 1
            channel.close()
            return
        channel.on("message", lambda message: self._on_message(message, channel))
        if self._page_channel is None:
            self._page_channel = channel
            # A notice raised before the page's channel was there (the first frames can beat it) is shown now.
            if channel.readyState == "open":
                self._replay_notices()
            else:
                channel.on("open", self._replay_notices)

    def notify_candidate(self, message: dict[str, Any]) -> None:
        """A small JSON object to the page on its data channel (a notice it shows the candidate). Best effort: a
        notice that is still on when the channel opens is sent then; after the channel closes nothing is; `send`
        only queues (aiortc flushes it on the loop)."""
        kind = str(message.get("kind", ""))
        if message.get("active"):
            self._notices[kind] = message
        else:
            self._notices.pop(kind, None)
        self._send_notice(message)

    # --- live intervention -----------------------------------------------------------------------------
    MAX_AWAITING_ACKS = 64

    @property
    def held(self) -> bool:
        return self.hold is not None

    @property
    def page_channel_open(self) -> bool:
        """Whether a notice sent now reaches the page at once (else it waits for the channel, if it is kept)."""
        return self._page_channel is not None and self._page_channel.readyState == "open"

    def set_hold(self, hold: str | None) -> float:
        """Hold monitoring (`hold`: the event kind, exam_paused or exam_break) or resume it (None); every hold
        sink hears of a change. Returns the media time it happened at."""
        at = self.clock.end_s
        if hold != self.hold:
            was_held, self.hold = self.held, hold
            if was_held != self.held:
                for sink in self.hold_sinks:
                    try:
                        sink(self.held, at)
                    except Exception:
                        log.exception("hold subscriber failed")
        return at

    def expect_ack(self, event_id: int, notice_kind: str) -> None:
        """The page may acknowledge this intervention; an "ok" takes its notice off the replay list."""
        if len(self._awaiting_ack) >= self.MAX_AWAITING_ACKS:
            self._awaiting_ack.pop(next(iter(self._awaiting_ack)))
        self._awaiting_ack[event_id] = notice_kind

    def _on_ack(self, data: dict[str, Any]) -> None:
        event_id, stage = data.get("id"), data.get("stage")
        if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id not in self._awaiting_ack \
                or stage not in ("shown", "ok"):
            self.stats.bad_signals += 1
            return
        if stage == "ok":
            kind = self._awaiting_ack.pop(event_id)
            if kind.startswith("proctor:"):
                self._notices.pop(kind, None)  # read: not shown again when the channel reopens
        if self.on_ack is not None:  # the node records it and tells the proctor (on a task of its own)
            try:
                self.on_ack(self, event_id, stage)
            except Exception:
                log.exception("session %s: acknowledgement not handled", self.session_id)

    def _replay_notices(self) -> None:
        for message in list(self._notices.values()):
            self._send_notice(message)

    def _send_notice(self, message: dict[str, Any]) -> None:
        channel = self._page_channel
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(json.dumps(message))
        except Exception as exc:  # a transport closing under us: the notice is lost, the stream goes on
            log.debug("session %s: notice not sent: %r", self.session_id, exc)

    def _guard_receive(self, transport: Any) -> None:
        """aiortc parses each data-channel message itself before any handler runs (the UTF-8 of a text message,
        DCEP fields checked with asserts); a hostile message raises out of its receive path, which ends the DTLS
        transport and so the whole connection, media included. Drop such a message instead of the connection.
        Installed once per SCTP transport."""
        aiortc_compat.guard_data_channel_receive(transport, self._on_bad_message)

    def _on_bad_message(self, exc: Exception) -> None:
        self.stats.bad_signals += 1
        log.debug("session %s: data-channel message dropped: %r", self.session_id, exc)

    @staticmethod
    def _parse_signal(message: Any) -> dict[str, Any] | None:
        """A page signal: a flat, strict JSON object (RFC 8259: no NaN/Infinity, no overflow to inf) with a
        string `type` and scalar values Postgres can store (no NUL, no lone surrogate); None otherwise.
        Browsers' JSON.stringify never makes anything else, and the values may end up in event details."""
        if not isinstance(message, str) or len(message) > MAX_SIGNAL_BYTES:
            return None

        def not_json(name: str) -> Any:
            raise ValueError(f"{name} is not JSON")

        def finite(raw: str) -> float:
            value = float(raw)
            if value != value or abs(value) == float("inf"):
                raise ValueError("number out of range")
            return value

        def storable(text: str) -> bool:
            try:
                text.encode("utf-8")  # fails on a lone surrogate ("\ud800")
            except UnicodeEncodeError:
                return False
            return "\x00" not in text

        try:  # RecursionError: deeply nested arrays fit in 4 KB
            data = json.loads(message, parse_constant=not_json, parse_float=finite)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str) or len(data) > 16:
            return None
        for key, value in data.items():
            if value is not None and not isinstance(value, str | bool | int | float):
                return None
            if not storable(key) or (isinstance(value, str) and not storable(value)):
                return None
        return data

    def _on_message(self, message: Any, channel: RTCDataChannel) -> None:
        """Browser signals (tab hidden, blur, ...): small JSON objects with a `type`; anything else, and signals
        beyond the rate limit, are counted as bad and dropped, never allowed to raise."""
        data = self._parse_signal(message)
        if data is None:
            self.stats.bad_signals += 1
            return
        if data["type"] == "ping":
            # The page's liveness check: a dead node stops answering and the page reconnects within seconds,
            # instead of waiting for ICE consent to expire (30 s).
            if not self._pongs.take():
                self.stats.bad_signals += 1
                return
            if channel.readyState == "open":  # answered on the channel the ping came on
                channel.send(json.dumps({"type": "pong", "t": data.get("t")}))
            return
        if not self._signals.take():
            self.stats.bad_signals += 1
            return
        self.stats.signals += 1
        if data["type"] == "ack":  # the page showed or the candidate confirmed an intervention: not a signal
            self._on_ack(data)
            return
        if data["type"] in NODE_ONLY_SIGNALS:  # only the screen's frames end screen_share_stopped
            self.stats.bad_signals += 1
            return
        if data["type"] == "screen_share_stopped":
            self.screen.page_says_stopped()
        media_time = self.clock.end_s
        for sink in self.signal_sinks:
            try:
                sink(media_time, data)
            except Exception:
                log.exception("signal subscriber failed")

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s connection %s", self.session_id, state)
        if state in ("failed", "closed"):
            await self.close(f"connection {state}")

    # --- control -------------------------------------------------------------------------------------
    async def request_keyframe(self) -> bool:
        """Send an RTCP PLI to the browser; Chromium answers with a keyframe 50-70 ms later."""
        receiver = self.video_receiver
        return receiver is not None and await request_keyframe(receiver)

    async def refresh_receiver_stats(self) -> None:
        """Packet counts and loss of the video stream, from aiortc's RTCP receiver statistics.

        Read from the receiver's per-SSRC statistics rather than getStats(): aiortc gives every SSRC's
        inbound-rtp entry the same id, so once retransmissions arrive getStats() reports the RTX stream's
        counts (a few dozen packets, no loss) instead of the media stream's."""
        receiver = self.video_receiver
        if receiver is None:
            return
        for stream in aiortc_compat.receiver_stream_stats(receiver):
            if stream.rtx:
                self.stats.rtx_packets = stream.packets_received
            else:
                self.stats.packets_received = stream.packets_received
                self.stats.packets_lost = max(0, stream.packets_lost)
                self.stats.jitter_ms = round(stream.jitter / (VIDEO_CLOCK / 1000), 1)  # RTP units

    async def close(self, reason: str) -> None:
        if self._closing:
            # Whoever closes a second time (a reconnect replacing this stream) must see it fully closed,
            # its media time persisted, before going on.
            await self.closed.wait()
            return
        self._closing = True
        log.info("session %s stream closing: %s", self.session_id, reason)
        await self.sampler.stop()
        self.audio.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.screen.close()  # its last segment, before the stream's own close hooks
        for hook in self.close_hooks:
            try:
                result = hook(self)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("close hook failed for session %s", self.session_id)
        try:
            await self._on_closed(self)
        finally:
            self.closed.set()

    def snapshot(self) -> dict[str, Any]:
        fps, kbps = self.stats.rates()
        return {
            "session_id": self.session_id,
            "state": self.pc.connectionState,
            "media_time_s": round(self.clock.end_s, 3),
            "fps": round(fps, 1),
            "kbps": round(kbps, 1),
            "width": self.stats.width,
            "height": self.stats.height,
            "video_frames": self.stats.video_frames,
            "audio_frames": self.stats.audio_frames,
            "keyframes": self.stats.keyframes,
            "packets_received": self.stats.packets_received,
            "packets_lost": self.stats.packets_lost,
            "loss_pct": round(100 * self.stats.packets_lost / max(1, self.stats.packets_lost
                                                                  + self.stats.packets_received), 2),
            "jitter_ms": self.stats.jitter_ms,
            "rtx_packets": self.stats.rtx_packets,
            "resolution_changes": self.stats.resolution_changes,
            "timestamp_refused": self.clock.refused,
            "frames_decoded": self.sampler.frames_decoded,
            "frames_sampled": self.sampler.frames_sampled,
            "frames_skipped": self.sampler.frames_skipped,
            "frames_above_base": self.sampler.frames_above_base,  # temporal layers 1-2: archived, not decoded
            "audio": self.audio.stats(),
            "signals": self.stats.signals,
            "screen": self.screen.snapshot() if self.screen_offered else None,
            "bad_signals": self.stats.bad_signals,
            "first_frame_at": self.stats.first_frame_wall,
            "first_frame_after_s": round(self.stats.first_frame_wall - self.stats.started_wall, 3)
            if self.stats.first_frame_wall else None,
        }


def _prefer_codec(transceiver: Any, mime: str) -> None:
    capabilities = RTCRtpReceiver.getCapabilities(transceiver.kind)
    if capabilities is None:
        return
    codecs = capabilities.codecs
    preferred = [c for c in codecs if c.mimeType == mime] + [c for c in codecs if c.mimeType != mime]
    transceiver.setCodecPreferences(preferred)
