"""A web app on S3 storage (a real SeaweedFS server, SigV4 enforced) with a password in its DATABASE_URL, and a
plain GET for what it hands out (presigned URLs, the bucket itself)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from proctor.context import Context
from proctor.settings import Settings
from proctor.storage import S3Storage
from tests.support.net import free_port
from tests.support.seaweed import SeaweedS3

S3_BUCKET = "proctor-security"


@dataclass
class S3App:
    url: str
    ctx: Context


@asynccontextmanager
async def s3_web_app(settings: Settings, seaweed: SeaweedS3, *, db_password: str = "",
                     **overrides: Any) -> AsyncIterator[S3App]:
    """The web process's app, served as `proctor serve` serves it (its access log included), on S3 storage with
    real credentials; its DATABASE_URL carries `db_password` (the embedded Postgres trusts local sockets, so any
    password connects, and the URL still holds it like a production one)."""
    from web.app import create_app, runner_options

    port = free_port()
    database_url = settings.database_url
    if db_password:
        database_url = database_url.replace("postgres:@", f"postgres:{db_password}@", 1)
        assert db_password in database_url
    app_settings = replace(
        settings, http_port=port, public_base_url=f"http://127.0.0.1:{port}", database_url=database_url,
        storage_backend="s3", s3_endpoint_url=seaweed.endpoint, s3_bucket=S3_BUCKET, s3_region="auto",
        s3_access_key_id=seaweed.access_key, s3_secret_access_key=seaweed.secret_key, **overrides)
    ctx = await Context.open(app_settings, pool_size=3)
    assert isinstance(ctx.storage, S3Storage)
    await ctx.storage.ensure_bucket()
    runner = web.AppRunner(create_app(app_settings, ctx=ctx), **runner_options())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield S3App(f"http://127.0.0.1:{port}", ctx)
    finally:
        await runner.cleanup()
        await ctx.close()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
