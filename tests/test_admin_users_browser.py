"""Issue 16, staff management in the UI, in real headless Chromium under the pages' real CSP: an admin adds a user
(who sets their password with the one-time link), resets a password, changes a role, creates an API token that
then authenticates an API call, revokes it (then 401), and disables the user (their login then fails). Every step
is audit-logged with the admin as the actor."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from proctor.context import Context
from tests.support.accounts import PASSWORD, browser_login, make_user
from tests.support.browser import have_chromium
from tests.support.paths import ARTIFACTS
from tests.support.servers import RunningApp

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="no chromium")]


async def _api(base: str, token: str) -> int:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"{base}/api/sessions?limit=1") as response:
            return response.status


async def _choose_password(browser: Any, link: str, password: str) -> None:
    """The new user's side: open the link in their own browser and set the password."""
    context = await browser.new_context(bypass_csp=False)
    try:
        page = await context.new_page()
        await page.goto(link)
        await page.fill("#new-password", password)
        await page.fill("#confirm-password", password)
        await page.click("#password-btn")
        await page.wait_for_selector("#password-done")
        # The link worked once.
        await page.goto(link)
        assert await page.locator("#link-refused").is_visible()
    finally:
        await context.close()


async def _login(browser: Any, base: str, name: str, password: str) -> bool:
    """Log in from a fresh browser: True when it lands on the sessions list, False when the form refuses."""
    context = await browser.new_context(bypass_csp=False)
    try:
        page = await context.new_page()
        await page.goto(f"{base}/login")
        await page.fill("#name", name)
        await page.fill("#password", password)
        await page.click("#login-btn")
        await page.wait_for_load_state()
        if await page.locator("#login-error").count():
            return False
        return page.url == f"{base}/"
    finally:
        await context.close()


async def test_admin_manages_a_user_and_tokens_without_the_shell(web_server: RunningApp, ctx: Context,
                                                                 browser: Any) -> None:
    base = web_server.url
    admin = await make_user(ctx, "admin")
    name = f"new-{uuid.uuid4().hex[:8]}"
    context, page = await browser_login(browser, base, admin, bypass_csp=False)
    try:
        await page.goto(f"{base}/admin/users")
        # 1. Add a user: the page shows a one-time link for them to choose a password.
        await page.fill("#add-user-name", name)
        await page.select_option("#add-user-role", "proctor")
        await page.click("#add-user-btn")
        await page.wait_for_selector("#password-link")
        first_link = await page.input_value("#password-link")
        assert first_link.startswith(f"{base}/password/")
        row = page.locator(f'tr[data-user="{name}"]')
        assert await row.count() == 1
        assert not await _login(browser, base, name, PASSWORD)  # no password before the link is used
        await _choose_password(browser, first_link, "first passphrase here")
        assert await _login(browser, base, name, "first passphrase here")

        # 2. Reset the password: the old one stops working at once, the new link sets another.
        await page.goto(f"{base}/admin/users")
        await row.locator(".reset-btn").click()
        await page.wait_for_selector("#password-link")
        reset_link = await page.input_value("#password-link")
        assert reset_link != first_link
        assert not await _login(browser, base, name, "first passphrase here")
        await _choose_password(browser, reset_link, "second passphrase here")
        assert await _login(browser, base, name, "second passphrase here")

        # 3. Change the role.
        await page.goto(f"{base}/admin/users")
        await row.locator("select.role-select").select_option("admin")
        await row.locator(".role-btn").click()
        await page.wait_for_selector("#admin-msg")
        async with ctx.pool.acquire() as conn:
            assert await conn.fetchval("SELECT role FROM users WHERE name = $1", name) == "admin"

        # 4. A token for the user, shown once; it authenticates API calls as them.
        await row.locator(".token-label").fill("grading sync")
        await row.locator(".token-btn").click()
        await page.wait_for_selector("#new-token")
        token = await page.input_value("#new-token")
        assert token.startswith("pt_")
        assert await _api(base, token) == 200
        await page.screenshot(path=str(ARTIFACTS / "admin_users_token.png"), full_page=True)
        await page.goto(f"{base}/admin/users")
        assert token not in await page.content()  # shown once, never again

        # 5. Revoke it: the next call is a 401.
        token_row = row.locator('.token[data-revoked="false"]')
        assert await token_row.count() == 1
        await token_row.locator(".revoke-btn").click()
        await page.wait_for_selector("#admin-msg")
        assert await _api(base, token) == 401

        # 6. Disable the user: their login fails.
        await row.locator(".disable-btn").click()
        await page.wait_for_selector("#admin-msg")
        assert await page.locator(f'tr[data-user="{name}"][data-disabled="true"]').count() == 1
        assert not await _login(browser, base, name, "second passphrase here")
        # ... and enable again: it works again.
        await page.locator(f'tr[data-user="{name}"] .enable-btn').click()
        await page.wait_for_selector("#admin-msg")
        assert await _login(browser, base, name, "second passphrase here")
    finally:
        await context.close()

    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT actor, action FROM audit_log WHERE target = $1 ORDER BY id", f"user:{name}")
    by_admin = [r["action"] for r in rows if r["actor"] == admin]
    assert by_admin == ["user.create", "user.password_link", "user.password_reset", "user.role", "token.create",
                        "token.revoke", "user.disable", "user.enable"], rows
    assert [r["action"] for r in rows if r["action"] == "user.password_set"] == ["user.password_set"] * 2
    assert {r["actor"] for r in rows if r["action"] == "user.password_set"} == {name}  # done by the owner


async def test_admin_page_refuses_bad_input_with_a_reason(web_server: RunningApp, ctx: Context,
                                                          browser: Any) -> None:
    base = web_server.url
    admin = await make_user(ctx, "admin")
    context, page = await browser_login(browser, base, admin, bypass_csp=False)
    try:
        await page.goto(f"{base}/admin/users")
        # Markup in a name is refused (and shown escaped), an existing name too.
        await page.locator("#add-user-form").evaluate("form => { form.noValidate = true; }")
        await page.fill("#add-user-name", "<b>x</b>")
        async with page.expect_response(lambda r: r.url == f"{base}/admin/users"
                                        and r.request.method == "POST") as answer:
            await page.click("#add-user-btn")
        assert (await answer.value).status == 400
        assert "user name" in await page.inner_text("#admin-error")
        assert await page.locator("b", has_text="x").count() == 0
        await page.fill("#add-user-name", admin)
        await page.click("#add-user-btn")
        await page.wait_for_selector("#admin-error")
        assert "exists" in await page.inner_text("#admin-error")
    finally:
        await context.close()
