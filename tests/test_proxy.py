"""Behind a reverse proxy (web/proxy.py): the client's address comes from X-Forwarded-For only when the request
comes from a trusted proxy, so login throttling and the audit log see each client, and nobody else can pose as
another address."""

from __future__ import annotations

import re
import secrets
import uuid

import aiohttp
import pytest

from core.net import parse_networks
from proctor import accounts
from proctor.context import Context
from proctor.settings import Settings, SettingsError
from tests.support.servers import own_web_app
from web.login import LOGIN_MAX_FAILURES
from web.proxy import client_of, scheme_of

PROXIES = parse_networks(["10.0.0.0/8", "192.0.2.7", "::1"])


def test_client_is_the_first_untrusted_hop_from_the_right() -> None:
    # One proxy of ours: the client is what it appended.
    assert client_of("192.0.2.7", "203.0.113.5", PROXIES) == "203.0.113.5"
    # A client forging an address on the left does not get it: the proxy appended the real one.
    assert client_of("192.0.2.7", "1.2.3.4, 203.0.113.5", PROXIES) == "203.0.113.5"
    # Two proxies of ours in a row (a CDN edge in 10/8, then ours): skipped.
    assert client_of("10.1.1.1", "198.51.100.9, 10.2.2.2", PROXIES) == "198.51.100.9"
    # Ports and IPv6 brackets as some proxies write them.
    assert client_of("192.0.2.7", "[2001:db8::1]:443", PROXIES) == "2001:db8::1"
    assert client_of("::1", "198.51.100.9:5555", PROXIES) == "198.51.100.9"
    # Only proxies in the chain: the first one is the client (a health check from inside).
    assert client_of("192.0.2.7", "10.3.3.3", PROXIES) == "10.3.3.3"


def test_headers_from_anyone_else_are_ignored() -> None:
    assert client_of("203.0.113.5", "1.2.3.4", PROXIES) is None  # not a proxy of ours: keep the peer
    assert client_of("192.0.2.7", "1.2.3.4", ()) is None  # nothing trusted (the default)
    assert client_of("192.0.2.7", "", PROXIES) is None
    assert client_of(None, "1.2.3.4", PROXIES) is None
    assert client_of("192.0.2.7", "1.2.3.4, not-an-ip", PROXIES) is None  # garbled: trust none of it
    assert scheme_of("192.0.2.7", "https", PROXIES) == "https"
    assert scheme_of("192.0.2.7", "http, https", PROXIES) == "https"  # the hop nearest us
    assert scheme_of("203.0.113.5", "https", PROXIES) is None
    assert scheme_of("192.0.2.7", "gopher", PROXIES) is None


def test_trusted_proxies_setting_is_checked() -> None:
    env = {"TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7"}
    assert Settings.from_env(env, env_file=None).trusted_proxies == ("10.0.0.0/8", "192.0.2.7")
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES: expected an IP address or CIDR network, got 'exa"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, example.com"}, env_file=None)


async def _login(base: str, name: str, password: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{base}/login", headers=headers) as response:
            nonce = response.cookies["proctor_login"].value
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', await response.text())
        assert csrf
        async with http.post(f"{base}/login", allow_redirects=False,
                             headers={**headers, "Cookie": f"proctor_login={nonce}"},
                             data={"name": name, "password": password, "csrf_token": csrf.group(1)}) as response:
            await response.read()
            return response


async def _audit_ips(ctx: Context, name: str) -> list[str]:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT details FROM audit_log WHERE target = $1 AND action LIKE 'login%' "
                                "ORDER BY id", f"user:{name}")
    return [r["details"]["ip"] for r in rows]


async def test_throttling_and_audit_see_each_client_behind_the_proxy(settings: Settings, ctx: Context) -> None:
    """Loopback is the proxy here. One client failing LOGIN_MAX_FAILURES times is throttled; a second client
    behind the same proxy still logs in to the same account, and the audit log names both addresses."""
    name, password = f"proxy-{uuid.uuid4().hex[:6]}", "pw-" + secrets.token_hex(8)
    async with ctx.pool.acquire() as conn:
        await accounts.create_user(conn, name, "proctor", password)
    attacker, colleague = {"X-Forwarded-For": "203.0.113.66"}, {"X-Forwarded-For": "198.51.100.20"}
    async with own_web_app(settings, ctx, public_base_url="", trusted_proxies=("127.0.0.1",)) as base:
        for _ in range(LOGIN_MAX_FAILURES):
            assert (await _login(base, name, "wrong", attacker)).status == 401
        assert (await _login(base, name, password, attacker)).status == 429
        ok = await _login(base, name, password, {**colleague, "X-Forwarded-Proto": "https"})
        assert ok.status == 302
        # https at the proxy: the session cookie is Secure even though PUBLIC_BASE_URL is empty.
        assert ok.cookies["proctor_session"]["secure"] is True
    ips = await _audit_ips(ctx, name)
    assert ips == ["203.0.113.66"] * LOGIN_MAX_FAILURES + ["198.51.100.20"]


async def test_forged_headers_are_ignored_without_trusted_proxies(settings: Settings, ctx: Context) -> None:
    """The default trusts no header: a client that forges X-Forwarded-For is still itself (it cannot dodge the
    throttle by changing the header, nor write another address into the audit log), and gets no Secure cookie
    over http by claiming https."""
    name, password = f"forge-{uuid.uuid4().hex[:6]}", "pw-" + secrets.token_hex(8)
    async with ctx.pool.acquire() as conn:
        await accounts.create_user(conn, name, "proctor", password)
    async with own_web_app(settings, ctx, public_base_url="", trusted_proxies=()) as base:
        for i in range(LOGIN_MAX_FAILURES):
            assert (await _login(base, name, "wrong", {"X-Forwarded-For": f"203.0.113.{i}"})).status == 401
        assert (await _login(base, name, password, {"X-Forwarded-For": "198.51.100.20"})).status == 429
    assert set(await _audit_ips(ctx, name)) == {"127.0.0.1"}
