"""Identity checks you can defend (issue 13): several references per candidate (the photo, then good frames of the
first minute that match the photo), best-of comparison, unembeddable faces and poor pictures counted apart from
mismatches, faces found in tight crops and whole where the frame cuts them, mirror-averaged embeddings, the
calibrated threshold, and two failed checks in a row before an event."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from analyzers import embedder
from analyzers.base import DetectorUnavailable, rules_config
from analyzers.faces import Face, detect_faces
from analyzers.identity import (
    CALIBRATED,
    ENROL_MAX_FRAMES,
    ENROL_WINDOW_S,
    MIN_FACE_PX,
    MIRROR_BAND,
    IdentityDetector,
    best_distance,
    distance,
    face_crop,
    is_frontal,
)
from analyzers.image_quality import assess
from bench.quality import metrics as mx
from core.rules import EventRules
from proctor.settings import Settings
from tests.test_detectors import astronaut, cameraman, grace_hopper, jpeg, two_faces

Fresh = Callable[[np.ndarray], IdentityDetector]


@pytest.fixture(scope="module")
def fresh(models_home: Path) -> Fresh:
    """A new detector (one stream's) with `photo` as its reference photo; the models load once per process."""

    def make(photo: np.ndarray) -> IdentityDetector:
        detector = IdentityDetector(Settings.defaults(deepface_home=str(models_home)))
        detector.load()
        assert detector.set_reference(photo)
        return detector

    return make


# --- the same person, as a webcam would show her --------------------------------------------------------------
def brighter(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * 1.15 + 10, 0, 255).astype(np.uint8)


def darker(rgb: np.ndarray, factor: float = 0.15) -> np.ndarray:
    """A room with the light off: analyzers.image_quality calls it dark, yet mediapipe still finds the face."""
    return np.ascontiguousarray((rgb.astype(np.float32) * factor).astype(np.uint8))


def blurred(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.GaussianBlur(rgb, (0, 0), 6))


def turned_in_plane(rgb: np.ndarray, degrees: float, center: tuple[float, float]) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D(center, degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def same_person_frames() -> list[np.ndarray]:
    ast = astronaut()
    return [jpeg(ast, 50), jpeg(np.roll(ast, 40, axis=1), 60),
            np.ascontiguousarray(cv2.resize(ast, (384, 384), interpolation=cv2.INTER_AREA)), brighter(ast),
            jpeg(brighter(np.roll(ast, -30, axis=0)), 70)]


def face_box_crop(rgb: np.ndarray, margin: float) -> np.ndarray:
    """The picture cut to its face's square box grown by `margin` (negative: tighter than the box)."""
    x1, y1, x2, y2 = max(detect_faces(rgb), key=lambda f: f.area).box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * (1 + 2 * margin) / 2
    return np.ascontiguousarray(rgb[int(cy - half):int(cy + half), int(cx - half):int(cx + half)])


# --- pure functions -----------------------------------------------------------------------------------------------
def test_best_distance_picks_the_smallest() -> None:
    photo, frame_a, frame_b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.6, 0.8, 0.0])
    live = np.array([0.5, 0.85, 0.1])
    dist, index = best_distance([photo, frame_a, frame_b], live, "cosine")
    assert index == 2 and dist == pytest.approx(distance(frame_b, live, "cosine"))
    assert dist == min(distance(r, live, "cosine") for r in (photo, frame_a, frame_b))
    assert best_distance([photo, photo.copy()], live, "euclidean")[1] == 0  # a tie goes to the photo
    assert best_distance([frame_a, photo], live, "euclidean") == (pytest.approx(np.linalg.norm(frame_a - live)), 0)
    with pytest.raises(ValueError):
        best_distance([], live, "cosine")
    with pytest.raises(ValueError):
        best_distance([photo], live, "hamming")


def _face(right_eye: tuple[float, float], left_eye: tuple[float, float], nose: tuple[float, float]) -> Face:
    return Face(0.9, (0.0, 0.0, 100.0, 100.0), (right_eye, left_eye, nose, (50.0, 80.0), (10.0, 40.0), (90.0, 40.0)))


def test_frontal_means_eyes_level_and_nose_between_them() -> None:
    assert is_frontal(_face((30, 40), (70, 40), (50, 62)))
    assert is_frontal(_face((30, 40), (70, 44), (53, 62)))  # a little tilted and turned
    assert not is_frontal(_face((30, 40), (70, 60), (50, 72)))  # tilted 27 degrees
    assert not is_frontal(_face((30, 40), (70, 40), (66, 60)))  # nose under an eye: turned ~35 degrees
    assert not is_frontal(_face((30, 40), (70, 40), (50, 40)))  # nose on the eye line: garbled keypoints
    assert not is_frontal(_face((50, 40), (50, 40), (50, 60)))  # eyes on one point


# --- enrolment ------------------------------------------------------------------------------------------------------
def test_enrolment_takes_good_frames_of_the_same_person(fresh: Fresh) -> None:
    detector = fresh(astronaut())
    frames = same_person_frames()
    checks = [detector.analyze(frame, 10.0 + 3 * i) for i, frame in enumerate(frames)]
    details = [signal.details for [signal] in checks]
    assert not any(signal.active for [signal] in checks), details
    assert [d["enrolled"] for d in details] == [True] * ENROL_MAX_FRAMES + [False]  # at most four
    assert [r.label for r in detector.references] == ["photo", "frame@10", "frame@13", "frame@16", "frame@19"]
    assert [d["references"] for d in details] == [1, 2, 3, 4, 5]
    for d in details:
        assert set(d) >= {"distance", "reference", "references", "threshold", "metric", "model"}
        assert d["distance"] <= d["photo_distance"] < d["threshold"] / 2
    ok, status = detector.status()
    assert ok and "photo and 4 enrolled frames" in status


def test_enrolment_refuses_other_people_two_faces_and_bad_frames(fresh: Fresh) -> None:
    # Someone else sits down from the start: never enrolled, every check fails against the photo alone.
    impostor = fresh(astronaut())
    for i, frame in enumerate([grace_hopper(), cameraman(), jpeg(grace_hopper(), 60)]):
        [signal] = impostor.analyze(frame, 3.0 * i)
        assert signal.active and not signal.details["enrolled"] and signal.details["reference"] == "photo"
    assert [r.label for r in impostor.references] == ["photo"]

    detector = fresh(astronaut())
    ast = astronaut()
    tilted = turned_in_plane(ast, 30, (226, 120))  # the same person, head tilted 30 degrees
    refused = {"two faces": (two_faces(), 0.0), "tilted": (tilted, 3.0)}
    for name, (frame, t) in refused.items():
        [signal] = detector.analyze(frame, t)
        assert not signal.active and not signal.details["enrolled"], (name, signal.details)
    [first] = detector.analyze(jpeg(ast, 60), 6.0)
    [too_soon] = detector.analyze(brighter(ast), 7.0)  # under 2 s after the last enrolled frame
    [later] = detector.analyze(brighter(ast), 6.0 + ENROL_WINDOW_S)  # the window opened at the first check, t=0
    assert first.details["enrolled"] and not too_soon.details["enrolled"] and not later.details["enrolled"]
    assert [r.label for r in detector.references] == ["photo", "frame@6"]


def test_checks_take_the_best_reference(fresh: Fresh) -> None:
    detector = fresh(astronaut())
    detector.mirror_band = None  # IDENTITY_MIRROR=always: the checks' embeddings are `embed`'s, compared below
    webcam = jpeg(brighter(np.roll(astronaut(), 40, axis=1)), 60)
    [enrolling] = detector.analyze(webcam, 0.0)
    assert enrolling.details["enrolled"] and enrolling.details["reference"] == "photo"
    # The same picture again (1 s later: not enrolled once more): the enrolled frame is nearer than the photo.
    [again] = detector.analyze(webcam, 1.0)
    assert not again.details["enrolled"]
    [photo_ref, frame_ref] = [r.embedding for r in detector.references]
    embedding = detector.embed(webcam, thorough=False)
    assert embedding is not None
    to_photo, to_frame = distance(photo_ref, embedding[0], "cosine"), distance(frame_ref, embedding[0], "cosine")
    assert to_frame < to_photo
    assert again.details["reference"] == "frame@0" and again.details["references"] == 2
    assert again.details["distance"] == pytest.approx(to_frame, abs=1e-4)
    assert again.details["photo_distance"] == pytest.approx(to_photo, abs=1e-4)
    # Another person is far from every reference: the best of them is still a mismatch.
    [other] = detector.analyze(grace_hopper(), 10.0)
    assert other.active and other.details["distance"] > other.details["threshold"]


def test_a_new_reference_photo_drops_enrolled_frames(fresh: Fresh) -> None:
    detector = fresh(astronaut())
    [signal] = detector.analyze(jpeg(astronaut(), 60), 0.0)
    assert signal.details["enrolled"] and len(detector.references) == 2
    assert detector.set_reference(grace_hopper())
    assert [r.label for r in detector.references] == ["photo"]
    [signal] = detector.analyze(astronaut(), 100.0)
    assert signal.active  # checked against the new photo only


# --- what is not a mismatch ------------------------------------------------------------------------------------------
def test_unembeddable_faces_are_counted_apart(fresh: Fresh, models_home: Path) -> None:
    detector = fresh(astronaut())
    small = np.ascontiguousarray(cv2.resize(astronaut(), (160, 160), interpolation=cv2.INTER_AREA))
    [found] = [face for face in detect_faces(small) if face.score >= detector.min_face_score]
    assert found.box[2] - found.box[0] < MIN_FACE_PX  # a face, too small to embed
    assert detector.analyze(small, 0.0) == []
    assert detector.analyze(np.ascontiguousarray(data.coffee()), 5.0) == []  # nobody
    assert detector.analyze(np.full((480, 640, 3), 90, np.uint8), 7.0) == []  # a covered lens: poor, not no_face
    assert not detector.analyze(astronaut(), 10.0)[0].active
    assert detector.analyze(grace_hopper(), 15.0)[0].active
    assert detector.stats() == {"checks": 5, "matched": 1, "mismatched": 1, "poor_image": 1, "no_face": 1,
                                "unembeddable": 1}

    # A reference photo without a usable face: identity is not checked, and a live face is no mismatch.
    blind = IdentityDetector(Settings.defaults(deepface_home=str(models_home)))
    blind.load()
    assert blind.stats()["checks"] == 0 and blind.analyze(astronaut(), 0.0) == []  # no photo yet: no check
    assert not blind.set_reference(small)
    assert blind.analyze(astronaut(), 5.0) == [] and blind.analyze(grace_hopper(), 10.0) == []
    assert blind.stats() == {"checks": 2, "matched": 0, "mismatched": 0, "poor_image": 0, "no_face": 0,
                             "unembeddable": 2}
    ok, status = blind.status()
    assert ok and "reference photo has no usable face: identity not checked" in status


def test_poor_pictures_give_no_signal_and_are_never_enrolled(fresh: Fresh) -> None:
    detector = fresh(astronaut())
    ast, hopper = astronaut(), grace_hopper()
    poor = {"dark": darker(ast), "blurred": blurred(ast), "dark impostor": darker(hopper),
            "blurred impostor": blurred(hopper)}
    for name, frame in poor.items():
        assert assess(frame).poor and detect_faces(frame), name  # poor, yet a face is there to embed
    # Why: checked, the candidate's own blurred frame is a mismatch (the faces detector says "clean the lens").
    blurred_distance = detector.compare(poor["blurred"])
    assert blurred_distance is not None and blurred_distance > detector.threshold
    for i, (name, frame) in enumerate(poor.items()):
        assert detector.analyze(frame, 2.5 * i) == [], name  # inside the enrolment window, frontal, one face
    assert [r.label for r in detector.references] == ["photo"]  # none enrolled
    assert detector.stats() == {"checks": 4, "matched": 0, "mismatched": 0, "poor_image": 4, "no_face": 0,
                                "unembeddable": 0}
    [signal] = detector.analyze(jpeg(ast, 60), 20.0)  # the light is back: checked, and enrolled
    assert not signal.active and signal.details["enrolled"]
    assert detector.stats()["matched"] == 1 and detector.stats()["checks"] == 5


def test_tight_crops_and_cut_faces_are_embedded(fresh: Fresh) -> None:
    for name, photo in {"astronaut": astronaut(), "grace hopper": grace_hopper()}.items():
        detector = fresh(photo)
        for margin in (0.0, -0.1):  # the face box, and tighter still
            for crop in (face_box_crop(photo, margin), cv2.resize(face_box_crop(photo, margin), (112, 112))):
                crop = np.ascontiguousarray(crop)
                dist = detector.compare(crop)
                assert dist is not None and dist < detector.threshold, (name, margin, crop.shape, dist)
                assert detector.set_reference(crop), (name, margin, crop.shape)  # usable as a reference photo too
                assert detector.set_reference(photo)
    # A face cut by the frame's edge: the whole box (reaching outside the frame) gives the better crop.
    hopper = grace_hopper()
    detector = fresh(hopper)
    x1, _, x2, _ = max(detect_faces(hopper), key=lambda f: f.area).box
    cut = np.ascontiguousarray(hopper[:, int(x1 + 0.25 * (x2 - x1)):])
    look = detector.look(cut)
    assert look.cut and look.face is not None and look.face.box[0] < 0
    [clipped] = [face for face in detect_faces(cut) if face.score >= detector.min_face_score]
    assert detector.reference is not None
    clipped_distance = distance(detector.reference, detector.embed_face(cut, clipped), "cosine")
    [signal] = detector.analyze(cut, 0.0)
    assert signal.details["distance"] < min(clipped_distance, detector.threshold / 2)
    assert signal.box is not None and signal.box[0] == 0.0  # the evidence box stays in the frame
    assert not signal.details["enrolled"]  # a cut face is no reference


# --- the embedding and the threshold ------------------------------------------------------------------------------
def test_mirror_averaged_embedding_is_symmetric(fresh: Fresh) -> None:
    detector = fresh(astronaut())
    rgb = astronaut()
    [face] = [f for f in detect_faces(rgb) if f.score >= detector.min_face_score]
    bgr = np.ascontiguousarray(face_crop(rgb, face)[:, :, ::-1], dtype=np.float32) / 255.0
    flipped = np.ascontiguousarray(bgr[:, ::-1])
    home = str(detector.models_home)
    for model in (detector.model_name, "Dlib"):  # the default (fused) model and its Dlib half alone
        averaged, averaged_flipped = (embedder.embed(model, home, x) for x in (bgr, flipped))
        assert distance(averaged, averaged_flipped, "cosine") < 1e-6, model  # a crop and its mirror: one vector
        plain, plain_flipped = (embedder.embed(model, home, x, mirror=False) for x in (bgr, flipped))
        assert distance(plain, plain_flipped, "cosine") > 1e-3, model  # which one view alone does not give
    # The mean direction of the two views, at their mean length (a euclidean threshold keeps its scale).
    assert distance(averaged, plain / np.linalg.norm(plain) + plain_flipped / np.linalg.norm(plain_flipped),
                    "cosine") < 1e-9
    assert np.linalg.norm(averaged) == pytest.approx((np.linalg.norm(plain) + np.linalg.norm(plain_flipped)) / 2)


def test_two_single_passes_combine_to_the_mirror_averaged_embedding(fresh: Fresh) -> None:
    """IDENTITY_MIRROR=band embeds the crop alone, then (in the band) its mirror image: together exactly what one
    mirror-averaged call gives, so a check in the band decides as IDENTITY_MIRROR=always does."""
    detector = fresh(astronaut())
    rgb = astronaut()
    [face] = [f for f in detect_faces(rgb) if f.score >= detector.min_face_score]
    bgr = np.ascontiguousarray(face_crop(rgb, face)[:, :, ::-1], dtype=np.float32) / 255.0
    home = str(detector.models_home)
    for model in (detector.model_name, "Dlib"):
        plain = embedder.embed_parts(model, home, bgr)
        mirrored = embedder.embed_parts(model, home, bgr, mirrored=True)
        assert len(plain) == (2 if model == detector.model_name else 1)
        assert distance(embedder.combine(model, plain, mirrored), embedder.embed(model, home, bgr), "cosine") < 1e-6
        assert distance(embedder.combine(model, plain), embedder.embed(model, home, bgr, mirror=False),
                        "cosine") < 1e-6


def _after_enrolment(fresh: Fresh, mirror: str) -> IdentityDetector:
    """A detector whose reference set is full (frames of the photo itself), with IDENTITY_MIRROR=`mirror`."""
    detector = fresh(astronaut())
    detector.mirror_band = MIRROR_BAND[(detector.model_name, detector.metric)] if mirror == "band" else None
    for i in range(ENROL_MAX_FRAMES):
        [signal] = detector.analyze(same_person_frames()[i], i * 5.0)
        assert signal.details["enrolled"] and signal.details["mirrored"]  # references always pay both passes
    return detector


def test_mirror_pass_only_in_the_band(fresh: Fresh) -> None:
    band = _after_enrolment(fresh, "band")
    always = _after_enrolment(fresh, "always")
    width = MIRROR_BAND[(band.model_name, band.metric)]
    frames = [*same_person_frames(), grace_hopper()]  # the candidate and someone else
    for i, frame in enumerate(frames):
        t = 30.0 + 5 * i  # in the window, the set full: nothing left to enrol
        [fast], [full] = band.analyze(frame, t), always.analyze(frame, t)
        assert full.details["mirrored"] and not full.details["enrolled"]
        assert fast.active == full.active  # the same decision
        if fast.details["mirrored"]:  # in the band: the averaged distance itself
            assert fast.details["distance"] == full.details["distance"]
        else:  # far from the threshold: decided on the crop alone
            assert abs(fast.details["distance"] - band.threshold) > width
    assert band.passes["single"] >= 1 and always.passes == {"single": 0, "mirrored": len(frames) + ENROL_MAX_FRAMES}
    assert Settings.defaults().identity_mirror == "band"
    assert IdentityDetector(Settings.defaults(identity_mirror="always")).mirror_band is None
    assert IdentityDetector(Settings.defaults(identity_model="ArcFace")).mirror_band is None  # not measured: always


def test_mirrored_mean_of_plain_vectors() -> None:
    a, b = np.array([3.0, 0.0]), np.array([0.0, 1.0])
    # Each normalised before the mean (the longer one does not pull it its way), at the mean length (3 + 1) / 2.
    assert embedder.mirrored_mean(a, b) == pytest.approx(np.array([np.sqrt(2), np.sqrt(2)]))
    assert embedder.mirrored_mean(a, -a) == pytest.approx(np.zeros(2))  # no mean direction: the plain mean


def test_calibration_policy_stays_below_every_impostor_variant() -> None:
    """The policy behind CALIBRATED (bench.quality.metrics.calibrate): below the lowest distance that
    camera-like variants of the closest impostor pairs reach, which may be another pair than the closest."""
    same, different = [0.02, 0.04, 0.05, 0.06], [0.07, 0.09, 0.2]
    cal = mx.calibrate(same, different, reframing=[0.001], impostor_variants=[0.07, 0.068, 0.055, 0.08])
    assert cal is not None and cal.zero_false_match_limit == 0.07
    assert 0.0549 < cal.threshold < 0.055 and cal.margin == pytest.approx(0.015)  # the variants, not re-framing
    assert cal.errors.false_match.hits == 0 and cal.errors.false_mismatch.hits == 1  # 0.06
    far = mx.calibrate(same, different, impostor_variants=[0.3])  # never above the closest impostor itself
    assert far is not None and far.threshold < 0.07 and far.errors.false_match.hits == 0


def test_fused_embedding_is_the_weighted_mean_of_both_similarities() -> None:
    rng = np.random.default_rng(7)
    d1, d2, f1, f2 = (rng.normal(size=n) for n in (128, 128, 1024, 1024))
    a, b = embedder.fuse(d1, f1), embedder.fuse(d2, f2)
    assert np.linalg.norm(a) == pytest.approx(1.0) and a.shape == (128 + 1024,)
    cos = 1 - distance(a, b, "cosine")
    share = embedder.DLIB_SHARE
    want = share * (1 - distance(d1, d2, "cosine")) + (1 - share) * (1 - distance(f1, f2, "cosine"))
    assert cos == pytest.approx(want, abs=1e-12)
    # FaceRes's input: 224x224, BGR 0..255 less the channel means (upstream's "caffe" preprocessing).
    grey = embedder.faceres_input(np.full((97, 83, 3), 0.5, np.float32))
    assert grey.shape == (224, 224, 3) and grey.dtype == np.float32
    assert grey[0, 0] == pytest.approx(127.5 - embedder.FACERES_BGR_MEAN)


def test_fused_model_needs_its_own_threshold_for_other_metrics(models_home: Path) -> None:
    detector = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_metric="euclidean"))
    with pytest.raises(DetectorUnavailable, match="calibrated for the cosine metric only"):
        detector.load()
    chosen = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_metric="euclidean",
                                                identity_threshold=0.5))
    chosen.load()
    assert chosen.threshold == 0.5


def test_default_threshold_is_the_calibrated_one(models_home: Path) -> None:
    detector = IdentityDetector(Settings.defaults(deepface_home=str(models_home)))
    detector.load()
    assert (detector.model_name, detector.metric) == ("Dlib+FaceRes", "cosine")
    assert detector.threshold == CALIBRATED[("Dlib+FaceRes", "cosine")]
    assert f"cosine <= {detector.threshold:g}" in detector.status()[1]
    assert "fused with FaceRes-deep" in detector.status()[1]
    dlib = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_model="Dlib"))
    dlib.load()
    assert dlib.threshold == CALIBRATED[("Dlib", "cosine")] < 0.07  # below DeepFace's own 0.07
    chosen = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_threshold=0.06))
    chosen.load()
    assert chosen.threshold == 0.06  # an explicit IDENTITY_THRESHOLD wins
    other = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_model="Dlib",
                                               identity_metric="euclidean_l2"))
    other.load()
    assert other.threshold == pytest.approx(0.4)  # not calibrated here: DeepFace's tuned value


# --- events ----------------------------------------------------------------------------------------------------------
def test_one_failed_check_between_passes_never_starts_an_event(fresh: Fresh) -> None:
    settings = Settings.defaults()
    rules = EventRules(rules_config(settings))
    assert rules.config.rules["identity_mismatch"].min_active_frames == 2
    detector = fresh(astronaut())
    same, other = jpeg(astronaut(), 60), grace_hopper()
    interval = settings.identity_interval_s
    changes = []
    for i, frame in enumerate([same, other, same, other, same, other, same]):
        [signal] = detector.analyze(frame, i * interval)
        assert signal.active == (frame is other)
        changes += rules.update(signal.kind, signal.active, signal.confidence, i * interval, signal.details)
    assert changes == []  # a single failed check, however sure, is not an event
    starts = []
    for i, frame in enumerate([other, other], start=7):
        [signal] = detector.analyze(frame, i * interval)
        starts += rules.update(signal.kind, signal.active, signal.confidence, i * interval, signal.details)
    [start] = starts
    assert start.type == "start" and start.start_s == 7 * interval  # from the first of the two failed checks
    assert start.details["reference"] in {r.label for r in detector.references}
