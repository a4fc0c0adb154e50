"""HTTP plumbing shared by every room that registers routes (signaling, web) and by media nodes: the app and
request keys, JSON errors, bounded JSON bodies and forms, who is calling, and input checks that turn what would
fail deeper down (text Postgres cannot store, credentials that are not ASCII, ids beyond their column) into a
4xx that says why, never a 500."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from core.sessions import parse_id
from proctor.accounts import User
from proctor.context import Context

# The web process's connections and settings; set by web.app, read by every route module through this key.
CTX = web.AppKey("ctx", Context)
# The caller identified by the web process's middleware (an accounts.User, or None); rooms that register
# routes read it through this key without importing the web room.
USER: web.RequestKey[User | None] = web.RequestKey("user")


# Ids in routes: `<name>_id` parameters are bigint identity columns, the others (segment and batch indexes) int4.
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
# JSON bodies nest at most this deep (ours nest two or three levels).
MAX_JSON_DEPTH = 32

# The routes with a credential in their path: /join/<token> (the token opens the candidate's exam) and
# /report/<token> (a candidate's evidence report, web/report.py).
_JOIN_PATH = re.compile(r"(/(?:join|report)/)[^/?#]+")


def redact_path(path: str) -> str:
    """A request path safe to log: a join or report link's token is replaced by a placeholder."""
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
    except RecursionError:
        raise error(web.HTTPBadRequest, f"body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError:  # UnicodeDecodeError included
        raise error(web.HTTPBadRequest, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise error(web.HTTPBadRequest, "body must be a JSON object")
    problem = _json_problem(data)
    if problem is not None:
        raise error(web.HTTPBadRequest, problem)
    return data


def _json_problem(data: Any) -> str | None:
    """What makes a parsed JSON body unusable: nesting beyond MAX_JSON_DEPTH, or a string (key or value) that
    Postgres cannot store (NUL, unpaired surrogates: JSON escapes can spell both). None when it is fine."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            reason = unstorable(value)
            if reason is not None:
                return f"body contains {reason}"
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None


def unstorable(text: str) -> str | None:
    """Why a text column cannot hold `text` (Postgres refuses NUL; UTF-8 has no unpaired surrogates, which
    JSON escapes and some form charsets produce), or None."""
    if "\x00" in text:
        return "NUL characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "unpaired surrogate characters"
    return None


def check_text(value: str, what: str) -> str:
    """`value`, or a 400 saying why `what` cannot be used (see `unstorable`)."""
    reason = unstorable(value)
    if reason is not None:
        raise error(web.HTTPBadRequest, f"{what} contains {reason}")
    return value


def ascii_only(value: str | None) -> str:
    """A credential as presented (token, signature, nonce), or "" when it is not ASCII: ours always are, and bytes
    that are not arrive as other characters (aiohttp decodes header bytes that are not UTF-8 as surrogates)."""
    return value if value and value.isascii() else ""


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The request's form fields, or a 400 when they cannot be decoded (an unknown charset, bytes not in it)."""
    try:
        return await request.post()
    except (ValueError, LookupError):  # UnicodeDecodeError, a malformed multipart body; LookupError: the charset
        raise error(web.HTTPBadRequest, "form fields cannot be decoded (send UTF-8)") from None


def too_large(max_bytes: int, actual: int, message: str | None = None) -> web.HTTPException:
    """413 with {"error": message} (default: the body is larger than `max_bytes`)."""
    return web.HTTPRequestEntityTooLarge(
        max_size=max_bytes, actual_size=actual, content_type="application/json",
        text=json.dumps({"error": message or f"body larger than {max_bytes} bytes"}))


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


def path_int(request: web.Request, name: str, not_found: str, maximum: int | None = None) -> int:
    """A non-negative integer route parameter, or 404 saying `not_found`: malformed, negative or beyond its
    column (`maximum`; by default INT8_MAX for `<name>_id` ids, INT4_MAX for indexes) reads as not found, never a
    500 from the database."""
    bound = maximum if maximum is not None else INT8_MAX if name.endswith("_id") else INT4_MAX
    try:
        value = int(request.match_info[name])
    except ValueError:  # not a number, or more digits than int() converts
        raise error(web.HTTPNotFound, not_found) from None
    if not 0 <= value <= bound:
        raise error(web.HTTPNotFound, not_found)
    return value
