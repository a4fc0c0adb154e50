"""Staff accounts for the web tests: a user with a known password, its login over HTTP (CSRF token from the form,
cookie session) and in headless Chromium, and the CSRF token a staff page carries."""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp

from proctor import accounts
from proctor.context import Context

PASSWORD = "correct horse battery staple"


async def make_user(ctx: Context, role: str = "admin", password: str = PASSWORD) -> str:
    name = f"web-{role}-{uuid.uuid4().hex[:8]}"
    async with ctx.pool.acquire() as conn:
        await accounts.create_user(conn, name, role, password)
    return name


def login_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def page_csrf(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]*)"', html)
    assert match and match.group(1), html
    return match.group(1)


async def post_login(http: aiohttp.ClientSession, base: str, name: str, password: str,
                     next_path: str = "/") -> aiohttp.ClientResponse:
    async with http.get(f"{base}/login") as response:
        assert response.status == 200
        token = login_token(await response.text())
    response = await http.post(f"{base}/login", data={"name": name, "password": password, "csrf_token": token,
                                                      "next": next_path}, allow_redirects=False)
    await response.read()
    return response


async def logged_in(base: str, name: str) -> aiohttp.ClientSession:
    """A client session holding a login cookie (unsafe jar: the server is on an IP address)."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    response = await post_login(http, base, name, PASSWORD)
    assert response.status == 302, await response.text()
    return http


async def browser_login(browser: Any, base: str, name: str, bypass_csp: bool = True) -> tuple[Any, Any]:
    # Playwright's wait_for_function evaluates strings in the page, which the pages' CSP (no 'unsafe-eval')
    # forbids; the login and sessions tests run under the real CSP.
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp,
                                        permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto(f"{base}/login")
    await page.fill("#name", name)
    await page.fill("#password", PASSWORD)
    await page.click("#login-btn")
    await page.wait_for_url(f"{base}/")
    return context, page
