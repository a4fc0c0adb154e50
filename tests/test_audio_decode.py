"""The node's audio decoding step (media_server/audio.py) on real Opus: both decoders (AUDIO_DECODER) give the same
16 kHz mono windows at the same media times, gaps end windows, bad packets are counted and the stream goes on.

The decoding step is driven directly (`_decode`, what the decoding thread runs per packet); the whole path through
the thread, the event loop and the voice detector is tests/test_voice.py's.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from media_server import audio
from media_server.audio import (
    AUDIO_RATE,
    MIN_PARTIAL_SAMPLES,
    WINDOW_SAMPLES,
    AudioDecodePool,
    AudioStreamDecoder,
    Opus16k,
    Window,
)
from proctor.settings import Settings, SettingsError
from tests.support import voice_audio as va

pytestmark = pytest.mark.skipif(not va.have_espeak(), reason="espeak-ng not installed (Makefile SYSTEM_PACKAGES)")


def decode(packets: list[tuple[bytes, float]], decoder: str) -> tuple[list[Window], AudioStreamDecoder]:
    pool = AudioDecodePool(decoder)
    stream = AudioStreamDecoder(lambda windows: None)
    windows: list[Window] = []
    for data, media_time in packets:
        windows += pool._decode(stream, data, media_time)
    return windows, stream


def speech_in_a_room() -> np.ndarray:
    tl = va.timeline([("silence", 1.0), ("speech", va.speech(va.SENTENCES[0])), ("silence", 1.5)])
    return tl.pcm + va.white_noise(len(tl.pcm) / va.RATE + 1, -60)[:len(tl.pcm)]


def level(pcm: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(pcm, dtype=np.float64)) + 1e-20))


def test_both_decoders_give_the_same_windows_at_the_same_times() -> None:
    pcm = speech_in_a_room()
    packets = [(p, 7.0 + i * 0.02) for i, p in enumerate(va.opus_packets(pcm))]
    direct, d_stream = decode(packets, "opus16k")
    pyav, p_stream = decode(packets, "pyav")
    assert d_stream.packets_decoded == p_stream.packets_decoded == len(packets) and d_stream.decode_errors == 0
    assert len(direct) == len(pyav) == len(packets) * 320 // WINDOW_SAMPLES
    for (t1, w1), (t2, w2), i in zip(direct, pyav, range(len(direct)), strict=True):
        assert t1 == pytest.approx(7.0 + i * 0.5, abs=1e-9) and t2 == pytest.approx(t1, abs=1e-9)
        assert w1.dtype == np.float32 and w1.shape == (WINDOW_SAMPLES,)
        # FFmpeg's stereo -> mono downmix adds 3 dB to a mono voice sent in stereo Opus; libopus' does not
        assert level(w2) - level(w1) == pytest.approx(3.0, abs=0.3)
        sent = pcm[i * WINDOW_SAMPLES:(i + 1) * WINDOW_SAMPLES]
        if level(sent) > -40:  # speech: the level that was sent (Opus keeps a quiet room's hiss less exactly)
            assert abs(level(w1) - level(sent)) < 0.6
    a, b = np.concatenate([w for _, w in direct]), np.concatenate([w for _, w in pyav])
    # The same signal, within a few samples of each other (measured: 0.99997 at one sample): libopus' own
    # downsampling against FFmpeg's decoder and swresample.
    best = max(np.corrcoef(a[100 + lag:len(a) - 100 + lag], b[100:-100])[0, 1] for lag in range(-4, 5))
    assert best > 0.99
    # and the source's, a few ms later (Opus' look-ahead): the decoded speech is the speech that was sent
    src = pcm[:len(a)]
    assert max(np.corrcoef(a[lag:], src[:len(src) - lag])[0, 1] for lag in range(0, 320, 2)) > 0.9


def test_each_window_is_its_own_array() -> None:
    """A window handed to the detector is never written again (the decoder fills a fresh buffer after it)."""
    packets = [(p, i * 0.02) for i, p in enumerate(va.opus_packets(speech_in_a_room()))]
    windows, _ = decode(packets, "opus16k")
    copies = [w.copy() for _, w in windows]
    windows += decode(packets, "opus16k")[0]
    for (_, w), kept in zip(windows, copies, strict=False):
        assert np.array_equal(w, kept)
    assert not any(np.shares_memory(windows[i][1], windows[i + 1][1]) for i in range(len(windows) - 1))


@pytest.mark.parametrize("decoder", ["opus16k", "pyav"])
def test_a_gap_ends_the_window_and_a_short_rest_is_dropped(decoder: str) -> None:
    packets = va.opus_packets(speech_in_a_room())
    # 0.3 s of packets, a gap, 0.04 s (too short for a window of its own), a gap, then 1.2 s
    timed = [(packets[i], 1.0 + i * 0.02) for i in range(15)]
    timed += [(packets[15 + i], 2.0 + i * 0.02) for i in range(2)]
    timed += [(packets[20 + i], 3.0 + i * 0.02) for i in range(60)]
    windows, stream = decode(timed, decoder)
    assert [round(t, 3) for t, _ in windows] == [1.0, 3.0, 3.5]
    # The partial window before the gap goes out (swresample holds a few samples back: its filter's delay).
    held = 0 if decoder == "opus16k" else 32
    assert 15 * 320 - held <= len(windows[0][1]) <= 15 * 320 and len(windows[0][1]) >= MIN_PARTIAL_SAMPLES
    assert [len(w) for _, w in windows[1:]] == [WINDOW_SAMPLES] * 2  # 0.2 s wait for the next packets
    assert 60 * 320 - 2 * WINDOW_SAMPLES - held <= stream.filled <= 60 * 320 - 2 * WINDOW_SAMPLES
    assert stream.start_s == pytest.approx(4.0)


@pytest.mark.parametrize("decoder", ["opus16k", "pyav"])
def test_bad_packets_are_counted_and_the_stream_goes_on(decoder: str) -> None:
    good = va.opus_packets(speech_in_a_room())[:50]
    bad = [b"", b"\xff", b"\x03\xff", b"\x00" * 2000]  # empty, truncated, a bad frame count, too long
    timed = [(p, i * 0.02) for i, p in enumerate(good[:25])]
    timed += [(p, 0.5) for p in bad]
    timed += [(p, 0.5 + i * 0.02) for i, p in enumerate(good[25:])]
    windows, stream = decode(timed, decoder)
    assert stream.decode_errors >= 2 and stream.packets_decoded >= 50
    if decoder == "opus16k":  # libopus refuses every one of them (an empty one would be 120 ms of concealment)
        assert stream.decode_errors == len(bad) and stream.packets_decoded == 50
        assert [t for t, _ in windows] == [0.0, 0.5]


def test_the_decoder_setting() -> None:
    assert Settings.defaults().audio_decoder == "opus16k"
    assert AudioDecodePool().decoder == "opus16k"
    assert Settings.from_env({"AUDIO_DECODER": "pyav"}, env_file=None).audio_decoder == "pyav"
    with pytest.raises(SettingsError, match="AUDIO_DECODER"):
        Settings.from_env({"AUDIO_DECODER": "ffmpeg"}, env_file=None)
    with pytest.raises(ValueError, match="audio decoder"):
        AudioDecodePool("ffmpeg")


def test_libopus_is_found_and_the_wheels_copy_works_too() -> None:
    """The system's libopus (Debian libopus0) is used when present; PyAV's bundled copy is the fallback, so a node
    without the Debian package still decodes."""
    assert audio.libopus().path
    bundled = sorted((Path(av.__file__).resolve().parent.parent / "av.libs").glob("libopus*.so*"))
    if not bundled:
        pytest.skip("this PyAV build bundles no libopus")
    lib = audio._LibOpus(str(bundled[0]))
    original = audio._libopus
    try:
        audio._libopus = lib
        decoder = Opus16k()
        pcm = np.concatenate([decoder.decode(p).copy() for p in va.opus_packets(speech_in_a_room())[:60]])
    finally:
        audio._libopus = original
    assert len(pcm) == 60 * 320 and level(pcm) > -60
    assert AUDIO_RATE == 16_000
