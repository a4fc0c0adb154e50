"""Cases over REST on the real stack: unreviewed -> in review -> cleared / concern raised with a required rationale,
reopening (admins), the history and the audit log, refusals with a reason, the reviewer queue (highest score first)
and the sessions list filtered and sorted by case status."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from proctor import accounts
from proctor.context import Context
from tests.support.accounts import logged_in, make_user
from tests.support.servers import RunningApp


async def _session(ctx: Context, candidate: str, status: str = "ended", score: float = 0.0) -> str:
    async with ctx.pool.acquire() as conn:
        return str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, started_at, ended_at, score) "
            "VALUES ($1, 'Cases 101', $2, 'n', now(), now() - interval '1 hour', "
            "CASE WHEN $2 IN ('created', 'live') THEN NULL ELSE now() END, $3) RETURNING id",
            candidate, status, score))


async def _name(ctx: Context, token: str) -> str:
    """The account an API token belongs to."""
    async with ctx.pool.acquire() as conn:
        user = await accounts.user_for_token(conn, token)
    assert user is not None
    return user.name


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            kwargs: dict[str, Any] = {"json": body} if raw is None else {
                "data": raw, "headers": {"Content-Type": "application/json"}}
            async with http.request(method, f"{self.base}{path}", **kwargs) as response:
                return response.status, await response.json(content_type=None)


async def test_case_lifecycle(web_server: RunningApp, ctx: Context, proctor_token: str, admin_token: str) -> None:
    proctor, admin = Api(web_server.url, proctor_token), Api(web_server.url, admin_token)
    proctor_name, admin_name = await _name(ctx, proctor_token), await _name(ctx, admin_token)
    sid = await _session(ctx, "Carla Case", score=42.0)
    url = f"/api/sessions/{sid}/case"

    status, case = await proctor.call("GET", url)
    assert status == 200 and case["status"] == "unreviewed" and case["label"] == "Unreviewed"
    assert case["history"] == [] and case["assignee"] is None and case["version"] == 0

    # Refused with a reason, never a 500: bad actions, missing or thin rationale, bad types, NUL, stale versions.
    for body, want in (({"action": "judge"}, "action must be one of"),
                       ({"action": "decide", "decision": "guilty", "rationale": "x" * 20}, "decision must be"),
                       ({"action": "decide", "decision": "cleared"}, "rationale is required"),
                       ({"action": "decide", "decision": "cleared", "rationale": "   "}, "rationale is required"),
                       ({"action": "decide", "decision": "cleared", "rationale": "ok"}, "at least 10"),
                       ({"action": "decide", "decision": "cleared", "rationale": 5}, "must be a string"),
                       ({"action": "decide", "decision": "cleared", "rationale": "y" * 5001}, "at most 5000"),
                       ({"action": "assign", "assignee": 7}, "assignee must be"),
                       ({"action": "start", "version": "1"}, "version must be"),
                       ({"action": "start", "version": 2**40}, "version must be"),
                       ({"action": "assign", "assignee": f"nobody-{uuid.uuid4().hex[:6]}"}, "no active account")):
        status, answer = await proctor.call("POST", url, body)
        assert status == 400 and want in answer["error"], (body, answer)
    status, answer = await proctor.call("POST", url, raw=b'{"action": "comment", "note": "a\\u0000b is odd"}')
    assert status == 400 and "NUL" in answer["error"]
    status, answer = await proctor.call("POST", url, {"action": "start", "version": 5})
    assert status == 409 and "changed since" in answer["error"] and answer["case"]["version"] == 0

    # Start: in review, assigned to whoever started it.
    status, case = await proctor.call("POST", url, {"action": "start", "version": 0})
    assert status == 200 and case["status"] == "in_review" and case["assignee"] == proctor_name
    # Taking it from everyone puts it back in the queue; handing it to the admin starts it again.
    status, case = await proctor.call("POST", url, {"action": "assign", "assignee": None})
    assert status == 200 and case["assignee"] is None and case["status"] == "unreviewed"
    status, case = await proctor.call("POST", url, {"action": "assign", "assignee": admin_name})
    assert status == 200 and case["assignee"] == admin_name and case["status"] == "in_review"
    rationale = "Phone visible for 30 s at 12:04 while answering question 7; <b>not</b> explained."
    status, case = await admin.call("POST", url, {"action": "decide", "decision": "concern_raised",
                                                  "rationale": f"  {rationale}\n"})
    assert status == 200 and case["status"] == "concern_raised" and case["label"] == "Concern raised"
    assert case["rationale"] == rationale and case["decided_by"] == admin_name and case["decided_at"]
    # A decided case takes no second decision, and only an admin reopens it, with a reason.
    status, answer = await proctor.call("POST", url, {"action": "decide", "decision": "cleared",
                                                      "rationale": "Changed my mind entirely."})
    assert status == 409 and "already decided" in answer["error"]
    status, answer = await proctor.call("POST", url, {"action": "reopen", "reason": "The candidate appealed."})
    assert status == 403 and "admin" in answer["error"]
    status, answer = await admin.call("POST", url, {"action": "reopen"})
    assert status == 400 and "reason is required" in answer["error"]
    status, case = await admin.call("POST", url, {"action": "reopen", "reason": "The candidate appealed with a note."})
    assert status == 200 and case["status"] == "in_review" and case["rationale"] is None
    assert case["decided_by"] is None and case["assignee"] == admin_name
    status, case = await admin.call("POST", url, {"action": "decide", "decision": "cleared",
                                                  "rationale": "The phone was a calculator allowed by the exam."})
    assert status == 200 and case["status"] == "cleared"

    # The full history, in order, with who did what and why.
    assert [(h["actor"], h["action"], h["from_status"], h["to_status"]) for h in case["history"]] == [
        (proctor_name, "start", "unreviewed", "in_review"),
        (proctor_name, "assign", "in_review", "unreviewed"),
        (proctor_name, "assign", "unreviewed", "in_review"),
        (admin_name, "decide:concern_raised", "in_review", "concern_raised"),
        (admin_name, "reopen", "concern_raised", "in_review"),
        (admin_name, "decide:cleared", "in_review", "cleared")]
    assert case["history"][3]["note"] == rationale
    assert case["history"][4]["note"] == "The candidate appealed with a note."
    status, fetched = await proctor.call("GET", url)
    assert fetched == case
    async with ctx.pool.acquire() as conn:
        audit = await conn.fetch("SELECT actor, action, details FROM audit_log WHERE target = $1 "
                                 "AND action LIKE 'case.%' ORDER BY id", f"session:{sid}")
        assert [(a["actor"], a["action"]) for a in audit] == [
            (proctor_name, "case.start"), (proctor_name, "case.assign"), (proctor_name, "case.assign"),
            (admin_name, "case.decide"), (admin_name, "case.reopen"), (admin_name, "case.decide")]
        assert audit[3]["details"]["text"] == rationale and audit[3]["details"]["to"] == "concern_raised"
        # The schema itself refuses a decision without a rationale.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE cases SET rationale = ' ' WHERE session_id = $1", sid)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE cases SET status = 'guilty' WHERE session_id = $1", sid)


async def test_case_refusals(web_server: RunningApp, ctx: Context, proctor_token: str) -> None:
    api = Api(web_server.url, proctor_token)
    live = await _session(ctx, "Otto Open", status="live")
    status, case = await api.call("GET", f"/api/sessions/{live}/case")
    assert status == 200 and case["status"] == "unreviewed"
    status, answer = await api.call("POST", f"/api/sessions/{live}/case", {"action": "start"})
    assert status == 409 and "not ended" in answer["error"]
    for path in (f"/api/sessions/{uuid.uuid4()}/case", "/api/sessions/not-a-uuid/case"):
        status, answer = await api.call("GET", path)
        assert status == 404
        status, answer = await api.call("POST", path, {"action": "start"})
        assert status == 404
    ended = await _session(ctx, "Nora Noauth")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web_server.url}/api/sessions/{ended}/case") as response:
            assert response.status == 401
        async with http.post(f"{web_server.url}/api/sessions/{ended}/case", json={"action": "start"}) as response:
            assert response.status == 401
        async with http.get(f"{web_server.url}/api/cases/queue") as response:
            assert response.status == 401
    status, answer = await api.call("POST", f"/api/sessions/{ended}/case", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in answer["error"]


def _rows(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr data-session-id="([0-9a-f-]+)"[^>]*?data-case="([a-z_]*)"', html, re.S)


async def test_queue_and_sessions_list(web_server: RunningApp, ctx: Context, proctor_token: str) -> None:
    base = web_server.url
    api = Api(base, proctor_token)
    tag = uuid.uuid4().hex[:6]
    low = await _session(ctx, f"Queue Low {tag}", score=5.0)
    high = await _session(ctx, f"Queue High {tag}", score=95.5)
    mid = await _session(ctx, f"Queue Mid {tag}", score=40.0, status="finalized")
    still_live = await _session(ctx, f"Queue Live {tag}", status="live", score=99.0)
    mine = {low, high, mid, still_live}

    # One flag on `low`, and a proctor's message and pause, which are timeline entries, not flags.
    async with ctx.pool.acquire() as conn:
        await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s, confidence) "
                           "VALUES ($1, 'phone', 5, 9, 0.9)", low)
        for kind in ("proctor_message", "exam_paused"):
            await conn.execute("INSERT INTO events (session_id, kind, start_s, end_s, confidence, source) "
                               "VALUES ($1, $2, 10, 12, 1.0, 'proctor')", low, kind)
    status, queue = await api.call("GET", "/api/cases/queue")
    assert status == 200
    counted = {row["id"]: (row["flags"], row["pending"]) for row in queue if row["id"] in mine}
    assert counted[low] == (1, 1) and counted[high] == (0, 0)
    ours = [row["id"] for row in queue if row["id"] in mine]
    # Highest score first; an exam still running is not waiting for review.
    assert ours == [high, mid, low]
    scores = [row["score"] for row in queue]
    assert scores == sorted(scores, reverse=True)

    status, _ = await api.call("POST", f"/api/sessions/{high}/case", {"action": "start"})
    assert status == 200
    status, _ = await api.call("POST", f"/api/sessions/{mid}/case", {
        "action": "decide", "decision": "cleared", "rationale": "Flags were the lighting, checked on video."})
    assert status == 200
    status, queue = await api.call("GET", "/api/cases/queue")
    assert [row["id"] for row in queue if row["id"] in mine] == [low]

    name = await make_user(ctx, "proctor")
    http = await logged_in(base, name)
    try:
        async with http.get(f"{base}/?q={tag}") as response:
            html = await response.text()
        rows = dict(_rows(html))
        assert rows == {low: "unreviewed", high: "in_review", mid: "cleared", still_live: ""}
        assert 'href="/queue"' in html and "Review queue" in html
        assert "cheat" not in html.lower()
        for case, want in (("unreviewed", {low}), ("in_review", {high}), ("cleared", {mid}),
                           ("concern_raised", set())):
            async with http.get(f"{base}/?q={tag}&case={case}") as response:
                assert {sid for sid, _ in _rows(await response.text())} == want, case
        async with http.get(f"{base}/?q={tag}&case=bogus") as response:  # an unknown filter shows everything
            assert response.status == 200 and len(_rows(await response.text())) == 4
        async with http.get(f"{base}/?q={tag}&sort=case") as response:
            order = [sid for sid, _ in _rows(await response.text())]
        assert order == [low, high, mid, still_live]  # unreviewed, in review, cleared; open exams last
        async with http.get(f"{base}/queue") as response:
            assert response.status == 200
            page = await response.text()
        assert f'data-session-id="{low}"' in page and f'data-session-id="{high}"' not in page
        assert "cheat" not in page.lower()
    finally:
        await http.close()
    # The assignee sees the case under "In review by you".
    proctor_name = await _name(ctx, proctor_token)
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT a.name FROM cases c JOIN users a ON a.id = c.assignee_id "
                                   "WHERE c.session_id = $1", high) == proctor_name


async def test_two_reviewers_at_once(web_server: RunningApp, ctx: Context, proctor_token: str,
                                     admin_token: str) -> None:
    """Two decisions sent at the same moment: the case row is locked, one wins, the other is told (409)."""
    sid = await _session(ctx, "Twin Decision")
    url = f"/api/sessions/{sid}/case"
    first, second = Api(web_server.url, proctor_token), Api(web_server.url, admin_token)
    status, case = await first.call("POST", url, {"action": "comment", "note": "Looking at the phone flag now."})
    assert status == 200 and case["status"] == "unreviewed" and case["history"][0]["note"].startswith("Looking")
    for version in (case["version"], None):
        if version is None:  # second round: reopen, then both decide without a version
            status, case = await second.call("POST", url, {"action": "reopen", "reason": "Second round of checks."})
            assert status == 200
        answers = await asyncio.gather(*(api.call("POST", url, {
            "action": "decide", "decision": decision, "rationale": f"Decided {decision} after watching it all.",
            **({"version": version} if version is not None else {})})
            for api, decision in ((first, "cleared"), (second, "concern_raised"))))
        assert sorted(status for status, _ in answers) == [200, 409], answers
        winner = next(body for status, body in answers if status == 200)
        status, case = await first.call("GET", url)
        assert case["status"] == winner["status"] and case["rationale"] == winner["rationale"]
