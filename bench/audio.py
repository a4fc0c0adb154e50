"""Audio cost per stream: Opus decode + resample to 16 kHz mono (media_server/audio.py) and voice activity
(analyzers/voice.py), in CPU milliseconds per second of audio, on one minute of espeak-ng speech and silence.

    .venv/bin/python -m bench.audio

Thread CPU time (time.thread_time), so other work on a busy machine does not count; the CPU model is printed
with the figures (ARCHITECTURE.md: CPUs differ).
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np

from analyzers.voice import VoiceDetector
from media_server.audio import AudioDecodePool, AudioStreamDecoder
from proctor.settings import Settings
from tests.support import voice_audio as va


def opus_packets(pcm16k: np.ndarray) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = 48_000, "stereo", "s16", 32_000
    pcm48 = va.resample(pcm16k, va.RATE, 48_000)
    pcm48 = np.pad(pcm48, (0, -len(pcm48) % 960))
    out: list[bytes] = []
    for i in range(0, len(pcm48), 960):
        mono = (np.clip(pcm48[i:i + 960], -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, i
        out += [bytes(p) for p in codec.encode(frame)]
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            return line.split(":", 1)[1].strip() + (" (AVX-512)" if "avx512f" in flags else " (no AVX-512)")
    return "unknown"


def main() -> None:
    parts: list[tuple[str, object]] = []
    for i, text in enumerate(va.SENTENCES):
        parts += [("silence", 4.0), ("speech", va.speech(text, va.VOICES[i % len(va.VOICES)]))]
    pcm = va.timeline(parts).pcm
    seconds = len(pcm) / va.RATE
    packets = opus_packets(pcm)

    pool = AudioDecodePool()  # its decoding step, run here in this thread (no loop: windows are returned)
    decoder = AudioStreamDecoder(lambda windows: None)
    windows = []
    started = time.thread_time()
    for i, packet in enumerate(packets):
        windows += pool._decode(decoder, packet, i * 0.02)
    decode_ms = (time.thread_time() - started) * 1000

    detector = VoiceDetector(Settings.defaults())
    detector.load()
    started = time.thread_time()
    talking = 0
    for media_time, window in windows:
        talking += sum(1 for _, s in detector.analyze_audio(media_time, window) if s.kind == "talking" and s.active)
    vad_ms = (time.thread_time() - started) * 1000

    print(f"CPU: {cpu_model()}; {seconds:.0f} s of audio, {len(packets)} Opus packets, {len(windows)} windows")
    print(f"decode + resample: {decode_ms / seconds:.2f} ms CPU per s of audio ({decode_ms / seconds / 10:.2f} % "
          f"of a core per stream)")
    print(f"voice activity:    {vad_ms / seconds:.2f} ms CPU per s of audio ({vad_ms / seconds / 10:.2f} % "
          f"of a core per stream); {talking} talking steps")


if __name__ == "__main__":
    main()
