"""The archive end to end: real Chromium streams (with a reload gap), the node segments and uploads, the
finalizer builds one master whose time is the session media time, frame for frame."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from archiver.assemble import finalize, merge
from archiver.webm import frame_at, probe
from media_server.node import MediaNode
from proctor.context import Context
from tests.support.archive import all_segments_stored
from tests.support.browser import CONNECTED, have_chromium, join_and_start
from tests.support.servers import FrameLog, RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]


async def test_stream_reload_finish_finalize(web_server: RunningApp, media_node: MediaNode, browser: Any,
                                             admin_token: str, ctx: Context, frame_log: FrameLog,
                                             tmp_path: Path) -> None:
    session = await create_session(web_server.url, admin_token, candidate="Ada Archive")
    sid = session["id"]
    page = await browser.new_page()
    await join_and_start(page, session["join_url"])
    await asyncio.sleep(5)
    await page.reload()  # a reconnect gap in the middle
    await page.wait_for_selector(CONNECTED, timeout=30_000)
    await asyncio.sleep(4.5)
    await page.evaluate("window.proctor.finish()")
    await page.wait_for_selector("#step-done:not([hidden])", timeout=10_000)
    await page.close()

    rows = await wait_for(lambda: all_segments_stored(ctx, sid), within=30)
    # Segments tile the session timeline exactly, across the reconnect too.
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["start_s"] == pytest.approx(prev["end_s"], abs=1e-6)
    async with ctx.pool.acquire() as conn:
        session_row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
    assert len(session_row["media_gaps"]) == 1
    assert rows[-1]["end_s"] == pytest.approx(session_row["duration_s"], abs=1e-6)
    assert rows[0]["start_s"] == 0.0

    assert await finalize(ctx, sid) is True
    assert await finalize(ctx, sid) is False  # idempotent: already finalized
    async with ctx.pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid)
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
        batches = await conn.fetch("SELECT * FROM batches WHERE session_id = $1", sid)
    assert status == "finalized" and master is not None
    assert batches, "MERGE_BATCH_SEGMENTS=3: at least one batch was merged on the way"
    # Only the master is left in storage: segments and batches were deleted after the commit.
    objects = [o.key for o in await ctx.storage.list(f"sessions/{sid}/")]
    assert f"sessions/{sid}/master.webm" in objects
    assert not [k for k in objects if "/segments/" in k or "/batches/" in k]

    path = tmp_path / "master.webm"
    await ctx.storage.download(master["storage_key"], path)
    await _check_playback_route(web_server.url, admin_token, sid, path.read_bytes())
    info = await asyncio.to_thread(probe, path, True)
    assert info.first_is_keyframe and info.has_cues and info.decode_errors == 0
    assert info.decoded_frames == info.video_frames
    # Durations sum to the streamed duration (± 1 frame) and the header says so too.
    assert info.duration_s == pytest.approx(session_row["duration_s"], abs=1 / 30)
    assert master["duration_s"] == pytest.approx(info.duration_s, abs=0.001)

    # Master time == session media time: every frame the node received sits at its media time (ms rounding).
    expected = frame_log.times[sid]
    assert info.video_frames == len(expected)
    for t in [expected[i] for i in range(0, len(expected), max(1, len(expected) // 25))]:
        pts, frame = await asyncio.to_thread(frame_at, path, t + 0.0004)
        assert pts == pytest.approx(t, abs=0.001)
        assert (frame.width, frame.height) == (640, 480)


async def test_merge_is_idempotent_and_skips_gaps(ctx: Context) -> None:
    """A session whose stored segments have a hole: only full consecutive runs merge, twice is harmless."""
    from archiver.assemble import consecutive_runs

    rows = [{"idx": i, "start_s": float(2 * i), "end_s": float(2 * i + 2)} for i in (0, 1, 2, 3, 5, 6, 7)]
    runs = consecutive_runs(rows, 3)  # type: ignore[arg-type]
    assert [[r["idx"] for r in run] for run in runs] == [[0, 1, 2], [5, 6, 7]]
    untiled = [{"idx": 0, "start_s": 0.0, "end_s": 2.0}, {"idx": 1, "start_s": 2.5, "end_s": 4.0},
               {"idx": 2, "start_s": 4.0, "end_s": 6.0}]
    # 0 and 1 do not tile (a 0.5-s hole): only 1-2 is a run.
    assert [[r["idx"] for r in run] for run in consecutive_runs(untiled, 2)] == [[1, 2]]  # type: ignore[arg-type]
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
            "VALUES ('m', 'e', 'live', 'n', now()) RETURNING id"))
    assert await merge(ctx, sid) == 0  # nothing stored yet: nothing to do


async def test_finalize_places_a_recovered_segment_at_its_media_time(ctx: Context, tmp_path: Path) -> None:
    """A node killed mid-segment: its recovered segment (4.0-5.333 s) runs past the start of the reconnection's
    first segment (5.0 s, where the heartbeat had last persisted the media time). Merged into a batch with the
    two before it, it must still leave master time == session media time: its tail is cut at 5.0 s."""
    from tests.support.webm import Clip, encode_tone, encode_video, frame_ms, read_number, write_segment

    synth = Clip(await asyncio.to_thread(encode_video, 270, 640, 480), encode_tone(9.0), 640, 480)
    frames = [(0, 60), (60, 120), (120, 160), (150, 210), (210, 270)]  # source frames of each segment
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, ended_at, duration_s) "
            "VALUES ('Kill Nine', 'e', 'ended', 'n', now(), now(), 9.0) RETURNING id"))
        for idx, (first, stop) in enumerate(frames):
            path = tmp_path / f"{idx}.webm"
            await asyncio.to_thread(write_segment, path, synth, first, stop)
            key = f"sessions/{sid}/segments/{idx:06d}.webm"
            await ctx.storage.put_file(key, path)
            await conn.execute(
                "INSERT INTO segments (session_id, idx, start_s, end_s, frames, storage_key, state) "
                "VALUES ($1, $2, $3, $4, $5, $6, 'stored')", sid, idx, frame_ms(first) / 1000, frame_ms(stop) / 1000,
                stop - first, key)
    assert await finalize(ctx, sid) is True
    async with ctx.pool.acquire() as conn:
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
        batch = await conn.fetchrow("SELECT * FROM batches WHERE session_id = $1", sid)
    assert (batch["first_idx"], batch["last_idx"]) == (0, 2) and batch["end_s"] == pytest.approx(5.333)
    assert master["duration_s"] == 9.0  # not 9.333: back to back would have shifted the last 4 s by 1/3 s
    path = tmp_path / "master.webm"
    await ctx.storage.download(master["storage_key"], path)
    info = await asyncio.to_thread(probe, path, True)
    assert info.video_frames == info.decoded_frames == 270 and info.decode_errors == 0
    for n in (0, 100, 149, 150, 151, 200, 269):
        pts, frame = await asyncio.to_thread(frame_at, path, frame_ms(n) / 1000 + 0.0004)
        assert round(pts * 1000) == frame_ms(n) and read_number(frame) == n, n


async def _check_playback_route(base: str, token: str, session_id: str, master: bytes) -> None:
    """Reviewers play the master through the API: login required, HTTP Range answered (seeking)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/sessions/{session_id}/master") as response:
            assert response.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{base}/api/sessions/{session_id}", headers=auth) as response:
            url = (await response.json())["master_video_url"]
        assert url == f"/api/sessions/{session_id}/master"
        async with http.get(base + url, headers={**auth, "Range": "bytes=100-199"}) as response:
            assert response.status == 206 and await response.read() == master[100:200]
        async with http.get(base + url, headers=auth) as response:
            assert response.status == 200 and await response.read() == master
