"""How strict one exam's proctoring is: a named profile (strict, standard, lenient) or explicit overrides.

A session carries one `Sensitivity`, chosen by staff when they create it. It changes two things on the media
node, for that session only:
- the hysteresis delays of core.rules (how long a condition must last before it is a flag, and how long it must
  be gone before the flag ends), per event kind, applied with `RulesConfig.with_timing`;
- the detector thresholds that exist as deployment settings (face score, gaze angles, phone score, identity
  distance); a threshold the sensitivity leaves out is the deployment's setting.

`standard` is the deployment's settings unchanged. `strict` and `lenient` are absolute values (not relative to
EVENT_TIMING), so a profile means the same on every deployment. Staff may add overrides on top of a named
profile, or give only overrides (`custom`). Pure Python: the settings object it applies to lives in
analyzers.base (`apply_sensitivity`), the domain imports nothing of ours.

JSON form (what the REST API takes and serves, and what the `sessions.sensitivity` column holds):
    "strict"
    {"profile": "strict", "timing": {"phone": [1, 3]}, "thresholds": {"gaze_yaw_deg": 30}}
    {"timing": "phone=1/3,no_face=5/2"}        (EVENT_TIMING's syntax; no profile given: custom)
    {"profile": "standard", "audio_flags": false}  (the exam's audio flags off: talking and audio_muted are never
                                                    raised, the audio is still recorded)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.checked import kind_of as _kind_of
from core.checked import num as _num
from core.checked import number as _number
from core.checked import show as _show
from core.events import AUDIO_KINDS, BROWSER_KINDS, FRAME_KINDS
from core.rules import RulesConfig, parse_event_timing

NAMED_PROFILES = ("strict", "standard", "lenient")
PROFILES = (*NAMED_PROFILES, "custom")
# A delay longer than this is a detector switched off in disguise; say so rather than store it.
MAX_DELAY_S = 600.0
# The EVENT_TIMING-style string form is a few dozen characters; anything far longer is not a timing.
MAX_TIMING_TEXT = 1000

# Kinds whose delays can be set: the frame and browser kinds with start/end delays. Instant kinds (copy/paste)
# start and end at once, so a delay there would be accepted and silently mean nothing.
_DEFAULT_RULES = RulesConfig.default().rules
TIMED_KINDS = tuple(kind for kind, rule in _DEFAULT_RULES.items()
                    if kind in (*FRAME_KINDS, *BROWSER_KINDS, *AUDIO_KINDS) and not rule.instant)
INSTANT_KINDS = tuple(kind for kind, rule in _DEFAULT_RULES.items() if rule.instant)

# Detector thresholds a session may set: proctor.settings field name -> (lowest, highest) accepted value.
# The lower bounds are the settings' own; the upper bounds are where the value stops meaning anything.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "face_min_score": (0.0, 1.0),  # detector score that counts as a face
    "gaze_yaw_deg": (1.0, 90.0),  # head turn from the baseline that is looking away
    "gaze_pitch_deg": (1.0, 90.0),  # head tilt up/down from the baseline
    "phone_conf": (0.01, 1.0),  # "cell phone" score that counts
    # Embedding distance above which the face is another person; 0: DeepFace's tuned value for the model and
    # metric. Distances run to ~25 (Facenet512, euclidean), so 100 is far above any model's.
    "identity_threshold": (0.0, 100.0),
}

# The named profiles as data. Reference points (core.rules defaults / settings defaults): no_face 3 s,
# multiple_people 2 s, looking_away 4 s, phone 1 s, poor_image 5 s, tab_hidden 1 s, window_blur 2 s,
# fullscreen_exit 1 s; gaze yaw 30 deg, pitch 25 deg. Ends stay at 2 s for frame kinds (a flag closes as fast as
# in standard) except where lenient gives a little more slack to avoid flapping.
#
# strict: high-stakes exams (certification, finals) where a brief lapse must reach a reviewer; still not so short
# that ordinary movement flags (every start needs several samples: faces 4 fps, gaze 2 fps, phone 1 fps).
# - no_face 2 s: bending out of view to pick something up; a sneeze or a camera bump (< 1 s) stays quiet.
# - multiple_people 1 s: a second face for a second is already worth a look; 4 samples guard a single false box.
# - looking_away 2.5 s: a glance at notes is 1-2 s; reading them takes longer (5 gaze samples).
# - phone 0.5 s: phones vote (core/rules.py: 3 positive samples within 5 s, i.e. at least 2 s apart at PHONE_FPS
#   1), so strict is no quicker than standard there; a single (weak-model) detection never flags alone.
# - poor_image 3 s, tab_hidden 0.5 s, fullscreen_exit 0.5 s, window_blur 1 s: leaving the exam page is
#   the cheapest way to cheat and has no innocent duration worth waiting for.
# - gaze 22 deg yaw / 20 deg pitch: the edges of a laptop screen at 50 cm are within ~17 deg of its centre, so
#   reading the screen stays clear while a look at a desk or a second monitor beside it does not.
# lenient: open-book quizzes, practice runs, candidates who need to move (accessibility, home settings):
# - no_face 8 s, looking_away 8 s: stretching, adjusting the camera, thinking with eyes off the screen.
# - multiple_people 3 s: someone walking past behind the candidate at home.
# - phone 4 s: its 3 votes must span 4 s of the 5-s window (the phone model is weak on phone-like objects);
#   poor_image 10 s: lighting at home changes.
# - tab_hidden 3 s, window_blur 5 s, fullscreen_exit 3 s: OS notifications, low-battery and permission dialogs
#   steal focus for a few seconds; ends get 1 s so one dialog is one flag, not several.
# - gaze 40 deg yaw / 32 deg pitch: a large or second-row screen, a candidate sitting at an angle.
# Identity, face score and phone score thresholds are left to the deployment in every profile: they are
# calibrations of the deployment's models (IDENTITY_MODEL, PHONE_MODEL_PATH), not of an exam's rules.
PROFILE_TIMING: dict[str, dict[str, tuple[float, float]]] = {
    "standard": {},
    "strict": {
        "no_face": (2.0, 2.0), "multiple_people": (1.0, 2.0), "looking_away": (2.5, 2.0), "phone": (0.5, 2.0),
        "poor_image": (3.0, 2.0), "tab_hidden": (0.5, 0.5), "window_blur": (1.0, 0.5),
        "fullscreen_exit": (0.5, 0.5),
    },
    "lenient": {
        "no_face": (8.0, 2.0), "multiple_people": (3.0, 2.0), "looking_away": (8.0, 3.0), "phone": (4.0, 2.0),
        "poor_image": (10.0, 3.0), "tab_hidden": (3.0, 1.0), "window_blur": (5.0, 1.0),
        "fullscreen_exit": (3.0, 1.0),
    },
    "custom": {},
}
PROFILE_THRESHOLDS: dict[str, dict[str, float]] = {
    "standard": {},
    "strict": {"gaze_yaw_deg": 22.0, "gaze_pitch_deg": 20.0},
    "lenient": {"gaze_yaw_deg": 40.0, "gaze_pitch_deg": 32.0},
    "custom": {},
}


@dataclass(frozen=True)
class Sensitivity:
    """A profile plus the overrides staff gave explicitly (sorted tuples: equal values compare equal, and the
    object is hashable). Build it with `parse`; `timing()` and `thresholds()` are what applies."""

    profile: str = "standard"
    timing_overrides: tuple[tuple[str, float, float], ...] = ()  # (kind, start_after_s, end_after_s)
    threshold_overrides: tuple[tuple[str, float], ...] = ()  # (settings field, value)
    # Off: the voice detector does not run for this exam (an oral exam, a language test, a noisy test centre);
    # the microphone is still recorded with the video.
    audio_flags: bool = True

    def timing(self) -> dict[str, tuple[float, float]]:
        """kind -> (start_after_s, end_after_s) to lay over the deployment's rules: the profile's, then the
        overrides."""
        return {**PROFILE_TIMING[self.profile], **{kind: (start, end) for kind, start, end in self.timing_overrides}}

    def thresholds(self) -> dict[str, float]:
        """settings field -> value to replace in the deployment's settings; fields left out stay as they are."""
        return {**PROFILE_THRESHOLDS[self.profile], **dict(self.threshold_overrides)}

    def to_json(self) -> dict[str, Any]:
        """The stored and served form; `Sensitivity.parse(s.to_json()) == s`."""
        out: dict[str, Any] = {"profile": self.profile}
        if self.timing_overrides:
            out["timing"] = {kind: [start, end] for kind, start, end in self.timing_overrides}
        if self.threshold_overrides:
            out["thresholds"] = dict(self.threshold_overrides)
        if not self.audio_flags:
            out["audio_flags"] = False
        return out

    def describe(self) -> str:
        """One line for people: "strict", "lenient + phone 1/3 s, gaze_yaw_deg 30"."""
        parts = [f"{kind} {_num(start)}/{_num(end)} s" for kind, start, end in self.timing_overrides]
        parts += [f"{name} {_num(value)}" for name, value in self.threshold_overrides]
        if not self.audio_flags:
            parts.append("audio flags off")
        return self.profile + (" + " + ", ".join(parts) if parts else "")

    @classmethod
    def parse(cls, value: Any) -> Sensitivity:
        """From the JSON form (see the module doc); ValueError says exactly what is wrong and where."""
        if isinstance(value, str):
            return cls(profile=_profile(value, has_overrides=False))
        if not isinstance(value, dict):
            raise ValueError(f"expected a profile name ({', '.join(NAMED_PROFILES)}) or an object with "
                             f"\"profile\", \"timing\", \"thresholds\"; got {_kind_of(value)}")
        unknown = [key for key in value if key not in ("profile", "timing", "thresholds", "audio_flags")]
        if unknown:
            raise ValueError(f"unknown field {_show(unknown[0])}; expected \"profile\", \"timing\", \"thresholds\", "
                             f"\"audio_flags\"")
        audio_flags = value.get("audio_flags", True)
        if not isinstance(audio_flags, bool):
            raise ValueError(f"audio_flags: expected true or false, got {_kind_of(audio_flags)}")
        timing = _timing(value["timing"]) if "timing" in value else {}
        thresholds = _thresholds(value["thresholds"]) if "thresholds" in value else {}
        has_overrides = bool(timing or thresholds)
        if "profile" in value:
            profile = _profile(value["profile"], has_overrides=has_overrides)
        else:
            profile = "custom" if has_overrides else "standard"
        return cls(profile, tuple(sorted((k, s, e) for k, (s, e) in timing.items())), tuple(sorted(thresholds.items())),
                   audio_flags)


STANDARD = Sensitivity()


def _profile(value: Any, *, has_overrides: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"profile: expected one of {', '.join(PROFILES)}, got {_kind_of(value)}")
    if value not in PROFILES:
        raise ValueError(f"unknown profile {_show(value)}; expected one of {', '.join(PROFILES)}")
    if value == "custom" and not has_overrides:
        raise ValueError("profile \"custom\" needs \"timing\" or \"thresholds\"; \"standard\" is the deployment's "
                         "settings")
    return value


def _timing(value: Any) -> dict[str, tuple[float, float]]:
    """{"kind": [start, end], ...}, or EVENT_TIMING's "kind=start/end,..." string."""
    if isinstance(value, str):
        if len(value) > MAX_TIMING_TEXT:
            raise ValueError(f"timing: text longer than {MAX_TIMING_TEXT} characters")
        try:
            pairs: Mapping[str, Any] = parse_event_timing(value)
        except ValueError as exc:
            raise ValueError(f"timing: {exc}") from None
    elif isinstance(value, dict):
        pairs = value
    else:
        raise ValueError(f"timing: expected an object {{kind: [start_after_s, end_after_s]}}, got {_kind_of(value)}")
    out: dict[str, tuple[float, float]] = {}
    for kind, pair in pairs.items():
        if kind in INSTANT_KINDS:
            raise ValueError(f"timing: {kind} is instant (it starts and ends at once): it has no delays to set")
        if kind not in TIMED_KINDS:
            raise ValueError(f"timing: unknown event kind {_show(kind)}; expected one of {', '.join(TIMED_KINDS)}")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"timing.{kind}: expected [start_after_s, end_after_s], got {_kind_of(pair)}")
        out[kind] = (_number(f"timing.{kind} start", pair[0], 0.0, MAX_DELAY_S),
                     _number(f"timing.{kind} end", pair[1], 0.0, MAX_DELAY_S))
    return out


def _thresholds(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"thresholds: expected an object {{name: number}}, got {_kind_of(value)}")
    out: dict[str, float] = {}
    for name, number in value.items():
        if name not in THRESHOLDS:
            raise ValueError(f"thresholds: unknown threshold {_show(name)}; expected one of {', '.join(THRESHOLDS)}")
        lo, hi = THRESHOLDS[name]
        out[name] = _number(f"thresholds.{name}", number, lo, hi)
    return out
