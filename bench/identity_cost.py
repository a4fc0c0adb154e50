"""What one identity check's embedding costs, per model, on the same face crops in the same run.

    python -m bench.identity_cost [--crops 40] [--models Dlib,Dlib+FaceRes]

Crops come from bench/quality's labelled photos (every 4th picture with a face, cropped as the detector crops).
The models are called alternately, crop by crop, through `analyzers.embedder.embed` (the node's side of the
embedding process: the round trip, the crop and its mirror), so a busy machine slows them alike: report the ratio
of medians beside the milliseconds, and the CPU (`grep -m1 'model name' /proc/cpuinfo`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from analyzers import embedder
from analyzers.faces import detect_faces, load_face_detection
from analyzers.identity import face_crop
from analyzers.models import install_bundled_weights
from proctor.settings import Settings

DATA = Path(__file__).resolve().parent / "quality" / "data"


def crops(limit: int) -> list[np.ndarray]:
    load_face_detection()
    found = []
    for path in sorted(DATA.glob("*.jpg"))[::4]:
        rgb = np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])
        faces = detect_faces(rgb)
        if faces:
            found.append(np.ascontiguousarray(face_crop(rgb, faces[0])[:, :, ::-1], dtype=np.float32) / 255.0)
        if len(found) == limit:
            break
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=40)
    parser.add_argument("--models", default="Dlib,Dlib+FaceRes")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    settings = Settings.defaults()
    install_bundled_weights(settings)
    home = str(settings.models_home)
    pictures = crops(args.crops)
    for model in models:
        embedder.build(model, home)  # start each worker and build its model before timing
    times: dict[str, list[float]] = {model: [] for model in models}
    try:
        for crop in pictures:
            for model in models:
                started = time.perf_counter()
                embedder.embed(model, home, crop)
                times[model].append(1000 * (time.perf_counter() - started))
    finally:
        embedder.shutdown()
    for model, values in times.items():
        values.sort()
        print(f"{model}: {len(values)} crops, median {statistics.median(values):.0f} ms, "
              f"p10 {values[len(values) // 10]:.0f} ms, p90 {values[9 * len(values) // 10]:.0f} ms")
    if len(models) > 1:
        base = statistics.median(times[models[0]])
        for model in models[1:]:
            print(f"{model} / {models[0]}: {statistics.median(times[model]) / base:.2f}x (ratio of medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
