"""One HTTP/1.1 request with exactly the bytes given, over a plain socket.

aiohttp's client refuses what an attacker's client does not: non-ASCII bytes in header values and cookies, raw
paths. These helpers send such requests to the served app and read the answer (Connection: close).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased; the last value of a repeated header
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _dechunk(body: bytes) -> bytes:
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return bytes(out)


async def raw_request(base_url: str, method: str, path: str | bytes,
                      headers: Sequence[tuple[str | bytes, str | bytes]] = (), body: bytes = b"") -> RawResponse:
    """Send `method path` with these headers (bytes as given) and body to the server at `base_url`."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = [_b(method) + b" " + _b(path) + b" HTTP/1.1", b"Host: " + _b(url.netloc), b"Connection: close"]
        head += [_b(name) + b": " + _b(value) for name, value in headers]
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: " + str(len(body)).encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(60):
            data = await reader.read()
    finally:
        writer.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    status = int(lines[0].split()[1])
    parsed: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        parsed[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return RawResponse(status, parsed, payload)
