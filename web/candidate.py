"""Candidate pages: the join link opens the exam page (notice, consent, camera check, reference photo, stream),
and the page's photo calls: the camera pre-check and the reference photo (both checked by analyzers.precheck:
one face, enough light). The rest of the candidate's API (consent, state, offer, end) is signaling's."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp_jinja2
import asyncpg
import numpy as np
from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from analyzers.precheck import PrecheckResult, check_frame
from core import tokens, turn
from core.accommodations import Accommodations
from core.live import EventAlert, Intervention
from proctor import ratelimit
from proctor.accounts import User, audit
from proctor.http import CTX, USER, error, path_session_id, read_json, too_large
from proctor.store import events, live, sessions
from signaling.api import candidate_session, existing_session, require_open
from web.live import call_node

MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096
# Every part of a photo upload together (the photo, and other small fields that are read and dropped).
MAX_UPLOAD_BYTES = MAX_PHOTO_BYTES + 64 * 1024
# Photos decoded and checked at once per web process, on threads of their own (the event loop only waits); a
# photo waits PHOTO_WAIT_S for a slot, then 503 with Retry-After: PHOTO_RETRY_AFTER_S.
PHOTO_SLOTS = 2
PHOTO_WAIT_S = 10.0
PHOTO_RETRY_AFTER_S = 2
# The checked image is scaled to this many pixels a side at most (the face detector works on far fewer).
CHECK_MAX_SIDE = 1280
# Pre-checks and reference uploads per session and minute, both routes together: the page checks its camera
# every 1.5 s (about 40 a minute).
PHOTOS_PER_MINUTE = 60
# Reference photos a candidate may upload before the exam starts; once it has, only staff replace it.
MAX_CANDIDATE_REFERENCES = 5

# The page's own script only; camera preview is a MediaStream (blob:/mediastream:), snapshots are canvas data.
CANDIDATE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                 "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                 "form-action 'none'")


async def join_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    token = request.match_info["token"]
    try:
        claims = tokens.verify(ctx.settings.signing_key(), token)
    except tokens.TokenError as exc:
        return _refusal(request, str(exc), 401)
    async with ctx.pool.acquire() as conn:
        row = await sessions.get(conn, claims.session_id)
    if row is None or row["join_nonce"] != claims.nonce:
        return _refusal(request, "This link has been revoked.", 401)
    settings = ctx.settings
    config = {
        "sessionId": str(row["id"]),
        "token": token,
        "candidate": row["candidate"],
        "exam": row["exam"],
        "video": {"width": settings.video_width, "height": settings.video_height, "fps": settings.video_fps},
        "bitrateKbps": settings.video_bitrate_kbps,
        "scalabilityMode": settings.video_scalability_mode,
        # TURN with a credential derived for this session and valid TURN_TTL_S: no static password in the page.
        "iceServers": turn.ice_servers(settings.ice_servers, settings.turn_urls, settings.turn_secret,
                                       str(row["id"]), time.time(), settings.turn_ttl_s),
        "iceTransportPolicy": settings.ice_transport_policy,
        "segmentSeconds": settings.segment_seconds,
        "retentionDays": settings.retention_days,
    }
    response = aiohttp_jinja2.render_template("join.html", request, {
        "session": row, "config": config, "retention_days": settings.retention_days})
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    response.headers["Content-Security-Policy"] = CANDIDATE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _refusal(request: web.Request, message: str, status: int) -> web.Response:
    response = aiohttp_jinja2.render_template("join_error.html", request, {"message": message})
    response.set_status(status)
    return response


async def _read_photo(request: web.Request) -> bytes:
    """The `photo` part of a multipart body. Everything read is bounded: the photo at MAX_PHOTO_BYTES and all
    parts together (other fields are read and dropped) at MAX_UPLOAD_BYTES, whatever Content-Length says."""
    if not request.content_type.startswith("multipart/"):
        raise error(web.HTTPUnsupportedMediaType, "send multipart/form-data with a `photo` field")
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        raise too_large(MAX_UPLOAD_BYTES, request.content_length)
    total = 0
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise error(web.HTTPBadRequest, "nested multipart bodies are not accepted: send one `photo` field")
            photo = part.name == "photo"
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise too_large(MAX_UPLOAD_BYTES, total)
                if photo:
                    data += chunk
                    if len(data) > MAX_PHOTO_BYTES:
                        raise too_large(MAX_PHOTO_BYTES, len(data))
            if photo:
                return bytes(data)
    except ValueError as exc:  # aiohttp's parser: no boundary, a missing or malformed delimiter or header
        raise error(web.HTTPBadRequest, f"malformed multipart body: {exc}") from None
    raise error(web.HTTPBadRequest, "missing `photo` field")


def decode_photo(data: bytes, max_side: int = CHECK_MAX_SIDE) -> tuple[np.ndarray, int, int]:
    """The uploaded image as RGB, scaled to at most `max_side` pixels a side, with its full width and height; or a
    4xx naming the problem (not an image, over the pixel limit). Blocking: run it on the photo threads."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PHOTO_PIXELS:
                raise too_large(MAX_PHOTO_PIXELS, width * height,
                                f"image larger than {MAX_PHOTO_PIXELS} pixels ({width}x{height})")
            if image.format not in ("JPEG", "PNG", "WEBP"):
                raise error(web.HTTPUnsupportedMediaType, "photo must be JPEG, PNG or WebP")
            # Decoded and scaled down in place (a JPEG decodes at a reduced scale), then converted: no full-size
            # copy besides the decoded image itself.
            image.thumbnail((max_side, max_side))
            return np.asarray(image.convert("RGB")), width, height
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise error(web.HTTPUnsupportedMediaType, "photo is not a readable image") from None


def _decode_and_check(data: bytes) -> tuple[int, int, PrecheckResult]:
    rgb, width, height = decode_photo(data)
    return width, height, check_frame(rgb)


class PhotoChecks:
    """Decoding and checking uploaded photos, off the event loop: on threads of their own, at most `slots` at once
    in this process (a 4096x4096 PNG holds a core for half a second and ~150 MB while it decodes). A photo waits
    up to PHOTO_WAIT_S for a slot, then gets 503 with Retry-After."""

    def __init__(self, slots: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="photo")
        self.slots = asyncio.Semaphore(slots)

    async def check(self, data: bytes) -> tuple[int, int, PrecheckResult]:
        try:
            await asyncio.wait_for(self.slots.acquire(), PHOTO_WAIT_S)
        except TimeoutError:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "photo checks are busy; retry shortly"}), content_type="application/json",
                headers={"Retry-After": str(PHOTO_RETRY_AFTER_S)}) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, _decode_and_check, data)
        finally:
            self.slots.release()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


PHOTOS = web.AppKey("photo_checks", PhotoChecks)


async def _candidate_photo_session(request: web.Request) -> asyncpg.Record:
    """The candidate's open session, within its photo budget (PHOTOS_PER_MINUTE, both photo routes together)."""
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        row = await candidate_session(request, conn)
        require_open(row)
    await ratelimit.limit(ctx.redis, ratelimit.KEY.format(what="photo", whose=row["id"]), PHOTOS_PER_MINUTE,
                          "photos for this session")
    return row


async def _checked_photo(request: web.Request) -> tuple[bytes, int, int, PrecheckResult]:
    """The uploaded still, its width and height, and the one-face/enough-light check of it."""
    data = await _read_photo(request)
    width, height, result = await request.app[PHOTOS].check(data)
    return data, width, height, result


async def precheck(request: web.Request) -> web.Response:
    """Camera pre-check: is exactly one face visible, and is there enough light? Guidance when not."""
    await _candidate_photo_session(request)
    _, _, _, result = await _checked_photo(request)
    return web.json_response(result.to_json())


def _candidate_may_upload(row: asyncpg.Record, uploaded: int) -> None:
    """409 unless the candidate may still set the reference: before the exam starts, MAX_CANDIDATE_REFERENCES
    times at most. Once the session has gone live only staff replace it (the node compares against it)."""
    if row["started_at"] is not None or row["status"] != "created":
        raise error(web.HTTPConflict, "the exam has started: only a proctor can replace the reference photo now",
                    reason="exam_started")
    if uploaded >= MAX_CANDIDATE_REFERENCES:
        raise error(web.HTTPConflict, f"at most {MAX_CANDIDATE_REFERENCES} reference photos per session; "
                    "ask a proctor to replace it", reason="too_many_references")


async def _count_references(conn: asyncpg.Connection, session_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM reference_photos WHERE session_id = $1", session_id))


async def _store_photo(request: web.Request, session_id: str, data: bytes,
                       result: PrecheckResult) -> tuple[str, str]:
    """Store a reference photo that passed its check (422 with the check's guidance otherwise): (key, sha256)."""
    if not result.ok:
        raise error(web.HTTPUnprocessableEntity, result.message, precheck=result.to_json())
    digest = hashlib.sha256(data).hexdigest()
    key = f"sessions/{session_id}/reference/{digest[:32]}.img"
    await request.app[CTX].storage.put_bytes(key, data, content_type="image/jpeg")
    return key, digest


async def _insert_reference(conn: asyncpg.Connection, session_id: str, key: str, digest: str, data: bytes,
                            width: int, height: int, result: PrecheckResult) -> int:
    return int(await conn.fetchval(
        "INSERT INTO reference_photos (session_id, storage_key, content_type, width, height, bytes, sha256, "
        "faces) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        session_id, key, "image/jpeg", width, height, len(data), digest, result.faces))


async def upload_reference(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/reference (multipart, field `photo`): the identity reference the node compares the
    stream with. The candidate (join token) sets it before the exam starts, at most MAX_CANDIDATE_REFERENCES
    times; staff (login or API token) replace it at any time while the session is open, audited and marked on
    the session's timeline (a `reference_replaced` event). The node reads the newest at every (re)connect."""
    user = request.get(USER)
    if user is not None:
        return await _replace_reference(request, user)
    ctx = request.app[CTX]
    row = await _candidate_photo_session(request)
    session_id = str(row["id"])
    async with ctx.pool.acquire() as conn:
        _candidate_may_upload(row, await _count_references(conn, session_id))
    data, width, height, result = await _checked_photo(request)
    key, digest = await _store_photo(request, session_id, data, result)
    async with ctx.pool.acquire() as conn, conn.transaction():
        # The session row locked: the stream cannot go live (or another upload count) between check and insert.
        row = await conn.fetchrow("SELECT status, started_at FROM sessions WHERE id = $1 FOR UPDATE", session_id)
        if row is None:
            raise error(web.HTTPNotFound, "no such session")
        _candidate_may_upload(row, await _count_references(conn, session_id))
        photo_id = await _insert_reference(conn, session_id, key, digest, data, width, height, result)
    return web.json_response({"id": photo_id, "faces": result.faces, "brightness": result.brightness}, status=201)


async def _replace_reference(request: web.Request, user: User) -> web.Response:
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        require_open(await existing_session(conn, session_id))
    data, width, height, result = await _checked_photo(request)
    key, digest = await _store_photo(request, session_id, data, result)
    async with ctx.pool.acquire() as conn, conn.transaction():
        media_time = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1 FOR UPDATE", session_id)
        replaced = await conn.fetchval("SELECT id FROM reference_photos WHERE session_id = $1 "
                                       "ORDER BY created_at DESC, id DESC LIMIT 1", session_id)
        photo_id = await _insert_reference(conn, session_id, key, digest, data, width, height, result)
        at = float(media_time or 0.0)
        details: dict[str, Any] = {"by": user.name, "photo_id": photo_id, "replaced": replaced}
        event_id = await events.insert(conn, session_id, "reference_replaced", at, at, 1.0, details)
        await audit(conn, user.name, "reference.replace", f"session:{session_id}", {**details, "event_id": event_id})
    await live.publish_quietly(ctx.redis, EventAlert(
        session_id=session_id, action="start", event_id=event_id, kind="reference_replaced", start_s=at, end_s=at,
        confidence=1.0, message=f"reference photo replaced by {user.name}"))
    return web.json_response({"id": photo_id, "faces": result.faces, "brightness": result.brightness,
                              "event_id": event_id}, status=201)


async def take_break(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/break {"action": "start" | "end"} (join token): a break the candidate's
    accommodations allow (core.accommodations: up to N of M minutes). No flags during it, the recording goes on,
    and it is on the timeline (`exam_break`); it ends when the candidate comes back or after its minutes. 200
    {"event_id", "taken", "allowed", "minutes"}; 409 with `reason` when none is allowed or left
    (`no_breaks_left`), the exam is paused or already on a break (`held`), or the page is not connected."""
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        row = await candidate_session(request, conn)
        session_id = str(row["id"])
        taken = await events.count_kind(conn, session_id, "exam_break")
    body = await read_json(request, 1024)
    action = body.get("action")
    if action not in ("start", "end"):
        raise error(web.HTTPBadRequest, "action must be \"start\" or \"end\"")
    if row["status"] != "live":
        raise error(web.HTTPConflict, f"session is {row['status']}: breaks are taken during the exam",
                    status=row["status"])
    try:
        allowed = Accommodations.parse(row["accommodations"])
    except ValueError:
        raise error(web.HTTPConflict, "this session's accommodations cannot be read; ask a proctor") from None
    if action == "start" and taken >= allowed.breaks:
        raise error(web.HTTPConflict, "no breaks are allowed in this exam" if not allowed.breaks else
                    f"all {allowed.breaks} breaks have been taken", reason="no_breaks_left")
    payload: dict[str, Any] = {"action": f"break_{action}", "by": "candidate"}
    if action == "start":
        payload["minutes"] = allowed.break_minutes
    reply = await call_node(request.app, session_id, payload)
    if reply is None:
        raise error(web.HTTPConflict, "your page is not connected right now; wait for it to reconnect",
                    reason="not_connected")
    status, result = reply
    if status != 200:
        raise error(web.HTTPConflict if status == 409 else web.HTTPBadRequest,
                    str(result.get("error") or f"the media node answered {status}"), reason="held")
    taken += action == "start"
    async with ctx.pool.acquire() as conn:
        await audit(conn, "candidate", f"session.break.{action}", f"session:{session_id}",
                    {"event_id": result.get("event_id"), "taken": taken, "allowed": allowed.breaks})
    await live.publish_quietly(ctx.redis, Intervention(
        session_id=session_id, action="break", state="started" if action == "start" else "ended",
        event_id=result.get("event_id"), by="candidate", at_s=result.get("media_time_s")))
    return web.json_response({"event_id": result.get("event_id"), "taken": taken, "allowed": allowed.breaks,
                              "minutes": allowed.break_minutes})


async def _close_photo_checks(app: web.Application) -> None:
    app[PHOTOS].close()


def setup_routes(app: web.Application) -> None:
    app[PHOTOS] = PhotoChecks(PHOTO_SLOTS)
    app.on_cleanup.append(_close_photo_checks)
    app.router.add_get("/join/{token}", join_page)
    app.router.add_post("/api/sessions/{session_id}/precheck", precheck)
    app.router.add_post("/api/sessions/{session_id}/reference", upload_reference)
    app.router.add_post("/api/sessions/{session_id}/break", take_break)
