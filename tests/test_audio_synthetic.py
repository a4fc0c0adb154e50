"""The load generator's audio (bench/synthetic.py): an exam room, not a test tone. Quiet most of the time (the voice
detector's gate skips it, as in a real exam), one spoken remark per loop that the voice detector flags, the same
packets on every build, quick to build; encode_clip hands it to every synthetic candidate.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from analyzers.voice import VoiceDetector
from bench import synthetic
from core.rules import EventRules, RulesConfig
from media_server.audio import AudioDecodePool, AudioStreamDecoder, Window
from proctor.settings import Settings
from tests.support import voice_audio as va

pytestmark = pytest.mark.skipif(not va.have_espeak(), reason="espeak-ng not installed (Makefile SYSTEM_PACKAGES)")


def test_the_track_is_a_quiet_room_with_a_remark_and_is_built_quickly_and_alike() -> None:
    started = time.process_time()
    packets = synthetic._exam_room_packets.__wrapped__()  # a fresh build, not the cached one
    cpu_s = time.process_time() - started
    assert cpu_s < 5.0, cpu_s  # CPU seconds of this process (espeak-ng's subprocess: a fraction of a second)
    assert packets == synthetic._exam_room_packets.__wrapped__()  # deterministic, packet for packet
    assert synthetic.exam_room_audio() == list(packets) and len(packets) == synthetic.EXAM_ROOM_S * 50
    pcm = synthetic.exam_room_pcm(va.RATE)
    room = pcm[:int(synthetic.EXAM_ROOM_SPEECH_AT_S * va.RATE)]
    assert 20 * np.log10(np.sqrt(np.mean(room.astype(np.float64) ** 2))) == pytest.approx(-60, abs=1.5)
    loud = np.abs(pcm) > 0.01  # the speech (the room never gets there)
    spoken = (np.flatnonzero(loud)[-1] - np.flatnonzero(loud)[0]) / va.RATE
    assert 0.05 * synthetic.EXAM_ROOM_S < spoken < 0.15 * synthetic.EXAM_ROOM_S  # ~10 % of the time


def test_the_node_flags_the_remark_and_the_gate_skips_the_room() -> None:
    """Twice round the loop, as a media node sees it (the packets through its decoder, the detector with the
    default gate, the default rules): one talking flag per loop, where the remark is, never audio_muted; the model
    runs on a small part of the audio."""
    packets = synthetic.exam_room_audio() * 2
    pool = AudioDecodePool(Settings.defaults().audio_decoder)
    stream = AudioStreamDecoder(lambda windows: None)
    windows: list[Window] = []
    for i, packet in enumerate(packets):
        windows += pool._decode(stream, packet, i * 0.02)
    detector = VoiceDetector(Settings.defaults())
    detector.load()
    rules = EventRules(RulesConfig.default())
    changes = []
    for media_time, window in windows:
        for t, s in detector.analyze_audio(media_time, window):
            changes += rules.update(s.kind, s.active, s.confidence, t, s.details)
    changes += rules.flush(len(packets) * 0.02)
    flags = [(c.kind, c.start_s, c.end_s) for c in changes if c.type == "end"]
    speech = synthetic._espeak(synthetic.EXAM_ROOM_SPEECH)
    assert speech is not None
    spoken = len(speech) / 48_000
    assert [kind for kind, _, _ in flags] == ["talking", "talking"], flags
    for loop, (_, start, end) in enumerate(flags):
        at = loop * synthetic.EXAM_ROOM_S + synthetic.EXAM_ROOM_SPEECH_AT_S
        assert abs(start - at) < 1.0 and end is not None and abs(end - (at + spoken)) < 1.0, (flags, spoken)
    gated = detector.gated()
    assert gated is not None and gated > 0.8, gated


def test_encode_clip_gives_every_candidate_the_exam_room() -> None:
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(6)]
    clip = synthetic.encode_clip(frames, fps=30, bitrate=200_000, gop=30)
    assert clip.audio == synthetic.exam_room_audio() and len(clip.video) == 6
    # Senders start at different points of the loop, so they do not all talk at once.
    starts = {synthetic._audio_start(clip, n) for n in range(8)}
    assert len(starts) == 8 and all(0 <= s < len(clip.audio) for s in starts)
