"""Per-exam sensitivity: the domain (parse, round trip, hostile input, the profiles' order), the settings and rules it
makes, and the real path: created over REST, stored, served, shown on the review page, applied by a stream's
analysis (rules and detector thresholds), with the deployment's settings when it cannot be read."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import fields, replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from analyzers.base import apply_sensitivity, rules_config
from core.rules import RulesConfig
from core.sensitivity import (
    INSTANT_KINDS,
    MAX_DELAY_S,
    NAMED_PROFILES,
    PROFILE_THRESHOLDS,
    PROFILE_TIMING,
    STANDARD,
    THRESHOLDS,
    TIMED_KINDS,
    Sensitivity,
)
from proctor.context import Context
from proctor.settings import Settings
from tests.support.servers import RunningApp
from tests.support.streams import FakeStream

# --- the domain -------------------------------------------------------------------------------------------------


def test_named_profiles_and_overrides_parse() -> None:
    assert Sensitivity.parse("standard") == STANDARD == Sensitivity.parse({})
    assert Sensitivity.parse({"profile": "standard"}) == STANDARD
    assert STANDARD.timing() == {} and STANDARD.thresholds() == {}
    strict = Sensitivity.parse({"profile": "strict", "timing": {"phone": [1, 3]}, "thresholds": {"gaze_yaw_deg": 30}})
    assert strict.profile == "strict"
    assert strict.timing() == {**PROFILE_TIMING["strict"], "phone": (1.0, 3.0)}
    assert strict.thresholds() == {**PROFILE_THRESHOLDS["strict"], "gaze_yaw_deg": 30.0}
    assert strict.describe() == "strict + phone 1/3 s, gaze_yaw_deg 30"
    assert Sensitivity.parse("lenient").describe() == "lenient"
    # Overrides alone are a custom sensitivity; EVENT_TIMING's text form is the same thing.
    custom = Sensitivity.parse({"timing": {"no_face": [5, 2], "phone": [1, 3]}})
    assert custom.profile == "custom" and custom.timing() == {"no_face": (5.0, 2.0), "phone": (1.0, 3.0)}
    assert Sensitivity.parse({"profile": "custom", "timing": "phone=1/3, no_face=5/2"}) == custom
    # Order of the overrides does not matter; the value is hashable (frozen, tuples inside).
    assert Sensitivity.parse({"timing": {"phone": [1, 3], "no_face": [5, 2]}}) == custom
    assert len({custom, Sensitivity.parse({"timing": "no_face=5/2,phone=1/3"})}) == 1


@pytest.mark.parametrize("value", [
    "strict", "standard", "lenient",
    {"profile": "strict", "timing": {"phone": [1, 3]}, "thresholds": {"gaze_yaw_deg": 30}},
    {"profile": "custom", "thresholds": {"identity_threshold": 0, "face_min_score": 1, "phone_conf": 0.01}},
    {"timing": {kind: [0, MAX_DELAY_S] for kind in TIMED_KINDS}},
])
def test_to_json_round_trips_through_json_text(value: Any) -> None:
    parsed = Sensitivity.parse(value)
    stored = json.loads(json.dumps(parsed.to_json()))  # as the jsonb column and the REST body carry it
    assert Sensitivity.parse(stored) == parsed
    assert stored["profile"] == parsed.profile


@pytest.mark.parametrize(("value", "reason"), [
    ("paranoid", "unknown profile 'paranoid'"),
    ("Strict", "unknown profile 'Strict'"),
    ("custom", "\"custom\" needs \"timing\" or \"thresholds\""),
    ({"profile": "custom"}, "\"custom\" needs"),
    ({"profile": 3}, "profile: expected one of"),
    ({"profile": None}, "got null"),
    (None, "expected a profile name"),
    (7, "got int 7"),
    (["strict"], "got a list of 1"),
    ({"profile": "strict", "speed": 1}, "unknown field 'speed'"),
    ({"timing": {"sneezing": [1, 1]}}, "unknown event kind 'sneezing'"),
    ({"timing": {"recording_error": [1, 1]}}, "unknown event kind 'recording_error'"),
    ({"timing": {"copy_paste": [1, 1]}}, "copy_paste is instant"),
    ({"timing": {"phone": 1}}, "timing.phone: expected [start_after_s, end_after_s], got int 1"),
    ({"timing": {"phone": [1]}}, "got a list of 1"),
    ({"timing": {"phone": [1, 2, 3]}}, "got a list of 3"),
    ({"timing": {"phone": {"start": 1}}}, "got an object"),
    ({"timing": {"phone": ["1", 2]}}, "timing.phone start: expected a number, got str '1'"),
    ({"timing": {"phone": [1, True]}}, "timing.phone end: expected a number, got bool True"),
    ({"timing": {"phone": [1, None]}}, "timing.phone end: expected a number, got null"),
    ({"timing": {"phone": [-1, 2]}}, "timing.phone start: must be between 0 and 600, got -1"),
    ({"timing": {"phone": [1, 601]}}, "timing.phone end: must be between 0 and 600, got 601"),
    ({"timing": {"phone": [math.nan, 2]}}, "must be a finite number, got nan"),
    ({"timing": {"phone": [1, math.inf]}}, "must be a finite number, got inf"),
    ({"timing": {"phone": [10**400, 1]}}, "got an integer beyond any float"),
    ({"timing": [["phone", 1, 2]]}, "timing: expected an object"),
    ({"timing": "phone=1"}, "timing: expected kind=start/end"),
    ({"timing": "phone=nan/2"}, "must be a finite number"),
    ({"timing": "phone=1/2," * 200}, "timing: text longer than 1000 characters"),
    ({"thresholds": {"gaze_yaw": 30}}, "unknown threshold 'gaze_yaw'"),
    ({"thresholds": {"gaze_iris": 0.1}}, "unknown threshold 'gaze_iris'"),  # a setting, but not per session
    ({"thresholds": {"gaze_yaw_deg": 0.5}}, "thresholds.gaze_yaw_deg: must be between 1 and 90, got 0.5"),
    ({"thresholds": {"gaze_pitch_deg": 91}}, "must be between 1 and 90, got 91"),
    ({"thresholds": {"phone_conf": 0}}, "thresholds.phone_conf: must be between 0.01 and 1, got 0"),
    ({"thresholds": {"face_min_score": -0.1}}, "must be between 0 and 1"),
    ({"thresholds": {"identity_threshold": 1e6}}, "must be between 0 and 100"),
    ({"thresholds": {"phone_conf": "0.5"}}, "expected a number, got str '0.5'"),
    ({"thresholds": {"phone_conf": [0.5]}}, "expected a number, got a list of 1"),
    ({"thresholds": 0.5}, "thresholds: expected an object"),
])
def test_bad_values_say_exactly_what_is_wrong(value: Any, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        Sensitivity.parse(value)
    assert reason in str(caught.value)


def test_hostile_sizes_are_refused_without_echoing_them() -> None:
    huge_key = "k" * 1_000_000
    for value in (huge_key, {"profile": huge_key}, {huge_key: 1}, {"timing": {huge_key: [1, 1]}},
                  {"thresholds": {huge_key: 1}}, {"timing": {f"kind{i}": [1, 1] for i in range(100_000)}}):
        with pytest.raises(ValueError) as caught:
            Sensitivity.parse(value)
        assert len(str(caught.value)) < 400
    deep: Any = [1, 2]
    for _ in range(10_000):  # nesting is never followed: a pair must hold two numbers
        deep = [deep, 1]
    with pytest.raises(ValueError, match="timing.phone start: expected a number, got a list of 2"):
        Sensitivity.parse({"timing": {"phone": deep}})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([*NAMED_PROFILES, "custom", *TIMED_KINDS, *INSTANT_KINDS, *THRESHOLDS, "timing", "profile"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["profile", "timing", "thresholds", *TIMED_KINDS, *THRESHOLDS, "x"]), inner, max_size=4),
    max_leaves=12)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=JSON_VALUES)
def test_any_json_is_a_sensitivity_or_a_value_error(value: Any) -> None:
    try:
        parsed = Sensitivity.parse(value)
    except ValueError:
        return
    assert Sensitivity.parse(json.loads(json.dumps(parsed.to_json()))) == parsed


DELAYS = st.floats(0, MAX_DELAY_S, allow_nan=False)


@st.composite
def valid_sensitivities(draw: st.DrawFn) -> dict[str, Any]:
    timing = draw(st.dictionaries(st.sampled_from(TIMED_KINDS), st.tuples(DELAYS, DELAYS).map(list), max_size=4))
    thresholds = {name: draw(st.floats(*THRESHOLDS[name], allow_nan=False))
                  for name in draw(st.sets(st.sampled_from(list(THRESHOLDS))))}
    profile = draw(st.sampled_from([*NAMED_PROFILES, "custom"] if timing or thresholds else NAMED_PROFILES))
    return {"profile": profile, "timing": timing, "thresholds": thresholds}


@hypothesis_settings(max_examples=200, deadline=None)
@given(value=valid_sensitivities())
def test_every_valid_value_round_trips(value: dict[str, Any]) -> None:
    parsed = Sensitivity.parse(value)
    assert Sensitivity.parse(json.loads(json.dumps(parsed.to_json()))) == parsed
    assert parsed.timing() == {**PROFILE_TIMING[value["profile"]],
                               **{kind: tuple(pair) for kind, pair in value["timing"].items()}}
    assert parsed.thresholds() == {**PROFILE_THRESHOLDS[value["profile"]], **value["thresholds"]}


def test_strict_is_stricter_than_standard_which_is_stricter_than_lenient() -> None:
    """For every delay a profile overrides: strict starts sooner than core.rules' defaults, lenient later, and
    neither ends a flag in a way that contradicts it; gaze angles likewise, against the settings' defaults."""
    default = RulesConfig.default().rules
    strict, lenient = Sensitivity.parse("strict").timing(), Sensitivity.parse("lenient").timing()
    assert set(strict) == set(lenient) and strict
    for kind in strict:
        assert strict[kind][0] < default[kind].start_after_s < lenient[kind][0], kind
        assert strict[kind][1] <= default[kind].end_after_s <= lenient[kind][1], kind
    defaults = Settings.defaults()
    strict_t, lenient_t = Sensitivity.parse("strict").thresholds(), Sensitivity.parse("lenient").thresholds()
    assert set(strict_t) == set(lenient_t) == {"gaze_yaw_deg", "gaze_pitch_deg"}
    for name in strict_t:
        assert strict_t[name] < getattr(defaults, name) < lenient_t[name], name


def test_thresholds_are_float_settings_whose_ranges_the_settings_accept() -> None:
    by_name = {f.name: f for f in fields(Settings)}
    for name, (lo, hi) in THRESHOLDS.items():
        assert name in by_name and isinstance(getattr(Settings.defaults(), name), float), name
        env = by_name[name].metadata["env"]
        for value in (lo, hi):  # both ends are values a deployment could set too
            assert getattr(Settings.from_env({env: str(value)}, env_file=None), name) == value


def test_apply_replaces_only_the_given_thresholds() -> None:
    base = Settings.defaults(phone_conf=0.4, gaze_pitch_deg=27.0)
    assert apply_sensitivity(base, STANDARD) is base
    changed = apply_sensitivity(base, Sensitivity.parse({"profile": "strict", "thresholds": {"phone_conf": 0.6}}))
    differing = {f.name: getattr(changed, f.name) for f in fields(Settings)
                 if getattr(changed, f.name) != getattr(base, f.name)}
    assert differing == {"phone_conf": 0.6, "gaze_yaw_deg": 22.0, "gaze_pitch_deg": 20.0}
    assert base.phone_conf == 0.4  # the deployment's settings are untouched


def test_rules_config_layers_the_session_over_event_timing() -> None:
    settings = Settings.defaults(event_timing="no_face=9/1,tab_hidden=4/4,second_screen=1/1")
    standard = rules_config(settings).rules
    assert standard["no_face"].start_after_s == 9.0 and standard["second_screen"].start_after_s == 1.0
    assert rules_config(settings, STANDARD) == rules_config(settings)
    strict = rules_config(settings, Sensitivity.parse({"profile": "strict", "timing": {"phone": [0, 4]}})).rules
    assert (strict["no_face"].start_after_s, strict["no_face"].end_after_s) == (2.0, 2.0)  # the profile wins
    assert (strict["tab_hidden"].start_after_s, strict["tab_hidden"].end_after_s) == (0.5, 0.5)
    assert (strict["phone"].start_after_s, strict["phone"].end_after_s) == (0.0, 4.0)  # the override wins
    assert strict["second_screen"].start_after_s == 1.0  # not in the profile: EVENT_TIMING's
    # Only the delays change: a kind's other rules (identity's two-frame confirmation, latching) stay.
    assert strict["identity_mismatch"] == standard["identity_mismatch"]
    assert strict["tab_hidden"].latched


# --- storage ------------------------------------------------------------------------------------------------------


async def test_rows_default_to_standard_and_the_column_refuses_other_shapes(conn: asyncpg.Connection) -> None:
    sid = await conn.fetchval("INSERT INTO sessions (candidate, exam, join_nonce, join_expires_at) "
                              "VALUES ('c', 'e', 'n', now()) RETURNING id")
    try:
        assert await conn.fetchval("SELECT sensitivity FROM sessions WHERE id = $1", sid) == {"profile": "standard"}
        for bad in ({"profile": "paranoid"}, {"timing": {}}, ["strict"]):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE sessions SET sensitivity = $2 WHERE id = $1", sid, bad)
    finally:
        await conn.execute("DELETE FROM sessions WHERE id = $1", sid)


# --- REST ---------------------------------------------------------------------------------------------------------


async def _call(method: str, url: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.request(method, url, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def _create(base: str, token: str, **extra: Any) -> tuple[int, Any]:
    return await _call("POST", f"{base}/api/sessions", token,
                       json={"candidate": "Ada Lovelace", "exam": f"Sensitivity {uuid.uuid4().hex[:6]}", **extra})


async def test_created_with_a_profile_over_rest_and_served_back(web_server: RunningApp, admin_token: str,
                                                                proctor_token: str) -> None:
    base = web_server.url
    status, created = await _create(base, admin_token, sensitivity="strict")
    assert status == 201, created
    assert created["sensitivity"] == {"profile": "strict"}
    status, got = await _call("GET", f"{base}/api/sessions/{created['id']}", proctor_token)
    assert status == 200 and got["sensitivity"] == {"profile": "strict"}
    status, listing = await _call("GET", f"{base}/api/sessions?q={created['exam'].split()[-1]}", proctor_token)
    assert status == 200 and [s["sensitivity"] for s in listing] == [{"profile": "strict"}]
    # Left out, or null: the deployment's settings.
    for extra in ({}, {"sensitivity": None}):
        status, plain = await _create(base, admin_token, **extra)
        assert status == 201 and plain["sensitivity"] == {"profile": "standard"}, plain


async def test_custom_overrides_over_rest(web_server: RunningApp, admin_token: str, ctx: Context) -> None:
    wanted = {"profile": "lenient", "timing": {"phone": [1, 3], "tab_hidden": [0, 0.5]},
              "thresholds": {"gaze_yaw_deg": 35, "phone_conf": 0.5}}
    status, created = await _create(web_server.url, admin_token, sensitivity=wanted)
    assert status == 201, created
    assert created["sensitivity"] == {"profile": "lenient", "timing": {"phone": [1.0, 3.0], "tab_hidden": [0.0, 0.5]},
                                      "thresholds": {"gaze_yaw_deg": 35.0, "phone_conf": 0.5}}
    status, got = await _call("GET", f"{web_server.url}/api/sessions/{created['id']}", admin_token)
    assert got["sensitivity"] == created["sensitivity"]
    async with ctx.pool.acquire() as conn:
        details = await conn.fetchval("SELECT details FROM audit_log WHERE action = 'session.create' AND target = $1",
                                      f"session:{created['id']}")
    assert details["sensitivity"] == created["sensitivity"]  # who chose it is on record


@pytest.mark.parametrize(("sensitivity", "reason"), [
    ("paranoid", "sensitivity: unknown profile 'paranoid'"),
    ({"profile": "strict", "timing": {"phone": [-1, 2]}}, "sensitivity: timing.phone start: must be between 0 and 600"),
    ({"timing": {"sneezing": [1, 1]}}, "sensitivity: timing: unknown event kind 'sneezing'"),
    ({"thresholds": {"gaze_yaw_deg": "wide"}}, "sensitivity: thresholds.gaze_yaw_deg: expected a number"),
    ({"thresholds": {"root": 1}}, "sensitivity: thresholds: unknown threshold 'root'"),
    (12, "sensitivity: expected a profile name"),
    ({"profile": "custom"}, "sensitivity: profile \"custom\" needs"),
])
async def test_bad_sensitivity_is_a_400_with_the_reason(web_server: RunningApp, admin_token: str, ctx: Context,
                                                        sensitivity: Any, reason: str) -> None:
    exam = f"Refused {uuid.uuid4().hex}"
    status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token,
                               json={"candidate": "Ada", "exam": exam, "sensitivity": sensitivity})
    assert status == 400 and reason in body["error"], body
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE exam = $1", exam) == 0


async def test_non_finite_numbers_in_the_body_are_a_400(web_server: RunningApp, admin_token: str) -> None:
    # Python's JSON reader takes NaN and Infinity; the reason must still be a 400, never a 500 from Postgres.
    for number in ("NaN", "Infinity", "-Infinity", "1e400"):
        raw = '{"candidate": "Ada", "exam": "Math", "sensitivity": {"timing": {"phone": [NUMBER, 1]}}}'
        raw = raw.replace("NUMBER", number)
        status, body = await _call("POST", f"{web_server.url}/api/sessions", admin_token, data=raw)
        assert status == 400 and "timing.phone start" in body["error"], (number, body)


async def test_the_review_page_and_the_create_form_show_it(web_server: RunningApp, admin_token: str) -> None:
    wanted = {"profile": "strict", "timing": {"phone": [1, 3]}, "thresholds": {"gaze_yaw_deg": 30}}
    _, created = await _create(web_server.url, admin_token, sensitivity=wanted)
    status, page = await _call("GET", f"{web_server.url}/sessions/{created['id']}", admin_token)
    assert status == 200
    assert '<b id="session-sensitivity-value">strict + phone 1/3 s, gaze_yaw_deg 30</b>' in page
    status, listing = await _call("GET", f"{web_server.url}/", admin_token)
    assert status == 200 and 'id="new-sensitivity"' in listing
    assert '<option value="standard" selected>' in listing


# --- applied by a stream's analysis ---------------------------------------------------------------------------------


async def _analysed(ctx: Context, session_id: str) -> tuple[Any, Any, FakeStream]:
    """A StreamAnalysis attached the way a media node attaches it, once it has subscribed its detectors."""
    from analyzers.live import Analysis

    # Gaze only: its thresholds are per-session ones, and FaceMesh loads in about a second.
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


async def _close(analysis: Any, stream: FakeStream) -> None:
    for hook in stream.close_hooks:
        await hook(stream)
    await analysis.stop()


async def test_a_streams_rules_and_detectors_use_the_sessions_sensitivity(web_server: RunningApp, admin_token: str,
                                                                          ctx: Context) -> None:
    wanted = {"profile": "strict", "timing": {"phone": [1, 3]}, "thresholds": {"gaze_yaw_deg": 35}}
    _, created = await _create(web_server.url, admin_token, sensitivity=wanted)
    analysis, streamed, stream = await _analysed(ctx, created["id"])
    try:
        assert streamed.sensitivity == Sensitivity.parse(wanted)
        rules = streamed.rules.config.rules
        expected = {**PROFILE_TIMING["strict"], "phone": (1.0, 3.0)}
        for kind, (start, end) in expected.items():
            assert (rules[kind].start_after_s, rules[kind].end_after_s) == (start, end), kind
        gaze = streamed.detectors[0]
        assert gaze.name == "gaze" and [s.detector for s in stream.sampler.subscribers] == [gaze]
        assert (gaze.yaw_threshold, gaze.pitch_threshold) == (35.0, 20.0)  # the override, then the profile
        # The rules act on it: a tab hidden for 0.6 s is a flag under strict (0.5 s), not under standard (1 s).
        assert streamed.rules.browser_signal({"type": "tab_hidden"}, 10.0) == []
        started = streamed.rules.tick(10.6)
        assert [(c.type, c.kind, c.start_s) for c in started] == [("start", "tab_hidden", 10.0)]
    finally:
        await _close(analysis, stream)


async def test_without_a_readable_sensitivity_the_deployments_settings_apply(
        web_server: RunningApp, admin_token: str, ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    deployment = rules_config(ctx.settings).rules
    _, created = await _create(web_server.url, admin_token, sensitivity="lenient")
    async with ctx.pool.acquire() as conn:  # passes the column's check, not Sensitivity.parse
        await conn.execute("UPDATE sessions SET sensitivity = $2 WHERE id = $1", created["id"],
                           {"profile": "lenient", "timing": {"sneezing": [1, 1]}})
    for session_id in (created["id"], str(uuid.uuid4())):
        caplog.clear()
        analysis, streamed, stream = await _analysed(ctx, session_id)
        try:
            assert streamed.sensitivity == STANDARD
            assert streamed.rules.config.rules == deployment
            assert streamed.detectors[0].yaw_threshold == ctx.settings.gaze_yaw_deg
            assert "the deployment's settings apply" in caplog.text
        finally:
            await _close(analysis, stream)
