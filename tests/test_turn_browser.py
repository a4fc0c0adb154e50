"""A real Chromium candidate limited to TURN-relayed paths (ICE_TRANSPORT_POLICY=relay) streams through a real
coturn to a media node: frames arrive, the archive writes segments, a browser alert lands, and the selected
candidate pair is a relay one on both sides (read from the page's getStats() and the node's aioice connection).

The page and the node both get short-lived credentials derived from TURN_SECRET (core/turn.py); the node also
runs with MEDIA_UDP_PORTS, so its TURN client socket and host sockets are bound inside the range. coturn's log
must show the candidate's allocation under its session's username.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp import web

from media_server.node import MediaNode
from proctor.context import Context
from proctor.redis import connect as connect_redis
from proctor.settings import Settings
from tests.support.browser import have_chromium, join_and_start
from tests.support.coturn import Coturn, have_coturn
from tests.support.net import free_port, redis_url_with_db
from tests.support.servers import FrameLog
from tests.support.sessions import create_session
from tests.support.udp_ports import free_udp_range
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed"),
              pytest.mark.skipif(not have_coturn(), reason="Debian coturn not installed (make system)")]

REDIS_DB = 14  # this rig's own node registry

# Runs before the page's own script (CDP, not subject to the page's CSP): keeps each RTCPeerConnection the page
# makes, so the test can read its configuration and getStats().
KEEP_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""

SELECTED_PAIR = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  const pick = (c) => ({ type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol,
                         relayProtocol: c.relayProtocol || null, url: c.url || null });
  const locals = [];
  stats.forEach((s) => { if (s.type === "local-candidate") locals.push(s.candidateType); });
  return { local: pick(local), remote: pick(remote), state: pair.state, bytesSent: pair.bytesSent,
           policy: pc.getConfiguration().iceTransportPolicy, localTypes: locals };
}
"""


@dataclass
class Rig:
    url: str
    node: MediaNode
    frames: FrameLog
    ctx: Context


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    with Coturn() as server:
        yield server


@asynccontextmanager
async def rig(settings: Settings, ctx: Context, **overrides: Any) -> AsyncIterator[Rig]:
    """A web app and one media node (archive, analysis, frame log) sharing a Redis database of their own."""
    from analyzers.live import Analysis
    from archiver.segmenter import Archive
    from web.app import create_app

    port = free_port()
    rig_settings = replace(settings, redis_url=redis_url_with_db(settings.redis_url, REDIS_DB), http_port=port,
                           public_base_url=f"http://127.0.0.1:{port}", **overrides)
    redis = connect_redis(rig_settings.redis_url)
    await redis.flushdb()
    rig_ctx = Context(rig_settings, ctx.pool, redis, ctx.storage)
    frames = FrameLog()
    node = MediaNode(rig_ctx, [Archive(rig_ctx), Analysis(rig_ctx), frames])
    node_runner = await node.start("127.0.0.1", free_port())

    async def registered() -> bool:
        return bool(await redis.exists(f"proctor:node:{node.node_id}"))

    await wait_for(registered, within=10)
    runner = web.AppRunner(create_app(rig_settings, ctx=rig_ctx), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Rig(f"http://127.0.0.1:{port}", node, frames, rig_ctx)
    finally:
        await runner.cleanup()
        try:  # a stop that hung once in a full-suite run: say where, in 2 minutes rather than the test's 10
            await asyncio.wait_for(node.stop(), 120)
        except TimeoutError:
            stacks = "\n".join(f"{task.get_name()}: {task.get_stack(limit=8)}" for task in asyncio.all_tasks())
            raise AssertionError(f"the media node did not stop within 120 s; tasks:\n{stacks}") from None
        await node_runner.cleanup()
        # Later nodes of the run pick any port again.
        from media_server.aiortc_compat import install_udp_port_range

        install_udp_port_range(None)
        await redis.flushdb()
        await redis.aclose()


@pytest.mark.timeout(600)  # a browser, a node with analyzers and a TURN server on a busy 2-core machine
async def test_a_relay_only_candidate_streams_through_coturn(settings: Settings, ctx: Context, browser: Any,
                                                             admin_token: str, coturn: Coturn) -> None:
    ports = free_udp_range(40)
    started = time.monotonic()

    def stage(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}")

    async with rig(settings, ctx, turn_urls=(coturn.url,), turn_secret=coturn.secret, turn_ttl_s=3600,
                   ice_transport_policy="relay", media_udp_ports=ports) as r:
        session = await create_session(r.url, admin_token, candidate="Relay Candidate", exam="TURN")
        sid = session["id"]
        context = await browser.new_context()
        await context.add_init_script(KEEP_PEER_CONNECTIONS)
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        try:
            await join_and_start(page, session["join_url"])
            stage("page connected")

            # The page's side: only relay candidates gathered, and the selected pair's local end is coturn's relay.
            async def page_pair() -> dict | None:
                pair = await page.evaluate(SELECTED_PAIR)
                return pair if pair and pair["state"] == "succeeded" else None

            pair = await wait_for(page_pair, within=20, interval=0.5)
            print(f"page's selected candidate pair: {pair}")
            assert pair["policy"] == "relay"
            assert pair["local"]["type"] == "relay" and set(pair["localTypes"]) == {"relay"}
            assert pair["local"]["address"] == "127.0.0.1"
            assert coturn.relay_ports[0] <= pair["local"]["port"] <= coturn.relay_ports[1]

            # The node's side: every candidate the browser offered is a relay one, and the nominated pair's
            # remote end is the browser's relay address.
            stream = r.node.streams[sid]
            connection = _aioice_connection(stream.pc)
            remote_types = {c.type for c in connection.remote_candidates}
            nominated = list(connection._nominated.values())
            print(f"node's nominated pair: {nominated} (remote candidate types offered: {remote_types})")
            assert remote_types == {"relay"}
            assert nominated and all(p.remote_candidate.type == "relay" for p in nominated)
            assert all(ports[0] <= c.port <= ports[1] for c in connection.local_candidates if c.type == "host")

            # Frames arrive, the archive writes segments, and a browser signal becomes an alert.
            await wait_for(lambda: _frames(r.frames, sid, 60), within=20)
            await page.evaluate("window.dispatchEvent(new Event('blur'))")
            await asyncio.sleep(3.5)  # longer than the minimum a window_blur must last to be reported
            await page.evaluate("window.dispatchEvent(new Event('focus'))")
            try:
                blur = await wait_for(lambda: _event(ctx, sid, "window_blur"), within=15)
            except AssertionError:
                async with ctx.pool.acquire() as conn:
                    rows = await conn.fetch("SELECT kind, start_s, end_s FROM events WHERE session_id = $1", sid)
                snap = r.node.streams[sid].snapshot()
                raise AssertionError(f"no window_blur: events {rows}, signals {snap['signals']}, "
                                     f"bad {snap['bad_signals']}") from None
            assert blur["end_s"] is not None and blur["end_s"] > blur["start_s"]
            segments = await wait_for(lambda: _segments(ctx, sid), within=30)
            stage(f"{len(r.frames.times[sid])} video frames at the node, {segments} segment(s) archived, "
                  f"window_blur {blur['start_s']:.2f}-{blur['end_s']:.2f} s")
        finally:
            await context.close()
            stage("page closed")
        stage("stopping the node")
    stage("node stopped")
    log = coturn.log()
    allocations = re.findall(rf"^.*user <\d+:{sid}>.*ALLOCATE processed, success.*$", log, re.MULTILINE)
    print(f"coturn allocations for session {sid}: {len(allocations)} (page and node), e.g.\n  {allocations[:1]}")
    assert allocations, log[-4000:]
    assert re.search(r"CREATE_PERMISSION processed, success", log) or re.search(r"CHANNEL_BIND processed, success",
                                                                                log)


def _aioice_connection(pc: Any) -> Any:
    """The aioice connection that carries the media: with BUNDLE the one whose pair was nominated (aiortc keeps an
    ICE transport object per transceiver; the bundled ones never connect)."""
    transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    [connection] = {id(t._connection): t._connection for t in transports if t._connection._nominated}.values()
    return connection


async def _frames(log: FrameLog, sid: str, count: int) -> bool:
    return len(log.times.get(sid, [])) >= count


async def _event(ctx: Context, sid: str, kind: str) -> dict | None:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT kind, start_s, end_s FROM events WHERE session_id = $1 AND kind = $2 "
                                  "AND end_s IS NOT NULL", sid, kind)
    return dict(row) if row else None


async def _segments(ctx: Context, sid: str) -> int:
    async with ctx.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM segments WHERE session_id = $1", sid))
