"""Embedded PostgreSQL and Redis start, stop and restart with their data kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import redis

from proctor.embedded import EmbeddedPostgres, EmbeddedRedis


def test_postgres_keeps_data_across_restart(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "postgres")
    url = pg.start()

    async def write() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        await conn.close()

    asyncio.run(write())
    pg.stop()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()

    pg2 = EmbeddedPostgres(tmp_path / "postgres")
    url2 = pg2.start()
    try:
        async def read() -> str:
            conn = await asyncpg.connect(url2)
            try:
                return await conn.fetchval("SELECT v FROM kept")
            finally:
                await conn.close()

        assert asyncio.run(read()) == "hello"
    finally:
        pg2.stop()


def test_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    client = redis.Redis.from_url(url)
    client.set("kept", "yes")
    client.xadd("stream", {"a": "1"})
    client.close()
    server.stop()
    assert server._proc is None

    server2 = EmbeddedRedis(tmp_path / "redis")
    url2 = server2.start()
    try:
        client = redis.Redis.from_url(url2)
        assert client.get("kept") == b"yes"
        assert client.xlen("stream") == 1
        client.close()
    finally:
        server2.stop()


def test_redis_over_tcp_when_socket_path_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    server = EmbeddedRedis(deep)
    url = server.start()
    try:
        assert url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()


def test_redis_leftover_from_a_crash_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    assert first._proc is not None
    # Simulate a supervisor killed with SIGKILL: its redis-server keeps running, holding the data dir.
    leftover = first._proc
    second = EmbeddedRedis(tmp_path / "redis")
    url = second.start()
    try:
        leftover.wait(10)  # the old one was stopped
        assert redis.Redis.from_url(url).ping()
    finally:
        second.stop()
