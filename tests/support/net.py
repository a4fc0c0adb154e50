"""Free loopback ports for servers the tests and benchmarks start."""

from __future__ import annotations

import re
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets held open together, so no port is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, database `db` (a rig's own node registry): TCP URLs end in /N, unix ones take ?db=N."""
    if url.startswith("unix://"):
        return f"{url}{'&' if '?' in url else '?'}db={db}"
    return re.sub(r"(/\d+)?$", f"/{db}", url, count=1)
