"""Real speech, silence and noise for the voice tests: espeak-ng speech (Debian package), numpy noise and tones.

Everything is made at run time (nothing downloaded, nothing checked in): `speech(text, voice)` is espeak-ng's
synthesis resampled to 16 kHz mono float32; `timeline(parts)` lays speech and silence one after the other and
says where the speech is; `write_wav` writes 16-bit PCM for Chromium's `--use-file-for-fake-audio-capture`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16_000
ESPEAK = shutil.which("espeak-ng")

SENTENCES = [
    "The answer to question three is the square root of two, and I am sure of it.",
    "Can you read me the second paragraph again, slowly, so that I can write it down.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "I think the correct option is B, because the integral of x squared is x cubed over three.",
    "Please tell me what the capital of Australia is, I forgot it again.",
    "The French revolution began in seventeen eighty nine with the storming of the Bastille.",
]
# espeak-ng voices and variants: men's and women's, several accents.
VOICES = ["en", "en-us", "en+f3", "en-us+m3", "en+f5", "en-gb-x-rp+m5", "de", "fr+f2", "es"]


def have_espeak() -> bool:
    return ESPEAK is not None


def speech(text: str, voice: str = "en", speed: int = 160, gain: float = 1.0) -> np.ndarray:
    """espeak-ng's speech of `text`, 16 kHz mono float32 in [-1, 1], leading and trailing silence trimmed."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                       capture_output=True, timeout=60)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    out = resample(pcm, rate, RATE)
    loud = np.flatnonzero(np.abs(out) > 0.01)
    if len(loud):
        out = out[loud[0]:loud[-1] + 1]
    return (out * gain).astype(np.float32)


def resample(pcm: np.ndarray, rate: int, to: int) -> np.ndarray:
    if rate == to:
        return pcm.astype(np.float32)
    n = int(round(len(pcm) * to / rate))
    return np.interp(np.arange(n) * rate / to, np.arange(len(pcm)), pcm).astype(np.float32)


def opus_packets(pcm16k: np.ndarray, frame_ms: int = 20) -> list[bytes]:
    """Encode like a browser: 48 kHz stereo Opus, frame_ms packets (20 unless the answer asks for another
    ptime), 32 kbit/s; the last frame padded with silence."""
    from bench.synthetic import encode_opus

    pcm48 = resample(pcm16k, RATE, 48_000)
    pcm48 = np.pad(pcm48, (0, -len(pcm48) % (48 * frame_ms)))
    return encode_opus(pcm48, frame_ms, channels=2)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def white_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rms = 10 ** (dbfs / 20)
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * rms).astype(np.float32)


def brown_noise(seconds: float, dbfs: float, seed: int = 1) -> np.ndarray:
    """Low rumble (traffic, a fan): integrated white noise, normalised."""
    x = np.cumsum(np.random.default_rng(seed).standard_normal(int(seconds * RATE)))
    x -= np.convolve(x, np.ones(801) / 801, mode="same")  # no DC drift
    x /= np.sqrt(np.mean(x ** 2)) + 1e-12
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def beeps(seconds: float, freq: float = 1000.0, every_s: float = 1.0, length_s: float = 0.1) -> np.ndarray:
    """A tone burst every `every_s` (like Chromium's fake microphone)."""
    t = np.arange(int(seconds * RATE)) / RATE
    on = (t % every_s) < length_s
    return (0.3 * np.sin(2 * np.pi * freq * t) * on).astype(np.float32)


def clicks(seconds: float, per_s: float = 6.0, seed: int = 2) -> np.ndarray:
    """Typing: short decaying noise bursts at random times."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), np.float32)
    burst = rng.standard_normal(240) * np.exp(-np.arange(240) / 40) * 0.3
    for at in rng.uniform(0, seconds - 0.02, int(seconds * per_s)):
        i = int(at * RATE)
        out[i:i + 240] += burst.astype(np.float32)
    return out


@dataclass
class Timeline:
    pcm: np.ndarray
    speech: list[tuple[float, float]]  # (start_s, end_s) of each speech part, in the file's time


def timeline(parts: list[tuple[str, object]]) -> Timeline:
    """[("silence", 5.0), ("speech", pcm), ("noise", pcm), ...] one after the other; speech parts are recorded."""
    pcms: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    at = 0
    for kind, value in parts:
        pcm = silence(float(value)) if kind == "silence" else np.asarray(value, np.float32)  # type: ignore[arg-type]
        if kind == "speech":
            spans.append((at / RATE, (at + len(pcm)) / RATE))
        pcms.append(pcm)
        at += len(pcm)
    return Timeline(np.concatenate(pcms), spans)


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> Path:
    data = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path
