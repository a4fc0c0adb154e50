"""The segmenter: copy-muxes a live stream's encoded VP8 and Opus into WebM segments of SEGMENT_SECONDS.

Never decodes or re-encodes. Every segment starts on a keyframe: a PLI is sent ~0.1 s before each boundary and
the cut is made at the first keyframe at or after it. Each video frame is written one frame late, when the next
one shows how long it lasted, so consecutive segments tile the session timeline exactly. After packet loss
the jitter buffer may hand over corrupt frames: they are dropped until the next keyframe (and a PLI asks for
one), the last good frame holding the picture meanwhile.

Audio from before a cut that arrives after the cut's keyframe (Chromium sends an Opus packet after its 20 or 60 ms
have been captured, so up to ~0.2 s of it trails the keyframe) still goes into the segment it belongs to: that
segment is held open ARCHIVE_LATE_AUDIO_MS of video time, or until the audio reaches the cut, before it is closed
(measured in real Chromium with 60-ms packets: 170-210 ms of each segment's audio dropped without it).

All file writing happens on one archive thread per media process, in order; the event loop only decides. The
writes are handed to that thread in batches, every ARCHIVE_BATCH_MS for all streams of the node, not one hand-off
per frame: a thread hand-off (executor.submit, the worker's wake-up, the GIL passing back and forth) cost more
than muxing the frame (bench/handoff.py). A batch still pending is handed over at once when a stream closes and
when the archive stops, so a clean stop loses no frame; a killed process loses at most one batch more than the
muxer holds (see archiver/webm.py).

The shared screen (media_server/screen.py) is recorded by a second recorder of its own on the same timeline:
track "screen", its own segments (no audio), rows in screen_segments, its own master (archiver/assemble.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from archiver.spool import Spool, SpoolSegment, Uploader, mark_lost
from archiver.webm import WebmWriter
from core import opus, vp8
from core.live import EventAlert
from media_server.outlets import EncodedFrame, Stream
from proctor import metrics
from proctor.context import Context
from proctor.store import events, live

log = logging.getLogger(__name__)

PLI_LEAD_S = 0.1  # ask for the keyframe this long before the boundary (Chromium answers in 50-70 ms)
PLI_RETRY_S = 0.5
ALERT_EVERY_S = 60.0
# After the spool refused a write: how long to drop frames (and send no PLI) before trying a new segment.
RETRY_OPEN_S = 2.0
NOMINAL_FRAME_S = 1 / 30


@dataclass
class _Open:
    segment: SpoolSegment
    writer: Any = None  # WebmWriter, created on the archive thread
    frames: int = 0
    pending: tuple[bytes, float, bool] | None = None  # (VP8 frame, media time, keyframe) awaiting its duration
    pli_sent_at: float | None = None
    broken: bool = False  # a write failed (spool disk full): nothing more is written to it; salvaged at upload


@dataclass
class RecorderStats:
    segments: int = 0
    dropped_frames: int = 0
    losses: int = 0
    plis: int = 0
    write_errors: int = 0
    audio_dropped: int = 0
    keyframe_waits: list[float] = field(default_factory=list)


class StreamRecorder:
    """Segments one candidate connection. Created by `Archive.attach` for each stream."""

    def __init__(self, archive: Archive, stream: Stream, track: str = "webcam") -> None:
        self.archive = archive
        self.stream = stream
        self.track = track
        self._registry = archive.recorders if track == "webcam" else archive.screen_recorders
        self.segment_s = float(archive.ctx.settings.segment_seconds)
        self.current: _Open | None = None
        self.dropping = True  # until the first keyframe
        self.seen_losses = 0
        self.stats = RecorderStats()
        self._last_pli = 0.0
        self._last_alert = -ALERT_EVERY_S
        self._retry_open_at = 0.0  # monotonic; while the spool is failing, no segment is opened before it
        self._closed = False
        # The segment before the last cut, held open for its late audio: (it, where it ends). Webcam only: the
        # screen's segments have no audio.
        self._held: tuple[_Open, float] | None = None
        self._late_audio_s = archive.ctx.settings.archive_late_audio_ms / 1000 if track == "webcam" else 0.0
        stream.encoded_sinks.append(self.on_frame)
        stream.close_hooks.append(self.on_close)

    # --- decisions (event loop) ------------------------------------------------------------------------
    def on_frame(self, frame: EncodedFrame, media_time: float) -> None:
        if self._closed:
            return
        if frame.kind == "video":
            self._video(frame, media_time)
        else:
            self._audio(frame, media_time)

    def _video(self, frame: EncodedFrame, t: float) -> None:
        keyframe = frame.is_keyframe
        if self._held is not None and t >= self._held[1] + self._late_audio_s:
            self._close_held()
        if self.stream.losses != self.seen_losses:
            self.seen_losses = self.stream.losses
            self.stats.losses += 1
            self.dropping = True
        if self.dropping:
            if time.monotonic() < self._retry_open_at:  # the spool just failed: no keyframe storm meanwhile
                self.stats.dropped_frames += 1
                return
            if not keyframe:
                self.stats.dropped_frames += 1
                self._ask_keyframe()
                return
            self.dropping = False
        current = self.current
        if current is None:
            if keyframe:
                self._open(frame, t)
            return
        boundary = current.segment.start_s + self.segment_s
        if keyframe and t >= boundary - NOMINAL_FRAME_S / 2:
            self._flush_pending(current, until=t)
            self._hold_or_close(current, end_s=t)
            self._open(frame, t)
            return
        if t >= boundary - PLI_LEAD_S:
            if current.pli_sent_at is None or t - current.pli_sent_at >= PLI_RETRY_S:
                current.pli_sent_at = t
                self._ask_keyframe(force=True)
        self._flush_pending(current, until=t)
        current.pending = (frame.data, t, keyframe)

    def _audio(self, frame: EncodedFrame, t: float) -> None:
        if self._held is not None:
            held, end_s = self._held
            if t < end_s:  # from before the cut: the held segment's, if it is not older still
                if t >= held.segment.start_s:
                    self._submit_audio(held, frame.data, t)
                else:
                    self.stats.audio_dropped += 1
                return
            self._close_held()  # the audio has reached the cut: nothing more comes for it
        current = self.current
        if current is None or t < current.segment.start_s:
            self.stats.audio_dropped += 1  # before the first keyframe, or straddling a cut
            return
        self._submit_audio(current, frame.data, t)

    def _submit_audio(self, current: _Open, data: bytes, t: float) -> None:
        pts = round((t - current.segment.start_s) * 1000)
        # Each packet's own length (20 ms unasked, 60 with AUDIO_PTIME_MS=60): a fixed 20 would make a player
        # see 40 ms of silence after every 60-ms packet's first 20, and cut the master's audio short at a seam.
        duration = max(1, round(opus.packet_duration_ms(data)))
        self._submit(_write_audio, current, data, pts, duration)

    def _hold_or_close(self, current: _Open, end_s: float) -> None:
        """At a cut: close the segment that ends here once its late audio is in (module doc), or at once."""
        self._close_held()
        if self._late_audio_s > 0:
            self._held = (current, end_s)
        else:
            self._close(current, end_s=end_s)

    def _close_held(self) -> None:
        if self._held is not None:
            held, end_s = self._held
            self._held = None
            self._close(held, end_s=end_s)

    def _flush_pending(self, current: _Open, until: float) -> None:
        if current.pending is None:
            return
        data, t, keyframe = current.pending
        start = current.segment.start_s
        pts = round((t - start) * 1000)
        duration = max(1, round((until - start) * 1000) - pts)
        current.frames += 1
        current.pending = None
        self._submit(_write_video, current, data, pts, duration, keyframe)

    def _open(self, frame: EncodedFrame, t: float) -> None:
        size = vp8.frame_size(frame.data) or (0, 0)
        try:
            segment = self.archive.spool.new_segment(self.stream.session_id, t, self.track)
        except OSError as exc:  # the spool's disk is full (or failing): drop frames, say so, try again later
            log.error("session %s: no new segment (%s); frames dropped for %.0f s", self.stream.session_id, exc,
                      RETRY_OPEN_S)
            self.stats.write_errors += 1
            self.stats.dropped_frames += 1
            self._spool_failed(exc)
            return
        current = _Open(segment)
        current.pending = (frame.data, t, True)
        self.current = current
        self.stats.segments += 1
        self._submit(_open_writer, current, self.archive.spool, size, self.track == "webcam")
        self.archive.allocate_soon(segment)

    def _close(self, current: _Open, end_s: float) -> None:
        current.segment.end_s = end_s
        current.segment.frames = current.frames
        metrics.segment_written()
        self._submit(_close_writer, current, self.archive.spool)
        # Upload once the archive thread has closed the file (it runs the writes in order): the next write after
        # the close hands the segment back to the loop.
        self.archive.write(_hand_to_uploader, asyncio.get_running_loop(), self.archive, current.segment)

    def _ask_keyframe(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_pli < PLI_RETRY_S:
            return
        self._last_pli = now
        self.stats.plis += 1
        asyncio.ensure_future(self.stream.request_keyframe())

    def _submit(self, fn: Any, current: _Open, *args: Any) -> None:
        # To the archive thread, in order (Archive.write). Not run_in_executor: its asyncio future would wake the
        # event loop once per archived frame (~80/s per stream) for a result nobody awaits; failures come back
        # through _guard.
        self.archive.write(self._guard, asyncio.get_running_loop(), fn, current, args)

    def _guard(self, loop: asyncio.AbstractEventLoop, fn: Any, current: _Open, args: tuple[Any, ...]) -> None:
        try:
            fn(current, *args)
        except Exception as exc:
            self.stats.write_errors += 1
            first = not current.broken
            current.broken = True  # on the archive thread, before any later write to it runs
            if first:
                log.error("archive write failed for session %s: %s", self.stream.session_id, exc)
                loop.call_soon_threadsafe(self._write_failed, current, exc)

    def _write_failed(self, current: _Open, exc: Exception) -> None:
        """A segment could not be written: end it where it is (the uploader keeps what reached the disk) and
        start a new one at a later keyframe, once the spool takes writes again."""
        if self.current is current:
            self.current = None
            current.pending = None
            self._close(current, end_s=self.stream.clock.end_s)
        self._spool_failed(exc)

    def _spool_failed(self, exc: Exception) -> None:
        self.dropping = True
        self._retry_open_at = time.monotonic() + RETRY_OPEN_S
        self._alert(exc)

    def _alert(self, exc: Exception) -> None:
        """Never silent: a failed archive write (spool disk full, I/O error) becomes an event on the session's
        timeline, visible live and in review, at most once a minute per stream."""
        now = time.monotonic()
        if now - self._last_alert < ALERT_EVERY_S:
            return
        self._last_alert = now
        disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        message = (f"spool disk full on media node {self.archive.spool.node_id}: video is not being recorded"
                   if disk_full else f"archive write failed: {type(exc).__name__}: {exc}")
        t = self.stream.clock.end_s
        asyncio.ensure_future(self.archive.alert(self.stream.session_id, t, message))

    # --- end of the connection ---------------------------------------------------------------------------
    async def on_close(self, stream: Stream) -> None:
        """Write the last frame with its nominal duration and hand the final segment to the uploader."""
        if self._closed:
            return
        self._closed = True
        if self._registry.get(stream.session_id) is self:
            del self._registry[stream.session_id]
        self._close_held()
        current = self.current
        self.current = None
        if current is None:
            return
        end = stream.clock.end_s
        self._flush_pending(current, until=end)
        self._close(current, end_s=end)
        # Wait until the archive thread has written and closed this stream's last file.
        await self.archive.drain()


# --- archive thread --------------------------------------------------------------------------------------
def _run_batch(batch: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for fn, args in batch:
        try:
            fn(*args)
        except Exception:  # _guard catches the writes' own failures; this is a bug, and must not stop the rest
            log.exception("archive write failed")


def _hand_to_uploader(loop: asyncio.AbstractEventLoop, archive: Archive, segment: SpoolSegment) -> None:
    try:
        loop.call_soon_threadsafe(archive.uploader.submit, segment)
    except RuntimeError:  # the loop is closed: the spool keeps the segment, uploaded at the next start
        log.warning("segment %s left in the spool: the event loop is closed", segment.spool_id)


def _open_writer(current: _Open, spool: Spool, size: tuple[int, int], with_audio: bool) -> None:
    width, height = size
    current.writer = WebmWriter(current.segment.path(spool.root), width or 640, height or 480, with_audio)


def _write_video(current: _Open, data: bytes, pts: int, duration: int, keyframe: bool) -> None:
    if current.writer is not None and not current.broken:
        current.writer.write_video(data, pts, duration, keyframe)


def _write_audio(current: _Open, data: bytes, pts: int, duration: int) -> None:
    if current.writer is not None and not current.broken:
        current.writer.write_audio(data, pts, duration)


def _close_writer(current: _Open, spool: Spool) -> None:
    writer, current.writer = current.writer, None
    if writer is not None:
        try:
            writer.close()  # writes the Cues: can fail on a full disk too
        except Exception:
            if not current.broken:
                raise  # _guard marks it broken and says so
    if current.broken:
        # Left in state "writing": the uploader salvages what reached the disk, as for a crashed writer's file.
        return
    current.segment.state = "closed"
    spool.save(current.segment)


class Archive:
    """The archive side of a media node: spool, uploader, one recorder per stream, crash recovery at start."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.spool = Spool(ctx.settings.spool_dir, node_id="")
        self.uploader = Uploader(ctx, self.spool)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")
        self.batch_s = ctx.settings.archive_batch_ms / 1000
        self._batch: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._batch_handle: asyncio.TimerHandle | None = None
        self.recorders: dict[str, StreamRecorder] = {}
        self.screen_recorders: dict[str, StreamRecorder] = {}  # the shared screens' (same session keys)
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach(self, stream: Stream) -> None:
        self.recorders[stream.session_id] = StreamRecorder(self, stream)
        # The stream's shared screen, when the node gives it one (media_server/screen.py): the same outlets.
        screen = getattr(stream, "screen", None)
        if screen is not None:
            self.screen_recorders[stream.session_id] = StreamRecorder(self, screen, track="screen")

    def write(self, fn: Callable[..., None], *args: Any) -> None:
        """Event loop: run `fn(*args)` on the archive thread, after every write asked for before it."""
        if self.batch_s <= 0:
            self.executor.submit(fn, *args)
            return
        self._batch.append((fn, args))
        if self._batch_handle is None:
            self._batch_handle = asyncio.get_running_loop().call_later(self.batch_s, self.flush)

    def flush(self) -> None:
        """Event loop: hand the writes waiting for the batch window to the archive thread now."""
        if self._batch_handle is not None:
            self._batch_handle.cancel()
            self._batch_handle = None
        if self._batch:
            batch, self._batch = self._batch, []
            self.executor.submit(_run_batch, batch)

    async def drain(self) -> None:
        """Until every write asked for so far has run on the archive thread."""
        self.flush()
        await asyncio.get_running_loop().run_in_executor(self.executor, lambda: None)

    async def alert(self, session_id: str, media_time: float, message: str) -> None:
        try:
            async with self.ctx.pool.acquire() as conn:
                event_id = await events.insert(conn, session_id, "recording_error", media_time, media_time, 1.0,
                                               {"message": message})
            await live.publish(self.ctx.redis, EventAlert(
                session_id=session_id, action="start", event_id=event_id, kind="recording_error",
                start_s=media_time, end_s=media_time, confidence=1.0, message=message))
        except Exception as exc:  # the database may be what failed; the log line above still says it
            log.error("could not raise the recording alert for %s: %s", session_id, exc)

    def allocate_soon(self, segment: SpoolSegment) -> None:
        """Reserve the segment's index and row now, so the finalizer knows it is coming; retried at upload."""

        async def run() -> None:
            try:
                await self.uploader.allocate(segment)
            except Exception as exc:
                log.warning("segment index not allocated yet (%s); will retry at upload", exc)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, node_id: str) -> None:
        self.spool.node_id = node_id
        self.uploader.start()
        for orphan in await asyncio.to_thread(self.spool.orphans):
            recovered = await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.recover, orphan)
            if recovered is not None:
                self.uploader.submit(recovered)
            else:
                await mark_lost(self.ctx, orphan)

    async def stop(self, within_s: float = 20.0) -> None:
        await self.drain()
        if not await self.uploader.drain(within_s):
            log.warning("%d segments left in the spool; they upload at the next start", self.uploader.queue.qsize())
        await self.uploader.stop()
        self.executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        return {"uploader": self.uploader.stats(),
                "recorders": {sid: vars(r.stats) for sid, r in self.recorders.items()},
                "screen_recorders": {sid: vars(r.stats) for sid, r in self.screen_recorders.items()}}
