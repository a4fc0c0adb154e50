"""The voice detector (analyzers/voice.py) and the node's audio decoding (media_server/audio.py) on real audio.

Speech is espeak-ng's (several voices and languages), silence is zeros, noise is numpy's: white, brown, typing
clicks, and the tone bursts of Chromium's fake microphone. Speech runs through the hysteresis rules of core.rules
as on a media node, and once through the whole audio path (Opus packets -> the node's decoding thread -> windows
-> the detector's slot in a thread pool).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from analyzers.base import Signal
from analyzers.registry import build_detectors
from analyzers.voice import CHUNK, AudioSlot, VoiceConfig, VoiceDetector, model_path
from core.rules import EventRules, RulesConfig
from core.sensitivity import Sensitivity
from media_server.audio import WINDOW_SAMPLES, AudioDecodePool, AudioOutlet
from proctor.settings import Settings, SettingsError
from tests.support import voice_audio as va

pytestmark = pytest.mark.skipif(not va.have_espeak(), reason="espeak-ng not installed (Makefile SYSTEM_PACKAGES)")

# Where a flag may start and end around the speech it flags, in seconds (the browser test allows 1 s: the
# timeline mapping of a real connection adds its part).
TOLERANCE_S = 0.5


GATE = Settings.defaults().voice_gate_dbfs  # the energy gate's default


def detector(config: VoiceConfig | None = None) -> VoiceDetector:
    d = VoiceDetector(Settings.defaults(), config)
    d.load()
    return d


def events(pcm: np.ndarray, kind: str = "talking", rules: RulesConfig | None = None,
           config: VoiceConfig | None = None) -> list[tuple[float, float]]:
    """The (start_s, end_s) of every `kind` event the detector and the default rules make of `pcm` (file time)."""
    d, r = detector(config), EventRules(rules or RulesConfig.default())
    spans: dict[int, list[float]] = {}
    changes = []
    for i in range(0, len(pcm), WINDOW_SAMPLES):
        for t, s in d.analyze_audio(i / va.RATE, pcm[i:i + WINDOW_SAMPLES]):
            changes += r.update(s.kind, s.active, s.confidence, t, s.details)
    changes += r.flush(len(pcm) / va.RATE)
    for c in changes:
        if c.kind == kind and c.type in ("start", "end"):
            spans.setdefault(c.event_id, []).append(c.end_s if c.type == "end" else c.start_s)  # type: ignore[arg-type]
    return [(s[0], s[1]) for s in spans.values()]


def assert_flags_match(found: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float) -> None:
    assert len(found) == len(truth), (found, truth)
    for (start, end), (t0, t1) in zip(found, truth, strict=True):
        assert abs(start - t0) <= tol and abs(end - t1) <= tol, (found, truth)


def test_the_model_comes_from_the_wheel_without_torch() -> None:
    d = detector()
    assert model_path().name == "silero_vad.onnx" and model_path().stat().st_size > 1_000_000
    assert d.status() == (True, "silero-vad v5 ONNX (onnxruntime)")
    # In a fresh interpreter (other tests may import anything): loading and running it imports neither the
    # silero_vad package nor torch.
    code = ("import sys, numpy as np; from analyzers.voice import VoiceDetector; "
            "from proctor.settings import Settings; d = VoiceDetector(Settings.defaults()); d.load(); "
            "d.analyze_audio(0.0, np.zeros(8000, np.float32)); "
            "print(sorted(m for m in ('torch', 'silero_vad') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


@pytest.mark.parametrize("voice", ["en", "en-us+m3", "en+f3", "de", "fr+f2", "es"])
def test_speech_is_talking_where_it_is_and_only_there(voice: str) -> None:
    first = va.speech(va.SENTENCES[0], voice, speed=150)
    second = va.speech(va.SENTENCES[4], voice, speed=190)
    tl = va.timeline([("silence", 3.0), ("speech", first), ("silence", 6.0), ("speech", second), ("silence", 5.0)])
    assert_flags_match(events(tl.pcm), tl.speech, TOLERANCE_S)


def test_speech_in_noise_and_quiet_speech_are_found() -> None:
    tl = va.timeline([("silence", 3.0), ("speech", va.speech(va.SENTENCES[3], "en-us")), ("silence", 5.0)])
    seconds = len(tl.pcm) / va.RATE
    for pcm in (tl.pcm + va.white_noise(seconds, -35)[:len(tl.pcm)],  # a noisy room
                tl.pcm + va.brown_noise(seconds, -30)[:len(tl.pcm)],  # traffic, a fan
                tl.pcm + va.clicks(seconds)[:len(tl.pcm)],  # typing while talking
                tl.pcm * 0.05 + va.white_noise(seconds, -50)[:len(tl.pcm)]):  # a whisper-level voice, far away
        assert_flags_match(events(pcm), tl.speech, TOLERANCE_S)


def test_a_pause_between_sentences_is_one_flag_a_longer_silence_two() -> None:
    a, b = va.speech(va.SENTENCES[0]), va.speech(va.SENTENCES[1])
    close = va.timeline([("silence", 2.0), ("speech", a), ("silence", 1.2), ("speech", b), ("silence", 4.0)])
    assert_flags_match(events(close.pcm), [(close.speech[0][0], close.speech[1][1])], TOLERANCE_S)
    apart = va.timeline([("silence", 2.0), ("speech", a), ("silence", 3.5), ("speech", b), ("silence", 4.0)])
    assert_flags_match(events(apart.pcm), apart.speech, TOLERANCE_S)


def _spaced(utterances: list[np.ndarray], gap_s: float) -> va.Timeline:
    parts: list[tuple[str, object]] = [("silence", 2.0)]
    for pcm in utterances:
        parts += [("speech", pcm), ("silence", gap_s)]
    return va.timeline(parts)


def test_a_word_a_cough_of_noise_or_a_beep_never_flags_a_conversation_does() -> None:
    words = [va.speech(w, v) for w in ("yes", "okay", "what?", "no", "hmm") for v in ("en", "en+f3")]
    assert events(_spaced(words, 1.6).pcm) == []  # a word now and then (0.3-0.5 s each)
    phrases = [va.speech(w, v) for w in ("hmm, no", "oh well, fine") for v in ("en", "en+f3")]
    assert events(_spaced(phrases, 4.5).pcm) == []  # a short remark (about a second) now and then
    # The same remarks in a row, a second and a half apart, are one side of a conversation: flagged, from the
    # first remark to the last.
    talk = _spaced(phrases, 1.5)
    assert_flags_match(events(talk.pcm), [(talk.speech[0][0], talk.speech[-1][1])], TOLERANCE_S)
    for pcm in (va.silence(30), va.white_noise(30, -40), va.white_noise(30, -20), va.brown_noise(30, -25),
                va.beeps(30), va.beeps(30, 440, 0.5, 0.2), va.clicks(30), va.clicks(30) + va.white_noise(30, -45)):
        assert events(pcm) == []


def test_digital_silence_is_audio_muted_after_30_s_a_quiet_room_is_not() -> None:
    muted = va.timeline([("speech", va.speech(va.SENTENCES[2])), ("silence", 40.0)])
    (start, end), = events(muted.pcm, "audio_muted")
    assert abs(start - muted.speech[0][1]) <= 0.5 and end == pytest.approx(len(muted.pcm) / va.RATE, abs=0.6)
    assert events(va.silence(25), "audio_muted") == []  # not yet long enough
    assert events(va.white_noise(40, -60), "audio_muted") == []  # a real microphone's noise floor: not muted


async def test_opus_through_the_node_decoder_and_the_slot_finds_the_speech_and_the_stopped_microphone() -> None:
    """Opus packets as the encoded tap hands them over (with a media time each, 0.5 s of them missing, as when
    packets stop), decoded by the node's audio thread into windows, analysed by the slot in a pool: talking
    where the speech is; the microphone that then stops sending is reported absent."""
    first, second = va.speech(va.SENTENCES[0], "en"), va.speech(va.SENTENCES[5], "en+f3")
    tl = va.timeline([("silence", 3.0), ("speech", first), ("silence", 6.0), ("speech", second), ("silence", 4.0)])
    packets = va.opus_packets(tl.pcm)
    pool = AudioDecodePool()
    pool.start(asyncio.get_running_loop())
    executor = ThreadPoolExecutor(max_workers=1)
    seen: list[tuple[float, Signal]] = []
    outlet = AudioOutlet()
    slot = AudioSlot(detector(), executor, lambda t, s, arrived: seen.append((t, s)))
    outlet.subscribe(slot)
    outlet.start(pool)
    gap = range(500, 525)  # packets 10.0-10.5 s never arrive (in the silence between the sentences)
    try:
        for i, packet in enumerate(packets):
            if i not in gap:
                outlet.submit(packet, 10.0 + i * 0.02)  # media time: the stream started 10 s before the audio
            # Faster than real time, yet never so far ahead that the overload guards drop anything (they are
            # tested on their own): a real browser sends 50 packets a second.
            for _ in range(1000):
                if outlet.decoder.backlog_s <= 1.0 and len(slot.waiting) <= 4:
                    break
                await asyncio.sleep(0.01)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if not slot.busy and not slot.waiting and outlet.stats()["packets_decoded"] == len(packets) - len(gap):
                break
        assert outlet.stats()["packets_decoded"] == len(packets) - len(gap)
        assert outlet.stats()["decode_errors"] == 0
        r = EventRules(RulesConfig.default())
        changes = [c for t, s in seen for c in r.update(s.kind, s.active, s.confidence, t, s.details)]
        changes += r.flush(10.0 + len(packets) * 0.02)
        talking = [(c.start_s, c.end_s or 0.0) for c in changes if c.kind == "talking" and c.type == "end"]
        # Opus adds its look-ahead (6.5 ms) and the resampler a few ms: well inside the tolerance.
        assert_flags_match(talking, [(10.0 + a, 10.0 + b) for a, b in tl.speech], TOLERANCE_S)
        assert slot.stats()["windows"] >= len(tl.pcm) / WINDOW_SAMPLES - 3 and slot.stats()["dropped"] == 0
        # Then nothing comes: after ABSENT_AFTER_S the microphone is reported absent, each tick.
        end = slot.last_end
        assert end is not None
        seen.clear()
        slot.tick(end + 1.0)
        assert seen == []
        slot.tick(end + 2.0)
        slot.tick(end + 2.5)
        assert [(t, s.kind, s.active, s.details["reason"]) for t, s in seen] == [
            (end + 2.0, "audio_muted", True, "no_audio"), (end + 2.5, "audio_muted", True, "no_audio")]
    finally:
        outlet.stop()
        pool.stop()
        executor.shutdown()


def test_registry_builds_it_by_name_and_the_exam_switch_parses() -> None:
    built = build_detectors(Settings.defaults(analyzers_enabled=("voice",)))
    assert [d.name for d in built] == ["voice"] and built.unavailable == {}
    off = Sensitivity.parse({"profile": "lenient", "audio_flags": False})
    assert not off.audio_flags and off.to_json() == {"profile": "lenient", "audio_flags": False}
    assert Sensitivity.parse(off.to_json()) == off and off.describe() == "lenient + audio flags off"
    assert Sensitivity.parse("strict").audio_flags and "audio_flags" not in Sensitivity.parse("strict").to_json()
    for bad in ({"audio_flags": "off"}, {"audio_flags": 0}, {"audio_flags": None}):
        with pytest.raises(ValueError, match="audio_flags: expected true or false"):
            Sensitivity.parse(bad)


def test_slot_drops_the_oldest_windows_when_far_behind() -> None:
    class Recorder:
        calls: list[Any] = []

    slot = AudioSlot(detector(), ThreadPoolExecutor(max_workers=1), lambda *a: Recorder.calls.append(a))
    slot.busy = True  # a batch is running: everything waits
    slot.on_audio([(i * 0.5, np.zeros(WINDOW_SAMPLES, np.float32)) for i in range(20)])
    assert len(slot.waiting) == AudioSlot.MAX_WAITING and slot.dropped == 20 - AudioSlot.MAX_WAITING
    assert slot.waiting[0][0] == (20 - AudioSlot.MAX_WAITING) * 0.5  # the newest are kept


# --- the energy gate (VOICE_GATE_DBFS) ---------------------------------------------------------------------------
OFF = VoiceConfig(gate_dbfs=None)
STEP_S = 8 * CHUNK / va.RATE  # one talking observation (0.256 s)


def assert_same_flags(gated: list[tuple[float, float]], ungated: list[tuple[float, float]]) -> None:
    """The gate keeps every flag; a start or end may move by one talking step (the model's recurrent state after a
    gated stretch is not exactly what the quiet chunks would have made it: analyzers/voice.py)."""
    assert_flags_match(gated, ungated, STEP_S + 1e-6)


def chunk_dbfs(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // CHUNK
    x = pcm[:n * CHUNK].reshape(n, CHUNK).astype(np.float64)
    return 10 * np.log10(np.mean(x * x, axis=1) + 1e-20)


def room(seconds: float, dbfs: float = -60.0) -> np.ndarray:
    """A quiet exam room: a microphone's hiss and a fan's rumble, about `dbfs` RMS."""
    return (va.white_noise(seconds, dbfs - 3, seed=5) + va.brown_noise(seconds, dbfs - 3, seed=6)).astype(np.float32)


def test_the_gate_is_on_by_default_and_the_setting_parses() -> None:
    assert GATE == -55.0 and detector().config.gate_dbfs == -55.0
    assert Settings.from_env({"VOICE_GATE_DBFS": "off"}, env_file=None).voice_gate_dbfs is None
    assert Settings.from_env({"VOICE_GATE_DBFS": " -62.5 "}, env_file=None).voice_gate_dbfs == -62.5
    for bad in ("loud", "nan", "-inf", "-500", "3", "-55\x00"):
        with pytest.raises(SettingsError, match="VOICE_GATE_DBFS"):
            Settings.from_env({"VOICE_GATE_DBFS": bad}, env_file=None)


def test_silence_and_quiet_rooms_never_reach_the_model_and_audio_muted_still_works() -> None:
    for pcm, muted in ((va.silence(35), True), (room(35), False), (va.white_noise(35, -62), False),
                       (va.brown_noise(35, -60), False)):
        d = detector()
        assert d.model is not None
        signals = [s for i in range(0, len(pcm), WINDOW_SAMPLES)
                   for _, s in d.analyze_audio(i / va.RATE, pcm[i:i + WINDOW_SAMPLES])]
        assert d.model.runs == 0 and d.gated() == 1.0  # not one chunk ran the model
        assert not any(s.active for s in signals if s.kind == "talking")
        # audio_muted needs the level, not the model: digital silence is muted, a quiet room is not
        assert {s.active for s in signals if s.kind == "audio_muted"} == {muted}
    assert events(va.silence(35), "audio_muted") != [] and events(room(35), "audio_muted") == []
    # Typing in a quiet room: the clicks open the gate for a moment, the room between them does not.
    d = detector()
    pcm = va.clicks(30) + room(30)
    for i in range(0, len(pcm), WINDOW_SAMPLES):
        d.analyze_audio(i / va.RATE, pcm[i:i + WINDOW_SAMPLES])
    assert d.model is not None and 0 < d.model.runs < d.model.chunks * 0.5


@pytest.mark.parametrize("gain", [1.0, 0.1, 0.05])  # 0.05: the whisper-level voice of the noise test above
def test_speech_at_low_levels_reaches_the_model_and_is_flagged(gain: float) -> None:
    """Every chunk of speech above the gate runs the model, and so do the quiet chunks inside the speech while the
    model hears it: the talking flags are where the speech is, as with the gate off."""
    tl = va.timeline([("silence", 3.0), ("speech", va.speech(va.SENTENCES[3], "en-us") * gain), ("silence", 4.0),
                      ("speech", va.speech(va.SENTENCES[1], "en+f3") * gain), ("silence", 4.0)])
    pcm = tl.pcm + room(len(tl.pcm) / va.RATE)[:len(tl.pcm)]
    d = detector()
    assert d.model is not None
    ran, levels = [], chunk_dbfs(pcm)
    for i in range(0, len(pcm), 8 * CHUNK):  # windows of whole chunks, so ran[] lines up with the chunks
        d.analyze_audio(i / va.RATE, pcm[i:i + 8 * CHUNK])
        ran.append(d.model.ran)
    mask = np.concatenate(ran)[:len(levels)]
    assert mask[levels >= GATE].all()  # nothing above the gate is ever skipped
    assert not mask[:int(2.5 * va.RATE) // CHUNK].any()  # the room before the first word is
    for start, end in tl.speech:  # inside the speech, the model runs almost throughout
        inside = mask[int(start * va.RATE) // CHUNK:int(end * va.RATE) // CHUNK]
        assert inside.mean() > 0.9, (gain, inside.mean())
    found = events(pcm)
    assert_flags_match(found, tl.speech, TOLERANCE_S)
    assert_same_flags(found, events(pcm, config=OFF))


def test_flags_are_the_same_with_the_gate_on_and_off_on_the_labelled_set() -> None:
    cases: list[np.ndarray] = []
    for voice in ("en", "en-us+m3", "en+f3", "de", "fr+f2", "es"):  # the voices of the first test
        first = va.speech(va.SENTENCES[0], voice, speed=150)
        second = va.speech(va.SENTENCES[4], voice, speed=190)
        tl = va.timeline([("silence", 3.0), ("speech", first), ("silence", 6.0), ("speech", second),
                          ("silence", 5.0)])
        cases += [tl.pcm, tl.pcm + room(len(tl.pcm) / va.RATE)[:len(tl.pcm)]]
    tl = va.timeline([("silence", 3.0), ("speech", va.speech(va.SENTENCES[3], "en-us")), ("silence", 5.0)])
    seconds = len(tl.pcm) / va.RATE
    cases += [tl.pcm + va.white_noise(seconds, -35)[:len(tl.pcm)], tl.pcm + va.brown_noise(seconds, -30)[:len(tl.pcm)],
              tl.pcm + va.clicks(seconds)[:len(tl.pcm)], tl.pcm * 0.05 + va.white_noise(seconds, -50)[:len(tl.pcm)],
              tl.pcm * 0.05 + room(seconds)[:len(tl.pcm)]]  # the whisper, in a quiet room this time
    phrases = [va.speech(w, v) for w in ("hmm, no", "oh well, fine") for v in ("en", "en+f3")]
    cases += [_spaced(phrases, 1.5).pcm, _spaced(phrases, 4.5).pcm, va.clicks(30) + room(30)]
    identical = 0
    for pcm in cases:
        assert events(pcm, "audio_muted") == events(pcm, "audio_muted", config=OFF)  # the level, never the model
        gated, ungated = events(pcm), events(pcm, config=OFF)
        assert_same_flags(gated, ungated)
        identical += gated == ungated
    assert identical >= len(cases) * 2 // 3, (identical, len(cases))  # most are identical to the millisecond


def test_the_recurrent_state_is_carried_across_a_gated_stretch() -> None:
    """Measured (analyzers/voice.py): carrying the state over a gated stretch keeps the model's output closer to
    the ungated run than resetting it. So a gated chunk leaves the state alone and only moves the context on."""
    d = detector()
    assert d.model is not None
    speech = va.speech(va.SENTENCES[2]) + room(10)[:len(va.speech(va.SENTENCES[2]))]
    d.model.probabilities(speech[:len(speech) // CHUNK * CHUNK], GATE)
    d.model.probabilities(room(3)[:CHUNK * 40], GATE)  # the model's hangover runs, then the gate closes
    state = d.model.state.copy()
    quiet = room(2, -70)[:CHUNK * 30]
    d.model.probabilities(quiet, GATE)
    assert not d.model.ran.any()
    assert np.array_equal(d.model.state, state)  # carried, not reset
    assert np.array_equal(d.model.input[0, :64], quiet[-64:])  # the next chunk sees its real context
