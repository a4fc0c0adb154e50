"""Who is calling: a logged-in staff user (cookie) or an integration (Bearer API token).

The middleware only identifies; each handler decides what it needs through `require_user` / `require_admin`,
and the candidate endpoints check their own join token. Identification is stored under request["user"],
a key of the shared package, so rooms that register routes here (signaling) need not import this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proctor import accounts
from proctor.http import USER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        from web.app import CTX

        async with request.app[CTX].pool.acquire() as conn:
            request[USER] = await accounts.user_for_token(conn, token)
        if request[USER] is None:
            raise web.HTTPUnauthorized(reason="invalid API token")
    return await handler(request)
