"""What the server fixtures hand to tests: a served aiohttp app, a web app of a test's own with some settings
changed, and a media-node plugin that logs frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from aiohttp import web

from proctor.context import Context
from proctor.settings import Settings
from tests.support.net import free_port
from web.app import create_app


class RunningApp:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


@asynccontextmanager
async def own_web_app(settings: Settings, ctx: Context, **overrides: Any) -> AsyncIterator[str]:
    """A web app of its own on a free port with some settings changed (same Postgres, Redis and storage as the
    suite); yields its base URL. PUBLIC_BASE_URL follows the port unless `overrides` sets it."""
    port = free_port()
    overrides.setdefault("public_base_url", f"http://127.0.0.1:{port}")
    app_settings = replace(settings, http_port=port, **overrides)
    runner = web.AppRunner(create_app(app_settings, ctx=Context(app_settings, ctx.pool, ctx.redis, ctx.storage)),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class FrameLog:
    """A test plugin: the media time of every video frame each session's stream delivered, in order."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def attach(self, stream: Any) -> None:
        log = self.times.setdefault(stream.session_id, [])
        stream.encoded_sinks.append(lambda frame, t: log.append(t) if frame.kind == "video" else None)

    async def start(self, node_id: str) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"sessions": len(self.times)}
