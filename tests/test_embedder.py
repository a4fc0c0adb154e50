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

from analyzers import dlib_onnx, embedder
from analyzers.faces import detect_faces
from analyzers.identity import IdentityDetector, distance, face_crop
from analyzers.models import IDENTITY_WEIGHTS
from proctor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = "Dlib"


def _worker_pid(home: str) -> int:
    return int(embedder._call(MODEL, home, embedder.DEFAULT_DLIB_RUNTIME, os.getpid))


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
print(embedder._call({model!r}, {home!r}, embedder.DEFAULT_DLIB_RUNTIME, os.getpid), flush=True)
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


@pytest.mark.parametrize("model", ["Dlib+FaceRes", "Dlib"])
def test_the_onnx_runtime_embeds_what_dlib_embeds(models_home: Path, model: str) -> None:
    """IDENTITY_DLIB_RUNTIME=onnx (analyzers/dlib_onnx.py inside DeepFace's Dlib client) gives the embeddings dlib
    gives, through the whole worker path (DeepFace's preprocessing, the mirror average, the fusion), for real
    faces of several sizes; the conversion is kept beside the .dat, named by its digest."""
    import cv2
    from skimage import data

    home = str(models_home)
    photos = [data.astronaut()] + [cv2.imread(str(ROOT / "bench" / "quality" / "data" / name))[:, :, ::-1]
                                   for name in ("fr_obama.jpg", "cu_grace_70.jpg")]
    crops = []
    for photo in photos:
        rgb = np.ascontiguousarray(photo)
        face = max(detect_faces(rgb), key=lambda f: f.area)
        crops.append(np.ascontiguousarray(face_crop(rgb, face)[:, :, ::-1], dtype=np.float32) / 255.0)
    try:
        for bgr in crops:
            by_dlib = embedder.embed(model, home, bgr, runtime="dlib")
            by_onnx = embedder.embed(model, home, bgr, runtime="onnx")
            assert distance(by_dlib, by_onnx, "cosine") < 1e-9
            assert float(np.max(np.abs(by_dlib - by_onnx))) < 1e-5
            parts_dlib = embedder.embed_parts(model, home, bgr, mirrored=True, runtime="dlib")
            parts_onnx = embedder.embed_parts(model, home, bgr, mirrored=True, runtime="onnx")
            for a, b in zip(parts_dlib, parts_onnx, strict=True):
                assert float(np.max(np.abs(a - b))) < 1e-4
        assert embedder._call(model, home, "onnx", embedder._worker_dlib_runtime) == "onnx"
        assert embedder._call(model, home, "dlib", embedder._worker_dlib_runtime) == "dlib"
    finally:
        embedder.shutdown()
    kept = list((models_home / ".deepface" / "weights").glob("dlib_face_recognition_resnet_model_v1.*.onnx"))
    assert len(kept) == 1 and kept[0] == embedder.dlib_onnx_path(
        models_home / ".deepface" / "weights" / IDENTITY_WEIGHTS["Dlib"])


def test_a_dat_it_cannot_convert_leaves_dlib_running_it(models_home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """IDENTITY_DLIB_RUNTIME=onnx on weights the converter refuses (another network, a damaged file): the worker
    logs it once and keeps dlib running them, so identity checks go on (here in-process, as the worker runs it)."""

    def refuse(dat: Path, target: Path) -> Path:
        raise dlib_onnx.DlibFormatError(f"{dat}: not dlib's face recognition ResNet")

    monkeypatch.setenv("DEEPFACE_HOME", str(models_home))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "onnx")
    monkeypatch.setattr(embedder, "_model_name", "Dlib")
    monkeypatch.setattr(embedder, "_runtime", "onnx")
    monkeypatch.setattr(embedder, "_dlib_swapped", False)
    monkeypatch.setattr(embedder, "_dlib_refused", False)
    monkeypatch.setattr(embedder, "dlib_onnx_path", lambda dat: tmp_path / "never.onnx")
    monkeypatch.setattr(dlib_onnx, "convert", refuse)
    with caplog.at_level("WARNING", logger="analyzers.embedder"):
        embedder._use_dlib_runtime()
        embedder._use_dlib_runtime()  # refused once: not tried again
    assert embedder._worker_dlib_runtime() == "dlib"
    assert sum("not converted to ONNX" in r.getMessage() for r in caplog.records) == 1
    from deepface import DeepFace

    assert type(DeepFace.build_model("Dlib").model.model).__module__.startswith("_dlib_pybind11")
