"""Archived sessions for the archiver tests: a session with stored segments made without a candidate, the checks
that a finalized session left exactly one master of the right duration, and a poll for all segments stored.

assert_one_exact_master compares durations with pytest.approx, so this module imports pytest.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from archiver.webm import WebmWriter, probe
from bench.synthetic import encode_clip
from proctor.context import Context
from tests.support.media import face_canvas


async def recorded_session(ctx: Context, tmp_path: Path, segments: int, status: str) -> tuple[str, float]:
    """A session with `segments` stored 2-s segments (60 frames each); returns (session id, segment seconds)."""
    clip = await asyncio.to_thread(encode_clip, [face_canvas()] * 60, 30, 300_000, 30)
    one = tmp_path / "seg.webm"
    with WebmWriter(one, 640, 480) as writer:
        for i, (data, key) in enumerate(clip.video[:60]):
            writer.write_video(data, round(i * 1000 / 30), round((i + 1) * 1000 / 30) - round(i * 1000 / 30), key)
    seg_s = probe(one).duration_s
    async with ctx.pool.acquire() as conn:
        sid = str(await conn.fetchval(
            "INSERT INTO sessions (candidate, exam, status, join_nonce, join_expires_at, ended_at) "
            "VALUES ('crash', 'e', $1, 'n', now(), CASE WHEN $1 = 'ended' THEN now() END) RETURNING id", status))
        for idx in range(segments):
            key = f"sessions/{sid}/segments/{idx:06d}.webm"
            await ctx.storage.put_file(key, one)
            await conn.execute("INSERT INTO segments (session_id, idx, start_s, end_s, frames, storage_key, state) "
                               "VALUES ($1, $2, $3, $4, 60, $5, 'stored')", sid, idx, idx * seg_s, (idx + 1) * seg_s,
                               key)
    return sid, seg_s


async def assert_one_exact_master(ctx: Context, sid: str, duration_s: float) -> None:
    async with ctx.pool.acquire() as conn:
        masters = await conn.fetch("SELECT * FROM master_videos WHERE session_id = $1", sid)
    assert len(masters) == 1
    assert masters[0]["duration_s"] == pytest.approx(duration_s, abs=0.001)
    assert [o.key for o in await ctx.storage.list(f"sessions/{sid}/")] == [f"sessions/{sid}/master.webm"]
    copy = Path(tempfile.mkdtemp()) / "master.webm"
    await ctx.storage.download(f"sessions/{sid}/master.webm", copy)
    assert probe(copy).duration_s == pytest.approx(duration_s, abs=0.001)


async def all_segments_stored(ctx: Context, session_id: str) -> list[Any] | None:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 ORDER BY idx", session_id)
    return rows if rows and all(r["state"] in ("stored", "merged") for r in rows) else None
