"""Staff pages and the review API: sessions list, the reviewer queue, review (master video + timeline), event
review/ack, the case of a session (its review status, assignee and decision with a rationale), exports, and the
preview of a session whose master is not built yet (its stored segments and batches, in order).

Pages need a login (redirect to /login); the JSON routes need a login cookie or an API token (401), and a
state-changing call from a page carries the CSRF token (checked by web.auth.identify).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web

from core import pagination
from core.accommodations import Accommodations
from core.events import REVIEW_STATES, TIMELINE_KINDS
from core.live import Acknowledged
from core.pagination import Sort, SortKey
from core.search import LIKE_ESCAPE, contains_pattern
from core.sensitivity import Sensitivity
from core.sessions import STATUSES
from proctor import accounts
from proctor.http import CTX, error, path_int, path_session_id, read_json, require_user, unstorable
from proctor.store import cases, events, live, sessions
from signaling.api import existing_session
from web.login import page_user, render_page
from web.media import serve_video

MAX_NOTE = 2000
MAX_QUERY = 200
_NEWEST = (SortKey("s.created_at", True, "ts"), SortKey("s.id", True, "uuid"))
# Each sort ends with the id so the order is total: keyset pages (core/pagination.py) then never skip nor repeat a row.
SORTS = {"newest": Sort("newest", _NEWEST),
         "score": Sort("score", (SortKey("s.score", True, "float"), *_NEWEST)),
         # NULLS LAST as a number: an open exam (no case yet) after every case status.
         "case": Sort("case", (SortKey(f"coalesce({cases.STATUS_ORDER_SQL}, 1000)", False, "int"),
                               SortKey("s.score", True, "float"), *_NEWEST))}
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
QUEUE_LIMIT = 100
EXPORT_FIELDS = ("id", "kind", "start_s", "end_s", "duration_s", "confidence", "source", "review_state",
                 "review_note", "reviewed_by", "reviewed_at", "acknowledged_by", "acknowledged_at", "snapshot_url")


def _tenths(score: float | None) -> float:
    # Half up, as staff.js's Math.round does, so the server and the page show the same number.
    return math.floor((score or 0.0) * 10 + 0.5) / 10


def score_level(score: float | None) -> str:
    """The colour band of a suspicion score (of the number shown): low (green) < 10 <= mid (amber) < 40 <= high."""
    value = _tenths(score)
    return "low" if value < 10 else "mid" if value < 40 else "high"


def fmt_score(score: float | None) -> str:
    return f"{_tenths(score):.1f}"


# --- pages ---------------------------------------------------------------------------------------------

async def sessions_page(request: web.Request) -> web.Response:
    """The sessions list, a page at a time (keyset cursor: `?cursor=`, `?size=` up to MAX_PAGE_SIZE). Unknown
    filter values fall back to "all"; a cursor that is not ours or a wrong size is a 400 with the reason."""
    page_user(request)
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        status = None
    case = request.query.get("case") or None
    if case is not None and case not in cases.STATUSES:
        case = None
    query = request.query.get("q", "").strip()[:MAX_QUERY]
    if unstorable(query) is not None:  # NUL or a lone surrogate cannot be searched for: show the unfiltered list
        query = ""
    flagged = request.query.get("flagged") == "1"
    sort = request.query.get("sort", "newest")
    if sort not in SORTS:
        sort = "newest"
    order = SORTS[sort]
    size = _page_size(request.query.get("size"))
    key = request.app[CTX].settings.signing_key()
    cursor = _read_cursor(key, order, request.query.get("cursor"))
    direction = cursor.direction if cursor else pagination.NEXT
    after = f"AND {order.beyond(7, direction)} " if cursor else ""
    async with request.app[CTX].pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT s.id, s.candidate, s.exam, s.status, s.created_at, s.started_at, s.ended_at, s.duration_s, "
            f"s.score, {cases.STATUS_SQL} AS case_status, a.name AS case_assignee, {order.select()}, "
            "count(e.id) AS events, count(e.id) FILTER (WHERE e.end_s IS NULL) AS open_events, "
            "count(e.id) FILTER (WHERE e.review_state = 'confirmed') AS confirmed, "
            "count(e.id) FILTER (WHERE e.review_state = 'pending') AS pending "
            "FROM sessions s LEFT JOIN events e ON e.session_id = s.id AND NOT e.kind = ANY($5::text[]) "
            "LEFT JOIN cases c ON c.session_id = s.id LEFT JOIN users a ON a.id = c.assignee_id "
            "WHERE ($1::text IS NULL OR s.status = $1) "
            f"AND ($2::text IS NULL OR s.candidate ILIKE $2 {LIKE_ESCAPE} OR s.exam ILIKE $2 {LIKE_ESCAPE}) "
            f"AND ($4::text IS NULL OR {cases.STATUS_SQL} = $4) {after}"
            "GROUP BY s.id, c.session_id, a.id "
            f"HAVING (NOT $3 OR count(e.id) > 0) ORDER BY {order.order_by(direction)} LIMIT $6",
            status, contains_pattern(query), flagged, case, list(TIMELINE_KINDS), size + 1,
            *(cursor.values if cursor else ()))
    shown = pagination.page(key, order, rows, size, cursor)
    sized = size if size != PAGE_SIZE else None

    def url(cursor: str | None) -> str | None:
        return _list_url(status, query, flagged, sort, case, cursor=cursor, size=sized) if cursor else None

    return render_page("sessions.html", request, {
        "nav": "sessions", "rows": shown.rows, "statuses": STATUSES, "status": status or "", "q": query,
        "flagged": flagged, "sort": sort, "duration": _duration, "case": case or "",
        "case_statuses": cases.STATUSES, "case_labels": cases.LABELS,
        "sort_urls": {name: _list_url(status, query, flagged, name, case, size=sized) for name in SORTS},
        "next_url": url(shown.next), "prev_url": url(shown.prev),
        "first_url": _list_url(status, query, flagged, sort, case, size=sized) if cursor else None,
        "page_size": size, "score_level": score_level, "fmt_score": fmt_score})


def _page_size(value: str | None) -> int:
    """?size=: 1..MAX_PAGE_SIZE, else a 400 that says so."""
    if value is None or value == "":
        return PAGE_SIZE
    if not value.isdecimal() or len(value) > 6 or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise web.HTTPBadRequest(text=f"size must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(value)


def _read_cursor(key: bytes, order: Sort, value: str | None) -> pagination.Cursor | None:
    """?cursor=: a position this server issued for this sort, else a 400 that says why."""
    if not value:
        return None
    try:
        return pagination.decode(key, order, value)
    except pagination.CursorError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _list_url(status: str | None, query: str, flagged: bool, sort: str, case: str | None = None, *,
              cursor: str | None = None, size: int | None = None) -> str:
    params = {"status": status or "", "case": case or "", "flagged": "1" if flagged else "", "q": query,
              "sort": sort if sort != "newest" else "", "size": str(size) if size else "", "cursor": cursor or ""}
    encoded = urlencode({k: v for k, v in params.items() if v})
    return f"/?{encoded}" if encoded else "/"


async def queue_page(request: web.Request) -> web.Response:
    """The reviewer queue: ended sessions nobody has started reviewing, highest suspicion score first, and the
    cases in review assigned to the viewer."""
    user = page_user(request)
    async with request.app[CTX].pool.acquire() as conn:
        waiting = await cases.queue(conn, limit=QUEUE_LIMIT)
        mine = await cases.assigned_to(conn, user.id, limit=QUEUE_LIMIT)
    return render_page("queue.html", request, {
        "nav": "queue", "waiting": waiting, "mine": mine, "duration": _duration, "score_level": score_level,
        "fmt_score": fmt_score, "limit": QUEUE_LIMIT})


def _duration(seconds: float | None) -> str:
    total = int(seconds or 0)
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


async def review_page(request: web.Request) -> web.Response:
    user = page_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        row = await sessions.get(conn, session_id)
        if row is None:
            raise web.HTTPNotFound(text="no such session")
        master = await conn.fetchrow("SELECT duration_s FROM master_videos WHERE session_id = $1", session_id)
        pieces = await preview_pieces(conn, session_id) if master is None else []
        case = await cases.get(conn, session_id)
        reviewers = [r["name"] for r in await conn.fetch("SELECT name FROM users WHERE NOT disabled ORDER BY name")]
    can_delete = user.role == "admin"
    try:
        sensitivity = Sensitivity.parse(row["sensitivity"]).describe()
    except ValueError:  # edited by hand in the database: the media node falls back to the deployment's settings
        sensitivity = "standard (stored value unreadable)"
    try:  # shown beside it, so a break or a detector switched off is not read as a gap in monitoring
        accommodations = Accommodations.parse(row["accommodations"]).describe()
    except ValueError:
        accommodations = "none (stored value unreadable)"
    report_links = request.app[CTX].settings.candidate_report_links
    config = {"sessionId": session_id, "status": row["status"], "score": row["score"],
              "masterDuration": master["duration_s"] if master else None, "pieces": pieces,
              "canDelete": can_delete, "case": case.to_json(), "caseLabels": cases.LABELS,
              "endedStatuses": cases.ENDED_STATUSES, "user": user.name, "isAdmin": user.is_admin,
              "reviewers": reviewers, "reportLinks": report_links, "minRationale": cases.MIN_RATIONALE}
    return render_page("review.html", request, {
        "nav": "sessions", "session": row, "config": config, "can_delete": can_delete, "sensitivity": sensitivity,
        "accommodations": accommodations, "case": case, "case_labels": cases.LABELS, "report_links": report_links,
        "score_level": score_level, "fmt_score": fmt_score})


# --- preview: the stored pieces of a session whose master is not built yet ------------------------------

async def preview_pieces(conn: asyncpg.Connection, session_id: str) -> list[dict[str, Any]]:
    """Stored batches (merged runs of segments) and stored segments in timeline order, each with its URL.

    Each piece is a WebM whose own time starts at 0 at the piece's start_s on the session media timeline.
    """
    rows = await conn.fetch(
        "SELECT 'batch' AS kind, first_idx AS idx, last_idx, start_s, end_s FROM batches "
        "WHERE session_id = $1 AND state = 'stored' "
        "UNION ALL SELECT 'segment', idx, idx, start_s, end_s FROM segments "
        "WHERE session_id = $1 AND state = 'stored' AND storage_key IS NOT NULL ORDER BY start_s, idx", session_id)
    return [{"kind": r["kind"], "idx": r["idx"], "start_s": r["start_s"], "end_s": r["end_s"],
             "segments": r["last_idx"] - r["idx"] + 1,
             "url": f"/api/sessions/{session_id}/{'batches' if r['kind'] == 'batch' else 'segments'}/{r['idx']}"}
            for r in rows]


async def preview(request: web.Request) -> web.Response:
    """GET /api/sessions/{id}/preview: {"status", "score", "master", "pieces"} for the review page's polling."""
    require_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        row = await existing_session(conn, session_id)
        has_master = await conn.fetchval("SELECT count(*) > 0 FROM master_videos WHERE session_id = $1",
                                         session_id)
        pieces = [] if has_master else await preview_pieces(conn, session_id)
    return web.json_response({"status": row["status"], "score": row["score"], "master": has_master,
                              "pieces": pieces}, headers={"Cache-Control": "private, no-store"})


async def _serve_piece(request: web.Request, sql: str) -> web.StreamResponse:
    require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    idx = path_int(request, "idx", "no such piece")
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval(sql, session_id, idx)
    if key is None:
        raise error(web.HTTPNotFound, "not stored (yet, or any more: merged into the master)")
    return await serve_video(ctx, key)


async def segment_video(request: web.Request) -> web.StreamResponse:
    """GET /api/sessions/{id}/segments/{idx}: one stored segment (302 to a presigned URL, or the file)."""
    return await _serve_piece(request, "SELECT storage_key FROM segments WHERE session_id = $1 AND idx = $2 "
                                       "AND state = 'stored' AND storage_key IS NOT NULL")


async def batch_video(request: web.Request) -> web.StreamResponse:
    """GET /api/sessions/{id}/batches/{first_idx}: one stored batch of merged segments."""
    return await _serve_piece(request, "SELECT storage_key FROM batches WHERE session_id = $1 AND first_idx = $2 "
                                       "AND state = 'stored'")


# --- review API ----------------------------------------------------------------------------------------

async def review_event(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/events/{eid}/review {"state": "confirmed|dismissed|pending", "note": "..."}."""
    user = require_user(request)
    session_id, event_id = path_session_id(request), path_int(request, "event_id", "no such event")
    body = await read_json(request, 16 * 1024)
    state, note = body.get("state"), body.get("note")
    if state not in REVIEW_STATES:
        raise error(web.HTTPBadRequest, f"state must be one of {', '.join(REVIEW_STATES)}")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise error(web.HTTPBadRequest, f"note must be a string of at most {MAX_NOTE} characters")
    note = note.strip() or None if isinstance(note, str) else None
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        if not await events.review(conn, session_id, event_id, state=state, note=note, user_id=user.id):
            raise error(web.HTTPNotFound, "no such flag (a message, pause or break on the timeline is not reviewed)")
        await accounts.audit(conn, user.name, "event.review", f"event:{event_id}",
                             {"session_id": session_id, "state": state, "note": note})
        # Dismissed flags drop out of the suspicion score; confirming or resetting one brings it back.
        score = await sessions.refresh_score(conn, session_id, request.app[CTX].settings.weights)
        row = await events.get(conn, event_id)
    return web.json_response({**events.to_json(row), "session_score": score})


async def acknowledge_event(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/events/{eid}/ack: a proctor has seen a live alert (first acknowledgement kept)."""
    user = require_user(request)
    session_id, event_id = path_session_id(request), path_int(request, "event_id", "no such event")
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await events.acknowledge(conn, session_id, event_id, user.id):
            raise error(web.HTTPNotFound, "no such event")
        await accounts.audit(conn, user.name, "event.ack", f"event:{event_id}", {"session_id": session_id})
        row = await events.get(conn, event_id)
    data = events.to_json(row)
    # Other proctors' monitors clear the alert too.
    await live.publish(ctx.redis, Acknowledged(session_id=session_id, event_id=event_id, by=data["acknowledged_by"]))
    return web.json_response(data)


# --- cases ----------------------------------------------------------------------------------------------

async def get_case(request: web.Request) -> web.Response:
    """GET /api/sessions/{id}/case: {"status", "label", "assignee", "rationale", "decided_by", "decided_at",
    "version", "updated_at", "history": [...]}; status is one of cases.STATUSES."""
    require_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        await existing_session(conn, session_id)
        case = await cases.get(conn, session_id)
    return web.json_response(case.to_json(), headers={"Cache-Control": "private, no-store"})


async def change_case(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/case {"action": "assign|start|decide|reopen|comment", ...}: the changed case.

    assign {"assignee": name|null}; start (assigns the caller when nobody is); decide {"decision":
    "cleared|concern_raised", "rationale": "..."} (the rationale is required); reopen {"reason": "..."} (admins);
    comment {"note": "..."}. Any may carry the "version" the caller saw: 409 when the case changed since.
    """
    user = require_user(request)
    session_id = path_session_id(request)
    body = await read_json(request, 32 * 1024)
    try:
        change = cases.parse_change(body)
    except cases.CaseError as exc:
        raise error(web.HTTPBadRequest, str(exc)) from None
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        row = await existing_session(conn, session_id)
        if row["status"] not in cases.ENDED_STATUSES:
            raise error(web.HTTPConflict, "the exam has not ended yet: a case opens when the session ends")
        before = await cases.get(conn, session_id, with_history=False)
        try:
            case = await cases.apply(conn, session_id, change, actor=user.name, actor_id=user.id,
                                     is_admin=user.is_admin)
        except cases.CaseError as exc:
            status = {"conflict": web.HTTPConflict, "forbidden": web.HTTPForbidden}.get(exc.reason, web.HTTPBadRequest)
            raise error(status, str(exc), case=before.to_json()) from None
        await accounts.audit(conn, user.name, f"case.{change.action}", f"session:{session_id}", {
            "from": before.status, "to": case.status, "assignee": case.assignee, "decision": change.decision,
            "text": change.text})
    return web.json_response(case.to_json())


async def case_queue(request: web.Request) -> web.Response:
    """GET /api/cases/queue: unreviewed ended sessions, highest suspicion score first (at most 100)."""
    require_user(request)
    async with request.app[CTX].pool.acquire() as conn:
        rows = await cases.queue(conn, limit=QUEUE_LIMIT)
    return web.json_response([{"id": str(r["id"]), "candidate": r["candidate"], "exam": r["exam"],
                               "status": r["status"], "score": r["score"], "flags": r["flags"],
                               "pending": r["pending"],
                               "ended_at": r["ended_at"].isoformat() if r["ended_at"] else None}
                              for r in rows], headers={"Cache-Control": "private, no-store"})


async def _export_rows(request: web.Request) -> tuple[asyncpg.Record, list[dict[str, Any]]]:
    require_user(request)
    session_id = path_session_id(request)
    async with request.app[CTX].pool.acquire() as conn:
        row = await existing_session(conn, session_id)
        rows = await events.for_session(conn, session_id)
    return row, [events.to_json(e) for e in rows]


def _cell(value: Any) -> Any:
    # Spreadsheet formula injection: text starting with = + - @ (or tab/CR) is prefixed with a quote.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


async def export_events(request: web.Request) -> web.Response:
    """GET /api/sessions/{id}/events.csv | events.json: every event with its review, as a download."""
    fmt = request.match_info["fmt"]
    row, exported = await _export_rows(request)
    name = f"session-{row['id']}-events.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "private, no-store"}
    if fmt == "json":
        body = {"session": sessions.to_json(row), "events": exported}
        return web.json_response(body, headers=headers, dumps=lambda d: json.dumps(d, indent=2))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    for event in exported:
        writer.writerow([_cell(event[f]) for f in EXPORT_FIELDS])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers)


def setup_routes(app: web.Application) -> None:
    # The /api routes are documented in web/openapi.py (_ops_staff): change both together (tests/test_openapi.py).
    r = app.router
    r.add_get("/", sessions_page)
    r.add_get("/sessions", sessions_page)
    r.add_get("/sessions/{session_id}", review_page)
    r.add_get("/queue", queue_page)
    r.add_get("/api/cases/queue", case_queue)
    r.add_get("/api/sessions/{session_id}/case", get_case)
    r.add_post("/api/sessions/{session_id}/case", change_case)
    r.add_post("/api/sessions/{session_id}/events/{event_id}/review", review_event)
    r.add_post("/api/sessions/{session_id}/events/{event_id}/ack", acknowledge_event)
    r.add_get("/api/sessions/{session_id}/events.{fmt:csv|json}", export_events)
    r.add_get("/api/sessions/{session_id}/preview", preview)
    r.add_get("/api/sessions/{session_id}/segments/{idx}", segment_video)
    r.add_get("/api/sessions/{session_id}/batches/{idx}", batch_video)
