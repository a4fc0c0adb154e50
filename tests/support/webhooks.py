"""A webhook receiver on loopback for tests: records every request, answers from a script, and checks the
signature with an implementation of its own (hmac), written from the README's contract, not the product's code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.support.net import free_port


def signature_ok(secret: str, request: dict[str, Any]) -> bool:
    """An implementation of the receiver's check of its own: hex HMAC-SHA256 over "<timestamp>.<body>"."""
    timestamp = request["headers"]["Webhook-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    return (hmac.compare_digest(request["headers"]["Webhook-Signature"], f"v1={expected}")
            and abs(time.time() - int(timestamp)) < 300)


class Receiver:
    """A loopback HTTP server that records every request and answers from a script: an int status, "redirect",
    ("slow", seconds); 200 once the script is used up."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.redirected: list[dict[str, Any]] = []
        self.script: deque[Any] = deque()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        # "at": monotonic, for intervals; "wall": this machine's clock, to compare with the database's now().
        self.requests.append({"headers": dict(request.headers), "body": await request.read(), "at": time.monotonic(),
                              "wall": time.time()})
        action = self.script.popleft() if self.script else 200
        if action == "redirect":
            raise web.HTTPFound("/elsewhere")
        if isinstance(action, tuple):
            await asyncio.sleep(action[1])
            return web.Response(text="late")
        return web.Response(status=action, text="ok" if action < 300 else "receiver failed")

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirected.append({"body": await request.read()})
        return web.Response(text="followed")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if json.loads(r["body"])["type"] == event_type]


@asynccontextmanager
async def receiver(port: int | None = None) -> AsyncIterator[Receiver]:
    server = await Receiver(port).start()
    try:
        yield server
    finally:
        await server.stop()
