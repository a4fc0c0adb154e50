"""Scale-out and failure: a real `proctor media` process carries the stream, is killed with SIGKILL, and the
candidate page reconnects by itself to another node; same session, gap recorded, timeline continued. The node is
restarted on the same data dir, recovers and uploads the segment it was writing, and the master built at the end
keeps session media time across the kill, losing at most 2 s of what the dead node had received.
Also: the worker ends sessions whose candidate stays away longer than DISCONNECT_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from archiver.assemble import finalize
from archiver.spool import SpoolSegment
from archiver.webm import CLUSTER_MS, ProbeResult, frame_at, probe, recover_partial
from lifecycle.sweep import sweep_disconnected
from media_server.node import MediaNode
from proctor.context import Context
from proctor.nodeauth import NodeClient
from proctor.store.nodes import live_nodes
from tests.support.archive import all_segments_stored
from tests.support.browser import CONNECTED, have_chromium, join_and_start
from tests.support.paths import ARTIFACTS
from tests.support.servers import FrameLog, RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
# The kill lands this far into the dead node's open segment: well past its first cluster (CLUSTER_MS, on disk, so
# there is a partial segment to recover) and before the segment ends (its open cluster in memory: a real loss).
KILL_PHASE_S = (1.3, 1.8)
MAX_LOSS_S = 2.0
TILE_S = 0.002  # segments closer than this tile (ms rounding)


async def _start_media_process(settings: Any, ctx: Context) -> tuple[subprocess.Popen[bytes], str]:
    # The test settings the process needs too: it segments like the in-process node (2-s segments).
    env = dict(os.environ, DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url,
               PROCTOR_DATA_DIR=str(settings.data_dir), ICE_HOST_ADDRESSES="127.0.0.1", MEDIA_NODE_PORT="0",
               ICE_ALLOW_PRIVATE_CANDIDATES="true", SECRET_KEY=settings.secret_key,
               SEGMENT_SECONDS=str(settings.segment_seconds))
    before = {n.node_id for n in await live_nodes(ctx.redis)}
    proc = subprocess.Popen([sys.executable, "-m", "proctor", "media"], cwd=ROOT, env=env)  # noqa: ASYNC220 (test)

    async def registered() -> str | None:
        assert proc.poll() is None, "proctor media exited"
        new = [n.node_id for n in await live_nodes(ctx.redis) if n.node_id not in before]
        return new[0] if new else None

    return proc, await wait_for(registered, within=60, interval=0.2)


def _open_segment(spool_dir: Path, session_id: str, pid: int) -> dict[str, Any] | None:
    """The sidecar of the webcam segment process `pid` is writing for the session (spool/<session>/<id>.json).
    The webcam's only: the candidate page shares its screen too, whose open segment sits in the same folder (its
    row is in screen_segments, and it may hold no frame yet); taking it by the folder's order made this test wait
    for a webcam row that could never exist, or time the kill against the wrong segment."""
    for sidecar in (spool_dir / session_id).glob("*.json"):
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue  # replaced or removed while listed
        if data.get("pid") == pid and data.get("state") == "writing" and data.get("track") == "webcam":
            return dict(data)
    return None


async def _kill_mid_segment(proc: subprocess.Popen[bytes], node_url: str, spool_dir: Path,
                            session_id: str, settings: Any) -> tuple[dict[str, Any], float]:
    """SIGKILL the node KILL_PHASE_S into its open segment. Returns that segment's sidecar and the media time
    the node had received by the kill: its /stats just before, plus the wall time from that poll to the kill
    (an upper bound, so the loss measured from it is never flattered)."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            segment = _open_segment(spool_dir, session_id, proc.pid)
            polled = time.monotonic()
            streams = (await NodeClient.for_settings(settings, http).stats(node_url))["streams"]  # signed
            media = next((s["media_time_s"] for s in streams if s["session_id"] == session_id), None)
            if segment and media and KILL_PHASE_S[0] <= media - segment["start_s"] <= KILL_PHASE_S[1]:
                proc.send_signal(signal.SIGKILL)
                received = media + (time.monotonic() - polled)
                proc.wait(10)
                return segment, received
            await asyncio.sleep(0.05)
    raise AssertionError(f"no moment {KILL_PHASE_S} s into an open segment within 20 s")


def _on_disk_at_kill(spool_dir: Path, segment: dict[str, Any], tmp_path: Path) -> ProbeResult:
    """What the dead node's open segment held on disk at the kill: a copy of its spool file taken before the
    restart's recovery touches it, recovered the way the node does. The recovered row must keep all of it; how much
    that is depends on how far the archive lagged the received media (0.3-0.8 s, more on a loaded machine), which a
    wall-clock bound cannot know."""
    copy = tmp_path / "at-kill.webm"
    copy.write_bytes(SpoolSegment(**segment).path(spool_dir).read_bytes())
    result = recover_partial(copy, tmp_path / "at-kill-recovered.webm")
    assert result is not None, "nothing usable was on disk at the kill"
    return result


async def _stored_row(ctx: Context, spool_id: str) -> asyncpg.Record | None:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM segments WHERE spool_id = $1", spool_id)
    return row if row is not None and row["state"] == "stored" else None


def _the_one_break(rows: list[asyncpg.Record], recovered_id: int) -> asyncpg.Record:
    """The segment after the recovered one, checking that everywhere else consecutive segments (by media start)
    tile the timeline: the kill is the only place with a hole or an overlap."""
    at = next(i for i, row in enumerate(rows) if row["id"] == recovered_id)
    assert at + 1 < len(rows), "no segment after the recovered one"
    breaks = [(a["idx"], a["end_s"], b["start_s"]) for i, (a, b) in enumerate(zip(rows, rows[1:], strict=False))
              if i != at and abs(b["start_s"] - a["end_s"]) > TILE_S]
    assert not breaks, breaks
    return rows[at + 1]


def _covered_s(rows: list[asyncpg.Record]) -> float:
    """Media time the segments cover (an overlap counted once, as the master keeps it once)."""
    covered = 0.0
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        end = row["end_s"] if after is None else min(row["end_s"], after["start_s"])
        covered += max(0.0, end - row["start_s"])
    return covered


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
async def test_page_moves_to_another_node_when_its_node_dies(web_server: RunningApp, media_node: MediaNode,
                                                              browser: Any, admin_token: str, ctx: Context,
                                                              frame_log: FrameLog, tmp_path: Path) -> None:
    # The in-process node is full for now, so the offer must go to the separate `proctor media` process.
    full = replace(media_node.settings, media_node_capacity=0)
    media_node.settings = full
    await asyncio.sleep(1.2)  # one heartbeat
    proc, node_id = await _start_media_process(ctx.settings, ctx)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        # A name of its own: the suite's database holds other tests' sessions (test_lti maps an "Alan Turing" too).
        candidate = f"Alan Turing {uuid.uuid4().hex[:8]}"
        session = await create_session(web_server.url, admin_token, candidate=candidate)
        sid = session["id"]
        page = await browser.new_page()
        await join_and_start(page, session["join_url"])

        async def on_process_node() -> Any:
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT node_id, duration_s FROM sessions WHERE id = $1", sid)
            return row if row["node_id"] == node_id and row["duration_s"] > 2 else None

        before = await wait_for(on_process_node, within=20, interval=0.3)
        # Room again on the in-process node; then the node carrying the stream dies without a word.
        media_node.settings = replace(full, media_node_capacity=ctx.settings.media_node_capacity)
        await asyncio.sleep(1.2)
        url = next(n.url for n in await live_nodes(ctx.redis) if n.node_id == node_id)
        open_segment, received_s = await _kill_mid_segment(proc, url, ctx.settings.spool_dir, sid, ctx.settings)
        killed_at = time.time()
        on_disk = await asyncio.to_thread(_on_disk_at_kill, ctx.settings.spool_dir, open_segment, tmp_path)

        async def moved() -> bool:
            stream = media_node.streams.get(sid)
            return bool(stream and stream.stats.video_frames > 30)

        await wait_for(moved, within=45, interval=0.3)
        await page.wait_for_selector(CONNECTED, timeout=10_000)
        stream = media_node.streams[sid]
        print(f"node killed -> media on the other node after {stream.stats.first_frame_wall - killed_at:.1f}s")
        async with ctx.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
            count = await conn.fetchval("SELECT count(*) FROM sessions WHERE candidate = $1", candidate)
        assert count == 1 and row["status"] == "live"
        assert row["node_id"] == media_node.node_id and row["connections"] == 2
        gaps = row["media_gaps"]
        assert len(gaps) == 1
        # The new connection continues from what the dead node last persisted (at most ~1 s of heartbeat lag).
        assert gaps[0]["at_s"] >= before["duration_s"]
        assert stream.clock.base_s == pytest.approx(gaps[0]["at_s"], abs=0.001)
        await page.screenshot(path=str(ARTIFACTS / "candidate-after-failover.png"))

        # What `proctor up` does next: start the dead node again on the same data dir (after the page moved, so
        # which node the page picks stays certain). Its spool recovery finds the segment the dead pid left open,
        # makes a proper WebM of it and uploads it.
        restarted, _ = await _start_media_process(ctx.settings, ctx)
        await wait_for(lambda: _stored_row(ctx, open_segment["spool_id"]), within=30, interval=0.3)

        async def streamed_on() -> bool:  # a few segments on the new node after the kill
            return stream.clock.end_s - stream.clock.base_s > 4.5

        await wait_for(streamed_on, within=30, interval=0.3)
        await page.evaluate("window.proctor.finish()")
        await page.wait_for_selector("#step-done:not([hidden])", timeout=10_000)
        await page.close()
        await wait_for(lambda: all_segments_stored(ctx, sid), within=30)
        assert await finalize(ctx, sid) is True
        await _check_master_across_the_kill(ctx, sid, node_id, open_segment, on_disk, received_s, frame_log,
                                            tmp_path)
    finally:
        media_node.settings = replace(full, media_node_capacity=ctx.settings.media_node_capacity)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if restarted is not None and restarted.poll() is None:
            restarted.terminate()  # a clean stop: it unregisters
            try:
                restarted.wait(30)
            except subprocess.TimeoutExpired:
                restarted.kill()
                restarted.wait()


async def _check_master_across_the_kill(ctx: Context, sid: str, dead_node: str, open_segment: dict[str, Any],
                                        on_disk: ProbeResult, received_s: float, frame_log: FrameLog,
                                        tmp_path: Path) -> None:
    """From the database and the master: the recovered segment is there, the only hole in the timeline is at the
    kill and at most 2 s, and the master is session media time on both sides of it."""
    async with ctx.pool.acquire() as conn:
        session = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 ORDER BY start_s, idx", sid)
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
    assert session["status"] == "finalized" and master is not None
    recovered = next(r for r in rows if r["spool_id"] == open_segment["spool_id"])
    assert recovered["node_id"] == dead_node and recovered["start_s"] == open_segment["start_s"]
    assert recovered["state"] == "merged" and recovered["frames"] > 0
    # Killed >= 1.3 s in, at least its first cluster was on disk (quiet machine: 1.03-1.53 s; 0.53 s with both
    # cores busy), and recovery kept every frame of it: the same frames and end as the copy taken at the kill.
    assert on_disk.duration_s >= CLUSTER_MS / 1000 - 0.1, "a partial segment to recover"
    assert recovered["frames"] == on_disk.video_frames
    assert recovered["end_s"] - recovered["start_s"] == pytest.approx(on_disk.duration_s, abs=0.001)
    assert all(r["state"] == "merged" for r in rows)

    before, after = recovered, _the_one_break(list(rows), recovered["id"])
    reconnect_s = session["media_gaps"][0]["at_s"]
    assert after["node_id"] != dead_node
    assert after["start_s"] == pytest.approx(reconnect_s, abs=0.001)
    kept_to = min(before["end_s"], after["start_s"])  # the master cuts the recovered tail at the reconnection
    loss = received_s - kept_to
    hole = max(0.0, after["start_s"] - before["end_s"])
    covered = _covered_s(list(rows))
    print(f"\nSIGKILL {received_s - recovered['start_s']:.2f} s into a segment: "
          f"{recovered['end_s'] - recovered['start_s']:.3f} s recovered ({recovered['frames']} frames); "
          f"dead node received up to {received_s:.3f} s, archive keeps it to {kept_to:.3f} s, new connection from "
          f"{after['start_s']:.3f} s: {loss:.3f} s of received video lost (hole {hole:.3f} s, overlap cut "
          f"{max(0.0, before['end_s'] - after['start_s']):.3f} s); covered {covered:.3f} of "
          f"{session['duration_s']:.3f} s")
    assert -0.05 <= loss <= MAX_LOSS_S
    assert hole <= MAX_LOSS_S and session["duration_s"] - covered == pytest.approx(hole, abs=0.01)
    assert rows[0]["start_s"] == 0.0 and rows[-1]["end_s"] == pytest.approx(session["duration_s"], abs=1e-6)

    path = tmp_path / "master.webm"
    await ctx.storage.download(master["storage_key"], path)
    info = await asyncio.to_thread(probe, path, True)
    assert info.first_is_keyframe and info.has_cues and info.decode_errors == 0
    assert info.decoded_frames == info.video_frames
    assert info.duration_s == pytest.approx(session["duration_s"], abs=0.0015)
    assert master["duration_s"] == pytest.approx(info.duration_s, abs=0.001)
    # Just before the kill: a frame of the recovered segment; just after: the new connection's first frame.
    pts, _ = await asyncio.to_thread(frame_at, path, kept_to - 0.05)
    assert recovered["start_s"] - 0.001 <= pts <= kept_to - 0.05 and pts > kept_to - 0.2
    pts, frame = await asyncio.to_thread(frame_at, path, after["start_s"] + 0.0004)
    assert pts == pytest.approx(after["start_s"], abs=0.001) and frame.width > 0
    # Master time == session media time: each dead-node segment starts where its row says, and every frame the
    # new node received sits at its media time (ms rounding).
    for row in rows:
        if row["node_id"] == dead_node:
            pts, _ = await asyncio.to_thread(frame_at, path, row["start_s"] + 0.0004)
            assert pts == pytest.approx(row["start_s"], abs=0.001), row["idx"]
    times = [t for t in frame_log.times[sid] if t >= after["start_s"] - 0.0005]
    for t in times[::max(1, len(times) // 20)]:
        pts, _ = await asyncio.to_thread(frame_at, path, t + 0.0004)
        assert pts == pytest.approx(t, abs=0.001), t


async def test_sweep_ends_sessions_left_disconnected(ctx: Context) -> None:
    assert ctx.settings.disconnect_timeout_s == 5
    async with ctx.pool.acquire() as conn:
        stale = await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ('gone', 'e', 'live', 'n', now() + interval '1 hour', now() - interval '1 minute', "
            "now() - interval '10 seconds') RETURNING id::text")
        fresh = await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ('here', 'e', 'live', 'n', now() + interval '1 hour', now() - interval '1 minute', now()) "
            "RETURNING id::text")
    ended = await sweep_disconnected(ctx)
    assert stale in ended and fresh not in ended
    assert await sweep_disconnected(ctx) == [] or stale not in await sweep_disconnected(ctx)
    async with ctx.pool.acquire() as conn:
        rows = {r["id"]: r for r in await conn.fetch(
            "SELECT id::text, status, end_reason FROM sessions WHERE id = ANY($1::uuid[])", [stale, fresh])}
    assert rows[stale]["status"] == "ended" and rows[stale]["end_reason"] == "candidate disconnected"
    assert rows[fresh]["status"] == "live"
    # The archiver is told: a finalize job is queued for the ended session.
    entries = await ctx.redis.xrevrange("proctor:jobs:finalize", count=50)
    assert any(fields.get("session_id") == stale for _, fields in entries)
