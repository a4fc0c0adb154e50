"""What every long-running role holds: settings and its connections to Postgres, Redis and storage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from proctor import db
from proctor import redis as predis
from proctor.settings import Settings
from proctor.storage import Storage, StorageError, open_storage


@dataclass
class Context:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    storage: Storage

    @classmethod
    async def open(cls, settings: Settings, *, pool_size: int = 10) -> Context:
        if not settings.database_url or not settings.redis_url:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be set (`proctor up` starts embedded servers)")
        pool = await db.create_pool(settings.database_url, max_size=pool_size)
        return cls(settings, pool, predis.connect(settings.redis_url), open_storage(settings))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pool.close()

    async def health(self, limit_s: float = 3.0) -> dict[str, Any]:
        """The state of each dependency, each check bounded so one dead server cannot hang the others."""

        async def timed(name: str, check: Any) -> tuple[str, dict[str, Any]]:
            started = time.perf_counter()
            try:
                detail = await asyncio.wait_for(check(), limit_s)
                return name, {"status": "ok", "ms": round((time.perf_counter() - started) * 1000, 1), **detail}
            except (TimeoutError, OSError, asyncpg.PostgresError, aioredis.RedisError, StorageError) as exc:
                return name, {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}

        async def database() -> dict[str, Any]:
            async with self.pool.acquire() as conn:
                revision = await conn.fetchval("SELECT version_num FROM alembic_version")
            return {"revision": revision}

        async def redis() -> dict[str, Any]:
            await self.redis.ping()
            return {}

        async def storage() -> dict[str, Any]:
            await self.storage.check()
            return {"backend": self.storage.name}

        results = await asyncio.gather(timed("database", database), timed("redis", redis), timed("storage", storage))
        return dict(results)
