"""Redis access and the key names every room agrees on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

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
# Control messages to media nodes, e.g. {"session_id": ..., "action": "end"}; every node listens.
SESSION_CONTROL = "proctor:control:session"
# The live monitor's thumbnail of a stream: base64 JPEG, refreshed by the media node, expiring when it stops.
THUMBNAIL_KEY = "proctor:thumb:{session_id}"


def connect(url: str) -> aioredis.Redis:
    """A client that decodes replies to str (every caller here reads str). redis-py's type hints cannot express
    decode_responses, so its replies are typed bytes | str: `text` and `stream_fields` say what they are."""
    return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=15)


def text(reply: Any) -> str | None:
    """A reply of a client made by `connect` (decode_responses): already str, or None."""
    return cast(str | None, reply)


def stream_fields(fields: Mapping[str, str]) -> dict[Any, Any]:
    """A stream entry's fields as redis-py's XADD hint takes them (its dict types are invariant)."""
    return dict(fields)
