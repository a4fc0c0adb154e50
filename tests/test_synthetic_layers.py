"""The load generator's layered VP8 (bench/synthetic.py): what the capacity benchmark replays must be what a
browser sending L1T3 sends, or the "decode only the base layer" figure measures nothing real."""

from __future__ import annotations

import fractions
from collections.abc import Callable

import av
import numpy as np
import pytest
from aiortc.codecs import vpx

from bench.synthetic import _ORIGINAL_PACK, L1T3_PATTERN, EncodedClip, encode_clip, install_layered_packetizer
from core import vp8
from tests.support.media import face_canvas


@pytest.fixture(scope="module")
def layered() -> EncodedClip:
    base = face_canvas()
    frames = [np.roll(base, int(6 * np.sin(i / 5)), axis=1) for i in range(48)]
    return encode_clip(frames, fps=30, bitrate=800_000, gop=24, temporal_layers=True)


def _decode(clip: EncodedClip, chosen: Callable[[int], bool]) -> dict[int, np.ndarray]:
    codec = av.CodecContext.create("libvpx", "r")
    out: dict[int, np.ndarray] = {}
    for i, (data, _) in enumerate(clip.video):
        if chosen(i):
            for frame in codec.decode(av.Packet(data)):
                out[i] = frame.to_ndarray(format="yuv420p")
    return out


def test_the_base_layer_decodes_alone_to_the_same_pictures(layered: EncodedClip) -> None:
    assert layered.layers is not None and len(layered.layers) == len(layered.video) == 48
    assert all(layer == 0 for (_, key), layer in zip(layered.video, layered.layers, strict=True) if key)
    assert layered.layers[:8] == [0, 2, 1, 2, 0, 2, 1, 2]
    full = _decode(layered, lambda i: True)
    base = _decode(layered, lambda i: layered.layers[i] == 0)
    lower = _decode(layered, lambda i: layered.layers[i] <= 1)
    assert len(base) == 12 and len(lower) == 24
    assert all(np.array_equal(base[i], full[i]) for i in base)
    assert all(np.array_equal(lower[i], full[i]) for i in lower)
    # The control: layer-2 frames decoded without the layer-1 frames they reference are not the same pictures.
    broken = _decode(layered, lambda i: layered.layers[i] != 1)
    assert any(not np.array_equal(broken[i], full[i]) for i in broken if layered.layers[i] == 2)


def test_l1t2_base_layer_decodes_alone_and_skipping_it_breaks_the_pictures() -> None:
    base_picture = face_canvas()
    frames = [np.roll(base_picture, int(6 * np.sin(i / 5)), axis=1) for i in range(24)]
    clip = encode_clip(frames, fps=15, bitrate=500_000, gop=12, temporal_layers="L1T2")
    assert clip.layers is not None and clip.layers[:6] == [0, 1, 0, 1, 0, 1]
    full = _decode(clip, lambda i: True)
    base = _decode(clip, lambda i: clip.layers[i] == 0)
    assert len(base) == 12 and all(np.array_equal(base[i], full[i]) for i in base)
    # The control: the layer-1 frames decoded without the base frame before them are not the same pictures.
    broken = _decode(clip, lambda i: i % 12 != 2)
    assert any(not np.array_equal(broken[i], full[i]) for i in broken if clip.layers[i] == 1 and i % 12 > 2)


def test_an_unknown_layer_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="L1T4"):
        encode_clip([face_canvas()] * 2, temporal_layers="L1T4")


def test_an_unlayered_clip_has_no_layers() -> None:
    clip = encode_clip([face_canvas()] * 4, gop=4)
    assert clip.layers is None


def test_the_senders_mark_each_frames_layer_in_the_payload_descriptor(layered: EncodedClip) -> None:
    install_layered_packetizer()
    try:
        encoder = vpx.Vp8Encoder()
        seen: list[int | None] = []
        for i, (data, _) in enumerate(layered.video[:8]):
            packet = av.Packet(data)
            packet.pts, packet.time_base = i * 3000, fractions.Fraction(1, 90_000)
            packet.opaque = layered.layers[i]
            payloads, timestamp = encoder.pack(packet)
            assert timestamp == i * 3000
            layers = {vp8.temporal_layer(p) for p in payloads}
            assert len(layers) == 1  # every packet of a frame carries it
            seen.append(layers.pop())
            # what the receiver depayloads is the frame itself
            assert b"".join(vpx.VpxPayloadDescriptor.parse(p)[1] for p in payloads) == data
        assert seen == list(L1T3_PATTERN) * 2
        unmarked = av.Packet(layered.video[0][0])
        unmarked.pts, unmarked.time_base = 0, fractions.Fraction(1, 90_000)
        assert {vp8.temporal_layer(p) for p in encoder.pack(unmarked)[0]} == {None}
    finally:
        vpx.Vp8Encoder.pack = _ORIGINAL_PACK
