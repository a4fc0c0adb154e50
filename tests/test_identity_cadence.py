"""The identity check's adaptive cadence (issue 14; analyzers/identity.py IdentityCadence, IDENTITY_STABLE_INTERVAL_S):
the real faces detector, the real identity detector (mediapipe, the Dlib+FaceRes embedding in its own process) and
the real identity_mismatch rule, on real photos delivered as a media node delivers frames: the sampler's due check
at each detector's fps on the 7.5 fps grid of a VP8 base layer, `wants` at delivery, the faces detector's signals
passed to the identity detector's `hint` after its analysis (analyzers/live.py).

Photos: scikit-image's astronaut as the candidate (the reference photo and the live frames, tests/support/media.py
face_canvas), Grace Hopper (matplotlib) as someone else framed the same way, scikit-image's coffee as the empty room.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analyzers.base import Detector, Signal, rules_config
from analyzers.faces import FaceDetector
from analyzers.identity import CADENCE_JITTER, ENROL_MAX_FRAMES, ENROL_WINDOW_S, WAKE_FPS, IdentityDetector
from core.rules import EventChange, EventRules
from proctor.settings import Settings
from tests.support.media import empty_room, face_canvas, noisy_copies, other_person_canvas

BASE_FPS = 7.5
GRID = 1 / BASE_FPS
INTERVAL = 5.0  # IDENTITY_INTERVAL_S's default
STABLE = 30.0  # IDENTITY_STABLE_INTERVAL_S's default
# A check due at a frame the sampler offers: the next offered frame (WAKE_FPS) or base-layer frame after it.
SLACK = 1 / WAKE_FPS + GRID


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    face = face_canvas()
    dark = np.ascontiguousarray((face.astype(np.float32) * 0.12).astype(np.uint8))
    return {"A": noisy_copies(face), "B": noisy_copies(other_person_canvas(), seed=1),
            "empty": noisy_copies(empty_room(), seed=2),
            "A moved": noisy_copies(np.roll(face, 170, axis=1), seed=3), "dark": noisy_copies(dark, seed=4)}


@pytest.fixture(scope="module")
def settings(models_home: Path) -> Settings:
    return Settings.defaults(deepface_home=str(models_home))


@dataclass
class Run:
    checks: list[float] = field(default_factory=list)  # frames the identity detector analysed
    outcomes: list[bool | None] = field(default_factory=list)  # mismatch, or None: no signal
    offered: int = 0
    changes: list[EventChange] = field(default_factory=list)

    def checks_in(self, start: float, end: float) -> list[float]:
        return [t for t in self.checks if start <= t < end]


def stream(identity: IdentityDetector, faces: FaceDetector | None, script: list[tuple[float, str]],
           scenes: dict[str, list[np.ndarray]]) -> Run:
    """Play `script` ([(seconds, scene), ...]) to both detectors as a media node does (see the module doc)."""
    rules = EventRules(rules_config(Settings.defaults()))
    run = Run()
    timeline = [name for seconds, name in script for _ in range(round(seconds * BASE_FPS))]
    slots: list[tuple[Detector, list[float]]] = [(identity, [0.0])] + ([(faces, [0.0])] if faces else [])
    for i, name in enumerate(timeline):
        t = i * GRID
        frame = scenes[name][i % len(scenes[name])]
        due = []
        for detector, next_due in slots:  # FrameSampler._due
            if t + 1e-6 >= next_due[0]:
                period = 1.0 / detector.fps
                next_due[0] = max(next_due[0] + period, t - period)
                due.append(detector)
        # Delivery: the identity slot's `wants` is asked as the frame arrives, before the faces detector's result
        # for the same frame exists.
        wanted = [d for d in due if not isinstance(d, IdentityDetector) or _offered(run, d, t)]
        for detector in wanted:
            signals = detector.analyze(frame, t)
            if isinstance(detector, IdentityDetector):
                run.checks.append(t)
                run.outcomes.append(signals[0].active if signals else None)
                for s in signals:
                    run.changes += rules.update(s.kind, s.active, s.confidence, t, s.details)
            else:
                for s in signals:
                    identity.hint(s, t)
        run.changes += rules.tick(t)
    run.changes += rules.flush(len(timeline) * GRID)
    return run


def _offered(run: Run, identity: IdentityDetector, t: float) -> bool:
    run.offered += 1
    return identity.wants(t)


def _pair(settings: Settings, seed: int = 0, **overrides: Any) -> tuple[IdentityDetector, FaceDetector]:
    chosen = replace(settings, **overrides) if overrides else settings
    identity, faces = IdentityDetector(chosen), FaceDetector(chosen)
    identity.load()
    faces.load()
    assert identity.set_reference(face_canvas())
    identity.cadence.rng.seed(seed)
    faces.full_range.rng.seed(seed)
    return identity, faces


def test_a_stable_matched_candidate_is_checked_rarely(settings: Settings,
                                                      scenes: dict[str, list[np.ndarray]]) -> None:
    seconds = 200.0
    identity, faces = _pair(settings)
    run = stream(identity, faces, [(seconds, "A")], scenes)
    assert all(outcome is False for outcome in run.outcomes)  # every check matched
    assert run.changes == []
    # The enrolment window keeps the old cadence (IDENTITY_FAST_UNTIL_ENROLLED off): a check every IDENTITY_INTERVAL_S.
    early = run.checks_in(0.0, ENROL_WINDOW_S)
    assert len(early) >= ENROL_WINDOW_S / INTERVAL - 1
    assert np.diff(early).max() <= INTERVAL + SLACK
    # Then rare ones, jittered: each gap within 0.5x-1.5x of IDENTITY_STABLE_INTERVAL_S.
    late = run.checks_in(ENROL_WINDOW_S + 1e-6, seconds)  # the first is the last at the old cadence
    gaps = np.diff(late)
    assert 2 <= len(late) <= (seconds - ENROL_WINDOW_S) / ((1 - CADENCE_JITTER) * STABLE) + 2, run.checks
    assert len(gaps) == 0 or ((1 - CADENCE_JITTER) * STABLE - SLACK <= gaps.min()
                              and gaps.max() <= (1 + CADENCE_JITTER) * STABLE + SLACK), run.checks
    fixed = seconds / INTERVAL
    assert len(run.checks) <= 0.6 * fixed  # against a check every IDENTITY_INTERVAL_S all along
    assert identity.stats()["matched"] == len(run.checks)
    # What a media node reports as the identity slot's frames due (admission by load: analysed / due).
    assert identity.cadence.stats()["scans"] == len(run.checks) and run.offered > 5 * len(run.checks)
    print("checks at", [round(t, 1) for t in run.checks], identity.cadence.stats())


def _full_at(identity: IdentityDetector) -> float:
    """Media time of the check that filled the reference set (the photo and ENROL_MAX_FRAMES frames)."""
    frames = [r.media_time_s for r in identity.references[1:] if r.media_time_s is not None]
    assert len(frames) == ENROL_MAX_FRAMES, identity.references
    return max(frames)


def test_a_full_reference_set_ends_the_fast_pace_of_the_enrolment_window(
        settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=5, identity_fast_until_enrolled=True)
    run = stream(identity, faces, [(ENROL_WINDOW_S + 10.0, "A")], scenes)
    full = _full_at(identity)
    assert full < ENROL_WINDOW_S / 2  # one frame enrolled per check: the set fills long before the window ends
    # After the check that filled it, the next comes at the stable cadence, not IDENTITY_INTERVAL_S later.
    after = run.checks_in(full + 1e-6, ENROL_WINDOW_S + 10.0)
    assert after and after[0] - full >= (1 - CADENCE_JITTER) * STABLE - SLACK, run.checks
    assert len(run.checks_in(0.0, ENROL_WINDOW_S)) <= ENROL_MAX_FRAMES + 3, run.checks
    assert identity.cadence.stats()["rare"] >= 1

    # Switched off (the default: see analyzers/identity.py): the whole window at IDENTITY_INTERVAL_S, as before.
    assert not Settings.defaults().identity_fast_until_enrolled
    before, faces = _pair(settings, seed=5)
    old = stream(before, faces, [(ENROL_WINDOW_S + 10.0, "A")], scenes)
    window = old.checks_in(0.0, ENROL_WINDOW_S)
    assert len(window) >= ENROL_WINDOW_S / INTERVAL - 1 and np.diff(window).max() <= INTERVAL + SLACK


def test_in_the_window_a_full_set_still_confirms_a_swap_at_the_old_pace(
        settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=6, identity_fast_until_enrolled=True)
    leaves, back = 30.0, 36.0  # inside the enrolment window, the set already full
    run = stream(identity, faces, [(leaves, "A"), (back - leaves, "empty"), (20.0, "B")], scenes)
    assert _full_at(identity) < leaves
    after = run.checks_in(back, back + 20.0)
    assert after and after[0] <= back + 1 / settings.faces_fps + SLACK, after  # the return brings a check
    assert run.outcomes[run.checks.index(after[0])] is True
    assert np.diff(after).max() <= INTERVAL + SLACK  # failing checks keep IDENTITY_INTERVAL_S
    starts = [c for c in run.changes if c.type == "start" and c.kind == "identity_mismatch"]
    assert len(starts) == 1 and starts[0].start_s == after[0]
    assert len(identity.references) == 1 + ENROL_MAX_FRAMES  # the impostor was never enrolled


def test_a_swap_after_leaving_the_frame_is_checked_at_once_and_confirmed_at_the_old_pace(
        settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=1)
    leaves, back = 75.0, 81.0  # after the enrolment window, with checks already rare
    run = stream(identity, faces, [(leaves, "A"), (back - leaves, "empty"), (20.0, "B")], scenes)
    before = run.checks_in(ENROL_WINDOW_S + INTERVAL + SLACK, leaves)
    assert len(before) <= 1  # rare: at most one check between the window's end and leaving
    assert run.checks_in(leaves + 0.5, back) == []  # nobody in view: nothing to check
    after = run.checks_in(back, back + 20.0)
    # The face comes back: the faces detector says so on its next frame (4 fps), the check comes on the next frame
    # the identity slot is offered.
    assert after and after[0] <= back + 1 / settings.faces_fps + SLACK, after
    assert run.outcomes[run.checks.index(after[0])] is True
    # The mismatch is confirmed at IDENTITY_INTERVAL_S, so the rule starts the flag as soon as before, dated at
    # the first failed check.
    assert after[1] - after[0] <= INTERVAL + SLACK
    starts = [c for c in run.changes if c.type == "start" and c.kind == "identity_mismatch"]
    assert len(starts) == 1 and starts[0].start_s == after[0]
    # Still someone else: checks stay at the old pace while they fail.
    assert np.diff(after).max() <= INTERVAL + SLACK


def test_a_swap_without_leaving_the_frame_is_checked_when_the_face_moves(
        settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=2)
    moved = 80.0
    run = stream(identity, faces, [(moved, "A"), (6.0, "A moved")], scenes)
    after = run.checks_in(moved, moved + 6.0)
    last_before = run.checks_in(0.0, moved)[-1]
    # Brought forward: at once, or IDENTITY_INTERVAL_S after the last check, whichever is later.
    assert after and after[0] <= max(moved + 1 / settings.faces_fps + SLACK, last_before + INTERVAL + SLACK)


def test_a_poor_picture_ending_brings_a_check(settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=3)
    run = stream(identity, faces, [(75.0, "A"), (8.0, "dark"), (6.0, "B")], scenes)
    after = run.checks_in(83.0, 89.0)
    assert after and after[0] <= 83.0 + 1 / settings.faces_fps + SLACK and run.outcomes[run.checks.index(after[0])]


def test_a_flickering_face_count_never_checks_more_often_than_the_old_interval(
        settings: Settings, scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, seed=4)
    flicker = [(0.5, "A"), (0.5, "empty")] * 30  # the face found and lost every half second
    run = stream(identity, faces, [(70.0, "A"), *flicker], scenes)
    late = run.checks_in(70.0, 100.0)
    assert late and np.diff(run.checks_in(60.0, 100.0)).min() >= INTERVAL - SLACK
    assert len(late) <= 30.0 / INTERVAL + 1


def test_stable_interval_at_the_check_interval_is_the_old_cadence(settings: Settings,
                                                                   scenes: dict[str, list[np.ndarray]]) -> None:
    identity, faces = _pair(settings, identity_stable_interval_s=INTERVAL)
    assert identity.fps == 1 / INTERVAL and not identity.cadence.adaptive
    run = stream(identity, faces, [(70.0, "A"), (6.0, "empty"), (10.0, "A")], scenes)
    assert run.offered == len(run.checks)  # every frame offered is checked, as before
    assert np.allclose(np.diff(run.checks), INTERVAL, atol=GRID + 1e-6)
    assert identity.cadence.stats()["hinted"] == 0 and identity.cadence.stats()["scans"] == len(run.checks)


def test_a_new_reference_photo_is_checked_against_at_once(settings: Settings,
                                                          scenes: dict[str, list[np.ndarray]]) -> None:
    identity, _ = _pair(settings)
    for t in (0.0, 5.0, 10.0):
        assert identity.wants(t)
        identity.analyze(scenes["A"][0], t)
    assert not identity.wants(11.0)
    identity.set_reference(other_person_canvas())
    assert identity.wants(11.0)


def test_hints_from_other_kinds_are_ignored(settings: Settings) -> None:
    identity, _ = _pair(settings)
    identity.cadence.checked(0.0, "matched", (100.0, 100.0, 200.0, 200.0), 1, enrolling=False)
    identity.hint(Signal("looking_away", True, 0.9, {"faces": 0}), 1.0)
    identity.hint(Signal("phone", True, 0.9, {}), 1.0)
    assert identity.cadence.hint_due is None and identity.cadence.faces_seen is None
