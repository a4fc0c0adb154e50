"""Every write to a case: the review decision for one ended session, and the history of how it got there.

    unreviewed ──> in_review ──> cleared | concern_raised
        └────────────────────────^           │ reopen (admins, with a reason)
                    in_review <──────────────┘

A session has a case once it has ended (statuses ended, finalizing, finalized, failed); until a reviewer touches
it there is no `cases` row and it reads as `unreviewed`. A decision needs a written rationale; every change is a
`case_history` row (shown on the review page and in the evidence report) and the caller adds the audit-log entry
in the same transaction. Flags are never a verdict on their own: they "need review", and the case is where a
person decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from core.events import TIMELINE_KINDS
from proctor.store import webhooks

STATUSES = ("unreviewed", "in_review", "cleared", "concern_raised")
DECISIONS = ("cleared", "concern_raised")
LABELS = {"unreviewed": "Unreviewed", "in_review": "In review", "cleared": "Cleared",
          "concern_raised": "Concern raised"}
ACTIONS = ("assign", "start", "decide", "reopen", "comment")
# Session statuses whose session can be reviewed as a whole: the exam is over.
ENDED_STATUSES = ("ended", "finalizing", "finalized", "failed")
MAX_RATIONALE = 5000
MIN_RATIONALE = 10  # a word or two is not a reason a candidate can answer

# The case status of a session row `s` joined with its case row `c` (LEFT JOIN cases c ON c.session_id = s.id):
# NULL while the exam is still open, 'unreviewed' once it ended and nobody has touched the case.
STATUS_SQL = (f"(CASE WHEN s.status IN ({', '.join(repr(x) for x in ENDED_STATUSES)}) "
              "THEN coalesce(c.status, 'unreviewed') END)")
# Order of the "case" sort of the sessions list: what still needs a person first.
STATUS_ORDER_SQL = (f"array_position(ARRAY[{', '.join(repr(x) for x in STATUSES)}]::text[], {STATUS_SQL})")


class CaseError(ValueError):
    """A change the case cannot take: `reason` is "invalid" (bad input, 400), "conflict" (the case is not in a
    state for it, 409) or "forbidden" (the caller's role may not, 403)."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Case:
    session_id: str
    status: str = "unreviewed"
    assignee: str | None = None
    rationale: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    version: int = 0
    updated_at: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return self.status in DECISIONS

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "status": self.status, "label": LABELS[self.status],
                "assignee": self.assignee, "rationale": self.rationale, "decided_by": self.decided_by,
                "decided_at": _iso(self.decided_at), "version": self.version,
                "updated_at": _iso(self.updated_at), "history": self.history}


@dataclass(frozen=True)
class Change:
    """One requested change, as checked input (see `parse_change`)."""

    action: str
    assignee: str | None = None  # for "assign": an account name, None to unassign
    decision: str | None = None
    text: str | None = None  # the rationale of "decide", the reason of "reopen", the text of "comment"
    version: int | None = None  # the version the client saw; None: do not check


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text(body: dict[str, Any], key: str, what: str, *, required: bool) -> str | None:
    raw = body.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise CaseError(f"{what} is required (at least {MIN_RATIONALE} characters)")
        return None
    if not isinstance(raw, str):
        raise CaseError(f"{what} must be a string")
    text = raw.strip()
    if len(text) > MAX_RATIONALE:
        raise CaseError(f"{what} must be at most {MAX_RATIONALE} characters, got {len(text)}")
    if required and len(text) < MIN_RATIONALE:
        raise CaseError(f"{what} must say why, in at least {MIN_RATIONALE} characters")
    return text


def parse_change(body: dict[str, Any]) -> Change:
    """A change request body ({"action", ...}) as a Change, or CaseError saying what is wrong with it. Text must
    already be storable (proctor.http.read_json refuses NUL and lone surrogates)."""
    action = body.get("action")
    if action not in ACTIONS:
        raise CaseError(f"action must be one of {', '.join(ACTIONS)}")
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 0 <= version < 2**31):
        raise CaseError("version must be the case's version number, as GET returned it")
    if action == "assign":
        assignee = body.get("assignee")
        if assignee is not None and (not isinstance(assignee, str) or not 0 < len(assignee) <= 200):
            raise CaseError("assignee must be an account name, or null to unassign")
        return Change("assign", assignee=assignee, version=version)
    if action == "decide":
        decision = body.get("decision")
        if decision not in DECISIONS:
            raise CaseError(f"decision must be one of {', '.join(DECISIONS)}")
        return Change("decide", decision=decision, text=_text(body, "rationale", "rationale", required=True),
                      version=version)
    if action == "reopen":
        return Change("reopen", text=_text(body, "reason", "reason", required=True), version=version)
    if action == "comment":
        return Change("comment", text=_text(body, "note", "note", required=True), version=version)
    return Change("start", version=version)


_SELECT = ("SELECT c.*, a.name AS assignee_name, d.name AS decided_by_name FROM cases c "
           "LEFT JOIN users a ON a.id = c.assignee_id LEFT JOIN users d ON d.id = c.decided_by "
           "WHERE c.session_id = $1")


async def history(conn: asyncpg.Connection, session_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM case_history WHERE session_id = $1 ORDER BY id", session_id)
    return [{"at": _iso(r["at"]), "actor": r["actor"], "action": r["action"], "from_status": r["from_status"],
             "to_status": r["to_status"], "assignee": r["assignee"], "note": r["note"]} for r in rows]


async def get(conn: asyncpg.Connection, session_id: str, *, with_history: bool = True) -> Case:
    """The session's case (an untouched one when it has no row yet)."""
    row = await conn.fetchrow(_SELECT, session_id)
    past = await history(conn, session_id) if with_history else []
    if row is None:
        return Case(session_id, history=past)
    return Case(session_id, row["status"], row["assignee_name"], row["rationale"], row["decided_by_name"],
                row["decided_at"], row["version"], row["updated_at"], past)


async def _user_id(conn: asyncpg.Connection, name: str) -> int:
    found = await conn.fetchval("SELECT id FROM users WHERE name = $1 AND NOT disabled", name)
    if found is None:
        raise CaseError(f"no active account named {name!r} to assign")
    return int(found)


def _next(current: Case, change: Change, *, actor: str, is_admin: bool) -> tuple[str, str | None]:
    """The status after `change` and the assignee's name; CaseError when the case cannot take it."""
    if change.version is not None and change.version != current.version:
        raise CaseError("the case changed since you loaded it (someone else is reviewing it): reload it",
                        reason="conflict")
    status, assignee = current.status, current.assignee
    if change.action == "assign":
        # Handing a case to someone starts its review, and taking it from everyone puts it back in the queue
        # (in review means someone is on it); a decided case keeps its decision either way.
        if change.assignee is not None:
            return ("in_review" if status == "unreviewed" else status), change.assignee
        return ("unreviewed" if status == "in_review" else status), None
    if change.action == "start":
        if current.decided:
            raise CaseError(f"the case is already decided ({LABELS[status]}): reopen it first", reason="conflict")
        return "in_review", assignee or actor
    if change.action == "decide":
        if current.decided:
            raise CaseError(f"the case is already decided ({LABELS[status]}): reopen it first", reason="conflict")
        return str(change.decision), assignee or actor
    if change.action == "reopen":
        if not current.decided:
            raise CaseError("only a decided case can be reopened", reason="conflict")
        if not is_admin:
            raise CaseError("only an admin may reopen a decided case", reason="forbidden")
        return "in_review", assignee
    return status, assignee  # comment


async def apply(conn: asyncpg.Connection, session_id: str, change: Change, *, actor: str, actor_id: int,
                is_admin: bool) -> Case:
    """Apply `change` to the case of an ended session (call inside a transaction; the caller checked that the
    session exists and has ended). Locks the case row, so two reviewers' changes apply one after the other."""
    await conn.execute("INSERT INTO cases (session_id) VALUES ($1) ON CONFLICT (session_id) DO NOTHING",
                       session_id)
    await conn.execute("SELECT 1 FROM cases WHERE session_id = $1 FOR UPDATE", session_id)
    current = await get(conn, session_id, with_history=False)
    status, assignee = _next(current, change, actor=actor, is_admin=is_admin)
    assignee_id = actor_id if assignee == actor else await _user_id(conn, assignee) if assignee is not None else None
    deciding = change.action == "decide"
    reopening = change.action == "reopen"
    await conn.execute(
        "UPDATE cases SET status = $2, assignee_id = $3, "
        "rationale = CASE WHEN $4 THEN $5 WHEN $6 THEN NULL ELSE rationale END, "
        "decided_by = CASE WHEN $4 THEN $7::bigint WHEN $6 THEN NULL ELSE decided_by END, "
        "decided_at = CASE WHEN $4 THEN now() WHEN $6 THEN NULL ELSE decided_at END, "
        "version = version + 1, updated_at = now() WHERE session_id = $1",
        session_id, status, assignee_id, deciding, change.text, reopening, actor_id)
    note = change.text if change.action in ("decide", "reopen", "comment") else None
    await conn.execute(
        "INSERT INTO case_history (session_id, actor, action, from_status, to_status, assignee, note) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        session_id, actor, change.action if not deciding else f"decide:{change.decision}", current.status, status,
        assignee, note)
    await webhooks.case_changed(conn, session_id, change.action)
    return await get(conn, session_id)


async def queue(conn: asyncpg.Connection, *, limit: int = 100) -> list[asyncpg.Record]:
    """Ended sessions nobody has started reviewing, highest suspicion score first (then the oldest ending)."""
    return list(await conn.fetch(
        "SELECT s.id, s.candidate, s.exam, s.status, s.score, s.ended_at, s.duration_s, "
        # Flags only: a proctor's messages, pauses and breaks are on the timeline but never need review.
        "(SELECT count(*) FROM events e WHERE e.session_id = s.id AND NOT e.kind = ANY($2::text[])) AS flags, "
        "(SELECT count(*) FROM events e WHERE e.session_id = s.id AND NOT e.kind = ANY($2::text[]) "
        "AND e.review_state = 'pending') AS pending "
        "FROM sessions s LEFT JOIN cases c ON c.session_id = s.id "
        f"WHERE {STATUS_SQL} = 'unreviewed' ORDER BY s.score DESC, s.ended_at ASC NULLS LAST, s.id LIMIT $1",
        limit, list(TIMELINE_KINDS)))


async def assigned_to(conn: asyncpg.Connection, user_id: int, *, limit: int = 100) -> list[asyncpg.Record]:
    """Cases in review assigned to this reviewer, highest score first."""
    return list(await conn.fetch(
        "SELECT s.id, s.candidate, s.exam, s.status, s.score, s.ended_at, c.updated_at FROM cases c "
        "JOIN sessions s ON s.id = c.session_id WHERE c.assignee_id = $1 AND c.status = 'in_review' "
        "ORDER BY s.score DESC, c.updated_at LIMIT $2", user_id, limit))
