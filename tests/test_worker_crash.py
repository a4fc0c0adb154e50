"""Real `proctor worker` processes killed with SIGKILL in the middle of a job: another worker takes the job over
and finishes it. Mid-finalize (waiting for the session lock) and mid-merge (batches half made, the session lock
held by the dead worker): every segment ends up in exactly one batch, there is exactly one master with the exact
duration, and nothing but the master is left in storage."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, MERGE_STREAM, SESSION_LOCK
from proctor.storage import Storage
from tests.support.archive import assert_one_exact_master, recorded_session
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
async def no_backlog(ctx: Context) -> None:
    """Each test's worker starts on an empty queue. Earlier tests of the suite stream real sessions whose media
    node queued merge and finalize jobs no worker ever took (none runs there); a worker started here would work
    through that backlog (real muxing, minutes on a busy machine) before it reached this test's job."""
    await ctx.redis.delete(MERGE_STREAM, FINALIZE_STREAM)


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


class _StopAtFirstDelete:
    """Storage that stops its caller at the first delete as a worker's SIGTERM does (the job task is cancelled at
    its next await): the moment after finalize committed the master, before it removed what the master replaces."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.stopped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def delete(self, key: str) -> None:
        if not self.stopped:
            self.stopped = True
            raise asyncio.CancelledError
        await self._storage.delete(key)


async def test_finalize_stopped_before_its_deletes_is_finished_by_the_next_delivery(ctx: Context,
                                                                                     tmp_path: Path) -> None:
    """Issue 19: a finalize stopped between its commit and its deletes (in test_worker_killed_mid_merge: the
    worker's SIGTERM, sent as soon as the session read `finalized`) left a segment object beside the master for
    good, because the next delivery saw `finalized` and did nothing. The session now reads `finalized` only once
    the storage is clean, and the next delivery finishes the deletes without building the master again."""
    from archiver.assemble import finalize, merge

    sid, seg_s = await recorded_session(ctx, tmp_path, 7, "live")
    assert await merge(ctx, sid) == 2
    # What a merge killed after its commit leaves: batch 3-5 committed, its last segment object still stored.
    await ctx.storage.put_file(f"sessions/{sid}/segments/000005.webm", tmp_path / "seg.webm")
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET status = 'ended', ended_at = now() WHERE id = $1", sid)
    stopping = _StopAtFirstDelete(ctx.storage)
    with pytest.raises(asyncio.CancelledError):
        await finalize(Context(ctx.settings, ctx.pool, ctx.redis, stopping), sid)  # type: ignore[arg-type]
    async with ctx.pool.acquire() as conn:
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
        status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid)
    assert master is not None  # committed before the stop
    assert status == "finalizing", "finalized while replaced objects are still stored"
    assert len(await ctx.storage.list(f"sessions/{sid}/")) > 1

    assert await finalize(ctx, sid) is True  # the next delivery
    async with ctx.pool.acquire() as conn:
        again = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
    assert again["sha256"] == master["sha256"]  # kept, not rebuilt from nothing
    assert await finalize(ctx, sid) is False
    await assert_one_exact_master(ctx, sid, 7 * seg_s)


async def test_a_segment_uploaded_again_after_its_merge_stays_out_of_storage(ctx: Context, tmp_path: Path) -> None:
    """A media process killed after committing a segment's upload but before removing it from its spool uploads it
    again at the next start. If a merge replaced it by a batch meanwhile (row 'merged', object deleted), that
    upload must not put the object back: nothing would ever delete it (issue 19)."""
    from archiver.assemble import merge
    from archiver.spool import Spool, SpoolSegment, Uploader

    sid, _ = await recorded_session(ctx, tmp_path, 3, "live")
    spool_id = uuid.uuid4().hex
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE segments SET spool_id = $2, node_id = 'gone' WHERE session_id = $1 AND idx = 2",
                           sid, spool_id)
    assert await merge(ctx, sid) == 1
    spool = Spool(tmp_path / "spool", "restarted")
    segment = SpoolSegment(spool_id, sid, 2 * 2.0, "gone", 1, state="closed", end_s=3 * 2.0, frames=60, idx=2)
    segment.path(spool.root).parent.mkdir(parents=True)
    shutil.copyfile(tmp_path / "seg.webm", segment.path(spool.root))
    spool.save(segment)
    await Uploader(ctx, spool).upload(segment)
    assert spool.segments() == [] and not segment.path(spool.root).exists()
    assert [o.key for o in await ctx.storage.list(f"sessions/{sid}/")] == [f"sessions/{sid}/batches/000000-000002.webm"]
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM segments WHERE spool_id = $1", spool_id) == "merged"
