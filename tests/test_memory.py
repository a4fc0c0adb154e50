"""proctor/memory.py: the glibc malloc tuning a media node applies at start (keeps its RSS flat over a day)."""

from __future__ import annotations

import os
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


# Memory in use (native: malloc called directly, as a codec or a model runtime would), then freed but held by
# fragmentation, then Python objects kept alive: each shows in its own part.
_HEAP_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, json
    from proctor import memory
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    pointers = (ctypes.c_void_p * 100_000)()
    steps = {"start": memory.heap()}
    for i in range(len(pointers)):
        pointers[i] = libc.malloc(1000)  # ~100 MB in use, no Python object kept
    steps["allocated"] = memory.heap()
    for i in range(len(pointers)):
        if i % 1000:  # one in a thousand survives, pinning the freed ones between them
            libc.free(pointers[i])
    steps["freed"] = memory.heap()
    objects = [object() for _ in range(100_000)]  # small Python objects: pymalloc blocks
    steps["objects"] = memory.heap()
    print(json.dumps(steps))
""")


def test_heap_tells_memory_in_use_from_memory_held_free_and_from_python_objects() -> None:
    import json

    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], check=True, capture_output=True, text=True).stdout
    steps = json.loads(out)
    start, allocated, freed, objects = (steps[k] for k in ("start", "allocated", "freed", "objects"))
    assert allocated["in_use_mb"] - start["in_use_mb"] > 80
    assert allocated["python_blocks"] - start["python_blocks"] < 1_000
    assert allocated["in_use_mb"] - freed["in_use_mb"] > 80
    assert freed["free_mb"] - start["free_mb"] > 80  # freed but held: the survivors fragment the heap
    assert objects["python_blocks"] - freed["python_blocks"] >= 100_000
    assert set(start) == {"python_blocks", "in_use_mb", "free_mb", "mmapped_mb"}


# A frame-sized buffer freed, then pictures of ~900 KiB allocated and kept (as a stream's analysis does): glibc's
# sliding threshold has risen to 2 MB with the first free, so the pictures come from the arena; with the threshold
# fixed, each has its own mapping (returned to the kernel when it is freed, whatever lives around it).
_MMAP_PROBE = textwrap.dedent("""
    import sys
    from proctor import memory
    applied = memory.fix_mmap_threshold(256) if sys.argv[1] == "fixed" else None
    scratch = bytearray(2_000_000)
    del scratch
    pictures = [bytearray(900_000) for _ in range(4)]
    print(applied, memory.heap()["mmapped_mb"])
""")


@pytest.mark.parametrize("threshold", ["fixed", "sliding"])
def test_a_fixed_mmap_threshold_maps_frame_sized_buffers(threshold: str) -> None:
    out = subprocess.run([sys.executable, "-c", _MMAP_PROBE, threshold], check=True, capture_output=True,
                         text=True, env={**os.environ, "GLIBC_TUNABLES": ""}).stdout
    applied, mmapped_mb = out.split()
    if threshold == "fixed":
        assert applied == "True" and float(mmapped_mb) >= 3.4  # the four pictures: 4 x 0.86 MiB
    else:
        assert float(mmapped_mb) < 3.4  # glibc's default: at least one picture landed in the arena
