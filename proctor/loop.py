"""The event loop every server process runs on (EVENT_LOOP): uvloop by default, the standard library's otherwise.

Why uvloop: a media node's event loop carries every candidate's RTP (~170 datagrams a second each) and its
per-datagram machinery (the selector's poll, one readiness callback and recvfrom per datagram, call_soon handles,
task wake-ups) is Python in the standard library's loop; uvloop does it in C on libuv, which also reads every
queued datagram of a socket in one readiness callback. Measured with `python -m bench.rtp_path --loop both`
(bench/results/summary.md). Everything we run on the loop is plain asyncio API; the few standard-library internals
media_server/aiortc_compat.py patches (batched datagram reads) apply to the `asyncio` loop only and are not needed
on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOPS = ("uvloop", "asyncio")
T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A callable that makes a new event loop of `kind` (one of LOOPS)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown event loop {kind!r}: expected one of {', '.join(LOOPS)}")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    return loop_factory(kind)()


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """asyncio.run on a loop of `kind`: the same shutdown (cancels what is left, waits for async generators and
    the default executor's threads) on either loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """Which of LOOPS `loop` is (for logs, /healthz and tests)."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
