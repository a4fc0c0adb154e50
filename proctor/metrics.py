"""Prometheus metrics: the one place that defines every `proctor_*` metric and serves `/metrics`.

Each process role exposes its own set on `GET /metrics` (text format):
- web (`proctor serve`): its HTTP port, e.g. http://web:8080/metrics — login failures;
- media node (`proctor media`): its internal API port (MEDIA_NODE_PORT, 8090) — streams, peer connections,
  frames received/decoded/analysed, analysis lag, RTP loss and jitter, alerts and their publish latency, segments
  written/uploaded/spooled, event-loop lag;
- worker (`proctor worker`): a small server of its own on WORKER_METRICS_PORT (9464) — job queue depth and age,
  dead letters, finalize duration.
Every role also has the standard `process_*` metrics.

Most figures are read at scrape time from the stats the code already keeps (a media node's streams, the archive
uploader, the Redis job streams), so feature code only reports what it keeps nowhere else: an alert raised, a frame
analysed, a segment written, a finalize, a failed login. Per-stream counts vanish when a stream ends; a node hands
the ended stream to `NodeCollector.retire` so the node's counters keep counting up.

Access: with METRICS_TOKEN set a scrape needs `Authorization: Bearer <token>` (else 401); without it only loopback
and METRICS_ALLOW addresses are answered (else 403). Both answers say why.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from core.net import parse_networks
from proctor.settings import Settings

log = logging.getLogger(__name__)

PATH = "/metrics"
# A scrape waits at most this long for Redis (the job-queue figures); past it the scrape answers without them.
REFRESH_TIMEOUT_S = 2.0

# No `*_created` series beside every counter and histogram: they double what Prometheus stores and no panel uses them.
disable_created_metrics()

# --- metrics counted where the event happens (nothing keeps these figures otherwise) -----------------------------
# Created unregistered: each role's registry (registry_for) picks the ones it serves, so a media node's scrape
# does not list login failures as 0 and two nodes in one test process do not collide.

ALERTS = Counter("proctor_alerts_total", "Flags raised (event starts published to the live monitor), by kind.",
                 ["kind"], registry=None)
# From the analysed frame's arrival at the sampler to its alert published on Redis: what a proctor waits for.
ALERT_PUBLISH_SECONDS = Histogram(
    "proctor_alert_publish_latency_seconds",
    "From the frame's arrival at the media node to the flag's live message published, seconds.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0), registry=None)
FRAMES_ANALYSED = Counter("proctor_frames_analysed_total", "Frames a detector finished analysing.", ["detector"],
                          registry=None)
FRAMES_SKIPPED = Counter(
    "proctor_frames_skipped_total",
    "Sampled frames a detector never analysed because a newer frame replaced them (the detector is behind).",
    ["detector"], registry=None)
ANALYSIS_LAG_SECONDS = Histogram(
    "proctor_analysis_lag_seconds", "From a sampled frame's arrival to its detector's result, seconds.",
    ["detector"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0), registry=None)
SEGMENTS_WRITTEN = Counter("proctor_segments_written_total", "Archive segments closed in the node's local spool.",
                           registry=None)
FINALIZE_SECONDS = Histogram(
    "proctor_finalize_duration_seconds", "Time one finalize job took (building master.webm), by outcome.",
    ["outcome"], buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0), registry=None)
LOGIN_FAILURES = Counter(
    "proctor_login_failures_total",
    "Failed staff logins: wrong name or password, or refused by the login throttle.", ["reason"], registry=None)

# Label values known up front, so a dashboard shows 0 instead of "no data" before the first one.
for _reason in ("wrong_password", "throttled"):
    LOGIN_FAILURES.labels(_reason)
for _outcome in ("finalized", "failed"):
    FINALIZE_SECONDS.labels(_outcome)

WEB_METRICS: tuple[Collector, ...] = (LOGIN_FAILURES,)
NODE_METRICS: tuple[Collector, ...] = (ALERTS, ALERT_PUBLISH_SECONDS, FRAMES_ANALYSED, FRAMES_SKIPPED,
                                       ANALYSIS_LAG_SECONDS, SEGMENTS_WRITTEN)
WORKER_METRICS: tuple[Collector, ...] = (FINALIZE_SECONDS,)


def alert_published(kind: str, action: str, arrived_wall: float | None) -> None:
    """analyzers/live.py, after an event change reached Redis: a start is a flag raised."""
    if action == "start":
        ALERTS.labels(kind).inc()
    if arrived_wall is not None:
        ALERT_PUBLISH_SECONDS.observe(max(0.0, time.time() - arrived_wall))


def frame_analysed(detector: str, arrived_wall: float) -> None:
    FRAMES_ANALYSED.labels(detector).inc()
    ANALYSIS_LAG_SECONDS.labels(detector).observe(max(0.0, time.time() - arrived_wall))


def frame_skipped(detector: str) -> None:
    FRAMES_SKIPPED.labels(detector).inc()


def segment_written() -> None:
    SEGMENTS_WRITTEN.inc()


def login_failed(reason: str) -> None:
    LOGIN_FAILURES.labels(reason).inc()


def finalize_done(outcome: str, seconds: float) -> None:
    FINALIZE_SECONDS.labels(outcome).observe(seconds)


# --- a media node, read at scrape time ---------------------------------------------------------------------------
# What the collector reads of a node, described structurally: the plumbing imports no media_server code. A stream
# is read through the lambdas below (stats, sampler, pc of media_server/stream.py's CandidateStream).

class _Node(Protocol):
    node_id: str

    @property
    def streams(self) -> dict[str, Any]: ...

    @property
    def plugins(self) -> list[Any]: ...


# Counted per stream and summed over the node's streams, live and ended: (metric, help, label, value, read).
_STREAM_COUNTERS: tuple[tuple[str, str, str, str, Callable[[Any], float]], ...] = (
    ("proctor_frames_received", "Encoded frames received from candidates, by kind.", "kind", "video",
     lambda s: s.stats.video_frames),
    ("proctor_frames_received", "", "kind", "audio", lambda s: s.stats.audio_frames),
    ("proctor_received_bytes", "Encoded media bytes received from candidates, by kind.", "kind", "video",
     lambda s: s.stats.video_bytes),
    ("proctor_received_bytes", "", "kind", "audio", lambda s: s.stats.audio_bytes),
    ("proctor_frames_decoded", "Video frames decoded for analysis.", "", "", lambda s: s.sampler.frames_decoded),
    ("proctor_frames_sampled", "Decoded frames handed to the detectors.", "", "", lambda s: s.sampler.frames_sampled),
    ("proctor_rtp_packets_received", "Video RTP packets received (the receiver's RTCP statistics).", "", "",
     lambda s: s.stats.packets_received),
    ("proctor_rtp_packets_lost", "Video RTP packets lost on the way (the receiver's RTCP statistics).", "", "",
     lambda s: s.stats.packets_lost),
)
PEER_STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")


@dataclass(eq=False)  # registries key collectors by identity
class NodeCollector(Collector):
    """A media node's figures at scrape time: its streams, their RTP statistics, the archive uploader."""

    node: _Node
    capacity: int
    loop_lag_ms: Callable[[], dict[str, float]] | None = None
    draining: Callable[[], bool] | None = None
    # The node's latest load estimate (media_server/admission.py via the node), None before its first heartbeat.
    admission: Callable[[], dict[str, float] | None] | None = None
    _retired: dict[str, float] = field(default_factory=dict)
    _retired_streams: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def retire(self, stream: Any) -> None:
        """A stream ended: keep its counts in the node's totals (called once the node has let it go)."""
        if stream in self._retired_streams:
            return
        self._retired_streams.add(stream)
        for name, _, _, value, read in _STREAM_COUNTERS:
            key = f"{name}/{value}"
            self._retired[key] = self._retired.get(key, 0.0) + _number(read, stream)

    def collect(self) -> Iterator[Metric]:
        streams = [s for s in list(self.node.streams.values()) if s not in self._retired_streams]
        info = GaugeMetricFamily("proctor_node_info", "This media node (its id as registered in Redis).",
                                 labels=["node_id"])
        info.add_metric([self.node.node_id], 1)
        yield info
        yield GaugeMetricFamily("proctor_streams", "Candidate streams this node carries now.", value=len(streams))
        yield GaugeMetricFamily("proctor_stream_capacity", "Streams this node accepts (MEDIA_NODE_CAPACITY).",
                                value=self.capacity)
        if self.draining is not None:
            yield GaugeMetricFamily("proctor_node_draining", "1 while the node drains (takes no new candidates).",
                                    value=1.0 if self.draining() else 0.0)
        yield from self._admission()
        states = GaugeMetricFamily("proctor_peer_connections", "Peer connections by connection state.",
                                   labels=["state"])
        counts = dict.fromkeys(PEER_STATES, 0)
        for stream in streams:
            state = str(getattr(stream.pc, "connectionState", "closed"))
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        families: dict[str, CounterMetricFamily] = {}
        for name, doc, label, value, read in _STREAM_COUNTERS:
            if name not in families:
                families[name] = CounterMetricFamily(name, doc, labels=[label] if label else [])
            total = self._retired.get(f"{name}/{value}", 0.0) + sum(_number(read, s) for s in streams)
            families[name].add_metric([value] if label else [], total)
        yield from families.values()
        jitters = [_number(lambda s: s.stats.jitter_ms, s) / 1000 for s in streams]
        yield GaugeMetricFamily("proctor_rtp_jitter_max_seconds", "Largest video RTP interarrival jitter of the "
                                "node's streams now, seconds.", value=max(jitters, default=0.0))
        yield GaugeMetricFamily("proctor_rtp_jitter_mean_seconds", "Mean video RTP interarrival jitter over the "
                                "node's streams now, seconds.", value=sum(jitters) / len(jitters) if jitters else 0.0)
        if self.loop_lag_ms is not None:
            lag = GaugeMetricFamily("proctor_event_loop_lag_seconds", "How late the node's event loop wakes a 50 ms "
                                    "timer (recent window), seconds: high means RTP is served late.",
                                    labels=["quantile"])
            summary = self.loop_lag_ms()
            for quantile, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
                lag.add_metric([quantile], float(summary.get(key, 0.0)) / 1000)
            yield lag
        yield from self._archive()

    def _admission(self) -> Iterator[Metric]:
        """Admission by load: what the node measured at its last heartbeat."""
        figures = self.admission() if self.admission is not None else None
        if not figures:
            return
        yield GaugeMetricFamily("proctor_node_admission_by_load", "1 when the node admits by measured load "
                                "(ADMISSION=load), 0 when by count only.", value=figures.get("by_load", 0.0))
        yield GaugeMetricFamily("proctor_node_headroom_streams", "Streams more the node takes now: its measured "
                                "headroom (ADMISSION=load) or what is left of MEDIA_NODE_CAPACITY (count).",
                                value=figures.get("headroom", 0.0))
        yield GaugeMetricFamily("proctor_node_cpus", "CPUs the node may use (affinity, cgroup quota or "
                                "ADMISSION_CPUS).", value=figures.get("cpus", 0.0))
        yield GaugeMetricFamily("proctor_node_cpu_utilisation", "Share of its CPUs the node's process tree used "
                                "over its measuring window (1 = all).", value=figures.get("cpu_util", 0.0))
        yield GaugeMetricFamily("proctor_node_stream_cpu_cost_cores", "Estimated CPU cost of one stream, cores "
                                "(measured and smoothed; ADMISSION_STREAM_COST until measured).",
                                value=figures.get("stream_cost", 0.0))
        yield GaugeMetricFamily("proctor_node_analysis_rate", "Frames the detectors analysed over those due in the "
                                "window (1 = every one; -1: too few to judge).",
                                value=figures.get("analysis_rate", -1.0))

    def _archive(self) -> Iterator[Metric]:
        """The archive plugin's uploader (archiver/segmenter.py stats()["uploader"]), when the node has one."""
        uploader: dict[str, Any] | None = None
        for plugin in list(self.node.plugins):
            try:
                stats = plugin.stats()
            except Exception:  # a plugin's stats must never break a scrape
                continue
            if isinstance(stats, dict) and isinstance(stats.get("uploader"), dict):
                uploader = stats["uploader"]
        if uploader is None:
            return
        yield GaugeMetricFamily("proctor_segments_spooled", "Segments in the node's local spool waiting for upload.",
                                value=float(uploader.get("queued", 0)))
        yield CounterMetricFamily("proctor_segments_uploaded", "Segments uploaded to storage and committed.",
                                  value=float(uploader.get("uploaded", 0)))
        yield CounterMetricFamily("proctor_segment_upload_failures", "Segment upload attempts that failed "
                                  "(retried with backoff).", value=float(uploader.get("failures", 0)))


def _number(read: Callable[[Any], Any], stream: Any) -> float:
    try:
        return float(read(stream) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0.0


# --- the job queues (Redis Streams), read at scrape time -------------------------------------------------------

@dataclass
class QueueSample:
    depth: int = 0  # waiting to be read plus read and not acknowledged yet
    pending: int = 0  # read by a worker, not acknowledged (running, or left by a dead worker)
    oldest_age_s: float = 0.0
    dead: int = 0


@dataclass(eq=False)  # registries key collectors by identity
class QueueCollector(Collector):
    """Depth, age of the oldest unfinished job and dead letters of each job stream (archiver/jobs.py), from Redis.
    The same for every worker: a dashboard takes max() over instances."""

    redis: aioredis.Redis
    streams: dict[str, str]  # queue label -> stream key
    group: str = "workers"
    _samples: dict[str, QueueSample] = field(default_factory=dict)
    _ok: bool = False

    async def refresh(self) -> None:
        samples: dict[str, QueueSample] = {}
        try:
            for label, stream in self.streams.items():
                samples[label] = await self._sample(stream)
        except Exception as exc:  # Redis down: the scrape says so (proctor_job_queue_up 0) rather than fail
            log.info("job queue metrics unavailable: %s", exc)
            self._ok = False
            return
        self._samples, self._ok = samples, True

    async def _sample(self, stream: str) -> QueueSample:
        sample = QueueSample(dead=int(await self.redis.xlen(f"{stream}:dead")))
        if not await self.redis.exists(stream):
            return sample
        groups = [g for g in await self.redis.xinfo_groups(stream) if g.get("name") == self.group]
        oldest_ids: list[str] = []
        if not groups:  # no worker has started yet: every entry waits
            sample.depth = int(await self.redis.xlen(stream))
            first = await self.redis.xrange(stream, count=1)
            oldest_ids += [str(first[0][0])] if first else []
        else:
            group = groups[0]
            sample.pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            last = str(group.get("last-delivered-id") or "0-0")
            waiting = await self.redis.xrange(stream, min=f"({last}", count=1)
            if lag is None:  # Redis < 7 has no lag: count what follows the last delivered entry (bounded)
                lag = len(await self.redis.xrange(stream, min=f"({last}", count=100_000) or [])
            sample.depth = sample.pending + int(lag)
            oldest_ids += [str(waiting[0][0])] if waiting else []
            if sample.pending:
                summary = await self.redis.xpending(stream, self.group)
                if summary.get("min"):
                    oldest_ids.append(summary["min"])
        if oldest_ids:
            oldest_ms = min(int(str(i).split("-", 1)[0]) for i in oldest_ids)
            sample.oldest_age_s = max(0.0, time.time() - oldest_ms / 1000)
        return sample

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("proctor_job_queue_up", "1 when the job queues could be read from Redis at this "
                                "scrape.", value=1.0 if self._ok else 0.0)
        if not self._ok:
            return
        depth = GaugeMetricFamily("proctor_job_queue_depth", "Jobs not finished yet: waiting plus running.",
                                  labels=["queue"])
        pending = GaugeMetricFamily("proctor_job_queue_pending", "Jobs read by a worker and not acknowledged yet.",
                                    labels=["queue"])
        age = GaugeMetricFamily("proctor_job_queue_oldest_age_seconds", "Age of the oldest unfinished job, seconds "
                                "(0 when none).", labels=["queue"])
        dead = GaugeMetricFamily("proctor_job_dead_letters", "Jobs moved to the dead-letter stream (<queue>:dead) "
                                 "after too many failed deliveries.", labels=["queue"])
        for label, sample in self._samples.items():
            depth.add_metric([label], sample.depth)
            pending.add_metric([label], sample.pending)
            age.add_metric([label], sample.oldest_age_s)
            dead.add_metric([label], sample.dead)
        yield from (depth, pending, age, dead)


# --- registries and the handler --------------------------------------------------------------------------------

def registry_for(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own for one app (several can live in one test process): the standard process metrics
    plus `collectors` (a role's event metrics above and its scrape-time collectors)."""
    registry = CollectorRegistry(auto_describe=True)
    # GCCollector always registers itself somewhere: a throwaway registry, then ours.
    gc = GCCollector(registry=CollectorRegistry())
    for standard in (ProcessCollector(registry=None), PlatformCollector(registry=None), gc):
        registry.register(standard)
    for collector in collectors:
        registry.register(collector)
    return registry


def web_registry() -> CollectorRegistry:
    return registry_for(*WEB_METRICS)


def node_registry(node: NodeCollector) -> CollectorRegistry:
    return registry_for(*NODE_METRICS, node)


def worker_registry(queues: QueueCollector) -> CollectorRegistry:
    return registry_for(*WORKER_METRICS, queues)


def _client_allowed(remote: str | None, allowed: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in network for network in allowed)


def refusal(settings: Settings, request: web.BaseRequest) -> web.Response | None:
    """None when the scrape may go on, else the 401/403 answer saying why. With a reverse proxy in front of the web
    process, `request.remote` is already the client the proxy named (web/proxy.py), never the proxy itself."""
    if settings.metrics_token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                              settings.metrics_token.encode()):
            return None
        return web.json_response({"error": "metrics need Authorization: Bearer <METRICS_TOKEN>"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    if _client_allowed(request.remote, parse_networks(settings.metrics_allow)):
        return None
    return web.json_response({"error": "metrics are served to loopback and METRICS_ALLOW addresses only "
                                       "(or set METRICS_TOKEN)"}, status=403)


class Refreshable(Protocol):
    async def refresh(self) -> None: ...


def handler(settings: Settings, registry: CollectorRegistry,
            refresh: Iterable[Refreshable] = ()) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics: access checked, async sources refreshed (bounded), then the registry in text format."""
    sources = list(refresh)

    async def metrics(request: web.Request) -> web.Response:
        refused = refusal(settings, request)
        if refused is not None:
            return refused
        for source in sources:
            try:
                await asyncio.wait_for(source.refresh(), REFRESH_TIMEOUT_S)
            except TimeoutError:
                log.info("metrics source %s took over %.0f s; served without it", type(source).__name__,
                         REFRESH_TIMEOUT_S)
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4,
                                                "Cache-Control": "no-store"})

    return metrics


async def serve(settings: Settings, registry: CollectorRegistry, refresh: Iterable[Refreshable] = (),
                host: str | None = None, port: int | None = None) -> web.AppRunner | None:
    """A process without an HTTP server of its own (a worker): /metrics alone on WORKER_METRICS_HOST:PORT.
    None when the port is 0 (off) or cannot be bound: the process runs on without metrics, said in one line."""
    host = settings.worker_metrics_host if host is None else host
    port = settings.worker_metrics_port if port is None else port
    if not port:
        return None
    app = web.Application()
    app.router.add_get(PATH, handler(settings, registry, refresh))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        log.warning("metrics server not started on %s:%d (%s); set WORKER_METRICS_PORT to a free port, or 0",
                    host, port, exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d%s", host, port, PATH)
    return runner
