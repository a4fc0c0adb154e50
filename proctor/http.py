"""HTTP plumbing shared by every room that registers routes (signaling, web) and by media nodes: the app and
request keys, JSON errors, bounded JSON bodies, who is calling, and route parameters that never 500."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from core.sessions import parse_id
from proctor.accounts import User
from proctor.context import Context

# The web process's connections and settings; set by web.app, read by every route module through this key.
CTX = web.AppKey("ctx", Context)
# The caller identified by the web process's middleware (an accounts.User, or None); rooms that register
# routes read it through this key without importing the web room.
USER: web.RequestKey[User | None] = web.RequestKey("user")


# The one route with a credential in its path: /join/<token> (the token opens the candidate's exam).
_JOIN_PATH = re.compile(r"(/join/)[^/?#]+")


def redact_path(path: str) -> str:
    """A request path safe to log: a join link's token is replaced by a placeholder."""
    return _JOIN_PATH.sub(r"\1<redacted>", path)


def error(cls: type[web.HTTPException], message: str, **extra: Any) -> web.HTTPException:
    """An aiohttp HTTP error whose body is {"error": message}; raise it."""
    return cls(text=json.dumps({"error": message, **extra}), content_type="application/json")


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, or a 4xx that says what is wrong with it."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(max_bytes, request.content_length)
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise too_large(max_bytes, len(body))
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise error(web.HTTPBadRequest, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise error(web.HTTPBadRequest, "body must be a JSON object")
    return data


def too_large(max_bytes: int, actual: int) -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=max_bytes, actual_size=actual, content_type="application/json",
        text=json.dumps({"error": f"body larger than {max_bytes} bytes"}))


def require_user(request: web.Request) -> User:
    """The logged-in staff member or API token's user, or 401."""
    user = request.get(USER)
    if user is None:
        raise error(web.HTTPUnauthorized, "login or an API token is required")
    return user


def require_admin(request: web.Request) -> User:
    user = require_user(request)
    if user.role != "admin":
        raise error(web.HTTPForbidden, "admin role required")
    return user


def path_session_id(request: web.Request) -> str:
    """The canonical session id in the route, or 404 (a malformed id reads as not found, never a 500)."""
    session_id = parse_id(request.match_info["session_id"])
    if session_id is None:
        raise error(web.HTTPNotFound, "no such session")
    return session_id


def path_int(request: web.Request, name: str, not_found: str) -> int:
    """An integer route parameter, or 404 saying `not_found` (malformed reads as not found, never a 500)."""
    try:
        return int(request.match_info[name])
    except ValueError:
        raise error(web.HTTPNotFound, not_found) from None
