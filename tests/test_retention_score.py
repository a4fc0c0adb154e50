"""Retention deletes old sessions' video, snapshots and events (audit-logged); the suspicion score weighs
flags by kind and duration; the live thumbnail route."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from core.scoring import parse_weights
from lifecycle.retention import expire_sessions
from proctor.context import Context
from proctor.redis import THUMBNAIL_KEY
from proctor.store.sessions import refresh_score
from tests.support.servers import RunningApp


async def _session(ctx: Context, age_days: int, status: str = "finalized") -> str:
    async with ctx.pool.acquire() as conn:
        return str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, created_at) "
            "VALUES ('old', 'e', $1, 'n', now(), now() - make_interval(days => $2)) RETURNING id", status, age_days))


async def test_retention_deletes_expired_sessions_only(ctx: Context) -> None:
    old = await _session(ctx, ctx.settings.retention_days + 1)
    live_old = await _session(ctx, ctx.settings.retention_days + 1, status="live")
    recent = await _session(ctx, 1)
    for sid in (old, recent):
        await ctx.storage.put_bytes(f"sessions/{sid}/master.webm", b"video")
        await ctx.storage.put_bytes(f"sessions/{sid}/events/1-x.jpg", b"jpeg")
        async with ctx.pool.acquire() as conn:
            await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s) VALUES ($1, 'phone', 1, 2)", sid)
    expired = await expire_sessions(ctx)
    assert old in expired and recent not in expired and live_old not in expired
    assert await ctx.storage.list(f"sessions/{old}/") == []
    assert len(await ctx.storage.list(f"sessions/{recent}/")) == 2
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", old) == 0
        assert await conn.fetchval("SELECT count(*) FROM events WHERE session_id = $1", old) == 0
        assert await conn.fetchval("SELECT count(*) FROM events WHERE session_id = $1", recent) == 1
        audit = await conn.fetchrow("SELECT actor, details FROM audit_log WHERE action = 'session.delete' "
                                    "AND target = $1", f"session:{old}")
    assert audit["actor"] == "retention" and "older than" in audit["details"]["reason"]


async def test_score_weighs_kind_and_duration(ctx: Context) -> None:
    sid = await _session(ctx, 0, status="ended")
    weights = parse_weights("phone=8,window_blur=1")
    async with ctx.pool.acquire() as conn:
        await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s) VALUES "
                           "($1, 'phone', 10, 30), ($1, 'window_blur', 40, 40), ($1, 'odd_kind', 50, 55)", sid)
        # phone 8 * 20/10 = 16; blur (instant) 1 * 1/10 = 0.1; unknown kind weight 1 * 5/10 = 0.5
        assert await refresh_score(conn, sid, weights) == pytest.approx(16.6)
        await conn.execute("UPDATE events SET review_state = 'dismissed' WHERE session_id = $1 AND kind = 'phone'",
                           sid)
        assert await refresh_score(conn, sid, weights) == pytest.approx(0.6)
        await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s) VALUES ($1, 'phone', 0, 1000)", sid)
        assert await refresh_score(conn, sid, weights) == 100.0  # capped
        await conn.execute("DELETE FROM events WHERE session_id = $1", sid)
        # Merged copy/pastes: one second each, whatever the span (7 over 40 s: 2 * 7/10), not 2 * 40/10.
        await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s, details) VALUES "
                           "($1, 'copy_paste', 10, 50, '{\"count\": 7}'::jsonb)", sid)
        assert await refresh_score(conn, sid, weights) == pytest.approx(1.4)
    with pytest.raises(ValueError, match="kind=number"):
        parse_weights("phone")
    with pytest.raises(ValueError, match="negative"):
        parse_weights("phone=-1")


async def test_thumbnail_route(web_server: RunningApp, ctx: Context, admin_token: str) -> None:
    sid = await _session(ctx, 0, status="live")
    url = f"{web_server.url}/api/sessions/{sid}/thumbnail"
    auth = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401
        async with http.get(url, headers=auth) as response:
            assert response.status == 404
        await ctx.redis.set(THUMBNAIL_KEY.format(session_id=sid), base64.b64encode(b"\xff\xd8jpeg").decode(), ex=5)
        async with http.get(url, headers=auth) as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
            assert await response.read() == b"\xff\xd8jpeg"
