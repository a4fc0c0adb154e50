"""UDP port ranges for the MEDIA_UDP_PORTS tests: a run of free ports, and the range installed for a block."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator

from media_server import aiortc_compat


def free_udp_range(size: int) -> tuple[int, int]:
    """A run of `size` consecutive UDP ports nothing is bound to now, on every address (checked on 0.0.0.0)."""
    for _ in range(200):
        first = random.randrange(30000, 60000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("0.0.0.0", port))
            return first, first + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free UDP port range found")


@contextlib.contextmanager
def port_range(ports: tuple[int, int] | None) -> Iterator[None]:
    previous = aiortc_compat.udp_port_range()
    aiortc_compat.install_udp_port_range(ports)
    try:
        yield
    finally:
        aiortc_compat.install_udp_port_range((previous.first, previous.last) if previous else None)
