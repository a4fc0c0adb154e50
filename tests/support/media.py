"""Test media: fake camera clips for Chromium (y4m) built from photos that ship offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _rgb_to_i420(rgb: np.ndarray) -> bytes:
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.257 * r + 0.504 * g + 0.098 * b + 16
    u = -0.148 * r - 0.291 * g + 0.439 * b + 128
    v = 0.439 * r - 0.368 * g - 0.071 * b + 128
    sub = (slice(None, None, 2), slice(None, None, 2))
    planes = [y, u[sub], v[sub]]
    return b"".join(np.clip(p, 0, 255).astype(np.uint8).tobytes() for p in planes)


def portrait_canvas(portrait: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """A square-ish portrait photo scaled to the frame height and centred on a plain background."""
    import cv2

    side = min(portrait.shape[:2])
    face = cv2.resize(portrait[:side, :side], (height, height), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 90, np.uint8)
    left = (width - height) // 2
    canvas[:, left:left + height] = face
    return canvas


def face_canvas(width: int = 640, height: int = 480) -> np.ndarray:
    """The astronaut portrait (public domain, ships with scikit-image) centred on a plain background."""
    from skimage import data

    return portrait_canvas(data.astronaut(), width, height)


def other_person_canvas(width: int = 640, height: int = 480) -> np.ndarray:
    """Someone else: Grace Hopper's portrait (public domain, ships with matplotlib), framed like face_canvas."""
    import matplotlib.cbook
    from PIL import Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return portrait_canvas(np.asarray(Image.open(path).convert("RGB")), width, height)


def empty_room(width: int = 640, height: int = 480) -> np.ndarray:
    """Nobody in view: a real photo with no face or person in it (scikit-image's coffee, public domain). Not a
    uniform frame: that is a covered camera, which the faces detector reports as poor_image, never no_face."""
    import cv2
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_AREA))


def noisy_copies(image: np.ndarray, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few noisy, slightly moved read-only copies, so models never see the same pixels twice in a row."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        moved = np.roll(image.astype(np.int16), int(3 * np.sin(i)), axis=1)
        frame = np.clip(moved + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        frame.flags.writeable = False
        out.append(frame)
    return out


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(_rgb_to_i420(frame))
    return path


def face_clip(path: Path, seconds: float = 2.0, fps: int = 30) -> Path:
    """A face with a small sway, a moving corner patch and sensor-like grain, so the encoder needs a real
    webcam's bitrate (a clean still image would stream at a few dozen kbit/s and prove nothing)."""
    base = face_canvas()
    rng = np.random.default_rng(7)
    frames = []
    for i in range(int(seconds * fps)):
        shift = int(4 * np.sin(2 * np.pi * i / (fps * seconds)))
        frame = np.roll(base, shift, axis=1).astype(np.int16)
        frame += rng.integers(-10, 11, frame.shape, dtype=np.int16)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        x = (i * 7) % (frame.shape[1] - 40)
        frame[10:40, x:x + 40] = (255, 200, 0)
        frames.append(frame)
    return write_y4m(path, frames, fps)
