"""Who is calling: a logged-in staff user (cookie) or an integration (Bearer API token).

The middleware only identifies; each handler decides what it needs through `require_user` / `require_admin`,
and the candidate endpoints check their own join token. Identification is stored under request["user"],
a key of the shared package, so rooms that register routes here (signaling) need not import this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proctor import accounts
from proctor.http import CTX, USER, ascii_only, error, read_form
from web import cookies

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# LTI launches (lti/routes.py) are form posts from the LMS, or from our own deep-linking page, that carry their own
# proof (state cookie + signed id_token, a single-use reference) and never act as a staff cookie the browser also
# sends when LMS and tool share a site: that cookie is not read there, so no CSRF token is asked for either.
LTI_PATHS = frozenset({"/lti/login", "/lti/launch", "/lti/deep-link"})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@web.middleware
async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[USER] = None
    token = bearer_token(request)
    # API tokens carry a prefix; join tokens (candidates) do not and are checked by their own routes.
    if token and token.startswith("pt_"):
        if not token.isascii():  # API tokens are ASCII; other bytes arrive as surrogates and never match one
            raise web.HTTPUnauthorized(reason="invalid API token")
        async with request.app[CTX].pool.acquire() as conn:
            request[USER] = await accounts.user_for_token(conn, token)
        if request[USER] is None:
            raise web.HTTPUnauthorized(reason="invalid API token")
    elif ("Authorization" not in request.headers and cookies.COOKIE in request.cookies
          and request.path not in LTI_PATHS):
        # Browser login (web/login.py). A request with any Authorization header (e.g. a candidate's join token)
        # never falls back to the cookie, so a staff member's cookie cannot leak into candidate calls.
        await _identify_cookie(request)
    return await handler(request)


async def _identify_cookie(request: web.Request) -> None:
    ctx = request.app[CTX]
    key = ctx.settings.signing_key()
    claims = cookies.verify(key, request.cookies.get(cookies.COOKIE))
    if claims is None or await ctx.redis.exists(cookies.REVOKED_KEY.format(sid=claims.sid)):
        return
    async with ctx.pool.acquire() as conn:  # reloaded every time: a disabled account stops at once
        row = await conn.fetchrow("SELECT id, name, role FROM users WHERE id = $1 AND NOT disabled", claims.user_id)
    if row is None:
        return
    if request.method in cookies.UNSAFE_METHODS and request.path != "/login":
        presented = request.headers.get(cookies.CSRF_HEADER)
        if presented is None and request.content_type == "application/x-www-form-urlencoded":
            presented = (await read_form(request)).get(cookies.CSRF_FIELD)
        if not cookies.csrf_ok(key, claims.sid, ascii_only(presented)):
            raise error(web.HTTPForbidden, f"CSRF token missing or wrong (send {cookies.CSRF_HEADER})")
    request[USER] = accounts.User(row["id"], row["name"], row["role"])
    request[cookies.SESSION] = claims
