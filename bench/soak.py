"""Soak: many synthetic candidates for a while at load; is the media node's memory flat, do queues stay bounded?

    .venv/bin/python -m bench.soak [--streams 8] [--minutes 10] [--every 30]

Starts `proctor up` (one media node with the archiver and all analyzers), connects `--streams` synthetic
candidates (pre-encoded 640x480@30 VP8 + Opus), samples the node's RSS, stream count, fps and event-loop lag
every `--every` seconds, and reports the RSS trend over the second half (after warm-up) as MB per minute.
Writes bench/results/soak.md and soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import numpy as np
import psutil

from bench.ingest import RESULTS, new_session, node_info, running_system, stats


async def soak(args: argparse.Namespace) -> dict:
    from bench.synthetic import connect_sender, encode_clip
    from media_server.ice import install_host_addresses
    from tests.media import face_canvas

    install_host_addresses(("127.0.0.1",))
    samples = []
    with running_system("soak-") as system:
        base, token = system.base, system.token
        face = face_canvas()
        none = np.full_like(face, 90)
        # Scenes change every 10 s so events start and end all along (exercising the event path too).
        frames = [face] * 300 + [none] * 300
        clip = await asyncio.to_thread(encode_clip, frames, 30, 800_000, 60)
        async with aiohttp.ClientSession() as http:
            node = await node_info(http, base)
            node_proc = psutil.Process(node["pid"])
            pcs = []
            for i in range(args.streams):
                session_id, join_url = await new_session(http, base, token, f"soak-{i}")
                pcs.append(await connect_sender(clip, f"{base}/api/sessions/{session_id}/offer",
                                                join_url.rsplit("/", 1)[1], http))
            started = time.monotonic()
            while time.monotonic() - started < args.minutes * 60:
                await asyncio.sleep(args.every)
                snap = await stats(http, node["url"])
                fps = [s["fps"] for s in snap["streams"]]
                samples.append({"t_s": round(time.monotonic() - started), "rss_mb": round(
                    node_proc.memory_info().rss / 2**20, 1), "streams": len(snap["streams"]),
                    "min_fps": min(fps) if fps else 0, "loop_lag_p99_ms": snap["loop_lag_ms"]["p99"],
                    "threads": node_proc.num_threads(), "fds": node_proc.num_fds()})
                print(json.dumps(samples[-1]), flush=True)
            await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
    half = samples[len(samples) // 2:]
    slope = 0.0
    if len(half) >= 2:
        xs = [s["t_s"] / 60 for s in half]
        ys = [s["rss_mb"] for s in half]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(
            1e-9, sum((x - mx) ** 2 for x in xs))
    return {"streams": args.streams, "minutes": args.minutes, "samples": samples,
            "rss_slope_mb_per_min_second_half": round(slope, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=30)
    result = asyncio.run(soak(parser.parse_args()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2))
    lines = ["# Soak", "", f"Command: `.venv/bin/python -m bench.soak --streams {result['streams']} --minutes "
             f"{result['minutes']}` (one media node, archiver and all analyzers on).", "",
             f"RSS trend over the second half: **{result['rss_slope_mb_per_min_second_half']} MB/min**", "",
             "| t (s) | node RSS MB | streams | min fps | loop lag p99 ms | threads | fds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in result["samples"]:
        lines.append(f"| {s['t_s']} | {s['rss_mb']} | {s['streams']} | {s['min_fps']} | {s['loop_lag_p99_ms']} | "
                     f"{s['threads']} | {s['fds']} |")
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
