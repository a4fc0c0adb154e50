"""Issue 16, staff management: the rules behind /admin/users that the browser test does not reach: password links
(single use, superseded, tampered, expired, disabled account), the last enabled admin, token labels, and the admin
routes refusing proctors, missing CSRF tokens and bad input with a reason."""

from __future__ import annotations

import re
import time
import uuid

import aiohttp
import pytest

from proctor import accounts
from proctor.context import Context
from tests.support.accounts import PASSWORD, logged_in, make_user, page_csrf, post_login
from tests.support.servers import RunningApp

SECRET = b"k" * 32


async def test_password_links_work_once_and_only_the_newest(ctx: Context) -> None:
    name = await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        first = await accounts.issue_password_link(conn, SECRET, name, "boss")
        assert await accounts.authenticate(conn, name, PASSWORD) is None  # the old password stopped at once
        second = await accounts.issue_password_link(conn, SECRET, name, "boss")
        with pytest.raises(accounts.AccountError, match="invalid"):  # superseded by the newer link
            await accounts.use_password_link(conn, SECRET, first, "a brand new one")
        with pytest.raises(accounts.AccountError, match="password must be"):
            await accounts.use_password_link(conn, SECRET, second, "short")
        with pytest.raises(accounts.AccountError, match="invalid"):  # another server's key
            await accounts.password_link_account(conn, b"x" * 32, second)
        user_id, expires, mac = second.split(".")
        other_mac = ("B" if mac[0] == "A" else "A") + mac[1:]
        for forged in (f"{int(user_id) + 1}.{expires}.{mac}", f"{user_id}.{int(expires) + 999}.{mac}",
                       f"{user_id}.{expires}.{other_mac}", "1.2", "", "a.b.c", f"{user_id}.{expires}.{mac}\x00",
                       "9" * 40 + ".1.x", "é.1.x"):
            with pytest.raises(accounts.AccountError, match="invalid"):
                await accounts.password_link_account(conn, SECRET, forged)
        assert await accounts.use_password_link(conn, SECRET, second, "a brand new one") == name
        with pytest.raises(accounts.AccountError, match="invalid"):  # used
            await accounts.use_password_link(conn, SECRET, second, "and another one")
        assert await accounts.authenticate(conn, name, "a brand new one") is not None
        expired = await accounts.issue_password_link(conn, SECRET, name, "boss", ttl_s=-1)
        with pytest.raises(accounts.AccountError, match="expired"):
            await accounts.password_link_account(conn, SECRET, expired)
        current = await accounts.issue_password_link(conn, SECRET, name, "boss")
        await accounts.set_disabled(conn, name, True)
        with pytest.raises(accounts.AccountError, match="invalid"):  # a disabled account sets no password
            await accounts.password_link_account(conn, SECRET, current)


async def test_the_last_enabled_admin_keeps_the_role(ctx: Context) -> None:
    name = await make_user(ctx, "admin")
    async with ctx.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # every other admin disabled, inside a transaction that is rolled back
            await conn.execute("UPDATE users SET disabled = true WHERE role = 'admin' AND name <> $1", name)
            with pytest.raises(accounts.AccountError, match="last enabled admin"):
                await accounts.set_role(conn, name, "proctor", actor="t")
        finally:
            await tx.rollback()
        other = await make_user(ctx, "admin")
        assert await accounts.set_role(conn, other, "proctor", actor=name)
        assert not await accounts.set_role(conn, other, "proctor", actor=name)
        with pytest.raises(accounts.AccountError, match="role must be"):
            await accounts.set_role(conn, other, "root", actor=name)
        with pytest.raises(accounts.AccountError, match="no user"):
            await accounts.set_role(conn, f"nobody-{uuid.uuid4().hex}", "admin", actor=name)
        details = await conn.fetchval("SELECT details FROM audit_log WHERE action = 'user.role' AND target = $1 "
                                      "ORDER BY id DESC LIMIT 1", f"user:{other}")
        assert details == {"from": "admin", "to": "proctor"}


async def test_token_labels(ctx: Context) -> None:
    name = await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        for bad in ("", "   ", "x" * 101, "tab\there", "nul\x00"):
            with pytest.raises(accounts.AccountError, match="token label"):
                await accounts.create_token(conn, name, bad)
        token = await accounts.create_token(conn, name, "grading <sync>", actor="boss")
        assert (await accounts.user_for_token(conn, token)).name == name  # type: ignore[union-attr]
        assert await conn.fetchval("SELECT actor FROM audit_log WHERE action = 'token.create' AND target = $1 "
                                   "ORDER BY id DESC LIMIT 1", f"user:{name}") == "boss"


async def _users_page(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/admin/users") as response:
        assert response.status == 200
        return await response.text()


async def test_admin_routes_refuse_with_a_reason(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    admin = await make_user(ctx, "admin")
    target = await make_user(ctx, "proctor")
    async with ctx.pool.acquire() as conn:
        target_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", target)
    http = await logged_in(base, admin)
    try:
        csrf = page_csrf(await _users_page(http, base))
        # No CSRF token: refused before anything happens.
        async with http.post(f"{base}/admin/users", data={"name": "x-nocsrf", "role": "proctor"}) as response:
            assert response.status == 403
        cases = [
            ("/admin/users", {"name": "", "role": "proctor"}, 400, "user name"),
            ("/admin/users", {"name": "bad name!", "role": "proctor"}, 400, "user name"),
            ("/admin/users", {"name": "x" * 65, "role": "proctor"}, 400, "at most 64"),
            ("/admin/users", {"name": "nul\x00", "role": "proctor"}, 400, "NUL"),
            ("/admin/users", {"name": f"ok-{uuid.uuid4().hex[:6]}", "role": "root"}, 400, "role must be"),
            ("/admin/users", {"name": target, "role": "proctor"}, 409, "exists"),
            (f"/admin/users/{target_id}/role", {"role": "god"}, 400, "role must be"),
            (f"/admin/users/{target_id}/tokens", {"label": ""}, 400, "token label"),
            (f"/admin/users/{target_id}/tokens", {"label": "<script>x</script>" * 10}, 400, "at most 100"),
        ]
        for path, data, status, reason in cases:
            async with http.post(base + path, data={**data, "csrf_token": csrf}) as response:
                text = await response.text()
                assert response.status == status, (path, data, response.status)
                assert reason in text, (path, data, text[:500])
                assert "<script>x" not in text
        for path in (f"/admin/users/{2**40}/role", f"/admin/users/{2**40}/password-link", "/admin/users/abc/tokens"):
            async with http.post(base + path, data={"role": "admin", "label": "x", "csrf_token": csrf}) as response:
                assert response.status == 404, path
        # A password link for the target, used over HTTP: then the target logs in with the new password.
        async with http.post(f"{base}/admin/users/{target_id}/password-link", data={"csrf_token": csrf}) as response:
            assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
            link = re.search(r'id="password-link" readonly size="80" value="([^"]+)"', await response.text())
        assert link
        # The link page never shows up in the users list again.
        assert link.group(1) not in await _users_page(http, base)
    finally:
        await http.close()
    async with aiohttp.ClientSession() as anon:
        async with anon.get(link.group(1)) as response:
            assert response.status == 200 and response.headers["Referrer-Policy"] == "no-referrer"
        async with anon.post(link.group(1), data={"password": "long enough one", "confirm": "different one"}) as r:
            assert r.status == 400 and "differ" in await r.text()
        async with anon.post(link.group(1), data={"password": "short", "confirm": "short"}) as r:
            assert r.status == 400 and "8 to" in await r.text()
        async with anon.post(link.group(1), data={"password": "long enough one", "confirm": "long enough one"}) as r:
            assert r.status == 200 and "password-done" in await r.text()
        async with anon.get(link.group(1)) as response:
            assert response.status == 404 and "link-refused" in await response.text()
        async with anon.get(f"{base}/password/1.{int(time.time()) + 99}.forged") as response:
            assert response.status == 404
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        assert (await post_login(client, base, target, "long enough one")).status == 302
    # A proctor is refused the admin routes.
    http = await logged_in(base, await make_user(ctx, "proctor"))
    try:
        async with http.get(f"{base}/live") as response:
            csrf = page_csrf(await response.text())
        for path in ("/admin/users", f"/admin/users/{target_id}/role", f"/admin/users/{target_id}/tokens",
                     f"/admin/users/{target_id}/password-link"):
            async with http.post(base + path, data={"name": "x", "role": "admin", "label": "x",
                                                    "csrf_token": csrf}) as response:
                assert response.status == 403, path
    finally:
        await http.close()
