"""Small HTTP helpers shared by the web process and media nodes: JSON errors and bounded JSON bodies."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

# The caller identified by the web process's middleware (an accounts.User, or None); rooms that register
# routes read it through this key without importing the web room.
USER: web.RequestKey[Any] = web.RequestKey("user", object)


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
