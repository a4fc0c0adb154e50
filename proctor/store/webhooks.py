"""Every write to the webhook tables: the endpoints admins register, and the outbox of events to deliver to them.

The store functions that make a change worth telling an exam platform about call one hook here, on the same
connection and so, where the caller holds a transaction, in the same transaction as the change: the event and one
delivery row per subscribed endpoint commit with the change or not at all, and `pg_notify` (sent at commit) wakes
the dispatcher (webhooks/worker.py), which puts due deliveries on the Redis job stream. Hooks:

    sessions.mark_live -> session_status(.., "live")      session.started   (once per session)
    sessions.end       -> session_status(.., "ended")     session.ended     (once per session)
    sessions.move      -> session_status(.., "finalized") session.finalized (once per session)
    events.insert      -> flag_raised                     flag.raised       (flags only, not timeline entries)
    events.review      -> flag_reviewed                   review.decided    (scope "flag": confirmed/dismissed)
    cases.apply        -> case_changed                    review.decided    (scope "case": cleared/concern_raised)

With no enabled endpoint subscribed to a type a hook costs one query on a tiny table and writes nothing.
Bodies are rendered once, when the event is queued, and sent byte for byte on every attempt.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.events import TIMELINE_KINDS
from proctor.accounts import audit

EVENT_TYPES = ("session.started", "session.ended", "flag.raised", "session.finalized", "review.decided")
# Sent only by an admin's "send test event", to one endpoint, whatever it subscribed to.
TEST_TYPE = "webhook.test"
STATES = ("pending", "delivered", "failed")
# LISTEN/NOTIFY channel: a NOTIFY sent inside a transaction is delivered when it commits, never before.
NOTIFY_CHANNEL = "proctor_webhooks"
# Session statuses whose reaching is an event, and whether it is sent once per session (a dedup key).
_STATUS_EVENTS = {"live": "session.started", "ended": "session.ended", "finalized": "session.finalized"}
# The timestamps of deliveries and bodies: ISO 8601 in UTC.
_SESSION_COLUMNS = ("id, candidate, exam, status, created_at, started_at, ended_at, end_reason, duration_s, score")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


# --- endpoints -------------------------------------------------------------------------------------------------
async def create_endpoint(conn: asyncpg.Connection, *, url: str, secret: str, event_types: list[str],
                          description: str, enabled: bool, actor: str) -> asyncpg.Record:
    """A new endpoint. The secret is stored as given: every delivery is signed with HMAC-SHA256 keyed by the
    secret itself, so (unlike a password) we must keep it, not a hash; it is never served back after creation
    (`endpoint_to_json` leaves it out). Audit-logged without the secret."""
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (url, secret, event_types, description, enabled, created_by) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *", url, secret, event_types, description, enabled, actor)
    await audit(conn, actor, "webhook.create", f"webhook:{row['id']}",
                {"url": url, "event_types": event_types, "enabled": enabled})
    return row


async def update_endpoint(conn: asyncpg.Connection, endpoint_id: int, *, actor: str, url: str | None = None,
                          secret: str | None = None, event_types: list[str] | None = None,
                          description: str | None = None, enabled: bool | None = None) -> asyncpg.Record | None:
    """Change what is given (None: keep it); None when there is no such endpoint. Audit-logged (a new secret is
    logged as changed, never its value)."""
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET url = coalesce($2, url), secret = coalesce($3, secret), "
        "event_types = coalesce($4, event_types), description = coalesce($5, description), "
        "enabled = coalesce($6, enabled), updated_at = now() WHERE id = $1 RETURNING *",
        endpoint_id, url, secret, event_types, description, enabled)
    if row is not None:
        changed = {k: v for k, v in {"url": url, "event_types": event_types, "description": description,
                                      "enabled": enabled}.items() if v is not None}
        if secret is not None:
            changed["secret"] = "rotated"
        await audit(conn, actor, "webhook.update", f"webhook:{endpoint_id}", changed)
    return row


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id: int, *, actor: str) -> bool:
    """Remove the endpoint and its delivery log (pending deliveries stop). Audit-logged."""
    url = await conn.fetchval("DELETE FROM webhook_endpoints WHERE id = $1 RETURNING url", endpoint_id)
    if url is None:
        return False
    await audit(conn, actor, "webhook.delete", f"webhook:{endpoint_id}", {"url": url})
    return True


async def get_endpoint(conn: asyncpg.Connection, endpoint_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)


async def list_endpoints(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every endpoint with counts of its deliveries by state, oldest first."""
    return list(await conn.fetch(
        "SELECT e.*, (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'pending') "
        "AS pending, (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'failed') "
        "AS failed FROM webhook_endpoints e ORDER BY e.id"))


def endpoint_to_json(row: asyncpg.Record) -> dict[str, Any]:
    """An endpoint as the API serves it: never its secret."""
    out = {"id": row["id"], "url": row["url"], "event_types": list(row["event_types"]),
           "description": row["description"], "enabled": row["enabled"], "created_by": row["created_by"],
           "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])}
    if "pending" in row.keys():
        out["deliveries"] = {"pending": row["pending"], "failed": row["failed"]}
    return out


# --- the outbox: hooks called by the store functions that make each change ------------------------------------
async def _session(conn: asyncpg.Connection, session_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id)
    if row is None:
        return None
    return {"id": str(row["id"]), "candidate": row["candidate"], "exam": row["exam"], "status": row["status"],
            "created_at": _iso(row["created_at"]), "started_at": _iso(row["started_at"]),
            "ended_at": _iso(row["ended_at"]), "end_reason": row["end_reason"], "duration_s": row["duration_s"],
            "score": row["score"]}


async def _subscribers(conn: asyncpg.Connection, event_type: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled AND $1 = ANY(event_types))", event_type))


def render_body(event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The JSON body every endpoint receives for one event: {"id", "type", "created_at", "data"}."""
    return json.dumps({"id": event_id, "type": event_type, "created_at": _iso(created_at), "data": data},
                      separators=(",", ":"), ensure_ascii=False)


async def _queue(conn: asyncpg.Connection, event_type: str, data: dict[str, Any], *, session_id: str | None,
                 dedup_key: str | None = None, endpoint_id: int | None = None) -> str | None:
    """Queue one event for every enabled endpoint subscribed to its type (or for `endpoint_id` alone); the id of
    the event, or None when nothing was queued (no subscriber, or the dedup key was queued before)."""
    event_id = str(uuid.uuid4())
    body = render_body(event_id, event_type, datetime.now(UTC), data)
    # One statement: the event and its deliveries are written together even on a connection with no transaction.
    queued = await conn.fetchval(
        "WITH ev AS (INSERT INTO webhook_events (id, type, body, session_id, dedup_key) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (dedup_key) DO NOTHING RETURNING id), "
        "d AS (INSERT INTO webhook_deliveries (event_id, endpoint_id) SELECT ev.id, e.id FROM ev, webhook_endpoints e "
        "WHERE CASE WHEN $6::bigint IS NULL THEN e.enabled AND $2 = ANY(e.event_types) ELSE e.id = $6 END "
        "RETURNING 1) SELECT count(*) FROM d", event_id, event_type, body, session_id, dedup_key, endpoint_id)
    if not queued:
        return None
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return event_id


async def session_status(conn: asyncpg.Connection, session_id: str, status: str) -> None:
    """The session reached `status` (hook of sessions.mark_live, end and move): session.started on `live`,
    session.ended, session.finalized; once per session each (a reconnect is no second start)."""
    event_type = _STATUS_EVENTS.get(status)
    if event_type is None or not await _subscribers(conn, event_type):
        return
    session = await _session(conn, session_id)
    if session is None or session["status"] != status:
        return  # the change did not happen (the caller's update matched nothing)
    data: dict[str, Any] = {"session": session}
    if event_type == "session.finalized":
        master = await conn.fetchrow("SELECT bytes, sha256, duration_s, width, height FROM master_videos "
                                     "WHERE session_id = $1", session_id)
        data["master_video"] = dict(master) if master is not None else None
    await _queue(conn, event_type, data, session_id=session_id, dedup_key=f"{event_type}:{session_id}")


def _flag(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "kind": row["kind"], "source": row["source"], "start_s": row["start_s"],
            "end_s": row["end_s"], "confidence": row["confidence"], "review_state": row["review_state"]}


async def flag_raised(conn: asyncpg.Connection, event_id: int) -> None:
    """A flag was raised (hook of events.insert): flag.raised; a proctor's message, a pause or a break is on the
    timeline but is no flag and sends nothing."""
    if not await _subscribers(conn, "flag.raised"):
        return
    row = await conn.fetchrow("SELECT * FROM events WHERE id = $1 AND NOT kind = ANY($2::text[])", event_id,
                              list(TIMELINE_KINDS))
    if row is None:
        return
    session = await _session(conn, str(row["session_id"]))
    await _queue(conn, "flag.raised", {"session": session, "flag": _flag(row)}, session_id=str(row["session_id"]),
                 dedup_key=f"flag.raised:{event_id}")


async def flag_reviewed(conn: asyncpg.Connection, session_id: str, event_id: int) -> None:
    """A reviewer confirmed or dismissed one flag (hook of events.review): review.decided with scope "flag"."""
    if not await _subscribers(conn, "review.decided"):
        return
    row = await conn.fetchrow(
        "SELECT e.*, u.name AS reviewer FROM events e LEFT JOIN users u ON u.id = e.reviewed_by WHERE e.id = $1 "
        "AND e.session_id = $2 AND e.review_state IN ('confirmed', 'dismissed') AND NOT e.kind = ANY($3::text[])",
        event_id, session_id, list(TIMELINE_KINDS))
    if row is None:
        return
    await _queue(conn, "review.decided", {
        "scope": "flag", "session": await _session(conn, session_id), "flag": _flag(row),
        "decision": row["review_state"], "note": row["review_note"], "decided_by": row["reviewer"],
        "decided_at": _iso(row["reviewed_at"])}, session_id=session_id)


async def case_changed(conn: asyncpg.Connection, session_id: str, action: str) -> None:
    """A case changed (hook of cases.apply): a decision (cleared, concern raised) is review.decided with scope
    "case"; assigning, starting, commenting and reopening send nothing."""
    if action != "decide" or not await _subscribers(conn, "review.decided"):
        return
    row = await conn.fetchrow(
        "SELECT c.status, c.rationale, c.decided_at, c.version, u.name AS decided_by FROM cases c "
        "LEFT JOIN users u ON u.id = c.decided_by WHERE c.session_id = $1 AND c.status IN ('cleared', "
        "'concern_raised')", session_id)
    if row is None:
        return
    await _queue(conn, "review.decided", {
        "scope": "case", "session": await _session(conn, session_id), "decision": row["status"],
        "rationale": row["rationale"], "decided_by": row["decided_by"], "decided_at": _iso(row["decided_at"]),
        "case_version": row["version"]}, session_id=session_id)


async def send_test(conn: asyncpg.Connection, endpoint_id: int, *, actor: str) -> str | None:
    """Queue a `webhook.test` event for one endpoint (enabled or not: admins try an endpoint before enabling it).
    None: no such endpoint. Audit-logged."""
    if await get_endpoint(conn, endpoint_id) is None:
        return None
    event_id = await _queue(conn, TEST_TYPE, {"message": "A test event sent by an admin.", "sent_by": actor},
                            session_id=None, endpoint_id=endpoint_id)
    await audit(conn, actor, "webhook.test", f"webhook:{endpoint_id}", {"event_id": event_id})
    return event_id


# --- the delivery log ------------------------------------------------------------------------------------------
_DELIVERIES = ("SELECT d.*, ev.type, ev.session_id, ev.created_at AS event_created_at, e.url FROM webhook_deliveries d "
               "JOIN webhook_events ev ON ev.id = d.event_id JOIN webhook_endpoints e ON e.id = d.endpoint_id ")


async def list_deliveries(conn: asyncpg.Connection, *, endpoint_id: int | None = None, state: str | None = None,
                          before_id: int | None = None, limit: int = 100) -> list[asyncpg.Record]:
    """Deliveries newest first, optionally of one endpoint or state; `before_id` pages back (a cursor)."""
    return list(await conn.fetch(
        _DELIVERIES + "WHERE ($1::bigint IS NULL OR d.endpoint_id = $1) AND ($2::text IS NULL OR d.state = $2) "
        "AND ($3::bigint IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4", endpoint_id, state, before_id, limit))


async def get_delivery(conn: asyncpg.Connection, delivery_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_DELIVERIES + "WHERE d.id = $1", delivery_id)


def delivery_to_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "event_id": str(row["event_id"]), "type": row["type"],
            "endpoint_id": row["endpoint_id"], "url": row["url"],
            "session_id": str(row["session_id"]) if row["session_id"] else None, "state": row["state"],
            "attempts": row["attempts"], "last_status": row["last_status"], "last_error": row["last_error"],
            "last_attempt_at": _iso(row["last_attempt_at"]),
            "next_attempt_at": _iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
            "delivered_at": _iso(row["delivered_at"]), "created_at": _iso(row["created_at"])}


async def resend(conn: asyncpg.Connection, delivery_id: int, *, actor: str) -> bool | None:
    """Send a failed delivery again: a new round of attempts from now, same event id and body (receivers that
    got it after all deduplicate). None: no such delivery; False: it is not failed. Audit-logged."""
    state = await conn.fetchval("SELECT state FROM webhook_deliveries WHERE id = $1", delivery_id)
    if state is None:
        return None
    updated = await conn.fetchval(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(), queued_at = NULL, "
        "lease_until = NULL WHERE id = $1 AND state = 'failed' RETURNING id", delivery_id)
    if updated is None:
        return False
    await audit(conn, actor, "webhook.resend", f"webhook_delivery:{delivery_id}")
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return True


# --- the delivery worker's bookkeeping -------------------------------------------------------------------------
async def claim_due(conn: asyncpg.Connection, *, requeue_after_s: float, limit: int = 200) -> list[int]:
    """Pending deliveries that are due and not on the job stream (or were put there more than `requeue_after_s`
    ago: the job was lost with Redis, or its worker died and the stream entry with it): marked queued now. Any
    number of dispatchers may run: SKIP LOCKED hands each row to one."""
    rows = await conn.fetch(
        "UPDATE webhook_deliveries SET queued_at = now() WHERE id IN (SELECT id FROM webhook_deliveries "
        "WHERE state = 'pending' AND next_attempt_at <= now() AND (queued_at IS NULL OR queued_at < now() - "
        "make_interval(secs => $1)) ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        requeue_after_s, limit)
    return [int(r["id"]) for r in rows]


async def unqueue(conn: asyncpg.Connection, delivery_ids: list[int]) -> None:
    """The jobs could not be put on the stream (Redis down): the next dispatch round tries again."""
    await conn.execute("UPDATE webhook_deliveries SET queued_at = NULL WHERE id = ANY($1::bigint[])", delivery_ids)


async def start_attempt(conn: asyncpg.Connection, delivery_id: int, *, lease_s: float) -> asyncpg.Record | None:
    """Take the delivery for one attempt if it is still pending and due and no other worker holds it (a duplicate
    job, a re-queued one): counts the attempt and leases it for `lease_s`. None: nothing to do now."""
    return await conn.fetchrow(
        "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, last_attempt_at = now(), "
        "lease_until = now() + make_interval(secs => $2) FROM webhook_endpoints e, webhook_events ev "
        "WHERE d.id = $1 AND e.id = d.endpoint_id AND ev.id = d.event_id AND d.state = 'pending' "
        "AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now()) "
        "RETURNING d.id, d.attempts, e.id AS endpoint_id, e.url, e.secret, e.enabled, ev.id AS event_id, ev.type, "
        "ev.body", delivery_id, lease_s)


async def finish_attempt(conn: asyncpg.Connection, delivery_id: int, *, status: int | None, error: str | None,
                         retry_in_s: float | None) -> None:
    """Record an attempt's outcome: delivered (no error), another attempt in `retry_in_s`, or failed for good
    (`retry_in_s` None)."""
    if error is None:
        await conn.execute(
            "UPDATE webhook_deliveries SET state = 'delivered', delivered_at = now(), last_status = $2, "
            "last_error = NULL, next_attempt_at = NULL, queued_at = NULL, lease_until = NULL WHERE id = $1",
            delivery_id, status)
        return
    await conn.execute(
        "UPDATE webhook_deliveries SET state = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'pending' END, "
        "last_status = $2, last_error = $3, next_attempt_at = now() + make_interval(secs => $4::float8), "
        "queued_at = NULL, lease_until = NULL WHERE id = $1", delivery_id, status, error[:1000], retry_in_s)
