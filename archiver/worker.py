"""The archive's job consumers, run by `proctor worker` on any number of machines:
- `merge`: stream-copies runs of stored segments into batches (jobs queued as segments are stored);
- `finalize`: builds master.webm when a session ended (jobs queued at the end).
"""

from __future__ import annotations

import asyncio
import logging

from archiver.assemble import handler
from archiver.jobs import JobQueue, consumer_name
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM, MERGE_STREAM

log = logging.getLogger(__name__)

KINDS = ("merge", "finalize")


async def consume(ctx: Context, kind: str, stop: asyncio.Event) -> None:
    """Run `kind` jobs until `stop` is set; the job in hand is finished first."""
    stream = MERGE_STREAM if kind == "merge" else FINALIZE_STREAM
    queue = JobQueue(ctx.redis, stream, consumer=consumer_name())
    while not stop.is_set():
        try:
            await queue.ensure_group()
            await queue.run(handler(kind, ctx, queue), stop)
        except Exception as exc:  # Redis down: wait and resume; pending jobs are reclaimed later
            log.warning("%s consumer stopped (%s); restarting", kind, exc)
            await asyncio.sleep(2.0)
