"""From per-frame signals to events: per-kind hysteresis, on the session media timeline. Pure Python.

For each kind an event
- STARTS once the condition has held continuously for `start_after_s` (and for at least `min_active_frames`
  observations); its `start_s` is the media time of the FIRST frame of that run, not of the confirming frame;
- is UPDATED when its confidence reaches a new peak (by at least `RulesConfig.update_step`); the peak's
  `frame_ref` (whatever the caller passes, e.g. the frame whose JPEG becomes the evidence) travels with it;
- ENDS once the condition has been clear for `end_after_s` (and `min_clear_frames` observations); its `end_s`
  is the media time of the first clear frame of that clear run.

Frame kinds (detector signals) only know what frames tell them: when no frame arrives for `max_gap_s` the run
is broken — a pending run is dropped and an open event ends at its last evidence (the first clear frame if a
clear run had begun, else the last active frame). So a stalled stream never invents or stretches events.

Latched kinds (browser signals from the page's data channel) are state changes: a state holds until the next
message, so `tick(media_time_s)` (call it every second or so) confirms starts/ends between messages; times are
exact whatever the tick rate. Instant kinds (copy/cut/paste) are events with start_s == end_s; one that comes
within `merge_within_s` of the last of its kind extends that event instead (an update: end_s moves, details count
them), so a candidate pasting twenty times in a minute is one flag saying so, not twenty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.events import BROWSER_KINDS, FRAME_KINDS

EPS = 1e-6


@dataclass(frozen=True)
class KindRule:
    start_after_s: float
    end_after_s: float
    min_active_frames: int = 1
    min_clear_frames: int = 1
    max_gap_s: float = 3.0  # frame kinds: longer without an observation breaks the run
    latched: bool = False  # browser state: holds between messages
    instant: bool = False  # one-off: start and end at once
    merge_within_s: float = 0.0  # instant kinds: closer than this to the last one extends it (0: never)




@dataclass(frozen=True)
class RulesConfig:
    rules: Mapping[str, KindRule]
    update_step: float = 0.05  # a new peak must beat the last one by this much to be reported

    @classmethod
    def default(cls, identity_interval_s: float = 5.0) -> RulesConfig:
        return cls({
            "no_face": KindRule(3.0, 2.0),
            "multiple_people": KindRule(2.0, 2.0),
            "looking_away": KindRule(4.0, 2.0),
            # Sparse checks: two consecutive mismatches start it, two consecutive matches end it.
            "identity_mismatch": KindRule(0.0, 0.0, min_active_frames=2, min_clear_frames=2,
                                          max_gap_s=max(3.0, 3.5 * identity_interval_s)),
            "phone": KindRule(1.0, 2.0),
            # A dark, blurred or covered picture: told to the candidate at once, flagged when it lasts.
            "poor_image": KindRule(5.0, 2.0),
            "tab_hidden": KindRule(1.0, 0.5, latched=True),
            "window_blur": KindRule(2.0, 0.5, latched=True),
            "fullscreen_exit": KindRule(1.0, 0.5, latched=True),
            "second_screen": KindRule(0.0, 0.0, latched=True),
            "copy_paste": KindRule(0.0, 0.0, instant=True, merge_within_s=10.0),
        })

    def with_timing(self, timing: str | Mapping[str, tuple[float, float]]) -> RulesConfig:
        """Override start/end delays: "kind=start/end,..." (see parse_event_timing) or {kind: (start, end)}."""
        parsed = parse_event_timing(timing) if isinstance(timing, str) else dict(timing)
        rules = dict(self.rules)
        for kind, (start, end) in parsed.items():
            if kind not in rules:
                raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(rules)}")
            rules[kind] = replace(rules[kind], start_after_s=float(start), end_after_s=float(end))
        return replace(self, rules=rules)


def parse_event_timing(raw: str) -> dict[str, tuple[float, float]]:
    """ "no_face=5/2, phone=1/3" -> {"no_face": (5.0, 2.0), "phone": (1.0, 3.0)}; ValueError names the bad part."""
    known = set(FRAME_KINDS) | set(BROWSER_KINDS)
    out: dict[str, tuple[float, float]] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        start, sep2, end = value.partition("/")
        try:
            if not sep or not sep2:
                raise ValueError
            pair = (float(start), float(end))
        except ValueError:
            raise ValueError(f"expected kind=start/end (seconds), got {part!r}") from None
        if kind not in known:
            raise ValueError(f"unknown event kind {kind!r} in {part!r}; known: {', '.join(sorted(known))}")
        if pair[0] < 0 or pair[1] < 0:
            raise ValueError(f"delays must not be negative, got {part!r}")
        out[kind] = pair
    return out


@dataclass
class EventChange:
    type: str  # "start" | "update" | "end"
    kind: str
    start_s: float
    end_s: float | None
    confidence: float  # the event's peak so far
    details: dict[str, Any]  # of the peak frame (or the message)
    frame_ref: Any = None  # the peak frame's reference, for the evidence snapshot
    event_id: int = 0  # the same for every change of one event (per EventRules)


@dataclass
class _Track:
    last_t: float | None = None
    active: bool = False  # the last observed state
    # pending run (no event open yet)
    run_start: float | None = None
    run_frames: int = 0
    run_peak: float = -1.0
    run_details: dict[str, Any] = field(default_factory=dict)
    run_ref: Any = None
    # open event
    event_id: int = 0
    start_s: float | None = None
    peak: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    frame_ref: Any = None
    clear_start: float | None = None
    clear_frames: int = 0

    @property
    def open(self) -> bool:
        return self.start_s is not None


@dataclass
class _Instant:
    """The last event of an instant kind, which a close enough next one extends."""

    event_id: int
    start_s: float
    end_s: float
    peak: float
    signals: dict[str, int]

    def details(self) -> dict[str, Any]:
        first = next(iter(self.signals), None)
        return {"signal": first, "count": sum(self.signals.values()), "signals": dict(self.signals)}


class EventRules:
    """The events of one stream. Not thread-safe: one caller (the stream's analysis loop) at a time."""

    def __init__(self, config: RulesConfig | None = None) -> None:
        self.config = config or RulesConfig.default()
        self._tracks: dict[str, _Track] = {}
        self._instants: dict[str, _Instant] = {}
        self._next_id = 0

    def _rule(self, kind: str) -> KindRule:
        try:
            return self.config.rules[kind]
        except KeyError:
            raise ValueError(f"no event rule for kind {kind!r}") from None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def open_events(self) -> dict[str, float]:
        """kind -> start_s of every event open now."""
        return {kind: tr.start_s for kind, tr in self._tracks.items() if tr.start_s is not None}

    # --- public API ------------------------------------------------------------------------------------
    def update(self, kind: str, active: bool, confidence: float, media_time_s: float,
               details: dict[str, Any] | None = None, frame_ref: Any = None) -> list[EventChange]:
        rule = self._rule(kind)
        details = dict(details or {})
        t = float(media_time_s)
        if rule.instant:
            return self._instant(kind, rule, t, float(confidence), details, frame_ref) if active else []
        tr = self._tracks.setdefault(kind, _Track())
        if tr.last_t is not None and t < tr.last_t:
            return []  # out of order: the timeline only moves forward
        changes: list[EventChange] = []
        if rule.latched:
            changes += self._advance(kind, rule, tr, t)
        elif tr.last_t is not None and t - tr.last_t > rule.max_gap_s + EPS:
            changes += self._break(kind, tr)
        changes += self._observe(kind, rule, tr, bool(active), float(confidence), t, details, frame_ref)
        tr.last_t = t
        tr.active = bool(active)
        return changes

    def tick(self, media_time_s: float) -> list[EventChange]:
        """Time passes without observations: confirm latched states held until now, and break the runs of frame
        kinds whose frames stopped more than max_gap_s ago."""
        t = float(media_time_s)
        changes: list[EventChange] = []
        for kind, tr in self._tracks.items():
            if tr.last_t is None or t < tr.last_t:
                continue
            rule = self._rule(kind)
            if rule.latched:
                changes += self._advance(kind, rule, tr, t)
            elif t - tr.last_t > rule.max_gap_s + EPS and (tr.open or tr.run_start is not None):
                changes += self._break(kind, tr)
        return changes

    def _instant(self, kind: str, rule: KindRule, t: float, confidence: float, details: dict[str, Any],
                 frame_ref: Any) -> list[EventChange]:
        signal = str(details.get("signal") or kind)
        last = self._instants.get(kind)
        if last is not None and abs(t - last.end_s) <= rule.merge_within_s + EPS and rule.merge_within_s > 0:
            last.end_s = max(last.end_s, t)
            last.peak = max(last.peak, confidence)
            last.signals[signal] = last.signals.get(signal, 0) + 1
            return [EventChange("update", kind, last.start_s, last.end_s, last.peak, {**details, **last.details()},
                                frame_ref, last.event_id)]
        last = self._instants[kind] = _Instant(self._new_id(), t, t, confidence, {signal: 1})
        merged = {**details, **last.details()}
        return [EventChange(kind_type, kind, t, t, confidence, merged, frame_ref, last.event_id)
                for kind_type in ("start", "end")]

    def extends_ended(self, kind: str) -> bool:
        """Whether a later change may extend an event of `kind` after its end (merged instants): the caller
        keeps that event's id for it."""
        return self._rule(kind).merge_within_s > 0

    def flush(self, media_time_s: float) -> list[EventChange]:
        """The stream ended at `media_time_s`: end every open event (pending runs that never qualified vanish)."""
        t = float(media_time_s)
        changes: list[EventChange] = []
        for kind, tr in self._tracks.items():
            rule = self._rule(kind)
            if tr.last_t is not None and t >= tr.last_t:
                if rule.latched:
                    changes += self._advance(kind, rule, tr, t)
                elif t - tr.last_t > rule.max_gap_s + EPS:
                    changes += self._break(kind, tr)
            if tr.open:
                assert tr.start_s is not None
                end = tr.clear_start if tr.clear_start is not None else max(t, tr.start_s)
                changes.append(self._end(kind, tr, end))
        self._tracks.clear()
        self._instants.clear()
        return changes

    def browser_signal(self, message: dict[str, Any], media_time_s: float) -> list[EventChange]:
        """A message from the page's data channel ({"type": ...}); messages that are not signals are ignored."""
        condition = browser_signal_to_condition(message)
        if condition is None:
            return []
        kind, active = condition
        details: dict[str, Any] = {"signal": message.get("type")}
        if "screen_extended" in message:
            details["screen_extended"] = message["screen_extended"]
        return self.update(kind, active, 1.0, media_time_s, details)

    # --- the state machine -----------------------------------------------------------------------------
    def _observe(self, kind: str, rule: KindRule, tr: _Track, active: bool, confidence: float, t: float,
                 details: dict[str, Any], frame_ref: Any) -> list[EventChange]:
        if active:
            tr.clear_start, tr.clear_frames = None, 0
            if tr.open:
                if confidence > tr.peak and confidence >= tr.peak + self.config.update_step - EPS:
                    tr.peak, tr.details, tr.frame_ref = confidence, details, frame_ref
                    return [self._change("update", kind, tr, None)]
                return []
            if tr.run_start is None:
                tr.run_start, tr.run_frames, tr.run_peak = t, 0, -1.0
            tr.run_frames += 1
            if confidence > tr.run_peak:
                tr.run_peak, tr.run_details, tr.run_ref = confidence, details, frame_ref
            return self._maybe_start(kind, rule, tr, t)
        tr.run_start, tr.run_frames = None, 0  # a clear frame breaks a pending run: flicker never starts
        if not tr.open:
            return []
        if tr.clear_start is None:
            tr.clear_start, tr.clear_frames = t, 0
        tr.clear_frames += 1
        return self._maybe_end(kind, rule, tr, t)

    def _advance(self, kind: str, rule: KindRule, tr: _Track, t: float) -> list[EventChange]:
        """Latched kinds: the last observed state held until t."""
        if tr.active and not tr.open and tr.run_start is not None:
            return self._maybe_start(kind, rule, tr, t)
        if not tr.active and tr.open and tr.clear_start is not None:
            return self._maybe_end(kind, rule, tr, t)
        return []

    def _maybe_start(self, kind: str, rule: KindRule, tr: _Track, t: float) -> list[EventChange]:
        assert tr.run_start is not None
        if t - tr.run_start < rule.start_after_s - EPS or tr.run_frames < rule.min_active_frames:
            return []
        tr.event_id = self._new_id()
        tr.start_s = tr.run_start
        tr.peak, tr.details, tr.frame_ref = max(tr.run_peak, 0.0), tr.run_details, tr.run_ref
        tr.run_start, tr.run_frames = None, 0
        return [self._change("start", kind, tr, None)]

    def _maybe_end(self, kind: str, rule: KindRule, tr: _Track, t: float) -> list[EventChange]:
        assert tr.clear_start is not None
        if t - tr.clear_start < rule.end_after_s - EPS or tr.clear_frames < rule.min_clear_frames:
            return []
        return [self._end(kind, tr, tr.clear_start)]

    def _break(self, kind: str, tr: _Track) -> list[EventChange]:
        """No observations for too long: drop a pending run; end an open event at its last evidence."""
        changes = []
        if tr.open:
            assert tr.last_t is not None
            changes.append(self._end(kind, tr, tr.clear_start if tr.clear_start is not None else tr.last_t))
        tr.run_start, tr.run_frames = None, 0
        tr.clear_start, tr.clear_frames = None, 0
        return changes

    def _end(self, kind: str, tr: _Track, end_s: float) -> EventChange:
        change = self._change("end", kind, tr, end_s)
        tr.start_s = None
        tr.clear_start, tr.clear_frames = None, 0
        tr.run_start, tr.run_frames = None, 0
        return change

    @staticmethod
    def _change(kind_type: str, kind: str, tr: _Track, end_s: float | None) -> EventChange:
        assert tr.start_s is not None
        return EventChange(kind_type, kind, tr.start_s, end_s, round(tr.peak, 4), dict(tr.details), tr.frame_ref,
                           tr.event_id)


_BROWSER = {
    "tab_hidden": ("tab_hidden", True),
    "tab_visible": ("tab_hidden", False),
    "window_blur": ("window_blur", True),
    "window_focus": ("window_blur", False),
    "fullscreen_exit": ("fullscreen_exit", True),
    "fullscreen_enter": ("fullscreen_exit", False),
    "copy": ("copy_paste", True),
    "cut": ("copy_paste", True),
    "paste": ("copy_paste", True),
}


def browser_signal_to_condition(message: dict[str, Any]) -> tuple[str, bool] | None:
    """The page's data-channel message -> (event kind, condition active), or None if it is no signal.

    {"type": "hello" | "screen_change", "screen_extended": true/false/null} reports a second screen (null:
    the browser cannot tell -> None)."""
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind in ("hello", "screen_change"):
        extended = message.get("screen_extended")
        return ("second_screen", extended) if isinstance(extended, bool) else None
    return _BROWSER.get(kind) if isinstance(kind, str) else None
