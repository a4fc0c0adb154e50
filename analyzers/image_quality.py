"""Is the picture good enough to proctor? Too dark, washed out, blurred or covered, and what to tell the candidate.

Pure numpy/cv2 and cheap (0.4 ms on a 640x480 frame here): everything is measured on the frame shrunk to
`WORK_WIDTH` pixels wide, which also makes the numbers independent of the frame size and averages away sensor
noise and the blockiness of a VP8 or JPEG picture. The face detector runs it on every frame it analyses (the
`poor_image` signal), and the camera pre-check on the candidate's still, so both say the same thing.

Thresholds were measured on real photos that ship offline (scikit-image's astronaut, camera, coffee, chelsea,
rocket..., matplotlib's grace_hopper, portraits from dlib's and face_recognition's test images), scaled to a
640x480 webcam frame, and on degraded copies of them (JPEG quality 20, shrunk 2x or 3x and enlarged again, a
real libvpx VP8 round trip at 150-400 kbit/s, darkened with noise, over-exposed, Gaussian blur), then checked
against bench/quality's labelled set (228 photos, 43 labelled poor: 41 found; 1 false alarm, a 79x106 crop of a
dim photo; missed: two photos of text documents).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

# The width everything is measured at: a 640x480 frame shrinks 4x (area averaging), so the softness VP8 adds at
# 640x480 and the grain of a dim sensor do not count, while a really blurred picture still shows.
WORK_WIDTH = 160

# Dark: the mean luma is below DARK_MEAN *and* even the brightest 5 % of the picture stays below
# DARK_HIGHLIGHTS, i.e. nothing in view, the face included, is lit. A well-exposed webcam frame sits at 80-160;
# normal photos here at 57-163, but for a portrait on a black backdrop at 38 whose lit face puts its 95th
# percentile at 206 (the second condition keeps it out); a room darkened to 30 % of its light is at 31 (p95 62).
DARK_MEAN = 50.0
DARK_HIGHLIGHTS = 128.0
# Washed out (over-exposed, a window or lamp into the lens): mean luma above this. Face detection starts to
# fail here: 96 % of faces found at a mean of 185, 87 % at 196, 76 % at 207 (over-exposed copies of the photos).
BRIGHT_MEAN = 200.0
# Covered: a nearly uniform picture (luma std at WORK_WIDTH) that is not washed out: a lens cap, a finger, a
# sticker. The flattest real scene measured has 13.5 (a photo of the moon); hands over the lens 3-7 (bench/quality's
# covered_hand_*). A dark picture has little contrast whatever is in view (a low-contrast room at a quarter of its
# light: 7.5), so there only a flatter one is called covered, the rest dark: a black frame with a sensor's noise
# measures 0.6-4 (bench/quality's covered_dark_*: 1.6-4.7).
COVERED_CONTRAST = 8.0
COVERED_CONTRAST_DARK = 4.0
# Blurred: sharpness (std of the Laplacian per unit of luma std, at WORK_WIDTH) below this. Normal frames
# measured 0.25 at the least (people photos shrunk 3x and enlarged again), 0.31 after JPEG quality 20 of a 2x
# soft copy, 0.33 after a 150 kbit/s VP8 round trip; a Gaussian blur of sigma 6 (640x480) measured 0.18 at
# most (0.21 if then saved as JPEG quality 20, whose 8x8 blocks add edges of their own).
BLURRED_SHARPNESS = 0.22
# ... for a frame this wide. A narrower one is shrunk less to WORK_WIDTH (a 150 px face chip not at all), so its
# sharp edges stay wider there and read softer: the threshold falls in proportion to the width
# (`blurred_below`). bench/quality's 58 sharp 150 px face chips measure 0.079 at the least, 1.5x their threshold
# of 0.052; a blurred one 0.032 (0.6x). Labelled photos 320-640 px wide flag the same pictures as with 0.22.
BLUR_REFERENCE_WIDTH = 640

# In the order the candidate is told about them: a washed-out picture is flat too, but its cure is the light;
# a covered lens is dark too, but its cure is the cover.
MESSAGES = {
    "bright": "The picture is washed out: move away from a bright window or lamp behind you.",
    "covered": "Your camera seems covered: uncover it.",
    "dark": "More light, please: turn on a light in front of you.",
    "blurred": "The picture is blurred: clean the lens and hold still.",
}


@dataclass(frozen=True)
class ImageQuality:
    brightness: float  # mean luma, 0..255
    contrast: float  # luma standard deviation, 0..255
    sharpness: float  # Laplacian std / (luma std + 1), dimensionless
    dark: bool
    bright: bool
    blurred: bool
    covered: bool
    problem: str | None  # the one the candidate is told about: bright, covered, dark, blurred (that order)
    message: str  # what to tell the candidate ("" when the picture is fine)
    severity: float  # 0..1; 0.5 at the threshold of `problem`, below 0.5 when there is none

    @property
    def poor(self) -> bool:
        return self.problem is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """The frame's luma at WORK_WIDTH pixels wide, uint8 (grey first: shrinking one plane costs a third)."""
    height, width = rgb.shape[:2]
    size = (WORK_WIDTH, max(1, round(height * WORK_WIDTH / width)))
    return cv2.resize(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)


def _percentile(luma: np.ndarray, q: float) -> float:
    """The q-th percentile of a uint8 image, from its histogram (a tenth of np.percentile's cost)."""
    counts = np.cumsum(cv2.calcHist([luma], [0], None, [256], [0, 256]).ravel())
    return float(np.searchsorted(counts, q / 100 * counts[-1]))


def _below(value: float, threshold: float) -> float:
    """0.5 at the threshold, towards 1 as `value` falls to 0, towards 0 as it rises above."""
    return min(1.0, 0.5 * threshold / max(value, 1e-6))


def _flat_below(dark: bool) -> float:
    return COVERED_CONTRAST_DARK if dark else COVERED_CONTRAST


def blurred_below(width: int) -> float:
    """The sharpness under which a frame `width` pixels wide is blurred."""
    return BLURRED_SHARPNESS * min(1.0, width / BLUR_REFERENCE_WIDTH)


def _flags(width: int, brightness: float, contrast: float, highlights: float, sharpness: float) -> dict[str, bool]:
    bright = brightness > BRIGHT_MEAN
    dark = brightness < DARK_MEAN and highlights < DARK_HIGHLIGHTS
    covered = contrast < _flat_below(dark) and not bright
    return {
        "bright": bright,
        "covered": covered,
        "dark": dark,
        # A uniform picture has no edges to judge: it is covered, not blurred.
        "blurred": sharpness < blurred_below(width) and not covered,
    }


def assess(rgb: np.ndarray) -> ImageQuality:
    """How good one HxWx3 uint8 RGB frame is, and what to tell the candidate if it is not."""
    luma = _luma(rgb)
    brightness, contrast = (float(v[0][0]) for v in cv2.meanStdDev(luma))
    highlights = _percentile(luma, 95)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_32F, ksize=1))
    sharpness = float(lap_std[0][0]) / (contrast + 1.0)
    flags = _flags(rgb.shape[1], brightness, contrast, highlights, sharpness)
    severities = {
        "bright": _below(255.0 - brightness, 255.0 - BRIGHT_MEAN),
        "covered": _below(contrast, _flat_below(flags["dark"])),
        "dark": _below(brightness, DARK_MEAN),
        "blurred": _below(sharpness, blurred_below(rgb.shape[1])),
    }
    problem = next((name for name in MESSAGES if flags[name]), None)
    if problem is None:
        severity = min(0.49, max(severities.values()))
    else:
        severity = max(0.5, severities[problem])
    return ImageQuality(round(brightness, 1), round(contrast, 1), round(sharpness, 3), flags["dark"],
                        flags["bright"], flags["blurred"], flags["covered"], problem,
                        MESSAGES[problem] if problem else "", round(severity, 3))
