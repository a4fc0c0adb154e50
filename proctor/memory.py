"""Keep a long-running media node's resident memory flat: glibc malloc tuning, applied once at start.

A media node runs a dozen threads (decoding, analysis, archive, audio) that allocate and free frame-sized buffers
all day. glibc gives each thread that contends for the heap its own arena (up to 8 per core) and returns freed
memory at the top of a heap only, so a node's RSS creeps up in steps as arenas fragment, without any object being
kept (bench/results/soak.md: a 35 MB step after 7 minutes at 12 streams, flat before and after). Two remedies:
fewer arenas (`M_ARENA_MAX`) and, now and then, `malloc_trim(0)`, which hands every arena's free pages back to
the kernel. Neither changes what the program computes; on a C library other than glibc both are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import threading

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
DEFAULT_ARENAS = 2
DEFAULT_MMAP_THRESHOLD_KB = 256
TRIM_EVERY_S = 30.0


@functools.cache  # find_library runs ldconfig (~1 ms): once per process, not on every trim or /stats
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl and others have no mallopt/malloc_trim: nothing to tune there.
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before the process starts its threads. True when applied."""
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(kib: int = DEFAULT_MMAP_THRESHOLD_KB) -> bool:
    """Serve every allocation of `kib` KiB or more with a mapping of its own, unmapped when it is freed. True when
    applied. Call before the process starts its threads.

    glibc's threshold starts at 128 KiB but rises to the size of any mapped chunk freed (up to 32 MiB), so soon after
    start a node's frame-sized buffers (a 640x480 RGB picture ~900 KiB, a decoded plane ~300, a model's input
    200-1200) come from the arenas, interleaved with small long-lived allocations that keep their pages from being
    returned: the arenas' free memory, and the RSS, creep up over hours (bench/results/summary.md, 2026-12-04
    evening). A fixed threshold also stops that adjustment; smaller allocations keep the arenas' speed."""
    return _mallopt(M_MMAP_THRESHOLD, kib * 1024)


def _mallopt(parameter: int, value: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)))


class _Mallinfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h, glibc >= 2.33): every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap() -> dict[str, float | int]:
    """What the process's memory is made of, to tell a leak from fragmentation when its RSS grows: malloc's bytes in
    use (`in_use_mb`: allocated and not freed, arenas and mmapped chunks), free but still held in the arenas
    (`free_mb`: what fragmentation keeps, malloc_trim returns the whole pages of it), mmapped chunks alone, and
    Python's own live small objects (`python_blocks`, pymalloc blocks: Python objects kept alive). In use growing
    with Python's blocks flat points at native code (a codec, a model runtime); free growing, at fragmentation.
    Walks every arena under its lock (microseconds to a millisecond): call it off the event loop, now and then."""
    stats: dict[str, float | int] = {"python_blocks": sys.getallocatedblocks()}
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    if mallinfo2 is None:
        return stats
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    mb = 2.0**20
    stats.update({"in_use_mb": round((info.uordblks + info.hblkhd) / mb, 1), "free_mb": round(info.fordblks / mb, 1),
                  "mmapped_mb": round(info.hblkhd / mb, 1)})
    return stats


def trim() -> bool:
    """Return free heap pages to the kernel now; True when some were released."""
    libc = _libc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False


def start_trimming(every_s: float = TRIM_EVERY_S) -> threading.Event | None:
    """Trim every `every_s` seconds on a daemon thread (a trim walks the heaps: never on the event loop).
    Returns the event that stops it, or None without glibc."""
    if _libc() is None:
        return None
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            try:
                trim()
            except Exception:  # never let housekeeping take the node down
                log.exception("malloc_trim failed")

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return stop
