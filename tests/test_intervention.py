"""Live intervention without a browser: what the REST call accepts and refuses (4xx with a reason, never a 500),
what happens when the candidate is not connected (a message is refused, a pause waits for them and holds their
next connection), one hold at a time, breaks only as the accommodations allow, and a page that can only
acknowledge what was sent to it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import numpy as np
import pytest

from media_server.node import MediaNode
from proctor.context import Context
from proctor.store import events, sessions
from tests.support.servers import RunningApp
from tests.support.waiting import wait_for


async def _call(method: str, url: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.request(method, url, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def _live_session(base: str, token: str, ctx: Context, **extra: Any) -> dict[str, Any]:
    status, body = await _call("POST", f"{base}/api/sessions", token,
                               json={"candidate": "Ida Offline", "exam": f"I {uuid.uuid4().hex[:6]}", **extra})
    assert status == 201, body
    async with ctx.pool.acquire() as conn:
        await sessions.mark_live(conn, body["id"], "no-such-node")
        await conn.execute("UPDATE sessions SET duration_s = 42.5 WHERE id = $1", body["id"])
    return body


@pytest.mark.parametrize(("body", "reason"), [
    ({}, "action must be one of"),
    ({"action": "shout"}, "action must be one of"),
    ({"action": "message"}, "text (or, to adjust, a preset) is required"),
    ({"action": "message", "text": "   "}, "text (or, to adjust, a preset) is required"),
    ({"action": "message", "text": "x" * 301}, "at most 300 characters"),
    ({"action": "message", "text": "a\u0000b"}, "NUL"),
    ({"action": "message", "text": 12}, "text must be a string"),
    ({"action": "message", "text": {"a": [1]}}, "text must be a string"),
    ({"action": "adjust", "preset": "<b>dance</b>"}, "preset must be one of"),
    ({"action": "pause", "preset": "light"}, "a preset goes with action \"adjust\" only"),
])
async def test_wrong_requests_are_a_400(web_server: RunningApp, proctor_token: str, ctx: Context, body: Any,
                                        reason: str) -> None:
    session = await _live_session(web_server.url, proctor_token, ctx)
    status, answer = await _call("POST", f"{web_server.url}/api/sessions/{session['id']}/intervene", proctor_token,
                                 json=body)
    assert status == 400 and reason in answer["error"], answer


async def test_who_may_intervene_and_when(web_server: RunningApp, proctor_token: str, ctx: Context) -> None:
    base = web_server.url
    session = await _live_session(base, proctor_token, ctx)
    url = f"{base}/api/sessions/{session['id']}/intervene"
    status, _ = await _call("POST", url, "wrong", json={"action": "pause"})
    assert status == 401
    token = session["join_url"].rsplit("/", 1)[1]  # the candidate's own link is no staff login
    status, _ = await _call("POST", url, token, json={"action": "pause"})
    assert status == 401
    status, _ = await _call("POST", f"{base}/api/sessions/{uuid.uuid4()}/intervene", proctor_token,
                            json={"action": "pause"})
    assert status == 404
    deep = '{"action": "message", "text": ' + "[" * 40 + "]" * 40 + "}"
    status, body = await _call("POST", url, proctor_token, data=deep)
    assert status == 400 and "nested too deeply" in body["error"]
    # Not live yet: nothing to intervene in.
    status, created = await _call("POST", f"{base}/api/sessions", proctor_token, json={"candidate": "A", "exam": "B"})
    status, body = await _call("POST", f"{base}/api/sessions/{created['id']}/intervene", proctor_token,
                               json={"action": "message", "text": "hello"})
    assert status == 409 and body["status"] == "created"


async def test_a_candidate_who_is_away_gets_the_pause_when_back(web_server: RunningApp, proctor_token: str,
                                                               ctx: Context) -> None:
    session = await _live_session(web_server.url, proctor_token, ctx)
    sid = session["id"]
    url = f"{web_server.url}/api/sessions/{sid}/intervene"
    # A message cannot wait: the proctor is told at once.
    status, body = await _call("POST", url, proctor_token, json={"action": "message", "text": "Are you there?"})
    assert status == 409 and body["reason"] == "not_connected"
    # A pause does: it is on the timeline where the candidate's media stopped.
    status, paused = await _call("POST", url, proctor_token, json={"action": "pause", "text": "Wait, please."})
    assert status == 200 and paused["state"] == "queued" and paused["media_time_s"] == 42.5, paused
    status, body = await _call("POST", url, proctor_token, json={"action": "pause"})
    assert status == 409 and "already paused" in body["error"]
    async with ctx.pool.acquire() as conn:
        hold = await events.open_hold(conn, sid)
        assert hold["id"] == paused["event_id"] and hold["kind"] == "exam_paused" and hold["start_s"] == 42.5
        assert hold["source"] == "proctor" and hold["details"]["text"] == "Wait, please."
        # One hold at a time, whoever inserts it (a unique index).
        with pytest.raises(Exception, match="events_one_open_hold"):
            await events.insert(conn, sid, "exam_break", 43.0, None, 1.0, {})
    # The candidate's page, reloaded meanwhile, learns it from its state.
    token = session["join_url"].rsplit("/", 1)[1]
    status, state = await _call("GET", f"{web_server.url}/api/sessions/{sid}/state", token)
    assert state["hold"] == {"hold": "paused", "id": paused["event_id"]}
    status, resumed = await _call("POST", url, proctor_token, json={"action": "resume"})
    assert status == 200 and resumed["event_id"] == paused["event_id"] and resumed["state"] == "queued"
    status, body = await _call("POST", url, proctor_token, json={"action": "resume"})
    assert status == 409 and "not paused" in body["error"]
    async with ctx.pool.acquire() as conn:
        assert await events.open_hold(conn, sid) is None
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE target = $1 ORDER BY id", f"session:{sid}")]
    assert actions[-2:] == ["session.intervene.pause", "session.intervene.resume"]


async def test_breaks_only_as_the_accommodations_allow(web_server: RunningApp, proctor_token: str,
                                                       ctx: Context) -> None:
    for accommodations, reason in ((None, "no breaks are allowed"),):
        session = await _live_session(web_server.url, proctor_token, ctx, accommodations=accommodations)
        token = session["join_url"].rsplit("/", 1)[1]
        url = f"{web_server.url}/api/sessions/{session['id']}/break"
        status, body = await _call("POST", url, token, json={"action": "start"})
        assert status == 409 and reason in body["error"] and body["reason"] == "no_breaks_left", body
        status, body = await _call("POST", url, token, json={"action": "nap"})
        assert status == 400
        status, body = await _call("POST", url, "bad", json={"action": "start"})
        assert status == 401
    session = await _live_session(web_server.url, proctor_token, ctx,
                                  accommodations={"breaks": {"count": 1, "minutes": 1}})
    token = session["join_url"].rsplit("/", 1)[1]
    status, body = await _call("POST", f"{web_server.url}/api/sessions/{session['id']}/break", token,
                               json={"action": "start"})
    assert status == 409 and body["reason"] == "not_connected", body
    status, state = await _call("GET", f"{web_server.url}/api/sessions/{session['id']}/state", token)
    assert state["breaks"] == {"allowed": 1, "minutes": 1.0, "taken": 0}


def _clip() -> Any:
    from bench.synthetic import encode_clip
    from tests.support.media import face_canvas

    face = face_canvas()
    rng = np.random.default_rng(3)
    frames = [np.clip(face.astype(np.int16) + rng.integers(-8, 9, face.shape), 0, 255).astype(np.uint8)
              for _ in range(60)]
    return encode_clip(frames, 30, 300_000, 30)


async def test_a_reconnect_during_a_pause_is_held_and_the_page_acks_only_its_own(
        web_server: RunningApp, media_node: MediaNode, proctor_token: str, ctx: Context) -> None:
    from bench.synthetic import connect_sender
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    session = await _live_session(web_server.url, proctor_token, ctx)
    sid = session["id"]
    token = session["join_url"].rsplit("/", 1)[1]
    url = f"{web_server.url}/api/sessions/{sid}/intervene"
    status, paused = await _call("POST", url, proctor_token, json={"action": "pause"})
    assert status == 200 and paused["state"] == "queued"
    clip = await asyncio.to_thread(_clip)
    async with aiohttp.ClientSession() as http:
        pc = await connect_sender(clip, f"{web_server.url}/api/sessions/{sid}/offer", token, http)
        try:
            async def connected() -> Any:
                stream = media_node.streams.get(sid)
                return stream if stream is not None and stream.stats.video_frames > 5 else None

            stream = await wait_for(connected, within=20)
            # Held from its first frame: the analysis raises nothing, and the page is told (replayed on open).
            assert stream.held and stream.hold == "exam_paused"
            analysis = media_node.plugins[1].streams[sid]
            assert analysis.held
            # A page acknowledges only what was sent to it: another event's id is dropped as a bad signal.
            bad = stream.stats.bad_signals
            stream._on_message(json.dumps({"type": "ack", "id": paused["event_id"] + 10_000, "stage": "ok"}), None)
            stream._on_message(json.dumps({"type": "ack", "id": paused["event_id"], "stage": "read"}), None)
            assert stream.stats.bad_signals == bad + 2
            stream._on_message(json.dumps({"type": "ack", "id": paused["event_id"], "stage": "shown"}), None)

            async def acknowledged() -> Any:
                async with ctx.pool.acquire() as conn:
                    details = await conn.fetchval("SELECT details FROM events WHERE id = $1", paused["event_id"])
                return details.get("shown_at")

            await wait_for(acknowledged, within=5)
            # Connected now: a resume goes through the node, at its exact media time.
            status, resumed = await _call("POST", url, proctor_token, json={"action": "resume"})
            assert status == 200 and resumed["state"] == "sent", resumed
            assert not stream.held and not analysis.held
            assert resumed["media_time_s"] >= 42.5
        finally:
            await pc.close()
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT start_s, end_s FROM events WHERE id = $1", paused["event_id"])
    assert row["start_s"] == 42.5 and row["end_s"] == pytest.approx(resumed["media_time_s"], abs=0.001)


async def test_ending_the_exam_ends_a_pause_still_on(web_server: RunningApp, proctor_token: str, ctx: Context) -> None:
    session = await _live_session(web_server.url, proctor_token, ctx)
    sid = session["id"]
    status, paused = await _call("POST", f"{web_server.url}/api/sessions/{sid}/intervene", proctor_token,
                                 json={"action": "pause"})
    assert status == 200
    status, ended = await _call("POST", f"{web_server.url}/api/sessions/{sid}/intervene", proctor_token,
                                json={"action": "end", "text": "Time is up for today."})
    assert status == 200 and ended["state"] == "queued"
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, end_reason FROM sessions WHERE id = $1", sid)
        pause = await conn.fetchrow("SELECT end_s, details FROM events WHERE id = $1", paused["event_id"])
        message = await conn.fetchrow("SELECT kind, details FROM events WHERE id = $1", ended["event_id"])
    assert row["status"] == "ended" and row["end_reason"] == "ended by proctor"
    assert pause["end_s"] == 42.5 and pause["details"]["ended"] == "ended by proctor"
    assert message["kind"] == "proctor_message" and message["details"]["text"] == "Time is up for today."
    status, body = await _call("POST", f"{web_server.url}/api/sessions/{sid}/intervene", proctor_token,
                               json={"action": "message", "text": "hello?"})
    assert status == 409 and body["status"] == "ended"
