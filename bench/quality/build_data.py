"""Rebuild the labelled evaluation photos (bench/quality/data/*.jpg) from the packages they ship in.

    python -m bench.quality.build_data DOWNLOAD_DIR [--out bench/quality/data] [--check]

DOWNLOAD_DIR holds the three downloads below (the registries are the only network this needs); scikit-image's
and matplotlib's photos come from the installed packages (.venv). Download commands, run once:

    # Debian's dlib source package (needs a deb-src line for bookworm main, e.g. a file
    # /etc/apt/sources.list.d/debian-src.sources with "Types: deb-src", "URIs: http://deb.debian.org/debian",
    # "Suites: bookworm", "Components: main", "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg")
    apt-get update && apt-get source --download-only dlib          # dlib_19.24+dfsg.orig.tar.bz2
    apt-get download opencv-doc                                      # opencv-doc_4.6.0+dfsg-12_all.deb
    pip download --no-deps --no-binary :all: face_recognition==1.3.0 # face_recognition-1.3.0.tar.gz

Only pixels are made here: every label (faces, persons, identity, phones, poor image, tags, licence) lives in
data/manifest.json, which a person wrote after looking at each picture. The recipes below say how each file is
cut from its source; `--check` rebuilds in memory and compares with the files on disk (JPEG is deterministic
for the same libjpeg, so a mismatch means a recipe or a source changed).

Every picture is stored as JPEG quality 90 with its longest side at most 640 px (a webcam's resolution); crops
are taken from the full-resolution source and only ever scaled down.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parent / "data"
MAX_SIDE = 640
JPEG_QUALITY = 90

# Where each source archive keeps its files: prefix of a source key -> (download file, member prefix).
DLIB_TARBALL = "dlib_19.24+dfsg.orig.tar.bz2"
FR_SDIST = "face_recognition-1.3.0.tar.gz"
OPENCV_DEB = "opencv-doc_4.6.0+dfsg-12_all.deb"
ARCHIVES = {
    "dlib": (DLIB_TARBALL, "dlib-19.24+dfsg/"),
    "face_recognition": (FR_SDIST, "face_recognition-1.3.0/"),
    "opencv-doc": (OPENCV_DEB, "./usr/share/doc/opencv-doc/"),
}

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in source pixels


# --- reading the sources -----------------------------------------------------------------------------------
def _ar_member(deb: bytes, prefix: str) -> bytes:
    """The first member of a Debian .deb (an `ar` archive) whose name starts with `prefix`."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith(prefix):
            return deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    raise KeyError(prefix)


def _open_tar(path: Path) -> tarfile.TarFile:
    if path.suffix == ".deb":
        return tarfile.open(fileobj=io.BytesIO(_ar_member(path.read_bytes(), "data.tar")))
    return tarfile.open(path)


class Sources:
    """Source pictures by key, e.g. "dlib:examples/faces/2008_001009.jpg", "skimage:astronaut",
    "matplotlib:grace_hopper.jpg"; each archive is read once, for every member the recipes need."""

    def __init__(self, download_dir: Path) -> None:
        self.download_dir = download_dir
        self._cache: dict[str, np.ndarray] = {}

    def preload(self, keys: set[str]) -> None:
        by_archive: dict[str, set[str]] = {}
        for key in keys:
            kind, _, path = key.partition(":")
            if kind in ARCHIVES:
                by_archive.setdefault(kind, set()).add(ARCHIVES[kind][1] + path)
        for kind, members in by_archive.items():
            archive = self.download_dir / ARCHIVES[kind][0]
            if not archive.is_file():
                raise SystemExit(f"{archive} is missing: see the download commands in {__file__}")
            with _open_tar(archive) as tar:
                for info in tar:
                    if info.name in members:
                        handle = tar.extractfile(info)
                        assert handle is not None
                        key = f"{kind}:{info.name[len(ARCHIVES[kind][1]):]}"
                        self._cache[key] = _decode(handle.read(), key)
            missing = {m for m in members if f"{kind}:{m[len(ARCHIVES[kind][1]):]}" not in self._cache}
            if missing:
                raise SystemExit(f"{archive.name} lacks {sorted(missing)}")

    def get(self, key: str) -> np.ndarray:
        """The source picture as BGR uint8."""
        if key not in self._cache:
            self._cache[key] = _load_installed(key)
        return self._cache[key]


def _decode(raw: bytes, key: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)  # drops alpha, greys become BGR
    if image is None:
        raise ValueError(f"{key}: not a picture")
    return image


def _load_installed(key: str) -> np.ndarray:
    kind, _, name = key.partition(":")
    if kind == "skimage":
        from skimage import data

        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2BGR)
    if kind == "matplotlib":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data(name, asfileobj=False)
        return _decode(Path(str(path)).read_bytes(), key)
    raise KeyError(f"unknown source {key!r}")


# --- the recipes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How one data-set file is made.

    op:
      whole        the source picture, scaled down to MAX_SIDE
      crop         `box` of the source (window chrome cut off a screenshot, one tile of a collage)
      closeup      a crop around `face` (a face box x1,y1,x2,y2 in source pixels, found once with mediapipe's
                   short-range model and frozen here) such that the face box is `value` of the frame's height;
                   `cut` = "chin" / "forehead" puts the frame's top / bottom edge on the face so the other end
                   is cut off (value > 1 then); aspect 4:3 landscape unless `portrait`
      dark         `base` (another data-set file) under-exposed to mean luma `value`, plus sensor noise
      bright       `base` washed out toward white to mean luma `value`
      blur         `base` through a Gaussian blur of sigma `value` px
      covered_dark a generated almost-black 640x480 frame of mean level `value` with noise (a finger on the lens)
      covered_hand `box` of a photo of a hand, filling a 640x480 frame, out of focus (sigma 25 px) and dimmed to
                   `value` of its brightness: a hand held over the camera
      phone        the real phone cut out of opencv-doc's yolo.jpg pasted onto `base`: centre `at` (fractions of
                   width, height), longest side `value` of the frame's height, rotated `angle` degrees
    """

    out: str
    op: str
    source: str = ""
    base: str = ""
    box: Box | None = None
    face: Box | None = None
    value: float = 0.0
    cut: str = ""
    portrait: bool = False
    at: tuple[float, float] = (0.5, 0.5)
    angle: float = 0.0
    seed: int = 0


def _whole(out: str, source: str) -> Recipe:
    return Recipe(out, "whole", source=source)


def _johns() -> list[Recipe]:
    """dlib's examples/johns: five Johns, eleven 150x150 face chips each (dlib's metric-learning example)."""
    names = {
        "salley": ["000179_02159509", "000183_02159543", "000186_02159346", "000189_02159361", "000190_02159501",
                   "000192_02159531", "000194_02159572", "000197_02159322", "000197_02159525", "000198_02159470",
                   "000200_02159354"],
        "savage": ["000264_01099001", "000274_01099061", "000277_01099000", "000289_01099139", "000290_01099067",
                   "000290_01099090", "000291_01099023", "000291_01099214", "000293_01099081", "000296_01099007",
                   "000299_01099008"],
        "schneider": ["000288_00925786", "000302_00925785", "000307_00925823", "000325_00925954", "000326_00925765",
                      "000326_00926089", "000326_00926128", "000326_00926139", "000329_00925859", "000329_00925963",
                      "000331_00926012"],
        "shimkus": ["000373_03228153", "000375_03227651", "000376_02340068", "000378_02340151", "000378_03227610",
                    "000383_03227939", "000385_03227766", "000388_03227773", "000390_03227666", "000394_02340150",
                    "000396_03227722"],
        "simm": ["000288_00470387", "000297_00470170", "000300_00470148", "000304_00470122", "000305_00470162",
                 "000305_00470717", "000306_00470222", "000306_00470223", "000309_00470287", "000310_00470421",
                 "000310_00470511"],
    }
    return [_whole(f"johns_{name}_{i:02d}.jpg", f"dlib:examples/johns/John_{name.capitalize()}/{stem}.jpg")
            for name, stems in names.items() for i, stem in enumerate(stems, 1)]


# Tiles of dlib's bald_guys.jpg (a collage of separate photos of four actors, named in dlib's
# dnn_face_recognition_ex.cpp); boxes found at the tiles' straight borders, 4 px inside.
BALD_TILES: dict[str, Box] = {
    "vin_diesel_1": (4, 4, 287, 294), "vin_diesel_2": (295, 193, 492, 374), "vin_diesel_3": (489, 4, 825, 331),
    "vin_diesel_4": (4, 302, 276, 593), "vin_diesel_5": (504, 339, 815, 666), "vin_diesel_6": (4, 1194, 293, 1507),
    "jason_statham_1": (302, 4, 481, 185), "jason_statham_2": (833, 4, 1104, 310),
    "jason_statham_3": (284, 382, 496, 666), "jason_statham_4": (823, 318, 1104, 651),
    "jason_statham_5": (37, 601, 277, 898), "jason_statham_6": (294, 674, 722, 1137),
    "bruce_willis_1": (730, 729, 996, 1124), "bruce_willis_2": (1005, 655, 1323, 1004),
    "bruce_willis_3": (1004, 1012, 1323, 1250), "bruce_willis_4": (692, 1132, 988, 1508),
    "dwayne_johnson_1": (1112, 4, 1771, 646), "dwayne_johnson_2": (1779, 393, 1982, 644),
    "dwayne_johnson_3": (1331, 654, 1982, 1251), "dwayne_johnson_4": (996, 1258, 1346, 1539),
    "dwayne_johnson_5": (1354, 1258, 1681, 1532), "dwayne_johnson_6": (1689, 1260, 1982, 1539),
}

FR = "face_recognition:tests/test_images/"
DLIB = "dlib:examples/faces/"
HTML = "opencv-doc:opencv4/html/"
EXDATA = "opencv-doc:examples/data/"

ORIGINALS: list[Recipe] = [
    # faces with a known identity
    _whole("fr_obama.jpg", FR + "obama.jpg"),
    _whole("fr_obama2.jpg", FR + "obama2.jpg"),
    _whole("fr_obama3.jpg", FR + "obama3.jpg"),
    _whole("fr_obama_partial_face.jpg", FR + "obama_partial_face.jpg"),
    _whole("fr_obama_partial_face2.jpg", FR + "obama_partial_face2.jpg"),
    _whole("fr_biden.jpg", FR + "biden.jpg"),
    _whole("dlib_tom_cruise.jpg", DLIB + "Tom_Cruise_avp_2014_4.jpg"),
    _whole("mpl_grace_hopper.jpg", "matplotlib:grace_hopper.jpg"),
    _whole("ski_astronaut.jpg", "skimage:astronaut"),
    _whole("ski_camera.jpg", "skimage:camera"),
    *_johns(),
    *[Recipe(f"tile_{name}.jpg", "crop", source=DLIB + "bald_guys.jpg", box=box) for name, box in BALD_TILES.items()],
    # faces, identity not named
    _whole("ocv_227943776_1.jpg", HTML + "227943776_1.jpg"),
    _whole("ocv_230501201_1.jpg", HTML + "230501201_1.jpg"),
    _whole("ocv_face_swapped.jpg", HTML + "face_swapped.jpg"),
    Recipe("ocv_cascade_webcam.jpg", "crop", source=HTML + "Cascade_Classifier_Tutorial_Result_Haar.jpg",
           box=(2, 24, 640, 506)),
    _whole("ocv_left06.jpg", EXDATA + "left06.jpg"),
    # groups
    _whole("dlib_2007_007763.jpg", DLIB + "2007_007763.jpg"),
    _whole("dlib_2008_001009.jpg", DLIB + "2008_001009.jpg"),
    _whole("dlib_2008_001322.jpg", DLIB + "2008_001322.jpg"),
    _whole("dlib_2008_002470.jpg", DLIB + "2008_002470.jpg"),
    _whole("dlib_2008_002506.jpg", DLIB + "2008_002506.jpg"),
    _whole("dlib_2008_004176.jpg", DLIB + "2008_004176.jpg"),
    _whole("dlib_2009_004587.jpg", DLIB + "2009_004587.jpg"),
    _whole("dlib_bald_guys.jpg", DLIB + "bald_guys.jpg"),
    # a person in view whose face is hidden
    _whole("ocv_left01.jpg", EXDATA + "left01.jpg"),
    _whole("ocv_right01.jpg", EXDATA + "right01.jpg"),
    _whole("ocv_left12.jpg", EXDATA + "left12.jpg"),
    _whole("ocv_inrange_webcam.jpg", HTML + "Threshold_inRange_Tutorial_Result_input.jpeg"),
    # phones, and objects that look like one
    Recipe("ocv_yolo.jpg", "crop", source=HTML + "yolo.jpg", box=(4, 58, 1028, 803)),
    _whole("ocv_realsense.jpg", HTML + "realsense.jpg"),
    _whole("ocv_stuff.jpg", EXDATA + "stuff.jpg"),
    # no face: objects, animals, scenes, drawings and paintings
    _whole("ski_coffee.jpg", "skimage:coffee"),
    _whole("ski_chelsea.jpg", "skimage:chelsea"),
    _whole("ski_rocket.jpg", "skimage:rocket"),
    _whole("dlib_dogs.jpg", DLIB + "dogs.jpg"),
    _whole("ocv_aloe.jpg", EXDATA + "aloeL.jpg"),
    _whole("ocv_apple.jpg", EXDATA + "apple.jpg"),
    _whole("ocv_baboon.jpg", EXDATA + "baboon.jpg"),
    _whole("ocv_board.jpg", EXDATA + "board.jpg"),
    _whole("ocv_building.jpg", EXDATA + "building.jpg"),
    _whole("ocv_butterfly.jpg", EXDATA + "butterfly.jpg"),
    _whole("ocv_fruits.jpg", EXDATA + "fruits.jpg"),
    _whole("ocv_home.jpg", EXDATA + "home.jpg"),
    _whole("ocv_leuven.jpg", EXDATA + "leuvenA.jpg"),
    _whole("ocv_orange.jpg", EXDATA + "orange.jpg"),
    _whole("ocv_squirrel.jpg", EXDATA + "squirrel_cls.jpg"),
    _whole("ocv_robin.jpg", "opencv-doc:examples/hfs/data/000.jpg"),
    _whole("ocv_dog.jpg", EXDATA + "chicky_512.png"),
    _whole("ocv_astra_color.jpg", HTML + "astra_color.jpg"),
    _whole("ocv_hand.jpg", HTML + "handSrc.jpg"),
    _whole("ocv_starry_night.jpg", EXDATA + "starry_night.jpg"),
    _whole("ocv_anime_drawing.jpg", "opencv-doc:examples/fuzzy/input.png"),
    Recipe("ocv_mona_lisa.jpg", "crop", source=HTML + "julia_facedetect_sample.jpg", box=(2, 24, 518, 767)),
    # blurred as shipped
    _whole("ocv_text_defocus.jpg", EXDATA + "text_defocus.jpg"),
    _whole("ocv_text_motion.jpg", EXDATA + "text_motion.jpg"),
]


def _cu(out: str, source: str, face: Box, value: float, cut: str = "", portrait: bool = False) -> Recipe:
    return Recipe(out, "closeup", source=source, face=face, value=value, cut=cut, portrait=portrait)


# Face boxes: mediapipe short-range detections on the full-resolution sources (frozen; see Recipe).
OBAMA, OBAMA2, OBAMA3 = (352, 145, 632, 425), (191, 299, 500, 608), (589, 298, 921, 630)
BIDEN, TOM, GRACE = (416, 238, 754, 577), (62, 242, 536, 715), (171, 146, 365, 341)
ASTRONAUT, CAMERA = (177, 82, 272, 178), (180, 122, 265, 206)
MAN_227, MAN_230 = (139, 118, 308, 287), (173, 268, 508, 602)

CLOSEUPS: list[Recipe] = [
    _cu("cu_obama_50.jpg", FR + "obama.jpg", OBAMA, 0.5),
    _cu("cu_obama_65.jpg", FR + "obama.jpg", OBAMA, 0.65),
    _cu("cu_obama_80.jpg", FR + "obama.jpg", OBAMA, 0.8),
    _cu("cu_obama_chin.jpg", FR + "obama.jpg", OBAMA, 1.1, cut="chin"),
    _cu("cu_obama2_60.jpg", FR + "obama2.jpg", OBAMA2, 0.6),
    _cu("cu_obama2_75.jpg", FR + "obama2.jpg", OBAMA2, 0.75),
    _cu("cu_obama2_forehead.jpg", FR + "obama2.jpg", OBAMA2, 1.1, cut="forehead"),
    _cu("cu_obama3_60.jpg", FR + "obama3.jpg", OBAMA3, 0.6),
    _cu("cu_obama3_85.jpg", FR + "obama3.jpg", OBAMA3, 0.85),
    _cu("cu_obama3_chin.jpg", FR + "obama3.jpg", OBAMA3, 1.15, cut="chin"),
    _cu("cu_biden_55.jpg", FR + "biden.jpg", BIDEN, 0.55),
    _cu("cu_biden_75.jpg", FR + "biden.jpg", BIDEN, 0.75),
    _cu("cu_biden_chin.jpg", FR + "biden.jpg", BIDEN, 1.1, cut="chin"),
    _cu("cu_tom_80.jpg", DLIB + "Tom_Cruise_avp_2014_4.jpg", TOM, 0.8),
    _cu("cu_tom_forehead.jpg", DLIB + "Tom_Cruise_avp_2014_4.jpg", TOM, 1.1, cut="forehead"),
    _cu("cu_grace_55.jpg", "matplotlib:grace_hopper.jpg", GRACE, 0.55),
    _cu("cu_grace_70.jpg", "matplotlib:grace_hopper.jpg", GRACE, 0.7),
    _cu("cu_grace_90.jpg", "matplotlib:grace_hopper.jpg", GRACE, 0.9),
    _cu("cu_astronaut_55.jpg", "skimage:astronaut", ASTRONAUT, 0.55),
    _cu("cu_astronaut_75.jpg", "skimage:astronaut", ASTRONAUT, 0.75),
    _cu("cu_astronaut_chin.jpg", "skimage:astronaut", ASTRONAUT, 1.1, cut="chin"),
    _cu("cu_camera_60.jpg", "skimage:camera", CAMERA, 0.6),
    _cu("cu_227943776_55.jpg", HTML + "227943776_1.jpg", MAN_227, 0.55),
    _cu("cu_227943776_75.jpg", HTML + "227943776_1.jpg", MAN_227, 0.75),
    _cu("cu_227943776_forehead.jpg", HTML + "227943776_1.jpg", MAN_227, 1.1, cut="forehead"),
    _cu("cu_230501201_55.jpg", HTML + "230501201_1.jpg", MAN_230, 0.55),
    _cu("cu_230501201_75.jpg", HTML + "230501201_1.jpg", MAN_230, 0.75),
    _cu("cu_230501201_90.jpg", HTML + "230501201_1.jpg", MAN_230, 0.9),
    _cu("cu_230501201_chin.jpg", HTML + "230501201_1.jpg", MAN_230, 1.1, cut="chin"),
    _cu("cu_2008_001009_woman_60.jpg", DLIB + "2008_001009.jpg", (135, 222, 213, 299), 0.6),
    _cu("cu_2008_001009_woman_85.jpg", DLIB + "2008_001009.jpg", (135, 222, 213, 299), 0.85),
    _cu("cu_2008_001009_girl_60.jpg", DLIB + "2008_001009.jpg", (152, 92, 218, 159), 0.6),
    _cu("cu_2008_001009_girl_85.jpg", DLIB + "2008_001009.jpg", (152, 92, 218, 159), 0.85),
    _cu("cu_2008_002506_left_70.jpg", DLIB + "2008_002506.jpg", (118, 77, 204, 163), 0.7, portrait=True),
    _cu("cu_2008_002506_middle_70.jpg", DLIB + "2008_002506.jpg", (223, 102, 316, 194), 0.7, portrait=True),
    _cu("cu_2008_002506_right_70.jpg", DLIB + "2008_002506.jpg", (343, 94, 443, 193), 0.7, portrait=True),
    _cu("cu_2009_004587_man_65.jpg", DLIB + "2009_004587.jpg", (147, 57, 221, 130), 0.65),
    _cu("cu_2008_001322_left_70.jpg", DLIB + "2008_001322.jpg", (104, 163, 179, 238), 0.7, portrait=True),
    _cu("cu_2008_001322_middle_70.jpg", DLIB + "2008_001322.jpg", (225, 213, 300, 288), 0.7, portrait=True),
    _cu("cu_2008_001322_right_70.jpg", DLIB + "2008_001322.jpg", (362, 165, 442, 246), 0.7, portrait=True),
    _cu("cu_face_swapped_80.jpg", HTML + "face_swapped.jpg", (106, 89, 225, 208), 0.8),
    _cu("cu_cascade_webcam_chin.jpg", HTML + "Cascade_Classifier_Tutorial_Result_Haar.jpg", (162, 190, 380, 408),
        1.05, cut="chin"),
]


def _variants(op: str, pairs: list[tuple[str, float]]) -> list[Recipe]:
    return [Recipe(f"{op}_{Path(base).stem}.jpg", op, base=base, value=value, seed=i)
            for i, (base, value) in enumerate(pairs)]


POOR: list[Recipe] = [
    *_variants("dark", [("fr_obama.jpg", 24), ("mpl_grace_hopper.jpg", 30), ("ski_astronaut.jpg", 36),
                        ("dlib_tom_cruise.jpg", 22), ("ocv_227943776_1.jpg", 28), ("dlib_2008_001322.jpg", 34),
                        ("dlib_2008_002506.jpg", 26), ("cu_biden_55.jpg", 32), ("johns_simm_01.jpg", 38),
                        ("tile_jason_statham_6.jpg", 20), ("ocv_cascade_webcam.jpg", 30)]),
    *_variants("bright", [("fr_obama2.jpg", 228), ("fr_biden.jpg", 232), ("ski_camera.jpg", 226),
                          ("mpl_grace_hopper.jpg", 236), ("dlib_2009_004587.jpg", 230),
                          ("dlib_2008_001009.jpg", 224), ("ocv_230501201_1.jpg", 234), ("cu_tom_80.jpg", 230),
                          ("johns_salley_01.jpg", 228), ("tile_bruce_willis_2.jpg", 238)]),
    *_variants("blur", [("fr_obama3.jpg", 9), ("dlib_tom_cruise.jpg", 12), ("ski_astronaut.jpg", 8),
                        ("dlib_2008_004176.jpg", 8), ("dlib_2007_007763.jpg", 7), ("ocv_227943776_1.jpg", 10),
                        ("cu_grace_70.jpg", 9), ("johns_schneider_01.jpg", 5), ("tile_dwayne_johnson_4.jpg", 7),
                        ("ocv_cascade_webcam.jpg", 11)]),
    *[Recipe(f"covered_dark_{i}.jpg", "covered_dark", value=level, seed=i)
      for i, level in enumerate((6.0, 10.0, 14.0, 18.0, 24.0), 1)],
    Recipe("covered_hand_1.jpg", "covered_hand", source=HTML + "handSrc.jpg", box=(120, 120, 320, 270), value=0.7),
    Recipe("covered_hand_2.jpg", "covered_hand", source=HTML + "handSrc.jpg", box=(60, 150, 300, 330), value=0.45),
    Recipe("covered_hand_3.jpg", "covered_hand", source=HTML + "handDst.jpg", box=(150, 100, 350, 250), value=0.6),
    Recipe("covered_hand_4.jpg", "covered_hand", source=HTML + "handDst.jpg", box=(250, 180, 450, 330), value=0.35),
    Recipe("covered_hand_5.jpg", "covered_hand", source=HTML + "gbocclusion.png", box=(480, 250, 620, 355),
           value=0.55),
]

PHONES: list[Recipe] = [
    Recipe("phone_astronaut.jpg", "phone", base="ski_astronaut.jpg", at=(0.66, 0.34), value=0.32, angle=75),
    Recipe("phone_grace_hopper.jpg", "phone", base="mpl_grace_hopper.jpg", at=(0.2, 0.45), value=0.34, angle=-70),
    Recipe("phone_obama_desk.jpg", "phone", base="fr_obama.jpg", at=(0.5, 0.9), value=0.18, angle=8),
    Recipe("phone_227943776.jpg", "phone", base="ocv_227943776_1.jpg", at=(0.5, 0.82), value=0.3, angle=95),
    Recipe("phone_230501201.jpg", "phone", base="ocv_230501201_1.jpg", at=(0.78, 0.42), value=0.28, angle=-100),
    Recipe("phone_2009_004587.jpg", "phone", base="dlib_2009_004587.jpg", at=(0.26, 0.86), value=0.14, angle=30),
    Recipe("phone_2008_001009.jpg", "phone", base="dlib_2008_001009.jpg", at=(0.78, 0.86), value=0.2, angle=0),
    Recipe("phone_2008_002506.jpg", "phone", base="dlib_2008_002506.jpg", at=(0.86, 0.8), value=0.24, angle=45),
    Recipe("phone_tom_cruise.jpg", "phone", base="dlib_tom_cruise.jpg", at=(0.2, 0.86), value=0.26, angle=120),
    Recipe("phone_cu_obama_65.jpg", "phone", base="cu_obama_65.jpg", at=(0.82, 0.74), value=0.42, angle=80),
    Recipe("phone_camera.jpg", "phone", base="ski_camera.jpg", at=(0.76, 0.76), value=0.24, angle=-30),
    Recipe("phone_biden.jpg", "phone", base="fr_biden.jpg", at=(0.5, 0.52), value=0.1, angle=60),
    Recipe("phone_cascade_webcam.jpg", "phone", base="ocv_cascade_webcam.jpg", at=(0.2, 0.8), value=0.3, angle=-20),
    Recipe("phone_cu_230501201_55.jpg", "phone", base="cu_230501201_55.jpg", at=(0.2, 0.62), value=0.45, angle=-80),
]

RECIPES: list[Recipe] = [*ORIGINALS, *CLOSEUPS, *POOR, *PHONES]

# The phone in opencv-doc's yolo.jpg (an iPhone on a table cloth), traced by hand in that file's pixels.
PHONE_SOURCE = HTML + "yolo.jpg"
PHONE_OUTLINE = [(128, 566), (136, 556), (237, 541), (253, 543), (383, 633), (390, 650), (387, 660), (283, 738),
                 (270, 735), (128, 597)]


# --- the operations ------------------------------------------------------------------------------------------
def fit(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Scaled down (never up) so that the longest side is at most max_side."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def luma(image: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean())


def closeup_box(face: Box, frac: float, size: tuple[int, int], cut: str = "", portrait: bool = False) -> Box:
    """The crop in which `face` is `frac` of the height: centred on the face (a little above its centre, so the
    hair shows as it does in a webcam frame), moved inside the picture, never larger than it."""
    width, height = size
    x1, y1, x2, y2 = face
    face_h = y2 - y1
    crop_h = min(face_h / frac, height)
    crop_w = min(crop_h * (3 / 4 if portrait else 4 / 3), width)
    cx = (x1 + x2) / 2
    if cut == "chin":  # the frame starts just above the hairline and ends inside the face
        top = y1 - 0.25 * face_h
    elif cut == "forehead":  # the frame ends just below the chin and starts inside the face
        top = y2 + 0.08 * face_h - crop_h
    else:
        top = (y1 + y2) / 2 - 0.08 * face_h - crop_h / 2
    left = cx - crop_w / 2
    left = min(max(left, 0.0), width - crop_w)
    top = min(max(top, 0.0), height - crop_h)
    return round(left), round(top), round(left + crop_w), round(top + crop_h)


def gamma_to_luma(image: np.ndarray, target: float) -> np.ndarray:
    """A gamma curve (bisected) that brings the mean luma to `target`: dark frames keep their shape, as an
    under-exposed webcam's do, instead of being a scaled copy."""
    lut_x = np.arange(256, dtype=np.float64) / 255.0
    lo, hi = 0.05, 20.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lut = np.clip(np.round(255.0 * lut_x ** mid), 0, 255).astype(np.uint8)
        if luma(cv2.LUT(image, lut)) > target:
            lo = mid
        else:
            hi = mid
    lut = np.clip(np.round(255.0 * lut_x ** math.sqrt(lo * hi)), 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def underexposed(image: np.ndarray, target: float) -> np.ndarray:
    """A camera short of light: the exposure scaled down to 1.5x the target luma, then a gamma curve the rest of
    the way (the shadows sink first). Scaling alone keeps every highlight's share; gamma alone keeps the
    highlights bright enough that the frame still reads as a well-lit one."""
    current = luma(image)
    scaled = np.clip(image.astype(np.float32) * min(1.0, 1.5 * target / max(current, 1.0)), 0, 255)
    return gamma_to_luma(scaled.astype(np.uint8), target)


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(np.float32) + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def washed_out(image: np.ndarray, target: float) -> np.ndarray:
    """Blend toward white until the mean luma is `target` (an over-exposed camera facing a window)."""
    current = luma(image)
    alpha = 0.0 if current >= target else (target - current) / (255.0 - current)
    return np.clip(image.astype(np.float32) * (1 - alpha) + 255.0 * alpha, 0, 255).astype(np.uint8)


def covered_dark(level: float, seed: int) -> np.ndarray:
    """A lens covered by a finger or tape: almost black, a faint reddish glow through the skin on one side,
    and sensor noise."""
    rng = np.random.default_rng(seed)
    height, width = 480, 640
    ramp = np.linspace(0.6, 1.4, width, dtype=np.float32)[None, :] * np.linspace(1.2, 0.8, height,
                                                                                dtype=np.float32)[:, None]
    tint = np.array([0.7, 0.85, 1.45], np.float32) if seed % 2 else np.array([1.0, 1.0, 1.0], np.float32)
    frame = level * ramp[:, :, None] * tint[None, None, :]
    frame = frame + rng.normal(0, 2.5, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def covered_hand(source: np.ndarray, box: Box, dim: float, seed: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    patch = cv2.resize(source[y1:y2, x1:x2], (640, 480), interpolation=cv2.INTER_CUBIC)
    patch = cv2.GaussianBlur(patch, (0, 0), 25)
    return noisy(np.clip(patch.astype(np.float32) * dim, 0, 255).astype(np.uint8), 2.0, seed)


def phone_patch(yolo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(BGR patch, alpha 0..1) of the phone, from its hand-traced outline with a softened edge."""
    outline = np.array(PHONE_OUTLINE, np.int32)
    x, y, w, h = cv2.boundingRect(outline)
    mask = np.zeros(yolo.shape[:2], np.uint8)
    cv2.fillPoly(mask, [outline], (255,))
    alpha = cv2.GaussianBlur(mask, (0, 0), 1.0).astype(np.float32) / 255.0
    pad = 3
    y0, x0 = max(0, y - pad), max(0, x - pad)
    return yolo[y0:y + h + pad, x0:x + w + pad].copy(), alpha[y0:y + h + pad, x0:x + w + pad].copy()


def paste_phone(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, recipe: Recipe) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = recipe.value * height / max(patch.shape[:2])
    ph, pw = patch.shape[:2]
    # Rotate about the patch centre into a canvas large enough for any angle, then scale.
    diag = int(math.ceil(math.hypot(ph, pw)))
    matrix = np.asarray(cv2.getRotationMatrix2D((pw / 2, ph / 2), recipe.angle, scale), dtype=np.float64)
    out_size = max(2, int(math.ceil(diag * scale)))
    matrix[:, 2] += (out_size / 2 - pw / 2, out_size / 2 - ph / 2)
    rot = cv2.warpAffine(patch, matrix, (out_size, out_size), flags=cv2.INTER_AREA)
    rot_alpha = cv2.warpAffine(alpha, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR)
    if frame.ndim == 3 and np.allclose(frame[:, :, 0], frame[:, :, 1]) and np.allclose(frame[:, :, 1],
                                                                                          frame[:, :, 2]):
        rot = cv2.cvtColor(cv2.cvtColor(rot, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)  # a grey photo stays grey
    cx, cy = recipe.at[0] * width, recipe.at[1] * height
    left, top = int(round(cx - out_size / 2)), int(round(cy - out_size / 2))
    out = frame.astype(np.float32)
    fx1, fy1 = max(0, left), max(0, top)
    fx2, fy2 = min(width, left + out_size), min(height, top + out_size)
    src = rot[fy1 - top:fy2 - top, fx1 - left:fx2 - left].astype(np.float32)
    a = rot_alpha[fy1 - top:fy2 - top, fx1 - left:fx2 - left][:, :, None]
    out[fy1:fy2, fx1:fx2] = out[fy1:fy2, fx1:fx2] * (1 - a) + src * a
    return np.clip(out, 0, 255).astype(np.uint8)


# --- building ------------------------------------------------------------------------------------------------
@dataclass
class Builder:
    sources: Sources
    built: dict[str, np.ndarray] = field(default_factory=dict)

    def make(self, recipe: Recipe) -> np.ndarray:
        ops: dict[str, Callable[[Recipe], np.ndarray]] = {
            "whole": lambda r: fit(self.sources.get(r.source)),
            "crop": self._crop,
            "closeup": self._closeup,
            "dark": lambda r: noisy(underexposed(self.built[r.base], r.value), 2.5, r.seed),
            "bright": lambda r: washed_out(self.built[r.base], r.value),
            "blur": lambda r: cv2.GaussianBlur(self.built[r.base], (0, 0), r.value),
            "covered_dark": lambda r: covered_dark(r.value, r.seed),
            "covered_hand": lambda r: covered_hand(self.sources.get(r.source), self._box(r), r.value, r.seed),
            "phone": self._phone,
        }
        image = ops[recipe.op](recipe)
        self.built[recipe.out] = image
        return image

    @staticmethod
    def _box(recipe: Recipe) -> Box:
        if recipe.box is None:
            raise ValueError(f"{recipe.out}: {recipe.op} needs a box")
        return recipe.box

    def _crop(self, recipe: Recipe) -> np.ndarray:
        x1, y1, x2, y2 = self._box(recipe)
        return fit(self.sources.get(recipe.source)[y1:y2, x1:x2])

    def _closeup(self, recipe: Recipe) -> np.ndarray:
        source = self.sources.get(recipe.source)
        if recipe.face is None:
            raise ValueError(f"{recipe.out}: closeup needs a face box")
        height, width = source.shape[:2]
        x1, y1, x2, y2 = closeup_box(recipe.face, recipe.value, (width, height), recipe.cut, recipe.portrait)
        return fit(source[y1:y2, x1:x2])

    def _phone(self, recipe: Recipe) -> np.ndarray:
        patch, alpha = phone_patch(self.sources.get(PHONE_SOURCE))
        return paste_phone(self.built[recipe.base], patch, alpha, recipe)


def encode(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def build(download_dir: Path, out: Path, check: bool = False, only: set[str] | None = None) -> list[str]:
    """Write (or with check=True compare) every recipe's file; returns the names that differ (check) or were
    written."""
    sources = Sources(download_dir)
    sources.preload({r.source for r in RECIPES if r.source} | {PHONE_SOURCE})
    builder = Builder(sources)
    touched = []
    for recipe in RECIPES:
        data = encode(builder.make(recipe))
        if only is not None and recipe.out not in only:
            continue
        path = out / recipe.out
        if check:
            if not path.is_file() or path.read_bytes() != data:
                touched.append(recipe.out)
        else:
            path.write_bytes(data)
            touched.append(recipe.out)
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("download_dir", type=Path, help="folder with the three downloads (see the module doc)")
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    parser.add_argument("--only", nargs="*", help="only these output files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = build(args.download_dir, args.out, args.check, set(args.only) if args.only else None)
    if args.check:
        print(f"{len(names)} file(s) differ: {names}" if names else "every file matches its recipe")
        return 1 if names else 0
    manifest = args.out / "manifest.json"
    if manifest.is_file():
        listed = {entry["file"] for entry in json.loads(manifest.read_text())}
        unlabelled = sorted({r.out for r in RECIPES} - listed)
        if unlabelled:
            print(f"not in manifest.json yet (label them): {unlabelled}", file=sys.stderr)
    print(f"wrote {len(names)} file(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
