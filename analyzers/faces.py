"""Counting faces: mediapipe face detection, full-range model (`model_selection=1`, faces up to ~5 m).

Feeds `no_face` (nobody in front of the camera) and `multiple_people` (a second face in view). The graphs are
shared by every stream of the process through a small pool (a mediapipe graph is not thread-safe); the
identity detector uses the same pool to find the face it embeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzers.base import Detector, DetectorUnavailable, ModelPool, Signal, clamp01, load_once
from proctor.settings import Settings

# The graph's own floor; we filter by Settings.face_min_score after it, so scores just below the
# configured minimum are still reported in details for tuning.
GRAPH_MIN_SCORE = 0.3


@dataclass(frozen=True)
class Face:
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, clipped to the frame
    keypoints: tuple[tuple[float, float], ...]  # right eye, left eye, nose tip, mouth, right ear, left ear (px)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def _make_graph() -> Any:
    import mediapipe as mp

    return mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=GRAPH_MIN_SCORE)


def _pool() -> ModelPool[Any]:
    def build() -> ModelPool[Any]:
        try:
            import mediapipe  # noqa: F401
        except ImportError as exc:
            raise DetectorUnavailable(f"mediapipe is not installed ({exc}); pip install mediapipe==0.10.21") from None
        pool: ModelPool[Any] = ModelPool(_make_graph)
        with pool.get() as graph:  # load and warm up one graph now, not on the first live frame
            graph.process(np.zeros((64, 64, 3), np.uint8))
        return pool

    return load_once("mediapipe.face_detection", build)


def load_face_detection() -> None:
    """Load and warm up the shared face-detection graphs (once per process); raises DetectorUnavailable."""
    _pool()


def detect_faces(rgb: np.ndarray) -> list[Face]:
    """Every face the graph finds (score >= GRAPH_MIN_SCORE), best score first."""
    height, width = rgb.shape[:2]
    with _pool().get() as graph:
        result = graph.process(np.ascontiguousarray(rgb))
    faces = []
    for detection in result.detections or []:
        rel = detection.location_data.relative_bounding_box
        x1 = min(max(rel.xmin * width, 0.0), width)
        y1 = min(max(rel.ymin * height, 0.0), height)
        x2 = min(max((rel.xmin + rel.width) * width, 0.0), width)
        y2 = min(max((rel.ymin + rel.height) * height, 0.0), height)
        points = tuple((kp.x * width, kp.y * height) for kp in detection.location_data.relative_keypoints)
        faces.append(Face(float(detection.score[0]), (x1, y1, x2, y2), points))
    faces.sort(key=lambda face: face.score, reverse=True)
    return faces


class FaceDetector(Detector):
    name = "faces"

    def __init__(self, settings: Settings) -> None:
        self.fps = settings.faces_fps
        self.min_score = settings.face_min_score
        self._error: str | None = None

    def load(self) -> None:
        try:
            load_face_detection()
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise

    def status(self) -> tuple[bool, str]:
        if self._error:
            return False, self._error
        return True, "mediapipe face detection, full range (bundled)"

    def count(self, rgb: np.ndarray) -> list[Face]:
        return [face for face in detect_faces(rgb) if face.score >= self.min_score]

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        found = detect_faces(rgb)
        faces = [face for face in found if face.score >= self.min_score]
        scores = [round(face.score, 3) for face in faces]
        boxes = [[round(v, 1) for v in face.box] for face in faces]
        details = {"faces": len(faces), "scores": scores, "boxes": boxes}
        # no_face: how sure we are that nobody is there = 1 - the best score we did see (below the minimum).
        best = found[0].score if found else 0.0
        no_face = Signal("no_face", not faces, clamp01(1.0 - best), dict(details))
        second = faces[1].score if len(faces) >= 2 else (found[1].score if len(found) >= 2 else 0.0)
        multiple = Signal("multiple_people", len(faces) >= 2, clamp01(second), dict(details),
                          box=[round(v, 1) for v in faces[1].box] if len(faces) >= 2 else None)
        return [no_face, multiple]
