"""Publishing live-monitor messages (core.live) on Redis, where every web process relays them to proctors."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from core.live import Published
from proctor.redis import LIVE_CHANNEL

log = logging.getLogger(__name__)


async def publish(redis: aioredis.Redis, message: Published) -> None:
    """Publish; raises what Redis raises (callers that must not fail use `publish_quietly`)."""
    await redis.publish(LIVE_CHANNEL, message.dumps())


async def publish_quietly(redis: aioredis.Redis, message: Published) -> bool:
    """Publish, or log why not: a live message is best effort once what it announces is stored."""
    try:
        await publish(redis, message)
        return True
    except Exception as exc:
        log.warning("live %s message for session %s not published: %s", message.type, message.session_id, exc)
        return False
