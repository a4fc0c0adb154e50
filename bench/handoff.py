"""The live path's per-frame cost beyond muxing and decoding: the archive thread, the VP8-decoding thread and the
event loop's hand-off to them, per stream-second, with the node's real classes (issue 14).

    .venv/bin/python -m bench.handoff [--streams 14] [--seconds 12] [--rounds 2]

N synthetic streams are fed in real time, the way the node's encoded tap feeds them: every video frame (30/s,
layered L1T3 like Chromium's, so 7.5/s are base layer) and every 20-ms Opus packet is its own event-loop
callback, the streams staggered. Each frame goes to archiver.segmenter's StreamRecorder (real Archive executor,
real spool and WebmWriter in a temp dir, 20-s segments; only the uploader is a stub: no database) and to
media_server.decode's FrameSampler (real DecodePool thread, two subscribers at 5 and 1 fps that only count).
CPU is each thread's own clock (pthread_getcpuclockid): the archive thread, the decoding thread, and the event
loop's time inside the sinks (on_frame + submit), so the load generator's own pacing is not counted.

Variants run interleaved (A B A B, `--rounds`) in one process: `before` hands every frame to the archive thread
on its own (ARCHIVE_BATCH_MS=0: one executor.submit per frame, ~80/s per stream); `after` is the node's default
(one hand-off per ARCHIVE_BATCH_MS window for all streams). The decoding path is the same in both; the decoding
thread's CPU is split into the time inside DecodePool._decode (packet, FFmpeg's vp8 decoder, the sampler's due
check) and the rest (queue, wake-ups, hand-over of the due frames to the loop).
Writes bench/results/handoff.md and handoff.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.ingest import RESULTS, cpu_model
from bench.synthetic import EncodedClip, encode_clip

FPS = 30
AUDIO_S = 0.02


def thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or thread.ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_clip(seconds: int = 4) -> EncodedClip:
    from bench.decode import clip_frames

    return encode_clip(clip_frames(seconds), fps=FPS, bitrate=1_000_000, gop=60, temporal_layers=True)


@dataclass
class _Clock:
    end_s: float = 0.0


@dataclass
class BenchStream:
    """What the recorder uses of a CandidateStream (media_server/outlets.Stream)."""

    session_id: str
    encoded_sinks: list[Any] = field(default_factory=list)
    close_hooks: list[Any] = field(default_factory=list)
    losses: int = 0
    clock: _Clock = field(default_factory=_Clock)

    async def request_keyframe(self) -> bool:
        return True


class _Count:
    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.frames = 0

    def on_frame(self, media_time_s: float, frame: Any) -> None:
        self.frames += 1


def _timed_pool() -> Any:
    from media_server.decode import DecodePool, StreamDecoder

    class TimedPool(DecodePool):
        """The node's pool, timing its per-frame work (thread CPU) apart from the hand-off around it."""

        inside_s = 0.0

        def _decode(self, decoder: StreamDecoder, data: bytes, timestamp: int) -> list[Any]:
            began = time.thread_time()
            try:
                return super()._decode(decoder, data, timestamp)
            finally:
                self.inside_s += time.thread_time() - began

    return TimedPool()


class _NoUpload:
    """The uploader without a database: segments stay in the spool (uploads are not the per-frame path)."""

    def __init__(self) -> None:
        self.segments: list[Any] = []

    def submit(self, segment: Any) -> None:
        self.segments.append(segment)

    async def allocate(self, segment: Any) -> int:
        return 0

    async def drain(self, within_s: float) -> bool:
        return True

    async def stop(self) -> None:
        return None


async def run_variant(clip: EncodedClip, streams: int, seconds: float, batch_ms: float, spool: Path,
                      decode: bool = True) -> dict[str, Any]:
    """Feed `streams` streams for `seconds` in real time; thread CPU per stream-second (ms). Without `decode` only
    the archive is attached (bench.archive)."""
    from archiver.segmenter import Archive
    from media_server.decode import FrameSampler
    from media_server.outlets import EncodedFrame
    from proctor.settings import Settings

    settings = replace(Settings.from_env({}, env_file=None), segment_seconds=20, data_dir=spool,
                       archive_batch_ms=int(batch_ms))
    archive = Archive(_Ctx(settings))  # type: ignore[arg-type]
    archive.uploader = _NoUpload()  # type: ignore[assignment]
    archive.spool.node_id = "bench"
    loop = asyncio.get_running_loop()
    pool = _timed_pool()
    pool.start(loop)
    layers = clip.layers or [0] * len(clip.video)
    feeds = []
    for n in range(streams):
        stream = BenchStream(f"s{n}")
        archive.attach(stream)  # type: ignore[arg-type]
        sampler = FrameSampler(lambda ts: ts / 90_000)
        subscribers = [_Count(5.0), _Count(1.0)] if decode else []
        for sub in subscribers:
            sampler.subscribe(sub)  # a sampler nobody subscribes to decodes nothing
        sampler.start(pool, stream.request_keyframe)
        feeds.append((stream, sampler, subscribers))
    archive.executor.submit(lambda: None).result()  # the archive thread exists from here on
    archive_thread = next(iter(archive.executor._threads))
    in_sinks = 0.0
    frames = 0

    def video(n: int, i: int) -> None:
        nonlocal in_sinks, frames
        stream, sampler, _ = feeds[n]
        data, _key = clip.video[i % len(clip.video)]
        t = i / FPS
        began = time.thread_time()
        frame = EncodedFrame("video", "VP8", data, i * 3000, 90_000, layers[i % len(layers)])
        stream.clock.end_s = t + 1 / FPS
        sampler.submit(frame.data, frame.timestamp, frame.temporal_layer)
        for sink in stream.encoded_sinks:
            sink(frame, t)
        in_sinks += time.thread_time() - began
        frames += 1

    def audio(n: int, i: int) -> None:
        nonlocal in_sinks
        stream = feeds[n][0]
        began = time.thread_time()
        frame = EncodedFrame("audio", "opus", clip.audio[i % len(clip.audio)], i * 960, 48_000)
        for sink in stream.encoded_sinks:
            sink(frame, i * AUDIO_S)
        in_sinks += time.thread_time() - began

    async def sender(n: int, start: float) -> None:
        vi = ai = 0
        end = seconds
        while True:
            tv, ta = vi / FPS, ai * AUDIO_S
            if min(tv, ta) >= end:
                return
            t = min(tv, ta)
            delay = start + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if tv <= ta:
                video(n, vi)
                vi += 1
            else:
                audio(n, ai)
                ai += 1

    cpu0 = (thread_cpu(archive_thread), thread_cpu(pool._thread), process_cpu())
    start = loop.time() + 0.05
    await asyncio.gather(*(sender(n, start + n * (1 / FPS) / streams) for n in range(streams)))
    for stream, sampler, _ in feeds:
        for hook in stream.close_hooks:
            await hook(stream)
        await sampler.stop()
    await asyncio.to_thread(lambda: time.sleep(0.2))  # the decoding thread's last batch
    cpu1 = (thread_cpu(archive_thread), thread_cpu(pool._thread), process_cpu())
    delivered = sum(sub.frames for _, _, subs in feeds for sub in subs)
    pool.stop()
    await archive.stop()
    stream_s = streams * seconds
    return {"batch_ms": batch_ms, "frames": frames, "delivered": delivered,
            "segments": len(archive.uploader.segments),  # type: ignore[attr-defined]
            "archive_ms_per_stream_s": 1000 * (cpu1[0] - cpu0[0]) / stream_s,
            "decode_ms_per_stream_s": 1000 * (cpu1[1] - cpu0[1]) / stream_s,
            "decode_inside_ms_per_stream_s": 1000 * pool.inside_s / stream_s,
            "loop_sinks_ms_per_stream_s": 1000 * in_sinks / stream_s,
            # Every thread, the load generator's pacing included (the same in every variant).
            "process_ms_per_stream_s": 1000 * (cpu1[2] - cpu0[2]) / stream_s}


@dataclass
class _Ctx:
    settings: Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=14)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-ms", type=float, default=None, help="the `after` window (default: the setting's)")
    args = parser.parse_args()
    from proctor.settings import Settings

    after_ms = args.batch_ms if args.batch_ms is not None else Settings.from_env({}, env_file=None).archive_batch_ms
    clip = make_clip()
    variants = {"before": 0.0, "after": after_ms}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp:
        for r in range(args.rounds):
            for name, batch_ms in variants.items():
                result = asyncio.run(run_variant(clip, args.streams, args.seconds, batch_ms, Path(tmp) / f"{name}{r}"))
                runs[name].append(result)
                print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
    keys = ("archive_ms_per_stream_s", "decode_ms_per_stream_s", "loop_sinks_ms_per_stream_s",
            "process_ms_per_stream_s", "decode_inside_ms_per_stream_s")
    mean = {name: {k: sum(r[k] for r in rs) / len(rs) for k in keys} for name, rs in runs.items()}
    decode_thread, inside = (sum(m[k] for m in mean.values()) / len(mean)
                             for k in ("decode_ms_per_stream_s", "decode_inside_ms_per_stream_s"))
    machine = cpu_model()
    result = {"streams": args.streams, "seconds": args.seconds, "rounds": args.rounds, "machine": machine,
              "batch_ms": after_ms, "runs": runs, "mean": mean}
    labels = {"archive_ms_per_stream_s": "archive thread", "decode_ms_per_stream_s": "vp8-decode thread",
              "loop_sinks_ms_per_stream_s": "event loop in the sinks (tap -> archive + sampler)",
              "process_ms_per_stream_s": "whole process (every thread, the load generator too)"}
    lines = ["# The live path's hand-off cost per stream", "",
             f"Command: `.venv/bin/python -m bench.handoff --streams {args.streams} --seconds {args.seconds:g} "
             f"--rounds {args.rounds}`. CPU: {machine['model']}, AVX-512: {'yes' if machine['avx512'] else 'no'}. "
             f"{args.streams} streams in real time (30 fps L1T3 VP8 640x480 at 1 Mbit/s + 20-ms Opus), the real "
             "segmenter, spool and WebmWriter, the real DecodePool and FrameSampler; thread CPU per stream-second, "
             f"mean of {args.rounds} interleaved rounds.", "",
             f"| thread | before (submit per frame): ms CPU / stream-s | after (batch {after_ms:g} ms) | % of a core "
             "per stream, before -> after | ratio |", "| --- | --- | --- | --- | --- |"]
    for k in keys[:4]:
        b, a = mean["before"][k], mean["after"][k]
        lines.append(f"| {labels[k]} | {b:.3f} | {a:.3f} | {b / 10:.3f} -> {a / 10:.3f} | "
                     f"{b / a if a else float('inf'):.2f}x |")
    lines += ["", f"The decoding thread, both variants: {decode_thread:.2f} ms per stream-second, of which "
              f"{inside:.2f} inside DecodePool._decode (packet, FFmpeg's vp8, the sampler's due check): the hand-off "
              f"around it (queue, wake-ups, deliveries to the loop) is {100 * (1 - inside / decode_thread):.0f} %."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "handoff.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "handoff.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
