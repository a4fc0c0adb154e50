"""The detectors on real models and real photos that ship offline (no network).

Photos: scikit-image's astronaut (Eileen Collins, one face), coffee/chelsea/rocket (no face), camera (a man
behind a camera: one face), and matplotlib's sample photo of Grace Hopper ("another person"). The phone
detector's YOLO path runs a tiny ONNX stand-in with YOLOv8's exact input/output layout
(tests/support/phone_model.py); the bundled NanoDet on real photos is tests/test_phone.py's.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from analyzers import gaze as gaze_mod
from analyzers import phone as phone_mod
from analyzers.base import DetectorUnavailable, ModelPool, rules_config
from analyzers.faces import FaceDetector
from analyzers.gaze import GazeDetector, GazeMeasure
from analyzers.identity import CALIBRATED, IdentityDetector
from analyzers.phone import PhoneDetector
from analyzers.registry import build_detectors, detector_status
from core.rules import RulesConfig
from proctor.settings import Settings
from tests.support.phone_model import build_model, yolo_output


# --- photos ----------------------------------------------------------------------------------------------
def astronaut() -> np.ndarray:
    return data.astronaut()


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def cameraman() -> np.ndarray:
    return np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))


def two_faces() -> np.ndarray:
    ast = astronaut()
    return np.ascontiguousarray(np.hstack([ast, ast[:, ::-1]]))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def turn(rgb: np.ndarray, degrees: float, center: tuple[float, float]) -> np.ndarray:
    """The photo as if its plane were turned `degrees` about a vertical axis through `center` (a pinhole
    camera with focal length = width): a flat stand-in for a head turn that moves the landmarks like one."""
    height, width = rgb.shape[:2]
    cx, cy = center
    t = math.radians(degrees)
    src = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    dst = []
    for x, y in src:
        px, py = x - cx, y - cy
        qx, qz = px * math.cos(t), -px * math.sin(t) + width
        dst.append([width * qx / qz + cx, width * py / qz + cy])
    matrix = cv2.getPerspectiveTransform(src, np.float32(dst))
    return cv2.warpPerspective(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    detector = FaceDetector(Settings.defaults())
    detector.load()
    return detector


@pytest.fixture(scope="module")
def identity(models_home: Path) -> IdentityDetector:
    env_before = os.environ.get("DEEPFACE_HOME")
    detector = IdentityDetector(Settings.defaults(deepface_home=str(models_home)))
    detector.load()
    from deepface.commons.backend_utils import get_backend_engine

    assert get_backend_engine() == "onnx"
    assert os.environ.get("DEEPFACE_HOME") == env_before  # set only while deepface loads
    assert detector.set_reference(astronaut())
    return detector


# --- faces -----------------------------------------------------------------------------------------------
def test_face_counts(faces: FaceDetector) -> None:
    cases = {"astronaut": (astronaut(), 1), "two": (two_faces(), 2), "coffee": (data.coffee(), 0),
             "chelsea (a cat)": (data.chelsea(), 0), "rocket": (data.rocket(), 0), "cameraman": (cameraman(), 1),
             "grace hopper": (grace_hopper(), 1)}
    for name, (image, expected) in cases.items():
        no_face, multiple, _ = faces.analyze(image, 1.0)
        assert no_face.details["faces"] == expected, name
        assert (no_face.kind, multiple.kind) == ("no_face", "multiple_people")
        assert no_face.active == (expected == 0), name
        assert multiple.active == (expected >= 2), name


def test_face_signal_details(faces: FaceDetector) -> None:
    no_face, multiple, _ = faces.analyze(two_faces(), 2.0)
    scores = multiple.details["scores"]
    assert len(scores) == 2 and scores[0] >= scores[1] >= faces.min_score
    assert multiple.confidence == pytest.approx(scores[1], abs=1e-3)  # the second-best face
    assert multiple.box is not None and len(multiple.details["boxes"]) == 2
    assert no_face.confidence < 0.2
    no_face, multiple, _ = faces.analyze(data.coffee(), 3.0)
    assert no_face.active and no_face.confidence > 0.5 and not multiple.active and multiple.box is None


def test_faces_are_thread_safe(faces: FaceDetector) -> None:
    images = [astronaut(), two_faces(), data.coffee(), cameraman()] * 3
    expected = [1, 2, 0, 1] * 3
    results: list[int] = [-1] * len(images)

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = faces.analyze(images[i], 0.0)[0].details["faces"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_model_pool_lends_each_instance_to_one_caller() -> None:
    made: list[object] = []
    pool: ModelPool[object] = ModelPool(lambda: made.append(object()) or made[-1], size=2)
    with pool.get() as a, pool.get() as b:
        assert a is not b
    with pool.get() as c:
        assert c in (a, b)
    assert len(made) == 2


# --- gaze: the geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("yaw,pitch,roll", [(0, 0, 0), (15, 0, 0), (-30, 0, 0), (45, 5, 0), (-60, -5, 3),
                                            (0, 20, 0), (0, -25, 0), (30, 15, 10), (-40, -15, -8)])
def test_head_pose_recovers_known_angles(yaw: float, pitch: float, roll: float) -> None:
    width, height = 640, 480
    rotation = gaze_mod.angles_to_rotation(yaw, pitch, roll)
    rvec, _ = cv2.Rodrigues(rotation)
    rng = np.random.default_rng(abs(int(yaw * 100 + pitch)))
    for tvec in ((0, 0, 1800), (150, -60, 2500)):
        points, _ = cv2.projectPoints(gaze_mod.MODEL_POINTS, rvec, np.array(tvec, np.float64),
                                      gaze_mod.camera_matrix(width, height), np.zeros(4))
        points = points.reshape(-1, 2) + rng.normal(0, 0.5, (6, 2))  # half-pixel landmark noise
        est = gaze_mod.head_pose(points, width, height)
        assert est is not None
        assert abs(est[0] - yaw) < 5 and abs(est[1] - pitch) < 5 and abs(est[2] - roll) < 5, (tvec, est)


def test_rotation_angle_conventions() -> None:
    forward = np.array([0.0, 0.0, -1.0])  # where a frontal face's nose points (toward the camera)
    assert (gaze_mod.angles_to_rotation(30, 0) @ forward)[0] > 0  # yaw > 0: toward the image's right
    assert (gaze_mod.angles_to_rotation(0, 30) @ forward)[1] > 0  # pitch > 0: down
    for angles in ((10, -20, 5), (-50, 30, -10)):
        assert gaze_mod.rotation_to_angles(gaze_mod.angles_to_rotation(*angles)) == pytest.approx(angles)


def test_iris_offset() -> None:
    points = np.zeros((478, 2))
    for left, right, iris in gaze_mod.EYES:
        x0 = 100.0 if left == 33 else 200.0
        points[left], points[right] = (x0, 50.0), (x0 + 40.0, 50.0)
        points[iris] = (x0 + 20.0, 50.0)
    assert gaze_mod.iris_offset(points) == pytest.approx((0.0, 0.0))
    for _, _, iris in gaze_mod.EYES:
        points[iris] += (8.0, 4.0)  # a fifth of the eye's width right, a tenth down
    assert gaze_mod.iris_offset(points) == pytest.approx((0.2, 0.1))


def test_gaze_judgement_against_baseline() -> None:
    detector = GazeDetector(Settings.defaults(gaze_yaw_deg=30, gaze_pitch_deg=25, gaze_iris=0.15))
    detector.baseline = GazeMeasure(yaw=5, pitch=30, roll=0, iris_x=0.0, iris_y=-0.05)
    assert not detector.judge(GazeMeasure(20, 40, 0, 0.05, -0.05)).active
    at = detector.judge(GazeMeasure(35.01, 30, 0, 0, -0.05))
    assert at.active and at.confidence == pytest.approx(0.5, abs=0.01) and at.details["reason"] == "yaw"
    down = detector.judge(GazeMeasure(5, 30 + 50, 0, 0, -0.05))
    assert down.active and down.confidence == 1.0 and down.details["reason"] == "pitch"
    eyes = detector.judge(GazeMeasure(5, 30, 0, -0.2, -0.05))
    assert eyes.active and eyes.details["reason"] == "iris"


# --- gaze: on photos ---------------------------------------------------------------------------------------
def test_gaze_on_photos(faces: FaceDetector) -> None:
    ast = astronaut()
    box = faces.count(ast)[0].box
    center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    detector = GazeDetector(Settings.defaults())
    detector.load()
    assert detector.set_baseline_from(ast) and detector.baseline_source == "reference"
    for image in (ast, np.roll(ast, 40, axis=1), cv2.resize(ast, (400, 400)), jpeg(ast, 50), turn(ast, 15, center)):
        [signal] = detector.analyze(image, 10.0)
        assert signal.kind == "looking_away" and not signal.active, signal.details
    for degrees in (55, -55):
        [signal] = detector.analyze(turn(ast, degrees, center), 11.0)
        assert signal.active and signal.details["reason"] == "yaw", signal.details
        assert abs(signal.details["d_yaw"]) > 30 and signal.confidence > 0.5
    assert detector.analyze(data.coffee(), 12.0) == []  # no face: no gaze signal
    assert not detector.set_baseline_from(data.coffee())


def test_gaze_baseline_from_first_seconds() -> None:
    ast = astronaut()
    detector = GazeDetector(Settings.defaults(gaze_baseline_s=3.0))
    detector.load()
    assert detector.analyze(data.coffee(), 0.0) == []  # frames without a face do not count
    for t in (1.0, 2.0, 3.0):
        assert detector.analyze(ast, t) == [] and not detector.calibrated
    [signal] = detector.analyze(ast, 4.0)  # 3 s after the first face: calibrated, and this frame judged
    assert detector.calibrated and detector.baseline_source == "first_seconds" and not signal.active
    assert signal.details["baseline"]["pitch"] == pytest.approx(signal.details["pitch"], abs=1)


# --- identity ----------------------------------------------------------------------------------------------
def test_identity_same_person_matches(identity: IdentityDetector) -> None:
    ast = astronaut()
    brighter = np.clip(ast.astype(np.float32) * 1.2 + 15, 0, 255).astype(np.uint8)
    for name, image in {"itself": ast, "scaled": cv2.resize(ast, (360, 360), interpolation=cv2.INTER_AREA),
                        "brighter": brighter, "jpeg q40": jpeg(ast, 40), "shifted": np.roll(ast, 50, axis=1)}.items():
        [signal] = identity.analyze(image, 5.0)
        assert signal.kind == "identity_mismatch" and not signal.active, (name, signal.details)
        assert signal.details["distance"] < signal.details["threshold"] / 2, (name, signal.details)
        assert signal.confidence < 0.25


def test_identity_other_person_mismatches(identity: IdentityDetector) -> None:
    for name, image in {"grace hopper": grace_hopper(), "cameraman": cameraman()}.items():
        [signal] = identity.analyze(image, 10.0)
        assert signal.active, (name, signal.details)
        assert signal.details["distance"] > 1.5 * signal.details["threshold"], (name, signal.details)
        assert signal.confidence > 0.75 and signal.details["model"] == "Dlib+FaceRes"


def test_identity_needs_a_face_and_a_reference(identity: IdentityDetector, models_home: Path) -> None:
    assert identity.analyze(data.coffee(), 1.0) == []
    fresh = IdentityDetector(Settings.defaults(deepface_home=str(models_home)))
    fresh.load()
    assert fresh.analyze(astronaut(), 1.0) == []  # no reference photo yet
    ok, detail = fresh.status()
    assert ok and "no reference photo yet" in detail
    assert not fresh.set_reference(data.coffee())
    ok, detail = fresh.status()
    assert ok and "reference photo has no usable face: identity not checked" in detail
    # calibrated for the default model and cosine (analyzers.identity.CALIBRATED)
    assert identity.threshold == CALIBRATED[(identity.model_name, "cosine")]


def test_identity_euclidean_metric(models_home: Path) -> None:
    detector = IdentityDetector(Settings.defaults(deepface_home=str(models_home), identity_model="Dlib",
                                                  identity_metric="euclidean"))
    detector.load()
    assert detector.threshold == pytest.approx(0.6)
    assert detector.set_reference(astronaut())
    same, other = detector.compare(jpeg(astronaut(), 50)), detector.compare(grace_hopper())
    assert same is not None and other is not None and same < 0.3 < 0.6 < other


@pytest.mark.parametrize("model,filename", [("Dlib+FaceRes", "dlib_face_recognition_resnet_model_v1.dat"),
                                            ("Dlib", "dlib_face_recognition_resnet_model_v1.dat"),
                                            ("VGG-Face", "vgg_face_weights.onnx"),
                                            ("ArcFace", "arcface_weights.onnx")])
def test_identity_without_weights_is_unavailable(tmp_path: Path, model: str, filename: str) -> None:
    detector = IdentityDetector(Settings.defaults(deepface_home=str(tmp_path), identity_model=model))
    with pytest.raises(DetectorUnavailable) as raised:
        detector.load()
    assert filename in str(raised.value) and str(tmp_path) in str(raised.value)
    ok, detail = detector.status()
    assert not ok and filename in detail
    assert not any(tmp_path.rglob("*.*"))  # nothing was downloaded or started downloading


def test_fused_identity_without_its_bundled_half_is_unavailable(models_home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzers import identity, models

    gone = tmp_path / "faceres-deep.onnx"
    monkeypatch.setattr(identity, "BUNDLED_FACERES", gone)
    monkeypatch.setattr(models, "BUNDLED_FACERES", gone)
    settings = Settings.defaults(deepface_home=str(models_home))
    with pytest.raises(DetectorUnavailable, match="FaceRes-deep weights missing"):
        IdentityDetector(settings).load()
    status = models.identity_status(settings)
    assert not status.ok and "FaceRes-deep weights missing" in status.detail


def test_identity_unknown_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DetectorUnavailable, match="not supported"):
        IdentityDetector(Settings.defaults(deepface_home=str(tmp_path), identity_model="Nope")).load()


# --- phone: pure functions ---------------------------------------------------------------------------------
def test_letterbox_landscape_and_portrait() -> None:
    frame = np.full((480, 640, 3), 200, np.uint8)
    blob, lb = phone_mod.letterbox(frame)
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    assert (lb.scale, lb.pad_x, lb.pad_y) == (1.0, 0, 80)
    assert np.allclose(blob[0, :, :80, :], 114 / 255) and np.allclose(blob[0, :, 560:, :], 114 / 255)
    assert np.allclose(blob[0, :, 80:560, :], 200 / 255)

    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[100:200, 300:500] = (255, 0, 0)  # a red patch: RGB order must survive
    blob, lb = phone_mod.letterbox(frame)
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.5, 0, 140)
    assert blob[0, 0, 140 + 75, 200] == pytest.approx(1.0) and blob[0, 2, 140 + 75, 200] == pytest.approx(0.0)
    assert np.allclose(blob[0, :, :140], 114 / 255) and np.allclose(blob[0, :, 500:], 114 / 255)

    blob, lb = phone_mod.letterbox(np.zeros((640, 360, 3), np.uint8))
    assert (lb.scale, lb.pad_x, lb.pad_y) == (1.0, 140, 0)
    assert np.allclose(blob[0, :, :, :140], 114 / 255) and np.allclose(blob[0, :, :, 140:500], 0)


PHONE, PERSON, REMOTE = 67, 0, 65
DETECTIONS = [
    ((100, 290, 100, 100), {PHONE: 0.9}),  # A
    ((105, 292, 100, 104), {PHONE: 0.8}),  # A', overlapping A: merged by NMS
    ((500, 300, 40, 80), {PHONE: 0.5, REMOTE: 0.2}),  # B: a second phone
    ((320, 320, 200, 400), {PERSON: 0.95}),  # a person: not a phone
    ((420, 200, 30, 60), {PHONE: 0.6, REMOTE: 0.7}),  # more remote than phone: not a phone
    ((50, 50, 20, 20), {PHONE: 0.3}),  # below the 0.35 threshold
]


def test_decode_keeps_only_phones_above_threshold() -> None:
    boxes, scores = phone_mod.decode(yolo_output(DETECTIONS), conf=0.35)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert boxes[0].tolist() == pytest.approx([50, 240, 150, 340])  # cx,cy,w,h -> x1,y1,x2,y2
    boxes, scores = phone_mod.decode(yolo_output(DETECTIONS), conf=0.85)
    assert scores.tolist() == pytest.approx([0.9])
    # the transposed layout (1 x N x 84) decodes the same
    assert phone_mod.decode(yolo_output(DETECTIONS).transpose(0, 2, 1), 0.35)[1].tolist() == pytest.approx(
        [0.9, 0.8, 0.5])


def test_nms_merges_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.7], np.float32)
    # IoU with the best box (1): box 0 81/119 = 0.68, box 3 36/114 = 0.32, box 2 none
    assert phone_mod.nms(boxes, scores, 0.45) == [1, 3, 2]
    assert phone_mod.nms(boxes, scores, 0.3) == [1, 2]
    assert phone_mod.nms(boxes[:0], scores[:0], 0.45) == []


def test_boxes_map_back_to_a_non_square_frame() -> None:
    lb = phone_mod.letterbox(np.zeros((720, 1280, 3), np.uint8))[1]
    back = phone_mod.unletterbox(np.array([[50, 240, 150, 340], [-10, 100, 700, 700]]), lb)
    assert back[0].tolist() == pytest.approx([100, 200, 300, 400])
    assert back[1].tolist() == pytest.approx([0, 0, 1280, 720])  # clipped to the frame
    lb = phone_mod.letterbox(np.zeros((480, 360, 3), np.uint8))[1]  # portrait: scale 4/3, pad_x 80
    assert (lb.scale, lb.pad_x, lb.pad_y) == (pytest.approx(4 / 3), 80, 0)
    assert phone_mod.unletterbox(np.array([[80, 0, 200, 160]]), lb)[0].tolist() == pytest.approx([0, 0, 90, 120])


# --- phone: through onnxruntime --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phone_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("phone") / "yolov8-standin.onnx", DETECTIONS)


def test_phone_detector_end_to_end(phone_model: Path) -> None:
    detector = PhoneDetector(Settings.defaults(phone_model_path=str(phone_model)))
    detector.load()
    assert detector.status() == (True, f"YOLO ONNX {phone_model} (user-supplied: PHONE_MODEL_PATH)")
    frame = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    signal, people = detector.analyze(frame, 3.0)
    assert (people.kind, people.source, people.active, people.details["persons"]) == (
        "multiple_people", "persons", False, 1)  # the stand-in's one person box (tests/test_phone.py: more)
    assert signal.kind == "phone" and signal.active and signal.confidence == pytest.approx(0.9)
    boxes = signal.details["boxes"]
    assert len(boxes) == 2  # A (A' merged into it) and B
    assert boxes[0] == pytest.approx([100, 200, 300, 400, 0.9])
    assert boxes[1] == pytest.approx([(480 - 0) / 0.5, (260 - 140) / 0.5, 520 / 0.5, (340 - 140) / 0.5, 0.5])
    assert signal.box == pytest.approx([100, 200, 300, 400])

    quiet = PhoneDetector(Settings.defaults(phone_model_path=str(phone_model), phone_conf=0.95))
    quiet.load()
    signal, _ = quiet.analyze(frame, 4.0)
    assert not signal.active and signal.details == {"boxes": []} and signal.box is None


def test_phone_without_weights_is_unavailable(tmp_path: Path) -> None:
    # PHONE_MODEL_PATH unset runs the bundled NanoDet (tests/test_phone.py); set to a missing file, it is an error.
    detector = PhoneDetector(Settings.defaults(phone_model_path=str(tmp_path / "missing.onnx")))
    assert detector.status()[0] is False
    with pytest.raises(DetectorUnavailable, match="does not exist"):
        detector.load()
    ok, detail = detector.status()
    assert not ok and "PHONE_MODEL_PATH" in detail
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailable, match="not a usable ONNX model"):
        PhoneDetector(Settings.defaults(phone_model_path=str(junk))).load()


# --- registry ----------------------------------------------------------------------------------------------
def test_build_detectors_skips_unavailable_ones(models_home: Path, phone_model: Path) -> None:
    settings = Settings.defaults(deepface_home=str(models_home), phone_model_path="/nowhere/yolo.onnx", gaze_fps=4.0)
    detectors = build_detectors(settings)
    assert [d.name for d in detectors] == ["faces", "gaze", "identity", "voice"]  # voice: audio, no frames
    assert "PHONE_MODEL_PATH" in detectors.unavailable["phone"]
    # identity: the frames offered to its adaptive cadence (analyzers/identity.py WAKE_FPS), which checks few of them
    assert [d.fps for d in detectors] == [4.0, 4.0, 2.0, 0.0]
    status = detector_status(detectors)
    assert status["phone"]["ok"] is False and status["faces"]["ok"] is True

    detectors = build_detectors(Settings.defaults(deepface_home=str(models_home), phone_model_path=str(phone_model),
                                                  analyzers_enabled=("phone", "faces", "bogus")))
    assert [d.name for d in detectors] == ["phone", "faces"] and "bogus" in detectors.unavailable
    assert detectors.get("phone") is not None and detectors.get("gaze") is None
    # Per-stream instances: state is not shared between streams.
    a, b = build_detectors(settings).get("gaze"), build_detectors(settings).get("gaze")
    assert a is not b
    # A stream's faces and gaze detectors share one short-range detection a frame; streams do not.
    assert isinstance(a, GazeDetector) and isinstance(b, GazeDetector) and a.frame_faces is not b.frame_faces
    stream = build_detectors(settings)
    faces, gaze = stream.get("faces"), stream.get("gaze")
    assert isinstance(faces, FaceDetector) and isinstance(gaze, GazeDetector)
    assert gaze.frame_faces is faces.frame_faces is faces.cadence.frames


def test_detectors_and_rules_read_the_settings(tmp_path: Path) -> None:
    defaults = Settings.defaults(deepface_home=str(tmp_path))
    assert defaults.deepface_weights_dir == tmp_path / ".deepface" / "weights"
    assert rules_config(defaults) == RulesConfig.default()
    new = replace(defaults, identity_model="Facenet", phone_model_path="/m.onnx", analyzers_enabled=("faces",),
                  faces_fps=2.0, gaze_yaw_deg=25.0, identity_interval_s=10.0, event_timing="no_face=5/1")
    identity, gaze, phone = IdentityDetector(new), GazeDetector(new), PhoneDetector(new)
    assert (identity.model_name, identity.cadence.interval_s, identity.weights_dir) == \
        ("Facenet", 10.0, new.deepface_weights_dir)
    assert (gaze.yaw_threshold, phone.path) == (25.0, "/m.onnx")
    [faces] = build_detectors(new)
    assert (faces.name, faces.fps) == ("faces", 2.0)
    rules = rules_config(new).rules
    assert (rules["no_face"].start_after_s, rules["no_face"].end_after_s) == (5.0, 1.0)
    assert rules["identity_mismatch"].max_gap_s == 35.0
