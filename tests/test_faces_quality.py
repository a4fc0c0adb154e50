"""Faces at webcam distance (short-range + full-range mediapipe, merged), the picture's quality, the `poor_image`
signal that replaces `no_face` in a dark or covered picture, and the notice that tells the candidate at once.

Close-ups are cut from real photos that ship offline (scikit-image's astronaut and camera, matplotlib's
grace_hopper): the face fills 60-95 % of a 640x480 frame, some cut at the chin or the forehead, as when a
candidate sits close to the webcam. The full-range model alone (the old detector) misses some of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from skimage import data

from analyzers import faces as faces_mod
from analyzers.base import Signal
from analyzers.blazeface import FACES_DETAIL
from analyzers.faces import Face, FaceDetector, detect_faces, detect_faces_in
from analyzers.image_quality import BLURRED_SHARPNESS, MESSAGES, assess, blurred_below
from analyzers.live import StreamAnalysis, _Frame
from analyzers.precheck import check_frame
from core.rules import EventRules, RulesConfig
from proctor.settings import Settings
from tests.support.streams import FakeStream

MIN_SCORE = Settings.defaults().face_min_score


# --- photos ----------------------------------------------------------------------------------------------------
def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def cameraman() -> np.ndarray:
    return np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))


# Each photo's face box (x1, y1, x2, y2), as the short-range model finds it in the photo as shipped.
FACES: dict[str, tuple[Callable[[], np.ndarray], tuple[float, float, float, float]]] = {
    "astronaut": (data.astronaut, (177, 82, 272, 178)),
    "grace_hopper": (grace_hopper, (171, 146, 365, 341)),
    "cameraman": (cameraman, (185, 122, 270, 206)),  # in profile, the ear towards the camera
}
FILLS = (0.6, 0.7, 0.8, 0.9, 0.95)
SHIFTS = (-1, 0, 1)  # -1: cut at the forehead, 0: centred, 1: cut at the chin


def closeup(rgb: np.ndarray, box: tuple[float, float, float, float], fill: float, shift: int) -> np.ndarray:
    """A 640x480 frame in which the face box is `fill` of the height; `shift` moves the face up or down so the
    frame's edge cuts it. Beyond the photo's own edges: a plain grey wall (a mirrored photo would show mirrored
    faces and objects, which are no part of a candidate's room)."""
    x1, y1, x2, y2 = box
    face_h = y2 - y1
    crop_h = face_h / fill
    crop_w = crop_h * 4 / 3
    cx = (x1 + x2) / 2
    cy = (y1 + y2) / 2 + shift * ((crop_h - face_h) / 2 + 0.12 * face_h)
    scale = 640 / crop_w
    matrix = np.float32([[scale, 0, -(cx - crop_w / 2) * scale], [0, scale, -(cy - crop_h / 2) * scale]])
    return cv2.warpAffine(rgb, matrix, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(110, 110, 110))


@pytest.fixture(scope="module")
def closeups() -> dict[tuple[str, float, int], np.ndarray]:
    out = {}
    for name, (photo, box) in FACES.items():
        rgb = photo()
        for fill in FILLS:
            for shift in SHIFTS:
                out[(name, fill, shift)] = closeup(rgb, box, fill, shift)
    return out


def webcam(rgb: np.ndarray) -> np.ndarray:
    """The photo as a 640x480 frame: scaled to cover it, centre cut."""
    height, width = rgb.shape[:2]
    scale = max(640 / width, 480 / height)
    resized = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    y, x = (resized.shape[0] - 480) // 2, (resized.shape[1] - 640) // 2
    return np.ascontiguousarray(resized[y:y + 480, x:x + 640])


def rgb_of(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


FACE_FREE: dict[str, Callable[[], np.ndarray]] = {
    "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket, "brick": data.brick, "grass": data.grass,
    "gravel": data.gravel, "moon": data.moon, "coins": data.coins, "clock": data.clock,
    "hubble": data.hubble_deep_field, "motorcycle": lambda: data.stereo_motorcycle()[0],
}


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def soft(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Shrunk `factor` times and enlarged again: the softness of a cheap webcam or a low-bitrate stream."""
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def darker(rgb: np.ndarray, factor: float, seed: int = 0) -> np.ndarray:
    """Less light, with a sensor's grain (a dim webcam picture is never clean), as the camera would send it."""
    noise = np.random.default_rng(seed).normal(0, 3, rgb.shape)
    return jpeg(np.clip(rgb * factor + noise, 0, 255).astype(np.uint8), 60)


def washed_out(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * 0.3 + 185, 0, 255).astype(np.uint8)


def counted(rgb: np.ndarray) -> list[Face]:
    return [face for face in detect_faces(rgb) if face.score >= MIN_SCORE]


def full_range_only(rgb: np.ndarray) -> list[Face]:
    """What the old detector saw: the full-range model alone."""
    return [face for face in faces_mod._detect(np.ascontiguousarray(rgb), faces_mod.FULL_RANGE)
            if face.score >= MIN_SCORE]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    detector = FaceDetector(Settings.defaults())
    detector.load()
    return detector


# --- faces -----------------------------------------------------------------------------------------------------
def test_every_closeup_is_one_face_where_the_full_range_model_alone_misses_some(
        closeups: dict[tuple[str, float, int], np.ndarray]) -> None:
    found = {key: counted(rgb) for key, rgb in closeups.items()}
    for key, faces in found.items():
        assert faces, key
        x1, y1, x2, y2 = max(faces, key=lambda face: face.area).box
        assert y2 - y1 > 0.5 * 480 * key[1], (key, faces)  # the largest is the face that fills the frame
    # One known extra: the full-range model sees a 45 px "face" (0.61) in the tripod beside the cameraman; the old
    # detector counted that one as *the* face and missed his.
    assert {key: len(faces) for key, faces in found.items() if len(faces) != 1} == {("cameraman", 0.7, 0): 2}
    old_misses = [key for key, rgb in closeups.items() if not full_range_only(rgb)]
    # Measured: the cameraman's close-ups (a face in profile filling the frame) defeat the full-range model.
    assert len(old_misses) >= 5, old_misses
    for key in old_misses:
        assert found[key][0].model == "short", key


def test_the_ear_of_a_close_face_is_not_a_second_face(closeups: dict[tuple[str, float, int], np.ndarray]) -> None:
    """The full-range model calls the cameraman's ear a face in some close-ups: merged into his face, whose box
    is the whole face (the short-range model's), not the ear's."""
    ears = 0
    for key, rgb in closeups.items():
        if key[0] != "cameraman":
            continue
        short = faces_mod._detect(rgb, faces_mod.SHORT_RANGE)
        full = faces_mod._detect(rgb, faces_mod.FULL_RANGE)
        for ear in full:
            if ear.score >= MIN_SCORE and any(faces_mod._part_of(ear, face) for face in short):
                ears += 1
                assert ear not in counted(rgb) and any(face.area > 4 * ear.area for face in counted(rgb)), key
    assert ears >= 1


@pytest.mark.parametrize("name", sorted(FACE_FREE))
def test_face_free_photos_have_no_face(name: str) -> None:
    photo = rgb_of(FACE_FREE[name]())
    for rgb in (photo, webcam(photo)):
        assert counted(rgb) == [], name
        assert full_range_only(rgb) == [], name  # and the old detector agrees: no worse


def test_two_faces_are_two(detector: FaceDetector) -> None:
    ast = data.astronaut()
    two = np.ascontiguousarray(np.hstack([ast, ast[:, ::-1]]))
    no_face, multiple, poor = detector.analyze(two, 1.0)
    assert multiple.active and multiple.details["faces"] == 2 and not no_face.active and not poor.active
    assert multiple.box is not None


def test_merge_keeps_one_face_per_face() -> None:
    points = ((40.0, 40.0), (60.0, 40.0), (50.0, 50.0), (50.0, 60.0), (30.0, 45.0), (70.0, 45.0))
    short = Face(0.8, (25.0, 20.0, 75.0, 75.0), points, "short")
    full = Face(0.7, (20.0, 15.0, 80.0, 80.0), points, "full")
    [both] = faces_mod._merge([short], [full])
    assert (both.score, both.box, both.model) == (0.8, full.box, "short+full")  # the box identity was tuned on
    ear = Face(0.75, (22.0, 38.0, 34.0, 52.0), ((28.0, 44.0),) * 6, "full")  # holds the face's ear keypoint
    [face] = faces_mod._merge([short], [ear])
    assert face.box == short.box and face.score == 0.8
    small = Face(0.79, (40.0, 40.0, 55.0, 55.0), ((47.0, 47.0),) * 6, "full")
    weak = Face(0.3, (20.0, 20.0, 80.0, 80.0), points, "short")  # a weak short-range box around a small face
    [face] = faces_mod._merge([weak], [small])
    assert face.box == small.box and face.score == 0.79
    other = Face(0.9, (200.0, 20.0, 250.0, 75.0), points, "full")  # beside it: a second person
    assert len(faces_mod._merge([short], [full, other])) == 2
    assert len(faces_mod._merge([], [full, other])) == 2


def test_detector_status_names_both_models(detector: FaceDetector) -> None:
    ok, detail = detector.status()
    assert ok and detail == FACES_DETAIL and "short" in detail and "full range" in detail


def test_cost_per_frame_of_each_model() -> None:
    """Informational (printed with -s): milliseconds per 640x480 frame of each model, and of both merged."""
    frame = webcam(data.astronaut())
    faces_mod.load_face_detection()
    for name, run in (("short", lambda: faces_mod._detect(frame, faces_mod.SHORT_RANGE)),
                      ("full", lambda: faces_mod._detect(frame, faces_mod.FULL_RANGE)),
                      ("merged", lambda: detect_faces(frame))):
        run()
        started = time.perf_counter()
        for _ in range(20):
            run()
        print(f"{name}: {(time.perf_counter() - started) / 20 * 1000:.1f} ms/frame")


# --- image quality ---------------------------------------------------------------------------------------------
def real_frames() -> dict[str, np.ndarray]:
    frames = {name: webcam(photo()) for name, (photo, _) in FACES.items()}
    frames.update({name: webcam(rgb_of(FACE_FREE[name]())) for name in ("coffee", "chelsea", "rocket", "motorcycle")})
    frames["closeup"] = closeup(data.astronaut(), FACES["astronaut"][1], 0.7, 0)
    return frames


def test_real_photos_are_good_pictures_even_compressed_and_soft() -> None:
    for name, rgb in real_frames().items():
        for variant, frame in (("as is", rgb), ("jpeg 20", jpeg(rgb, 20)), ("rescaled 2x", soft(rgb, 2)),
                               ("rescaled 2x, jpeg 20", jpeg(soft(rgb, 2), 20))):
            quality = assess(frame)
            assert quality.problem is None and quality.message == "", (name, variant, quality)
            assert quality.sharpness > BLURRED_SHARPNESS * 1.1, (name, variant, quality)


def test_real_photos_through_vp8_are_not_blurred() -> None:
    """A real VP8 round trip at a low bitrate (as the media node receives webcam frames)."""
    import av

    from bench.synthetic import encode_clip

    for name, rgb in real_frames().items():
        grain = np.random.default_rng(1).integers(-4, 5, (10, *rgb.shape))
        clip = encode_clip([np.clip(rgb + g, 0, 255).astype(np.uint8) for g in grain], fps=10, bitrate=150_000)
        decoder = av.CodecContext.create("vp8", "r")
        frames = [f.to_ndarray(format="rgb24") for payload, _ in clip.video
                  for f in decoder.decode(av.Packet(payload))]
        assert not assess(frames[-1]).blurred, name
        blurred = encode_clip([blur(rgb, 6)] * 3, fps=10, bitrate=150_000)
        decoder = av.CodecContext.create("vp8", "r")
        last = [f.to_ndarray(format="rgb24") for payload, _ in blurred.video
                for f in decoder.decode(av.Packet(payload))][-1]
        assert assess(last).problem == "blurred", name


def test_poor_pictures_say_what_is_wrong() -> None:
    black = np.clip(np.random.default_rng(2).normal(4, 3, (480, 640, 3)), 0, 255).astype(np.uint8)
    for name, rgb in real_frames().items():
        cases = {"blurred": [blur(rgb, 6), blur(rgb, 8)], "dark": [darker(rgb, 0.25), darker(rgb, 0.15)],
                 "bright": [washed_out(rgb)], "covered": [np.full_like(rgb, 90), black, np.full_like(rgb, 30)]}
        for problem, frames in cases.items():
            for frame in frames:
                quality = assess(frame)
                assert quality.problem == problem and getattr(quality, problem), (name, problem, quality)
                assert quality.message == MESSAGES[problem] and quality.severity >= 0.5


def test_quality_does_not_depend_on_frame_size() -> None:
    rgb = webcam(data.astronaut())
    big = cv2.resize(rgb, (1280, 960), interpolation=cv2.INTER_CUBIC)
    small, large = assess(rgb), assess(big)
    assert abs(small.sharpness - large.sharpness) < 0.1 * small.sharpness
    assert abs(small.brightness - large.brightness) < 1 and abs(small.contrast - large.contrast) < 1


def test_quality_is_cheap() -> None:
    rgb = webcam(data.astronaut())
    assess(rgb)
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        assess(rgb)
        timings.append(time.perf_counter() - started)
    # Budget 2 ms a 640x480 frame (measured 0.4 ms); a quartile, so a busy shared machine does not fail it.
    assert np.percentile(timings, 25) < 0.002, timings


def face_chip(rgb: np.ndarray, box: tuple[float, float, float, float], size: int = 150) -> np.ndarray:
    """A `size` px square thumbnail around the face (as a face data set ships them), shrunk from the photo."""
    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 1.3 * (x2 - x1)
    crop = rgb[int(cy - side / 2):int(cy + side / 2), int(cx - side / 2):int(cx + side / 2)]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def test_a_small_picture_is_judged_blurred_at_its_own_scale() -> None:
    """A 150 px face chip is not a 640x480 frame: its threshold falls with its width, so a sharp chip is not
    blurred while a blurred one is (it used to be never blurred, and its missed face became a `no_face`)."""
    assert blurred_below(640) == BLURRED_SHARPNESS == blurred_below(1280)
    assert blurred_below(150) < blurred_below(320) < BLURRED_SHARPNESS
    for name, (photo, box) in FACES.items():
        chip = face_chip(photo(), box)
        assert not assess(chip).blurred and not assess(jpeg(chip, 60)).blurred, name
        assert assess(blur(chip, 4)).problem == "blurred", name


def test_a_poor_picture_is_searched_again_enhanced() -> None:
    """The faces the first pass misses in a washed-out or blurred picture are found on its CLAHE copy."""
    astronaut = webcam(data.astronaut())
    washed = np.clip(astronaut.astype(np.float32) * 0.1 + 255 * 0.9, 0, 255).astype(np.uint8)
    close = blur(closeup(data.astronaut(), FACES["astronaut"][1], 0.6, 0), 14)
    for problem, frame in (("bright", washed), ("blurred", close)):
        quality = assess(frame)
        assert quality.problem == problem
        assert not counted(frame)  # the first pass alone
        found = [face for face in detect_faces_in(frame, quality) if face.score >= MIN_SCORE]
        assert len(found) == 1 and found[0].model.endswith("+enhanced"), (problem, found)
        assert detect_faces_in(frame)[0].box == detect_faces_in(frame, quality)[0].box


def test_the_retry_adds_no_face_to_poor_face_free_pictures() -> None:
    retried = 0
    for name, photo in FACE_FREE.items():
        room = webcam(rgb_of(photo()))
        for variant, frame in (("dark", darker(room, 0.2)), ("washed out", washed_out(room)),
                               ("blurred", blur(room, 6)), ("very blurred", blur(room, 10))):
            quality = assess(frame)
            retried += quality.poor and not quality.covered  # a blurred texture (grass, gravel) stays sharp enough
            assert not [face for face in detect_faces_in(frame, quality) if face.score >= MIN_SCORE], (name, variant)
    assert retried >= 30, retried


def test_a_good_picture_is_searched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(rgb: np.ndarray) -> np.ndarray:
        raise AssertionError("a good picture was enhanced")

    monkeypatch.setattr(faces_mod, "enhanced", fail)
    frame = webcam(data.astronaut())
    assert [face.model for face in detect_faces_in(frame)] == [face.model for face in detect_faces(frame)]
    covered = np.full_like(frame, 90)
    assert assess(covered).covered and detect_faces_in(covered) == []


def test_the_retry_keeps_the_better_detection_of_a_face() -> None:
    def face(score: float, x: float) -> Face:
        return Face(score, (x, 100.0, x + 100, 200.0), ((x + 30, 130.0), (x + 70, 130.0)), "short")

    weak, other = face(0.45, 100), face(0.8, 400)
    merged = faces_mod._with_retry([other, weak], [face(0.7, 105), face(0.5, 395), face(0.65, 700)])
    assert [(round(f.score, 2), f.model) for f in merged] == [(0.8, "short"), (0.7, "short+enhanced"),
                                                            (0.65, "short+enhanced")]


# --- the signals -----------------------------------------------------------------------------------------------
def test_a_dark_or_covered_empty_room_is_poor_image_not_no_face(detector: FaceDetector) -> None:
    room = webcam(data.coffee())
    no_face, multiple, poor = detector.analyze(room, 1.0)
    assert no_face.active and not poor.active and "suppressed" not in no_face.details
    for problem, frame in (("dark", darker(room, 0.1)), ("covered", np.full_like(room, 90)),
                           ("blurred", blur(room, 8))):
        no_face, multiple, poor = detector.analyze(frame, 2.0)
        assert (poor.kind, poor.active, poor.details["problem"]) == ("poor_image", True, problem)
        assert poor.details["message"] == MESSAGES[problem] and poor.confidence >= 0.5
        assert {"brightness", "sharpness"} <= set(poor.details)
        assert not no_face.active and no_face.details["suppressed"] == "poor_image"
        assert not multiple.active


def test_a_face_in_a_dark_picture_is_poor_image_and_no_face_stays_off(detector: FaceDetector) -> None:
    frame = darker(webcam(data.astronaut()), 0.25)
    no_face, multiple, poor = detector.analyze(frame, 1.0)
    assert poor.active and poor.details["problem"] == "dark"
    assert not no_face.active and no_face.details["faces"] == 1 and "suppressed" not in no_face.details


def test_precheck_uses_the_same_faces_and_quality() -> None:
    grace = closeup(grace_hopper(), FACES["grace_hopper"][1], 0.6, 1)  # a 195 px face enlarged 1.5x: sharp
    good = check_frame(grace)
    assert good.ok and good.faces == 1 and good.message.startswith("Looks good")
    assert check_frame(webcam(data.astronaut())).ok
    cam = check_frame(closeup(cameraman(), FACES["cameraman"][1], 0.8, 0))  # the old pre-check found no face
    assert cam.ok and cam.faces == 1
    dark = check_frame(darker(grace, 0.2))
    assert not dark.ok and dark.message == MESSAGES["dark"]
    covered = check_frame(np.full((480, 640, 3), 128, np.uint8))
    assert not covered.ok and covered.faces == 0 and covered.message == f"No face found. {MESSAGES['covered']}"
    empty = check_frame(webcam(data.coffee()))
    assert not empty.ok and empty.message.startswith("No face found: sit in front")
    assert set(good.to_json()) == {"ok", "faces", "brightness", "face_fraction", "message"}


# --- the notice to the candidate -------------------------------------------------------------------------------
def observing(stream: Any) -> StreamAnalysis:
    """Just what StreamAnalysis.observe uses (its stream, rules and change queue): no database, no models."""
    analysis = StreamAnalysis.__new__(StreamAnalysis)
    analysis.stream = stream
    analysis.rules = EventRules(RulesConfig.default())
    analysis.changes = asyncio.Queue()
    return analysis


def feed(analysis: StreamAnalysis, detector: FaceDetector, frames: list[np.ndarray], start_s: float = 0.0) -> None:
    for i, rgb in enumerate(frames):
        item = _Frame(start_s + i * 0.25, None, time.time())
        for signal in detector.analyze(rgb, item.media_time):
            analysis.observe(signal, item, rgb)


def test_the_candidate_is_told_at_once_and_once(detector: FaceDetector) -> None:
    room = webcam(data.astronaut())
    stream = FakeStream()
    analysis = observing(stream)
    feed(analysis, detector, [room] * 3 + [darker(room, 0.15)] * 6 + [room] * 4)
    assert stream.notices == [
        {"type": "notice", "kind": "poor_image", "active": True, "message": MESSAGES["dark"]},
        {"type": "notice", "kind": "poor_image", "active": False, "message": ""},
    ]
    # Told on the first dark frame, long before the event (which waits 5 s of them) could start.
    assert analysis.changes.empty()


def test_a_new_problem_is_a_new_notice() -> None:
    stream = FakeStream()
    analysis = observing(stream)

    def poor(problem: str | None) -> Signal:
        message = MESSAGES[problem] if problem else ""
        return Signal("poor_image", problem is not None, 0.6 if problem else 0.1, {"problem": problem,
                                                                                 "message": message})

    for t, problem in enumerate(["dark", "dark", "covered", "covered", None, None, "blurred"]):
        analysis.observe(poor(problem), _Frame(float(t), None, time.time()), None)
    assert [(n["active"], n["message"]) for n in stream.notices] == [
        (True, MESSAGES["dark"]), (True, MESSAGES["covered"]), (False, ""), (True, MESSAGES["blurred"])]


async def test_the_notice_reaches_the_page_over_the_data_channel() -> None:
    """A real CandidateStream and a page peer over loopback: a notice raised before the channel opened is shown
    once it opens, then each change, as the JSON the page shows."""
    from aiortc import RTCPeerConnection

    from media_server.decode import DecodePool
    from media_server.ice import install_host_addresses
    from media_server.stream import CandidateStream

    async def on_closed(stream: CandidateStream) -> None:
        pass

    install_host_addresses(("127.0.0.1",))
    node_pc, page = RTCPeerConnection(), RTCPeerConnection()
    stream = CandidateStream("s", node_pc, base_s=0.0, on_closed=on_closed, decode_pool=DecodePool())
    received: list[dict[str, Any]] = []
    channel = page.createDataChannel("signals", ordered=True)
    channel.on("message", lambda message: received.append(json.loads(message)))
    try:
        stream.notify_candidate({"type": "notice", "kind": "poor_image", "active": True, "message": "early"})
        await page.setLocalDescription(await page.createOffer())
        await page.setRemoteDescription(await stream.answer(page.localDescription.sdp))
        await _until(lambda: channel.readyState == "open")
        analysis = observing(stream)
        for t, active in enumerate([True, True, False]):
            signal = Signal("poor_image", active, 0.7, {"problem": "covered" if active else None,
                                                        "message": MESSAGES["covered"] if active else ""})
            analysis.observe(signal, _Frame(float(t), None, time.time()), None)
        await _until(lambda: len(received) >= 3)
        await asyncio.sleep(0.1)  # nothing more comes
        assert received == [{"type": "notice", "kind": "poor_image", "active": True, "message": "early"},
                            {"type": "notice", "kind": "poor_image", "active": True, "message": MESSAGES["covered"]},
                            {"type": "notice", "kind": "poor_image", "active": False, "message": ""}]
    finally:
        await page.close()
        await node_pc.close()


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# The candidate page with its WebRTC stubbed: a fake peer connection whose data channel the test drives.
FAKE_PEER = """
window.__channels = [];
class FakePeer {
  constructor() { this.iceGatheringState = "complete"; this.connectionState = "new"; this.localDescription = {}; }
  addTrack() {} getSenders() { return []; } addEventListener() {} removeEventListener() {} close() {}
  addTransceiver() {  // the screen's slot (candidate.js addScreen)
    return {sender: {track: null, async replaceTrack() {}, getParameters() { return {encodings: [{}]}; },
                     async setParameters() {}}};
  }
  createDataChannel() { const ch = {readyState: "open", send() {}}; window.__channels.push(ch); return ch; }
  async createOffer() { return {type: "offer", sdp: ""}; }
  async setLocalDescription() {}
  async setRemoteDescription() {
    this.connectionState = "connected";
    setTimeout(() => this.onconnectionstatechange && this.onconnectionstatechange(), 0);
  }
}
window.RTCPeerConnection = FakePeer;
"""


def _candidate_page() -> dict[str, tuple[str, str]]:
    """What the page loads, by URL ending: body and content type."""
    from pathlib import Path

    import jinja2

    web = Path(__file__).resolve().parents[1] / "web"
    config = {"sessionId": "s1", "token": "t", "video": {"width": 640, "height": 480, "fps": 15}, "iceServers": [],
              "bitrateKbps": 600}
    page_html = jinja2.Environment(loader=jinja2.FileSystemLoader(web / "templates"), autoescape=True).get_template(
        "join.html").render(session={"exam": "Exam", "candidate": "Candidate"}, config=config, retention_days=30)
    return {
        "/join": (page_html, "text/html"),
        "/static/candidate.js": ((web / "static" / "candidate.js").read_text(), "application/javascript"),
        "/static/style.css": ((web / "static" / "style.css").read_text(), "text/css"),
        "/state": (json.dumps({"status": "live", "consented": True, "has_reference": True}), "application/json"),
        "/offer": (json.dumps({"type": "answer", "sdp": ""}), "application/json"),
    }


@pytest.mark.browser
async def test_the_page_shows_the_notice_as_text_and_hides_it() -> None:
    """web/static/candidate.js in real Chromium (the join page rendered from its template, the API answered by
    the test): a notice shows its message as text (never HTML) on the exam step, and goes when it ends."""
    from playwright.async_api import Route, async_playwright

    from tests.support.browser import CHROMIUM, chromium_args, have_chromium

    if not have_chromium():
        pytest.skip("Debian chromium not installed")
    answers = _candidate_page()

    async def answer(route: Route) -> None:
        found = next((body for tail, body in answers.items() if route.request.url.endswith(tail)), None)
        if found is None:
            await route.fulfill(status=404, body="")
        else:
            await route.fulfill(body=found[0], content_type=found[1])

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(None))
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.route("**/*", answer)
            await page.add_init_script(FAKE_PEER)
            await page.goto("http://localhost:9/join")  # localhost: a secure context, so the camera is offered
            await page.wait_for_function("window.proctor.connection === 'connected' && window.__channels.length")

            async def node_says(message: dict[str, Any]) -> None:
                await page.evaluate("m => window.__channels.at(-1).onmessage({data: m})", json.dumps(message))

            notice = page.locator("#step-exam p.notice[data-kind=poor_image]")
            await node_says({"type": "notice", "kind": "poor_image", "active": True,
                             "message": "More light, please: <b>now</b>"})
            assert await notice.is_visible()
            assert await notice.text_content() == "More light, please: <b>now</b>"  # shown as text
            assert await page.locator("#step-exam b").count() == 0
            await node_says({"type": "notice", "kind": "poor_image", "active": False, "message": ""})
            assert not await notice.is_visible()
            await node_says({"type": "pong"})
            assert await page.locator("p.notice").count() == 1
            # The page's other message handling goes on unharmed (its connection state is timing: the fake peer
            # answers no pings, so a slow machine may already call it reconnecting).
            assert errors == []
        finally:
            await browser.close()
