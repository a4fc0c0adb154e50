"""proctor/priority.py: analysis threads give way to the event loop carrying RTP when cores run short."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from proctor import priority

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priorities here")


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_pool_initialised_with_it_runs_below_the_loop_and_the_caller_is_untouched() -> None:
    before = _own_nice()
    with ThreadPoolExecutor(max_workers=1, initializer=priority.lower_this_thread, initargs=(7,)) as pool:
        assert pool.submit(_own_nice).result() == max(7, before)
    assert _own_nice() == before


def test_configured_niceness_applies_and_zero_changes_nothing() -> None:
    priority.configure(12)
    try:
        with ThreadPoolExecutor(max_workers=1, initializer=priority.lower_this_thread) as pool:
            assert pool.submit(_own_nice).result() == max(12, _own_nice())
        priority.configure(0)
        with ThreadPoolExecutor(max_workers=1, initializer=priority.lower_this_thread) as pool:
            assert pool.submit(_own_nice).result() == _own_nice()
    finally:
        priority.configure(0)


def test_it_never_raises_priority() -> None:
    def nicer_then_lower() -> int:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
        priority.lower_this_thread(5)  # would need privileges to go back to 5: left at 15
        return _own_nice()

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(nicer_then_lower).result() == 15
