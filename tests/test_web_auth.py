"""Staff accounts over HTTP: login form (CSRF, cookie flags), logout, rate limit, and that every staff page and
API route refuses a caller without a login (API: 401, pages: redirect to /login)."""

from __future__ import annotations

import re
import uuid
from http.cookies import SimpleCookie

import aiohttp
import pytest
from yarl import URL

from proctor.context import Context
from proctor.settings import Settings
from tests.support.accounts import PASSWORD, logged_in, make_user, page_csrf, post_login
from tests.support.servers import RunningApp

# Routes that are public or check the candidate's join token themselves.
# /report/{token}: a candidate's evidence report through a signed link (tests/test_report.py checks it).
# LTI 1.3 (lti/routes.py): what the LMS and the browser it sends call, each checked by its own proof (state cookie and
# signed id_token, a single-use reference), and our public keys (tests/test_lti.py checks them).
# /metrics: Prometheus scrapes, guarded by METRICS_TOKEN or loopback/METRICS_ALLOW (tests/test_metrics.py checks it).
# /metrics/targets: Prometheus service discovery, guarded like /metrics (METRICS_TOKEN or loopback/METRICS_ALLOW;
# tests/test_compose.py checks it).
PUBLIC = {"/login", "/static", "/healthz", "/metrics", "/metrics/targets", "/join/{token}", "/report/{token}",
          "/password/{token}", "/lti/login", "/lti/launch", "/lti/deep-link", "/.well-known/jwks.json"}
CANDIDATE = {"consent", "precheck", "reference", "offer", "state", "end"}


async def test_login_cookie_and_logout(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    name = await make_user(ctx, "proctor")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # Not logged in: pages go to the login form and come back afterwards.
        async with http.get(f"{base}/live", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] in ("/login?next=%2Flive", "/login?next=/live")
        # A form without its CSRF token is refused.
        async with http.post(f"{base}/login", data={"name": name, "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 403
        wrong = await post_login(http, base, name, "not the password")
        assert wrong.status == 401 and "Wrong name or password" in await wrong.text()
        assert "proctor_session" not in http.cookie_jar.filter_cookies(URL(base))

        right = await post_login(http, base, name, PASSWORD, next_path="/live")
        assert right.status == 302 and right.headers["Location"] == "/live"
        header = next(h for h in right.headers.getall("Set-Cookie") if h.startswith("proctor_session="))
        morsel = SimpleCookie(header)["proctor_session"]
        assert morsel["httponly"] is True and morsel["samesite"] == "Lax" and morsel["path"] == "/"
        assert morsel["secure"] == ""  # http base URL; https (PUBLIC_BASE_URL) sets Secure
        assert int(morsel["max-age"]) == 12 * 3600

        async with http.get(f"{base}/live") as response:
            assert response.status == 200
            csrf = page_csrf(await response.text())
            assert "Content-Security-Policy" in response.headers
        # State-changing calls from pages need the CSRF token; with it they work (Bearer calls never need it).
        body = {"candidate": "Cookie Carl", "exam": "CSRF 101"}
        async with http.post(f"{base}/api/sessions", json=body) as response:
            assert response.status == 403 and "CSRF" in (await response.json())["error"]
        async with http.post(f"{base}/api/sessions", json=body, headers={"X-CSRF-Token": "wrong"}) as response:
            assert response.status == 403
        async with http.post(f"{base}/api/sessions", json=body, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 201
        old_cookie = http.cookie_jar.filter_cookies(URL(base))["proctor_session"].value

        async with http.post(f"{base}/logout", data={"csrf_token": "bad"}, allow_redirects=False) as response:
            assert response.status == 403
        async with http.post(f"{base}/logout", data={"csrf_token": csrf}, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/login"
        async with http.get(f"{base}/live", allow_redirects=False) as response:
            assert response.status == 302
    # An open redirect through ?next= is not possible.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await post_login(http, base, name, PASSWORD, next_path="//evil.example")).headers["Location"] == "/"
    # The logged-out cookie is dead even if someone kept a copy.
    async with aiohttp.ClientSession(headers={"Cookie": f"proctor_session={old_cookie}"}) as http:
        async with http.get(f"{base}/api/sessions") as response:
            assert response.status == 401


async def test_disabled_account_and_forged_cookie(web_server: RunningApp, ctx: Context, settings: Settings) -> None:
    base = web_server.url
    name = await make_user(ctx, "proctor")
    http = await logged_in(base, name)
    try:
        async with http.get(f"{base}/api/sessions") as response:
            assert response.status == 200
        async with ctx.pool.acquire() as conn:
            await conn.execute("UPDATE users SET disabled = true WHERE name = $1", name)
        async with http.get(f"{base}/api/sessions") as response:
            assert response.status == 401
    finally:
        await http.close()
    from web import cookies

    admin = await make_user(ctx, "admin")
    async with ctx.pool.acquire() as conn:
        admin_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", admin)
    good, _ = cookies.issue(settings.signing_key(), admin_id)
    async with aiohttp.ClientSession(headers={"Cookie": f"proctor_session={good}"}) as anon:
        async with anon.get(f"{base}/api/sessions") as response:
            assert response.status == 200  # the control: a well-signed cookie works
    forged, _ = cookies.issue(b"another key that is long enough 0123456789", admin_id)
    expired, _ = cookies.issue(settings.signing_key(), admin_id, now=0)
    for value in (forged, expired, forged.replace(f"{admin_id}.", "1.", 1), "garbage"):
        async with aiohttp.ClientSession(headers={"Cookie": f"proctor_session={value}"}) as anon:
            async with anon.get(f"{base}/api/sessions") as response:
                assert response.status == 401


async def test_login_rate_limit(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    name = await make_user(ctx, "proctor")
    # From a loopback address of its own (the failures also count against the address, LOGIN_MAX_FAILURES_PER_ADDRESS:
    # the other tests log in from 127.0.0.1). More rules: tests/test_security_accounts.py.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector) as http:
        for _ in range(10):
            assert (await post_login(http, base, name, "wrong password!")).status == 401
        limited = await post_login(http, base, name, "wrong password!")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 500
        # Locked for this name and address even with the right password, until the window passes.
        assert (await post_login(http, base, name, PASSWORD)).status == 429
        # Another name from the same address is not affected (until the address's own, higher limit).
        other = await make_user(ctx, "proctor")
        assert (await post_login(http, base, other, PASSWORD)).status == 302
    async with ctx.pool.acquire() as conn:
        failures = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'login.failed' AND actor = $1",
                                       name)
    assert failures == 10


def _fill(path: str) -> str:
    values = {"session_id": str(uuid.uuid4()), "event_id": "1", "fmt": "csv", "idx": "0", "user_id": "1",
              "token_id": "1", "action": "disable", "webhook_id": "1", "delivery_id": "1"}
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values[m.group(1)], path)


async def test_every_staff_route_requires_login(web_server: RunningApp, settings: Settings,
                                                proctor_token: str) -> None:
    from web.app import create_app

    app = create_app(settings)  # a fresh app: every route registered, whoever added it
    checked: list[tuple[str, str, int]] = []
    async with aiohttp.ClientSession() as http:
        for route in app.router.routes():
            path = route.resource.canonical if route.resource else ""
            if path in PUBLIC or path.startswith("/static"):
                continue
            url = web_server.url + _fill(path)
            is_api = path.startswith("/api/")
            # No credentials at all, a candidate-style (join) token, and a bogus API token.
            for headers in ({}, {"Authorization": "Bearer not-a-join-token"}, {"Authorization": "Bearer pt_nope"}):
                if not is_api and headers:
                    continue
                async with http.request(route.method, url, headers=headers, allow_redirects=False) as response:
                    if is_api:
                        assert response.status == 401, (route.method, path, headers, response.status)
                    else:
                        assert response.status == 302, (route.method, path, response.status)
                        assert response.headers["Location"].startswith("/login"), (route.method, path)
                    checked.append((route.method, path, response.status))
        # The WebSocket refuses before upgrading.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{web_server.url}/api/live")
        assert refused.value.status == 401
        # ...and accepts an API token.
        async with http.ws_connect(f"{web_server.url}/api/live",
                                   headers={"Authorization": f"Bearer {proctor_token}"}) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello" and hello["role"] == "proctor"
    paths = {p for _, p, _ in checked}
    # Staff pages, the new review API, and the candidate routes (no join token) are all covered.
    for expected in ("/", "/live", "/sessions/{session_id}", "/api/live", "/logout",
                     "/api/sessions/{session_id}/events/{event_id}/review",
                     "/api/sessions/{session_id}/events/{event_id}/ack", "/api/sessions/{session_id}/events.{fmt}",
                     "/api/sessions/{session_id}/preview", "/api/sessions/{session_id}/segments/{idx}",
                     "/api/sessions/{session_id}/batches/{idx}", "/api/sessions/{session_id}/join-link",
                     "/admin/users", "/admin/users/{user_id}/{action}", "/admin/tokens/{token_id}/revoke"):
        assert expected in paths, expected
    assert {p.rsplit("/", 1)[-1] for p in paths if p.startswith("/api/sessions/{session_id}/")} >= CANDIDATE
    print(f"{len(checked)} unauthenticated requests refused over {len(paths)} routes")
