"""The media node registry in Redis.

Each `proctor media` process keeps a hash `proctor:node:<id>` alive with a heartbeat (address of its internal
API, streams it carries, capacity); the key expires a few seconds after the node stops, so a dead node is
never chosen. Signaling picks among `live_nodes` with core.nodes.choose.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any, cast

import redis.asyncio as aioredis

from core.nodes import NodeInfo
from proctor.redis import NODE_KEY, NODE_PATTERN, NODE_TTL_S

PLACED_KEY = "proctor:placed:{node_id}"
PLACED_TTL_S = 2  # a node's heartbeat reports its real count within a second


async def register(redis: aioredis.Redis, node: NodeInfo) -> None:
    key = NODE_KEY.format(node_id=node.node_id)
    mapping: dict[Any, Any] = {k: str(v) for k, v in asdict(node).items()}
    mapping["heartbeat_at"] = str(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, NODE_TTL_S)
        await pipe.execute()


async def unregister(redis: aioredis.Redis, node_id: str) -> None:
    await redis.delete(NODE_KEY.format(node_id=node_id))


def _parse(data: dict[str, str]) -> NodeInfo | None:
    try:
        return NodeInfo(data["node_id"], data["url"], int(data["streams"]), int(data["capacity"]),
                        float(data.get("cpu", 0)), float(data.get("heartbeat_at", 0)))
    except (KeyError, ValueError):
        return None


async def note_placement(redis: aioredis.Redis, node_id: str) -> None:
    """Count a stream just sent to a node until its heartbeat reports it: a burst of offers within one
    heartbeat would otherwise all see the same stale loads and pile onto one node."""
    key = PLACED_KEY.format(node_id=node_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, PLACED_TTL_S)
        await pipe.execute()


async def live_nodes(redis: aioredis.Redis) -> list[NodeInfo]:
    nodes = []
    async for key in redis.scan_iter(match=NODE_PATTERN, count=100):
        node = _parse(cast(dict[str, str], await redis.hgetall(key)))  # decode_responses: str
        if node is not None:
            placed = int(await redis.get(PLACED_KEY.format(node_id=node.node_id)) or 0)
            nodes.append(replace(node, streams=node.streams + placed) if placed else node)
    return sorted(nodes, key=lambda n: n.node_id)
