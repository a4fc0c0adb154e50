"""Issue 16, cursor pagination: the staff sessions page (/) and GET /api/sessions page with an opaque, signed
keyset cursor. Walking every page of every sort yields each matching session exactly once, in the sort's order,
forwards and backwards; sessions created meanwhile do not shift a page; a tampered or foreign cursor is a 400."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from proctor.context import Context
from proctor.store import cases
from tests.support.accounts import logged_in, make_user
from tests.support.servers import RunningApp
from tests.support.sessions import create_session

PAGE_SORTS = ("newest", "score", "case")
COUNT = 23  # not a multiple of the page size: the last page is short


@pytest.fixture(scope="module")
async def listing(web_server: RunningApp, admin_token: str, ctx: Context) -> dict[str, Any]:
    """COUNT sessions under one exam tag, with ties on every key (same created_at, same score) so the id must
    break them, and cases in several states so the "case" sort has groups."""
    tag = f"pg{uuid.uuid4().hex[:10]}"
    ids = [(await create_session(web_server.url, admin_token, candidate=f"Cand {i}", exam=f"Exam {tag}"))["id"]
           for i in range(COUNT)]
    base = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    async with ctx.pool.acquire() as conn:
        admin_id = await conn.fetchval("SELECT id FROM users WHERE role = 'admin' ORDER BY id LIMIT 1")
        for i, sid in enumerate(ids):
            created = base + timedelta(minutes=i // 4)  # four sessions share each created_at
            status = ("created", "live", "ended", "finalized")[i % 4]
            await conn.execute("UPDATE sessions SET created_at = $2, score = $3, status = $4, "
                               "ended_at = CASE WHEN $4 IN ('ended', 'finalized') THEN now() END WHERE id = $1",
                               sid, created, float(i % 3) * 12.5, status)
            if status == "finalized" and i % 8 == 3:
                async with conn.transaction():
                    await cases.apply(conn, sid, cases.Change("start"), actor="t", actor_id=admin_id, is_admin=True)
            if status == "finalized" and i % 8 == 7:
                async with conn.transaction():
                    await cases.apply(conn, sid, cases.Change("decide", decision="cleared",
                                                              text="The flags were the allowed notes."),
                                      actor="t", actor_id=admin_id, is_admin=True)
    http = await logged_in(web_server.url, await make_user(ctx, "proctor"))
    try:
        yield {"tag": tag, "ids": set(ids), "http": http, "base": web_server.url, "token": admin_token}
    finally:
        await http.close()


def _ids(page: str) -> list[str]:
    return re.findall(r'<tr data-session-id="([^"]+)"', page)


def _link(page: str, which: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)" id="page-{which}"', page)
    return html.unescape(match.group(1)) if match else None


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def _walk_pages(listing: dict[str, Any], sort: str, size: int) -> tuple[list[str], list[str]]:
    """Every page forwards from the first, then backwards from the last: (ids forwards, ids backwards)."""
    http, base = listing["http"], listing["base"]
    url: str | None = f"/?q={listing['tag']}&sort={sort}&size={size}"
    forwards: list[str] = []
    last_url = ""
    pages = 0
    while url:
        status, page = await _get(http, base + url)
        assert status == 200, page
        ids = _ids(page)
        assert 0 < len(ids) <= size
        forwards += ids
        last_url, url = url, _link(page, "next")
        pages += 1
        assert pages <= COUNT, "the pages never end"
    assert pages == -(-COUNT // size)
    backwards: list[str] = []
    url = last_url
    while url:
        status, page = await _get(http, base + url)
        assert status == 200, page
        backwards = _ids(page) + backwards
        url = _link(page, "prev")
    return forwards, backwards


@pytest.mark.parametrize("sort", PAGE_SORTS)
async def test_every_sort_of_the_page_walks_each_session_exactly_once(listing: dict[str, Any], sort: str) -> None:
    status, whole = await _get(listing["http"], f"{listing['base']}/?q={listing['tag']}&sort={sort}&size=200")
    assert status == 200
    expected = _ids(whole)
    assert set(expected) == listing["ids"] and len(expected) == COUNT
    assert _link(whole, "next") is None and _link(whole, "prev") is None
    for size in (4, 5):
        forwards, backwards = await _walk_pages(listing, sort, size)
        assert forwards == expected, f"{sort} size {size}: pages skipped, repeated or reordered a session"
        assert backwards == expected, f"{sort} size {size}: previous pages do not give the same sessions back"


async def test_case_sort_puts_sessions_needing_a_decision_first(listing: dict[str, Any]) -> None:
    status, whole = await _get(listing["http"], f"{listing['base']}/?q={listing['tag']}&sort=case&size=200")
    assert status == 200
    states = re.findall(r'<tr data-session-id="[^"]+" data-status="[^"]+" data-case="([^"]*)"', whole)
    order = [cases.STATUSES.index(s) if s else len(cases.STATUSES) for s in states]
    assert order == sorted(order) and "cleared" in states and "in_review" in states and "" in states


async def test_filters_page_too(listing: dict[str, Any], ctx: Context) -> None:
    http, base, tag = listing["http"], listing["base"], listing["tag"]
    url: str | None = f"/?q={tag}&status=ended&size=2"
    seen: list[str] = []
    while url:
        status, page = await _get(http, base + url)
        assert status == 200
        seen += _ids(page)
        url = _link(page, "next")
    async with ctx.pool.acquire() as conn:
        ended = {str(r["id"]) for r in await conn.fetch(
            "SELECT id FROM sessions WHERE exam = $1 AND status = 'ended'", f"Exam {tag}")}
    assert sorted(seen) == sorted(ended) and len(seen) == len(set(seen))


async def test_new_sessions_do_not_shift_the_next_page(listing: dict[str, Any], ctx: Context) -> None:
    http, base, tag = listing["http"], listing["base"], listing["tag"]
    status, whole = await _get(http, f"{base}/?q={tag}&size=200")
    expected = _ids(whole)
    status, first = await _get(http, f"{base}/?q={tag}&size=5")
    assert _ids(first) == expected[:5]
    # Sessions created now sort first (newest): an OFFSET page 2 would repeat the end of page 1.
    extra = [(await create_session(base, listing["token"], candidate="Late", exam=f"Exam {tag}"))["id"]
             for _ in range(3)]
    try:
        status, second = await _get(http, base + (_link(first, "next") or ""))
        assert status == 200 and _ids(second) == expected[5:10]
        # ... and going back from page 2 shows the newer rows before page 1's: nothing is lost.
        status, back = await _get(http, base + (_link(second, "prev") or ""))
        assert _ids(back) == expected[:5]
        assert _link(back, "prev") is not None  # the three new sessions are one page further back
    finally:
        async with ctx.pool.acquire() as conn:
            await conn.execute("DELETE FROM sessions WHERE id = ANY($1::uuid[])", extra)


async def test_bad_cursors_and_sizes_are_400(listing: dict[str, Any]) -> None:
    http, base, tag = listing["http"], listing["base"], listing["tag"]
    status, first = await _get(http, f"{base}/?q={tag}&size=4")
    next_url = _link(first, "next")
    assert next_url
    cursor = re.search(r"cursor=([^&]+)", next_url).group(1)  # type: ignore[union-attr]
    body, sig = cursor.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (f"{flipped}.{sig}", f"{body}.{sig[:-1]}x", "garbage", "a.b.c", "%00", "x" * 5000, "é.é"):
        status, text = await _get(http, f"{base}/?q={tag}&size=4&cursor={bad}")
        assert status == 400, (bad, status, text)
        assert "cursor" in text
    # A cursor of one sort is refused by another, with the reason.
    status, text = await _get(http, f"{base}/?q={tag}&size=4&sort=score&cursor={cursor}")
    assert status == 400 and "sort" in text
    for size in ("0", "-1", "abc", "201", "9" * 30, "1e3"):
        status, text = await _get(http, f"{base}/?q={tag}&size={size}")
        assert status == 400 and "size" in text, (size, status, text)


async def _api_walk(listing: dict[str, Any], query: str, limit: int) -> list[str]:
    headers = {"Authorization": f"Bearer {listing['token']}"}
    url: str | None = f"{listing['base']}/api/sessions?q={listing['tag']}&limit={limit}{query}"
    seen: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        while url:
            async with http.get(url) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
                assert isinstance(page, list) and len(page) <= limit
                seen += [s["id"] for s in page]
                nxt = response.links.get("next")
                url = str(nxt["url"]) if nxt else None
                assert (nxt is None) == ("X-Next-Cursor" not in response.headers)
    return seen


@pytest.mark.parametrize("sort", ["newest", "score"])
async def test_api_pages_with_a_cursor(listing: dict[str, Any], sort: str) -> None:
    whole = await _api_walk(listing, f"&sort={sort}", 500)
    assert set(whole) == listing["ids"] and len(whole) == COUNT
    assert await _api_walk(listing, f"&sort={sort}", 4) == whole
    # A filter travels with the cursor (the Link keeps the query).
    ended = await _api_walk(listing, f"&sort={sort}&status=finalized", 2)
    assert len(ended) == len(set(ended)) == len([i for i in range(COUNT) if i % 4 == 3])


async def test_api_refuses_bad_cursors(listing: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {listing['token']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{listing['base']}/api/sessions?q={listing['tag']}&limit=3") as response:
            cursor = response.headers["X-Next-Cursor"]
        for bad, reason in ((cursor[:-3] + "abc", "cursor"), ("not-a-cursor", "cursor"), ("x" * 3000, "cursor")):
            async with http.get(f"{listing['base']}/api/sessions", params={"cursor": bad}) as response:
                assert response.status == 400
                assert reason in (await response.json())["error"]
        async with http.get(f"{listing['base']}/api/sessions", params={"cursor": cursor, "sort": "score"}) as response:
            assert response.status == 400 and "sort" in (await response.json())["error"]
        async with http.get(f"{listing['base']}/api/sessions", params={"sort": "bogus"}) as response:
            assert response.status == 400 and "sort" in (await response.json())["error"]


def test_a_signed_cursor_with_wrong_values_is_still_refused() -> None:
    """Defence in depth: even a correctly signed cursor (a leaked key, a future bug) must not feed SQL a value of
    the wrong type; each is a CursorError (400), never a 500 from the database."""
    import base64
    import hashlib
    import hmac
    import json

    from core import pagination
    from web.staff import SORTS

    secret = b"s" * 32
    order = SORTS["score"]

    def signed(payload: object) -> str:
        raw = json.dumps(payload).encode()
        key = hmac.new(secret, b"proctor list cursor v1", hashlib.sha256).digest()
        b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
        return b64(raw) + "." + b64(hmac.new(key, raw, hashlib.sha256).digest()[:16])

    good = ["next", [1.5, "2026-01-05T09:00:00+00:00", str(uuid.uuid4())]]
    assert pagination.decode(secret, order, signed({"s": "score", "d": good[0], "k": good[1]})).values[0] == 1.5
    for d, k in [("next", [float("nan"), *good[1][1:]]), ("next", [True, *good[1][1:]]),
                 ("next", [1.5, "2026-01-05T09:00:00", good[1][2]]), ("next", [1.5, "yesterday", good[1][2]]),
                 ("next", [1.5, good[1][1], "not-a-uuid"]), ("next", good[1][:2]), ("sideways", good[1]),
                 ("next", "abc"), ("next", [1.5, 7, good[1][2]]), ("next", [10**400, *good[1][1:]])]:
        with pytest.raises(pagination.CursorError):
            pagination.decode(secret, order, signed({"s": "score", "d": d, "k": k}))
    for payload in ([], "x", {"s": "score"}, {"d": "next", "k": good[1]}, None):
        with pytest.raises(pagination.CursorError):
            pagination.decode(secret, order, signed(payload))
    with pytest.raises(pagination.CursorError, match="sort"):
        pagination.decode(secret, order, signed({"s": "newest", "d": "next", "k": good[1]}))
