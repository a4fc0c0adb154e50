"""What every detector is: one small class behind one interface, chosen by configuration (like Frigate's plugins).

A detector turns one sampled RGB frame into `Signal`s (per-frame observations); `core.rules.EventRules`
turns those into events with hysteresis. Detectors run in worker threads and are CPU-bound.

Threading model: one detector *instance* per candidate stream (so per-stream state — the gaze baseline, the
identity reference — lives on the instance and one worker thread calls it at a time), while the heavy models
are loaded once per process into module-level caches (`ModelPool`, `load_once`) guarded by locks.
"""

from __future__ import annotations

import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from core.rules import RulesConfig
from core.sensitivity import STANDARD, Sensitivity
from proctor.settings import Settings

T = TypeVar("T")


class DetectorUnavailable(Exception):
    """A detector cannot run here (weights missing, package missing); the message says what to do about it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Signal:
    """One detector's observation about one frame.

    kind: the event kind it feeds ("no_face", "multiple_people", "looking_away", "identity_mismatch", "phone").
    active: whether the condition is present in this frame.
    confidence: 0..1, how sure/how strong; for the threshold-based detectors 0.5 is "just at the threshold".
    details: JSON-serializable facts for the event record (counts, angles, distances, boxes).
    box: optional [x1, y1, x2, y2] in frame pixels, evidence to draw on the snapshot.
    source: which of several detectors feeding one kind observed it (e.g. "persons" for multiple_people);
      core.rules combines the sources of a kind instead of letting their rates fight over one track. None: the
      kind's only source.
    """

    kind: str
    active: bool
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)
    box: list[float] | None = None
    source: str | None = None


class Detector(ABC):
    name: str = ""
    fps: float = 1.0  # the rate it wants frames at
    # A long run per frame (a model of tens of milliseconds, or a wait on the embedding process): it gets a pool of
    # its own, so it never holds up the quick per-frame detectors (faces, gaze) whose alerts must come in a second.
    heavy: bool = False

    @abstractmethod
    def load(self) -> None:
        """Load and warm up the model(s); cheap after the first call in a process. Raises DetectorUnavailable."""

    @abstractmethod
    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        """Observe one HxWx3 uint8 RGB frame taken at `media_time_s` on the session media timeline."""

    def status(self) -> tuple[bool, str]:
        return True, self.name


def rules_config(settings: Settings, sensitivity: Sensitivity = STANDARD) -> RulesConfig:
    """The event rules for these settings: core.rules' defaults with EVENT_TIMING's overrides, then the session's
    sensitivity's (a session's choice beats the deployment's default); identity checks are sparse, so their
    allowed gap follows IDENTITY_INTERVAL_S."""
    config = RulesConfig.default(identity_interval_s=settings.identity_interval_s).with_timing(settings.event_timing)
    return config.with_timing(sensitivity.timing())


def apply_sensitivity(settings: Settings, sensitivity: Sensitivity) -> Settings:
    """The settings a session's detectors are built from: the deployment's, with the thresholds the session's
    sensitivity sets replaced (core.sensitivity checked their names and ranges; the others stay as they are)."""
    thresholds: dict[str, Any] = sensitivity.thresholds()  # every one a float field of Settings (tested)
    return replace(settings, **thresholds) if thresholds else settings


def default_pool_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ModelPool(Generic[T]):
    """Up to `size` instances of a model that is not thread-safe (a mediapipe graph), made on first need and
    lent to one thread at a time; callers beyond `size` wait for one to come back."""

    def __init__(self, factory: Callable[[], T], size: int | None = None) -> None:
        self._factory = factory
        self._size = size or default_pool_size()
        self._free: queue.LifoQueue[T] = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()

    @contextmanager
    def get(self) -> Iterator[T]:
        try:
            item = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                create = self._created < self._size
                if create:
                    self._created += 1
            if create:
                try:
                    item = self._factory()
                except BaseException:
                    with self._lock:
                        self._created -= 1
                    raise
            else:
                item = self._free.get()
        try:
            yield item
        finally:
            self._free.put(item)


_once_lock = threading.Lock()
_once: dict[Any, Any] = {}


def load_once(key: Any, loader: Callable[[], T]) -> T:
    """A process-wide cache: `loader()` runs once per key (serialized); a failure is not cached."""
    try:
        return _once[key]
    except KeyError:
        pass
    with _once_lock:
        if key not in _once:
            _once[key] = loader()
        return _once[key]


def clamp01(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def onnx_session(path: Path, what: str) -> Any:
    """An onnxruntime CPU session for a bundled or user-supplied model, set up for a node that many streams share
    (one thread per run); DetectorUnavailable when onnxruntime or a usable model is missing."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DetectorUnavailable(f"onnxruntime is not installed ({exc})") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # many streams share the cores: one thread per run
    options.inter_op_num_threads = 1
    # Measured with bench/detectors.py-style thread CPU time on NanoDet (AMD EPYC, AVX2): graph optimisation is
    # already ORT_ENABLE_ALL by default (BASIC/EXTENDED were 20-40 % slower); with one intra-op thread there is no
    # pool to spin, and the arena and denormals-as-zero made no difference beyond noise (64-68 ms each). Spinning
    # is switched off anyway, so that a later change to the thread counts cannot burn idle cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        # An int8 model (QDQ: the bundled NanoDet's quantisation) keeps its float MaxPool only if onnxruntime does not
        # move the QuantizeLinear/DequantizeLinear pair across it: a uint8 NCHW pool costs 7-12 ms a scan here
        # against 0.6 in float (the int8 scan: 21 ms with the pool in float, 33 with it in uint8). No float graph
        # has such pairs, so this changes nothing for one.
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["QDQPropagationTransformer"])
    except Exception as exc:  # onnxruntime raises its own types for a corrupt or non-ONNX file
        raise DetectorUnavailable(f"{what} {path} is not a usable ONNX model: {exc}") from exc
