"""The full-range face model's cadence on a live stream (issue 14; analyzers/faces.py FullRangeCadence,
FACES_FULL_RANGE_INTERVAL_S): the real mediapipe models on real photos, frames on the faces detector's FACES_FPS.

Photos: scikit-image's astronaut framed as a webcam shows a candidate (tests/support/media.py face_canvas), a real
room with nobody in it (empty_room), Grace Hopper's portrait shrunk into the background as a small second face (at
180 px high the full-range model finds her face, ~75 px wide, and the short-range one does not: measured), and
bench/quality's labelled photos (bench/quality/data, provenance there).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from analyzers.base import Signal, rules_config
from analyzers.faces import FULL_RANGE, JITTER, SHORT_RANGE, FaceDetector, _detect, detect_faces_in
from analyzers.image_quality import assess
from core.rules import EventRules
from proctor.settings import Settings
from tests.support.media import empty_room, face_canvas, noisy_copies, other_person_canvas

DATA = Path(__file__).resolve().parent.parent / "bench" / "quality" / "data"
SMALL_FACE_H = 180  # the inset's height: a face only the full-range model finds (see the module doc)


def _with_small_face(base: np.ndarray) -> np.ndarray:
    other = other_person_canvas()
    small = cv2.resize(other, (SMALL_FACE_H * 4 // 3, SMALL_FACE_H), interpolation=cv2.INTER_AREA)
    out = base.copy()
    out[20:20 + small.shape[0], out.shape[1] - 20 - small.shape[1]:out.shape[1] - 20] = small
    return out


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    face = face_canvas()
    return {"face": noisy_copies(face), "empty": noisy_copies(empty_room(), seed=1),
            "small": noisy_copies(_with_small_face(face), seed=2)}


def _detector(interval_s: float = 1.0, seed: int = 0) -> FaceDetector:
    detector = FaceDetector(Settings.defaults(faces_full_range_interval_s=interval_s))
    detector.load()
    detector.full_range.rng.seed(seed)
    return detector


@dataclass
class Run:
    frames: list[float] = field(default_factory=list)
    full: list[bool] = field(default_factory=list)  # whether the full-range model ran on each frame
    signals: list[dict[str, Signal]] = field(default_factory=list)
    multiple_started: float | None = None  # the multiple_people event's start_s, by the real rule

    def first(self, kind: str, since: float = 0.0) -> float | None:
        return next((t for t, s in zip(self.frames, self.signals, strict=True) if t >= since and s[kind].active),
                    None)


def stream(detector: FaceDetector, script: list[tuple[float, str]], scenes: dict[str, list[np.ndarray]]) -> Run:
    """Play `script` ([(seconds, scene), ...]) to the detector at its fps (what the node's sampler gives it), with
    the real event rules; records whether each frame ran the full-range model."""
    rules = EventRules(rules_config(Settings.defaults()))
    run = Run()
    timeline = [name for seconds, name in script for _ in range(round(seconds * detector.fps))]
    for i, name in enumerate(timeline):
        t = i / detector.fps
        before = detector.full_range.full_runs
        signals = {s.kind: s for s in detector.analyze(scenes[name][i % len(scenes[name])], t)}
        run.frames.append(t)
        run.full.append(detector.full_range.full_runs > before)
        run.signals.append(signals)
        s = signals["multiple_people"]
        for change in rules.update(s.kind, s.active, s.confidence, t, s.details):
            if change.type == "start" and run.multiple_started is None:
                run.multiple_started = change.start_s
    return run


def test_the_small_inset_is_a_face_only_the_full_range_model_sees(scenes: dict[str, list[np.ndarray]]) -> None:
    """The premise of the tests below, measured on these very frames."""
    min_score = Settings.defaults().face_min_score
    for frame in scenes["small"]:
        assert len([f for f in _detect(frame, SHORT_RANGE) if f.score >= min_score]) == 1
        assert len([f for f in _detect(frame, FULL_RANGE) if f.score >= min_score]) == 2


def test_full_range_is_skipped_while_the_short_range_model_sees_the_face(
        scenes: dict[str, list[np.ndarray]]) -> None:
    seconds, interval = 60.0, 1.0
    detector = _detector(interval)
    run = stream(detector, [(seconds, "face")], scenes)
    # The first frame (no history) and then about once per interval, never on two frames in a row.
    assert run.full[0]
    assert set(detector.full_range.reasons) == {"interval"}
    assert seconds / (1 + JITTER) - 2 <= sum(run.full) <= seconds / (1 - JITTER) + 2
    assert sum(run.full) <= 0.4 * len(run.full)  # 4 fps: most frames run the short-range model alone
    gaps = np.diff([t for t, full in zip(run.frames, run.full, strict=True) if full])
    assert gaps.min() >= (1 - JITTER) * interval - 0.25 - 1e-6 and gaps.max() <= (1 + JITTER) * interval + 0.25
    assert len(set(np.round(gaps, 2))) >= 3  # jittered: no fixed schedule to learn
    # The answer is the same as with both models on every frame: one face, no flag.
    for signals in run.signals:
        assert signals["no_face"].details["faces"] == 1
        assert not signals["no_face"].active and not signals["multiple_people"].active


def test_full_range_runs_on_every_frame_without_a_face(scenes: dict[str, list[np.ndarray]]) -> None:
    detector = _detector()
    run = stream(detector, [(2.0, "face"), (5.0, "empty"), (2.0, "face")], scenes)
    empty = [i for i, t in enumerate(run.frames) if 2.0 <= t < 7.0]
    assert all(run.full[i] for i in empty)  # no_face is confirmed by both models, every time
    assert all(run.signals[i]["no_face"].active for i in empty)
    assert detector.full_range.reasons["no_face"] == len(empty)
    back = [i for i, t in enumerate(run.frames) if t >= 7.25]
    assert not all(run.full[i] for i in back)  # the face back: the short-range model alone again


def test_both_models_run_on_every_frame_while_a_small_face_is_only_the_full_range_models(
        scenes: dict[str, list[np.ndarray]]) -> None:
    detector = _detector()
    run = stream(detector, [(8.0, "small")], scenes)
    assert all(run.full)  # the first frame finds the small face; from then on every frame looks for it
    # Why: the face the full-range model found last time, or the short-range model's own weak detection of it.
    reasons = detector.full_range.reasons
    assert reasons.get("small_face", 0) + reasons.get("weak_face", 0) == len(run.frames) - 1, reasons
    assert all(s["multiple_people"].active and s["no_face"].details["faces"] == 2 for s in run.signals)
    assert run.multiple_started == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_a_small_second_face_that_appears_is_found_within_the_interval(
        scenes: dict[str, list[np.ndarray]], seed: int) -> None:
    interval = 1.0
    appears = 10.0 + random.Random(seed).uniform(0.0, 1.0)
    appears = round(appears * 4) / 4  # on the 4 fps grid
    detector = _detector(interval, seed=seed)
    run = stream(detector, [(appears, "face"), (6.0, "small"), (3.0, "face")], scenes)
    assert run.first("multiple_people") is not None
    seen = run.first("multiple_people")
    assert seen is not None and appears <= seen <= appears + (1 + JITTER) * interval + 0.25, (appears, seen)
    # Once seen, on every frame while it lasts: the rule's run is not broken, so the flag starts 2 s after it was
    # first seen, dated then.
    during = [s["multiple_people"].active for t, s in zip(run.frames, run.signals, strict=True)
              if seen <= t < appears + 6.0]
    assert all(during)
    assert run.multiple_started == seen
    # And it goes: the short-range model alone again within a frame or two of the last full pass that misses it.
    after = [full for t, full in zip(run.frames, run.full, strict=True) if t >= appears + 6.5]
    assert not all(after)


def test_interval_zero_runs_both_models_on_every_frame_as_before(scenes: dict[str, list[np.ndarray]]) -> None:
    detector = _detector(0.0)
    run = stream(detector, [(3.0, "face"), (1.0, "empty")], scenes)
    assert all(run.full) and detector.full_range.reasons == {"every_frame": 16}
    frame = scenes["face"][0]
    found = detector.faces(frame, assess(frame), 100.0)
    assert found == detect_faces_in(frame)


def _labelled() -> list[tuple[str, np.ndarray]]:
    manifest = json.loads((DATA / "manifest.json").read_text())
    entries = manifest["photos"] if isinstance(manifest, dict) and "photos" in manifest else manifest
    out = []
    for entry in entries:
        if entry.get("faces", 0) >= 1:
            rgb = cv2.cvtColor(cv2.imread(str(DATA / entry["file"])), cv2.COLOR_BGR2RGB)
            out.append((entry["file"], rgb))
    return out


def test_labelled_photos_count_the_same_faces_as_with_both_models_on_every_frame() -> None:
    """Every labelled photo with a face, as three frames of a stream of its own: the cadence's answer (faces counted,
    no_face, multiple_people) on every frame is the answer of both models on every frame, though the full-range
    model runs on fewer frames."""
    photos = _labelled()
    assert len(photos) >= 150
    skipped = 0
    for name, rgb in photos:
        cadenced, every = _detector(1.0), _detector(0.0)
        for i in range(3):
            t = i / cadenced.fps
            mine = {s.kind: s for s in cadenced.analyze(rgb, t)}
            theirs = {s.kind: s for s in every.analyze(rgb, t)}
            assert mine["no_face"].details["faces"] == theirs["no_face"].details["faces"], (name, i)
            for kind in ("no_face", "multiple_people", "poor_image"):
                assert mine[kind].active == theirs[kind].active, (name, i, kind)
        skipped += 3 - cadenced.full_range.full_runs
    assert skipped >= len(photos)  # at least half the later frames ran the short-range model alone


def test_a_second_person_joining_a_labelled_group_photo_is_seen_on_the_first_frame() -> None:
    """bench/quality's clip `second_person_joins`: the candidate (ski_astronaut), then a group photo whose second face
    the short-range model scores under the minimum (0.54) and the full-range one well (0.88): that weak detection
    brings the full-range model in on the very first frame, not up to an interval later."""
    from bench.quality.clips import letterbox

    def photo(name: str) -> list[np.ndarray]:
        return noisy_copies(letterbox(cv2.cvtColor(cv2.imread(str(DATA / name)), cv2.COLOR_BGR2RGB)))

    scenes = {"alone": photo("ski_astronaut.jpg"), "group": photo("dlib_2009_004587.jpg")}
    for seed in range(3):
        detector = _detector(1.0, seed=seed)
        run = stream(detector, [(6.0, "alone"), (4.0, "group")], scenes)
        assert run.first("multiple_people") == 6.0 and run.multiple_started == 6.0
