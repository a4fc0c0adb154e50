"""Admission by measured load: how many more streams this media node can take and still analyse every one.

A fixed count (MEDIA_NODE_CAPACITY) is wrong either way: the same code carries ~8 candidates on a 2-core AVX2 CPU
and ~20 where AVX-512 exists, and an exam with fewer detectors costs less per stream (issue 14). So each node
measures itself over a short window (ADMISSION_WINDOW_S) at every heartbeat:

- CPU: the node process and its children (the identity embedder process, any inference process it starts), in
  cores, against the CPUs the process may use: its CPU affinity, lowered by a cgroup v2 `cpu.max` quota when one is
  set on its cgroup or a parent (a container's CPU limit), or ADMISSION_CPUS when set (several nodes per machine);
- the event loop's wake-up lag p99 (media_server/node.py LoopLag): late wake-ups mean RTP is served late;
- the analysis rate achieved: frames the detectors analysed against those due (each detector's rate times the
  time its stream had media), from the counters analyzers/live.py keeps per detector slot.

From these, a marginal CPU cost per stream (CPU seconds above the idle baseline over stream-seconds, smoothed;
ADMISSION_STREAM_COST until the node has measured one) and a headroom in streams: how many more fit under
ADMISSION_CPU_TARGET of its CPUs, counting the streams not yet (fully) in the measurement at the estimated cost,
never above MEDIA_NODE_CAPACITY (a ceiling). A node whose loop lag or analysis rate is unhealthy has no headroom,
whatever its CPU says: at saturation the measured CPU per stream falls (frames are dropped, not analysed) and would
otherwise invite more streams.

The node reports the estimate in its heartbeat (proctor/store/nodes.py: the reservation script refuses beyond it,
so a burst of offers between two heartbeats cannot overfill it), refuses an offer itself when its latest estimate
says full, and serves the figures on /metrics. ADMISSION=count keeps the count-only behaviour (the estimate is
still made and shown). Pure maths and small readers here; the node does the sampling.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

LOAD, COUNT = "load", "count"
# A stream has media "now" when its last frame came at most this long ago.
FLOWING_S = 2.0
# Too little to judge a rate or a cost from: fewer frames due, or stream-seconds, than this in the window.
MIN_DUE_FRAMES = 20.0
MIN_STREAM_SECONDS = 3.0
# Smoothing of the per-stream cost and the idle baseline, per heartbeat (the windows overlap, so the effective
# memory is longer than 1/alpha beats).
COST_ALPHA = 0.2
IDLE_ALPHA = 0.1
# No stream is estimated cheaper than this (cores): a quiet window cannot make the headroom unbounded.
MIN_STREAM_COST = 0.01
CGROUP_ROOT = Path("/sys/fs/cgroup")


# --- the CPUs this process may use -------------------------------------------------------------------------------

def parse_cpu_max(text: str) -> float | None:
    """A cgroup v2 `cpu.max` ("QUOTA PERIOD", microseconds) as CPUs; None for "max" (no limit) or nonsense."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> float | None:
    """The tightest cgroup v2 CPU quota on this process's cgroup and its parents, in CPUs; None when there is none
    (or no cgroup v2: a v1 hierarchy has no "0::" line)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    limits = []
    here = root / path.strip().lstrip("/")
    while True:
        try:
            limit = parse_cpu_max((here / "cpu.max").read_text())
        except OSError:
            limit = None
        if limit is not None:
            limits.append(limit)
        if here == root or root not in here.parents:
            break
        here = here.parent
    return min(limits) if limits else None


def usable_cpus(override: float = 0.0) -> float:
    """CPUs the node may use: ADMISSION_CPUS when set (> 0), else its affinity lowered by a cgroup quota."""
    if override > 0:
        return override
    try:
        affinity = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        affinity = float(os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    return min(affinity, quota) if quota is not None else affinity


class TreeCpu:
    """Cumulative CPU seconds of a process and its descendants, each counted once. A child is found again at most
    every `rescan_s` (scanning /proc costs ~5 ms here); one that has exited keeps what it had counted."""

    def __init__(self, process: Any = None, rescan_s: float = 5.0) -> None:
        import psutil

        self._psutil = psutil
        self.process = process or psutil.Process()
        self.rescan_s = rescan_s
        self._children: list[Any] = []
        self._scanned_at = -math.inf
        self._gone_s = 0.0  # CPU of children that have exited since they were last read
        self._last: dict[tuple[int, float], float] = {}
        self._total = 0.0  # the largest total returned: CPU time never runs backwards

    def _times(self, proc: Any) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def seconds(self, now: float) -> float:
        if now - self._scanned_at >= self.rescan_s:
            try:
                self._children = self.process.children(recursive=True)
            except self._psutil.Error:
                self._children = []
            self._scanned_at = now
        seen: dict[tuple[int, float], float] = {}
        for proc in [self.process, *self._children]:
            try:
                key = (proc.pid, proc.create_time())
                seen[key] = self._times(proc)
            except self._psutil.Error:  # exited meanwhile: keep its last reading below
                continue
        for key, last in self._last.items():
            if key not in seen:
                self._gone_s += last
        self._last = seen
        # An exited child's seconds move from the sum into _gone_s: the same time summed in another order can come
        # out 1e-13 lower (seen: 594.1599999999999 after 594.16), which would read as negative CPU use.
        self._total = max(self._total, self._gone_s + sum(seen.values()))
        return self._total


# --- samples and the estimate ------------------------------------------------------------------------------------

class Counter(NamedTuple):
    """One detector of one stream, as analyzers/live.py counts it."""

    analysed: int  # frames analysed so far
    fps: float  # the rate frames are delivered to it
    # Frames it chose to analyse so far, for a detector with a cadence of its own (the phone's: a scan every few
    # seconds out of the frames delivered at `fps`): those, not fps x time, are due. None: every frame is due.
    scans: int | None = None


@dataclass(frozen=True)
class Sample:
    """One heartbeat's reading."""

    at: float  # monotonic seconds
    cpu_s: float  # cumulative CPU seconds of the node's process tree
    carried: frozenset[str]  # streams the node carries (admitted, with or without media)
    flowing: frozenset[str]  # the carried streams with media now
    # (session, detector) -> its counters, for flowing streams only
    analysed: Mapping[tuple[str, str], Counter] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    mode: str = LOAD
    capacity: int = 24
    cpu_target: float = 0.80
    max_lag_ms: float = 100.0
    min_analysis_rate: float = 0.90
    default_cost: float = 0.25  # cores per stream until measured
    window_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(mode=settings.admission, capacity=settings.media_node_capacity,
                   cpu_target=settings.admission_cpu_target, max_lag_ms=settings.admission_max_loop_lag_ms,
                   min_analysis_rate=settings.admission_min_analysis_rate,
                   default_cost=settings.admission_stream_cost, window_s=settings.admission_window_s)


@dataclass(frozen=True)
class Estimate:
    mode: str
    cpus: float  # CPUs the node may use
    cores: float  # cores its process tree used over the window
    stream_cost: float  # estimated cores per stream
    cost_measured: bool  # False while stream_cost is still the default
    lag_p99_ms: float
    analysis_rate: float | None  # analysed / due over the window; None: too little to judge
    streams: int  # carried now
    pending: int  # carried (or being admitted) but not in the whole window: counted at stream_cost
    headroom: int  # streams more it takes now
    reason: str  # why the headroom is 0 (empty when it is not)
    carried: frozenset[str] = frozenset()
    window_cost: float | None = None  # the last healthy window's own cost per stream, before smoothing

    @property
    def cpu_util(self) -> float:
        """Share of its CPUs the node used over the window (1.0 = all of them)."""
        return self.cores / self.cpus if self.cpus else 0.0

    def admits(self, now_carried: Collection[str]) -> tuple[bool, str]:
        """Whether a new stream may come in now: the headroom of this estimate less the streams admitted since."""
        new = sum(1 for s in now_carried if s not in self.carried)
        if self.headroom - new > 0:
            return True, ""
        return False, self.reason or f"its measured headroom ({self.headroom}) is taken"

    def public(self) -> dict[str, Any]:
        return {"mode": self.mode, "cpus": round(self.cpus, 2), "cpu_util": round(self.cpu_util, 3),
                "cores": round(self.cores, 3), "stream_cost": round(self.stream_cost, 4),
                "cost_measured": self.cost_measured,
                "window_cost": None if self.window_cost is None else round(self.window_cost, 4),
                "lag_p99_ms": self.lag_p99_ms,
                "analysis_rate": None if self.analysis_rate is None else round(self.analysis_rate, 3),
                "streams": self.streams, "pending": self.pending, "headroom": self.headroom, "reason": self.reason}


def window_cores(first: Sample, last: Sample) -> float:
    span = last.at - first.at
    return max(0.0, last.cpu_s - first.cpu_s) / span if span > 0 else 0.0


def stream_seconds(samples: list[Sample]) -> float:
    """Streams with media integrated over the samples' time (trapezoids): a stream there half the window counts
    half, so joins and leaves during the window need no special case."""
    pairs = zip(samples, samples[1:], strict=False)
    return sum((len(a.flowing) + len(b.flowing)) / 2 * (b.at - a.at) for a, b in pairs)


def analysis_counters(streams: Any, flowing: Collection[str]) -> dict[tuple[str, str], Counter]:
    """Frames analysed so far and the rate, per (session, detector) of the `flowing` streams, from the analysis
    plugin's stats (analyzers/live.py: {session: {detector: {"analysed", "fps", "cadence": {"scans"} for a
    detector that picks its own frames}}}); anything malformed is left out."""
    counters: dict[tuple[str, str], Counter] = {}
    if not isinstance(streams, dict):
        return counters
    for sid, detectors in streams.items():
        if sid not in flowing or not isinstance(detectors, dict):
            continue
        for name, figures in detectors.items():
            if isinstance(figures, dict) and isinstance(figures.get("analysed"), int) \
                    and isinstance(figures.get("fps"), (int, float)):
                cadence = figures.get("cadence")
                scans = cadence.get("scans") if isinstance(cadence, dict) else None
                counters[(sid, str(name))] = Counter(figures["analysed"], float(figures["fps"]),
                                                     scans if isinstance(scans, int) else None)
    return counters


def analysis_rate(first: Sample, last: Sample) -> float | None:
    """Frames analysed over frames due (rate x time, or the scans a detector with its own cadence chose) by the
    detectors of the streams that had media at both ends of the window; None when too few were due to judge (a
    quiet node, a stream just started). A stream replaced meanwhile (a reload: its counters start again) is left
    out."""
    span = last.at - first.at
    analysed = due = 0.0
    for key, now in last.analysed.items():
        before = first.analysed.get(key)
        if before is None or now.analysed < before.analysed or now.fps <= 0:
            continue
        if now.scans is not None and before.scans is not None:
            if now.scans < before.scans:
                continue
            due += now.scans - before.scans
        else:
            due += now.fps * span
        analysed += now.analysed - before.analysed
    if due < MIN_DUE_FRAMES:
        return None
    return min(1.0, analysed / due)


class Meter:
    """The samples of the last window and the smoothed per-stream cost; `estimate` after each `add`."""

    def __init__(self, limits: Limits, cpus: float) -> None:
        self.limits = limits
        self.cpus = cpus
        self.samples: deque[Sample] = deque()
        self.stream_cost = limits.default_cost
        self.cost_measured = False
        self.idle_cores = 0.0  # the node's own CPU with no stream (heartbeats, timers): 0 until measured
        self.window_cost: float | None = None
        self.last: Estimate | None = None

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        while len(self.samples) > 2 and sample.at - self.samples[1].at >= self.limits.window_s:
            self.samples.popleft()

    def _learn(self) -> None:
        """Update the idle baseline (a window with no stream at all) or the per-stream cost (enough stream-seconds).
        Only from healthy windows: at saturation frames go unanalysed and the CPU per stream reads low."""
        samples = list(self.samples)
        first, last = samples[0], samples[-1]
        span = last.at - first.at
        if span < self.limits.window_s / 2:
            return
        cores = window_cores(first, last)
        if not any(s.carried for s in samples):
            self.idle_cores += IDLE_ALPHA * (cores - self.idle_cores)
            return
        streamed = stream_seconds(samples)
        if streamed < MIN_STREAM_SECONDS:
            return
        measured = max(MIN_STREAM_COST, (cores - self.idle_cores) * span / streamed)
        self.window_cost = measured
        self.stream_cost += COST_ALPHA * (measured - self.stream_cost)
        self.cost_measured = True

    def estimate(self, lag_p99_ms: float, admitting: Collection[str] = ()) -> Estimate:
        """The headroom now, from the window's samples (at least one added); learns the cost from a healthy window."""
        limits = self.limits
        first, last = self.samples[0], self.samples[-1]
        carried = last.carried | frozenset(admitting)
        rate = analysis_rate(first, last) if last.at > first.at else None
        if lag_p99_ms <= limits.max_lag_ms and (rate is None or rate >= limits.min_analysis_rate):
            self._learn()
        cores = window_cores(first, last) if last.at > first.at else self.idle_cores
        # In the measurement: streams with media over the whole window. The others cost little yet (connecting,
        # just started) but will soon cost what the others do.
        measured = first.flowing & last.flowing
        pending = len(carried - measured)
        cost = max(MIN_STREAM_COST, self.stream_cost)
        ceiling = max(0, limits.capacity - len(carried))
        if limits.mode == COUNT:
            headroom = ceiling
            reason = "" if headroom else f"it carries MEDIA_NODE_CAPACITY ({limits.capacity}) streams"
        else:
            headroom, reason = self._load_headroom(cores, pending, cost, lag_p99_ms, rate, bool(carried))
            if headroom >= ceiling:
                headroom = ceiling
                reason = reason or ("" if ceiling else f"it carries MEDIA_NODE_CAPACITY ({limits.capacity}) streams")
        self.last = Estimate(limits.mode, self.cpus, cores, cost, self.cost_measured, lag_p99_ms, rate,
                             len(last.carried), pending, headroom, reason, carried, self.window_cost)
        return self.last

    def _load_headroom(self, cores: float, pending: int, cost: float, lag_p99_ms: float, rate: float | None,
                       busy: bool) -> tuple[int, str]:
        limits = self.limits
        # Lag and analysis rate only judge a node that carries streams: an idle node's lag is someone else's load
        # on the machine, which its CPU budget below already leaves room for or not.
        if busy and lag_p99_ms > limits.max_lag_ms:
            return 0, f"event-loop lag p99 {lag_p99_ms:.0f} ms is over {limits.max_lag_ms:.0f} ms"
        if busy and rate is not None and rate < limits.min_analysis_rate:
            return 0, (f"analysis keeps {100 * rate:.0f} % of its rate, under "
                       f"{100 * limits.min_analysis_rate:.0f} %")
        budget = limits.cpu_target * self.cpus
        free = budget - cores - pending * cost
        headroom = max(0, math.floor(free / cost + 1e-9))
        if headroom:
            return headroom, ""
        return 0, (f"CPU {100 * cores / self.cpus:.1f} % of {self.cpus:g} CPUs"
                   f"{f' with {pending} stream(s) starting' if pending else ''}, target "
                   f"{100 * limits.cpu_target:.3g} % (~{100 * cost:.0f} % of a core per stream)")


def lag_p99(samples_ms: Collection[float]) -> float:
    ordered = sorted(samples_ms)
    return round(ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else 0.0
