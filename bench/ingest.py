"""Ingest benchmark: page load -> first frame with real Chromium, and how many streams one media node carries.

    .venv/bin/python -m bench.ingest [--steps 4,8,16,24,32] [--hold 15] [--reloads 10] [--nodes 1]

Starts `proctor up` on a scratch data dir, then
1. opens one candidate page in headless Chromium, connects, and reloads it `--reloads` times: the time from
   each reload to the first video frame at the server (the node's stats) gives the median and p95;
2. adds synthetic candidates (pre-encoded 640x480 VP8 + Opus, no encoding on the sender) step by step; at
   each step, after `--hold` seconds, reads every stream's fps and loss from the node, its event-loop lag and the
   node process's CPU. A step passes when every stream keeps >= 5/6 of its frame rate (25 of 30 fps) with < 1 %
   loss and the loop's p99 wake-up lag stays under 50 ms.

The senders send what a browser sends under the system's settings (`SenderProfile`): VIDEO_FPS frames a second,
VIDEO_SCALABILITY_MODE's temporal layers (libvpx's layer rate control with libwebrtc's shares), at 5/6 of
VIDEO_BITRATE_KBPS (666 kbit/s under the 800 cap; 1000 under the 1200 of the former defaults, what the senders
sent from the first run); `--set` changes them as it changes the page's, `--fps`, `--video-kbps` and `--layers`
override. Each step also reports where the node process's CPU went, per group of threads (`threads_pct`).
Writes bench/results/ingest.md and ingest.json.

With `--nodes 2` a second `proctor media` process (same Postgres, Redis and data dir) runs beside the one
`proctor up` starts; signaling spreads the streams (least loaded). Each step then reports the sum of both nodes'
CPU and each node's streams, fps, loss and loop lag; a step passes when every node meets the thresholds above.
Writes bench/results/ingest-2nodes.md and ingest-2nodes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from media_server.admission import Sample, analysis_counters, analysis_rate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLIP_FACE_S, CLIP_EMPTY_S = 12, 6


@dataclass(frozen=True)
class SenderProfile:
    """What each synthetic sender sends: the camera's frame rate, the encoder's bitrate and temporal layers."""
    fps: int
    kbps: int
    layers: str  # "L1T3", "L1T2" or "off"

    @classmethod
    def of(cls, settings: dict[str, str], fps: int = 0, kbps: int = 0, layers: str = "") -> SenderProfile:
        """A browser's under `settings` (the --set pairs over the defaults); non-zero arguments override."""
        from proctor.settings import Settings

        system = Settings.from_env(settings, env_file=None)
        mode = layers or system.video_scalability_mode
        return cls(fps or system.video_fps, kbps or system.video_bitrate_kbps * 5 // 6,
                   {"on": "L1T3", "L1T1": "off"}.get(mode, mode))

    def min_fps(self) -> float:
        return self.fps * 5 / 6

    def describe(self) -> str:
        layers = "no temporal layers" if self.layers == "off" else self.layers
        return f"640x480 at {self.fps} fps, {self.kbps} kbit/s, {layers}"


# The key that signs calls to the nodes of the system start_system started (their /stats needs a signature).
_NODE_KEY: dict[str, bytes] = {}


def _remember_node_key(env: dict[str, str]) -> None:
    from proctor.nodeauth import node_key
    from proctor.settings import Settings

    # As `proctor up` reads its settings (.env next to it; SECRET_KEY, or the one kept in the data dir).
    _NODE_KEY["key"] = node_key(Settings.from_env(env, env_file=ROOT / ".env"))


def start_system(data_dir: Path, port: int, settings: dict[str, str] | None = None,
                 ) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PROCTOR_DATA_DIR=str(data_dir), ICE_HOST_ADDRESSES="127.0.0.1", ICE_ALLOW_PRIVATE_CANDIDATES="true",
               MEDIA_NODE_PORT="0", MEDIA_NODE_CAPACITY="500", LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
               # The benchmark finds what a node carries: admission by load would refuse the streams past its
               # headroom (--set ADMISSION=load to see where it stops).
               ADMISSION="count")
    env.update(settings or {})  # --set: the levers a run turns on or off
    _remember_node_key(env)
    proc = subprocess.Popen([sys.executable, "-m", "proctor", "up", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"\s+(DATABASE_URL|REDIS_URL)=(\S+)", line)
        if match:
            urls[match.group(1)] = match.group(2)
        if "Press Ctrl-C" in line:
            break
    if proc.poll() is not None or len(urls) < 2:
        raise RuntimeError("proctor up did not start")
    # Keep reading its output (into the data dir's up.log): a full pipe would block every process of the system
    # at its next log line, and an overloaded node logs.
    threading.Thread(target=_drain_output, args=(proc.stdout, data_dir / "up.log"), daemon=True).start()
    return proc, urls


def _drain_output(stream: Any, path: Path) -> None:
    with path.open("a") as log:
        for line in stream:
            log.write(line)
            log.flush()


def admin_token(urls: dict[str, str]) -> str:
    env = dict(os.environ, **urls)
    out = subprocess.run([sys.executable, "-m", "proctor", "token", "create", "admin"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def start_media_node(data_dir: Path, urls: dict[str, str], settings: dict[str, str] | None = None,
                     ) -> subprocess.Popen[str]:
    """One more media node beside the one `proctor up` runs, on the same Postgres, Redis and data dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(urls, PROCTOR_DATA_DIR=str(data_dir), ICE_HOST_ADDRESSES="127.0.0.1",
               ICE_ALLOW_PRIVATE_CANDIDATES="true", MEDIA_NODE_PORT="0", MEDIA_NODE_CAPACITY="500", LOG_LEVEL="WARNING",
               ADMISSION="count")
    env.update(settings or {})  # the same --set as the first node
    return subprocess.Popen([sys.executable, "-m", "proctor", "media"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def nodes_info(http: aiohttp.ClientSession, base: str, token: str, count: int = 1) -> list[dict[str, Any]]:
    """The media nodes, once `count` of them have loaded their models and registered (/healthz shows them to
    staff only: the admin token)."""
    deadline = time.monotonic() + 120
    while True:
        async with http.get(f"{base}/healthz", headers={"Authorization": f"Bearer {token}"}) as response:
            nodes = (await response.json())["media_nodes"]
        if len(nodes) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} of {count} media nodes registered")
        await asyncio.sleep(0.5)
    return [{"url": node["url"], "pid": int(node["node_id"].rsplit("-", 2)[1])} for node in nodes]


async def node_info(http: aiohttp.ClientSession, base: str, token: str) -> dict[str, Any]:
    """The media node, once it has loaded its models and registered."""
    return (await nodes_info(http, base, token))[0]


async def stats(http: aiohttp.ClientSession, node_url: str) -> dict[str, Any]:
    """A node's /stats, signed with the key of the system start_system started."""
    from proctor.nodeauth import NodeClient

    return await NodeClient(_NODE_KEY["key"], http).stats(node_url)


async def new_session(http: aiohttp.ClientSession, base: str, token: str, name: str) -> tuple[str, str]:
    async with http.post(f"{base}/api/sessions", json={"candidate": name, "exam": "bench"},
                         headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
    return body["id"], body["join_url"]


async def upload_reference(http: aiohttp.ClientSession, base: str, sid: str, join_token: str,
                           face: np.ndarray) -> None:
    from PIL import Image

    photo = io.BytesIO()
    Image.fromarray(face).save(photo, format="JPEG")
    form = aiohttp.FormData()
    form.add_field("photo", photo.getvalue(), filename="ref.jpg", content_type="image/jpeg")
    async with http.post(f"{base}/api/sessions/{sid}/reference", data=form,
                         headers={"Authorization": f"Bearer {join_token}"}) as response:
        if response.status != 201:
            raise RuntimeError(f"reference photo refused: {response.status} {await response.text()}")


async def page_loads(base: str, token: str, node_urls: list[str], reloads: int) -> list[float]:
    from playwright.async_api import async_playwright

    from tests.support.browser import CHROMIUM, CONNECTED, chromium_args
    from tests.support.media import face_clip

    clip = face_clip(Path(tempfile.mkdtemp()) / "face.y4m")
    samples: list[float] = []
    async with aiohttp.ClientSession() as http, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(clip))
        session_id, join_url = await new_session(http, base, token, "page-load")
        page = await browser.new_page()
        await page.goto(join_url)
        await page.check("#consent-box")
        await page.click("#consent-btn")
        await page.wait_for_selector("#photo-btn:not([disabled])", timeout=30_000)
        await page.click("#photo-btn")
        await page.wait_for_selector("#step-exam:not([hidden])")
        await page.click("#start-btn")
        await page.wait_for_selector(CONNECTED, timeout=20_000)
        for _ in range(reloads):
            await asyncio.sleep(1.0)
            started = time.time()
            await page.reload()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                streams = {s["session_id"]: s for url in node_urls for s in (await stats(http, url))["streams"]}
                first = (streams.get(session_id) or {}).get("first_frame_at")
                if first and first > started:
                    samples.append(first - started)
                    break
                await asyncio.sleep(0.02)
        await browser.close()
    return samples


def moving_face(base: np.ndarray, count: int = 90) -> list[np.ndarray]:
    """The senders' face: `count` frames of `base` with grain and a slow side-to-side sway (seeded: every run,
    and bench.detectors / bench.decode, see the same pixels)."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        noisy = base.astype(np.int16) + rng.integers(-10, 11, base.shape, dtype=np.int16)
        frames.append(np.clip(np.roll(noisy, int(4 * np.sin(i / 14)), axis=1), 0, 255).astype(np.uint8))
    return frames


def swaying(moving: list[np.ndarray], seconds: int, fps: int) -> list[np.ndarray]:
    """`seconds` of moving_face's frames (made at 30 fps), looped, at `fps`: the face sways at the same speed
    whatever the frame rate."""
    return [moving[(i * 30 // fps) % len(moving)] for i in range(seconds * fps)]


async def load_steps(base: str, token: str, nodes: list[dict[str, Any]], steps: list[int], hold: float,
                     profile_s: float = 0.0, sender: SenderProfile | None = None, every_step: bool = False,
                     settle: float = 3.0) -> list[dict]:
    from bench.synthetic import connect_sender, encode_clip
    from media_server.ice import install_host_addresses
    from tests.support.media import empty_room, face_canvas

    install_host_addresses(("127.0.0.1",))
    base_frame = face_canvas()
    moving = moving_face(base_frame)
    # 12 s with a moving, noisy face, then 6 s with nobody: every stream raises and clears a no_face alert
    # each 18 s, so the alert figure is measured under the load, not at rest.
    empty = empty_room()
    # As a browser sends under the settings (layered as Chromium encodes VIDEO_SCALABILITY_MODE); the face
    # sways at the same speed whatever the frame rate.
    sender = sender or SenderProfile.of({})
    rate = sender.fps
    clip = encode_clip(swaying(moving, CLIP_FACE_S, rate) + [empty] * (CLIP_EMPTY_S * rate),
                       fps=rate, bitrate=sender.kbps * 1000, gop=2 * rate, temporal_layers=sender.layers)
    node_procs = [psutil.Process(node["pid"]) for node in nodes]
    loader = psutil.Process()
    results = []
    pcs = []
    ours: set[str] = set()
    async with aiohttp.ClientSession() as http:
        for target in steps:
            refused = ""
            while len(pcs) < target and not refused:
                session_id, join_url = await new_session(http, base, token, f"synthetic-{len(pcs)}")
                join_token = join_url.rsplit("/", 1)[1]
                # Enrolled, as every real candidate is: the identity detector compares each face with it.
                await upload_reference(http, base, session_id, join_token, base_frame)
                # Each sender starts at another keyframe: candidates do not all look away at the same instant.
                try:
                    pcs.append(await connect_sender(clip, f"{base}/api/sessions/{session_id}/offer", join_token,
                                                    http, start_keyframe=len(pcs)))
                except RuntimeError as exc:  # admission by load said no (503): the step measures what it took
                    if "offer refused: 503" not in str(exc):
                        raise
                    refused = str(exc)
                    print(f"step {target}: admission refused stream {len(pcs) + 1}: {refused}", flush=True)
                    break
                ours.add(session_id)
            if refused:
                target = len(pcs)
            await asyncio.sleep(settle)  # let every stream settle (--settle 65: past identity's enrolment minute)
            cpu_before = [tree_cpu_s(proc) for proc in node_procs]
            machine_before = psutil.cpu_times()
            wall_before = time.monotonic()
            loader.cpu_percent(None)
            rss_before = [tree_rss(proc) for proc in node_procs]
            before_stats = [await stats(http, node["url"]) for node in nodes]
            before = [plugin_counts(node_stats, ours) for node_stats in before_stats]
            await asyncio.sleep(hold)
            wall = time.monotonic() - wall_before
            cpus = [(tree_cpu_s(proc) - earlier) / wall * 100 for proc, earlier in zip(node_procs, cpu_before,
                                                                                          strict=True)]
            loader_cpu = loader.cpu_percent(None)
            steal = steal_pct(machine_before, psutil.cpu_times())
            per_node = []
            snap = []
            threads: dict[str, float] = {}
            for node, cpu, rss, earlier, earlier_stats in zip(nodes, cpus, rss_before, before, before_stats,
                                                              strict=True):
                node_stats = await stats(http, node["url"])
                for name, pct in thread_pcts(earlier_stats, node_stats, wall).items():
                    threads[name] = round(threads.get(name, 0.0) + pct, 1)
                mine = [s for s in node_stats["streams"] if s["session_id"] in ours]
                snap += mine
                now = plugin_counts(node_stats, ours)
                per_node.append({"pid": node["pid"], "streams": len(mine), "cpu_pct": round(cpu, 1),
                                 "min_fps": min((s["fps"] for s in mine), default=None),
                                 "max_loss_pct": max((s["loss_pct"] for s in mine), default=None),
                                 "loop_lag_p99_ms": node_stats["loop_lag_ms"]["p99"], "rss_mb": round(rss / 2**20),
                                 "archive_dropped": now["dropped"] - earlier["dropped"],
                                 "archive_write_errors": now["write_errors"],
                                 "analysed_pct": analysed_pct(earlier, now),
                                 "alert_p95_ms": now["alert_p95_ms"]})
            cpu = sum(cpus)
            fps = [s["fps"] for s in snap] or [0.0]
            loss = [s["loss_pct"] for s in snap] or [0.0]
            lag_p99 = max(n["loop_lag_p99_ms"] for n in per_node)
            dropped = sum(n["archive_dropped"] + n["archive_write_errors"] for n in per_node)
            analysed = min(n["analysed_pct"] for n in per_node if n["streams"]) if snap else 0.0
            alert_p95 = max((n["alert_p95_ms"] or 0.0) for n in per_node)
            # Every stream at full rate with no loss; the archive drops no frame; every analyzer keeps >= 90 %
            # of its default rate and alerts publish within a second (p95); the loop that carries RTP stays
            # responsive (p99 wake-up lag < 50 ms on every node).
            ok = (len(snap) == target and min(fps) >= sender.min_fps() and max(loss) < 1 and dropped == 0
                  and analysed >= 90 and alert_p95 < 1000 and lag_p99 < 50)
            row = {"streams": target, "refused": bool(refused), "carried": len(snap), "node_cpu_pct": round(cpu, 1),
                   "cpu_pct_per_stream": round(cpu / target, 2), "min_fps": min(fps),
                   "archive_dropped_frames": dropped, "analysed_pct_of_default_rate": analysed,
                   "alert_publish_p95_ms": alert_p95,
                   "median_fps": statistics.median(fps), "max_loss_pct": max(loss), "loop_lag_p99_ms": lag_p99,
                   "node_rss_mb": round(sum(rss_before) / 2**20), "loader_cpu_pct": round(loader_cpu, 1),
                   "steal_pct": steal, "threads_pct": threads, "ok": ok}
            if len(nodes) > 1:
                row["nodes"] = per_node
            print(json.dumps(row), flush=True)
            for s in snap:
                if s["fps"] < sender.min_fps():  # what a stalled stream looked like, for the record
                    print("slow stream:", json.dumps(s), flush=True)
            results.append(row)
            if refused or (not ok and not every_step):
                break
        if profile_s:  # at the last step's load: where the node's CPU goes
            await profile_node(nodes[0]["pid"], profile_s, len(pcs))
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
    return results


def sender_profile(args: argparse.Namespace) -> SenderProfile:
    return SenderProfile.of(_settings(args.set), args.fps, args.video_kbps, args.layers)


def write_results(loads: list[float], steps: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    sender = sender_profile(args)
    carried = max((s["streams"] for s in steps if s["ok"]), default=0)
    nodes = args.nodes
    suffix = f"-{args.out}" if args.out else ("" if nodes == 1 else f"-{nodes}nodes")
    summary = {
        "page_load_to_first_frame_s": {"median": round(statistics.median(loads), 3) if loads else None,
                                       "p95": round(sorted(loads)[int(0.95 * (len(loads) - 1))], 3) if loads else None,
                                       "samples": [round(x, 3) for x in loads]},
        ("streams_one_node_carried" if nodes == 1 else f"streams_{nodes}_nodes_carried"): carried,
        "nodes": nodes,
        "steps": steps,
        "machine": {"cpus": os.cpu_count(), "hold_s": args.hold, "settle_s": args.settle, **cpu_model()},
        "layers": sender.layers, "sender": {"fps": sender.fps, "kbps": sender.kbps, "layers": sender.layers},
        "settings": _settings(args.set),
    }
    (RESULTS / f"ingest{suffix}.json").write_text(json.dumps(summary, indent=2))
    extra = "".join(f" --set {pair}" for pair in args.set) + (f" --out {args.out}" if args.out else "")
    extra += f" --fps {args.fps}" if args.fps else ""
    extra += f" --video-kbps {args.video_kbps}" if args.video_kbps else ""
    extra += f" --layers {args.layers}" if args.layers else ""
    settle = f" --settle {args.settle:g}" if args.settle != 3.0 else ""
    command = (f"`.venv/bin/python -m bench.ingest --nodes {nodes} --steps {args.steps} --hold {args.hold:g}{settle} "
               f"--reloads {args.reloads}{extra}`")
    machine = cpu_model()
    loads_s = summary["page_load_to_first_frame_s"]
    lines = [
        f"# Ingest benchmark, {nodes} media node{'s' if nodes > 1 else ''}", "",
        f"Command: {command}. {nodes} media node process{'es' if nodes > 1 else ''} on this machine "
        f"({os.cpu_count()} CPUs, {machine['model']}, AVX-512: {'yes' if machine['avx512'] else 'no'}; the "
        "synthetic senders run on it too), each with the archiver and every available analyzer "
        "on every stream at its default rate; signaling places each stream on the least loaded node. Each step "
        f"adds senders (pre-encoded VP8, {sender.describe()}, + Opus: {CLIP_FACE_S} s of a moving face, then "
        f"{CLIP_EMPTY_S} s "
        f"with nobody, looped, so no_face alerts come and go), waits {args.settle:g} s, then measures over "
        f"{args.hold:g} s. "
        "Node CPU and RSS include the node's child process (the identity embedder's worker).", "",
        f"Page reload -> first frame at the server (real Chromium, {len(loads)} reloads): median "
        f"{loads_s['median']} s, p95 {loads_s['p95']} s.", "",
        f"Streams carried: **{carried}**. A step passes when every stream keeps >= {sender.min_fps():g} fps (5/6 of "
        f"its {sender.fps}) with < 1 % RTP loss, the "
        "archive drops no frame, every analyzer keeps >= 90 % of its default rate, alerts publish within 1 s (p95, "
        "confirming frame arrival -> Redis) and every node's event-loop wake-up lag stays < 50 ms (p99). Steal: "
        "the machine's CPU time the hypervisor gave to others over the step (a VM; compare steps read near 0).", "",
        "| streams | carried | node CPU % | CPU % / stream | node RSS MB | min fps | max loss % | archive dropped "
        "| analysed % of rate | alert p95 ms | loop lag p99 ms | loader CPU % | steal % | ok |",
        "| " + "--- | " * 14,
    ]
    for s in steps:
        lines.append(f"| {s['streams']} | {s['carried']} | {s['node_cpu_pct']} | {s['cpu_pct_per_stream']} | "
                     f"{s['node_rss_mb']} | {s['min_fps']} | {s['max_loss_pct']} | {s['archive_dropped_frames']} | "
                     f"{s['analysed_pct_of_default_rate']} | {s['alert_publish_p95_ms']} | {s['loop_lag_p99_ms']} | "
                     f"{s['loader_cpu_pct']} | {s.get('steal_pct')} | {s['ok']} |")
    if nodes > 1:
        lines += ["", "Per node (streams / CPU % / min fps / loop lag p99 ms):", "",
                  "| streams | " + " | ".join(f"node {i + 1}" for i in range(nodes)) + " |",
                  "| --- | " + "--- | " * nodes]
        for s in steps:
            per = " | ".join(f"{n['streams']} / {n['cpu_pct']} / {n['min_fps']} / {n['loop_lag_p99_ms']}"
                             for n in s["nodes"])
            lines.append(f"| {s['streams']} | {per} |")
    if any(s.get("threads_pct") for s in steps):
        lines += ["", "Where the node processes' CPU went, % of a core per group of threads (proctor/threadcpu.py; "
                  "the rest of the node CPU above is its child process, the identity embedder):", ""]
        lines += [f"- {s['streams']} streams: " + ", ".join(f"{name} {pct}" for name, pct in s["threads_pct"].items())
                  for s in steps if s.get("threads_pct")]
    (RESULTS / f"ingest{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def thread_pcts(before: dict[str, Any], after: dict[str, Any], wall_s: float) -> dict[str, float]:
    """% of a core each group of the node process's threads used between two /stats readings (proctor/threadcpu.py),
    largest first; groups under 0.5 % together as "other"."""
    start, end = before.get("thread_cpu_s") or {}, after.get("thread_cpu_s") or {}
    pcts = {name: 100 * (seconds - start.get(name, 0.0)) / wall_s for name, seconds in end.items()}
    out = {name: round(pct, 1) for name, pct in sorted(pcts.items(), key=lambda kv: -kv[1]) if pct >= 0.5}
    other = sum(pct for name, pct in pcts.items() if name not in out)
    if other > 0:
        out["other"] = round(other, 1)
    return out


def plugin_counts(node_stats: dict[str, Any], ours: set[str]) -> dict[str, Any]:
    """Archive drops and analysis throughput of our streams on one node (cumulative counters)."""
    plugins = node_stats.get("plugins", {})
    recorders = plugins.get("Archive", {}).get("recorders", {})
    analysis = plugins.get("Analysis", {})
    dropped = sum(r.get("dropped_frames", 0) for sid, r in recorders.items() if sid in ours)
    errors = sum(r.get("write_errors", 0) for sid, r in recorders.items() if sid in ours)
    # Read as the node's admission reads them, so "analysed % of rate" is its analysis_rate, not a second rule.
    return {"dropped": dropped, "write_errors": errors, "at": time.monotonic(),
            "counters": analysis_counters(analysis.get("streams"), ours),
            "alert_p95_ms": (analysis.get("latency_ms") or {}).get("p95")}


def analysed_pct(earlier: dict[str, Any], now: dict[str, Any]) -> float:
    """Frames analysed over frames due between two plugin_counts, in % (media_server/admission.py analysis_rate:
    a detector with a cadence of its own is due the frames it picked); 0 when too few were due to judge."""
    rate = analysis_rate(Sample(earlier["at"], 0.0, frozenset(), frozenset(), earlier["counters"]),
                         Sample(now["at"], 0.0, frozenset(), frozenset(), now["counters"]))
    return round(100 * rate, 1) if rate is not None else 0.0


async def profile_node(pid: int, seconds: float, streams: int) -> None:
    from bench.profile import record, summarise

    raw = await asyncio.to_thread(record, pid, seconds, RESULTS / "profile-ingest.raw")
    text = (f"# Media node profile\n\nCommand: `.venv/bin/python -m bench.ingest --profile {seconds:g}` "
            f"(perf, on-CPU samples, {seconds:g} s at {streams} streams, every analyzer on).\n\n{summarise(raw)}\n")
    (RESULTS / "profile-ingest.md").write_text(text)
    raw.unlink()
    print(text, flush=True)


@dataclass
class System:
    base: str
    data_dir: Path
    urls: dict[str, str]
    token: str


@contextlib.contextmanager
def running_system(prefix: str = "bench-", settings: dict[str, str] | None = None) -> Iterator[System]:
    """`proctor up` on a scratch data dir with an admin API token; stopped (SIGINT) on exit."""
    from tests.support.net import free_port

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    proc, urls = start_system(data_dir, port, settings)
    try:
        yield System(f"http://127.0.0.1:{port}", data_dir, urls, admin_token(urls))
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)


async def main_async(args: argparse.Namespace) -> None:
    with running_system(settings=_settings(args.set)) as system:
        await _run(args, system.base, system.data_dir, system.urls, system.token)


def cpu_model() -> dict[str, Any]:
    """The CPU the figures were measured on: model name and whether it has AVX-512 (XNNPACK and libvpx run
    about twice as fast with it)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"model": model, "avx512": any(f.startswith("avx512") for f in flags), "avx2": "avx2" in flags}


def simd_words(machine: dict[str, Any]) -> str:
    """`cpu_model`'s vector extensions in the words the benchmarks' reports use."""
    return "AVX-512" if machine["avx512"] else ("AVX2, no AVX-512" if machine["avx2"] else "no AVX2")


def _settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isupper():
            raise SystemExit(f"--set wants SETTING=value, got {pair!r}")
        out[key] = value
    return out


async def _run(args: argparse.Namespace, base: str, data_dir: Path, urls: dict[str, str], token: str) -> None:
    extra: list[subprocess.Popen[str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            await nodes_info(http, base, token)  # the first node is up: the schema and storage exist
            extra = [start_media_node(data_dir, urls, _settings(args.set)) for _ in range(args.nodes - 1)]
            nodes = await nodes_info(http, base, token, args.nodes)
        urls_ = [node["url"] for node in nodes]
        loads = await page_loads(base, token, urls_, args.reloads) if args.reloads else []
        steps = await load_steps(base, token, nodes, [int(s) for s in args.steps.split(",")], args.hold,
                                 args.profile, sender_profile(args), args.every_step, args.settle)
        write_results(loads, steps, args)
    finally:
        for media in extra:
            os.killpg(media.pid, signal.SIGINT)
        for media in extra:
            media.wait(60)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    """A media node with its child processes (the identity embedder's worker): their cost is the node's."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [proc]


def steal_pct(before: Any, after: Any) -> float | None:
    """The share of the machine's CPU time the hypervisor gave to others between two `psutil.cpu_times()` (the
    `steal` column of /proc/stat), in %; None where the platform does not report it. These machines are VMs: under
    minutes of full load steal rose to 10-30 % on one, and a capacity step read then is not comparable with one
    read without it."""
    if not hasattr(before, "steal"):
        return None
    # guest time is counted in user time already
    fields = [name for name in before._fields if not name.startswith("guest")]
    total = sum(getattr(after, name) - getattr(before, name) for name in fields)
    return round(100 * (after.steal - before.steal) / total, 1) if total > 0 else 0.0


def tree_cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for member in _tree(proc):
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass  # exited between the listing and the read
    return total


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for member in _tree(proc):
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="4,8,16,24,32")
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between adding a step's senders and measuring; the first 60 s of a stream are "
                             "identity's enrolment window (a check every 5 s): 65 measures streams past it")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=1, help="media node processes (2: ingest-2nodes.md/json)")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="a setting for the system under test (repeatable), e.g. PHONE_ADAPTIVE=false")
    parser.add_argument("--out", default="", help="results go to bench/results/ingest-OUT.md/json")
    parser.add_argument("--every-step", action="store_true", help="go on past a step that fails")
    parser.add_argument("--layers", choices=("on", "off", "L1T3", "L1T2", "L1T1"), default="",
                        help="senders' VP8 temporal layers (default: VIDEO_SCALABILITY_MODE's, as Chromium encodes "
                             "them; on = L1T3)")
    parser.add_argument("--fps", type=int, default=0, help="senders' frame rate (default: VIDEO_FPS)")
    parser.add_argument("--video-kbps", type=int, default=0,
                        help="senders' video bitrate (default: 5/6 of VIDEO_BITRATE_KBPS, 1000 under the 1200 cap)")
    parser.add_argument("--profile", type=float, default=0.0,
                        help="seconds of py-spy sampling at the last step (bench/results/profile-ingest.md)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
