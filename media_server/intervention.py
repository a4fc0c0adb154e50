"""Live intervention on a media node: a proctor's message, request, pause, resume or end, and the candidate's
breaks, delivered to the candidate's page over its data channel and put on the session timeline at the exact
media time the node has.

The web process calls the node that carries the session (signed, `POST /sessions/{id}/intervene`, see
web/live.py and web/candidate.py); the node writes the timeline event (proctor.store.events) before it sends the
notice, so the page's acknowledgement always finds its event. The page answers with an `ack` signal carrying the
event's `id` and a `stage`: "shown" the moment it displays it, "ok" when the candidate confirms; the node keeps the
first time of each in the event and tells every proctor's monitor (core.live.Intervention).

A pause or a break is a *hold*: an `exam_paused` / `exam_break` event whose end is open. While it is on, the
stream's hold sinks (the analysis) raise no flags; the recording goes on. A hold outlives the connection: a
reconnect (here or on another node) finds the open event and holds again; a break ends by itself after its
minutes, also when the candidate was away meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg

from core.live import Intervention
from media_server.stream import CandidateStream
from proctor.context import Context
from proctor.store import events, live

log = logging.getLogger(__name__)

MESSAGE_ACTIONS = ("message", "adjust", "end")
ACTIONS = (*MESSAGE_ACTIONS, "pause", "resume", "break_start", "break_end")
MAX_TEXT = 300


class InterventionError(Exception):
    """The intervention cannot be applied now; `status` is the HTTP status the node answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Interventions:
    """The node's side of live intervention for every stream it carries."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._break_timers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- attach / detach --------------------------------------------------------------------------------
    async def restore(self, stream: CandidateStream) -> None:
        """A (re)connecting stream: hold again if a pause or break is open, or end a break whose time ran out
        while the candidate was away."""
        stream.on_ack = self._on_ack
        async with self.ctx.pool.acquire() as conn:
            hold = await events.open_hold(conn, stream.session_id)
            if hold is None:
                return
            ends_at = hold["details"].get("ends_at") if isinstance(hold["details"], dict) else None
            if hold["kind"] == "exam_break" and isinstance(ends_at, (int, float)) and ends_at <= time.time():
                await events.end_hold(conn, stream.session_id, hold["id"], stream.clock.base_s,
                                      {"ended": "time up"})
                await self._publish(stream.session_id, "break", "ended", hold["id"], None, stream.clock.base_s)
                return
        self._hold(stream, hold["kind"], hold["id"], _text(hold["details"]), ends_at)

    def detach(self, stream: CandidateStream) -> None:
        timer = self._break_timers.pop(stream.session_id, None)
        if timer is not None:
            timer.cancel()

    async def stop(self) -> None:
        for timer in self._break_timers.values():
            timer.cancel()
        pending = [*self._break_timers.values(), *self._tasks]
        await asyncio.gather(*pending, return_exceptions=True)

    # --- the internal API's call ----------------------------------------------------------------------------
    async def apply(self, stream: CandidateStream, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one intervention; returns {"event_id", "media_time_s", "delivered"}. InterventionError when it
        cannot be applied (a second pause, a resume with nothing paused...)."""
        action = body.get("action")
        if action not in ACTIONS:
            raise InterventionError(400, f"action must be one of {', '.join(ACTIONS)}")
        text = body.get("text")
        text = text[:MAX_TEXT] if isinstance(text, str) else ""
        by = body.get("by") if isinstance(body.get("by"), str) else None
        delivered = stream.page_channel_open
        if action in MESSAGE_ACTIONS:
            event_id, at = await self._message(stream, action, text, by, body.get("preset"), delivered)
        elif action in ("pause", "break_start"):
            event_id, at = await self._start_hold(stream, action, text, by, body.get("minutes"))
        else:
            event_id, at = await self._end_hold(stream, action, by)
        return {"event_id": event_id, "media_time_s": round(at, 3), "delivered": delivered}

    async def _message(self, stream: CandidateStream, action: str, text: str, by: str | None, preset: Any,
                       delivered: bool) -> tuple[int, float]:
        at = stream.clock.end_s
        details: dict[str, Any] = {"action": action, "text": text, "by": by, "delivered": delivered}
        if isinstance(preset, str) and preset:
            details["preset"] = preset[:40]
        async with self.ctx.pool.acquire() as conn:
            event_id = await events.insert(conn, stream.session_id, "proctor_message", at, at, 1.0, details)
        kind = f"proctor:{event_id}"
        stream.expect_ack(event_id, kind)
        stream.notify_candidate({"type": "proctor", "kind": kind, "active": True, "id": event_id, "action": action,
                                 "text": text})
        return event_id, at

    async def _start_hold(self, stream: CandidateStream, action: str, text: str, by: str | None,
                          minutes: Any) -> tuple[int, float]:
        kind = "exam_paused" if action == "pause" else "exam_break"
        at = stream.clock.end_s
        details: dict[str, Any] = {"text": text, "by": by}
        ends_at: float | None = None
        if kind == "exam_break":
            if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= 60:
                raise InterventionError(400, "a break needs its minutes (0-60)")
            ends_at = time.time() + float(minutes) * 60
            details.update(minutes=float(minutes), ends_at=ends_at)
        try:
            async with self.ctx.pool.acquire() as conn:
                event_id = await events.insert(conn, stream.session_id, kind, at, None, 1.0, details)
        except asyncpg.UniqueViolationError:
            raise InterventionError(409, "the exam is already paused or on a break") from None
        self._hold(stream, kind, event_id, text, ends_at)
        return event_id, at

    async def _end_hold(self, stream: CandidateStream, action: str, by: str | None,
                        reason: str | None = None) -> tuple[int, float]:
        kind = "exam_paused" if action == "resume" else "exam_break"
        async with self.ctx.pool.acquire() as conn:
            hold = await events.open_hold(conn, stream.session_id)
            if hold is None or hold["kind"] != kind:
                what = "paused" if kind == "exam_paused" else "on a break"
                raise InterventionError(409, f"the exam is not {what}")
            at = stream.clock.end_s
            extra = {"ended_by": by} if by else {}
            if reason:
                extra["ended"] = reason
            await events.end_hold(conn, stream.session_id, hold["id"], at, extra)
        self._unhold(stream, kind, hold["id"])
        return int(hold["id"]), at

    # --- holds ------------------------------------------------------------------------------------------
    def _hold(self, stream: CandidateStream, kind: str, event_id: int, text: str, ends_at: float | None) -> None:
        stream.set_hold(kind)
        stream.expect_ack(event_id, "hold")
        notice: dict[str, Any] = {"type": "hold", "kind": "hold", "active": True, "id": event_id,
                                  "hold": "paused" if kind == "exam_paused" else "break", "text": text}
        if ends_at is not None:
            notice["ends_in_s"] = max(0, round(ends_at - time.time()))
            self._start_break_timer(stream, event_id, ends_at)
        stream.notify_candidate(notice)

    def _unhold(self, stream: CandidateStream, kind: str, event_id: int) -> None:
        if kind == "exam_break":
            timer = self._break_timers.pop(stream.session_id, None)
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
        stream.set_hold(None)
        stream.notify_candidate({"type": "hold", "kind": "hold", "active": False, "id": event_id,
                                 "hold": "paused" if kind == "exam_paused" else "break"})

    def _start_break_timer(self, stream: CandidateStream, event_id: int, ends_at: float) -> None:
        old = self._break_timers.pop(stream.session_id, None)
        if old is not None:
            old.cancel()

        async def time_up() -> None:
            await asyncio.sleep(max(0.0, ends_at - time.time()))
            try:
                _, at = await self._end_hold(stream, "break_end", None, reason="time up")
            except InterventionError:
                return  # ended meanwhile
            except Exception as exc:
                log.warning("session %s: break not ended: %s", stream.session_id, exc)
                return
            await self._publish(stream.session_id, "break", "ended", event_id, None, at)

        self._break_timers[stream.session_id] = asyncio.create_task(time_up(), name=f"break-{stream.session_id}")

    # --- acknowledgements -------------------------------------------------------------------------------
    def _on_ack(self, stream: CandidateStream, event_id: int, stage: str) -> None:
        task = asyncio.ensure_future(self._record_ack(stream.session_id, event_id, stage, stream.clock.end_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_ack(self, session_id: str, event_id: int, stage: str, at: float) -> None:
        try:
            async with self.ctx.pool.acquire() as conn:
                when = await events.acknowledge_intervention(conn, session_id, event_id, stage)
                row = await events.get(conn, event_id) if when is not None else None
        except Exception as exc:
            log.warning("session %s: acknowledgement of %s not stored: %s", session_id, event_id, exc)
            return
        if row is None:
            return
        action = row["details"].get("action") if row["kind"] == "proctor_message" else \
            ("pause" if row["kind"] == "exam_paused" else "break")
        await self._publish(session_id, str(action), stage, event_id, None, at)

    async def _publish(self, session_id: str, action: str, state: str, event_id: int | None, text: str | None,
                       at: float | None) -> None:
        await live.publish_quietly(self.ctx.redis, Intervention(session_id=session_id, action=action, state=state,
                                                                event_id=event_id, text=text, at_s=at))


def _text(details: Any) -> str:
    return str(details.get("text") or "")[:MAX_TEXT] if isinstance(details, dict) else ""
