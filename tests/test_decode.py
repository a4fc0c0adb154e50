"""The node's shared VP8 decoding thread: frames decoded in order per stream, only the frames a subscriber is
due delivered to the event loop, decoding starts and restarts at keyframes (asking the browser for one), and
a stream that falls seconds behind drops its backlog instead of growing it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from media_server import decode
from media_server.decode import DecodePool, FrameSampler
from tests.support.webm import GOP, encode_video, read_number

VIDEO_CLOCK = 90_000


class _Subscriber:
    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.got: list[tuple[float, int]] = []

    def on_frame(self, media_time_s: float, frame: Any) -> None:
        self.got.append((media_time_s, read_number(frame)))


@pytest.fixture(scope="module")
def clip() -> list[tuple[bytes, bool]]:
    return encode_video(3 * GOP, 320, 240)


def _sampler(pool: DecodePool, *subscribers: _Subscriber) -> tuple[FrameSampler, list[int]]:
    requests: list[int] = []

    async def request_keyframe() -> bool:
        requests.append(1)
        return True

    sampler = FrameSampler(lambda ts: ts / VIDEO_CLOCK)
    for subscriber in subscribers:
        sampler.subscribe(subscriber)
    sampler.start(pool, request_keyframe)
    return sampler, requests


async def _settle(sampler: FrameSampler, decoded: int) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if sampler.frames_decoded + sampler.frames_skipped >= decoded:
            await asyncio.sleep(0.05)  # the last deliveries reach the loop
            return
    raise AssertionError(f"decoded {sampler.frames_decoded} of {decoded}")


async def test_each_subscriber_gets_frames_at_its_rate(clip: list[tuple[bytes, bool]]) -> None:
    pool = DecodePool()
    pool.start(asyncio.get_running_loop())
    try:
        fast, slow = _Subscriber(10), _Subscriber(2)
        sampler, requests = _sampler(pool, fast, slow)
        for i, (data, _) in enumerate(clip):
            sampler.submit(data, i * VIDEO_CLOCK // 30)
        await _settle(sampler, len(clip))
    finally:
        pool.stop()
    assert sampler.frames_decoded == len(clip) and sampler.frames_skipped == 0 and not requests
    # 30 fps in, every 3rd frame to the 10-fps subscriber, every 15th to the 2-fps one: exact, in order.
    assert [n for _, n in fast.got] == list(range(0, len(clip), 3))
    assert [n for _, n in slow.got] == list(range(0, len(clip), 15))
    assert all(abs(t - n / 30) < 1e-6 for t, n in fast.got)
    assert sampler.frames_sampled == len(fast.got) + len(slow.got)


async def test_frames_above_the_base_temporal_layer_are_not_decoded(clip: list[tuple[bytes, bool]]) -> None:
    """With L1T3 layers (0,2,1,2...) only base-layer frames reach the decoder; the subscribers get base-layer frames
    at their rate (a 3.75-fps one: every 8th frame is due, a base frame each time). Which pictures TL0-only
    decoding gives is proved against Chromium's real layers in tests/test_temporal_layers_browser.py."""
    pool = DecodePool()
    pool.start(asyncio.get_running_loop())
    try:
        subscriber = _Subscriber(3.75)
        sampler, requests = _sampler(pool, subscriber)
        layers = [(0, 2, 1, 2)[i % 4] for i in range(len(clip))]
        for i, (data, _) in enumerate(clip):
            sampler.submit(data, i * VIDEO_CLOCK // 30, layers[i])
        base = layers.count(0)
        await _settle(sampler, base)
    finally:
        pool.stop()
    assert sampler.frames_decoded == base and sampler.frames_above_base == len(clip) - base and not requests
    # By media time (this clip has no real layers, so the pictures past its first are not meaningful here).
    assert [round(t * 30) for t, _ in subscriber.got] == list(range(0, len(clip), 8))


async def test_decoding_starts_at_a_keyframe_and_asks_for_one(clip: list[tuple[bytes, bool]]) -> None:
    pool = DecodePool()
    pool.start(asyncio.get_running_loop())
    try:
        subscriber = _Subscriber(30)
        sampler, requests = _sampler(pool, subscriber)
        # Joined mid-GOP (as after a loss): nothing decodable until the next keyframe, which is asked for.
        for i, (data, _) in enumerate(clip[5:], start=5):
            sampler.submit(data, i * VIDEO_CLOCK // 30)
        await _settle(sampler, len(clip) - 5)
    finally:
        pool.stop()
    assert sampler.frames_skipped == GOP - 5 and requests == [1]
    assert [n for _, n in subscriber.got] == list(range(GOP, len(clip)))


async def test_a_stream_far_behind_drops_its_backlog(clip: list[tuple[bytes, bool]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "MAX_BACKLOG_FRAMES", 10)
    pool = DecodePool()  # not started yet: everything submitted piles up, as behind an overloaded thread
    subscriber = _Subscriber(30)
    sampler, requests = _sampler(pool, subscriber)
    for i, (data, _) in enumerate(clip):
        sampler.submit(data, i * VIDEO_CLOCK // 30)
    assert sampler.decoder is not None and sampler.decoder.backlog == len(clip)
    pool.start(asyncio.get_running_loop())
    try:
        await _settle(sampler, len(clip))
        # The backlog was dropped, not decoded, and a keyframe asked for; the browser's answer restarts it.
        assert sampler.frames_skipped == len(clip) and sampler.frames_decoded == 0 and requests == [1]
        assert sampler.decoder.backlog == 0 and subscriber.got == []
        for i, (data, _) in enumerate(clip[:GOP], start=len(clip)):  # arriving in real time now
            sampler.submit(data, i * VIDEO_CLOCK // 30)
            await asyncio.sleep(1 / 30)
        await _settle(sampler, len(clip) + GOP)
    finally:
        pool.stop()
    assert sampler.frames_decoded == GOP and [n for _, n in subscriber.got] == list(range(GOP))


async def test_a_closed_stream_gets_nothing_more(clip: list[tuple[bytes, bool]]) -> None:
    pool = DecodePool()
    pool.start(asyncio.get_running_loop())
    try:
        subscriber = _Subscriber(30)
        sampler, _ = _sampler(pool, subscriber)
        await sampler.stop()
        for i, (data, _) in enumerate(clip):
            sampler.submit(data, i * VIDEO_CLOCK // 30)
        await asyncio.sleep(0.2)
    finally:
        pool.stop()
    assert sampler.frames_decoded == 0 and subscriber.got == []
