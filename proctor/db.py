"""PostgreSQL access: one asyncpg pool per process, JSON codecs, and the alembic-style URL."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

# What a Postgres outage or restart looks like to a client: a refused or vanished socket, a dropped connection,
# a query cut off by the shutdown or refused while the server starts (OperatorInterventionError covers
# AdminShutdownError and CannotConnectNowError).
DB_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.OperatorInterventionError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects and go in as Python objects.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs)
    assert pool is not None
    return pool


def sqlalchemy_url(url: str) -> str:
    """The asyncpg dialect URL alembic needs, from a plain postgresql:// URL."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    return url
