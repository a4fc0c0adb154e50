"""RETENTION_DAYS: sessions older than that lose their video, snapshots, photos and events (audit-logged)."""

from __future__ import annotations

import logging

from proctor.context import Context
from proctor.store import sessions

log = logging.getLogger(__name__)

BATCH = 100  # sessions deleted per round at most: a backlog drains over a few rounds, never in one long one


async def expire_sessions(ctx: Context) -> list[str]:
    """Delete the closed sessions created more than RETENTION_DAYS ago; returns the ids deleted."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id::text FROM sessions WHERE created_at < now() - make_interval(days => $1) "
            "AND status NOT IN ('created', 'live') ORDER BY created_at LIMIT $2", ctx.settings.retention_days, BATCH)
    expired = []
    for row in rows:
        if await sessions.delete(ctx, row["id"], actor="retention",
                                 reason=f"older than {ctx.settings.retention_days} days"):
            expired.append(row["id"])
    if expired:
        log.info("retention: deleted %d sessions older than %d days", len(expired), ctx.settings.retention_days)
    return expired
