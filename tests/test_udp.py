"""Batched UDP reads: one readiness callback drains every queued datagram, in order, and errors still reach
the protocol the way the standard library delivers them."""

from __future__ import annotations

import asyncio
import asyncio.selector_events as selector_events
import inspect
import socket

from media_server import udp


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.callbacks = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


def test_standard_library_read_ready_is_what_we_replaced() -> None:
    # The replacement copies the standard body in a loop; a changed body means re-reading it.
    source = inspect.getsource(udp._original_read_ready)
    assert "self._sock.recvfrom(self.max_size)" in source and "self._protocol.datagram_received" in source


async def test_one_wake_drains_the_socket() -> None:
    udp.install_batched_reads()
    assert udp.installed()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Collect, local_addr=("127.0.0.1", 0))
    wakes = 0
    original = selector_events._SelectorDatagramTransport._read_ready

    def counting(self: object) -> None:
        nonlocal wakes
        wakes += 1
        original(self)

    selector_events._SelectorDatagramTransport._read_ready = counting  # type: ignore[method-assign]
    # The loop's reader callback was bound at creation: re-register so it calls the counting wrapper.
    sock = transport.get_extra_info("socket")
    loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]
    loop._add_reader(sock.fileno(), lambda: counting(transport))  # type: ignore[attr-defined]
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(udp.MAX_DATAGRAMS_PER_WAKE):
            sender.sendto(f"p{i}".encode(), sock.getsockname())
        sender.close()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(protocol.received) == udp.MAX_DATAGRAMS_PER_WAKE:
                break
    finally:
        selector_events._SelectorDatagramTransport._read_ready = original  # type: ignore[method-assign]
        transport.close()
    assert protocol.received == [f"p{i}".encode() for i in range(udp.MAX_DATAGRAMS_PER_WAKE)]
    assert wakes <= 3  # the stock transport needs one wake per datagram (16)
