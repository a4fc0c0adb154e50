"""What one identity check's embedding costs, per model, on the same face crops in the same run.

    python -m bench.identity_cost [--crops 40] [--models Dlib,Dlib+FaceRes]
    python -m bench.identity_cost --passes [--crops 40] [--models Dlib+FaceRes]
    python -m bench.identity_cost --band [--models Dlib+FaceRes]

Crops come from bench/quality's labelled photos (every 4th picture with a face, cropped as the detector crops).
The models are called alternately, crop by crop, through `analyzers.embedder.embed` (the node's side of the
embedding process: the round trip, the crop and its mirror), so a busy machine slows them alike: report the ratio
of medians beside the milliseconds, and the CPU (`grep -m1 'model name' /proc/cpuinfo`).

--passes measures the embedding process's CPU (and the wall time), on the same crops alternately, of one
mirror-averaged embedding (`embed`, IDENTITY_MIRROR=always), one pass of the crop alone (`embed_parts`, what
IDENTITY_MIRROR=band pays outside its band) and the two passes a check in the band pays (crop, then mirror image:
two round trips).

--band measures, on bench/quality's labelled set, how far the single-pass distance (the probe's crop alone) lies
from the mirror-averaged one, both against mirror-averaged references, as multiples of the model's threshold:
every different-photograph pair in both directions, best of 3 references (bench.quality's reference sets), and the
camera-like variants (bench.quality `camera_variants`) of its IMPOSTOR_PAIRS closest impostor pairs. It prints the
band outside which no single-pass decision differed (the data's own limits), how many comparisons fall in the band
the detector ships (analyzers/identity.py MIRROR_BAND), and the decisions that band changes (must be none).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from analyzers import embedder
from analyzers.faces import detect_faces, load_face_detection
from analyzers.identity import CROP_MARGIN, MIRROR_BAND, IdentityDetector, distance, face_crop
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


@dataclass
class Views:
    """One labelled picture's embeddings: the crop alone (single pass) and mirror-averaged."""

    single: np.ndarray
    averaged: np.ndarray


@dataclass
class Comparisons:
    """Distances of one kind of comparison: single-pass probe and mirror-averaged probe against the same
    mirror-averaged references, as multiples of the threshold."""

    name: str
    single: list[float] = field(default_factory=list)
    averaged: list[float] = field(default_factory=list)

    def add(self, single: float, averaged: float, threshold: float) -> None:
        self.single.append(single / threshold)
        self.averaged.append(averaged / threshold)


def views(model: str, home: str, detector: Any, rgb: np.ndarray) -> Views | None:
    """The picture's largest face (found as `IdentityDetector.embed` finds it), embedded both ways."""
    found = detector.look(rgb, thorough=True)
    if not found.usable or found.face is None:
        return None
    bgr = np.ascontiguousarray(face_crop(rgb, found.face, CROP_MARGIN)[:, :, ::-1], dtype=np.float32) / 255.0
    plain = embedder.embed_parts(model, home, bgr)
    mirrored = embedder.embed_parts(model, home, bgr, mirrored=True)
    return Views(embedder.combine(model, plain), embedder.combine(model, plain, mirrored))


def band_data(model: str, home: str) -> tuple[float, list[Comparisons]]:
    from bench.quality import manifest as mf
    from bench.quality import metrics as mx
    from bench.quality.__main__ import DEFAULT_DATA, IMPOSTOR_PAIRS, camera_variants, load_photos

    settings = replace(Settings.defaults(), identity_model=model)
    detector = IdentityDetector(settings)
    detector.load()
    threshold, metric = float(detector.threshold), detector.metric
    photos = load_photos(DEFAULT_DATA)
    by_file = {p.entry.file: p.entry for p in photos}
    people = [p for p in photos if p.entry.person is not None and not p.entry.poor_image
              and not detector.skips(p.rgb)]  # the clean pictures bench.quality pairs
    embedded: dict[str, Views] = {}
    samples: list[mx.Sample] = []
    for photo in people:
        seen = views(model, home, detector, photo.rgb)
        if seen is None:
            continue
        embedded[photo.entry.file] = seen
        person = photo.entry.person
        assert person is not None
        samples.append(mx.Sample(photo.entry.file, person, mf.independence_key(photo.entry, by_file), seen.averaged))

    def compare(group: Comparisons, reference: Views, probe: Views) -> None:
        group.add(distance(reference.averaged, probe.single, metric),
                  distance(reference.averaged, probe.averaged, metric), threshold)

    same, different = Comparisons("same person, one reference"), Comparisons("different, one reference")
    for a, b in itertools.combinations(samples, 2):
        if a.key == b.key and a.person == b.person:
            continue
        group = same if a.person == b.person else different
        compare(group, embedded[a.file], embedded[b.file])
        compare(group, embedded[b.file], embedded[a.file])
    best_same, best_different = Comparisons("same person, best of 3"), Comparisons("different, best of 3")
    for person, refs in mx.reference_sets(samples, 3):
        keys = {r.key for r in refs}
        for probe in samples:
            if probe.key in keys:
                continue
            view = embedded[probe.file]
            group = best_same if probe.person == person else best_different
            group.add(min(distance(embedded[r.file].averaged, view.single, metric) for r in refs),
                      min(distance(embedded[r.file].averaged, view.averaged, metric) for r in refs), threshold)
    # The comparisons nearest the threshold: camera-like variants of the closest impostor pairs.
    pairs = mx.pairs(samples, lambda x, y: distance(x, y, metric))
    closest = sorted((p for p in pairs if not p.same), key=lambda p: p.distance)[:IMPOSTOR_PAIRS]
    pictures = {p.entry.file: p.rgb for p in people}
    variants: dict[str, list[Views]] = {}
    for file in sorted({f for pair in closest for f in (pair.a, pair.b)}):
        found = (views(model, home, detector, v) for v in camera_variants(pictures[file]).values())
        variants[file] = [v for v in found if v is not None]
    impostors = Comparisons("impostor variants")
    for pair in closest:
        for va in variants[pair.a]:
            for vb in variants[pair.b]:
                compare(impostors, va, vb)
                compare(impostors, vb, va)
    return threshold, [same, different, best_same, best_different, impostors]


def band_report(model: str, threshold: float, groups: list[Comparisons]) -> None:
    every = Comparisons("all")
    for group in groups:
        every.single += group.single
        every.averaged += group.averaged
    single, averaged = np.asarray(every.single), np.asarray(every.averaged)
    shift = single - averaged
    # The data's own band: below `low` every averaged decision is a match, above `high` a mismatch.
    low = float(single[averaged > 1.0].min()) if (averaged > 1.0).any() else float("inf")
    high = float(single[averaged <= 1.0].max()) if (averaged <= 1.0).any() else 0.0
    width = MIRROR_BAND.get((model, "cosine"))
    shipped = None if width is None else (1.0 - width / threshold, 1.0 + width / threshold)  # in thresholds
    print(f"{model}: threshold {threshold:g}, {len(single)} comparisons; single - averaged distance, in thresholds: "
          f"max |shift| {np.abs(shift).max():.4f}, p99 {np.quantile(np.abs(shift), 0.99):.4f}, "
          f"min {shift.min():+.4f}, max {shift.max():+.4f}")
    print(f"  every single-pass distance below {low:.4f} T is an averaged match, every one above {high:.4f} T an "
          f"averaged mismatch; single-pass decisions that differ from the averaged: "
          f"{int(((single > 1.0) != (averaged > 1.0)).sum())}")
    for group in groups:
        s, a = np.asarray(group.single), np.asarray(group.averaged)
        line = (f"  {group.name}: {len(s)}, single/T min {s.min():.3f} max {s.max():.3f}, "
                f"max |shift| {np.abs(s - a).max():.4f} T")
        if shipped is not None:
            inside = (s >= shipped[0]) & (s <= shipped[1])
            changed = ~inside & ((s > 1.0) != (a > 1.0))
            line += f", in the band {int(inside.sum())}, outside {int((~inside).sum())}, decisions changed " \
                    f"{int(changed.sum())}"
        print(line)
    if shipped is not None:
        inside = (single >= shipped[0]) & (single <= shipped[1])
        changed = ~inside & ((single > 1.0) != (averaged > 1.0))
        print(f"  shipped band T +- {width:g} = {shipped[0]:.3f}-{shipped[1]:.3f} T: {int(inside.sum())} of "
              f"{len(single)} comparisons "
              f"inside (mirror pass), decisions changed outside it: {int(changed.sum())}")


def passes(model: str, home: str, pictures: list[np.ndarray]) -> None:
    """Per-check embedding cost: mirror-averaged in one call, the crop alone, crop then mirror (two calls)."""
    embedder.build(model, home)
    ways: dict[str, Callable[[np.ndarray], object]] = {
        "averaged (one call, always)": lambda crop: embedder.embed(model, home, crop),
        "single pass (band, outside)": lambda crop: embedder.embed_parts(model, home, crop),
        "two passes (band, inside)": lambda crop: (embedder.embed_parts(model, home, crop),
                                                   embedder.embed_parts(model, home, crop, mirrored=True))}
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    worker = psutil.Process(int(embedder._call(model, home, os.getpid)))
    for crop in pictures:
        for name, way in ways.items():
            started, before = time.perf_counter(), sum(worker.cpu_times()[:2])
            way(crop)
            cpu[name].append(1000 * (sum(worker.cpu_times()[:2]) - before))
            times[name].append(1000 * (time.perf_counter() - started))
    base = statistics.median(cpu["averaged (one call, always)"])
    for name in ways:
        print(f"{model} {name}: {len(times[name])} crops, worker CPU median {statistics.median(cpu[name]):.0f} ms "
              f"mean {statistics.fmean(cpu[name]):.0f} ms ({statistics.median(cpu[name]) / base:.2f}x); "
              f"wall median {statistics.median(times[name]):.0f} ms mean {statistics.fmean(times[name]):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=40)
    parser.add_argument("--models", default="Dlib,Dlib+FaceRes")
    parser.add_argument("--passes", action="store_true", help="single pass against mirror-averaged, per check")
    parser.add_argument("--band", action="store_true", help="single-pass against mirror-averaged distances on "
                        "bench/quality's labelled set")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    settings = Settings.defaults()
    install_bundled_weights(settings)
    home = str(settings.models_home)
    if args.band:
        try:
            for model in models:
                band_report(model, *band_data(model, home))
        finally:
            embedder.shutdown()
        return 0
    pictures = crops(args.crops)
    if args.passes:
        try:
            for model in models:
                passes(model, home, pictures)
        finally:
            embedder.shutdown()
        return 0
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
