"""Keyboard-first review in real headless Chromium: a reviewer who never touches the mouse moves from flag to flag
(the video seeks exactly onto each), confirms and dismisses them and moves on, changes the playback speed, and
decides the case with a written rationale; shortcuts stay quiet while typing in a field; and every control on the
staff pages can be reached with Tab."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest

from proctor.context import Context
from proctor.store.sessions import refresh_score
from tests.support.accounts import browser_login
from tests.support.browser import have_chromium
from tests.support.keyboard import every_control_reachable
from tests.support.paths import ARTIFACTS
from tests.support.review import FPS, HEIGHT, WIDTH
from tests.support.servers import RunningApp
from tests.test_web_pages import ARM_SEEKED, READ_FRAME, _jpeg, _write_master

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="no chromium")]

RATIONALE = "Phone in view at 0:06 confirmed on video; the gaze flag was glare, dismissed."


@pytest.fixture(scope="module")
async def flagged(ctx: Context, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finalized session with a master video and three flags, none reviewed."""
    path = tmp_path_factory.mktemp("kbd") / "master.webm"
    duration = await asyncio.to_thread(_write_master, path)
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, "
            "duration_s) VALUES ($1, 'Keys 101', 'finalized', 'n', now(), now() - interval '1 minute', now(), $2) "
            "RETURNING id", f"Kim Keys {uuid.uuid4().hex[:4]}", duration))
        key = f"sessions/{sid}/master.webm"
        size = await ctx.storage.put_file(key, path, content_type="video/webm")
        await conn.execute(
            "INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s, width, height) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", sid, key, size, hashlib.sha256(path.read_bytes()).hexdigest(),
            duration, WIDTH, HEIGHT)
        flags = [("looking_away", 2.5, 4.0), ("phone", 6.2, 7.0), ("tab_hidden", 8.0, 8.5)]
        ids = []
        for kind, start, end in flags:
            event_id = await conn.fetchval(
                "INSERT INTO events (session_id, kind, start_s, end_s, confidence) VALUES ($1, $2, $3, $4, 0.9) "
                "RETURNING id", sid, kind, start, end)
            snap = f"sessions/{sid}/events/{event_id}.jpg"
            await ctx.storage.put_bytes(snap, _jpeg((200, 100, 0)), content_type="image/jpeg")
            await conn.execute("UPDATE events SET snapshot_key = $2 WHERE id = $1", event_id, snap)
            ids.append(event_id)
        await refresh_score(conn, sid, ctx.settings.weights)
    return {"id": sid, "events": ids, "starts": [f[1] for f in flags]}


async def _press_and_seek(page: Any, key: str) -> tuple[float, int]:
    """Press `key`, wait for the seek it causes, and read the frame index the video shows."""
    await page.evaluate(ARM_SEEKED)
    await page.keyboard.press(key)
    current = await page.evaluate("window.__seeked")
    return current, await page.evaluate(READ_FRAME)


def _assert_on(start: float, current: float, frame: int) -> None:
    shown = round(frame * 1000 / FPS) / 1000
    assert current == pytest.approx(start, abs=0.05)
    assert shown == pytest.approx(start, abs=0.05), f"frame #{frame} shown for a seek to {start}"


async def _focused(page: Any) -> str:
    return await page.evaluate("document.activeElement ? (document.activeElement.id || "
                               "document.activeElement.tagName) : ''")


async def _tab_to(page: Any, selector: str, *, limit: int = 80) -> None:
    for _ in range(limit):
        if await page.evaluate(f"!!document.activeElement && document.activeElement.matches({selector!r})"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


async def test_keyboard_only_review_and_case_decision(web_server: RunningApp, browser: Any,
                                                      staff_user: dict[str, Any], flagged: dict[str, Any],
                                                      ctx: Context) -> None:
    base, sid, ids, starts = web_server.url, flagged["id"], flagged["events"], flagged["starts"]
    context, page = await browser_login(browser, base, staff_user["name"])
    await page.goto(f"{base}/sessions/{sid}")
    await page.wait_for_function("window.review && window.review.masterLoaded && window.review.events.length === 3")
    # The shortcuts are on the page.
    shortcuts = await page.text_content("#shortcuts")
    for words in ("next flag", "previous flag", "confirm the current flag and move to the next",
                  "dismiss the current flag and move to the next", "playback speed"):
        assert words in shortcuts

    # J: the first flag, exactly.
    _assert_on(starts[0], *await _press_and_seek(page, "j"))
    assert await page.get_attribute(f'tr[data-event-id="{ids[0]}"]', "class") == "current"
    # C: confirm it, and the video lands on the next flag.
    _assert_on(starts[1], *await _press_and_seek(page, "c"))
    await page.wait_for_selector(f'tr[data-event-id="{ids[0]}"][data-review-state="confirmed"]')
    assert await page.get_attribute(f'tr[data-event-id="{ids[1]}"]', "class") == "current"
    # E: write a note (the shortcuts keep quiet meanwhile: "d" and "5" are text), Esc, D: dismiss and move on.
    await page.keyboard.press("e")
    assert await _focused(page) == "note"
    await page.keyboard.type("Glare, dismissed 5 times")
    assert await page.evaluate("document.getElementById('master').playbackRate") == 1
    assert await page.get_attribute(f'tr[data-event-id="{ids[1]}"]', "data-review-state") == "pending"
    await page.keyboard.press("Escape")
    assert await _focused(page) != "note"
    _assert_on(starts[2], *await _press_and_seek(page, "d"))
    await page.wait_for_selector(f'tr[data-event-id="{ids[1]}"][data-review-state="dismissed"]')
    # K: back to the flag before.
    _assert_on(starts[1], *await _press_and_seek(page, "k"))
    async with ctx.pool.acquire() as conn:
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM events WHERE session_id = $1", sid)}
    assert rows[ids[0]]["review_state"] == "confirmed" and rows[ids[2]]["review_state"] == "pending"
    assert rows[ids[1]]["review_state"] == "dismissed"
    assert rows[ids[1]]["review_note"] == "Glare, dismissed 5 times"
    assert rows[ids[1]]["reviewed_by"] == staff_user["id"]
    assert "needs review" in (await page.text_content(f'tr[data-event-id="{ids[2]}"]') or "")

    # Playback speed 1-10x from the keyboard.
    rate = "document.getElementById('master').playbackRate"
    for key, want in (("4", 4), ("]", 5), ("0", 10), ("]", 10), ("[", 9), ("1", 1), ("[", 1), ("9", 9)):
        await page.keyboard.press(key)
        assert await page.evaluate(rate) == want, key
        assert await page.input_value("#speed") == str(want)
    # Space plays (at 9x) and pauses.
    await page.keyboard.press(" ")
    await page.wait_for_function("!document.getElementById('master').paused")
    await page.keyboard.press(" ")
    await page.wait_for_function("document.getElementById('master').paused")
    await page.keyboard.press("1")

    # The case, by keyboard: R goes to the rationale; a decision without a choice or a reason is refused.
    assert await page.get_attribute("#case-status", "data-case") == "unreviewed"
    await page.keyboard.press("r")
    assert await _focused(page) == "rationale"
    await page.keyboard.press("Tab")
    assert await _focused(page) == "case-decide-btn"
    await page.keyboard.press("Enter")
    assert "Choose a decision" in (await page.text_content("#case-msg") or "")
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")  # into the decision radios
    assert await page.evaluate("document.activeElement.name") == "decision"
    await page.keyboard.press(" ")
    for _ in range(3):
        if await page.is_checked("#decision-concern"):
            break
        await page.keyboard.press("ArrowDown")
    assert await page.is_checked("#decision-concern")
    await _tab_to(page, "#case-decide-btn")
    await page.keyboard.press("Enter")
    assert "at least" in (await page.text_content("#case-msg") or "")  # no rationale yet: the field gets focus
    assert await _focused(page) == "rationale"
    await page.keyboard.type(RATIONALE)
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_selector('#case-status[data-case="concern_raised"]')
    assert await page.text_content("#case-badge") == "Concern raised"
    assert RATIONALE in (await page.text_content("#case-rationale") or "")
    assert "decision" in (await page.text_content("#case-history") or "")
    await page.screenshot(path=str(ARTIFACTS / "review-keyboard.png"), full_page=True)
    async with ctx.pool.acquire() as conn:
        case = await conn.fetchrow("SELECT * FROM cases WHERE session_id = $1", sid)
        audit = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'case.decide' AND target = $1 "
                                    "AND actor = $2", f"session:{sid}", staff_user["name"])
    assert case["status"] == "concern_raised" and case["rationale"] == RATIONALE
    assert case["decided_by"] == staff_user["id"] and audit == 1
    # An admin can reopen it from the page (the form shows for admins only).
    assert await page.is_visible("#case-reopen-btn")
    await context.close()


async def test_every_staff_control_is_reachable_by_keyboard(web_server: RunningApp, browser: Any,
                                                            staff_user: dict[str, Any],
                                                            flagged: dict[str, Any]) -> None:
    base = web_server.url
    context, page = await browser_login(browser, base, staff_user["name"])
    for path in ("/", "/queue", f"/sessions/{flagged['id']}", "/live", "/admin/users"):
        await page.goto(f"{base}{path}")
        if path.startswith("/sessions/"):
            await page.wait_for_function("window.review && window.review.events.length === 3")
        await page.keyboard.press("Tab")  # the first stop is the skip link
        assert await page.evaluate("document.activeElement.className") == "skip-link", path
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "main", path
        await page.evaluate("document.activeElement.blur()")
        await every_control_reachable(page)
    await context.close()
