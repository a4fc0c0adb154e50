"""Longer Opus packets (AUDIO_PTIME_MS, default 60): what the node and the load generator do with them, offline.

An Opus packet's length is read from its TOC byte (core.opus, RFC 6716 3.1), never assumed to be 20 ms: the
node's audio decoding fills the same 0.5-s windows at the same media times whatever the packet length, bounds its
backlog in seconds of audio, and the load generator sends the frame length an answer's `a=ptime` asks for, as
Chromium does. The archive's durations are tests/test_segmenter.py's; the node with real senders is
tests/test_audio_ptime_node.py's, with real Chromium tests/test_audio_ptime_browser.py's.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench import synthetic
from core import opus
from media_server.audio import (
    AUDIO_RATE,
    MAX_BACKLOG_S,
    WINDOW_S,
    WINDOW_SAMPLES,
    AudioDecodePool,
    AudioStreamDecoder,
    Window,
)
from proctor.settings import Settings, SettingsError
from tests.support import voice_audio as va


def tone(seconds: float, rate: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("frame_ms", opus.FRAME_LENGTHS_MS)
def test_the_toc_says_how_long_each_real_packet_is(frame_ms: int) -> None:
    packets = synthetic.encode_opus(tone(1.2), frame_ms, channels=2)
    assert len(packets) >= 1.2 * 1000 // frame_ms - 1  # the encoder's look-ahead holds back at most one
    assert {opus.packet_duration_ms(p) for p in packets} == {frame_ms}
    pool = AudioDecodePool("opus16k")
    stream = AudioStreamDecoder(lambda windows: None)
    pool._decode(stream, packets[0], 0.0)  # libopus agrees: the packet decodes to that many samples
    assert stream.next_s == pytest.approx(frame_ms / 1000)


def test_toc_of_handmade_packets() -> None:
    assert opus.packet_duration_ms(b"") == 0
    assert opus.packet_duration_ms(bytes([3 << 3])) == 60  # SILK-only NB 60 ms, one frame (code 0)
    assert opus.packet_duration_ms(bytes([(31 << 3) | 1])) == 40  # CELT 20 ms, two frames (code 1)
    assert opus.packet_duration_ms(bytes([(31 << 3) | 3, 3])) == 60  # CELT 20 ms, code 3, three frames
    assert opus.packet_duration_ms(bytes([(16 << 3) | 3, 0x80 | 48])) == 120  # CELT 2.5 ms x 48 (VBR bit set)
    assert opus.packet_duration_ms(bytes([(13 << 3)])) == 20  # hybrid FB 20 ms


def test_chromium_rounds_a_ptime_up_to_a_frame_length() -> None:
    assert [opus.browser_frame_ms(p) for p in (5, 10, 15, 20, 30, 50, 60, 61, 120, 500)] == \
        [10, 10, 20, 20, 40, 60, 60, 120, 120, 120]
    sdp = "v=0\r\nm=video 9 X 96\r\na=ptime:10\r\nm=audio 9 X 111\r\na=rtpmap:111 opus/48000/2\r\na=ptime:50\r\n"
    assert synthetic.answer_frame_ms(sdp) == 60  # the audio m-line's, rounded up; the video's ignored
    assert synthetic.answer_frame_ms("v=0\r\nm=audio 9 X 111\r\n") == 20  # none: what browsers send unasked


def test_the_setting_takes_opus_frame_lengths_only() -> None:
    assert Settings.defaults().audio_ptime_ms == 60
    for value in opus.FRAME_LENGTHS_MS:
        assert Settings.from_env({"AUDIO_PTIME_MS": str(value)}, env_file=None).audio_ptime_ms == value
    for bad in ("30", "0", "sixty"):
        with pytest.raises(SettingsError):
            Settings.from_env({"AUDIO_PTIME_MS": bad}, env_file=None)


def decode(packets: list[bytes], frame_ms: int, decoder: str, lose: set[int] = frozenset()) -> list[Window]:
    pool = AudioDecodePool(decoder)
    stream = AudioStreamDecoder(lambda windows: None)
    windows: list[Window] = []
    for i, packet in enumerate(packets):
        if i not in lose:
            windows += pool._decode(stream, packet, 3.0 + i * frame_ms / 1000)
    assert stream.decode_errors == 0
    return windows


@pytest.mark.parametrize("decoder", ["opus16k", "pyav"])
@pytest.mark.parametrize("frame_ms", [20, 60, 120])
def test_windows_are_the_same_whatever_the_packet_length(decoder: str, frame_ms: int) -> None:
    """Whole 0.5-s windows, back to back from the first packet's media time, as many as the audio fills, with the
    tone's level in each; one lost packet of up to 60 ms is no gap (the window goes on), a 120-ms one is."""
    packets = synthetic.encode_opus(tone(6.3), frame_ms, channels=2)  # not whole windows: the resampler holds some
    windows = decode(packets, frame_ms, decoder)
    samples = len(packets) * frame_ms * AUDIO_RATE // 1000
    assert len(windows) == samples // WINDOW_SAMPLES
    for i, (t, pcm) in enumerate(windows):
        assert t == pytest.approx(3.0 + i * WINDOW_S, abs=1e-9) and pcm.shape == (WINDOW_SAMPLES,)
    # the tone (RMS 0.21; 0.30 through FFmpeg, whose stereo -> mono downmix adds 3 dB), not silence
    assert 0.15 < float(np.sqrt(np.mean(windows[-1][1] ** 2))) < 0.35
    lost = decode(packets, frame_ms, decoder, lose={len(packets) // 2})
    if frame_ms <= 60:
        assert len(lost) == (samples - frame_ms * AUDIO_RATE // 1000) // WINDOW_SAMPLES
        assert all(b[0] - a[0] == pytest.approx(WINDOW_S) for a, b in itertools.pairwise(lost))
    else:  # a gap: the part-filled window goes out short and the next starts at the packet after the gap
        assert any(len(pcm) < WINDOW_SAMPLES for _, pcm in lost)


def test_the_backlog_is_bounded_in_seconds_of_audio_not_packets() -> None:
    """A stream that falls behind keeps at most MAX_BACKLOG_S of audio queued, whatever the packet length (counted
    in packets, 250 of 120 ms would be 30 s of stale audio)."""
    for frame_ms in (20, 60, 120):
        pool = AudioDecodePool("opus16k")  # never started: nothing leaves the queue
        stream = AudioStreamDecoder(lambda windows: None)
        packets = synthetic.encode_opus(tone(2.0), frame_ms)
        for i in range(int(2 * MAX_BACKLOG_S * 1000 / frame_ms)):
            pool.submit(stream, packets[i % len(packets)], i * frame_ms / 1000)
        assert pool.queued() * frame_ms / 1000 == pytest.approx(MAX_BACKLOG_S, abs=frame_ms / 1000)
        assert stream.backlog_s == pytest.approx(pool.queued() * frame_ms / 1000)


@pytest.mark.skipif(not va.have_espeak(), reason="espeak-ng not installed (Makefile SYSTEM_PACKAGES)")
def test_the_load_generator_sends_what_the_answer_asks() -> None:
    """The clip's track in another frame length (the same audio: as long, as loud, the remark where it was), and a
    sender retimed to the answer's ptime before it starts."""
    twenty = synthetic.exam_room_audio()
    clip = synthetic.EncodedClip(video=[], audio=twenty, fps=30)
    sixty = clip.audio_packets(60)
    assert clip.audio_packets(20) is twenty and clip.audio_packets(60) is sixty  # made once
    assert {opus.packet_duration_ms(p) for p in sixty} == {60}
    assert len(sixty) * 60 == pytest.approx(len(twenty) * 20, abs=120)
    levels = []
    for packets, frame_ms in ((twenty, 20), (sixty, 60)):
        pcm = np.concatenate([w for _, w in decode(packets, frame_ms, "opus16k")])
        room, remark = pcm[:15 * AUDIO_RATE], pcm[20 * AUDIO_RATE:23 * AUDIO_RATE]
        levels.append([10 * np.log10(np.mean(np.square(x, dtype=np.float64))) for x in (room, remark)])
    assert np.allclose(levels[0], levels[1], atol=1.5), levels
    silent = synthetic.EncodedClip(video=[], audio=synthetic.exam_room_audio(speech=False), fps=30)
    assert silent.audio_packets(60) != sixty  # from the clip's own track, not the default one
    starts = [synthetic._audio_start(clip, n, 60) for n in range(5)]
    assert starts == [synthetic._audio_start(clip, n) // 3 for n in range(5)]  # the same 7.3-s steps
    track = synthetic.ReplayTrack("audio", twenty, 0.02, 960, synthetic.AUDIO_TB)
    track.retime(sixty, 0.06, 2880, starts[1])
    assert track._packets is sixty and track._period == 0.06 and track._step == 2880 and track._index == starts[1]
