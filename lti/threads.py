"""The threads pylti1p3 runs on. It is synchronous: it fetches the platform's JWKS with `requests` and verifies RSA
signatures, so each launch check (and each JWT we sign) runs here, never on the event loop. Bounded: a burst of
launches queues for these few threads instead of starting one thread each."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
THREADS = 4

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="lti")
        return _executor


async def off_loop(fn: Callable[[], T]) -> T:
    """fn() on the LTI threads."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn)
