"""The media node's local spool: segments are written to disk first, uploaded with retries, committed to
Postgres, and only then deleted. A segment left half-written by a process that died is recovered by the
next media process started on the same data dir.

Each segment file has a JSON sidecar with what the database needs (session, media start/end, frames) and who
wrote it (node id and pid), so recovery needs nothing but the spool folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from archiver.webm import recover_partial
from proctor.context import Context
from proctor.redis import MERGE_STREAM
from proctor.storage import StorageError, file_sha256
from proctor.store import sessions

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# Segment row states an upload may still move to 'stored'; anything later (stored, merged, failed) was decided.
_UPLOADABLE = ("recording", "spooled")


@dataclass
class SpoolSegment:
    spool_id: str
    session_id: str
    start_s: float
    node_id: str
    pid: int
    state: str = "writing"  # writing -> closed (ready to upload)
    end_s: float | None = None
    frames: int = 0
    idx: int | None = None
    recovered: bool = False
    # "webcam" or "screen" (the shared screen: its own segments, table screen_segments, and master). Sidecars
    # written before the screen existed have no track: webcam.
    track: str = "webcam"

    def path(self, root: Path) -> Path:
        return root / self.session_id / f"{self.spool_id}.webm"

    def sidecar(self, root: Path) -> Path:
        return root / self.session_id / f"{self.spool_id}.json"

    def key(self) -> str:
        assert self.idx is not None
        if self.track == "screen":
            return f"sessions/{self.session_id}/screen/segments/{self.idx:06d}.webm"
        return f"sessions/{self.session_id}/segments/{self.idx:06d}.webm"

    @property
    def table(self) -> str:
        """The table of its row (a name from this fixed pair, never from input)."""
        return "screen_segments" if self.track == "screen" else "segments"


class Spool:
    def __init__(self, root: Path, node_id: str) -> None:
        self.root = root
        self.node_id = node_id
        self.root.mkdir(parents=True, exist_ok=True)

    def new_segment(self, session_id: str, start_s: float, track: str = "webcam") -> SpoolSegment:
        segment = SpoolSegment(uuid.uuid4().hex, session_id, start_s, self.node_id, os.getpid(), track=track)
        folder = segment.path(self.root).parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.save(segment)
        except OSError:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: the session's first segment
            raise
        return segment

    def save(self, segment: SpoolSegment) -> None:
        sidecar = segment.sidecar(self.root)
        tmp = sidecar.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(asdict(segment)))
            os.replace(tmp, sidecar)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves a partial one
            raise

    def remove(self, segment: SpoolSegment) -> None:
        segment.path(self.root).unlink(missing_ok=True)
        segment.sidecar(self.root).unlink(missing_ok=True)
        try:
            segment.path(self.root).parent.rmdir()
        except OSError:
            pass  # other segments of the session still there

    def segments(self) -> list[SpoolSegment]:
        found = []
        for sidecar in sorted(self.root.glob("*/*.json")):
            try:
                found.append(SpoolSegment(**json.loads(sidecar.read_text())))
            except (ValueError, TypeError, OSError) as exc:
                log.error("unreadable spool sidecar %s: %s", sidecar, exc)
        return found

    def orphans(self) -> list[SpoolSegment]:
        """Segments whose writer process is gone: closed ones to upload, half-written ones to recover."""
        return [s for s in self.segments() if s.pid != os.getpid() and not _alive(s.pid)]

    def recover(self, segment: SpoolSegment) -> SpoolSegment | None:
        """Turn a segment cut off by a crash into a proper WebM (loses at most the last unflushed cluster)."""
        if segment.state == "closed":
            return segment
        path = segment.path(self.root)
        fixed = path.with_suffix(".recovered.webm")
        try:
            result = recover_partial(path, fixed) if path.exists() else None
        except BaseException:  # no room to write the copy (disk full): keep the original, try again later
            fixed.unlink(missing_ok=True)
            raise
        if result is None or result.video_frames == 0:
            log.error("segment %s of session %s held no usable video; removed", segment.spool_id,
                      segment.session_id)
            fixed.unlink(missing_ok=True)
            self.remove(segment)
            return None
        os.replace(fixed, path)
        segment.state, segment.recovered = "closed", True
        segment.end_s = segment.start_s + result.duration_s
        segment.frames = result.video_frames
        self.save(segment)
        log.warning("recovered %.1f s of session %s from a segment a dead process left", result.duration_s,
                    segment.session_id)
        return segment


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def allocate(conn: asyncpg.Connection, segment: SpoolSegment) -> int:
    """The segment's index in its session, allocated once (idempotent by spool id, no holes)."""
    if segment.track == "screen":
        return await allocate_screen(conn, segment)
    async with conn.transaction():
        idx = await conn.fetchval("SELECT idx FROM segments WHERE spool_id = $1", segment.spool_id)
        if idx is not None:
            return int(idx)
        idx = await sessions.allocate_segment_idx(conn, segment.session_id)
        if idx is None:
            raise LookupError(f"session {segment.session_id} is gone")
        await conn.execute(
            "INSERT INTO segments (session_id, idx, start_s, end_s, state, node_id, spool_id) "
            "VALUES ($1, $2, $3, $3, 'recording', $4, $5)",
            segment.session_id, idx, segment.start_s, segment.node_id, segment.spool_id)
        return int(idx)


async def allocate_screen(conn: asyncpg.Connection, segment: SpoolSegment) -> int:
    """A screen segment's index: its own numbering (0, 1, ... per session, in media order), so the webcam's stays
    without holes. Two nodes can carry one session for a moment (a reconnect): a transaction-scoped advisory lock
    on the session makes max + 1 safe."""
    async with conn.transaction():
        idx = await conn.fetchval("SELECT idx FROM screen_segments WHERE spool_id = $1", segment.spool_id)
        if idx is not None:
            return int(idx)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('screen:' || $1::text))", segment.session_id)
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)", segment.session_id):
            raise LookupError(f"session {segment.session_id} is gone")
        idx = await conn.fetchval(
            "INSERT INTO screen_segments (session_id, idx, start_s, end_s, state, node_id, spool_id) "
            "SELECT $1, coalesce(max(idx) + 1, 0), $2, $2, 'recording', $3, $4 FROM screen_segments "
            "WHERE session_id = $1 RETURNING idx", segment.session_id, segment.start_s, segment.node_id,
            segment.spool_id)
        return int(idx)


async def mark_lost(ctx: Context, segment: SpoolSegment) -> None:
    """A segment with nothing usable: say so now, so finalize does not wait LOST_SEGMENT_S for a row that will
    never be stored."""
    try:
        async with ctx.pool.acquire() as conn:
            await conn.execute(f"UPDATE {segment.table} SET state = 'failed' WHERE spool_id = $1 "
                               "AND state IN ('recording', 'spooled')", segment.spool_id)
    except Exception as exc:  # finalize's LOST_SEGMENT_S still catches it
        log.warning("could not mark segment %s lost: %s", segment.spool_id, exc)


class Uploader:
    """Uploads closed segments in order, forever retrying storage and database outages with backoff."""

    def __init__(self, ctx: Context, spool: Spool) -> None:
        self.ctx = ctx
        self.spool = spool
        self.queue: asyncio.Queue[SpoolSegment] = asyncio.Queue()
        self.uploaded = 0
        self.failures = 0
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        # One allocation at a time, in the order asked (asyncio.Lock is FIFO): indexes follow media time.
        self._allocating = asyncio.Lock()
        # Per session, the segments still waiting for an index, in the order first asked (the segmenter asks as it
        # opens each one, so: media order). A failed allocation (Postgres down) is retried later, by the uploader's
        # backoff; a segment opened after the database came back must not take an index before them, or merges
        # and the master would put the media out of order (measured: idx 4 = 18-20 s, idx 7 = 8-10 s).
        self._waiting: dict[str, dict[str, SpoolSegment]] = {}

    async def allocate(self, segment: SpoolSegment) -> int:
        if segment.idx is None:
            # Registered before the lock is awaited: the order of the calls becomes the order of the indexes.
            self._waiting.setdefault(segment.session_id, {}).setdefault(segment.spool_id, segment)
        async with self._allocating:
            if segment.idx is None:
                await self._allocate_in_order(segment)
            assert segment.idx is not None
            return segment.idx

    async def _allocate_in_order(self, segment: SpoolSegment) -> None:
        """Index every segment of the session asked before `segment`, then `segment` itself."""
        waiting = self._waiting.get(segment.session_id, {})
        async with self.ctx.pool.acquire() as conn:
            try:
                for spool_id, earlier in list(waiting.items()):
                    if earlier.idx is None:
                        earlier.idx = await allocate(conn, earlier)
                    del waiting[spool_id]
                    if earlier is segment:
                        break
                if segment.idx is None:  # not registered (a session dropped meanwhile): on its own
                    segment.idx = await allocate(conn, segment)
            except LookupError:  # the session is gone: so are all its waiting segments
                self._waiting.pop(segment.session_id, None)
                raise
        if not waiting:
            self._waiting.pop(segment.session_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="segment-uploader")

    def submit(self, segment: SpoolSegment) -> None:
        self.queue.put_nowait(segment)

    async def drain(self, within_s: float) -> bool:
        """Wait for queued uploads (at shutdown); what is left stays in the spool for the next start."""
        deadline = time.monotonic() + within_s
        while self.queue.qsize() or self._busy:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            segment = await self.queue.get()
            self._busy = True
            try:
                await self._with_retries(segment)
            finally:
                self._busy = False

    async def _with_retries(self, segment: SpoolSegment) -> None:
        delay = 0.5
        while True:
            try:
                await self.upload(segment)
                self.uploaded += 1
                return
            except LookupError as exc:  # the session was deleted: nothing to keep
                log.warning("dropping spooled segment %s: %s", segment.spool_id, exc)
                self.spool.remove(segment)
                return
            except (OSError, StorageError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError) as exc:
                self.failures += 1
                log.warning("segment %s upload failed (%s); retrying in %.1fs", segment.spool_id, exc, delay)
            except Exception:
                # Anything else (a client library raising its own type) is retried too: were it to end this task,
                # every later segment of every stream would stay in the spool until a restart.
                self.failures += 1
                log.exception("segment %s upload failed unexpectedly; retrying in %.1fs", segment.spool_id, delay)
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF_S, delay * 2)

    async def upload(self, segment: SpoolSegment) -> None:
        path = segment.path(self.spool.root)
        if segment.state != "closed":
            # Its writing failed (spool disk full): keep what reached the disk, as for a crashed writer's segment.
            # Raises while there is no room for the copy; the segments queued before it free that room.
            if await asyncio.to_thread(self.spool.recover, segment) is None:
                await mark_lost(self.ctx, segment)
                return
        if not path.exists():
            # Nothing was ever written (the spool refused even the file's creation): nothing to keep, and retrying
            # would block every segment queued behind it.
            log.error("segment %s of session %s has no file in the spool; marked lost", segment.spool_id,
                      segment.session_id)
            self.spool.remove(segment)
            await mark_lost(self.ctx, segment)
            return
        if segment.idx is None:
            await self.allocate(segment)
            try:
                self.spool.save(segment)  # the index, for a restart; the database has it already
            except OSError as exc:
                # A full disk must not stop the upload that frees it.
                log.warning("segment %s: sidecar not updated (%s)", segment.spool_id, exc)
        # A row already past 'recording'/'spooled' is not stored again. A process killed after the commit below
        # but before it removed the spool file uploads the segment once more at the next start; by then a merge
        # may have replaced the object by a batch (row 'merged') and finalize swept it, and a second put would
        # leave it in storage for good, beside the master. Finalize may also have declared it lost ('failed')
        # and built the master without it.
        done = await self._row_state(segment)
        if done is None:
            raise LookupError(f"segment row for {segment.spool_id} is gone")
        if done not in _UPLOADABLE:
            log.warning("segment %s of session %s is already %s; not uploaded again", segment.spool_id,
                        segment.session_id, done)
            self.spool.remove(segment)
            if done == "stored":  # the merge hint may have died with that process
                await self._hint_merge(segment)
            return
        sha256, size = await asyncio.to_thread(file_sha256, path)
        await self.ctx.storage.put_file(segment.key(), path, content_type="video/webm")
        async with self.ctx.pool.acquire() as conn:
            updated = await conn.fetchval(
                f"UPDATE {segment.table} SET state = 'stored', end_s = $2, frames = $3, bytes = $4, sha256 = $5, "
                "storage_key = $6, stored_at = now() WHERE spool_id = $1 AND state = ANY($7::text[]) RETURNING idx",
                segment.spool_id, segment.end_s, segment.frames, size, sha256, segment.key(), list(_UPLOADABLE))
        if updated is None:
            # Declared lost during the upload, or the session deleted: no row points at the object just put.
            done = await self._row_state(segment)
            if done != "stored":  # (stored meanwhile by another upload of the same file: that object is its)
                await self.ctx.storage.delete(segment.key())
            if done is None:
                raise LookupError(f"segment row for {segment.spool_id} is gone")
            log.warning("segment %s of session %s became %s during its upload; not stored", segment.spool_id,
                        segment.session_id, done)
            self.spool.remove(segment)
            return
        # The file goes only after the upload and the commit both succeeded.
        self.spool.remove(segment)
        if segment.track == "webcam":  # screen segments are not merged: finalize joins them
            await self._hint_merge(segment)

    async def _hint_merge(self, segment: SpoolSegment) -> None:
        try:
            await self.ctx.redis.xadd(MERGE_STREAM, {"session_id": segment.session_id}, maxlen=100_000,
                                      approximate=True)
        except Exception as exc:  # the merge also runs at finalize; a lost hint costs nothing
            log.info("merge hint for %s not queued: %s", segment.session_id, exc)

    async def _row_state(self, segment: SpoolSegment) -> str | None:
        async with self.ctx.pool.acquire() as conn:
            state = await conn.fetchval(f"SELECT state FROM {segment.table} WHERE spool_id = $1", segment.spool_id)
        return None if state is None else str(state)

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize(), "uploaded": self.uploaded, "failures": self.failures}
