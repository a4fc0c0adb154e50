"""Staff login and logout in the browser, and what every staff page needs (login redirect, CSRF token, headers).

- GET /login: the form, with a CSRF token bound to a short-lived pre-login cookie.
- POST /login: name + password (Argon2, accounts.authenticate); at most LOGIN_MAX_FAILURES failed attempts per
  name and client address per LOGIN_WINDOW_S (counted in Redis), then 429 until the window passes.
- POST /logout: forgets the session id (Redis, until the cookie would have expired) and clears the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from proctor import accounts
from proctor.http import CTX, USER
from web import cookies

log = logging.getLogger(__name__)

LOGIN_MAX_FAILURES = 10
LOGIN_WINDOW_S = 600
FAIL_KEY = "proctor:web:login-fail:{digest}"
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


def _safe_next(raw: str | None) -> str:
    # Only local paths: "/x" but never "//host" or "/\\host" (open redirects).
    if not raw or not raw.startswith("/") or raw.startswith("//") or raw.startswith("/\\"):
        return "/"
    return raw


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _fail_key(name: str, client: str) -> str:
    digest = hashlib.sha256(f"{name.strip().lower()}|{client}".encode()).hexdigest()[:40]
    return FAIL_KEY.format(digest=digest)


async def login_form(request: web.Request, error: str | None = None, status: int = 200,
                     name: str = "", next_path: str | None = None) -> web.Response:
    if request.get(USER) is not None and request.method == "GET":
        raise web.HTTPFound(_safe_next(request.query.get("next")))
    key = request.app[CTX].settings.signing_key()
    nonce = request.cookies.get(cookies.LOGIN_COOKIE) or cookies.login_nonce()
    response = render_page("login.html", request, {
        "login_csrf": cookies.login_csrf(key, nonce), "next": _safe_next(next_path or request.query.get("next")),
        "error": error, "name": name}, status=status)
    response.set_cookie(cookies.LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="Lax",
                        secure=_secure(request), path="/login")
    return response


async def login_get(request: web.Request) -> web.Response:
    return await login_form(request)


async def login_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = ctx.settings.signing_key()
    form = await request.post()
    name = str(form.get("name", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    nonce = request.cookies.get(cookies.LOGIN_COOKIE, "")
    presented = str(form.get(cookies.CSRF_FIELD, ""))
    next_path = _safe_next(str(form.get("next", "")) or request.query.get("next"))
    if not nonce or not _login_csrf_ok(key, nonce, presented):
        return await login_form(request, "The form expired; please try again.", 403, name, next_path)
    fail_key = _fail_key(name, _client(request))
    failures = int(await ctx.redis.get(fail_key) or 0)
    if failures >= LOGIN_MAX_FAILURES:
        ttl = await ctx.redis.ttl(fail_key)
        response = await login_form(request, f"Too many failed attempts; try again in {max(ttl, 1)} s.", 429, name,
                                    next_path)
        response.headers["Retry-After"] = str(max(ttl, 1))
        return response
    async with ctx.pool.acquire() as conn:
        user = await accounts.authenticate(conn, name, password) if name and password else None
        if user is None:
            count = await ctx.redis.incr(fail_key)
            if count == 1:
                await ctx.redis.expire(fail_key, LOGIN_WINDOW_S)
            await accounts.audit(conn, name or "?", "login.failed", f"user:{name}", {"ip": _client(request)})
            return await login_form(request, "Wrong name or password.", 401, name, next_path)
        await accounts.audit(conn, user.name, "login", f"user:{user.name}", {"ip": _client(request)})
    await ctx.redis.delete(fail_key)
    value, _ = cookies.issue(key, user.id)
    response = web.HTTPFound(next_path)
    response.set_cookie(cookies.COOKIE, value, max_age=cookies.MAX_AGE_S, httponly=True, samesite="Lax",
                        secure=_secure(request), path="/")
    response.del_cookie(cookies.LOGIN_COOKIE, path="/login")
    raise response


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
