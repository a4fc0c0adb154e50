"""Looking away: head pose (yaw/pitch) and iris position from mediapipe FaceMesh with iris (478 landmarks).

Head pose: cv2.solvePnP of six landmarks against a generic 3-D face and an approximate camera (focal length =
frame width, centre = frame centre). A generic face gives yaw well but pitch with a per-person bias, so every
stream compares against its own baseline: the median of its first `gaze_baseline_s` seconds with a face, or
the reference photo (`set_baseline_from`). Iris offset: where the iris centre sits between the eye corners
(in eye widths, 0 = centred), which catches eyes-only glances the head pose misses.

Angles, in degrees: yaw > 0 when the face turns toward the image's right, pitch > 0 when it tilts down
(chin toward the chest), roll > 0 when it tilts clockwise in the image.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from analyzers.base import Detector, DetectorUnavailable, ModelPool, Signal, clamp01, load_once
from proctor.settings import Settings

# Generic face in camera-like axes (x to the image's right, y down, z away from the camera), arbitrary units
# (~0.2 mm): a frontal face has rotation identity. Paired with FaceMesh indices below.
MODEL_POINTS = np.array([
    (0.0, 0.0, 0.0),  # nose tip
    (0.0, 330.0, 65.0),  # chin
    (-225.0, -170.0, 135.0),  # eye corner at the image's left (the subject's right eye, outer corner)
    (225.0, -170.0, 135.0),  # eye corner at the image's right (the subject's left eye, outer corner)
    (-150.0, 150.0, 125.0),  # mouth corner at the image's left
    (150.0, 150.0, 125.0),  # mouth corner at the image's right
], dtype=np.float64)
POSE_LANDMARKS = (1, 152, 33, 263, 61, 291)
# Eye corners, image-left corner first, and the iris centre (refine_landmarks=True) of each eye.
EYES = ((33, 133, 468), (362, 263, 473))
MESH_POINTS = 478


@dataclass(frozen=True)
class GazeMeasure:
    yaw: float
    pitch: float
    roll: float
    iris_x: float  # > 0: irises toward the image's right, in eye widths from the eye centre
    iris_y: float  # > 0: irises below the corner line, in eye widths

    def rounded(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in asdict(self).items()}


def camera_matrix(width: int, height: int) -> np.ndarray:
    return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=np.float64)


def rotation_to_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of R = Rx(pitch) @ Ry(-yaw) @ Rz(roll) — see the module doc for signs."""
    r = rotation
    yaw = -math.degrees(math.asin(max(-1.0, min(1.0, r[0, 2]))))
    pitch = math.degrees(math.atan2(-r[1, 2], r[2, 2]))
    roll = math.degrees(math.atan2(-r[0, 1], r[0, 0]))
    return yaw, pitch, roll


def angles_to_rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """The inverse of rotation_to_angles (used to make synthetic poses in tests)."""
    a, b, c = math.radians(pitch), math.radians(-yaw), math.radians(roll)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return np.asarray(rx @ ry @ rz)


def head_pose(image_points: np.ndarray, width: int, height: int) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) from the six POSE_LANDMARKS in pixels (6x2), or None if solvePnP fails."""
    ok, rvec, _tvec = cv2.solvePnP(MODEL_POINTS, np.asarray(image_points, np.float64).reshape(-1, 1, 2),
                                   camera_matrix(width, height), np.zeros(4), flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation_to_angles(rotation)


def iris_offset(points: np.ndarray) -> tuple[float, float]:
    """Mean over both eyes of the iris centre's position relative to the eye's corners, in eye widths:
    x along the corner line (0 = midway), y across it (> 0 = below)."""
    xs, ys = [], []
    for left, right, iris in EYES:
        p1, p2, c = points[left, :2], points[right, :2], points[iris, :2]
        u = p2 - p1
        length2 = float(u @ u)
        if length2 < 1e-6:
            continue
        d = c - p1
        xs.append(float(u @ d) / length2 - 0.5)
        ys.append(float(u[0] * d[1] - u[1] * d[0]) / length2)
    if not xs:
        return 0.0, 0.0
    return sum(xs) / len(xs), sum(ys) / len(ys)


def measure_landmarks(points: np.ndarray, width: int, height: int) -> GazeMeasure | None:
    """GazeMeasure from 478 FaceMesh landmarks in pixels (Nx2 or Nx3)."""
    pose = head_pose(points[list(POSE_LANDMARKS), :2], width, height)
    if pose is None:
        return None
    iris_x, iris_y = iris_offset(points)
    return GazeMeasure(pose[0], pose[1], pose[2], iris_x, iris_y)


def _make_mesh() -> Any:
    import mediapipe as mp

    # static_image_mode: every frame stands alone, so one graph can serve many streams in turn.
    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                           min_detection_confidence=0.5)


def _pool() -> ModelPool[Any]:
    def build() -> ModelPool[Any]:
        try:
            import mediapipe  # noqa: F401
        except ImportError as exc:
            raise DetectorUnavailable(f"mediapipe is not installed ({exc}); pip install mediapipe==0.10.21") from None
        pool: ModelPool[Any] = ModelPool(_make_mesh)
        with pool.get() as mesh:
            mesh.process(np.zeros((64, 64, 3), np.uint8))
        return pool

    return load_once("mediapipe.face_mesh", build)


def face_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """478x3 landmarks in pixels (z in the same scale as x) of the most prominent face, or None."""
    height, width = rgb.shape[:2]
    with _pool().get() as mesh:
        result = mesh.process(np.ascontiguousarray(rgb))
    if not result.multi_face_landmarks:
        return None
    marks = result.multi_face_landmarks[0].landmark
    if len(marks) < MESH_POINTS:
        return None
    return np.array([(m.x * width, m.y * height, m.z * width) for m in marks], dtype=np.float64)


def measure(rgb: np.ndarray) -> GazeMeasure | None:
    points = face_landmarks(rgb)
    if points is None:
        return None
    return measure_landmarks(points, rgb.shape[1], rgb.shape[0])


class GazeDetector(Detector):
    """One instance per stream: it keeps that candidate's baseline."""

    name = "gaze"

    def __init__(self, settings: Settings) -> None:
        self.fps = settings.gaze_fps
        self.yaw_threshold = settings.gaze_yaw_deg
        self.pitch_threshold = settings.gaze_pitch_deg
        self.iris_threshold = settings.gaze_iris  # iris offset from its baseline, in eye widths
        self.baseline_s = settings.gaze_baseline_s
        self.baseline: GazeMeasure | None = None
        self.baseline_source = ""
        self._samples: list[GazeMeasure] = []
        self._first_face_s: float | None = None
        self._error: str | None = None

    def load(self) -> None:
        try:
            _pool()
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise

    def status(self) -> tuple[bool, str]:
        if self._error:
            return False, self._error
        return True, "mediapipe FaceMesh with iris (bundled) + solvePnP"

    @property
    def calibrated(self) -> bool:
        return self.baseline is not None

    def set_baseline_from(self, rgb: np.ndarray) -> bool:
        """Use a still (the reference photo) as this candidate's 'looking at the screen'; False if no face."""
        found = measure(rgb)
        if found is None:
            return False
        self.baseline, self.baseline_source = found, "reference"
        return True

    def _calibrate(self, found: GazeMeasure, media_time_s: float) -> bool:
        if self._first_face_s is None:
            self._first_face_s = media_time_s
        self._samples.append(found)
        if media_time_s - self._first_face_s < self.baseline_s or len(self._samples) < 3:
            return False
        self.baseline = GazeMeasure(*(statistics.median(getattr(s, f) for s in self._samples)
                                      for f in ("yaw", "pitch", "roll", "iris_x", "iris_y")))
        self.baseline_source = "first_seconds"
        self._samples.clear()
        return True

    def judge(self, found: GazeMeasure) -> Signal:
        base = self.baseline or GazeMeasure(0.0, 0.0, 0.0, 0.0, 0.0)
        d_yaw = found.yaw - base.yaw
        d_pitch = found.pitch - base.pitch
        d_iris = math.hypot(found.iris_x - base.iris_x, found.iris_y - base.iris_y)
        ratios = {
            "yaw": abs(d_yaw) / self.yaw_threshold,
            "pitch": abs(d_pitch) / self.pitch_threshold,
            "iris": d_iris / self.iris_threshold,
        }
        reason = max(ratios, key=lambda key: ratios[key])
        excess = ratios[reason]
        details = {
            **found.rounded(),
            "d_yaw": round(d_yaw, 2), "d_pitch": round(d_pitch, 2), "d_iris": round(d_iris, 3),
            "baseline": base.rounded(), "baseline_source": self.baseline_source,
            "reason": reason if excess > 1.0 else None,
        }
        # 0.5 at the threshold, 1.0 at twice the threshold.
        return Signal("looking_away", excess > 1.0, clamp01(excess / 2.0), details)

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        found = measure(rgb)
        if found is None:
            return []  # no face: the faces detector reports that
        if self.baseline is None and not self._calibrate(found, media_time_s):
            return []  # still learning this candidate's straight-ahead pose
        return [self.judge(found)]
