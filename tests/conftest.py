"""Shared fixtures: one real embedded PostgreSQL and one real Redis for the whole run, migrated once.

Tests that need their own servers (start/stop/restart) make them in their own tmp dirs.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from media_server.node import MediaNode
from proctor import accounts, migrate
from proctor.context import Context
from proctor.embedded import EmbeddedPostgres, EmbeddedRedis
from proctor.settings import Settings
from tests.browser import CHROMIUM, chromium_args
from tests.media import face_clip

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short path: unix socket paths must stay under ~100 bytes.
    return tmp_path_factory.mktemp("pd")


@pytest.fixture(scope="session")
def servers(data_dir: Path) -> Iterator[dict[str, str]]:
    postgres = EmbeddedPostgres(data_dir / "postgres")
    redis = EmbeddedRedis(data_dir / "redis")
    urls = {"DATABASE_URL": postgres.start(), "REDIS_URL": redis.start()}
    migrate.upgrade(urls["DATABASE_URL"])
    try:
        yield urls
    finally:
        redis.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def settings(servers: dict[str, str], data_dir: Path) -> Settings:
    env = {
        "PROCTOR_DATA_DIR": str(data_dir),
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
        "DISCONNECT_TIMEOUT_S": "5",
        "SEGMENT_SECONDS": "2",
        "MERGE_BATCH_SEGMENTS": "3",
        **servers,
    }
    return Settings.from_env(env, env_file=None)


@pytest.fixture(scope="session")
async def ctx(settings: Settings) -> AsyncIterator[Context]:
    context = await Context.open(settings)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture(scope="session")
async def admin_token(ctx: Context) -> str:
    async with ctx.pool.acquire() as conn:
        name = f"admin-{uuid.uuid4().hex[:6]}"
        await accounts.create_user(conn, name, "admin", "correct horse battery")
        return await accounts.create_token(conn, name)


@pytest.fixture(scope="session")
async def proctor_token(ctx: Context) -> str:
    async with ctx.pool.acquire() as conn:
        name = f"proctor-{uuid.uuid4().hex[:6]}"
        await accounts.create_user(conn, name, "proctor", "correct horse battery")
        return await accounts.create_token(conn, name)


class RunningApp:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


@pytest.fixture(scope="session")
async def web_server(settings: Settings, ctx: Context) -> AsyncIterator[RunningApp]:
    """The web process's app (REST, signaling, pages) on a free loopback port, sharing the test context."""
    from dataclasses import replace

    from web.app import create_app

    port = free_port()
    app_settings = replace(settings, http_port=port, public_base_url=f"http://127.0.0.1:{port}")
    app = create_app(app_settings, ctx=Context(app_settings, ctx.pool, ctx.redis, ctx.storage))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield RunningApp(runner, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_clip(tmp_path_factory.mktemp("clip") / "face.y4m")


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


@pytest.fixture(scope="session")
def frame_log() -> FrameLog:
    return FrameLog()


@pytest.fixture(scope="session")
async def media_node(ctx: Context, frame_log: FrameLog) -> AsyncIterator[MediaNode]:
    from analyzers.live import Analysis
    from archiver.segmenter import Archive

    node = MediaNode(ctx, [Archive(ctx), Analysis(ctx), frame_log])
    runner = await node.start("127.0.0.1", free_port())
    # Wait for the first heartbeat so signaling can see the node.
    for _ in range(50):
        if await ctx.redis.exists(f"proctor:node:{node.node_id}"):
            break
        await asyncio.sleep(0.1)
    try:
        yield node
    finally:
        await node.stop()
        await runner.cleanup()


@pytest.fixture(scope="session")
async def browser(clip: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(clip))
        try:
            yield instance
        finally:
            await instance.close()


async def wait_for(predicate: Any, within: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def conn(ctx: Context) -> AsyncIterator[asyncpg.Connection]:
    async with ctx.pool.acquire() as connection:
        yield connection


def pytest_configure(config: pytest.Config) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
