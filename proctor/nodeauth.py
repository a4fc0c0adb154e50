"""Signed calls to a media node's internal API (`POST /offer`, `POST /sessions/{id}/close`, `GET /stats`).

Whoever can reach a node's port could otherwise attach a stream to any open session without a join token, drop a
live candidate or read every session's statistics. Every call carries

    X-Proctor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

over the method, the path with its query, the timestamp and the SHA-256 of the body, keyed with a key derived
from SECRET_KEY (`node_key`), which signaling and every node share. A node refuses a missing, malformed or wrong
signature, or one more than MAX_SKEW_S away from its own clock, with 401 (`middleware`). Signaling, the tests and
the benchmarks sign with `signed_headers` or `NodeClient`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from proctor.settings import Settings

HEADER = "X-Proctor-Signature"
MAX_SKEW_S = 60


class NodeAuthError(ValueError):
    """A node call whose signature is missing, malformed, wrong or too old; the message says which."""


def node_key(settings: Settings) -> bytes:
    """The key of node calls: HMAC(SECRET_KEY's signing key, "media-node"), never the signing key itself."""
    return hmac.new(settings.signing_key(), b"media-node", hashlib.sha256).digest()


def _mac(key: bytes, method: str, path_qs: str, timestamp: int, body: bytes) -> str:
    message = "\n".join((method.upper(), path_qs, str(timestamp), hashlib.sha256(body).hexdigest()))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, path_qs: str, body: bytes = b"", now: float | None = None) -> str:
    """The header value for a call of `method` on `path_qs` (path and query, as sent) with `body`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_mac(key, method, path_qs, timestamp, body)}"


def verify(key: bytes, header: str | None, method: str, path_qs: str, body: bytes,
           now: float | None = None) -> None:
    """NodeAuthError unless `header` signs this very call and is at most MAX_SKEW_S from now."""
    if not header:
        raise NodeAuthError(f"signature required ({HEADER})")
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        raise NodeAuthError(f"malformed {HEADER}") from None
    if not given.isascii():  # ours is hex; anything else (header bytes decoded as surrogates) cannot match
        raise NodeAuthError("bad signature")
    if abs((time.time() if now is None else now) - timestamp) > MAX_SKEW_S:
        raise NodeAuthError("signature expired")
    if not hmac.compare_digest(given.encode(), _mac(key, method, path_qs, timestamp, body).encode()):
        raise NodeAuthError("bad signature")


def signed_headers(key: bytes, method: str, url: str, body: bytes = b"") -> dict[str, str]:
    """Headers that make a call to `url` (a full URL) acceptable to a node."""
    return {HEADER: sign(key, method, URL(url).raw_path_qs, body)}


def middleware(key: bytes, unsigned: Collection[str] = ()) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A node app's middleware: every request must be signed with `key`, else 401 (before any handler runs).
    GET on a path in `unsigned` (/metrics: Prometheus cannot sign) skips it; that handler checks access itself."""

    @web.middleware
    async def check_signature(request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.method == "GET" and request.path in unsigned:
            return await handler(request)
        header = request.headers.get(HEADER)
        try:
            if not header:
                raise NodeAuthError(f"signature required ({HEADER})")
            # The body is read (within the app's client_max_size) only for a call that has a signature at all;
            # handlers read it again from aiohttp's cache with request.read().
            verify(key, header, request.method, request.raw_path, await request.read())
        except NodeAuthError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        return await handler(request)

    return check_signature


class NodeCallError(RuntimeError):
    """A node answered a call with something other than what the caller needs."""


class NodeClient:
    """Signed JSON calls to media nodes over one aiohttp session."""

    def __init__(self, key: bytes, http: aiohttp.ClientSession) -> None:
        self.key = key
        self.http = http

    @classmethod
    def for_settings(cls, settings: Settings, http: aiohttp.ClientSession) -> NodeClient:
        return cls(node_key(settings), http)

    async def call(self, method: str, url: str, payload: Any = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None when it is not JSON)."""
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = signed_headers(self.key, method, url, body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(method, url, data=body or None, headers=headers) as response:
            raw = await response.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = None
            return response.status, data

    async def stats(self, node_url: str) -> dict[str, Any]:
        """A node's GET /stats (NodeCallError when it does not answer 200 with a JSON object)."""
        status, data = await self.call("GET", f"{node_url}/stats")
        if status != 200 or not isinstance(data, dict):
            raise NodeCallError(f"{node_url}/stats answered {status}: {data}")
        return data
