"""Every insert and change of an `events` row, and the one JSON shape events are served in.

Events come from the live rules on a media node (analyzers/live.py: start, update, end of a flag), from the
archive about itself (a `recording_error`), from staff (review, acknowledgement), and from live intervention
(media_server/intervention.py, web/live.py, web/candidate.py): a proctor's message, a pause, a candidate's break
(core.events.TIMELINE_KINDS) and the candidate's acknowledgement of each.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from core.events import HOLD_KINDS, TIMELINE_KINDS, source_of
from proctor.store import webhooks

# Events with the names of the staff who reviewed and acknowledged them: what `to_json` reads.
_SELECT = (
    "SELECT e.*, r.name AS reviewed_by_name, a.name AS acknowledged_by_name FROM events e "
    "LEFT JOIN users r ON r.id = e.reviewed_by LEFT JOIN users a ON a.id = e.acknowledged_by ")


async def insert(conn: asyncpg.Connection, session_id: str, kind: str, start_s: float, end_s: float | None,
                 confidence: float, details: dict[str, Any]) -> int:
    """A new event; its source (analyzer, browser, system) follows from its kind."""
    event_id = int(await conn.fetchval(
        "INSERT INTO events (session_id, kind, start_s, end_s, confidence, details, source) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        session_id, kind, start_s, end_s, confidence, details, source_of(kind)))
    await webhooks.flag_raised(conn, event_id)
    return event_id


async def update(conn: asyncpg.Connection, event_id: int, end_s: float | None, confidence: float,
                 details: dict[str, Any]) -> None:
    """A running event grew: a new peak of confidence, its end, or more merged instants."""
    await conn.execute(
        "UPDATE events SET end_s = $2, confidence = greatest(confidence, $3), details = $4, updated_at = now() "
        "WHERE id = $1", event_id, end_s, confidence, details)


async def find_started(conn: asyncpg.Connection, session_id: str, kind: str, start_s: float) -> int | None:
    """The event of this kind that started at this media time (one per kind can): after a write whose commit
    may or may not have landed, find its row instead of inserting a duplicate."""
    found = await conn.fetchval("SELECT id FROM events WHERE session_id = $1 AND kind = $2 AND start_s = $3 "
                                "ORDER BY id LIMIT 1", session_id, kind, start_s)
    return None if found is None else int(found)


async def set_snapshot(conn: asyncpg.Connection, event_id: int, key: str) -> str | None:
    """Point the event at its evidence JPEG; returns the key it pointed at before (to delete), if any."""
    return await conn.fetchval("UPDATE events e SET snapshot_key = $2 FROM events o WHERE e.id = $1 "
                               "AND o.id = e.id RETURNING o.snapshot_key", event_id, key)


async def review(conn: asyncpg.Connection, session_id: str, event_id: int, *, state: str, note: str | None,
                 user_id: int) -> bool:
    """A reviewer's verdict on one flag (core.events.REVIEW_STATES). False: no such flag in that session (a
    timeline entry, core.events.TIMELINE_KINDS, is not a flag: there is nothing to confirm or dismiss)."""
    updated = await conn.fetchval(
        "UPDATE events SET review_state = $3, review_note = $4, reviewed_by = $5, reviewed_at = now(), "
        "updated_at = now() WHERE id = $1 AND session_id = $2 AND NOT kind = ANY($6::text[]) RETURNING id",
        event_id, session_id, state, note, user_id, list(TIMELINE_KINDS))
    await webhooks.flag_reviewed(conn, session_id, event_id)
    return updated is not None


async def acknowledge(conn: asyncpg.Connection, session_id: str, event_id: int, user_id: int) -> bool:
    """A proctor has seen a live alert; the first acknowledgement is kept. False: no such event."""
    updated = await conn.fetchval(
        "UPDATE events SET acknowledged_by = coalesce(acknowledged_by, $3), "
        "acknowledged_at = coalesce(acknowledged_at, now()), updated_at = now() "
        "WHERE id = $1 AND session_id = $2 RETURNING id", event_id, session_id, user_id)
    return updated is not None


# --- live intervention: messages, pauses and breaks on the timeline ------------------------------------------
async def open_hold(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    """The pause or break going on now (its end_s is NULL; one at most: a unique index says so), or None."""
    return await conn.fetchrow("SELECT * FROM events WHERE session_id = $1 AND kind = ANY($2::text[]) "
                               "AND end_s IS NULL", session_id, list(HOLD_KINDS))


async def end_hold(conn: asyncpg.Connection, session_id: str, event_id: int, end_s: float,
                   details: dict[str, Any]) -> bool:
    """End a pause or break at `end_s` (never before it began), merging `details` in. False: it was not open."""
    updated = await conn.fetchval(
        "UPDATE events SET end_s = greatest($3, start_s), details = details || $4::jsonb, updated_at = now() "
        "WHERE id = $1 AND session_id = $2 AND kind = ANY($5::text[]) AND end_s IS NULL RETURNING id",
        event_id, session_id, end_s, details, list(HOLD_KINDS))
    return updated is not None


async def close_open_holds(conn: asyncpg.Connection, session_id: str, reason: str) -> None:
    """The session ended with a pause or break still on: it ends where the candidate's media does."""
    await conn.execute(
        "UPDATE events e SET end_s = greatest(e.start_s, s.duration_s), details = e.details || $3::jsonb, "
        "updated_at = now() FROM sessions s WHERE s.id = e.session_id AND e.session_id = $1 "
        "AND e.kind = ANY($2::text[]) AND e.end_s IS NULL", session_id, list(HOLD_KINDS), {"ended": reason})


async def count_kind(conn: asyncpg.Connection, session_id: str, kind: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events WHERE session_id = $1 AND kind = $2",
                                   session_id, kind))


async def acknowledge_intervention(conn: asyncpg.Connection, session_id: str, event_id: int,
                                   stage: str) -> str | None:
    """The candidate's page showed (`stage` "shown") or the candidate confirmed ("ok") a message, request or pause:
    the first time of each is kept in its details as `<stage>_at` (ISO). Returns that time, None when the event is
    no intervention of this session."""
    if stage not in ("shown", "ok"):
        raise ValueError(f"unknown acknowledgement stage {stage!r}")
    field = f"{stage}_at"
    return await conn.fetchval(
        "UPDATE events SET details = jsonb_set(details, ARRAY[$3::text], coalesce(details -> $3, "
        "to_jsonb(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')))), updated_at = now() "
        "WHERE id = $1 AND session_id = $2 AND kind = ANY($4::text[]) RETURNING details ->> $3",
        event_id, session_id, field, list(TIMELINE_KINDS))


async def get(conn: asyncpg.Connection, event_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_SELECT + "WHERE e.id = $1", event_id)


async def for_session(conn: asyncpg.Connection, session_id: str) -> list[asyncpg.Record]:
    """The session's events in timeline order, ready for `to_json`."""
    return list(await conn.fetch(_SELECT + "WHERE e.session_id = $1 ORDER BY e.start_s, e.id", session_id))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def to_json(row: asyncpg.Record) -> dict[str, Any]:
    """An event as every route serves it (session detail, events list, review, export); `row` comes from
    `get` or `for_session` (it carries the reviewers' names)."""
    end_s = row["end_s"]
    return {
        "id": row["id"], "session_id": str(row["session_id"]), "kind": row["kind"], "start_s": row["start_s"],
        "end_s": end_s, "duration_s": round(end_s - row["start_s"], 3) if end_s is not None else None,
        "confidence": row["confidence"], "details": row["details"], "source": row["source"],
        "review_state": row["review_state"], "review_note": row["review_note"],
        "reviewed_by": row["reviewed_by_name"], "reviewed_at": _iso(row["reviewed_at"]),
        "acknowledged_by": row["acknowledged_by_name"], "acknowledged_at": _iso(row["acknowledged_at"]),
        "snapshot_url": f"/api/sessions/{row['session_id']}/events/{row['id']}/snapshot" if row["snapshot_key"]
        else None,
    }
