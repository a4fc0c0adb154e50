"""Admin pages: accounts and their API tokens, with disable/enable and revoke (the same as `proctor user
disable|enable` and `proctor token revoke`).

- GET /admin/users: every account (role, state, last login) and its API tokens (label, last use, revoked).
- POST /admin/users/{user_id}/disable | enable, POST /admin/tokens/{token_id}/revoke: plain HTML forms carrying the
  page's CSRF token (checked by web.auth.identify), then back to the list. Admins only; audit-logged.
- POST /admin/users (name, role): a new account with no usable password, and a one-time link for its owner to
  choose one; POST /admin/users/{user_id}/role (role); POST /admin/users/{user_id}/password-link: a one-time link
  to choose a new password (the old one stops working at once); POST /admin/users/{user_id}/tokens (label): a
  new API token. Links and tokens are shown once, in the answer to that POST (never stored, never in a URL).
- GET|POST /password/{token}: the account's owner chooses a password (no login: the link is the credential).

Why links rather than a temporary password the admin types: the admin never knows anyone's password, nothing
has to be passed on by voice or chat that works for long, and a link works once (proctor.accounts).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from proctor import accounts
from proctor.http import CTX, path_int, read_form, unstorable
from web.login import page_user, render_page

# What the list says after an action (fixed texts: nothing from the query string is shown).
DONE = {
    "disabled": "Account disabled: it cannot log in, and its login sessions and API tokens stopped working.",
    "enabled": "Account enabled again (its API tokens that were not revoked work again).",
    "revoked": "API token revoked.",
    "unchanged": "Nothing to change.",
    "self": "You cannot disable your own account here (use `proctor user disable` if you mean it).",
    "role": "Role changed (it applies from the account's next request).",
}


def _admin(request: web.Request) -> accounts.User:
    user = page_user(request)
    if not user.is_admin:
        raise web.HTTPForbidden(text="admin role required")
    return user


async def users_page(request: web.Request) -> web.Response:
    _admin(request)
    return await _users(request, done=DONE.get(request.query.get("done", "")))


async def _users(request: web.Request, status: int = 200, **shown: Any) -> web.Response:
    """The accounts page, with what an action has to show once (a new token or password link) or an error."""
    async with request.app[CTX].pool.acquire() as conn:
        users = await accounts.list_users(conn)
        tokens = await accounts.list_tokens(conn)
    by_user: dict[str, list[object]] = {}
    for token in tokens:
        by_user.setdefault(token["user_name"], []).append(token)
    return render_page("admin_users.html", request, {
        "nav": "admin", "users": users, "tokens": by_user, "roles": accounts.ROLES,
        "link_hours": accounts.PASSWORD_LINK_TTL_S // 3600, **shown}, status=status)


def _text(form: Any, name: str, most: int) -> str:
    """A form field as text (stripped); AccountError saying what is wrong with it."""
    value = str(form.get(name, "")).strip()
    if len(value) > most or unstorable(value) is not None:
        raise accounts.AccountError(f"{name}: at most {most} characters, no NUL or unpaired surrogates")
    return value


async def _user_name(request: web.Request) -> str:
    user_id = path_int(request, "user_id", "no such user")
    async with request.app[CTX].pool.acquire() as conn:
        name = await conn.fetchval("SELECT name FROM users WHERE id = $1", user_id)
    if name is None:
        raise web.HTTPNotFound(text="no such user")
    return str(name)


def _password_url(request: web.Request, token: str) -> str:
    return f"{request.app[CTX].settings.base_url}/password/{token}"


async def add_user(request: web.Request) -> web.Response:
    """POST /admin/users (name, role): a new account, and the one-time link its owner chooses a password with."""
    admin = _admin(request)
    ctx = request.app[CTX]
    try:
        form = await read_form(request)
        name, role = _text(form, "name", 64), _text(form, "role", 20)
        async with ctx.pool.acquire() as conn, conn.transaction():
            # A random password nobody knows until the link replaces it: the account cannot log in before.
            await accounts.create_user(conn, name, role, secrets.token_urlsafe(32), actor=admin.name)
            token = await accounts.issue_password_link(conn, ctx.settings.signing_key(), name, admin.name,
                                                       action="user.password_link")
    except accounts.AccountError as exc:
        return await _users(request, 409 if "exists" in str(exc) else 400, error=str(exc))
    return await _users(request, 201, password_link={"user": name, "url": _password_url(request, token),
                                                     "new": True})


async def set_role(request: web.Request) -> web.Response:
    """POST /admin/users/{user_id}/role (role); the last enabled admin keeps the role (409)."""
    admin = _admin(request)
    name = await _user_name(request)
    try:
        role = _text(await read_form(request), "role", 20)
        async with request.app[CTX].pool.acquire() as conn:
            changed = await accounts.set_role(conn, name, role, actor=admin.name)
    except accounts.AccountError as exc:
        return await _users(request, 409 if "last enabled admin" in str(exc) else 400, error=str(exc))
    raise _back("role" if changed else "unchanged")


async def password_link(request: web.Request) -> web.Response:
    """POST /admin/users/{user_id}/password-link: the account's password stops working now; its owner chooses a
    new one with the link shown (once) here."""
    admin = _admin(request)
    name = await _user_name(request)
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        token = await accounts.issue_password_link(conn, ctx.settings.signing_key(), name, admin.name)
    return await _users(request, password_link={"user": name, "url": _password_url(request, token), "new": False})


async def add_token(request: web.Request) -> web.Response:
    """POST /admin/users/{user_id}/tokens (label): a new API token of that account, shown once."""
    admin = _admin(request)
    name = await _user_name(request)
    try:
        label = _text(await read_form(request), "label", accounts.MAX_LABEL)
        async with request.app[CTX].pool.acquire() as conn:
            token = await accounts.create_token(conn, name, label, actor=admin.name)
    except accounts.AccountError as exc:
        return await _users(request, 400, error=str(exc))
    return await _users(request, 201, new_token={"user": name, "label": label, "token": token})


# --- the account owner's side of a password link (no login: the link is the credential) ------------------------

LINK_REFUSED = {"invalid": "This link does not work: it was used already, a newer one was made, or it was never "
                           "right. Ask an administrator for a new one.",
                "expired": "This link has expired. Ask an administrator for a new one."}


def _link_refused(request: web.Request, exc: accounts.AccountError) -> web.Response:
    reason = str(exc)
    return render_page("password_link.html", request, {"refused": LINK_REFUSED.get(reason, LINK_REFUSED["invalid"])},
                       status=410 if reason == "expired" else 404)


async def password_form(request: web.Request) -> web.Response:
    """GET /password/{token}: the form to choose a password, or why the link does not work."""
    async with request.app[CTX].pool.acquire() as conn:
        try:
            row = await accounts.password_link_account(conn, request.app[CTX].settings.signing_key(),
                                                       request.match_info["token"])
        except accounts.AccountError as exc:
            return _link_refused(request, exc)
    response = render_page("password_link.html", request, {"name": row["name"], "min": 8, "max": accounts.MAX_PASSWORD})
    response.headers["Referrer-Policy"] = "no-referrer"  # the link is a credential: never in a Referer
    return response


async def password_set(request: web.Request) -> web.Response:
    """POST /password/{token} (password, confirm): set it, once; then a link to the login form."""
    ctx = request.app[CTX]
    form = await read_form(request)
    password, confirm = str(form.get("password", "")), str(form.get("confirm", ""))
    token = request.match_info["token"]
    async with ctx.pool.acquire() as conn:
        try:
            row = await accounts.password_link_account(conn, ctx.settings.signing_key(), token)
        except accounts.AccountError as exc:
            return _link_refused(request, exc)
        problem = ("The two passwords differ." if password != confirm else
                   "The password holds characters that cannot be used." if unstorable(password) else None)
        try:
            if problem is None:
                await accounts.use_password_link(conn, ctx.settings.signing_key(), token, password)
        except accounts.AccountError as exc:
            problem = str(exc) if str(exc) not in LINK_REFUSED else None
            if problem is None:
                return _link_refused(request, exc)
    if problem:
        return render_page("password_link.html", request, {"name": row["name"], "error": problem, "min": 8,
                                                           "max": accounts.MAX_PASSWORD}, status=400)
    return render_page("password_link.html", request, {"name": row["name"], "done": True})


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
    r.add_post("/admin/users", add_user)
    r.add_post("/admin/users/{user_id}/{action:disable|enable}", set_disabled)
    r.add_post("/admin/users/{user_id}/role", set_role)
    r.add_post("/admin/users/{user_id}/password-link", password_link)
    r.add_post("/admin/users/{user_id}/tokens", add_token)
    r.add_get("/password/{token}", password_form)
    r.add_post("/password/{token}", password_set)
    r.add_post("/admin/tokens/{token_id}/revoke", revoke_token)
