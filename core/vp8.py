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


def temporal_layer(payload: bytes) -> int | None:
    """The temporal layer index (TID) of a VP8 RTP packet, from its payload descriptor (RFC 7741 section 4.2);
    None when the sender marks no layers (no extension, or its T bit clear) or the descriptor is cut short.

        byte 0: |X|R|N|S|R| PID |      X: the extension byte follows
        byte 1: |I|L|T|K| RSV   |      I: PictureID, L: TL0PICIDX, T: TID, K: KEYIDX present
        then PictureID (1 byte, or 2 when its M bit is set), TL0PICIDX (1 byte), |TID:2|Y|KEYIDX:5| (T or K)

    Frames of layer 0 (the base layer) reference only layer-0 frames, so a receiver may decode them alone."""
    if len(payload) < 2 or not payload[0] & 0x80:
        return None
    ext = payload[1]
    if not ext & 0x20:
        return None
    pos = 2
    if ext & 0x80:  # PictureID: 7 bits, or 15 with the M bit
        if pos >= len(payload):
            return None
        pos += 2 if payload[pos] & 0x80 else 1
    if ext & 0x40:  # TL0PICIDX
        pos += 1
    if pos >= len(payload):
        return None
    return payload[pos] >> 6
