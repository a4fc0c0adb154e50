"""The evidence report: a real PDF (reportlab) whose text, read back with pypdf, holds the candidate, the exam, every
flag with its review and the case decision with its rationale, and embeds the evidence snapshots; the candidate's
signed link works only while an admin allows it, and is refused when expired, tampered with or for another purpose."""

from __future__ import annotations

import io
import re
import time
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from pypdf import PdfReader

from core import tokens
from proctor.context import Context
from proctor.settings import Settings
from tests.support.servers import RunningApp, own_web_app
from web import report


def _jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (160, 120), color).save(out, "JPEG")
    return out.getvalue()


def _text(pdf: bytes) -> tuple[str, int]:
    """The PDF's text with whitespace runs made single spaces (lines wrap anywhere), and its image count."""
    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join(page.extract_text() or "" for page in reader.pages)
    images = sum(len(page.images) for page in reader.pages)
    return re.sub(r"\s+", " ", text), images


FLAGS = [("looking_away", 2.5, 4.0, (200, 120, 0)), ("phone", 66.2, 71.0, (20, 60, 200)),
         ("tab_hidden", 80.0, 80.5, None), ("no_face", 95.0, None, (10, 10, 10))]
RATIONALE = "A phone was held in view for 5 s during question 7 (flag #2); the other flags are explained."


@pytest.fixture(scope="module")
async def reviewed(ctx: Context) -> dict[str, Any]:
    """An ended session with four flags (three with snapshots), two of them reviewed, and a decided case."""
    candidate = f"Zoë <b>Ünal</b> & Co {uuid.uuid4().hex[:4]}"
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, "
            "duration_s, score) VALUES ($1, 'Chemistry Final', 'finalized', 'n', now() + interval '1 day', "
            "now() - interval '2 minutes', now(), 120, 33.3) RETURNING id", candidate))
        reviewer = f"rev-{uuid.uuid4().hex[:6]}"
        reviewer_id = await conn.fetchval(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, 'proctor', 'x') RETURNING id", reviewer)
        ids = []
        for kind, start, end, color in FLAGS:
            event_id = await conn.fetchval(
                "INSERT INTO events (session_id, kind, start_s, end_s, confidence) VALUES ($1, $2, $3, $4, 0.87) "
                "RETURNING id", sid, kind, start, end)
            if color is not None:
                key = f"sessions/{sid}/events/{event_id}.jpg"
                await ctx.storage.put_bytes(key, _jpeg(color), content_type="image/jpeg")
                await conn.execute("UPDATE events SET snapshot_key = $2 WHERE id = $1", event_id, key)
            ids.append(event_id)
        # A proctor's message and a pause are on the timeline too: listed apart, never counted as flags.
        message = await conn.fetchval(
            "INSERT INTO events (session_id, kind, start_s, end_s, confidence, source, details) "
            "VALUES ($1, 'proctor_message', 20.0, 20.0, 1.0, 'proctor', $2) RETURNING id", sid,
            {"action": "adjust", "text": "Move into the light, please", "by": reviewer, "ok_at": "2026-12-02T01:00Z"})
        await conn.execute(
            "INSERT INTO events (session_id, kind, start_s, end_s, confidence, source, details) "
            "VALUES ($1, 'exam_paused', 30.0, 45.0, 1.0, 'proctor', $2)", sid, {"by": reviewer})
        await conn.execute("UPDATE events SET review_state = 'confirmed', review_note = 'Phone in the left hand', "
                           "reviewed_by = $2, reviewed_at = now() WHERE id = $1", ids[1], reviewer_id)
        await conn.execute("UPDATE events SET review_state = 'dismissed', review_note = 'Glare on the window', "
                           "reviewed_by = $2, reviewed_at = now() WHERE id = $1", ids[0], reviewer_id)
    return {"id": sid, "candidate": candidate, "events": ids, "reviewer": reviewer, "message": message}


async def _decide(base: str, token: str, sid: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/sessions/{sid}/case", json={
                "action": "decide", "decision": "concern_raised", "rationale": RATIONALE}) as response:
            assert response.status == 200, await response.text()


async def _get(url: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(url, allow_redirects=False) as response:
            return response.status, await response.read(), dict(response.headers)


async def test_staff_report_holds_every_flag_and_the_decision(web_server: RunningApp, ctx: Context,
                                                              proctor_token: str, reviewed: dict[str, Any]) -> None:
    base, sid = web_server.url, reviewed["id"]
    # Before the decision the report says so; flags nobody reviewed "need review".
    status, pdf, headers = await _get(f"{base}/api/sessions/{sid}/report.pdf", proctor_token)
    assert status == 200 and headers["Content-Type"] == "application/pdf" and pdf.startswith(b"%PDF-")
    assert "attachment" in headers["Content-Disposition"]
    text, _ = _text(pdf)
    assert "No decision yet (case status: Unreviewed)" in text

    await _decide(base, proctor_token, sid)
    status, pdf, headers = await _get(f"{base}/api/sessions/{sid}/report.pdf", proctor_token)
    assert status == 200
    text, images = _text(pdf)
    print(text[:2000])
    assert reviewed["candidate"] in text  # markup in a name prints as typed, in any script
    assert "Chemistry Final" in text and sid in text
    assert f"Flags ({len(FLAGS)})" in text
    for n, (kind, start, end, _) in enumerate(FLAGS, 1):
        assert f"#{n} {kind} at {report.fmt_time(start)} – {report.fmt_time(end)}" in text, kind
    assert "review: confirmed by " + reviewed["reviewer"] in text
    assert "Reviewer's note: Phone in the left hand" in text and "Reviewer's note: Glare on the window" in text
    assert text.count("review: needs review") == 2  # tab_hidden and no_face
    assert "Decision: Concern raised" in text and f"Rationale: {RATIONALE}" in text
    assert "Sensitivity" in text and "Suspicion score 33.3 / 100" in text
    assert "cheat" not in text.lower()
    assert images == 3  # every snapshot, embedded
    # The proctor's message and the pause: in their own section, as what happened, not as flags.
    assert "Timeline: proctor messages, pauses and breaks (2)" in text
    assert (f"Proctor adjust by {reviewed['reviewer']}: “Move into the light, please” (acknowledged by the "
            "candidate)") in text
    assert f"Exam paused by {reviewed['reviewer']}" in text and "#5" not in text
    # ...and nobody can confirm or dismiss one.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {proctor_token}"}) as http:
        async with http.post(f"{base}/api/sessions/{sid}/events/{reviewed['message']}/review",
                             json={"state": "confirmed"}) as response:
            assert response.status == 404 and "not reviewed" in (await response.json())["error"]
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'report.download' "
                                   "AND target = $1", f"session:{sid}") == 2

    # Staff only; unknown and malformed sessions are 404s.
    status, _, _ = await _get(f"{base}/api/sessions/{sid}/report.pdf")
    assert status == 401
    for bad in (str(uuid.uuid4()), "nope"):
        status, _, _ = await _get(f"{base}/api/sessions/{bad}/report.pdf", proctor_token)
        assert status == 404


async def test_candidate_link(web_server: RunningApp, settings: Settings, ctx: Context, proctor_token: str,
                              reviewed: dict[str, Any]) -> None:
    sid = reviewed["id"]
    # Off by default: no link is made, and a well-signed one is refused.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {proctor_token}"}) as http:
        async with http.post(f"{web_server.url}/api/sessions/{sid}/report-link") as response:
            assert response.status == 403 and "turned off" in (await response.json())["error"]
    allowed = Context(replace(settings, candidate_report_links=True, public_base_url=web_server.url), ctx.pool,
                      ctx.redis, ctx.storage)
    signed, _ = report.issue_link(allowed, sid)
    status, body, _ = await _get(signed)
    assert status == 403 and b"turned off" in body

    async with own_web_app(settings, ctx, candidate_report_links=True) as base:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/sessions/{sid}/report-link") as response:
                assert response.status == 401  # staff give the link out, nobody else
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {proctor_token}"}) as http:
            async with http.post(f"{base}/api/sessions/{sid}/report-link") as response:
                assert response.status == 200
                link = await response.json()
            live = str(await ctx.pool.fetchval(
                "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at) "
                "VALUES ('Still Writing', 'x', 'live', 'n', now()) RETURNING id"))
            async with http.post(f"{base}/api/sessions/{live}/report-link") as response:
                assert response.status == 409
        assert link["url"].startswith(f"{base}/report/")
        left = time.time() + settings.report_link_ttl_s - _epoch(link["expires_at"])
        assert abs(left) < 120

        # The candidate opens it without any login: the same evidence and decision.
        status, pdf, headers = await _get(link["url"])
        assert status == 200 and headers["Content-Type"] == "application/pdf"
        assert headers["Cache-Control"] == "private, no-store"
        text, images = _text(pdf)
        assert "Prepared for the candidate" in text and f"Rationale: {RATIONALE}" in text and images == 3
        for kind, *_ in FLAGS:
            assert kind in text

        token = link["url"].rsplit("/", 1)[1]
        payload, signature = token.split(".")
        tampered = f"{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
        other = tokens.issue(settings.signing_key(), str(uuid.uuid4()), "report", time.time() + 600)
        forged_session = f"{other.split('.')[0]}.{signature}"  # another session's payload under this signature
        join_token = tokens.issue(settings.signing_key(), sid, "n", time.time() + 600)  # a join link's token
        for bad in (tampered, forged_session, join_token, "garbage", "a.b", "%00", "x" * 600):
            status, body, _ = await _get(f"{base}/report/{bad}")
            assert status in (401, 404) and b"%PDF" not in body, bad
        expired, _ = report.issue_link(allowed, sid, now=time.time() - settings.report_link_ttl_s - 60)
        status, body, _ = await _get(expired.replace(web_server.url, base))
        assert status == 410 and b"expired" in body

    # Turned off again (the web_server app): the link given out before stops working.
    status, body, _ = await _get(link["url"].replace(base, web_server.url))
    assert status == 403
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'report.candidate_download' "
                                   "AND target = $1", f"session:{sid}") == 1
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'report.link' "
                                   "AND target = $1", f"session:{sid}") == 1


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_accommodations_are_described_defensively() -> None:
    assert report.describe_accommodations(None) is None  # no such column: no row in the report
    lines = report.describe_accommodations({"bogus": True, "detectors": "not a list"})
    assert lines and all(isinstance(line, str) for line in lines)  # unreadable: shown as stored, never a crash


async def test_report_renders_hostile_text(ctx: Context) -> None:
    """Names and notes with markup, control characters and long unbroken words still make a readable PDF."""
    data = report.ReportData(
        session={"id": str(uuid.uuid4()), "candidate": "<para>\x01\x1f</font>&amp;", "exam": "x" * 400,
                 "status": "ended", "duration_s": None, "score": None},
        sensitivity="standard", accommodations=["Breaks allowed: 2 × 10 min"], flags=[], snapshots={},
        case=report.cases.Case("s"), generated_at=report.datetime.now(report.UTC), audience="staff (t)")
    text, _ = _text(report.render(data))
    assert "<para></font>&amp;" in text and "No flags were raised" in text and "Breaks allowed" in text
