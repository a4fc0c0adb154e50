"""Proctor live monitor: GET /live (grid of live sessions and their open flags) and the WebSocket GET /api/live.

The WebSocket relays every message published on Redis LIVE_CHANNEL (events from the analyzers, connection
changes from media nodes, session status from signaling and the archiver, acknowledgements). One Redis
subscription per web process is fanned out to all sockets; each socket has a bounded queue, and a slow client
loses its oldest messages (it is told how many, so it can reload) rather than holding memory or the others.
One user holds at most LIVE_SOCKETS_PER_USER sockets per web process (more: 429 before the upgrade). On shutdown
every socket is told 1001 (going away) at once, and a client that does not answer within CLOSE_GRACE_S (one that
stopped reading, say) is cut off, so the process stops promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from core.live import Hello, HubState, Overflow, Pong
from proctor.http import CTX, error, require_user
from proctor.redis import LIVE_CHANNEL
from web import cookies
from web.login import page_user, render_page

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
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
            "WHERE s.status = 'live' AND (e.end_s IS NULL OR e.acknowledged_at IS NULL) ORDER BY e.start_s")
    flags: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        flags.setdefault(str(e["session_id"]), []).append({
            "id": e["id"], "kind": e["kind"], "start_s": e["start_s"], "end_s": e["end_s"],
            "confidence": e["confidence"], "count": e["count"], "acknowledged": e["acknowledged_at"] is not None})
    config = {"sessions": [{
        "id": str(r["id"]), "candidate": r["candidate"], "exam": r["exam"], "status": r["status"],
        "connection": "connected" if r["recent"] else "unknown", "duration_s": r["duration_s"],
        "flags": flags.get(str(r["id"]), [])} for r in rows]}
    return render_page("live.html", request, {"nav": "live", "config": config})


def setup_routes(app: web.Application) -> None:
    hub = LiveHub()
    app[LIVE_HUB] = hub

    async def close_sockets(app: web.Application) -> None:
        await hub.close_sockets()
        await hub.close()

    async def close_hub(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(close_hub)
    app.router.add_get("/live", live_page)
    app.router.add_get("/api/live", live_socket)
