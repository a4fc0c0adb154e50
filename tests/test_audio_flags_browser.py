"""Audio flags end to end in real headless Chromium: a fake camera and a fake microphone fed from a WAV of espeak-ng
speech at known places with digital silence between. The candidate's `talking` flags come where the speech is
(+-1 s, session media time) and nowhere else; a second candidate on an exam with audio flags off, hearing the same
file, gets no audio flag while its audio is archived (the archived segments' audio holds the speech); and on the
review page "Play this flag with sound" plays the flag's interval with its audio, unmuted.

Where the file's time meets the session media time: Chromium starts reading the file when getUserMedia opens the
microphone (the page records when that returns, by an init script), and media time 0 is the first video frame the
node received (its wall time; both clocks are this machine's). So file time f is media time f - (first frame - mic
opened). Speech before the connection is simply not heard: the file starts with 10 s of silence. That mapping
holds to ~0.1 s on a quiet machine but drifted by up to 1.26 s on a busy one (Chromium starts the file later than
getUserMedia returns), so the flags are checked against the speech placed by its first onset as the node decoded
it (the rest of the file's parts follow at their known offsets), and the page's mapping only has to agree with that
within PAGE_CLOCK_S (a gross audio/video offset on the node would still fail).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from analyzers.live import Analysis
from analyzers.voice import VoiceDetector
from core.rules import EventRules, RulesConfig
from media_server.node import MediaNode
from proctor.context import Context
from proctor.settings import Settings
from tests.support import voice_audio as va
from tests.support.accounts import browser_login
from tests.support.browser import CHROMIUM, chromium_args, have_chromium, join_and_start
from tests.support.paths import ARTIFACTS
from tests.support.servers import RunningApp
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed"),
              pytest.mark.skipif(not va.have_espeak(), reason="espeak-ng not installed (Makefile SYSTEM_PACKAGES)")]

TOLERANCE_S = 1.0  # the issue's bound on a flag's start and end, media time
# How far the page's clock mapping (below) may place the speech from where the node heard it. Under load the page's
# getUserMedia time and Chromium's actual start of the file drift apart: measured up to 1.26 s in a suite run on a
# busy 2-core machine, ~0.1 s on a quiet one. The flags are held to TOLERANCE_S against what the node heard.
PAGE_CLOCK_S = 2.0
LOUD = 0.05  # a decoded sample this loud (of full scale) is speech: the file's silence is digital zero
LEAD_S = 10.0  # silence before the first speech: the candidate joins and connects meanwhile

# Records when each getUserMedia call returned (Date.now(), ms) and whether it asked for audio.
GUM_SPY = """
(() => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const original = md.getUserMedia.bind(md);
  window.__gum = [];
  md.getUserMedia = async (constraints) => {
    const stream = await original(constraints);
    window.__gum.push({ at: Date.now(), audio: stream.getAudioTracks().length > 0 });
    return stream;
  };
})();
"""

# On the review page: the level of what the player sends to the speakers while the flag plays (a media element
# source reports silence for a muted element), and the times it played.
LEVEL_PROBE = """
(() => {
  const video = document.getElementById("master");
  const ctx = new AudioContext();
  const source = ctx.createMediaElementSource(video);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  source.connect(analyser);
  analyser.connect(ctx.destination);
  const buf = new Float32Array(analyser.fftSize);
  window.__probe = { levels: [], times: [] };
  setInterval(() => {
    if (video.paused) return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    window.__probe.levels.push(Math.sqrt(sum / buf.length));
    window.__probe.times.push(window.review.mode === "preview" && window.review.playing
      ? window.review.playing.start_s + video.currentTime : video.currentTime);
  }, 100);
  return ctx.resume();
})()
"""


def speech_file(path: Path) -> va.Timeline:
    parts: list[tuple[str, object]] = [
        ("silence", LEAD_S),
        ("speech", va.speech(va.SENTENCES[0], "en", speed=150)),
        ("silence", 7.0),
        ("speech", va.speech(va.SENTENCES[2], "en+f3", speed=170)),
        ("silence", 7.0),
        ("speech", va.speech(va.SENTENCES[4], "en-us+m3", speed=160)),
        ("silence", 30.0),  # the test ends long before the file loops
    ]
    tl = va.timeline(parts)
    va.write_wav(path, va.resample(tl.pcm, va.RATE, 48_000), 48_000)
    return tl


async def until(condition: Callable[[], bool], within: float) -> None:
    async def check() -> bool:
        return condition()

    await wait_for(check, within)


async def _events(ctx: Context, sid: str) -> list[Any]:
    async with ctx.pool.acquire() as conn:
        return list(await conn.fetch("SELECT kind, start_s, end_s, details FROM events WHERE session_id = $1 "
                                     "ORDER BY start_s", sid))


async def _segments(ctx: Context, sid: str) -> list[Any] | None:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 ORDER BY idx", sid)
    return rows if rows and all(r["state"] in ("stored", "merged") for r in rows) else None


def archived_talking(paths: list[Path], starts: list[float]) -> list[tuple[float, float]]:
    """The talking flags the voice detector finds in the archived segments' own audio (Opus in WebM)."""
    d = VoiceDetector(Settings.defaults())
    d.load()
    rules = EventRules(RulesConfig.default())
    changes = []
    for path, start in zip(paths, starts, strict=True):
        with av.open(str(path)) as container:
            if not container.streams.audio:
                continue
            resampler = av.AudioResampler(format="flt", layout="mono", rate=va.RATE)
            pcm = np.concatenate([r.to_ndarray().reshape(-1) for f in container.decode(audio=0)
                                  for r in resampler.resample(f)] or [np.zeros(0, np.float32)])
        for i in range(0, len(pcm), 8000):
            for t, s in d.analyze_audio(start + i / va.RATE, pcm[i:i + 8000]):
                changes += rules.update(s.kind, s.active, s.confidence, t, s.details)
    changes += rules.flush(starts[-1] + 60)
    return [(c.start_s, c.end_s) for c in changes if c.kind == "talking" and c.type == "end"]  # type: ignore[misc]


async def test_talking_flags_where_the_speech_is_and_the_exam_switch_silences_them(
        web_server: RunningApp, media_node: MediaNode, admin_token: str, staff_user: dict[str, Any], ctx: Context,
        clip: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    tl = await asyncio.to_thread(speech_file, tmp_path / "speech.wav")
    base = web_server.url
    sessions = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
        for name, sensitivity in (("on", "standard"), ("off", {"profile": "standard", "audio_flags": False})):
            async with http.post(f"{base}/api/sessions", json={"candidate": f"Vera Voice {name}", "exam": "Oral 1",
                                                               "sensitivity": sensitivity}) as response:
                assert response.status == 201, await response.text()
                sessions[name] = await response.json()
    on, off = sessions["on"]["id"], sessions["off"]["id"]

    args = [*chromium_args(clip), f"--use-file-for-fake-audio-capture={tmp_path / 'speech.wav'}",
            "--autoplay-policy=no-user-gesture-required"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            pages = {}
            for name in ("on", "off"):
                context = await browser.new_context(viewport={"width": 1000, "height": 800})
                await context.add_init_script(GUM_SPY)
                page = await context.new_page()
                page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                await join_and_start(page, sessions[name]["join_url"])
                pages[name] = page
            try:
                await until(lambda: all(media_node.streams.get(s) is not None
                                        and media_node.streams[s].stats.first_frame_wall for s in (on, off)), within=40)
            except AssertionError:
                raise AssertionError({s: media_node.streams[s].snapshot() if s in media_node.streams else None
                                      for s in (on, off)}) from None
            stream = media_node.streams[on]
            analysis = next(p for p in media_node.plugins if isinstance(p, Analysis))
            # What the detector said, step by step: the failure message shows it around a flag that is off.
            steps: list[tuple[float, bool]] = []
            await until(lambda: bool(analysis.streams[on].audio_slots), within=20)
            slot = analysis.streams[on].audio_slots[0]
            emit = slot.emit

            def record(t: float, signal: Any, arrived: float) -> None:
                if signal.kind == "talking":
                    steps.append((round(t, 2), signal.active))
                emit(t, signal, arrived)

            slot.emit = record
            windows: list[tuple[float, int, float]] = []
            onsets: list[float] = []  # media time of the first loud sample the detector was given
            on_audio = slot.on_audio

            def record_windows(batch: list[tuple[float, Any]]) -> None:
                windows.extend((round(t, 3), len(pcm), round(float(np.abs(pcm).max()), 4)) for t, pcm in batch)
                for t, pcm in batch:
                    loud = np.flatnonzero(np.abs(pcm) > LOUD)
                    if loud.size and not onsets:
                        onsets.append(t + loud[0] / va.RATE)
                on_audio(batch)

            slot.on_audio = record_windows  # type: ignore[method-assign]
            by_page = await _speech_in_media_time(pages["on"], stream, tl)
            expected_off = await _speech_in_media_time(pages["off"], media_node.streams[off], tl)
            # Every speech part heard and ended, and a few seconds of silence after the last (both candidates).
            await until(lambda: stream.clock.end_s > by_page[-1][1] + 5.0, within=by_page[-1][1] + 40)
            await until(lambda: media_node.streams[off].clock.end_s > expected_off[-1][1] + 5.0,
                        within=expected_off[-1][1] + 40)
            # Where the speech is on the session's media time: the file's speech parts, placed by the first one's
            # onset as the node decoded it; the page's clock mapping must agree within PAGE_CLOCK_S.
            assert onsets, "the node never decoded the speech"
            shift = onsets[0] - tl.speech[0][0]
            expected = [(s0 + shift, s1 + shift) for s0, s1 in tl.speech]
            assert abs(expected[0][0] - by_page[0][0]) <= PAGE_CLOCK_S, (expected, by_page)
            node_stats: dict[str, Any] = {sid: media_node.streams[sid].snapshot()["audio"] for sid in (on, off)}
            node_stats["voice"] = analysis.streams[on].stats().get("voice")

            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
                for sid in (on, off):
                    async with http.post(f"{base}/api/sessions/{sid}/end") as response:
                        assert response.status == 202, await response.text()
            found = await wait_for(lambda: _talking_ended(ctx, on, len(expected)), within=30)
            talking = [(r["start_s"], r["end_s"]) for r in found]
            (ARTIFACTS / "audio_flags_steps.json").write_text(json.dumps(
                {"talking": talking, "expected": expected, "stats": node_stats, "steps": steps, "windows": windows},
                default=str))
            assert len(talking) == len(expected), (talking, expected, node_stats)
            for (start, end), (t0, t1) in zip(talking, expected, strict=True):
                near = [(t, a) for t, a in steps if t0 - 3 <= t <= t1 + 3]
                assert abs(start - t0) <= TOLERANCE_S and abs(end - t1) <= TOLERANCE_S, (talking, expected, node_stats,
                                                                                         near)
            assert [r["kind"] for r in await _events(ctx, on) if r["kind"] == "audio_muted"] == []

            # Audio flags off: nothing about audio raised, the node never even decoded it, and the archive has it.
            assert [r["kind"] for r in await _events(ctx, off) if r["kind"] in ("talking", "audio_muted")] == []
            assert node_stats[off]["packets_decoded"] == 0 and node_stats[on]["packets_decoded"] > 500
            rows = await wait_for(lambda: _segments(ctx, off), within=30)
            paths = []
            for row in rows:
                path = Path(tempfile.mkdtemp(dir=tmp_path)) / "seg.webm"
                await ctx.storage.download(row["storage_key"], path)
                paths.append(path)
            heard = await asyncio.to_thread(archived_talking, paths, [r["start_s"] for r in rows])
            assert len(heard) == len(expected_off), (heard, expected_off)

            await _review_plays_the_flag_with_sound(browser, base, staff_user["name"], on, talking[0])
        finally:
            await browser.close()


async def _speech_in_media_time(page: Any, stream: Any, tl: va.Timeline) -> list[tuple[float, float]]:
    """Where the file's speech falls on this candidate's session media time (see the module doc)."""
    gum = [g for g in await page.evaluate("window.__gum") if g["audio"]]
    assert gum, "the page never opened the microphone"
    assert stream.stats.first_frame_wall is not None
    offset = stream.stats.first_frame_wall - gum[-1]["at"] / 1000 - stream.clock.base_s
    expected = [(s - offset, e - offset) for s, e in tl.speech]
    assert expected[0][0] > 2.0, f"the first speech came before the stream was up ({expected})"
    return expected


async def _talking_ended(ctx: Context, sid: str, count: int) -> list[Any] | None:
    rows = [r for r in await _events(ctx, sid) if r["kind"] == "talking"]
    return rows if len(rows) >= count and all(r["end_s"] is not None for r in rows) else None


async def _review_plays_the_flag_with_sound(browser: Any, base: str, staff: str, sid: str,
                                            flag: tuple[float, float]) -> None:
    context, page = await browser_login(browser, base, staff)
    try:
        await page.goto(f"{base}/sessions/{sid}")
        row = page.locator("tr[data-kind=talking] .kind-btn").first
        await row.wait_for(timeout=15_000)
        await page.wait_for_function("window.review.pieceLoaded || window.review.masterLoaded", timeout=20_000)
        await row.click()
        await page.evaluate(LEVEL_PROBE)
        await page.click("#play-flag")
        start, end = flag
        await page.wait_for_function("window.review.flagPlays === 1 && window.review.playUntil === null && "
                                     "document.getElementById('master').paused",
                                     timeout=int((end - start + 20) * 1000))
        probe = await page.evaluate("window.__probe")
        muted = await page.evaluate("document.getElementById('master').muted")
        await page.screenshot(path=str(ARTIFACTS / "audio_flag_review.png"))
    finally:
        await context.close()
    assert not muted
    times, levels = probe["times"], probe["levels"]
    assert times, "the player never played"
    # It played the flag's interval: from its start (a preview piece seeks to within a frame) to its end.
    assert abs(times[0] - start) <= 0.5 and abs(max(times) - end) <= 0.6, (times[:3], max(times), flag)
    # And the speakers got the speech: loud while it plays (the flag is speech all through; a muted or silent
    # player reads 0).
    assert float(np.median(levels)) > 0.01, levels
