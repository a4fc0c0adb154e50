"""Real `proctor worker` processes killed with SIGKILL in the middle of a job: another worker takes the job over
and finishes it. Mid-finalize (waiting for the session lock) and mid-merge (batches half made, the session lock
held by the dead worker): every segment ends up in exactly one batch, there is exactly one master with the exact
duration, and nothing but the master is left in storage."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, MERGE_STREAM, SESSION_LOCK
from tests.support.archive import assert_one_exact_master, recorded_session
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _worker(ctx: Context) -> subprocess.Popen[bytes]:
    s = ctx.settings
    env = dict(os.environ, DATABASE_URL=s.database_url, REDIS_URL=s.redis_url, PROCTOR_DATA_DIR=str(s.data_dir),
               MERGE_BATCH_SEGMENTS=str(s.merge_batch_segments), SECRET_KEY=s.secret_key)
    return subprocess.Popen([sys.executable, "-m", "proctor", "worker", "--roles", "finalize,merge"],  # noqa: ASYNC220
                            cwd=ROOT, env=env)


async def _finalized(ctx: Context, sid: str) -> bool:
    async with ctx.pool.acquire() as conn:
        return await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid) == "finalized"


@pytest.mark.slow
async def test_killed_worker_job_is_finished_by_another(ctx: Context, tmp_path: Path) -> None:
    sid, seg_s = await recorded_session(ctx, tmp_path, 10, "ended")
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
            # after the job's idle time (10 s), reclaimed
            await wait_for(lambda: _finalized(ctx, sid), within=60, interval=0.3)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    await assert_one_exact_master(ctx, sid, 10 * seg_s)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_worker_killed_mid_merge(ctx: Context, tmp_path: Path) -> None:
    """SIGKILL while a merge job is making batches of a live session: the dead worker's job is reclaimed once idle,
    its session lock expires by itself (no hand-made cleanup), and the second worker merges the rest. No segment
    is merged twice or left out; after the session ends, finalize makes the exact master and removes what the
    killed merge left in storage."""
    segments = 90
    size = ctx.settings.merge_batch_segments
    sid, seg_s = await recorded_session(ctx, tmp_path, segments, "live")
    first = _worker(ctx)
    second: subprocess.Popen[bytes] | None = None
    try:
        await ctx.redis.xadd(MERGE_STREAM, {"session_id": sid})

        async def batches() -> int:
            async with ctx.pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM batches WHERE session_id = $1", sid)

        await wait_for(batches, within=60, interval=0.01)  # the worker is making batches
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        made_by_first = await batches()
        assert 0 < made_by_first < segments // size, "the kill did not land mid-merge"
        async with ctx.pool.acquire() as conn:
            merged_keys = {r["storage_key"] for r in await conn.fetch(
                "SELECT storage_key FROM segments WHERE session_id = $1 AND state = 'merged'", sid)}
        left = [o.key for o in await ctx.storage.list(f"sessions/{sid}/segments/") if o.key in merged_keys]
        print(f"\n[mid-merge kill] batches made before the kill: {made_by_first}, "
              f"merged segments still stored: {len(left)}")
        second = _worker(ctx)

        async def all_merged() -> bool:
            async with ctx.pool.acquire() as conn:
                return not await conn.fetchval(
                    "SELECT count(*) FROM segments WHERE session_id = $1 AND state <> 'merged'", sid)

        # The job idles 10 s before it is reclaimed; the dead worker's lock lives up to its 60-s TTL.
        await wait_for(all_merged, within=120, interval=0.5)
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT first_idx, last_idx, start_s, end_s FROM batches WHERE session_id = $1 "
                                    "ORDER BY first_idx", sid)
            # Ended here, as signaling does, then finalized by the same surviving worker.
            await conn.execute("UPDATE sessions SET status = 'ended', ended_at = now() WHERE id = $1", sid)
        assert [(r["first_idx"], r["last_idx"]) for r in rows] == [(i, i + size - 1) for i in range(0, segments, size)]
        for row in rows:
            assert row["end_s"] - row["start_s"] == pytest.approx(size * seg_s, abs=0.001)
        await ctx.redis.xadd(FINALIZE_STREAM, {"session_id": sid, "reason": "test"})
        await wait_for(lambda: _finalized(ctx, sid), within=60, interval=0.3)
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
    await assert_one_exact_master(ctx, sid, segments * seg_s)


async def test_finalize_removes_what_a_killed_merge_left(ctx: Context, tmp_path: Path) -> None:
    """A merge killed between its commit and its deletes leaves segment objects whose rows say 'merged' (no later
    merge looks at them again): finalize removes them with everything else the master replaces, and keeps the
    evidence snapshots stored beside them."""
    from archiver.assemble import finalize, merge

    sid, seg_s = await recorded_session(ctx, tmp_path, 6, "live")
    assert await merge(ctx, sid) == 2
    for idx in (0, 1, 2):  # the state such a kill leaves: batch 0-2 committed, its segments still stored
        await ctx.storage.put_file(f"sessions/{sid}/segments/{idx:06d}.webm", tmp_path / "seg.webm")
    evidence = f"sessions/{sid}/events/1-0123456789ab.jpg"
    await ctx.storage.put_bytes(evidence, b"\xff\xd8 evidence", content_type="image/jpeg")
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET status = 'ended', ended_at = now() WHERE id = $1", sid)
    assert await finalize(ctx, sid) is True
    assert await ctx.storage.exists(evidence)
    await ctx.storage.delete(evidence)
    await assert_one_exact_master(ctx, sid, 6 * seg_s)
