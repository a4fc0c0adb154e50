"""Graceful drain, the fast part: the placement rule (core.nodes.choose, the registry's reserve), and a real media
node's signed `POST /drain` (bad input refused with a reason, offers refused while draining, the drain announced in
the registry at once, and a node with no candidate done at once). The move of a real Chromium candidate between
two real nodes is tests/test_drain_browser.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.synthetic import VIDEO_TB, ReplayTrack, encode_clip
from core.nodes import NodeInfo, choose
from media_server.node import MediaNode
from proctor.context import Context
from proctor.nodeauth import NodeClient, signed_headers
from proctor.settings import Settings, SettingsError
from proctor.store.nodes import CARRIED, REFUSED, RESERVED, live_nodes, register, release, reserve, unregister
from proctor.supervisor import Child, _keep_alive
from tests.support.media import face_canvas
from tests.support.net import free_port
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_choose_skips_a_draining_node_even_the_preferred_one() -> None:
    idle_draining = NodeInfo("a", "http://a", 0, 10, draining=True)
    busy = NodeInfo("b", "http://b", 7, 10)
    assert choose([idle_draining, busy]) == busy  # least loaded loses to "not draining"
    assert choose([idle_draining, busy], prefer="a") == busy  # a reconnect does not go back to it either
    assert choose([idle_draining]) is None
    assert not idle_draining.placeable and busy.placeable
    assert not NodeInfo("c", "http://c", 10, 10).placeable  # full is still full


async def test_registry_refuses_a_draining_node_yet_lists_it(ctx: Context) -> None:
    node_id = f"drain-test-{uuid.uuid4().hex[:6]}"
    carried = str(uuid.uuid4())
    other = str(uuid.uuid4())
    try:
        await register(ctx.redis, NodeInfo(node_id, "http://127.0.0.1:1", 1, 10), [carried])
        assert await reserve(ctx.redis, node_id, other) == RESERVED
        await release(ctx.redis, node_id, other)
        assert await reserve(ctx.redis, node_id, carried) == CARRIED

        await register(ctx.redis, NodeInfo(node_id, "http://127.0.0.1:1", 1, 10, draining=True), [carried])
        listed = next(n for n in await live_nodes(ctx.redis) if n.node_id == node_id)
        assert listed.draining and listed.streams == 1  # still listed: its streams are live
        assert await reserve(ctx.redis, node_id, other) == REFUSED  # no new offer
        assert await reserve(ctx.redis, node_id, carried) == REFUSED  # not even a reload of its own session
    finally:
        await unregister(ctx.redis, node_id)


@pytest.fixture
async def spare_node(ctx: Context) -> Any:
    """A media node of this test's own (no plugins): draining it must not disturb the suite's shared node."""
    node = MediaNode(ctx, [])
    runner = await node.start("127.0.0.1", free_port())
    await wait_for(lambda: ctx.redis.exists(f"proctor:node:{node.node_id}"), within=10)
    try:
        yield node
    finally:
        await node.stop()
        await runner.cleanup()


async def test_drain_route_refuses_bad_input_then_drains(ctx: Context, spare_node: MediaNode) -> None:
    node = spare_node
    async with aiohttp.ClientSession() as http:
        client = NodeClient.for_settings(ctx.settings, http)
        # Unsigned: refused before anything happens.
        async with http.post(f"{node.url}/drain", json={}) as response:
            assert response.status == 401
        assert not node.drain.active
        # Bad bodies: a clear 400 with the reason, and no drain.
        for body in ('{"timeout_s": "10"}', '{"timeout_s": true}', '{"timeout_s": -1}', '{"timeout_s": 1e308}',
                     '{"timeout_s": NaN}', '[1]', '"x\\u0000"', '{"timeout_s": 99999999999999999999999}', "{"):
            raw = body.encode()
            headers = {"Content-Type": "application/json",
                       **signed_headers(client.key, "POST", f"{node.url}/drain", raw)}
            async with http.post(f"{node.url}/drain", data=raw, headers=headers) as response:
                assert response.status == 400, body
                assert "error" in json.loads(await response.read())
        assert not node.drain.active

        # A candidate joining right now would be refused by signaling's placement... and by the node itself.
        status, body = await client.call("POST", f"{node.url}/drain", {"timeout_s": 30})
        assert status == 202 and body["state"] in ("draining", "done") and body["timeout_s"] == 30
        status, body = await client.call("POST", f"{node.url}/offer",
                                         {"session_id": str(uuid.uuid4()), "sdp": "v=0", "type": "offer"})
        assert status == 503 and "draining" in body["error"]
        # Announced at once (not a heartbeat later): placement no longer picks it.
        listed = next(n for n in await live_nodes(ctx.redis) if n.node_id == node.node_id)
        assert listed.draining
        assert await reserve(ctx.redis, node.node_id, str(uuid.uuid4())) == REFUSED
        # No candidate on it: nothing to wait for or move, done at once.
        await asyncio.wait_for(node.drain.finished.wait(), 10)
        status, body = await client.call("POST", f"{node.url}/drain", {"timeout_s": 5})
        assert status == 200 and body["state"] == "done" and body["timeout_s"] == 30  # the first call's holds
        assert body["moves"] == []
        stats = await client.stats(node.url)
        assert stats["drain"]["state"] == "done"


async def test_cli_lists_and_drains_a_node(ctx: Context, spare_node: MediaNode) -> None:
    """`proctor node list` / `proctor node drain NODE_ID`, as staff run them: a real process, signed call."""
    env = dict(os.environ, REDIS_URL=ctx.settings.redis_url, DATABASE_URL=ctx.settings.database_url,
               SECRET_KEY=ctx.settings.secret_key, PROCTOR_DATA_DIR=str(ctx.settings.data_dir))

    async def proctor(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proctor", "node", *args, cwd=ROOT,
                                                    env=env, stdout=PIPE, stderr=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return int(proc.returncode or 0), out.decode(), err.decode()

    code, out, _ = await proctor("list")
    assert code == 0 and f"{spare_node.node_id}\t{spare_node.url}\t0/" in out and "serving" in out
    code, _, err = await proctor("drain", "no-such-node<b>\u00e9")
    assert code == 1 and "no live node" in err and "Traceback" not in err
    # What `proctor media` does (media_server.node.run): stop, and so leave the registry, once drained.
    async def stop_when_drained() -> None:
        await spare_node.drain.finished.wait()
        await spare_node.stop()

    stopper = asyncio.create_task(stop_when_drained())
    code, out, err = await proctor("drain", spare_node.node_id, "--timeout", "0", "--wait")
    assert code == 0, err
    assert f"node {spare_node.node_id} draining" in out and "drained and stopped" in out
    assert spare_node.drain.timeout_s == 0 and stopper.done()
    async with ctx.pool.acquire() as conn:
        logged = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'node.drain' AND target = $1",
                                     f"node:{spare_node.node_id}")
    assert logged == 1
    code, _, err = await proctor("drain", spare_node.node_id)
    assert code == 1 and "no live node" in err


def test_proctor_up_gives_a_node_time_to_drain_and_restarts_a_drained_one(tmp_path: Path) -> None:
    settings = Settings.from_env({"DRAIN_TIMEOUT_S": "600", "DRAIN_MOVE_TIMEOUT_S": "45",
                                  "PROCTOR_DATA_DIR": str(tmp_path)})
    assert settings.media_stop_grace_s == 600 + 45 + 60  # what `proctor up` waits after SIGTERM; compose/k8s too
    with pytest.raises(SettingsError, match="DRAIN_TIMEOUT_S"):
        Settings.from_env({"DRAIN_TIMEOUT_S": "-1"})
    # A media child that exits 0 has drained (`proctor node drain`): started again at once, no crash backoff.
    env = dict(os.environ, PROCTOR_DATA_DIR=str(tmp_path))
    child = Child("media", ["settings", "--table"], env=env)
    child.start()
    assert child.proc is not None and child.proc.wait(60) == 0
    first = child.proc
    _keep_alive(child)
    assert child.proc is not first and child.restarts == 0
    child.proc.wait(60)


async def test_a_page_that_does_not_move_is_let_go_after_the_move_timeout(ctx: Context, spare_node: MediaNode,
                                                                          web_server: RunningApp,
                                                                          admin_token: str) -> None:
    """A candidate page that ignores "move" (an old cached page, a frozen tab): asked once on its data channel, then
    closed when DRAIN_MOVE_TIMEOUT_S passes, its media time kept and its session let go, so its return is placed
    afresh on another node (continuing the timeline) instead of as the survivor of a dead node."""
    frames = [face_canvas() for _ in range(20)]
    clip = await asyncio.to_thread(encode_clip, frames, 10, 150_000, 10)
    sid = (await create_session(web_server.url, admin_token, candidate=f"Old Page {uuid.uuid4().hex[:6]}"))["id"]
    pc = RTCPeerConnection()
    received: list[Any] = []
    pc.addTrack(ReplayTrack("video", [d for d, _ in clip.video], 1 / clip.fps, 90_000 // clip.fps, VIDEO_TB))
    channel = pc.createDataChannel("signals")
    channel.on("message", lambda message: received.append(json.loads(message)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            client = NodeClient.for_settings(ctx.settings, http)
            status, answer = await client.call("POST", f"{spare_node.url}/offer", {
                "session_id": sid, "sdp": pc.localDescription.sdp, "type": "offer"})
            assert status == 200, answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

            async def streaming() -> bool:
                stream = spare_node.streams.get(sid)
                return bool(stream and stream.stats.video_frames > 5 and stream.page_channel_open)

            await wait_for(streaming, within=30, interval=0.2)
            stream = spare_node.streams[sid]
            spare_node.drain.move_timeout_s = 2
            status, _ = await client.call("POST", f"{spare_node.url}/drain", {"timeout_s": 0})
            assert status == 202
            await asyncio.wait_for(spare_node.drain.finished.wait(), 30)
        assert any(m.get("type") == "move" for m in received), received  # the page was asked
        summary = spare_node.drain.summary()
        assert [m["outcome"] for m in summary["moves"]] == ["not moved"]
        assert sid not in spare_node.streams and stream.closed.is_set()
        assert await ctx.redis.get(f"proctor:session:{sid}:node") is None  # let go: placed afresh when it returns
        async with ctx.pool.acquire() as conn:
            duration = await conn.fetchval("SELECT duration_s FROM sessions WHERE id = $1", sid)
        assert duration == pytest.approx(stream.clock.end_s, abs=1e-6) and duration > 0.4
    finally:
        await pc.close()
