"""Face embeddings in a process of their own.

dlib's network (DeepFace "Dlib", the default identity model) holds the GIL for its whole inference, about 60 ms
a face on these cores. Run in the media node's process, every identity check froze the event loop carrying RTP
and every other detector for that long (measured: a thread ticking every 1 ms saw 61-ms gaps), which was the
whole tail of no_face-end alert latency (bench.latency p95 139 ms with identity on, 52 ms with it off).

So one worker process per media process and model builds the model once and embeds the crops it is sent
(~100 KB each, a few a second). The analysis thread waiting for the answer releases the GIL. A worker that
dies (OOM, a kill) fails the calls in flight and is started again on the next one.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

EMBED_TIMEOUT_S = 60.0
NICE = 10  # a first call waits for the worker to start and build the model
_pools: dict[tuple[str, str], ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()

# --- in the worker process ----------------------------------------------------------------------------------
_model_name = ""


def _exit_with_parent(parent: int) -> None:
    """A media node killed with SIGKILL cannot stop its worker, and the worker's own end of the job queue keeps
    it waiting for ever: it leaves as soon as it is orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_init(model_name: str, models_home: str, parent: int) -> None:
    global _model_name
    threading.Thread(target=_exit_with_parent, args=(parent,), name="orphan-watch", daemon=True).start()
    # Below the node in CPU priority: on a busy machine the event loop carrying RTP and the per-frame detectors
    # come first; an identity check a little late costs nothing (a mismatch needs two checks in a row anyway).
    os.nice(NICE)
    # Before deepface is imported: it creates its folders at import and looks for weights under this home; ONNX
    # so that an installed TensorFlow or PyTorch is never picked (their weights are not the ones we ship).
    os.environ["DEEPFACE_HOME"] = models_home
    os.environ["DEEPFACE_BACKEND_ENGINE"] = "onnx"
    _model_name = model_name


def _worker_build() -> str:
    """Build the model (raises with DeepFace's reason) and run it once; returns the backend engine."""
    from deepface import DeepFace
    from deepface.commons.backend_utils import get_backend_engine
    from deepface.modules.modeling import ANY, AVAILABLE_MODELS

    engine = get_backend_engine()
    if engine != "onnx" and ANY not in AVAILABLE_MODELS["facial_recognition"].get(_model_name, {}):
        raise RuntimeError(f"DeepFace runs on {engine} here; {_model_name} needs its onnx backend")
    DeepFace.build_model(_model_name)
    _worker_embed(np.full((160, 160, 3), 0.5, np.float32))
    return str(engine)


def _worker_embed(bgr: np.ndarray) -> np.ndarray:
    from deepface import DeepFace

    result = DeepFace.represent(bgr, model_name=_model_name, detector_backend="skip", enforce_detection=False,
                                align=False)
    return np.asarray(result[0]["embedding"], dtype=np.float64)


# --- in the media node ----------------------------------------------------------------------------------------
def _pool(model_name: str, models_home: str) -> ProcessPoolExecutor:
    key = (model_name, models_home)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            # spawn, not fork: the node has threads (and mediapipe's) that a forked child would inherit mid-state.
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(model_name, models_home, os.getpid()))
            _pools[key] = pool
        return pool


def _call(model_name: str, models_home: str, fn: Any, *args: Any) -> Any:
    pool = _pool(model_name, models_home)
    try:
        return pool.submit(fn, *args).result(timeout=EMBED_TIMEOUT_S)
    except BrokenProcessPool:
        with _pools_lock:  # the worker died: the next call starts a new one
            if _pools.get((model_name, models_home)) is pool:
                del _pools[(model_name, models_home)]
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def build(model_name: str, models_home: str) -> str:
    """Start the worker and build the model in it; raises what the build raised."""
    return str(_call(model_name, models_home, _worker_build))


def embed(model_name: str, models_home: str, bgr: np.ndarray) -> np.ndarray:
    """The embedding of one face crop (BGR float32 in 0..1, as DeepFace's "skip" path takes it)."""
    return np.asarray(_call(model_name, models_home, _worker_embed, np.ascontiguousarray(bgr)), dtype=np.float64)


def shutdown() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
