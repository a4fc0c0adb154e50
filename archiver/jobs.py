"""At-least-once background jobs on Redis Streams consumer groups, safe with any number of worker processes.

A job is a stream entry. A worker reads it with XREADGROUP (it is then pending under that worker's consumer name),
runs the handler and XACKs it only after the handler returned, i.e. after its work was committed. A worker that dies
leaves the entry pending; once it has been idle for `claim_idle_ms`, any other worker takes it over with XAUTOCLAIM.
A live worker keeps its job's idle time near zero with a heartbeat (XCLAIM ... JUSTID to itself), so a long job is
never taken from a worker that is still running it. Handlers must be idempotent: a job can run again after a crash
between the commit and the XACK, or when its worker was stopped mid-job.

`session_lock` serialises the jobs of one session across workers; the job heartbeat must keep beating while a job
waits for that lock too, or the waiting job is claimed by another worker and the work runs twice (measured).

The client must be created with decode_responses=True (proctor.redis.connect does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError, ResponseError

from proctor.redis import SESSION_LOCK, stream_fields

log = logging.getLogger(__name__)

MAXLEN = 100_000
# Pause after a Redis error (outage, failover) before trying again: an error must never turn the loop into a spin.
ERROR_BACKOFF_S = 1.0
# XAUTOCLAIM calls per round while a scan claims nothing yet: Redis 6.2 scans the whole PEL in one call, Redis 7
# stops after COUNT*10 entries and returns a cursor to go on from.
MAX_SCAN_CALLS = 20

Heartbeat = Callable[[], Awaitable[None]]

# Refresh the job's idle time only while this consumer still owns it. A plain XCLAIM would also take the job back
# from a worker that claimed it while ours was stalled (a blocked event loop, a long GC pause); both would then
# heartbeat and the job would flip between them. JUSTID: the delivery counter is not incremented.
_REFRESH = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


@dataclass
class Job:
    id: str
    stream: str
    fields: dict[str, str]
    deliveries: int


Handler = Callable[[Job], Coroutine[Any, Any, object]]


def consumer_name() -> str:
    """A consumer name unique to this process: two workers must never share one, or each could ack the other's job."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they are done.

    One cancel() is not enough: redis-py 8 defaults socket_timeout to 5 s and then sends every command through
    asyncio.wait_for, which on Python 3.11 returns the result and drops a cancellation that arrives as the send
    completes (CPython gh-86296, fixed in 3.12). Measured: 30 of 40 cancels of a task looping on GET were lost.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)


class JobQueue:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        *,
        group: str = "workers",
        consumer: str,
        claim_idle_ms: int = 10_000,
        heartbeat_s: float = 2.0,
        max_deliveries: int = 10,
        block_ms: int = 1000,
    ) -> None:
        # A heartbeat slower than the claim threshold would let a live job be stolen between two beats.
        if heartbeat_s * 1000 * 2 > claim_idle_ms:
            raise ValueError(f"heartbeat_s={heartbeat_s} must be well under claim_idle_ms={claim_idle_ms}")
        # BLOCK 0 means "forever" to Redis: run() would never notice stop. A block as long as the client's socket
        # timeout (redis-py 8 defaults it to 5 s) would end every idle read in a TimeoutError.
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        if block_ms <= 0 or (socket_timeout and block_ms >= socket_timeout * 1000 / 2):
            raise ValueError(f"block_ms={block_ms} must be positive and well under socket_timeout={socket_timeout}s")
        self.redis = redis
        self.stream = stream
        self.dead_stream = f"{stream}:dead"
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_s = heartbeat_s
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self._cursor = "0-0"
        self._refresh_script = redis.register_script(_REFRESH)

    async def ensure_group(self) -> None:
        try:
            # From id 0: jobs enqueued before the first worker ever started must run too.
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, fields: dict[str, str]) -> str:
        return str(await self.redis.xadd(self.stream, stream_fields(fields), maxlen=MAXLEN, approximate=True))

    def heartbeat_for(self, job: Job) -> Heartbeat:
        """One heartbeat for `job`, for code that waits on the job's behalf (session_lock's heartbeat)."""

        async def beat() -> None:
            await self._refresh(job)

        return beat

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Process jobs one at a time until `stop` is set.

        Stop is noticed within block_ms while idle; a running handler is cancelled at once and its job stays
        pending, to be reclaimed after claim_idle_ms (at-least-once: handlers are idempotent). Stop it with `stop`
        rather than Task.cancel(): a single cancel can be lost inside a redis-py call (see _cancel).
        """
        await self.ensure_group()
        while not stop.is_set():
            try:
                job = await self._reclaim() or await self._read_new()
                if job is not None:
                    # Redis failing at XACK time only means the job runs again (idempotent), not that run() dies.
                    await self._process(job, handler, stop)
            except RedisError as exc:
                if "NOGROUP" in str(exc):  # stream or group deleted under us (FLUSHDB, a reset): recreate it
                    with contextlib.suppress(RedisError):
                        await self.ensure_group()
                log.warning("job queue %s: %s; retrying in %ss", self.stream, exc, ERROR_BACKOFF_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ERROR_BACKOFF_S)

    async def _reclaim(self) -> Job | None:
        """Take over one job whose worker has gone silent for claim_idle_ms, if any."""
        for _ in range(MAX_SCAN_CALLS):
            start = self._cursor
            # redis-py returns [next_cursor, entries] (Redis 7 adds a third item: ids deleted from the PEL).
            reply = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start, count=1)
            self._cursor = reply[0]
            for entry_id, fields in reply[1]:
                if entry_id is None:
                    # Redis 6.2: a pending entry whose message was trimmed comes back as nil, id and all, and stays
                    # in the PEL (now ours) for ever; Redis 7 drops such entries itself.
                    await self._ack_deleted(start, self._cursor)
                    continue
                return Job(entry_id, self.stream, fields, await self._deliveries(entry_id))
            if self._cursor == "0-0":
                return None
        return None

    async def _read_new(self) -> Job | None:
        # Blocks up to block_ms when there is nothing to do: this is what keeps run() from spinning.
        reply: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=1, block=self.block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                return Job(entry_id, self.stream, fields, 1)  # never delivered before: ">" only returns new ones
        return None

    async def _deliveries(self, entry_id: str) -> int:
        # XAUTOCLAIM increments the delivery counter but does not return it; XPENDING does.
        pending = await self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _ack_deleted(self, start: str, cursor: str) -> None:
        end = "+" if cursor == "0-0" else f"({cursor}"
        pending = await self.redis.xpending_range(
            self.stream, self.group, min=start, max=end, count=100, consumername=self.consumer)
        for entry in pending:
            entry_id = entry["message_id"]
            if not await self.redis.xrange(self.stream, entry_id, entry_id):  # only ack what is really gone
                log.warning("job %s %s was trimmed from the stream before it ran; dropping it", self.stream, entry_id)
                await self.redis.xack(self.stream, self.group, entry_id)

    async def _process(self, job: Job, handler: Handler, stop: asyncio.Event) -> None:
        if job.deliveries > self.max_deliveries:
            # It never raised, yet never finished: it took its workers down (OOM, kill -9). Stop feeding it to them.
            await self._dead_letter(job, f"not completed in {job.deliveries - 1} deliveries (worker died)")
            return
        beat = asyncio.create_task(self._heartbeat(job))
        work = asyncio.create_task(handler(job))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also runs when run() itself is cancelled: no task may outlive it.
            await _cancel(work, beat, stopping)
        if work.cancelled():
            log.info("job %s %s interrupted by stop; it stays pending for another worker", job.stream, job.id)
            return
        error = work.exception()
        if error is None:
            await self.redis.xack(self.stream, self.group, job.id)
            return
        log.error("job %s %s failed (delivery %d of %d)", job.stream, job.id, job.deliveries, self.max_deliveries,
                  exc_info=error)
        if job.deliveries >= self.max_deliveries:
            await self._dead_letter(job, f"{type(error).__name__}: {error}")
        # Otherwise it stays pending under our name and is retried by whoever reclaims it after claim_idle_ms.

    async def _dead_letter(self, job: Job, error: str) -> None:
        fields = {**job.fields, "_job_id": job.id, "_error": error[:2000], "_deliveries": str(job.deliveries)}
        # One transaction: the job is either still pending or in the dead-letter stream, never lost in between.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, stream_fields(fields), maxlen=MAXLEN, approximate=True)
            pipe.xack(self.stream, self.group, job.id)
            await pipe.execute()
        log.error("job %s %s moved to %s: %s", job.stream, job.id, self.dead_stream, error)

    async def _refresh(self, job: Job) -> bool:
        owned = await self._refresh_script(keys=[self.stream], args=[self.group, self.consumer, job.id])
        return bool(owned)

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                if not await self._refresh(job):
                    # Acked, dead-lettered or claimed by another worker after we stalled: nothing left to keep alive.
                    # The handler goes on (it is idempotent); we cannot know whether stopping it halfway is safer.
                    log.warning("job %s %s is no longer ours; heartbeat stops", job.stream, job.id)
                    return
            except RedisError as exc:  # a blip: the next beat still comes well before claim_idle_ms
                log.warning("heartbeat for job %s %s failed: %s", job.stream, job.id, exc)


async def _beat_every(interval_s: float, heartbeat: Heartbeat) -> None:
    while True:
        try:
            await heartbeat()
        except RedisError as exc:
            log.warning("job heartbeat while waiting for a lock failed: %s", exc)
        await asyncio.sleep(interval_s)


async def _keep_extended(lock: Lock, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await lock.reacquire()  # TTL back to timeout_s: the work may outlast it
        except LockError:
            log.error("lock %s expired while held (Redis stalled?); another worker may now hold it", lock.name)
            return
        except RedisError as exc:
            log.warning("extending lock %s failed: %s", lock.name, exc)


@contextlib.asynccontextmanager
async def session_lock(
    redis: aioredis.Redis,
    session_id: str,
    *,
    heartbeat: Heartbeat | None,  # no default on purpose: a job waiting here without one gets claimed twice
    timeout_s: float = 60,
    blocking_timeout_s: float | None = None,
    heartbeat_s: float = 2.0,
) -> AsyncIterator[Lock]:
    """Hold the session's lock for the body, extended while held; beat `heartbeat` while waiting for it.

    heartbeat_s should match the JobQueue's. Raises TimeoutError after blocking_timeout_s (None: wait for ever).
    """
    lock = redis.lock(SESSION_LOCK.format(session_id=session_id), timeout=timeout_s, sleep=0.1,
                      blocking_timeout=blocking_timeout_s, thread_local=False)
    token = uuid.uuid4().hex
    beat = asyncio.create_task(_beat_every(heartbeat_s, heartbeat)) if heartbeat else None
    try:
        acquired = await lock.acquire(token=token)
    except BaseException:
        # Cancelled (worker stopping) or failed after the SET may have landed: do not leave a lock that nobody
        # holds blocking the session for timeout_s.
        lock.local.token = token.encode()
        with contextlib.suppress(LockError, RedisError):
            await lock.release()
        raise
    finally:
        if beat is not None:
            await _cancel(beat)
    if not acquired:
        raise TimeoutError(f"session {session_id} stayed locked for {blocking_timeout_s}s")
    keeper = asyncio.create_task(_keep_extended(lock, timeout_s / 3))
    try:
        yield lock
    finally:
        await _cancel(keeper)
        try:
            await lock.release()
        except LockError:
            log.error("lock %s was lost before release; another worker may have run concurrently", lock.name)
