"""Identity: is the person in front of the camera the one in the reference photo?

DeepFace embeddings (default model `Dlib`, whose weights ship in the face-recognition-models wheel and which
`analyzers.models.install_bundled_weights` places in $DEEPFACE_HOME/.deepface/weights). We find and crop the
face ourselves with mediapipe (largest face, rotated so the eyes are level, square box without margin — the
crop dlib's model was trained on is about that tight) and call DeepFace with `detector_backend="skip"`, so no
DeepFace face detector (most need downloaded weights) is ever used. The embedding itself runs in a process of
its own (analyzers/embedder.py): dlib holds the GIL for a whole inference.

Several references per candidate: the reference photo first (the anchor), then up to ENROL_MAX_FRAMES good
frames of the first ENROL_WINDOW_S of the exam that match the *photo* (`IdentityDetector.enrol_reason` says
which qualify). A check compares the live face with every reference and keeps the best (smallest) distance,
`best_distance`, which the threshold-calibration harness uses too: a webcam frame of the same room and light
is a much closer reference than an ID photo taken elsewhere, which is where same-person checks failed.

Faces the detector misses or cuts: mediapipe's full-range model finds no face that fills the picture (a tightly
cropped photo), and `detect_faces` clips boxes to the frame, which shifts and shrinks the crop of a face cut by
the frame's edge (measured on grace_hopper cut 25 %: cosine distance 0.049 with the clipped box, 0.011 with the
whole one). Both are found again in the frame padded with grey (`detect_padded`), whose boxes are whole; a
photo (the reference, a labelled set's) is always looked at padded too, since in a tight crop the model may
find only part of the face (`IdentityDetector.look`). Live frames pay the padded search only when needed.

Outcomes of a check (`IdentityDetector.stats`): matched, mismatched, poor_image (a dark, washed-out, blurred or
covered picture, `analyzers.image_quality.assess`: the faces detector raises poor_image for it), no_face (the
faces detector flags that) and unembeddable (a face too small to embed, or a reference photo without a usable
face): the last three give no signal, so they neither start nor end an identity_mismatch, which core/rules.py
starts only after two failed checks in a row. A poor picture is never embedded, so never enrolled either: a
known person's darkened, washed-out or blurred copies were 31 % false mismatches at DeepFace's threshold
(bench/quality), and a candidate whose lamp goes off must hear "more light", not "impostor".

The threshold (IDENTITY_THRESHOLD, 0 by default) is `CALIBRATED` for the model and metric we ship, measured on
bench/quality's labelled set with the policy of `bench.quality.metrics.calibrate`; DeepFace's tuned value for
any other pair.

Cadence (IDENTITY_STABLE_INTERVAL_S, 30 s by default; at most IDENTITY_INTERVAL_S: a check every
IDENTITY_INTERVAL_S as before). A check costs ~240 ms of CPU (both face models and the embedding; ~120 ms less
outside the mirror band, below), so a candidate who keeps matching is checked rarely, and one who may have changed
at once. `IdentityCadence` checks every IDENTITY_INTERVAL_S during the enrolment window until the reference set is
full (the photo and ENROL_MAX_FRAMES frames, typically ~15-25 s in: a later check of the window could enrol
nothing, with IDENTITY_FAST_UNTIL_ENROLLED=true; off by default, see below), after a failed check (core/rules.py starts
identity_mismatch on two failed checks in a row: the second comes as fast as before), after a check that gave no
answer (no face, a poor picture, a face too small) and until two checks in a row matched with one face in view;
then every IDENTITY_STABLE_INTERVAL_S, each interval drawn at random from 0.5x-1.5x of it. The faces detector's
signals on the
same stream (analyzers/live.py passes them to `hint`) bring the next check forward to the next frame: the face
coming back after none was seen, the number of faces changing, the face moving or changing size beyond what
sitting still explains (JUMP_SHIFT, JUMP_SCALE), a poor picture ending. A hinted check never comes sooner than
IDENTITY_INTERVAL_S after the last check, so a flickering face count cannot check more often than before; while the
faces detector sees nobody there is nothing to check and none is made (the return brings one). What ending the
window's pace early costs: a seat swap in the first minute after the set is full, with the new face where the old
one was (no hint), waits for the next rare check, as in any later minute. bench/quality's identity_swap clip (hard
cuts to someone else at 8 s and 31 s) flags only the first swap with it, both with IDENTITY_FAST_UNTIL_ENROLLED=false
(2026-12-02; IDENTITY_MIRROR=band changed no clip event). So it is off by default: a physical swap makes the face
leave or jump (a hint), but a fed video can cut, and the first minute is when the reference set is still young.

Mirror pass in a band (IDENTITY_MIRROR=band, the default): the embedding averages the crop and its mirror image
(analyzers/embedder.py), two passes of each network. A live check embeds the crop alone first and adds the mirror
pass only when that best distance lies within MIRROR_BAND of the threshold T, or when the frame may be enrolled
(every reference, the photo included, stays mirror-averaged). Measured on bench/quality's labelled set (2026-12-02, AMD
EPYC with AVX-512, 2 cores; `python -m bench.identity_cost --band`), Dlib+FaceRes/cosine, single-pass probe
against mirror-averaged references: 30651 comparisons (every pair of different photographs both ways, best of 3,
camera-like variants of the 15 closest impostor pairs); at T = 0.1301 the single-pass distance lay at most 0.0293
(0.225 T) from the averaged one (p99 0.111 T; near the threshold, the impostor variants: 0.158 T); every single-pass
distance below 0.9994 T was an averaged match and every one above 1.095 T an averaged mismatch. The band, T +-
0.065 (0.5-1.5 T), is more than twice the largest shift on each side (a distance, so it holds for another
IDENTITY_THRESHOLD): outside it no decision changed (0 of 26356); inside it fell 4295
comparisons, most of them impostor variants and same-person pairs of different photographs, while a live candidate
against references enrolled from the same webcam sits far below it. One pass costs about half of two: embedding
process CPU per check, median 120 against 230 ms (mean 119 / 235) on 40 of the set's crops, the two passes of a check
in the band 240 ms (`python -m bench.identity_cost --passes`, same run). Models and metrics without a measured band
always pay both passes.

Offline rules: the weights file is checked *before* DeepFace builds the model (otherwise DeepFace tries to
download it), and the embedding process sets $DEEPFACE_HOME before it imports deepface (it creates its folders
at import and reads the variable again whenever it looks for weights).
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from analyzers import embedder
from analyzers.base import Detector, DetectorUnavailable, Signal, clamp01, load_once
from analyzers.faces import Face, detect_faces, load_face_detection
from analyzers.image_quality import assess
from analyzers.models import BUNDLED_FACERES, FUSED_IDENTITY_MODEL, IDENTITY_WEIGHTS
from proctor.settings import Settings

MIN_FACE_PX = 40  # faces narrower than this give unreliable embeddings: no signal
# The crop is the detector's box, no margin. dlib's own aligner pads its 150x150 chip by 0.25, but around its
# landmarks, not mediapipe's box, which is already looser. Measured on bench/quality (Dlib, cosine, mirror
# averaging, 2026-12-01), false mismatch just below the closest impostor, best of 3 references / one reference:
# margin 0: 2/432 / 28/407 (closest impostor 0.0541); 0.1: 15/432 / 73/407 (0.0454); 0.2: 6/432 / 109/407
# (0.0462, a woman and a girl of one photo); without mirror averaging 0: 4/432, 0.1: 17/432, 0.2: 22/432.
CROP_MARGIN = 0.0
# A picture with no face found is looked at again padded by this many of its sides on every side: the full-range
# face model misses a face that fills the picture (a tight crop) and finds it once it is a third as wide.
RETRY_PAD = 1.0
PAD_GREY = (128, 128, 128)

# Enrolment of live frames as further references. Module constants, not settings: they trade nothing an
# operator sees (the threshold does), and the photo stays the gate of every one of them.
ENROL_MAX_FRAMES = 4  # with the photo, five references: each more one also adds a chance of a false match
ENROL_SPACING_S = 2.0  # media seconds between enrolled frames, so they are not one pose four times
ENROL_WINDOW_S = 60.0  # media seconds after the first check with the photo set; later frames are never enrolled
MAX_ROLL_DEG = 15.0  # eyes level-ish: head tilt sideways
MAX_NOSE_OFFSET = 0.25  # nose tip's sideways offset from between the eyes, in eye distances (~25 degrees of yaw)
MIN_NOSE_DROP = 0.2  # the nose tip below the eye line, in eye distances (rules out garbled keypoints)


# Thresholds calibrated for the (model, metric) pairs we ship, used when IDENTITY_THRESHOLD is 0 (see
# `calibrated_threshold`), with the policy of `bench.quality.metrics.calibrate`, rounded down to 4 decimals.
# Dlib/cosine: bench/quality's labelled set (228 photos; 138 clean embedded pictures of 26 people, 407
# same-person and 8920 different-person pairs), crop margin 0 and mirror averaging, 2026-12-01. The closest
# impostor is 0.0541 (tile_jason_statham_2 / tile_bruce_willis_4, collage tiles); camera-like variants of the
# 15 closest impostor pairs came down to 0.04791 (tile_jason_statham_3 cut at the top / tile_bruce_willis_4 cut
# at the right, 0.0689 as shipped). At 0.0479: no false match; false mismatch 10/432 (2.3 %) against the best
# of 3 references (5 probe pictures, all collage tiles of three bald actors), 52/407 (12.8 %) against one.
# DeepFace's 0.07 accepted 20 of 9135 best-of-3 impostor comparisons.
# Dlib+FaceRes/cosine (the default since 2026-12-02, analyzers/embedder.py `fuse`, DLIB_SHARE 0.7), the same set and
# policy: closest impostor 0.1434 (a woman and a man of one PASCAL VOC photo); a camera-like variant of that pair
# came down to 0.13015. At 0.1301: no false match (0/9135 best of 3, 0/8920 one reference); false mismatch 0/432
# against the best of 3 references, 14/407 (3.4 %) against one.
CALIBRATED: dict[tuple[str, str], float] = {("Dlib", "cosine"): 0.0479, ("Dlib+FaceRes", "cosine"): 0.1301}

# IDENTITY_MIRROR=band: a check embeds the crop alone first (one pass of each network) and pays the mirror pass only
# when that single-pass best distance lies within this distance of the threshold, where the mirror can change the
# decision. Measured per (model, metric) with `python -m bench.identity_cost --band` (module doc: the single-pass
# distance lay at most 0.0293 from the averaged one on 30651 comparisons; the band is twice that and more); a pair not
# listed always pays both passes (Dlib alone: shifts up to 0.83 T, 0.28 T near it; not worth a band).
MIRROR_BAND: dict[tuple[str, str], float] = {("Dlib+FaceRes", "cosine"): 0.065}


def deepface_threshold(model_name: str, metric: str) -> float:
    """DeepFace's tuned threshold for a model and distance metric (deepface.config.threshold)."""
    from deepface.modules.verification import find_threshold

    return float(find_threshold(model_name, metric))


def calibrated_threshold(model_name: str, metric: str) -> float:
    """The threshold IDENTITY_THRESHOLD=0 stands for: ours where we calibrated the pair, else DeepFace's."""
    calibrated = CALIBRATED.get((model_name, metric))
    if calibrated is not None:
        return calibrated
    if model_name == FUSED_IDENTITY_MODEL:  # not a DeepFace model: it has no tuned value to fall back on
        raise ValueError(f"{model_name} is calibrated for the cosine metric only; set IDENTITY_THRESHOLD for "
                         f"{metric}, or IDENTITY_METRIC=cosine")
    return deepface_threshold(model_name, metric)


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


def best_distance(references: Sequence[np.ndarray], embedding: np.ndarray, metric: str) -> tuple[float, int]:
    """The smallest distance from `embedding` to any of `references`, and that reference's index (the first
    one on a tie, so the photo wins a tie). The detector and the threshold-calibration harness both use it, so
    the threshold is calibrated on exactly the comparison the detector makes."""
    if len(references) == 0:
        raise ValueError("best_distance needs at least one reference")
    distances = [distance(reference, embedding, metric) for reference in references]
    index = int(np.argmin(distances))
    return distances[index], index


def face_crop(rgb: np.ndarray, face: Face, margin: float = 0.0) -> np.ndarray:
    """Square crop around `face`, rotated so that the eyes are level; parts outside the frame are edge-filled
    (the box may reach outside the frame: see `detect_padded`)."""
    x1, y1, x2, y2 = face.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    size = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]  # subject's right eye (image left), left eye
    angle = math.degrees(math.atan2(ly - ry, lx - rx))
    # One affine map: rotate about the face centre, then move the centre to the crop's centre.
    matrix = np.asarray(cv2.getRotationMatrix2D((cx, cy), angle, 1.0), dtype=np.float64)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def detect_padded(rgb: np.ndarray, pad_px: int) -> list[Face]:
    """`detect_faces` on the picture padded with grey by `pad_px` on every side, in the picture's coordinates:
    boxes are no longer clipped at the picture's edge (they may start below 0 or end beyond it)."""
    padded = cv2.copyMakeBorder(np.ascontiguousarray(rgb), pad_px, pad_px, pad_px, pad_px, cv2.BORDER_CONSTANT,
                                value=PAD_GREY)
    return [Face(face.score, (face.box[0] - pad_px, face.box[1] - pad_px, face.box[2] - pad_px, face.box[3] - pad_px),
                 tuple((x - pad_px, y - pad_px) for x, y in face.keypoints))
            for face in detect_faces(padded)]


def touches_edge(face: Face, shape: tuple[int, ...]) -> bool:
    """Whether the box reaches the frame's edge: `detect_faces` clipped it there, so it may be cut."""
    height, width = shape[:2]
    x1, y1, x2, y2 = face.box
    return x1 <= 0.5 or y1 <= 0.5 or x2 >= width - 0.5 or y2 >= height - 0.5


def face_width(face: Face) -> float:
    return face.box[2] - face.box[0]


def nose_gap(a: Face, b: Face) -> float:
    return math.dist(a.keypoints[2], b.keypoints[2])


def same_face(a: Face, b: Face) -> bool:
    """Two detections of one face: nose tips closer than half the first one's width."""
    return nose_gap(a, b) <= face_width(a) / 2


def pose(face: Face) -> tuple[float, float, float]:
    """(roll in degrees, nose tip's sideways offset, nose tip's drop below the eye line), both in eye distances,
    from the keypoints: the cheap frontal test enrolment needs (the gaze detector's FaceMesh is not ours)."""
    (rx, ry), (lx, ly), (nx, ny) = face.keypoints[0], face.keypoints[1], face.keypoints[2]
    eyes = math.hypot(lx - rx, ly - ry)
    if eyes < 1e-6:
        return 0.0, math.inf, 0.0
    ux, uy = (lx - rx) / eyes, (ly - ry) / eyes  # along the eye line, subject's right eye to left eye
    dx, dy = nx - (rx + lx) / 2, ny - (ry + ly) / 2
    return math.degrees(math.atan2(ly - ry, lx - rx)), (dx * ux + dy * uy) / eyes, (dy * ux - dx * uy) / eyes


def is_frontal(face: Face) -> bool:
    """Eyes level-ish and the nose tip between them and below them: a face turned less than ~25 degrees."""
    roll, side, drop = pose(face)
    return abs(roll) <= MAX_ROLL_DEG and abs(side) <= MAX_NOSE_OFFSET and drop >= MIN_NOSE_DROP


# The adaptive cadence (IdentityCadence).
CADENCE_JITTER = 0.5  # each stable interval is drawn uniformly from (1 - JITTER) to (1 + JITTER) times its mean
STABLE_AFTER_MATCHES = 2  # consecutive matches before checks become rare (the rule ends a mismatch on two)
# Frames offered per second while adaptive, of which `wants` picks the ones to check: a hinted check waits at most
# one such frame. Offering a frame that is not wanted costs a call on the event loop and nothing else.
WAKE_FPS = 2.0
# The face moved: its centre more than this many face widths from the last checked face's, or its width changed by
# more than this factor. Sitting and leaning stay within it most of the time; a person sitting down in another's
# place rarely does.
JUMP_SHIFT = 0.5
JUMP_SCALE = 1.5
CADENCE_EPS = 1e-6
Box = tuple[float, float, float, float]


def _entropy_rng() -> random.Random:
    return random.Random(os.urandom(16))


def _jumped(box: Box, last: Box) -> bool:
    width, last_width = box[2] - box[0], last[2] - last[0]
    if width <= 0 or last_width <= 0:
        return True
    shift = math.hypot((box[0] + box[2] - last[0] - last[2]) / 2, (box[1] + box[3] - last[1] - last[3]) / 2)
    return shift > JUMP_SHIFT * last_width or not 1 / JUMP_SCALE <= width / last_width <= JUMP_SCALE


@dataclass
class IdentityCadence:
    """When one stream's identity is checked (media times; see the module doc). `due` and `hint` run on the event
    loop, `checked` on an analysis thread, hence the lock."""

    interval_s: float  # IDENTITY_INTERVAL_S
    stable_s: float  # IDENTITY_STABLE_INTERVAL_S
    fps: float  # the frames offered per second
    rng: random.Random = field(default_factory=_entropy_rng)
    next_check: float | None = None  # None: the next frame offered
    hinted_at: float | None = None  # a hint's time, until a check of a later frame covers it
    hint_due: float | None = None
    last_check: float | None = None  # the last frame taken
    face_box: Box | None = None  # the last checked face's box, in frame coordinates
    matches: int = 0  # consecutive matched checks (checks without an answer leave it)
    stable: bool = False  # the next check is a rare one
    faces_seen: int | None = None  # the faces detector's latest count (None: it has said nothing)
    poor: bool = False  # the faces detector's latest poor_image state
    checks: int = 0
    hinted: int = 0  # checks a hint brought forward
    rare: int = 0  # checks made at the stable cadence
    intervals: list[float] = field(default_factory=list)  # the last drawn intervals (tests, stats)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def adaptive(self) -> bool:
        return self.stable_s > self.interval_s

    def due(self, t: float) -> bool:
        """Whether to check the frame at media time t (if so, it is taken: counted, and nothing else is due until its
        result is in, unless a hint comes meanwhile)."""
        if not self.adaptive:
            with self._lock:
                self.checks += 1
            return True  # the sampler offers one frame per IDENTITY_INTERVAL_S: each is checked, as before
        half = 0.5 / max(self.fps, 0.01)  # scheduled checks take the frame nearest their time, so the mean holds
        with self._lock:
            if self.last_check is not None and t <= self.last_check + CADENCE_EPS:
                return False
            if self.faces_seen == 0:
                return False  # nobody in view (the faces detector flags that); the face coming back is a hint
            hinted = self.hint_due is not None and t + CADENCE_EPS >= self.hint_due
            scheduled = self.next_check is None or t + half + CADENCE_EPS >= self.next_check
            if not (hinted or scheduled):
                return False
            self.checks += 1
            if hinted and not scheduled:
                self.hinted += 1
            elif self.stable:
                self.rare += 1
            self.last_check = t
            if self.hinted_at is not None and t + CADENCE_EPS >= self.hinted_at:
                self.hinted_at = self.hint_due = None  # a frame after the hint: this check answers it
            self.next_check = t + self.interval_s  # until `checked` sets it from the result
            return True

    def checked(self, t: float, outcome: str, box: Box | None, faces: int, enrolling: bool) -> None:
        """A check's result: `outcome` is an IdentityStats field name (or "no_reference"), `box` the checked face's
        box, `faces` how many faces the check saw, `enrolling` whether enrolment goes on (IdentityDetector.analyze: in
        the enrolment window, and the reference set not yet full)."""
        with self._lock:
            if outcome == "matched":
                self.matches += 1
            elif outcome == "mismatched":
                self.matches = 0
            if box is not None:
                self.face_box = box
            self.stable = self.adaptive and outcome == "matched" and self.matches >= STABLE_AFTER_MATCHES \
                and faces == 1 and not enrolling
            if self.stable:
                interval = self.stable_s * self.rng.uniform(1.0 - CADENCE_JITTER, 1.0 + CADENCE_JITTER)
                self.intervals = [*self.intervals[-49:], interval]
            else:
                interval = self.interval_s
            self.next_check = t + interval

    def hint(self, kind: str, active: bool, details: dict[str, Any], t: float) -> None:
        """The faces detector's signal on this stream: a reason to check at once (see the module doc)?"""
        if not self.adaptive:
            return
        with self._lock:
            why = False
            if kind == "poor_image":
                why = self.poor and not active  # a poor picture ended: who is there now?
                self.poor = active
            elif kind == "no_face" and isinstance(details.get("faces"), int):
                count = int(details["faces"])
                # The face came back, or a face came or went with others in view; a face leaving alone is nothing
                # to check (nobody is there).
                why = self.faces_seen is not None and count != self.faces_seen and count > 0
                self.faces_seen = count
                boxes = [b for b in details.get("boxes") or [] if isinstance(b, list | tuple) and len(b) == 4]
                if not why and boxes and self.face_box is not None and count == 1:
                    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
                    why = _jumped((float(largest[0]), float(largest[1]), float(largest[2]), float(largest[3])),
                                  self.face_box)
            if not why:
                return
            # Never sooner than IDENTITY_INTERVAL_S after the last check (while nobody is in view none is made, so
            # that is the last one before the face left): a flickering face count cannot check more often than before.
            soonest = t if self.last_check is None else max(t, self.last_check + self.interval_s)
            self.hint_due = soonest if self.hint_due is None else min(self.hint_due, soonest)
            self.hinted_at = t if self.hinted_at is None else max(self.hinted_at, t)

    def reset(self) -> None:
        """A new reference photo: check the next frame, and confirm the candidate anew."""
        with self._lock:
            self.next_check, self.matches, self.stable = None, 0, False

    def stats(self) -> dict[str, int]:
        """`scans`: the frames chosen for a check, which media_server/node.py reports as the frames due (the slot is
        offered WAKE_FPS frames a second and analyses only these)."""
        with self._lock:
            return {"scans": self.checks, "hinted": self.hinted, "rare": self.rare}


@dataclass(frozen=True)
class Reference:
    embedding: np.ndarray
    label: str  # "photo" or "frame@<media time>": which reference matched, in every check's details
    media_time_s: float | None = None  # None for the photo


@dataclass(frozen=True)
class Look:
    """What one look at a picture found: its faces at the minimum score and the one to embed."""

    faces: tuple[Face, ...]
    face: Face | None  # the largest, with its whole box even where the picture cuts it
    padded: bool = False  # found only in the padded picture (a tight crop)
    cut: bool = False  # the face reaches the picture's edge

    @property
    def usable(self) -> bool:
        return self.face is not None and face_width(self.face) >= MIN_FACE_PX


@dataclass
class IdentityStats:
    """Counts of one stream's checks: checks == matched + mismatched + poor_image + no_face + unembeddable."""

    checks: int = 0
    matched: int = 0
    mismatched: int = 0
    poor_image: int = 0  # a dark, washed-out, blurred or covered picture: the faces detector reports that
    no_face: int = 0  # no face at the minimum score: the faces detector reports that
    unembeddable: int = 0  # a face, but too small to embed, or a reference photo without a usable face


@dataclass
class _State:
    """The per-stream state set_reference and analyze share (see IdentityDetector._lock)."""

    photo_given: bool = False
    references: tuple[Reference, ...] = ()  # empty while photo_given: the photo had no usable face
    generation: int = 0  # bumped by each set_reference: an enrolment computed against an older photo is dropped
    enrol_from: float | None = None  # media time of the first check with this photo
    stats: IdentityStats = field(default_factory=IdentityStats)


class IdentityDetector(Detector):
    """One instance per stream: it keeps that candidate's references and counts its checks."""

    name = "identity"
    heavy = True  # waits ~0.3 s (more on a busy machine: the embedding process is niced) for each embedding

    def __init__(self, settings: Settings) -> None:
        self.model_name = settings.identity_model
        self.metric = settings.identity_metric
        self.cadence = IdentityCadence(settings.identity_interval_s, settings.identity_stable_interval_s, WAKE_FPS)
        # The sampler's rate: one frame per check without the adaptive cadence (as before); with it, WAKE_FPS
        # frames a second, of which `wants` picks the ones to check.
        self.fps = 1.0 / max(settings.identity_interval_s, 0.1)
        if self.cadence.adaptive:
            self.fps = max(self.fps, WAKE_FPS)
        self.threshold = settings.identity_threshold  # 0: `calibrated_threshold`, looked up in load()
        # IDENTITY_MIRROR=band: the mirror pass only where it can change the decision (MIRROR_BAND); None: always.
        self.mirror_band = MIRROR_BAND.get((self.model_name, self.metric)) if settings.identity_mirror == "band" \
            else None
        # IDENTITY_FAST_UNTIL_ENROLLED: once the reference set is full, the enrolment window's fast pace has nothing
        # left to enrol, so checks go rare on the same terms as after the window (module doc). False: the whole
        # window at IDENTITY_INTERVAL_S (before).
        self.fast_until_full = settings.identity_fast_until_enrolled
        self.passes = {"single": 0, "mirrored": 0}  # live checks embedded with one pass / with the mirror pass too
        self.min_face_score = settings.face_min_score
        self.models_home = settings.models_home  # DeepFace's home
        self.dlib_runtime = settings.identity_dlib_runtime  # IDENTITY_DLIB_RUNTIME: onnx (default) or dlib
        self.weights_dir = settings.deepface_weights_dir
        self._model: Any = None
        self._error: str | None = None
        # One worker thread analyses a stream at a time, but live.py sets the reference from another executor
        # thread while the first frames may already be analysed: the lock keeps the two from tearing the state.
        # It is never held across an embedding (tens of milliseconds in the embedding process).
        self._lock = threading.Lock()
        self._state = _State()

    # --- loading -----------------------------------------------------------------------------------
    def _check_available(self) -> None:
        if self.model_name not in IDENTITY_WEIGHTS:
            raise DetectorUnavailable(
                f"IDENTITY_MODEL {self.model_name!r} is not supported; choose one of {', '.join(IDENTITY_WEIGHTS)}")
        path = self.weights_dir / IDENTITY_WEIGHTS[self.model_name]
        if not path.is_file():
            hint = " (it ships in the face-recognition-models package: analyzers.models.install_bundled_weights " \
                "copies it there)" if self.model_name in ("Dlib", FUSED_IDENTITY_MODEL) else ""
            raise DetectorUnavailable(f"{self.model_name} weights missing: {path.name} not found in {path.parent}"
                                      f"{hint}; DeepFace would try to download it")
        if self.model_name in ("Dlib", FUSED_IDENTITY_MODEL) and importlib.util.find_spec("dlib") is None:
            raise DetectorUnavailable("dlib is not installed (pip install dlib-bin)")
        if self.model_name == FUSED_IDENTITY_MODEL:
            if not BUNDLED_FACERES.is_file():
                raise DetectorUnavailable(f"bundled FaceRes-deep weights missing ({BUNDLED_FACERES}): reinstall the "
                                          "package or rebuild them (analyzers/weights/NOTICE.md)")
            if importlib.util.find_spec("onnxruntime") is None:
                raise DetectorUnavailable("onnxruntime is not installed")
        if importlib.util.find_spec("deepface") is None:
            raise DetectorUnavailable("deepface is not installed")

    def load(self) -> None:
        try:
            self._check_available()
            if self.threshold <= 0:
                self.threshold = calibrated_threshold(self.model_name, self.metric)
            else:
                distance(np.ones(2), np.ones(2), self.metric)  # validates the metric name
            name, home, runtime = self.model_name, str(self.models_home), self.dlib_runtime

            def build() -> Any:
                # In the embedding process (analyzers/embedder.py): dlib holds the GIL for a whole inference.
                try:
                    return embedder.build(name, home, runtime)
                except Exception as exc:
                    raise DetectorUnavailable(f"DeepFace could not build {name}: {exc}") from exc

            self._model = load_once(("deepface", name, home, runtime), build)
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
        with self._lock:
            given, references = self._state.photo_given, self._state.references
        if not given:
            reference = "no reference photo yet"
        elif not references:
            reference = "reference photo has no usable face: identity not checked"
        else:
            reference = f"reference set (photo and {len(references) - 1} enrolled frames)"
        model = "DeepFace Dlib fused with FaceRes-deep" if self.model_name == FUSED_IDENTITY_MODEL \
            else f"DeepFace {self.model_name}"
        return True, f"{model} ({self.metric} <= {self.threshold:g}); {reference}"

    # --- what the stream has -----------------------------------------------------------------------
    @property
    def references(self) -> tuple[Reference, ...]:
        with self._lock:
            return self._state.references

    @property
    def reference(self) -> np.ndarray | None:
        """The reference photo's embedding (None: no photo yet, or none usable)."""
        references = self.references
        return references[0].embedding if references else None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return asdict(self._state.stats)

    # --- embeddings --------------------------------------------------------------------------------
    def _crop_bgr(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        if self._model is None:
            self.load()
        crop = face_crop(rgb, face, CROP_MARGIN)
        # DeepFace's "skip" path takes BGR; scaled to 0..1 like its own detectors' crops, which every model
        # (Dlib included) expects.
        return np.ascontiguousarray(crop[:, :, ::-1], dtype=np.float32) / 255.0

    def embed_face(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The mirror-averaged embedding (references are always this one: enrolment pays both passes)."""
        return embedder.embed(self.model_name, str(self.models_home), self._crop_bgr(rgb, face),
                              runtime=self.dlib_runtime)

    def _check_embedding(self, rgb: np.ndarray, found: Look, references: Sequence[np.ndarray],
                         media_time_s: float) -> tuple[np.ndarray, bool]:
        """A live check's embedding of the face, and whether it is mirror-averaged. With a mirror band, the crop
        alone first: a best distance outside the band gives the decision the averaged one would (measured, see
        MIRROR_BAND), so the mirror pass is skipped; inside it, or for a frame that may be enrolled (references
        are always averaged), the mirror pass too, which makes it exactly `embed_face`'s embedding."""
        assert found.face is not None
        if self.mirror_band is None or self.enrol_reason(found, 0.0, media_time_s) is None:
            return self.embed_face(rgb, found.face), True
        home, bgr = str(self.models_home), self._crop_bgr(rgb, found.face)
        plain = embedder.embed_parts(self.model_name, home, bgr, runtime=self.dlib_runtime)
        single = embedder.combine(self.model_name, plain)
        if abs(best_distance(references, single, self.metric)[0] - self.threshold) > self.mirror_band:
            return single, False
        mirrored = embedder.embed_parts(self.model_name, home, bgr, mirrored=True, runtime=self.dlib_runtime)
        return embedder.combine(self.model_name, plain, mirrored), True

    def _scored(self, faces: list[Face]) -> list[Face]:
        return [face for face in faces if face.score >= self.min_face_score]

    def look(self, rgb: np.ndarray, thorough: bool = False) -> Look:
        """The faces at the minimum score and the largest one. The picture padded with grey is looked at too
        when it shows no face (a tight crop) or, `thorough`, always: in a tight crop the full-range model may
        find only part of the face (grace_hopper cropped to its face box: an 80-px "face" in a corner, distance
        0.129 to the photo; the padded picture's whole face: 0.009). A largest face reaching the picture's edge
        gets its whole box from the padded picture."""
        raw = self._scored(detect_faces(rgb))
        padded: list[Face] = []
        if thorough or not raw:
            padded = self._scored(detect_padded(rgb, int(round(max(rgb.shape[:2]) * RETRY_PAD))))
        face = max(raw, key=lambda f: f.area) if raw else None
        whole = max(padded, key=lambda f: f.area) if padded else None
        # The padded picture's face wins only when it is another, larger one: the same face found in both keeps
        # the unpadded picture's box, found at three times the resolution.
        if whole is not None and (face is None or (whole.area > face.area and not same_face(face, whole))):
            return Look(tuple(raw or padded), whole, padded=True, cut=True)
        if face is None:
            return Look((), None)
        if not touches_edge(face, rgb.shape):
            return Look(tuple(raw), face)
        return Look(tuple(raw), self._whole(rgb, face), cut=True)

    def _whole(self, rgb: np.ndarray, face: Face) -> Face:
        """`face` (cut by the picture's edge) with its whole box, from the padded picture (the same face: the
        nearest nose tip); the clipped face itself when the padded picture does not show it."""
        pad = int(round(max(face.box[2] - face.box[0], face.box[3] - face.box[1], 1.0)))
        same = [other for other in self._scored(detect_padded(rgb, pad)) if same_face(face, other)]
        return min(same, key=lambda other: nose_gap(face, other)) if same else face

    def embed(self, rgb: np.ndarray, thorough: bool = True) -> tuple[np.ndarray, Face] | None:
        """Embedding of the largest face (None when there is no usable face); `thorough` (the default) for a
        picture such as the reference photo or a labelled set's, where one more face search costs nothing."""
        found = self.look(rgb, thorough)
        if not found.usable or found.face is None:
            return None
        return self.embed_face(rgb, found.face), found.face

    def set_reference(self, rgb: np.ndarray) -> bool:
        """Take the reference embedding from the reference photo; False if it shows no usable face (then
        identity is not checked: a live face is counted unembeddable, never a mismatch). Enrolled frames of
        an earlier photo are dropped: they were checked against that one."""
        found = self.embed(rgb)
        references = (Reference(found[0], "photo"),) if found is not None else ()
        with self._lock:
            self._state = _State(photo_given=True, references=references, generation=self._state.generation + 1,
                                 stats=self._state.stats)
        self.cadence.reset()
        return found is not None

    def compare(self, rgb: np.ndarray) -> float | None:
        """Best distance of the picture's largest face to the references (None: no usable face or reference)."""
        references = self.references
        found = self.embed(rgb) if references else None
        if found is None:
            return None
        return best_distance([r.embedding for r in references], found[0], self.metric)[0]

    # --- checks ------------------------------------------------------------------------------------
    @staticmethod
    def skips(rgb: np.ndarray) -> bool:
        """Whether a check of this picture gives no signal because the picture is poor (dark, washed out,
        blurred, covered); the threshold-calibration harness leaves out such pictures by this same test."""
        return assess(rgb).poor

    def _count(self, outcome: str) -> None:
        with self._lock:
            stats = self._state.stats
            stats.checks += 1
            setattr(stats, outcome, getattr(stats, outcome) + 1)

    # --- cadence (IdentityCadence): the frame slot's protocol (analyzers/live.py) ----------------------
    def wants(self, media_time_s: float) -> bool:
        """Whether the frame offered at this media time is to be checked (the caller then calls analyze)."""
        return self.cadence.due(media_time_s)

    def hint(self, signal: Signal, media_time_s: float) -> None:
        """Another detector's signal on this stream (the faces detector's no_face details carry its count and
        boxes)."""
        self.cadence.hint(signal.kind, signal.active, signal.details, media_time_s)

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        signals, outcome, found = self._check(rgb, media_time_s)
        with self._lock:
            start, references = self._state.enrol_from, self._state.references
        # The fast pace serves enrolment: over once the window is, or (fast_until_full) once the set is full.
        full = self.fast_until_full and len(references) > ENROL_MAX_FRAMES  # the photo and ENROL_MAX_FRAMES frames
        enrolling = start is None or (media_time_s - start <= ENROL_WINDOW_S and not full)
        box: Box | None = None
        if found is not None and found.face is not None:
            height, width = rgb.shape[:2]
            x1, y1, x2, y2 = found.face.box
            box = (max(0.0, x1), max(0.0, y1), min(x2, float(width)), min(y2, float(height)))
        self.cadence.checked(media_time_s, outcome, box, len(found.faces) if found is not None else 0, enrolling)
        return signals

    def _check(self, rgb: np.ndarray, media_time_s: float) -> tuple[list[Signal], str, Look | None]:
        """One check: its signals, its outcome (an IdentityStats field, or "no_reference") and what it saw."""
        with self._lock:
            state = self._state
            if state.photo_given and state.references and state.enrol_from is None:
                state.enrol_from = media_time_s
            given, references, generation = state.photo_given, state.references, state.generation
        if not given:
            return [], "no_reference", None  # nothing to check against yet: not counted
        if self.skips(rgb):
            # Not evidence either way (and never enrolled): the faces detector raises poor_image for it.
            self._count("poor_image")
            return [], "poor_image", None
        found = self.look(rgb)
        if found.face is None:
            self._count("no_face")
            return [], "no_face", found  # the faces detector reports that
        if not found.usable or not references:
            self._count("unembeddable")
            return [], "unembeddable", found  # not evidence either way: neither a mismatch nor a match
        embedding, mirrored = self._check_embedding(rgb, found, [r.embedding for r in references], media_time_s)
        with self._lock:
            self.passes["mirrored" if mirrored else "single"] += 1
        dist, index = best_distance([r.embedding for r in references], embedding, self.metric)
        mismatch = dist > self.threshold
        self._count("mismatched" if mismatch else "matched")
        photo_dist = dist if index == 0 else distance(references[0].embedding, embedding, self.metric)
        details: dict[str, Any] = {
            "distance": round(dist, 4),  # the best over the references
            "reference": references[index].label, "references": len(references),
            "photo_distance": round(photo_dist, 4),
            "threshold": self.threshold, "metric": self.metric, "model": self.model_name, "mirrored": mirrored}
        details["enrolled"] = mirrored and self.enrol_reason(found, photo_dist, media_time_s) is None and self._enrol(
            Reference(embedding, f"frame@{media_time_s:g}", media_time_s), generation)
        height, width = rgb.shape[:2]
        x1, y1, x2, y2 = found.face.box  # whole: it may reach outside the frame, the evidence box may not
        box = [round(max(0.0, x1), 1), round(max(0.0, y1), 1), round(min(x2, width), 1), round(min(y2, height), 1)]
        # 0.5 at the threshold, 1.0 at twice the threshold.
        signal = Signal("identity_mismatch", mismatch, clamp01(dist / (2 * self.threshold)), details, box=box)
        return [signal], "mismatched" if mismatch else "matched", found

    # --- enrolment ---------------------------------------------------------------------------------
    def enrol_reason(self, found: Look, photo_distance: float, media_time_s: float) -> str | None:
        """Why this checked frame is not enrolled as a further reference (None: it is)."""
        with self._lock:
            references, start = self._state.references, self._state.enrol_from
        frames = [r.media_time_s for r in references[1:] if r.media_time_s is not None]
        if not references or start is None or media_time_s - start > ENROL_WINDOW_S:
            return "outside the enrolment window"
        if len(frames) >= ENROL_MAX_FRAMES:
            return "enough frames enrolled"
        if frames and media_time_s - max(frames) < ENROL_SPACING_S:
            return "too soon after the last enrolled frame"
        if len(found.faces) != 1 or found.face is None:
            return "not exactly one face"
        if found.padded or found.cut or face_width(found.face) < MIN_FACE_PX:
            return "face cut by the frame's edge or too small"
        if not is_frontal(found.face):
            return "face not frontal"
        # The photo, not the best reference, gates enrolment: someone else sitting down from the start never
        # matches the photo, so is never enrolled, and enrolled frames cannot drift away from the photo.
        if photo_distance > self.threshold:
            return "does not match the reference photo"
        return None

    def _enrol(self, reference: Reference, generation: int) -> bool:
        with self._lock:
            state = self._state
            if state.generation != generation:
                return False  # a new reference photo came meanwhile: this frame was checked against the old one
            state.references = (*state.references, reference)
            return True
