"""Screen share cost per stream on a media node (issue 18): what the node does with the screen track's frames:
the encoded tap and the screen clock (media_server/screen.py), and copy-muxing into 20-s WebM segments
(archiver/webm.py, as archiver/segmenter.py does), on 60 s of a 1920x1080 "desktop" (text lines changing) at
2 fps encoded by libvpx (realtime, ~1 Mbit/s cap, a keyframe every 20 s as on a PLI at each cut).

    .venv/bin/python -m bench.screen

Thread CPU time (time.thread_time), so other work on a busy machine does not count. Not included: aiortc's RTP
receive path (SRTP decrypt, jitter buffer) for the screen's packets, which costs per packet like the webcam's;
the screen sends fewer (its bitrate is below the webcam's at 2 fps). Nothing decodes the screen.
"""

from __future__ import annotations

import fractions
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from archiver.webm import WebmWriter
from media_server.outlets import EncodedFrame
from media_server.screen import ScreenClock

FPS = 2
SECONDS = 60
SEGMENT_S = 20


def desktop_frames() -> list[tuple[bytes, bool]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 1920, 1080, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.bit_rate = 1_000_000
    codec.gop_size = SEGMENT_S * FPS
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(7)
    page = np.full((1080, 1920, 3), 240, np.uint8)
    out: list[tuple[bytes, bool]] = []
    for i in range(SECONDS * FPS):
        y = 40 + (i * 23) % 1000
        page[y:y + 14, 80:80 + int(rng.integers(400, 1700))] = rng.integers(0, 60)  # a new line of "text"
        frame = av.VideoFrame.from_ndarray(page, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    return out


def node_path(frames: list[tuple[bytes, bool]], out_dir: Path) -> float:
    """CPU seconds for the node's work on these frames (tap + clock + copy-mux into 20-s segments)."""
    now = [0.0]
    clock = ScreenClock(lambda: now[0])
    started = time.thread_time()
    writer: WebmWriter | None = None
    segment_start, index, pending = 0.0, 0, None
    for i, (data, keyframe) in enumerate(frames):
        now[0] = i / FPS
        encoded = EncodedFrame("video", "VP8", data, i * (90_000 // FPS), 90_000)
        t = clock.media_time(encoded.timestamp)
        assert t is not None
        if writer is None or (keyframe and t - segment_start >= SEGMENT_S - 0.01):
            if writer is not None and pending is not None:
                writer.write_video(pending[0], round((pending[1] - segment_start) * 1000),
                                   round((t - pending[1]) * 1000), pending[2])
                writer.close()
            writer = WebmWriter(out_dir / f"{index:03d}.webm", 1920, 1080, with_audio=False)
            segment_start, index, pending = t, index + 1, None
        if pending is not None:
            writer.write_video(pending[0], round((pending[1] - segment_start) * 1000),
                               round((t - pending[1]) * 1000), pending[2])
        pending = (encoded.data, t, keyframe)
    if writer is not None:
        if pending is not None:
            writer.write_video(pending[0], round((pending[1] - segment_start) * 1000), 500, pending[2])
        writer.close()
    return time.thread_time() - started


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    frames = desktop_frames()
    size = sum(len(d) for d, _ in frames)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            runs.append(node_path(frames, Path(tmp)))
    best = min(runs)
    result = {
        "cpu": cpu_model(), "avx512": "avx512f" in Path("/proc/cpuinfo").read_text(),
        "frames": len(frames), "seconds": SECONDS, "kbit_s": round(size * 8 / 1000 / SECONDS, 1),
        "cpu_ms_per_s": round(best * 1000 / SECONDS, 3),
        "pct_of_a_core": round(100 * best / SECONDS, 4),
        "cpu_ms_per_frame": round(best * 1000 / len(frames), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
