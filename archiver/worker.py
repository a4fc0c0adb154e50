"""`proctor worker`: background jobs that run on any number of machines.

Roles:
- `merge`: stream-copies runs of stored segments into batches (jobs queued as segments are stored);
- `finalize`: builds master.webm when a session ended (jobs queued at the end);
- `sweep`: ends sessions whose candidate stayed disconnected longer than DISCONNECT_TIMEOUT_S (the update is
  conditional, so any number of workers can sweep at once and each session ends exactly once), re-queues
  finalize for ended sessions left unfinalized (a lost job, or a failure to retry), and deletes sessions older
  than RETENTION_DAYS.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, MERGE_STREAM
from proctor.settings import Settings
from signaling import sessions

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0
RETRY_FAILED_S = 300.0
ROLES = ("merge", "finalize", "sweep")


async def sweep_disconnected(ctx: Context) -> list[str]:
    """End live sessions with no media for DISCONNECT_TIMEOUT_S; returns the ids ended."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id FROM sessions WHERE status = 'live' AND coalesce(last_seen_at, started_at) "
            "< now() - make_interval(secs => $1)", float(ctx.settings.disconnect_timeout_s))
        ended = []
        for row in rows:
            if await sessions.end(conn, ctx.redis, str(row["id"]), "candidate disconnected"):
                ended.append(str(row["id"]))
    for session_id in ended:
        log.info("session %s ended: disconnected for %ss", session_id, ctx.settings.disconnect_timeout_s)
    return ended


async def expire_sessions(ctx: Context) -> list[str]:
    """RETENTION_DAYS: sessions older than that lose their video, snapshots, photos and events (audit-logged)."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id::text FROM sessions WHERE created_at < now() - make_interval(days => $1) "
            "AND status NOT IN ('created', 'live') ORDER BY created_at LIMIT 100", ctx.settings.retention_days)
    expired = []
    for row in rows:
        if await sessions.delete(ctx, row["id"], actor="retention",
                                 reason=f"older than {ctx.settings.retention_days} days"):
            expired.append(row["id"])
    if expired:
        log.info("retention: deleted %d sessions older than %d days", len(expired), ctx.settings.retention_days)
    return expired


async def requeue_unfinalized(ctx: Context) -> list[str]:
    """Sessions ended (or failed) a while ago but not finalized: queue their finalize again. Finalize is
    idempotent and runs under the session lock, so a duplicate job costs one lock check."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id::text FROM sessions WHERE status IN ('ended', 'finalizing', 'failed') "
            "AND coalesce(ended_at, created_at) < now() - make_interval(secs => $1)", RETRY_FAILED_S)
    for row in rows:
        await ctx.redis.xadd(FINALIZE_STREAM, {"session_id": row["id"], "reason": "retry"}, maxlen=100_000,
                             approximate=True)
    return [row["id"] for row in rows]


async def _sweeper(ctx: Context) -> None:
    """Every SWEEP_INTERVAL_S: end disconnected sessions, now and then re-queue finalizes and apply retention.

    Sessions are ended only once the servers have been reachable for DISCONNECT_TIMEOUT_S: while Postgres is down
    the media nodes cannot record that their candidates still stream (last_seen_at), so right after an outage
    longer than the timeout every live session looks disconnected and the first sweep would end them all. A worker
    just started cannot know what came before, so it waits as well; a session really left ends at most one
    timeout later than it would have.
    """
    rounds = 0
    # Monotonic time since which every round reached Postgres and Redis; None after a failure (and at start).
    reachable_since: float | None = None
    while True:
        try:
            async with ctx.pool.acquire() as conn:
                await conn.execute("SELECT 1")
            # Redis too: a session ended while it is down is ended in Postgres only; its node is not told and its
            # finalize is not queued (until requeue_unfinalized, minutes later).
            await ctx.redis.ping()
            reachable_since = reachable_since or time.monotonic()
            if time.monotonic() - reachable_since >= ctx.settings.disconnect_timeout_s:
                await sweep_disconnected(ctx)
            if rounds % int(RETRY_FAILED_S / SWEEP_INTERVAL_S) == 0:
                await requeue_unfinalized(ctx)
                await expire_sessions(ctx)
        except Exception as exc:  # a database or Redis outage: try again next round
            log.warning("sweep failed: %s", exc)
            reachable_since = None
        rounds += 1
        await asyncio.sleep(SWEEP_INTERVAL_S)


async def _consume(ctx: Context, kind: str, stop: asyncio.Event) -> None:
    from archiver.assemble import handler
    from archiver.jobs import JobQueue, consumer_name

    stream = MERGE_STREAM if kind == "merge" else FINALIZE_STREAM
    queue = JobQueue(ctx.redis, stream, consumer=consumer_name())
    while not stop.is_set():
        try:
            await queue.ensure_group()
            await queue.run(handler(kind, ctx, queue), stop)
        except Exception as exc:  # Redis down: wait and resume; pending jobs are reclaimed later
            log.warning("%s consumer stopped (%s); restarting", kind, exc)
            await asyncio.sleep(2.0)


async def run(settings: Settings, roles: list[str]) -> None:
    ctx = await Context.open(settings, pool_size=4)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(_sweeper(ctx)) if "sweep" in roles else None
    tasks = [asyncio.create_task(_consume(ctx, kind, stop)) for kind in ("merge", "finalize") if kind in roles]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker running roles: %s", ", ".join(roles))
    try:
        await stop.wait()
    finally:
        # The sweeper holds no job and never returns by itself: cancelled at once (waiting for it with the consumers
        # made every stop take the full 30 s). Consumers finish the job in hand (run() returns once stop is set).
        if sweeper is not None:
            sweeper.cancel()
            tasks.append(sweeper)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctx.close()


def main(settings: Settings, roles: str) -> int:
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROLES]
    if unknown or not wanted:
        raise SystemExit(f"proctor worker: unknown role(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(ROLES)}")
    asyncio.run(run(settings, wanted))
    return 0
