"""Every write to a `sessions` row: creation, consent, the media node's bookkeeping (live, reconnect gaps,
media time, segment indexes), status transitions (core.sessions), the suspicion score, end and delete."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from core import tokens
from core.accommodations import NONE, Accommodations
from core.events import TIMELINE_KINDS
from core.live import SessionStatus
from core.sensitivity import STANDARD, Sensitivity
from core.sessions import OPEN_STATUSES, sources
from proctor.accounts import audit
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, SESSION_CONTROL
from proctor.store import events, live, webhooks


async def create(conn: asyncpg.Connection, *, candidate: str, exam: str, created_by: int | None,
                 ttl_s: int, sensitivity: Sensitivity = STANDARD,
                 accommodations: Accommodations = NONE) -> asyncpg.Record:
    """A new session with its join-link nonce (core.tokens: rotating the nonce revokes every link issued), the
    sensitivity its media node applies (core.sensitivity) and the candidate's accommodations."""
    expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
    return await conn.fetchrow(
        "INSERT INTO sessions (candidate, exam, created_by, join_nonce, join_expires_at, sensitivity, "
        "accommodations) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *", candidate, exam, created_by,
        tokens.new_nonce(), expires, sensitivity.to_json(), accommodations.to_json())


async def set_accommodations(conn: asyncpg.Connection, session_id: str, accommodations: Accommodations, *,
                             actor: str) -> asyncpg.Record | None:
    """Replace the candidate's accommodations while the exam has not started (status `created`): once it is
    live the media node has applied them, and changing them afterwards would rewrite what the reviewer sees.
    None: no such session or it is no longer `created`. Audit-logged with the old and the new value."""
    async with conn.transaction():
        old = await conn.fetchval("SELECT accommodations FROM sessions WHERE id = $1 AND status = 'created' "
                                  "FOR UPDATE", session_id)
        if old is None:
            return None
        row = await conn.fetchrow("UPDATE sessions SET accommodations = $2 WHERE id = $1 RETURNING *", session_id,
                                  accommodations.to_json())
        await audit(conn, actor, "session.accommodations", f"session:{session_id}",
                    {"from": old, "to": accommodations.to_json()})
    return row


async def rotate_join_nonce(conn: asyncpg.Connection, session_id: str, *, ttl_s: int,
                            actor: str) -> asyncpg.Record | None:
    """A new join-link nonce (and expiry, `ttl_s` from now) for an open session: every link issued before
    answers 401 "join link revoked" from now on. None: no such session, or it is no longer open. Audit-logged."""
    expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
    row = await conn.fetchrow(
        "UPDATE sessions SET join_nonce = $2, join_expires_at = $3 WHERE id = $1 AND status = ANY($4::text[]) "
        "RETURNING *", session_id, tokens.new_nonce(), expires, list(OPEN_STATUSES))
    if row is not None:
        await audit(conn, actor, "session.join_link.rotate", f"session:{session_id}",
                    {"expires_at": expires.isoformat()})
    return row


async def get(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)


async def get_sensitivity(conn: asyncpg.Connection, session_id: str) -> Sensitivity | None:
    """The session's sensitivity (None: no such session); ValueError if the stored value is not one."""
    stored = await conn.fetchval("SELECT sensitivity FROM sessions WHERE id = $1", session_id)
    return None if stored is None else Sensitivity.parse(stored)


async def get_accommodations(conn: asyncpg.Connection, session_id: str) -> Accommodations | None:
    """The candidate's accommodations (None: no such session); ValueError if the stored value is not one."""
    stored = await conn.fetchval("SELECT accommodations FROM sessions WHERE id = $1", session_id)
    return None if stored is None else Accommodations.parse(stored)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def to_json(row: asyncpg.Record) -> dict[str, Any]:
    """The session as the REST API serves it."""
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
        "sensitivity": row["sensitivity"],
        "accommodations": row["accommodations"],
    }


async def give_consent(conn: asyncpg.Connection, session_id: str) -> None:
    """The candidate accepted the recording notice (the first time counts)."""
    await conn.execute("UPDATE sessions SET consent_at = coalesce(consent_at, now()) WHERE id = $1", session_id)


# --- the media node's bookkeeping ------------------------------------------------------------------------------
async def mark_live(conn: asyncpg.Connection, session_id: str, node_id: str) -> bool:
    """A media node answered the candidate's offer: `live` on that node, one more connection."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE sessions SET status = 'live', started_at = coalesce(started_at, now()), node_id = $2, "
            "connections = connections + 1 WHERE id = $1 AND status = ANY($3::text[]) RETURNING id",
            session_id, node_id, sources("live"))
        await webhooks.session_status(conn, session_id, "live")
    return row is not None


async def record_gap(conn: asyncpg.Connection, session_id: str, gap: dict[str, Any]) -> None:
    """A reconnect: where on the media timeline media resumed, and how long (wall time) it was away."""
    await conn.execute("UPDATE sessions SET media_gaps = media_gaps || $2::jsonb WHERE id = $1", session_id, [gap])


async def persist_media_time(conn: asyncpg.Connection, rows: list[tuple[str, float]]) -> None:
    """(session id, media time received so far) for each stream: a reconnect, here or on another node,
    continues the timeline from it; `last_seen_at` tells the disconnect sweep the candidate is still there."""
    await conn.executemany(
        "UPDATE sessions SET duration_s = greatest(duration_s, $2), last_seen_at = now() WHERE id = $1", rows)


async def allocate_segment_idx(conn: asyncpg.Connection, session_id: str) -> int | None:
    """The next archive segment index of the session (None: the session is gone). Call inside a transaction
    with the segment row's insert, so an index is never handed out twice or lost."""
    idx = await conn.fetchval(
        "UPDATE sessions SET next_segment_idx = next_segment_idx + 1 WHERE id = $1 RETURNING next_segment_idx - 1",
        session_id)
    return None if idx is None else int(idx)


# --- status --------------------------------------------------------------------------------------------------
async def move(conn: asyncpg.Connection, session_id: str, status: str, *, failure_reason: str | None = None) -> bool:
    """Move the session to an archive status (`finalizing`, `finalized`, `failed`) if core.sessions allows it
    from where it is; `failure_reason` is kept with `failed` and cleared otherwise. False: not moved."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE sessions SET status = $2, failure_reason = $3 WHERE id = $1 AND status = ANY($4::text[]) "
            "RETURNING id", session_id, status, failure_reason if status == "failed" else None, sources(status))
        await webhooks.session_status(conn, session_id, status)
    return row is not None


async def end(conn: asyncpg.Connection, redis: aioredis.Redis, session_id: str, reason: str) -> bool:
    """End an open session once: status `ended`, then tell its media node and queue the archive finalize.

    Returns False when the session was not open (already ended); ending twice is harmless.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE sessions SET status = 'ended', ended_at = now(), end_reason = $2 WHERE id = $1 "
            "AND status = ANY($3::text[]) RETURNING id, node_id", session_id, reason, sources("ended"))
        if row is None:
            return False
        # A pause or break still on ends with the exam (a reviewer must not read it as going on for ever).
        await events.close_open_holds(conn, session_id, reason)
        await webhooks.session_status(conn, session_id, "ended")
        # Redis must be up to tell the node and queue the finalize. If it is down, this raises and the update
        # rolls back (the caller answers 503 and the end can be retried) instead of leaving an ended session
        # that nobody acts on until the 5-minute re-queue. (The calls themselves come after the commit, so a
        # worker never reads the finalize job before the session is visibly ended.)
        await redis.ping()
    await redis.publish(SESSION_CONTROL, json.dumps({"session_id": session_id, "action": "end"}))
    await redis.xadd(FINALIZE_STREAM, {"session_id": session_id, "reason": reason}, maxlen=100_000,
                     approximate=True)
    await live.publish(redis, SessionStatus(session_id=session_id, status="ended", reason=reason))
    return True


async def delete(ctx: Context, session_id: str, *, actor: str, reason: str) -> bool:
    """Remove a session's video, snapshots, photos and events (its row and everything under it), audit-logged.

    Storage first: a crash in between leaves a row that can be deleted again, never orphaned video.
    """
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
    await live.publish(ctx.redis, SessionStatus(session_id=session_id, status="deleted"))
    return True


# --- score ---------------------------------------------------------------------------------------------------
async def refresh_score(conn: asyncpg.Connection, session_id: str, weights: dict[str, float]) -> float:
    """Recompute and store the suspicion score (core.scoring says how; connections come from proctor.db pools,
    whose jsonb codec encodes dicts). A candidate's accommodations may lower a kind's weight, never raise it
    (core.accommodations); what people put on the timeline (messages, pauses, breaks) is never scored."""
    score = await conn.fetchval(
        "UPDATE sessions s SET score = least(100, coalesce((SELECT sum(least(coalesce(($2::jsonb ->> e.kind)::float, "
        "1), coalesce(CASE WHEN jsonb_typeof(s.accommodations -> 'detectors' -> e.kind) = 'string' THEN 0 END, "
        "(s.accommodations -> 'detectors' -> e.kind ->> 'weight')::float, 'Infinity'::float)) "
        "* CASE WHEN jsonb_typeof(e.details -> 'count') = 'number' THEN (e.details ->> 'count')::float "
        "ELSE greatest(coalesce(e.end_s, e.start_s) - e.start_s, 1) END / 10) FROM events e "
        "WHERE e.session_id = $1 AND e.review_state <> 'dismissed' AND NOT e.kind = ANY($3::text[])), 0)) "
        "WHERE id = $1 RETURNING score",
        session_id, weights, list(TIMELINE_KINDS))
    return float(score or 0.0)
