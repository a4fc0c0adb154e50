"""The sweeper: ends sessions whose candidate stayed disconnected longer than DISCONNECT_TIMEOUT_S (the update
is conditional, so any number of workers can sweep at once and each session ends exactly once), re-queues
finalize for ended sessions left unfinalized (a lost job, or a failure to retry), and applies retention."""

from __future__ import annotations

import asyncio
import logging
import time

from lifecycle.retention import expire_sessions
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM
from proctor.store import sessions

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0
RETRY_FAILED_S = 300.0


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


async def run_sweeper(ctx: Context) -> None:
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
