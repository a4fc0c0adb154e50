"""AUDIO_PTIME_MS end to end with the load generator (bench/synthetic.py senders, which do what Chromium does with an
answer's `a=ptime`): with the default the node's answer asks for 60-ms Opus frames and the node receives ~17
packets per second of audio, each 60 ms by its TOC; with 20 the answer is as before and the node receives 50.
Real Chromium: tests/test_audio_ptime_browser.py."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import aiohttp
import pytest

from bench.synthetic import connect_sender, encode_clip
from media_server.node import MediaNode
from proctor.context import Context
from tests.support.media import face_canvas
from tests.support.opus_packets import record_stream_audio
from tests.support.servers import RunningApp
from tests.support.sessions import create_session


@pytest.mark.parametrize("ptime_ms", [60, 20])
async def test_the_sender_sends_the_frame_length_the_answer_asks(
        web_server: RunningApp, media_node: MediaNode, admin_token: str, ctx: Context, ptime_ms: int) -> None:
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    clip = await asyncio.to_thread(encode_clip, [face_canvas()] * 30, 30, 300_000, 30)
    session = await create_session(web_server.url, admin_token, candidate=f"Pat Ptime {ptime_ms}")
    sid, token = session["id"], session["join_url"].rsplit("/", 1)[1]
    full = media_node.settings
    media_node.settings = replace(full, audio_ptime_ms=ptime_ms)
    try:
        async with aiohttp.ClientSession() as http:
            pc = await connect_sender(clip, f"{web_server.url}/api/sessions/{sid}/offer", token, http)
            try:
                record = await record_stream_audio(media_node, sid, seconds=3.0, within=30)
            finally:
                await pc.close()
    finally:
        media_node.settings = full
    rate = record.packets_per_second()
    print(f"AUDIO_PTIME_MS={ptime_ms}: {len(record.frames)} packets in {record.seconds():.2f} s of audio, "
          f"{rate:.1f}/s, TOC durations {record.durations_ms()}")
    assert record.durations_ms() == {ptime_ms: len(record.frames)}
    assert rate == pytest.approx(1000 / ptime_ms, rel=0.05)
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(record.frames)}
    assert steps == {48 * ptime_ms}  # RTP time advances one packet's length a packet: nothing lost, none made up
