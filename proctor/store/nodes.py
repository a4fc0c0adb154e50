"""The media node registry in Redis, and the slots offers reserve on a node.

Each `proctor media` process keeps a hash `proctor:node:<id>` alive with a heartbeat (address of its internal
API, streams it carries, capacity) and the set of sessions it carries; the keys expire a few seconds after the
node stops, so a dead node is never chosen. Signaling picks among `live_nodes` with core.nodes.choose.

Admission is atomic: before relaying an offer, signaling `reserve`s a slot on the node with one Lua script that
counts the streams the node last reported plus the reservations not yet reported, and refuses at capacity. A
reservation lasts until the node's heartbeat reports the session among its own (the heartbeat removes it in
the same transaction that raises the count), until `release` (the offer failed) or for RESERVATION_TTL_S (the
relay died). A session the node already carries (a page reload) needs no second slot. The node also refuses
beyond capacity by itself (media_server/node.py).

A node that admits by load (ADMISSION=load, media_server/admission.py) also reports its `headroom`: how many more
streams its latest measurement says it can analyse, already net of the streams it carries (those not yet in its
measurement counted at its estimated cost). The same script refuses once the reservations not yet reported reach
that headroom, so a burst of offers between two heartbeats cannot take more than the node measured; the heartbeat
that reports a reserved session carries a headroom that counts it.

A draining node (media_server/drain.py) says so in its hash: `reserve` refuses it (even for a session it carries:
a reload must go elsewhere) in the same script, so no signaling process can place an offer on it after the beat
that announced the drain. `live_nodes` still lists it (with `draining` set): the streams it carries are live,
interventions must find it and a session it carries is not "on a dead node".
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import asdict, replace
from typing import Any, cast

import redis.asyncio as aioredis

from core.nodes import NodeInfo
from proctor.redis import NODE_KEY, NODE_PATTERN, NODE_TTL_S

# Not under proctor:node:*, which live_nodes reads as node hashes.
CARRIED_KEY = "proctor:carried:{node_id}"  # set: the sessions the node reported in its last heartbeat
RESERVED_KEY = "proctor:reserved:{node_id}"  # sorted set: session -> expiry (unix time) of its reservation
# Longer than an offer relay can take (node timeout 15 s) plus a heartbeat.
RESERVATION_TTL_S = 30

RESERVED, CARRIED, REFUSED = "reserved", "carried", "refused"

# KEYS: node hash, reservations, carried set. ARGV: session, ttl seconds, "1" to check capacity (and headroom).
# Returns 1 (reserved), 2 (the node carries it already), 0 (no room, no headroom, draining, or the node is gone).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local node = redis.call('HMGET', KEYS[1], 'streams', 'capacity', 'draining', 'admission', 'headroom')
if not node[1] or not node[2] then return 0 end
if node[3] == 'True' then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 2 end
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) and ARGV[3] == '1' then
  local reserved = redis.call('ZCARD', KEYS[2])
  if tonumber(node[1]) + reserved >= tonumber(node[2]) then return 0 end
  if node[4] == 'load' and reserved >= (tonumber(node[5]) or 0) then return 0 end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if redis.call('TTL', KEYS[2]) < ttl + 1 then redis.call('EXPIRE', KEYS[2], math.ceil(ttl) + 1) end
return 1
"""


async def register(redis: aioredis.Redis, node: NodeInfo, sessions: Collection[str] = ()) -> None:
    """The heartbeat: the node's hash and the sessions it carries (`node.streams` of them); their
    reservations end in the same transaction, as the count now includes them."""
    key = NODE_KEY.format(node_id=node.node_id)
    carried = CARRIED_KEY.format(node_id=node.node_id)
    mapping: dict[Any, Any] = {k: str(v) for k, v in asdict(node).items()}
    mapping["heartbeat_at"] = str(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, NODE_TTL_S)
        pipe.delete(carried)
        if sessions:
            pipe.sadd(carried, *sessions)
            pipe.expire(carried, NODE_TTL_S)
            pipe.zrem(RESERVED_KEY.format(node_id=node.node_id), *sessions)
        await pipe.execute()


async def unregister(redis: aioredis.Redis, node_id: str) -> None:
    await redis.delete(NODE_KEY.format(node_id=node_id), CARRIED_KEY.format(node_id=node_id),
                       RESERVED_KEY.format(node_id=node_id))


async def _reserve(redis: aioredis.Redis, node_id: str, member: str, ttl_s: float, check: bool) -> str:
    keys = [NODE_KEY.format(node_id=node_id), RESERVED_KEY.format(node_id=node_id),
            CARRIED_KEY.format(node_id=node_id)]
    result = int(await redis.eval(_RESERVE, 3, *keys, member, str(ttl_s), "1" if check else "0"))
    return {1: RESERVED, 2: CARRIED}.get(result, REFUSED)


async def reserve(redis: aioredis.Redis, node_id: str, session_id: str,
                  ttl_s: float = RESERVATION_TTL_S) -> str:
    """Hold a slot on the node for an offer about to be relayed: RESERVED, CARRIED (the node has the session
    already: no second slot) or REFUSED (full, draining, or gone). Atomic across every signaling process."""
    return await _reserve(redis, node_id, session_id, ttl_s, check=True)


async def release(redis: aioredis.Redis, node_id: str, session_id: str) -> None:
    """Give back a reservation whose offer the node did not take."""
    await redis.zrem(RESERVED_KEY.format(node_id=node_id), session_id)


def _parse(data: dict[str, str]) -> NodeInfo | None:
    try:
        rate = data.get("analysis_rate", "None")
        return NodeInfo(data["node_id"], data["url"], int(data["streams"]), int(data["capacity"]),
                        float(data.get("cpu", 0)), float(data.get("heartbeat_at", 0)),
                        draining=data.get("draining") == "True",
                        # A node from before issue 14 reports none of these: it admits by count.
                        admission=data.get("admission", "count"), headroom=int(data.get("headroom", 0)),
                        cpus=float(data.get("cpus", 0)), cpu_util=float(data.get("cpu_util", 0)),
                        stream_cost=float(data.get("stream_cost", 0)), lag_p99_ms=float(data.get("lag_p99_ms", 0)),
                        analysis_rate=None if rate == "None" else float(rate), reason=data.get("reason", ""))
    except (KeyError, ValueError):
        return None


async def live_nodes(redis: aioredis.Redis) -> list[NodeInfo]:
    """Live nodes, each with its reported streams plus its current reservations (and its headroom less them);
    draining ones too (with `draining` set: core.nodes.choose skips them)."""
    nodes = []
    async for key in redis.scan_iter(match=NODE_PATTERN, count=100):
        node = _parse(cast(dict[str, str], await redis.hgetall(key)))  # decode_responses: str
        if node is not None:
            reserved = int(await redis.zcount(RESERVED_KEY.format(node_id=node.node_id), time.time(), "+inf"))
            nodes.append(replace(node, streams=node.streams + reserved, headroom=max(0, node.headroom - reserved))
                         if reserved else node)
    return sorted(nodes, key=lambda n: n.node_id)
