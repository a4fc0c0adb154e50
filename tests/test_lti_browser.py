"""LTI 1.3 in real headless Chromium: a learner clicks the exam in the (emulated) LMS, the browser goes through the
OIDC login, the platform's auth and its cross-site form_post of the id_token, lands on the candidate page with their
LMS name, and streams; then the instructor's launch from the same LMS signs them in and shows that session.

The LMS runs at http://localhost:<port> and the tool at http://127.0.0.1:<port>: different sites, so the launch
POST is cross-site as in production, and only a SameSite=None; Secure state cookie comes along with it."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest

from media_server.node import MediaNode
from proctor.context import Context
from proctor.store import lti as store
from proctor.store import sessions
from tests.support.browser import CONNECTED, have_chromium
from tests.support.lti_platform import INSTRUCTOR, LaunchSpec, LtiPlatform
from tests.support.paths import ARTIFACTS
from tests.support.servers import FrameLog, RunningApp
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]


async def test_learner_launch_lands_on_the_candidate_page_and_streams(
        web_server: RunningApp, media_node: MediaNode, frame_log: FrameLog, browser: Any, ctx: Context) -> None:
    title = f"LTI final {uuid.uuid4().hex[:6]}"
    link = {"id": f"rl-{uuid.uuid4().hex[:8]}", "title": title}
    async with LtiPlatform(host="localhost") as lms:
        lms.tool_base = web_server.url
        async with ctx.pool.acquire() as conn:
            platform = await store.add_platform(conn, actor="test", **lms.registration())
        learner = LaunchSpec(name="Chromium Ada", resource_link=link)
        context = await browser.new_context()
        try:
            page = await context.new_page()
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.goto(f"{lms.url}/course/{lms.prepare(learner)}")
            # course page -> POST /lti/login -> 302 platform auth -> cross-site form_post -> 303 /join/<token>
            await page.wait_for_url(re.compile(re.escape(web_server.url) + r"/join/[^/]+$"), timeout=30_000)
            assert "Chromium Ada" in await page.text_content("body")
            async with ctx.pool.acquire() as conn:
                session_id = str(await conn.fetchval("SELECT session_id FROM lti_sessions WHERE sub = $1",
                                                     learner.sub))
            # The candidate's own steps, as after any join link.
            await page.check("#consent-box")
            await page.click("#consent-btn")
            await page.wait_for_selector("#photo-btn:not([disabled])", timeout=30_000)
            await page.click("#photo-btn")
            await page.wait_for_selector("#step-exam:not([hidden])", timeout=15_000)
            await page.click("#start-btn")
            await page.wait_for_selector(CONNECTED, timeout=30_000)
            await page.screenshot(path=str(ARTIFACTS / "lti-candidate-streaming.png"))

            async def frames_arrived() -> int | None:
                count = len(frame_log.times.get(session_id, []))
                return count if count >= 30 else None

            print(f"{await wait_for(frames_arrived, within=20)} video frames at the media node")
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
            assert row["status"] == "live" and row["candidate"] == "Chromium Ada" and row["exam"] == title

            # The instructor launches the same activity from the LMS: signed in, the sessions list of that exam.
            teacher = LaunchSpec(name="Prof Chromium", roles=[INSTRUCTOR], resource_link=link)
            staff_page = await (await browser.new_context()).new_page()
            await staff_page.goto(f"{lms.url}/course/{lms.prepare(teacher)}")
            await staff_page.wait_for_url(re.compile(re.escape(web_server.url) + r"/\?q="), timeout=30_000)
            await staff_page.wait_for_selector("#sessions-table", timeout=10_000)
            rows = staff_page.locator("#sessions-table tbody tr[data-session-id]")
            assert await rows.count() == 1  # filtered to that exam: its one candidate
            assert await rows.first.get_attribute("data-session-id") == session_id
            assert "Chromium Ada" in await rows.first.text_content()
            await staff_page.screenshot(path=str(ARTIFACTS / "lti-instructor-sessions.png"))
            await staff_page.context.close()
        finally:
            await context.close()
            async with ctx.pool.acquire() as conn:
                sid = await conn.fetchval("SELECT session_id FROM lti_sessions WHERE sub = $1", learner.sub)
                if sid is not None:
                    await sessions.end(conn, ctx.redis, str(sid), "test over")
                await store.remove_platform(conn, platform.id, actor="test")
