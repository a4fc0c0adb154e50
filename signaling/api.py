"""The REST contract for sessions, and the candidate side of signaling (reference photo, SDP offer/answer).

Staff calls need request["user"] (login cookie or API token, set by the web process's middleware).
Candidate calls carry the session's join token as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from proctor.http import USER, error, read_json, too_large
from proctor.redis import OFFER_LOCK, SESSION_NODE
from signaling import nodes, sessions, tokens

log = logging.getLogger(__name__)

MAX_FIELD = 200
MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096
OFFER_LOCK_S = 20
OFFERS_PER_MINUTE = 30  # a page reconnecting with backoff makes a handful
NODE_TIMEOUT_S = 15


def _ctx(request: web.Request) -> Any:
    from web.app import CTX  # the web process composes this app; imported late to keep signaling below web

    return request.app[CTX]


def require_user(request: web.Request) -> Any:
    user = request.get(USER)
    if user is None:
        raise error(web.HTTPUnauthorized, "login or an API token is required")
    return user


def require_admin(request: web.Request) -> Any:
    user = require_user(request)
    if user.role != "admin":
        raise error(web.HTTPForbidden, "admin role required")
    return user


def path_session_id(request: web.Request) -> str:
    """The canonical session id in the route, or 404 (a malformed id reads as not found, never a 500)."""
    session_id = sessions.parse_id(request.match_info["session_id"])
    if session_id is None:
        raise error(web.HTTPNotFound, "no such session")
    return session_id


def path_int(request: web.Request, name: str, not_found: str) -> int:
    """An integer route parameter, or 404 saying `not_found` (malformed reads as not found, never a 500)."""
    try:
        return int(request.match_info[name])
    except ValueError:
        raise error(web.HTTPNotFound, not_found) from None


async def existing_session(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record:
    """The session's row, or 404."""
    row = await sessions.get(conn, session_id)
    if row is None:
        raise error(web.HTTPNotFound, "no such session")
    return row


async def _candidate_session(request: web.Request, conn: asyncpg.Connection) -> asyncpg.Record:
    """The session a join token opens; the token must be valid, current and for this very session."""
    session_id = path_session_id(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise error(web.HTTPUnauthorized, "join token required (Authorization: Bearer <token>)")
    try:
        claims = tokens.verify(_ctx(request).settings.signing_key(), token.strip())
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
    ctx = _ctx(request)
    body = await read_json(request, 16 * 1024)
    fields = {}
    for name in ("candidate", "exam"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD:
            raise error(web.HTTPBadRequest, f"{name!r} must be a non-empty string of at most {MAX_FIELD} characters")
        fields[name] = value.strip()
    async with ctx.pool.acquire() as conn:
        row = await sessions.create(conn, candidate=fields["candidate"], exam=fields["exam"], created_by=user.id,
                                    ttl_s=ctx.settings.join_token_ttl_s)
        from proctor.accounts import audit

        await audit(conn, user.name, "session.create", f"session:{row['id']}", fields)
    token = sessions.join_token(ctx.settings.signing_key(), row)
    data = sessions.to_json(row)
    data["join_url"] = f"{ctx.settings.base_url}/join/{token}"
    return web.json_response(data, status=201)


async def list_sessions(request: web.Request) -> web.Response:
    require_user(request)
    status = request.query.get("status")
    if status is not None and status not in sessions.STATUSES:
        raise error(web.HTTPBadRequest, f"status must be one of {', '.join(sessions.STATUSES)}")
    query = request.query.get("q", "")[:MAX_FIELD]
    try:
        limit = min(500, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise error(web.HTTPBadRequest, "limit must be an integer") from None
    async with _ctx(request).pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM sessions WHERE ($1::text IS NULL OR status = $1) "
            "AND ($2 = '' OR candidate ILIKE '%' || $2 || '%' OR exam ILIKE '%' || $2 || '%') "
            "ORDER BY created_at DESC LIMIT $3", status, query, limit)
    return web.json_response([sessions.to_json(row) for row in rows])


async def get_session(request: web.Request) -> web.Response:
    require_user(request)
    session_id = path_session_id(request)
    async with _ctx(request).pool.acquire() as conn:
        data = sessions.to_json(await existing_session(conn, session_id))
        data["segments"] = [dict(r) for r in await conn.fetch(
            "SELECT idx, start_s, end_s, frames, bytes, state FROM segments WHERE session_id = $1 ORDER BY idx",
            session_id)]
        data["events"] = [_event_json(r) for r in await conn.fetch(
            "SELECT * FROM events WHERE session_id = $1 ORDER BY start_s, id", session_id)]
        has_master = await conn.fetchval("SELECT count(*) > 0 FROM master_videos WHERE session_id = $1",
                                         session_id)
        data["master_video_url"] = f"/api/sessions/{session_id}/master" if has_master else None
    return web.json_response(data)


def _event_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "kind": row["kind"], "start_s": row["start_s"], "end_s": row["end_s"],
        "confidence": row["confidence"], "details": row["details"], "source": row["source"],
        "snapshot_url": f"/api/sessions/{row['session_id']}/events/{row['id']}/snapshot" if row["snapshot_key"]
        else None,
        "review_state": row["review_state"], "review_note": row["review_note"],
    }


async def list_events(request: web.Request) -> web.Response:
    require_user(request)
    session_id = path_session_id(request)
    async with _ctx(request).pool.acquire() as conn:
        await existing_session(conn, session_id)
        rows = await conn.fetch("SELECT * FROM events WHERE session_id = $1 ORDER BY start_s, id", session_id)
    return web.json_response([_event_json(row) for row in rows])


async def end_session_staff(request: web.Request) -> web.Response:
    user = require_user(request)
    return await _end(request, actor=user.name, reason="ended by staff")


async def _end(request: web.Request, *, actor: str, reason: str) -> web.Response:
    ctx = _ctx(request)
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        row = await sessions.get(conn, session_id)
        if row is None:
            raise error(web.HTTPNotFound, "no such session")
        changed = await sessions.end(conn, ctx.redis, session_id, reason)
        if changed:
            from proctor.accounts import audit

            await audit(conn, actor, "session.end", f"session:{session_id}", {"reason": reason})
        row = await sessions.get(conn, session_id)
    return web.json_response(sessions.to_json(row), status=202)


async def delete_session(request: web.Request) -> web.Response:
    user = require_admin(request)
    session_id = path_session_id(request)
    if not await sessions.delete(_ctx(request), session_id, actor=user.name, reason="deleted by admin"):
        raise error(web.HTTPNotFound, "no such session")
    return web.json_response({"id": session_id, "deleted": True})


# --- candidate -----------------------------------------------------------------------------------------

async def consent(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    async with ctx.pool.acquire() as conn:
        row = await _candidate_session(request, conn)
        _require_open(row)
        await conn.execute("UPDATE sessions SET consent_at = coalesce(consent_at, now()) WHERE id = $1", row["id"])
    return web.json_response({"ok": True})


async def candidate_state(request: web.Request) -> web.Response:
    """What a (re)loaded candidate page needs to resume: status, consent given, reference photo taken."""
    async with _ctx(request).pool.acquire() as conn:
        row = await _candidate_session(request, conn)
        has_reference = await conn.fetchval("SELECT count(*) > 0 FROM reference_photos WHERE session_id = $1",
                                            row["id"])
    return web.json_response({"status": row["status"], "consented": row["consent_at"] is not None,
                              "has_reference": has_reference, "duration_s": row["duration_s"]})


def _require_open(row: asyncpg.Record) -> None:
    if row["status"] not in sessions.OPEN_STATUSES:
        raise error(web.HTTPConflict, f"session is {row['status']}", status=row["status"])


async def _read_photo(request: web.Request) -> bytes:
    if not request.content_type.startswith("multipart/"):
        raise error(web.HTTPUnsupportedMediaType, "send multipart/form-data with a `photo` field")
    if request.content_length is not None and request.content_length > MAX_PHOTO_BYTES + 4096:
        raise too_large(MAX_PHOTO_BYTES, request.content_length)
    reader = await request.multipart()
    async for part in reader:
        if getattr(part, "name", None) != "photo":
            continue
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
            data += chunk
            if len(data) > MAX_PHOTO_BYTES:
                raise too_large(MAX_PHOTO_BYTES, len(data))
        return bytes(data)
    raise error(web.HTTPBadRequest, "missing `photo` field")


def decode_photo(data: bytes) -> Any:
    """An RGB ndarray of the uploaded image, or a 4xx naming the problem (not an image, too large)."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise error(web.HTTPRequestEntityTooLarge, f"image larger than {MAX_PHOTO_PIXELS} pixels")
            if image.format not in ("JPEG", "PNG", "WEBP"):
                raise error(web.HTTPUnsupportedMediaType, "photo must be JPEG, PNG or WebP")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise error(web.HTTPUnsupportedMediaType, "photo is not a readable image") from None


async def _checked_photo(request: web.Request) -> tuple[asyncpg.Record, bytes, Any, Any]:
    """The candidate's session, the uploaded still, its pixels, and the one-face/enough-light check of it."""
    ctx = _ctx(request)
    async with ctx.pool.acquire() as conn:
        row = await _candidate_session(request, conn)
        _require_open(row)
    data = await _read_photo(request)
    rgb = decode_photo(data)
    from analyzers.precheck import check_frame

    result = await asyncio.get_running_loop().run_in_executor(None, check_frame, rgb)
    return row, data, rgb, result


async def precheck(request: web.Request) -> web.Response:
    """Camera pre-check: is exactly one face visible, and is there enough light? Guidance when not."""
    _, _, _, result = await _checked_photo(request)
    return web.json_response(result.to_json())


async def upload_reference(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    row, data, rgb, result = await _checked_photo(request)
    if not result.ok:
        raise error(web.HTTPUnprocessableEntity, result.message, precheck=result.to_json())
    digest = hashlib.sha256(data).hexdigest()
    session_id = str(row["id"])
    key = f"sessions/{session_id}/reference/{digest[:32]}.img"
    await ctx.storage.put_bytes(key, data, content_type="image/jpeg")
    async with ctx.pool.acquire() as conn:
        photo_id = await conn.fetchval(
            "INSERT INTO reference_photos (session_id, storage_key, content_type, width, height, bytes, sha256, "
            "faces) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            session_id, key, "image/jpeg", int(rgb.shape[1]), int(rgb.shape[0]), len(data), digest, result.faces)
    return web.json_response({"id": photo_id, "faces": result.faces, "brightness": result.brightness}, status=201)


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
    return sdp, kind


async def offer(request: web.Request) -> web.Response:
    """Relay the candidate's SDP offer to a media node and return its answer.

    One offer per session at a time (a Redis lock); a reconnect prefers the node the session was on, and an
    offer meant for a node that has died goes to the next least-loaded live node.
    """
    ctx = _ctx(request)
    async with ctx.pool.acquire() as conn:
        row = await _candidate_session(request, conn)
        _require_open(row)
    session_id = str(row["id"])
    await _rate_limit(ctx, f"proctor:rate:offer:{session_id}", OFFERS_PER_MINUTE, "offers for this session")
    sdp, kind = _check_sdp(await read_json(request, ctx.settings.max_sdp_bytes + 4096), ctx.settings.max_sdp_bytes)
    lock_key = OFFER_LOCK.format(session_id=session_id)
    if not await ctx.redis.set(lock_key, "1", nx=True, ex=OFFER_LOCK_S):
        raise error(web.HTTPConflict, "another offer for this session is being answered; retry shortly")
    try:
        return await _relay(ctx, session_id, sdp, kind)
    finally:
        await ctx.redis.delete(lock_key)


async def _rate_limit(ctx: Any, key: str, limit: int, what: str) -> None:
    """At most `limit` per minute (fixed window in Redis); a reconnect loop gone wrong gets 429, not a node."""
    count = await ctx.redis.incr(key)
    if count == 1:
        await ctx.redis.expire(key, 60)
    if count > limit:
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": f"too many {what}; retry in a minute"}), content_type="application/json",
            headers={"Retry-After": str(max(1, await ctx.redis.ttl(key)))})


async def _relay(ctx: Any, session_id: str, sdp: str, kind: str) -> web.Response:
    previous = await ctx.redis.get(SESSION_NODE.format(session_id=session_id))
    live = await nodes.live_nodes(ctx.redis)
    tried: set[str] = set()
    timeout = aiohttp.ClientTimeout(total=NODE_TIMEOUT_S)
    # The previous node died without closing the stream: the media time it last persisted is up to one
    # persist period behind what it received; the new node must start after that, not overlap it.
    previous_lost = bool(previous) and previous not in {n.node_id for n in live}
    async with aiohttp.ClientSession(timeout=timeout) as http:
        if previous_lost:
            log.info("session %s was on node %s, which is gone", session_id, previous)
        while True:
            node = nodes.choose([n for n in live if n.node_id not in tried], prefer=previous)
            if node is None:
                raise error(web.HTTPServiceUnavailable, "no media node has room; retry shortly")
            tried.add(node.node_id)
            if previous and previous != node.node_id and previous in {n.node_id for n in live}:
                # Moving to another node: the old one must let go first so the timeline continues from it.
                old = next(n for n in live if n.node_id == previous)
                try:
                    async with http.post(f"{old.url}/sessions/{session_id}/close") as response:
                        await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    previous_lost = True
            try:
                async with http.post(f"{node.url}/offer",
                                     json={"session_id": session_id, "sdp": sdp, "type": kind,
                                           "previous_lost": previous_lost}) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200:
                        await nodes.note_placement(ctx.redis, node.node_id)
                        return web.json_response({"sdp": body["sdp"], "type": body["type"], "node": node.node_id})
                    if 400 <= response.status < 500:
                        raise error(web.HTTPBadRequest, body.get("error", "the media node refused the offer"))
                    log.warning("node %s answered %s: %s", node.node_id, response.status, body)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                log.warning("node %s unreachable for session %s: %s", node.node_id, session_id, exc)


async def end_session_candidate(request: web.Request) -> web.Response:
    async with _ctx(request).pool.acquire() as conn:
        await _candidate_session(request, conn)
    return await _end(request, actor="candidate", reason="finished by candidate")


async def end_session(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/end: staff (cookie or API token) or the candidate (join token)."""
    if request.get(USER) is not None:
        return await end_session_staff(request)
    return await end_session_candidate(request)


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/sessions", create_session)
    r.add_get("/api/sessions", list_sessions)
    r.add_get("/api/sessions/{session_id}", get_session)
    r.add_delete("/api/sessions/{session_id}", delete_session)
    r.add_get("/api/sessions/{session_id}/events", list_events)
    r.add_post("/api/sessions/{session_id}/end", end_session)
    r.add_get("/api/sessions/{session_id}/state", candidate_state)
    r.add_post("/api/sessions/{session_id}/consent", consent)
    r.add_post("/api/sessions/{session_id}/precheck", precheck)
    r.add_post("/api/sessions/{session_id}/reference", upload_reference)
    r.add_post("/api/sessions/{session_id}/offer", offer)
