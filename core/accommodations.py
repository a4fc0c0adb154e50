"""A candidate's accommodations: detectors switched off or relaxed for them, and breaks they may take.

Staff set them per session (at creation over REST, or before the exam starts), for a candidate with a disability
or a documented need: `looking_away` off for a screen-reader user or involuntary eye movement, a longer
`no_face` delay for someone who needs to stand up, breaks for someone who needs them. They only ever make
proctoring gentler than the session's sensitivity:
- `off`: the kind raises no flag at all for this candidate;
- `min_duration_s`: the condition must last at least this long before it is a flag (applied as the longer of
  this and the session's own delay, so it can never make a kind quicker to flag);
- `weight`: at most this many score points per 10 s (applied as the lower of this and the deployment's weight);
- `breaks`: up to `count` breaks of at most `minutes` each, which the candidate starts (and may end early) from
  the exam page; no flag is raised during a break, the recording goes on, and the break is on the timeline.

Pure Python, importing only core.checked (the event kinds are spelled out below; a test keeps them equal to
core.events).

JSON form (what the REST API takes and serves, and what the `sessions.accommodations` column holds):
    {}                                                       (none: the default)
    {"detectors": {"looking_away": "off", "no_face": {"min_duration_s": 10, "weight": 1}},
     "breaks": {"count": 2, "minutes": 5}, "note": "uses a screen reader"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.checked import kind_of as _kind_of
from core.checked import num as _num
from core.checked import number as _number
from core.checked import show as _show

# core.events.FRAME_KINDS + BROWSER_KINDS + AUDIO_KINDS: the kinds a detector or the page raises
# (tests/test_accommodations.py checks they are the same).
DETECTOR_KINDS = ("no_face", "multiple_people", "looking_away", "identity_mismatch", "phone", "poor_image",
                  "tab_hidden", "window_blur", "fullscreen_exit", "second_screen", "copy_paste",
                  "screen_share_stopped", "screen_changed", "talking", "audio_muted")
MAX_DURATION_S = 600.0  # longer than this is "off" in disguise: say off
MAX_WEIGHT = 100.0
MAX_BREAKS = 10
MAX_BREAK_MINUTES = 60.0
MAX_NOTE = 500
_FIELDS = ("detectors", "breaks", "note")


@dataclass(frozen=True)
class DetectorAccommodation:
    kind: str
    off: bool = False
    min_duration_s: float | None = None  # a flag needs the condition to last at least this long
    weight: float | None = None  # score points per 10 s, at most

    def to_json(self) -> Any:
        if self.off:
            return "off"
        out: dict[str, float] = {}
        if self.min_duration_s is not None:
            out["min_duration_s"] = self.min_duration_s
        if self.weight is not None:
            out["weight"] = self.weight
        return out

    def describe(self) -> str:
        if self.off:
            return f"{self.kind} off"
        parts = []
        if self.min_duration_s is not None:
            parts.append(f"after {_num(self.min_duration_s)} s at least")
        if self.weight is not None:
            parts.append(f"weight {_num(self.weight)} at most")
        return f"{self.kind} " + ", ".join(parts)


@dataclass(frozen=True)
class Accommodations:
    """Build it with `parse`; `parse(a.to_json()) == a`."""

    detectors: tuple[DetectorAccommodation, ...] = ()  # sorted by kind
    breaks: int = 0
    break_minutes: float = 0.0
    note: str = ""

    @property
    def off_kinds(self) -> frozenset[str]:
        return frozenset(d.kind for d in self.detectors if d.off)

    def min_durations(self) -> dict[str, float]:
        """kind -> the shortest time its condition must last before it is a flag."""
        return {d.kind: d.min_duration_s for d in self.detectors if d.min_duration_s is not None and not d.off}

    def weights(self) -> dict[str, float]:
        """kind -> the highest score weight it may have (off kinds: 0, they raise nothing anyway)."""
        return {d.kind: 0.0 if d.off or d.weight is None else d.weight for d in self.detectors
                if d.off or d.weight is not None}

    @property
    def empty(self) -> bool:
        return not self.detectors and not self.breaks and not self.note

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.detectors:
            out["detectors"] = {d.kind: d.to_json() for d in self.detectors}
        if self.breaks:
            out["breaks"] = {"count": self.breaks, "minutes": self.break_minutes}
        if self.note:
            out["note"] = self.note
        return out

    def describe(self) -> str:
        """One line for people: "looking_away off; no_face after 10 s at least; 2 breaks of up to 5 min"."""
        parts = [d.describe() for d in self.detectors]
        if self.breaks:
            parts.append(f"{self.breaks} break{'s' if self.breaks > 1 else ''} of up to {_num(self.break_minutes)} min")
        if self.note:
            parts.append(f"note: {self.note}")
        return "; ".join(parts) if parts else "none"

    @classmethod
    def parse(cls, value: Any) -> Accommodations:
        """From the JSON form (None: none); ValueError says exactly what is wrong and where."""
        if value is None:
            return NONE
        if not isinstance(value, dict):
            raise ValueError(f"expected an object with \"detectors\", \"breaks\", \"note\"; got {_kind_of(value)}")
        unknown = [key for key in value if key not in _FIELDS]
        if unknown:
            raise ValueError(f"unknown field {_show(unknown[0])}; expected \"detectors\", \"breaks\", \"note\"")
        detectors = _detectors(value.get("detectors", {}))
        count, minutes = _breaks(value.get("breaks"))
        note = _note(value.get("note", ""))
        return cls(detectors, count, minutes, note)


NONE = Accommodations()


def _detectors(value: Any) -> tuple[DetectorAccommodation, ...]:
    if not isinstance(value, dict):
        raise ValueError(f"detectors: expected an object {{kind: \"off\" | {{...}}}}, got {_kind_of(value)}")
    out = []
    for kind, rule in value.items():
        if kind not in DETECTOR_KINDS:
            raise ValueError(f"detectors: unknown kind {_show(kind)}; expected one of {', '.join(DETECTOR_KINDS)}")
        if rule == "off" or rule is False:
            out.append(DetectorAccommodation(kind, off=True))
            continue
        if not isinstance(rule, dict):
            raise ValueError(f"detectors.{kind}: expected \"off\" or an object with \"min_duration_s\", \"weight\"; "
                             f"got {_kind_of(rule)}")
        extra = [key for key in rule if key not in ("min_duration_s", "weight")]
        if extra:
            raise ValueError(f"detectors.{kind}: unknown field {_show(extra[0])}; expected \"min_duration_s\", "
                             "\"weight\" (or \"off\" instead of an object)")
        if not rule:
            raise ValueError(f"detectors.{kind}: give \"min_duration_s\" and/or \"weight\", or \"off\"")
        duration = _number(f"detectors.{kind}.min_duration_s", rule["min_duration_s"], 0.0, MAX_DURATION_S) \
            if "min_duration_s" in rule else None
        weight = _number(f"detectors.{kind}.weight", rule["weight"], 0.0, MAX_WEIGHT) if "weight" in rule else None
        out.append(DetectorAccommodation(kind, min_duration_s=duration, weight=weight))
    return tuple(sorted(out, key=lambda d: d.kind))


def _breaks(value: Any) -> tuple[int, float]:
    if value is None:
        return 0, 0.0
    if not isinstance(value, dict):
        raise ValueError(f"breaks: expected an object {{\"count\": n, \"minutes\": m}}, got {_kind_of(value)}")
    extra = [key for key in value if key not in ("count", "minutes")]
    if extra:
        raise ValueError(f"breaks: unknown field {_show(extra[0])}; expected \"count\", \"minutes\"")
    if "count" not in value or "minutes" not in value:
        raise ValueError("breaks: both \"count\" and \"minutes\" are needed")
    count = _number("breaks.count", value["count"], 0, MAX_BREAKS)
    if count != int(count):
        raise ValueError(f"breaks.count: expected a whole number, got {_num(count)}")
    if count == 0:
        return 0, 0.0
    return int(count), _number("breaks.minutes", value["minutes"], 1.0, MAX_BREAK_MINUTES)


def _note(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"note: expected text, got {_kind_of(value)}")
    if len(value) > MAX_NOTE:
        raise ValueError(f"note: at most {MAX_NOTE} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError("note: contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("note: contains an unpaired surrogate") from None
    return value.strip()
