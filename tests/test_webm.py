"""archiver.webm: copy-muxed segments, concat on one timeline, probe, seek, crash recovery.

Test media is made offline (tests/support/webm.py): a 640x480@30 VP8 clip (libvpx, a keyframe forced every 30
frames) whose frames carry their own number as ten black/white bands across the top, so a decoded frame says which
source frame it is, and a 220 Hz Opus tone in 20 ms packets. Frame n sits at n*1000//30 ms on the session
timeline, so 2-s segments (60 frames) are exactly 2000 ms and their durations sum with no drift.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from archiver.webm import CLUSTER_MS, WebmWriter, concat, frame_at, opus_head, probe, recover_partial
from tests.support.browser import CHROMIUM, have_chromium
from tests.support.webm import GOP, Clip, encode_tone, encode_video, frame_ms, read_number, write_segment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth() -> Clip:
    return Clip(encode_video(600, 640, 480), encode_tone(20.0), 640, 480)


@pytest.fixture(scope="module")
def small() -> Clip:
    """320x240, numbered from 600 on, a keyframe every 30 frames."""
    return Clip(encode_video(60, 320, 240, first=600), [], 320, 240, first=600)


def test_segment_exact_duration_keyframe_cues_audio(synth: Clip, tmp_path: Path) -> None:
    path = tmp_path / "seg.webm"
    writer = write_segment(path, synth, 0, 60)
    assert writer.video_frames == 60 and writer.audio_packets == 100 and writer.duration_ms == 2000
    assert writer.bytes_written == path.stat().st_size > 0

    result = probe(path, decode=True)
    assert result.duration_ms == sum(frame_ms(n + 1) - frame_ms(n) for n in range(60)) == 2000
    assert result.video_frames == 60 and result.first_is_keyframe and result.keyframes == 2
    assert result.decoded_frames == 60 and result.decode_errors == 0
    assert result.has_cues and result.cue_points == 2
    assert result.header_duration_s == 2.0
    assert (result.width, result.height) == (640, 480) and result.sizes == [(640, 480)]
    assert result.audio_packets == 100 and result.audio_decode_errors == 0
    assert result.audio_decoded_samples == 100 * 960
    assert not result.truncated

    with av.open(str(path)) as container:  # CodecPrivate of the Opus track: a valid OpusHead
        audio = container.streams.audio[0]
        assert audio.codec_context.extradata == opus_head(2, 0)
        assert audio.codec_context.sample_rate == 48_000 and audio.codec_context.channels == 2
        packets = [p for p in container.demux(audio) if p.size]
        assert [p.pts for p in packets[:3]] == [0, 20, 40] and packets[0].duration == 20
        pcm = np.concatenate([f.to_ndarray() for p in packets[10:20] for f in audio.decode(p)], axis=1)
        assert np.abs(pcm).max() > 0.02  # the tone, not silence
    with av.open(str(path)) as container:  # the video blocks carry the durations written
        video = [p for p in container.demux(container.streams.video[0]) if p.size]
        assert [p.pts for p in video] == [frame_ms(n) for n in range(60)]
        assert [p.duration for p in video] == [frame_ms(n + 1) - frame_ms(n) for n in range(60)]
        assert [p.is_keyframe for p in video] == [n % GOP == 0 for n in range(60)]


def test_concat_ten_segments_seeks_to_the_exact_frame(synth: Clip, tmp_path: Path) -> None:
    segments = []
    for k in range(10):
        segments.append(tmp_path / f"{k:03d}.webm")
        write_segment(segments[-1], synth, 60 * k, 60 * (k + 1))
    master = tmp_path / "master.webm"
    result = concat(segments, master)
    assert result.duration_ms == 20_000 and result.duration_s == 20.0
    assert result.input_durations_ms == [2000] * 10
    assert result.video_frames == 600 and result.audio_packets == 1000 and result.audio_dropped == 0
    assert (result.width, result.height) == (640, 480)

    info = probe(master, decode=True)
    assert abs(info.duration_s - 20.0) <= 0.001 and info.header_duration_s == 20.0
    assert info.video_frames == 600 and info.decoded_frames == 600 and info.decode_errors == 0
    assert info.has_cues and info.cue_points == 20 and info.first_is_keyframe
    assert info.audio_packets == 1000 and info.audio_decode_errors == 0
    with av.open(str(master)) as container:
        assert [p.pts for p in container.demux(container.streams.video[0]) if p.size] == [
            frame_ms(n) for n in range(600)]

    times = [frame_ms(n) for n in range(600)]
    rng = random.Random(3)
    probes = [rng.uniform(0, 20) for _ in range(20)] + [0.0, 1.0, 2.0, 9.999, 10.0, 19.99, frame_ms(451) / 1000]
    for t in probes:
        expected = max(n for n, ms in enumerate(times) if ms <= t * 1000 + 1e-9)
        pts, frame = frame_at(master, t)
        assert round(pts * 1000) == times[expected], t
        assert read_number(frame) == expected, t
    pts, frame = frame_at(master, 25.0)  # past the end: the last frame
    assert round(pts * 1000) == times[-1] and read_number(frame) == 599


def test_resolution_change(synth: Clip, small: Clip, tmp_path: Path) -> None:
    first = write_segment(tmp_path / "a.webm", synth, 0, 60)
    assert first.video_frames == 60
    write_segment(tmp_path / "b.webm", small, 0, 60, audio=synth.audio[:100])
    # A change inside one file: 30 frames at 640x480, then a 320x240 keyframe and 29 more.
    inside = tmp_path / "c.webm"
    writer = WebmWriter(inside, 640, 480)
    frames = synth.video[:30] + small.video[:30]
    for i, (data, key) in enumerate(frames):
        writer.write_video(data, frame_ms(i), frame_ms(i + 1) - frame_ms(i), key)
    writer.close()
    seg = probe(inside, decode=True)
    assert seg.decoded_frames == 60 and seg.decode_errors == 0 and seg.sizes == [(640, 480), (320, 240)]

    master = tmp_path / "master.webm"
    result = concat([tmp_path / "a.webm", tmp_path / "b.webm", inside], master)
    assert result.duration_ms == 6000 and result.video_frames == 180
    assert (result.width, result.height) == (640, 480)
    info = probe(master, decode=True)
    assert info.decoded_frames == 180 and info.decode_errors == 0 and info.duration_ms == 6000
    assert info.sizes == [(640, 480), (320, 240)] and (info.width, info.height) == (640, 480)
    pts, frame = frame_at(master, 2.5)  # inside b.webm: frame 15 of the small synth
    assert (frame.width, frame.height) == (320, 240) and read_number(frame) == 615
    assert round(pts * 1000) == 2000 + frame_ms(15)
    pts, frame = frame_at(master, 5.5)  # inside c.webm's 320x240 part: small frame 15 at 4000 + 1500 ms
    assert (frame.width, frame.height) == (320, 240) and read_number(frame) == 615
    pts, frame = frame_at(master, 4.5)
    assert (frame.width, frame.height) == (640, 480) and read_number(frame) == 15


CHILD = """
import pickle, sys, time
from archiver.webm import WebmWriter
video, audio = pickle.load(open(sys.argv[1], "rb"))
writer = WebmWriter(sys.argv[2], 640, 480)
k = 0
for n, (data, key) in enumerate(video):
    pts, end = n * 1000 // 30, (n + 1) * 1000 // 30
    while k < len(audio) and 20 * k <= pts:
        writer.write_audio(audio[k], 20 * k, 20)
        k += 1
    writer.write_video(data, pts, end - pts, key)
    print(end, flush=True)
    time.sleep(1 / 60)  # twice real time
time.sleep(60)
"""


def test_kill9_mid_segment_loses_at_most_two_seconds(synth: Clip, tmp_path: Path) -> None:
    packets = tmp_path / "packets.pkl"
    packets.write_bytes(pickle.dumps((synth.video, synth.audio)))
    partial = tmp_path / "partial.webm"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(packets), str(partial)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, text=True)
    written = 0
    try:
        deadline = time.monotonic() + 30
        while written < 3000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            written = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert written >= 3000, "the writer did not get going"

    left = probe(partial)
    assert not left.has_cues and left.header_duration_s is None
    fixed = tmp_path / "fixed.webm"
    result = recover_partial(partial, fixed)
    assert result is not None
    print(f"\nkill -9 after {written} ms of media written: {result.duration_ms} ms recovered")
    assert result.duration_s >= written / 1000 - 2.0, (result.duration_s, written)
    assert result.first_is_keyframe and result.has_cues and result.header_duration_s == result.duration_s
    full = probe(fixed, decode=True)
    assert full.decoded_frames == full.video_frames > 0 and full.decode_errors == 0
    assert full.audio_packets > 0 and full.audio_decode_errors == 0
    with av.open(str(fixed)) as container:
        pts = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert pts == [frame_ms(n) for n in range(len(pts))]


def test_on_disk_while_audio_never_comes(synth: Clip, tmp_path: Path) -> None:
    """An audio track with no packets must not hold video back in the muxer's interleaving queue (10 s by default):
    what is on disk mid-write (as a crash would leave it) covers all but the open cluster."""
    path = tmp_path / "live.webm"
    writer = WebmWriter(path, 640, 480, with_audio=True)
    for n in range(240):
        data, key = synth.video[n]
        writer.write_video(data, frame_ms(n), frame_ms(n + 1) - frame_ms(n), key)
    snapshot = tmp_path / "snapshot.webm"
    snapshot.write_bytes(path.read_bytes())
    writer.close()
    result = recover_partial(snapshot, tmp_path / "fixed.webm")
    assert result is not None and result.duration_ms >= frame_ms(240) - 2000
    assert result.audio_packets == 0 and result.first_is_keyframe
    assert probe(path).duration_ms == frame_ms(240)


@pytest.mark.parametrize("kill_ms", [700, 1000, 1300, 1600, 1900])
def test_on_disk_at_a_kill_while_audio_trails(synth: Clip, tmp_path: Path, kill_ms: int) -> None:
    """As a node writes live: each audio packet reaches the muxer AUDIO_LAG_MS after the video of its time (60-ms
    Opus packets trail the video so). Killed at any moment, the file on disk holds all but the open cluster and
    the audio's lag: CLUSTER_MS + lag + one packet, never the whole segment so far."""
    lag_ms = 200
    path = tmp_path / "live.webm"
    writer = WebmWriter(path, 640, 480, with_audio=True)
    audio = iter(enumerate(synth.audio))
    next_audio = next(audio)
    n = 0
    while frame_ms(n) <= kill_ms:
        data, key = synth.video[n]
        writer.write_video(data, frame_ms(n), frame_ms(n + 1) - frame_ms(n), key)
        while next_audio[0] * 20 + lag_ms <= frame_ms(n):
            writer.write_audio(next_audio[1], next_audio[0] * 20, 20)
            next_audio = next(audio)
        n += 1
    snapshot = tmp_path / "snapshot.webm"
    snapshot.write_bytes(path.read_bytes())  # what a SIGKILL leaves: no close(), no Cues
    writer.close()
    result = recover_partial(snapshot, tmp_path / "fixed.webm")
    kept = result.duration_ms if result is not None else 0
    assert kept >= kill_ms - CLUSTER_MS - lag_ms - 40, (kill_ms, kept)
    if kill_ms >= CLUSTER_MS + lag_ms + 40:
        assert result is not None and result.first_is_keyframe and result.audio_packets > 0


def test_recover_cut_inside_a_cluster_and_nothing_usable(synth: Clip, tmp_path: Path) -> None:
    whole = tmp_path / "whole.webm"
    write_segment(whole, synth, 0, 90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[:int(len(data) * 0.7)])  # mid-cluster, Cues and Duration gone
    result = recover_partial(cut, tmp_path / "fixed.webm")
    assert result is not None and result.has_cues and result.first_is_keyframe
    assert 1.0 <= result.duration_s < 3.0
    full = probe(tmp_path / "fixed.webm", decode=True)
    assert full.decoded_frames == full.video_frames and full.decode_errors == 0

    header_only = tmp_path / "header.webm"
    header_only.write_bytes(data[:300])
    assert recover_partial(header_only, tmp_path / "none.webm") is None
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(os.urandom(5000))
    assert recover_partial(garbage, tmp_path / "none2.webm") is None


def _master_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.pts for p in container.demux(container.streams.video[0]) if p.size]


def test_concat_places_inputs_at_their_media_start(synth: Clip, tmp_path: Path) -> None:
    """After a node crash the recovered segment overlaps (or falls short of) the reconnection's first segment:
    with placements each input sits at its own media time, the overlapped tail is cut, a hole stays a hole."""
    recovered, reconnect = tmp_path / "recovered.webm", tmp_path / "reconnect.webm"
    write_segment(recovered, synth, 0, 90)  # 0-3 s
    write_segment(reconnect, synth, 60, 120)  # 2-4 s: starts 1 s before the recovered one ends
    master = tmp_path / "overlap.webm"
    result = concat([recovered, reconnect], master, starts_ms=[0, 2000])
    # Back to back would put frame 60 of the reconnection at 3 s: a 1-s shift of everything after the crash.
    assert result.duration_ms == 4000 and result.video_trimmed == 30 and result.input_durations_ms == [2000, 2000]
    assert result.video_frames == 120 and result.audio_packets == 200
    assert _master_pts(master) == [frame_ms(n) for n in range(120)]
    info = probe(master, decode=True)
    assert info.decoded_frames == 120 and info.decode_errors == 0 and info.audio_decode_errors == 0
    assert info.header_duration_s == 4.0 and info.has_cues
    for t, number in ((1.99, 59), (2.0, 60), (2.5, 75), (3.99, 119)):
        pts, frame = frame_at(master, t)
        assert read_number(frame) == number and round(pts * 1000) == frame_ms(number), t

    short = tmp_path / "short.webm"
    write_segment(short, synth, 0, 60)  # 0-2 s, then nothing until the reconnection at 3 s
    later = tmp_path / "later.webm"
    write_segment(later, synth, 90, 150)
    holed = tmp_path / "hole.webm"
    result = concat([short, later], holed, starts_ms=[0, 3000])
    assert result.duration_ms == 5000 and result.video_trimmed == 0 and result.video_frames == 120
    assert _master_pts(holed) == [frame_ms(n) for n in (*range(60), *range(90, 150))]
    pts, frame = frame_at(holed, 2.5)  # inside the hole: the last frame before it
    assert read_number(frame) == 59 and round(pts * 1000) == frame_ms(59)
    pts, frame = frame_at(holed, 3.0)
    assert read_number(frame) == 90 and round(pts * 1000) == 3000
    assert probe(holed, decode=True).decode_errors == 0

    with pytest.raises(ValueError, match="in order"):
        concat([short, later], tmp_path / "bad.webm", starts_ms=[3000, 0])


def test_thirty_twenty_second_segments_concat_fast_and_exact(synth: Clip, tmp_path: Path) -> None:
    segments = []
    started = time.perf_counter()
    for k in range(30):
        segments.append(tmp_path / f"{k:03d}.webm")
        writer = write_segment(segments[-1], synth, 0, 600)
        assert writer.video_frames == 600 and writer.audio_packets == 1000 and writer.duration_ms == 20_000
    write_s = (time.perf_counter() - started) / 30

    master = tmp_path / "master.webm"
    started = time.perf_counter()
    result = concat(segments, master)
    concat_s = time.perf_counter() - started
    print(f"\nWebmWriter: {write_s * 1000:.1f} ms per 20-s segment (600 video + 1000 audio packets); "
          f"concat of 30 x 20 s: {concat_s:.3f} s")
    assert result.duration_ms == 600_000 and result.duration_s == 600.0
    assert result.video_frames == 18_000 and result.audio_packets == 30_000
    # Copy-mux, never a re-encode: joining the segments costs a small multiple of writing them (measured idle:
    # 1.09 s against 30 x 15.5 ms, 2.3x), while decoding and encoding 18,000 VP8 frames would cost minutes (well
    # over 1000x). A ratio of this run's own work, not a wall-clock bound: a busy machine slows both sides alike.
    assert concat_s < 10 * 30 * write_s

    info = probe(master)
    assert info.duration_ms == 600_000 and info.header_duration_s == 600.0
    assert info.video_frames == 18_000 and info.has_cues and info.cue_points == 600
    pts, frame = frame_at(master, 431.5)  # segment 21, its frame 44 (1466 ms <= 1500 < 1500)
    expected = max(n for n in range(600) if frame_ms(n) <= 11_500)
    assert round(pts * 1000) == 420_000 + frame_ms(expected) and read_number(frame) == expected


PLAYER_JS = """
async ([src, times]) => {
  const v = document.createElement('video');
  v.muted = true;
  document.body.appendChild(v);
  v.src = src;
  await new Promise((ok, bad) => { v.onloadedmetadata = ok; v.onerror = () => bad(String(v.error?.message)); });
  const out = {duration: v.duration, frames: []};
  const c = document.createElement('canvas');
  for (const t of times) {
    await new Promise(ok => { v.onseeked = ok; v.currentTime = t; });
    await new Promise(ok => setTimeout(ok, 100));
    const w = v.videoWidth, h = v.videoHeight;
    c.width = w; c.height = h;
    const g = c.getContext('2d', {willReadFrequently: true});
    g.drawImage(v, 0, 0);
    const strip = Math.floor(h / 6), band = Math.floor(w / 10);
    let n = 0;
    for (let b = 0; b < 10; b++) {
      if (g.getImageData(b * band + Math.floor(band / 2), Math.floor(strip / 2), 1, 1).data[0] > 128) n |= 1 << b;
    }
    out.frames.push([n, w, h]);
  }
  v.currentTime = 0;
  await v.play();
  await new Promise(ok => setTimeout(ok, 1000));
  v.pause();
  out.audioBytes = v.webkitAudioDecodedByteCount;
  return out;
}
"""


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="Debian chromium not installed")
async def test_chromium_plays_master_and_seeks_to_the_exact_frame(synth: Clip, small: Clip, tmp_path: Path) -> None:
    """The real consumer: <video> reports the exact duration, seeks land on the frame whose media time is t,
    the Opus track (hand-built OpusHead) decodes, and a resolution change between segments plays."""
    from aiohttp import web
    from playwright.async_api import async_playwright

    segments = [tmp_path / f"{k}.webm" for k in range(10)]
    for k, path in enumerate(segments):
        write_segment(path, synth, 60 * k, 60 * (k + 1))
    concat(segments, tmp_path / "master.webm")
    write_segment(tmp_path / "small.webm", small, 0, 60, audio=synth.audio[:100])
    concat([segments[0], tmp_path / "small.webm", segments[1]], tmp_path / "sizes.webm")
    (tmp_path / "index.html").write_text("<!doctype html><html><body></body></html>")

    app = web.Application()
    app.router.add_static("/", tmp_path)  # answers Range requests, as a real file server would
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    times = [0.0, 0.5, 3.4, 9.999, 10.0, 13.37, 19.99]
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=["--no-sandbox", "--disable-gpu"])
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{port}/index.html")
                master = await page.evaluate(PLAYER_JS, ["master.webm", times])
                sizes = await page.evaluate(PLAYER_JS, ["sizes.webm", [1.0, 2.5, 4.5]])
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    assert master["duration"] == 20.0
    expected = [max(n for n in range(600) if frame_ms(n) <= t * 1000 + 1e-9) for t in times]
    assert master["frames"] == [[n, 640, 480] for n in expected]
    assert master["audioBytes"] > 0
    assert sizes["duration"] == 6.0
    assert sizes["frames"] == [[30, 640, 480], [615, 320, 240], [75, 640, 480]]


def _packets_of(path: Path) -> tuple[list[tuple[int, int, bool]], list[tuple[int, bytes]]]:
    with av.open(str(path)) as container:
        video = [(p.pts, p.duration, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    with av.open(str(path)) as container:
        audio = [(p.pts, bytes(p)) for p in container.demux(container.streams.audio[0]) if p.size]
    return video, audio


@pytest.mark.parametrize("layout", ["back_to_back", "placed_with_holes"])
def test_cluster_copy_matches_the_remux(synth: Clip, tmp_path: Path, layout: str) -> None:
    """The fast path (whole clusters as bytes) gives the same packets at the same times as the PyAV remux,
    decodes cleanly, seeks to the same frames, and has Cues and the exact Duration."""
    segments = []
    for k in range(6):
        segments.append(tmp_path / f"{k:03d}.webm")
        write_segment(segments[-1], synth, 60 * k, 60 * (k + 1))
    starts = None if layout == "back_to_back" else [0, 2000, 4500, 6500, 9000, 11000]
    slow, fast = tmp_path / "remux.webm", tmp_path / "clusters.webm"
    remuxed = concat(segments, slow, starts)
    copied = concat(segments, fast, starts, fast=True)
    assert copied.method == "clusters" and remuxed.method == "remux"
    assert copied.duration_ms == remuxed.duration_ms and copied.input_durations_ms == remuxed.input_durations_ms
    assert (copied.width, copied.height) == (remuxed.width, remuxed.height)
    assert _packets_of(fast) == _packets_of(slow)
    info, reference = probe(fast, decode=True), probe(slow, decode=True)
    assert info.duration_ms == reference.duration_ms and info.header_duration_s == reference.header_duration_s
    assert info.decoded_frames == reference.decoded_frames == 360 and info.decode_errors == 0
    assert info.audio_decode_errors == 0 and info.has_cues and info.cue_points == reference.cue_points
    rng = random.Random(7)
    for t in [rng.uniform(0, copied.duration_s - 0.01) for _ in range(25)]:
        (pts_a, frame_a), (pts_b, frame_b) = frame_at(fast, t), frame_at(slow, t)
        assert pts_a == pts_b and read_number(frame_a) == read_number(frame_b), t


def test_cluster_copy_falls_back_when_an_input_must_be_cut(synth: Clip, tmp_path: Path) -> None:
    recovered, reconnect = tmp_path / "recovered.webm", tmp_path / "reconnect.webm"
    write_segment(recovered, synth, 0, 90)
    write_segment(reconnect, synth, 60, 120)
    result = concat([recovered, reconnect], tmp_path / "m.webm", starts_ms=[0, 2000], fast=True)
    assert result.method == "remux" and result.video_trimmed == 30 and result.duration_ms == 4000
