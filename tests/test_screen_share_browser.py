"""Issue 18, the screen share, end to end in real headless Chromium: the candidate shares the entire screen (the
fake capture device of --use-fake-device-for-media-stream + --use-fake-ui-for-media-stream is a 1920x1080
"monitor"), it reaches the node as the second video track, is archived in its own segments on the session
timeline; stopping the track raises screen_share_stopped at that time and the page asks to share again; sharing
again ends the flag; finalize builds the screen master; the review page plays webcam and screen side by side and
in step at the flag."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from archiver.assemble import finalize
from archiver.webm import probe
from media_server.node import MediaNode
from proctor.context import Context
from tests.support.accounts import browser_login
from tests.support.archive import all_segments_stored
from tests.support.browser import have_chromium, join_and_start
from tests.support.paths import ARTIFACTS
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]

# What a candidate's "Stop sharing" does: the capture ends and the track fires `ended` (track.stop() alone fires
# nothing on the page's own track, so the test fires it as the browser would).
STOP_SHARE = """() => { const t = window.proctor.screenTrack; t.stop(); t.dispatchEvent(new Event("ended")); }"""


async def _screen_rows(ctx: Context, sid: str) -> list[Any] | None:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM screen_segments WHERE session_id = $1 ORDER BY idx", sid)
    return rows if rows and all(r["state"] == "stored" for r in rows) else None


async def _flag(ctx: Context, sid: str, ended: bool) -> Any:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM events WHERE session_id = $1 AND kind = 'screen_share_stopped' "
                                  "ORDER BY start_s LIMIT 1", sid)
    return row if row is not None and (row["end_s"] is not None or not ended) else None


async def test_screen_share_archive_flag_and_review(web_server: RunningApp, media_node: MediaNode, browser: Any,
                                                    admin_token: str, staff_user: dict[str, Any], ctx: Context,
                                                    tmp_path: Path) -> None:
    session = await create_session(web_server.url, admin_token, candidate="Sam Screen")
    sid = session["id"]
    context = await browser.new_context()
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await join_and_start(page, session["join_url"])  # Start asks for the screen, then connects
    assert await page.evaluate("window.proctor.screen.surface") == "monitor"

    async def screen_flowing() -> dict | None:
        stream = media_node.streams.get(sid)
        snap = stream.snapshot()["screen"] if stream is not None else None
        return snap if snap and snap["frames"] >= 3 and snap["keyframes"] >= 1 else None

    snap = await wait_for(screen_flowing, within=20)
    print(f"screen at the node: {snap}")
    assert (snap["width"], snap["height"]) == (1920, 1080)  # sharp text: full resolution, not the webcam's
    stream = media_node.streams[sid]
    assert stream.video_receiver is not stream.screen.receiver
    await asyncio.sleep(4.5)  # a couple of 2-s segments of both

    # The candidate stops sharing: flagged at that time, and the page asks to share again.
    stopped_at = stream.clock.end_s
    await page.evaluate(STOP_SHARE)
    await page.wait_for_selector("#screen-box:not([hidden])", timeout=5_000)
    assert "Share your screen again" in (await page.text_content("#screen-btn") or "")
    assert "no longer being shared" in (await page.text_content("#screen-msg") or "")
    flag = await wait_for(lambda: _flag(ctx, sid, ended=False), within=10)
    print(f"stopped at media time {stopped_at:.2f} s, flag at {flag['start_s']:.2f} s ({flag['details']})")
    assert abs(flag["start_s"] - stopped_at) <= 1.0
    assert flag["source"] == "browser" and flag["end_s"] is None
    await page.screenshot(path=str(ARTIFACTS / "screen-share-again.png"))
    await asyncio.sleep(2.0)

    # Sharing again (replaceTrack on the same connection): the node sees screen frames and ends the flag.
    await page.click("#screen-btn")
    await page.wait_for_selector("#screen-box[hidden]", state="attached", timeout=10_000)
    flag = await wait_for(lambda: _flag(ctx, sid, ended=True), within=15)
    assert flag["end_s"] > flag["start_s"] + 1.5
    await asyncio.sleep(3.0)
    await page.evaluate("window.proctor.finish()")
    await page.wait_for_selector("#step-done:not([hidden])", timeout=10_000)
    await context.close()

    webcam = await wait_for(lambda: all_segments_stored(ctx, sid), within=30)
    screen = await wait_for(lambda: _screen_rows(ctx, sid), within=30)
    async with ctx.pool.acquire() as conn:
        duration = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1", sid)
    # The screen's segments cover the session timeline: from (nearly) its start to its end, without holes (the
    # stretch while the share was stopped is held by the last frame, as the flag says).
    print("screen segments:", [(r["idx"], round(r["start_s"], 3), round(r["end_s"], 3)) for r in screen])
    assert [r["idx"] for r in screen] == list(range(len(screen))) and len(screen) >= 3
    assert screen[0]["start_s"] < 2.0
    for prev, row in zip(screen, screen[1:], strict=False):
        assert row["start_s"] == pytest.approx(prev["end_s"], abs=1e-6)
    assert screen[-1]["end_s"] == pytest.approx(duration, abs=1.0)
    assert webcam[0]["start_s"] == 0.0 and webcam[-1]["end_s"] == pytest.approx(duration, abs=1e-6)

    assert await finalize(ctx, sid) is True
    async with ctx.pool.acquire() as conn:
        master = await conn.fetchrow("SELECT * FROM screen_masters WHERE session_id = $1", sid)
    assert master is not None and master["width"] == 1920
    path = tmp_path / "screen.webm"
    await ctx.storage.download(master["storage_key"], path)
    info = await asyncio.to_thread(probe, path, True)
    assert info.decode_errors == 0 and info.has_cues
    assert info.duration_s == pytest.approx(screen[-1]["end_s"], abs=0.01)  # master time == session media time

    # Review: webcam and screen side by side; seeking to the flag puts both there, and they stay in step.
    context, review = await browser_login(browser, web_server.url, staff_user["name"])
    await review.goto(f"{web_server.url}/sessions/{sid}")
    await review.wait_for_function("window.review && window.review.masterLoaded && window.review.screen.loaded "
                                   "&& window.review.events.some(e => e.kind === 'screen_share_stopped')",
                                   timeout=20_000)
    assert await review.is_visible("#screen") and await review.is_visible("#master")
    await review.click(f'tr[data-event-id="{flag["id"]}"]')
    await review.wait_for_function(
        "(() => { const m = document.getElementById('master'), s = document.getElementById('screen');"
        " return !m.seeking && !s.seeking && s.readyState >= 2; })()", timeout=10_000)
    times = await review.evaluate("[document.getElementById('master').currentTime, "
                                  "document.getElementById('screen').currentTime]")
    print(f"at the flag ({flag['start_s']:.3f} s): webcam {times[0]:.3f} s, screen {times[1]:.3f} s")
    assert times[0] == pytest.approx(flag["start_s"], abs=0.05)
    assert abs(times[0] - times[1]) < 0.2
    await review.click("#play-btn")
    await asyncio.sleep(2.0)
    times = await review.evaluate("[document.getElementById('master').currentTime, "
                                  "document.getElementById('screen').currentTime, "
                                  "document.getElementById('screen').paused]")
    print(f"playing: webcam {times[0]:.3f} s, screen {times[1]:.3f} s")
    assert times[0] > flag["start_s"] + 0.5 and not times[2]
    assert abs(times[0] - times[1]) < 0.2
    await review.screenshot(path=str(ARTIFACTS / "review-screen.png"), full_page=True)
    await context.close()
