"""analyzers/rgb.py: the detectors' RGB arrays, one swscale context per stream and no native threads per frame."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np

from analyzers.rgb import RgbConverter


def _frames(width: int, height: int, count: int, seed: int = 0) -> list[av.VideoFrame]:
    """Decoder-like frames: yuv420p, each a fresh object (so PyAV's per-frame converter would be a new one)."""
    rng = np.random.default_rng(seed)
    return [av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
            .reformat(format="yuv420p", threads=1) for _ in range(count)]


def _native_threads() -> set[int]:
    """The process's threads as the kernel lists them (Python's and native ones alike)."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def test_same_pixels_as_pyav_per_frame_conversion() -> None:
    convert = RgbConverter()
    for i, frame in enumerate(_frames(640, 480, 3) + _frames(320, 240, 2, seed=1) + _frames(640, 480, 2, seed=2)):
        rgb = convert(frame, float(i))
        assert rgb.shape == (frame.height, frame.width, 3)
        assert np.array_equal(rgb, frame.to_ndarray(format="rgb24")), f"frame {i} ({frame.width}x{frame.height})"
        assert not rgb.flags.writeable


def test_one_conversion_per_frame_whoever_asks() -> None:
    convert = RgbConverter()
    frame, other = _frames(64, 48, 2)
    first = convert(frame, 1.0)
    assert convert(frame, 1.0) is first
    assert convert(other, 2.0) is not first


def test_no_native_thread_starts_per_frame() -> None:
    """The cost this module exists for: PyAV's own to_ndarray starts and joins swscale slice threads for every
    frame (FFmpeg 8, threads=0), ours none. Counted from the kernel's task list while converting, not timed."""
    frames = _frames(640, 480, 40)
    convert = RgbConverter()
    convert(frames[0], 0.0)
    baseline = len(_native_threads())
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:  # threads that live only during a conversion are caught by their ids
        while not stop.is_set():
            seen.update(_native_threads())

    watcher = threading.Thread(target=watch)
    before = _native_threads()
    watcher.start()
    try:
        for i, frame in enumerate(frames[1:], start=1):
            convert(frame, float(i))
    finally:
        stop.set()
        watcher.join()
    assert seen - before - {watcher.native_id} == set()
    assert len(_native_threads()) == baseline


def test_detectors_in_several_threads_share_one_stream_converter() -> None:
    """Detector threads convert the same frames at once (swscale is not thread-safe; serialized per stream)."""
    frames = _frames(320, 240, 12)
    expected = [f.to_ndarray(format="rgb24") for f in frames]
    convert = RgbConverter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: (i, convert(frames[i % 12], float(i % 12))), range(96)))
    for i, rgb in results:
        assert np.array_equal(rgb, expected[i % 12])
