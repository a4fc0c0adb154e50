"""Scale-out and failure: a real `proctor media` process carries the stream, is killed with SIGKILL, and the
candidate page reconnects by itself to another node; same session, gap recorded, timeline continued.
Also: the worker ends sessions whose candidate stays away longer than DISCONNECT_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from archiver.worker import sweep_disconnected
from media_server.node import MediaNode
from proctor.context import Context
from signaling.nodes import live_nodes
from tests.browser import CONNECTED, have_chromium, join_and_start
from tests.conftest import ARTIFACTS, RunningApp, wait_for
from tests.test_ingest_browser import create_session

ROOT = Path(__file__).resolve().parents[1]


async def _start_media_process(settings: Any, ctx: Context) -> tuple[subprocess.Popen[bytes], str]:
    env = dict(os.environ, DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url,
               PROCTOR_DATA_DIR=str(settings.data_dir), ICE_HOST_ADDRESSES="127.0.0.1", MEDIA_NODE_PORT="0",
               SECRET_KEY=settings.secret_key)
    before = {n.node_id for n in await live_nodes(ctx.redis)}
    proc = subprocess.Popen([sys.executable, "-m", "proctor", "media"], cwd=ROOT, env=env)  # noqa: ASYNC220 (test)

    async def registered() -> str | None:
        assert proc.poll() is None, "proctor media exited"
        new = [n.node_id for n in await live_nodes(ctx.redis) if n.node_id not in before]
        return new[0] if new else None

    return proc, await wait_for(registered, within=60, interval=0.2)


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
async def test_page_moves_to_another_node_when_its_node_dies(web_server: RunningApp, media_node: MediaNode,
                                                              browser: Any, admin_token: str, ctx: Context) -> None:
    # The in-process node is full for now, so the offer must go to the separate `proctor media` process.
    full = replace(media_node.settings, media_node_capacity=0)
    media_node.settings = full
    await asyncio.sleep(1.2)  # one heartbeat
    proc, node_id = await _start_media_process(ctx.settings, ctx)
    try:
        session = await create_session(web_server.url, admin_token, candidate="Alan Turing")
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
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        async def moved() -> bool:
            stream = media_node.streams.get(sid)
            return bool(stream and stream.stats.video_frames > 30)

        await wait_for(moved, within=45, interval=0.3)
        await page.wait_for_selector(CONNECTED, timeout=10_000)
        stream = media_node.streams[sid]
        print(f"node killed -> media on the other node after {stream.stats.first_frame_wall - killed_at:.1f}s")
        async with ctx.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
            count = await conn.fetchval("SELECT count(*) FROM sessions WHERE candidate = 'Alan Turing'")
        assert count == 1 and row["status"] == "live"
        assert row["node_id"] == media_node.node_id and row["connections"] == 2
        gaps = row["media_gaps"]
        assert len(gaps) == 1
        # The new connection continues from what the dead node last persisted (at most ~1 s of heartbeat lag).
        assert gaps[0]["at_s"] >= before["duration_s"]
        assert stream.clock.base_s == pytest.approx(gaps[0]["at_s"], abs=0.001)
        await page.screenshot(path=str(ARTIFACTS / "candidate-after-failover.png"))
        await page.evaluate("window.proctor.finish()")
        await page.wait_for_selector("#step-done:not([hidden])", timeout=10_000)
        await page.close()
    finally:
        media_node.settings = replace(full, media_node_capacity=ctx.settings.media_node_capacity)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
