"""The face detection models on onnxruntime (analyzers/blazeface.py, what the node runs) against mediapipe's own
FaceDetection graph (what it ran before), same models, same pictures, same run (issue 14).

    .venv/bin/python -m bench.face_models [--calls 300]

For each model (short range, full range): CPU per call on a 640x480 frame, letterbox and decoding included, for
mediapipe's graph and for BlazeFace on one onnxruntime thread, in alternating rounds; the network alone on
onnxruntime; and the agreement of the two over bench/quality's labelled photos at 640x480 (faces found by each,
largest score difference). CPU is the process's (mediapipe's graph runs threads of its own). Prints a markdown
table and writes bench/results/face_models.md and face_models.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from analyzers.base import onnx_session
from analyzers.blazeface import FULL_RANGE_MODEL, SHORT_RANGE_MODEL, BlazeFace, BlazeFaceModel, input_tensor
from bench.ingest import RESULTS, cpu_model, simd_words

PHOTOS = Path(__file__).resolve().parent / "quality" / "data"
SELECTION = {SHORT_RANGE_MODEL.name: 0, FULL_RANGE_MODEL.name: 1}  # mediapipe's model_selection
ROUNDS = 5


def _pictures() -> list[np.ndarray]:
    return [cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), (640, 480))
            for path in sorted(PHOTOS.glob("*.jpg"))]


def _cpu_ms(runs: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Process CPU ms per call of each, in alternating rounds after a warm-up."""
    spent = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        for _ in range(10):
            run()
    for _ in range(ROUNDS):
        for name, run in runs.items():
            began = time.process_time()
            for _ in range(calls // ROUNDS):
                run()
            spent[name] += time.process_time() - began
    return {name: round(1000 * cpu_s / (calls // ROUNDS * ROUNDS), 2) for name, cpu_s in spent.items()}


def measure(model: BlazeFaceModel, pictures: list[np.ndarray], calls: int) -> dict[str, Any]:
    import mediapipe as mp

    mine = BlazeFace(model, onnx_session(model.path, "bundled BlazeFace"))
    graph = mp.solutions.face_detection.FaceDetection(model_selection=SELECTION[model.name])
    frame = next(p for p in pictures if mine.detect(p))  # a picture with a face: decoding does its work
    tensor = input_tensor(frame, model.size)[0]
    cost = _cpu_ms({"mediapipe": lambda: graph.process(frame), "onnxruntime": lambda: mine.detect(frame),
                    "network": lambda: mine.raw(tensor)}, calls)
    faces_theirs = faces_mine = 0
    largest_gap = 0.0
    for picture in pictures:
        theirs = sorted(float(d.score[0]) for d in graph.process(picture).detections or [])
        ours = sorted(face.score for face in mine.detect(picture))
        faces_theirs += len(theirs)
        faces_mine += len(ours)
        if len(theirs) == len(ours):
            largest_gap = max([largest_gap, *(abs(a - b) for a, b in zip(theirs, ours, strict=True))])
    return {"model": model.name, "input": model.size, "mediapipe_ms": cost["mediapipe"],
            "onnxruntime_ms": cost["onnxruntime"], "network_ms": cost["network"],
            "ratio": round(cost["mediapipe"] / cost["onnxruntime"], 2), "photos": len(pictures),
            "faces_mediapipe": faces_theirs, "faces_onnxruntime": faces_mine,
            "largest_score_gap": round(largest_gap, 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per figure (in 5 alternating rounds)")
    args = parser.parse_args(argv)
    pictures = _pictures()
    rows = [measure(model, pictures, args.calls) for model in (SHORT_RANGE_MODEL, FULL_RANGE_MODEL)]
    machine = cpu_model()
    flags = simd_words(machine)
    head = ["model", "input", "mediapipe_ms", "onnxruntime_ms", "network_ms", "ratio", "photos", "faces_mediapipe",
            "faces_onnxruntime", "largest_score_gap"]
    lines = ["# Face detection: onnxruntime against mediapipe's graph", "",
             f"Command: `.venv/bin/python -m bench.face_models --calls {args.calls}`. CPU: {machine['model']}, "
             f"{os.cpu_count()} CPUs, {flags}. Process CPU "
             "ms per call on a 640x480 frame (letterbox and decoding included; `network`: onnxruntime's run alone), "
             "alternating rounds; faces found on bench/quality's photos at 640x480 by each, and the largest score "
             "difference where both found as many.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(row[key]) for key in head) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "face_models.md").write_text(text)
    (RESULTS / "face_models.json").write_text(json.dumps({"cpu": machine, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
