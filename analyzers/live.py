"""Live analysis on a media node: sampled frames -> detectors (thread pool) -> hysteresis rules -> events.

Models load and warm up once per media process at start, so a candidate's first frame waits for nothing.
Each detector of each stream has at most one frame in flight and one waiting: a newer frame replaces the
waiting one, so a slow model drops frames instead of building a queue, and the event loop carrying RTP only
ever hands over references. Every event start, update and end is written to Postgres and published on Redis
at once, with the evidence JPEG of its strongest frame in storage.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzers.base import Detector, Signal, apply_sensitivity, rules_config
from analyzers.models import install_bundled_weights
from analyzers.registry import build_detectors
from analyzers.rgb import RgbConverter
from analyzers.voice import AudioSlot, VoiceDetector
from core.accommodations import NONE, Accommodations
from core.live import EventAlert
from core.rules import EventChange, EventRules, browser_signal_to_condition
from core.sensitivity import STANDARD, Sensitivity
from media_server.outlets import Stream
from proctor import metrics, priority
from proctor.context import Context
from proctor.db import DB_UNAVAILABLE
from proctor.redis import THUMBNAIL_KEY
from proctor.storage import StorageError
from proctor.store import events, live, sessions

log = logging.getLogger(__name__)

ANALYSIS_THREADS = 2
HEAVY_THREADS = 2
TICK_S = 0.5
THUMBNAIL_S = 3.0
STORE_RETRY_S = 120.0
# Evidence JPEGs wait this long for storage to come back (kept in memory meanwhile, one at a time per stream).
SNAPSHOT_RETRY_S = 300.0
THUMBNAIL_TTL_S = 30
# How long a new stream waits for its session's sensitivity before the deployment's settings apply.
SENSITIVITY_WAIT_S = 3.0
_STORAGE_OR_DB_DOWN: tuple[type[Exception], ...] = (StorageError, *DB_UNAVAILABLE)


@dataclass
class _Frame:
    media_time: float
    frame: Any  # av.VideoFrame, converted on the worker thread
    arrived: float  # wall time it reached the sampler


class _DetectorSlot:
    """One detector on one stream: a FrameSubscriber with one frame in flight and at most one waiting."""

    def __init__(self, owner: StreamAnalysis, detector: Detector) -> None:
        self.owner = owner
        self.detector = detector
        self.fps = detector.fps
        self.busy = False
        self.waiting: _Frame | None = None
        self.analysed = 0
        self.replaced = 0
        self.ms: deque[float] = deque(maxlen=200)
        # A detector with a cadence of its own (the phone's, analyzers/phone.py PhoneCadence) picks which of the
        # frames delivered at its fps it analyses, and hears the stream's other detectors' signals as hints.
        self.wants: Callable[[float], bool] | None = getattr(detector, "wants", None)
        self.hint: Callable[[Signal, float], None] | None = getattr(detector, "hint", None)

    def on_frame(self, media_time_s: float, frame: Any) -> None:
        if self.wants is not None and not self.wants(media_time_s):
            return  # not this one: nothing converted, nothing queued
        item = _Frame(media_time_s, frame, time.time())
        if self.busy:
            if self.waiting is not None:
                self.replaced += 1  # dropped: a newer frame is more useful than a late one
                metrics.frame_skipped(self.detector.name)
            self.waiting = item
            return
        self._submit(item)

    def _submit(self, item: _Frame) -> None:
        self.busy = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.owner.analysis.executor_for(self.detector), self._analyze, item)
        future.add_done_callback(lambda f: self._done(f, item))

    def _analyze(self, item: _Frame) -> tuple[list[Signal], np.ndarray]:
        started = time.perf_counter()
        rgb = self.owner.rgb(item)
        signals = self.detector.analyze(rgb, item.media_time)
        self.ms.append((time.perf_counter() - started) * 1000)
        return signals, rgb

    def _done(self, future: asyncio.Future[tuple[list[Signal], np.ndarray]], item: _Frame) -> None:
        self.busy = False
        self.analysed += 1
        metrics.frame_analysed(self.detector.name, item.arrived)
        try:
            signals, rgb = future.result()
        except Exception:
            log.exception("detector %s failed on session %s", self.detector.name, self.owner.session_id)
            signals, rgb = [], None
        if not self.owner.closed:
            self.owner.hint_others(self, signals, item.media_time)
            for signal in signals:
                self.owner.observe(signal, item, rgb)
            if rgb is not None:
                self.owner.maybe_thumbnail(rgb)
        if self.waiting is not None and not self.owner.closed:
            waiting, self.waiting = self.waiting, None
            self._submit(waiting)


class StreamAnalysis:
    # Class defaults, set per stream in __init__ and _start: monitoring runs, no accommodations.
    held = False
    accommodations: Accommodations = NONE

    def __init__(self, analysis: Analysis, stream: Stream) -> None:
        self.analysis = analysis
        self.stream = stream
        self.session_id: str = stream.session_id
        # The session's sensitivity is in its row: _start reads it, then swaps it into these rules and builds
        # the detectors from it. Until then the deployment's rules take the page's signals (none come before
        # the data channel opens, long after that one query).
        self.sensitivity = STANDARD
        # The candidate's accommodations (core.accommodations): kinds switched off raise nothing; relaxed ones wait
        # longer. Read with the sensitivity.
        self.accommodations = NONE
        self.rules = EventRules(rules_config(analysis.ctx.settings))
        # A proctor's pause or the candidate's break (media_server/intervention.py): no flags meanwhile.
        self.held = stream.held
        self.detectors: list[Detector] = []
        self.slots: list[_DetectorSlot] = []
        self.audio_slots: list[AudioSlot] = []  # the voice detector, fed the stream's decoded audio
        self.closed = False
        self._rgb = RgbConverter()
        self.db_ids: dict[int, int] = {}  # rules event id -> events.id
        self._extendable: dict[str, int] = {}  # kind -> rules event id of its latest extendable event
        self._thumb_at = 0.0
        self._pending: set[asyncio.Future[None]] = set()
        self._snapshot_lock = asyncio.Lock()
        self.changes: asyncio.Queue[tuple[EventChange, float | None]] = asyncio.Queue()
        stream.signal_sinks.append(self.on_signal)
        stream.hold_sinks.append(self.on_hold)
        stream.close_hooks.append(self.on_close)
        self._tasks = [asyncio.create_task(self._writer(), name=f"events-{self.session_id}"),
                       asyncio.create_task(self._ticker(), name=f"rules-tick-{self.session_id}"),
                       asyncio.create_task(self._start(), name=f"start-{self.session_id}")]

    async def _start(self) -> None:
        """Apply the session's sensitivity, then subscribe its detectors and give them the reference photo.

        Runs as the offer is answered: the first frame comes after ICE and DTLS, so the one query is done before
        it in practice; frames before the subscription are simply not analysed (the decoder starts at a
        keyframe)."""
        ctx = self.analysis.ctx
        self.sensitivity = await self._read_sensitivity()
        self.accommodations = await self._read_accommodations()
        # In place, not a new EventRules: a page signal that came first keeps its state (an open second_screen
        # would otherwise never end).
        self.rules.config = rules_config(ctx.settings, self.sensitivity).relaxed(self.accommodations.min_durations())
        # Models are shared and already warm: building a stream's detectors costs ~0.2 ms.
        self.detectors = build_detectors(apply_sensitivity(ctx.settings, self.sensitivity))
        if self.closed:
            return
        # Audio detectors take the stream's decoded audio, not frames; an exam with audio flags off runs none (its
        # audio is still archived).
        voices = [d for d in self.detectors if isinstance(d, VoiceDetector)]
        audio = getattr(self.stream, "audio", None)  # test doubles of a Stream may have no audio outlet
        if self.sensitivity.audio_flags and audio is not None:
            self.audio_slots = [AudioSlot(d, self.analysis.executor, self.observe_audio) for d in voices]
            for audio_slot in self.audio_slots:
                audio.subscribe(audio_slot)
        self.slots = [_DetectorSlot(self, d) for d in self.detectors if not isinstance(d, VoiceDetector)]
        for slot in self.slots:
            self.stream.sampler.subscribe(slot)
        await self._load_reference()

    async def _read_sensitivity(self) -> Sensitivity:
        """The session's sensitivity; the deployment's settings (logged) when the database does not answer within
        SENSITIVITY_WAIT_S or the stored value is unreadable: a database hiccup must not leave a stream unwatched."""
        try:
            async with asyncio.timeout(SENSITIVITY_WAIT_S), self.analysis.ctx.pool.acquire() as conn:
                found = await sessions.get_sensitivity(conn, self.session_id)
        except Exception as exc:
            log.warning("session %s: sensitivity not read (%r); the deployment's settings apply",
                        self.session_id, exc)
            return STANDARD
        if found is None:
            log.warning("session %s: no session row; the deployment's settings apply", self.session_id)
            return STANDARD
        log.info("session %s: sensitivity %s", self.session_id, found.describe())
        return found

    async def _read_accommodations(self) -> Accommodations:
        """The candidate's accommodations; none (logged) when the database does not answer in time or the stored
        value is unreadable, as for the sensitivity."""
        try:
            async with asyncio.timeout(SENSITIVITY_WAIT_S), self.analysis.ctx.pool.acquire() as conn:
                found = await sessions.get_accommodations(conn, self.session_id)
        except Exception as exc:
            log.warning("session %s: accommodations not read (%r); none apply", self.session_id, exc)
            return NONE
        if found is not None and not found.empty:
            log.info("session %s: accommodations %s", self.session_id, found.describe())
        return found or NONE

    # --- inputs -------------------------------------------------------------------------------------------
    def rgb(self, item: _Frame) -> np.ndarray:
        """The frame as RGB, converted once however many detectors asked for it (only sampled frames pay);
        detectors get a read-only array."""
        return self._rgb(item.frame, item.media_time)

    def hint_others(self, source: _DetectorSlot, signals: list[Signal], media_time_s: float) -> None:
        """One detector's signals, passed to this stream's other detectors that take hints (never across streams)."""
        for slot in self.slots:
            if slot is not source and slot.hint is not None:
                for signal in signals:
                    slot.hint(signal, media_time_s)

    def observe(self, signal: Signal, item: _Frame, rgb: np.ndarray | None) -> None:
        if self.held or signal.kind in self.accommodations.off_kinds:
            return
        if signal.kind == "poor_image":
            self.tell_candidate(signal)
        for change in self.rules.update(signal.kind, signal.active, signal.confidence, item.media_time,
                                        signal.details, frame_ref=rgb, source=signal.source):
            self.changes.put_nowait((change, item.arrived))

    # What the candidate was last told about the picture: (shown, message). A class default, so that a stream
    # that never had a poor picture tells nothing; set per stream on the first change.
    _notice: tuple[bool, str] = (False, "")

    def observe_audio(self, media_time_s: float, signal: Signal, arrived: float) -> None:
        """A voice detector's signal: at its own media time (audio windows are not frames), no evidence frame."""
        if self.closed or self.held or signal.kind in self.accommodations.off_kinds:
            return
        for change in self.rules.update(signal.kind, signal.active, signal.confidence, media_time_s, signal.details,
                                        source=signal.source):
            self.changes.put_nowait((change, arrived))

    def tell_candidate(self, signal: Signal) -> None:
        """Show the candidate what is wrong with the picture the moment a frame says so (the poor_image event
        itself waits seconds for its hysteresis), and take it away when a frame is fine again; only changes are
        sent (a new message, or the end), not one notice per analysed frame."""
        message = str(signal.details.get("message") or "") if signal.active else ""
        notice = (signal.active, message)
        if notice == self._notice:
            return
        self._notice = notice
        self.stream.notify_candidate({"type": "notice", "kind": "poor_image", "active": signal.active,
                                      "message": message})

    def on_signal(self, media_time_s: float, message: dict[str, Any]) -> None:
        condition = browser_signal_to_condition(message)
        # Switched off for this candidate: never reaches the rules (a latched state would start on a tick).
        if self.held or (condition is not None and condition[0] in self.accommodations.off_kinds):
            return
        arrived = time.time()
        for change in self.rules.browser_signal(message, media_time_s):
            self.changes.put_nowait((change, arrived))

    def on_hold(self, held: bool, media_time_s: float) -> None:
        """A pause or break began: every open flag ends where it began and nothing new starts until it is over
        (pending runs are dropped: a condition must be seen anew after it). The recording is not affected."""
        self.held = held
        if held:
            for change in self.rules.flush(media_time_s):
                self.changes.put_nowait((change, None))
            if self._notice[0]:
                self._notice = (False, "")
                self.stream.notify_candidate({"type": "notice", "kind": "poor_image", "active": False, "message": ""})

    def maybe_thumbnail(self, rgb: np.ndarray) -> None:
        """Every THUMBNAIL_S a small JPEG of the latest analysed frame, for the live monitor's grid."""
        now = time.monotonic()
        if now - self._thumb_at < THUMBNAIL_S:
            return
        self._thumb_at = now

        async def store() -> None:
            loop = asyncio.get_running_loop()
            try:
                jpeg = await loop.run_in_executor(self.analysis.executor, _thumbnail, rgb)
                await self.analysis.ctx.redis.set(THUMBNAIL_KEY.format(session_id=self.session_id),
                                                  base64.b64encode(jpeg).decode(), ex=THUMBNAIL_TTL_S)
            except Exception as exc:
                log.debug("thumbnail not stored: %s", exc)

        task = asyncio.ensure_future(store())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for audio_slot in self.audio_slots:
                audio_slot.tick(self.stream.clock.end_s)
            for change in self.rules.tick(self.stream.clock.end_s):
                self.changes.put_nowait((change, None))

    async def _load_reference(self) -> None:
        """The enrolment photo: the identity reference and the gaze baseline."""
        ctx = self.analysis.ctx
        try:
            async with ctx.pool.acquire() as conn:
                key = await conn.fetchval("SELECT storage_key FROM reference_photos WHERE session_id = $1 "
                                          "ORDER BY created_at DESC LIMIT 1", self.session_id)
            if key is None:
                return
            data = await ctx.storage.get_bytes(key)
        except Exception as exc:
            log.warning("session %s: reference photo not loaded: %s", self.session_id, exc)
            return
        loop = asyncio.get_running_loop()
        rgb = await loop.run_in_executor(self.analysis.executor, _decode_jpeg, data)
        for detector in self.detectors:
            setter = getattr(detector, "set_reference", None) or getattr(detector, "set_baseline_from", None)
            if setter is not None and rgb is not None:
                ok = await loop.run_in_executor(self.analysis.executor_for(detector), setter, rgb)
                log.info("session %s: %s reference %s", self.session_id, detector.name, "set" if ok else "has no face")

    # --- outputs ------------------------------------------------------------------------------------------
    async def _writer(self) -> None:
        """Writes and publishes changes one at a time, in order (an end never overtakes its start)."""
        while True:
            change, arrived = await self.changes.get()
            try:
                await self._persist(change, arrived)
            except Exception as exc:
                log.error("session %s: event %s %s not stored: %s", self.session_id, change.type, change.kind, exc)
            finally:
                self.changes.task_done()

    async def _persist(self, change: EventChange, arrived: float | None) -> None:
        event_id = await self._store(change)
        # Publishing and evidence are best effort once the event is safe in Postgres.
        try:
            await self._publish(change, event_id, arrived)
        except Exception as exc:
            log.warning("session %s: event %s not published: %s", self.session_id, event_id, exc)
        extendable = self.rules.extends_ended(change.kind)
        if change.type == "end" or (extendable and change.type == "update"):
            if extendable:
                # A merged instant (copy/paste) may be extended after its end: keep the id of the kind's latest.
                previous = self._extendable.get(change.kind)
                if previous is not None and previous != change.event_id:
                    self.db_ids.pop(previous, None)
                self._extendable[change.kind] = change.event_id
            else:
                self.db_ids.pop(change.event_id, None)
            # After the publish: the session score is derived data and must not delay the alert.
            try:
                async with self.analysis.ctx.pool.acquire() as conn:
                    await sessions.refresh_score(conn, self.session_id, self.analysis.ctx.settings.weights)
            except Exception as exc:
                log.warning("session %s: score not refreshed: %s", self.session_id, exc)
        if change.frame_ref is not None and change.type in ("start", "update"):
            # Off the writer's path: the next change (an end, say) is not kept waiting for a JPEG upload.
            task = asyncio.ensure_future(self._snapshot_safely(event_id, change.frame_ref))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _snapshot_safely(self, event_id: int, rgb: np.ndarray) -> None:
        async with self._snapshot_lock:  # one at a time, in order: the strongest frame's evidence wins
            try:
                await self._snapshot(event_id, rgb)
            except Exception as exc:
                log.warning("session %s: evidence for event %s not stored: %s", self.session_id, event_id, exc)

    async def _store(self, change: EventChange) -> int:
        """Write the change, retrying through a database outage of up to STORE_RETRY_S (events must not be
        lost to a Postgres restart); the writer keeps the order, so later changes wait behind it."""
        ctx = self.analysis.ctx
        details = json.loads(json.dumps(change.details, default=_jsonable))
        deadline = time.monotonic() + STORE_RETRY_S
        delay = 0.25
        retried = False
        while True:
            try:
                event_id = self.db_ids.get(change.event_id)
                async with ctx.pool.acquire() as conn, conn.transaction():
                    if event_id is None and retried:
                        # The failed attempt may have committed before the connection broke: find its row
                        # (one event per kind starts at a given media time) rather than insert a duplicate.
                        event_id = await events.find_started(conn, self.session_id, change.kind, change.start_s)
                    if event_id is None:
                        event_id = await events.insert(conn, self.session_id, change.kind, change.start_s,
                                                       change.end_s, change.confidence, details)
                    else:
                        await events.update(conn, event_id, change.end_s, change.confidence, details)
                # Only a committed insert is remembered: a retry after a failed commit inserts again.
                self.db_ids[change.event_id] = event_id
                return event_id
            except DB_UNAVAILABLE as exc:
                if time.monotonic() > deadline:
                    raise
                retried = True
                log.warning("session %s: database unavailable (%s); retrying the event in %.1fs",
                            self.session_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _publish(self, change: EventChange, event_id: int, arrived: float | None) -> None:
        await live.publish(self.analysis.ctx.redis, EventAlert(
            session_id=self.session_id, action=change.type, event_id=event_id, kind=change.kind,
            start_s=change.start_s, end_s=change.end_s, confidence=change.confidence,
            count=change.details.get("count")))
        if arrived is not None:
            self.analysis.latency_ms.append((time.time() - arrived) * 1000)
        metrics.alert_published(change.kind, change.type, arrived)

    async def _snapshot(self, event_id: int, rgb: np.ndarray) -> None:
        """Store the evidence JPEG and point the event at it, retrying through a storage or database outage
        (an event without its frame is weaker evidence for a reviewer)."""
        ctx = self.analysis.ctx
        jpeg = await asyncio.get_running_loop().run_in_executor(self.analysis.executor, _encode_jpeg, rgb)
        key = f"sessions/{self.session_id}/events/{event_id}-{uuid.uuid4().hex[:12]}.jpg"
        deadline = time.monotonic() + SNAPSHOT_RETRY_S
        delay = 0.5
        stored = False
        while True:
            try:
                if not stored:
                    await ctx.storage.put_bytes(key, jpeg, content_type="image/jpeg")
                    stored = True
                async with ctx.pool.acquire() as conn:
                    old = await events.set_snapshot(conn, event_id, key)
                break
            except _STORAGE_OR_DB_DOWN as exc:
                if time.monotonic() > deadline or self.analysis.stopping:
                    raise
                log.info("session %s: evidence for event %s waits (%s); retrying in %.1fs", self.session_id,
                         event_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
        if old:
            await ctx.storage.delete(old)  # only the strongest frame's evidence is kept

    async def on_close(self, stream: Stream) -> None:
        """Flush the rules and hand the remaining writes to a background drain: the stream's close (and a
        reconnect waiting on it) must not wait for a database or storage outage to end."""
        self.closed = True
        for audio_slot in self.audio_slots:
            audio_slot.closed = True
        for change in self.rules.flush(stream.clock.end_s):
            self.changes.put_nowait((change, None))
        writer, others = self._tasks[0], self._tasks[1:]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self.analysis.streams.get(self.session_id) is self:
            del self.analysis.streams[self.session_id]
        drain = asyncio.ensure_future(self._drain(writer))
        self.analysis.draining.add(drain)
        drain.add_done_callback(self.analysis.draining.discard)

    async def _drain(self, writer: asyncio.Task[None]) -> None:
        """Every change written (the writer retries through an outage), every evidence frame stored, then stop."""
        try:
            await asyncio.wait_for(self.changes.join(), STORE_RETRY_S + 10)
            if self._pending:
                await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), SNAPSHOT_RETRY_S + 10)
        except TimeoutError:
            log.error("session %s: %d event changes not written", self.session_id, self.changes.qsize())
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {slot.detector.name: {"analysed": slot.analysed, "replaced": slot.replaced, "fps": slot.fps,
                                     "ms_p50": _percentile(slot.ms, 50), **_cadence_stats(slot)}
                for slot in self.slots} | \
            {slot.detector.name: slot.stats() for slot in self.audio_slots}


def _cadence_stats(slot: _DetectorSlot) -> dict[str, Any]:
    """{"cadence": {"scans", ...}} for a detector that picks its own frames (`wants`): admission by load compares
    the frames analysed with the scans it chose, not with its fps (media_server/admission.py analysis_rate)."""
    stats = getattr(getattr(slot.detector, "cadence", None), "stats", None)
    return {"cadence": stats()} if slot.wants is not None and callable(stats) else {}


def _percentile(values: Any, q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _thumbnail(rgb: np.ndarray) -> bytes:
    import cv2

    small = cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA)
    return _encode_jpeg(small)


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Analysis:
    """The media node plugin: shared warm models, a bounded thread pool, one StreamAnalysis per stream."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.executor = ThreadPoolExecutor(max_workers=ANALYSIS_THREADS, thread_name_prefix="analyze",
                                           initializer=priority.lower_this_thread)
        # Heavy detectors (identity, phone) apart: with both cores busy, identity's wait on its niced embedding
        # process held one of the two analysis threads for seconds and the faces alerts of a scripted candidate
        # came 3.5 s late at p95 (tests/test_analysis_pipeline.py under `make test-under-load`).
        self.heavy_executor = ThreadPoolExecutor(max_workers=HEAVY_THREADS, thread_name_prefix="analyze-heavy",
                                                 initializer=priority.lower_this_thread)
        self.streams: dict[str, StreamAnalysis] = {}
        self.unavailable: dict[str, str] = {}
        self.latency_ms: deque[float] = deque(maxlen=2000)
        self.draining: set[asyncio.Future[None]] = set()  # closed streams still writing their last events
        self.stopping = False

    async def start(self, node_id: str) -> None:
        install_bundled_weights(self.ctx.settings)
        started = time.perf_counter()
        warm = await asyncio.get_running_loop().run_in_executor(self.executor, build_detectors, self.ctx.settings)
        self.unavailable = dict(warm.unavailable)
        log.info("analyzers ready in %.1fs: %s%s", time.perf_counter() - started,
                 ", ".join(d.name for d in warm) or "none",
                 "".join(f"; {name} unavailable: {why}" for name, why in self.unavailable.items()))

    def attach(self, stream: Stream) -> None:
        self.streams[stream.session_id] = StreamAnalysis(self, stream)

    async def stop(self) -> None:
        self.stopping = True  # evidence uploads stop retrying; event writes get a last chance below
        if self.draining:
            done, _ = await asyncio.wait(set(self.draining), timeout=20)
            if len(done) < len(self.draining):
                log.error("%d closed streams still had events to write at shutdown", len(self.draining) - len(done))
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.heavy_executor.shutdown(wait=True, cancel_futures=True)

    def executor_for(self, detector: Detector) -> ThreadPoolExecutor:
        return self.heavy_executor if detector.heavy else self.executor

    def stats(self) -> dict[str, Any]:
        return {"unavailable": self.unavailable,
                "latency_ms": {"p50": _percentile(self.latency_ms, 50), "p95": _percentile(self.latency_ms, 95)},
                "streams": {sid: s.stats() for sid, s in self.streams.items()}}
