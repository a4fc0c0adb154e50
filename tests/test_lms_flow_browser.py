"""Issue 16's "done when" as one flow in real headless Chromium, everything set up the way an institution would:

1. an admin signs in and, on the admin pages (no shell, no SQL), registers the LMS (the IMS-spec platform emulator of
   tests/support/lti_platform.py) on /admin/lti and a webhook endpoint (a receiver on loopback, subscribed to
   flag.raised only) on /admin/webhooks, and sends it a test event from the page;
2. the delivery runs the real way: `proctor worker --roles webhooks`, the process the supervisor runs for that role
   (dispatcher woken by Postgres NOTIFY, deliveries on the Redis job stream);
3. a learner launches the exam from the LMS, lands on the candidate page with their LMS name and streams the fake
   camera; they leave the exam window (the page's own `blur` listener), so the live rules on the media node raise a
   real window_blur flag from that stream;
4. the receiver gets flag.raised for that session and flag, checks the signature with its own HMAC code, and it
   arrived within 2 s of the alert;
5. the instructor launches the same activity from the LMS and sees that session.

The alert's time is the flag's `events.created_at`: Postgres' now() in the transaction that inserts the row, i.e. the
moment that transaction began, before the insert, its commit and the live message published after the commit. It is
the earliest server-side moment the flag exists, so measuring from it is the strictest reading of the bound. Postgres
and this process read the same machine clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from media_server.node import MediaNode
from proctor.context import Context
from proctor.settings import Settings
from proctor.store import lti as lti_store
from proctor.store import sessions
from proctor.store import webhooks as webhook_store
from tests.support.accounts import browser_login, make_user
from tests.support.browser import CONNECTED, have_chromium
from tests.support.lti_platform import INSTRUCTOR, LaunchSpec, LtiPlatform
from tests.support.paths import ARTIFACTS
from tests.support.servers import FrameLog, own_web_app
from tests.support.waiting import wait_for
from tests.support.webhooks import receiver, signature_ok

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]

ROOT = Path(__file__).resolve().parents[1]
ALERT_BOUND_S = 2.0  # the bound: flag.raised at the receiver within 2 s of the alert


def _worker_env(settings: Settings) -> dict[str, str]:
    # The worker's own settings, from its environment as in production; loopback receivers are allowed here only.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url, "PROCTOR_DATA_DIR": str(settings.data_dir),
            "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789", "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_TIMEOUT_S": "2", "LOG_LEVEL": "INFO"}


async def test_lms_launch_stream_flag_webhook_and_instructor_view_in_one_flow(
        settings: Settings, ctx: Context, media_node: MediaNode, frame_log: FrameLog, browser: Any,
        tmp_path: Path) -> None:
    title = f"LMS flow final {uuid.uuid4().hex[:6]}"
    link = {"id": f"rl-{uuid.uuid4().hex[:8]}", "title": title}
    admin = await make_user(ctx, "admin")
    log_path = tmp_path / "webhook-worker.log"
    endpoint_id: int | None = None
    learner = LaunchSpec(name="Flow Ada", resource_link=link)
    # The web app allows private webhook addresses (the receiver is on loopback); the default stays off.
    async with own_web_app(settings, ctx, webhook_allow_private=True) as base, \
            LtiPlatform(host="localhost") as lms, receiver() as hook:
        lms.tool_base = base
        reg = lms.registration()
        admin_ctx, admin_page = await browser_login(browser, base, admin, bypass_csp=False)
        worker: asyncio.subprocess.Process | None = None
        contexts = [admin_ctx]
        log_file = log_path.open("wb")
        try:
            # --- 1. the admin registers the LMS and the webhook endpoint on the admin pages ---------------------
            await admin_page.click("#nav-lti")
            await admin_page.wait_for_url(f"{base}/admin/lti")
            await admin_page.fill("#f-name", reg["name"])
            await admin_page.fill("#f-issuer", reg["issuer"])
            await admin_page.fill("#f-client", reg["client_id"])
            await admin_page.fill("#f-deployments", ", ".join(reg["deployment_ids"]))
            await admin_page.fill("#f-login", reg["auth_login_url"])
            await admin_page.fill("#f-token", reg["auth_token_url"])
            await admin_page.fill("#f-jwks", reg["key_set_url"])
            await admin_page.click("#add-platform-btn")
            await admin_page.wait_for_url(f"{base}/admin/lti?done=added")
            await admin_page.wait_for_selector(f'#platforms-table tr[data-issuer="{lms.issuer}"]')

            await admin_page.click("#nav-webhooks")
            await admin_page.wait_for_url(f"{base}/admin/webhooks")
            await admin_page.fill("#webhook-url", hook.url)
            for box in await admin_page.locator('input[name="event_types"]').all():
                if await box.get_attribute("value") == "flag.raised":
                    await box.check()
                else:
                    await box.uncheck()
            await admin_page.click("#webhook-add")
            secret = (await admin_page.text_content("#webhook-secret") or "").strip()
            assert secret.startswith("whsec_")
            async with ctx.pool.acquire() as conn:
                endpoint = await conn.fetchrow("SELECT * FROM webhook_endpoints WHERE url = $1", hook.url)
            endpoint_id = int(endpoint["id"])
            assert list(endpoint["event_types"]) == ["flag.raised"] and endpoint["enabled"]

            # --- 2. the webhook role of the worker, as the supervisor runs it ------------------------------------
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proctor", "worker", "--roles", "webhooks", cwd=ROOT,
                env=_worker_env(settings), stdout=log_file, stderr=asyncio.subprocess.STDOUT)
            # A test event from the page: once it arrives the worker is up and listening (it LISTENs before its
            # first dispatch), so the flag below is not measured against a worker still starting.
            await admin_page.locator(f'tr[data-webhook-id="{endpoint_id}"] .test-btn').click()
            assert "Test event queued" in (await admin_page.text_content("#webhook-msg") or "")

            async def test_event_arrived() -> bool:
                return bool(hook.of_type("webhook.test"))

            await wait_for(test_event_arrived, within=60, interval=0.1)
            assert signature_ok(secret, hook.of_type("webhook.test")[0])

            # --- 3. the learner's launch from the LMS: the candidate page, streaming ------------------------------
            learner_ctx = await browser.new_context()
            contexts.append(learner_ctx)
            page = await learner_ctx.new_page()
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.goto(f"{lms.url}/course/{lms.prepare(learner)}")
            await page.wait_for_url(re.compile(re.escape(base) + r"/join/[^/]+$"), timeout=30_000)
            assert "Flow Ada" in (await page.text_content("body") or "")
            async with ctx.pool.acquire() as conn:
                session_id = str(await conn.fetchval("SELECT session_id FROM lti_sessions WHERE sub = $1",
                                                     learner.sub))
            await page.check("#consent-box")
            await page.click("#consent-btn")
            await page.wait_for_selector("#photo-btn:not([disabled])", timeout=30_000)
            await page.click("#photo-btn")
            await page.wait_for_selector("#step-exam:not([hidden])", timeout=15_000)
            await page.click("#start-btn")
            await page.wait_for_selector(CONNECTED, timeout=30_000)

            async def frames_arrived() -> bool:
                return len(frame_log.times.get(session_id, [])) >= 30

            await wait_for(frames_arrived, within=20)
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
            assert row["status"] == "live" and row["candidate"] == "Flow Ada" and row["exam"] == title

            # The candidate leaves the exam window: the page's blur listener signals the media node, whose live
            # rules raise window_blur once it has lasted (2 s by default).
            await page.evaluate("window.dispatchEvent(new Event('blur'))")

            async def blur_flag() -> Any:
                async with ctx.pool.acquire() as conn:
                    return await conn.fetchrow(
                        "SELECT id, extract(epoch FROM created_at)::float8 AS created FROM events "
                        "WHERE session_id = $1 AND kind = 'window_blur' ORDER BY id LIMIT 1", session_id)

            flag = await wait_for(blur_flag, within=20)
            await page.evaluate("window.dispatchEvent(new Event('focus'))")

            # --- 4. flag.raised at the receiver, signed, within 2 s of the alert ----------------------------------
            def blur_deliveries() -> list[dict[str, Any]]:
                return [r for r in hook.of_type("flag.raised")
                        if json.loads(r["body"])["data"]["flag"]["id"] == flag["id"]]

            async def delivered() -> bool:
                return bool(blur_deliveries())

            await wait_for(delivered, within=30, interval=0.05)
            [request] = blur_deliveries()
            body = json.loads(request["body"])
            assert signature_ok(secret, request), request["headers"]
            assert request["headers"]["Webhook-Id"] == body["id"]
            assert body["data"]["session"]["id"] == session_id
            assert body["data"]["session"]["candidate"] == "Flow Ada"
            assert body["data"]["flag"]["kind"] == "window_blur" and body["data"]["flag"]["source"] == "browser"
            delay = request["wall"] - flag["created"]
            print(f"flag.raised for window_blur at the receiver {delay * 1000:.0f} ms after the flag's row began")
            assert 0 <= delay < ALERT_BOUND_S
            # Only flag.raised (and the admin's test event) came: the endpoint's subscription is honoured.
            assert {json.loads(r["body"])["type"] for r in hook.requests} == {"webhook.test", "flag.raised"}
            assert all(signature_ok(secret, r) for r in hook.requests)
            await page.screenshot(path=str(ARTIFACTS / "lms-flow-candidate.png"))

            # --- 5. the instructor's launch from the LMS shows that session ---------------------------------------
            teacher = LaunchSpec(name="Prof Flow", roles=[INSTRUCTOR], resource_link=link)
            staff_ctx = await browser.new_context()
            contexts.append(staff_ctx)
            staff_page = await staff_ctx.new_page()
            await staff_page.goto(f"{lms.url}/course/{lms.prepare(teacher)}")
            await staff_page.wait_for_url(re.compile(re.escape(base) + r"/\?q="), timeout=30_000)
            await staff_page.wait_for_selector("#sessions-table", timeout=10_000)
            rows = staff_page.locator("#sessions-table tbody tr[data-session-id]")
            assert await rows.count() == 1  # filtered to that exam: its one candidate
            assert await rows.first.get_attribute("data-session-id") == session_id
            assert "Flow Ada" in (await rows.first.text_content() or "")
            await staff_page.screenshot(path=str(ARTIFACTS / "lms-flow-instructor.png"))
        finally:
            for context in contexts:
                await context.close()
            if worker is not None and worker.returncode is None:
                worker.terminate()
                await asyncio.wait_for(worker.wait(), 40)
            log_file.close()
            async with ctx.pool.acquire() as conn:
                sid = await conn.fetchval("SELECT session_id FROM lti_sessions WHERE sub = $1", learner.sub)
                if sid is not None:
                    await sessions.end(conn, ctx.redis, str(sid), "test over")
                for platform in await lti_store.platforms_for_issuer(conn, lms.issuer):
                    await lti_store.remove_platform(conn, platform.id, actor="test")
                if endpoint_id is not None:
                    await webhook_store.delete_endpoint(conn, endpoint_id, actor="test")
    if worker is not None:
        assert worker.returncode == 0, log_path.read_text()[-3000:]
