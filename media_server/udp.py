"""The media node's receive path on its event loop: batched UDP reads, and the RTP fast path.

asyncio's selector datagram transport reads ONE datagram per readiness callback. A media node has a socket
per candidate, each receiving ~120 packets/s at 1 Mbit/s; when one loop iteration takes longer than the
gap between two packets (many streams, a GC pause), each socket falls a little further behind every
iteration, its kernel buffer fills, and the kernel drops packets (UdpRcvbufErrors) — measured: 2 MB
buffers full and video frozen at 16 streams. Reading up to MAX_DATAGRAMS_PER_WAKE per callback keeps up
as long as an iteration takes less than that many packet intervals (16 x 8 ms at 1 Mbit/s), while one
socket's burst still cannot hold the loop for long (each packet then runs SRTP and the jitter buffer).

The RTP fast path (RTP_FAST_PATH, on by default): every received packet runs through each layer of aioice
and aiortc in Python (ICE demux, DTLS/SRTP, RTP parse, the receiver's statistics, NACK, bandwidth estimator, jitter
buffer); media_server/aiortc_compat.py replaces the per-packet methods with leaner ones that give the same frames,
statistics and RTCP (tests/test_rtp_path.py compares both on scripted loss); bench/rtp_path.py measures the CPU
per packet with and without.

Both patches (private asyncio, aioice and aiortc names) live in media_server/aiortc_compat.py;
tests/test_udp.py, tests/test_aiortc_internals.py and tests/test_rtp_path.py check their behaviour.
"""

from __future__ import annotations

from media_server import aiortc_compat

MAX_DATAGRAMS_PER_WAKE = 16


def install_batched_reads() -> None:
    """Idempotent; affects every selector event loop in the process (datagram transports created afterwards)."""
    aiortc_compat.install_batched_reads(MAX_DATAGRAMS_PER_WAKE)


def installed() -> bool:
    return aiortc_compat.batched_reads_installed()


def install_rtp_fast_path(enabled: bool) -> bool:
    """Process-wide, for the peer connections made afterwards; False puts aiortc's own methods back. Returns
    whether it is on (never on an aiortc/aioice version it was not written against: logged)."""
    return aiortc_compat.install_rtp_fast_path(enabled)
