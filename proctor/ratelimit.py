"""Per-key rate limits for HTTP routes: a fixed window counted in Redis, shared by every web process.

A caller over the limit gets 429 with Retry-After (the seconds left in its window) and a JSON reason; signaling
limits offers per session with it, the candidate's photo routes their uploads per session.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from aiohttp import web

# One namespace for every limit's counters: proctor:rate:<what>:<whose>.
KEY = "proctor:rate:{what}:{whose}"


async def limit(redis: aioredis.Redis, key: str, per_window: int, what: str, window_s: int = 60) -> None:
    """At most `per_window` calls per `window_s` for `key` (fixed window from the first call), else raise a 429
    that names `what` was too many."""
    count = await redis.incr(key)
    if count == 1:
        await redis.expire(key, window_s)
    if count > per_window:
        ttl = await redis.ttl(key)
        if ttl < 0:  # the expiry was lost (the first caller died between INCR and EXPIRE): set it now
            await redis.expire(key, window_s)
            ttl = window_s
        window = "a minute" if window_s == 60 else f"{window_s} s"
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": f"too many {what}; retry in {window}"}), content_type="application/json",
            headers={"Retry-After": str(max(1, ttl))})
