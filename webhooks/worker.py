"""The delivery worker, run by `proctor worker` (role `webhooks`) on any number of machines.

- The dispatcher puts due deliveries on the Redis job stream WEBHOOK_STREAM: woken at once by the NOTIFY the store
  sends when an event commits (flag.raised reaches a receiver within a second or two), and every
  DISPATCH_INTERVAL_S for retries that came due. A delivery put on the stream but not attempted within
  REQUEUE_AFTER_S (its job was lost with Redis, or trimmed) is put there again.
- Consumers (archiver.jobs.JobQueue, handed in by the composition root: at-least-once, reclaimed from dead
  workers, dead letters) make one attempt per job. Each attempt is counted and leased in Postgres first, so a
  duplicate job is a no-op; a failed attempt is rescheduled with exponential backoff and jitter
  (`backoff_s`) until WEBHOOK_MAX_ATTEMPTS, then marked failed (an admin may send it again).

Nothing about a delivery lives only in Redis or in a worker's memory: a restart only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import asyncpg
from redis.exceptions import RedisError

from proctor.context import Context
from proctor.db import DB_UNAVAILABLE
from proctor.store import webhooks as store
from webhooks import delivery
from webhooks.ssrf import Policy

log = logging.getLogger(__name__)

WEBHOOK_STREAM = "proctor:jobs:webhooks"
CONSUMERS = 4
DISPATCH_INTERVAL_S = 1.0
REQUEUE_AFTER_S = 60.0
MAX_DELAY_S = 12 * 3600.0
# How long an attempt holds its delivery beyond the HTTP timeout (database round trips, a slow event loop).
LEASE_MARGIN_S = 30.0


class JobLike(Protocol):
    id: str
    fields: dict[str, str]


JobHandler = Callable[[Any], Coroutine[Any, Any, object]]


class QueueLike(Protocol):
    async def run(self, handler: JobHandler, stop: asyncio.Event) -> None: ...


def backoff_s(attempt: int, base_s: float) -> float:
    """The wait after failed attempt number `attempt` (1-based): base·3^(attempt-1), at most MAX_DELAY_S, times a
    random 0.75-1.25 so endpoints that failed together do not all come back at the same instant. With the
    default base of 60 s, 8 attempts span about 18 hours."""
    return min(MAX_DELAY_S, base_s * 3 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def policy(ctx: Context) -> Policy:
    return Policy.from_settings(ctx.settings.webhook_allow_private, ctx.settings.webhook_allowed_networks)


async def dispatch_once(ctx: Context) -> int:
    """Put every due delivery on the job stream; how many were put there."""
    async with ctx.pool.acquire() as conn:
        ids = await store.claim_due(conn, requeue_after_s=REQUEUE_AFTER_S)
    if not ids:
        return 0
    try:
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.xadd(WEBHOOK_STREAM, {"delivery_id": str(delivery_id)}, maxlen=100_000, approximate=True)
            await pipe.execute()
    except RedisError:
        async with ctx.pool.acquire() as conn:
            await store.unqueue(conn, ids)
        raise
    return len(ids)


async def _listen(ctx: Context, wake: asyncio.Event) -> asyncpg.Connection | None:
    """A connection of its own that sets `wake` on every NOTIFY; None while Postgres cannot be reached (the
    dispatcher then polls)."""
    try:
        conn = await asyncpg.connect(ctx.settings.database_url)
        await conn.add_listener(store.NOTIFY_CHANNEL, lambda *_: wake.set())
        return conn
    except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
        log.warning("webhook dispatcher cannot listen for new events (%s); polling", exc)
        return None


async def run_dispatcher(ctx: Context, stop: asyncio.Event) -> None:
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                listener = await _listen(ctx, wake)
            wake.clear()
            try:
                await dispatch_once(ctx)
            except Exception as exc:  # an outage: the next round tries again, nothing is lost (state in Postgres)
                log.warning("webhook dispatch failed: %s", exc)
            waiters = {asyncio.create_task(wake.wait()), asyncio.create_task(stop.wait())}
            await asyncio.wait(waiters, timeout=DISPATCH_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED)
            for task in waiters:
                task.cancel()
    finally:
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await listener.close()


def handler(ctx: Context) -> JobHandler:
    """The job handler: one attempt at the delivery the job names (a no-op if it is not due or taken)."""
    async def run(job: JobLike) -> None:
        raw = job.fields.get("delivery_id", "")
        if not raw.isdigit() or len(raw) > 18:
            log.error("webhook job %s names no delivery (%r); dropped", job.id, raw[:40])
            return
        await attempt(ctx, int(raw))

    return run


async def attempt(ctx: Context, delivery_id: int) -> bool:
    """One attempt at `delivery_id` if it is due; True when it was made."""
    settings = ctx.settings
    async with ctx.pool.acquire() as conn:
        row = await store.start_attempt(conn, delivery_id, lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S)
    if row is None:
        return False
    if not row["enabled"] and row["type"] != store.TEST_TYPE:
        outcome = delivery.Outcome(None, "endpoint disabled", retry=False)
    else:
        outcome = await delivery.send(row["url"], str(row["event_id"]), row["secret"], row["body"].encode(),
                                      policy=policy(ctx), timeout_s=settings.webhook_timeout_s)
    final = outcome.error is None or not outcome.retry or row["attempts"] >= settings.webhook_max_attempts
    retry_in = None if final else backoff_s(row["attempts"], settings.webhook_retry_base_s)
    async with ctx.pool.acquire() as conn:
        await store.finish_attempt(conn, delivery_id, status=outcome.status, error=outcome.error, retry_in_s=retry_in)
    if outcome.error is None:
        log.info("webhook %s %s delivered to endpoint %s (attempt %d)", row["type"], row["event_id"],
                 row["endpoint_id"], row["attempts"])
    else:
        log.warning("webhook %s %s to endpoint %s, attempt %d: %s; %s", row["type"], row["event_id"],
                    row["endpoint_id"], row["attempts"], outcome.error,
                    f"next in {retry_in:.0f} s" if retry_in is not None else "gave up")
    return True


async def _consume(ctx: Context, queue: QueueLike, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await queue.run(handler(ctx), stop)
        except Exception as exc:  # Redis down: wait and resume; pending jobs are reclaimed later
            log.warning("webhook consumer stopped (%s); restarting", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)


async def run(ctx: Context, stop: asyncio.Event, make_queue: Callable[[str], QueueLike],
              consumers: int = CONSUMERS) -> None:
    """The dispatcher and `consumers` job consumers until `stop` is set. `make_queue(stream)` makes a job queue
    (archiver.jobs.JobQueue with a consumer name of its own) for each consumer."""
    tasks = [asyncio.create_task(run_dispatcher(ctx, stop))]
    tasks += [asyncio.create_task(_consume(ctx, make_queue(WEBHOOK_STREAM), stop)) for _ in range(consumers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
