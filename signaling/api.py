"""The REST contract for sessions, and the candidate side of signaling (consent, state, SDP offer/answer, end).

Staff calls need request["user"] (login cookie or API token, set by the web process's middleware).
Candidate calls carry the session's join token as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
from aiohttp import web

from core import nodes, pagination, tokens
from core.accommodations import NONE, Accommodations
from core.offers import OfferError, check_offer
from core.pagination import Sort, SortKey
from core.search import LIKE_ESCAPE, contains_pattern
from core.sensitivity import STANDARD, Sensitivity
from core.sessions import OPEN_STATUSES, STATUSES
from proctor import ratelimit
from proctor.accounts import audit
from proctor.context import Context
from proctor.http import (
    CTX,
    USER,
    check_text,
    error,
    path_session_id,
    read_json,
    require_admin,
    require_user,
    too_large,
)
from proctor.nodeauth import NodeClient
from proctor.redis import OFFER_LOCK, SESSION_NODE, text
from proctor.store import events, sessions
from proctor.store.nodes import REFUSED, RESERVED, live_nodes, release, reserve

log = logging.getLogger(__name__)

MAX_FIELD = 200
OFFER_LOCK_S = 20
OFFERS_PER_MINUTE = 30  # a page reconnecting with backoff makes a handful
NODE_TIMEOUT_S = 15


async def existing_session(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record:
    """The session's row, or 404."""
    row = await sessions.get(conn, session_id)
    if row is None:
        raise error(web.HTTPNotFound, "no such session")
    return row


async def candidate_session(request: web.Request, conn: asyncpg.Connection) -> asyncpg.Record:
    """The session a join token opens; the token must be valid, current and for this very session."""
    session_id = path_session_id(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise error(web.HTTPUnauthorized, "join token required (Authorization: Bearer <token>)")
    try:
        claims = tokens.verify(request.app[CTX].settings.signing_key(), token.strip())
    except tokens.TokenError as exc:
        raise error(web.HTTPUnauthorized, str(exc)) from None
    if claims.session_id != session_id:
        raise error(web.HTTPForbidden, "join token is for another session")
    row = await sessions.get(conn, session_id)
    if row is None or row["join_nonce"] != claims.nonce:
        raise error(web.HTTPUnauthorized, "join link revoked")
    return row


# --- staff ---------------------------------------------------------------------------------------------

async def create_session(request: web.Request) -> web.Response:
    user = require_user(request)
    ctx = request.app[CTX]
    body = await read_json(request, 16 * 1024)
    fields = {}
    for name in ("candidate", "exam"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD:
            raise error(web.HTTPBadRequest, f"{name!r} must be a non-empty string of at most {MAX_FIELD} characters")
        fields[name] = value.strip()
    sensitivity = _sensitivity(body.get("sensitivity"))
    accommodations = _accommodations(body.get("accommodations"))
    async with ctx.pool.acquire() as conn:
        row = await sessions.create(conn, candidate=fields["candidate"], exam=fields["exam"], created_by=user.id,
                                    ttl_s=ctx.settings.join_token_ttl_s, sensitivity=sensitivity,
                                    accommodations=accommodations)
        await audit(conn, user.name, "session.create", f"session:{row['id']}",
                    {**fields, "sensitivity": sensitivity.to_json(), "accommodations": accommodations.to_json()})
    token = tokens.for_session(ctx.settings.signing_key(), row)
    data = sessions.to_json(row)
    data["join_url"] = f"{ctx.settings.base_url}/join/{token}"
    return web.json_response(data, status=201)


def _sensitivity(value: Any) -> Sensitivity:
    """The optional "sensitivity" of a new session (absent or null: standard, the deployment's settings)."""
    if value is None:
        return STANDARD
    try:
        return Sensitivity.parse(value)
    except ValueError as exc:
        raise error(web.HTTPBadRequest, f"sensitivity: {exc}") from None


def _accommodations(value: Any) -> Accommodations:
    """The optional "accommodations" of a candidate (absent or null: none)."""
    if value is None:
        return NONE
    try:
        return Accommodations.parse(value)
    except ValueError as exc:
        raise error(web.HTTPBadRequest, f"accommodations: {exc}") from None


async def set_accommodations(request: web.Request) -> web.Response:
    """PUT /api/sessions/{id}/accommodations: replace the candidate's accommodations (core.accommodations) before
    the exam starts. 200 with the session; 400 for a wrong value; 409 once the session is live or over (the media
    node has applied them, and the review must show what applied)."""
    user = require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    body = await read_json(request, 16 * 1024)
    accommodations = _accommodations(body.get("accommodations", body))
    async with ctx.pool.acquire() as conn:
        row = await existing_session(conn, session_id)
        updated = await sessions.set_accommodations(conn, session_id, accommodations, actor=user.name)
    if updated is None:
        raise error(web.HTTPConflict, f"session is {row['status']}: accommodations can only be changed before the "
                    "exam starts", status=row["status"])
    return web.json_response(sessions.to_json(updated))


# The orders GET /api/sessions offers; each ends with the id (a total order: keyset pages never skip nor repeat).
_NEWEST = (SortKey("created_at", True, "ts"), SortKey("id", True, "uuid"))
LIST_SORTS = {"newest": Sort("newest", _NEWEST), "score": Sort("score", (SortKey("score", True, "float"), *_NEWEST))}
LIST_LIMIT, MAX_LIST_LIMIT = 100, 500


async def list_sessions(request: web.Request) -> web.Response:
    """GET /api/sessions?status=&q=&sort=newest|score&limit=&cursor=: one page of sessions (a JSON array). When
    there is more, a `Link` header names the next (rel="next") and previous (rel="prev") pages and
    `X-Next-Cursor` carries the next page's opaque cursor; pass it back as ?cursor= with the same filters."""
    require_user(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise error(web.HTTPBadRequest, f"status must be one of {', '.join(STATUSES)}")
    query = check_text(request.query.get("q", "")[:MAX_FIELD], "q")
    sort = request.query.get("sort", "newest")
    if sort not in LIST_SORTS:
        raise error(web.HTTPBadRequest, f"sort must be one of {', '.join(LIST_SORTS)}")
    order = LIST_SORTS[sort]
    limit = _limit(request.query.get("limit"))
    key = request.app[CTX].settings.signing_key()
    cursor = None
    if request.query.get("cursor"):
        try:
            cursor = pagination.decode(key, order, request.query["cursor"])
        except pagination.CursorError as exc:
            raise error(web.HTTPBadRequest, str(exc)) from None
    direction = cursor.direction if cursor else pagination.NEXT
    after = f"AND {order.beyond(4, direction)} " if cursor else ""
    async with request.app[CTX].pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT *, {order.select()} FROM sessions WHERE ($1::text IS NULL OR status = $1) "
            f"AND ($2::text IS NULL OR candidate ILIKE $2 {LIKE_ESCAPE} OR exam ILIKE $2 {LIKE_ESCAPE}) {after}"
            f"ORDER BY {order.order_by(direction)} LIMIT $3", status, contains_pattern(query), limit + 1,
            *(cursor.values if cursor else ()))
    page = pagination.page(key, order, rows, limit, cursor)
    headers = {"Cache-Control": "private, no-store"}
    links = [f'<{_page_url(request, c)}>; rel="{rel}"' for rel, c in (("next", page.next), ("prev", page.prev)) if c]
    if links:
        headers["Link"] = ", ".join(links)
    if page.next:
        headers["X-Next-Cursor"] = page.next
    return web.json_response([sessions.to_json(row) for row in page.rows], headers=headers)


def _limit(value: str | None) -> int:
    """?limit=: the page size, 1..MAX_LIST_LIMIT (larger asks get the largest page; not a number is a 400)."""
    if value is None:
        return LIST_LIMIT
    try:
        number = int(value) if len(value) <= 12 else None
    except ValueError:
        number = None
    if number is None:
        raise error(web.HTTPBadRequest, f"limit must be an integer (page size, 1 to {MAX_LIST_LIMIT})")
    return min(MAX_LIST_LIMIT, max(1, number))


def _page_url(request: web.Request, cursor: str) -> str:
    params = {k: v for k, v in request.query.items() if k != "cursor"}
    params["cursor"] = cursor
    return f"{request.app[CTX].settings.base_url}{request.path}?{urlencode(params)}"


async def get_session(request: web.Request) -> web.Response:
    require_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        data = sessions.to_json(await existing_session(conn, session_id))
        data["segments"] = [dict(r) for r in await conn.fetch(
            "SELECT idx, start_s, end_s, frames, bytes, state FROM segments WHERE session_id = $1 ORDER BY idx",
            session_id)]
        data["events"] = [events.to_json(r) for r in await events.for_session(conn, session_id)]
        has_master = await conn.fetchval("SELECT count(*) > 0 FROM master_videos WHERE session_id = $1",
                                         session_id)
        data["master_video_url"] = f"/api/sessions/{session_id}/master" if has_master else None
    return web.json_response(data)


async def list_events(request: web.Request) -> web.Response:
    require_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        await existing_session(conn, session_id)
        rows = await events.for_session(conn, session_id)
    return web.json_response([events.to_json(row) for row in rows])


async def end_session_staff(request: web.Request) -> web.Response:
    user = require_user(request)
    return await _end(request, actor=user.name, reason="ended by staff")


async def _end(request: web.Request, *, actor: str, reason: str) -> web.Response:
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        row = await sessions.get(conn, session_id)
        if row is None:
            raise error(web.HTTPNotFound, "no such session")
        changed = await sessions.end(conn, ctx.redis, session_id, reason)
        if changed:
            await audit(conn, actor, "session.end", f"session:{session_id}", {"reason": reason})
        row = await sessions.get(conn, session_id)
    return web.json_response(sessions.to_json(row), status=202)


async def rotate_join_link(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/join-link: a new join link for an open session; every earlier link is revoked
    (401 "join link revoked"). 200 {"id", "join_url", "status", ...}; 409 when the session is no longer open."""
    user = require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        row = await existing_session(conn, session_id)
        rotated = await sessions.rotate_join_nonce(conn, session_id, ttl_s=ctx.settings.join_token_ttl_s,
                                                   actor=user.name)
    if rotated is None:
        raise error(web.HTTPConflict, f"session is {row['status']}: its join link can no longer be used",
                    status=row["status"])
    data = sessions.to_json(rotated)
    data["join_url"] = f"{ctx.settings.base_url}/join/{tokens.for_session(ctx.settings.signing_key(), rotated)}"
    return web.json_response(data, headers={"Cache-Control": "no-store"})


async def delete_session(request: web.Request) -> web.Response:
    user = require_admin(request)
    session_id = path_session_id(request)
    if not await sessions.delete(request.app[CTX], session_id, actor=user.name, reason="deleted by admin"):
        raise error(web.HTTPNotFound, "no such session")
    return web.json_response({"id": session_id, "deleted": True})


# --- candidate -----------------------------------------------------------------------------------------

async def consent(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        row = await candidate_session(request, conn)
        require_open(row)
        await sessions.give_consent(conn, str(row["id"]))
    return web.json_response({"ok": True})


async def candidate_state(request: web.Request) -> web.Response:
    """What a (re)loaded candidate page needs to resume: status, consent given, reference photo taken, and the
    breaks the candidate's accommodations allow (how many taken) and the pause or break on now, if any."""
    async with request.app[CTX].pool.acquire() as conn:
        row = await candidate_session(request, conn)
        has_reference = await conn.fetchval("SELECT count(*) > 0 FROM reference_photos WHERE session_id = $1",
                                            row["id"])
        taken = await events.count_kind(conn, str(row["id"]), "exam_break")
        hold = await events.open_hold(conn, str(row["id"]))
    try:
        allowed = Accommodations.parse(row["accommodations"])
    except ValueError:
        allowed = NONE
    return web.json_response({"status": row["status"], "consented": row["consent_at"] is not None,
                              "has_reference": has_reference, "duration_s": row["duration_s"],
                              "breaks": {"allowed": allowed.breaks, "minutes": allowed.break_minutes, "taken": taken},
                              "hold": None if hold is None else
                              {"hold": "paused" if hold["kind"] == "exam_paused" else "break", "id": hold["id"]}})


def require_open(row: asyncpg.Record) -> None:
    if row["status"] not in OPEN_STATUSES:
        raise error(web.HTTPConflict, f"session is {row['status']}", status=row["status"])


def _check_sdp(body: dict[str, Any], max_bytes: int) -> tuple[str, str]:
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise error(web.HTTPBadRequest, "type must be \"offer\"")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise error(web.HTTPBadRequest, "sdp must be an SDP offer starting with v=0")
    if len(sdp.encode()) > max_bytes:
        raise too_large(max_bytes, len(sdp.encode()))
    if "m=video" not in sdp:
        raise error(web.HTTPBadRequest, "the offer has no video")
    try:
        check_offer(sdp)  # DTLS fingerprint, ICE credentials, candidate count: the node checks them again
    except OfferError as exc:
        raise error(web.HTTPBadRequest, f"invalid offer: {exc}") from None
    return sdp, kind


async def offer(request: web.Request) -> web.Response:
    """Relay the candidate's SDP offer to a media node and return its answer.

    One offer per session at a time (a Redis lock); a reconnect prefers the node the session was on, and an
    offer meant for a node that has died goes to the next least-loaded live node.
    """
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        row = await candidate_session(request, conn)
        require_open(row)
    session_id = str(row["id"])
    await ratelimit.limit(ctx.redis, ratelimit.KEY.format(what="offer", whose=session_id), OFFERS_PER_MINUTE,
                          "offers for this session")
    sdp, kind = _check_sdp(await read_json(request, ctx.settings.max_sdp_bytes + 4096), ctx.settings.max_sdp_bytes)
    lock_key = OFFER_LOCK.format(session_id=session_id)
    if not await ctx.redis.set(lock_key, "1", nx=True, ex=OFFER_LOCK_S):
        raise error(web.HTTPConflict, "another offer for this session is being answered; retry shortly")
    try:
        return await _relay(ctx, session_id, sdp, kind)
    finally:
        await ctx.redis.delete(lock_key)


async def _relay(ctx: Context, session_id: str, sdp: str, kind: str) -> web.Response:
    previous = text(await ctx.redis.get(SESSION_NODE.format(session_id=session_id)))
    live = await live_nodes(ctx.redis)
    tried: set[str] = set()
    timeout = aiohttp.ClientTimeout(total=NODE_TIMEOUT_S)
    # The previous node died without closing the stream: the media time it last persisted is up to one
    # persist period behind what it received; the new node must start after that, not overlap it.
    previous_lost = bool(previous) and previous not in {n.node_id for n in live}
    async with aiohttp.ClientSession(timeout=timeout) as http:
        client = NodeClient.for_settings(ctx.settings, http)
        if previous_lost:
            log.info("session %s was on node %s, which is gone", session_id, previous)
        while True:
            untried = [n for n in live if n.node_id not in tried]
            # The node the session is on comes first even when it reports full: the session holds a slot there
            # (reserve says so atomically). Not when it is draining: the page moves (a reload too), and the
            # draining node lets go of the stream below, so the timeline continues from it.
            node = next((n for n in untried if n.node_id == previous and not n.draining), None) \
                or nodes.choose(untried, prefer=previous)
            if node is None:
                raise no_room(ctx, session_id, live)
            tried.add(node.node_id)
            # Take a slot before relaying, atomically across signaling processes: a burst of offers cannot
            # all see the same free room.
            slot = await reserve(ctx.redis, node.node_id, session_id)
            if slot == REFUSED:
                continue
            placed = False
            try:
                if previous and previous != node.node_id and previous in {n.node_id for n in live}:
                    # Moving to another node: the old one must let go first so the timeline continues from it.
                    old = next(n for n in live if n.node_id == previous)
                    try:
                        status, _ = await client.call("POST", f"{old.url}/sessions/{session_id}/close")
                        if status != 200:
                            log.warning("node %s refused to close session %s: %s", old.node_id, session_id, status)
                    except (TimeoutError, aiohttp.ClientError):
                        previous_lost = True
                try:
                    status, body = await client.call("POST", f"{node.url}/offer",
                                                     {"session_id": session_id, "sdp": sdp, "type": kind,
                                                      "previous_lost": previous_lost})
                except (TimeoutError, aiohttp.ClientError) as exc:
                    log.warning("node %s unreachable for session %s: %s", node.node_id, session_id, exc)
                    continue
                body = body if isinstance(body, dict) else {}
                if status == 200 and "sdp" in body:
                    placed = True
                    return web.json_response({"sdp": body["sdp"], "type": body["type"], "node": node.node_id})
                if status in (401, 403):
                    log.error("node %s refused signaling's signature (%s): do both share SECRET_KEY?",
                              node.node_id, body.get("error"))
                elif 400 <= status < 500:
                    raise error(web.HTTPBadRequest, body.get("error", "the media node refused the offer"))
                else:
                    log.warning("node %s answered %s: %s", node.node_id, status, body)
            finally:
                if not placed and slot == RESERVED:
                    await release(ctx.redis, node.node_id, session_id)


def no_room(ctx: Context, session_id: str, live: list[nodes.NodeInfo]) -> web.HTTPException:
    """503 with Retry-After (ADMISSION_RETRY_AFTER_S) when no media node takes the stream: none running, or every
    one full by its measured load (media_server/admission.py) or its capacity, or draining. The candidate page
    waits and retries; the session is kept. Why each node refused goes to the log, not to the candidate."""
    retry = ctx.settings.admission_retry_after_s
    reason = "no_media_node" if not live else "no_capacity"
    log.warning("session %s: no media node takes it (%s); told to retry in %d s", session_id,
                nodes.refusals(live), retry)
    message = "no media node has room: " + ("none is running" if not live else
                                            f"all {len(live)} are busy" if len(live) > 1 else "it is busy")
    return web.HTTPServiceUnavailable(
        text=json.dumps({"error": f"{message}; retry in {retry} s", "reason": reason, "retry_after_s": retry}),
        content_type="application/json", headers={"Retry-After": str(retry), "Cache-Control": "no-store"})


async def end_session_candidate(request: web.Request) -> web.Response:
    async with request.app[CTX].pool.acquire() as conn:
        await candidate_session(request, conn)
    return await _end(request, actor="candidate", reason="finished by candidate")


async def end_session(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/end: staff (cookie or API token) or the candidate (join token)."""
    if request.get(USER) is not None:
        return await end_session_staff(request)
    return await end_session_candidate(request)


def setup_routes(app: web.Application) -> None:
    # The /api routes are documented in web/openapi.py (_ops_signaling): change both together (tests/test_openapi.py).
    r = app.router
    r.add_post("/api/sessions", create_session)
    r.add_get("/api/sessions", list_sessions)
    r.add_get("/api/sessions/{session_id}", get_session)
    r.add_delete("/api/sessions/{session_id}", delete_session)
    r.add_get("/api/sessions/{session_id}/events", list_events)
    r.add_post("/api/sessions/{session_id}/end", end_session)
    r.add_post("/api/sessions/{session_id}/join-link", rotate_join_link)
    r.add_put("/api/sessions/{session_id}/accommodations", set_accommodations)
    r.add_get("/api/sessions/{session_id}/state", candidate_state)
    r.add_post("/api/sessions/{session_id}/consent", consent)
    r.add_post("/api/sessions/{session_id}/offer", offer)
