"""Redis access and the key names every room agrees on."""

from __future__ import annotations

import redis.asyncio as aioredis

# Media nodes: a hash per node (address, load, capacity), refreshed by a heartbeat, expiring when it stops.
NODE_KEY = "proctor:node:{node_id}"
NODE_PATTERN = "proctor:node:*"
NODE_TTL_S = 6
# Live alerts and session state changes for proctors' monitors.
LIVE_CHANNEL = "proctor:live"
# Archive job streams (consumer groups) and per-session locks.
MERGE_STREAM = "proctor:jobs:merge"
FINALIZE_STREAM = "proctor:jobs:finalize"
SESSION_LOCK = "proctor:lock:session:{session_id}"
# Which node carries a session right now (one offer at a time, reconnects find their node).
SESSION_NODE = "proctor:session:{session_id}:node"
OFFER_LOCK = "proctor:lock:offer:{session_id}"


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=15)
# Control messages to media nodes, e.g. {"session_id": ..., "action": "end"}; every node listens.
SESSION_CONTROL = "proctor:control:session"
# The live monitor's thumbnail of a stream: base64 JPEG, refreshed by the media node, expiring when it stops.
THUMBNAIL_KEY = "proctor:thumb:{session_id}"
