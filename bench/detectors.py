"""What each detector costs per stream: CPU per analysed frame, and per stream-second at its default cadence.

    .venv/bin/python -m bench.detectors [--seconds 90]

The stream is the ingest benchmark's (bench/ingest.py): a moving, noisy face (tests.support.media.face_canvas) for
12 s, then nobody (empty_room) for 6 s, repeated; frames on the 7.5 fps grid of a VP8 base layer. Every detector
is built as a media node builds it (the bundled models, the identity reference set from the face) and gets frames
as the node's sampler gives them (media_server/decode.py FrameSampler._due at the detector's fps), with the
other detectors' signals passed to the phone's cadence as analyzers/live.py does. The phone detector runs twice
over the same frames in the same run: at a fixed PHONE_FPS (PHONE_ADAPTIVE=false, the old behaviour) and with
its adaptive cadence (the default). Identity runs three more times (IDENTITY_LEVER_ROWS and a fixed interval): with
the mirror pass always, with the full set ending the window's pace, and without the adaptive cadence; its figures
are split at the end
of the enrolment window (the first 60 s).

CPU is the process's CPU time (all its threads: mediapipe runs its own) plus its children's (the identity
embedding process) around each call, calls one at a time, so other load on the machine changes it little but
does not vanish: read the ratios, which come from the same run. Prints a markdown table and writes
bench/results/detectors.md and detectors.json. The lead's summary takes these as the per-stage cost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import psutil

from analyzers.base import Detector, Signal
from analyzers.faces import FaceDetector
from analyzers.gaze import GazeDetector, GazeMeasure, measure_landmarks
from analyzers.identity import ENROL_WINDOW_S, IdentityDetector
from analyzers.models import install_bundled_weights
from analyzers.objects import (
    NANODET_MEAN_BGR,
    NANODET_PAD_RGB,
    NANODET_SIZE,
    NANODET_STD_BGR,
    letterbox_image,
    nanodet_blob,
)
from analyzers.phone import PhoneDetector
from bench.ingest import CLIP_EMPTY_S, CLIP_FACE_S, RESULTS, cpu_model, moving_face, simd_words
from proctor.settings import Settings
from tests.support.media import empty_room, face_canvas

BASE_FPS = 7.5  # the frames a node decodes with temporal layers (a quarter of 30 fps)
LATE_S = ENROL_WINDOW_S  # identity's enrolment window: checks at IDENTITY_INTERVAL_S
# Identity's levers at exam start (the enrolment window), in rows of their own over the same frames:
# IDENTITY_MIRROR=band (the default) switched off, and the full reference set ending the fast pace
# (IDENTITY_FAST_UNTIL_ENROLLED, off by default: analyzers/identity.py says why) switched on.
# Faces at FACES_FPS throughout (FACES_SETTLED_FPS=0), the full-range cadence on: the pace's own before.
FACES_UNPACED = "faces, FACES_SETTLED_FPS=0 (before)"
# Faces with only a still face settling the pace (an empty seat at FACES_FPS, both models on every frame of it).
FACES_EMPTY_UNPACED = "faces, FACES_SETTLED_EMPTY=false (before)"
# Gaze as it was before it shared the faces detector's short-range detections: mediapipe's FaceMesh, which ran its
# own face detector on every frame (FaceMeshGaze).
GAZE_FACEMESH = "gaze, FaceMesh's own detection (before)"
IDENTITY_DLIB = "identity, IDENTITY_DLIB_RUNTIME=dlib (before)"
# The bundled NanoDet in float, as it ran before PHONE_NANODET_INT8 (adaptive cadence, same frames).
PHONE_FLOAT = "phone, adaptive, PHONE_NANODET_INT8=false (before)"
IDENTITY_LEVER_ROWS = ("identity, IDENTITY_MIRROR=always (before)", "identity, IDENTITY_FAST_UNTIL_ENROLLED=true",
                       IDENTITY_DLIB)


def clip_frames() -> tuple[list[np.ndarray], np.ndarray]:
    """90 moving noisy face frames (as bench/ingest.py builds them) and the empty room."""
    moving = moving_face(face_canvas())
    for frame in moving:
        frame.flags.writeable = False
    empty = empty_room()
    empty.flags.writeable = False
    return moving, empty


def frame_at(t: float, moving: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    period = CLIP_FACE_S + CLIP_EMPTY_S
    in_clip = t % period
    return moving[int(t * 30) % len(moving)] if in_clip < CLIP_FACE_S else empty


class Cpu:
    """CPU seconds of this process (every thread) and its children (the identity embedding process). The children
    are listed once, after the warm-up started them: listing walks /proc, which would count in every figure."""

    def __init__(self) -> None:
        self.children = psutil.Process().children(recursive=True)

    def now(self) -> float:
        children = 0.0
        for child in self.children:
            try:
                times = child.cpu_times()
                children += times.user + times.system
            except psutil.Error:
                pass
        return time.process_time() + children


def legacy_nanodet_blob(rgb: np.ndarray) -> np.ndarray:
    """NanoDet's input as analyzers/objects.py built it before issue 14: float HWC copies, then a transpose."""
    padded, _ = letterbox_image(rgb, NANODET_SIZE, NANODET_PAD_RGB)
    bgr = padded[:, :, ::-1].astype(np.float32)
    blob = (bgr - NANODET_MEAN_BGR) / NANODET_STD_BGR
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def blob_rows(rgb: np.ndarray, calls: int = 100) -> list[dict[str, Any]]:
    """Preparing one frame for NanoDet, before and now, alternating rounds (thread CPU time)."""
    same = float(np.abs(legacy_nanodet_blob(rgb) - nanodet_blob(rgb)[0]).max())
    spent = {"before (float HWC copies)": 0.0, "now (one pass per plane)": 0.0}
    for _ in range(5):
        for name, fn in (("before (float HWC copies)", legacy_nanodet_blob),
                         ("now (one pass per plane)", lambda frame: nanodet_blob(frame)[0])):
            began = time.thread_time()
            for _ in range(calls // 5):
                fn(rgb)
            spent[name] += time.thread_time() - began
    return [{"blob": name, "ms_cpu_per_frame": round(1000 * cpu_s / calls, 2), "max_difference": same}
            for name, cpu_s in spent.items()]


@dataclass
class Slot:
    name: str
    detector: Detector
    next_due: float = 0.0
    delivered: int = 0
    analysed: int = 0
    cpu_s: float = 0.0
    hints: bool = True  # its signals reach the other slots' `hint` (one row per detector does, as on a node)
    late_cpu_s: float = 0.0  # CPU from LATE_S on (identity: after its enrolment window)


def play(slots: list[Slot], seconds: float, cpu: Cpu) -> None:
    """The stream: each base-layer frame, each slot due at its detector's fps (the sampler's arithmetic), the
    phone's `wants`, `analyze`, and the signals passed to the other slots' `hint` (analyzers/live.py)."""
    moving, empty = clip_frames()
    for i in range(int(seconds * BASE_FPS)):
        t = i / BASE_FPS
        rgb = frame_at(t, moving, empty)
        for slot in slots:
            if t + 1e-6 < slot.next_due:
                continue
            period = 1.0 / slot.detector.fps
            slot.next_due = max(slot.next_due + period, t - period)
            slot.delivered += 1
            began = cpu.now()
            wants = getattr(slot.detector, "wants", None)
            signals: list[Signal] = []
            if wants is None or wants(t):
                signals = slot.detector.analyze(rgb, t)
                slot.analysed += 1
            slot.cpu_s += cpu.now() - began
            if t >= LATE_S:
                slot.late_cpu_s += cpu.now() - began
            if not slot.hints:
                continue
            for other in slots:
                hint = getattr(other.detector, "hint", None)
                # The two phone rows stand for one detector: neither hears the other.
                if hint is not None and other.detector.name != slot.detector.name:
                    for signal in signals:
                        hint(signal, t)


class FaceMeshGaze(GazeDetector):
    """The gaze detector before issue 14's shared detections: mediapipe's FaceMesh (static images, one face, iris
    landmarks) found the face and its landmarks itself on every frame. The same judgement follows (analyze)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        import mediapipe as mp

        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                                    min_detection_confidence=0.5)

    def measure_frame(self, rgb: np.ndarray, media_time_s: float) -> GazeMeasure | None:
        height, width = rgb.shape[:2]
        result = self.mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        points = np.array([(m.x * width, m.y * height, m.z * width)
                           for m in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        return measure_landmarks(points, width, height)


def build(settings: Settings) -> list[Slot]:
    face = face_canvas()
    faces, gaze, identity = FaceDetector(settings), GazeDetector(settings), IdentityDetector(settings)
    gaze.share(faces.frame_faces)  # as analyzers/registry.py builds a stream's detectors
    warm = PhoneDetector(replace(settings, phone_adaptive=False))  # loads the shared model once
    for detector in (faces, gaze, identity, warm):
        detector.load()
    if not identity.set_reference(face):  # also starts and warms the embedding process
        raise SystemExit("identity: the reference face was not embedded")
    gaze.set_baseline_from(face)
    for detector in (faces, gaze, identity, warm):  # first calls build graphs and pools: not part of the figure
        for _ in range(2):
            detector.analyze(face, 0.0)
    # Fresh phone detectors (per-stream cadence state) over the warm shared model.
    fixed, adaptive = (PhoneDetector(replace(settings, phone_adaptive=on)) for on in (False, True))
    phone_float = PhoneDetector(replace(settings, phone_nanodet_int8=False))
    for detector in (fixed, adaptive, phone_float):
        detector.load()
    # Faces and identity before their cadences (issue 14), over the same frames: the faces row with the full-range
    # model on every frame hints no one (the adaptive one does, as on a node); identity at a fixed interval is
    # IDENTITY_STABLE_INTERVAL_S = IDENTITY_INTERVAL_S.
    faces_every = FaceDetector(replace(settings, faces_full_range_interval_s=0.0, faces_settled_fps=0.0))
    faces_unpaced = FaceDetector(replace(settings, faces_settled_fps=0.0))  # FACES_SETTLED_FPS alone off
    faces_empty_unpaced = FaceDetector(replace(settings, faces_settled_empty=False))  # FACES_SETTLED_EMPTY alone off
    identity_fixed = IdentityDetector(replace(settings, identity_stable_interval_s=settings.identity_interval_s))
    gaze_facemesh = FaceMeshGaze(settings)
    for detector in (faces_every, faces_unpaced, faces_empty_unpaced, identity_fixed, gaze_facemesh):
        detector.load()
    identity_fixed.set_reference(face)
    gaze_facemesh.baseline = gaze.baseline
    for detector in (faces_every, faces_unpaced, faces_empty_unpaced, identity_fixed, gaze_facemesh):
        detector.analyze(face, 0.0)
    slots = [Slot("faces", faces), Slot("gaze", gaze), Slot("identity", identity),
            Slot("phone, fixed PHONE_FPS", fixed), Slot("phone, adaptive", adaptive),
            Slot("faces, full range every frame", faces_every, hints=False),
            Slot("identity, fixed IDENTITY_INTERVAL_S", identity_fixed),
            *identity_levers_off(settings, face), Slot(FACES_UNPACED, faces_unpaced, hints=False),
            Slot(FACES_EMPTY_UNPACED, faces_empty_unpaced, hints=False),
            Slot(GAZE_FACEMESH, gaze_facemesh, hints=False), Slot(PHONE_FLOAT, phone_float)]
    for slot in slots:  # the warm-up's embeddings and detections are not part of the figure
        if isinstance(slot.detector, IdentityDetector):
            slot.detector.passes = {"single": 0, "mirrored": 0}
        if isinstance(slot.detector, FaceDetector | GazeDetector):
            slot.detector.frame_faces.made = slot.detector.frame_faces.shared = 0
    return slots


def identity_levers_off(settings: Settings, face: np.ndarray) -> list[Slot]:
    """IDENTITY_LEVER_ROWS: identity with the mirror pass always (what every stream paid before), with the full
    set ending the window's pace, and with dlib's network run by dlib itself (before IDENTITY_DLIB_RUNTIME=onnx)."""
    slots = []
    changes: tuple[dict[str, Any], ...] = ({"identity_mirror": "always"}, {"identity_fast_until_enrolled": True},
                                           {"identity_dlib_runtime": "dlib"})
    for name, change in zip(IDENTITY_LEVER_ROWS, changes, strict=True):
        detector = IdentityDetector(replace(settings, **change))
        detector.load()
        detector.set_reference(face)
        for _ in range(2):  # the identity row's warm-up, which enrols its first frame at 0 s: the same start
            detector.analyze(face, 0.0)
        slots.append(Slot(name, detector))
    return slots


def identity_split(slot: Slot, seconds: float) -> dict[str, Any]:
    """One identity row's CPU in and after the enrolment window, its checks, and its embedding passes."""
    assert isinstance(slot.detector, IdentityDetector)
    window_s, late_s = min(seconds, LATE_S), max(seconds - LATE_S, 1e-9)
    return {"window_ms_per_stream_s": round(1000 * (slot.cpu_s - slot.late_cpu_s) / window_s, 1),
            "after_ms_per_stream_s": round(1000 * slot.late_cpu_s / late_s, 1),
            "whole_ms_per_stream_s": round(1000 * slot.cpu_s / seconds, 1), "checks": slot.analysed,
            "passes": dict(slot.detector.passes), "cadence": slot.detector.cadence.stats()}


def row(slot: Slot, seconds: float) -> dict[str, Any]:
    per_frame = 1000 * slot.cpu_s / max(slot.analysed, 1)
    return {"detector": slot.name, "fps": round(slot.detector.fps, 3), "delivered": slot.delivered,
            "analysed": slot.analysed, "analysed_per_s": round(slot.analysed / seconds, 3),
            "ms_cpu_per_frame": round(per_frame, 1),
            "ms_cpu_per_stream_s": round(1000 * slot.cpu_s / seconds, 1),
            "pct_of_a_core": round(100 * slot.cpu_s / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="media seconds of the stream (5 face/empty "
                        "cycles at 90)")
    args = parser.parse_args(argv)
    settings = Settings.defaults()
    install_bundled_weights(settings)
    started = time.perf_counter()
    slots = build(settings)
    cpu = Cpu()
    play(slots, args.seconds, cpu)
    rows = [row(slot, args.seconds) for slot in slots]
    blobs = blob_rows(face_canvas())
    fixed, adaptive = rows[3], rows[4]
    ratio = fixed["ms_cpu_per_stream_s"] / max(adaptive["ms_cpu_per_stream_s"], 1e-9)
    cadence = slots[4].detector.cadence if isinstance(slots[4].detector, PhoneDetector) else None
    machine = cpu_model()
    before = ("phone, fixed PHONE_FPS", "faces, full range every frame", "identity, fixed IDENTITY_INTERVAL_S",
              *IDENTITY_LEVER_ROWS, FACES_UNPACED, FACES_EMPTY_UNPACED, GAZE_FACEMESH, PHONE_FLOAT)
    all_on = sum(r["ms_cpu_per_stream_s"] for r in rows if r["detector"] not in before)
    by_name = {slot.name: slot for slot in slots}
    faces_detector, identity_detector = by_name["faces"].detector, by_name["identity"].detector
    faces_unpaced_detector = by_name[FACES_UNPACED].detector
    faces_empty_detector = by_name[FACES_EMPTY_UNPACED].detector
    assert isinstance(faces_detector, FaceDetector) and isinstance(identity_detector, IdentityDetector)
    assert isinstance(faces_unpaced_detector, FaceDetector) and isinstance(faces_empty_detector, FaceDetector)
    late_s = max(args.seconds - LATE_S, 1e-9)
    # The full-range cadence alone: both rows at FACES_FPS throughout (FACES_SETTLED_FPS=0).
    levers = {"faces_ratio": round(by_name["faces, full range every frame"].cpu_s
                                   / max(by_name[FACES_UNPACED].cpu_s, 1e-9), 2),
              "identity_ratio": round(rows[6]["ms_cpu_per_stream_s"] / max(rows[2]["ms_cpu_per_stream_s"], 1e-9), 2),
              "identity_after_enrolment_ms_per_stream_s": {
                  name: round(1000 * by_name[name].late_cpu_s / late_s, 1)
                  for name in ("identity", "identity, fixed IDENTITY_INTERVAL_S")},
              "faces_cadence": faces_unpaced_detector.full_range.stats(),
              "faces_pace_ratio": round(by_name[FACES_UNPACED].cpu_s / max(by_name["faces"].cpu_s, 1e-9), 2),
              "faces_pace": faces_detector.cadence.stats(),
              "faces_empty_ratio": round(by_name[FACES_EMPTY_UNPACED].cpu_s / max(by_name["faces"].cpu_s, 1e-9), 2),
              "faces_empty_pace": faces_empty_detector.cadence.stats(),
              "gaze_ratio": round(by_name[GAZE_FACEMESH].cpu_s / max(by_name["gaze"].cpu_s, 1e-9), 2),
              "phone_int8_ratio": round(next(r["ms_cpu_per_frame"] for r in rows if r["detector"] == PHONE_FLOAT)
                                        / max(adaptive["ms_cpu_per_frame"], 1e-9), 2),
              "gaze_analysed": by_name["gaze"].analysed,
              "gaze_shared": faces_detector.frame_faces.stats()["shared"],
              "identity_cadence": identity_detector.cadence.stats(),
              "identity_levers": {name: identity_split(by_name[name], args.seconds)
                                  for name in ("identity", *IDENTITY_LEVER_ROWS)}}
    result = {"machine": machine, "seconds": args.seconds, "rows": rows, "phone_ratio": round(ratio, 2),
              "nanodet_blob": blobs,
              "phone_cadence": cadence.stats() if cadence else None,
              "phone_model": slots[4].detector.status()[1], "all_detectors_ms_per_stream_s": round(all_on, 1),
              "faces_identity": levers,
              "settings": {"faces_fps": settings.faces_fps, "gaze_fps": settings.gaze_fps,
                           "identity_interval_s": settings.identity_interval_s, "phone_fps": settings.phone_fps,
                           "phone_interval_s": settings.phone_interval_s, "phone_burst_s": settings.phone_burst_s,
                           "phone_hint_ratio": settings.phone_hint_ratio,
                           "faces_full_range_interval_s": settings.faces_full_range_interval_s,
                           "faces_settled_fps": settings.faces_settled_fps,
                           "faces_settled_empty": settings.faces_settled_empty,
                           "identity_stable_interval_s": settings.identity_stable_interval_s,
                           "identity_mirror": settings.identity_mirror,
                           "identity_fast_until_enrolled": settings.identity_fast_until_enrolled,
                           "identity_dlib_runtime": settings.identity_dlib_runtime},
              "run_s": round(time.perf_counter() - started, 1)}
    flags = simd_words(machine)
    lines = ["# Detector cost per stream", "",
             f"Command: `.venv/bin/python -m bench.detectors --seconds {args.seconds:g}` ({args.seconds:g} media "
             f"seconds of the ingest clip: {CLIP_FACE_S} s of a moving face, {CLIP_EMPTY_S} s of nobody, on the "
             f"{BASE_FPS} fps base layer). CPU: {machine['model']}, {os.cpu_count()} CPUs, {flags}. CPU time of the "
             "process and its children around each call (identity includes its embedding process); calls one at "
             f"a time, both phone rows over the same frames in the same run. Phone model: {result['phone_model']}.", "",
             "| detector | fps asked | frames delivered | analysed | analysed/s | ms CPU per analysed frame | "
             "ms CPU per stream-second | % of a core |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['detector']} | {r['fps']} | {r['delivered']} | {r['analysed']} | {r['analysed_per_s']} | "
              f"{r['ms_cpu_per_frame']} | {r['ms_cpu_per_stream_s']} | {r['pct_of_a_core']} |" for r in rows]
    lines += ["", f"Phone: the adaptive cadence (PHONE_INTERVAL_S {settings.phone_interval_s:g}, PHONE_BURST_S "
              f"{settings.phone_burst_s:g}) costs {ratio:.1f}x less per stream than a fixed PHONE_FPS "
              f"{settings.phone_fps:g} (scans and bursts: {result['phone_cadence']}). Every detector on at its "
              f"default cadence (phone adaptive): {all_on:.1f} ms CPU per stream-second "
              f"({all_on / 10:.1f} % of a core). The bundled NanoDet in int8 (PHONE_NANODET_INT8, the default) "
              f"costs {levers['phone_int8_ratio']:.2f}x less per scan than in float (before), same cadence, same "
              "frames.", "",
              f"Faces: the full-range model only where it can change the answer (FACES_FULL_RANGE_INTERVAL_S "
              f"{settings.faces_full_range_interval_s:g}) costs {levers['faces_ratio']:.1f}x less per stream than "
              f"on every frame, both with FACES_SETTLED_FPS=0 (frames, full-range passes and why: "
              f"{levers['faces_cadence']}); FACES_SETTLED_FPS {settings.faces_settled_fps:g} (every other frame "
              f"while the picture is settled) costs {levers['faces_pace_ratio']:.2f}x less than faces at FACES_FPS "
              f"{settings.faces_fps:g} throughout ({levers['faces_pace']}); of that, FACES_SETTLED_EMPTY (an empty "
              f"seat settles too) {levers['faces_empty_ratio']:.2f}x less than only a still face settling "
              f"({levers['faces_empty_pace']}). Identity: the "
              f"adaptive cadence (IDENTITY_STABLE_INTERVAL_S {settings.identity_stable_interval_s:g}) costs "
              f"{levers['identity_ratio']:.1f}x less over the whole run, whose first {LATE_S:g} s are the enrolment "
              f"window (checks every IDENTITY_INTERVAL_S); after it, ms CPU per "
              f"stream-second: {levers['identity_after_enrolment_ms_per_stream_s']} (checks as scans, hinted, rare: "
              f"{levers['identity_cadence']}; the clip's face leaves every {CLIP_FACE_S:g} s and each return is "
              f"checked at once).", "",
              f"Gaze: its landmarks on the faces detector's short-range detection of the same frame (analyzers/"
              f"faces.py FrameFaces) cost {levers['gaze_ratio']:.2f}x less per stream than FaceMesh finding the face "
              f"itself (before); {levers['gaze_shared']} of gaze's {levers['gaze_analysed']} frames used the "
              f"detections the faces detector had made (the faces pace keeps to gaze's frames while settled: "
              f"{levers['faces_pace']}). The faces row pays for the detections of the frames both analysed.", "",
              "Identity at exam start (the enrolment window, every stream in it at once), over the same frames: the "
              "default (IDENTITY_MIRROR=band: the mirror pass only near the threshold; IDENTITY_DLIB_RUNTIME=onnx: "
              "dlib's network on onnxruntime), the mirror pass always (before), IDENTITY_FAST_UNTIL_ENROLLED=true "
              "(off by default: a full reference set ends the window's fast pace), and dlib's network run by dlib "
              "(before):", "",
              "| identity | ms CPU per stream-second, first 60 s | after | whole run | checks | passes "
              "(single, mirrored) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {v['window_ms_per_stream_s']} | {v['after_ms_per_stream_s']} | "
              f"{v['whole_ms_per_stream_s']} | {v['checks']} | {v['passes']['single']}, {v['passes']['mirrored']} |"
              for name, v in levers["identity_levers"].items()]
    lines += ["",
              "NanoDet's input (letterbox, BGR, normalise, NCHW) for one 640x480 frame, thread CPU, same run (the "
              "phone rows above use the new one):", "",
              "| blob | ms CPU per frame |", "| --- | --- |"]
    lines += [f"| {b['blob']} | {b['ms_cpu_per_frame']} |" for b in blobs]
    lines += ["", "onnxruntime session options (analyzers/objects.py `_session`) measured no gain beyond noise on "
              "one thread: the graph is already optimised at ORT_ENABLE_ALL; no spinning pool exists with one "
              "intra-op thread.", "", f"Run: {result['run_s']} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "detectors.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "detectors.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
