"""The review page in real headless Chromium keeps playing the master from S3 (SeaweedFS, SigV4 enforced) after
the presigned URL behind the master route expires mid-review (PRESIGN_SECONDS): review.js asks the route again for
a fresh URL and resumes at the time the reviewer asked for.

The master is made large (noisy frames at a high bitrate, ~26 MB) so Chromium cannot have it all buffered: a seek
far into it needs a new range request, which goes to the (by then expired) presigned URL the redirect led to and
gets 403. Chromium does not fire "error" for that at once: the 403's XML body is blocked for a media request (ORB),
a network failure its media loader retries with back-off for ~30 s. The page must not leave the reviewer frozen that
long: it takes a fresh URL on "stalled" (~3 s), and the test wants the video back within RECOVER_S. With the
refresh removed from review.js the video ends in MEDIA_ERR_NETWORK and the test fails.

The page runs with Playwright's CSP bypass, as the other review tests do: SeaweedFS here is plain http on loopback,
which the staff pages' `media-src 'self' https:` would refuse (production S3/R2 URLs are https). The test polls with
page.evaluate, never wait_for_function.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from proctor.settings import Settings
from tests.support.accounts import browser_login
from tests.support.browser import have_chromium
from tests.support.review import FPS, HEIGHT, WIDTH
from tests.support.s3_web import fetch, s3_web_app
from tests.support.seaweed import SeaweedS3

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]

PRESIGN_S = 3
GOP_S = 2
MASTER_S = 90
EVENTS = [("looking_away", 1.5, 3.0), ("phone", 80.4, 82.0)]  # the second far beyond what Chromium preloads
# Chromium fires "stalled" ~3 s after a seek gets no data; left to itself it retries the expired URL for ~30 s.
RECOVER_S = 15

STATE = """() => {
  const v = document.getElementById('master');
  const r = window.review;
  return {loaded: !!(r && r.masterLoaded), events: r ? r.events.length : 0, currentTime: v.currentTime,
          seeking: v.seeking, readyState: v.readyState, paused: v.paused,
          error: v.error ? v.error.code : null, src: v.currentSrc};
}"""


def _write_big_master(path: Path) -> tuple[float, int]:
    """MASTER_S seconds of VP8 at ~2 Mbit/s: one GOP of noise encoded once and muxed again and again (each GOP
    starts with a keyframe, so the repeats are a valid stream), a file of many MB in a fraction of a second."""
    from archiver.webm import WebmWriter
    from bench.synthetic import encode_clip

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(GOP_S * FPS)]
    gop = encode_clip(frames, fps=FPS, bitrate=2_000_000, gop=GOP_S * FPS).video
    assert gop[0][1], "the GOP must start with a keyframe"
    with WebmWriter(path, WIDTH, HEIGHT, with_audio=False) as writer:
        for i in range(MASTER_S * FPS):
            data, keyframe = gop[i % len(gop)]
            pts, end = round(i * 1000 / FPS), round((i + 1) * 1000 / FPS)
            writer.write_video(data, pts, end - pts, keyframe or i % len(gop) == 0)
    return writer.duration_ms / 1000, path.stat().st_size


def _signed(url: str, endpoint: str) -> dict[str, list[str]] | None:
    """The query of a presigned URL to the S3 endpoint, or None for any other URL."""
    if not url.startswith(endpoint + "/"):
        return None
    query = parse_qs(urlsplit(url).query)
    return query if "X-Amz-Signature" in query else None


async def _poll(page: Any, done: Any, within: float) -> dict[str, Any]:
    """Poll the player's state until done(state); the last state either way (the caller asserts on it)."""
    deadline = time.monotonic() + within
    while True:
        state = await page.evaluate(STATE)
        if done(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


async def test_review_survives_presigned_url_expiry(settings: Settings, seaweed: SeaweedS3, browser: Any,
                                                    staff_user: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "master.webm"
    duration, size = await asyncio.to_thread(_write_big_master, path)
    assert duration == pytest.approx(MASTER_S, abs=0.05) and size > 15_000_000, size

    async with s3_web_app(settings, seaweed, presign_seconds=PRESIGN_S) as app:
        async with app.ctx.pool.acquire() as conn:
            sid = str(await conn.fetchval(
                "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, "
                "duration_s) VALUES ($1, 'Presign 301', 'finalized', 'n', now(), now() - interval '2 minutes', "
                "now(), $2) RETURNING id", f"Ada Expiry {uuid.uuid4().hex[:4]}", duration))
        key = f"sessions/{sid}/master.webm"
        assert await app.ctx.storage.put_file(key, path, content_type="video/webm") == size
        ids = []
        async with app.ctx.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s, width, height) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)", sid, key, size, hashlib.sha256(path.read_bytes()).hexdigest(),
                duration, WIDTH, HEIGHT)
            for kind, start, end in EVENTS:
                ids.append(await conn.fetchval(
                    "INSERT INTO events (session_id, kind, start_s, end_s, confidence) VALUES ($1, $2, $3, $4, 0.9) "
                    "RETURNING id", sid, kind, start, end))

        # Everything the page asks of the S3 endpoint: requests in order, answers, and requests that failed (an
        # expired URL's 403 shows up as a failure: Chromium blocks its XML body for a media request, ORB).
        requests: list[tuple[float, str]] = []
        answered: list[tuple[str, int]] = []
        failed: list[tuple[float, str, str | None]] = []

        def to_s3(request: Any) -> bool:
            return bool(request.url.startswith(seaweed.endpoint + "/"))

        context, page = await browser_login(browser, app.url, staff_user["name"])
        page.on("request", lambda r: requests.append((time.monotonic(), r.url)) if to_s3(r) else None)
        page.on("response", lambda r: answered.append((r.url, r.status)) if to_s3(r) else None)
        page.on("requestfailed", lambda r: failed.append((time.monotonic(), r.url, r.failure)) if to_s3(r) else None)
        try:
            await page.goto(f"{app.url}/sessions/{sid}")
            state = await _poll(page, lambda s: s["loaded"] and s["events"] == len(EVENTS) and s["readyState"] >= 2,
                                within=20)
            assert state["loaded"] and state["events"] == len(EVENTS) and state["error"] is None, state
            assert state["src"] == f"{app.url}/api/sessions/{sid}/master"  # the page asks the route...

            # 1. ...which sent the video to a presigned S3 URL that lives PRESIGN_SECONDS, nothing longer.
            first_urls = {url for _, url in requests if _signed(url, seaweed.endpoint)}
            assert len(first_urls) == 1, (first_urls, requests)
            first = first_urls.pop()
            assert _signed(first, seaweed.endpoint)["X-Amz-Expires"] == [str(PRESIGN_S)]  # type: ignore[index]
            assert (first, 206) in answered, answered
            # A near event plays from what is buffered.
            await page.click(f'tr[data-event-id="{ids[0]}"]')
            state = await _poll(page, lambda s: not s["seeking"] and s["readyState"] >= 2, within=10)
            assert state["currentTime"] == pytest.approx(EVENTS[0][1], abs=1 / FPS) and state["error"] is None

            # 2. The reviewer lingers past expiry: the URL the browser holds is now refused by S3.
            signed_at = min(t for t, url in requests if url == first)
            await asyncio.sleep(max(0.0, signed_at + PRESIGN_S + 1.5 - time.monotonic()))
            assert (await asyncio.to_thread(fetch, first, {"Range": "bytes=0-15"}))[0] == 403

            # ...then jumps to an event far into the video, beyond what Chromium buffered: it must ask S3 again.
            clicked = time.monotonic()
            before = len(requests)
            await page.click(f'tr[data-event-id="{ids[1]}"]')
            target = EVENTS[1][1]
            state = await _poll(page, lambda s: s["error"] is None and not s["seeking"] and s["readyState"] >= 2
                                and abs(s["currentTime"] - target) <= 1 / FPS, within=RECOVER_S)
            recovered = time.monotonic() - clicked
            later = [url for _, url in requests[before:]]
            fresh = {url for url in later if url != first and _signed(url, seaweed.endpoint)}
            print(f"master {size / 1e6:.1f} MB; after the click: {later.count(first)} requests to the expired URL "
                  f"({sum(1 for t, url, _ in failed if url == first and t >= clicked)} failed), {len(fresh)} fresh "
                  f"URL(s); state after {recovered:.1f} s: {state}")
            # The seek really needed a new request, and it went to the expired URL and failed...
            assert first in later, f"Chromium never asked S3 again after expiry, the test proves nothing: {later}"
            assert any(url == first and t >= clicked for t, url, _ in failed), (failed, answered)
            # ...and the page recovered: a different, fresh presigned URL (as short-lived), answered...
            assert fresh, f"no fresh presigned URL was requested after expiry: {later}"
            for url in fresh:
                assert _signed(url, seaweed.endpoint)["X-Amz-Expires"] == [str(PRESIGN_S)]  # type: ignore[index]
            assert any(url in fresh and status == 206 for url, status in answered), answered
            # ...and the video is at the event's time, within one frame, with data there and no error.
            assert state["error"] is None, f"the video is in an error state: {state}"
            assert not state["seeking"] and state["readyState"] >= 2, state
            assert state["currentTime"] == pytest.approx(target, abs=1 / FPS), state
            assert state["src"].startswith(f"{app.url}/api/sessions/{sid}/master?retry="), state  # via the route
        finally:
            await context.close()
