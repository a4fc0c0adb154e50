"""Counting faces: mediapipe's face detection models (BlazeFace short and full range, run on onnxruntime by
analyzers/blazeface.py), both together, and the picture's quality.

Feeds `no_face` (nobody in front of the camera), `multiple_people` (a second face in view) and `poor_image` (too
dark, washed out, blurred or covered: analyzers/image_quality.py). A dark or covered camera is a `poor_image`,
never a `no_face`: when the picture is poor and no face is found, no_face stays inactive.

Why two models: the full-range model (`model_selection=1`, built for faces 2-5 m away) misses faces that fill
the frame, a candidate sitting close to the webcam (31 of 360 close-ups cut from real photos, 60-95 % of the
frame height); the short-range model (`model_selection=0`, within 2 m) finds all of them but misses small faces
(16 of 120 at 15-55 % of the height), which the full-range model finds. Both run on every frame and their
detections are merged: one face found by both is one face (`_merge`). A poor picture (dark, washed out,
blurred) is searched again on a contrast-equalised copy (`detect_faces_in`, RETRY_CLAHE_*). On bench/quality's
labelled photos: faces found in 186 of 187 photos with a face (181 without the retry; the full-range model alone:
158; the miss: a heavily blurred portrait), false faces in 1 of 41 without (the same painting as before). Cost
per 640x480 frame here: short-range ~3-4 ms, full-range ~7-11 ms; the retry, on a poor frame only, ~12 ms more.

Scores: on face-free pictures the short-range model scores higher than the full-range one (up to 0.66 on 131
face-free frames, 0.71 on one photo's JPEG or softened copies; true close-ups score 0.71 and above), so its
scores are lowered by SHORT_RANGE_SCORE_OFFSET: one minimum (Settings.face_min_score, 0.6) then means 0.7 for the
short-range model and 0.6 for the full-range one, and every caller (identity, pre-check) applies it as before.
Measured false faces at that minimum: 2 of 131 face-free frames as before (both the full-range model's); 12 of
524 with their degraded copies against 10.

Each model is loaded once per process and shared by every stream (an onnxruntime session is thread-safe); the
identity detector and the pre-check use `detect_faces` too. The detections are mediapipe's FaceDetection graph's own
to within a score of 0.0013 (95th percentile; tests/test_blazeface.py), so the figures and thresholds below, measured
on that graph, hold.

Cadence of the full-range model on a live stream (FACES_FULL_RANGE_INTERVAL_S, 1 s by default; 0: both models on
every frame). The full-range model is two thirds of a frame's cost, and on most frames of an exam the short-range
model already sees the candidate, so `FullRangeCadence` (one per stream: a FaceDetector is built per stream) runs it
only where it can change the answer: when the short-range model finds no face (no_face is confirmed by both), when it
finds two or more (multiple_people is decided on both models' merged faces, which may drop a part of a face) or one
and a weaker detection under the minimum (often a small face the full-range model scores well), when
the last full-range pass found a face the short-range one did not (a small face in view: both models on every frame
while it lasts), on a poor picture (its retry on the enhanced copy runs both, as before), and otherwise once per
interval, each drawn at random from 0.5x-1.5x of it, so a small second face appearing in the background is seen
within 1.5 s, before the multiple_people rule (2 s) could have started anyway. `detect_faces` and
`detect_faces_in` (single pictures: identity, the pre-check, bench/quality) always run both models: a photo has no
history.

Pace of a live stream (FACES_SETTLED_FPS, 2 by default; FACES_FPS, 4, otherwise). Face counting is the costliest
detector per stream (~3 % of a core at 4 fps), and most of an exam is one candidate sitting still. `FacesPace`
analyses every other frame offered at FACES_FPS while the picture is settled: for SETTLE_S of media time every
analysed frame held exactly one face at the minimum score and no weaker second detection, the picture not poor,
no face only the full-range model sees, and the face in the same place (its centre within SETTLE_MOVE of its width
of where it was, its size within SETTLE_SIZE). The first frame that is otherwise, or another detector's hint of
multiple_people or no_face (the phone detector's person count), brings FACES_FPS back from the next frame, and it
stays until the picture is settled again. A change is therefore seen at most 1/FACES_SETTLED_FPS after it happens
(0.5 s, against 0.25 s at FACES_FPS), and timed at FACES_FPS from then on; the rules need 2-3 s of it to raise a
flag (core/rules.py), so no flag a 4-fps stream raises is missed.

An empty seat is settled too (FACES_SETTLED_EMPTY, on by default): for SETTLE_S every analysed frame held no face at
the minimum score and a good picture. It is the costliest picture to count: both models run on every frame of it,
since no_face needs both. The first frame with a face at the minimum score, a poor picture or a hint of
multiple_people brings FACES_FPS back, as above; so a candidate coming back is seen at most 1/FACES_SETTLED_FPS
after it happens, and the no_face flag, already raised, ends at most one offered frame later than at FACES_FPS.
Weaker detections (under the minimum) do not unsettle it: an empty room's poster or shadow scores 0.3-0.5 on and off,
and the full-range model runs on every analysed frame of an empty seat anyway.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from analyzers.base import Detector, DetectorUnavailable, Signal, clamp01, load_once, onnx_session
from analyzers.blazeface import FACES_DETAIL, FULL_RANGE_MODEL, SHORT_RANGE_MODEL, BlazeFace, missing_weights
from analyzers.image_quality import ImageQuality, assess
from proctor.settings import Settings

SHORT_RANGE, FULL_RANGE = 0, 1  # mediapipe's model_selection
MODEL_NAMES = {SHORT_RANGE: "short", FULL_RANGE: "full"}
# Each model keeps its own floor (BlazeFaceModel.min_score: 0.5 short range, 0.6 full range, the graphs' own; on the
# common scale 0.4 and 0.6); Settings.face_min_score filters after it, so scores below the configured minimum and
# above the floor are still reported in details for tuning.
BLAZEFACE = {SHORT_RANGE: SHORT_RANGE_MODEL, FULL_RANGE: FULL_RANGE_MODEL}
# Subtracted from the short-range model's scores so they compare with the full-range model's (see above).
SHORT_RANGE_SCORE_OFFSET = 0.1
# The same face found by both models: boxes overlapping this much (IoU), or the centre of one inside the other.
# Measured on 329 close-ups both models found: IoU 0.62 at the 5th percentile, median 0.76, the short-range box
# 0.82-1.04x the height of the full-range one (5th-95th percentile).
SAME_FACE_IOU = 0.3
# A detection at most this fraction of another's area that holds one of its keypoints is a part of that face:
# the full-range model calls the ear of a close face in profile a face of its own (0.61-0.69, 2 of 360).
PART_AREA = 0.25
# A poor picture (dark, washed out, blurred; not covered) is searched again on a copy with its luma's contrast
# equalised locally (CLAHE: this clip limit, this many tiles a side), and the faces found only there are added.
# On bench/quality's labelled photos it finds 5 of the 6 faces the first pass missed (washed out: 1 of 1;
# blurred: 4 of 5, a close-up and a 150 px face chip among them; gamma to mid-grey found the washed-out one only,
# an unsharp mask 2 and a 2x or 4x smaller copy none) and no false face on the set's 16 face-free poor pictures.
# On 97 synthetic poor copies of its 30 face-free photos (darkened, washed out, Gaussian blur sigma 4 and 8 at
# 640 px) it adds 2 false faces to the 9 the first pass finds (an apple washed out, a squirrel blurred sigma 8).
# Normal frames never pay for it; a poor one pays a second pass of both models (~10-15 ms at 640x480).
RETRY_CLAHE_CLIP = 4.0
RETRY_CLAHE_TILES = 4
# FacesPace: how long, and how still, a picture must be to be counted at FACES_SETTLED_FPS.
SETTLE_S = 1.0
SETTLE_MOVE = 0.25  # the face's centre moved at most this fraction of its box width between analysed frames
SETTLE_SIZE = 1.25  # and its box's width changed by at most this factor
# Other detectors' signals that unsettle the picture when active (analyzers/phone.py's person count).
UNSETTLING_HINTS = frozenset({"multiple_people", "no_face"})
# Live streams (FullRangeCadence): each interval between periodic full-range passes is drawn uniformly from
# (1 - JITTER) to (1 + JITTER) times FACES_FULL_RANGE_INTERVAL_S.
JITTER = 0.5
EPS = 1e-6


@dataclass(frozen=True)
class Face:
    score: float  # on the full-range model's scale (short-range scores lowered by SHORT_RANGE_SCORE_OFFSET)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, clipped to the frame
    keypoints: tuple[tuple[float, float], ...]  # right eye, left eye, nose tip, mouth, right ear, left ear (px)
    model: str = "full"  # which model found it: "short", "full" or "short+full"; "+enhanced": on the retry
    # The model's own box, before clipping to the frame: where a landmark model is placed (analyzers/gaze.py).
    # Set on a single model's detections (`_detect`); None on merged ones.
    unclipped: tuple[float, float, float, float] | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def _model(model: int) -> BlazeFace:
    """The shared model (loaded once per process, warmed up); raises DetectorUnavailable."""
    spec = BLAZEFACE[model]

    def build() -> BlazeFace:
        missing = missing_weights(spec)
        if missing:
            raise DetectorUnavailable(missing)
        session = onnx_session(spec.path, "bundled BlazeFace")
        try:
            loaded = BlazeFace(spec, session)
            loaded.detect(np.zeros((64, 64, 3), np.uint8))  # warm up now, not on the first live frame
        except Exception as exc:  # an ONNX file that loads but is not this model (onnxruntime's own errors too)
            raise DetectorUnavailable(f"bundled face detection weights {spec.path} are not BlazeFace's: {exc}; "
                                      "rebuild them with analyzers/weights/convert_blazeface.sh") from exc
        return loaded

    return load_once(("blazeface", spec.name), build)


def load_face_detection() -> None:
    """Load and warm up the shared face-detection models (once per process); raises DetectorUnavailable."""
    for model in MODEL_NAMES:
        _model(model)


def _detect(rgb: np.ndarray, model: int) -> list[Face]:
    """One model's faces, scores on the common scale."""
    height, width = rgb.shape[:2]
    offset = SHORT_RANGE_SCORE_OFFSET if model == SHORT_RANGE else 0.0
    faces = []
    for found in _model(model).detect(rgb):
        x1, x2 = (min(max(v, 0.0), width) for v in found.box[::2])
        y1, y2 = (min(max(v, 0.0), height) for v in found.box[1::2])
        faces.append(Face(found.score - offset, (x1, y1, x2, y2), found.keypoints, MODEL_NAMES[model], found.box))
    return faces


def _iou(a: Face, b: Face) -> float:
    ix = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    iy = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    union = a.area + b.area - ix * iy
    return ix * iy / union if union > 0 else 0.0


def _inside(point: tuple[float, float], face: Face) -> bool:
    x1, y1, x2, y2 = face.box
    return x1 <= point[0] <= x2 and y1 <= point[1] <= y2


def _centre(face: Face) -> tuple[float, float]:
    return (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2


def _same_face(a: Face, b: Face) -> bool:
    """Two detections (one per model) of one face: overlapping boxes, or the centre of one inside the other."""
    return _iou(a, b) >= SAME_FACE_IOU or _inside(_centre(a), b) or _inside(_centre(b), a)


def _part_of(small: Face, large: Face) -> bool:
    """`small` is a part of the face `large` (an ear, an eye): a much smaller box around one of its keypoints."""
    return small.area <= PART_AREA * large.area and any(_inside(point, small) for point in large.keypoints)


def _one_of(short: Face, full: Face) -> Face:
    """One face for the two models' detections of it: the better score, and the full-range model's box and
    keypoints, which the identity crop was tuned on, unless the short-range model sees the face whole where the
    full-range one saw only part of it (a box under half the size: an ear, an eye), and is as sure of it on its
    own scale (a weak short-range box around a small face is no better view of it)."""
    whole = short.area > 2 * full.area and short.score + SHORT_RANGE_SCORE_OFFSET >= full.score
    shape = short if whole else full
    return Face(max(short.score, full.score), shape.box, shape.keypoints, "short+full")


def _merge(short: list[Face], full: list[Face]) -> list[Face]:
    """One list of faces from both models' detections: pairs of the same face (best-overlapping pairs first)
    become one; a leftover that is only a part of a stronger face of the other model is dropped. A leftover that
    merely overlaps a face already paired is kept: one model may tell apart two faces the other saw as one."""
    pairs = sorted(((_iou(s, f), i, j) for i, s in enumerate(short) for j, f in enumerate(full)
                    if _same_face(s, f) or _part_of(s, f) or _part_of(f, s)), reverse=True)
    merged: list[Face] = []
    used_short: set[int] = set()
    used_full: set[int] = set()
    for _, i, j in pairs:
        if i not in used_short and j not in used_full:
            used_short.add(i)
            used_full.add(j)
            merged.append(_one_of(short[i], full[j]))
    for mine, theirs, used in ((short, full, used_short), (full, short, used_full)):
        for i, face in enumerate(mine):
            if i not in used and not any(_part_of(face, other) and other.score >= face.score for other in theirs):
                merged.append(face)
    return merged


def short_range_faces(rgb: np.ndarray) -> list[Face]:
    """The short-range model's detections alone (score >= its floor, 0.4 on the common scale), best first."""
    return _detect(np.ascontiguousarray(rgb), SHORT_RANGE)


def detect_faces(rgb: np.ndarray, short: list[Face] | None = None) -> list[Face]:
    """Every face either model finds (score >= its model's floor on the common scale), best score first. `short`:
    the short-range model's detections on this picture, when the caller has them already (FrameFaces)."""
    rgb = np.ascontiguousarray(rgb)
    faces = _merge(_detect(rgb, SHORT_RANGE) if short is None else short, _detect(rgb, FULL_RANGE))
    faces.sort(key=lambda face: face.score, reverse=True)
    return faces


def enhanced(rgb: np.ndarray) -> np.ndarray:
    """The picture with the contrast of its luma equalised locally (CLAHE), colours kept: a washed-out or blurred
    face gets back the contrast between eyes, brows and skin that the models look for."""
    ycc = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb)
    clahe = cv2.createCLAHE(clipLimit=RETRY_CLAHE_CLIP, tileGridSize=(RETRY_CLAHE_TILES, RETRY_CLAHE_TILES))
    ycc[..., 0] = clahe.apply(ycc[..., 0])
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def _with_retry(faces: list[Face], retry: list[Face]) -> list[Face]:
    """The first pass's faces and the retry's: a face found by both keeps the better of the two detections (a
    face the first pass scored below the minimum may score above it on the retry), one only the retry found is
    added, a part of a face (an ear, an eye) is not."""
    merged = list(faces)
    for face in retry:
        face = Face(face.score, face.box, face.keypoints, face.model + "+enhanced")
        same = [i for i, mine in enumerate(merged) if _same_face(face, mine)]
        if same:
            best = max(same, key=lambda i: merged[i].score)
            if face.score > merged[best].score:
                merged[best] = face
        elif not any(_part_of(face, mine) or _part_of(mine, face) for mine in merged):
            merged.append(face)
    return sorted(merged, key=lambda face: face.score, reverse=True)


def detect_faces_in(rgb: np.ndarray, quality: ImageQuality | None = None,
                    short: list[Face] | None = None) -> list[Face]:
    """`detect_faces`, and in a poor picture (dark, washed out or blurred, as `assess` says) also on its
    `enhanced` copy. `quality`: the picture's `assess`, `short`: its short-range detections, when the caller has
    them already."""
    rgb = np.ascontiguousarray(rgb)
    faces = detect_faces(rgb, short)
    quality = assess(rgb) if quality is None else quality
    if quality.poor and not quality.covered:
        faces = _with_retry(faces, detect_faces(enhanced(rgb)))
    return faces


def _entropy_rng() -> random.Random:
    return random.Random(os.urandom(16))


@dataclass
class FullRangeCadence:
    """Which of one stream's frames the full-range model runs on too (see the module doc). A stream's faces detector
    has one frame in flight at a time, so the state is only ever touched by one analysis thread at a time."""

    interval_s: float  # 0: every frame
    fps: float  # the detector's frame rate: a periodic pass takes the frame nearest its due time
    rng: random.Random = field(default_factory=_entropy_rng)
    next_full: float | None = None  # None: the next frame gets it (a stream's first frame has no history)
    last_t: float | None = None
    small_face: bool = False  # the last full-range pass found a face the short-range model did not
    frames: int = 0
    full_runs: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why the full-range model ran, and how often

    def why_full(self, t: float, short: list[Face], min_score: float) -> str | None:
        """Why the frame at media time t needs the full-range model as well, given the short-range model's faces
        (None: the short-range model's answer stands)."""
        seen = sum(1 for face in short if face.score >= min_score)
        if self.interval_s <= 0:
            return "every_frame"
        if seen == 0:
            return "no_face"  # nobody, or a face only the full-range model finds: no_face needs both
        if seen >= 2:
            return "several_faces"  # multiple_people is decided on both models' merged faces
        if len(short) > seen:
            # A second detection under the minimum: often a small face the full-range model scores well (a group
            # photo's second face: 0.54 short-range, 0.88 full-range).
            return "weak_face"
        if self.small_face:
            return "small_face"  # a face only the full-range model sees is in view: keep looking at it
        if self.next_full is None or self.last_t is None or t < self.last_t:
            return "interval"  # first frame, or the timeline restarted
        if t + 0.5 / max(self.fps, 0.01) + EPS >= self.next_full:
            return "interval"
        return None

    def ran(self, t: float, why: str | None, faces: list[Face], short_seen: int | None, min_score: float) -> None:
        """The frame's result: `why` (None: the short-range model alone ran), the faces found, and how many of them
        the short-range model saw on its own (None: not known, on a poor picture's retry)."""
        self.frames += 1
        self.last_t = t
        if why is None:
            return
        self.full_runs += 1
        self.reasons[why] = self.reasons.get(why, 0) + 1
        # The full-range model changed the count: a face only it sees at the minimum score (one the short-range
        # model saw weakly, below the minimum, counts too: the merged face takes the better score).
        seen = sum(1 for face in faces if face.score >= min_score)
        self.small_face = seen != short_seen if short_seen is not None else \
            any(face.model.startswith("full") and face.score >= min_score for face in faces)
        self.next_full = t + self.interval_s * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "full_range": self.full_runs, "reasons": dict(self.reasons)}


@dataclass
class _Detections:
    media_time: float
    picture: weakref.ref[np.ndarray]  # the very array: a frame is one media time and one conversion of it
    faces: list[Face] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class FrameFaces:
    """One stream's short-range detections of its latest frames, made once per frame for whichever detector asks
    first: the faces detector counts faces with them, gaze puts its landmark model on the best of them
    (analyzers/gaze.py; mediapipe's FaceMesh ran this same model on every frame itself). The two detectors work on
    the same frame in different analysis threads, so the second waits for the first's result instead of running the
    model again. Also the media times gaze analysed: the faces pace keeps in step with them (FacesPace).

    A detector built alone has one of its own; analyzers/registry.py gives a stream's faces and gaze detectors the
    same one."""

    KEEP = 4  # frames remembered: a detector works on the latest one or two

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[_Detections] = deque(maxlen=self.KEEP)
        self._gaze_times: deque[float] = deque(maxlen=self.KEEP)
        self.made = 0  # frames the model ran on
        self.shared = 0  # requests answered with another detector's result

    def short_range(self, rgb: np.ndarray, media_time_s: float) -> list[Face]:
        """`short_range_faces` of the frame at this media time, run at most once per frame. A frame is this media
        time and this array (analyzers/live.py converts a frame once for all its detectors): another picture given
        the same time (a test, a still) is another frame."""
        with self._lock:
            entry = next((e for e in self._recent if e.media_time == media_time_s and e.picture() is rgb), None)
            if entry is None:
                entry = _Detections(media_time_s, weakref.ref(rgb))
                self._recent.append(entry)
        with entry.lock:
            made = entry.faces is None
            if entry.faces is None:
                entry.faces = short_range_faces(rgb)
            faces = entry.faces
        with self._lock:
            if made:
                self.made += 1
            else:
                self.shared += 1
        return faces

    def gaze_at(self, media_time_s: float) -> None:
        """Gaze is analysing the frame at this media time."""
        with self._lock:
            self._gaze_times.append(media_time_s)

    def gaze_times(self) -> tuple[float, ...]:
        with self._lock:
            return tuple(self._gaze_times)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"made": self.made, "shared": self.shared}


@dataclass
class FacesPace:
    """Which of the frames offered at FACES_FPS one stream's faces detector analyses (see the module doc).

    While settled it takes every stride-th offered frame (FACES_FPS / FACES_SETTLED_FPS), and in step with gaze:
    the offers counted from one gaze analysed (learnt from `frames`), so the frames it keeps are gaze's and the two
    share one short-range detection (FrameFaces); until it has seen one, by time. `due` and `hint` run on the event
    loop, `analysed` on an analysis thread (one frame in flight per stream), hence the lock."""

    fps: float  # the rate frames are offered at (FACES_FPS)
    settled_fps: float  # the rate while settled; 0, or not below fps: every offered frame
    frames: FrameFaces | None = None  # the stream's shared detections, which also say which frames gaze took
    empty_settles: bool = False  # an empty seat settles too (FACES_SETTLED_EMPTY)
    last_t: float | None = None  # media time of the last frame chosen
    calm_since: float | None = None  # media time since which every analysed frame was settled-looking
    last_box: tuple[float, float, float, float] | None = None
    last_empty: bool = False  # the last analysed frame was an empty seat (empty_settles only)
    scans: int = 0  # frames chosen (what admission by load counts as due)
    settled_skips: int = 0  # offered frames left out because the picture was settled
    offers: int = 0  # frames offered so far
    gaze_offer: int | None = None  # the number of the latest offered frame gaze analysed too
    _offered: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=8))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return 0 < self.settled_fps < self.fps

    @property
    def stride(self) -> int:
        return max(1, round(self.fps / self.settled_fps)) if self.active else 1

    def settled(self, t: float) -> bool:
        return self.calm_since is not None and t - self.calm_since + EPS >= SETTLE_S

    def due(self, t: float) -> bool:
        gaze = self.frames.gaze_times() if self.frames is not None else ()
        with self._lock:
            number = self.offers
            self.offers += 1
            self._offered.append((t, number))
            self._follow(gaze)
            if not self.active or self.last_t is None or t < self.last_t or not self.settled(t):
                take = True
            elif self.gaze_offer is not None:
                take = (number - self.gaze_offer) % self.stride == 0
            else:
                # half an offered frame of slack: frames come on the FACES_FPS grid, give or take jitter
                take = t - self.last_t + 0.5 / self.fps + EPS >= 1.0 / self.settled_fps
            if take:
                self.last_t = t
                self.scans += 1
            else:
                self.settled_skips += 1
            return take

    def _follow(self, gaze_times: tuple[float, ...]) -> None:
        """The latest offered frame gaze analysed too (the same media time: the sampler gave both the same frame)."""
        for t in reversed(gaze_times):
            number = next((n for offered, n in reversed(self._offered) if offered == t), None)
            if number is not None:
                self.gaze_offer = number if self.gaze_offer is None else max(self.gaze_offer, number)
                return

    def analysed(self, t: float, faces: list[Face], found: int, poor: bool, small_face: bool) -> None:
        """One analysed frame: `faces` at the minimum score, `found` detections in all (weaker ones too)."""
        box = faces[0].box if len(faces) == 1 else None
        empty = self.empty_settles and not faces and not poor
        with self._lock:
            if empty:
                calm = self.last_empty  # a second empty frame in a row: nothing has changed
            else:
                calm = (box is not None and found == 1 and not poor and not small_face
                        and _same_place(self.last_box, box))
            self.last_box = box
            self.last_empty = empty
            if not calm:
                self.calm_since = None
            elif self.calm_since is None:
                self.calm_since = t

    def hint(self, kind: str, active: bool) -> None:
        if active and kind in UNSETTLING_HINTS:
            with self._lock:
                self.calm_since = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            stats = {"scans": self.scans, "settled_skips": self.settled_skips}
        if self.frames is not None:
            stats |= {f"detections_{key}": value for key, value in self.frames.stats().items()}
        return stats


def _same_place(before: tuple[float, float, float, float] | None, box: tuple[float, float, float, float]) -> bool:
    """The face of `box` is where the last analysed frame's was: centre within SETTLE_MOVE of its width, width within
    SETTLE_SIZE. No face before: not (the picture has just changed)."""
    if before is None:
        return False
    width, width_before = box[2] - box[0], before[2] - before[0]
    if width <= 0 or width_before <= 0 or max(width, width_before) > SETTLE_SIZE * min(width, width_before):
        return False
    dx = (box[0] + box[2] - before[0] - before[2]) / 2
    dy = (box[1] + box[3] - before[1] - before[3]) / 2
    return (dx * dx + dy * dy) ** 0.5 <= SETTLE_MOVE * width


def quality_signal(quality: ImageQuality) -> Signal:
    details = {"problem": quality.problem, "brightness": quality.brightness, "contrast": quality.contrast,
               "sharpness": quality.sharpness, "message": quality.message}
    return Signal("poor_image", quality.poor, quality.severity, details)


class FaceDetector(Detector):
    name = "faces"

    def __init__(self, settings: Settings) -> None:
        self.fps = settings.faces_fps
        self.min_score = settings.face_min_score
        self.full_range = FullRangeCadence(settings.faces_full_range_interval_s, settings.faces_fps)
        # The stream's short-range detections, shared with its gaze detector (analyzers/registry.py).
        self.frame_faces = FrameFaces()
        # Which frames it analyses (the name every detector that picks its own frames gives it: analyzers/live.py).
        self.cadence = FacesPace(settings.faces_fps, settings.faces_settled_fps, self.frame_faces,
                                 settings.faces_settled_empty)
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
        return True, FACES_DETAIL

    def share(self, frames: FrameFaces) -> None:
        """Use these shared short-range detections (the stream's gaze detector has the same)."""
        self.frame_faces = self.cadence.frames = frames

    # --- pace (FacesPace): the frame slot's protocol (analyzers/live.py) ----------------------------------
    def wants(self, media_time_s: float) -> bool:
        """Whether the frame offered at this media time is to be analysed (the caller then calls analyze)."""
        return self.cadence.due(media_time_s)

    def hint(self, signal: Signal, media_time_s: float) -> None:
        """Another detector's signal on this stream."""
        self.cadence.hint(signal.kind, signal.active)

    def count(self, rgb: np.ndarray) -> list[Face]:
        return [face for face in detect_faces_in(rgb) if face.score >= self.min_score]

    def faces(self, rgb: np.ndarray, quality: ImageQuality, media_time_s: float) -> list[Face]:
        """Every face found in a live frame (best first), the full-range model run as `full_range` says: a poor
        picture gets both models and the retry (`detect_faces_in`), any other frame the short-range model, and the
        full-range one too when it can change the answer. The short-range detections come from `frame_faces`:
        made once per frame for this detector and gaze."""
        short = self.frame_faces.short_range(rgb, media_time_s)  # the array as gaze gets it: the same frame
        rgb = np.ascontiguousarray(rgb)
        short_seen: int | None = None
        if quality.poor:
            why: str | None = "poor_image"
            found = detect_faces_in(rgb, quality, short)
        else:
            short_seen = sum(1 for face in short if face.score >= self.min_score)
            why = self.full_range.why_full(media_time_s, short, self.min_score)
            found = _merge(short, _detect(rgb, FULL_RANGE) if why is not None else [])
            found.sort(key=lambda face: face.score, reverse=True)
        self.full_range.ran(media_time_s, why, found, short_seen, self.min_score)
        return found

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        quality = assess(rgb)
        found = self.faces(rgb, quality, media_time_s)
        faces = [face for face in found if face.score >= self.min_score]
        self.cadence.analysed(media_time_s, faces, len(found), quality.poor, self.full_range.small_face)
        scores = [round(face.score, 3) for face in faces]
        boxes = [[round(v, 1) for v in face.box] for face in faces]
        details: dict[str, Any] = {"faces": len(faces), "scores": scores, "boxes": boxes,
                                   "models": [face.model for face in faces]}
        # no_face: how sure we are that nobody is there = 1 - the best score we did see (below the minimum).
        best = found[0].score if found else 0.0
        no_face = Signal("no_face", not faces, clamp01(1.0 - best), dict(details))
        if no_face.active and quality.poor:
            # Nobody can be seen in a dark, blurred or covered picture: that is poor_image, not an empty seat.
            no_face.active = False
            no_face.details["suppressed"] = "poor_image"
        second = faces[1].score if len(faces) >= 2 else (found[1].score if len(found) >= 2 else 0.0)
        multiple = Signal("multiple_people", len(faces) >= 2, clamp01(second), dict(details),
                          box=[round(v, 1) for v in faces[1].box] if len(faces) >= 2 else None)
        return [no_face, multiple, quality_signal(quality)]
