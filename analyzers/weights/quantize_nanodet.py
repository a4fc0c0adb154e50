"""Build nanodet-m-416-int8.onnx (the phone detector's default model) from nanodet-m-416.onnx: int8 weights and
activations, calibrated on the project's own labelled photos.

    .venv/bin/python analyzers/weights/quantize_nanodet.py [OUTPUT.onnx]     (~1 min; prints the SHA-256)

Why int8: the float model is the node's largest single cost (a scan is 47-62 ms of CPU here, 85 % of it in 3x3
convolutions that already run near the core's float peak); onnxruntime's u8s8 kernels (VNNI where the CPU has it)
do the same scan in ~17-23 ms. What it changes, measured on bench/quality's 228 photos against the float model
(NOTICE.md): as much as shifting the picture by one pixel changes the float model's own answers.

Three steps, each for a reason:
1. The TFJS graph pads before its only MaxPool with -inf (TensorFlow's SAME pooling) as a separate Pad; that -inf
   tensor has no finite range to calibrate, so the pad is folded into the MaxPool's own `pads` (MaxPool ignores
   padded cells: the same result exactly).
2. onnxruntime's pre-processing (shape inference, graph optimisation: the other Pads fold into their Convs).
3. Static QDQ quantisation, per-channel int8 weights in 7 bits (`reduce_range`), uint8 activations, MinMax
   calibration on every second photo of bench/quality/data (114 pictures: faces near and far, phones, empty rooms,
   poor light; the other 114 are the held-out check). 7 bits because x86 CPUs without VNNI (AVX2, AVX-512 before
   VNNI) multiply uint8 by int8 with VPMADDUBSW, whose 16-bit pair sums saturate for 8-bit weights: with 8 bits the
   same model answered differently on an AVX2 CPU (QEMU's Haswell: outputs off by up to 0.16) than with VNNI; with 7
   bits (255 x 64 x 2 < 32767) both give the same bytes. The stem stays float: the first convolution (3 input
   channels, full resolution: int8 gains nothing there), its activation and the MaxPool (onnxruntime pools uint8
   NCHW tensors 10x slower than float).

The session that runs it must not move QuantizeLinear/DequantizeLinear pairs across the MaxPool (onnxruntime's
QDQPropagationTransformer would make the pool uint8 again): analyzers/objects.py `_session` disables it.
Deterministic for a given onnxruntime: the calibration reads the photos in name order.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCE = HERE / "nanodet-m-416.onnx"
OUTPUT = HERE / "nanodet-m-416-int8.onnx"
CALIBRATION = ROOT / "bench" / "quality" / "data"
if str(ROOT) not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, str(ROOT))
from analyzers.objects import nanodet_blob  # noqa: E402 (after the path it needs)

INPUT = "input_1:0"
REDUCE_RANGE = True  # 7-bit weights: see the module doc
STEM = 3  # the first nodes left in float after folding: Conv, LeakyRelu, MaxPool


def fold_pad_into_maxpool(model: Any) -> int:
    """Fold every constant -inf Pad whose only reader is a MaxPool into that MaxPool's `pads`; returns how many."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    folded = []
    for node in model.graph.node:
        if node.op_type != "Pad" or len(node.input) < 3 or node.input[2] not in constants \
                or node.input[1] not in constants:
            continue
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
        users = readers.get(node.output[0], [])
        if mode != b"constant" or float(constants[node.input[2]]) != -np.inf or len(users) != 1 \
                or users[0].op_type != "MaxPool":
            continue
        pads = [int(v) for v in constants[node.input[1]]]  # N, C, H, W begins then N, C, H, W ends
        pool = users[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or any(attributes.get("pads", [])) \
                or attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        for attribute in [a for a in pool.attribute if a.name == "pads"]:
            pool.attribute.remove(attribute)
        pool.attribute.append(helper.make_attribute("pads", [pads[2], pads[3], pads[6], pads[7]]))
        pool.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


def calibration_photos(folder: Path = CALIBRATION) -> list[Path]:
    """Every second photo of bench/quality/data in name order (the others are held out)."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return photos[::2]


def _blobs(photos: list[Path]) -> Iterator[dict[str, np.ndarray]]:
    from PIL import Image

    for photo in photos:
        with Image.open(photo) as image:
            yield {INPUT: nanodet_blob(np.asarray(image.convert("RGB")))[0]}


def quantize(source: Path = SOURCE, output: Path = OUTPUT) -> str:
    """Write the int8 model to `output`; returns its SHA-256."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.blobs = _blobs(calibration_photos())

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.blobs, None)

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(source))
        if fold_pad_into_maxpool(model) != 1:
            raise ValueError(f"{source}: expected one -inf Pad before a MaxPool (is it NanoDet-m 416?)")
        folded, prepared = Path(tmp) / "folded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(folded))
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
        stem = list(onnx.load(str(prepared)).graph.node[:STEM])
        if [node.op_type for node in stem] != ["Conv", "LeakyRelu", "MaxPool"]:
            raise ValueError(f"{source}: unexpected stem {[node.op_type for node in stem]}")
        quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[node.name for node in stem],
                        reduce_range=REDUCE_RANGE)
    return hashlib.sha256(output.read_bytes()).hexdigest()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    print(f"{target}: SHA-256 {quantize(output=target)}")
