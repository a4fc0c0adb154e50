"""The live WebSocket's fan-out: one Redis subscription per process, bounded per-socket queues (oldest dropped)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from proctor.context import Context
from proctor.embedded import EmbeddedRedis
from proctor.redis import LIVE_CHANNEL, connect
from tests.support.servers import RunningApp
from web.live import LiveHub, Subscriber


def test_slow_socket_drops_oldest() -> None:
    sub = Subscriber(3)
    for i in range(5):
        sub.offer(str(i))
    assert sub.dropped == 2
    assert [sub.queue.get_nowait() for _ in range(3)] == ["2", "3", "4"]


async def _subscribers(ctx: Context) -> int:
    return dict(await ctx.redis.pubsub_numsub(LIVE_CHANNEL)).get(LIVE_CHANNEL, 0)


async def test_one_subscription_fans_out(web_server: RunningApp, ctx: Context, proctor_token: str) -> None:
    url = f"{web_server.url}/api/live"
    auth = {"Authorization": f"Bearer {proctor_token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.ws_connect(url) as first:
            assert (await first.receive_json(timeout=5))["type"] == "hello"
            one = await _subscribers(ctx)
            async with http.ws_connect(url) as second, http.ws_connect(url) as third:
                for ws in (second, third):
                    assert (await ws.receive_json(timeout=5))["type"] == "hello"
                assert await _subscribers(ctx) == one  # three sockets, still one Redis subscription
                message = {"type": "session", "session_id": "x", "status": "live", "at": 1.0}
                await ctx.redis.publish(LIVE_CHANNEL, json.dumps(message))
                got = await asyncio.gather(*(ws.receive_json(timeout=5) for ws in (first, second, third)))
                assert got == [message] * 3


async def test_monitors_are_told_to_resync_after_a_redis_restart(tmp_path: Path) -> None:
    """Alerts published while Redis was down never reach a monitor: the hub says so twice (reconnecting, then
    resync once subscribed again), and what is published afterwards flows again."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = await asyncio.to_thread(server.start)
    redis = connect(url)
    hub = LiveHub()
    try:
        sub = await hub.subscribe(redis)
        await asyncio.to_thread(server.stop)
        assert json.loads(await asyncio.wait_for(sub.queue.get(), 10)) == {"type": "hub", "state": "reconnecting"}
        await asyncio.to_thread(server.start)
        assert json.loads(await asyncio.wait_for(sub.queue.get(), 15)) == {"type": "hub", "state": "resync"}
        message = {"type": "session", "session_id": "y", "status": "live", "at": 2.0}
        await redis.publish(LIVE_CHANNEL, json.dumps(message))
        assert json.loads(await asyncio.wait_for(sub.queue.get(), 5)) == message
    finally:
        await hub.close()
        await redis.aclose()
        await asyncio.to_thread(server.stop)
