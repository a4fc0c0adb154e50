"""Short labelled clips judged as a reviewer sees them: events, not frames.

No real webcam video ships offline, so a clip is scripted from the labelled photos like a candidate on camera:
bench/quality/clips.json lists clips, each a `reference` photo (the enrolment photo: identity reference and gaze
baseline) and a sequence of scenes `{"image": "<file in data/>", "seconds": 6}`. Every scene is letterboxed to
640x480 (the bars in the picture's own border colour, so a dark picture stays dark), moved a little from frame
to frame (sway and zoom) with sensor-like noise, at 15 fps, then ENCODED AND DECODED WITH VP8 (PyAV, the
options bench/synthetic.py encodes with), so the detectors see real codec artefacts.

The detectors are built as the node builds them (`analyzers.registry.build_detectors`), get the reference like
analyzers/live.py `_load_reference`, and each sees the decoded frames at its own `fps`; every Signal goes to
`core.rules.EventRules` (ticked every 0.5 s of media time, flushed at the end): the events a reviewer would see.

Expected events come from the scenes' labels, each from its scene's start to its end (adjacent scenes expecting
one kind make one event):
  faces 0 (and not poor)          no_face
  faces >= 2 or persons >= 2      multiple_people
  phones >= 1                     phone
  poor_image                      poor_image; no_face there is a false flag (a covered camera is not an absence),
                                  the other kinds are not judged there
  person != the reference's       identity_mismatch (a scene without a known person, e.g. a group, is not
                                  judged for identity)
A scene marked `"glimpse": true` expects nothing whatever its labels (a phone shown for a second must not be
flagged: phone voting). looking_away is not labelled: its events are listed as unlabelled, never scored.

Scoring: an expected event is FOUND when a produced event of its kind overlaps it; a produced event that overlaps
no expected event of its kind (nor a scene where that kind is not judged) is a FALSE FLAG.
Delays: start = event start - expected start (of the first overlapping event), end = event end - expected end
(of the last); core.rules dates an event from the first frame of its run, so these are near 0 when a detector
sees it at once; confirm = the media time the event was started (a reviewer is told) - expected start.
"""

from __future__ import annotations

import fractions
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.quality import manifest as mf

CLIPS_FILE = Path(__file__).resolve().parent / "clips.json"
WIDTH, HEIGHT = 640, 480
CLIP_FPS = 15
TICK_S = 0.5
BITRATE = 800_000  # a webcam's VP8 at 640x480
GOP = 60
SCORED = ("no_face", "multiple_people", "phone", "poor_image", "identity_mismatch")
UNLABELLED = ("looking_away",)
EPS = 1e-6


# --- the manifest -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    image: str
    seconds: float
    motion: bool = True
    glimpse: bool = False


@dataclass(frozen=True)
class Clip:
    name: str
    description: str
    reference: str
    scenes: tuple[Scene, ...]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.scenes)

    def spans(self) -> list[tuple[Scene, float, float]]:
        out, t = [], 0.0
        for scene in self.scenes:
            out.append((scene, t, t + scene.seconds))
            t += scene.seconds
        return out


def parse(raw: list[dict[str, Any]]) -> list[Clip]:
    return [Clip(c["name"], c.get("description", ""), c["reference"],
                 tuple(Scene(s["image"], float(s["seconds"]), bool(s.get("motion", True)),
                             bool(s.get("glimpse", False))) for s in c["scenes"]))
            for c in raw]


def load_clips(path: Path = CLIPS_FILE) -> list[Clip]:
    return parse(json.loads(path.read_text()))


def validate(raw: list[dict[str, Any]], files: set[str]) -> list[str]:
    """Every problem with clips.json (empty: well-formed): names, files in the photo manifest, durations."""
    errors: list[str] = []
    names = [c.get("name") for c in raw]
    if len(set(names)) != len(names):
        errors.append("duplicate clip names")
    for c in raw:
        name = c.get("name", "?")
        unknown = set(c) - {"name", "description", "reference", "scenes"}
        if unknown:
            errors.append(f"{name}: unknown fields {sorted(unknown)}")
        if c.get("reference") not in files:
            errors.append(f"{name}: reference {c.get('reference')!r} is not in the manifest")
        scenes = c.get("scenes") or []
        if not scenes:
            errors.append(f"{name}: no scenes")
        for s in scenes:
            if s.get("image") not in files:
                errors.append(f"{name}: scene image {s.get('image')!r} is not in the manifest")
            seconds = s.get("seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                errors.append(f"{name}: scene {s.get('image')!r} has bad seconds {seconds!r}")
            if set(s) - {"image", "seconds", "motion", "glimpse"}:
                errors.append(f"{name}: scene {s.get('image')!r} has unknown fields")
    return errors


# --- expected events and scoring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    kind: str
    start: float
    end: float
    scenes: tuple[str, ...] = ()


@dataclass
class Produced:
    kind: str
    start: float
    end: float
    confidence: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    confirmed: float | None = None  # media time of the observation that started it (when a reviewer is told)


def scene_kinds(entry: mf.Entry, reference_person: str | None) -> tuple[set[str], set[str]]:
    """(kinds this scene expects, kinds not judged in it) from its labels."""
    expects: set[str] = set()
    unjudged: set[str] = set()
    if entry.poor_image:
        expects.add("poor_image")
        unjudged |= {"multiple_people", "phone", "identity_mismatch"}
    elif entry.faces == 0:
        expects.add("no_face")
    if not entry.poor_image and (entry.faces >= 2 or entry.persons >= 2):
        expects.add("multiple_people")
    if not entry.poor_image and entry.phones >= 1:
        expects.add("phone")
    if entry.person is None:
        if entry.faces >= 1:
            unjudged.add("identity_mismatch")
    elif not entry.poor_image and reference_person is not None and entry.person != reference_person:
        expects.add("identity_mismatch")
    if reference_person is None:
        unjudged.add("identity_mismatch")
    return expects, unjudged


def _merged(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.kind, s.start)):
        last = out[-1] if out else None
        if last is not None and last.kind == span.kind and span.start <= last.end + EPS:
            out[-1] = Span(span.kind, last.start, max(last.end, span.end), last.scenes + span.scenes)
        else:
            out.append(span)
    return sorted(out, key=lambda s: (s.start, s.kind))


def expected_events(clip: Clip, entries: dict[str, mf.Entry]) -> tuple[list[Span], list[Span]]:
    """(expected events, stretches where a kind is not judged), each merged across adjacent scenes."""
    reference_person = entries[clip.reference].person
    expected: list[Span] = []
    unjudged: list[Span] = []
    for scene, start, end in clip.spans():
        if scene.glimpse:
            continue
        expects, skip = scene_kinds(entries[scene.image], reference_person)
        expected += [Span(kind, start, end, (scene.image,)) for kind in sorted(expects)]
        unjudged += [Span(kind, start, end, (scene.image,)) for kind in sorted(skip)]
    return _merged(expected), _merged(unjudged)


def overlaps(a_start: float, a_end: float, b_start: float, b_end: float) -> bool:
    """Positive overlap; an instant (start == end) counts when it lies inside."""
    if a_start == a_end:
        return b_start - EPS <= a_start < b_end
    return a_start < b_end - EPS and a_end > b_start + EPS


def _not_judged(event: Produced, spans: list[Span]) -> bool:
    """The event overlaps a stretch where its kind is not judged (its tail may be the rules' end hysteresis)."""
    return any(s.kind == event.kind and overlaps(event.start, event.end, s.start, s.end) for s in spans)


def score(expected: list[Span], produced: list[Produced], unjudged: list[Span] | None = None) -> dict[str, Any]:
    """Per kind (SCORED): expected, found, missed spans, false flags, start/end delays; plus every produced
    event's verdict ("match", "false_flag", "not_judged", "unlabelled")."""
    unjudged = unjudged or []
    kinds: dict[str, dict[str, Any]] = {
        kind: {"expected": 0, "found": 0, "false_flags": 0, "start_delays": [], "end_delays": [], "missed": [],
               "false_flag_events": [], "confirm_delays": []} for kind in SCORED}
    verdicts: list[str] = []
    for event in produced:
        if event.kind not in SCORED:
            verdicts.append("unlabelled")
            continue
        if any(e.kind == event.kind and overlaps(event.start, event.end, e.start, e.end) for e in expected):
            verdicts.append("match")
        elif _not_judged(event, unjudged):
            verdicts.append("not_judged")
        else:
            verdicts.append("false_flag")
            kinds[event.kind]["false_flags"] += 1
            kinds[event.kind]["false_flag_events"].append([round(event.start, 2), round(event.end, 2)])
    for span in expected:
        row = kinds.setdefault(span.kind, {"expected": 0, "found": 0, "false_flags": 0, "start_delays": [],
                                           "end_delays": [], "missed": [], "false_flag_events": [],
                                           "confirm_delays": []})
        row["expected"] += 1
        hits = sorted((e for e in produced if e.kind == span.kind and overlaps(e.start, e.end, span.start, span.end)),
                      key=lambda e: e.start)
        if not hits:
            row["missed"].append([round(span.start, 2), round(span.end, 2)])
            continue
        row["found"] += 1
        row["start_delays"].append(round(hits[0].start - span.start, 3))
        row["end_delays"].append(round(max(e.end for e in hits) - span.end, 3))
        if hits[0].confirmed is not None:
            row["confirm_delays"].append(round(hits[0].confirmed - span.start, 3))
    return {"kinds": kinds, "verdicts": verdicts}


def _stat(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(float(np.median(values)), 2), "max": round(float(max(values, key=abs)), 2)}


def summarize(per_clip: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per kind over the clips' scores: expected, found, false flags, delays' median and max."""
    out: dict[str, Any] = {}
    for kind in SCORED:
        rows = [c["score"]["kinds"][kind] for c in per_clip if kind in c["score"]["kinds"]]
        starts = [d for r in rows for d in r["start_delays"]]
        ends = [d for r in rows for d in r["end_delays"]]
        confirms = [d for r in rows for d in r.get("confirm_delays", [])]
        out[kind] = {"expected": sum(r["expected"] for r in rows), "found": sum(r["found"] for r in rows),
                     "false_flags": sum(r["false_flags"] for r in rows),
                     "start_delay": _stat(starts), "end_delay": _stat(ends), "confirm_delay": _stat(confirms)}
    out["unlabelled"] = {kind: sum(1 for c in per_clip for e in c["events"] if e["kind"] == kind)
                         for kind in UNLABELLED}
    return out


# --- rendering ----------------------------------------------------------------------------------------------------
def letterbox(rgb: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The picture scaled to fit the frame and centred; the bars in the median colour of its border."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    scaled = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = np.median(border, axis=0).astype(np.uint8)
    x, y = (width - size[0]) // 2, (height - size[1]) // 2
    canvas[y:y + size[1], x:x + size[0]] = scaled
    return canvas


class Renderer:
    """A clip's frames: each scene's canvas with a light sway/zoom and sensor-like noise."""

    def __init__(self, clip: Clip, pictures: dict[str, np.ndarray], seed: int = 0) -> None:
        self.clip = clip
        self.pictures = pictures
        rng = np.random.default_rng(seed)
        self.noise = [rng.normal(0, 2.5, (HEIGHT, WIDTH, 3)).astype(np.int16) for _ in range(12)]
        self.rng = rng

    def frames(self) -> Iterator[np.ndarray]:
        for scene, start, end in self.clip.spans():
            canvas = letterbox(self.pictures[scene.image])
            colour = tuple(int(v) for v in canvas[0, 0])
            for k in range(round((end - start) * CLIP_FPS)):
                t = start + k / CLIP_FPS
                frame = canvas
                if scene.motion:
                    dx = 6 * np.sin(2 * np.pi * t / 4.0)
                    dy = 4 * np.sin(2 * np.pi * t / 5.3)
                    zoom = 1 + 0.02 * np.sin(2 * np.pi * t / 7.1)
                    m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 0.8 * np.sin(2 * np.pi * t / 6.3), zoom)
                    m[:, 2] += (dx, dy)
                    frame = cv2.warpAffine(canvas, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=colour)
                noisy = frame.astype(np.int16) + self.noise[int(self.rng.integers(len(self.noise)))]
                yield np.clip(noisy, 0, 255).astype(np.uint8)


def vp8_roundtrip(frames: Iterator[np.ndarray], fps: int = CLIP_FPS) -> Iterator[np.ndarray]:
    """Encode with libvpx (bench/synthetic.py's options) and decode the packets back: frames with codec artefacts.
    Streams: each frame is decoded as soon as its packet exists (lag-in-frames 0)."""
    import av

    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = WIDTH, HEIGHT
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.bit_rate = BITRATE
    encoder.gop_size = GOP
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("vp8", "r")

    def decoded(packets: list[Any]) -> Iterator[np.ndarray]:
        for packet in packets:
            for frame in decoder.decode(av.Packet(bytes(packet))):
                yield frame.to_ndarray(format="rgb24")

    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        yield from decoded(list(encoder.encode(frame)))
    yield from decoded(list(encoder.encode(None)))
    for frame in decoder.decode(None):
        yield frame.to_ndarray(format="rgb24")


# --- running ------------------------------------------------------------------------------------------------------
def _read(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: cannot read")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def events_of(changes: list[tuple[float, Any]]) -> list[Produced]:
    """(media time it came at, EventChange) pairs (start/update/end, by event_id) as events."""
    by_id: dict[int, Produced] = {}
    for at, change in changes:
        event = by_id.get(change.event_id)
        if event is None:
            event = by_id[change.event_id] = Produced(change.kind, change.start_s, change.start_s, confirmed=at)
        event.confidence = max(event.confidence, float(change.confidence))
        if change.end_s is not None:
            event.end = float(change.end_s)
        sources = change.details.get("sources")
        if sources:
            event.details["sources"] = sorted(set(event.details.get("sources", [])) | set(sources))
    return sorted(by_id.values(), key=lambda e: (e.start, e.kind))


def run_clip(clip: Clip, data_dir: Path, entries: dict[str, mf.Entry], settings: Any,
             seed: int = 0) -> dict[str, Any]:
    from analyzers.base import rules_config
    from analyzers.registry import build_detectors
    from core.rules import EventRules

    started = time.perf_counter()
    # The clips are pictures without sound: the audio detectors (voice) are measured by tests/test_voice.py.
    built = build_detectors(settings)
    detectors = [d for d in built if not getattr(d, "audio", False)]
    for detector in detectors:
        # Random schedules (the phone's scan times, identity's and the faces full-range model's intervals): the
        # same at every run of the set.
        for schedule in (getattr(detector, "cadence", None), getattr(detector, "full_range", None)):
            rng = getattr(schedule, "rng", None)
            if rng is not None:
                rng.seed(seed)
    reference = _read(data_dir / clip.reference)
    reference_set = {}
    for detector in detectors:
        setter = getattr(detector, "set_reference", None) or getattr(detector, "set_baseline_from", None)
        if setter is not None:
            reference_set[detector.name] = bool(setter(reference))
    pictures = {s.image: _read(data_dir / s.image) for s in clip.scenes}
    rules = EventRules(rules_config(settings))
    changes: list[tuple[float, Any]] = []
    next_due = {id(d): 0.0 for d in detectors}
    analysed = {d.name: 0 for d in detectors}
    spent = {d.name: 0.0 for d in detectors}
    next_tick = TICK_S
    frames = 0
    for i, rgb in enumerate(vp8_roundtrip(Renderer(clip, pictures, seed).frames())):
        t = i / CLIP_FPS
        frames += 1
        rgb.flags.writeable = False
        for detector in detectors:
            if t + EPS < next_due[id(detector)]:
                continue
            next_due[id(detector)] += 1.0 / detector.fps
            wants = getattr(detector, "wants", None)  # the phone's cadence picks its frames, as in analyzers/live.py
            if wants is not None and not wants(t):
                continue
            analysed[detector.name] += 1
            began = time.perf_counter()
            signals = detector.analyze(rgb, t)
            spent[detector.name] += time.perf_counter() - began
            for other in detectors:  # the stream's other detectors hear its signals (the phone's hints)
                hint = getattr(other, "hint", None)
                if hint is not None and other is not detector:
                    for signal in signals:
                        hint(signal, t)
            for signal in signals:
                changes += [(t, c) for c in rules.update(signal.kind, signal.active, signal.confidence, t,
                                                         signal.details, source=signal.source)]
        while t + EPS >= next_tick:
            changes += [(t, c) for c in rules.tick(t)]
            next_tick += TICK_S
    end = frames / CLIP_FPS
    changes += [(end, c) for c in rules.flush(end)]
    produced = events_of(changes)
    expected, unjudged = expected_events(clip, entries)
    scored = score(expected, produced, unjudged)
    return {
        "name": clip.name, "description": clip.description, "reference": clip.reference,
        "seconds": round(end, 2), "frames": frames, "analysed": analysed,
        "detector_seconds": {k: round(v, 1) for k, v in spent.items()}, "reference_set": reference_set,
        "unavailable": dict(built.unavailable),
        "scenes": [{"image": s.image, "start": round(a, 2), "end": round(b, 2), "glimpse": s.glimpse}
                   for s, a, b in clip.spans()],
        "expected": [{"kind": s.kind, "start": round(s.start, 2), "end": round(s.end, 2), "scenes": list(s.scenes)}
                     for s in expected],
        "events": [{"kind": e.kind, "start": round(e.start, 2), "end": round(e.end, 2),
                    "confidence": round(e.confidence, 3), "verdict": v,
                    "confirmed": None if e.confirmed is None else round(e.confirmed, 2), **e.details}
                   for e, v in zip(produced, scored["verdicts"], strict=True)],
        "score": {"kinds": scored["kinds"]},
        "run_seconds": round(time.perf_counter() - started, 1),
    }


def run_clips(data_dir: Path, settings: Any, path: Path = CLIPS_FILE) -> dict[str, Any]:
    raw = json.loads(path.read_text())
    entries = {e.file: e for e in mf.load(data_dir)}
    errors = validate(raw, set(entries))
    if errors:
        raise SystemExit(f"{path.name} is not well-formed:\n  " + "\n  ".join(errors))
    per_clip = [run_clip(clip, data_dir, entries, settings, seed=n) for n, clip in enumerate(parse(raw))]
    return {"available": True, "fps": CLIP_FPS, "size": [WIDTH, HEIGHT], "codec": f"VP8 {BITRATE // 1000} kbit/s",
            "clips": per_clip, "summary": summarize(per_clip)}
