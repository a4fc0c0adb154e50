"""Facts about Opus packets (RFC 6716) that the media path and the archive need without decoding."""

from __future__ import annotations

# The frame lengths libopus encodes and libwebrtc picks from an SDP `ptime` (audio_encoder_opus.cc
# kOpusSupportedFrameLengths: the next one up from the ptime asked for; 120 only in builds with
# WEBRTC_OPUS_SUPPORT_120MS_PTIME, else 60).
FRAME_LENGTHS_MS = (10, 20, 40, 60, 120)
BROWSER_DEFAULT_MS = 20  # what a browser sends when the remote description names no ptime


def frame_ms(toc: int) -> float:
    """The length of each frame in a packet, from its TOC byte's configuration number (RFC 6716 3.1, table 2):
    SILK-only 10/20/40/60 ms, hybrid 10/20, CELT-only 2.5/5/10/20."""
    config = toc >> 3
    if config < 12:
        return (10, 20, 40, 60)[config % 4]
    if config < 16:
        return (10, 20)[config % 2]
    return (2.5, 5, 10, 20)[config % 4]


def frame_count(packet: bytes) -> int:
    """Frames in a packet: code 0 one, codes 1 and 2 two, code 3 the count in the next byte (0 when missing)."""
    code = packet[0] & 3
    if code == 0:
        return 1
    if code in (1, 2):
        return 2
    return packet[1] & 0x3F if len(packet) > 1 else 0


def packet_duration_ms(packet: bytes) -> float:
    """The audio one Opus packet holds, in ms (0 for an empty packet): a browser asked for `a=ptime:60` sends
    60-ms packets (one 60-ms SILK frame, or three 20-ms CELT frames in a code-3 packet)."""
    if not packet:
        return 0.0
    return frame_ms(packet[0]) * frame_count(packet)


def browser_frame_ms(ptime_ms: int) -> int:
    """The frame length libwebrtc's Opus encoder picks for an SDP ptime: the next supported length up, the longest
    beyond them (audio_encoder_opus.cc GetFrameSizeMs)."""
    return next((n for n in FRAME_LENGTHS_MS if n >= ptime_ms), FRAME_LENGTHS_MS[-1])
