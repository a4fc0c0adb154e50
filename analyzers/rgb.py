"""A stream's decoded frames as RGB arrays for the detectors, converted once per frame with one swscale context.

``av.VideoFrame.to_ndarray(format="rgb24")`` builds a new swscale context for every frame it converts, and FFmpeg 8
gives each new context its own slice threads (``threads=0``: one per core). Every analysed frame so started and
joined two native threads and paid about twice the CPU of the conversion itself (0.6 against 0.3 ms a 640x480
frame here; bench/results/summary.md, 2026-12-03 night). One context per stream, single-threaded because the
conversion already runs in the analysis pool, keeps neither cost; swscale re-initialises it when the browser
changes the picture size mid-stream.
"""

from __future__ import annotations

import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter


class RgbConverter:
    """One stream's converter. Detectors in several threads may ask for the same frame: the first converts, the
    others get the same read-only array; a swscale context is not safe across threads, so calls are serialized."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reformatter = VideoReformatter()
        self._last: tuple[float, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame, media_time: float) -> np.ndarray:
        with self._lock:
            if self._last is not None and self._last[0] == media_time:
                return self._last[1]
            rgb = self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            rgb.flags.writeable = False
            self._last = (media_time, rgb)
            return rgb
