"""The identity embedder's worker process (analyzers/embedder.py): embeddings are computed outside the media
node's process (dlib holds the GIL for a whole inference), a worker that dies is replaced on the next call, and
a worker whose node was killed with SIGKILL leaves by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from analyzers import embedder
from analyzers.faces import detect_faces
from analyzers.identity import IdentityDetector, distance, face_crop
from proctor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = "Dlib"


def _worker_pid(home: str) -> int:
    return int(embedder._call(MODEL, home, os.getpid))


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours counts as gone once reaped
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def test_embeddings_come_from_another_process_and_survive_its_death(models_home: Path) -> None:
    from skimage import data

    home = str(models_home)
    detector = IdentityDetector(Settings.defaults(deepface_home=home))
    detector.load()
    rgb = np.ascontiguousarray(data.astronaut())
    face = max(detect_faces(rgb), key=lambda f: f.area)
    bgr = np.ascontiguousarray(face_crop(rgb, face)[:, :, ::-1], dtype=np.float32) / 255.0
    first = embedder.embed(MODEL, home, bgr)
    assert first.shape == (128,)
    worker = _worker_pid(home)
    assert worker != os.getpid()
    os.kill(worker, signal.SIGKILL)  # OOM killer, say
    assert _gone(worker, 10)
    with pytest.raises(BrokenProcessPool):
        embedder.embed(MODEL, home, bgr)
    again = embedder.embed(MODEL, home, bgr)  # a new worker, the same model
    assert _worker_pid(home) not in (worker, os.getpid())
    assert distance(first, again, "cosine") < 1e-6
    assert detector.analyze(rgb, 1.0) == []  # no reference set: nothing to compare


SCRIPT = """
import os, sys, time
from analyzers import embedder
embedder.build({model!r}, {home!r})
print(embedder._call({model!r}, {home!r}, os.getpid), flush=True)
time.sleep(600)
"""


def test_worker_leaves_when_its_node_is_killed(models_home: Path) -> None:
    node = subprocess.Popen([sys.executable, "-c", SCRIPT.format(model=MODEL, home=str(models_home))], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = node.stdout.readline() if node.stdout else ""
        assert line.strip().isdigit(), line
        worker = int(line)
        os.kill(worker, 0)  # running
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        assert _gone(worker, 10), f"embedding worker {worker} outlived its killed node"
    finally:
        if node.poll() is None:
            node.kill()
