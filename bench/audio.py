"""Audio cost per stream: Opus decode to 16 kHz mono (media_server/audio.py, both AUDIO_DECODER paths) and voice
activity (analyzers/voice.py, energy gate on and off), in CPU milliseconds per second of audio, on three tracks:

- speech: espeak-ng sentences (several voices) one after the other with half-second pauses, in a quiet room;
- quiet room: the load generator's room noise alone (about -60 dBFS, bench/synthetic.py);
- exam room: the load generator's track (that room, speech ~10 % of the time).

    .venv/bin/python -m bench.audio [--repeat 3]

Everything is measured in the same run, interleaved, each figure the best of `--repeat` (thread CPU time:
time.thread_time, so other work on a busy machine counts as little as possible); the CPU model is printed with
the figures (ARCHITECTURE.md: CPUs differ). The talking steps with the gate on and off are printed too: the gate
must not change them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyzers.voice import VoiceConfig, VoiceDetector
from bench import synthetic
from media_server.audio import AudioDecodePool, AudioStreamDecoder, Window
from proctor.settings import Settings
from tests.support import voice_audio as va

GATE_ON = Settings.defaults().voice_gate_dbfs


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text()
    for line in info.splitlines():
        if line.startswith("model name"):
            flags = "AVX-512" if "avx512f" in info else ("AVX2, no AVX-512" if "avx2" in info else "no AVX2")
            return f"{line.split(':', 1)[1].strip()} ({flags})"
    return "unknown"


@dataclass
class Track:
    name: str
    packets: list[bytes]
    seconds: float


def tracks() -> list[Track]:
    room = va.resample(synthetic.exam_room_pcm(), 48_000, va.RATE)
    quiet = room[:int(synthetic.EXAM_ROOM_SPEECH_AT_S * va.RATE)]  # before the remark: the room alone
    parts: list[tuple[str, object]] = []
    for i, text in enumerate(va.SENTENCES):
        parts += [("silence", 0.5), ("speech", va.speech(text, va.VOICES[i % len(va.VOICES)]) * 0.5)]
    speech = va.timeline(parts).pcm
    speech = speech + np.resize(quiet, len(speech))  # the same room behind the speaker
    exam = synthetic.exam_room_audio()
    return [Track("speech", va.opus_packets(speech), len(speech) / va.RATE),
            Track("quiet room (-60 dBFS)", va.opus_packets(np.tile(quiet, 3)), 3 * len(quiet) / va.RATE),
            Track("exam room (bench/synthetic.py)", exam, len(exam) * 0.02)]


def decode(track: Track, decoder: str) -> tuple[float, list[Window]]:
    """ms CPU per s of audio of the node's decoding step (run here, in this thread), and its windows."""
    pool = AudioDecodePool(decoder)
    stream = AudioStreamDecoder(lambda windows: None)
    windows: list[Window] = []
    started = time.thread_time()
    for i, packet in enumerate(track.packets):
        windows += pool._decode(stream, packet, i * 0.02)
    return (time.thread_time() - started) * 1000 / track.seconds, windows


def vad(windows: list[Window], seconds: float, gate: float | None) -> tuple[float, int, float]:
    """ms CPU per s of audio of the voice detector, its active talking steps, and the share of chunks gated."""
    detector = VoiceDetector(Settings.defaults(), VoiceConfig(gate_dbfs=gate))
    detector.load()
    talking = 0
    started = time.thread_time()
    for media_time, window in windows:
        talking += sum(1 for _, s in detector.analyze_audio(media_time, window) if s.kind == "talking" and s.active)
    return (time.thread_time() - started) * 1000 / seconds, talking, detector.gated() or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept")
    args = parser.parse_args()
    rows = []
    for track in tracks():
        best: dict[str, float] = {}
        steps: dict[str, int] = {}
        gated = 0.0
        windows: list[Window] = []
        for _ in range(max(1, args.repeat)):  # interleaved: a busy moment hurts every variant alike
            for decoder in ("pyav", "opus16k"):
                ms, out = decode(track, decoder)
                best[decoder] = min(best.get(decoder, ms), ms)
                if decoder == "opus16k":
                    windows = out
            for label, gate in (("gate off", None), ("gate on", GATE_ON)):
                ms, talking, share = vad(windows, track.seconds, gate)
                best[label] = min(best.get(label, ms), ms)
                steps[label] = talking
                if gate is not None:
                    gated = share
        rows.append((track, best, steps, gated))
    print(f"CPU: {cpu_model()}; VOICE_GATE_DBFS={GATE_ON}; best of {args.repeat}; ms CPU per s of audio per stream\n")
    print("| track | s | decode pyav | decode opus16k | VAD gate off | VAD gate on | chunks gated | talking steps "
          "off / on |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for track, best, steps, gated in rows:
        print(f"| {track.name} | {track.seconds:.0f} | {best['pyav']:.2f} | {best['opus16k']:.2f} | "
              f"{best['gate off']:.2f} | {best['gate on']:.2f} | {gated:.0%} | {steps['gate off']} / "
              f"{steps['gate on']} |")
    print("\nPer packet (20 ms): decode pyav "
          + ", ".join(f"{best['pyav'] * 20:.0f}" for _, best, _, _ in rows) + " us; opus16k "
          + ", ".join(f"{best['opus16k'] * 20:.0f}" for _, best, _, _ in rows) + " us (same track order).")


if __name__ == "__main__":
    main()
