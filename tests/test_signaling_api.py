"""The REST contract and signaling under bad input: clear 4xx, never a 500, and a media node that survives."""

from __future__ import annotations

import io
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from core import tokens
from media_server.node import MediaNode
from proctor.context import Context
from proctor.nodeauth import NodeClient
from proctor.redis import OFFER_LOCK
from tests.support.media import face_canvas
from tests.support.servers import RunningApp

# Has what signaling checks before relaying (ICE credentials, a DTLS fingerprint); aiortc on the node refuses it.
VALID_LOOKING_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                     "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
                     "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n")


def _jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue()


async def _call(method: str, url: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http, http.request(method, url, **kwargs) as response:
        text = await response.text()
        try:
            import json

            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


@pytest.fixture
async def session(web_server: RunningApp, admin_token: str) -> dict:
    status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token,
                               json={"candidate": "Grace Hopper", "exam": "Compilers"})
    assert status == 201, body
    body["token"] = body["join_url"].rsplit("/", 1)[1]
    return body


async def test_staff_routes_need_login(web_server: RunningApp, session: dict) -> None:
    base = web_server.url
    sid = session["id"]
    for method, path in [("POST", "/api/sessions"), ("GET", "/api/sessions"), ("GET", f"/api/sessions/{sid}"),
                         ("GET", f"/api/sessions/{sid}/events"), ("DELETE", f"/api/sessions/{sid}")]:
        status, body = await _call(method, base + path, json={})
        assert status == 401, (method, path, status)
        assert "error" in body
    status, _ = await _call("GET", f"{base}/api/sessions", "pt_not-a-real-token")
    assert status == 401
    # A candidate's join token is not a staff credential.
    status, _ = await _call("GET", f"{base}/api/sessions/{sid}", session["token"])
    assert status == 401


async def test_create_and_read_sessions(web_server: RunningApp, admin_token: str, proctor_token: str,
                                        session: dict) -> None:
    base = web_server.url
    assert session["status"] == "created"
    status, body = await _call("GET", f"{base}/api/sessions/{session['id']}", proctor_token)
    assert status == 200
    assert {"id", "status", "started_at", "ended_at", "duration_s", "master_video_url", "segments",
            "events"} <= set(body)
    status, listing = await _call("GET", f"{base}/api/sessions?q=hopper&status=created", proctor_token)
    assert status == 200 and any(s["id"] == session["id"] for s in listing)
    status, events = await _call("GET", f"{base}/api/sessions/{session['id']}/events", proctor_token)
    assert status == 200 and events == []
    status, body = await _call("POST", f"{base}/api/sessions", proctor_token, json={"candidate": "x", "exam": "y"})
    assert status == 201  # proctors create sessions too


@pytest.mark.parametrize("payload", [
    b"not json", b"[1, 2]", b'{"candidate": "", "exam": "x"}', b'{"candidate": 5, "exam": "x"}',
    b'{"exam": "x"}', ('{"candidate": "%s", "exam": "x"}' % ("a" * 500)).encode(),
])
async def test_create_session_bad_bodies(web_server: RunningApp, admin_token: str, payload: bytes) -> None:
    status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token, data=payload)
    assert status == 400 and body["error"]


async def test_oversized_body_and_bad_ids(web_server: RunningApp, admin_token: str) -> None:
    base = web_server.url
    status, _ = await _call("POST", f"{base}/api/sessions", admin_token, data=b"{" + b" " * 100_000 + b"}")
    assert status == 413
    for bad in ["not-a-uuid", "..%2F..%2Fetc", "00000000-0000-0000-0000-000000000000"]:
        status, body = await _call("GET", f"{base}/api/sessions/{bad}", admin_token)
        assert status == 404 and body["error"] == "no such session"
    status, _ = await _call("GET", f"{base}/api/sessions?status=bogus", admin_token)
    assert status == 400
    status, _ = await _call("GET", f"{base}/api/sessions?limit=abc", admin_token)
    assert status == 400


async def test_join_tokens(web_server: RunningApp, ctx: Context, session: dict, admin_token: str) -> None:
    base, sid = web_server.url, session["id"]
    key = ctx.settings.signing_key()
    offer = {"sdp": VALID_LOOKING_SDP, "type": "offer"}
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", None, json=offer)
    assert status == 401 and "join token required" in body["error"]
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", "garbage.token", json=offer)
    assert status == 401
    async with ctx.pool.acquire() as conn:
        nonce = await conn.fetchval("SELECT join_nonce FROM sessions WHERE id = $1", sid)
    expired = tokens.issue(key, sid, nonce, time.time() - 5)
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", expired, json=offer)
    assert status == 401 and "expired" in body["error"]
    status, other = await _call("POST", f"{base}/api/sessions", admin_token, json={"candidate": "o", "exam": "o"})
    other_token = other["join_url"].rsplit("/", 1)[1]
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", other_token, json=offer)
    assert status == 403 and "another session" in body["error"]
    # Rotating the nonce revokes every link issued before.
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET join_nonce = 'rotated' WHERE id = $1", sid)
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", session["token"], json=offer)
    assert status == 401 and "revoked" in body["error"]
    # The join page says so too, as a page.
    status, text = await _call("GET", f"{base}/join/{session['token']}")
    assert status == 401 and "cannot be used" in text
    status, text = await _call("GET", f"{base}/join/{other_token}")
    assert status == 200 and '"sessionId"' in text


async def test_bad_offers_get_4xx_and_the_node_survives(web_server: RunningApp, media_node: MediaNode,
                                                         ctx: Context, session: dict) -> None:
    url = f"{web_server.url}/api/sessions/{session['id']}/offer"
    token = session["token"]
    cases = [
        ({"sdp": "hello", "type": "offer"}, 400),
        ({"sdp": VALID_LOOKING_SDP, "type": "answer"}, 400),
        ({"sdp": 12, "type": "offer"}, 400),
        ({"type": "offer"}, 400),
        ({"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n", "type": "offer"}, 400),  # no video
        ({"sdp": VALID_LOOKING_SDP + "a=x\r\n" * 20000, "type": "offer"}, 413),
        # Looks like SDP, reaches the node, which refuses it cleanly.
        ({"sdp": VALID_LOOKING_SDP, "type": "offer"}, 400),
        ({"sdp": VALID_LOOKING_SDP + "a=fingerprint:sha-256 zz\r\na=setup:bogus\r\n", "type": "offer"}, 400),
    ]
    for payload, expected in cases:
        status, body = await _call("POST", url, token, json=payload)
        assert status == expected, (payload.get("sdp", "")[:40], status, body)
        assert "error" in body
    status, body = await _call("POST", url, token, data=b"{not json")
    assert status == 400
    # The node is alive and still advertises itself.
    async with aiohttp.ClientSession() as http:  # signed: the node's API refuses anything else
        assert (await NodeClient.for_settings(media_node.settings, http).stats(media_node.url))["node_id"]
    assert await ctx.redis.exists(f"proctor:node:{media_node.node_id}")
    assert session["id"] not in media_node.streams


async def test_second_simultaneous_offer_is_refused(web_server: RunningApp, ctx: Context, session: dict) -> None:
    # An offer being answered holds the session's offer lock; a second one meanwhile gets 409.
    await ctx.redis.set(OFFER_LOCK.format(session_id=session["id"]), "1", ex=5)
    status, body = await _call("POST", f"{web_server.url}/api/sessions/{session['id']}/offer", session["token"],
                               json={"sdp": VALID_LOOKING_SDP, "type": "offer"})
    assert status == 409 and "another offer" in body["error"]
    await ctx.redis.delete(OFFER_LOCK.format(session_id=session["id"]))


async def test_end_is_idempotent_and_closes_the_door(web_server: RunningApp, ctx: Context, session: dict,
                                                      admin_token: str) -> None:
    base, sid = web_server.url, session["id"]
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/end", session["token"])
    assert status == 202 and body["status"] == "ended" and body["end_reason"] == "finished by candidate"
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/end", admin_token)
    assert status == 202 and body["end_reason"] == "finished by candidate"  # unchanged
    status, body = await _call("POST", f"{base}/api/sessions/{sid}/offer", session["token"],
                               json={"sdp": VALID_LOOKING_SDP, "type": "offer"})
    assert status == 409 and body["status"] == "ended"
    async with ctx.pool.acquire() as conn:
        audit = await conn.fetch("SELECT actor, action FROM audit_log WHERE target = $1", f"session:{sid}")
    assert [(a["actor"], a["action"]) for a in audit if a["action"] == "session.end"] == [("candidate",
                                                                                          "session.end")]


async def test_reference_photo_checks(web_server: RunningApp, ctx: Context, session: dict) -> None:
    url = f"{web_server.url}/api/sessions/{session['id']}/reference"
    token = session["token"]

    def form(data: bytes) -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("photo", data, filename="p.jpg", content_type="image/jpeg")
        return f

    status, body = await _call("POST", url, token, json={"photo": "x"})
    assert status == 415
    status, body = await _call("POST", url, token, data=form(b"this is not an image"))
    assert status == 415 and "not a readable image" in body["error"]
    status, body = await _call("POST", url, token, data=form(b"\xff\xd8" + b"\0" * (9 * 1024 * 1024)))
    assert status == 413
    empty = np.full((480, 640, 3), 128, np.uint8)
    status, body = await _call("POST", url, token, data=form(_jpeg(empty)))
    assert status == 422 and "No face" in body["error"]
    status, body = await _call("POST", url, token, data=form(_jpeg(face_canvas())))
    assert status == 201 and body["faces"] == 1
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval("SELECT storage_key FROM reference_photos WHERE id = $1", body["id"])
    assert await ctx.storage.exists(key)


async def test_delete_session(web_server: RunningApp, ctx: Context, session: dict, admin_token: str,
                              proctor_token: str) -> None:
    base, sid = web_server.url, session["id"]
    await ctx.storage.put_bytes(f"sessions/{sid}/segments/000000.webm", b"video")
    status, _ = await _call("DELETE", f"{base}/api/sessions/{sid}", proctor_token)
    assert status == 403
    status, body = await _call("DELETE", f"{base}/api/sessions/{sid}", admin_token)
    assert status == 200 and body["deleted"]
    assert await ctx.storage.list(f"sessions/{sid}/") == []
    status, _ = await _call("GET", f"{base}/api/sessions/{sid}", admin_token)
    assert status == 404
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'session.delete' AND target = $1",
                                   f"session:{sid}") == 1


async def test_offers_are_rate_limited(web_server: RunningApp, session: dict) -> None:
    url = f"{web_server.url}/api/sessions/{session['id']}/offer"
    statuses = []
    for _ in range(32):
        status, _ = await _call("POST", url, session["token"], json={"sdp": "bad", "type": "offer"})
        statuses.append(status)
    assert statuses[:30] == [400] * 30 and statuses[30:] == [429, 429]


async def test_join_page_has_a_content_security_policy(web_server: RunningApp, session: dict) -> None:
    async with aiohttp.ClientSession() as http, http.get(session["join_url"]) as response:
        assert response.status == 200
        csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
