#!/usr/bin/env bash
# Rebuild analyzers/weights/face_detection_short_range.onnx and face_detection_full_range.onnx (the faces
# detector's models, analyzers/blazeface.py) from the TFLite files in mediapipe 0.10.21's wheel, in a throwaway
# directory and venv (TensorFlow is ~1.7 GB and no part of the project's venv). Needs Python 3.11 and the
# package registries; checks each file against the TFLite model and the shipped one (convert_blazeface.py) and
# prints the SHA-256s (a rebuild's differ from NOTICE.md's: tf2onnx orders nodes differently on every run).
#
#   analyzers/weights/convert_blazeface.sh [OUTPUT_DIR]      (default: the throwaway dir; ~2-4 min)
#   PYTHON=python3.12 WORK=/tmp/somewhere analyzers/weights/convert_blazeface.sh
set -euo pipefail

here="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"  # resolved, as $out is: a symlinked path is still the same dir
python="${PYTHON:-python3.11}"
work="$(realpath -m "${WORK:-$(mktemp -d /tmp/blazeface-convert.XXXXXX)}")"
mkdir -p "$work"
out="$(realpath -m "${1:-$work/out}")"
started=$SECONDS
cd "$work"

echo "== mediapipe 0.10.21's face detection models (pip verifies the wheel against the index's hash)"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest wheel "mediapipe==0.10.21"
"$python" - <<'PY'
import glob, zipfile
wheel = glob.glob("wheel/mediapipe-0.10.21-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in ("face_detection_short_range.tflite", "face_detection_full_range_sparse.tflite"):
        open(name, "wb").write(z.read("mediapipe/modules/face_detection/" + name))
PY
sha256sum face_detection_short_range.tflite face_detection_full_range_sparse.tflite

echo "== throwaway venv: tf2onnx 1.17, tensorflow-cpu 2.21"
"$python" -m venv venv
venv/bin/pip install --quiet "tf2onnx==1.17.*" "tensorflow-cpu==2.21.*" onnxruntime opencv-python-headless

echo "== convert and check"
# The shipped files to compare with: copied aside when the rebuild goes over them (none there: no comparison).
mkdir -p shipped
cp "$here"/face_detection_short_range.onnx "$here"/face_detection_full_range.onnx shipped/ 2>/dev/null || true
venv/bin/python "$here/convert_blazeface.py" "$work" "$out" "$work/shipped"

echo "== done in $((SECONDS - started)) s; the throwaway files are in $work (rm -rf it)"
sha256sum "$out"/face_detection_short_range.onnx "$out"/face_detection_full_range.onnx
