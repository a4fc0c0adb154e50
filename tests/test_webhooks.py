"""Signed webhooks end to end: endpoints registered over REST and on the admin page, every event type raised by the
real code path that makes the change, delivered by the real worker (webhooks/worker.py on archiver.jobs' Redis
Streams queue, also as a `proctor worker` process killed and restarted) to real aiohttp receivers on loopback,
signatures checked here with the hmac module; retries, timeouts, redirects, SSRF refusals and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import ipaddress
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from archiver.jobs import JobQueue, consumer_name
from archiver.worker import consume as archive_consume
from proctor.context import Context
from proctor.settings import Settings
from proctor.store import events, sessions
from proctor.store import webhooks as store
from tests.support.accounts import browser_login, logged_in, make_user, page_csrf
from tests.support.browser import have_chromium
from tests.support.net import free_port
from tests.support.paths import ARTIFACTS
from tests.support.servers import own_web_app
from tests.support.sessions import create_session
from tests.support.waiting import wait_for
from tests.support.webhooks import Receiver, receiver, signature_ok
from webhooks import worker
from webhooks.delivery import Refused, resolve_checked
from webhooks.ssrf import Policy, host_refusal, refusal

ROOT = Path(__file__).resolve().parents[1]
ALL_TYPES = list(store.EVENT_TYPES)


# --- helpers ---------------------------------------------------------------------------------------------------


@asynccontextmanager
async def webhook_worker(ctx: Context, consumers: int = 2) -> AsyncIterator[None]:
    """The webhook role of `proctor worker` in this process: the dispatcher and consumers on archiver.jobs."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(ctx, stop, lambda stream: JobQueue(ctx.redis, stream,
                                                                            consumer=consumer_name()), consumers))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def client(token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def wh_settings(settings: Settings) -> Settings:
    # Loopback receivers: the setting that allows them is on here (and off where a test checks the refusal).
    return replace(settings, webhook_allow_private=True, webhook_timeout_s=2.0, webhook_retry_base_s=0.3,
                   webhook_max_attempts=3)


@pytest.fixture(scope="module")
def wh_ctx(ctx: Context, wh_settings: Settings) -> Context:
    return Context(wh_settings, ctx.pool, ctx.redis, ctx.storage)


@pytest.fixture(scope="module")
async def base(settings: Settings, ctx: Context) -> AsyncIterator[str]:
    async with own_web_app(settings, ctx, webhook_allow_private=True) as url:
        yield url


@pytest.fixture
async def endpoints(ctx: Context) -> AsyncIterator[list[int]]:
    """Ids of endpoints a test made; deleted afterwards so later tests' events are not queued for them."""
    made: list[int] = []
    yield made
    async with ctx.pool.acquire() as conn:
        await conn.execute("DELETE FROM webhook_endpoints WHERE id = ANY($1::bigint[])", made)


async def register(base: str, token: str, url: str, made: list[int], types: list[str] | None = None,
                   **extra: Any) -> dict[str, Any]:
    async with client(token) as http, http.post(f"{base}/api/webhooks", json={
            "url": url, "event_types": types or ALL_TYPES, **extra}) as response:
        assert response.status == 201, await response.text()
        body = await response.json()
    made.append(body["id"])
    return body


async def deliveries(base: str, token: str, endpoint_id: int) -> list[dict[str, Any]]:
    async with client(token) as http, http.get(f"{base}/api/webhooks/{endpoint_id}/deliveries") as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["deliveries"])


async def send_test(base: str, token: str, endpoint_id: int) -> str:
    async with client(token) as http, http.post(f"{base}/api/webhooks/{endpoint_id}/test") as response:
        assert response.status == 202, await response.text()
        return str((await response.json())["event_id"])


async def delivery_of(ctx: Context, event_id: str) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM webhook_deliveries WHERE event_id = $1", event_id)
    assert row is not None
    return dict(row)


# --- every event type, from the code path that raises it -------------------------------------------------------
async def test_every_event_type_is_delivered_signed_from_its_real_code_path(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    async with receiver() as hook, webhook_worker(wh_ctx):
        created = await register(base, admin_token, hook.url, endpoints, description="LMS gradebook")
        secret = created["secret"]
        assert secret.startswith("whsec_") and len(secret) > 40
        async with client(admin_token) as http, http.get(f"{base}/api/webhooks/{created['id']}") as response:
            shown = await response.json()
        assert "secret" not in shown and secret not in json.dumps(shown)  # shown once, at creation

        session = await create_session(base, admin_token, candidate="Grace Hopper", exam="Webhooks 101")
        sid = session["id"]
        async with wh_ctx.pool.acquire() as conn:
            # What the media node does when it answers the candidate's offer (twice: a reconnect is no new start).
            assert await sessions.mark_live(conn, sid, "node-webhooks")
            assert await sessions.mark_live(conn, sid, "node-webhooks")
            # What analyzers/live.py does when a rule raises a flag: the insert in a transaction.
            async with conn.transaction():
                flag_id = await events.insert(conn, sid, "phone", 3.5, None, 0.87, {"count": 1})
            raised_at = time.monotonic()
            # A proctor's message is on the timeline but is no flag: nothing is sent for it.
            await events.insert(conn, sid, "proctor_message", 4.0, 4.0, 1.0, {"text": "hello"})
        await wait_for(lambda: _has(hook, "flag.raised", sid), 10, 0.02)
        flag_delay = next(r["at"] for r in hook.requests if json.loads(r["body"])["type"] == "flag.raised") - raised_at
        print(f"flag.raised reached the receiver {flag_delay * 1000:.0f} ms after the commit")
        assert flag_delay < 2.0  # the bound: within 2 s of the alert

        async with client(admin_token) as http:
            async with http.post(f"{base}/api/sessions/{sid}/end") as response:
                assert response.status == 202, await response.text()
            # The archive's finalize job (the worker's consumer; the end above queued it).
            stop = asyncio.Event()
            finalizer = asyncio.create_task(archive_consume(wh_ctx, "finalize", stop))
            try:
                await wait_for(lambda: _has(hook, "session.finalized", sid), 60, 0.1)
            finally:
                stop.set()
                await asyncio.wait_for(finalizer, 30)
            async with http.post(f"{base}/api/sessions/{sid}/events/{flag_id}/review",
                                 json={"state": "dismissed", "note": "a calculator"}) as response:
                assert response.status == 200, await response.text()
            async with http.post(f"{base}/api/sessions/{sid}/case", json={
                    "action": "decide", "decision": "cleared", "rationale": "The phone was a calculator."}) as response:
                assert response.status == 200, await response.text()
        await wait_for(lambda: _count(hook, "review.decided", sid, 2), 10, 0.05)

    got = [e for e in hook.events() if e["data"].get("session", {}).get("id") == sid]
    assert sorted(e["type"] for e in got) == sorted(
        ["session.started", "flag.raised", "session.ended", "session.finalized", "review.decided", "review.decided"])
    for request in hook.requests:
        assert signature_ok(secret, request), request["headers"]
        body = json.loads(request["body"])
        assert request["headers"]["Webhook-Id"] == body["id"]
        assert request["headers"]["Content-Type"] == "application/json"
        assert set(body) == {"id", "type", "created_at", "data"}
    assert len({e["id"] for e in got}) == len(got)  # one id per event
    by_type = {e["type"]: e["data"] for e in got}
    assert by_type["session.started"]["session"]["candidate"] == "Grace Hopper"
    assert by_type["session.started"]["session"]["status"] == "live"
    assert by_type["flag.raised"]["flag"] == {
        "id": flag_id, "kind": "phone", "source": "analyzer", "start_s": 3.5, "end_s": None, "confidence": 0.87,
        "review_state": "pending"}
    assert by_type["session.ended"]["session"]["end_reason"]
    assert by_type["session.finalized"]["session"]["status"] == "finalized"
    assert "master_video" in by_type["session.finalized"]
    decisions = {e["data"]["scope"]: e["data"] for e in got if e["type"] == "review.decided"}
    assert decisions["flag"]["decision"] == "dismissed" and decisions["flag"]["flag"]["id"] == flag_id
    assert decisions["case"]["decision"] == "cleared"
    assert decisions["case"]["rationale"] == "The phone was a calculator."
    assert decisions["case"]["decided_by"]
    log = await deliveries(base, admin_token, created["id"])
    assert {d["state"] for d in log} == {"delivered"} and all(d["attempts"] == 1 for d in log)
    assert all(d["last_status"] == 200 and d["delivered_at"] for d in log)


async def _has(hook: Receiver, event_type: str, sid: str) -> bool:
    return await _count(hook, event_type, sid, 1)


async def _count(hook: Receiver, event_type: str, sid: str, n: int) -> bool:
    return sum(1 for e in hook.events()
               if e["type"] == event_type and e["data"].get("session", {}).get("id") == sid) >= n


async def test_an_endpoint_gets_only_the_types_it_asked_for_and_nothing_when_disabled(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    async with receiver() as flags_only, receiver() as disabled, webhook_worker(wh_ctx):
        await register(base, admin_token, flags_only.url, endpoints, types=["flag.raised"])
        off = await register(base, admin_token, disabled.url, endpoints, enabled=False)
        sid = (await create_session(base, admin_token))["id"]
        async with wh_ctx.pool.acquire() as conn:
            await sessions.mark_live(conn, sid, "node-webhooks")
            await events.insert(conn, sid, "tab_hidden", 1.0, None, 1.0, {})
        await wait_for(lambda: _has(flags_only, "flag.raised", sid), 10)
        await send_test(base, admin_token, off["id"])  # a test event goes even to a disabled endpoint
        await wait_for(lambda: _any(disabled), 10)
    assert [e["type"] for e in flags_only.events() if e["data"].get("session", {}).get("id") == sid] == [
        "flag.raised"]
    assert [e["type"] for e in disabled.events()] == [store.TEST_TYPE]


async def _any(hook: Receiver) -> bool:
    return bool(hook.requests)


# --- retries, restarts, timeouts, redirects -------------------------------------------------------------------
async def test_a_500_is_retried_with_backoff_until_it_succeeds(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    async with receiver() as hook, webhook_worker(wh_ctx):
        created = await register(base, admin_token, hook.url, endpoints)
        hook.script.extend([500, 503])
        event_id = await send_test(base, admin_token, created["id"])
        await wait_for(lambda: _state(wh_ctx, event_id, "delivered"), 20)
    assert len(hook.requests) == 3
    assert {r["headers"]["Webhook-Id"] for r in hook.requests} == {event_id}
    assert all(signature_ok(created["secret"], r) for r in hook.requests)
    assert len({r["body"] for r in hook.requests}) == 1  # the same bytes every time
    row = await delivery_of(wh_ctx, event_id)
    assert row["attempts"] == 3 and row["last_status"] == 200 and row["last_error"] is None


def test_backoff_grows_threefold_with_jitter_and_spans_about_a_day_by_default() -> None:
    for attempt in range(1, 8):
        delays = [worker.backoff_s(attempt, 60) for _ in range(200)]
        nominal = min(worker.MAX_DELAY_S, 60 * 3 ** (attempt - 1))
        assert all(0.75 * nominal <= d <= 1.25 * nominal for d in delays)
        assert len(set(delays)) > 100  # jitter: endpoints that failed together come back apart
    total_h = sum(60 * 3 ** (a - 1) for a in range(1, 8)) / 3600
    assert 12 < total_h < 30  # 8 attempts (7 waits) with the defaults


async def _state(ctx: Context, event_id: str, state: str) -> bool:
    return (await delivery_of(ctx, event_id))["state"] == state


async def test_gives_up_after_the_attempt_limit_and_an_admin_sends_it_again(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    async with receiver() as hook, webhook_worker(wh_ctx):
        created = await register(base, admin_token, hook.url, endpoints)
        hook.script.extend([500, 500, 500])
        event_id = await send_test(base, admin_token, created["id"])
        await wait_for(lambda: _state(wh_ctx, event_id, "failed"), 20)
        log = await deliveries(base, admin_token, created["id"])
        assert log[0]["attempts"] == 3 and log[0]["last_status"] == 500 and "HTTP 500" in log[0]["last_error"]
        assert log[0]["next_attempt_at"] is None
        async with client(admin_token) as http:
            async with http.post(f"{base}/api/webhooks/deliveries/{log[0]['id']}/resend") as response:
                assert response.status == 202
            await wait_for(lambda: _state(wh_ctx, event_id, "delivered"), 20)
            async with http.post(f"{base}/api/webhooks/deliveries/{log[0]['id']}/resend") as response:
                assert response.status == 409  # only a failed one
    assert len(hook.requests) == 4 and {r["headers"]["Webhook-Id"] for r in hook.requests} == {event_id}


def _worker_env(settings: Settings) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url, "PROCTOR_DATA_DIR": str(settings.data_dir),
            "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789", "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_BASE_S": "0.5", "WEBHOOK_MAX_ATTEMPTS": "20", "WEBHOOK_TIMEOUT_S": "2",
            "LOG_LEVEL": "INFO"}


async def test_a_receiver_down_at_first_and_a_worker_killed_in_between_still_get_the_event(
        base: str, settings: Settings, wh_ctx: Context, admin_token: str, endpoints: list[int],
        tmp_path: Path) -> None:
    """`proctor worker --roles webhooks` as a process: attempts fail while nothing listens, the worker is killed
    (SIGKILL) between two attempts, the receiver comes up, a new worker process delivers the event."""
    port = free_port()
    created = await register(base, admin_token, f"http://127.0.0.1:{port}/hook", endpoints)
    log_path = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "proctor", "worker", "--roles", "webhooks"]
    with log_path.open("wb") as log_file:
        first = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=_worker_env(settings), stdout=log_file,
                                                     stderr=log_file)
        try:
            event_id = await send_test(base, admin_token, created["id"])
            await wait_for(lambda: _failed_attempts(wh_ctx, event_id, 2), 60, 0.05)
        finally:
            first.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.wait(), 10)
        row = await delivery_of(wh_ctx, event_id)
        assert row["state"] == "pending" and row["delivered_at"] is None
        assert "ClientConnector" in row["last_error"] or "refused" in row["last_error"].lower(), row["last_error"]
        async with receiver(port) as hook:
            second = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=_worker_env(settings),
                                                          stdout=log_file, stderr=log_file)
            try:
                await wait_for(lambda: _state(wh_ctx, event_id, "delivered"), 90, 0.2)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), 40)
    assert [r["headers"]["Webhook-Id"] for r in hook.requests] == [event_id]
    assert signature_ok(created["secret"], hook.requests[0])
    row = await delivery_of(wh_ctx, event_id)
    assert row["attempts"] >= 3 and row["last_status"] == 200
    assert second.returncode == 0, log_path.read_text()[-3000:]


async def test_a_job_lost_from_redis_is_queued_again(base: str, wh_ctx: Context, admin_token: str,
                                                    endpoints: list[int]) -> None:
    """The dispatcher put the delivery on the stream, then the stream was lost (a Redis without persistence
    restarted): once REQUEUE_AFTER_S has passed the delivery is put there again and delivered."""
    async with receiver() as hook:
        created = await register(base, admin_token, hook.url, endpoints)
        event_id = await send_test(base, admin_token, created["id"])
        assert await worker.dispatch_once(wh_ctx) >= 1
        assert (await delivery_of(wh_ctx, event_id))["queued_at"] is not None
        await wh_ctx.redis.delete(worker.WEBHOOK_STREAM)
        assert await worker.dispatch_once(wh_ctx) == 0  # queued a moment ago: not again yet
        async with wh_ctx.pool.acquire() as conn:  # as if REQUEUE_AFTER_S had passed
            await conn.execute("UPDATE webhook_deliveries SET queued_at = queued_at - make_interval(secs => $2) "
                               "WHERE event_id = $1", event_id, worker.REQUEUE_AFTER_S + 1)
        async with webhook_worker(wh_ctx):
            await wait_for(lambda: _state(wh_ctx, event_id, "delivered"), 20)
    assert [r["headers"]["Webhook-Id"] for r in hook.requests] == [event_id]


async def _failed_attempts(ctx: Context, event_id: str, n: int) -> bool:
    row = await delivery_of(ctx, event_id)
    return bool(row["attempts"] >= n and row["lease_until"] is None and row["last_error"])


async def test_a_redirect_is_not_followed(base: str, wh_ctx: Context, admin_token: str,
                                          endpoints: list[int]) -> None:
    async with receiver() as hook, webhook_worker(replace(wh_ctx, settings=replace(
            wh_ctx.settings, webhook_max_attempts=1))):
        created = await register(base, admin_token, hook.url, endpoints)
        hook.script.append("redirect")
        event_id = await send_test(base, admin_token, created["id"])
        await wait_for(lambda: _state(wh_ctx, event_id, "failed"), 20)
    row = await delivery_of(wh_ctx, event_id)
    assert row["last_status"] == 302 and "redirect" in row["last_error"] and "not followed" in row["last_error"]
    assert len(hook.requests) == 1 and hook.redirected == []


async def test_a_slow_receiver_is_timed_out(base: str, wh_ctx: Context, admin_token: str,
                                            endpoints: list[int]) -> None:
    quick = replace(wh_ctx, settings=replace(wh_ctx.settings, webhook_timeout_s=1.0, webhook_max_attempts=1))
    async with receiver() as hook, webhook_worker(quick):
        created = await register(base, admin_token, hook.url, endpoints)
        hook.script.append(("slow", 3))
        event_id = await send_test(base, admin_token, created["id"])
        await wait_for(lambda: _state(wh_ctx, event_id, "failed"), 20)
    row = await delivery_of(wh_ctx, event_id)
    assert row["last_status"] is None and "timed out after 1 s" in row["last_error"]
    assert row["last_attempt_at"] is not None


# --- SSRF ------------------------------------------------------------------------------------------------------
REFUSED_URLS = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fd00:ec2::254]/hook", "metadata"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.251/hook", "multicast"),
    ("http://2130706433/hook", "loopback"),  # 127.0.0.1 as one number: resolvers accept it
    ("http://127.1/hook", "loopback"),
    ("http://localhost:9000/hook", "loopback"),
    ("http://a.b.localhost/hook", "loopback"),
]


async def test_private_addresses_are_refused_at_registration_with_a_reason(
        web_server: Any, admin_token: str) -> None:
    """The suite's web app runs with WEBHOOK_ALLOW_PRIVATE off (the default)."""
    async with client(admin_token) as http:
        for url, reason in REFUSED_URLS:
            async with http.post(f"{web_server.url}/api/webhooks",
                                 json={"url": url, "event_types": ["flag.raised"]}) as response:
                body = await response.json()
                assert response.status == 400, (url, body)
                assert "refused" in body["error"] and reason in body["error"], (url, body)


async def test_allowing_private_addresses_still_refuses_the_metadata_address(
        base: str, admin_token: str, endpoints: list[int]) -> None:
    await register(base, admin_token, "http://127.0.0.1:9/hook", endpoints)
    async with client(admin_token) as http:
        for url in ("http://169.254.169.254/", "http://[::ffff:169.254.169.254]/", "http://[ff02::1]/"):
            async with http.post(f"{base}/api/webhooks", json={"url": url, "event_types": ALL_TYPES}) as response:
                assert response.status == 400, url


def test_the_address_policy() -> None:
    default, private = Policy(), Policy(allow_private=True)
    allow_list = Policy.from_settings(False, ("10.1.2.0/24",))
    ip = ipaddress.ip_address
    for address in ("127.0.0.1", "10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "::1",
                    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fe80::1", "fc00::1", "0.0.0.0", "::", "224.0.0.1",
                    "ff02::1", "100.64.0.1", "::7f00:1", "fd00:ec2::254", "64:ff9b::a00:1", "2002:7f00:1::1"):
        assert refusal(ip(address), default) is not None, address
    for address in ("93.184.215.14", "2606:4700::6810:85e5", "::ffff:93.184.215.14"):
        assert refusal(ip(address), default) is None, address
    assert refusal(ip("127.0.0.1"), private) is None and refusal(ip("::ffff:10.0.0.1"), private) is None
    assert refusal(ip("169.254.169.254"), private) == "a cloud metadata address"
    assert refusal(ip("224.0.0.1"), private) == "multicast"
    assert refusal(ip("10.1.2.7"), allow_list) is None and refusal(ip("10.1.3.7"), allow_list) == "private"
    assert host_refusal("0x7f000001", default) and host_refusal("LOCALHOST.", default)
    assert host_refusal("hooks.example.edu", default) is None


async def test_a_name_resolving_to_loopback_is_refused_at_delivery(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    """A name that passed registration (resolving elsewhere then: DNS rebinding) is checked again on every
    delivery, on every address it resolves to; with WEBHOOK_ALLOW_PRIVATE off a loopback answer is refused
    for good, and nothing reaches the receiver."""
    with pytest.raises(Refused, match=r"localhost resolves to (127\.0\.0\.1|::1), which is loopback"):
        await resolve_checked("localhost", 80, Policy())
    assert await resolve_checked("localhost", 80, Policy(allow_private=True))
    strict = replace(wh_ctx, settings=replace(wh_ctx.settings, webhook_allow_private=False))
    async with receiver() as hook:
        async with wh_ctx.pool.acquire() as conn:  # as if it had been registered while it resolved elsewhere
            row = await store.create_endpoint(conn, url=f"http://localhost:{hook.port}/hook", secret="s" * 32,
                                              event_types=ALL_TYPES, description="", enabled=True, actor="test")
        endpoints.append(row["id"])
        for_ip = await register(base, admin_token, hook.url, endpoints)  # a literal loopback address, too
        async with webhook_worker(strict):
            by_name = await send_test(base, admin_token, row["id"])
            by_ip = await send_test(base, admin_token, for_ip["id"])
            await wait_for(lambda: _state(wh_ctx, by_name, "failed"), 20)
            await wait_for(lambda: _state(wh_ctx, by_ip, "failed"), 20)
    named, literal = await delivery_of(wh_ctx, by_name), await delivery_of(wh_ctx, by_ip)
    assert named["attempts"] == 1 and re.search(r"refused: localhost resolves to .*loopback", named["last_error"])
    assert literal["attempts"] == 1 and "refused: 127.0.0.1 is loopback" in literal["last_error"]
    assert hook.requests == []


# --- bad input -------------------------------------------------------------------------------------------------
async def test_bad_input_is_a_400_that_says_why(base: str, admin_token: str, proctor_token: str,
                                                endpoints: list[int]) -> None:
    good = {"url": "https://hooks.example.edu/proctor", "event_types": ["flag.raised"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "url": "ftp://hooks.example.edu/x"}, "http:// or https://"),
        ({**good, "url": "javascript:alert(1)"}, "http:// or https://"),
        ({**good, "url": "file:///etc/passwd"}, "http:// or https://"),
        ({**good, "url": "gopher://hooks.example.edu:70/_x"}, "http:// or https://"),
        ({**good, "url": "https://hooks.example.edu/\u0000x"}, "NUL"),
        ({**good, "url": "https://hooks.example.edu/a b"}, "spaces"),
        ({**good, "url": "https://h\u00e9.example/"}, "punycode"),
        ({**good, "url": "https://" + "a" * 5000 + ".example/"}, "at most 2048"),
        ({**good, "url": "https://user:pw@hooks.example.edu/"}, "user name or password"),
        ({**good, "url": "https://hooks.example.edu:99999/"}, "not a valid URL"),
        ({**good, "url": "https:///path"}, "no host"),
        ({**good, "url": 42}, "url is required"),
        ({"event_types": ["flag.raised"]}, "url is required"),
        ({**good, "event_types": ["flag.raised", "cheating.detected"]}, "unknown type"),
        ({**good, "event_types": []}, "non-empty list"),
        ({**good, "event_types": "flag.raised"}, "non-empty list"),
        ({**good, "description": "x" * 201}, "at most 200"),
        ({**good, "description": "<b>\u0007</b>"}, "printable"),
        ({**good, "secret": "short"}, "16 to 256"),
        ({**good, "secret": "x" * 10_000}, "16 to 256"),
        ({**good, "enabled": "yes"}, "true or false"),
        ({**good, "colour": "blue"}, "unknown field"),
    ]
    async with client(admin_token) as http:
        for body, reason in cases:
            async with http.post(f"{base}/api/webhooks", json=body) as response:
                answer = await response.json()
                assert response.status == 400 and reason in answer["error"], (body, answer)
        async with http.post(f"{base}/api/webhooks", data=b"\xff\xfe", headers={
                "Content-Type": "application/json"}) as response:
            assert response.status == 400
        async with http.post(f"{base}/api/webhooks", data=b"x" * 100_000) as response:
            assert response.status == 413
        created = await register(base, admin_token, "https://hooks.example.edu/proctor", endpoints)
        async with http.patch(f"{base}/api/webhooks/{created['id']}", json={"url": "http://10.0.0.1/"}) as response:
            assert response.status == 200  # this app allows private addresses
        async with http.patch(f"{base}/api/webhooks/{created['id']}",
                              json={"secret": "a" * 20, "rotate_secret": True}) as response:
            assert response.status == 400
        async with http.patch(f"{base}/api/webhooks/{created['id']}", json={"rotate_secret": True}) as response:
            rotated = await response.json()
            assert response.status == 200 and rotated["secret"] != created["secret"]
        async with http.patch(f"{base}/api/webhooks/{created['id']}", json={"enabled": False}) as response:
            assert response.status == 200 and "secret" not in await response.json()
        for path in ("/api/webhooks/999999999999", "/api/webhooks/abc", "/api/webhooks/99999999999999999999999"):
            async with http.get(f"{base}{path}") as response:
                assert response.status == 404, path
        for query in ("limit=0", "limit=5000", "state=lost", "before=-1", "endpoint_id=x"):
            async with http.get(f"{base}/api/webhooks/deliveries?{query}") as response:
                assert response.status == 400, query
        async with http.post(f"{base}/api/webhooks/deliveries/999999999/resend") as response:
            assert response.status == 404
        async with http.delete(f"{base}/api/webhooks/{created['id']}") as response:
            assert response.status == 204
        async with http.delete(f"{base}/api/webhooks/{created['id']}") as response:
            assert response.status == 404
    async with client(proctor_token) as http, http.get(f"{base}/api/webhooks") as response:
        assert response.status == 403
    async with aiohttp.ClientSession() as http, http.post(f"{base}/api/webhooks", json=good) as response:
        assert response.status == 401


# --- the admin page --------------------------------------------------------------------------------------------
async def test_the_admin_page_adds_an_endpoint_tests_it_and_shows_the_log(
        base: str, ctx: Context, wh_ctx: Context, endpoints: list[int]) -> None:
    name = await make_user(ctx, "admin")
    async with receiver() as hook, webhook_worker(wh_ctx):
        http = await logged_in(base, name)
        try:
            async with http.get(f"{base}/admin/webhooks") as response:
                assert response.status == 200
                csrf = page_csrf(await response.text())
            form = aiohttp.FormData([("csrf_token", csrf), ("url", hook.url), ("description", "<i>LMS</i>"),
                                     ("event_types", "flag.raised"), ("event_types", "review.decided"),
                                     ("enabled", "1")])
            async with http.post(f"{base}/admin/webhooks", data=form) as response:
                page = await response.text()
                assert response.status == 201, page
            secret = re.search(r'id="webhook-secret">([^<]+)<', page)
            assert secret is not None
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT * FROM webhook_endpoints WHERE url = $1", hook.url)
            endpoints.append(row["id"])
            assert list(row["event_types"]) == ["flag.raised", "review.decided"]
            assert "&lt;i&gt;LMS&lt;/i&gt;" in page and "<i>LMS</i>" not in page  # escaped
            async with http.get(f"{base}/admin/webhooks") as response:
                assert secret.group(1) not in await response.text()  # shown once
            async with http.post(f"{base}/admin/webhooks/{row['id']}/test", data={"csrf_token": csrf}) as response:
                assert response.status == 200 and "Test event queued" in await response.text()
            await wait_for(lambda: _any(hook), 10)
            assert signature_ok(secret.group(1), hook.requests[0])
            await wait_for(lambda: _page_shows_delivered(http, base, row["id"]), 10)
            async with http.post(f"{base}/admin/webhooks", data={"csrf_token": csrf, "url": "ftp://x/",
                                                                  "event_types": "flag.raised"}) as response:
                assert response.status == 400 and "http:// or https://" in await response.text()
            async with http.post(f"{base}/admin/webhooks/{row['id']}/disable", data={}) as response:
                assert response.status == 403  # no CSRF token
            async with http.post(f"{base}/admin/webhooks/{row['id']}/disable",
                                 data={"csrf_token": csrf}) as response:
                assert response.status == 200 and 'data-enabled="false"' in await response.text()
        finally:
            await http.close()


async def _page_shows_delivered(http: aiohttp.ClientSession, base: str, endpoint_id: int) -> bool:
    async with http.get(f"{base}/admin/webhooks") as response:
        page = await response.text()
    return f'data-type="{store.TEST_TYPE}"' in page and 'data-state="delivered"' in page


# --- the README's receiver example -----------------------------------------------------------------------------
async def test_the_readme_receiver_example_verifies_real_deliveries(
        base: str, wh_ctx: Context, admin_token: str, endpoints: list[int]) -> None:
    spec = importlib.util.spec_from_file_location("webhook_receiver", ROOT / "examples" / "webhook_receiver.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    port = free_port()
    created = await register(base, admin_token, f"http://127.0.0.1:{port}/webhooks", endpoints)
    received: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        received.append(event)

    runner = web.AppRunner(example.make_app(created["secret"], on_event), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with webhook_worker(wh_ctx):
            event_id = await send_test(base, admin_token, created["id"])
            await wait_for(lambda: _state(wh_ctx, event_id, "delivered"), 20)
        assert [e["id"] for e in received] == [event_id]
        body = json.dumps({"id": "x", "type": "webhook.test", "created_at": "", "data": {}}).encode()
        now = int(time.time())
        good = hmac.new(created["secret"].encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
        stale = hmac.new(created["secret"].encode(), f"{now - 900}.".encode() + body, hashlib.sha256).hexdigest()
        async with aiohttp.ClientSession() as http:
            for timestamp, sig, status in ((now, "v1=" + "0" * 64, 400), (now - 900, f"v1={stale}", 400),
                                           (now, f"v1={good}", 200), (now, f"v1={good}", 200)):
                async with http.post(f"http://127.0.0.1:{port}/webhooks", data=body, headers={
                        "Webhook-Timestamp": str(timestamp), "Webhook-Signature": sig}) as response:
                    assert response.status == status
        assert [e["id"] for e in received] == [event_id, "x"]  # the repeat was recognised by its id
    finally:
        await runner.cleanup()


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
async def test_an_admin_manages_webhooks_in_the_browser(base: str, ctx: Context, wh_ctx: Context, browser: Any,
                                                        endpoints: list[int]) -> None:
    """Real Chromium under the page's own CSP: add an endpoint from the nav link, copy the secret shown once, send
    a test event, watch the log say delivered; a failing one shows "Send again", which delivers it."""
    name = await make_user(ctx, "admin")
    context, page = await browser_login(browser, base, name, bypass_csp=False)
    try:
        async with receiver() as hook, webhook_worker(wh_ctx):
            await page.click("#nav-webhooks")
            await page.wait_for_url(f"{base}/admin/webhooks")
            await page.fill("#webhook-url", hook.url)
            await page.uncheck('input[name="event_types"][value="session.started"]')
            await page.click("#webhook-add")
            secret = (await page.text_content("#webhook-secret") or "").strip()
            assert secret.startswith("whsec_")
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT * FROM webhook_endpoints WHERE url = $1", hook.url)
            endpoints.append(row["id"])
            assert "session.started" not in row["event_types"] and len(row["event_types"]) == 4
            endpoint_row = page.locator(f'tr[data-webhook-id="{row["id"]}"]')
            await endpoint_row.locator(".test-btn").click()
            assert "Test event queued" in (await page.text_content("#webhook-msg") or "")
            await wait_for(lambda: _any(hook), 10)
            assert signature_ok(secret, hook.requests[0])
            await _reload_until(page, 'tr[data-state="delivered"]')
            hook.script.extend([500, 500, 500])
            await page.locator(f'tr[data-webhook-id="{row["id"]}"] .test-btn').click()
            await _reload_until(page, 'tr[data-state="failed"] .resend-btn')
            failed = page.locator('tr[data-state="failed"]').first
            assert "HTTP 500" in (await failed.locator(".last-error").text_content() or "")
            await failed.locator(".resend-btn").click()
            assert "queued again" in (await page.text_content("#webhook-msg") or "")
            await _reload_until(page, 'tr[data-type="webhook.test"][data-state="delivered"] + tr, '
                                      'tr[data-state="delivered"] ~ tr[data-state="delivered"]')
            await page.screenshot(path=str(ARTIFACTS / "admin_webhooks.png"), full_page=True)
        assert len(hook.requests) == 5 and all(signature_ok(secret, r) for r in hook.requests)
    finally:
        await context.close()


async def _reload_until(page: Any, selector: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while await page.locator(selector).count() == 0:
        assert time.monotonic() < deadline, f"{selector} not on the page within {within}s"
        await asyncio.sleep(0.3)
        await page.goto(page.url.split("?")[0])
