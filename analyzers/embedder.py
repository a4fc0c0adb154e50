"""Face embeddings in a process of their own.

dlib's network (DeepFace "Dlib", the default identity model) holds the GIL for its whole inference, about 60 ms
a face on these cores. Run in the media node's process, every identity check froze the event loop carrying RTP
and every other detector for that long (measured: a thread ticking every 1 ms saw 61-ms gaps), which was the
whole tail of no_face-end alert latency (bench.latency p95 139 ms with identity on, 52 ms with it off).

So one worker process per media process and model builds the model once and embeds the crops it is sent
(~100 KB each, a few a second). The analysis thread waiting for the answer releases the GIL. A worker that
dies (OOM, a kill) fails the calls in flight and is started again on the next one.

Test-time augmentation: the worker embeds the crop *and* its horizontal mirror in one batch and returns their
normalised mean (`MIRROR`). A face and its mirror image are the same person, so averaging cancels part of what
pose, light from one side and the crop's asymmetry add to one embedding. Measured on bench/quality's labelled
set (Dlib, cosine, 2026-12-01, the same 407 same-person and 9057 different-person pairs): same-person p95
0.063 -> 0.057, max 0.091 -> 0.082; the closest impostor 0.0550 -> 0.0541; just below it, false mismatch
against the best of 3 references 4/432 -> 2/432, against one 36/407 -> 28/407. It costs a second inference:
`_worker_embed` took 144 -> 279 ms median (p10 104 -> 207 ms) on 40 of the set's crops, at this worker's nice
level on the 2 shared CPUs here. One batch of two costs what two calls cost (dlib runs a batch image by image)
but is one round trip. `embed_parts` runs one view alone (the crop, or its mirror image) and `combine` averages two
such answers exactly as one mirrored call does: analyzers/identity.py (IDENTITY_MIRROR=band) asks for the mirror
view only when the crop alone lands near the threshold.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from analyzers import dlib_onnx
from analyzers.models import BUNDLED_FACERES, FUSED_IDENTITY_MODEL, IDENTITY_WEIGHTS

log = logging.getLogger(__name__)

# The default identity model is two networks whose embeddings are fused (see `fuse`): dlib's ResNet (DeepFace
# "Dlib") and HSE FaceRes-deep (a MobileNet trained on VGGFace2 for identification, bundled as ONNX:
# analyzers/weights/NOTICE.md). They err on different pairs: measured on bench/quality's labelled set (cosine,
# best of 3 references, the calibration policy of bench.quality.metrics.calibrate), false mismatch at no false
# match was Dlib alone 10/432, FaceRes-deep alone 20/432, fused 2/432 (docs/models.md has the sweep).
FUSED_MODEL = FUSED_IDENTITY_MODEL
FUSED_PARTS = ("Dlib", "FaceRes-deep")
# Dlib's share of the fused cosine similarity: cos = DLIB_SHARE * cos_dlib + (1 - DLIB_SHARE) * cos_faceres.
DLIB_SHARE = 0.7
FACERES_SIZE = 224
# FaceRes was trained on Keras "caffe" input: BGR, 0..255, minus the ImageNet channel means (upstream
# HSE_FaceRec_tf age_gender_identity/facial_analysis.py).
FACERES_BGR_MEAN = np.asarray([103.939, 116.779, 123.68], dtype=np.float32)
FACERES_OUTPUT = "global_pooling/Mean:0"  # the 1024-d identity features (the other outputs: age, gender)
EMBED_TIMEOUT_S = 60.0
# IDENTITY_DLIB_RUNTIME: what runs dlib's network in the worker. "onnx": analyzers/dlib_onnx.py's conversion of the
# same .dat on onnxruntime (descriptors within 1e-5 of dlib's; measured 8.5 ms a chip against dlib's 129-217 ms on
# the Xeon, one thread: dlib-bin has no BLAS); "dlib": dlib's own loops (before/after measurements).
DLIB_RUNTIMES = ("onnx", "dlib")
DEFAULT_DLIB_RUNTIME = "onnx"
MIRROR = True  # embed the crop and its mirror image, return the normalised mean (see above)
NICE = 10  # a first call waits for the worker to start and build the model
_pools: dict[tuple[str, str, str], ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()

# --- in the worker process ----------------------------------------------------------------------------------
_model_name = ""
_runtime = DEFAULT_DLIB_RUNTIME
_dlib_swapped = False  # DeepFace's Dlib client runs on the ONNX conversion (IDENTITY_DLIB_RUNTIME=onnx)
_dlib_refused = False  # the conversion failed: dlib runs the network
_faceres: Any = None  # onnxruntime session of the bundled FaceRes-deep (the fused model only)


def _exit_with_parent(parent: int) -> None:
    """A media node killed with SIGKILL cannot stop its worker, and the worker's own end of the job queue keeps
    it waiting for ever: it leaves as soon as it is orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _deepface_name(model_name: str) -> str:
    return "Dlib" if model_name == FUSED_MODEL else model_name


def faceres_path() -> Path:
    return BUNDLED_FACERES


def _worker_init(model_name: str, models_home: str, parent: int, runtime: str = DEFAULT_DLIB_RUNTIME) -> None:
    global _model_name, _runtime
    threading.Thread(target=_exit_with_parent, args=(parent,), name="orphan-watch", daemon=True).start()
    # Below the node in CPU priority: on a busy machine the event loop carrying RTP and the per-frame detectors
    # come first; an identity check a little late costs nothing (a mismatch needs two checks in a row anyway).
    os.nice(NICE)
    # Before deepface is imported: it creates its folders at import and looks for weights under this home; ONNX
    # so that an installed TensorFlow or PyTorch is never picked (their weights are not the ones we ship).
    os.environ["DEEPFACE_HOME"] = models_home
    os.environ["DEEPFACE_BACKEND_ENGINE"] = "onnx"
    _model_name = model_name
    _runtime = runtime


def _worker_build() -> str:
    """Build the model (raises with DeepFace's reason) and run it once; returns the backend engine."""
    from deepface import DeepFace
    from deepface.commons.backend_utils import get_backend_engine
    from deepface.modules.modeling import ANY, AVAILABLE_MODELS

    engine = get_backend_engine()
    name = _deepface_name(_model_name)
    if engine != "onnx" and ANY not in AVAILABLE_MODELS["facial_recognition"].get(name, {}):
        raise RuntimeError(f"DeepFace runs on {engine} here; {name} needs its onnx backend")
    DeepFace.build_model(name)
    _use_dlib_runtime()
    if _model_name == FUSED_MODEL:
        _faceres_session()
    _worker_embed(np.full((160, 160, 3), 0.5, np.float32))
    return str(engine)


def dlib_onnx_path(dat: Path) -> Path:
    """Where the ONNX conversion of `dat` is kept: beside it, named by a digest of the .dat's bytes (a changed .dat
    never meets a stale conversion); a temporary folder when the weights folder is read-only."""
    import hashlib

    digest = hashlib.sha256(dat.read_bytes()).hexdigest()[:16]
    name = f"{dat.stem}.{digest}.onnx"
    if os.access(dat.parent, os.W_OK):
        return dat.parent / name
    import tempfile

    return Path(tempfile.gettempdir()) / "proctor-dlib-onnx" / name


def _use_dlib_runtime() -> None:
    """With IDENTITY_DLIB_RUNTIME=onnx, put the ONNX conversion of dlib's network in place of dlib's own inside
    DeepFace's Dlib client (built and cached by DeepFace: `build_model` returns the same object each call), so
    DeepFace's preprocessing (resize to 150x150, BGR to RGB, 0..255 uint8) is unchanged. Converted once per .dat
    (~0.3 s) and kept (`dlib_onnx_path`). Idempotent; a worker started again after a crash runs it on its first
    embedding. A .dat it cannot convert (another network, a damaged file) leaves dlib running it, logged once:
    the identity check still works, at dlib's cost."""
    global _dlib_swapped, _dlib_refused
    if _dlib_swapped or _dlib_refused or _runtime != "onnx" or _deepface_name(_model_name) != "Dlib":
        return
    from deepface import DeepFace

    client = DeepFace.build_model("Dlib")
    dat = Path(os.environ["DEEPFACE_HOME"]) / ".deepface" / "weights" / IDENTITY_WEIGHTS["Dlib"]
    try:
        target = dlib_onnx_path(dat)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            dlib_onnx.convert(dat, target)
        model = dlib_onnx.DlibResnetOnnx(target, threads=1)
    except (ValueError, OSError) as exc:
        _dlib_refused = True
        log.warning("identity: %s not converted to ONNX (%s); dlib runs it", dat, exc)
        return
    client.model.model = model
    _dlib_swapped = True


def _worker_dlib_runtime() -> str:
    """What runs dlib's network in this worker now: "onnx" once swapped in, else "dlib"."""
    return "onnx" if _dlib_swapped else "dlib"


def _faceres_session() -> Any:
    """The FaceRes-deep session, built on first use: a worker started again after a crash embeds without a
    build call first (DeepFace builds its own model lazily the same way)."""
    global _faceres
    if _faceres is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: this process is niced below the node, and a second embedding never waits on this one.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _faceres = ort.InferenceSession(str(faceres_path()), options, providers=["CPUExecutionProvider"])
    return _faceres


def mirrored_mean(embedding: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The mean direction of the two embeddings (each normalised first, so neither weighs more), at their mean
    length: cosine distances see only the direction, and a euclidean threshold (Dlib's 0.6 on descriptors of
    length ~1.4) keeps the scale it was tuned on."""
    a, b = np.asarray(embedding, np.float64), np.asarray(mirrored, np.float64)
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a < 1e-12 or norm_b < 1e-12:
        return (a + b) / 2
    direction = a / norm_a + b / norm_b
    length = float(np.linalg.norm(direction))
    if length < 1e-12:  # exactly opposite: no mean direction (never seen from a face model)
        return (a + b) / 2
    return np.asarray(direction / length * (norm_a + norm_b) / 2, dtype=np.float64)


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 else v


def fuse(dlib: np.ndarray, faceres: np.ndarray, dlib_share: float = DLIB_SHARE) -> np.ndarray:
    """One vector for two embeddings: each normalised, weighted by the square root of its share, concatenated.
    The cosine similarity of two such vectors is the shares' weighted mean of the two models' cosine
    similarities, so every distance (`analyzers.identity.distance`, best-of references) works on it unchanged."""
    return np.concatenate([unit(dlib) * np.sqrt(dlib_share), unit(faceres) * np.sqrt(1.0 - dlib_share)])


def faceres_input(bgr: np.ndarray) -> np.ndarray:
    """The crop (BGR float 0..1, any size) as FaceRes takes it: 224x224, 0..255 less the channel means."""
    scaled = cv2.resize(np.asarray(bgr, np.float32) * 255.0, (FACERES_SIZE, FACERES_SIZE),
                        interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(scaled - FACERES_BGR_MEAN, dtype=np.float32)


def _faceres_embed(bgr: np.ndarray, mirror: bool) -> np.ndarray:
    image = faceres_input(bgr)
    batch = [image, np.ascontiguousarray(image[:, ::-1])] if mirror else [image]
    session = _faceres_session()
    features = session.run([FACERES_OUTPUT], {session.get_inputs()[0].name: np.stack(batch)})[0]
    return unit(np.sum([unit(f) for f in features], axis=0))


def _worker_embed(bgr: np.ndarray, mirror: bool = MIRROR) -> np.ndarray:
    dlib = _deepface_embed(bgr, mirror)
    if _model_name != FUSED_MODEL:
        return dlib
    return fuse(dlib, _faceres_embed(bgr, mirror))


def _worker_parts(bgr: np.ndarray, mirrored: bool) -> list[np.ndarray]:
    """One pass of each network over the crop (or, `mirrored`, its mirror image): the raw embeddings, which
    `combine` turns into what `_worker_embed` returns. Two such calls (plain, then mirrored) give exactly the
    mirror-averaged embedding, so a check can stop after the first when its answer is clear (IDENTITY_MIRROR)."""
    image = np.ascontiguousarray(bgr[:, ::-1]) if mirrored else bgr
    parts = [_deepface_embed(image, mirror=False)]
    if _model_name == FUSED_MODEL:
        session = _faceres_session()
        features = session.run([FACERES_OUTPUT], {session.get_inputs()[0].name: faceres_input(image)[None]})[0]
        parts.append(np.asarray(features[0], dtype=np.float64))
    return parts


def combine(model_name: str, parts: list[np.ndarray], mirrored: list[np.ndarray] | None = None) -> np.ndarray:
    """The embedding from `_worker_parts`' raw embeddings: each network's, averaged with its mirror image's
    (`mirrored`, when given) as `_worker_embed` averages them, then fused for the fused model."""
    if mirrored is not None:
        parts = [mirrored_mean(a, b) for a, b in zip(parts, mirrored, strict=True)]
    if model_name == FUSED_MODEL:
        return fuse(parts[0], parts[1])
    return np.asarray(parts[0], dtype=np.float64)


def _deepface_embed(bgr: np.ndarray, mirror: bool) -> np.ndarray:
    from deepface import DeepFace

    name = _deepface_name(_model_name)
    _use_dlib_runtime()

    def represent(images: list[np.ndarray]) -> list[np.ndarray]:
        result = DeepFace.represent(images if len(images) > 1 else images[0], model_name=name,
                                    detector_backend="skip", enforce_detection=False, align=False)
        # One image: a list of faces; several: a list (one per image) of lists of faces.
        faces = [result] if len(images) == 1 else result
        return [np.asarray(found[0]["embedding"], dtype=np.float64) for found in faces]

    if not mirror:
        return represent([bgr])[0]
    # One batch, not two calls: one pass through DeepFace's preprocessing and the model's batch API.
    embedding, mirrored = represent([bgr, np.ascontiguousarray(bgr[:, ::-1])])
    return mirrored_mean(embedding, mirrored)


# --- in the media node ----------------------------------------------------------------------------------------
def _pool(model_name: str, models_home: str, runtime: str) -> ProcessPoolExecutor:
    if runtime not in DLIB_RUNTIMES:
        raise ValueError(f"unknown dlib runtime {runtime!r}: expected one of {', '.join(DLIB_RUNTIMES)}")
    key = (model_name, models_home, runtime)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            # spawn, not fork: the node has threads (and mediapipe's) that a forked child would inherit mid-state.
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init,
                                       initargs=(model_name, models_home, os.getpid(), runtime))
            _pools[key] = pool
        return pool


def _call(model_name: str, models_home: str, runtime: str, fn: Any, *args: Any) -> Any:
    pool = _pool(model_name, models_home, runtime)
    try:
        return pool.submit(fn, *args).result(timeout=EMBED_TIMEOUT_S)
    except BrokenProcessPool:
        with _pools_lock:  # the worker died: the next call starts a new one
            if _pools.get((model_name, models_home, runtime)) is pool:
                del _pools[(model_name, models_home, runtime)]
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def build(model_name: str, models_home: str, runtime: str = DEFAULT_DLIB_RUNTIME) -> str:
    """Start the worker and build the model in it; raises what the build raised. `runtime`: what runs dlib's
    network (IDENTITY_DLIB_RUNTIME, DLIB_RUNTIMES)."""
    return str(_call(model_name, models_home, runtime, _worker_build))


def embed(model_name: str, models_home: str, bgr: np.ndarray, mirror: bool = MIRROR,
          runtime: str = DEFAULT_DLIB_RUNTIME) -> np.ndarray:
    """The embedding of one face crop (BGR float32 in 0..1, as DeepFace's "skip" path takes it); `mirror`: the
    normalised mean with its mirror image's, in the same round trip."""
    return np.asarray(_call(model_name, models_home, runtime, _worker_embed, np.ascontiguousarray(bgr), mirror),
                      dtype=np.float64)


def embed_parts(model_name: str, models_home: str, bgr: np.ndarray, mirrored: bool = False,
                runtime: str = DEFAULT_DLIB_RUNTIME) -> list[np.ndarray]:
    """One pass of each network over the crop or (`mirrored`) its mirror image: see `_worker_parts`, `combine`."""
    parts = _call(model_name, models_home, runtime, _worker_parts, np.ascontiguousarray(bgr), mirrored)
    return [np.asarray(part, dtype=np.float64) for part in parts]


def shutdown() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
