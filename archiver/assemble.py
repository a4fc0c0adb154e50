"""Merge and finalize: stream-copy stored segments into batches, and batches into one seekable master.webm.

Both run as Redis Streams jobs (archiver/jobs.py) under the session's Redis lock, and both are idempotent:
each commits to Postgres before deleting what it replaced, so a worker killed at any point leaves work that
the next delivery finishes, and never two masters.

The shared screen (issue 18) has its own segments (screen_segments) and its own master (screen_masters,
sessions/{id}/screen/master.webm), built by finalize after the webcam's, placed on the same session timeline.
They are not merged into batches: at 1-2 fps a 20-s screen segment is small and finalize joins them directly.
A screen that cannot be assembled is logged and leaves the webcam master and the session's status untouched.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from archiver.jobs import Job, JobQueue, session_lock
from archiver.webm import concat
from core.live import SessionStatus
from core.sessions import parse_id
from proctor import metrics
from proctor.context import Context
from proctor.storage import file_sha256
from proctor.store import live, sessions
from proctor.store.nodes import live_nodes

log = logging.getLogger(__name__)

Heartbeat = Callable[[], Awaitable[None]]
# A segment still being written or uploaded by a node that has been gone this long is declared lost.
LOST_SEGMENT_S = 60.0
WAIT_FOR_SEGMENTS_S = 600.0
TILE_TOLERANCE_S = 0.002


async def _fetch(ctx: Context, key: str, path: Path) -> Path:
    """A stored object as a local file: the object itself on local storage (no copy), a download on S3."""
    local = ctx.storage.local_path(key)
    if local is not None and local.is_file():
        return local
    await ctx.storage.download(key, path)
    return path


class NotReady(RuntimeError):
    """The session's segments are not all stored yet; the job is retried later."""


def consecutive_runs(rows: list[asyncpg.Record], size: int) -> list[list[asyncpg.Record]]:
    """Full runs of `size` stored segments with consecutive indexes that tile the timeline exactly."""
    runs: list[list[asyncpg.Record]] = []
    current: list[asyncpg.Record] = []
    for row in rows:
        if current and (row["idx"] != current[-1]["idx"] + 1
                        or abs(row["start_s"] - current[-1]["end_s"]) > TILE_TOLERANCE_S):
            current = []
        current.append(row)
        if len(current) == size:
            runs.append(current)
            current = []
    return runs


def placements_ms(pieces: list[asyncpg.Record], origin_s: float) -> list[int]:
    """Where each piece (ordered by start) begins in the output, in ms after origin_s: its own media start.

    Placing by start rather than back to back keeps output time equal to session media time when pieces do
    not tile: a segment recovered from a crashed node ends a little before or after the reconnection's first
    segment begins. Rounding each start on its own (not the differences) keeps every frame within 1 ms.
    """
    origin = round(origin_s * 1000)
    return [round(piece["start_s"] * 1000) - origin for piece in pieces]


async def merge(ctx: Context, session_id: str, heartbeat: Heartbeat | None = None) -> int:
    """Merge every full run of MERGE_BATCH_SEGMENTS stored segments into a batch; returns batches made."""
    size = ctx.settings.merge_batch_segments
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT idx, start_s, end_s, storage_key FROM segments WHERE session_id = $1 AND state = 'stored' "
            "ORDER BY idx", session_id)
    made = 0
    for run in consecutive_runs(list(rows), size):
        with tempfile.TemporaryDirectory(prefix="merge-", dir=ctx.storage.scratch_dir()) as tmp:
            inputs = []
            for row in run:
                inputs.append(await _fetch(ctx, row["storage_key"], Path(tmp) / f"{row['idx']:06d}.webm"))
                if heartbeat:
                    await heartbeat()
            out = Path(tmp) / "batch.webm"
            result = await asyncio.to_thread(concat, inputs, out, placements_ms(run, run[0]["start_s"]), True)
            first, last = run[0]["idx"], run[-1]["idx"]
            key = f"sessions/{session_id}/batches/{first:06d}-{last:06d}.webm"
            sha, size_bytes = await asyncio.to_thread(file_sha256, out)
            await ctx.storage.put_file(key, out, content_type="video/webm", move=True)
        async with ctx.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO batches (session_id, first_idx, last_idx, start_s, end_s, bytes, sha256, storage_key) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (session_id, first_idx) DO NOTHING",
                session_id, first, last, run[0]["start_s"], run[0]["start_s"] + result.duration_s, size_bytes, sha,
                key)
            await conn.execute("UPDATE segments SET state = 'merged' WHERE session_id = $1 AND idx BETWEEN $2 AND $3",
                               session_id, first, last)
        # Only after the commit: the segment objects the batch replaces.
        for row in run:
            await ctx.storage.delete(row["storage_key"])
        made += 1
        log.info("session %s: merged segments %d-%d into %s", session_id, first, last, key)
    return made


async def _wait_for_segments(ctx: Context, session_id: str, heartbeat: Heartbeat | None) -> None:
    """Until every segment of the session is stored; segments of a node that died and never came back are
    declared lost after LOST_SEGMENT_S (the node's restart would have recovered them)."""
    deadline = time.monotonic() + WAIT_FOR_SEGMENTS_S
    while True:
        async with ctx.pool.acquire() as conn:
            pending = await conn.fetch(
                "SELECT idx, node_id, created_at FROM segments WHERE session_id = $1 "
                "AND state IN ('recording', 'spooled')", session_id)
            screen = await conn.fetch(
                "SELECT idx, node_id, created_at FROM screen_segments WHERE session_id = $1 "
                "AND state IN ('recording', 'spooled')", session_id)
            if not pending and not screen:
                return
            alive = {n.node_id for n in await live_nodes(ctx.redis)}
            lost_any = False
            for table, rows in (("segments", pending), ("screen_segments", screen)):
                lost = [r["idx"] for r in rows if r["node_id"] not in alive
                        and (time.time() - r["created_at"].timestamp()) > LOST_SEGMENT_S]
                if lost:
                    await conn.execute(f"UPDATE {table} SET state = 'failed' WHERE session_id = $1 "
                                       "AND idx = ANY($2)", session_id, lost)
                    log.error("session %s: %s %s lost with their node", session_id, table, lost)
                    lost_any = True
            if lost_any:
                continue
        if time.monotonic() > deadline:
            raise NotReady(f"{len(pending)} segments of session {session_id} still uploading")
        if heartbeat:
            await heartbeat()
        await asyncio.sleep(1.0)


async def finalize(ctx: Context, session_id: str, heartbeat: Heartbeat | None = None) -> bool:
    """Build master.webm once the session ended and all its media is stored; returns True when finalized
    by this call (False: nothing to do — not ended yet, already finalized, or deleted)."""
    async with ctx.pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", session_id)
    if status not in ("ended", "finalizing", "failed"):
        return False
    await _wait_for_segments(ctx, session_id, heartbeat)
    await merge(ctx, session_id, heartbeat)
    async with ctx.pool.acquire() as conn:
        await sessions.move(conn, session_id, "finalizing")
        pieces = await conn.fetch(
            "SELECT first_idx AS idx, start_s, end_s, storage_key, 'batch' AS kind FROM batches "
            "WHERE session_id = $1 AND state = 'stored' "
            "UNION ALL SELECT idx, start_s, end_s, storage_key, 'segment' FROM segments "
            "WHERE session_id = $1 AND state = 'stored' ORDER BY start_s, idx", session_id)
    await _publish(ctx, session_id, "finalizing")
    try:
        with tempfile.TemporaryDirectory(prefix="finalize-", dir=ctx.storage.scratch_dir()) as tmp:
            inputs = []
            for i, piece in enumerate(pieces):
                inputs.append(await _fetch(ctx, piece["storage_key"], Path(tmp) / f"{i:06d}.webm"))
                if heartbeat:
                    await heartbeat()
            key = f"sessions/{session_id}/master.webm"
            out = Path(tmp) / "master.webm"
            # Each piece at its own media start: master time == session media time, also across a failover.
            starts = placements_ms(list(pieces), 0.0)
            result = await asyncio.to_thread(concat, inputs, out, starts, True) if inputs else None
            if result is not None:
                sha, size_bytes = await asyncio.to_thread(file_sha256, out)
                await ctx.storage.put_file(key, out, content_type="video/webm", move=True)
        async with ctx.pool.acquire() as conn, conn.transaction():
            if result is not None:
                await conn.execute(
                    "INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s, width, height) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (session_id) DO UPDATE SET "
                    "storage_key = EXCLUDED.storage_key, bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, "
                    "duration_s = EXCLUDED.duration_s, width = EXCLUDED.width, height = EXCLUDED.height",
                    session_id, key, size_bytes, sha, result.duration_s, result.width, result.height)
            await conn.execute("UPDATE batches SET state = 'deleted' WHERE session_id = $1", session_id)
            await conn.execute("UPDATE segments SET state = 'merged' WHERE session_id = $1 AND state = 'stored'",
                               session_id)
    except Exception as exc:
        async with ctx.pool.acquire() as conn:
            await sessions.move(conn, session_id, "failed",
                                failure_reason=f"finalize: {type(exc).__name__}: {exc}"[:500])
        await _publish(ctx, session_id, "failed")
        raise
    # After the commit: the pieces the master replaces, and what interrupted jobs left behind. The session says
    # `finalized` only once they are gone: a worker stopped or killed in between (a deploy's SIGTERM, an OOM kill)
    # leaves it `finalizing`, so the next delivery (or the sweep's re-queue) runs finalize again, which finds
    # nothing left to concatenate, keeps the committed master and finishes these deletes. Were `finalized`
    # committed first, that delivery would return at once and the objects would stay in storage for ever.
    for piece in pieces:
        await ctx.storage.delete(piece["storage_key"])
    await _delete_leftovers(ctx, session_id)
    try:
        await finalize_screen(ctx, session_id, heartbeat)
    except Exception:  # the webcam master is committed: a screen that cannot be joined must not undo it
        log.exception("session %s: the screen master could not be built", session_id)
    async with ctx.pool.acquire() as conn:
        await sessions.move(conn, session_id, "finalized")
    await _publish(ctx, session_id, "finalized")
    log.info("session %s finalized: %.3f s", session_id, result.duration_s if result else 0.0)
    return True


async def finalize_screen(ctx: Context, session_id: str, heartbeat: Heartbeat | None = None) -> bool:
    """Join the session's stored screen segments into sessions/{id}/screen/master.webm, each at its own media start
    (master time == session media time, as for the webcam); True when a master was made. Idempotent: once the
    master is committed its segments are 'merged', and a second run finds nothing and only deletes leftovers."""
    async with ctx.pool.acquire() as conn:
        pieces = await conn.fetch(
            "SELECT idx, start_s, end_s, storage_key FROM screen_segments WHERE session_id = $1 AND state = 'stored' "
            "ORDER BY start_s, idx", session_id)
    made = False
    if pieces:
        with tempfile.TemporaryDirectory(prefix="screen-", dir=ctx.storage.scratch_dir()) as tmp:
            inputs = []
            for i, piece in enumerate(pieces):
                inputs.append(await _fetch(ctx, piece["storage_key"], Path(tmp) / f"{i:06d}.webm"))
                if heartbeat:
                    await heartbeat()
            key = f"sessions/{session_id}/screen/master.webm"
            out = Path(tmp) / "screen.webm"
            result = await asyncio.to_thread(concat, inputs, out, placements_ms(list(pieces), 0.0), True)
            sha, size_bytes = await asyncio.to_thread(file_sha256, out)
            await ctx.storage.put_file(key, out, content_type="video/webm", move=True)
        async with ctx.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO screen_masters (session_id, storage_key, bytes, sha256, start_s, duration_s, width, "
                "height) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (session_id) DO UPDATE SET "
                "storage_key = EXCLUDED.storage_key, bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256, "
                "start_s = EXCLUDED.start_s, duration_s = EXCLUDED.duration_s, width = EXCLUDED.width, "
                "height = EXCLUDED.height",
                session_id, key, size_bytes, sha, float(pieces[0]["start_s"]), result.duration_s, result.width,
                result.height)
            await conn.execute("UPDATE screen_segments SET state = 'merged' WHERE session_id = $1 "
                               "AND state = 'stored'", session_id)
        made = True
        log.info("session %s: screen master %.3f s from %d segments", session_id, result.duration_s, len(pieces))
    # After the commit (or on a re-run after a crash between the commit and these deletes).
    async with ctx.pool.acquire() as conn:
        replaced = {r["storage_key"] for r in await conn.fetch(
            "SELECT storage_key FROM screen_segments WHERE session_id = $1 AND state = 'merged' "
            "AND storage_key IS NOT NULL", session_id)}
    for obj in await ctx.storage.list(f"sessions/{session_id}/screen/segments/"):
        if obj.key in replaced:
            await ctx.storage.delete(obj.key)
    return made


async def _delete_leftovers(ctx: Context, session_id: str) -> None:
    """Segment and batch objects already replaced in Postgres but still stored: a merge killed between its commit
    and its deletes leaves its segments behind (merged rows are never looked at again). Two listings and one
    query, whatever the session's length; only keys whose rows say they were replaced are deleted."""
    async with ctx.pool.acquire() as conn:
        replaced = {r["storage_key"] for r in await conn.fetch(
            "SELECT storage_key FROM segments WHERE session_id = $1 AND state = 'merged' AND storage_key IS NOT NULL "
            "UNION ALL SELECT storage_key FROM batches WHERE session_id = $1 AND state = 'deleted'", session_id)}
    for prefix in (f"sessions/{session_id}/segments/", f"sessions/{session_id}/batches/"):
        for obj in await ctx.storage.list(prefix):
            if obj.key in replaced:
                log.info("session %s: deleting %s, left behind by an interrupted job", session_id, obj.key)
                await ctx.storage.delete(obj.key)


async def _publish(ctx: Context, session_id: str, status: str) -> None:
    await live.publish_quietly(ctx.redis, SessionStatus(session_id=session_id, status=status))


def handler(kind: str, ctx: Context, queue: JobQueue) -> Callable[[Job], Coroutine[Any, Any, None]]:
    """A job handler for `merge` or `finalize` running under the session's Redis lock."""
    work = merge if kind == "merge" else finalize

    async def run(job: Any) -> None:
        session_id = job.fields.get("session_id", "")
        if parse_id(session_id) is None:
            log.error("%s job %s has no valid session id; dropped", kind, job.id)
            return
        beat = queue.heartbeat_for(job)
        async with session_lock(ctx.redis, session_id, heartbeat=beat):
            if kind != "finalize":
                await work(ctx, session_id, beat)
                return
            started = time.monotonic()  # timed under the lock: the work, not the wait for another job
            try:
                done = await work(ctx, session_id, beat)
            except Exception:
                metrics.finalize_done("failed", time.monotonic() - started)
                raise
            if done:  # False: nothing to do (not ended yet, finalized already): no build to time
                metrics.finalize_done("finalized", time.monotonic() - started)

    return run
