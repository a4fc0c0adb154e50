"""Identity: is the person in front of the camera the one in the reference photo?

DeepFace embeddings (default model `Dlib`, whose weights ship in the face-recognition-models wheel and which
`analyzers.models.install_bundled_weights` places in $DEEPFACE_HOME/.deepface/weights). We find and crop the
face ourselves with mediapipe (largest face, rotated so the eyes are level, square box without margin — the
crop dlib's model was trained on is about that tight) and call DeepFace with `detector_backend="skip"`, so no
DeepFace face detector (most need downloaded weights) is ever used. The embedding itself runs in a process of
its own (analyzers/embedder.py): dlib holds the GIL for a whole inference.

Offline rules: the weights file is checked *before* DeepFace builds the model (otherwise DeepFace tries to
download it), and the embedding process sets $DEEPFACE_HOME before it imports deepface (it creates its folders
at import and reads the variable again whenever it looks for weights).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import cv2
import numpy as np

from analyzers import embedder
from analyzers.base import Detector, DetectorUnavailable, Signal, clamp01, load_once
from analyzers.faces import Face, detect_faces, load_face_detection
from analyzers.models import IDENTITY_WEIGHTS
from proctor.settings import Settings

MIN_FACE_PX = 40  # faces narrower than this give unreliable embeddings: no signal


def deepface_threshold(model_name: str, metric: str) -> float:
    """DeepFace's tuned threshold for a model and distance metric (deepface.config.threshold)."""
    from deepface.modules.verification import find_threshold

    return float(find_threshold(model_name, metric))


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "cosine":
        return float(1.0 - (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    if metric == "euclidean":
        return float(np.linalg.norm(a - b))
    if metric == "euclidean_l2":
        return float(np.linalg.norm(a / (np.linalg.norm(a) + 1e-12) - b / (np.linalg.norm(b) + 1e-12)))
    if metric == "angular":
        cos = (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
        return float(math.acos(max(-1.0, min(1.0, cos))) / math.pi)
    raise ValueError(f"unknown distance metric {metric!r}")


def face_crop(rgb: np.ndarray, face: Face, margin: float = 0.0) -> np.ndarray:
    """Square crop around `face`, rotated so that the eyes are level; parts outside the frame are edge-filled."""
    x1, y1, x2, y2 = face.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    size = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]  # subject's right eye (image left), left eye
    angle = math.degrees(math.atan2(ly - ry, lx - rx))
    # One affine map: rotate about the face centre, then move the centre to the crop's centre.
    matrix = np.asarray(cv2.getRotationMatrix2D((cx, cy), angle, 1.0), dtype=np.float64)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class IdentityDetector(Detector):
    """One instance per stream: it keeps that candidate's reference embedding."""

    name = "identity"

    def __init__(self, settings: Settings) -> None:
        self.model_name = settings.identity_model
        self.metric = settings.identity_metric
        self.fps = 1.0 / max(settings.identity_interval_s, 0.1)
        self.threshold = settings.identity_threshold  # 0: DeepFace's tuned value, looked up in load()
        self.min_face_score = settings.face_min_score
        self.models_home = settings.models_home  # DeepFace's home
        self.weights_dir = settings.deepface_weights_dir
        self.reference: np.ndarray | None = None
        self._model: Any = None
        self._error: str | None = None

    # --- loading -----------------------------------------------------------------------------------
    def _check_available(self) -> None:
        if self.model_name not in IDENTITY_WEIGHTS:
            raise DetectorUnavailable(
                f"IDENTITY_MODEL {self.model_name!r} is not supported; choose one of {', '.join(IDENTITY_WEIGHTS)}")
        path = self.weights_dir / IDENTITY_WEIGHTS[self.model_name]
        if not path.is_file():
            hint = " (it ships in the face-recognition-models package: analyzers.models.install_bundled_weights " \
                "copies it there)" if self.model_name == "Dlib" else ""
            raise DetectorUnavailable(f"{self.model_name} weights missing: {path.name} not found in {path.parent}"
                                      f"{hint}; DeepFace would try to download it")
        if self.model_name == "Dlib" and importlib.util.find_spec("dlib") is None:
            raise DetectorUnavailable("dlib is not installed (pip install dlib-bin)")
        if importlib.util.find_spec("deepface") is None:
            raise DetectorUnavailable("deepface is not installed")

    def load(self) -> None:
        try:
            self._check_available()
            if self.threshold <= 0:
                self.threshold = deepface_threshold(self.model_name, self.metric)
            else:
                distance(np.ones(2), np.ones(2), self.metric)  # validates the metric name
            name, home = self.model_name, str(self.models_home)

            def build() -> Any:
                # In the embedding process (analyzers/embedder.py): dlib holds the GIL for a whole inference.
                try:
                    return embedder.build(name, home)
                except Exception as exc:
                    raise DetectorUnavailable(f"DeepFace could not build {name}: {exc}") from exc

            self._model = load_once(("deepface", name), build)
            load_face_detection()  # the face-finding graphs, too
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise
        except ValueError as exc:  # unknown metric or no tuned threshold for the pair
            self._error = f"identity: {exc}"
            raise DetectorUnavailable(self._error) from exc
        self._error = None

    def status(self) -> tuple[bool, str]:
        if self._error:
            return False, self._error
        if self._model is None:
            return False, "not loaded"
        reference = "reference set" if self.reference is not None else "no reference photo yet"
        return True, f"DeepFace {self.model_name} ({self.metric} <= {self.threshold:g}); {reference}"

    # --- embeddings --------------------------------------------------------------------------------
    def embed_face(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        if self._model is None:
            self.load()
        crop = face_crop(rgb, face)
        # DeepFace's "skip" path takes BGR; scaled to 0..1 like its own detectors' crops, which every model
        # (Dlib included) expects.
        bgr = np.ascontiguousarray(crop[:, :, ::-1], dtype=np.float32) / 255.0
        return embedder.embed(self.model_name, str(self.models_home), bgr)

    def embed(self, rgb: np.ndarray) -> tuple[np.ndarray, Face] | None:
        """Embedding of the largest face (None when there is no usable face)."""
        faces = [face for face in detect_faces(rgb) if face.score >= self.min_face_score]
        if not faces:
            return None
        face = max(faces, key=lambda f: f.area)
        if face.box[2] - face.box[0] < MIN_FACE_PX:
            return None
        return self.embed_face(rgb, face), face

    def set_reference(self, rgb: np.ndarray) -> bool:
        """Take the reference embedding from the reference photo; False if it shows no usable face."""
        found = self.embed(rgb)
        if found is None:
            return False
        self.reference = found[0]
        return True

    def compare(self, rgb: np.ndarray) -> float | None:
        """Distance of the frame's largest face to the reference (None: no face or no reference)."""
        reference = self.reference
        found = self.embed(rgb) if reference is not None else None
        return None if found is None or reference is None else distance(reference, found[0], self.metric)

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        if self.reference is None:
            return []
        found = self.embed(rgb)
        if found is None:
            return []  # no face: the faces detector reports that
        embedding, face = found
        dist = distance(self.reference, embedding, self.metric)
        details = {"distance": round(dist, 4), "threshold": self.threshold, "metric": self.metric,
                   "model": self.model_name}
        # 0.5 at the threshold, 1.0 at twice the threshold.
        return [Signal("identity_mismatch", dist > self.threshold, clamp01(dist / (2 * self.threshold)), details,
                       box=[round(v, 1) for v in face.box])]
