"""Batched UDP reads for the media node's event loop.

asyncio's selector datagram transport reads ONE datagram per readiness callback. A media node has a socket
per candidate, each receiving ~120 packets/s at 1 Mbit/s; when one loop iteration takes longer than the
gap between two packets (many streams, a GC pause), each socket falls a little further behind every
iteration, its kernel buffer fills, and the kernel drops packets (UdpRcvbufErrors) — measured: 2 MB
buffers full and video frozen at 16 streams. Reading up to MAX_DATAGRAMS_PER_WAKE per callback keeps up
as long as an iteration takes less than that many packet intervals (16 x 8 ms at 1 Mbit/s), while one
socket's burst still cannot hold the loop for long (each packet then runs SRTP and the jitter buffer).

The patch itself (a private asyncio name, the standard library's body looped) lives in
media_server/aiortc_compat.py; tests/test_udp.py and tests/test_aiortc_internals.py check its behaviour.
"""

from __future__ import annotations

from media_server import aiortc_compat

MAX_DATAGRAMS_PER_WAKE = 16


def install_batched_reads() -> None:
    """Idempotent; affects every selector event loop in the process (datagram transports created afterwards)."""
    aiortc_compat.install_batched_reads(MAX_DATAGRAMS_PER_WAKE)


def installed() -> bool:
    return aiortc_compat.batched_reads_installed()
