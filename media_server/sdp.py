"""The offer a node acts on, and answer SDP tuning so Chromium sends full resolution from the first seconds.

`screen_offer` applies core.offers to an offer before aiortc sees it: DTLS and ICE credentials present, at most
MAX_CANDIDATES candidate addresses, and no candidate on a loopback, link-local or private address unless
ICE_ALLOW_PRIVATE_CANDIDATES (an mDNS name is resolved first and judged by its address).

Against aiortc (REMB only) Chromium starts from a low bandwidth estimate and sits at 480x360 for ~30 s.
Chromium reads `x-google-start-bitrate` / `x-google-min-bitrate` / `x-google-max-bitrate` from the remote
description's video codec parameters, and `b=AS` as the session cap; setting them in our answer makes it
start at the target bitrate, so it encodes 640x480 at once.

Audio packets (AUDIO_PTIME_MS): a browser sends 20-ms Opus frames, 50 packets a second, unless the remote
description says otherwise: libwebrtc's SDP parser copies an audio m-section's `a=ptime:N` into every audio
codec's parameters, and its Opus encoder takes its frame length from that (audio_encoder_opus.cc GetFrameSizeMs:
the next supported length up, core.opus.FRAME_LENGTHS_MS). `a=ptime:60` in the answer makes it send ~17 packets a
second: each packet costs the node's event loop the same (ICE demux, SRTP, RTP parsing, the jitter buffer, the
archive hand-off, one decoder call) whatever audio it holds.
"""

from __future__ import annotations

import logging
import re

from core.offers import check_offer, mdns_names, screen_candidates
from core.opus import BROWSER_DEFAULT_MS
from media_server.ice import resolve_mdns

log = logging.getLogger(__name__)


async def screen_offer(sdp: str, *, allow_private: bool) -> str:
    """The offer with the candidates the node must not send to taken out; core.offers.OfferError when it cannot
    be used at all. The node offers no trickle path, so these are all the remote candidates it ever gets."""
    check_offer(sdp)
    resolved = {} if allow_private else await resolve_mdns(mdns_names(sdp))
    screened, dropped = screen_candidates(sdp, allow_private=allow_private, resolved=resolved)
    if dropped:
        log.info("dropped %d ICE candidate(s) of an offer: %s", len(dropped), ", ".join(dropped[:8]))
    return screened


# Chromium takes the connection's bandwidth constraints (start, min, max) from one video m-line's x-google-*
# parameters, not one set per m-line. Measured with the screen's second m-line (media_server/screen.py): without
# parameters on it the estimate started at 300 kbit/s and the webcam sat at 170-350 kbit/s for over 8 s; with a low
# minimum on it (30) the connection's floor fell to 30 and the webcam to 30-60 kbit/s. So every video m-line gets
# the same values. Those values are the connection's, so with a screen they add the screen's share to the webcam's
# (measured: with the webcam's alone, the screen took ~200 of the ~600-700 kbit/s estimate and the webcam stayed
# near 350-400 kbit/s); the screen's sender keeps it small (very-low priority, 2 fps, SCREEN_MAX_KBPS in the page).
SCREEN_FLOOR_KBPS = 300  # the screen's share of the connection's minimum and start
SCREEN_MAX_KBPS = 600  # candidate.js caps the screen's sender at this


def tune_answer(sdp: str, bitrate_kbps: int, ptime_ms: int = BROWSER_DEFAULT_MS) -> str:
    """The start/min/max bitrates and the b=AS cap on every video m-line (webcam and screen alike), for the webcam
    alone or the webcam plus the screen when the answer has a second video m-line; `a=ptime:ptime_ms` on every
    audio m-line unless ptime_ms is what browsers send anyway (20: the answer stays as aiortc wrote it, the off
    switch's exact old behaviour)."""
    screen = sdp.count("\nm=video") + sdp.startswith("m=video") >= 2
    start, floor, cap = bitrate_kbps, max(100, bitrate_kbps // 2), bitrate_kbps
    if screen:
        start, floor, cap = start + SCREEN_FLOOR_KBPS, floor + SCREEN_FLOOR_KBPS, cap + SCREEN_MAX_KBPS
    params = f"x-google-start-bitrate={start};x-google-min-bitrate={floor};x-google-max-bitrate={cap}"
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        if section[0].startswith("m=video"):
            section = _tune_video(section, params, cap)
        elif section[0].startswith("m=audio") and ptime_ms != BROWSER_DEFAULT_MS:
            section = [line for line in section if not line.startswith("a=ptime:")] + [f"a=ptime:{ptime_ms}"]
        out += section
    return "\r\n".join(out) + "\r\n"


def _tune_video(section: list[str], params: str, cap: int) -> list[str]:
    """One video m-line section: the b=AS cap after its c= line, the params on each video codec's fmtp (a codec
    without an fmtp line gets one)."""
    video_pts = {m.group(1) for line in section if (m := re.match(r"a=rtpmap:(\d+) (VP8|VP9|H264)/", line))}
    with_fmtp = {line[len("a=fmtp:"):].split(" ", 1)[0] for line in section if line.startswith("a=fmtp:")}
    out: list[str] = []
    for line in section:
        if line.startswith("a=fmtp:"):
            pt = line[len("a=fmtp:"):].split(" ", 1)[0]
            if pt in video_pts and "x-google-" not in line:
                line = f"{line};{params}"
        if line.startswith("a=rtpmap:"):
            pt = line[len("a=rtpmap:"):].split(" ", 1)[0]
            if pt in video_pts and pt not in with_fmtp:
                out.append(f"a=fmtp:{pt} {params}")
        out.append(line)
        if line.startswith("c=") and not any(x.startswith("b=AS") for x in section):
            out.append(f"b=AS:{cap}")
    return out
