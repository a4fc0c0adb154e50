"""The phone and person detector: the bundled NanoDet-m 416 on real photos, its decoding, the YOLO path, which
model runs (PHONE_MODEL_PATH > fetched > bundled) and what /healthz says about it.

Photos: scikit-image's astronaut, camera and coffee, matplotlib's Grace Hopper (as in test_detectors.py), and
opencv-doc's yolo.jpg (a real iPhone on a table cloth): the full-size original when Debian's opencv-doc is installed
or extracted (`apt-get download opencv-doc && dpkg -x opencv-doc_*.deb DIR`, then OPENCV_DOC_DIR=DIR/usr/share/
doc/opencv-doc), else the 640-px copy in bench/quality/data.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from analyzers import models
from analyzers.base import DetectorUnavailable
from analyzers.models import FETCHED_PHONE_MODEL, fetched_phone_model, model_status, phone_model
from analyzers.objects import (
    COCO_CLASSES,
    NANODET_BINS,
    PERSON_CLASS,
    PHONE_CLASS,
    NanoDetLevel,
    Thresholds,
    decode_nanodet,
    nanodet_blob,
    nanodet_levels,
)
from analyzers.phone import PhoneDetector
from analyzers.registry import build_detectors
from core.rules import EventRules
from proctor.settings import Settings
from tests.support.phone_model import build_model

PHONE_IN_YOLO_JPG = (122, 515, 440, 748)  # x1, y1, x2, y2 of the iPhone in yolo.jpg, traced by hand


# --- photos ----------------------------------------------------------------------------------------------
def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def cameraman() -> np.ndarray:
    return np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))


def two_astronauts() -> np.ndarray:
    ast = data.astronaut()
    return np.ascontiguousarray(np.hstack([ast, ast[:, ::-1]]))


@pytest.fixture(scope="module")
def yolo_jpg() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The real phone photo and where the phone is: opencv-doc's yolo.jpg when it is here, else the copy in the
    labelled set (bench/quality/data/ocv_yolo.jpg: cropped at (4, 58) and scaled to 640 px wide)."""
    places = [Path(os.environ["OPENCV_DOC_DIR"]) / "opencv4/html/yolo.jpg"] if "OPENCV_DOC_DIR" in os.environ else []
    places.append(Path("/usr/share/doc/opencv-doc/opencv4/html/yolo.jpg"))
    for path in places:
        if path.is_file():
            return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), PHONE_IN_YOLO_JPG
    copy = Path(__file__).resolve().parents[1] / "bench/quality/data/ocv_yolo.jpg"
    scale = 640 / 1024
    x1, y1, x2, y2 = PHONE_IN_YOLO_JPG
    return (cv2.cvtColor(cv2.imread(str(copy)), cv2.COLOR_BGR2RGB),
            ((x1 - 4) * scale, (y1 - 58) * scale, (x2 - 4) * scale, (y2 - 58) * scale))


def overlap(a: list[float], b: tuple[int, int, int, int]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.fixture(scope="module", params=[True, False], ids=["int8", "float"])
def bundled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PhoneDetector:
    """The phone detector on a fresh install (nothing fetched, no PHONE_MODEL_PATH): the bundled NanoDet quantised
    to int8 (the default) and in float (PHONE_NANODET_INT8=false); every photo test holds for both."""
    detector = PhoneDetector(Settings.defaults(deepface_home=str(tmp_path_factory.mktemp("models")),
                                               phone_nanodet_int8=request.param))
    detector.load()
    return detector


# --- NanoDet on real photos ------------------------------------------------------------------------------
@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float"])
def test_bundled_nanodet_finds_the_real_phone(
        yolo_jpg: tuple[np.ndarray, tuple[float, float, float, float]], tmp_path: Path, int8: bool) -> None:
    rgb, where = yolo_jpg
    # A weak model: 0.42 on the full-size photo, 0.34 on the 640-px copy, 0.26-0.46 on crops and rescales of it; so
    # at the default PHONE_CONF (0.35) it is found in one and missed in the other. Here: the one box it sees is the
    # phone, with a score in that band, and nothing else is a phone.
    detector = PhoneDetector(Settings.defaults(deepface_home=str(tmp_path), phone_conf=0.25,
                                               phone_nanodet_int8=int8))
    detector.load()
    [phone] = detector.detect(rgb)
    assert 0.25 <= phone[4] <= 0.5
    assert overlap(phone, where) > 0.75
    assert detector.detect_all(rgb).persons == []  # a drawn cartoon man on a cup is no person


@pytest.mark.parametrize("photo", [data.astronaut, cameraman, grace_hopper])
def test_one_person_no_phone(bundled: PhoneDetector, photo: Callable[[], np.ndarray]) -> None:
    rgb = photo()
    found = bundled.detect_all(rgb)
    assert found.phones == []  # camera's shirt collar scores 0.33 as a phone: below PHONE_CONF 0.35
    [person] = found.persons  # no second "person" box passes PERSON_CONF 0.45 (the highest seen: 0.34)
    assert person[4] > 0.7
    height, width = rgb.shape[:2]
    assert (person[2] - person[0]) * (person[3] - person[1]) > 0.4 * width * height
    phone, people = bundled.analyze(rgb, 1.0)
    assert (phone.kind, phone.active, phone.details, phone.box) == ("phone", False, {"boxes": []}, None)
    assert (people.kind, people.active, people.source, people.details["persons"]) == (
        "multiple_people", False, "persons", 1)


def test_face_free_photo_holds_nothing(bundled: PhoneDetector) -> None:
    found = bundled.detect_all(data.coffee())
    assert (found.phones, found.persons) == ([], [])


def test_two_persons_raise_multiple_people_without_the_faces(bundled: PhoneDetector) -> None:
    phone, people = bundled.analyze(two_astronauts(), 2.0)
    assert not phone.active
    assert people.active and people.source == "persons" and people.details["persons"] == 2
    assert people.confidence == pytest.approx(people.details["boxes"][1][4], abs=1e-3) and people.confidence > 0.6
    assert people.box is not None and people.box[0] >= 512 * 0.9  # the second box is the mirrored copy
    # Through the rules, fed as live.py does: the face detector (no source) says one face at 4 fps, the
    # person boxes at 1 fps say two: the OR raises multiple_people, and the details say who saw it.
    rules = EventRules()
    changes = []
    for step in range(13):
        t = step * 0.25
        changes += rules.update("multiple_people", False, 0.0, t, {"faces": 1})
        if step % 4 == 0:
            changes += rules.update(people.kind, people.active, people.confidence, t, people.details,
                                    source=people.source)
    [start] = changes
    assert start.start_s == 0.0 and start.details["sources"] == ["persons"] and start.details["persons"] == 2


def test_letterboxing_does_not_invent_objects(bundled: PhoneDetector) -> None:
    # Padding in the mean colour is "nothing there": a plain grey frame of any shape holds no object.
    for shape in ((480, 640, 3), (640, 360, 3), (416, 416, 3)):
        found = bundled.detect_all(np.full(shape, 128, np.uint8))
        assert (found.phones, found.persons) == ([], [])


# --- NanoDet decoding, without the model -------------------------------------------------------------------
def test_nanodet_blob_is_bgr_normalised_and_letterboxed() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :, 0] = 255  # pure red
    blob, lb = nanodet_blob(frame)
    assert blob.shape == (1, 3, 416, 416) and blob.dtype == np.float32
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.65, 0, 52)
    assert blob[0, 2, 200, 200] == pytest.approx((255 - 123.675) / 58.395)  # red is the last channel (BGR)
    assert blob[0, 0, 200, 200] == pytest.approx(-103.53 / 57.375)
    assert np.abs(blob[0, :, :52]).max() < 0.02 and np.abs(blob[0, :, 364:]).max() < 0.02  # mean padding ~ 0


def _level(stride: int, hits: dict[int, tuple[int, float, tuple[int, int, int, int]]]) -> NanoDetLevel:
    """A level whose cells `hits` (cell -> (class, score, distances in grid units)) hold one peaked box each."""
    cells = (416 // stride) ** 2
    scores = np.zeros((cells, COCO_CLASSES), np.float32)
    boxes = np.zeros((cells, 4 * NANODET_BINS), np.float32)
    for cell, (class_id, score, sides) in hits.items():
        scores[cell, class_id] = score
        for side, distance in enumerate(sides):
            boxes[cell, side * NANODET_BINS + distance] = 30.0  # softmax ~ one-hot on that bin
    return NanoDetLevel(stride, scores, boxes)


def test_decode_nanodet_boxes_from_distributions() -> None:
    levels = [
        _level(8, {2 * 52 + 3: (PHONE_CLASS, 0.6, (2, 3, 4, 5))}),  # row 2, col 3: centre (28, 20)
        _level(16, {10 * 26 + 12: (PHONE_CLASS, 0.3, (1, 1, 1, 1)), 0: (PERSON_CLASS, 0.9, (0, 0, 10, 10))}),
        _level(32, {}),
    ]
    boxes, scores = decode_nanodet(levels, conf=0.25, class_id=PHONE_CLASS)
    assert scores.tolist() == pytest.approx([0.6, 0.3])
    assert boxes[0].tolist() == pytest.approx([28 - 16, 20 - 24, 28 + 32, 20 + 40], abs=1e-3)
    assert boxes[1].tolist() == pytest.approx([200 - 16, 168 - 16, 200 + 16, 168 + 16], abs=1e-3)
    assert decode_nanodet(levels, conf=0.5, class_id=PHONE_CLASS)[1].tolist() == pytest.approx([0.6])
    boxes, scores = decode_nanodet(levels, conf=0.5, class_id=PERSON_CLASS)
    assert len(boxes) == 1 and boxes[0].tolist() == pytest.approx([8, 8, 168, 168], abs=1e-3)
    # A flat distribution is its mean: 5 grid units each way.
    flat = NanoDetLevel(32, levels[2].scores.copy(), levels[2].boxes)
    flat.scores[0, PHONE_CLASS] = 0.9
    assert decode_nanodet([flat], 0.5, PHONE_CLASS)[0][0].tolist() == pytest.approx([-144, -144, 176, 176], abs=1e-3)


def test_nanodet_levels_are_told_apart_by_shape() -> None:
    raw = [np.zeros((1, cells, width), np.float32) for cells in (169, 2704, 676) for width in (44, 80)]
    raw[3][0, 5, 7] = 1.0  # 2704 x 80: the stride-8 scores
    levels = nanodet_levels(list(reversed(raw)))
    assert [lv.stride for lv in levels] == [8, 16, 32]
    assert levels[0].scores.shape == (2704, 80) and levels[0].scores[5, 7] == 1.0
    assert levels[2].boxes.shape == (169, 44)
    with pytest.raises(ValueError, match="stride-16"):
        nanodet_levels([raw[0], raw[1], raw[2], raw[3]])


# --- the YOLO path (a tiny stand-in with YOLOv8's layout) -----------------------------------------------------
DETECTIONS = [
    ((100, 290, 100, 100), {PHONE_CLASS: 0.9}),
    ((320, 320, 200, 400), {PERSON_CLASS: 0.95}),
    ((560, 320, 100, 400), {PERSON_CLASS: 0.5}),
    ((420, 200, 30, 60), {PERSON_CLASS: 0.4}),  # below PERSON_CONF 0.45
]


@pytest.fixture(scope="module")
def yolo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("yolo") / "yolov8-standin.onnx", DETECTIONS)


def test_yolo_path_returns_phones_and_persons(yolo_model: Path) -> None:
    detector = PhoneDetector(Settings.defaults(phone_model_path=str(yolo_model)))
    detector.load()
    frame = np.random.default_rng(2).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    found = detector.detect_all(frame)
    assert found.phones == [pytest.approx([50, 240, 150, 340, 0.9])]
    assert found.persons == [pytest.approx([220, 120, 420, 520, 0.95]), pytest.approx([510, 120, 610, 520, 0.5])]
    assert detector.detect(frame) == found.phones
    phone, people = detector.analyze(frame, 5.0)
    assert phone.active and phone.confidence == pytest.approx(0.9)
    assert people.active and people.confidence == pytest.approx(0.5)
    assert people.box == pytest.approx([510, 120, 610, 520])
    strict = PhoneDetector(Settings.defaults(phone_model_path=str(yolo_model), person_conf=0.6))
    assert not strict.analyze(frame, 5.0)[1].active


# --- which model runs ----------------------------------------------------------------------------------------
def test_model_choice_order(tmp_path: Path, yolo_model: Path) -> None:
    settings = Settings.defaults(deepface_home=str(tmp_path))
    assert fetched_phone_model(settings) == tmp_path / FETCHED_PHONE_MODEL == tmp_path / "phone" / "yolo.onnx"
    # A fresh install: the bundled NanoDet.
    choice = phone_model(settings)
    assert (choice.backend, choice.origin, choice.path) == ("nanodet", "bundled", models.BUNDLED_PHONE_MODEL_INT8)
    status = model_status(settings)["phone"]
    assert status["status"] == "ok" and status["detail"].startswith("bundled NanoDet-m 416 int8 (COCO mAP 0.235: weak")
    assert "proctor models fetch" in status["detail"]
    # PHONE_NANODET_INT8=false: the float model.
    floating = Settings.defaults(deepface_home=str(tmp_path), phone_nanodet_int8=False)
    assert phone_model(floating) == models.PhoneModel("nanodet", "bundled", models.BUNDLED_PHONE_MODEL)
    assert model_status(floating)["phone"] == {"status": "ok", "detail": models.BUNDLED_PHONE_DETAIL}
    # `proctor models fetch` installed a YOLO export: it wins over the bundled model.
    fetched = fetched_phone_model(settings)
    fetched.parent.mkdir(parents=True)
    build_model(fetched, DETECTIONS)
    choice = phone_model(settings)
    assert (choice.backend, choice.origin, choice.path) == ("yolo", "fetched", fetched)
    assert model_status(settings)["phone"] == {"status": "ok",
                                               "detail": f"YOLO ONNX {fetched} (fetched: `proctor models fetch`)"}
    detector = PhoneDetector(settings)
    detector.load()
    assert detector.status() == (True, f"YOLO ONNX {fetched} (fetched: `proctor models fetch`)")
    assert detector.detect_all(np.zeros((640, 640, 3), np.uint8)).phones[0][4] == pytest.approx(0.9)
    assert phone_model(replace(settings, phone_nanodet_int8=False)) == choice  # no effect on a YOLO model
    # PHONE_MODEL_PATH wins over both.
    user = Settings.defaults(deepface_home=str(tmp_path), phone_model_path=str(yolo_model))
    choice = phone_model(user)
    assert (choice.backend, choice.origin, choice.path) == ("yolo", "user", yolo_model)
    assert model_status(user)["phone"]["detail"] == f"YOLO ONNX {yolo_model} (user-supplied: PHONE_MODEL_PATH)"
    # ... even when it is wrong: a mistake to fix, not a silent fallback to a weaker model.
    wrong = Settings.defaults(deepface_home=str(tmp_path), phone_model_path=str(tmp_path / "typo.onnx"))
    detail = f"PHONE_MODEL_PATH {tmp_path / 'typo.onnx'} does not exist: no phone detection"
    assert model_status(wrong)["phone"] == {"status": "unavailable", "detail": detail}
    with pytest.raises(DetectorUnavailable, match="does not exist"):
        PhoneDetector(wrong).load()


def test_bundled_detector_status_and_registry(bundled: PhoneDetector, tmp_path: Path) -> None:
    ok, detail = bundled.status()
    assert ok and detail == (models.BUNDLED_PHONE_DETAIL_INT8 if bundled.model.path == models.BUNDLED_PHONE_MODEL_INT8
                             else models.BUNDLED_PHONE_DETAIL)
    assert bundled.fps == 1.0 and bundled.thresholds == Thresholds(phone=0.35, person=0.45, iou=0.45)
    detectors = build_detectors(Settings.defaults(deepface_home=str(tmp_path), analyzers_enabled=("phone",)))
    assert [d.name for d in detectors] == ["phone"] and detectors.unavailable == {}


@pytest.mark.parametrize(("int8", "name", "rebuild"), [(True, "BUNDLED_PHONE_MODEL_INT8", "quantize_nanodet.py"),
                                                       (False, "BUNDLED_PHONE_MODEL", "convert_nanodet.sh")])
def test_missing_bundled_weights_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, int8: bool,
                                              name: str, rebuild: str) -> None:
    monkeypatch.setattr(models, name, tmp_path / "gone.onnx")
    settings = Settings.defaults(deepface_home=str(tmp_path), phone_nanodet_int8=int8)
    status = model_status(settings)["phone"]
    assert status["status"] == "unavailable" and "bundled NanoDet weights missing" in status["detail"]
    detector = PhoneDetector(settings)
    with pytest.raises(DetectorUnavailable, match=rebuild):
        detector.load()
    assert detector.status()[0] is False


def test_the_bundled_file_is_packaged_and_documented() -> None:
    root = Path(__file__).resolve().parents[1]
    weights = root / "analyzers" / "weights"
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "weights/*.onnx" in pyproject["tool"]["setuptools"]["package-data"]["analyzers"]
    assert "weights/quantize_*" in pyproject["tool"]["setuptools"]["package-data"]["analyzers"]
    notice = (weights / "NOTICE.md").read_text()
    for path in (models.BUNDLED_PHONE_MODEL, models.BUNDLED_PHONE_MODEL_INT8):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.parent == weights and digest in notice, path.name
    assert "Apache License" in notice and "MIT License" in notice
