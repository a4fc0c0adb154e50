"""The shared screen (issue 18) below the browser: the node tells the webcam from the screen by m-line order and
refuses a third video; the screen's clock maps onto the session timeline; the watchdog raises
screen_share_stopped when no screen frames come and only the node's frames end it (a page cannot); the archive
records the screen in its own segments (own numbering, own keys, no audio) on the same timeline and finalize joins
them into the screen master, leaving the webcam's segments and master exactly as before."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from archiver.assemble import finalize
from archiver.segmenter import Archive
from archiver.webm import probe
from bench.synthetic import EncodedClip, encode_clip
from core.rules import EventRules, RulesConfig, browser_signal_to_condition
from media_server import screen as screen_mod
from media_server.decode import DecodePool
from media_server.outlets import EncodedFrame
from media_server.screen import ScreenClock, ScreenTrack
from media_server.stream import CandidateStream
from proctor.context import Context
from tests.support.media import face_canvas
from tests.support.waiting import wait_for

FPS = 30
SCREEN_FPS = 2


# --- which track is the screen --------------------------------------------------------------------------------
async def _offer(videos: int) -> str:
    client = RTCPeerConnection()
    client.addTransceiver("audio", direction="sendonly")
    for _ in range(videos):
        client.addTransceiver("video", direction="sendonly")
    client.createDataChannel("signals")
    await client.setLocalDescription(await client.createOffer())
    sdp = client.localDescription.sdp
    await client.close()
    return sdp


async def _answered(videos: int) -> tuple[CandidateStream, str]:
    pool = DecodePool()
    pool.start(asyncio.get_running_loop())

    async def closed(_stream: CandidateStream) -> None:
        return None

    stream = CandidateStream("s", RTCPeerConnection(), 0.0, closed, pool)
    answer = await stream.answer(await _offer(videos))
    return stream, answer.sdp


def _directions(sdp: str) -> list[tuple[str, str]]:
    out, kind = [], ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line in ("a=recvonly", "a=inactive", "a=sendrecv", "a=sendonly") and kind in ("audio", "video"):
            out.append((kind, line[2:]))
    return out


async def test_second_video_mline_is_the_screen_and_a_third_is_refused() -> None:
    stream, answer = await _answered(3)
    try:
        videos = [t for t in stream.pc.getTransceivers() if t.kind == "video"]
        assert stream.screen_offered
        assert stream.video_receiver is videos[0].receiver  # the webcam: decoded, analysed, archived
        assert stream.screen.receiver is videos[1].receiver  # the screen: archived only
        assert stream.screen.receiver is not stream.video_receiver
        # Only the webcam's receiver reports bandwidth (REMB): the screen's own estimate capped the webcam.
        estimator = "_RTCRtpReceiver__remote_bitrate_estimator"
        assert getattr(videos[0].receiver, estimator) is not None
        assert getattr(videos[1].receiver, estimator) is None
        # One transport for all (BUNDLE): aiortc alone leaves the screen's on a transport it stops.
        assert len({t.receiver.transport for t in stream.pc.getTransceivers()}) == 1
        assert _directions(answer) == [("audio", "recvonly"), ("video", "recvonly"), ("video", "recvonly"),
                                       ("video", "inactive")]
    finally:
        await stream.pc.close()


async def test_an_offer_without_a_screen_is_not_watched() -> None:
    stream, answer = await _answered(1)
    try:
        assert not stream.screen_offered and stream.screen.receiver is None
        assert stream.video_receiver is not None
        assert stream.snapshot()["screen"] is None
    finally:
        await stream.pc.close()


def test_answer_tunes_both_video_mlines_alike() -> None:
    """Chromium takes the connection's start/min/max from one m-line: the screen's must carry the webcam's."""
    from media_server.sdp import tune_answer

    section = ("m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=rtpmap:96 VP8/90000\r\n"
               "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n")
    answer = "v=0\r\n" + section.format(mid=1) + section.format(mid=2)
    tuned = tune_answer(answer, 1200)
    webcam, screen = tuned.split("m=video")[1:]
    for part in (webcam, screen):  # the webcam's values plus the screen's share
        assert "a=fmtp:96 x-google-start-bitrate=1500;x-google-min-bitrate=900;x-google-max-bitrate=1800" in part
        assert "b=AS:1800" in part
    alone = tune_answer("v=0\r\n" + section.format(mid=1), 1200)  # no screen: as before
    assert "a=fmtp:96 x-google-start-bitrate=1200;x-google-min-bitrate=600;x-google-max-bitrate=1200" in alone
    assert "apt=96;" not in tuned  # rtx untouched
    assert tune_answer(tuned, 1200) == tuned  # idempotent


def test_answer_asks_for_the_audio_ptime_on_the_audio_mline_only() -> None:
    """AUDIO_PTIME_MS: `a=ptime:N` on each audio m-line (Chromium's Opus encoder takes its frame length from it),
    nothing on video; 20, what browsers send unasked, leaves the answer as it was."""
    from media_server.sdp import tune_answer

    answer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
              "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
              "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n")
    tuned = tune_answer(answer, 1200, 60)
    audio, video = tuned.split("m=video")
    assert audio.count("a=ptime:") == 1 and "a=ptime:60\r\n" in audio and "a=ptime" not in video
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in audio  # the codec's own parameters untouched
    assert tune_answer(tuned, 1200, 60) == tuned  # idempotent
    assert tune_answer(tuned, 1200, 40).count("a=ptime:") == 1 and "a=ptime:40" in tune_answer(tuned, 1200, 40)
    assert "a=ptime" not in tune_answer(answer, 1200, 20) and "a=ptime" not in tune_answer(answer, 1200)
    assert tune_answer(answer, 1200, 20) == tune_answer(answer, 1200)


# --- the screen's clock ------------------------------------------------------------------------------------------
def test_screen_clock_anchors_to_the_webcam_and_never_goes_back() -> None:
    now: list[float | None] = [None]
    clock = ScreenClock(lambda: now[0])
    assert clock.media_time(1000) is None  # before the webcam's first frame: no timeline yet
    now[0] = 3.0
    assert clock.media_time(90_000) == pytest.approx(3.0)  # anchored at the webcam's "now"
    now[0] = 3.52
    assert clock.media_time(90_000 + 45_000) == pytest.approx(3.5)  # RTP time from there (0.5 s later)
    # A sender whose RTP clock jumped (a new capture after a reconnect): re-anchored, not hours away.
    now[0] = 10.0
    assert clock.media_time(90_000 + 45_000 + 3_600 * 90_000) == pytest.approx(10.0)
    assert clock.reanchored == 1
    # A frame a hair behind the last one keeps the order; one far behind is dropped.
    now[0] = 10.0
    assert clock.media_time(90_000 + 45_000 + 3_600 * 90_000 - 900) == pytest.approx(10.001)
    assert clock.end_s == pytest.approx(10.001 + screen_mod.NOMINAL_FRAME_S)


# --- the watchdog, the page's word and the rules -------------------------------------------------------------------
@dataclass
class _Owner:
    session_id: str = "s"
    held: bool = False
    clock: Any = field(default_factory=lambda: type("C", (), {"base_s": 4.0})())
    sampler: Any = None

    def notify_candidate(self, message: dict[str, Any]) -> None:
        return None


def test_watchdog_flags_a_screen_that_never_came_and_frames_end_it(monkeypatch: pytest.MonkeyPatch) -> None:
    signals: list[tuple[float, dict[str, Any]]] = []
    estimate = [5.0]
    track = ScreenTrack(_Owner(), lambda: estimate[0], lambda t, d: signals.append((t, d)))
    wall = [1000.0]
    monkeypatch.setattr(screen_mod.time, "time", lambda: wall[0])
    track.watch(1000.0 + screen_mod.NO_FRAMES_S - 0.5, webcam_started_wall=1000.0)
    assert signals == []  # not yet
    track.watch(1000.0 + screen_mod.NO_FRAMES_S + 0.1, webcam_started_wall=1000.0)
    assert signals == [(4.0, {"type": "screen_share_stopped", "reason": "never_shared"})]  # from the connection
    track.watch(1000.0 + screen_mod.NO_FRAMES_S + 2, webcam_started_wall=1000.0)
    assert len(signals) == 1  # said once
    wall[0] = 1010.0
    estimate[0] = 14.0
    track._on_frame(EncodedFrame("video", "VP8", b"\x00" * 10, 90_000, 90_000))
    assert signals[-1] == (14.0, {"type": "screen_share_resumed"}) and not track.stopped
    # Frames stop: flagged at the end of the last one, not when the watchdog noticed.
    estimate[0] = 30.0
    track.watch(1010.0 + screen_mod.NO_FRAMES_S + 0.1, webcam_started_wall=1000.0)
    assert signals[-1] == (pytest.approx(14.0 + screen_mod.NOMINAL_FRAME_S),
                           {"type": "screen_share_stopped", "reason": "no_frames"})


def test_frames_in_flight_do_not_end_the_flag_the_page_just_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    signals: list[tuple[float, dict[str, Any]]] = []
    estimate = [5.0]
    track = ScreenTrack(_Owner(), lambda: estimate[0], lambda t, d: signals.append((t, d)))
    wall = [1000.0]
    monkeypatch.setattr(screen_mod.time, "time", lambda: wall[0])
    track.page_says_stopped()
    wall[0] += 0.3  # a frame that was already on the wire
    track._on_frame(EncodedFrame("video", "VP8", b"\x00" * 10, 90_000, 90_000))
    assert signals == [] and track.stopped
    wall[0] += screen_mod.RESUME_AFTER_S  # the candidate shared again
    estimate[0] = 6.3
    track._on_frame(EncodedFrame("video", "VP8", b"\x00" * 10, 90_000 + 117_000, 90_000))
    assert signals and signals[-1][1] == {"type": "screen_share_resumed"} and not track.stopped


async def test_a_page_cannot_end_the_screen_flag() -> None:
    stream, _ = await _answered(2)
    heard: list[dict[str, Any]] = []
    stream.signal_sinks.append(lambda t, d: heard.append(d))
    try:
        bad = stream.stats.bad_signals
        stream._on_message('{"type": "screen_share_resumed"}', None)  # type: ignore[arg-type]
        assert heard == [] and stream.stats.bad_signals == bad + 1
        stream._on_message('{"type": "screen_share_stopped", "reason": "ended"}', None)  # type: ignore[arg-type]
        assert heard == [{"type": "screen_share_stopped", "reason": "ended"}] and stream.screen.stopped
    finally:
        await stream.pc.close()


def test_screen_signals_become_flags_at_their_time() -> None:
    assert browser_signal_to_condition({"type": "screen_share_stopped"}) == ("screen_share_stopped", True)
    assert browser_signal_to_condition({"type": "screen_share_resumed"}) == ("screen_share_stopped", False)
    assert browser_signal_to_condition({"type": "screen_changed"}) == ("screen_changed", True)
    assert browser_signal_to_condition({"type": "screen_share_started"}) is None  # the page's word: logged only
    rules = EventRules(RulesConfig.default())
    [start] = rules.browser_signal({"type": "screen_share_stopped", "reason": "ended"}, 12.25)
    assert (start.type, start.kind, start.start_s, start.details["reason"]) == ("start", "screen_share_stopped",
                                                                                  12.25, "ended")
    [end] = rules.browser_signal({"type": "screen_share_resumed"}, 20.0)
    assert end.type == "end" and end.end_s == pytest.approx(20.0)
    changed = rules.browser_signal({"type": "screen_changed", "reason": "surface"}, 30.0)
    assert [(c.type, c.kind, c.start_s) for c in changed][0] == ("start", "screen_changed", 30.0)  # instant


# --- the archive ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips() -> tuple[EncodedClip, EncodedClip]:
    import numpy as np

    base = face_canvas()
    webcam = encode_clip([np.roll(base, i % 16, axis=1) for i in range(FPS * 2)], fps=FPS, bitrate=600_000, gop=FPS)
    desk = np.full((360, 640, 3), 235, np.uint8)
    shots = []
    for i in range(SCREEN_FPS * 4):
        frame = desk.copy()
        frame[40 + 10 * i: 60 + 10 * i, 40:600] = 20  # a line of "text" moving down
        shots.append(frame)
    screen = encode_clip(shots, fps=SCREEN_FPS, bitrate=400_000, gop=SCREEN_FPS)  # a keyframe every second
    return webcam, screen


@dataclass
class _Clock:
    end_s: float = 0.0


@dataclass
class _Outlet:
    session_id: str
    encoded_sinks: list[Any] = field(default_factory=list)
    close_hooks: list[Any] = field(default_factory=list)
    losses: int = 0
    clock: _Clock = field(default_factory=_Clock)

    async def request_keyframe(self) -> bool:
        return True

    async def close(self) -> None:
        for hook in self.close_hooks:
            await hook(self)


@dataclass
class _WithScreen(_Outlet):
    screen: _Outlet | None = None


@pytest.fixture
async def archive(ctx: Context, tmp_path: Path) -> Any:
    settings = replace(ctx.settings, segment_seconds=2, data_dir=tmp_path)
    archive = Archive(Context(settings, ctx.pool, ctx.redis, ctx.storage))
    await archive.start(f"test-{uuid.uuid4().hex[:6]}")
    yield archive
    await archive.stop()


async def _rows(ctx: Context, table: str, session_id: str, count: int) -> list[Any] | None:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT * FROM {table} WHERE session_id = $1 ORDER BY idx", session_id)
    return rows if len(rows) == count and all(r["state"] == "stored" for r in rows) else None


async def test_screen_segments_and_master_on_the_session_timeline(ctx: Context, archive: Archive,
                                                                  clips: tuple[EncodedClip, EncodedClip],
                                                                  tmp_path: Path) -> None:
    webcam_clip, screen_clip = clips
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
            "VALUES ('scr', 'e', 'live', 'n', now() + interval '1 hour') RETURNING id"))
    stream = _WithScreen(sid, screen=_Outlet(sid))
    archive.attach(stream)  # type: ignore[arg-type]
    screen = stream.screen
    assert screen is not None and archive.screen_recorders[sid].track == "screen"
    seconds, screen_from = 7.0, 0.5  # the screen's first frame half a second after the webcam's
    audio_i, screen_i = 0, 0
    for i in range(int(seconds * FPS)):
        t = i / FPS
        stream.clock.end_s = t
        for sink in stream.encoded_sinks:
            sink(EncodedFrame("video", "VP8", webcam_clip.video[i % len(webcam_clip.video)][0], i * 3000, 90_000), t)
        while audio_i * 0.02 <= t:
            for sink in stream.encoded_sinks:
                sink(EncodedFrame("audio", "opus", webcam_clip.audio[audio_i % len(webcam_clip.audio)],
                                  audio_i * 960, 48_000), audio_i * 0.02)
            audio_i += 1
        while screen_from + screen_i / SCREEN_FPS <= t:
            ts = screen_from + screen_i / SCREEN_FPS
            screen.clock.end_s = ts + 1 / SCREEN_FPS
            for sink in screen.encoded_sinks:
                sink(EncodedFrame("video", "VP8", screen_clip.video[screen_i % len(screen_clip.video)][0],
                                  screen_i * 45_000, 90_000), ts)
            screen_i += 1
    stream.clock.end_s = seconds
    await screen.close()  # the node closes the screen first, then the stream
    await stream.close()

    webcam = await wait_for(lambda: _rows(ctx, "segments", sid, 4), within=30)
    shots = await wait_for(lambda: _rows(ctx, "screen_segments", sid, 4), within=30)
    # The webcam's archive is as it always was: its own numbering with no holes, [0,2) [2,4) [4,6) [6,7).
    assert [(r["idx"], r["start_s"], round(r["end_s"], 6)) for r in webcam] == [
        (0, 0.0, 2.0), (1, 2.0, 4.0), (2, 4.0, 6.0), (3, 6.0, 7.0)]
    # The screen's: its own numbering from 0, cut at its keyframes after each 2-s boundary, tiling from its first
    # frame to the end of its last one, on the same timeline.
    assert [r["idx"] for r in shots] == [0, 1, 2, 3]
    assert shots[0]["start_s"] == pytest.approx(screen_from)
    for prev, row in zip(shots, shots[1:], strict=False):
        assert row["start_s"] == pytest.approx(prev["end_s"], abs=1e-6)
    assert shots[-1]["end_s"] == pytest.approx(seconds, abs=1 / SCREEN_FPS + 1e-6)
    assert all(f"sessions/{sid}/screen/segments/" in r["storage_key"] for r in shots)
    path = tmp_path / "screen0.webm"
    await ctx.storage.download(shots[1]["storage_key"], path)
    info = probe(path, decode=True)
    assert info.first_is_keyframe and info.decode_errors == 0 and info.audio_packets == 0
    assert (info.width, info.height) == (640, 360)

    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET status = 'ended', duration_s = $2 WHERE id = $1", sid, seconds)
    assert await finalize(ctx, sid) is True
    async with ctx.pool.acquire() as conn:
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
        screen_master = await conn.fetchrow("SELECT * FROM screen_masters WHERE session_id = $1", sid)
        states = await conn.fetch("SELECT DISTINCT state FROM screen_segments WHERE session_id = $1", sid)
    assert master["duration_s"] == pytest.approx(seconds, abs=1 / FPS)
    assert screen_master is not None and screen_master["start_s"] == pytest.approx(screen_from)
    assert screen_master["storage_key"] == f"sessions/{sid}/screen/master.webm"
    assert screen_master["duration_s"] == pytest.approx(shots[-1]["end_s"], abs=0.002)  # master time == media
    assert [r["state"] for r in states] == ["merged"]
    objects = [o.key for o in await ctx.storage.list(f"sessions/{sid}/")]
    assert sorted(objects) == [f"sessions/{sid}/master.webm", f"sessions/{sid}/screen/master.webm"]
    path = tmp_path / "screen.webm"
    await ctx.storage.download(screen_master["storage_key"], path)
    info = probe(path, decode=True)
    assert info.decode_errors == 0 and info.has_cues and info.decoded_frames == screen_i
