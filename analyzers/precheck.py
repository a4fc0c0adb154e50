"""The candidate's camera pre-check and reference-photo check: one face, a good picture, clear guidance.

Runs in the web process's thread pool on a still frame the candidate page sends. It uses the live check's own
parts, so the two agree: `analyzers.faces.detect_faces_in` (both mediapipe models, merged, and again on an
enhanced copy of a poor picture; the graphs load once on first use, about 0.1 s, and are pooled because a
mediapipe graph is not thread-safe) and `analyzers.image_quality.assess` (dark, washed out, blurred, covered,
with the same messages).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analyzers.faces import detect_faces_in
from analyzers.image_quality import assess

MIN_FACE_FRACTION = 0.02  # face box area / frame area; smaller means too far from the camera
MIN_SCORE = 0.6  # as Settings.face_min_score's default (the scores are on the faces module's common scale)


@dataclass(frozen=True)
class PrecheckResult:
    ok: bool
    faces: int
    brightness: float
    face_fraction: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _message(faces: int, fraction: float, quality_message: str) -> str:
    if quality_message:
        # Say both when nobody is seen: the picture is the reason, and the candidate should know it is not found.
        return quality_message if faces else f"No face found. {quality_message}"
    if not faces:
        return "No face found: sit in front of the camera, face it, and keep your face uncovered."
    if faces > 1:
        return f"{faces} faces found: only you may be in view of the camera."
    if fraction < MIN_FACE_FRACTION:
        return "Your face is too small: move closer to the camera."
    return "Looks good: one face, enough light."


def check_frame(rgb: np.ndarray) -> PrecheckResult:
    quality = assess(rgb)
    height, width = rgb.shape[:2]
    faces = [face for face in detect_faces_in(rgb, quality) if face.score >= MIN_SCORE]
    fraction = max((face.area for face in faces), default=0.0) / float(width * height)
    message = _message(len(faces), fraction, quality.message)
    ok = not quality.poor and len(faces) == 1 and fraction >= MIN_FACE_FRACTION
    return PrecheckResult(ok, len(faces), round(quality.brightness, 1), round(fraction, 4), message)
