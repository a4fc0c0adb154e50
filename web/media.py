"""Playback and evidence for staff: the master video (HTTP Range from local storage, or a short-lived
presigned URL on S3/R2) and event snapshots. Every route needs a login or an API token."""

from __future__ import annotations

import base64

from aiohttp import web

from proctor.context import Context
from proctor.http import CTX, error, path_int, path_session_id, require_user
from proctor.redis import THUMBNAIL_KEY


async def master_video(request: web.Request) -> web.StreamResponse:
    require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval("SELECT storage_key FROM master_videos WHERE session_id = $1", session_id)
    if key is None:
        raise error(web.HTTPNotFound, "no master video yet")
    return await serve_video(ctx, key)


async def screen_video(request: web.Request) -> web.StreamResponse:
    """The shared screen's master (issue 18): on the same session timeline as the webcam's master, so the review
    page plays both with one clock. 404 when the session has none (no screen shared, or not finalized yet)."""
    require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval("SELECT storage_key FROM screen_masters WHERE session_id = $1", session_id)
    if key is None:
        raise error(web.HTTPNotFound, "no screen recording for this session")
    return await serve_video(ctx, key)


async def serve_video(ctx: Context, key: str) -> web.StreamResponse:
    """A stored WebM for the browser: a short-lived presigned URL on S3/R2, the file itself on local storage."""
    url = await ctx.storage.presigned_url(key, ctx.settings.presign_seconds)
    if url is not None:
        raise web.HTTPFound(url)
    path = ctx.storage.local_path(key)
    if path is None or not path.is_file():
        raise error(web.HTTPNotFound, "video missing from storage")
    # FileResponse answers Range requests (206), which the browser's <video> uses to seek.
    return web.FileResponse(path, headers={"Content-Type": "video/webm", "Cache-Control": "private, no-store"})


async def event_snapshot(request: web.Request) -> web.Response:
    require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    event_id = path_int(request, "event_id", "no such event")
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval("SELECT snapshot_key FROM events WHERE id = $1 AND session_id = $2", event_id,
                                  session_id)
    if key is None:
        raise error(web.HTTPNotFound, "no snapshot for this event")
    data = await ctx.storage.get_bytes(key)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


async def thumbnail(request: web.Request) -> web.Response:
    """The latest small frame of a live stream (the media node refreshes it every few seconds)."""
    require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    data = await ctx.redis.get(THUMBNAIL_KEY.format(session_id=session_id))
    if not data:
        raise error(web.HTTPNotFound, "no thumbnail: the stream is not live")
    return web.Response(body=base64.b64decode(data), content_type="image/jpeg",
                        headers={"Cache-Control": "private, no-store"})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{session_id}/thumbnail", thumbnail)
    app.router.add_get("/api/sessions/{session_id}/master", master_video)
    app.router.add_get("/api/sessions/{session_id}/screen", screen_video)
    app.router.add_get("/api/sessions/{session_id}/events/{event_id}/snapshot", event_snapshot)
