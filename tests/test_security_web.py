"""Issue 19, the web side of an outside security review of a fresh `proctor up`, probed over loopback.

- A candidate's name is data, never markup: a name that closes the page's <script> cannot blind the live monitor
  (every card, the WebSocket and its alerts still work) nor redirect or script the candidate's join page.
- Every response says `X-Content-Type-Options: nosniff` and carries a Content-Security-Policy (pages keep their own
  stricter one); /healthz without a login tells only the status of each component, the detail needs staff.
- At most LIVE_SOCKETS_PER_USER /api/live sockets per user (429 before the upgrade); the search text of
  GET /api/sessions?q= is matched literally (`%` and `_` are no wildcards).
- SIGTERM stops `proctor serve` promptly with live sockets open, even ones whose client stopped reading: the
  monitors see close code 1001 (going away).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proctor import accounts
from proctor.context import Context
from proctor.redis import LIVE_CHANNEL
from proctor.settings import Settings
from tests.support.accounts import browser_login
from tests.support.browser import have_chromium
from tests.support.net import free_port
from tests.support.servers import RunningApp
from tests.support.waiting import wait_for
from web.candidate import CANDIDATE_CSP
from web.login import CSP as STAFF_CSP

ROOT = Path(__file__).resolve().parents[1]

# Closes the page's <script> and leaves markup behind: an element with an inline handler, and a redirect.
EVIL_LIVE = "Eve</script><img src=x onerror=alert(1)>"
EVIL_JOIN = ('Eve</script><meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/evil">'
             '<img src=x onerror=alert(1)>')


async def _token(ctx: Context, role: str = "proctor") -> str:
    async with ctx.pool.acquire() as conn:
        name = f"sec-{role}-{uuid.uuid4().hex[:8]}"
        await accounts.create_user(conn, name, role, "correct horse battery")
        return await accounts.create_token(conn, name)


async def _live_session(ctx: Context, candidate: str) -> str:
    async with ctx.pool.acquire() as conn:
        return str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, last_seen_at) "
            "VALUES ($1, 'Security 101', 'live', 'n', now(), now(), now()) RETURNING id", candidate))


# --- 1. a candidate's name is data -----------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
async def test_hostile_candidate_name_does_not_blind_the_live_monitor(
        web_server: RunningApp, browser: Any, staff_user: dict[str, Any], ctx: Context) -> None:
    base = web_server.url
    evil = await _live_session(ctx, EVIL_LIVE)
    normal = await _live_session(ctx, "Norma Normal")
    async with ctx.pool.acquire() as conn:
        event_id = await conn.fetchval("INSERT INTO events (session_id, kind, start_s, confidence) "
                                       "VALUES ($1, 'phone', 3.0, 0.9) RETURNING id", evil)
    # The page's own CSP stays on: what matters is what the markup does, not what the CSP happens to block.
    context, page = await browser_login(browser, base, staff_user["name"], bypass_csp=False)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    try:
        await page.goto(f"{base}/live")
        await page.wait_for_selector("#ws-state[data-state=connected]", timeout=10_000)
        for sid, name in ((evil, EVIL_LIVE), (normal, "Norma Normal")):
            card = page.locator(f'article[data-session-id="{sid}"]')
            assert await card.count() == 1, f"no card for {name!r}"
            assert await card.locator(".candidate").text_content() == name  # shown as text, not parsed
        assert await page.locator('img[src="x"]').count() == 0  # the name made no element
        # A flag on the hostile session reaches the monitor over the WebSocket.
        message = {"type": "event", "action": "start", "session_id": evil, "at": time.time(),
                   "event": {"id": event_id, "kind": "phone", "start_s": 3.0, "end_s": None, "confidence": 0.9}}
        await ctx.redis.publish(LIVE_CHANNEL, json.dumps(message))
        await page.wait_for_selector(f'article[data-session-id="{evil}"].alert li[data-event-id="{event_id}"]',
                                     timeout=10_000)
        assert dialogs == []
    finally:
        await context.close()
        async with ctx.pool.acquire() as conn:
            await conn.execute("UPDATE sessions SET status = 'ended' WHERE id = ANY($1::uuid[])", [evil, normal])


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
@pytest.mark.parametrize("bypass_csp", [False, True], ids=["page-csp", "no-csp"])
async def test_hostile_candidate_name_cannot_redirect_or_script_the_join_page(
        web_server: RunningApp, browser: Any, admin_token: str, bypass_csp: bool) -> None:
    base = web_server.url
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
        async with http.post(f"{base}/api/sessions", json={"candidate": EVIL_JOIN, "exam": "Security 101"}) as r:
            assert r.status == 201, await r.text()
            join_url = (await r.json())["join_url"]
    # Even with the page's CSP switched off (an older browser, a proxy that strips it) nothing runs or redirects.
    context = await browser.new_context(bypass_csp=bypass_csp)
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    try:
        await page.goto(join_url)
        # The page's own script parsed its config and runs: ticking consent enables Continue.
        await page.check("#consent-box")
        await page.wait_for_selector("#consent-btn:not([disabled])", timeout=10_000)
        assert await page.locator('meta[http-equiv="refresh"]').count() == 0  # no redirect can happen
        assert await page.locator('img[src="x"]').count() == 0
        assert EVIL_JOIN in await page.locator("header.bar").text_content()  # the name, as text
        assert page.url == join_url
        assert dialogs == []
    finally:
        await context.close()


# --- 12. headers, and what /healthz tells whom -----------------------------------------------------------

async def test_every_response_has_a_csp_and_nosniff(web_server: RunningApp, admin_token: str) -> None:
    base = web_server.url
    auth = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession() as http:
        for path, headers, status in [
            ("/join/not-a-token", {}, 401),                 # the join error page (HTML)
            ("/api/sessions", auth, 200),                   # JSON
            ("/api/sessions", {}, 401),                     # a JSON error
            ("/no/such/page", {}, 404),
            ("/static/live.js", {}, 200),
            ("/static/no-such-file.js", {}, 404),
            ("/healthz", {}, None),                         # 200, or 503 "starting" when no media node is live
        ]:
            async with http.get(base + path, headers=headers, allow_redirects=False) as response:
                assert response.status == status or (status is None and response.status in (200, 503)), \
                    (path, response.status)
                assert response.headers.get("X-Content-Type-Options") == "nosniff", path
                csp = response.headers.get("Content-Security-Policy", "")
                assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        # Pages that set their own policy keep it.
        async with http.get(f"{base}/login") as response:
            assert response.headers["Content-Security-Policy"] == STAFF_CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        async with http.post(f"{base}/api/sessions", headers=auth, json={"candidate": "C", "exam": "E"}) as r:
            join_url = (await r.json())["join_url"]
        async with http.get(join_url) as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == CANDIDATE_CSP


async def test_healthz_tells_strangers_only_the_status(web_server: RunningApp, admin_token: str,
                                                       proctor_token: str, media_node: Any) -> None:
    base = web_server.url  # a live media node: ready
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
        assert response.status == 200
        public = await response.json()
    assert public["status"] == "ok"
    assert set(public) == {"status", "ready", "database", "redis", "storage", "models"}
    for name in ("database", "redis", "storage"):
        assert public[name] == {"status": "ok"}, public[name]
    assert set(public["models"]) == {"faces", "gaze", "identity", "phone"}
    assert all(set(m) == {"status"} for m in public["models"].values()), public["models"]
    assert public["models"]["phone"] == {"status": "ok"}  # the bundled NanoDet; its name is staff-only detail
    # Staff (an API token of either role) get the detail.
    for token in (admin_token, proctor_token):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                http.get(f"{base}/healthz") as response:
            assert response.status == 200
            body = await response.json()
        assert body["database"]["revision"] and body["storage"]["backend"] == "local"
        assert body["models"]["phone"]["detail"].startswith("bundled NanoDet-m 416")
        assert isinstance(body["media_nodes"], list)


# --- 13. limits ----------------------------------------------------------------------------------------

async def test_live_sockets_are_capped_per_user(web_server: RunningApp, ctx: Context, settings: Settings) -> None:
    base = web_server.url
    limit = settings.live_sockets_per_user
    assert limit == 8  # the default
    token, other = await _token(ctx), await _token(ctx)
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(f"{base}/api/live", headers=auth) for _ in range(limit)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                extra = await http.ws_connect(f"{base}/api/live", headers=auth)
                await extra.close()
            assert refused.value.status == 429
            # Another user is not affected.
            theirs = await http.ws_connect(f"{base}/api/live", headers={"Authorization": f"Bearer {other}"})
            assert json.loads((await theirs.receive(timeout=10)).data)["type"] == "hello"
            await theirs.close()
            # A closed socket frees its place.
            await sockets.pop().close()

            async def reconnects() -> Any:
                try:
                    return await http.ws_connect(f"{base}/api/live", headers=auth)
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 429
                    return None

            sockets.append(await wait_for(reconnects, within=10))
        finally:
            for ws in sockets:
                await ws.close()


async def test_session_search_matches_the_text_literally(web_server: RunningApp, admin_token: str) -> None:
    base = web_server.url
    auth = {"Authorization": f"Bearer {admin_token}"}
    tag = uuid.uuid4().hex[:8]
    names = {"under": f"{tag} snake_case", "percent": f"{tag} 100% sure", "slash": f"{tag} back\\slash",
             "plain": f"{tag} plain"}
    ids = {}
    async with aiohttp.ClientSession(headers=auth) as http:
        for key, name in names.items():
            async with http.post(f"{base}/api/sessions", json={"candidate": name, "exam": "Search"}) as r:
                assert r.status == 201
                ids[key] = (await r.json())["id"]

        async def search(q: str) -> list[dict[str, Any]]:
            async with http.get(f"{base}/api/sessions", params={"q": q, "limit": "500"}) as response:
                assert response.status == 200
                return await response.json()

        for q, key in (("%", "percent"), ("_", "under"), ("\\", "slash")):
            found = await search(q)
            assert all(q in s["candidate"] or q in s["exam"] for s in found), (q, [s["candidate"] for s in found])
            assert ids[key] in {s["id"] for s in found}
            assert ids["plain"] not in {s["id"] for s in found}
        assert {s["id"] for s in await search(f"{tag} 100%")} == {ids["percent"]}
        assert await search(f"{tag} 1_0") == []  # `_` is no single-character wildcard
        assert {s["id"] for s in await search(f"{tag} plain")} == {ids["plain"]}  # plain text still matches


# --- 14. shutdown ----------------------------------------------------------------------------------------

def _silent_socket(port: int, token: str) -> socket.socket:
    """A WebSocket client that upgrades and then never reads (a tiny receive buffer, so the server's writes
    back up): what a prober, or a frozen browser tab, leaves behind."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.slow
async def test_serve_closes_live_sockets_and_exits_promptly_on_sigterm(
        settings: Settings, servers: dict[str, str], ctx: Context, tmp_path: Path) -> None:
    port = free_port()
    token = await _token(ctx)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "HTTP_", "PUBLIC_"))}
    env.update(servers, PROCTOR_DATA_DIR=str(settings.data_dir), SECRET_KEY=settings.secret_key,
               HTTP_HOST="127.0.0.1", HTTP_PORT=str(port), LOG_LEVEL="INFO")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proctor", "serve", cwd=ROOT, env=env,
                                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    silent: list[socket.socket] = []
    try:
        async def up() -> bool:
            assert proc.returncode is None, log_path.read_text()
            try:
                # Serving: 200, or 503 "starting" while no media node is live (this test runs none).
                async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
                    return response.status in (200, 503) and "ready" in await response.json()
            except aiohttp.ClientError:
                return False

        await wait_for(up, within=90, interval=0.3)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            monitors = [await http.ws_connect(f"{base}/api/live") for _ in range(4)]
            for ws in monitors:
                assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
            silent = [await asyncio.to_thread(_silent_socket, port, token) for _ in range(2)]

            received = [0] * len(monitors)

            async def read_until_closed(i: int, ws: aiohttp.ClientWebSocketResponse) -> int | None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("state") == "noise":
                        received[i] += 1
                return ws.close_code

            readers = [asyncio.create_task(read_until_closed(i, ws)) for i, ws in enumerate(monitors)]
            # Enough traffic that the silent sockets' buffers fill up and the server's writes to them block.
            count, blob = 96, "x" * 32 * 1024
            for i in range(count):
                await ctx.redis.publish(LIVE_CHANNEL, json.dumps({"type": "hub", "state": "noise", "i": i,
                                                                  "pad": blob}))

            async def all_delivered() -> bool:
                return received == [count] * len(monitors)

            await wait_for(all_delivered, within=60)  # the monitors that read are up to date
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                raise AssertionError(
                    f"`proctor serve` still running 10 s after SIGTERM:\n{log_path.read_text()}") from None
            took = time.monotonic() - started
            print(f"proctor serve exited {took:.1f} s after SIGTERM")
            codes = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert proc.returncode == 0, log_path.read_text()
        assert codes == [1001] * len(monitors), codes
    finally:
        for sock in silent:
            sock.close()
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
