"""`proctor worker`: background jobs that run on any number of machines.

Roles: `sweep` ends sessions whose candidate stayed disconnected longer than DISCONNECT_TIMEOUT_S (the
update is conditional, so any number of workers can sweep at once and each session ends exactly once).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from proctor.context import Context
from proctor.settings import Settings
from signaling import sessions

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0
ROLES = ("sweep",)


async def sweep_disconnected(ctx: Context) -> list[str]:
    """End live sessions with no media for DISCONNECT_TIMEOUT_S; returns the ids ended."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id FROM sessions WHERE status = 'live' AND coalesce(last_seen_at, started_at) "
            "< now() - make_interval(secs => $1)", float(ctx.settings.disconnect_timeout_s))
        ended = []
        for row in rows:
            if await sessions.end(conn, ctx.redis, str(row["id"]), "candidate disconnected"):
                ended.append(str(row["id"]))
    for session_id in ended:
        log.info("session %s ended: disconnected for %ss", session_id, ctx.settings.disconnect_timeout_s)
    return ended


async def _sweeper(ctx: Context) -> None:
    while True:
        try:
            await sweep_disconnected(ctx)
        except Exception as exc:  # a database or Redis outage: try again next round
            log.warning("sweep failed: %s", exc)
        await asyncio.sleep(SWEEP_INTERVAL_S)


async def run(settings: Settings, roles: list[str]) -> None:
    ctx = await Context.open(settings, pool_size=4)
    tasks = []
    if "sweep" in roles:
        tasks.append(asyncio.create_task(_sweeper(ctx)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker running roles: %s", ", ".join(roles))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctx.close()


def main(settings: Settings, roles: str) -> int:
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROLES]
    if unknown or not wanted:
        raise SystemExit(f"proctor worker: unknown role(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(ROLES)}")
    asyncio.run(run(settings, wanted))
    return 0
