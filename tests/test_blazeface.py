"""BlazeFace on onnxruntime (analyzers/blazeface.py): mediapipe's FaceDetection graph's detections, from the same
models, on bench/quality's labelled real photos; its anchors, decoding and weighted suppression on their own; one
session shared by threads; a missing model file refused with a reason."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from analyzers import faces as faces_mod
from analyzers import models as models_mod
from analyzers.base import DetectorUnavailable, onnx_session
from analyzers.blazeface import (
    COORDS,
    FULL_RANGE_MODEL,
    SHORT_RANGE_MODEL,
    BlazeFace,
    BlazeFaceModel,
    RawFace,
    decode,
    input_tensor,
    ssd_anchors,
    weighted_nms,
)

PHOTOS = sorted((Path(__file__).resolve().parent.parent / "bench" / "quality" / "data").glob("*.jpg"))
MODELS = {0: SHORT_RANGE_MODEL, 1: FULL_RANGE_MODEL}  # mediapipe's model_selection


def _load(model: BlazeFaceModel) -> BlazeFace:
    return BlazeFace(model, onnx_session(model.path, "bundled BlazeFace"))


def _theirs(graph: object, rgb: np.ndarray) -> list[RawFace]:
    height, width = rgb.shape[:2]
    faces = []
    for found in graph.process(rgb).detections or []:  # type: ignore[attr-defined]
        box = found.location_data.relative_bounding_box
        points = tuple((point.x * width, point.y * height) for point in found.location_data.relative_keypoints)
        faces.append(RawFace(float(found.score[0]), (box.xmin * width, box.ymin * height,
                                                     (box.xmin + box.width) * width,
                                                     (box.ymin + box.height) * height), points))
    return faces


@pytest.mark.parametrize("selection", [0, 1], ids=["short", "full"])
def test_the_same_detections_as_mediapipe_on_real_photos(selection: int) -> None:
    import mediapipe as mp

    model = MODELS[selection]
    mine_model = _load(model)
    # min_detection_confidence is not applied by mediapipe 0.10.21's solution (the graph's own minimum is):
    # passing one far below shows it, and is what the faces detector used to pass.
    graph = mp.solutions.face_detection.FaceDetection(model_selection=selection, min_detection_confidence=0.3)
    score_errors, shape_errors = [], []
    pictures = 0
    for path in PHOTOS:
        photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        for rgb in (photo, cv2.resize(photo, (640, 480))):  # its own shape, and a webcam frame's
            theirs, mine = _theirs(graph, rgb), mine_model.detect(rgb)
            assert len(mine) == len(theirs), path.name
            assert all(face.score >= model.min_score for face in theirs + mine)
            pictures += bool(theirs)
            for a, b in zip(sorted(mine, key=lambda f: f.box), sorted(theirs, key=lambda f: f.box), strict=True):
                side = max(b.box[2] - b.box[0], b.box[3] - b.box[1])
                score_errors.append(abs(a.score - b.score))
                shape = [abs(x - y) for x, y in zip(a.box, b.box, strict=True)]
                shape += list(np.abs(np.subtract(a.keypoints, b.keypoints)).ravel())
                shape_errors.append(max(shape) / side)
    assert pictures > 150
    # Measured here: scores 0.001 apart at the 95th percentile (0.024 at most), boxes and keypoints 0.2 % of the
    # face's size (1.3 % at most); the same numbers of faces on every picture.
    assert np.percentile(score_errors, 95) < 0.005 and max(score_errors) < 0.05
    assert np.percentile(shape_errors, 95) < 0.01 and max(shape_errors) < 0.05


def test_anchors_follow_the_graphs_ssd_options() -> None:
    short, full = ssd_anchors(SHORT_RANGE_MODEL), ssd_anchors(FULL_RANGE_MODEL)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Short range: a 16x16 grid with 2 anchors a cell (stride 8), then an 8x8 grid with 6 (three stride-16 layers).
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], (0.5 / 16, 0.5 / 16))
    assert np.allclose(short[2], (1.5 / 16, 0.5 / 16))  # x runs fastest
    assert np.allclose(short[511], (15.5 / 16, 15.5 / 16))
    assert np.allclose(short[512:518], (0.5 / 8, 0.5 / 8)) and np.allclose(short[518], (1.5 / 8, 0.5 / 8))
    assert np.allclose(full[1], (1.5 / 48, 0.5 / 48)) and np.allclose(full[48], (0.5 / 48, 1.5 / 48))


def test_decode_places_a_box_and_keypoints_on_its_anchor() -> None:
    anchors = ssd_anchors(SHORT_RANGE_MODEL)
    regressors = np.zeros((1, len(anchors), COORDS), np.float32)
    logits = np.full((1, len(anchors), 1), -10.0, np.float32)
    at = 600  # an anchor of the 8x8 grid
    regressors[0, at, :4] = (12.8, -6.4, 32.0, 64.0)  # centre moved by (0.1, -0.05) of the input, 0.25 x 0.5
    regressors[0, at, 4:6] = (-12.8, 0.0)  # the first keypoint 0.1 left of the anchor
    logits[0, at, 0] = 1e6  # clipped to 100 before the sigmoid, as the graph does
    scores, boxes = decode(regressors, logits, anchors, 128, 0.5)
    assert scores.tolist() == [1.0]
    cx, cy = anchors[at] + (0.1, -0.05)
    assert np.allclose(boxes[0, :4], (cx - 0.125, cy - 0.25, cx + 0.125, cy + 0.25))
    assert np.allclose(boxes[0, 4:6], (anchors[at][0] - 0.1, anchors[at][1]))
    assert decode(regressors, logits - 1e6 - 10.0, anchors, 128, 0.5)[0].size == 0  # nothing at the minimum
    logits[0, at, 0] = 0.0  # exactly the minimum (sigmoid 0.5): kept, as the calculator keeps it
    assert decode(regressors, logits, anchors, 128, 0.5)[0].tolist() == [0.5]
    regressors[0, at, 2] = -1.0  # a negative width is no detection, however sure the model is
    assert decode(regressors, logits, anchors, 128, 0.5)[0].size == 0
    regressors[0, at, 2] = np.nan
    assert decode(regressors, logits, anchors, 128, 0.5)[0].size == 0


def test_weighted_suppression_averages_what_overlaps_the_best() -> None:
    def row(x1: float, y1: float, x2: float, y2: float) -> list[float]:
        return [x1, y1, x2, y2] + [x2, y2] * 6  # keypoints at the bottom-right corner

    boxes = np.array([row(0.1, 0.1, 0.3, 0.3), row(0.12, 0.1, 0.32, 0.3), row(0.6, 0.6, 0.7, 0.7),
                      row(0.2, 0.2, 0.4, 0.4)], np.float32)
    scores = np.array([0.9, 0.6, 0.8, 0.7], np.float32)
    kept = weighted_nms(scores, boxes)
    assert [score for score, _ in kept] == pytest.approx([0.9, 0.8, 0.7])  # each keeps its own score
    # The best absorbed the second (IoU 0.82), weighted 0.9 : 0.6; the fourth overlaps it by 0.14 only: its own.
    assert np.allclose(kept[0][1][:4], (0.108, 0.1, 0.308, 0.3))
    assert np.allclose(kept[0][1][4:], (0.308, 0.3) * 6)  # keypoints weighted the same way
    assert np.allclose(kept[1][1], boxes[2]) and np.allclose(kept[2][1], boxes[3])
    # A box of no area overlaps nothing, not even itself: the calculator keeps it as it is and stops there.
    flat = np.array([row(0.5, 0.5, 0.5, 0.6), row(0.1, 0.1, 0.3, 0.3)], np.float32)
    [(score, box)] = weighted_nms(np.array([0.9, 0.8], np.float32), flat)
    assert score == pytest.approx(0.9) and np.allclose(box, flat[0])


def test_input_is_the_picture_letterboxed_onto_the_models_square() -> None:
    rgb = np.full((480, 640, 3), 255, np.uint8)
    tensor, box = input_tensor(rgb, 128)
    assert tensor.shape == (1, 128, 128, 3) and tensor.dtype == np.float32
    assert (box.x0, box.y0, box.side) == (0.0, -80.0, 640.0)
    assert np.allclose(tensor[0, :15], -1.0) and np.allclose(tensor[0, -15:], -1.0)  # black bars: -1
    assert np.allclose(tensor[0, 17:111], 1.0)  # white picture: 1


def test_input_pixels_are_sampled_corner_to_corner() -> None:
    """The warp maps the picture's pixel corners onto the input's, as mediapipe's converter does: input column u
    samples the picture at u * side / size exactly (cv2.resize would sample half a pixel further)."""
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))  # value = column
    tensor, _ = input_tensor(ramp, 128)
    assert np.allclose(tensor[0, 64, :, 0], np.arange(0, 256, 2) / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("picture", [np.zeros((48, 64), np.uint8), np.zeros((48, 64, 4), np.uint8),
                                     np.zeros((48, 64, 3), np.float32), np.zeros((0, 64, 3), np.uint8)],
                         ids=["grey", "rgba", "float", "empty"])
def test_a_picture_that_is_not_rgb_is_refused_clearly(picture: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        input_tensor(picture, 128)


def test_one_session_serves_many_threads() -> None:
    model = _load(SHORT_RANGE_MODEL)
    pictures = [cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (640, 480))
                for path in PHOTOS[:24]]
    expected = [model.detect(rgb) for rgb in pictures]
    results: dict[int, list[list[RawFace]]] = {}

    def work(worker: int) -> None:
        results[worker] = [model.detect(rgb) for rgb in pictures]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[worker] == expected for worker in range(4))
    assert sum(bool(faces) for faces in expected) >= 10


def test_missing_weights_are_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gone = dataclasses.replace(SHORT_RANGE_MODEL, name="short-gone", file="../no-such-dir/none.onnx")
    monkeypatch.setitem(faces_mod.BLAZEFACE, faces_mod.SHORT_RANGE, gone)
    with pytest.raises(DetectorUnavailable, match="bundled face detection weights missing"):
        faces_mod.load_face_detection()
    monkeypatch.setattr(models_mod, "SHORT_RANGE_MODEL", gone)
    status = models_mod.faces_status()
    assert status.status == "unavailable" and "none.onnx" in status.detail
    # An ONNX file that loads but is another model (the bundled NanoDet): refused, not a crash on the first frame.
    wrong = dataclasses.replace(SHORT_RANGE_MODEL, name="short-wrong", file="nanodet-m-416-int8.onnx")
    monkeypatch.setitem(faces_mod.BLAZEFACE, faces_mod.SHORT_RANGE, wrong)
    with pytest.raises(DetectorUnavailable, match="are not BlazeFace's"):
        faces_mod.load_face_detection()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DetectorUnavailable, match="not a usable ONNX model"):
        onnx_session(broken, "bundled BlazeFace")
