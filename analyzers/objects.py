"""COCO object detectors behind one small interface: the phones (class 67) and persons (class 0) in a frame.

Two backends, both ONNX run by onnxruntime on one thread (many streams share the cores):

* YOLO (v8 or 11 export: a user's PHONE_MODEL_PATH, or what `proctor models fetch` installed). Input 1x3xSxS
  float32 RGB in 0..1, letterboxed (aspect kept, grey 114 padding, centred); output 1x84xN (or 1xNx84): per
  candidate cx, cy, w, h in input pixels, then 80 class scores (no objectness). A box counts for a class when
  that class is its best one.
* NanoDet-m 416 (bundled in analyzers/weights/, see NOTICE.md there). Input [1,3,416,416] NCHW **BGR**,
  (x - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395] (NanoDet's own normalisation); six outputs, two per
  stride 8/16/32 over a (416/stride)^2 grid in row-major order: [1, cells, 80] class scores (sigmoid already
  applied) and [1, cells, 44] box distributions, 4 sides (left, top, right, bottom) x 11 bins; a side's distance
  is sum(softmax(bins) * [0..10]) grid units from the cell centre ((col + 0.5) * stride, (row + 0.5) * stride).
  Like NanoDet's own post-processing, a box counts for every class whose score passes (no argmax).
  Letterboxed (padded with the mean colour), not stretched to 416x416: on 640x480 frames with a real phone
  photo pasted in, letterboxing scored the phone higher (mean 0.43 vs 0.38 over 240 placements), phone-shaped
  false positives lower (1 vs 4 of 433 opencv-doc photos >= 0.45), and it did not see scikit-image's cat as a
  person (0.59 stretched). Stretching scored the one unpasted real phone (opencv-doc's yolo.jpg) higher (0.50
  vs 0.42). Thresholds and their evidence: analyzers/weights/NOTICE.md.

Both then run greedy NMS per class and map boxes back to frame pixels. Boxes are [x1, y1, x2, y2, score] in
frame pixels, best first. The pure functions (letterbox, decode, decode_nanodet, nms, unletterbox) are what
the tests check without a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from analyzers.base import DetectorUnavailable, onnx_session

PERSON_CLASS = 0
PHONE_CLASS = 67
COCO_CLASSES = 80
INPUT_SIZE = 640  # YOLO's export size when the model does not say
PAD_VALUE = 114
MAX_CANDIDATES = 300  # boxes entering NMS per class, best first (as ultralytics does)

NANODET_SIZE = 416
NANODET_STRIDES = (8, 16, 32)
NANODET_BINS = 11  # reg_max 10: distances 0..10 grid units
NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)
_NANODET_INV_STD = (1.0 / NANODET_STD_BGR).astype(np.float32)
_NANODET_SHIFT = (NANODET_MEAN_BGR / NANODET_STD_BGR).astype(np.float32)
# Padding in the mean colour normalises to ~0: the network sees "nothing there", not a grey wall.
NANODET_PAD_RGB = (124, 116, 104)


@dataclass(frozen=True)
class ObjectBoxes:
    """What one frame holds: each list [[x1, y1, x2, y2, score], ...] in frame pixels, best first."""

    phones: list[list[float]]
    persons: list[list[float]]


@dataclass(frozen=True)
class Thresholds:
    phone: float  # lowest "cell phone" score that counts
    person: float  # lowest "person" score that counts
    iou: float  # overlap above which two boxes of one class are one object (NMS)


@dataclass(frozen=True)
class Letterbox:
    scale: float  # input pixels per frame pixel
    pad_x: int  # left padding, input pixels
    pad_y: int  # top padding
    width: int  # original frame size
    height: int


# --- geometry shared by both backends ------------------------------------------------------------------------
def letterbox_image(rgb: np.ndarray, size: int, pad: tuple[int, int, int]) -> tuple[np.ndarray, Letterbox]:
    """Frame (HxWx3 uint8) -> (SxSx3 uint8, aspect kept, centred, padded with `pad`; how to map boxes back). Same
    arithmetic as ultralytics' LetterBox(auto=False, center=True)."""
    height, width = rgb.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = int(round(width * scale)), int(round(height * scale))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    resized = rgb if (new_w, new_h) == (width, height) else cv2.resize(rgb, (new_w, new_h),
                                                                       interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=pad)
    return padded, Letterbox(scale, left, top, width, height)


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """YOLO's input: frame (HxWx3 uint8 RGB) -> (1x3xSxS float32 RGB in 0..1, how to map boxes back)."""
    padded, lb = letterbox_image(rgb, size, (PAD_VALUE, PAD_VALUE, PAD_VALUE))
    blob = np.empty((1, 3, size, size), np.float32)
    for c in range(3):  # one pass per plane straight into the NCHW blob (no float HWC intermediates)
        np.multiply(padded[:, :, c], np.float32(1 / 255), out=blob[0, c], casting="unsafe")
    return blob, lb


def nanodet_blob(rgb: np.ndarray, size: int = NANODET_SIZE) -> tuple[np.ndarray, Letterbox]:
    """NanoDet's input: frame (HxWx3 uint8 RGB) -> (1x3xSxS float32 normalised BGR, how to map boxes back)."""
    padded, lb = letterbox_image(rgb, size, NANODET_PAD_RGB)
    # (x - mean) / std as x * (1/std) - mean/std, one pass per plane straight into the NCHW blob, BGR order taken
    # from the RGB planes: 0.9 ms against 7.2 ms for the float HWC copies it replaced (thread CPU, 640x480 frame,
    # same values within 3e-7).
    blob = np.empty((1, 3, size, size), np.float32)
    for c in range(3):
        plane = blob[0, c]
        np.multiply(padded[:, :, 2 - c], _NANODET_INV_STD[c], out=plane, casting="unsafe")
        plane -= _NANODET_SHIFT[c]
    return blob, lb


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if not order:
            break
        overlaps = iou(boxes[best], boxes[order])
        order = [idx for idx, overlap in zip(order, overlaps, strict=True) if overlap <= iou_threshold]
    return keep


def unletterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes in input pixels -> boxes in frame pixels, clipped to the frame."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.height)
    return out


def _best_first(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    return boxes[order].reshape(-1, 4), scores[order]


def to_frame(boxes: np.ndarray, scores: np.ndarray, lb: Letterbox, iou_threshold: float) -> list[list[float]]:
    """Decoded candidates of one class (input pixels) -> [[x1, y1, x2, y2, score], ...] in frame pixels after
    NMS, best first."""
    if len(scores) == 0:
        return []
    keep = nms(boxes, scores, iou_threshold)
    frame_boxes = unletterbox(boxes[keep], lb)
    return [[*map(float, box), float(score)] for box, score in zip(frame_boxes, scores[keep], strict=True)]


# --- YOLO v8/11 ------------------------------------------------------------------------------------------------
def _yolo_rows(output: np.ndarray) -> np.ndarray:
    """1x(4+C)xN or 1xNx(4+C) -> N x (4+C)."""
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    return pred.T if pred.shape[0] < pred.shape[1] else pred


def decode(output: np.ndarray, conf: float, class_id: int = PHONE_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv8 output (1x(4+C)xN, or 1xNx(4+C)) -> (boxes Kx4 x1y1x2y2 in input pixels, scores K) of the boxes
    whose best class is `class_id` with a score >= conf, best first."""
    pred = _yolo_rows(output)
    classes = pred[:, 4:]
    if classes.shape[1] <= class_id:
        raise ValueError(f"model has {classes.shape[1]} classes, no class {class_id}")
    scores = classes[:, class_id]
    keep = (scores >= conf) & (classes.argmax(axis=1) == class_id)
    rows, scores = pred[keep], scores[keep]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return _best_first(boxes, scores)


def detect(output: np.ndarray, lb: Letterbox, conf: float, iou_threshold: float,
           class_id: int = PHONE_CLASS) -> list[list[float]]:
    """YOLO output -> [[x1, y1, x2, y2, score], ...] of one class in frame pixels, best first."""
    boxes, scores = decode(output, conf, class_id)
    return to_frame(boxes, scores, lb, iou_threshold)


# --- NanoDet-m -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NanoDetLevel:
    stride: int
    scores: np.ndarray  # cells x 80, sigmoid applied
    boxes: np.ndarray  # cells x 44: 4 sides x NANODET_BINS logits


def nanodet_levels(outputs: Sequence[np.ndarray], size: int = NANODET_SIZE) -> list[NanoDetLevel]:
    """The six raw outputs, in any order, -> one level per stride. They are told apart by shape (the output
    names are artefacts of the conversion): cells = (size / stride)^2, width 80 (scores) or 44 (boxes)."""
    by_cells: dict[int, dict[int, np.ndarray]] = {}
    for out in outputs:
        arr = np.asarray(out, dtype=np.float32)
        arr = arr[0] if arr.ndim == 3 else arr
        by_cells.setdefault(arr.shape[0], {})[arr.shape[1]] = arr
    levels = []
    for stride in NANODET_STRIDES:
        cells = (size // stride) ** 2
        pair = by_cells.get(cells, {})
        if COCO_CLASSES not in pair or 4 * NANODET_BINS not in pair:
            raise ValueError(f"no stride-{stride} outputs ({cells} x {COCO_CLASSES} and {cells} x "
                             f"{4 * NANODET_BINS}) among {[np.shape(o) for o in outputs]}")
        levels.append(NanoDetLevel(stride, pair[COCO_CLASSES], pair[4 * NANODET_BINS]))
    return levels


def _distances(logits: np.ndarray) -> np.ndarray:
    """K x 44 bin logits -> K x 4 distances in grid units: the expectation of each side's softmax."""
    bins = logits.reshape(-1, 4, NANODET_BINS)
    weights = np.exp(bins - bins.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    return np.asarray((weights * np.arange(NANODET_BINS, dtype=np.float32)).sum(axis=2))


def decode_nanodet(levels: Sequence[NanoDetLevel], conf: float, class_id: int,
                   size: int = NANODET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """NanoDet levels -> (boxes Kx4 x1y1x2y2 in input pixels, scores K) of `class_id` with a score >= conf,
    best first. Only the cells that pass get their distributions decoded (a few of ~3500)."""
    all_boxes, all_scores = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
    for level in levels:
        cells = np.flatnonzero(level.scores[:, class_id] >= conf)
        if len(cells) == 0:
            continue
        side = size // level.stride
        rows, cols = np.divmod(cells, side)
        cx, cy = (cols + 0.5) * level.stride, (rows + 0.5) * level.stride
        dist = _distances(level.boxes[cells]) * level.stride
        all_boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
        all_scores.append(level.scores[cells, class_id])
    return _best_first(np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores))


# --- the backends --------------------------------------------------------------------------------------------
class ObjectModel(ABC):
    """One loaded COCO detector, shared by every stream of a process (InferenceSession.run is thread-safe)."""

    @abstractmethod
    def detect(self, rgb: np.ndarray, thresholds: Thresholds) -> ObjectBoxes:
        """Phones and persons in one HxWx3 uint8 RGB frame."""


class YoloModel(ObjectModel):
    def __init__(self, path: Path, what: str = "PHONE_MODEL_PATH") -> None:
        self.session: Any = onnx_session(path, what)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else INPUT_SIZE
        out = outputs[0].shape
        if len(out) != 3 or not any(isinstance(d, int) and d >= 4 + PHONE_CLASS + 1 for d in out[1:]):
            raise DetectorUnavailable(f"{what} {path}: output shape {out} is not YOLOv8's 1x(4+80)xN")
        self.run(np.zeros((1, 3, self.size, self.size), np.float32))  # warm up

    def run(self, blob: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: blob})[0])

    def detect(self, rgb: np.ndarray, thresholds: Thresholds) -> ObjectBoxes:
        blob, lb = letterbox(rgb, self.size)
        output = self.run(blob)
        return ObjectBoxes(detect(output, lb, thresholds.phone, thresholds.iou, PHONE_CLASS),
                           detect(output, lb, thresholds.person, thresholds.iou, PERSON_CLASS))


class NanoDetModel(ObjectModel):
    def __init__(self, path: Path, what: str = "bundled NanoDet") -> None:
        self.session: Any = onnx_session(path, what)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        if list(shape) != [1, 3, NANODET_SIZE, NANODET_SIZE]:
            raise DetectorUnavailable(f"{what} {path}: input shape {shape} is not NanoDet-m 416's 1x3x416x416")
        try:
            self.levels(np.zeros((1, 3, NANODET_SIZE, NANODET_SIZE), np.float32))  # warm up, check the layout
        except ValueError as exc:
            raise DetectorUnavailable(f"{what} {path}: {exc}") from None

    def levels(self, blob: np.ndarray) -> list[NanoDetLevel]:
        return nanodet_levels(self.session.run(None, {self.input_name: blob}))

    def detect(self, rgb: np.ndarray, thresholds: Thresholds) -> ObjectBoxes:
        blob, lb = nanodet_blob(rgb)
        levels = self.levels(blob)
        phones = decode_nanodet(levels, thresholds.phone, PHONE_CLASS)
        persons = decode_nanodet(levels, thresholds.person, PERSON_CLASS)
        return ObjectBoxes(to_frame(*phones, lb, thresholds.iou), to_frame(*persons, lb, thresholds.iou))
