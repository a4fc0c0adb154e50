"""Admin pages: accounts and their API tokens, with disable/enable and revoke (the same as `proctor user
disable|enable` and `proctor token revoke`).

- GET /admin/users: every account (role, state, last login) and its API tokens (label, last use, revoked).
- POST /admin/users/{user_id}/disable | enable, POST /admin/tokens/{token_id}/revoke: plain HTML forms carrying the
  page's CSRF token (checked by web.auth.identify), then back to the list. Admins only; audit-logged.
"""

from __future__ import annotations

from aiohttp import web

from proctor import accounts
from proctor.http import CTX, path_int
from web.login import page_user, render_page

# What the list says after an action (fixed texts: nothing from the query string is shown).
DONE = {
    "disabled": "Account disabled: it cannot log in, and its login sessions and API tokens stopped working.",
    "enabled": "Account enabled again (its API tokens that were not revoked work again).",
    "revoked": "API token revoked.",
    "unchanged": "Nothing to change.",
    "self": "You cannot disable your own account here (use `proctor user disable` if you mean it).",
}


def _admin(request: web.Request) -> accounts.User:
    user = page_user(request)
    if not user.is_admin:
        raise web.HTTPForbidden(text="admin role required")
    return user


async def users_page(request: web.Request) -> web.Response:
    _admin(request)
    async with request.app[CTX].pool.acquire() as conn:
        users = await accounts.list_users(conn)
        tokens = await accounts.list_tokens(conn)
    by_user: dict[str, list[object]] = {}
    for token in tokens:
        by_user.setdefault(token["user_name"], []).append(token)
    return render_page("admin_users.html", request, {
        "nav": "admin", "users": users, "tokens": by_user, "done": DONE.get(request.query.get("done", ""))})


def _back(done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/users?done={done}")


async def set_disabled(request: web.Request) -> web.Response:
    admin = _admin(request)
    user_id = path_int(request, "user_id", "no such user")
    disable = request.match_info["action"] == "disable"
    async with request.app[CTX].pool.acquire() as conn:
        name = await conn.fetchval("SELECT name FROM users WHERE id = $1", user_id)
        if name is None:
            raise web.HTTPNotFound(text="no such user")
        if disable and user_id == admin.id:
            raise _back("self")
        changed = await accounts.set_disabled(conn, name, disable, actor=admin.name)
    raise _back(("disabled" if disable else "enabled") if changed else "unchanged")


async def revoke_token(request: web.Request) -> web.Response:
    admin = _admin(request)
    token_id = path_int(request, "token_id", "no such token")
    async with request.app[CTX].pool.acquire() as conn:
        try:
            revoked = await accounts.revoke_token(conn, token_id, actor=admin.name)
        except accounts.AccountError:
            raise web.HTTPNotFound(text="no such token") from None
    raise _back("revoked" if revoked else "unchanged")


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/users", users_page)
    r.add_post("/admin/users/{user_id}/{action:disable|enable}", set_disabled)
    r.add_post("/admin/tokens/{token_id}/revoke", revoke_token)
