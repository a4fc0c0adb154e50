"""The candidate's camera pre-check and reference-photo check: one face, enough light, clear guidance.

Runs in the web process's thread pool on a still frame the candidate page sends; the face detector loads
once on first use (about 0.1 s) and is guarded by a lock because a mediapipe graph is not thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_BRIGHTNESS = 60.0  # mean luma below this: the face is in the dark
MAX_BRIGHTNESS = 220.0  # above: washed out, backlit window or a lamp into the lens
MIN_FACE_FRACTION = 0.02  # face box area / frame area; smaller means too far from the camera
MIN_SCORE = 0.6

_lock = threading.Lock()
_detector: Any = None


@dataclass(frozen=True)
class PrecheckResult:
    ok: bool
    faces: int
    brightness: float
    face_fraction: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _detect(rgb: np.ndarray) -> list[tuple[float, float]]:
    """(score, box area fraction) of each face found."""
    global _detector
    with _lock:
        if _detector is None:
            import mediapipe as mp

            _detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        result = _detector.process(np.ascontiguousarray(rgb))
    faces = []
    for detection in result.detections or []:
        box = detection.location_data.relative_bounding_box
        faces.append((float(detection.score[0]), max(0.0, box.width) * max(0.0, box.height)))
    return faces


def check_frame(rgb: np.ndarray) -> PrecheckResult:
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    brightness = float(luma.mean())
    faces = [face for face in _detect(rgb) if face[0] >= MIN_SCORE]
    fraction = max((area for _, area in faces), default=0.0)
    if brightness < MIN_BRIGHTNESS:
        message = "It is too dark: turn on a light in front of you, not behind you."
    elif brightness > MAX_BRIGHTNESS:
        message = "The picture is washed out: move away from a bright window or lamp behind you."
    elif not faces:
        message = "No face found: sit in front of the camera, face it, and keep your face uncovered."
    elif len(faces) > 1:
        message = f"{len(faces)} faces found: only you may be in view of the camera."
    elif fraction < MIN_FACE_FRACTION:
        message = "Your face is too small: move closer to the camera."
    else:
        message = "Looks good: one face, enough light."
    ok = message.startswith("Looks good")
    return PrecheckResult(ok, len(faces), round(brightness, 1), round(fraction, 4), message)
