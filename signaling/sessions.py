"""Exam sessions in Postgres: creation with join-token data, lookup, state changes and their broadcast."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from proctor.redis import FINALIZE_STREAM, LIVE_CHANNEL, SESSION_CONTROL
from signaling import tokens

STATUSES = ("created", "live", "ended", "finalizing", "finalized", "failed")
OPEN_STATUSES = ("created", "live")


def parse_id(raw: str) -> str | None:
    """A canonical session UUID, or None for anything else (so bad ids read as 'not found', never a 500)."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return None


async def create(conn: asyncpg.Connection, *, candidate: str, exam: str, created_by: int | None,
                 ttl_s: int) -> asyncpg.Record:
    expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
    return await conn.fetchrow(
        "INSERT INTO sessions (candidate, exam, created_by, join_nonce, join_expires_at) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING *", candidate, exam, created_by, tokens.new_nonce(), expires)


async def get(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)


def join_token(key: bytes, row: asyncpg.Record) -> str:
    return tokens.issue(key, str(row["id"]), row["join_nonce"], row["join_expires_at"].timestamp())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def to_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "candidate": row["candidate"],
        "exam": row["exam"],
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "duration_s": row["duration_s"],
        "media_gaps": row["media_gaps"],
        "connections": row["connections"],
        "node_id": row["node_id"],
        "score": row["score"],
        "failure_reason": row["failure_reason"],
    }


async def publish(redis: aioredis.Redis, message: dict[str, Any]) -> None:
    await redis.publish(LIVE_CHANNEL, json.dumps({"at": time.time(), **message}))


async def end(conn: asyncpg.Connection, redis: aioredis.Redis, session_id: str, reason: str) -> bool:
    """End an open session once: status `ended`, then tell its media node and queue the archive finalize.

    Returns False when the session was not open (already ended); ending twice is harmless.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE sessions SET status = 'ended', ended_at = now(), end_reason = $2 WHERE id = $1 "
            "AND status = ANY($3::text[]) RETURNING id, node_id", session_id, reason, list(OPEN_STATUSES))
        if row is None:
            return False
        # Redis must be up to tell the node and queue the finalize. If it is down, this raises and the update
        # rolls back (the caller answers 503 and the end can be retried) instead of leaving an ended session
        # that nobody acts on until the 5-minute re-queue. (The calls themselves come after the commit, so a
        # worker never reads the finalize job before the session is visibly ended.)
        await redis.ping()
    await redis.publish(SESSION_CONTROL, json.dumps({"session_id": session_id, "action": "end"}))
    await redis.xadd(FINALIZE_STREAM, {"session_id": session_id, "reason": reason}, maxlen=100_000,
                     approximate=True)
    await publish(redis, {"type": "session", "session_id": session_id, "status": "ended", "reason": reason})
    return True


async def delete(ctx: Any, session_id: str, *, actor: str, reason: str) -> bool:
    """Remove a session's video, snapshots, photos and events (its row and everything under it), audit-logged.

    Storage first: a crash in between leaves a row that can be deleted again, never orphaned video.
    """
    from proctor.accounts import audit

    async with ctx.pool.acquire() as conn:
        row = await get(conn, session_id)
        if row is None:
            return False
        if row["status"] in OPEN_STATUSES:
            await end(conn, ctx.redis, session_id, "deleted")
    for obj in await ctx.storage.list(f"sessions/{session_id}/"):
        await ctx.storage.delete(obj.key)
    async with ctx.pool.acquire() as conn:
        await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)
        await audit(conn, actor, "session.delete", f"session:{session_id}",
                    {"candidate": row["candidate"], "exam": row["exam"], "reason": reason})
    await publish(ctx.redis, {"type": "session", "session_id": session_id, "status": "deleted"})
    return True
