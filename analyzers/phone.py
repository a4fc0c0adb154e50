"""Phones: a YOLOv8 ONNX export (COCO, class 67 = "cell phone") run through onnxruntime.

No pip package ships COCO detector weights, so PHONE_MODEL_PATH must point at an export made where a network
exists (`yolo export model=yolov8n.pt format=onnx`); without it the detector is *unavailable* — it never
pretends to see "no phone".

YOLOv8 layout: input "images" 1x3x640x640 float32 RGB in 0..1, letterboxed (aspect kept, grey 114 padding,
centred); output 1x84x8400: per candidate box cx, cy, w, h in input pixels, then 80 class scores (no
objectness). The pure functions below (letterbox, decode, nms, unletterbox) are what the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from analyzers.base import Detector, DetectorUnavailable, Signal, load_once
from proctor.settings import Settings

PHONE_CLASS = 67
INPUT_SIZE = 640
PAD_VALUE = 114
MAX_CANDIDATES = 300  # boxes entering NMS, best first (as ultralytics does)


@dataclass(frozen=True)
class Letterbox:
    scale: float  # input pixels per frame pixel
    pad_x: int  # left padding, input pixels
    pad_y: int  # top padding
    width: int  # original frame size
    height: int


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Frame (HxWx3 uint8 RGB) -> (1x3xSxS float32 in 0..1, how to map boxes back). Same arithmetic as
    ultralytics' LetterBox(auto=False, center=True)."""
    height, width = rgb.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = int(round(width * scale)), int(round(height * scale))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    resized = rgb if (new_w, new_h) == (width, height) else cv2.resize(rgb, (new_w, new_h),
                                                                       interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return blob, Letterbox(scale, left, top, width, height)


def decode(output: np.ndarray, conf: float, class_id: int = PHONE_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv8 output (1x(4+C)xN, or 1xNx(4+C)) -> (boxes Kx4 x1y1x2y2 in input pixels, scores K) of the boxes
    whose best class is `class_id` with a score >= conf, best first."""
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    if pred.shape[0] < pred.shape[1]:  # (4+C, N) -> (N, 4+C)
        pred = pred.T
    classes = pred[:, 4:]
    if classes.shape[1] <= class_id:
        raise ValueError(f"model has {classes.shape[1]} classes, no class {class_id}")
    scores = classes[:, class_id]
    keep = (scores >= conf) & (classes.argmax(axis=1) == class_id)
    rows, scores = pred[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    rows, scores = rows[order], scores[order]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes.reshape(-1, 4), scores


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


def detect(output: np.ndarray, lb: Letterbox, conf: float, iou_threshold: float) -> list[list[float]]:
    """[[x1, y1, x2, y2, score], ...] in frame pixels, best first."""
    boxes, scores = decode(output, conf)
    if len(scores) == 0:
        return []
    keep = nms(boxes, scores, iou_threshold)
    frame_boxes = unletterbox(boxes[keep], lb)
    return [[*map(float, box), float(score)] for box, score in zip(frame_boxes, scores[keep], strict=True)]


class _Model:
    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorUnavailable(f"onnxruntime is not installed ({exc})") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # many streams share the cores: one thread per run
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DetectorUnavailable(f"PHONE_MODEL_PATH {path} is not a usable ONNX model: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else INPUT_SIZE
        out = outputs[0].shape
        if len(out) != 3 or not any(isinstance(d, int) and d >= 4 + PHONE_CLASS + 1 for d in out[1:]):
            raise DetectorUnavailable(f"PHONE_MODEL_PATH {path}: output shape {out} is not YOLOv8's 1x(4+80)xN")
        self.session.run(None, {self.input_name: np.zeros((1, 3, self.size, self.size), np.float32)})

    def run(self, blob: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: blob})[0])  # InferenceSession.run is thread-safe




class PhoneDetector(Detector):
    name = "phone"

    def __init__(self, settings: Settings) -> None:
        self.path = settings.phone_model_path
        self.fps = settings.phone_fps
        self.conf = settings.phone_conf
        self.iou = settings.phone_iou
        self._model: _Model | None = None
        self._error: str | None = None

    def _unavailable(self) -> str | None:
        if not self.path:
            return "PHONE_MODEL_PATH is not set: no phone detection (point it at a YOLOv8 ONNX export)"
        if not Path(self.path).is_file():
            return f"PHONE_MODEL_PATH {self.path} does not exist: no phone detection"
        return None

    def load(self) -> None:
        self._error = self._unavailable()
        if self._error:
            raise DetectorUnavailable(self._error)
        path = Path(self.path).resolve()
        try:
            self._model = load_once(("phone", str(path), path.stat().st_mtime_ns), lambda: _Model(path))
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise

    def status(self) -> tuple[bool, str]:
        error = self._error or self._unavailable()
        if error:
            return False, error
        if self._model is None:
            return False, "not loaded"
        return True, f"YOLOv8 ONNX ({self.path})"

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        if self._model is None:
            self.load()
        assert self._model is not None
        blob, lb = letterbox(rgb, self._model.size)
        return detect(self._model.run(blob), lb, self.conf, self.iou)

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        found = self.detect(rgb)
        boxes = [[round(v, 1) for v in box[:4]] + [round(box[4], 3)] for box in found]
        best = found[0] if found else None
        return [Signal("phone", bool(found), float(best[4]) if best else 0.0, {"boxes": boxes},
                       box=[round(v, 1) for v in best[:4]] if best else None)]
