"""Looking away: head pose (yaw/pitch) and iris position from mediapipe's face landmarks with iris (478 points).

The landmarks are FaceMesh's (refine_landmarks=True), put on the face the short-range face detector found on the
same frame: the detection the faces detector made for its own count (FrameFaces), so a frame both analyse runs that
model once, not twice (FaceMesh ran it again inside; ~35 % of gaze's cost a frame). The same detection, choice
and region as FaceMesh's give the same landmarks (tests/test_gaze_landmarks.py compares them on real photos).

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
from analyzers.faces import SHORT_RANGE_SCORE_OFFSET, Face, FrameFaces, load_face_detection, short_range_faces
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
MEASURED = tuple(sorted({*POSE_LANDMARKS, *(i for eye in EYES for i in eye)}))  # what measure_landmarks reads


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


# FaceLandmarkCpu is the subgraph mediapipe's FaceMesh runs on each face its detector found (inside
# face_landmark_front_cpu); with attention it gives the 478 landmarks with irises (refine_landmarks=True). Here it is
# given the region of interest directly, from a short-range detection the faces detector has made on the same frame
# (FrameFaces): FaceMesh ran that same model on every frame itself.
LANDMARK_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:face_landmarks"
input_side_packet: "WITH_ATTENTION:with_attention"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:face_landmarks"
  input_side_packet: "WITH_ATTENTION:with_attention"
}
"""
# FaceMesh's choice of face (min_detection_confidence=0.5 on the short-range model's own scale, max_num_faces=1: the
# best detection) and its region around it (face_detection_front_detection_to_roi: the box made square on its long
# side and scaled 1.5x, turned so the eyes are level).
MESH_MIN_SCORE = 0.5 - SHORT_RANGE_SCORE_OFFSET
ROI_SCALE = 1.5


def _make_landmarker() -> Any:
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.python.solution_base import SolutionBase

    config = text_format.Parse(LANDMARK_GRAPH, calculator_pb2.CalculatorGraphConfig())
    # No state between calls (no previous-landmarks loopback): one graph serves many streams in turn.
    return SolutionBase(graph_config=config, side_inputs={"with_attention": True})


def _pool() -> ModelPool[Any]:
    def build() -> ModelPool[Any]:
        try:
            import mediapipe  # noqa: F401
        except ImportError as exc:
            raise DetectorUnavailable(f"mediapipe is not installed ({exc}); pip install mediapipe==0.10.21") from None
        pool: ModelPool[Any] = ModelPool(_make_landmarker)
        with pool.get() as graph:
            graph.process({"image": np.zeros((64, 64, 3), np.uint8), "roi": _roi_message(32, 32, 32, 0.0, 64, 64)})
        return pool

    return load_once("mediapipe.face_landmark", build)


def _roi_message(cx: float, cy: float, side: float, rotation: float, width: int, height: int) -> Any:
    from mediapipe.framework.formats import rect_pb2

    return rect_pb2.NormalizedRect(x_center=cx / width, y_center=cy / height, width=side / width,
                                   height=side / height, rotation=rotation)


def mesh_face(short: list[Face]) -> Face | None:
    """The face FaceMesh would put its landmarks on: the best short-range detection at its minimum score."""
    candidates = [face for face in short if face.score >= MESH_MIN_SCORE and face.unclipped is not None]
    return max(candidates, key=lambda face: face.score, default=None)


def region_of(face: Face) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, rotation in radians) in pixels of the landmark model's region for a detection."""
    assert face.unclipped is not None
    x1, y1, x2, y2 = face.unclipped
    (right_x, right_y), (left_x, left_y) = face.keypoints[0], face.keypoints[1]
    rotation = -math.atan2(-(left_y - right_y), left_x - right_x)  # target angle 0: the eyes level
    rotation -= 2 * math.pi * math.floor((rotation + math.pi) / (2 * math.pi))  # within [-pi, pi)
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * ROI_SCALE, rotation


def face_landmarks(rgb: np.ndarray, face: Face, only: tuple[int, ...] | None = None) -> np.ndarray | None:
    """478x3 landmarks in pixels (z in the same scale as x) of the face of this short-range detection, or None when
    the landmark model finds no face there (its face-presence score under 0.5). `only`: fill just these rows (the
    rest stay 0): reading all 478 out of their protobuf messages costs ~0.5 ms of Python a frame."""
    height, width = rgb.shape[:2]
    roi = _roi_message(*region_of(face), width, height)
    with _pool().get() as graph:
        result = graph.process({"image": np.ascontiguousarray(rgb), "roi": roi})
    if result.face_landmarks is None:
        return None
    marks = result.face_landmarks.landmark
    if len(marks) < MESH_POINTS:
        return None
    if only is None:
        return np.array([(m.x * width, m.y * height, m.z * width) for m in marks], dtype=np.float64)
    points = np.zeros((MESH_POINTS, 3), dtype=np.float64)
    for i in only:
        mark = marks[i]
        points[i] = (mark.x * width, mark.y * height, mark.z * width)
    return points


def measure_face(rgb: np.ndarray, short: list[Face]) -> GazeMeasure | None:
    """GazeMeasure of the picture's best face, given its short-range detections; None without one."""
    face = mesh_face(short)
    points = None if face is None else face_landmarks(rgb, face, MEASURED)
    if points is None:
        return None
    return measure_landmarks(points, rgb.shape[1], rgb.shape[0])


def measure(rgb: np.ndarray) -> GazeMeasure | None:
    """GazeMeasure of a single picture (a reference photo, bench/quality)."""
    return measure_face(rgb, short_range_faces(rgb))


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
        # The stream's short-range detections: its own, or shared with its faces detector (analyzers/registry.py).
        self.frame_faces = FrameFaces()

    def load(self) -> None:
        try:
            load_face_detection()
            _pool()
        except DetectorUnavailable as exc:
            self._error = exc.reason
            raise

    def status(self) -> tuple[bool, str]:
        if self._error:
            return False, self._error
        return True, "mediapipe face landmarks with iris (bundled) on the short-range face detection + solvePnP"

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

    def share(self, frames: FrameFaces) -> None:
        """Use these shared short-range detections (the stream's faces detector has the same)."""
        self.frame_faces = frames

    def measure_frame(self, rgb: np.ndarray, media_time_s: float) -> GazeMeasure | None:
        """One live frame's measure, on the stream's shared short-range detections; None without a face."""
        self.frame_faces.gaze_at(media_time_s)
        return measure_face(rgb, self.frame_faces.short_range(rgb, media_time_s))

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        found = self.measure_frame(rgb, media_time_s)
        if found is None:
            return []  # no face: the faces detector reports that
        if self.baseline is None and not self._calibrate(found, media_time_s):
            return []  # still learning this candidate's straight-ahead pose
        return [self.judge(found)]
