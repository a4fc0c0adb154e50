"""The media node registry in Redis, and the choice of node for a new stream.

Each `proctor media` process keeps a hash `proctor:node:<id>` alive with a heartbeat (address of its internal
API, streams it carries, capacity); the key expires a few seconds after the node stops, so a dead node is
never chosen. Signaling picks the live node with the lowest load that has room.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from proctor.redis import NODE_KEY, NODE_PATTERN, NODE_TTL_S


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    url: str  # internal API base URL, e.g. http://10.0.0.5:8090
    streams: int
    capacity: int
    cpu: float = 0.0
    heartbeat_at: float = 0.0

    @property
    def load(self) -> float:
        return self.streams / self.capacity if self.capacity else 1.0

    @property
    def has_room(self) -> bool:
        return self.streams < self.capacity

    def public(self) -> dict[str, Any]:
        return asdict(self)


async def register(redis: aioredis.Redis, node: NodeInfo) -> None:
    key = NODE_KEY.format(node_id=node.node_id)
    mapping = {k: str(v) for k, v in asdict(node).items()}
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


PLACED_KEY = "proctor:placed:{node_id}"
PLACED_TTL_S = 2  # a node's heartbeat reports its real count within a second


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
        node = _parse(await redis.hgetall(key))
        if node is not None:
            placed = int(await redis.get(PLACED_KEY.format(node_id=node.node_id)) or 0)
            nodes.append(replace(node, streams=node.streams + placed) if placed else node)
    return sorted(nodes, key=lambda n: n.node_id)


def choose(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """The least-loaded node with room; `prefer` (the node a reconnecting session was on) wins while it has room."""
    with_room = [n for n in nodes if n.has_room]
    if prefer is not None:
        for node in with_room:
            if node.node_id == prefer:
                return node
    if not with_room:
        return None
    return min(with_room, key=lambda n: (n.load, n.streams, n.cpu, n.node_id))
