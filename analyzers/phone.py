"""Phones, and the persons in view: a COCO object detector (analyzers/objects.py) on sampled frames.

Which model (analyzers.models.phone_model, also what /healthz reports): PHONE_MODEL_PATH, a YOLOv8/11 ONNX
export, wins; else the YOLO export `proctor models fetch` installed under models_home; else the bundled
NanoDet-m 416, so phone detection runs out of the box — weakly (COCO mAP 0.235: it misses phones often and
scores phone-shaped black objects up to ~0.5), which is why a fetched YOLO model replaces it.

Two signals per frame:
- "phone": a phone box scores >= PHONE_CONF. One frame of a weak model flickers: the "phone" rule in
  core.rules votes (several positive samples within a few seconds) before it starts an event.
- "multiple_people" from source "persons": two or more person boxes >= PERSON_CONF. It sees a second person whose
  face the face detector cannot (turned away, behind the candidate); core.rules ORs it with the faces
  detector's own observations of that kind, each source's latest counting while it is recent.

The YOLO pure functions (letterbox, decode, nms, unletterbox, detect) are re-exported here: the tests and
analyzers/fetch.py import them from this module.
"""

from __future__ import annotations

import numpy as np

from analyzers.base import Detector, DetectorUnavailable, Signal, load_once
from analyzers.models import PhoneModel, phone_model
from analyzers.objects import (
    INPUT_SIZE,
    MAX_CANDIDATES,
    PAD_VALUE,
    PERSON_CLASS,
    PHONE_CLASS,
    Letterbox,
    NanoDetModel,
    ObjectBoxes,
    ObjectModel,
    Thresholds,
    YoloModel,
    decode,
    detect,
    iou,
    letterbox,
    nms,
    unletterbox,
)
from proctor.settings import Settings

__all__ = ["INPUT_SIZE", "MAX_CANDIDATES", "PAD_VALUE", "PERSON_CLASS", "PHONE_CLASS", "Letterbox", "ObjectBoxes",
           "PhoneDetector", "decode", "detect", "iou", "letterbox", "load_model", "nms", "unletterbox"]


def _rounded(box: list[float]) -> list[float]:
    return [round(v, 1) for v in box[:4]] + [round(box[4], 3)]


def load_model(model: PhoneModel) -> ObjectModel:
    """The model behind `model`, loaded and warmed up once per process (and again if the file changes)."""
    path = model.path.resolve()
    factory = YoloModel if model.backend == "yolo" else NanoDetModel
    return load_once(("phone", model.backend, str(path), path.stat().st_mtime_ns),
                     lambda: factory(path, model.what))


class PhoneDetector(Detector):
    name = "phone"
    heavy = True  # 60-75 ms a frame with NanoDet

    def __init__(self, settings: Settings) -> None:
        self.model = phone_model(settings)
        self.path = settings.phone_model_path
        self.fps = settings.phone_fps
        self.thresholds = Thresholds(phone=settings.phone_conf, person=settings.person_conf,
                                     iou=settings.phone_iou)
        self._model: ObjectModel | None = None
        self._error: str | None = None

    def load(self) -> None:
        self._error = self.model.problem()
        if self._error:
            raise DetectorUnavailable(self._error)
        try:
            self._model = load_model(self.model)
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise

    def status(self) -> tuple[bool, str]:
        error = self._error or self.model.problem()
        if error:
            return False, error
        if self._model is None:
            return False, "not loaded"
        return True, self.model.describe()

    def detect_all(self, rgb: np.ndarray) -> ObjectBoxes:
        """Phones and persons in one HxWx3 uint8 RGB frame, each [[x1, y1, x2, y2, score], ...], best first."""
        if self._model is None:
            self.load()
        assert self._model is not None
        return self._model.detect(rgb, self.thresholds)

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        return self.detect_all(rgb).phones

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        found = self.detect_all(rgb)
        phones, persons = found.phones, found.persons
        phone = Signal("phone", bool(phones), phones[0][4] if phones else 0.0,
                       {"boxes": [_rounded(box) for box in phones]},
                       box=_rounded(phones[0])[:4] if phones else None)
        # How sure that a second person is there: the second-best person score (as the faces detector does).
        people = Signal("multiple_people", len(persons) >= 2, persons[1][4] if len(persons) >= 2 else 0.0,
                        {"persons": len(persons), "boxes": [_rounded(box) for box in persons]},
                        box=_rounded(persons[1])[:4] if len(persons) >= 2 else None, source="persons")
        return [phone, people]
