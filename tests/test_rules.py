"""Event hysteresis (core.rules): exact start/end times, flicker, gaps, peaks, flush, browser signals."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import pytest

from analyzers.base import rules_config
from core.rules import (
    EventChange,
    EventRules,
    KindRule,
    RulesConfig,
    browser_signal_to_condition,
    parse_event_timing,
)
from proctor.settings import Settings


def feed(rules: EventRules, kind: str, frames: list[tuple[float, bool]], confidence: float = 0.8,
         ) -> list[EventChange]:
    changes: list[EventChange] = []
    for t, active in frames:
        changes += rules.update(kind, active, confidence if active else 0.1, t, {"t": t}, frame_ref=t)
    return changes


def frames(start: float, stop: float, active: bool, step: float = 0.25) -> list[tuple[float, bool]]:
    n = int(round((stop - start) / step))
    return [(round(start + i * step, 6), active) for i in range(n)]


def test_start_and_end_times_are_exact() -> None:
    rules = EventRules()  # no_face: start after 3 s, end after 2 s
    changes = feed(rules, "no_face", frames(0, 10, False) + frames(10, 20, True) + frames(20, 30, False))
    assert [c.type for c in changes] == ["start", "end"]
    start, end = changes
    assert start.start_s == 10.0 and start.end_s is None  # the first active frame, not the confirming one
    assert end.start_s == 10.0 and end.end_s == 20.0  # the first clear frame
    assert start.event_id == end.event_id


def test_start_is_confirmed_exactly_after_start_after() -> None:
    rules = EventRules()
    assert feed(rules, "no_face", frames(10, 12.75 + 0.25, True)) == []  # held 2.75 s
    [start] = rules.update("no_face", True, 0.8, 13.0)  # held 3.0 s
    assert start.type == "start" and start.start_s == 10.0
    assert feed(rules, "no_face", frames(14, 15.75 + 0.25, False)) == []  # clear 1.75 s
    [end] = rules.update("no_face", False, 0.1, 16.0)
    assert end.type == "end" and end.end_s == 14.0


def test_flicker_shorter_than_start_after_never_starts() -> None:
    rules = EventRules()
    pattern = []
    t = 0.0
    for _ in range(20):  # 2.5 s on, 0.5 s off, for a minute: never 3 s in a row
        pattern += frames(t, t + 2.5, True) + frames(t + 2.5, t + 3.0, False)
        t += 3.0
    assert feed(rules, "no_face", pattern) == []
    assert rules.flush(t) == []


def test_short_clear_gaps_do_not_end_an_event() -> None:
    rules = EventRules()  # multiple_people: 2 s / 2 s
    pattern = frames(0, 3, True)
    for t in (3, 6, 9):  # 1.5 s clear, then active again
        pattern += frames(t, t + 1.5, False) + frames(t + 1.5, t + 3, True)
    pattern += frames(12, 15, False)
    changes = feed(rules, "multiple_people", pattern)
    assert [c.type for c in changes] == ["start", "end"]
    assert changes[0].start_s == 0.0 and changes[1].end_s == 12.0


def test_peak_confidence_and_its_frame_travel_with_the_event() -> None:
    rules = EventRules()  # phone: 1 s / 2 s
    out = []
    for t, conf in [(0, 0.4), (0.5, 0.6), (1.0, 0.5), (1.5, 0.62), (2.0, 0.9), (2.5, 0.7), (3.0, 0.95)]:
        out += rules.update("phone", True, conf, t, {"score": conf}, frame_ref=f"frame@{t}")
    assert [c.type for c in out] == ["start", "update", "update"]
    start, up1, up2 = out
    assert start.start_s == 0 and start.confidence == 0.6 and start.frame_ref == "frame@0.5"  # peak of the run
    assert start.details == {"score": 0.6}
    # 0.62 is not 0.05 above 0.6: no update; 0.9 is, and so is 0.95.
    assert (up1.confidence, up1.frame_ref) == (0.9, "frame@2.0")
    assert (up2.confidence, up2.frame_ref) == (0.95, "frame@3.0")
    out = feed(rules, "phone", frames(3.5, 6, False))
    assert [c.type for c in out] == ["end"]
    assert out[0].end_s == 3.5 and out[0].confidence == 0.95 and out[0].frame_ref == "frame@3.0"


def test_update_step_zero_reports_every_new_peak() -> None:
    # A run-based rule (1 s / 2 s; the default phone rule votes instead: see test_phone_votes_*).
    rules = EventRules(RulesConfig({"phone": KindRule(1.0, 2.0)}, update_step=0.0))
    out = []
    for t, conf in [(0, 0.5), (1.0, 0.51), (1.5, 0.52), (2.0, 0.52)]:
        out += rules.update("phone", True, conf, t)
    assert [(c.type, c.confidence) for c in out] == [("start", 0.51), ("update", 0.52)]


def test_flush_ends_open_events() -> None:
    rules = EventRules()
    feed(rules, "no_face", frames(5, 10, True))
    feed(rules, "phone", frames(8, 9, True))  # phone: held 0.75 s < 1 s, never started
    feed(rules, "looking_away", frames(0, 5, True) + frames(5, 6, False))  # open, clear run began at 5
    out = rules.flush(10.0)
    by_kind = {c.kind: c for c in out}
    assert set(by_kind) == {"no_face", "looking_away"}
    assert by_kind["no_face"].type == "end" and (by_kind["no_face"].start_s, by_kind["no_face"].end_s) == (5, 10)
    assert (by_kind["looking_away"].start_s, by_kind["looking_away"].end_s) == (0, 5)  # its first clear frame
    assert rules.flush(11.0) == [] and rules.open_events() == {}


def test_frame_gap_does_not_invent_events() -> None:
    rules = EventRules()  # no_face: 3 s; default max gap 3 s
    # Active at 0..1, then nothing for 10 s, then active for 1 s: never 3 s of continuous evidence.
    assert feed(rules, "no_face", frames(0, 1, True) + frames(11, 12, True)) == []
    # An open event whose frames stop ends at its last evidence, not when frames come back.
    feed(rules, "no_face", frames(20, 25, True))  # started at 20, last frame 24.75
    out = rules.update("no_face", True, 0.9, 40.0)
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("end", 20.0, 24.75)]
    # ... and tick() does the same without waiting for a frame.
    feed(rules, "no_face", frames(50, 55, True))
    assert rules.tick(56.0) == []
    [end] = rules.tick(60.0)
    assert (end.start_s, end.end_s) == (50.0, 54.75)


def test_identity_needs_two_consecutive_checks() -> None:
    rules = EventRules(rules_config(Settings.defaults(identity_interval_s=5)))
    assert rules.update("identity_mismatch", True, 0.9, 5.0) == []
    assert rules.update("identity_mismatch", False, 0.2, 10.0) == []  # one mismatch alone: nothing
    assert rules.update("identity_mismatch", True, 0.8, 15.0) == []
    [start] = rules.update("identity_mismatch", True, 0.9, 20.0)
    assert start.start_s == 15.0 and start.confidence == 0.9
    assert rules.update("identity_mismatch", False, 0.2, 25.0) == []
    assert rules.update("identity_mismatch", True, 0.9, 30.0) == []  # one match alone does not end it
    assert rules.update("identity_mismatch", False, 0.2, 35.0) == []
    [end] = rules.update("identity_mismatch", False, 0.2, 40.0)
    assert end.end_s == 35.0
    # A check skipped (no face for one interval) does not break the run: the gap allowance is 3.5 intervals.
    assert rules.update("identity_mismatch", True, 0.9, 50.0) == []
    assert [c.type for c in rules.update("identity_mismatch", True, 0.9, 60.0)] == ["start"]


def test_timing_overrides() -> None:
    assert parse_event_timing(" no_face=5/1.5 , phone=0/3") == {"no_face": (5.0, 1.5), "phone": (0.0, 3.0)}
    assert parse_event_timing("") == {}
    for bad in ("no_face=5", "no_face:5/2", "nose=1/1", "phone=a/2", "phone=-1/2"):
        with pytest.raises(ValueError):
            parse_event_timing(bad)
    rules = EventRules(rules_config(Settings.defaults(event_timing="no_face=1/0")))
    out = feed(rules, "no_face", frames(0, 1.25, True) + [(2.0, False)])
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("start", 0, None), ("end", 0, 2.0)]
    assert rules.config.rules["phone"] == RulesConfig.default().rules["phone"]


def test_out_of_order_and_unknown_kinds() -> None:
    rules = EventRules(RulesConfig({"x": KindRule(0.0, 0.0)}))
    assert [c.type for c in rules.update("x", True, 0.5, 10.0)] == ["start"]
    assert rules.update("x", False, 0.5, 9.0) == []  # older than the last frame: ignored
    with pytest.raises(ValueError):
        rules.update("nope", True, 1.0, 0.0)


# --- browser signals ------------------------------------------------------------------------------------
def test_browser_signal_mapping() -> None:
    cases = {
        "tab_hidden": ("tab_hidden", True), "tab_visible": ("tab_hidden", False),
        "window_blur": ("window_blur", True), "window_focus": ("window_blur", False),
        "fullscreen_exit": ("fullscreen_exit", True), "fullscreen_enter": ("fullscreen_exit", False),
        "copy": ("copy_paste", True), "cut": ("copy_paste", True), "paste": ("copy_paste", True),
    }
    for kind, expected in cases.items():
        assert browser_signal_to_condition({"type": kind, "at": 123}) == expected
    assert browser_signal_to_condition({"type": "hello", "screen_extended": True}) == ("second_screen", True)
    assert browser_signal_to_condition({"type": "screen_change", "screen_extended": False}) == ("second_screen", False)
    assert browser_signal_to_condition({"type": "hello", "screen_extended": None}) is None
    for other in ({"type": "ping"}, {"type": "pong"}, {}, {"type": 5}, "tab_hidden"):
        assert browser_signal_to_condition(other) is None  # type: ignore[arg-type]


def test_tab_hidden_latches_between_messages() -> None:
    rules = EventRules()  # tab_hidden: start after 1 s, end after 0.5 s
    assert rules.browser_signal({"type": "tab_hidden"}, 10.0) == []
    assert rules.tick(10.5) == []
    [start] = rules.tick(11.2)  # no new message: the hidden state held
    assert (start.kind, start.start_s, start.confidence) == ("tab_hidden", 10.0, 1.0)
    assert rules.browser_signal({"type": "tab_visible"}, 15.0) == []
    assert rules.tick(15.3) == []
    [end] = rules.tick(15.6)
    assert (end.start_s, end.end_s) == (10.0, 15.0)


def test_browser_state_changes_without_ticks_still_have_exact_times() -> None:
    rules = EventRules()
    assert rules.browser_signal({"type": "window_blur"}, 3.0) == []  # window_blur: 2 s / 0.5 s
    [start] = rules.browser_signal({"type": "window_focus"}, 7.0)  # held 4 s: confirmed by the change itself
    assert start.start_s == 3.0
    [end] = rules.browser_signal({"type": "window_blur"}, 9.0)  # focus held 2 s >= 0.5 s
    assert end.end_s == 7.0
    # A short blur (1 s) never becomes an event.
    assert rules.browser_signal({"type": "window_focus"}, 10.0) == []
    assert rules.tick(20.0) == []


def test_short_tab_switch_and_refocus_are_ignored() -> None:
    rules = EventRules()
    out = rules.browser_signal({"type": "tab_hidden"}, 1.0) + rules.browser_signal({"type": "tab_visible"}, 1.6)
    out += rules.tick(5.0)
    assert out == []
    # fullscreen exit, back within 0.3 s of the start: the event still started, and ends at re-entry.
    out = rules.browser_signal({"type": "fullscreen_exit"}, 2.0) + rules.tick(3.1)
    out += rules.browser_signal({"type": "fullscreen_enter"}, 3.3) + rules.browser_signal(
        {"type": "fullscreen_exit"}, 3.5)  # out again after 0.2 s: the same event goes on
    out += rules.tick(10.0) + rules.flush(12.0)
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("start", 2.0, None), ("end", 2.0, 12.0)]


def test_copy_paste_are_instantaneous_and_close_ones_merge() -> None:
    rules = EventRules()
    out = rules.browser_signal({"type": "paste", "at": 1}, 42.5)
    assert [(c.type, c.kind, c.start_s, c.end_s) for c in out] == [("start", "copy_paste", 42.5, 42.5),
                                                                    ("end", "copy_paste", 42.5, 42.5)]
    assert out[0].details == {"signal": "paste", "count": 1, "signals": {"paste": 1}}
    assert out[0].event_id == out[1].event_id
    # Within 10 s of the last one: the same flag, extended and counted (no new alert).
    again = rules.browser_signal({"type": "copy"}, 42.6) + rules.browser_signal({"type": "paste"}, 51.0)
    assert [(c.type, c.start_s, c.end_s, c.event_id) for c in again] == [
        ("update", 42.5, 42.6, out[0].event_id), ("update", 42.5, 51.0, out[0].event_id)]
    assert again[-1].details == {"signal": "paste", "count": 3, "signals": {"paste": 2, "copy": 1}}
    assert rules.extends_ended("copy_paste") and not rules.extends_ended("tab_hidden")
    # Measured from the last one (51.0), not the first: 61.5 is too far, a new flag.
    later = rules.browser_signal({"type": "cut"}, 61.5)
    assert [c.type for c in later] == ["start", "end"] and later[0].event_id != out[0].event_id
    assert later[0].details == {"signal": "cut", "count": 1, "signals": {"cut": 1}}
    assert rules.flush(70.0) == []
    # After a flush (the stream ended), a new connection's first paste is a new flag.
    assert [c.type for c in rules.browser_signal({"type": "paste"}, 70.5)] == ["start", "end"]


def test_copy_paste_merging_can_be_turned_off() -> None:
    config = RulesConfig.default()
    config = replace(config, rules={**config.rules, "copy_paste": replace(config.rules["copy_paste"],
                                                                          merge_within_s=0.0)})
    rules = EventRules(config)
    first = rules.browser_signal({"type": "paste"}, 1.0)
    second = rules.browser_signal({"type": "paste"}, 1.0)
    assert [c.type for c in first + second] == ["start", "end", "start", "end"]
    assert first[0].event_id != second[0].event_id


def test_second_screen_from_hello() -> None:
    rules = EventRules()
    [start] = rules.browser_signal({"type": "hello", "screen_extended": True}, 0.5)
    assert start.kind == "second_screen" and start.start_s == 0.5 and start.details["screen_extended"] is True
    assert rules.browser_signal({"type": "hello", "screen_extended": None}, 5.0) == []  # unknown: no change
    [end] = rules.browser_signal({"type": "screen_change", "screen_extended": False}, 30.0)
    assert end.end_s == 30.0


def test_browser_flush_confirms_then_ends() -> None:
    rules = EventRules()
    rules.browser_signal({"type": "tab_hidden"}, 100.0)
    out = rules.flush(104.0)  # never ticked: it held 4 s, so it started at 100 and ends with the stream
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("start", 100.0, None), ("end", 100.0, 104.0)]


# --- voting (phone) ----------------------------------------------------------------------------------------
def samples(pattern: str, start: float = 0.0, step: float = 1.0) -> list[tuple[float, bool]]:
    """ "x.x.." -> active/clear samples at PHONE_FPS 1 (x: a phone seen)."""
    return [(start + i * step, ch == "x") for i, ch in enumerate(pattern)]


def test_phone_votes_flicker_one_in_three_never_starts() -> None:
    rules = EventRules()  # phone: 3 votes within 5 s
    assert feed(rules, "phone", samples("x.." * 40)) == []
    assert feed(rules, "phone", samples("x..x......" * 20, start=200.0)) == []  # 2 in any 5 s: still nothing
    assert rules.flush(400.0) == []


def test_phone_votes_start_at_the_first_vote() -> None:
    rules = EventRules()
    out = []
    for t, conf in [(0.0, 0.4), (1.0, None), (2.0, 0.7), (3.0, None), (4.0, 0.5)]:
        out += rules.update("phone", conf is not None, conf or 0.1, t, {"score": conf}, frame_ref=f"frame@{t}")
    [start] = out
    assert (start.type, start.start_s, start.end_s) == ("start", 0.0, None)  # the first vote, not the third
    assert (start.confidence, start.frame_ref, start.details) == (0.7, "frame@2.0", {"score": 0.7})  # their peak
    assert feed(rules, "phone", samples("x.", start=5.0), confidence=0.5) == []  # one clear sample: not the end
    out = feed(rules, "phone", samples("...", start=7.0))
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("end", 0.0, 6.0)]  # clear from 6 for 2 s, as before


def test_phone_votes_expire_and_a_gap_drops_them() -> None:
    rules = EventRules()
    # Two votes at 0 and 1, the third at 7: the first two are older than 5 s by then.
    assert feed(rules, "phone", samples("xx.....x")) == []
    [start] = feed(rules, "phone", samples("xx", start=8.0))  # 7, 8, 9: three within 5 s
    assert start.start_s == 7.0
    rules = EventRules()
    # No frame for 3.5 s (> max_gap_s) between the second and third vote: the stream stalled, no event.
    assert feed(rules, "phone", [(0.0, True), (1.0, True), (4.5, True)]) == []
    [start] = feed(rules, "phone", [(5.5, True), (6.5, True)])
    assert start.start_s == 4.5


def test_phone_votes_keep_start_after_as_the_least_span() -> None:
    rules = EventRules(rules_config(Settings.defaults(event_timing="phone=3/2")))
    out = feed(rules, "phone", frames(0, 3.25, True))  # 4 samples a second: three votes come at 0.5 s
    assert [(c.type, c.start_s) for c in out] == [("start", 0.0)]
    assert rules.config.rules["phone"].votes == 3  # EVENT_TIMING changes the delays, not the votes


# --- several sources for one kind (multiple_people: faces and persons) -----------------------------------
def test_sources_or_persons_without_a_second_face() -> None:
    rules = EventRules()  # multiple_people: 2 s / 2 s, max gap 3 s
    out: list[EventChange] = []
    t = 0.0
    while t < 6.0:  # faces at 4 fps see one face; persons at 1 fps see two persons (one turned away)
        out += rules.update("multiple_people", False, 0.0, t, {"faces": 1}, frame_ref=f"face@{t}")
        if t == int(t):
            out += rules.update("multiple_people", True, 0.62, t, {"persons": 2}, frame_ref=f"persons@{t}",
                                source="persons")
        t += 0.25
    [start] = out
    assert start.type == "start" and start.start_s == 0.0
    assert start.details == {"persons": 2, "sources": ["persons"]} and start.frame_ref == "persons@0.0"
    assert start.confidence == 0.62


def test_sources_both_see_it_and_a_stale_source_expires() -> None:
    rules = EventRules()
    out: list[EventChange] = []
    # Both say two people at 0..2; persons then stops reporting (its detector stalled) at 2.0. (Details name the
    # sources once a named one has reported: here it reports first.)
    for t, _ in frames(0, 2.25, True):
        out += rules.update("multiple_people", True, 0.6, t, {"persons": 2}, source="persons")
        out += rules.update("multiple_people", True, 0.9, t, {"faces": 2})
    [start] = out
    assert start.start_s == 0.0 and start.confidence == 0.9  # the stronger source speaks
    assert start.details == {"faces": 2, "sources": ["default", "persons"],
                             "by_source": {"default": {"faces": 2}, "persons": {"persons": 2}}}
    # Faces now see one face: the persons' last "two" (at 2.0) holds for max_gap_s (3 s), then says nothing.
    out = feed(rules, "multiple_people", frames(2.25, 5.0, False))
    assert out == []
    out = feed(rules, "multiple_people", frames(5.0, 7.5, False))
    assert [(c.type, c.start_s, c.end_s) for c in out] == [("end", 0.0, 5.25)]  # first clear after expiry


def test_sources_a_late_observation_applies_at_the_present() -> None:
    rules = EventRules(RulesConfig({"multiple_people": KindRule(0.0, 0.0)}))
    assert rules.update("multiple_people", False, 0.0, 10.25, {"faces": 1}) == []
    # Persons finished its frame of 10.0 after faces' 10.25: not dropped as out of order, applied at 10.25.
    [start] = rules.update("multiple_people", True, 0.7, 10.0, {"persons": 2}, source="persons")
    assert start.start_s == 10.25
    # Older than that source's own latest: out of order, ignored.
    assert rules.update("multiple_people", False, 0.0, 9.0, {"persons": 1}, source="persons") == []
    [end] = rules.update("multiple_people", False, 0.0, 11.0, {"persons": 1}, source="persons")
    assert end.end_s == 11.0


class _Picture:
    """Stands for a decoded frame (~1 MB at 640x480): only its lifetime matters here."""

    def __init__(self, t: float) -> None:
        self.t = t


def _held(rules: EventRules, refs: list[weakref.ref[_Picture]]) -> list[float]:
    gc.collect()
    return [ref().t for ref in refs if ref() is not None]  # type: ignore[union-attr]


def _observe(rules: EventRules, refs: list[weakref.ref[_Picture]], kind: str, t: float, active: bool,
             confidence: float = 0.8, source: str | None = None) -> list[str]:
    picture = _Picture(t)
    refs.append(weakref.ref(picture))
    changes = rules.update(kind, active, confidence if active else 0.1, t, frame_ref=picture, source=source)
    return [c.type for c in changes]  # the changes (and the frames they carry) are dropped, as after a snapshot


def test_rules_keep_no_frame_once_an_event_ended() -> None:
    """An ended event's peak frame left with its changes: the rules must not keep it (one picture per stream and
    kind for the rest of an exam, ~1 MB each: the 32-stream soak's memory growth)."""
    rules, refs = EventRules(), list[weakref.ref[_Picture]]()  # no_face: start after 3 s, end after 2 s
    kinds = [k for t in range(40) for k in _observe(rules, refs, "no_face", t * 0.25, t < 20)]
    assert kinds == ["start", "end"]
    assert _held(rules, refs) == []


def test_rules_keep_no_frame_of_a_run_that_never_started() -> None:
    rules, refs = EventRules(), list[weakref.ref[_Picture]]()
    for t in range(8):  # 2 s of no_face: less than its 3 s, then clear frames
        _observe(rules, refs, "no_face", t * 0.25, True, confidence=0.5 + t / 100)
    for t in range(8, 20):
        _observe(rules, refs, "no_face", t * 0.25, False)
    assert _held(rules, refs) == []


def test_rules_keep_only_the_open_events_peak() -> None:
    rules, refs = EventRules(), list[weakref.ref[_Picture]]()
    for t in range(30):  # 7.5 s active, the peak at 1.0 s
        _observe(rules, refs, "no_face", t * 0.25, True, confidence=0.9 if t == 4 else 0.6)
    assert _held(rules, refs) == [1.0]


def test_rules_let_go_of_frames_after_a_gap_and_of_votes_out_of_their_window() -> None:
    rules, refs = EventRules(), list[weakref.ref[_Picture]]()
    for t in range(6):  # a pending no_face run, then the stream stalls
        _observe(rules, refs, "no_face", t * 0.25, True)
    _observe(rules, refs, "phone", 0.1, True)  # two phone votes of three: no event...
    _observe(rules, refs, "phone", 1.1, True)
    assert _held(rules, refs) == [0.0, 0.1, 1.1]  # the run's peak (its first frame) and both votes' frames
    for t in range(2, 12):  # ...then clear frames for longer than the 5-s window
        _observe(rules, refs, "phone", float(t), False)
    assert _held(rules, refs) == [0.0]  # the votes left their window
    rules.tick(30.0)  # no no_face frame for far longer than its max_gap_s: the run is broken
    assert _held(rules, refs) == []


def test_rules_let_go_of_a_stopped_sources_frame() -> None:
    rules, refs = EventRules(), list[weakref.ref[_Picture]]()
    for t in range(4):
        _observe(rules, refs, "multiple_people", float(t), False, source="persons")
    rules.tick(60.0)  # the persons detector stopped (switched off): its last frame is stale
    assert _held(rules, refs) == []
