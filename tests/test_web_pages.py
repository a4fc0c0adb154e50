"""Staff pages in real headless Chromium: login, sessions list, review with exact seeking (master, and the
segment-by-segment preview before the master exists), delete, live monitor with thumbnails.

The review tests need no candidate: they write WebM files (VP8 copy-muxed by archiver.webm.WebmWriter) whose
every frame shows its own index on the session timeline as 9 black/white blocks, so the page can read which
frame is on screen after a seek and the test measures the click-to-frame error, not just video.currentTime.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proctor.context import Context
from proctor.redis import LIVE_CHANNEL, THUMBNAIL_KEY
from proctor.store.sessions import refresh_score
from tests.support.accounts import PASSWORD, browser_login
from tests.support.browser import have_chromium
from tests.support.paths import ARTIFACTS
from tests.support.review import FPS, HEIGHT, WIDTH
from tests.support.servers import RunningApp
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]

SECONDS = 10
BITS = 9


def _coded_frames(first: int = 0, count: int = FPS * SECONDS) -> list[np.ndarray]:
    frames = []
    for i in range(first, first + count):
        frame = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
        frame[20:60, :, 1] = (i * 5) % 255  # some change between frames, as a real camera has
        for b in range(BITS):
            x = 8 + b * 34
            frame[100:160, x:x + 28] = 255 if (i >> b) & 1 else 0
        frames.append(frame)
    return frames


# Reads the frame index shown by the <video> (mean of a 10x10 patch at each block's centre).
READ_FRAME = """() => {
  const v = document.getElementById('master');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  let n = 0;
  for (let b = 0; b < BITS; b++) {
    const d = g.getImageData(8 + b * 34 + 9, 125, 10, 10).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum += d[i];
    if (sum / (d.length / 4) > 128) n |= 1 << b;
  }
  return n;
}""".replace("BITS", str(BITS))

ARM_SEEKED = """() => {
  const v = document.getElementById('master');
  window.__seeked = new Promise((resolve) => v.addEventListener('seeked', () => resolve(v.currentTime), {once: true}));
}"""


def _write_webm(path: Path, first: int = 0, count: int = FPS * SECONDS) -> float:
    """Frames first..first+count-1 of the session as one WebM whose own time starts at 0 (as segments are)."""
    from archiver.webm import WebmWriter
    from bench.synthetic import encode_clip

    clip = encode_clip(_coded_frames(first, count), fps=FPS, bitrate=800_000, gop=60)
    assert len(clip.video) == count
    with WebmWriter(path, WIDTH, HEIGHT, with_audio=False) as writer:
        for i, (data, keyframe) in enumerate(clip.video):
            pts, end = round(i * 1000 / FPS), round((i + 1) * 1000 / FPS)
            writer.write_video(data, pts, end - pts, keyframe)
    return writer.duration_ms / 1000


def _write_master(path: Path) -> float:
    return _write_webm(path)


def _jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (160, 120), color).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
async def finalized(ctx: Context, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finalized session made without any candidate: master in storage, rows in Postgres."""
    path = tmp_path_factory.mktemp("master") / "master.webm"
    duration = await asyncio.to_thread(_write_master, path)
    candidate = f"Grace Review {uuid.uuid4().hex[:4]}"
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, "
            "duration_s) VALUES ($1, 'Seeking 201', 'finalized', 'n', now(), now() - interval '1 minute', now(), $2) "
            "RETURNING id", candidate, duration))
    key = f"sessions/{sid}/master.webm"
    size = await ctx.storage.put_file(key, path, content_type="video/webm")
    events = [("looking_away", 2.5, 4.0, (200, 120, 0)), ("phone", 6.2, 7.0, (20, 60, 200)),
              ("tab_hidden", 8.0, 8.5, None)]
    ids = []
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s, width, height) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", sid, key, size, hashlib.sha256(path.read_bytes()).hexdigest(),
            duration, WIDTH, HEIGHT)
        for kind, start, end, color in events:
            event_id = await conn.fetchval(
                "INSERT INTO events (session_id, kind, start_s, end_s, confidence) VALUES ($1, $2, $3, $4, 0.9) "
                "RETURNING id", sid, kind, start, end)
            if color is not None:
                snap = f"sessions/{sid}/events/{event_id}.jpg"
                await ctx.storage.put_bytes(snap, _jpeg(color), content_type="image/jpeg")
                await conn.execute("UPDATE events SET snapshot_key = $2 WHERE id = $1", event_id, snap)
            ids.append(event_id)
        # As the analyzers do when flags end: 2*1.5/10 + 8*1/10 + 2*1/10 (short flags count as 1 s) = 1.3.
        score = await refresh_score(conn, sid, ctx.settings.weights)
    assert score == pytest.approx(1.3)
    return {"id": sid, "candidate": candidate, "duration": duration, "events": ids,
            "starts": [e[1] for e in events]}


async def test_login_page(web_server: RunningApp, browser: Any, staff_user: dict[str, Any]) -> None:
    base = web_server.url
    context = await browser.new_context(viewport={"width": 1000, "height": 600})
    page = await context.new_page()
    await page.goto(f"{base}/live")
    assert page.url.startswith(f"{base}/login?next=")
    await page.fill("#name", staff_user["name"])
    await page.fill("#password", "not the password")
    await page.click("#login-btn")
    assert "Wrong name or password" in await page.text_content("#login-error")
    await page.screenshot(path=str(ARTIFACTS / "login.png"))
    await page.fill("#password", PASSWORD)
    await page.click("#login-btn")
    await page.wait_for_url(f"{base}/live")  # back where the user was going
    cookie = next(c for c in await context.cookies() if c["name"] == "proctor_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["secure"] is False
    assert await page.evaluate("document.cookie.includes('proctor_session')") is False
    await page.click("#logout-btn")
    await page.wait_for_url(f"{base}/login")
    await page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/login")
    await context.close()


async def test_sessions_page(web_server: RunningApp, browser: Any, staff_user: dict[str, Any],
                             finalized: dict[str, Any], ctx: Context) -> None:
    base = web_server.url
    context, page = await browser_login(browser, base, staff_user["name"], bypass_csp=False)
    row = page.locator(f'tr[data-session-id="{finalized["id"]}"]')
    assert await row.locator(".flag-count").text_content() == "3"
    assert await row.locator(".score").text_content() == "1.3"
    assert await row.locator(".score").get_attribute("data-level") == "low"
    # New session through the form (fetch + CSRF header), join link shown and copied.
    candidate = f"Nina New {uuid.uuid4().hex[:4]}"
    await page.fill("#new-candidate", candidate)
    await page.fill("#new-exam", "Physics 7")
    await page.click("#create-btn")
    await page.wait_for_selector("#join-box:not([hidden])")
    join_url = await page.input_value("#join-url")
    assert join_url.startswith(f"{base}/join/")
    await page.click("#copy-btn")
    await wait_for(lambda: _text(page, "#copy-msg"), within=3)
    assert await page.evaluate("navigator.clipboard.readText()") == join_url
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE candidate = $1", candidate) == 1
    # Filters: status + flagged + search.
    await page.select_option("#filter-status", "finalized")
    await page.check("#filter-flagged")
    await page.fill("#filter-q", finalized["candidate"])
    await page.click("#filter-btn")
    await page.wait_for_url("**flagged=1**")
    ids = await page.eval_on_selector_all("tr[data-session-id]", "rows => rows.map(r => r.dataset.sessionId)")
    assert ids == [finalized["id"]]
    await page.goto(f"{base}/?status=created&q={candidate.replace(' ', '+')}")
    ids = await page.eval_on_selector_all("tr[data-session-id]", "rows => rows.map(r => r.dataset.sessionId)")
    assert len(ids) == 1
    # Scores are coloured by band, and the list sorts by them on request.
    async with ctx.pool.acquire() as conn:
        scored = {score: str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, score) "
            "VALUES ($1, 'Scoring 5', 'finalized', 'n', now(), $2) RETURNING id", name, score))
            for name, score in (("Rex Red", 47.25), ("Ann Amber", 27.0))}
    await page.goto(f"{base}/")
    red = page.locator(f'tr[data-session-id="{scored[47.25]}"] .score')
    assert await red.text_content() == "47.3" and await red.get_attribute("data-level") == "high"
    assert await page.get_attribute(f'tr[data-session-id="{scored[27.0]}"] .score', "data-level") == "mid"
    await page.select_option("#filter-sort", "score")
    await page.click("#filter-btn")
    await page.wait_for_url("**sort=score**")
    scores = await page.eval_on_selector_all("tr[data-session-id]", "rows => rows.map(r => +r.dataset.score)")
    assert scores == sorted(scores, reverse=True) and scores[0] >= 47.3
    await page.click("#sort-newest")
    await page.wait_for_url(f"{base}/")
    await page.screenshot(path=str(ARTIFACTS / "sessions.png"), full_page=True)
    await context.close()


async def _text(page: Any, selector: str) -> str:
    return (await page.text_content(selector)) or ""


async def _seek_and_read(page: Any, action: Any) -> tuple[float, int]:
    await page.evaluate(ARM_SEEKED)
    await action()
    current = await page.evaluate("window.__seeked")
    frame = await page.evaluate(READ_FRAME)
    return current, frame


async def test_review_page_seeks_exactly(web_server: RunningApp, browser: Any, staff_user: dict[str, Any],
                                         finalized: dict[str, Any], ctx: Context) -> None:
    base = web_server.url
    sid, ids, starts = finalized["id"], finalized["events"], finalized["starts"]
    context, page = await browser_login(browser, base, staff_user["name"])
    await page.goto(f"{base}/sessions/{sid}")
    await page.wait_for_function("window.review && window.review.masterLoaded && window.review.events.length === 3")
    assert await page.locator(".timeline .marker").count() == 3
    # Marker geometry: left = start / duration.
    left = await page.eval_on_selector(f'.marker[data-event-id="{ids[1]}"]', "m => m.style.left")
    assert float(left.rstrip("%")) == pytest.approx(starts[1] / finalized["duration"] * 100, abs=0.01)
    assert await page.locator(f'tr[data-event-id="{ids[0]}"] img.thumb').count() == 1

    errors = []
    # Click the event row: the video seeks to start_s and shows the frame at start_s.
    current, frame = await _seek_and_read(page, lambda: page.click(f'tr[data-event-id="{ids[0]}"]'))
    errors.append((starts[0], current, frame))
    # The next-event key.
    current, frame = await _seek_and_read(page, lambda: page.keyboard.press("j"))
    errors.append((starts[1], current, frame))
    assert await page.get_attribute(f'tr[data-event-id="{ids[1]}"]', "class") == "current"
    # A timeline marker.
    current, frame = await _seek_and_read(page, lambda: page.click(f'.marker[data-event-id="{ids[2]}"]'))
    errors.append((starts[2], current, frame))
    # And back with the previous-event key.
    current, frame = await _seek_and_read(page, lambda: page.keyboard.press("k"))
    errors.append((starts[1], current, frame))
    for start, current, frame in errors:
        shown = round(frame * 1000 / FPS) / 1000  # the displayed frame's pts
        print(f"seek to {start:.3f}s: currentTime {current:.3f}s, frame #{frame} (pts {shown:.3f}s), "
              f"error {abs(shown - start) * 1000:.1f} ms")
        assert current == pytest.approx(start, abs=0.05)
        assert shown == pytest.approx(start, abs=0.05)

    # Confirm the phone event with a note.
    await page.fill("#note", "Phone clearly visible, left hand")
    await page.click("#confirm-btn")
    await page.wait_for_selector(f'tr[data-event-id="{ids[1]}"][data-review-state="confirmed"]')
    assert await _text(page, "#session-score-value") == "1.3"
    assert await page.get_attribute("#session-score", "data-level") == "low"
    # Dismissing the tab_hidden flag takes its 0.2 out of the score, in the header at once.
    await page.click(f'tr[data-event-id="{ids[2]}"]')
    await page.click("#dismiss-btn")
    await page.wait_for_selector(f'tr[data-event-id="{ids[2]}"][data-review-state="dismissed"]')
    assert await _text(page, "#session-score-value") == "1.1"
    await page.click(f'tr[data-event-id="{ids[1]}"]')
    await page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM events WHERE id = $1", ids[1])
        audit = await conn.fetchrow("SELECT * FROM audit_log WHERE action = 'event.review' AND target = $1",
                                    f"event:{ids[1]}")
    assert row["review_state"] == "confirmed" and row["review_note"] == "Phone clearly visible, left hand"
    assert row["reviewed_by"] == staff_user["id"] and row["reviewed_at"] is not None
    assert audit["actor"] == staff_user["name"] and audit["details"]["state"] == "confirmed"

    # Exports carry the review.
    response = await page.request.get(f"{base}/api/sessions/{sid}/events.csv")
    assert response.status == 200 and "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [float(r["start_s"]) for r in rows] == starts
    assert rows[1]["review_state"] == "confirmed" and rows[1]["reviewed_by"] == staff_user["name"]
    assert rows[1]["review_note"] == "Phone clearly visible, left hand"
    response = await page.request.get(f"{base}/api/sessions/{sid}/events.json")
    data = json.loads(await response.text())
    assert data["session"]["id"] == sid and [e["id"] for e in data["events"]] == ids
    assert data["events"][1]["review_state"] == "confirmed" and data["events"][0]["snapshot_url"]
    assert data["events"][2]["snapshot_url"] is None
    # Bad review bodies are refused, with the page's CSRF token.
    csrf = await page.get_attribute('meta[name="csrf-token"]', "content")
    response = await page.request.post(f"{base}/api/sessions/{sid}/events/{ids[0]}/review",
                                       data={"state": "maybe"}, headers={"X-CSRF-Token": csrf})
    assert response.status == 400
    await context.close()


async def test_review_page_waits_for_master(web_server: RunningApp, browser: Any, staff_user: dict[str, Any],
                                            ctx: Context) -> None:
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
            "VALUES ('Pat Pending', 'E', 'finalizing', 'n', now()) RETURNING id"))
    context, page = await browser_login(browser, web_server.url, staff_user["name"])
    await page.goto(f"{web_server.url}/sessions/{sid}")
    await page.wait_for_selector("#progress:not([hidden])")
    assert "finalizing" in await page.text_content("#progress")
    await context.close()


async def test_live_monitor(web_server: RunningApp, browser: Any, staff_user: dict[str, Any], ctx: Context) -> None:
    base = web_server.url
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ('Lena Live', 'Chem 3', 'live', 'n', now(), now(), now()) RETURNING id"))
        event_id = await conn.fetchval(
            "INSERT INTO events (session_id, kind, start_s, confidence) VALUES ($1, 'phone', 12.0, 0.9) RETURNING id",
            sid)
        blank = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ('Nico Nopic', 'Chem 3', 'live', 'n', now(), now(), now()) RETURNING id"))
    # The media node's latest frame of Lena's stream, where it keeps it (web/media.py serves it from Redis).
    thumb_key = THUMBNAIL_KEY.format(session_id=sid)
    await ctx.redis.set(thumb_key, base64.b64encode(_jpeg((30, 160, 90))).decode(), ex=60)
    context, page = await browser_login(browser, base, staff_user["name"])
    await page.goto(f"{base}/live")
    await page.wait_for_function("window.monitor && window.monitor.connected")
    card = page.locator(f'article[data-session-id="{sid}"]')
    assert await card.locator(".candidate").text_content() == "Lena Live"
    await page.wait_for_selector(f'article[data-session-id="{sid}"][data-thumb="ok"]', timeout=3000)
    assert await card.locator("img.thumb-live").evaluate("i => [i.naturalWidth, i.naturalHeight]") == [160, 120]
    # No thumbnail (404): the placeholder.
    await page.wait_for_selector(f'article[data-session-id="{blank}"][data-thumb="none"]', timeout=3000)
    assert await page.locator(f'article[data-session-id="{blank}"] .placeholder').is_visible()
    # The analyzer opens a flag on the media node: it is on the page, highlighted, within a second.
    message = {"type": "event", "action": "start", "session_id": sid,
               "event": {"id": event_id, "kind": "phone", "start_s": 12.0, "end_s": None, "confidence": 0.9}}
    started = time.monotonic()
    await ctx.redis.publish(LIVE_CHANNEL, json.dumps({**message, "at": time.time()}))
    await page.wait_for_selector(f'article[data-session-id="{sid}"].alert li[data-event-id="{event_id}"].alert',
                                 timeout=1000)
    delay = time.monotonic() - started
    in_page = await page.evaluate("window.monitor.lastAlert.delayMs")
    print(f"live alert shown {delay * 1000:.0f} ms after publish (page clock: {in_page} ms after `at`)")
    assert delay < 1.0
    await page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
    # Copy/pastes close together are one flag that counts them (core/rules.py merges them): it grows in place.
    async with ctx.pool.acquire() as conn:
        paste_id = await conn.fetchval("INSERT INTO events (session_id, kind, start_s, end_s, details) VALUES "
                                       "($1, 'copy_paste', 20.0, 20.0, '{\"count\": 1}') RETURNING id", sid)
    for action, end_s, count in (("start", 20.0, 1), ("end", 20.0, 1), ("update", 24.5, 3)):
        await ctx.redis.publish(LIVE_CHANNEL, json.dumps({
            "type": "event", "action": action, "session_id": sid, "at": time.time(),
            "event": {"id": paste_id, "kind": "copy_paste", "start_s": 20.0, "end_s": end_s, "confidence": 1.0,
                      "count": count}}))
    flag = card.locator(f'li[data-event-id="{paste_id}"]')
    await page.wait_for_selector(f'li[data-event-id="{paste_id}"] .kind:text-is("copy_paste ×3")', timeout=2000)
    assert await flag.count() == 1 and "0:20" in await flag.locator(".when").text_content()
    # Connection state follows the media node's messages.
    await ctx.redis.publish(LIVE_CHANNEL, json.dumps({"type": "connection", "session_id": sid,
                                                      "connection": "disconnected", "at": time.time()}))
    await page.wait_for_selector(f'article[data-session-id="{sid}"][data-connection="disconnected"]', timeout=2000)
    # Acknowledge.
    await page.click(f'li[data-event-id="{event_id}"] button.ack')
    await page.wait_for_selector(f'li[data-event-id="{event_id}"].acked')
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT acknowledged_by, acknowledged_at FROM events WHERE id = $1", event_id)
    assert row["acknowledged_by"] == staff_user["id"] and row["acknowledged_at"] is not None
    # The picture is fetched again every 3 s: once the stream's thumbnail expires, the placeholder shows.
    first_src = await card.locator("img.thumb-live").get_attribute("src")
    assert first_src.startswith(f"/api/sessions/{sid}/thumbnail?t=")
    await ctx.redis.delete(thumb_key)
    await page.wait_for_selector(f'article[data-session-id="{sid}"][data-thumb="none"]', timeout=4500)
    assert await card.locator("img.thumb-live").get_attribute("src") != first_src
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET status = 'ended' WHERE id = ANY($1::uuid[])", [sid, blank])
    await context.close()


SEGMENT_S = 2


@pytest.fixture(scope="module")
async def unfinished(ctx: Context, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An ended session with no master yet: two stored 2-s segments (each starting at its own time 0, as the
    media node writes them) and a third still spooled on a node; events at 0.5 s and 2.5 s."""
    tmp = tmp_path_factory.mktemp("segments")
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, "
            "duration_s) VALUES ('Pia Preview', 'Segments 101', 'ended', 'n', now(), now() - interval '1 minute', "
            "now(), 6.0) RETURNING id"))
    for idx in range(2):
        path = tmp / f"{idx:06d}.webm"
        seconds = await asyncio.to_thread(_write_webm, path, idx * SEGMENT_S * FPS, SEGMENT_S * FPS)
        assert seconds == pytest.approx(SEGMENT_S, abs=0.04)
        key = f"sessions/{sid}/segments/{idx:06d}.webm"
        size = await ctx.storage.put_file(key, path, content_type="video/webm")
        async with ctx.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO segments (session_id, idx, start_s, end_s, frames, bytes, storage_key, state, stored_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, 'stored', now())", sid, idx, idx * SEGMENT_S,
                (idx + 1) * SEGMENT_S, SEGMENT_S * FPS, size, key)
    async with ctx.pool.acquire() as conn:
        await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s, state) "
                           "VALUES ($1, 2, 4.0, 6.0, 'spooled')", sid)
        ids = [await conn.fetchval(
            "INSERT INTO events (session_id, kind, start_s, end_s, confidence) VALUES ($1, $2, $3, $4, 0.8) "
            "RETURNING id", sid, kind, start, end) for kind, start, end in
            (("no_face", 0.5, 1.0), ("looking_away", 2.5, 3.5))]
        await refresh_score(conn, sid, ctx.settings.weights)
    return {"id": sid, "events": ids, "tmp": tmp}


async def test_review_preview_plays_segments(web_server: RunningApp, browser: Any, staff_user: dict[str, Any],
                                             unfinished: dict[str, Any], ctx: Context) -> None:
    base = web_server.url
    sid, ids = unfinished["id"], unfinished["events"]
    context, page = await browser_login(browser, base, staff_user["name"])
    # The segment route: stored ones only, served like the master (Range works for seeking).
    response = await page.request.get(f"{base}/api/sessions/{sid}/segments/1", headers={"Range": "bytes=0-99"})
    assert response.status == 206 and response.headers["content-type"] == "video/webm"
    for bad in ("2", "7", "x"):  # spooled on a node, no such segment, not a number
        assert (await page.request.get(f"{base}/api/sessions/{sid}/segments/{bad}")).status == 404

    await page.goto(f"{base}/sessions/{sid}")
    await page.wait_for_function("window.review && window.review.pieceLoaded && window.review.events.length === 2")
    assert await page.evaluate("window.review.mode") == "preview"
    assert "Preview from 2 stored segments; the full video is being built" in await _text(page, "#progress")
    assert await page.evaluate("window.review.playing.idx") == 0
    # The timeline is what is stored so far: 4 s.
    left = await page.eval_on_selector(f'.marker[data-event-id="{ids[1]}"]', "m => m.style.left")
    assert float(left.rstrip("%")) == pytest.approx(2.5 / 4 * 100, abs=0.01)

    # The event at 2.5 s is 0.5 s into segment 1.
    current, frame = await _seek_and_read(page, lambda: page.click(f'tr[data-event-id="{ids[1]}"]'))
    assert await page.evaluate("[window.review.playing.kind, window.review.playing.idx]") == ["segment", 1]
    print(f"preview seek to 2.500s: segment 1 at {current:.3f}s, frame #{frame} (session pts {frame / FPS:.3f}s)")
    assert current == pytest.approx(0.5, abs=0.05)
    assert frame / FPS == pytest.approx(2.5, abs=0.05)
    # And back to 0.5 s in segment 0, with the previous-event key.
    current, frame = await _seek_and_read(page, lambda: page.keyboard.press("k"))
    assert await page.evaluate("window.review.playing.idx") == 0
    assert current == pytest.approx(0.5, abs=0.05) and frame / FPS == pytest.approx(0.5, abs=0.05)
    await page.screenshot(path=str(ARTIFACTS / "review-preview.png"), full_page=True)

    # Playing on: at the end of segment 0 the player loads segment 1 and goes on.
    await page.evaluate("() => { const v = document.getElementById('master'); v.currentTime = 1.7; }")
    await page.keyboard.press(" ")
    await page.wait_for_function("window.review.playing.idx === 1 && document.getElementById('master').currentTime"
                                 " > 0.2 && !document.getElementById('master').paused", timeout=5000)
    await page.keyboard.press(" ")
    at = await page.evaluate("window.review.playing.start_s + document.getElementById('master').currentTime")

    # The master appears (the archiver finished): the page switches to it at the same session time.
    path = unfinished["tmp"] / "master.webm"
    duration = await asyncio.to_thread(_write_webm, path, 0, 3 * SEGMENT_S * FPS)
    key = f"sessions/{sid}/master.webm"
    size = await ctx.storage.put_file(key, path, content_type="video/webm")
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s, width, height) "
            "VALUES ($1, $2, $3, 'x', $4, $5, $6)", sid, key, size, duration, WIDTH, HEIGHT)
        await conn.execute("UPDATE sessions SET status = 'finalized' WHERE id = $1", sid)
        await conn.execute("UPDATE segments SET state = 'merged' WHERE session_id = $1", sid)
    await page.wait_for_function("window.review.mode === 'master' && window.review.masterLoaded", timeout=8000)
    await page.wait_for_function(f"Math.abs(document.getElementById('master').currentTime - {at}) < 0.05")
    assert await page.is_hidden("#progress")
    assert await _text(page, "#session-status") == "finalized"
    # The timeline now spans the master.
    left = await page.eval_on_selector(f'.marker[data-event-id="{ids[1]}"]', "m => m.style.left")
    assert float(left.rstrip("%")) == pytest.approx(2.5 / duration * 100, abs=0.01)
    await context.close()


async def test_admin_deletes_session(web_server: RunningApp, browser: Any, staff_user: dict[str, Any],
                                     ctx: Context) -> None:
    base = web_server.url
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
            "VALUES ('Dora Delete', 'Privacy 1', 'ended', 'n', now()) RETURNING id"))
        await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s) VALUES ($1, 'phone', 1, 2)", sid)
    await ctx.storage.put_bytes(f"sessions/{sid}/events/1.jpg", _jpeg((1, 2, 3)), content_type="image/jpeg")
    context, page = await browser_login(browser, base, staff_user["name"], bypass_csp=False)
    await page.goto(f"{base}/sessions/{sid}")
    # Cancelled in the confirm dialog: nothing happens.
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.click("#delete-btn")
    await page.wait_for_timeout(200)
    assert page.url == f"{base}/sessions/{sid}"
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid) == 1
    messages = []

    async def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        await dialog.accept()

    page.once("dialog", lambda dialog: asyncio.ensure_future(accept(dialog)))
    async with page.expect_request(lambda r: r.method == "DELETE") as sent:
        await page.click("#delete-btn")
    request = await sent.value
    assert request.headers["x-csrf-token"] == await page.get_attribute('meta[name="csrf-token"]', "content")
    await page.wait_for_url(f"{base}/")
    assert "Delete this session" in messages[0]
    assert await page.locator(f'tr[data-session-id="{sid}"]').count() == 0
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid) == 0
        assert await conn.fetchval("SELECT count(*) FROM events WHERE session_id = $1", sid) == 0
        audit = await conn.fetchrow("SELECT * FROM audit_log WHERE action = 'session.delete' AND target = $1",
                                    f"session:{sid}")
    assert audit["actor"] == staff_user["name"] and audit["details"]["candidate"] == "Dora Delete"
    assert await ctx.storage.list(f"sessions/{sid}/") == []
    await context.close()
