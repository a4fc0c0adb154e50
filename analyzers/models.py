"""Where each detector's weights come from, and whether they are present — without loading them.

`/healthz` and the UI call `model_status()`; it only looks at files and installed packages, so it is cheap.
The detectors themselves load and warm up once per media process.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from analyzers.blazeface import FACES_DETAIL, FULL_RANGE_MODEL, SHORT_RANGE_MODEL, missing_weights
from proctor.settings import Settings

# File names DeepFace looks for in $DEEPFACE_HOME/.deepface/weights for each selectable identity model.
IDENTITY_WEIGHTS = {
    "Dlib": "dlib_face_recognition_resnet_model_v1.dat",
    # Dlib's and the bundled FaceRes-deep's embeddings fused (analyzers/embedder.py); DeepFace runs the Dlib part.
    "Dlib+FaceRes": "dlib_face_recognition_resnet_model_v1.dat",
    "VGG-Face": "vgg_face_weights.onnx",
    "Facenet": "facenet_weights.onnx",
    "Facenet512": "facenet512_weights.onnx",
    "ArcFace": "arcface_weights.onnx",
    "SFace": "face_recognition_sface_2021dec.onnx",
}

# The default identity model (analyzers/embedder.py): Dlib fused with HSE FaceRes-deep, which ships in the package
# (analyzers/weights/NOTICE.md). embedder.FUSED_MODEL names it too; analyzers.models stays import-light.
FUSED_IDENTITY_MODEL = "Dlib+FaceRes"
BUNDLED_FACERES = Path(__file__).resolve().parent / "weights" / "faceres-deep.onnx"

# Where `proctor models fetch` installs a YOLO export, under models_home (analyzers/fetch.py writes it there).
FETCHED_PHONE_MODEL = "phone/yolo.onnx"
# NanoDet-m 416 ships in the package (analyzers/weights/NOTICE.md: origin, licences, SHA-256, conversion).
BUNDLED_PHONE_MODEL = Path(__file__).resolve().parent / "weights" / "nanodet-m-416.onnx"
# Its int8 quantisation (PHONE_NANODET_INT8, the default; analyzers/weights/quantize_nanodet.py builds it).
BUNDLED_PHONE_MODEL_INT8 = Path(__file__).resolve().parent / "weights" / "nanodet-m-416-int8.onnx"
BUNDLED_PHONE_DETAIL = ("bundled NanoDet-m 416 (COCO mAP 0.235: weak, phones missed often — fetch a YOLO model for "
                        "more: `proctor models fetch`)")
BUNDLED_PHONE_DETAIL_INT8 = BUNDLED_PHONE_DETAIL.replace("NanoDet-m 416 (", "NanoDet-m 416 int8 (", 1)


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
    if name in ("Dlib", FUSED_IDENTITY_MODEL) and importlib.util.find_spec("dlib") is None:
        return ModelStatus("unavailable", "dlib is not installed (pip install dlib-bin)")
    if name == FUSED_IDENTITY_MODEL:
        if not BUNDLED_FACERES.is_file():
            return ModelStatus("unavailable", f"bundled FaceRes-deep weights missing ({BUNDLED_FACERES}): reinstall "
                               "the package or rebuild them (analyzers/weights/NOTICE.md)")
        return ModelStatus("ok", f"DeepFace Dlib ({path}) fused with bundled FaceRes-deep ({BUNDLED_FACERES.name})")
    return ModelStatus("ok", f"DeepFace {name} ({path})")


def fetched_phone_model(settings: Settings) -> Path:
    return settings.models_home / FETCHED_PHONE_MODEL


@dataclass(frozen=True)
class PhoneModel:
    """Which COCO detector the phone detector runs, and why that one."""

    backend: str  # "yolo" | "nanodet"
    origin: str  # "user" (PHONE_MODEL_PATH) | "fetched" | "bundled"
    path: Path

    @property
    def what(self) -> str:
        """How error messages name the file."""
        return {"user": "PHONE_MODEL_PATH", "fetched": "fetched phone model"}.get(self.origin, "bundled NanoDet")

    def describe(self) -> str:
        if self.origin == "user":
            return f"YOLO ONNX {self.path} (user-supplied: PHONE_MODEL_PATH)"
        if self.origin == "fetched":
            return f"YOLO ONNX {self.path} (fetched: `proctor models fetch`)"
        return BUNDLED_PHONE_DETAIL_INT8 if self.path == BUNDLED_PHONE_MODEL_INT8 else BUNDLED_PHONE_DETAIL

    def problem(self) -> str | None:
        """Why it cannot run here (its file is missing), or None."""
        if self.path.is_file():
            return None
        if self.origin == "user":
            # Set but wrong: a mistake to fix, never silently replaced by the weaker bundled model.
            return f"PHONE_MODEL_PATH {self.path} does not exist: no phone detection"
        rebuild = "analyzers/weights/quantize_nanodet.py" if self.path == BUNDLED_PHONE_MODEL_INT8 \
            else "analyzers/weights/convert_nanodet.sh"
        return (f"bundled NanoDet weights missing ({self.path}): reinstall the package, rebuild them with "
                f"{rebuild}, or set PHONE_MODEL_PATH: no phone detection")


def phone_model(settings: Settings) -> PhoneModel:
    """PHONE_MODEL_PATH when set, else a YOLO export `proctor models fetch` installed, else the bundled NanoDet."""
    if settings.phone_model_path:
        return PhoneModel("yolo", "user", Path(settings.phone_model_path))
    fetched = fetched_phone_model(settings)
    if fetched.is_file():
        return PhoneModel("yolo", "fetched", fetched)
    return PhoneModel("nanodet", "bundled",
                      BUNDLED_PHONE_MODEL_INT8 if settings.phone_nanodet_int8 else BUNDLED_PHONE_MODEL)


def phone_status(settings: Settings) -> ModelStatus:
    model = phone_model(settings)
    problem = model.problem()
    if problem:
        return ModelStatus("unavailable", problem)
    return ModelStatus("ok", model.describe())


def mediapipe_status(what: str) -> ModelStatus:
    if importlib.util.find_spec("mediapipe") is None:
        return ModelStatus("unavailable", "mediapipe is not installed")
    return ModelStatus("ok", f"mediapipe {what} (bundled)")


def faces_status() -> ModelStatus:
    if importlib.util.find_spec("onnxruntime") is None:
        return ModelStatus("unavailable", "onnxruntime is not installed")
    missing = missing_weights(SHORT_RANGE_MODEL, FULL_RANGE_MODEL)
    if missing:
        return ModelStatus("unavailable", missing)
    return ModelStatus("ok", FACES_DETAIL)


def model_status(settings: Settings) -> dict[str, dict[str, str]]:
    statuses = {
        "faces": faces_status(),
        "gaze": mediapipe_status("FaceMesh with iris"),
        "identity": identity_status(settings),
        "phone": phone_status(settings),
    }
    return {name: asdict(status) for name, status in statuses.items()}
