"""AUDIO_PTIME_MS in real headless Chromium (issue 14: fewer audio packets): the node's answer carries
`a=ptime:60`, and Chromium's Opus encoder, which takes its frame length from the remote description's ptime, sends
60-ms packets: well under 25 a second of audio (50 without), each one 60 ms by its TOC byte; the archived segments
keep each packet's duration, so their audio plays as long as their video. With AUDIO_PTIME_MS=20 the answer has no
ptime and Chromium sends its 50 packets a second, as before. The fake microphone is Chromium's beep."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import pytest

from media_server.node import MediaNode
from proctor.context import Context
from tests.support.browser import have_chromium, join_and_start
from tests.support.opus_packets import AudioRecord, record_stream_audio
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")]


async def _candidate(web_server: RunningApp, media_node: MediaNode, browser: Any, admin_token: str,
                     name: str, ptime_ms: int) -> tuple[str, AudioRecord]:
    """A candidate who joins a node answering with AUDIO_PTIME_MS=ptime_ms and streams until 4 s of their audio (RTP
    time) reached the node's encoded outlet."""
    session = await create_session(web_server.url, admin_token, candidate=name)
    sid = session["id"]
    full = media_node.settings
    media_node.settings = replace(full, audio_ptime_ms=ptime_ms)
    page = await browser.new_page()
    try:
        await join_and_start(page, session["join_url"])
        record = await record_stream_audio(media_node, sid, seconds=4.0, within=60)
    finally:
        await page.close()
        media_node.settings = full
    print(f"{name}: {len(record.frames)} packets in {record.seconds():.2f} s of audio, "
          f"{record.packets_per_second():.1f}/s, TOC durations {record.durations_ms()}")
    return sid, record


async def _segments(ctx: Context, sid: str, media_node: MediaNode) -> list[Any] | None:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM segments WHERE session_id = $1 ORDER BY idx", sid)
    done = rows and sid not in media_node.streams and all(r["state"] in ("stored", "merged") for r in rows)
    return list(rows) if done else None


async def _check_archive(ctx: Context, media_node: MediaNode, sid: str, tmp_path: Path, ptime_ms: int) -> None:
    """Each archived packet lasts its TOC's length, and each whole segment's audio decodes to as long as its video
    (within a few hundred ms: the audio starts at the first packet after the cut)."""
    rows = await wait_for(lambda: _segments(ctx, sid, media_node), within=60)
    checked = 0
    for row in rows:
        path = tmp_path / f"{ptime_ms}-{row['idx']}.webm"
        await ctx.storage.download(row["storage_key"], path)
        with av.open(str(path)) as container:
            if not container.streams.audio:
                continue
            packets = [p for p in container.demux(container.streams.audio[0]) if p.pts is not None]
        with av.open(str(path)) as container:
            audio_s = sum(f.samples for f in container.decode(audio=0)) / 48_000
        video_s = row["end_s"] - row["start_s"]
        print(f"segment {row['idx']}: video {video_s:.3f} s, audio {audio_s:.3f} s in {len(packets)} packets, "
              f"pts {packets[0].pts if packets else None}..{packets[-1].pts if packets else None} ms")
        if video_s < 1.0:  # the stream's last, cut short by the page closing: too little to compare
            continue
        assert packets and {p.duration for p in packets} == {ptime_ms}
        assert audio_s == pytest.approx(video_s, abs=0.3)
        checked += 1
    assert checked >= 1, [(r["idx"], r["start_s"], r["end_s"]) for r in rows]


async def test_chromium_sends_60ms_opus_and_the_archive_plays_it_for_as_long(
        web_server: RunningApp, media_node: MediaNode, browser: Any, admin_token: str, ctx: Context,
        tmp_path: Path) -> None:
    sid, record = await _candidate(web_server, media_node, browser, admin_token, "Sixty Ms", 60)
    assert record.packets_per_second() < 25
    assert record.durations_ms() == {60: len(record.frames)}  # every packet: 60 ms by its TOC

    await _check_archive(ctx, media_node, sid, tmp_path, 60)


async def test_with_ptime_20_chromium_sends_50_packets_a_second_as_before(
        web_server: RunningApp, media_node: MediaNode, browser: Any, admin_token: str, ctx: Context,
        tmp_path: Path) -> None:
    sid, record = await _candidate(web_server, media_node, browser, admin_token, "Twenty Ms", 20)
    assert 40 < record.packets_per_second() < 55
    assert record.durations_ms() == {20: len(record.frames)}
    await _check_archive(ctx, media_node, sid, tmp_path, 20)
