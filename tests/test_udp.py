"""Batched UDP reads on the standard library's loop (EVENT_LOOP=asyncio): one readiness callback drains every queued
datagram, in order, and errors still reach the protocol the way the standard library delivers them.

The patch is to asyncio's selector transport, so these tests run on a selector loop of their own whatever loop the
suite runs on (uvloop reads every queued datagram per wake by itself: tests/test_aiortc_internals.py checks the
drain on the suite's loop)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from media_server import udp


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.callbacks = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


class _Errors(_Collect):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


def _on_selector_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(test())


def test_socket_errors_reach_the_protocol_and_reading_goes_on() -> None:
    _on_selector_loop(_socket_errors_reach_the_protocol_and_reading_goes_on)


def test_one_wake_drains_the_socket() -> None:
    _on_selector_loop(_one_wake_drains_the_socket)


async def _socket_errors_reach_the_protocol_and_reading_goes_on() -> None:
    """The standard library's contract, kept by the batched body: an error from recvfrom (here the ICMP port
    unreachable a connected socket reports) goes to error_received, and the next datagram is still read."""
    udp.install_batched_reads()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        closed_address = closed.getsockname()
    transport, protocol = await loop.create_datagram_endpoint(_Errors, local_addr=("127.0.0.1", 0),
                                                              remote_addr=closed_address)
    try:
        transport.sendto(b"nobody listens")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if protocol.errors:
                break
        assert [type(e) for e in protocol.errors] == [ConnectionRefusedError]
        # A connected socket only accepts datagrams from its peer: send from the (now reopened) peer address.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(closed_address)
            peer.sendto(b"after the error", transport.get_extra_info("sockname"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if protocol.received:
                break
        assert protocol.received == [b"after the error"]
    finally:
        transport.close()


async def _one_wake_drains_the_socket() -> None:
    udp.install_batched_reads()
    assert udp.installed()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Collect, local_addr=("127.0.0.1", 0))
    wakes = 0
    read_ready = transport._read_ready  # type: ignore[attr-defined]  # bound at creation: the batched body

    def counting() -> None:
        nonlocal wakes
        wakes += 1
        read_ready()

    # Re-register the loop's reader callback so each readiness wake is counted.
    sock = transport.get_extra_info("socket")
    loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]
    loop._add_reader(sock.fileno(), counting)  # type: ignore[attr-defined]
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
        transport.close()
    assert protocol.received == [f"p{i}".encode() for i in range(udp.MAX_DATAGRAMS_PER_WAKE)]
    assert wakes <= 3  # the stock transport needs one wake per datagram (16)
