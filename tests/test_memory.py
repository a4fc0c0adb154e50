"""proctor/memory.py: the glibc malloc tuning a media node applies at start (keeps its RSS flat over a day)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from proctor import memory

pytestmark = pytest.mark.skipif(memory._libc() is None, reason="not glibc")

# Many small objects, allocated and freed in a thread (its own arena), with a few survivors pinning the heap top:
# freed memory stays in the process until malloc_trim hands it back.
_PROBE = textwrap.dedent("""
    import sys, threading, psutil
    from proctor import memory
    keep = []
    def churn():
        blocks = [bytearray(1000) for _ in range(200_000)]
        keep.append(bytearray(1000))  # above the freed blocks: the heap cannot shrink from the top
        del blocks
    thread = threading.Thread(target=churn); thread.start(); thread.join()
    before = psutil.Process().memory_info().rss
    released = memory.trim()
    after = psutil.Process().memory_info().rss
    print(before, after, released)
""")


def test_trim_hands_freed_heap_pages_back_to_the_kernel() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True).stdout
    before, after, released = out.split()
    assert released == "True"
    assert int(before) - int(after) > 100 * 2**20  # ~200 MB were freed but still resident


def test_the_arena_limit_applies_on_glibc() -> None:
    probe = "from proctor import memory; print(memory.limit_arenas(2))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "True"


def test_trimming_runs_on_its_own_thread_and_stops() -> None:
    stop = memory.start_trimming(every_s=0.01)
    assert stop is not None
    stop.set()
