"""Proctor live monitor: GET /live (grid of live sessions and their open flags) and the WebSocket GET /api/live.

The WebSocket relays every message published on Redis LIVE_CHANNEL (events from the analyzers, connection
changes from media nodes, session status from signaling and the archiver, acknowledgements). One Redis
subscription per web process is fanned out to all sockets; each socket has a bounded queue, and a slow client
loses its oldest messages (it is told how many, so it can reload) rather than holding memory or the others.
One user holds at most LIVE_SOCKETS_PER_USER sockets per web process (more: 429 before the upgrade). On shutdown
every socket is told 1001 (going away) at once, and a client that does not answer within CLOSE_GRACE_S (one that
stopped reading, say) is cut off, so the process stops promptly.

Live intervention (`POST /api/sessions/{id}/intervene`): a proctor sends the candidate a message or a request to
adjust (presets such as "move into the light", or free text), pauses and resumes the exam, or ends it. The call
goes, signed, to the media node that carries the candidate's stream (found in the node registry), which puts it
on the timeline at the exact media time and on the page's data channel (media_server/intervention.py); the
candidate's acknowledgement comes back to every monitor as an `intervention` message. Audit-logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import asyncpg
from aiohttp import WSCloseCode, WSMsgType, web

from core.events import HOLD_KINDS, TIMELINE_KINDS
from core.live import Hello, HubState, Intervention, Overflow, Pong
from proctor.accounts import audit
from proctor.context import Context
from proctor.http import CTX, check_text, error, path_session_id, read_json, require_user
from proctor.nodeauth import NodeClient
from proctor.redis import LIVE_CHANNEL, SESSION_NODE, text
from proctor.store import events, live, sessions
from proctor.store.nodes import live_nodes
from web import cookies
from web.login import page_user, render_page

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
# Requests a proctor sends with one click: what the candidate reads. Free text is there for anything else.
ADJUST_PRESETS = {
    "light": "Please move into the light: your face is hard to see.",
    "face_camera": "Please face the camera.",
    "centre": "Please sit in the middle of the camera's picture.",
    "camera_blocked": "Your camera seems covered or blocked: please check it.",
    "alone": "Please make sure no one else is in the room with you.",
    "desk": "Please clear your desk of notes and devices.",
    "exam_tab": "Please go back to the exam tab and stay on it.",
}
DEFAULT_TEXT = {
    "pause": "Your proctor has paused the exam. Please stay where you are: it will resume shortly.",
    "end": "Your proctor has ended the exam.",
}
STAFF_ACTIONS = ("message", "adjust", "pause", "resume", "end")
MAX_TEXT = 300
NODE_TIMEOUT_S = 5.0
# After an `end` reached the page: a moment for its data channel to carry the message before the node lets the
# connection go.
END_GRACE_S = 0.5
# On shutdown: how long a monitor has to answer the close frame before its connection is cut.
CLOSE_GRACE_S = 3.0


class Subscriber:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=size)
        self.dropped = 0
        self.ws: web.WebSocketResponse | None = None
        self.transport: asyncio.Transport | None = None

    def offer(self, data: str) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # drop the oldest
                self.dropped += 1
        self.queue.put_nowait(data)


class LiveHub:
    """One Redis pub/sub subscription to LIVE_CHANNEL, fanned out to every connected monitor."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.sockets_per_user: dict[int, int] = {}
        self.closing = False

    def claim(self, user_id: int, limit: int) -> bool:
        """Take one of the user's `limit` socket places (False: all taken); give it back with release()."""
        held = self.sockets_per_user.get(user_id, 0)
        if held >= limit:
            return False
        self.sockets_per_user[user_id] = held + 1
        return True

    def release(self, user_id: int) -> None:
        held = self.sockets_per_user.get(user_id, 0) - 1
        if held > 0:
            self.sockets_per_user[user_id] = held
        else:
            self.sockets_per_user.pop(user_id, None)

    async def subscribe(self, redis: Any) -> Subscriber:
        if self.closing:
            raise error(web.HTTPServiceUnavailable, "server shutting down")
        sub = Subscriber(self.queue_size)
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(redis), name="live-hub")
        try:
            await asyncio.wait_for(self._ready.wait(), 5)
        except TimeoutError:
            self.subscribers.discard(sub)
            raise error(web.HTTPServiceUnavailable, "live channel unavailable (Redis)") from None
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish_local(self, data: str) -> None:
        for sub in list(self.subscribers):
            sub.offer(data)

    async def _run(self, redis: Any) -> None:
        lost = False
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(LIVE_CHANNEL)
                self._ready.set()
                if lost:
                    # Whatever was published while Redis was away never reached the monitors (the events
                    # themselves are in Postgres): tell them to reload their state.
                    self.publish_local(HubState(state="resync").dumps())
                    lost = False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.publish_local(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted: tell the monitors, resubscribe shortly
                log.warning("live hub lost Redis: %s", exc)
                if not lost:
                    self.publish_local(HubState(state="reconnecting").dumps())
                lost = True
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close_sockets(self, grace: float = CLOSE_GRACE_S) -> None:
        """Tell every monitor 1001 (going away), all at once; cut off whoever has not answered within `grace`."""
        self.closing = True
        await asyncio.gather(*(self._close_socket(sub, grace) for sub in list(self.subscribers)))

    @staticmethod
    async def _close_socket(sub: Subscriber, grace: float) -> None:
        try:
            if sub.ws is not None:
                # close() writes the close frame, waits for the client's, and blocks as long as a client that
                # stopped reading leaves the send buffer full: bounded here.
                await asyncio.wait_for(sub.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"), grace)
        except Exception as exc:  # TimeoutError, or the connection already gone
            log.debug("live socket did not close cleanly: %r", exc)
        finally:
            if sub.transport is not None:
                sub.transport.abort()  # no-op once closed; drops whatever a silent client left unread

    async def close(self, grace: float = CLOSE_GRACE_S) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=grace)


LIVE_HUB = web.AppKey("live_hub", LiveHub)


async def live_socket(request: web.Request) -> web.StreamResponse:
    user = require_user(request)  # 401 before any upgrade
    ctx = request.app[CTX]
    if request.get(cookies.SESSION) is not None:
        # A cookie-authenticated socket must come from our own pages (cross-site WebSocket hijacking).
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") != f"{request.scheme}://{request.host}" \
                and origin.rstrip("/") != ctx.settings.base_url.rstrip("/"):
            raise error(web.HTTPForbidden, "cross-origin WebSocket refused")
    hub = request.app[LIVE_HUB]
    limit = ctx.settings.live_sockets_per_user
    if not hub.claim(user.id, limit):  # 429 before any upgrade
        refused = error(web.HTTPTooManyRequests,
                        f"at most {limit} live monitor connections per user (LIVE_SOCKETS_PER_USER); close one first")
        refused.headers["Retry-After"] = "5"
        raise refused
    try:
        sub = await hub.subscribe(ctx.redis)
        # `timeout`: how long close() waits for the client's close frame.
        ws = web.WebSocketResponse(heartbeat=25, max_msg_size=4096, timeout=CLOSE_GRACE_S)
        sub.ws, sub.transport = ws, request.transport
        try:
            await ws.prepare(request)
            await ws.send_str(Hello(user=user.name, role=user.role).dumps())
            pump = asyncio.create_task(_pump(sub, ws))
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT and msg.data == "ping":
                        await ws.send_str(Pong().dumps())
            finally:
                pump.cancel()
                # A connection cut under the pump (shutdown, a vanished client) ends it with a connection error.
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await pump
        finally:
            hub.unsubscribe(sub)
    finally:
        hub.release(user.id)
    return ws


async def _pump(sub: Subscriber, ws: web.WebSocketResponse) -> None:
    reported = 0
    while not ws.closed:
        data = await sub.queue.get()
        if sub.dropped != reported:
            await ws.send_str(Overflow(dropped=sub.dropped - reported).dumps())
            reported = sub.dropped
        await ws.send_str(data)


# --- live intervention --------------------------------------------------------------------------------------------
NODE_HTTP = web.AppKey("node_http", aiohttp.ClientSession)


async def call_node(app: web.Application, session_id: str,
                    payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """Apply an intervention on the media node that carries the session (media_server/intervention.py): its
    (status, body), or None when no live node carries it (the candidate is not connected now) or it does not
    answer. One HTTP client per web process (kept-alive connections: no new TCP connection per message)."""
    ctx = app[CTX]
    node_id = text(await ctx.redis.get(SESSION_NODE.format(session_id=session_id)))
    node = next((n for n in await live_nodes(ctx.redis) if n.node_id == node_id), None) if node_id else None
    if node is None:
        return None
    try:
        status, body = await NodeClient.for_settings(ctx.settings, app[NODE_HTTP]).call(
            "POST", f"{node.url}/sessions/{session_id}/intervene", payload)
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("node %s unreachable for an intervention on session %s: %s", node.node_id, session_id, exc)
        return None
    if status == 404:
        return None
    return status, body if isinstance(body, dict) else {}


def intervention_text(value: Any, what: str = "text") -> str:
    """Free text for the candidate: a string of at most MAX_TEXT characters, no NUL or lone surrogate."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise error(web.HTTPBadRequest, f"{what} must be a string")
    if len(value) > MAX_TEXT:
        raise error(web.HTTPBadRequest, f"{what} must be at most {MAX_TEXT} characters, got {len(value)}")
    return check_text(value, what).strip()


def _what_to_send(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """(action, text, preset) of an intervention request, or a 400 that says what is wrong."""
    action = body.get("action")
    if action not in STAFF_ACTIONS:
        raise error(web.HTTPBadRequest, f"action must be one of {', '.join(STAFF_ACTIONS)}")
    message = intervention_text(body.get("text"))
    preset = body.get("preset")
    if action == "adjust":
        if preset is not None and preset not in ADJUST_PRESETS:
            raise error(web.HTTPBadRequest, f"preset must be one of {', '.join(ADJUST_PRESETS)}")
        message = message or (ADJUST_PRESETS[preset] if preset else "")
    elif preset is not None:
        raise error(web.HTTPBadRequest, "a preset goes with action \"adjust\" only")
    if action in ("message", "adjust") and not message:
        raise error(web.HTTPBadRequest, "text (or, to adjust, a preset) is required")
    return action, message or DEFAULT_TEXT.get(action, ""), preset


async def intervene(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/intervene {"action": message|adjust|pause|resume|end, "text", "preset"}: 200 with
    {"event_id", "action", "state", "delivered", "media_time_s"}. `state` "sent": the candidate's page has it
    (`delivered`: its data channel was open); "queued": the candidate is not connected now, and the pause or
    resume applies when they are back (a message is refused then: 409, try again when they are). 409 also for a
    session that is not live, a second pause or a resume with nothing paused."""
    user = require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    action, message, preset = _what_to_send(await read_json(request, 8 * 1024))
    async with ctx.pool.acquire() as conn:
        row = await sessions.get(conn, session_id)
    if row is None:
        raise error(web.HTTPNotFound, "no such session")
    if row["status"] != "live":
        raise error(web.HTTPConflict, f"session is {row['status']}: there is no exam in progress to intervene in",
                    status=row["status"])
    reply = await call_node(request.app, session_id,
                            {"action": action, "text": message, "preset": preset, "by": user.name})
    if reply is not None and reply[0] != 200:
        status, body = reply
        raise error(web.HTTPConflict if status == 409 else web.HTTPBadRequest,
                    str(body.get("error") or f"the media node answered {status}"))
    if reply is not None:
        result, state = reply[1], "sent"
    elif action in ("message", "adjust"):
        raise error(web.HTTPConflict, "the candidate is not connected right now (their page is reconnecting); "
                    "try again in a moment", reason="not_connected")
    else:
        result, state = await _record_offline(ctx, session_id, action, message, user.name), "queued"
    event_id = result.get("event_id")
    async with ctx.pool.acquire() as conn:
        await audit(conn, user.name, f"session.intervene.{action}", f"session:{session_id}",
                    {"text": message, "preset": preset, "event_id": event_id, "state": state,
                     "delivered": bool(result.get("delivered"))})
    await live.publish_quietly(ctx.redis, Intervention(
        session_id=session_id, action=action, state=state, event_id=event_id, text=message, by=user.name,
        at_s=result.get("media_time_s")))
    if action == "end":
        if result.get("delivered"):
            await asyncio.sleep(END_GRACE_S)
        async with ctx.pool.acquire() as conn:
            if await sessions.end(conn, ctx.redis, session_id, "ended by proctor"):
                await audit(conn, user.name, "session.end", f"session:{session_id}", {"reason": "ended by proctor"})
    return web.json_response({"event_id": event_id, "action": action, "state": state,
                              "delivered": bool(result.get("delivered")), "media_time_s": result.get("media_time_s")})


async def _record_offline(ctx: Context, session_id: str, action: str, message: str, by: str) -> dict[str, Any]:
    """The candidate is not connected: their media timeline stands still at the media time last persisted, so a
    pause, resume or end is put on the timeline there; the node applies an open pause when they are back."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        at = float(await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1 FOR UPDATE", session_id) or 0)
        if action == "pause":
            try:
                async with conn.transaction():
                    event_id = await events.insert(conn, session_id, "exam_paused", at, None, 1.0,
                                                   {"text": message, "by": by, "delivered": False})
            except asyncpg.UniqueViolationError:
                raise error(web.HTTPConflict, "the exam is already paused or on a break") from None
        elif action == "resume":
            hold = await events.open_hold(conn, session_id)
            if hold is None or hold["kind"] != "exam_paused":
                raise error(web.HTTPConflict, "the exam is not paused")
            event_id = int(hold["id"])
            await events.end_hold(conn, session_id, event_id, at, {"ended_by": by})
        else:
            event_id = await events.insert(conn, session_id, "proctor_message", at, at, 1.0,
                                           {"action": action, "text": message, "by": by, "delivered": False})
    return {"event_id": event_id, "media_time_s": at, "delivered": False}


async def live_page(request: web.Request) -> web.Response:
    page_user(request)
    async with request.app[CTX].pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, candidate, exam, status, started_at, duration_s, node_id, "
            "(last_seen_at > now() - interval '20 seconds') AS recent FROM sessions "
            "WHERE status = 'live' ORDER BY started_at NULLS LAST, created_at")
        events = await conn.fetch(
            "SELECT e.id, e.session_id, e.kind, e.start_s, e.end_s, e.confidence, e.acknowledged_at, "
            "CASE WHEN jsonb_typeof(e.details -> 'count') = 'number' THEN (e.details ->> 'count')::int END AS count, "
            "e.snapshot_key IS NOT NULL AS has_snapshot FROM events e JOIN sessions s ON s.id = e.session_id "
            "WHERE s.status = 'live' AND (e.end_s IS NULL OR e.acknowledged_at IS NULL) "
            "AND NOT e.kind = ANY($1::text[]) ORDER BY e.start_s", list(TIMELINE_KINDS))
        holds = await conn.fetch(
            "SELECT e.session_id, e.kind FROM events e JOIN sessions s ON s.id = e.session_id "
            "WHERE s.status = 'live' AND e.kind = ANY($1::text[]) AND e.end_s IS NULL", list(HOLD_KINDS))
    flags: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        flags.setdefault(str(e["session_id"]), []).append({
            "id": e["id"], "kind": e["kind"], "start_s": e["start_s"], "end_s": e["end_s"],
            "confidence": e["confidence"], "count": e["count"], "acknowledged": e["acknowledged_at"] is not None})
    held = {str(h["session_id"]): "paused" if h["kind"] == "exam_paused" else "break" for h in holds}
    config = {"presets": ADJUST_PRESETS, "sessions": [{
        "id": str(r["id"]), "candidate": r["candidate"], "exam": r["exam"], "status": r["status"],
        "connection": "connected" if r["recent"] else "unknown", "duration_s": r["duration_s"],
        "hold": held.get(str(r["id"])), "flags": flags.get(str(r["id"]), [])} for r in rows]}
    return render_page("live.html", request, {"nav": "live", "config": config})


def setup_routes(app: web.Application) -> None:
    hub = LiveHub()
    app[LIVE_HUB] = hub

    async def close_sockets(app: web.Application) -> None:
        await hub.close_sockets()
        await hub.close()

    async def close_hub(app: web.Application) -> None:
        await hub.close()
        http = app.get(NODE_HTTP)
        if http is not None:
            await http.close()

    async def open_node_http(app: web.Application) -> None:
        app[NODE_HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=NODE_TIMEOUT_S))

    app.on_startup.append(open_node_http)

    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(close_hub)
    app.router.add_get("/live", live_page)
    app.router.add_get("/api/live", live_socket)
    app.router.add_post("/api/sessions/{session_id}/intervene", intervene)
