"""From per-frame signals to events: per-kind hysteresis, on the session media timeline. Pure Python.

For each kind an event
- STARTS once the condition has held continuously for `start_after_s` (and for at least `min_active_frames`
  observations); its `start_s` is the media time of the FIRST frame of that run, not of the confirming frame;
- is UPDATED when its confidence reaches a new peak (by at least `RulesConfig.update_step`); the peak's
  `frame_ref` (whatever the caller passes, e.g. the frame whose JPEG becomes the evidence) travels with it;
- ENDS once the condition has been clear for `end_after_s` (and `min_clear_frames` observations); its `end_s`
  is the media time of the first clear frame of that clear run.

A weak per-frame detector flickers, so a kind may VOTE instead (`votes` > 0): its event starts once at least
`votes` active observations fall within the last `vote_window_s` (clear frames in between do not reset them) and
the first of those is at least `start_after_s` before the confirming one; `start_s` is the first of those votes.
It ends as any other: after `end_after_s` clear.

Several detectors may feed one kind at different rates (multiple_people: face counts at 4 fps, person boxes at
1 fps). Their observations would fight over one track, so `update(..., source=...)` keeps each source's latest
observation and feeds the track with their OR: the kind is active while any source whose latest observation is
recent (within max_gap_s) says so; the confidence, details and frame are the strongest active source's, and
the details name the sources that saw it ("sources"). An observation a little behind another source's is
applied at the track's present (the timeline only moves forward). A kind whose only detector passes no source
behaves exactly as before.

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

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.events import AUDIO_KINDS, BROWSER_KINDS, FRAME_KINDS

EPS = 1e-6
UNNAMED_SOURCE = "default"  # how event details name the observations that came without a source


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
    # > 0: start on this many active observations within vote_window_s, not on a continuous run (frame kinds).
    votes: int = 0
    vote_window_s: float = 0.0




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
            # A weak per-frame detector (the bundled NanoDet misses phones and sees phone-shaped objects now and
            # then): 3 positive samples within 5 s (of 5 at PHONE_FPS 1) start it, a lone hit or two never do.
            # With the adaptive cadence (analyzers/phone.py) a stream is scanned every ~3 s, but the first positive
            # scan starts a burst at PHONE_FPS that lasts while the phone is seen, so the votes come at that rate
            # and start_s is still the first positive frame; a lone scan's vote expires with its window. Between
            # clear scans the gaps exceed max_gap_s, which breaks nothing: no vote is pending and no event open
            # then (the burst outlasts the vote window and, at this end_after_s, the end).
            "phone": KindRule(1.0, 2.0, votes=3, vote_window_s=5.0),
            # A dark, blurred or covered picture: told to the candidate at once, flagged when it lasts.
            "poor_image": KindRule(5.0, 2.0),
            "tab_hidden": KindRule(1.0, 0.5, latched=True),
            "window_blur": KindRule(2.0, 0.5, latched=True),
            "fullscreen_exit": KindRule(1.0, 0.5, latched=True),
            "second_screen": KindRule(0.0, 0.0, latched=True),
            "copy_paste": KindRule(0.0, 0.0, instant=True, merge_within_s=10.0),
            # Voice (analyzers/voice.py observes every 0.256 s): 8 voiced steps (~2 s of speech) within 4 s, the
            # first at least 1.5 s before the confirming one, so a cough, a word or a laugh never flags while the
            # pauses between a speaker's words do not reset it; a pause under 2 s does not end it.
            "talking": KindRule(1.5, 2.0, votes=8, vote_window_s=4.0, max_gap_s=2.0),
            # Muted or silent microphone (observed every 0.5 s, and while no audio comes at all).
            "audio_muted": KindRule(30.0, 1.0, max_gap_s=3.0),
            # Starts at once (the time the share stopped is what a reviewer seeks to); ends only when the media
            # node sees screen frames again (screen_share_resumed is the node's, never the page's).
            "screen_share_stopped": KindRule(0.0, 0.0, latched=True),
            "screen_changed": KindRule(0.0, 0.0, instant=True, merge_within_s=10.0),
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

    def relaxed(self, min_start: Mapping[str, float]) -> RulesConfig:
        """A candidate's accommodations (core.accommodations): each named kind waits at least this long before it
        starts, never less than it already did (relaxing only ever makes a flag slower to come)."""
        rules = dict(self.rules)
        for kind, seconds in min_start.items():
            if kind in rules:
                rules[kind] = replace(rules[kind], start_after_s=max(rules[kind].start_after_s, float(seconds)))
        return replace(self, rules=rules)


def parse_event_timing(raw: str) -> dict[str, tuple[float, float]]:
    """ "no_face=5/2, phone=1/3" -> {"no_face": (5.0, 2.0), "phone": (1.0, 3.0)}; ValueError names the bad part."""
    known = set(FRAME_KINDS) | set(BROWSER_KINDS) | set(AUDIO_KINDS)
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
class _Seen:
    """One observation: a source's latest, or a vote."""

    t: float
    active: bool
    confidence: float
    details: dict[str, Any]
    frame_ref: Any


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
    # pending votes (voting kinds, no event open yet): their times, and the candidates for the window's peak
    # (confidence strictly decreasing, so only frames that may still become the evidence are held)
    votes: deque[float] = field(default_factory=deque)
    vote_peaks: deque[_Seen] = field(default_factory=deque)
    # each source's latest observation (kinds fed by several detectors); "" is the unnamed source
    sources: dict[str, _Seen] = field(default_factory=dict)
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
               details: dict[str, Any] | None = None, frame_ref: Any = None,
               source: str | None = None) -> list[EventChange]:
        """One observation of `kind` at `media_time_s`; `source` names the detector when several feed the kind."""
        rule = self._rule(kind)
        details = dict(details or {})
        t = float(media_time_s)
        if rule.instant:
            return self._instant(kind, rule, t, float(confidence), details, frame_ref) if active else []
        tr = self._tracks.setdefault(kind, _Track())
        observed = _Seen(t, bool(active), float(confidence), details, frame_ref)
        seen: _Seen | None = observed
        if source is not None or tr.sources:
            seen = self._combine(rule, tr, source or "", observed)
        elif tr.last_t is not None and t < tr.last_t:
            seen = None  # out of order: the timeline only moves forward
        if seen is None:
            return []
        t = seen.t
        changes: list[EventChange] = []
        if rule.latched:
            changes += self._advance(kind, rule, tr, t)
        elif tr.last_t is not None and t - tr.last_t > rule.max_gap_s + EPS:
            changes += self._break(kind, tr)
        changes += self._observe(kind, rule, tr, seen.active, seen.confidence, t, seen.details, seen.frame_ref)
        tr.last_t = t
        tr.active = seen.active
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
            elif t - tr.last_t > rule.max_gap_s + EPS:
                if tr.open or tr.run_start is not None or tr.votes:
                    changes += self._break(kind, tr)
                # Every source's latest is older than last_t, so stale now: let go of their frames (a detector
                # that stopped, e.g. switched off mid-exam, would otherwise keep its last one for good).
                tr.sources.clear()
        return changes

    @staticmethod
    def _combine(rule: KindRule, tr: _Track, key: str, seen: _Seen) -> _Seen | None:
        """Record `seen` as its source's latest and return what the track observes now: the OR of the sources
        whose latest observation is recent. None: older than its own source's latest (out of order)."""
        previous = tr.sources.get(key)
        if previous is not None and seen.t < previous.t:
            return None
        # Another source may be ahead (a slower detector finishes later): its news applies from the present.
        now = max(seen.t, tr.last_t if tr.last_t is not None else seen.t)
        tr.sources[key] = seen
        # Stale sources say nothing any more; dropping them also lets go of their frames.
        tr.sources = {name: s for name, s in tr.sources.items() if now - s.t <= rule.max_gap_s + EPS}
        on = {name: s for name, s in sorted(tr.sources.items()) if s.active}
        if not on:
            return replace(seen, t=now, active=False)
        # The strongest active source speaks for the kind (on a tie, the one just observed: its frame is newest).
        best = max(on, key=lambda name: (on[name].confidence, name == key))
        details: dict[str, Any] = {**on[best].details, "sources": [name or UNNAMED_SOURCE for name in on]}
        if len(on) > 1:
            details["by_source"] = {name or UNNAMED_SOURCE: s.details for name, s in on.items()}
        return _Seen(now, True, on[best].confidence, details, on[best].frame_ref)

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
        if isinstance(message.get("reason"), str):  # screen signals: why (ended, muted, no_frames, surface, ...)
            details["reason"] = message["reason"][:40]
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
            if rule.votes > 0:
                return self._vote(kind, rule, tr, _Seen(t, True, confidence, details, frame_ref))
            if tr.run_start is None:
                tr.run_start = t  # the rest of a run's state was reset with the last one (_drop_run)
            tr.run_frames += 1
            if confidence > tr.run_peak:
                tr.run_peak, tr.run_details, tr.run_ref = confidence, details, frame_ref
            return self._maybe_start(kind, rule, tr, t)
        # A clear frame breaks a pending run (flicker never starts); pending votes only expire with time.
        _drop_run(tr)
        if tr.votes:
            _expire_votes(tr, t - rule.vote_window_s - EPS)
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
        change = self._open(kind, tr, tr.run_start, tr.run_peak, tr.run_details, tr.run_ref)
        _drop_run(tr)
        return [change]

    def _vote(self, kind: str, rule: KindRule, tr: _Track, vote: _Seen) -> list[EventChange]:
        """Voting kinds: one more active observation; start once enough of them fall within the window."""
        tr.votes.append(vote.t)
        while tr.vote_peaks and tr.vote_peaks[-1].confidence < vote.confidence:
            tr.vote_peaks.pop()  # weaker and older: never the window's peak while this vote is in it
        tr.vote_peaks.append(vote)
        _expire_votes(tr, vote.t - rule.vote_window_s - EPS)
        if len(tr.votes) < rule.votes or vote.t - tr.votes[0] < rule.start_after_s - EPS:
            return []
        peak = tr.vote_peaks[0]
        change = self._open(kind, tr, tr.votes[0], peak.confidence, peak.details, peak.frame_ref)
        tr.votes.clear()
        tr.vote_peaks.clear()
        return [change]

    def _open(self, kind: str, tr: _Track, start_s: float, peak: float, details: dict[str, Any],
              frame_ref: Any) -> EventChange:
        tr.event_id = self._new_id()
        tr.start_s = start_s
        tr.peak, tr.details, tr.frame_ref = max(peak, 0.0), details, frame_ref
        return self._change("start", kind, tr, None)

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
        _drop_run(tr)
        tr.votes.clear()
        tr.vote_peaks.clear()
        tr.clear_start, tr.clear_frames = None, 0
        return changes

    def _end(self, kind: str, tr: _Track, end_s: float) -> EventChange:
        change = self._change("end", kind, tr, end_s)
        tr.start_s = None
        tr.clear_start, tr.clear_frames = None, 0
        _drop_run(tr)
        # The ended event's frame has left with its change: holding it here would keep a decoded picture (~1 MB
        # at 640x480) per stream and kind until that kind's next event, which a long exam may never bring.
        tr.peak, tr.details, tr.frame_ref = 0.0, {}, None
        return change

    @staticmethod
    def _change(kind_type: str, kind: str, tr: _Track, end_s: float | None) -> EventChange:
        assert tr.start_s is not None
        return EventChange(kind_type, kind, tr.start_s, end_s, round(tr.peak, 4), dict(tr.details), tr.frame_ref,
                           tr.event_id)


def _expire_votes(tr: _Track, oldest: float) -> None:
    """Votes (and candidate peak frames) from before `oldest` have left the window."""
    while tr.votes and tr.votes[0] < oldest:
        tr.votes.popleft()
    while tr.vote_peaks and tr.vote_peaks[0].t < oldest:
        tr.vote_peaks.popleft()


def _drop_run(tr: _Track) -> None:
    """Forget a pending run, its peak frame included (an open event keeps its own reference)."""
    tr.run_start, tr.run_frames = None, 0
    tr.run_peak, tr.run_details, tr.run_ref = -1.0, {}, None


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
    "screen_share_stopped": ("screen_share_stopped", True),
    "screen_share_resumed": ("screen_share_stopped", False),
    "screen_changed": ("screen_changed", True),
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
