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

Cadence (PHONE_ADAPTIVE, the default): the model is the node's largest cost (60-75 ms a frame with NanoDet), so a
stream is not scanned at PHONE_FPS all the time. `PhoneCadence` scans every PHONE_INTERVAL_S on average, each
interval drawn at random from 0.5x-1.5x of it (a candidate who learnt a fixed schedule could lift the phone between
scans), and at PHONE_FPS for PHONE_BURST_S after a hint, so the phone rule's votes confirm a phone that stays in
view at the old rate once one scan has seen it. Hints: a phone box below PHONE_CONF but above PHONE_HINT_RATIO of
it, two persons, a phone that counts (the burst goes on while it is seen, which also keeps the rule's end
hysteresis fed), and other detectors of the same stream losing the face, seeing a second one or the candidate
looking away (analyzers/live.py passes their signals to `hint`; a rising edge pulls the next scan forward).

The YOLO pure functions (letterbox, decode, nms, unletterbox, detect) are re-exported here: the tests and
analyzers/fetch.py import them from this module.
"""

from __future__ import annotations

import math
import os
import random
import threading
from dataclasses import dataclass, field

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
           "PhoneCadence", "PhoneDetector", "decode", "detect", "iou", "letterbox", "load_model", "nms", "unletterbox"]


def _rounded(box: list[float]) -> list[float]:
    return [round(v, 1) for v in box[:4]] + [round(box[4], 3)]


def load_model(model: PhoneModel) -> ObjectModel:
    """The model behind `model`, loaded and warmed up once per process (and again if the file changes)."""
    path = model.path.resolve()
    factory = YoloModel if model.backend == "yolo" else NanoDetModel
    return load_once(("phone", model.backend, str(path), path.stat().st_mtime_ns),
                     lambda: factory(path, model.what))


JITTER = 0.5  # each interval is drawn uniformly from (1 - JITTER) to (1 + JITTER) times PHONE_INTERVAL_S
# A weak hint (a sub-threshold phone box) may start a burst at most once per this many intervals: an object in the
# room that always scores just under PHONE_CONF must not hold a stream at PHONE_FPS.
WEAK_HINT_EVERY = 4.0
# Other detectors' observations that make a phone more likely: the face gone (held up in front of it, or the
# candidate leaning to a phone), a second face, the candidate looking away (down at a phone).
HINT_KINDS = frozenset({"no_face", "multiple_people", "looking_away"})
EPS = 1e-6


def _entropy_rng() -> random.Random:
    return random.Random(os.urandom(16))


@dataclass
class PhoneCadence:
    """When one stream is scanned for phones (media times). State is per stream (one PhoneDetector per stream).

    The frame sampler delivers frames at PHONE_FPS (`fps`); `due` says which of them to scan: every one during a
    burst, else the one nearest each randomly drawn due time. `due` and `hint` run on the event loop, `scanned` on
    an analysis thread, hence the lock."""

    interval_s: float
    burst_s: float
    fps: float
    rng: random.Random = field(default_factory=_entropy_rng)
    next_scan: float | None = None  # None: the first frame is scanned
    last_scan: float | None = None
    burst_until: float = -math.inf
    weak_ok_at: float = -math.inf
    scans: int = 0
    bursts: int = 0
    intervals: list[float] = field(default_factory=list)  # the last drawn intervals (tests, stats)
    _seen: dict[str, bool] = field(default_factory=dict)  # other detectors' last state per hint kind
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def draw(self) -> float:
        interval = self.interval_s * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)
        self.intervals = [*self.intervals[-49:], interval]
        return interval

    def in_burst(self, t: float) -> bool:
        return t <= self.burst_until + EPS

    def due(self, t: float) -> bool:
        """Whether to scan the frame at media time t (and if so, count it as scanned)."""
        half = 0.5 / self.fps  # frames come every 1/fps: take the one nearest the due time, so the mean holds
        with self._lock:
            if self.last_scan is not None and t <= self.last_scan + EPS:
                return False
            if not (self.next_scan is None or self.in_burst(t) or t + half >= self.next_scan):
                return False
            self.last_scan = t
            self.scans += 1
            self.next_scan = t + self.draw()
            return True

    def scanned(self, t: float, strong: bool, weak: bool) -> None:
        """A scan's result: `strong` (a phone that counts, two persons) starts or extends a burst; `weak` (a phone
        box under PHONE_CONF) starts one unless a weak hint did within the last WEAK_HINT_EVERY intervals."""
        with self._lock:
            if not strong:
                if not weak or t < self.weak_ok_at or self.in_burst(t):
                    return
                self.weak_ok_at = t + WEAK_HINT_EVERY * self.interval_s
            if not self.in_burst(t):
                self.bursts += 1
            self.burst_until = max(self.burst_until, t + self.burst_s)

    def hint(self, kind: str, active: bool, t: float) -> None:
        """Another detector's observation: when a hint kind turns active, the next scan comes at once, but never
        sooner than half an interval after the last one (a flickering detector cannot hold the rate up)."""
        with self._lock:
            rising = active and not self._seen.get(kind, False)
            self._seen[kind] = active
            if not rising or self.next_scan is None:
                return
            soonest = t if self.last_scan is None else max(t, self.last_scan + 0.5 * self.interval_s)
            self.next_scan = min(self.next_scan, soonest)

    def stats(self) -> dict[str, float | int]:
        with self._lock:
            return {"scans": self.scans, "bursts": self.bursts}


class PhoneDetector(Detector):
    name = "phone"
    heavy = True  # 60-75 ms a frame with NanoDet

    def __init__(self, settings: Settings) -> None:
        self.model = phone_model(settings)
        self.path = settings.phone_model_path
        # The sampler's rate: every frame without the cadence, the burst rate with it (PhoneCadence picks frames).
        self.fps = settings.phone_fps
        self.thresholds = Thresholds(phone=settings.phone_conf, person=settings.person_conf,
                                     iou=settings.phone_iou)
        self.cadence = PhoneCadence(settings.phone_interval_s, settings.phone_burst_s, settings.phone_fps) \
            if settings.phone_adaptive else None
        # Boxes from here up to PHONE_CONF are hints, not votes.
        self.hint_conf = settings.phone_conf * min(1.0, settings.phone_hint_ratio)
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

    def wants(self, media_time_s: float) -> bool:
        """Whether the frame at this media time is to be scanned (the caller then calls analyze): always without
        the cadence. Called for every frame the sampler delivers at `fps`."""
        return self.cadence is None or self.cadence.due(media_time_s)

    def hint(self, signal: Signal, media_time_s: float) -> None:
        """Another detector's signal on this stream (not this detector's own)."""
        if self.cadence is not None and signal.kind in HINT_KINDS:
            self.cadence.hint(signal.kind, signal.active, media_time_s)

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        if self.cadence is None:
            found = self.detect_all(rgb)
            phones, persons = found.phones, found.persons
        else:
            # One run at the hint threshold; the boxes that count are the ones at PHONE_CONF (NMS keeps a box only
            # for a better-scoring one, which passes too: the same boxes as a run at PHONE_CONF).
            if self._model is None:
                self.load()
            assert self._model is not None
            found = self._model.detect(rgb, Thresholds(phone=min(self.hint_conf, self.thresholds.phone),
                                                       person=self.thresholds.person, iou=self.thresholds.iou))
            phones = [box for box in found.phones if box[4] >= self.thresholds.phone]
            persons = found.persons
            self.cadence.scanned(media_time_s, strong=bool(phones) or len(persons) >= 2,
                                 weak=bool(found.phones))
        phone = Signal("phone", bool(phones), phones[0][4] if phones else 0.0,
                       {"boxes": [_rounded(box) for box in phones]},
                       box=_rounded(phones[0])[:4] if phones else None)
        # How sure that a second person is there: the second-best person score (as the faces detector does).
        people = Signal("multiple_people", len(persons) >= 2, persons[1][4] if len(persons) >= 2 else 0.0,
                        {"persons": len(persons), "boxes": [_rounded(box) for box in persons]},
                        box=_rounded(persons[1])[:4] if len(persons) >= 2 else None, source="persons")
        return [phone, people]
