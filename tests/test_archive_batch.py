"""ARCHIVE_BATCH_MS: the segmenter hands its writes to the archive thread in batches, not one hand-off per frame,
and every frame still reaches the segments, in order, with the same timestamps (archiver/segmenter.py)."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from archiver.segmenter import Archive
from archiver.webm import probe
from bench.synthetic import EncodedClip, encode_clip
from media_server.outlets import EncodedFrame
from proctor.context import Context
from tests.support.media import face_canvas
from tests.support.waiting import wait_for
from tests.test_segmenter import FakeStream, _session, _stored

FPS = 30


class CountingExecutor(ThreadPoolExecutor):
    """The archive's real one-thread executor, counting the hand-offs to its thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="archive")
        self.submits = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submits += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def clip() -> EncodedClip:
    import numpy as np

    base = face_canvas()
    rng = np.random.default_rng(4)
    frames = [np.clip(np.roll(base, i % 16, axis=1).astype(np.int16)
                      + rng.integers(-8, 9, base.shape, dtype=np.int16), 0, 255).astype(np.uint8)
              for i in range(FPS * 2)]
    return encode_clip(frames, fps=FPS, bitrate=400_000, gop=FPS)


async def _archive(ctx: Context, tmp_path: Path, batch_ms: int) -> tuple[Archive, CountingExecutor]:
    settings = replace(ctx.settings, segment_seconds=2, data_dir=tmp_path / f"data{batch_ms}",
                       archive_batch_ms=batch_ms)
    archive = Archive(Context(settings, ctx.pool, ctx.redis, ctx.storage))
    executor = archive.executor = CountingExecutor()
    await archive.start(f"test-{uuid.uuid4().hex[:6]}")
    return archive, executor


async def _feed_in_real_time(archive: Archive, clip: EncodedClip, session_id: str, seconds: float) -> FakeStream:
    """Each video frame and 20-ms audio packet in its own loop callback, at its time (as the node's tap does)."""
    stream = FakeStream(session_id)
    archive.attach(stream)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    start = loop.time()
    audio_i = 0
    for i in range(int(seconds * FPS)):
        t = i / FPS
        await asyncio.sleep(max(0.0, start + t - loop.time()))
        stream.clock.end_s = t
        stream.feed(EncodedFrame("video", "VP8", clip.video[i % len(clip.video)][0], i * 3000, 90_000), t)
        while audio_i * 0.02 <= t:
            stream.feed(EncodedFrame("audio", "opus", clip.audio[audio_i % len(clip.audio)], audio_i * 960,
                                     48_000), audio_i * 0.02)
            audio_i += 1
    stream.clock.end_s = seconds
    await stream.close()  # the last frame, fed a moment ago, is still in the pending batch: close hands it over
    return stream


@pytest.mark.parametrize("batch_ms", [0, 100])
async def test_writes_reach_the_archive_thread_in_batches_and_every_frame_is_kept(
        ctx: Context, clip: EncodedClip, tmp_path: Path, batch_ms: int) -> None:
    seconds = 3.0
    archive, executor = await _archive(ctx, tmp_path, batch_ms)
    try:
        session_id = await _session(ctx)
        await _feed_in_real_time(archive, clip, session_id, seconds)
        handoffs = executor.submits
        rows = await wait_for(lambda: _stored(ctx, session_id, 2), within=30)
    finally:
        await archive.stop()
    writes = seconds * FPS + seconds * 50  # every video frame and audio packet is one write
    if batch_ms:
        # One hand-off per 100-ms window (about 30 in 3 s) and one at the close, not one per write (240).
        assert handoffs <= seconds * 1000 / batch_ms * 1.5 + 5, handoffs
    else:
        assert handoffs >= writes  # the off switch: one hand-off per write, as before
    # Batched or not, the same segments: cut at the 2-s keyframe, every frame in them, exact durations.
    assert [(r["start_s"], round(r["end_s"], 6)) for r in rows] == [(0.0, 2.0), (2.0, 3.0)]
    assert sum(r["frames"] for r in rows) == seconds * FPS
    for row in rows:
        path = tmp_path / f"{batch_ms}-{row['idx']}.webm"
        await ctx.storage.download(row["storage_key"], path)
        info = probe(path, decode=True)
        assert info.first_is_keyframe and info.decode_errors == 0 and info.has_cues
        assert info.video_frames == info.decoded_frames == row["frames"]
        assert info.duration_s == pytest.approx(row["end_s"] - row["start_s"], abs=0.0015)
        assert info.audio_packets >= (row["end_s"] - row["start_s"]) * 50 - 2


async def test_stop_hands_over_a_pending_batch(ctx: Context, clip: EncodedClip, tmp_path: Path) -> None:
    """Writes still waiting for their batch window when the archive stops are written before the thread ends."""
    archive, executor = await _archive(ctx, tmp_path, 1000)
    ran: list[int] = []
    for i in range(5):
        archive.write(ran.append, i)
    assert ran == []  # within the window: nothing handed over yet
    await archive.stop()
    assert ran == [0, 1, 2, 3, 4]
