"""Review API over HTTP with a browser login (cookie + CSRF): the suspicion score follows review decisions, the
sessions list sorts by it, only admins may delete, and the preview lists stored batches and segments in order."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from proctor.context import Context
from proctor.store.sessions import refresh_score
from tests.support.accounts import logged_in, make_user, page_csrf
from tests.support.servers import RunningApp


async def _session(ctx: Context, candidate: str, status: str = "ended") -> str:
    async with ctx.pool.acquire() as conn:
        return str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
            "VALUES ($1, 'Scores 1', $2, 'n', now()) RETURNING id", candidate, status))


async def _page(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200, url
        return await response.text()


def _header_score(html: str) -> tuple[str, str]:
    match = re.search(r'id="session-score" data-level="(\w+)".*?id="session-score-value">([\d.]+)<', html, re.S)
    assert match, html
    return match.group(1), match.group(2)


async def test_score_follows_review(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    sid = await _session(ctx, "Sam Score")
    weights = ctx.settings.weights
    flags = [("phone", 0.0, 30.0), ("no_face", 40.0, 50.0), ("identity_mismatch", 60.0, 80.0)]
    async with ctx.pool.acquire() as conn:
        ids = [await conn.fetchval("INSERT INTO events (session_id, kind, start_s, end_s) VALUES ($1, $2, $3, $4) "
                                   "RETURNING id", sid, kind, start, end) for kind, start, end in flags]
        # The analyzers refresh the score as flags end: points per 10 s of each flag, by kind.
        score = await refresh_score(conn, sid, weights)
    expected = [min(100.0, sum(weights[k] * (e - s) / 10 for k, s, e in flags[:n] + flags[n + 1:])) for n in
                range(3)]
    full = min(100.0, sum(weights[k] * (e - s) / 10 for k, s, e in flags))
    assert score == full == 47.0  # 8*30/10 + 3*10/10 + 10*20/10 with the default weights

    http = await logged_in(base, await make_user(ctx, "proctor"))
    try:
        html = await _page(http, f"{base}/sessions/{sid}")
        assert _header_score(html) == ("high", "47.0")
        csrf = page_csrf(html)
        # Dismiss the identity mismatch: it drops out of the score.
        async with http.post(f"{base}/api/sessions/{sid}/events/{ids[2]}/review", json={"state": "dismissed"},
                             headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200
            body = await response.json()
        assert body["review_state"] == "dismissed" and body["session_score"] == expected[2] == 27.0
        async with ctx.pool.acquire() as conn:
            assert await conn.fetchval("SELECT score FROM sessions WHERE id = $1", sid) == 27.0
        assert _header_score(await _page(http, f"{base}/sessions/{sid}")) == ("mid", "27.0")
        async with http.get(f"{base}/api/sessions/{sid}") as response:
            assert (await response.json())["score"] == 27.0
        # Confirming a flag keeps it in; resetting the dismissed one brings it back.
        for event_id, state, want in ((ids[0], "confirmed", 27.0), (ids[2], "pending", 47.0)):
            async with http.post(f"{base}/api/sessions/{sid}/events/{event_id}/review", json={"state": state},
                                 headers={"X-CSRF-Token": csrf}) as response:
                assert (await response.json())["session_score"] == want

        # The sessions list shows the score, coloured, and sorts by it on request (default: newest first).
        low = await _session(ctx, "Lou Low")
        async with ctx.pool.acquire() as conn:
            await conn.execute("UPDATE sessions SET score = 9.96 WHERE id = $1", low)  # shows 10.0: amber
        rows = _list_rows(await _page(http, f"{base}/?sort=score"))
        scores = [float(score) for _, score, _ in rows]
        assert scores == sorted(scores, reverse=True)
        assert (sid, "47.0", "high") in rows and (low, "10.0", "mid") in rows
        newest = _list_rows(await _page(http, f"{base}/"))
        assert [r[0] for r in newest].index(low) < [r[0] for r in newest].index(sid)
        assert _list_rows(await _page(http, f"{base}/?sort=bogus")) == newest
        html = await _page(http, f"{base}/?status=ended&flagged=1&sort=score")
        assert 'href="/?status=ended&amp;flagged=1"' in html  # the "Created" header keeps the filters
    finally:
        await http.close()


def _list_rows(html: str) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in re.finditer(
        r'<tr data-session-id="([^"]+)"[^>]*data-score="([\d.]+)">.*?class="score" data-level="(\w+)"', html, re.S)]


async def test_only_admins_delete(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    sid = await _session(ctx, "Pete Protected")
    proctor = await logged_in(base, await make_user(ctx, "proctor"))
    admin = await logged_in(base, await make_user(ctx, "admin"))
    try:
        html = await _page(proctor, f"{base}/sessions/{sid}")
        assert 'id="delete-btn"' not in html and '"canDelete": false' in html
        async with proctor.delete(f"{base}/api/sessions/{sid}", headers={"X-CSRF-Token": page_csrf(html)}) as resp:
            assert resp.status == 403
        html = await _page(admin, f"{base}/sessions/{sid}")
        assert 'id="delete-btn"' in html
        async with admin.delete(f"{base}/api/sessions/{sid}") as resp:
            assert resp.status == 403  # a cookie caller without the CSRF token
        async with ctx.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid) == 1
        async with admin.delete(f"{base}/api/sessions/{sid}", headers={"X-CSRF-Token": page_csrf(html)}) as resp:
            assert resp.status == 200 and (await resp.json())["deleted"] is True
    finally:
        await proctor.close()
        await admin.close()


async def test_preview_lists_batches_and_segments(web_server: RunningApp, ctx: Context, admin_token: str) -> None:
    """Segments merged into a batch during the exam play from the batch; spooled or merged ones are not served."""
    base = web_server.url
    sid = await _session(ctx, "Bea Batch", status="live")
    pieces: dict[str, bytes] = {}
    async with ctx.pool.acquire() as conn:
        for idx, state in enumerate(("merged", "merged", "stored", "spooled")):
            key = f"sessions/{sid}/segments/{idx:06d}.webm" if state != "spooled" else None
            await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s, storage_key, state) "
                               "VALUES ($1, $2, $3, $4, $5, $6)", sid, idx, idx * 2.0, idx * 2.0 + 2.0, key, state)
            if state == "stored":
                pieces[key] = b"segment 2"
        batch_key = f"sessions/{sid}/batches/000000-000001.webm"
        pieces[batch_key] = b"batch 0-1"
        await conn.execute("INSERT INTO batches (session_id, first_idx, last_idx, start_s, end_s, bytes, sha256, "
                           "storage_key) VALUES ($1, 0, 1, 0.0, 4.0, 9, 'x', $2)", sid, batch_key)
    for key, data in pieces.items():
        await ctx.storage.put_bytes(key, data, content_type="video/webm")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
        async with http.get(f"{base}/api/sessions/{sid}/preview") as response:
            preview: dict[str, Any] = await response.json()
        assert preview["master"] is False and preview["status"] == "live"
        assert [(p["kind"], p["idx"], p["start_s"], p["end_s"], p["segments"]) for p in preview["pieces"]] == [
            ("batch", 0, 0.0, 4.0, 2), ("segment", 2, 4.0, 6.0, 1)]
        for piece, want in zip(preview["pieces"], (b"batch 0-1", b"segment 2"), strict=True):
            async with http.get(base + piece["url"]) as response:
                assert response.status == 200 and response.content_type == "video/webm"
                assert await response.read() == want
        for path in ("segments/0", "segments/3", "segments/9", "batches/2", "segments/-1"):
            async with http.get(f"{base}/api/sessions/{sid}/{path}") as response:
                assert response.status == 404, path
