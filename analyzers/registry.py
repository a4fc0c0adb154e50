"""Which detectors run: the enabled ones (Settings.analyzers_enabled / ANALYZERS), each loaded and warmed up.

`build_detectors(settings)` is called once per candidate stream (detectors keep per-stream state); the models
behind them load once per process, so after the first stream it costs microseconds. A detector that cannot
run is left out and the reason recorded (`.unavailable` on the returned list) — it never silently passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from analyzers.base import Detector, DetectorUnavailable
from analyzers.faces import FaceDetector
from analyzers.gaze import GazeDetector
from analyzers.identity import IdentityDetector
from analyzers.phone import PhoneDetector
from analyzers.voice import VoiceDetector
from proctor.settings import Settings

log = logging.getLogger(__name__)

DETECTORS: dict[str, Callable[[Settings], Detector]] = {
    "faces": FaceDetector,
    "gaze": GazeDetector,
    "identity": IdentityDetector,
    "phone": PhoneDetector,
    "voice": VoiceDetector,  # the microphone's audio, not frames (analyzers/voice.py)
}


class Detectors(list[Detector]):
    """The detectors that loaded, plus `unavailable`: name -> why not, for the enabled ones that did not."""

    def __init__(self) -> None:
        super().__init__()
        self.unavailable: dict[str, str] = {}

    def get(self, name: str) -> Detector | None:
        return next((detector for detector in self if detector.name == name), None)


def build_detectors(settings: Settings) -> Detectors:
    out = Detectors()
    for name in settings.analyzers_enabled:
        cls = DETECTORS.get(name)
        if cls is None:
            out.unavailable[name] = f"unknown detector {name!r}; known: {', '.join(DETECTORS)}"
            log.warning("detector %s: %s", name, out.unavailable[name])
            continue
        detector = cls(settings)  # each detector reads its own settings
        try:
            detector.load()
        except DetectorUnavailable as exc:
            out.unavailable[name] = exc.reason
            log.warning("detector %s unavailable: %s", name, exc.reason)
            continue
        out.append(detector)
    faces, gaze = out.get("faces"), out.get("gaze")
    if isinstance(faces, FaceDetector) and isinstance(gaze, GazeDetector):
        # One short-range detection a frame for both (analyzers/faces.py FrameFaces); the faces pace then keeps to
        # gaze's frames while settled.
        gaze.share(faces.frame_faces)
    return out


def detector_status(detectors: Detectors) -> dict[str, dict[str, object]]:
    """{name: {"ok": bool, "detail": str}} for loaded and unavailable detectors alike (for /healthz)."""
    status: dict[str, dict[str, object]] = {}
    for detector in detectors:
        ok, detail = detector.status()
        status[detector.name] = {"ok": ok, "detail": detail, "fps": detector.fps}
    for name, reason in detectors.unavailable.items():
        status[name] = {"ok": False, "detail": reason}
    return status
