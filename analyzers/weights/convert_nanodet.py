"""TFJS graph model -> ONNX with tf2onnx, after the two fixes the old TFJS JSON needs (see convert_nanodet.sh; used
for NanoDet and, by convert_faceres.sh, for FaceRes-deep).

Run inside the throwaway conversion venv (tensorflow-cpu 2.21, tf2onnx 1.17, onnxruntime), never the project's:
    python convert_nanodet.py models/nanodet.json out.onnx [shipped.onnx]
With a third argument it runs both ONNX files on the same input and prints the largest output difference:
tf2onnx names and orders nodes differently from run to run, so a rebuild matches the shipped file in what it
computes, not byte for byte (its SHA-256 differs).

1. numpy 2 removed `np.product`, which tf2onnx 1.17's TFJS weight reader still calls: alias it to `np.prod`.
2. TF 2.21's shape inference wants every attr an op registers, but the TFJS JSON (written by an older
   converter) omits those at their defaults: fill each node's missing attrs from the registered op's defaults,
   and give `_FusedConv2D` its `TArgs` (one float per fused argument), which has no default to take.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

if not hasattr(np, "product"):
    np.product = np.prod  # type: ignore[attr-defined]  # tf2onnx 1.17 tfjs_utils.read_tfjs_weight

from google.protobuf.json_format import MessageToDict  # noqa: E402
from tensorflow.python.framework import op_def_registry  # noqa: E402

OPSET = 13


def _missing_attrs(node: dict[str, Any]) -> dict[str, Any]:
    """The registered defaults of the attrs `node` lacks, in the TFJS JSON form of an AttrValue."""
    attrs = node.get("attr", {})
    added: dict[str, Any] = {}
    if node["op"] == "_FusedConv2D" and "TArgs" not in attrs:
        count = int(attrs.get("num_args", {}).get("i", "0"))
        added["TArgs"] = {"list": {"type": ["DT_FLOAT"] * count}}
    op_def = op_def_registry.get(node["op"])
    if op_def is None:
        return added
    for attr in op_def.attr:
        if attr.name not in attrs and attr.name not in added and attr.HasField("default_value"):
            added[attr.name] = MessageToDict(attr.default_value)
    return added


def patch(model: dict[str, Any]) -> int:
    """Fill the missing attrs of every node (graph and functions) in place; returns how many were added."""
    nodes = list(model["modelTopology"].get("node", []))
    for func in model["modelTopology"].get("library", {}).get("function", []):
        nodes += func.get("nodeDef", [])
    added = 0
    for node in nodes:
        extra = _missing_attrs(node)
        if extra:
            node.setdefault("attr", {}).update(extra)
            added += len(extra)
    return added


def convert(model_json: Path, output: Path) -> None:
    model = json.loads(model_json.read_text())
    added = patch(model)
    print(f"{model_json.name}: {len(model['modelTopology']['node'])} nodes, {added} default attrs filled in")
    with tempfile.TemporaryDirectory() as tmp:
        # The weights manifest names the .bin files relative to the JSON: the patched copy lives beside them.
        for group in model["weightsManifest"]:
            for name in group["paths"]:
                shutil.copyfile(model_json.parent / name, Path(tmp) / name)
        patched = Path(tmp) / model_json.name
        patched.write_text(json.dumps(model))
        from tf2onnx import convert as tf2onnx_convert

        sys.argv = ["tf2onnx.convert", "--tfjs", str(patched), "--output", str(output), "--opset", str(OPSET)]
        tf2onnx_convert.main()


def largest_difference(a: Path, b: Path) -> float:
    """Run both models on one fixed random input; the largest absolute difference over all outputs (by name)."""
    import onnxruntime as ort

    outputs = []
    blob: np.ndarray | None = None
    for path in (a, b):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if blob is None:  # the model's own input shape (NanoDet 1x3x416x416, FaceRes 1x224x224x3), batch of 1
            shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
            blob = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
        names = sorted(o.name for o in session.get_outputs())
        outputs.append(dict(zip(names, session.run(names, {session.get_inputs()[0].name: blob}), strict=True)))
    if outputs[0].keys() != outputs[1].keys():
        raise SystemExit(f"different outputs: {sorted(outputs[0])} vs {sorted(outputs[1])}")
    return max(float(np.abs(outputs[0][k] - outputs[1][k]).max()) for k in outputs[0])


def main(args: list[str]) -> None:
    if len(args) not in (2, 3):
        sys.exit("usage: convert_nanodet.py MODEL.json OUTPUT.onnx [SHIPPED.onnx]")
    output = Path(args[1])
    convert(Path(args[0]), output)  # tf2onnx reads sys.argv: args were taken before
    shipped = Path(args[2]) if len(args) == 3 else None
    if shipped is not None and shipped.is_file():
        diff = largest_difference(output, shipped)
        print(f"largest output difference from {shipped}: {diff:.3g}")
        if diff > 1e-4:
            sys.exit("the rebuilt model computes something else than the shipped one")


if __name__ == "__main__":
    main(sys.argv[1:])
