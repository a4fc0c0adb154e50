"""Staff login and logout in the browser, and what every staff page needs (login redirect, CSRF token, headers).

- GET /login: the form, with a CSRF token bound to a short-lived pre-login cookie.
- POST /login: name + password (Argon2 on the hashing threads, proctor.accounts), throttled by
  web/login_throttle.py (failed logins per name and address, per address, per account and overall; a browser
  that logged in to the account before is exempt from all but its own limit): 429 with Retry-After when a limit
  is reached. A successful login sets the session cookie and renews the browser's device cookie.
- POST /logout: forgets the session id (Redis, until the cookie would have expired) and clears the cookie.
- ?next= (where to go after logging in) is only ever a path on this site (`safe_next`).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
import asyncpg
from aiohttp import web
from yarl import URL

from proctor import accounts, metrics
from proctor.http import CTX, USER, ascii_only, read_form, unstorable
from proctor.settings import Settings
from web import cookies, login_throttle

log = logging.getLogger(__name__)

# The defaults of LOGIN_MAX_FAILURES (one name from one address) and LOGIN_WINDOW_S; the settings rule.
LOGIN_MAX_FAILURES = Settings.defaults().login_max_failures
LOGIN_WINDOW_S = Settings.defaults().login_window_s
MAX_NEXT = 2000
# Characters `next` may hold as they are; anything else is percent-encoded (a browser reads it the same way).
_NEXT_SAFE = "/?&=#%:@!$'()*+,;~-._"
# Staff pages load only their own scripts, styles and media; the master may be a presigned https URL (S3/R2).
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self' https: blob:; connect-src 'self'; "
       "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def page_user(request: web.Request) -> accounts.User:
    """The logged-in user of a staff page, or a redirect to the login form that comes back here."""
    user = request.get(USER)
    if user is None:
        raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
    return user


def csrf_for(request: web.Request) -> str:
    claims = request.get(cookies.SESSION)
    return cookies.csrf_token(request.app[CTX].settings.signing_key(), claims.sid) if claims else ""


def render_page(template: str, request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
    user = request.get(USER)
    response = aiohttp_jinja2.render_template(template, request, {
        "user": user, "csrf_token": csrf_for(request) if user else "", **context})
    response.set_status(status)
    secure_headers(response)
    return response


def secure_headers(response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"


def _secure(request: web.Request) -> bool:
    # https as users reach us: PUBLIC_BASE_URL, or a trusted proxy's X-Forwarded-Proto (web/proxy.py).
    return request.app[CTX].settings.base_url.startswith("https://") or request.scheme == "https"


def safe_next(raw: str | None) -> str:
    """Where to go after logging in: a path on this site, or "/".

    Browsers drop tabs and newlines anywhere in a URL, strip leading spaces and control characters, and read
    a backslash as a slash, so "/\t/evil.example", " //evil.example" and "/\\evil.example" all mean
    //evil.example (another host). A value with any control character, whitespace at either end, or a
    backslash is refused; the rest must be an absolute path with no scheme or host ("//..." is a host), and is
    sent percent-encoded so the browser has nothing left to normalise.
    """
    if not raw or len(raw) > MAX_NEXT or raw != raw.strip() or "\\" in raw:
        return "/"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in raw):
        return "/"
    value = quote(raw, safe=_NEXT_SAFE)
    if not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or str(URL(value)).startswith("//"):  # aiohttp's Location goes through yarl
        return "/"
    return value


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


async def login_form(request: web.Request, error: str | None = None, status: int = 200,
                     name: str = "", next_path: str | None = None) -> web.Response:
    if request.get(USER) is not None and request.method == "GET":
        raise web.HTTPFound(safe_next(request.query.get("next")))
    key = request.app[CTX].settings.signing_key()
    nonce = ascii_only(request.cookies.get(cookies.LOGIN_COOKIE)) or cookies.login_nonce()
    response = render_page("login.html", request, {
        "login_csrf": cookies.login_csrf(key, nonce), "next": safe_next(next_path or request.query.get("next")),
        "error": error, "name": name}, status=status)
    response.set_cookie(cookies.LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="Lax",
                        secure=_secure(request), path="/login")
    return response


async def login_get(request: web.Request) -> web.Response:
    return await login_form(request)


async def login_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = ctx.settings.signing_key()
    form = await read_form(request)  # 400 when the fields cannot be decoded (unknown charset, bytes not in it)
    name = str(form.get("name", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    nonce = ascii_only(request.cookies.get(cookies.LOGIN_COOKIE))
    presented = ascii_only(str(form.get(cookies.CSRF_FIELD, "")))
    raw_next = str(form.get("next", ""))
    if any(unstorable(value) for value in (name, password, raw_next)):  # NUL, unpaired surrogates
        return await login_form(request, "The name or password holds characters that cannot be used.", 400)
    next_path = safe_next(raw_next or request.query.get("next"))
    if not nonce or not _login_csrf_ok(key, nonce, presented):
        return await login_form(request, "The form expired; please try again.", 403, name, next_path)
    client = _client(request)
    account = await accounts.login_account(ctx.pool, name)
    slot = await _take_slot(request, name, account)
    if isinstance(slot, login_throttle.Refused):
        log.info("login throttled (%s) for %r from %s", slot.rule, name, client)
        metrics.login_failed("throttled")
        response = await login_form(request, f"Too many failed attempts; try again in {slot.retry_after_s} s.",
                                    429, name, next_path)
        response.headers["Retry-After"] = str(slot.retry_after_s)
        return response
    # No database connection is held while Argon2 runs (on the hashing threads).
    user = await accounts.check_login(ctx.pool, account, password)
    if user is None:
        metrics.login_failed("wrong_password")
        async with ctx.pool.acquire() as conn:
            await accounts.audit(conn, name or "?", "login.failed", f"user:{name}", {"ip": client})
        return await login_form(request, "Wrong name or password.", 401, name, next_path)
    await login_throttle.give_back(ctx.redis, slot)
    async with ctx.pool.acquire() as conn:
        await accounts.audit(conn, user.name, "login", f"user:{user.name}", {"ip": client})
    value, _ = cookies.issue(key, user.id)
    response = web.HTTPFound(next_path)
    response.set_cookie(cookies.COOKIE, value, max_age=cookies.MAX_AGE_S, httponly=True, samesite="Lax",
                        secure=_secure(request), path="/")
    response.set_cookie(cookies.DEVICE_COOKIE, cookies.issue_device(key, user.id), max_age=cookies.DEVICE_MAX_AGE_S,
                        httponly=True, samesite="Strict", secure=_secure(request), path="/login")
    response.del_cookie(cookies.LOGIN_COOKIE, path="/login")
    raise response


async def _take_slot(request: web.Request, name: str,
                     account: asyncpg.Record | None) -> login_throttle.Slot | login_throttle.Refused:
    """A slot in the throttle's counters (web/login_throttle.py): the device's own counter for a browser that
    logged in to this very account before (while the device is under its limit), else the ordinary ones."""
    ctx = request.app[CTX]
    device = cookies.verify_device(ctx.settings.signing_key(), request.cookies.get(cookies.DEVICE_COOKIE))
    if device is not None and account is not None and device.user_id == account["id"]:
        slot = await login_throttle.take(ctx.redis, login_throttle.device_limits(ctx.settings, device.device_id))
        if isinstance(slot, login_throttle.Slot):
            return slot
    return await login_throttle.take(ctx.redis, login_throttle.limits(ctx.settings, name, _client(request)))


def _login_csrf_ok(key: bytes, nonce: str, presented: str) -> bool:
    return bool(presented) and hmac.compare_digest(presented, cookies.login_csrf(key, nonce))


async def logout(request: web.Request) -> web.Response:
    # The middleware has already checked this POST's CSRF token when a session cookie identified the caller.
    ctx = request.app[CTX]
    claims = request.get(cookies.SESSION)
    user = request.get(USER)
    if claims is not None:
        ttl = max(1, int(claims.expires_at - time.time()))
        await ctx.redis.set(cookies.REVOKED_KEY.format(sid=claims.sid), "1", ex=ttl)
        async with ctx.pool.acquire() as conn:
            await accounts.audit(conn, user.name if user else "?", "logout", f"user:{user.name if user else '?'}")
    response = web.HTTPFound("/login")
    response.del_cookie(cookies.COOKIE, path="/")
    raise response


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
