"""The offer a node acts on, and answer SDP tuning so Chromium sends full resolution from the first seconds.

`screen_offer` applies core.offers to an offer before aiortc sees it: DTLS and ICE credentials present, at most
MAX_CANDIDATES candidate addresses, and no candidate on a loopback, link-local or private address unless
ICE_ALLOW_PRIVATE_CANDIDATES (an mDNS name is resolved first and judged by its address).

Against aiortc (REMB only) Chromium starts from a low bandwidth estimate and sits at 480x360 for ~30 s.
Chromium reads `x-google-start-bitrate` / `x-google-min-bitrate` / `x-google-max-bitrate` from the remote
description's video codec parameters, and `b=AS` as the session cap; setting them in our answer makes it
start at the target bitrate, so it encodes 640x480 at once.
"""

from __future__ import annotations

import logging
import re

from core.offers import check_offer, mdns_names, screen_candidates
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


def tune_answer(sdp: str, bitrate_kbps: int) -> str:
    lines = sdp.splitlines()
    out: list[str] = []
    in_video = False
    video_pts: set[str] = set()
    params = (f"x-google-start-bitrate={bitrate_kbps};x-google-min-bitrate={max(100, bitrate_kbps // 2)};"
              f"x-google-max-bitrate={bitrate_kbps}")
    for line in lines:
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            out.append(line)
            continue
        if in_video and line.startswith("a=rtpmap:"):
            match = re.match(r"a=rtpmap:(\d+) (VP8|VP9|H264)/", line)
            if match:
                video_pts.add(match.group(1))
        if in_video and line.startswith("c=") and not any(x.startswith("b=AS") for x in out[-3:]):
            out.append(line)
            out.append(f"b=AS:{bitrate_kbps}")
            continue
        if in_video and line.startswith("a=fmtp:"):
            pt = line[len("a=fmtp:"):].split(" ", 1)[0]
            if pt in video_pts and "x-google-" not in line:
                line = f"{line};{params}"
        out.append(line)
    # Codecs without an fmtp line of their own get one.
    text = "\r\n".join(out) + "\r\n"
    for pt in video_pts:
        if f"a=fmtp:{pt} " not in text:
            text = text.replace(f"a=rtpmap:{pt} ", f"a=fmtp:{pt} {params}\r\na=rtpmap:{pt} ", 1)
    return text
