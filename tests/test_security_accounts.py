"""Issue 19 (outside security review), accounts: where a login may send you (`next`), the login throttle and the
cost of a password check, and revocation (join links, API tokens, accounts).

Each failed login here comes from a loopback address of its own (127.0.x.y: Linux answers the whole 127/8 on lo),
so the per-address counters of one test never touch another's, nor the 127.0.0.1 the rest of the suite logs in
from; the throttle's counters are cleared before and after each test.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import pytest

from proctor import accounts
from proctor.context import Context
from proctor.settings import Settings
from tests.support.accounts import PASSWORD, browser_login, logged_in, login_token, make_user, page_csrf
from tests.support.servers import RunningApp, own_web_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
async def fresh_throttle(ctx: Context) -> AsyncIterator[None]:
    await _clear_throttle(ctx)
    yield
    await _clear_throttle(ctx)


async def _clear_throttle(ctx: Context) -> None:
    keys = [key async for key in ctx.redis.scan_iter(match="proctor:web:login*")]
    if keys:
        await ctx.redis.delete(*keys)


# --- helpers -----------------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    location: str | None
    retry_after: str | None
    device: str | None  # the device cookie a successful login sets


def _client(addr: str, cookies: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A client whose requests come from `addr` (a loopback address), with an unsafe jar (the server is an IP)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), cookies=cookies,
                                 connector=aiohttp.TCPConnector(local_addr=(addr, 0), limit=0))


async def _form_token(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/login") as response:
        assert response.status == 200
        return login_token(await response.text())


async def _attempt(http: aiohttp.ClientSession, base: str, name: str, password: str, *, token: str | None = None,
                   next_path: str | None = None) -> Answer:
    token = token or await _form_token(http, base)
    data = {"name": name, "password": password, "csrf_token": token}
    if next_path is not None:
        data["next"] = next_path
    async with http.post(f"{base}/login", data=data, allow_redirects=False) as response:
        await response.read()
        device = response.cookies.get("proctor_device")
        return Answer(response.status, response.headers.get("Location"), response.headers.get("Retry-After"),
                      device.value if device else None)


async def _parallel(base: str, addr: str, attempts: list[tuple[str, str]]) -> list[Answer]:
    """All attempts at once from one address (one login form, so they really run side by side)."""
    async with _client(addr) as http:
        token = await _form_token(http, base)
        return list(await asyncio.gather(*(_attempt(http, base, n, p, token=token) for n, p in attempts)))


async def _login_from(base: str, addr: str, name: str, password: str = PASSWORD, device: str | None = None,
                      next_path: str | None = None) -> Answer:
    """One login from a fresh browser at `addr`, holding only `device` (a device cookie) if given."""
    async with _client(addr, {"proctor_device": device} if device else None) as http:
        return await _attempt(http, base, name, password, next_path=next_path)


async def _audit(ctx: Context, action: str, target: str) -> list[dict[str, Any]]:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT actor, action, target, details FROM audit_log WHERE action = $1 "
                                "AND target = $2 ORDER BY id", action, target)
    return [dict(r) for r in rows]


# --- 2. `next` after login never leaves the site ------------------------------------------------------------------

# What an attacker puts in ?next= (decoded): each means another host once a browser has normalised it (tabs and
# newlines dropped anywhere, leading/trailing controls and spaces stripped, "\" read as "/"), or is absolute.
EVIL_NEXT = [
    "//evil.example", "///evil.example", "/\t/evil.example", "/\n/evil.example", "/\r/evil.example",
    "/\r\n/evil.example", "/\t\t/evil.example", "/\\evil.example", "/\\/evil.example", "\\\\evil.example",
    "/\t\\evil.example", " //evil.example", "\t//evil.example", "\x00//evil.example", "/\x0b/evil.example",
    "/\x1f/evil.example", "//evil.example\t", "\u3000//evil.example", "https://evil.example/", "https:/evil.example",
    "http:evil.example", "javascript:alert(1)", "//evil.example/%2F..", "/%09/evil.example", "/%5C/evil.example",
    "/.//evil.example", "/./\t/evil.example",
]
# Paths on this site pass (percent-encoded where a browser would encode them).
GOOD_NEXT = [("/live", "/live"), ("/sessions/abc?status=live", "/sessions/abc?status=live"),
             ("/?q=Ada L&sort=score", "/?q=Ada%20L&sort=score")]


def _browser_target(location: str) -> tuple[str, str]:
    """(scheme, host) a browser goes to for this Location, read as WHATWG URL parsing reads it."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip("".join(chr(c) for c in range(0x21)))
    parts = urlsplit(urljoin("http://proctor.test/login", cleaned.replace("\\", "/")))
    return parts.scheme, parts.netloc


def _check_stays(location: str | None, raw: str) -> None:
    assert location is not None
    assert _browser_target(location) == ("http", "proctor.test"), (raw, location)
    assert not re.search(r"[\x00-\x20\x7f\\]", location), (raw, location)  # nothing left for a browser to fix


async def test_next_never_leaves_the_site(web_server: RunningApp, ctx: Context) -> None:
    """The review's probe: next=/%09/evil.example gave `Location: //evil.example`. Through the real login POST
    (the form's hidden field) and the GET /login redirect of a user who is already logged in."""
    base = web_server.url
    name = await make_user(ctx, "proctor")
    for raw in EVIL_NEXT:
        answer = await _login_from(base, "127.0.4.1", name, next_path=raw)
        if "\x00" in raw:  # a form field with NUL is refused outright (400, no redirect at all)
            assert (answer.status, answer.location) == (400, None)
            continue
        assert answer.status == 302
        _check_stays(answer.location, raw)
    for raw, expected in GOOD_NEXT:
        answer = await _login_from(base, "127.0.4.1", name, next_path=raw)
        assert (answer.status, answer.location) == (302, expected)
    async with _client("127.0.4.1") as http:
        assert (await _attempt(http, base, name, PASSWORD)).status == 302
        # Logged in now: GET /login?next=... redirects at once. The query as a link would carry it (encoded).
        for raw in EVIL_NEXT + ["/%2509/evil.example"]:
            async with http.get(f"{base}/login?next={quote(raw, safe='')}", allow_redirects=False) as response:
                assert response.status == 302
                _check_stays(response.headers.get("Location"), raw)
        async with http.get(f"{base}/login?next=/%09/evil.example", allow_redirects=False) as response:
            assert response.headers["Location"] == "/"  # the review's exact probe
        for raw, expected in GOOD_NEXT:
            async with http.get(f"{base}/login?next={quote(raw, safe='')}", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (302, expected)


@pytest.mark.browser
async def test_next_in_a_real_browser_stays_on_the_site(web_server: RunningApp, ctx: Context, browser: Any) -> None:
    """Chromium's own URL parsing decides: after the redirect it is still on our origin."""
    base = web_server.url
    name = await make_user(ctx, "admin")
    context, page = await browser_login(browser, base, name)
    hosts: list[str] = []
    page.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    try:
        for raw in EVIL_NEXT:
            hosts.clear()
            failure = None
            try:
                await page.goto(f"{base}/login?next={quote(raw, safe='')}")
            except Exception as exc:  # before the fix: net::ERR_NAME_NOT_RESOLVED (it went for evil.example)
                failure = str(exc).splitlines()[0]
            assert failure is None and page.url.startswith(f"{base}/"), (raw, page.url, failure)
            assert all(host == urlsplit(base).netloc for host in hosts), (raw, hosts)
    finally:
        await context.close()


# --- 3. the login throttle, and Argon2 off the event loop ---------------------------------------------------------

async def test_parallel_attempts_stop_exactly_at_the_limit(web_server: RunningApp, ctx: Context,
                                                           settings: Settings) -> None:
    """40 wrong passwords at once for one name from one address, against LOGIN_MAX_FAILURES (10): the review saw
    26 through (check, then increment). Exactly 10 are checked (401); the other 30 are 429 with Retry-After."""
    base = web_server.url
    name = await make_user(ctx, "proctor")
    answers = await _parallel(base, "127.0.5.1", [(name, "wrong password")] * 40)
    statuses = sorted(a.status for a in answers)
    assert statuses.count(401) == settings.login_max_failures == 10, statuses
    assert statuses.count(429) == 30, statuses
    assert all(a.retry_after and 0 < int(a.retry_after) <= settings.login_window_s
               for a in answers if a.status == 429)
    assert len(await _audit(ctx, "login.failed", f"user:{name}")) == 10
    # The right password from that address is refused too, until the window passes.
    assert (await _login_from(base, "127.0.5.1", name)).status == 429


async def test_password_spraying_from_one_address_is_throttled(web_server: RunningApp, ctx: Context,
                                                               settings: Settings) -> None:
    """30 names, one guess each, from one address: never throttled before (the key was name|address)."""
    base = web_server.url
    real = [await make_user(ctx, "proctor") for _ in range(3)]
    names = real + [f"nobody-{uuid.uuid4().hex[:8]}" for _ in range(27)]
    answers = await _parallel(base, "127.0.6.1", [(n, "Summer2026!") for n in names])
    statuses = [a.status for a in answers]
    assert statuses.count(401) == settings.login_max_failures_per_address == 20, statuses
    assert statuses.count(429) == 10, statuses
    # That address is stopped for every name, even with a right password; another address is not.
    assert (await _login_from(base, "127.0.6.1", real[0])).status == 429
    assert (await _login_from(base, "127.0.6.2", real[0])).status == 302


async def test_a_flood_does_not_lock_the_owner_out(web_server: RunningApp, ctx: Context,
                                                   settings: Settings) -> None:
    """Wrong passwords for one account from many addresses fill its account counter: a browser that never
    logged in to it is refused, but the owner's browser (device cookie from an earlier login) still gets in."""
    base = web_server.url
    victim, other = await make_user(ctx, "proctor"), await make_user(ctx, "proctor")
    first = await _login_from(base, "127.0.7.1", victim)
    assert first.status == 302 and first.device, "a login sets the device cookie"
    other_device = (await _login_from(base, "127.0.7.2", other)).device
    limit = settings.login_max_failures_per_account
    per_address = settings.login_max_failures - 1  # under the name+address and address limits
    floods = [f"127.0.8.{i + 1}" for i in range(-(-(limit + 5) // per_address))]
    answers = [a for addr in floods for a in await _parallel(base, addr, [(victim, "guess")] * per_address)]
    assert [a.status for a in answers].count(401) == limit
    assert {a.status for a in answers} == {401, 429}
    # A new browser with the right password: refused while the flood's failures count.
    fresh = await _login_from(base, "127.0.7.3", victim)
    assert fresh.status == 429 and fresh.retry_after
    # The owner's browser: in. Another user's device cookie, or a forged one, exempts nothing.
    assert (await _login_from(base, "127.0.7.4", victim, device=first.device)).status == 302
    assert (await _login_from(base, "127.0.7.5", victim, device=other_device)).status == 429
    forged = first.device.rsplit(".", 1)[0] + ".AAAA"
    assert (await _login_from(base, "127.0.7.6", victim, device=forged)).status == 429
    assert (await _login_from(base, "127.0.7.7", victim, device=first.device + "é")).status == 429


async def test_the_global_limit_and_device_cookies(settings: Settings, ctx: Context) -> None:
    """A distributed attack over many names and addresses trips the global limit; a known browser still logs in."""
    owner = await make_user(ctx, "proctor")
    async with own_web_app(settings, ctx, login_max_failures_global=5) as base:
        device = (await _login_from(base, "127.0.9.1", owner)).device
        for i in range(5):
            assert (await _login_from(base, f"127.0.9.{10 + i}", f"nobody-{i}", "guess")).status == 401
        newcomer = await make_user(ctx, "proctor")
        assert (await _login_from(base, "127.0.9.30", newcomer)).status == 429
        assert (await _login_from(base, "127.0.9.31", owner, device=device)).status == 302


async def test_login_hashing_leaves_the_event_loop_free(web_server: RunningApp, ctx: Context) -> None:
    """40 failed logins at once (40 addresses, so none is throttled) while the event loop's lag is sampled: the
    server runs on this very loop, so an Argon2 verify on it stalls the sampler for a whole verify or more
    (the review saw 4.5 s). On the hashing threads the loop keeps answering."""
    base = web_server.url
    loop = asyncio.get_running_loop()
    stored = await asyncio.to_thread(accounts.hash_password, "some password")
    one_verify = []
    for _ in range(3):
        started = time.perf_counter()
        await asyncio.to_thread(accounts.verify_password, stored, "wrong password")
        one_verify.append(time.perf_counter() - started)
    verify_s = min(one_verify)
    clients = [_client(f"127.0.10.{i + 1}") for i in range(40)]
    try:
        tokens = [await _form_token(http, base) for http in clients]
        lags: list[float] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - before - 0.01)

        unrelated: list[float] = []

        async def other_requests() -> None:
            async with aiohttp.ClientSession() as http:
                while not done.is_set():
                    started = time.perf_counter()
                    async with http.get(f"{base}/healthz") as response:
                        await response.read()
                    unrelated.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

        sampler, others = asyncio.create_task(sample()), asyncio.create_task(other_requests())
        started = time.perf_counter()
        answers = await asyncio.gather(*(_attempt(http, base, f"nobody-{uuid.uuid4().hex[:8]}", "wrong password",
                                                  token=token) for http, token in zip(clients, tokens, strict=True)))
        flood_s = time.perf_counter() - started
        done.set()
        await asyncio.gather(sampler, others)
    finally:
        for http in clients:
            await http.close()
    assert [a.status for a in answers] == [401] * 40
    worst = max(lags)
    print(f"one verify {verify_s:.3f} s; 40 logins {flood_s:.2f} s; loop lag max {worst * 1000:.0f} ms, "
          f"p50 {statistics.median(lags) * 1000:.1f} ms over {len(lags)} samples; unrelated request max "
          f"{max(unrelated) * 1000:.0f} ms over {len(unrelated)}")
    # 40 verifies on the loop stall it for ~40 verify times in all (the review saw single stalls of 4.5 s). The
    # total is what tells the two apart; one gap is only bounded generously, since a scheduler hiccup or a GC pause
    # on a busy 2-core machine can cost a few hundred ms without any verify on the loop (0.27 s seen once, idle).
    assert worst < max(1.0, 4 * verify_s), (worst, verify_s)
    # On the loop the 40 verifies would add up to ~40 verify times; 15 keeps well clear of that and of what a busy
    # machine adds on its own (7.1 verify times of lag summed, seen once in the whole suite with both cores hogged).
    assert sum(lag for lag in lags if lag > 0.05) < max(0.5, 15 * verify_s), (lags, verify_s)
    assert len(unrelated) >= 3 and max(unrelated) < max(1.0, 2 * verify_s), unrelated


async def test_unknown_and_disabled_accounts_cost_a_whole_verify(web_server: RunningApp, ctx: Context) -> None:
    """The review: a disabled account answered in 15 ms, an existing one in 588 ms (so disabled names showed).
    Wrong password for an existing account, an unknown name, a disabled account with its right password: the
    same Argon2 work, so the same time (medians of interleaved tries; a cheap answer is ~40x faster)."""
    base = web_server.url
    existing, disabled = await make_user(ctx, "proctor"), await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        assert await accounts.set_disabled(conn, disabled, True)
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    cases = {"existing": (existing, "wrong password"), "unknown": (unknown, PASSWORD), "disabled": (disabled, PASSWORD)}
    times: dict[str, list[float]] = {case: [] for case in cases}
    bodies: dict[str, set[str]] = {case: set() for case in cases}
    async with _client("127.0.11.1") as http:
        for _ in range(5):
            for case, (name, password) in cases.items():
                token = await _form_token(http, base)
                started = time.perf_counter()
                async with http.post(f"{base}/login", allow_redirects=False,
                                     data={"name": name, "password": password, "csrf_token": token}) as response:
                    text = await response.text()
                times[case].append(time.perf_counter() - started)
                assert response.status == 401, (case, response.status)
                bodies[case].add("Wrong name or password." if "Wrong name or password." in text else text)
    medians = {case: statistics.median(t) for case, t in times.items()}
    print({case: f"{m * 1000:.0f} ms" for case, m in medians.items()})
    assert bodies["existing"] == bodies["unknown"] == bodies["disabled"] == {"Wrong name or password."}
    assert medians["disabled"] > 0.4 * medians["existing"], medians
    assert medians["unknown"] > 0.4 * medians["existing"], medians


# --- 11. revocation: join links, API tokens, accounts -------------------------------------------------------------

async def _new_session(base: str, token: str) -> tuple[str, str]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/sessions", json={"candidate": "Rota Tion", "exam": "Links 101"}) as r:
            assert r.status == 201
            body = await r.json()
    return body["id"], body["join_url"].rsplit("/join/", 1)[1]


async def _state(base: str, session_id: str, join_token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {join_token}"}) as http:
        async with http.get(f"{base}/api/sessions/{session_id}/state") as response:
            return response.status, await response.json()


async def _join_page(base: str, join_token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/join/{join_token}") as response:
        return response.status


async def test_rotating_the_join_link_revokes_the_old_one(web_server: RunningApp, ctx: Context, admin_token: str,
                                                          proctor_token: str) -> None:
    base = web_server.url
    session_id, old = await _new_session(base, admin_token)
    assert (await _state(base, session_id, old))[0] == 200
    url = f"{base}/api/sessions/{session_id}/join-link"
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as response:
            assert response.status == 401  # staff only
        async with http.post(url, headers={"Authorization": f"Bearer {old}"}) as response:
            assert response.status == 401  # a candidate cannot rotate its own link
        async with http.post(url, headers={"Authorization": f"Bearer {proctor_token}"}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
    new = body["join_url"].rsplit("/join/", 1)[1]
    assert body["id"] == session_id and body["status"] == "created" and new != old
    assert body["join_url"] == f"{base}/join/{new}"
    assert await _state(base, session_id, old) == (401, {"error": "join link revoked"})
    assert await _join_page(base, old) == 401
    assert (await _state(base, session_id, new))[0] == 200
    assert await _join_page(base, new) == 200
    rotations = await _audit(ctx, "session.join_link.rotate", f"session:{session_id}")
    assert len(rotations) == 1 and rotations[0]["actor"].startswith("proctor-")
    # An ended session's link cannot be renewed.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
        async with http.post(f"{base}/api/sessions/{session_id}/end") as response:
            assert response.status == 202
        async with http.post(url) as response:
            assert response.status == 409 and (await response.json())["status"] == "ended"
        async with http.post(f"{base}/api/sessions/{uuid.uuid4()}/join-link") as response:
            assert response.status == 404


def _cli(servers: dict[str, str], *args: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **servers)
    return subprocess.run([sys.executable, "-m", "proctor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, input=stdin)


async def _api_status(base: str, token: str) -> int:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{base}/api/sessions?limit=1") as response:
            return response.status


async def test_cli_user_disable_enable_and_token_revoke(web_server: RunningApp, ctx: Context,
                                                        servers: dict[str, str]) -> None:
    base = web_server.url
    name, password = f"ops-{uuid.uuid4().hex[:6]}", "pw-" + uuid.uuid4().hex

    def cli(*args: str, stdin: str | None = "") -> Any:
        return asyncio.to_thread(_cli, servers, *args, stdin=stdin)

    # The password never on the command line: --password is gone; stdin (or the terminal's prompt) instead.
    gone = await cli("user", "add", name, "--password", password)
    assert gone.returncode == 2 and "unrecognized arguments" in gone.stderr
    no_tty = await cli("user", "add", name)
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    added = await cli("user", "add", name, "--role", "proctor", "--password-stdin", stdin=password + "\n")
    assert added.returncode == 0 and f"created proctor {name}" in added.stdout, added.stderr
    token = (await cli("token", "create", name, "--label", "ci")).stdout.strip().splitlines()[-1]
    assert await _api_status(base, token) == 200
    http = await _logged_in_as(base, name, password)
    try:
        async with http.get(f"{base}/api/sessions?limit=1") as response:
            assert response.status == 200
        listing = await cli("token", "list", name)
        assert listing.returncode == 0
        rows = [line.split("\t") for line in listing.stdout.strip().splitlines()[1:]]
        assert len(rows) == 1 and rows[0][1:3] == [name, "ci"] and rows[0][5] == "-"
        token_id = rows[0][0]

        disabled = await cli("user", "disable", name)
        assert disabled.returncode == 0 and f"{name} disabled" in disabled.stdout
        assert await _api_status(base, token) == 401  # its token stops at once
        async with http.get(f"{base}/api/sessions?limit=1") as response:
            assert response.status == 401  # and its login cookie
        assert (await _login_from(base, "127.0.12.1", name, password)).status == 401
        assert "disabled" in (await cli("user", "list")).stdout
        enabled = await cli("user", "enable", name)
        assert enabled.returncode == 0 and f"{name} enabled" in enabled.stdout
        assert await _api_status(base, token) == 200
        async with http.get(f"{base}/api/sessions?limit=1") as response:
            assert response.status == 200

        revoked = await cli("token", "revoke", token_id)
        assert revoked.returncode == 0 and f"token {token_id} revoked" in revoked.stdout
        assert await _api_status(base, token) == 401
        assert "already revoked" in (await cli("token", "revoke", token_id)).stdout
        assert (await cli("token", "list", name)).stdout.strip().splitlines()[1].split("\t")[5] != "-"
        second = (await cli("token", "create", name)).stdout.strip().splitlines()[-1]
        assert (await cli("token", "revoke", "--user", name)).returncode == 0
        assert await _api_status(base, second) == 401
        assert (await cli("user", "disable", f"no-{name}")).returncode == 2
    finally:
        await http.close()
    target = f"user:{name}"
    assert [r["actor"] for r in await _audit(ctx, "user.disable", target)] == ["system"]
    assert len(await _audit(ctx, "user.enable", target)) == 1
    assert len(await _audit(ctx, "token.revoke", target)) == 2


async def _logged_in_as(base: str, name: str, password: str) -> aiohttp.ClientSession:
    http = _client("127.0.12.2")
    answer = await _attempt(http, base, name, password)
    assert answer.status == 302
    return http


async def test_admin_users_page_disables_enables_and_revokes(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    admin, victim = await make_user(ctx, "admin"), await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        token = await accounts.create_token(conn, victim, "robot")
        token_id = await conn.fetchval("SELECT max(t.id) FROM api_tokens t JOIN users u ON u.id = t.user_id "
                                       "WHERE u.name = $1", victim)
        victim_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", victim)
        admin_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", admin)
    proctor_http = await logged_in(base, victim)
    http = await logged_in(base, admin)
    try:
        async with proctor_http.get(f"{base}/admin/users") as response:
            assert response.status == 403  # admins only
        async with http.get(f"{base}/admin/users") as response:
            assert response.status == 200
            page = await response.text()
        csrf = page_csrf(page)
        assert f'data-user="{victim}"' in page and f'data-token-id="{token_id}"' in page
        disable = f"{base}/admin/users/{victim_id}/disable"
        async with http.post(disable, data={"csrf_token": "wrong"}, allow_redirects=False) as response:
            assert response.status == 403  # the page's CSRF token is required
        async with http.post(disable, data={"csrf_token": csrf}, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/admin/users?done=disabled"
        assert await _api_status(base, token) == 401
        async with proctor_http.get(f"{base}/api/sessions") as response:
            assert response.status == 401
        async with http.get(f"{base}/admin/users?done=disabled") as response:
            page = await response.text()
            assert re.search(rf'data-user="{re.escape(victim)}"[^>]*data-disabled="true"', page)
            assert "Account disabled" in page
        async with http.post(f"{base}/admin/users/{victim_id}/enable", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.headers["Location"] == "/admin/users?done=enabled"
        assert await _api_status(base, token) == 200
        async with http.post(f"{base}/admin/tokens/{token_id}/revoke", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.headers["Location"] == "/admin/users?done=revoked"
        assert await _api_status(base, token) == 401
        async with http.post(f"{base}/admin/users/{admin_id}/disable", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.headers["Location"] == "/admin/users?done=self"  # not yourself, from here
        async with http.post(f"{base}/admin/users/999999999/disable", data={"csrf_token": csrf},
                             allow_redirects=False) as response:
            assert response.status == 404
    finally:
        await http.close()
        await proctor_http.close()
    target = f"user:{victim}"
    assert [r["actor"] for r in await _audit(ctx, "user.disable", target)] == [admin]
    assert [r["actor"] for r in await _audit(ctx, "user.enable", target)] == [admin]
    assert [r["details"]["token_id"] for r in await _audit(ctx, "token.revoke", target)] == [token_id]


@pytest.mark.browser
async def test_admin_buttons_in_the_browser(web_server: RunningApp, ctx: Context, browser: Any,
                                            admin_token: str) -> None:
    """The review page's "New join link" button and the users page's Disable/Enable/Revoke forms, clicked."""
    base = web_server.url
    admin, victim = await make_user(ctx, "admin"), await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        token = await accounts.create_token(conn, victim, "robot")
    session_id, old = await _new_session(base, admin_token)
    context, page = await browser_login(browser, base, admin)
    try:
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.goto(f"{base}/sessions/{session_id}")
        await page.click("#rotate-link-btn")
        await page.wait_for_selector("#rotate-link-box:not([hidden])")
        new_url = await page.input_value("#rotate-link-url")
        assert new_url.startswith(f"{base}/join/"), new_url
        assert (await _state(base, session_id, old))[0] == 401
        assert (await _state(base, session_id, new_url.rsplit("/join/", 1)[1]))[0] == 200

        await page.goto(f"{base}/admin/users")
        await page.click(f'tr[data-user="{victim}"] .disable-btn')
        await page.wait_for_url(f"{base}/admin/users?done=disabled")
        assert await _api_status(base, token) == 401
        await page.click(f'tr[data-user="{victim}"] .enable-btn')
        await page.wait_for_url(f"{base}/admin/users?done=enabled")
        assert await _api_status(base, token) == 200
        await page.click(f'tr[data-user="{victim}"] .revoke-btn')
        await page.wait_for_url(f"{base}/admin/users?done=revoked")
        assert await _api_status(base, token) == 401
        assert await page.locator("#admin-msg").inner_text() == "API token revoked."
    finally:
        await context.close()
