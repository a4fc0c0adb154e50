"""Migrations up and down on real PostgreSQL, in a database of their own."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic.script import ScriptDirectory

from proctor import migrate

TABLES = {"users", "api_tokens", "sessions", "reference_photos", "segments", "batches", "master_videos", "events",
          "audit_log"}


def _with_db(base_url: str, name: str) -> str:
    # base looks like postgresql://postgres:@/postgres?host=/socket/dir
    head, _, query = base_url.partition("?")
    return head.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade(servers: dict[str, str]) -> None:
    base = servers["DATABASE_URL"]
    name = f"mig_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(base)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    url = _with_db(base, name)
    assert migrate.current(url) is None
    migrate.upgrade(url)
    # The newest revision, whichever it is (several issues add one each).
    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    assert head is not None and migrate.current(url) == head
    assert TABLES <= asyncio.run(_tables(url))
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert asyncio.run(_tables(url)) == {"alembic_version"}
    migrate.upgrade(url)
    assert TABLES <= asyncio.run(_tables(url))


def test_schema_constraints(servers: dict[str, str]) -> None:
    async def check() -> None:
        conn = await asyncpg.connect(servers["DATABASE_URL"])
        try:
            with_bad_status = "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) " \
                              "VALUES ('c', 'e', 'bogus', 'n', now())"
            try:
                await conn.execute(with_bad_status)
            except asyncpg.CheckViolationError:
                pass
            else:
                raise AssertionError("a bad session status was accepted")
            sid = await conn.fetchval("INSERT INTO sessions (candidate, exam, join_nonce, join_expires_at) "
                                      "VALUES ('c', 'e', 'n', now()) RETURNING id")
            try:
                await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s) VALUES ($1, 'x', 5, 4)", sid)
            except asyncpg.CheckViolationError:
                pass
            else:
                raise AssertionError("an event ending before it starts was accepted")
            await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s) VALUES ($1, 0, 0, 20)", sid)
            try:
                await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s) VALUES ($1, 0, 0, 20)", sid)
            except asyncpg.UniqueViolationError:
                pass
            else:
                raise AssertionError("a duplicate segment index was accepted")
            await conn.execute("DELETE FROM sessions WHERE id = $1", sid)
            assert await conn.fetchval("SELECT count(*) FROM segments WHERE session_id = $1", sid) == 0
        finally:
            await conn.close()

    asyncio.run(check())
