"""BlazeFace, mediapipe's face detection models, run on onnxruntime with mediapipe's own pre- and post-processing.

The models are mediapipe 0.10.21's own (`face_detection_short_range.tflite`, `face_detection_full_range_sparse
.tflite`), converted to ONNX unchanged (analyzers/weights/convert_blazeface.sh; NOTICE.md). What mediapipe's
FaceDetection graph does around the model (mediapipe/modules/face_detection/face_detection.pbtxt) is done here the
same way, step for step, so that scores, boxes and keypoints are mediapipe's and every threshold tuned on them
holds (tests/test_blazeface.py compares the two on real photos):

1. ImageToTensorCalculator, keep_aspect_ratio, BORDER_ZERO: the whole picture, padded with black to a square on
   its long side around its centre, warped to the model's input (`cv2.warpAffine`, bilinear, as its OpenCV
   converter does with cv2.warpPerspective), values to [-1, 1].
2. The model: 16 regressors (box centre, size, 6 keypoints, in input pixels from an anchor) and a logit per
   anchor.
3. SsdAnchorsCalculator (`ssd_anchors`) and TensorsToDetectionsCalculator (`decode`): anchor centres on each
   stride's grid, fixed anchor size, sigmoid of the clipped logit, detections under the minimum score dropped.
4. NonMaxSuppressionCalculator, WEIGHTED, IoU > 0.3 (`weighted_nms`): the best detection absorbs those that
   overlap it, its box and keypoints the score-weighted mean of theirs, its score its own.
5. DetectionProjectionCalculator: back to the picture's coordinates.

Why not mediapipe's graph itself: the same call costs less here. On a 640x480 frame, AMD EPYC (Zen 4, AVX-512):
1.44-1.53 ms of CPU against the graph's 1.68-1.70 (short range), 3.48-3.51 against 4.68-4.90 (full range)
(`python -m bench.face_models`). On the Intel Xeon of earlier sessions the graph cost 3.8 / 9.3 ms where TFLite's
interpreter alone took 2.2 / 6.4, so more is expected there (not measured). An InferenceSession is thread-safe, so
one per model serves every stream of the process (mediapipe needed a pool of graphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from analyzers.objects import iou as box_iou

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
KEYPOINTS = 6  # right eye, left eye, nose tip, mouth, right ear, left ear (the subject's)
COORDS = 4 + 2 * KEYPOINTS
SCORE_CLIP = 100.0  # TensorsToDetectionsCalculator's score_clipping_thresh
NMS_IOU = 0.3  # NonMaxSuppressionCalculator's min_suppression_threshold (overlap strictly above it suppresses)
# SsdAnchorsCalculator's options shared by both models (face_detection.pbtxt); only the count and centres of the
# anchors matter with a fixed anchor size, so min_scale/max_scale (0.1484375, 0.75) do not appear.
ANCHOR_OFFSET = 0.5


@dataclass(frozen=True)
class BlazeFaceModel:
    """One of mediapipe's two face detection models and its graph's options (face_detection_*_range.pbtxt)."""

    name: str
    file: str
    size: int  # input width = height, pixels; also the regressors' x/y/w/h scale
    strides: tuple[int, ...]  # one per SSD layer; consecutive layers of one stride share a grid
    interpolated_anchor: bool  # interpolated_scale_aspect_ratio 1.0: a second anchor per layer and cell
    # The graph's min_score_thresh. mediapipe 0.10.21's FaceDetection solution never applies its own
    # min_detection_confidence (0.3 or 0.7 alike, it returns every detection from this up, nothing below), so
    # these are the minimums every threshold of ours was tuned with; detections under it take no part in the
    # weighted suppression either.
    min_score: float

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


SHORT_RANGE_MODEL = BlazeFaceModel("short", "face_detection_short_range.onnx", 128, (8, 16, 16, 16), True, 0.5)
FULL_RANGE_MODEL = BlazeFaceModel("full", "face_detection_full_range.onnx", 192, (4,), False, 0.6)
FACES_DETAIL = "BlazeFace short + full range (mediapipe's models, bundled ONNX on onnxruntime)"


def missing_weights(*models: BlazeFaceModel) -> str | None:
    """Why these bundled models cannot load for want of their files (None: every file is there)."""
    missing = [str(model.path) for model in models if not model.path.is_file()]
    if not missing:
        return None
    return (f"bundled face detection weights missing ({', '.join(missing)}): reinstall the package, or rebuild them "
            "with analyzers/weights/convert_blazeface.sh")


@dataclass(frozen=True)
class RawFace:
    """One detection in the picture's pixels: the model's own box (not clipped to the picture)."""

    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    keypoints: tuple[tuple[float, float], ...]


def ssd_anchors(model: BlazeFaceModel) -> np.ndarray:
    """Anchor centres (N x 2: x, y in [0, 1] of the input) in the order of the model's outputs."""
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(model.strides):
        stride = model.strides[layer]
        per_cell = 0
        while layer < len(model.strides) and model.strides[layer] == stride:  # one grid for a run of equal strides
            per_cell += 1 + int(model.interpolated_anchor)  # aspect ratio 1.0, and the interpolated one
            layer += 1
        cells = -(-model.size // stride)  # ceil
        grid = (np.arange(cells, dtype=np.float32) + ANCHOR_OFFSET) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, per_cell, axis=0))
    return np.concatenate(centres)


@dataclass(frozen=True)
class Letterbox:
    """The square region of the picture the input covers: its top-left corner and side, in picture pixels."""

    x0: float
    y0: float
    side: float


def input_tensor(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The picture as the model's 1 x size x size x 3 float input in [-1, 1], and where the input lies on it."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"a picture must be HxWx3 uint8 RGB, not {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    side = float(max(width, height))
    box = Letterbox((width - side) / 2, (height - side) / 2, side)
    scale = size / side
    # Picture pixel corners to input pixel corners, as the OpenCV converter's perspective transform of the ROI's
    # corners onto the output's corners.
    warp = np.array([[scale, 0.0, -box.x0 * scale], [0.0, scale, -box.y0 * scale]], dtype=np.float64)
    small = cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0))
    tensor = small.astype(np.float32)
    tensor *= 2.0 / 255.0
    tensor -= 1.0
    return tensor[None], box


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, size: int,
           min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores (K) and boxes with keypoints (K x 16: x1, y1, x2, y2, then x, y per keypoint; input-relative) of the
    anchors scoring at least min_score."""
    # exp(100) fits a float32; the clip is mediapipe's score_clipping_thresh.
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
    rows = regressors.reshape(-1, COORDS)
    # As the calculator: a box the model gives a negative or NaN width or height is no detection.
    keep = np.flatnonzero((scores >= min_score) & np.all(rows[:, 2:4] >= 0, axis=1))
    raw = rows[keep] / size
    centre = anchors[keep]
    out = np.empty((len(keep), COORDS), dtype=np.float32)
    cx, cy = raw[:, 0] + centre[:, 0], raw[:, 1] + centre[:, 1]
    half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    out[:, 4::2] = raw[:, 4::2] + centre[:, :1]
    out[:, 5::2] = raw[:, 5::2] + centre[:, 1:]
    return scores[keep].astype(np.float32), out


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, iou: float = NMS_IOU) -> list[tuple[float, np.ndarray]]:
    """mediapipe's weighted non-maximum suppression: best first, each kept detection's box and keypoints the
    score-weighted mean of those overlapping it by more than `iou` (itself included), its score its own."""
    order = np.argsort(-scores, kind="stable")
    scores, boxes = scores[order], boxes[order]
    remaining = np.arange(len(scores))
    kept: list[tuple[float, np.ndarray]] = []
    while remaining.size:
        top = remaining[0]
        overlap = box_iou(boxes[top], boxes[remaining]) > iou
        if not overlap.any():
            # A box of no area overlaps nothing, itself included: the calculator keeps it as it is and, having
            # removed nothing this round, stops there.
            kept.append((float(scores[top]), boxes[top].copy()))
            break
        group = remaining[overlap]
        weights = scores[group]
        kept.append((float(scores[top]), (boxes[group] * weights[:, None]).sum(axis=0) / weights.sum()))
        remaining = remaining[~overlap]
    return kept


class BlazeFace:
    """One model loaded on onnxruntime; `detect` is thread-safe (one session shared by every stream)."""

    def __init__(self, model: BlazeFaceModel, session: Any) -> None:
        self.model = model
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.anchors = ssd_anchors(model)
        outputs = session.get_outputs()
        shapes = [tuple(out.shape) for out in outputs]
        if sorted(shape[-1] for shape in shapes) != [1, COORDS] or any(s[1] != len(self.anchors) for s in shapes):
            raise ValueError(f"outputs {shapes} are not BlazeFace's {len(self.anchors)} x ({COORDS}, 1)")
        # Which output is which, by shape (tf2onnx's names differ between the two conversions).
        self.regressors_at = next(i for i, shape in enumerate(shapes) if shape[-1] == COORDS)

    def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's regressors and logits for an input tensor."""
        outputs = self.session.run(None, {self.input_name: tensor})
        return outputs[self.regressors_at], outputs[1 - self.regressors_at]

    def detect(self, rgb: np.ndarray) -> list[RawFace]:
        """The faces in an HxWx3 uint8 RGB picture scoring at least the graph's minimum, best first, in picture
        pixels."""
        tensor, box = input_tensor(rgb, self.model.size)
        regressors, logits = self.raw(tensor)
        scores, boxes = decode(regressors, logits, self.anchors, self.model.size, self.model.min_score)
        faces = []
        for score, found in weighted_nms(scores, boxes):
            xy = found.astype(np.float64) * box.side
            xy[0::2] += box.x0
            xy[1::2] += box.y0
            points = tuple((float(xy[i]), float(xy[i + 1])) for i in range(4, COORDS, 2))
            faces.append(RawFace(score, (float(xy[0]), float(xy[1]), float(xy[2]), float(xy[3])), points))
        return faces
