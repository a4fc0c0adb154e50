"""A media node (`proctor media`): terminates candidates' WebRTC connections and feeds the outlets.

Signaling reaches the node over a small internal HTTP API (`POST /offer`, `POST /sessions/{id}/close`,
`GET /stats`); the node registers that address and its load in Redis every second, and persists each
session's media time so a reconnect on any node continues the same timeline.

Every call to that API must be signed (proctor/nodeauth.py: HMAC with a key derived from SECRET_KEY), else
401; it binds to loopback unless MEDIA_NODE_HOST says otherwise. The node never carries more than
MEDIA_NODE_CAPACITY streams: an offer takes its slot before the first await (503 when none is left), so
concurrent offers cannot all pass one check. With ADMISSION=load (the default) it also measures its load at every
heartbeat (media_server/admission.py: CPU of its process tree, event-loop lag, analysis rate achieved), reports its
headroom in streams, and refuses an offer with 503 when its latest measurement leaves none.

SIGTERM or `POST /drain` drains the node (media_server/drain.py): no new offer, candidates kept until they
finish or DRAIN_TIMEOUT_S, then moved to other nodes; the process exits 0 after. SIGINT stops it at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection

from core.live import ConnectionState
from core.nodes import NodeInfo
from core.offers import OfferError
from core.sessions import OPEN_STATUSES, parse_id
from media_server.admission import (
    FLOWING_S,
    Counter,
    Limits,
    Meter,
    Sample,
    TreeCpu,
    analysis_counters,
    lag_p99,
    usable_cpus,
)
from media_server.audio import AudioDecodePool
from media_server.decode import DecodePool
from media_server.drain import Drain
from media_server.ice import (
    PortRangeExhausted,
    enlarge_receive_buffers,
    install_host_addresses,
    install_udp_port_range,
    node_rtc_configuration,
)
from media_server.intervention import InterventionError, Interventions
from media_server.outlets import Plugin
from media_server.sdp import screen_offer, tune_answer
from media_server.stream import CandidateStream
from media_server.udp import install_batched_reads, install_rtp_fast_path
from proctor import loop as event_loop
from proctor import memory, metrics, nodeauth, threadcpu
from proctor.context import Context
from proctor.http import error
from proctor.redis import SESSION_CONTROL, SESSION_NODE
from proctor.settings import Settings
from proctor.store import live, sessions
from proctor.store.nodes import register, unregister

log = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT_S = 30.0
# A connection that stops sending media (browser closed, laptop asleep) is let go after this long instead of
# waiting ~30 s for ICE consent to expire; the candidate page reconnects by itself when it can.
MEDIA_TIMEOUT_S = 8.0
ANSWER_TIMEOUT_S = 10.0
# The heartbeat persists every stream's media time this often; a node that dies unannounced received at
# most about this much more (plus the time one beat takes) than it wrote.
PERSIST_PERIOD_S = 1.0
UNPERSISTED_MAX_S = PERSIST_PERIOD_S + 0.25
# Longer than aioice's TURN deallocation can take (7 STUN retransmissions, ~40 s) when the TURN server is slow.
STREAMS_CLOSE_TIMEOUT_S = 45.0



def _thread_names() -> dict[str, int]:
    """Live Python threads by name without their pool's number ("analyze_0" -> "analyze", as /stats groups their
    CPU: proctor/threadcpu.py): which pool grew."""
    names: dict[str, int] = {}
    for thread in threading.enumerate():
        name = threadcpu.group_name(thread.name)
        names[name] = names.get(name, 0) + 1
    return names


class LoopLag:
    """How late the event loop wakes a 50 ms sleeper: the one figure that says whether RTP is being served
    in time (CPU percent cannot, since decoding runs in threads)."""

    def __init__(self, window: int = 200) -> None:
        self.samples: deque[float] = deque(maxlen=window)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.05)
            self.samples.append(max(0.0, loop.time() - started - 0.05) * 1000)

    def p99_recent(self, seconds: float) -> float:
        """p99 of the wake-ups of about the last `seconds` (admission's window; the summary's is ~10 s)."""
        count = max(1, int(seconds / 0.05))
        return lag_p99(list(self.samples)[-count:])

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        return {"p50": round(ordered[len(ordered) // 2], 1), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
                "max": round(ordered[-1], 1)}


class MediaNode:
    def __init__(self, ctx: Context, plugins: list[Plugin] | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.loop_thread: int | None = None
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.url = ""
        self.streams: dict[str, CandidateStream] = {}
        # Sessions whose offer is being answered: they hold a slot from the first line of handle_offer.
        self._admitting: set[str] = set()
        self._key = nodeauth.node_key(self.settings)
        self.plugins: list[Plugin] = list(plugins or [])
        self.decode_pool = DecodePool()
        # The voice detector's Opus decoding, one thread for all streams.
        self.audio_pool = AudioDecodePool(self.settings.audio_decoder)
        self._tasks: list[asyncio.Task[Any]] = []
        self._watchers: set[asyncio.Task[Any]] = set()
        self.loop_lag = LoopLag()
        self.interventions = Interventions(ctx)
        # Admission by measured load (media_server/admission.py): a sample at every heartbeat.
        self.meter = Meter(Limits.from_settings(self.settings), usable_cpus(self.settings.admission_cpus))
        self._tree_cpu: TreeCpu | None = None  # made by the first heartbeat
        # /metrics (proctor/metrics.py) reads the streams at scrape time; ended ones are retired into its totals.
        self.metrics = metrics.NodeCollector(self, self.settings.media_node_capacity, self.loop_lag.summary,
                                             lambda: self.drain.active, admission=self._admission_figures)
        # SIGTERM or a signed POST /drain: leave placement, keep the candidates a while, then move them.
        self.drain = Drain(self, ctx.pool, ctx.redis, self.settings.drain_timeout_s,
                           self.settings.drain_move_timeout_s)
        install_host_addresses(self.settings.ice_host_addresses)
        install_udp_port_range(self.settings.media_udp_ports)
        install_batched_reads()
        install_rtp_fast_path(self.settings.rtp_fast_path)  # RTP_FAST_PATH (issue 14)

    # --- internal API --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_sdp_bytes + 8192,
                              middlewares=[nodeauth.middleware(self._key, unsigned=(metrics.PATH, "/healthz"))])
        app.router.add_get("/healthz", self.handle_healthz)  # probes (Kubernetes, compose): unsigned, says little
        app.router.add_post("/offer", self.handle_offer)
        app.router.add_post("/sessions/{session_id}/close", self.handle_close)
        app.router.add_post("/sessions/{session_id}/intervene", self.handle_intervene)
        app.router.add_get("/stats", self.handle_stats)
        app.router.add_get(metrics.PATH, metrics.handler(self.settings, metrics.node_registry(self.metrics)))
        app.router.add_post("/drain", self.handle_drain)
        return app

    async def handle_offer(self, request: web.Request) -> web.Response:
        try:
            # The signature middleware has read the body (bounded by the app's client_max_size).
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise error(web.HTTPBadRequest, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise error(web.HTTPBadRequest, "body must be a JSON object")
        session_id = parse_id(str(body.get("session_id", "")))
        sdp = body.get("sdp")
        if session_id is None or not isinstance(sdp, str) or body.get("type") != "offer":
            raise error(web.HTTPBadRequest, "expected {session_id, sdp, type: offer}")
        if self.drain.active:  # signaling skips a draining node; an offer sent before it saw the drain lands here
            raise error(web.HTTPServiceUnavailable, "node is draining")
        # Admission: check and take the slot with no await in between. A session the node carries keeps its
        # slot for its new connection (a reload).
        if session_id in self._admitting:
            raise error(web.HTTPConflict, "another offer for this session is being answered")
        if session_id not in self.streams:
            if len(self.streams.keys() | self._admitting) >= self.settings.media_node_capacity:
                raise error(web.HTTPServiceUnavailable, "node is full")
            # Signaling placed it on the headroom of the last heartbeat; the node's own latest estimate (and the
            # streams it admitted since) has the last word.
            estimate = self.meter.last
            if self.meter.limits.mode == "load" and estimate is not None:
                admits, why = estimate.admits(self.streams.keys() | self._admitting)
                if not admits:
                    raise error(web.HTTPServiceUnavailable, f"node is full: {why}")
        self._admitting.add(session_id)
        try:
            return await self._admit(session_id, sdp, previous_lost=body.get("previous_lost") is True)
        finally:
            self._admitting.discard(session_id)

    async def _admit(self, session_id: str, sdp: str, *, previous_lost: bool) -> web.Response:
        try:
            sdp = await screen_offer(sdp, allow_private=self.settings.ice_allow_private_candidates)
        except OfferError as exc:
            raise error(web.HTTPBadRequest, f"invalid offer: {exc}") from None
        old = self.streams.get(session_id)
        if old is not None:
            await old.close("replaced by a new connection")  # a reload: same session continues here
        async with self.ctx.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, duration_s, connections, last_seen_at FROM sessions WHERE id = $1", session_id)
        if row is None:
            raise error(web.HTTPNotFound, "no such session")
        if row["status"] not in OPEN_STATUSES:
            raise error(web.HTTPConflict, f"session is {row['status']}")
        base_s = float(row["duration_s"])
        if previous_lost and row["last_seen_at"] is not None:
            # The node that carried the stream died: it received up to one persist period more than it
            # wrote. Start after that (a short empty stretch) rather than give two frames the same time.
            base_s += min(max(0.0, time.time() - row["last_seen_at"].timestamp()), UNPERSISTED_MAX_S)
        pc = RTCPeerConnection(node_rtc_configuration(self.settings, session_id))
        stream = CandidateStream(session_id, pc, base_s=base_s, on_closed=self._on_closed,
                                 decode_pool=self.decode_pool, audio_pool=self.audio_pool)
        for plugin in self.plugins:
            plugin.attach(stream)
        stream.close_hooks.append(self.interventions.detach)
        try:
            # A pause or break still open (from before a reload, or set while the candidate was away) holds the
            # new stream from its first frame.
            await self.interventions.restore(stream)
        except Exception as exc:  # the database hiccuped: monitor as usual rather than refuse the candidate
            log.warning("session %s: open pause or break not restored: %r", session_id, exc)
        try:
            answer = await asyncio.wait_for(stream.answer(sdp), ANSWER_TIMEOUT_S)
        except PortRangeExhausted as exc:  # MEDIA_UDP_PORTS all taken: this node is full, another may not be
            await pc.close()
            log.warning("session %s: offer refused: %s", session_id, exc)
            raise error(web.HTTPServiceUnavailable, f"node has no free media port: {exc}") from None
        except Exception as exc:  # aiortc raises many kinds on bad SDP; none may take the node down
            await pc.close()
            log.info("session %s: offer refused: %r", session_id, exc)
            raise error(web.HTTPBadRequest, f"invalid offer: {exc or type(exc).__name__}") from None
        enlarge_receive_buffers(pc)
        self.streams[session_id] = stream
        async with self.ctx.pool.acquire() as conn:
            await sessions.mark_live(conn, session_id, self.node_id)
        await self.ctx.redis.set(SESSION_NODE.format(session_id=session_id), self.node_id, ex=7 * 86400)
        self._watch(stream, reconnect=row["connections"] > 0, last_seen=row["last_seen_at"])
        return web.json_response({"sdp": tune_answer(answer.sdp, self.settings.video_bitrate_kbps,
                                                         self.settings.audio_ptime_ms),
                                  "type": answer.type})

    def _watch(self, stream: CandidateStream, *, reconnect: bool, last_seen: Any) -> None:
        task = asyncio.create_task(self._watch_first_frame(stream, reconnect, last_seen))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch_first_frame(self, stream: CandidateStream, reconnect: bool, last_seen: Any) -> None:
        """Record the reconnect gap once media flows again; drop a connection that never sends media."""
        try:
            await asyncio.wait_for(stream.first_frame.wait(), FIRST_FRAME_TIMEOUT_S)
        except TimeoutError:
            await stream.close("no media within 30 s")
            return
        wall_gap = max(0.0, time.time() - last_seen.timestamp()) if (reconnect and last_seen) else None
        async with self.ctx.pool.acquire() as conn:
            if wall_gap is not None:
                gap = {"at_s": round(stream.clock.base_s, 3), "wall_s": round(wall_gap, 3), "node": self.node_id}
                await sessions.record_gap(conn, stream.session_id, gap)
        await self._publish(stream.session_id, "connected")

    async def handle_close(self, request: web.Request) -> web.Response:
        session_id = parse_id(request.match_info["session_id"]) or ""
        stream = self.streams.get(session_id)
        if stream is not None:
            await stream.close("moved to another node")
            return web.json_response({"closed": True, "duration_s": stream.clock.end_s})
        return web.json_response({"closed": False})

    async def handle_intervene(self, request: web.Request) -> web.Response:
        """A proctor's message, request, pause, resume or end, or the candidate's break (media_server/
        intervention.py): 200 {"event_id", "media_time_s", "delivered"}; 404 when this node does not carry the
        session's stream (the candidate is not connected here)."""
        session_id = parse_id(request.match_info["session_id"]) or ""
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise error(web.HTTPBadRequest, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise error(web.HTTPBadRequest, "body must be a JSON object")
        stream = self.streams.get(session_id)
        if stream is None:
            raise error(web.HTTPNotFound, "this node does not carry the session's stream")
        try:
            return web.json_response(await self.interventions.apply(stream, body))
        except InterventionError as exc:
            raise error(web.HTTPConflict if exc.status == 409 else web.HTTPBadRequest, str(exc)) from None

    async def handle_drain(self, request: web.Request) -> web.Response:
        """Start draining (media_server/drain.py). Body: {} or {"timeout_s": seconds to keep the candidates
        before moving them, 0-604800; default DRAIN_TIMEOUT_S}. 202 with the drain's state when this call started
        it, 200 with it when the node was draining already (the first call's timeout holds)."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise error(web.HTTPBadRequest, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise error(web.HTTPBadRequest, "body must be a JSON object")
        timeout = body.get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout <= 7 * 86400):
            raise error(web.HTTPBadRequest, "timeout_s must be a number of seconds, 0 to 604800")
        started = self.drain.start(None if timeout is None else float(timeout), reason="POST /drain")
        return web.json_response(self.drain.summary(), status=202 if started else 200)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        """Liveness and readiness: 200 while the loop answers, draining included (a draining node must not be
        killed by its probe while its candidates finish); whether it drains, nothing more (unsigned)."""
        return web.json_response({"status": "draining" if self.drain.active else "ok"},
                                 headers={"Cache-Control": "no-store"})

    async def handle_stats(self, request: web.Request) -> web.Response:
        estimate = self.meter.last
        return web.json_response({"node_id": self.node_id, "capacity": self.settings.media_node_capacity,
                                  "drain": self.drain.summary(),
                                  "admission": estimate.public() if estimate else None,
                                  "loop_lag_ms": self.loop_lag.summary(),
                                  # For the soak's leak check: these must come back down when streams end.
                                  "tasks": len(asyncio.all_tasks()), "threads": threading.active_count(),
                                  "thread_names": _thread_names(),
                                  "peer_connections": sum(1 for s in self.streams.values()
                                                          if s.pc.connectionState != "closed"),
                                  "decode_queue": self.decode_pool.queued(),
                                  "audio_decode_queue": self.audio_pool.queued(),
                                  # What an RSS that grows is made of (bench/soak.py fits a trend to each).
                                  "memory": await asyncio.to_thread(memory.heap),
                                  # Where the CPU goes (bench/ingest.py takes two readings a step apart).
                                  "thread_cpu_s": await asyncio.to_thread(threadcpu.cpu_by_thread, self.loop_thread),
                                  "plugins": {type(p).__name__: p.stats() for p in self.plugins},
                                  "streams": [s.snapshot() for s in self.streams.values()]})

    # --- lifecycle -----------------------------------------------------------------------------------
    async def _on_closed(self, stream: CandidateStream) -> None:
        if self.streams.get(stream.session_id) is stream:
            del self.streams[stream.session_id]
        self.metrics.retire(stream)
        await self._persist([stream])
        await self._publish(stream.session_id, "disconnected")

    async def _persist(self, streams: list[CandidateStream]) -> None:
        """Write each stream's media time; a reconnect (here or elsewhere) continues from it."""
        rows = [(s.session_id, s.clock.end_s) for s in streams if s.clock.first_ts is not None]
        if not rows:
            return
        try:
            async with self.ctx.pool.acquire() as conn:
                await sessions.persist_media_time(conn, rows)
        except Exception as exc:  # Postgres down: keep streaming, the next beat retries
            log.warning("could not persist media time: %s", exc)

    async def _publish(self, session_id: str, connection: str) -> None:
        await live.publish_quietly(self.ctx.redis, ConnectionState(session_id=session_id, connection=connection,
                                                                   node=self.node_id))

    def measure(self) -> None:
        """Add a load sample (CPU of the process tree, streams with media, detector counters) and estimate the
        headroom from the window (media_server/admission.py)."""
        if self._tree_cpu is None:
            self._tree_cpu = TreeCpu()
        now, wall = time.monotonic(), time.time()
        flowing = frozenset(sid for sid, s in self.streams.items()
                            if s.stats.last_frame_wall is not None and wall - s.stats.last_frame_wall < FLOWING_S)
        self.meter.add(Sample(now, self._tree_cpu.seconds(now), frozenset(self.streams), flowing,
                              self._analysis_counters(flowing)))
        self.meter.estimate(self.loop_lag.p99_recent(self.meter.limits.window_s), self._admitting)

    def _analysis_counters(self, flowing: frozenset[str]) -> dict[tuple[str, str], Counter]:
        """Frames analysed so far and the rate, per (session, detector), of the streams with media: read from the
        analysis plugin's stats (media_server/admission.py analysis_counters)."""
        counters: dict[tuple[str, str], Counter] = {}
        for plugin in self.plugins:
            try:
                streams = plugin.stats().get("streams")
            except Exception:  # a plugin's stats must never stop the heartbeat
                continue
            counters.update(analysis_counters(streams, flowing))
        return counters

    def _admission_figures(self) -> dict[str, float] | None:
        estimate = self.meter.last
        if estimate is None:
            return None
        return {"headroom": estimate.headroom, "cpu_util": estimate.cpu_util, "cpus": estimate.cpus,
                "stream_cost": estimate.stream_cost, "lag_p99_ms": estimate.lag_p99_ms,
                "analysis_rate": -1.0 if estimate.analysis_rate is None else estimate.analysis_rate,
                "by_load": 1.0 if estimate.mode == "load" else 0.0}

    async def beat(self) -> None:
        """Register the node's state now (address, load, headroom, whether it drains); raises what Redis raises."""
        carried = list(self.streams)
        try:
            self.measure()
        except Exception:  # a measurement failing must not stop the heartbeat: the last estimate stands
            log.exception("load measurement failed")
        estimate = self.meter.last
        info = NodeInfo(self.node_id, self.url, len(carried), self.settings.media_node_capacity,
                        round(100 * estimate.cores, 1) if estimate else 0.0, draining=self.drain.active,
                        admission=self.meter.limits.mode)
        if estimate is not None:
            info = replace(info, headroom=estimate.headroom, cpus=round(estimate.cpus, 2),
                           cpu_util=round(estimate.cpu_util, 3), stream_cost=round(estimate.stream_cost, 4),
                           lag_p99_ms=estimate.lag_p99_ms, reason=estimate.reason,
                           analysis_rate=None if estimate.analysis_rate is None else round(estimate.analysis_rate, 3))
        await register(self.ctx.redis, info, carried)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:
                log.warning("node heartbeat failed: %s", exc)
            streams = list(self.streams.values())
            now = time.time()
            for stream in streams:
                last = stream.stats.last_frame_wall
                if last is not None and now - last > MEDIA_TIMEOUT_S:
                    asyncio.create_task(stream.close(f"no media for {MEDIA_TIMEOUT_S:.0f} s"))
                elif stream.screen_offered:  # no screen frames: a PLI, then screen_share_stopped
                    stream.screen.watch(now, stream.stats.first_frame_wall)
            await self._persist(streams)
            await asyncio.gather(*(s.refresh_receiver_stats() for s in streams), return_exceptions=True)
            await asyncio.sleep(PERSIST_PERIOD_S)

    async def _control(self) -> None:
        """Follow control messages (session ended elsewhere) and close the stream they name."""
        while True:
            try:
                pubsub = self.ctx.redis.pubsub()
                await pubsub.subscribe(SESSION_CONTROL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        data = json.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    stream = self.streams.get(str(data.get("session_id")))
                    if stream is not None and data.get("action") == "end":
                        await stream.close("session ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("control channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)

    async def start(self, host: str, port: int) -> web.AppRunner:
        self.loop_thread = threading.get_native_id()  # /stats tells its CPU apart from the pools'
        self.decode_pool.start(asyncio.get_running_loop())
        self.audio_pool.start(asyncio.get_running_loop())
        for plugin in self.plugins:
            await plugin.start(self.node_id)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        self.url = f"http://{self.settings.media_node_advertise_host or host}:{bound}"
        self._tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._control()),
                       asyncio.create_task(self.loop_lag.run())]
        log.info("media node %s serving %s (capacity %d, admission by %s, %.2g CPUs, %s event loop)", self.node_id,
                 self.url, self.settings.media_node_capacity, self.meter.limits.mode, self.meter.cpus,
                 event_loop.loop_name(asyncio.get_running_loop()))
        return runner

    async def stop(self) -> None:
        await self.drain.stop()
        # A stopping node must not wait forever on one connection (seen once: a stop that never returned after a
        # TURN-relayed stream, cause not found): closing the streams is bounded; what they had is already spooled.
        closing = asyncio.gather(*(s.close("node stopping") for s in list(self.streams.values())),
                                 return_exceptions=True)
        try:
            await asyncio.wait_for(closing, STREAMS_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("node stop: closing the streams took over %.0f s; going on without them",
                      STREAMS_CLOSE_TIMEOUT_S)
        for plugin in self.plugins:
            began = time.monotonic()
            try:
                await plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop", type(plugin).__name__)
            # What a stop grace (docs/deploy.md) must allow for after a drain: the archive's last uploads.
            log.info("plugin %s stopped in %.1f s", type(plugin).__name__, time.monotonic() - began)
        await self.interventions.stop()
        await asyncio.to_thread(self.decode_pool.stop)
        await asyncio.to_thread(self.audio_pool.stop)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await unregister(self.ctx.redis, self.node_id)
        except Exception:
            pass


async def run(settings: Settings, plugins: Callable[[Context], list[Plugin]]) -> None:
    ctx = await Context.open(settings, pool_size=5)
    node = MediaNode(ctx, plugins(ctx))
    runner = await node.start(settings.media_node_host, settings.media_node_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:  # drain (media_server/drain.py); a second SIGTERM stops at once
        if not node.drain.start(reason="SIGTERM"):
            stop.set()

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    drained = asyncio.create_task(node.drain.finished.wait())
    try:
        await asyncio.wait([asyncio.create_task(stop.wait()), drained], return_when=asyncio.FIRST_COMPLETED)
    finally:
        began = time.monotonic()
        await node.stop()
        await runner.cleanup()
        await ctx.close()
        log.info("media node %s stopped in %.1f s", node.node_id, time.monotonic() - began)


def main(settings: Settings, plugins: Callable[[Context], list[Plugin]]) -> int:
    event_loop.run(run(settings, plugins), settings.event_loop)  # EVENT_LOOP: uvloop by default
    # Like asyncio.run, it waits for the default executor's threads (work handed off with to_thread) before it returns.
    log.info("media node event loop closed; exiting")
    return 0
