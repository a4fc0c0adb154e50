"""VP8 decoding cost per stream on a media node: every frame vs the base temporal layer only (issue 14).

    .venv/bin/python -m bench.decode [--seconds 20]

Encodes the ingest benchmark's clip (640x480, a moving noisy face; bench/ingest.py) with temporal layers as
Chromium sends them, once as the page asks by default (15 fps in L1T2 at 5/6 of the 800 kbit/s cap, as
bench.ingest's senders) and once as it asked before (30 fps in L1T3, 1000 kbit/s), and decodes each with the
decoder the node's decoding thread uses (media_server/decode.py: FFmpeg's own vp8 decoder, one thread per context;
until issue 14 this benchmark timed libvpx, which the node does not use: within a few % of it here): (a) every
frame, as a node must for a browser that sends no layers, and (b) only the base-layer frames (half with L1T2, a
quarter with L1T3), as the node does with layers. The decoding thread's cost beyond the codec (hand-off, sampler)
is measured by bench/handoff.py. CPU is the decoding thread's own CPU time (time.thread_time), so other load on
the machine changes it little. Prints a markdown table and writes bench/results/decode.md and decode.json.
"""

from __future__ import annotations

import argparse
import json
import time

import av
import numpy as np

from bench.ingest import RESULTS, SenderProfile, cpu_model, moving_face, swaying
from bench.synthetic import encode_clip
from tests.support.media import face_canvas


def clip_frames(seconds: int, fps: int = 30) -> list[np.ndarray]:
    """The ingest benchmark's moving face (bench.ingest.moving_face), looped for `seconds`, swaying at the same
    speed whatever the frame rate."""
    return swaying(moving_face(face_canvas()), seconds, fps)


def layered_clip(seconds: int, sender: SenderProfile) -> tuple[list[bytes], list[bytes]]:
    """(every frame, the base layer's frames) of the clip as `sender` sends it."""
    clip = encode_clip(clip_frames(seconds, sender.fps), fps=sender.fps, bitrate=sender.kbps * 1000,
                       gop=2 * sender.fps, temporal_layers=sender.layers)
    assert clip.layers is not None
    every = [data for data, _ in clip.video]
    return every, [data for (data, _), layer in zip(clip.video, clip.layers, strict=True) if layer == 0]


def decode_cpu_s(packets: list[bytes], repeat: int, decoder: str = "vp8") -> tuple[float, int]:
    """Thread CPU seconds to decode `packets` `repeat` times (a new decoder each time, as a new stream), and how
    many pictures came out. `vp8` is what media_server/decode.py uses."""
    pictures = 0
    start = time.thread_time()
    for _ in range(repeat):
        codec = av.CodecContext.create(decoder, "r")
        codec.thread_count = 1
        for data in packets:
            pictures += len(codec.decode(av.Packet(data)))
    return time.thread_time() - start, pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="clip length (decoded 3 times)")
    args = parser.parse_args()
    before = SenderProfile(30, 1000, "L1T3")
    now = SenderProfile.of({})
    every, base = layered_clip(args.seconds, before)
    every_now, base_now = layered_clip(args.seconds, now)
    repeat = 3
    media_s = args.seconds * repeat
    rows = []
    cases = [("every frame (no layers), 30 fps", every, "vp8"), ("base layer only (L1T3 at 30 fps)", base, "vp8"),
             ("base layer only, libvpx (reference: the node does not use it)", base, "libvpx"),
             (f"every frame (no layers), {now.fps} fps", every_now, "vp8"),
             (f"base layer only ({now.layers} at {now.fps} fps, {now.kbps} kbit/s: the default)", base_now, "vp8")]
    for name, packets, decoder in cases:
        cpu_s, pictures = decode_cpu_s(packets, repeat, decoder)
        rows.append({"decoded": name, "frames_per_s": round(pictures / media_s, 2),
                     "ms_cpu_per_stream_s": round(1000 * cpu_s / media_s, 2),
                     "pct_of_a_core": round(100 * cpu_s / media_s, 2),
                     "ms_per_frame": round(1000 * cpu_s / max(pictures, 1), 3)})
    machine = cpu_model()
    ratio = rows[0]["ms_cpu_per_stream_s"] / max(rows[1]["ms_cpu_per_stream_s"], 1e-9)
    default_ratio = rows[4]["ms_cpu_per_stream_s"] / max(rows[1]["ms_cpu_per_stream_s"], 1e-9)
    result = {"rows": rows, "ratio": round(ratio, 2), "default_vs_l1t3": round(default_ratio, 2),
              "machine": machine, "seconds": media_s}
    lines = ["# VP8 decoding cost per stream", "",
             f"Command: `.venv/bin/python -m bench.decode --seconds {args.seconds}` ({media_s} s of 640x480 VP8, "
             f"30 fps at 1 Mbit/s and {now.fps} fps at {now.kbps} kbit/s, decoded by FFmpeg's vp8 decoder on one "
             f"thread as the node does; thread CPU time). CPU: {machine['model']}, "
             f"AVX-512: {'yes' if machine['avx512'] else 'no'}.", "",
             "| decoded | frames/s | ms CPU per stream-second | % of a core | ms per frame |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['decoded']} | {r['frames_per_s']} | {r['ms_cpu_per_stream_s']} | {r['pct_of_a_core']} | "
              f"{r['ms_per_frame']} |" for r in rows]
    lines += ["", f"Decoding the base layer only costs {ratio:.1f}x less per stream than every frame at 30 fps; the "
              f"default's base layer ({now.layers} at {now.fps} fps) costs {default_ratio:.2f}x the L1T3 one "
              "(the same 7.5 frames a second)."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
