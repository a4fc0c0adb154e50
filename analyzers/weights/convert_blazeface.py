"""Convert mediapipe's face detection models (TFLite) to the ONNX files analyzers/blazeface.py runs; run by
convert_blazeface.sh in a throwaway venv with TensorFlow and tf2onnx (never the project's venv).

    python convert_blazeface.py SOURCE_DIR OUTPUT_DIR [SHIPPED_DIR]

SOURCE_DIR holds mediapipe 0.10.21's `face_detection_short_range.tflite` and `face_detection_full_range_sparse.tflite`
(its wheel's mediapipe/modules/face_detection/). The full-range model stores 46 of its weight tensors sparse, each
read through a DENSIFY op, which tf2onnx cannot convert; `densify` writes them out dense (the values TFLite's own
DENSIFY computes) and drops those ops: the same model, the same outputs (checked: 0.0 apart). Then tf2onnx
(`--tflite`, opset 17). Each ONNX file is checked against the TFLite interpreter on the original model (outputs
within 1e-3 on real-photo inputs) and, when SHIPPED_DIR holds them, against the shipped files (within 1e-4): tf2onnx
orders nodes differently from run to run, so the bytes differ. A file reaches OUTPUT_DIR only once its checks pass;
the intermediate files stay in SOURCE_DIR.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

MODELS = {  # source TFLite -> shipped ONNX
    "face_detection_short_range.tflite": "face_detection_short_range.onnx",
    "face_detection_full_range_sparse.tflite": "face_detection_full_range.onnx",
}


def _interpreter(path: Path, keep_all: bool = False) -> object:
    import tensorflow as tf

    # Without the default XNNPACK delegate: it folds the sparse weights itself and the DENSIFY outputs stay unset.
    return tf.lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=keep_all,
                               experimental_op_resolver_type=tf.lite.experimental.OpResolverType
                               .BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def densify(source: Path, target: Path) -> int:
    """`source` with every DENSIFY op's output stored as a constant and the op removed; returns how many."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    interpreter = _interpreter(source, keep_all=True)
    interpreter.allocate_tensors()  # type: ignore[attr-defined]
    entry = interpreter.get_input_details()[0]  # type: ignore[attr-defined]
    interpreter.set_tensor(entry["index"], np.zeros(entry["shape"], entry["dtype"]))  # type: ignore[attr-defined]
    interpreter.invoke()  # type: ignore[attr-defined]
    model = flatbuffer_utils.read_model(str(source))
    graph = model.subgraphs[0]
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    kept, done = [], 0
    for op in graph.operators:
        if codes[op.opcodeIndex] != schema.BuiltinOperator.DENSIFY:
            kept.append(op)
            continue
        dense = interpreter.get_tensor(op.outputs[0])  # type: ignore[attr-defined]
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(dense.tobytes(), np.uint8)
        model.buffers.append(buffer)
        graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
        sparse = graph.tensors[op.inputs[0]]  # now read by nothing: no data, so tf2onnx skips it
        sparse.sparsity = None
        sparse.buffer = 0
        done += 1
    graph.operators = kept
    flatbuffer_utils.write_model(model, str(target))
    return done


def _inputs(size: int) -> list[np.ndarray]:
    """Real-photo inputs in the model's range: bench/quality's first photos, squashed to the input size."""
    import cv2

    photos = sorted((Path(__file__).resolve().parents[2] / "bench" / "quality" / "data").glob("*.jpg"))[:8]
    return [(cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (size, size)).astype(np.float32)
             / 127.5 - 1.0)[None] for p in photos]


def _tflite_outputs(path: Path, tensor: np.ndarray) -> list[np.ndarray]:
    interpreter = _interpreter(path)
    interpreter.allocate_tensors()  # type: ignore[attr-defined]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)  # type: ignore[attr-defined]
    interpreter.invoke()  # type: ignore[attr-defined]
    outputs = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]  # type: ignore[attr-defined]
    return sorted(outputs, key=lambda a: a.shape[-1])


def _onnx_outputs(path: Path, tensor: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sorted(session.run(None, {session.get_inputs()[0].name: tensor}), key=lambda a: a.shape[-1])


def _largest_gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def main(source_dir: Path, output_dir: Path, shipped_dir: Path | None) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    if shipped_dir is not None and shipped_dir.resolve() == output_dir.resolve():
        raise SystemExit("SHIPPED_DIR is OUTPUT_DIR: the rebuild would be compared with itself (copy the shipped files "
                         "elsewhere first, as convert_blazeface.sh does)")
    for tflite, onnx_name in MODELS.items():
        source, out = source_dir / tflite, output_dir / onnx_name
        dense = source_dir / (source.stem + "-dense.tflite")  # beside the source: never into OUTPUT_DIR
        converted = source_dir / (source.stem + ".onnx")  # replaces `out` only once every check has passed
        print(f"{tflite}: {densify(source, dense)} sparse tensors made dense")
        run = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(dense), "--output",
                              str(converted), "--opset", "17"], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"tf2onnx failed on {dense}:\n{run.stdout}\n{run.stderr}")
        size = int(_interpreter(source).get_input_details()[0]["shape"][1])  # type: ignore[attr-defined]
        inputs = _inputs(size)
        if len(inputs) != 8:
            raise SystemExit(f"{len(inputs)} of 8 check photos found in bench/quality/data: run from a checkout")
        shipped_file = None if shipped_dir is None else shipped_dir / onnx_name
        if shipped_file is not None and not shipped_file.is_file():
            print(f"{onnx_name}: no shipped file at {shipped_file}: checked against the TFLite model only")
            shipped_file = None
        for tensor in inputs:
            gap = _largest_gap(_tflite_outputs(source, tensor), _onnx_outputs(converted, tensor))
            if gap > 1e-3:
                raise SystemExit(f"{onnx_name}: outputs {gap} from the TFLite model's")
            if shipped_file is not None:
                shipped = _largest_gap(_onnx_outputs(shipped_file, tensor), _onnx_outputs(converted, tensor))
                if shipped > 1e-4:
                    raise SystemExit(f"{onnx_name}: outputs {shipped} from the shipped file's")
        converted.replace(out)
        print(f"{onnx_name}: agrees with the TFLite model{' and the shipped file' if shipped_file else ''} on 8 "
              "real-photo inputs")


if __name__ == "__main__":
    args = [Path(arg) for arg in sys.argv[1:]]
    if len(args) not in (2, 3):
        raise SystemExit(__doc__)
    main(args[0], args[1], args[2] if len(args) == 3 else None)
