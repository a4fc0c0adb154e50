"""Candidate pages: the join link opens the exam page (notice, consent, camera check, reference photo, stream),
and the page's photo calls: the camera pre-check and the reference photo (both checked by analyzers.precheck:
one face, enough light). The rest of the candidate's API (consent, state, offer, end) is signaling's."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json

import aiohttp_jinja2
import asyncpg
import numpy as np
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from analyzers.precheck import PrecheckResult, check_frame
from core import tokens
from proctor.http import CTX, error, too_large
from proctor.store import sessions
from signaling.api import candidate_session, require_open

MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096

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
        "iceServers": list(settings.ice_servers),
        "segmentSeconds": settings.segment_seconds,
        "retentionDays": settings.retention_days,
    }
    response = aiohttp_jinja2.render_template("join.html", request, {
        "session": row, "config_json": json.dumps(config), "retention_days": settings.retention_days})
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


def decode_photo(data: bytes) -> np.ndarray:
    """An RGB ndarray of the uploaded image, or a 4xx naming the problem (not an image, too large)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise error(web.HTTPRequestEntityTooLarge, f"image larger than {MAX_PHOTO_PIXELS} pixels")
            if image.format not in ("JPEG", "PNG", "WEBP"):
                raise error(web.HTTPUnsupportedMediaType, "photo must be JPEG, PNG or WebP")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise error(web.HTTPUnsupportedMediaType, "photo is not a readable image") from None


async def _checked_photo(request: web.Request) -> tuple[asyncpg.Record, bytes, np.ndarray, PrecheckResult]:
    """The candidate's session, the uploaded still, its pixels, and the one-face/enough-light check of it."""
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        row = await candidate_session(request, conn)
        require_open(row)
    data = await _read_photo(request)
    rgb = decode_photo(data)
    result = await asyncio.get_running_loop().run_in_executor(None, check_frame, rgb)
    return row, data, rgb, result


async def precheck(request: web.Request) -> web.Response:
    """Camera pre-check: is exactly one face visible, and is there enough light? Guidance when not."""
    _, _, _, result = await _checked_photo(request)
    return web.json_response(result.to_json())


async def upload_reference(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
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


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/join/{token}", join_page)
    app.router.add_post("/api/sessions/{session_id}/precheck", precheck)
    app.router.add_post("/api/sessions/{session_id}/reference", upload_reference)
