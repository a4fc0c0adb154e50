"""The evidence report: one PDF per session with the candidate, the exam, the sensitivity and accommodations, every
flag with its evidence snapshot and the reviewers' decisions and notes, and the case decision with its rationale.

Staff download it (GET /api/sessions/{id}/report.pdf). When an admin allows it (CANDIDATE_REPORT_LINKS), staff can
also give the candidate a signed, expiring link (POST /api/sessions/{id}/report-link -> {"url", "expires_at"}):
their right to see the evidence held against them. The link is a core.tokens token under a key derived for this
purpose only, so a join link never opens a report and a report link never opens an exam; turning the setting off
stops every link given out before.

Rendering is CPU work (reportlab is pure Python): it runs on a small thread pool, at most REPORT_BUILDS at a time
per process, never on the event loop; snapshots load from storage a few at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import io
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from core import tokens
from core.events import TIMELINE_KINDS
from core.sensitivity import Sensitivity
from proctor import accounts
from proctor.context import Context
from proctor.http import CTX, ascii_only, error, path_session_id, require_user
from proctor.store import cases, events, sessions

log = logging.getLogger(__name__)

# Builds at once per process (each holds its snapshots in memory) and the threads that render them.
REPORT_BUILDS = 2
# Snapshots embedded per report; flags past this are listed without their image (a session with thousands of
# flags would otherwise make a PDF nobody can open). Loaded this many at a time from storage.
MAX_SNAPSHOTS = 200
SNAPSHOT_FETCHES = 4
REVIEW_LABELS = {"pending": "needs review", "confirmed": "confirmed by a reviewer",
                 "dismissed": "dismissed by a reviewer"}
_TOKEN_PURPOSE = b"proctor evidence report link v1"
_TOKEN_NONCE = "report"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_builds: asyncio.Semaphore | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=REPORT_BUILDS, thread_name_prefix="report")
        return _executor


def _gate() -> asyncio.Semaphore:
    global _builds
    if _builds is None:
        _builds = asyncio.Semaphore(REPORT_BUILDS)
    return _builds


# --- what goes in ------------------------------------------------------------------------------------------

def timeline_text(entry: dict[str, Any]) -> str:
    """One proctor message, pause or break in words (as the review page's timeline list shows it)."""
    raw = entry.get("details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    by = f" by {details['by']}" if isinstance(details.get("by"), str) and details["by"] else ""
    if entry["kind"] == "exam_paused":
        return f"Exam paused{by}" + ("" if entry["end_s"] is not None else " (never resumed)")
    if entry["kind"] == "exam_break":
        return "Break taken by the candidate"
    text = f": “{details['text']}”" if isinstance(details.get("text"), str) and details["text"] else ""
    ack = " (acknowledged by the candidate)" if details.get("ok_at") else \
        " (shown, not acknowledged)" if details.get("shown_at") else " (not shown on the candidate's page)"
    return f"Proctor {details.get('action') or 'message'}{by}{text}{ack}"


@dataclass
class ReportData:
    session: dict[str, Any]
    sensitivity: str
    accommodations: list[str] | None  # None: this server records no accommodations
    flags: list[dict[str, Any]]
    snapshots: dict[int, bytes]
    case: cases.Case
    generated_at: datetime
    audience: str  # who the copy is for: "staff (name)" or "the candidate"
    notes: list[str] = field(default_factory=list)
    # Proctor messages, pauses and breaks (core.events.TIMELINE_KINDS): on the timeline, never flags.
    case_entries: list[dict[str, Any]] = field(default_factory=list)


def describe_accommodations(raw: Any) -> list[str] | None:
    """The session's accommodations as lines of text, through core.accommodations when this server has it (its
    describe() says it best), else the stored JSON read plainly. None: the session row has no such column."""
    if raw is None:
        return None
    try:
        module = importlib.import_module("core.accommodations")
    except ImportError:
        module = None
    if module is not None:
        try:
            parsed = module.Accommodations.parse(raw) if hasattr(module, "Accommodations") else raw
            text = parsed.describe() if hasattr(parsed, "describe") else module.describe(raw)
            lines = [str(t) for t in text] if isinstance(text, (list, tuple)) else [str(text)]
            return [line for line in lines if line.strip()] or ["none"]
        except Exception as exc:  # an unreadable stored value must not stop the evidence being shown
            log.warning("accommodations unreadable, shown as stored: %s", exc)
    if isinstance(raw, dict):
        return [f"{key}: {value}" for key, value in raw.items()] or ["none"]
    if isinstance(raw, list):
        return [str(item) for item in raw] or ["none"]
    return [str(raw)] if str(raw).strip() else ["none"]


async def _snapshot(ctx: Context, gate: asyncio.Semaphore, key: str) -> bytes | None:
    async with gate:
        try:
            return await ctx.storage.get_bytes(key)
        except Exception as exc:  # a missing object: the flag is still listed, without its image
            log.warning("snapshot %s unavailable for the report: %s", key, exc)
            return None


async def gather(ctx: Context, session_id: str, audience: str) -> ReportData | None:
    """Everything the report shows, read now; None when there is no such session."""
    async with ctx.pool.acquire() as conn:
        row = await sessions.get(conn, session_id)
        if row is None:
            return None
        rows = await events.for_session(conn, session_id)
        case = await cases.get(conn, session_id)
    everything = [events.to_json(r) for r in rows]
    flags = [e for e in everything if e["kind"] not in TIMELINE_KINDS]
    entries = [e for e in everything if e["kind"] in TIMELINE_KINDS]
    rows = [r for r in rows if r["kind"] not in TIMELINE_KINDS]
    keys = {r["id"]: r["snapshot_key"] for r in rows if r["snapshot_key"]}
    wanted = list(keys.items())[:MAX_SNAPSHOTS]
    gate = asyncio.Semaphore(SNAPSHOT_FETCHES)
    loaded = await asyncio.gather(*(_snapshot(ctx, gate, key) for _, key in wanted))
    snapshots = {event_id: data for (event_id, _), data in zip(wanted, loaded, strict=True) if data}
    notes = []
    if len(keys) > MAX_SNAPSHOTS:
        notes.append(f"Snapshots are shown for the first {MAX_SNAPSHOTS} flags only ({len(keys)} have one); "
                     "the review page has them all.")
    try:
        sensitivity = Sensitivity.parse(row["sensitivity"]).describe()
    except (ValueError, KeyError):
        sensitivity = "standard (stored value unreadable)"
    record = dict(row)
    return ReportData(session=record, sensitivity=sensitivity,
                      accommodations=describe_accommodations(record.get("accommodations")), flags=flags,
                      case_entries=entries,
                      snapshots=snapshots, case=case, generated_at=datetime.now(UTC), audience=audience,
                      notes=notes)


# --- rendering (on the report threads) -----------------------------------------------------------------------

def _fonts() -> tuple[str, str]:
    """DejaVu Sans where the system has it (names in any script print), else the PDF base font Helvetica."""
    regular, bold = _FONT_DIR / "DejaVuSans.ttf", _FONT_DIR / "DejaVuSans-Bold.ttf"
    if not (regular.is_file() and bold.is_file()):
        return "Helvetica", "Helvetica-Bold"
    if "ReportSans" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("ReportSans", str(regular)))
        pdfmetrics.registerFont(TTFont("ReportSans-Bold", str(bold)))
    return "ReportSans", "ReportSans-Bold"


def _clean(value: Any) -> str:
    """Text for a Paragraph: markup escaped (a name like "<b>x" prints as typed), control characters dropped."""
    return escape(_CONTROL.sub("", "" if value is None else str(value))).replace("\n", "<br/>")


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "open"
    minutes, rest = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{rest:05.2f}"


def _when(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(data: ReportData) -> bytes:
    """The PDF of `data`. CPU-bound: call it on the report threads (`build`)."""
    font, bold = _fonts()
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontName=font, fontSize=9.5, leading=12.5)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=colors.HexColor("#555b66"))
    h1 = ParagraphStyle("h1", parent=base["Heading1"], fontName=bold, fontSize=17, leading=21)
    h2 = ParagraphStyle("h2", parent=base["Heading2"], fontName=bold, fontSize=12.5, leading=16, spaceBefore=10)
    h3 = ParagraphStyle("h3", parent=body, fontName=bold, fontSize=10, leading=13, spaceBefore=6)
    session, case = data.session, data.case
    grid = TableStyle([("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 9),
                       ("VALIGN", (0, 0), (-1, -1), "TOP"), ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#d5d9e0")),
                       ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f2f4f7"))])

    def para(text: Any, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(_clean(text), style)

    story: list[Any] = [Paragraph("Evidence report", h1),
                        para(f"{session['candidate']} · {session['exam']}", h3),
                        para(f"Prepared for {data.audience} on {_when(data.generated_at)}.", small), Spacer(1, 4 * mm)]
    duration = session.get("duration_s") or 0.0
    facts = [("Candidate", session["candidate"]), ("Exam", session["exam"]), ("Session", session["id"]),
             ("Status", session["status"]), ("Started", _when(session.get("started_at"))),
             ("Ended", _when(session.get("ended_at"))), ("Duration", fmt_time(duration)),
             ("Sensitivity", data.sensitivity), ("Suspicion score", f"{float(session.get('score') or 0):.1f} / 100")]
    if data.accommodations is not None:
        facts.append(("Accommodations", "\n".join(data.accommodations)))
    table = Table([[para(k), para(v)] for k, v in facts], colWidths=[38 * mm, 132 * mm])
    table.setStyle(grid)
    story += [table, Spacer(1, 3 * mm),
              para("Flags are raised automatically by the monitoring software when a condition lasts long enough. "
                   "A flag is not a finding: each one needs review by a person, and only the decision below, with "
                   "its written rationale, concludes the review.", small)]

    story.append(Paragraph("Decision", h2))
    label = cases.LABELS[case.status]
    if case.decided:
        story += [para(f"Decision: {label}", h3), para(f"Rationale: {case.rationale}"),
                  para(f"Decided by {case.decided_by or 'a removed account'} on {_when(case.decided_at)}.", small)]
    else:
        story.append(para(f"No decision yet (case status: {label})."
                          + (f" Assigned to {case.assignee}." if case.assignee else "")))

    story.append(Paragraph(f"Flags ({len(data.flags)})", h2))
    if not data.flags:
        story.append(para("No flags were raised in this session."))
    for note in data.notes:
        story.append(para(note, small))
    for n, flag in enumerate(data.flags, 1):
        length = f" ({flag['duration_s']:.1f} s)" if flag["duration_s"] is not None else ""
        review = REVIEW_LABELS.get(flag["review_state"], flag["review_state"])
        if flag["reviewed_by"] and flag["review_state"] != "pending":
            review = f"{flag['review_state']} by {flag['reviewed_by']} on {_when(flag['reviewed_at'])}"
        block: list[Any] = [
            para(f"#{n} {flag['kind']} at {fmt_time(flag['start_s'])} – {fmt_time(flag['end_s'])}{length}", h3),
            para(f"Confidence {float(flag['confidence'] or 0):.2f} · source {flag['source']} · review: {review}")]
        if flag["review_note"]:
            block.append(para(f"Reviewer's note: {flag['review_note']}"))
        image = data.snapshots.get(flag["id"])
        if image is not None:
            try:
                width, height = ImageReader(io.BytesIO(image)).getSize()
                shown = 70 * mm
                block.append(Image(io.BytesIO(image), width=shown, height=shown * height / max(1, width)))
                block.append(para(f"Evidence snapshot of flag #{n} at {fmt_time(flag['start_s'])}.", small))
            except Exception:  # a stored file that is not an image: say so rather than fail the whole report
                block.append(para("Evidence snapshot unreadable.", small))
        elif flag["snapshot_url"]:
            block.append(para("Evidence snapshot not included (see the review page).", small))
        story.append(KeepTogether(block))

    if data.case_entries:
        story.append(Paragraph(f"Timeline: proctor messages, pauses and breaks ({len(data.case_entries)})", h2))
        story.append(para("Not flags. Monitoring was held (no flags raised) while a pause or a break was on.", small))
        rows = [[para("When", small), para("What", small)]]
        for entry in data.case_entries:
            rows.append([para(f"{fmt_time(entry['start_s'])} – {fmt_time(entry['end_s'])}", small),
                         para(timeline_text(entry), small)])
        table = Table(rows, colWidths=[38 * mm, 132 * mm], repeatRows=1)
        table.setStyle(grid)
        story.append(table)

    story.append(Paragraph("Case history", h2))
    if not case.history:
        story.append(para("No reviewer has worked on this case yet."))
    else:
        rows = [[para("When", small), para("Who", small), para("What", small), para("Note", small)]]
        for entry in case.history:
            action = "decision" if entry["action"].startswith("decide:") else entry["action"]
            what = f"{action}: {cases.LABELS[entry['from_status']]} → {cases.LABELS[entry['to_status']]}"
            if entry["assignee"]:
                what += f" (assigned to {entry['assignee']})"
            rows.append([para(_when(entry["at"]), small), para(entry["actor"], small), para(what, small),
                         para(entry["note"] or "", small)])
        history = Table(rows, colWidths=[32 * mm, 28 * mm, 50 * mm, 60 * mm], repeatRows=1)
        history.setStyle(grid)
        story.append(history)

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7.5)
        canvas.setFillColor(colors.HexColor("#555b66"))
        canvas.drawString(20 * mm, 10 * mm, f"Evidence report · session {session['id']}")
        canvas.drawRightString(190 * mm, 10 * mm, f"page {doc.page}")
        canvas.restoreState()

    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=20 * mm, rightMargin=20 * mm, topMargin=18 * mm,
                            bottomMargin=18 * mm, title=f"Evidence report: {session['candidate']}",
                            author="Proctor", subject=f"Session {session['id']}")
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


async def build(ctx: Context, session_id: str, audience: str) -> bytes | None:
    """The session's report PDF, rendered off the event loop; None when there is no such session."""
    async with _gate():
        data = await gather(ctx, session_id, audience)
        if data is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(_pool(), render, data)


# --- candidate links --------------------------------------------------------------------------------------

def _link_key(ctx: Context) -> bytes:
    # A key of its own, derived from SECRET_KEY: a report link is no join link, nor the other way round.
    return hmac.new(ctx.settings.signing_key(), _TOKEN_PURPOSE, hashlib.sha256).digest()


def issue_link(ctx: Context, session_id: str, *, now: float | None = None) -> tuple[str, float]:
    expires_at = (time.time() if now is None else now) + ctx.settings.report_link_ttl_s
    token = tokens.issue(_link_key(ctx), session_id, _TOKEN_NONCE, expires_at)
    return f"{ctx.settings.base_url}/report/{token}", expires_at


def verify_link(ctx: Context, token: str) -> str:
    """The session id a report token opens, or a 4xx (403 when links are off, 401 forged, 410 expired)."""
    if not ctx.settings.candidate_report_links:
        raise error(web.HTTPForbidden, "evidence report links are turned off on this server: ask the exam's staff")
    try:
        claims = tokens.verify(_link_key(ctx), ascii_only(token))
    except tokens.TokenError as exc:
        if "expired" in str(exc):
            raise error(web.HTTPGone, "this report link has expired: ask the exam's staff for a new one") from None
        raise error(web.HTTPUnauthorized, "invalid report link") from None
    if claims.nonce != _TOKEN_NONCE:
        raise error(web.HTTPUnauthorized, "invalid report link")
    return claims.session_id


def _pdf(body: bytes, session: str, *, inline: bool) -> web.Response:
    disposition = "inline" if inline else "attachment"
    return web.Response(body=body, content_type="application/pdf", headers={
        "Content-Disposition": f'{disposition}; filename="evidence-report-{session}.pdf"',
        "Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"})


# --- routes -------------------------------------------------------------------------------------------------

async def staff_report(request: web.Request) -> web.Response:
    """GET /api/sessions/{id}/report.pdf: the evidence report, for staff."""
    user = require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    body = await build(ctx, session_id, f"staff ({user.name})")
    if body is None:
        raise error(web.HTTPNotFound, "no such session")
    async with ctx.pool.acquire() as conn:
        await accounts.audit(conn, user.name, "report.download", f"session:{session_id}", {"bytes": len(body)})
    return _pdf(body, session_id, inline=False)


async def report_link(request: web.Request) -> web.Response:
    """POST /api/sessions/{id}/report-link: a signed, expiring link for the candidate (when links are allowed)."""
    user = require_user(request)
    ctx = request.app[CTX]
    session_id = path_session_id(request)
    if not ctx.settings.candidate_report_links:
        raise error(web.HTTPForbidden, "candidate report links are turned off (an admin sets CANDIDATE_REPORT_LINKS)")
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await sessions.get(conn, session_id)
        if row is None:
            raise error(web.HTTPNotFound, "no such session")
        if row["status"] not in cases.ENDED_STATUSES:
            raise error(web.HTTPConflict, "the exam has not ended yet")
        url, expires_at = issue_link(ctx, session_id)
        expires = datetime.fromtimestamp(int(expires_at), UTC).isoformat()
        await accounts.audit(conn, user.name, "report.link", f"session:{session_id}", {"expires_at": expires})
    return web.json_response({"url": url, "expires_at": expires}, headers={"Cache-Control": "no-store"})


async def candidate_report(request: web.Request) -> web.Response:
    """GET /report/{token}: the candidate's copy of the evidence report, through a link staff gave them."""
    ctx = request.app[CTX]
    session_id = verify_link(ctx, request.match_info["token"])
    body = await build(ctx, session_id, "the candidate")
    if body is None:  # deleted since (retention or by an admin)
        raise error(web.HTTPGone, "this session no longer exists")
    async with ctx.pool.acquire() as conn:
        await accounts.audit(conn, "candidate", "report.candidate_download", f"session:{session_id}",
                             {"bytes": len(body)})
    return _pdf(body, session_id, inline=True)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{session_id}/report.pdf", staff_report)
    app.router.add_post("/api/sessions/{session_id}/report-link", report_link)
    app.router.add_get("/report/{token}", candidate_report)
