"""Where each detector's weights come from, and whether they are present — without loading them.

`/healthz` and the UI call `model_status()`; it only looks at files and installed packages, so it is cheap.
The detectors themselves load and warm up once per media process.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from proctor.settings import Settings

# File names DeepFace looks for in $DEEPFACE_HOME/.deepface/weights for each selectable identity model.
IDENTITY_WEIGHTS = {
    "Dlib": "dlib_face_recognition_resnet_model_v1.dat",
    "VGG-Face": "vgg_face_weights.onnx",
    "Facenet": "facenet_weights.onnx",
    "Facenet512": "facenet512_weights.onnx",
    "ArcFace": "arcface_weights.onnx",
    "SFace": "face_recognition_sface_2021dec.onnx",
}


@dataclass(frozen=True)
class ModelStatus:
    status: str  # "ok", or "unavailable" with a reason a person can act on
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _package_dir(name: str) -> Path | None:
    # face_recognition_models imports pkg_resources at import time: find its files without importing it.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def install_bundled_weights(settings: Settings) -> list[Path]:
    """Place the weights that ship in pip packages where DeepFace expects them; returns what is present."""
    placed = []
    target_dir = settings.deepface_weights_dir
    package = _package_dir("face_recognition_models")
    if package is not None:
        source = package / "models" / IDENTITY_WEIGHTS["Dlib"]
        target = target_dir / source.name
        if source.is_file() and not target.is_file():
            target_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        if target.is_file():
            placed.append(target)
    return placed


def identity_status(settings: Settings) -> ModelStatus:
    name = settings.identity_model
    path = settings.deepface_weights_dir / IDENTITY_WEIGHTS[name]
    if not path.is_file():
        return ModelStatus("unavailable", f"{name} weights missing: place {path.name} in {path.parent}")
    if name == "Dlib" and importlib.util.find_spec("dlib") is None:
        return ModelStatus("unavailable", "dlib is not installed (pip install dlib-bin)")
    return ModelStatus("ok", f"DeepFace {name} ({path})")


def phone_status(settings: Settings) -> ModelStatus:
    if not settings.phone_model_path:
        return ModelStatus("unavailable", "PHONE_MODEL_PATH is not set: no phone detection "
                                          "(point it at a YOLOv8 ONNX export)")
    path = Path(settings.phone_model_path)
    if not path.is_file():
        return ModelStatus("unavailable", f"PHONE_MODEL_PATH {path} does not exist")
    return ModelStatus("ok", f"YOLOv8 ONNX ({path})")


def mediapipe_status(what: str) -> ModelStatus:
    if importlib.util.find_spec("mediapipe") is None:
        return ModelStatus("unavailable", "mediapipe is not installed")
    return ModelStatus("ok", f"mediapipe {what} (bundled)")


def model_status(settings: Settings) -> dict[str, dict[str, str]]:
    statuses = {
        "faces": mediapipe_status("face detection, full range"),
        "gaze": mediapipe_status("FaceMesh with iris"),
        "identity": identity_status(settings),
        "phone": phone_status(settings),
    }
    return {name: asdict(status) for name, status in statuses.items()}
