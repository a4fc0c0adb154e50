"""Voice activity on the candidate's microphone: `talking` and `audio_muted` signals for core.rules.

Model: Silero VAD v5 (MIT), the ONNX file the `silero-vad` wheel ships (`silero_vad/data/silero_vad.onnx`, 2.3 MB),
run on onnxruntime; the package itself is never imported (its __init__ imports torch, which we do not install).
The model is recurrent: it takes 512 samples at 16 kHz (32 ms) plus the last 64 samples of context and a state
carried from the previous chunk, and gives the probability that the chunk is speech. So each stream keeps its
own state (one detector instance per stream, one worker thread at a time) and chunks run in order.

What it observes, for core.rules (docs/models.md has the measurements these numbers come from):
- `talking`: every STEP_CHUNKS chunks (0.256 s) one observation, active when at least MIN_VOICED of them are
  speech (probability >= threshold): the hysteresis (votes over a few seconds) turns them into a flag only
  after about two seconds of speech, so a word, a cough or a laugh never flags.
- `audio_muted`: every window (0.5 s) one observation, active when the window is digital silence (RMS below
  SILENT_DBFS: a muted track sends zeros; a real microphone's noise floor in a quiet room is far above it), and
  while no audio comes at all (`absent`: the track stopped or was removed); the rules flag it after 30 s. It needs
  the level only, never the model.

Energy gate (VOICE_GATE_DBFS, default -55 dBFS; off: none): a candidate in an exam is silent most of the time, so a
chunk whose RMS is below the gate skips the model (probability 0) while the model's last probability was below
GATE_OPEN_PROB, i.e. while it heard no speech. Once a chunk passes, the model runs on every chunk until its
probability falls again: the model's own hangover (it says "speech" for a while after speech ends, even on digital
silence) and the quiet syllables of whispered speech are kept, so talking flags come out as without the gate, or
one talking step earlier (below).
Across a gated stretch the recurrent state is carried, not reset (the context samples are still updated). Measured
on 36 labelled tracks (six espeak-ng voices in digital silence and in a -60 dBFS room at gains 1, 0.1 and 0.05,
remarks, typing, and sentence sets down to gain 0.01) against the same tracks ungated: carrying kept every flag, a
start or end one talking step (0.256 s) earlier in 11 of them, and lost flags only at gain 0.01 (speech below the
room's noise); resetting moved a flag by 2.8 s at gain 0.05 and lost flags at 0.02; letting the state settle
for up to 2 s of quiet before gating, or re-running the last 0.1-1 s on reopening, did not make the flags identical
and cost 10-50 % more model runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyzers.base import Detector, DetectorUnavailable, Signal, clamp01, load_once
from proctor.settings import Settings

log = logging.getLogger(__name__)

RATE = 16_000
CHUNK = 512  # samples per model call at 16 kHz (the model's fixed size)
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk
CHUNK_S = CHUNK / RATE


@dataclass(frozen=True)
class VoiceConfig:
    # Silero's own default; speech scores 0.9+, silence and steady noise below 0.1 (docs/models.md).
    threshold: float = 0.5
    step_chunks: int = 8  # chunks per talking observation: 0.256 s
    min_voiced: int = 3  # speech chunks in a step for it to count as talking (bridges the gaps between syllables)
    silent_dbfs: float = -70.0  # RMS below this is digital silence: a muted or dead microphone
    gate_dbfs: float | None = -55.0  # chunks quieter than this skip the model while it hears no speech; None: off


def model_path() -> Path:
    """The ONNX model inside the installed silero-vad wheel, found without importing the package (torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("silero-vad is not installed (pip install --no-deps silero-vad==6.2.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise DetectorUnavailable(f"silero-vad installed without its model ({path} missing)")
    return path


def _load_session() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread per run: the runs are tiny (32 ms of audio) and the analysis pool already bounds the threads.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])
    # Warm up once (the first run allocates).
    session.run(None, {"input": np.zeros((1, CHUNK + CONTEXT), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                       "sr": np.array(RATE, np.int64)})
    return session


# A gated chunk is skipped only while the model's last probability was below this: the model's own hangover after
# speech and the quiet syllables inside it still run the model. Measured with the gate at -55 dBFS on sentence sets
# at gains 1-0.01: 0.05 changed 45 of 2,547 talking steps (none at gain 0.05 and above), 0.2 and 0.5 changed 109-110
# for ~10 % fewer model runs; the model scores a quiet room 0.01-0.09.
GATE_OPEN_PROB = 0.05
_SR = np.array(RATE, np.int64)


class VoiceModel:
    """The shared ONNX session (onnxruntime's `run` is thread-safe) and one stream's recurrent state."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.chunks = 0  # chunks seen
        self.runs = 0  # chunks the model ran on (the rest were gated)
        self.ran = np.zeros(0, bool)  # which chunks of the last call ran the model
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        # [context | chunk]: the model's input, filled in place (no allocation per chunk)
        self.input = np.zeros((1, CONTEXT + CHUNK), np.float32)
        self.last = 0.0  # the model's last probability (0 after a gated chunk)

    def probabilities(self, pcm: np.ndarray, gate_dbfs: float | None = None) -> np.ndarray:
        """Speech probability of each whole 512-sample chunk of `pcm` (16 kHz mono float32), in order. With
        `gate_dbfs`, a chunk below that level while the model hears no speech is 0 without a model run; the
        recurrent state is carried across (module doc)."""
        n = len(pcm) // CHUNK
        out = np.zeros(n, np.float32)
        self.ran = np.zeros(n, bool)
        if n == 0:
            return out
        chunks = pcm[:n * CHUNK].reshape(n, CHUNK)
        if gate_dbfs is None:
            quiet = np.zeros(n, bool)
        else:  # mean square per chunk against the gate's, in one vectorised pass
            power = np.einsum("ij,ij->i", chunks, chunks, dtype=np.float64) / CHUNK
            quiet = power < 10 ** (gate_dbfs / 10)
        x = self.input
        for i in range(n):
            if quiet[i] and self.last < GATE_OPEN_PROB:
                x[0, :CONTEXT] = chunks[i, -CONTEXT:]  # the next chunk's context, as if the model had run
                self.last = 0.0
                continue
            x[0, CONTEXT:] = chunks[i]
            prob, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": _SR})
            x[0, :CONTEXT] = chunks[i, -CONTEXT:]
            out[i] = self.last = float(prob[0, 0])
            self.ran[i] = True
            self.runs += 1
        self.chunks += n
        return out


def dbfs(pcm: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    return 20 * np.log10(max(rms, 1e-10))


TimedSignal = tuple[float, Signal]  # (media time, signal): audio signals carry their own times


class VoiceDetector(Detector):
    """Voice activity and a silent microphone from the candidate's decoded audio (media_server/audio.py).

    Not a video detector: `audio` tells analyzers/live.py to feed it audio windows instead of frames."""

    name = "voice"
    fps = 0.0
    audio = True

    def __init__(self, settings: Settings, config: VoiceConfig | None = None) -> None:
        self.settings = settings
        self.config = config or VoiceConfig(gate_dbfs=settings.voice_gate_dbfs)
        self.model: VoiceModel | None = None
        self._lock = threading.Lock()  # one window at a time per stream (the state is sequential)
        self._pending = np.zeros(0, np.float32)  # samples short of a whole chunk, carried to the next window
        self._pending_at: float | None = None  # media time of _pending's first sample
        self._step: list[float] = []  # chunk probabilities of the step being filled
        self._step_at: float | None = None  # media time of its first chunk
        self.seconds = 0.0  # audio analysed (for stats and the benchmark)

    def load(self) -> None:
        try:
            session = load_once(("silero_vad", "onnx"), _load_session)
        except DetectorUnavailable:
            raise
        except Exception as exc:  # onnxruntime missing or the file unreadable
            raise DetectorUnavailable(f"voice activity model not loadable: {exc!r}") from exc
        self.model = VoiceModel(session)

    def status(self) -> tuple[bool, str]:
        return self.model is not None, "silero-vad v5 ONNX (onnxruntime)"

    def gated(self) -> float | None:
        """The share of chunks that skipped the model (None before any)."""
        if self.model is None or not self.model.chunks:
            return None
        return 1 - self.model.runs / self.model.chunks

    def analyze(self, rgb: np.ndarray, media_time_s: float) -> list[Signal]:
        return []  # audio only: see analyze_audio

    def analyze_audio(self, media_time_s: float, pcm: np.ndarray) -> list[TimedSignal]:
        """One window of decoded audio (16 kHz mono float32) starting at `media_time_s`: its signals, in order."""
        if self.model is None:
            raise RuntimeError("VoiceDetector.load() was not called")
        with self._lock:
            pcm = np.asarray(pcm, np.float32).reshape(-1)
            out: list[TimedSignal] = []
            silent = dbfs(pcm) < self.config.silent_dbfs
            out.append((media_time_s, Signal("audio_muted", silent, 1.0 if silent else 0.0,
                                             {"reason": "silent", "dbfs": round(max(dbfs(pcm), -120.0), 1)})))
            if self._pending_at is not None and abs(self._pending_at + len(self._pending) / RATE - media_time_s) < 0.05:
                start = self._pending_at
                pcm = np.concatenate([self._pending, pcm])
            else:
                start = media_time_s  # a gap (or the first window): the leftover and the open step are dropped,
                self._step, self._step_at = [], None  # and what comes after it is a new utterance
                if self._pending_at is not None:
                    self.model.reset()
            whole = len(pcm) // CHUNK * CHUNK
            probs = self.model.probabilities(pcm[:whole], self.config.gate_dbfs)
            self.seconds += whole / RATE
            self._pending, self._pending_at = pcm[whole:], start + whole / RATE
            for i, prob in enumerate(probs):
                if self._step_at is None:
                    self._step_at = start + i * CHUNK_S
                self._step.append(float(prob))
                if len(self._step) >= self.config.step_chunks:
                    out.append((self._step_at, self._talking(self._step)))
                    self._step, self._step_at = [], None
            # audio_muted first, then the talking steps: each kind's observations are in time order on their own.
            return out

    def _talking(self, probs: list[float]) -> Signal:
        voiced = sum(1 for p in probs if p >= self.config.threshold)
        active = voiced >= self.config.min_voiced
        return Signal("talking", active, clamp01(float(np.mean(sorted(probs)[-self.config.min_voiced:]))),
                      {"voiced_chunks": voiced, "chunks": len(probs), "peak": round(max(probs), 3)})

    def absent(self, media_time_s: float) -> list[TimedSignal]:
        """No audio has come for a while (the track stopped or its packets stopped): the microphone says nothing.
        The model's state is reset: what comes after a gap is a new utterance."""
        with self._lock:
            if self.model is not None:
                self.model.reset()
            self._pending, self._pending_at = np.zeros(0, np.float32), None
            self._step, self._step_at = [], None
            return [(media_time_s, Signal("audio_muted", True, 1.0, {"reason": "no_audio"}))]


# (media time, signal, wall time its audio arrived): what the slot hands the stream's rules.
Emit = Callable[[float, Signal, float], None]


class AudioSlot:
    """One voice detector on one stream (an AudioSubscriber of the stream's audio outlet): the windows that arrive
    while one batch runs wait, and run as the next batch, in order, in the analysis pool (never on the loop). The
    model's state is sequential, so windows are never dropped silently: beyond MAX_WAITING the oldest go, and the
    detector sees the gap and starts afresh after it.

    `tick(media_now)` (the stream's ticker) reports a microphone that stopped sending: no audio for ABSENT_AFTER_S
    of media time after some had come."""

    # Windows: 10 s of audio. The VAD is cheap (10 s of audio is ~0.1 s of CPU) and a drop resets the model's
    # state, so catching up after a busy moment beats dropping.
    MAX_WAITING = 20
    ABSENT_AFTER_S = 1.5

    def __init__(self, detector: VoiceDetector, executor: Executor, emit: Emit) -> None:
        self.detector = detector
        self.executor = executor
        self.emit = emit
        self.waiting: deque[tuple[float, np.ndarray, float]] = deque()
        self.busy = False
        self.closed = False
        self.last_end: float | None = None  # media time just after the last audio that came
        self.windows = 0
        self.dropped = 0
        self.cpu_ms = 0.0  # thread CPU time spent in the model (for stats and the benchmark)

    def on_audio(self, windows: list[tuple[float, np.ndarray]]) -> None:
        arrived = time.time()
        for media_time, pcm in windows:
            self.waiting.append((media_time, pcm, arrived))
            self.last_end = media_time + len(pcm) / RATE
        while len(self.waiting) > self.MAX_WAITING:
            self.waiting.popleft()
            self.dropped += 1
        if not self.busy and not self.closed:
            self._submit()

    def _submit(self) -> None:
        batch = list(self.waiting)
        self.waiting.clear()
        self.busy = True
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._run, batch)
        future.add_done_callback(lambda f: self._done(f, batch))

    def _run(self, batch: list[tuple[float, np.ndarray, float]]) -> list[tuple[float, Signal, float]]:
        started = time.thread_time()
        out: list[tuple[float, Signal, float]] = []
        for media_time, pcm, arrived in batch:
            out += [(t, signal, arrived) for t, signal in self.detector.analyze_audio(media_time, pcm)]
        self.cpu_ms += (time.thread_time() - started) * 1000
        return out

    def _done(self, future: asyncio.Future[list[tuple[float, Signal, float]]],
              batch: list[tuple[float, np.ndarray, float]]) -> None:
        self.busy = False
        self.windows += len(batch)
        try:
            results = future.result()
        except Exception:
            log.exception("voice detector failed")
            results = []
        if self.closed:
            return
        for media_time, signal, arrived in results:
            self.emit(media_time, signal, arrived)
        if self.waiting:
            self._submit()

    def tick(self, media_now: float) -> None:
        if self.closed or self.busy or self.waiting or self.last_end is None:
            return
        if media_now - self.last_end > self.ABSENT_AFTER_S:
            for media_time, signal in self.detector.absent(media_now):
                self.emit(media_time, signal, time.time())

    def stats(self) -> dict[str, Any]:
        seconds = self.detector.seconds
        gated = self.detector.gated()
        return {"windows": self.windows, "dropped": self.dropped, "audio_s": round(seconds, 1),
                "cpu_ms_per_s": round(self.cpu_ms / seconds, 2) if seconds else None,
                "gated": round(gated, 3) if gated is not None else None}
