"""The faces detector's pace on a live stream (issue 14; analyzers/faces.py FacesPace, FACES_SETTLED_FPS): every
other frame while the picture is settled, every frame from the first one that is not. The pace itself on a
scripted timeline, then the real mediapipe models on real photos with the real event rules, against the same
stream analysed at FACES_FPS throughout.

Photos (tests/support/media.py): scikit-image's astronaut framed as a webcam shows a candidate, a real room with
nobody in it, and Grace Hopper's portrait set beside the astronaut as a second person (both models find her).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from analyzers.base import Signal, rules_config
from analyzers.faces import SETTLE_S, FaceDetector, FacesPace, FrameFaces
from core.rules import EventRules
from proctor.settings import Settings
from tests.support.media import empty_room, face_canvas, noisy_copies, other_person_canvas

FPS, SETTLED = 4.0, 2.0


def _box(x: float = 200.0, width: float = 100.0) -> tuple[float, float, float, float]:
    return (x, 100.0, x + width, 100.0 + width)


class _Face:  # what FacesPace reads of a Face
    def __init__(self, box: tuple[float, float, float, float]) -> None:
        self.box = box


def _offer(pace: FacesPace, t: float, calm: bool = True, box: tuple[float, float, float, float] | None = None,
           found: int = 1) -> bool:
    """One frame offered at media time t, analysed if due, with one face (calm) or a picture that is not."""
    if not pace.due(t):
        return False
    faces = [_Face(box or _box())] if calm else []
    pace.analysed(t, faces, found if calm else 0, poor=False, small_face=False)  # type: ignore[arg-type]
    return True


def test_settled_after_a_second_then_every_other_frame() -> None:
    pace = FacesPace(FPS, SETTLED)
    times = [i / FPS for i in range(40)]
    taken = [t for t in times if _offer(pace, t)]
    # Every frame until one second of calm frames is in (the first frame has no place to compare with).
    settled_from = next(t for t in times if pace.settled(t))
    assert settled_from == pytest.approx(1 / FPS + SETTLE_S)
    assert [t for t in taken if t < settled_from] == [t for t in times if t < settled_from]
    later = [t for t in taken if t >= settled_from - 1 / FPS]  # from the last frame before it: every other one
    assert len(later) > 10 and np.allclose(np.diff(later), 1 / SETTLED)
    assert pace.stats() == {"scans": len(taken), "settled_skips": len(times) - len(taken)}


@pytest.mark.parametrize("change", ["no_face", "two_faces", "weak_second", "moved", "grew", "poor", "small_face",
                                    "hint"])
def test_anything_unsettling_brings_every_frame_back_at_once(change: str) -> None:
    pace = FacesPace(FPS, SETTLED)
    t = 0.0
    while not pace.settled(t) or not pace.due(t):  # settled, and the frame at t analysed
        _offer(pace, t)
        t += 1 / FPS
    faces: list[_Face] = [_Face(_box())]
    found, poor, small = 1, False, False
    if change == "no_face":
        faces, found = [], 0
    elif change == "two_faces":
        faces, found = [_Face(_box()), _Face(_box(400))], 2
    elif change == "weak_second":
        found = 2
    elif change == "moved":
        faces = [_Face(_box(x=230))]  # centre moved 30 % of the width
    elif change == "grew":
        faces = [_Face(_box(width=130))]
    elif change == "poor":
        poor = True
    elif change == "small_face":
        small = True
    if change == "hint":
        pace.analysed(t, faces, found, poor, small)  # type: ignore[arg-type]
        pace.hint("multiple_people", True)
    else:
        pace.analysed(t, faces, found, poor, small)  # type: ignore[arg-type]
    # The very next offered frame is analysed, and so is every frame until a second of calm again.
    following = [t + (i + 1) / FPS for i in range(int(SETTLE_S * FPS))]
    assert all(_offer(pace, u) for u in following)


def test_small_moves_and_inactive_hints_keep_it_settled() -> None:
    pace = FacesPace(FPS, SETTLED)
    for i in range(12):
        _offer(pace, i / FPS, box=_box(x=200 + 5 * (i % 2)))  # 5 px of a 100-px face: a candidate breathing
    assert pace.settled(12 / FPS)
    pace.hint("multiple_people", False)
    pace.hint("phone", True)  # not a question of how many faces
    assert pace.settled(12 / FPS)


@pytest.mark.parametrize("phase", [0, 1])
def test_settled_it_keeps_to_the_frames_gaze_analyses(phase: int) -> None:
    """Gaze (2 fps) takes every other frame the sampler offers faces (4 fps), from the first or from the second:
    once settled, the pace takes exactly gaze's frames, so both share one short-range detection a frame. Before it
    has seen gaze analyse a frame it keeps its own rhythm."""
    frames = FrameFaces()
    pace = FacesPace(FPS, SETTLED, frames)
    times = [i / FPS for i in range(48)]
    gaze = times[phase::2]
    taken = []
    for t in times:
        if _offer(pace, t):
            taken.append(t)
        if t in gaze:
            frames.gaze_at(t)  # gaze works on its frame after the sampler offered it to both
    settled_from = next(t for t in times if pace.settled(t))
    later = [t for t in times if t > settled_from]
    assert [t for t in taken if t > settled_from] == [t for t in later if t in gaze]
    # learnt at each offer from what gaze did before it
    assert pace.gaze_offer == max(times.index(t) for t in gaze if t < times[-1])
    # Without gaze: every other frame from wherever it settled (the test above), the stats without detections.
    alone = FacesPace(FPS, SETTLED, FrameFaces())
    taken_alone = [t for t in times if _offer(alone, t)]
    assert np.allclose(np.diff([t for t in taken_alone if t > settled_from]), 1 / SETTLED)
    assert alone.stats() == {"scans": len(taken_alone), "settled_skips": len(times) - len(taken_alone),
                             "detections_made": 0, "detections_shared": 0}


def _offer_empty(pace: FacesPace, t: float, weak: int = 0, poor: bool = False) -> bool:
    """One frame of an empty seat offered at media time t: no face at the minimum, `weak` detections under it."""
    if not pace.due(t):
        return False
    pace.analysed(t, [], weak, poor=poor, small_face=False)
    return True


def test_an_empty_seat_settles_too() -> None:
    """FACES_SETTLED_EMPTY: a second of frames with no face at the minimum (weaker detections allowed) settles the
    pace as a still face does; without it an empty seat is counted at FACES_FPS throughout."""
    pace = FacesPace(FPS, SETTLED, empty_settles=True)
    times = [i / FPS for i in range(40)]
    taken = [t for i, t in enumerate(times) if _offer_empty(pace, t, weak=i % 3 == 0)]  # a poster scoring 0.4 on/off
    settled_from = next(t for t in times if pace.settled(t))
    assert settled_from == pytest.approx(1 / FPS + SETTLE_S)
    later = [t for t in taken if t >= settled_from - 1 / FPS]
    assert len(later) > 10 and np.allclose(np.diff(later), 1 / SETTLED)
    off = FacesPace(FPS, SETTLED, empty_settles=False)
    assert all(_offer_empty(off, t) for t in times)


@pytest.mark.parametrize("change", ["face", "two_faces", "poor", "hint"])
def test_anything_in_an_empty_seat_brings_every_frame_back(change: str) -> None:
    pace = FacesPace(FPS, SETTLED, empty_settles=True)
    t = 0.0
    while not pace.settled(t) or not pace.due(t):
        _offer_empty(pace, t)
        t += 1 / FPS
    if change == "face":
        pace.analysed(t, [_Face(_box())], 1, poor=False, small_face=False)  # type: ignore[list-item]
    elif change == "two_faces":
        pace.analysed(t, [_Face(_box()), _Face(_box(400))], 2, poor=False, small_face=False)  # type: ignore[list-item]
    elif change == "poor":
        pace.analysed(t, [], 0, poor=True, small_face=False)  # dark or covered: poor_image, not an empty seat
    else:
        pace.analysed(t, [], 0, poor=False, small_face=False)
        pace.hint("multiple_people", True)  # the phone detector's person count
    # Every offered frame from the next one, for a second at least (the face, now calm, settles it again later).
    following = [t + (i + 1) / FPS for i in range(int(SETTLE_S * FPS))]
    assert all(_offer(pace, u) for u in following)


@pytest.mark.parametrize("settled_fps", [0.0, FPS, 8.0])
def test_off_takes_every_frame(settled_fps: float) -> None:
    pace = FacesPace(FPS, settled_fps)
    assert all(_offer(pace, i / FPS) for i in range(40))


def test_the_settings() -> None:
    assert Settings.defaults().faces_settled_fps == 2.0
    assert Settings.from_env({"FACES_SETTLED_FPS": "0"}, env_file=None).faces_settled_fps == 0.0
    assert Settings.defaults().faces_settled_empty is True
    assert Settings.from_env({"FACES_SETTLED_EMPTY": "false"}, env_file=None).faces_settled_empty is False
    assert FaceDetector(Settings.defaults()).cadence.empty_settles is True
    assert FaceDetector(Settings.defaults(faces_settled_empty=False)).cadence.empty_settles is False


# --- the real models ------------------------------------------------------------------------------------------
def _with_second_person(base: np.ndarray) -> np.ndarray:
    other = cv2.resize(other_person_canvas(), (320, 240), interpolation=cv2.INTER_AREA)
    out = base.copy()
    out[0:240, 320:640] = other  # her face at the top right, beside his (both models find both: 0.89, 0.75)
    return out


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    face = face_canvas()
    return {"face": noisy_copies(face), "empty": noisy_copies(empty_room(), seed=1),
            "two": noisy_copies(_with_second_person(face), seed=2)}


@dataclass
class Run:
    analysed: list[float] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)  # first event start per kind, by the real rules
    ended: dict[str, float] = field(default_factory=dict)


def _play(settled_fps: float, script: list[tuple[float, str]], scenes: dict[str, list[np.ndarray]],
          empty_settles: bool = True) -> Run:
    """The frames the node's sampler offers at FACES_FPS, as analyzers/live.py's slot does: `wants`, then analyze;
    no_face and multiple_people through the real rules."""
    detector = FaceDetector(Settings.defaults(faces_settled_fps=settled_fps, faces_settled_empty=empty_settles))
    detector.load()
    detector.full_range.rng.seed(0)
    rules = EventRules(rules_config(Settings.defaults()))
    run = Run()
    timeline = [name for seconds, name in script for _ in range(round(seconds * FPS))]
    for i, name in enumerate(timeline):
        t = i / FPS
        if not detector.wants(t):
            continue
        run.analysed.append(t)
        signals: list[Signal] = detector.analyze(scenes[name][i % len(scenes[name])], t)
        for s in signals:
            for change in rules.update(s.kind, s.active, s.confidence, t, s.details):
                if change.type == "start":
                    run.started.setdefault(change.kind, change.start_s)
                elif change.type == "end":
                    run.ended.setdefault(change.kind, change.end_s or t)
    return run


def test_same_flags_within_a_frame_and_half_the_frames_while_settled(scenes: dict[str, list[np.ndarray]]) -> None:
    """A candidate alone for 12 s, a second person beside them for 4 s, alone 8 s, gone 6 s, back 6 s: the paced
    stream raises the same flags as the stream analysed at FACES_FPS, each starting at most one offered frame later
    (0.25 s), and analyses about half the frames of the settled stretches, the empty seat's too (and all of those
    without FACES_SETTLED_EMPTY)."""
    script = [(12.0, "face"), (4.0, "two"), (8.0, "face"), (6.0, "empty"), (6.0, "face")]
    paced, every = _play(SETTLED, script, scenes), _play(0.0, script, scenes)
    still_only = _play(SETTLED, script, scenes, empty_settles=False)
    for run in (paced, still_only):
        assert set(run.started) == set(every.started)
        for kind, end in every.ended.items():
            assert abs(run.ended[kind] - end) <= 1 / FPS + 1e-9, (kind, end, run.ended.get(kind))
    # The empty seat (24-30 s): every frame for a second or so, then every other one; every frame without the setting.
    empty = [t for t in paced.analysed if 24.0 <= t < 30.0]
    assert len(empty) <= (SETTLE_S + 2 / FPS) * FPS + (6.0 - SETTLE_S) * SETTLED + 1
    assert [t for t in still_only.analysed if 24.0 <= t < 30.0] == [t for t in every.analysed if 24.0 <= t < 30.0]
    assert set(every.started) == {"multiple_people", "no_face"}
    assert set(paced.started) == set(every.started)
    for kind, start in every.started.items():
        assert start <= paced.started[kind] <= start + 1 / FPS + 1e-9, (kind, start, paced.started[kind])
    for kind, end in every.ended.items():
        assert abs(paced.ended[kind] - end) <= 1 / FPS + 1e-9, (kind, end, paced.ended.get(kind))
    # The first 12 s: every frame for the first second or so, then every other one.
    alone = [t for t in paced.analysed if t < 12.0]
    assert len(alone) <= (SETTLE_S + 2 / FPS) * FPS + (12.0 - SETTLE_S) * SETTLED + 1
    # While two people are in view: every frame from the first one analysed with them.
    seen = next(t for t in paced.analysed if t >= 12.0)
    assert seen <= 12.0 + 1 / SETTLED
    assert [t for t in paced.analysed if seen <= t < 16.0] == [t for t in every.analysed if seen <= t < 16.0]
    print(f"frames analysed: {len(paced.analysed)} paced, {len(every.analysed)} at {FPS:g} fps; "
          f"starts {paced.started} vs {every.started}")
