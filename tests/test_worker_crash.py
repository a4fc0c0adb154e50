"""Real `proctor worker` processes: one is killed with SIGKILL in the middle of a finalize job, another takes
the job over and finishes it; there is exactly one master, with the exact duration."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.webm import WebmWriter, probe
from bench.synthetic import encode_clip
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, SESSION_LOCK
from tests.conftest import wait_for
from tests.media import face_canvas

ROOT = Path(__file__).resolve().parents[1]


def _worker(ctx: Context) -> subprocess.Popen[bytes]:
    s = ctx.settings
    env = dict(os.environ, DATABASE_URL=s.database_url, REDIS_URL=s.redis_url, PROCTOR_DATA_DIR=str(s.data_dir),
               MERGE_BATCH_SEGMENTS=str(s.merge_batch_segments), SECRET_KEY=s.secret_key)
    return subprocess.Popen([sys.executable, "-m", "proctor", "worker", "--roles", "finalize,merge"],  # noqa: ASYNC220
                            cwd=ROOT, env=env)


@pytest.mark.slow
async def test_killed_worker_job_is_finished_by_another(ctx: Context, tmp_path: Path) -> None:
    clip = await asyncio.to_thread(encode_clip, [face_canvas()] * 60, 30, 300_000, 30)
    one = tmp_path / "seg.webm"
    with WebmWriter(one, 640, 480) as writer:
        for i, (data, key) in enumerate(clip.video[:60]):
            writer.write_video(data, round(i * 1000 / 30), round((i + 1) * 1000 / 30) - round(i * 1000 / 30), key)
    seg_s = probe(one).duration_s
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, ended_at) "
            "VALUES ('crash', 'e', 'ended', 'n', now(), now()) RETURNING id"))
        for idx in range(10):
            key = f"sessions/{sid}/segments/{idx:06d}.webm"
            await ctx.storage.put_file(key, one)
            await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s, frames, storage_key, state) "
                               "VALUES ($1, $2, $3, $4, 60, $5, 'stored')", sid, idx, idx * seg_s, (idx + 1) * seg_s,
                               key)
    # Hold the session lock so the first worker is caught in the middle of its job, waiting for the lock.
    lock = ctx.redis.lock(SESSION_LOCK.format(session_id=sid), timeout=60)
    assert await lock.acquire(blocking=False)
    first = _worker(ctx)
    try:
        job_id = await ctx.redis.xadd(FINALIZE_STREAM, {"session_id": sid, "reason": "test"})

        async def picked_up() -> bool:
            """Our job is delivered to the first worker (pending in its name)."""
            try:
                pending = await ctx.redis.xpending_range(FINALIZE_STREAM, "workers", min=job_id, max=job_id, count=1)
            except Exception:  # the worker has not created its group yet
                return False
            return bool(pending)

        await wait_for(picked_up, within=30, interval=0.1)
        await asyncio.sleep(0.5)  # it is now waiting for the lock, heartbeating
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await lock.release()
        async with ctx.pool.acquire() as conn:
            assert await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid) == "ended"
        second = _worker(ctx)
        try:
            async def finalized() -> bool:
                async with ctx.pool.acquire() as conn:
                    return await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid) == "finalized"

            await wait_for(finalized, within=60, interval=0.3)  # after the job's idle time (10 s), reclaimed
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    async with ctx.pool.acquire() as conn:
        masters = await conn.fetch("SELECT * FROM master_videos WHERE session_id = $1", sid)
    assert len(masters) == 1
    assert masters[0]["duration_s"] == pytest.approx(10 * seg_s, abs=0.001)
    assert [o.key for o in await ctx.storage.list(f"sessions/{sid}/")] == [f"sessions/{sid}/master.webm"]
