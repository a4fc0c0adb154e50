"""Candidate pages: the join link opens the exam page (notice, consent, camera check, reference photo, stream)."""

from __future__ import annotations

import json

import aiohttp_jinja2
from aiohttp import web

from signaling import sessions, tokens
from web.app import CTX

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


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/join/{token}", join_page)
