"""Polling for a condition that another task, process or server makes true."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def wait_for(predicate: Any, within: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
