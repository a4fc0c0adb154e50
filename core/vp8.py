"""Facts about the VP8 bitstream (RFC 6386) that the media path and the archive need without decoding."""

from __future__ import annotations

# A keyframe's uncompressed data chunk starts with a 3-byte frame tag (bit 0 clear) and the start code.
START_CODE = b"\x9d\x01\x2a"


def is_keyframe(data: bytes) -> bool:
    return len(data) >= 10 and data[0] & 1 == 0 and data[3:6] == START_CODE


def frame_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (None for an interframe)."""
    if not is_keyframe(data):
        return None
    return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF
