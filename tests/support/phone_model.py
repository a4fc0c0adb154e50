"""A tiny ONNX stand-in for a YOLOv8 export: the real input/output layout, an output the test chooses.

Graph: images[1,3,640,640] -> ReduceMean -> Reshape[1,1,1] -> Mul 0 -> Add(constant [1,84,8400]) -> output0.
The input feeds the output (so onnxruntime really runs the graph on it), but contributes exactly zero: the
output is the constant, built from `detections`. Every other candidate column is all zeros (score 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 80
CANDIDATES = 8400
SIZE = 640


def yolo_output(detections: Iterable[tuple[Sequence[float], Mapping[int, float]]]) -> np.ndarray:
    """[1, 84, 8400] float32: detection i fills column i with (cx, cy, w, h) in input pixels and its scores."""
    out = np.zeros((1, 4 + CLASSES, CANDIDATES), np.float32)
    for column, (box, scores) in enumerate(detections):
        out[0, :4, column] = box
        for class_id, score in scores.items():
            out[0, 4 + class_id, column] = score
    return out


def build_model(path: Path, detections: Iterable[tuple[Sequence[float], Mapping[int, float]]]) -> Path:
    constant = yolo_output(detections)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1),  # [1,1,1,1]
        helper.make_node("Reshape", ["mean", "shape3"], ["mean3"]),  # [1,1,1]
        helper.make_node("Mul", ["mean3", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),  # broadcast to [1,84,8400]
    ]
    graph = helper.make_graph(
        nodes,
        "yolov8-standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, CANDIDATES])],
        initializer=[
            numpy_helper.from_array(constant, "table"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape3"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
