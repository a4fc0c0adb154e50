"""Accommodations: the domain (parse, round trip, describe, hostile input), the rules they relax (never stricter),
the REST paths (at creation, by staff before the exam, 409 once it is live), and the real analysis path: a detector
switched off raises nothing, a relaxed one waits longer and weighs less, a break or pause raises no flag."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from analyzers.base import Signal, rules_config
from core.accommodations import DETECTOR_KINDS, MAX_NOTE, NONE, Accommodations
from core.events import AUDIO_KINDS, BROWSER_KINDS, FRAME_KINDS
from core.rules import RulesConfig
from proctor.context import Context
from proctor.store import sessions
from tests.support.servers import RunningApp
from tests.support.streams import FakeStream
from tests.support.waiting import wait_for

WANTED = {"detectors": {"looking_away": "off", "no_face": {"min_duration_s": 10, "weight": 1}},
          "breaks": {"count": 2, "minutes": 5}, "note": "uses a screen reader"}


# --- the domain -------------------------------------------------------------------------------------------------
def test_parse_round_trip_and_describe() -> None:
    acc = Accommodations.parse(WANTED)
    assert Accommodations.parse(acc.to_json()) == acc
    assert acc.to_json() == {"detectors": {"looking_away": "off", "no_face": {"min_duration_s": 10.0, "weight": 1.0}},
                             "breaks": {"count": 2, "minutes": 5.0}, "note": "uses a screen reader"}
    assert acc.off_kinds == {"looking_away"}
    assert acc.min_durations() == {"no_face": 10.0}
    assert acc.weights() == {"looking_away": 0.0, "no_face": 1.0}
    assert acc.describe() == ("looking_away off; no_face after 10 s at least, weight 1 at most; "
                              "2 breaks of up to 5 min; note: uses a screen reader")
    assert Accommodations.parse(None) == NONE == Accommodations.parse({})
    assert NONE.describe() == "none" and NONE.empty and NONE.to_json() == {}
    assert Accommodations.parse({"breaks": {"count": 0, "minutes": 0}}) == NONE


def test_the_kinds_are_core_events() -> None:
    assert set(DETECTOR_KINDS) == set(FRAME_KINDS) | set(BROWSER_KINDS) | set(AUDIO_KINDS)


@pytest.mark.parametrize(("value", "reason"), [
    ("looking_away", "expected an object"),
    ({"detectors": {"sneezing": "off"}}, "unknown kind 'sneezing'"),
    ({"detectors": {"<script>" * 50: "off"}}, "unknown kind '<script><script>"),
    ({"detectors": {"no_face": "on"}}, "detectors.no_face: expected \"off\" or an object"),
    ({"detectors": {"no_face": {}}}, "give \"min_duration_s\""),
    ({"detectors": {"no_face": {"min_duration_s": -1}}}, "between 0 and 600, got -1"),
    ({"detectors": {"no_face": {"min_duration_s": 10 ** 400}}}, "integer beyond any float"),
    ({"detectors": {"no_face": {"min_duration_s": float("inf")}}}, "finite"),
    ({"detectors": {"no_face": {"min_duration_s": True}}}, "expected a number"),
    ({"detectors": {"no_face": {"weight": 1e9}}}, "between 0 and 100"),
    ({"detectors": {"no_face": {"stricter": 1}}}, "unknown field 'stricter'"),
    ({"detectors": ["no_face"]}, "detectors: expected an object"),
    ({"breaks": {"count": 2}}, "both \"count\" and \"minutes\""),
    ({"breaks": {"count": 1.5, "minutes": 5}}, "whole number"),
    ({"breaks": {"count": 11, "minutes": 5}}, "between 0 and 10"),
    ({"breaks": {"count": 1, "minutes": 0}}, "breaks.minutes: must be between 1 and 60"),
    ({"breaks": {"count": 1, "minutes": 1e308 * 10}}, "finite"),
    ({"note": "a\x00b"}, "NUL"),
    ({"note": "\ud800"}, "surrogate"),
    ({"note": "x" * (MAX_NOTE + 1)}, f"at most {MAX_NOTE}"),
    ({"note": {"nested": {"deeper": 1}}}, "note: expected text"),
    ({"extra": 1}, "unknown field 'extra'"),
])
def test_wrong_values_say_what_and_where(value: Any, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        Accommodations.parse(value)
    assert reason in str(refused.value)
    assert len(str(refused.value)) < 400  # a hostile key never comes back whole


def test_relaxing_never_makes_a_kind_stricter() -> None:
    base = RulesConfig.default()
    relaxed = base.relaxed({"no_face": 10.0, "looking_away": 1.0, "unknown_kind": 3.0})
    assert relaxed.rules["no_face"].start_after_s == 10.0
    assert relaxed.rules["looking_away"].start_after_s == base.rules["looking_away"].start_after_s  # 4 s stays
    assert relaxed.rules["no_face"].end_after_s == base.rules["no_face"].end_after_s
    assert set(relaxed.rules) == set(base.rules)


# --- REST -------------------------------------------------------------------------------------------------------
async def _call(method: str, url: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.request(method, url, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def _create(base: str, token: str, **extra: Any) -> dict[str, Any]:
    status, body = await _call("POST", f"{base}/api/sessions", token,
                               json={"candidate": "Ada", "exam": f"Acc {uuid.uuid4().hex[:6]}", **extra})
    assert status == 201, body
    return body


async def test_set_at_creation_and_served(web_server: RunningApp, admin_token: str, ctx: Context) -> None:
    created = await _create(web_server.url, admin_token, accommodations=WANTED)
    assert created["accommodations"] == Accommodations.parse(WANTED).to_json()
    status, detail = await _call("GET", f"{web_server.url}/api/sessions/{created['id']}", admin_token)
    assert status == 200 and detail["accommodations"] == created["accommodations"]
    plain = await _create(web_server.url, admin_token)
    assert plain["accommodations"] == {}
    async with ctx.pool.acquire() as conn:
        audited = await conn.fetchval("SELECT details FROM audit_log WHERE action = 'session.create' AND target = $1",
                                      f"session:{created['id']}")
    assert audited["accommodations"] == created["accommodations"]


@pytest.mark.parametrize(("accommodations", "reason"), [
    ({"detectors": {"sneezing": "off"}}, "accommodations: detectors: unknown kind"),
    ({"note": "\u0000"}, "NUL"),
    ({"detectors": {"no_face": {"min_duration_s": 1e300}}}, "between 0 and 600"),
    ("off", "accommodations: expected an object"),
])
async def test_creation_refuses_wrong_values(web_server: RunningApp, admin_token: str, ctx: Context,
                                             accommodations: Any, reason: str) -> None:
    exam = f"Refused {uuid.uuid4().hex}"
    status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token,
                               json={"candidate": "Ada", "exam": exam, "accommodations": accommodations})
    assert status == 400 and reason in body["error"], body
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE exam = $1", exam) == 0


async def test_hostile_bodies_are_a_400(web_server: RunningApp, admin_token: str) -> None:
    deep = '{"candidate": "Ada", "exam": "M", "accommodations": ' + '{"note": ' * 40 + '"x"' + "}" * 41
    status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token, data=deep)
    assert status == 400 and "nested too deeply" in body["error"], body
    for number in ("NaN", "Infinity", "1e400", "-1e400"):
        raw = ('{"candidate": "Ada", "exam": "M", "accommodations": {"detectors": {"phone": {"weight": NUMBER}}}}'
               .replace("NUMBER", number))
        status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token, data=raw)
        assert status == 400 and "detectors.phone.weight" in body["error"], (number, body)
    created = await _create(web_server.url, admin_token)
    status, body = await _call("PUT", f"{web_server.url}/api/sessions/{created['id']}/accommodations", admin_token,
                               data='{"detectors": {"no_face\\u0000": "off"}}')
    assert status == 400 and "NUL" in body["error"], body


async def test_staff_change_them_before_the_exam_only(web_server: RunningApp, admin_token: str, proctor_token: str,
                                                      ctx: Context) -> None:
    created = await _create(web_server.url, admin_token)
    url = f"{web_server.url}/api/sessions/{created['id']}/accommodations"
    status, body = await _call("PUT", url, proctor_token, json=WANTED)
    assert status == 200 and body["accommodations"] == Accommodations.parse(WANTED).to_json(), body
    status, body = await _call("PUT", url, proctor_token, json={"accommodations": {"breaks": {"count": 1,
                                                                                             "minutes": 3}}})
    assert status == 200 and body["accommodations"] == {"breaks": {"count": 1, "minutes": 3.0}}
    status, _ = await _call("PUT", url, "not-a-token", json=WANTED)
    assert status == 401
    async with ctx.pool.acquire() as conn:
        audited = await conn.fetch("SELECT details FROM audit_log WHERE action = 'session.accommodations' AND "
                                   "target = $1 ORDER BY id", f"session:{created['id']}")
        assert [a["details"]["to"] for a in audited] == [Accommodations.parse(WANTED).to_json(),
                                                         {"breaks": {"count": 1, "minutes": 3.0}}]
        await sessions.mark_live(conn, created["id"], "test-node")
    status, body = await _call("PUT", url, admin_token, json=WANTED)
    assert status == 409 and "before the exam starts" in body["error"] and body["status"] == "live", body
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT accommodations FROM sessions WHERE id = $1", created["id"]) == \
            {"breaks": {"count": 1, "minutes": 3.0}}
    status, body = await _call("PUT", f"{web_server.url}/api/sessions/{uuid.uuid4()}/accommodations", admin_token,
                               json=WANTED)
    assert status == 404


async def test_the_score_takes_the_lower_weight(web_server: RunningApp, admin_token: str, ctx: Context) -> None:
    from proctor.store import events

    weights = dict(ctx.settings.weights)
    scores = []
    for accommodations in (None, {"detectors": {"no_face": {"weight": 1}}}, {"detectors": {"no_face": "off"}},
                           {"detectors": {"no_face": {"weight": 100}}}):
        created = await _create(web_server.url, admin_token, accommodations=accommodations)
        async with ctx.pool.acquire() as conn:
            await events.insert(conn, created["id"], "no_face", 0.0, 20.0, 0.9, {})
            # People's entries on the timeline are never scored.
            await events.insert(conn, created["id"], "exam_paused", 20.0, 200.0, 1.0, {})
            scores.append(await sessions.refresh_score(conn, created["id"], weights))
    assert scores == [weights["no_face"] * 2, 2.0, 0.0, weights["no_face"] * 2]


# --- applied by a stream's analysis ---------------------------------------------------------------------------------
async def _analysed(ctx: Context, session_id: str) -> tuple[Any, Any, FakeStream]:
    from analyzers.live import Analysis

    settings = replace(ctx.settings, analyzers_enabled=("gaze",))
    analysis = Analysis(Context(settings, ctx.pool, ctx.redis, ctx.storage))
    stream = FakeStream(session_id)
    analysis.attach(stream)
    for _ in range(200):
        if stream.sampler.subscribers:
            break
        await asyncio.sleep(0.05)
    assert stream.sampler.subscribers, "the analysis never subscribed its detectors"
    return analysis, analysis.streams[session_id], stream


def _feed(streamed: Any, kind: str, start: float, end: float, step: float = 0.25, clear_s: float = 5.0) -> None:
    """What the detectors would report: `kind` active from start to end, then clear for `clear_s`."""
    from analyzers.live import _Frame

    t = start
    while t < end + clear_s:
        streamed.observe(Signal(kind, start <= t < end, 0.9), _Frame(t, None, time.time()), None)
        t += step


async def _events(ctx: Context, session_id: str) -> list[Any]:
    async with ctx.pool.acquire() as conn:
        return list(await conn.fetch("SELECT kind, start_s, end_s FROM events WHERE session_id = $1 "
                                     "ORDER BY start_s, kind", session_id))


async def test_an_accommodation_suppresses_and_relaxes_detectors(web_server: RunningApp, admin_token: str,
                                                                 ctx: Context) -> None:
    accommodated = await _create(web_server.url, admin_token, accommodations={
        **WANTED, "detectors": {**WANTED["detectors"], "window_blur": "off"}})
    plain = await _create(web_server.url, admin_token)
    for created in (accommodated, plain):
        analysis, streamed, stream = await _analysed(ctx, created["id"])
        try:
            _feed(streamed, "looking_away", 0.0, 8.0)  # 8 s looking away
            _feed(streamed, "no_face", 20.0, 27.0)  # 7 s out of view: a flag after 3 s, not after 10
            _feed(streamed, "no_face", 40.0, 52.0)  # 12 s out of view: a flag either way
            streamed.on_signal(60.0, {"type": "tab_hidden"})
            streamed.on_signal(63.0, {"type": "tab_visible"})
            # A latched browser state starts on the rules' tick, not on the message: off, it never gets there.
            streamed.on_signal(70.0, {"type": "window_blur"})
            for t, signal in ((73.0, None), (75.0, "window_focus"), (76.0, None)):
                if signal:
                    streamed.on_signal(t, {"type": signal})
                for change in streamed.rules.tick(t):
                    streamed.changes.put_nowait((change, None))
            await asyncio.wait_for(streamed.changes.join(), 20)
        finally:
            for hook in stream.close_hooks:
                await hook(stream)
            await analysis.stop()
        rows = await wait_for(lambda cid=created["id"]: _events(ctx, cid), within=10)
        created["events"] = [(r["kind"], r["start_s"], r["end_s"]) for r in rows]
    assert rules_config(ctx.settings).rules["looking_away"].start_after_s < 8  # the plain session flags it
    assert accommodated["events"] == [("no_face", 40.0, 52.0), ("tab_hidden", 60.0, 63.0)]
    assert plain["events"] == [("looking_away", 0.0, 8.0), ("no_face", 20.0, 27.0), ("no_face", 40.0, 52.0),
                               ("tab_hidden", 60.0, 63.0), ("window_blur", 70.0, 75.0)]


async def test_no_flags_while_monitoring_is_held(web_server: RunningApp, admin_token: str, ctx: Context) -> None:
    created = await _create(web_server.url, admin_token)
    analysis, streamed, stream = await _analysed(ctx, created["id"])
    try:
        _feed(streamed, "no_face", 0.0, 6.0)  # a flag, then ...
        _feed(streamed, "multiple_people", 20.0, 30.0, clear_s=0.0)  # ... a second person, still there at the pause
        stream.held = True
        for sink in stream.hold_sinks:
            sink(True, 30.0)
        _feed(streamed, "no_face", 45.0, 60.0)  # during the pause: nothing
        streamed.on_signal(61.0, {"type": "tab_hidden"})
        streamed.on_signal(70.0, {"type": "tab_visible"})
        stream.held = False
        for sink in stream.hold_sinks:
            sink(False, 80.0)
        _feed(streamed, "no_face", 90.0, 96.0)  # after: flags again
        await asyncio.wait_for(streamed.changes.join(), 20)
    finally:
        for hook in stream.close_hooks:
            await hook(stream)
        await analysis.stop()
    rows = await _events(ctx, created["id"])
    # The second person's flag ends where the pause began; nothing starts inside it.
    assert [(r["kind"], r["start_s"], r["end_s"]) for r in rows] == [
        ("no_face", 0.0, 6.0), ("multiple_people", 20.0, 30.0), ("no_face", 90.0, 96.0)]


async def test_the_review_page_shows_them_beside_the_sensitivity(web_server: RunningApp, admin_token: str) -> None:
    created = await _create(web_server.url, admin_token, accommodations=WANTED)
    status, page = await _call("GET", f"{web_server.url}/sessions/{created['id']}", admin_token)
    assert status == 200
    assert ('<b id="session-accommodations-value">looking_away off; no_face after 10 s at least, weight 1 at most; '
            "2 breaks of up to 5 min; note: uses a screen reader</b>") in page
    hostile = await _create(web_server.url, admin_token, accommodations={"note": "<script>alert(1)</script>"})
    status, page = await _call("GET", f"{web_server.url}/sessions/{hostile['id']}", admin_token)
    assert "<script>alert(1)" not in page and "note: &lt;script&gt;alert(1)&lt;/script&gt;" in page
