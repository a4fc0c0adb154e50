"""Every benchmark in one command, and one results table against the targets.

    .venv/bin/python -m bench.all [--quick] [--only archive,ingest,ingest2,latency,soak] [--summary-only]
    make bench

Runs each benchmark as its own process (each starts and stops the whole system on embedded defaults, on a
scratch data dir), in an order that keeps their loads apart, then reads their JSON results and writes
bench/results/summary.md and summary.json: each figure, its target, whether it is met, and the method.
`--quick` shortens the soak (2 min) and the load steps, for a smoke run; the committed results are a full run.
`--summary-only` rebuilds the table from the JSON files already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]


BENCHES = (
    Bench("archive", ("bench.archive",), ("bench.archive", "--seconds", "30")),
    Bench("ingest", ("bench.ingest", "--steps", "8,12,16,20,24,28", "--hold", "15", "--reloads", "10"),
          ("bench.ingest", "--steps", "8,16,24", "--hold", "8", "--reloads", "3")),
    Bench("ingest2", ("bench.ingest", "--nodes", "2", "--steps", "12,16,20,24,28,32,36", "--hold", "15",
                      "--reloads", "0"),
          ("bench.ingest", "--nodes", "2", "--steps", "16,24", "--hold", "8", "--reloads", "0")),
    Bench("latency", ("bench.latency", "--senders", "12"), ("bench.latency", "--senders", "6", "--cycles", "2")),
    Bench("soak", ("bench.soak", "--streams", "12", "--minutes", "10", "--every", "15"),
          ("bench.soak", "--streams", "8", "--minutes", "2")),
)


def run(bench: Bench, quick: bool) -> tuple[int, float]:
    args = bench.quick_args if quick else bench.args
    print(f"\n=== {bench.name}: python -m {' '.join(args)}", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", *args], cwd=ROOT)
    return code, time.monotonic() - started


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _best_step(ingest: dict[str, Any] | None) -> dict[str, Any] | None:
    ok = [s for s in (ingest or {}).get("steps", []) if s.get("ok")]
    return max(ok, key=lambda s: s["streams"]) if ok else None


def figures() -> list[dict[str, Any]]:
    """Each figure: what, measured, target, met (None: no target / not measured), method."""
    archive, one, two = _load("archive"), _load("ingest"), _load("ingest-2nodes")
    latency, soak = _load("latency"), _load("soak")
    rows: list[dict[str, Any]] = []

    best1, best2 = _best_step(one), _best_step(two)
    streams = max((s["streams"] for s in (best1, best2) if s), default=None)
    source, best = max(((data, s) for data, s in ((one, best1), (two, best2)) if s),
                       key=lambda pair: pair[1]["streams"], default=(None, None))
    measured = "not run"
    if best and source:
        first = source["steps"][0]
        # RSS per stream at the margin: what one more stream adds (the node's own ~300 MB of models aside).
        per_stream_mb = (best["node_rss_mb"] - first["node_rss_mb"]) / max(1, best["streams"] - first["streams"])
        one_node, two_nodes = (b["streams"] if b else 0 for b in (best1, best2))
        measured = (f"{streams} (1 node: {one_node}, 2 nodes: {two_nodes}); at {streams}: "
                    f"{best['cpu_pct_per_stream']} % of a core and {per_stream_mb:.1f} MB RSS per "
                    f"stream (marginal), alert publish p95 {best['alert_publish_p95_ms']} ms, loop lag p99 "
                    f"{best['loop_lag_p99_ms']} ms, senders {best['loader_cpu_pct']} % CPU")
    rows.append({
        "figure": "1. concurrent streams, all analyzers on, archive without a lost frame, alerts < 1 s",
        "measured": measured, "target": ">= 24", "met": (streams >= 24) if streams is not None else None,
        "method": "bench/results/ingest.md and ingest-2nodes.md: `python -m bench.ingest [--nodes 2]`"})
    if latency:
        ws = latency["all"]["ws_latency_ms"]
        rows.append({
            "figure": f"2. alert latency, confirming frame -> WebSocket client ({latency['senders']} streams)",
            "measured": f"p50 {ws['p50']} / p95 {ws['p95']} / p99 {ws['p99']} ms ({ws['n']} alerts)",
            "target": "p95 < 300 ms", "met": ws["p95"] < 300,
            "method": "bench/results/latency.md: `python -m bench.latency`, scripted face/no-face transitions"})
    if archive:
        share = 100 * archive["copy_mux_core_share"]
        rows.append({
            "figure": "3. archive CPU per stream: copy-mux vs aiortc MediaRecorder (re-encode), same run",
            "measured": (f"{share:.3f} % of a core vs {100 * archive['media_recorder_core_share']:.1f} % "
                         f"(x{archive['ratio']:.0f} less)"),
            "target": "<= 1.5 % of a core", "met": share <= 1.5,
            "method": "bench/results/archive.md: `python -m bench.archive`"})
        fin = archive["finalize"]
        rows.append({
            "figure": f"4. finalize a 2-hour session ({fin['segments']} segments, {fin['batches']} batches merged)",
            "measured": f"{fin['finalize_s']} s (merging the batches beforehand: {fin['merge_s']} s)",
            "target": "< 5 s", "met": fin["finalize_s"] < 5,
            "method": "bench/results/archive.md: `python -m bench.archive`"})
        rows.append({
            "figure": f"5. seek error over {fin['seek_samples']} random event times",
            "measured": f"max {fin['seek_error_frames_max']} frames, mean {fin['seek_error_frames_mean']}",
            "target": "<= 1 frame", "met": fin["seek_error_frames_max"] <= 1,
            "method": "bench/results/archive.md: decoded master frame vs expected media time"})
    if one:
        load = one["page_load_to_first_frame_s"]
        rows.append({
            "figure": "6. page load -> first frame at the server, real Chromium",
            "measured": (f"median {load['median']} s, p95 {load['p95']} s ({len(load['samples'])} reloads)"
                         if load["samples"] else "not run"),
            "target": "-", "met": None, "method": "bench/results/ingest.md: `python -m bench.ingest --reloads 10`"})
    if soak:
        slope, se = soak["rss_slope_mb_per_min"], soak["rss_slope_se"]
        rss = [s["rss_mb"] for s in soak["samples"]]
        after, before = soak["after"], soak["baseline"]
        rows.append({
            "figure": f"7. RSS over a {soak['minutes']:g}-minute soak at {soak['streams']} streams; leaks",
            "measured": (f"{rss[0]} -> {rss[-1]} MB (min {min(rss)}, max {max(rss)}); trend after "
                         f"{soak['trend_from_s']} s: {slope} +- {se} MB/min; after hanging up: {after['streams']} "
                         f"streams, tasks {before['tasks']} -> {after['tasks']}, fds {before['fds']} -> {after['fds']}"
                         + (f"; problems: {'; '.join(soak['problems'])}" if soak["problems"] else "")),
            "target": "flat (|trend| < 1 MB/min), nothing left after", "met": not soak["problems"],
            "method": "bench/results/soak.md: `python -m bench.soak`"})
    return rows


# Everything after this line in summary.md is written by hand (per-lever figures, per-stage costs, audio, screen)
# and kept when the table above it is rebuilt.
NOTES_MARK = "<!-- notes below: kept when bench.all rebuilds the table -->"


def _notes() -> str:
    path = RESULTS / "summary.md"
    text = path.read_text() if path.exists() else ""
    return text[text.index(NOTES_MARK):] if NOTES_MARK in text else NOTES_MARK + "\n"


def write_summary(durations: dict[str, float]) -> str:
    from bench.ingest import cpu_model

    rows = figures()
    cpus = os.cpu_count()
    machine = cpu_model()
    lines = ["# Benchmark summary", "",
             f"Command: `make bench` (`.venv/bin/python -m bench.all`). Machine: {cpus} CPUs ({machine['model']}, "
             f"AVX2: {'yes' if machine['avx2'] else 'no'}, AVX-512: {'yes' if machine['avx512'] else 'no'}), "
             "shared; the load generator runs on the same machine. Each row's file has the full table, method and "
             "the CPU it was measured on.", "",
             "| figure | measured | target | met | method |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {r['measured']} | {r['target']} | {met} | {r['method']} |")
    if durations:
        lines += ["", "Run time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in durations.items()) + "."]
    text = "\n".join(lines) + "\n\n" + _notes()
    (RESULTS / "summary.md").write_text(text)
    (RESULTS / "summary.json").write_text(json.dumps({"cpus": cpus, "figures": rows, "durations_s": durations},
                                                     indent=2))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run (not for the committed figures)")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(b.name for b in BENCHES))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    wanted = {n for n in args.only.split(",") if n} or {b.name for b in BENCHES}
    durations: dict[str, float] = {}
    failed = []
    if not args.summary_only:
        for bench in BENCHES:
            if bench.name in wanted:
                code, seconds = run(bench, args.quick)
                durations[bench.name] = round(seconds, 1)
                if code != 0:
                    failed.append(bench.name)
    print(write_summary(durations))
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
