"""Where a process's CPU goes, by thread: CPU seconds so far per group of threads, read from /proc.

A media node's CPU is spread over its event loop (RTP), a VP8 decoding thread, analysis pools, the archive thread
and native threads that libraries start (mediapipe's graph, onnxruntime's pools). Python threads are grouped by
their name without its number ("analyze_0" and "analyze_1" -> "analyze"), the thread that runs the event loop is
"event-loop", and native threads by the name the kernel knows them by (`comm`, which a library may set: otherwise
the process's own name, grouped as "native"). Two readings apart give each group's share of a core over the
interval (bench/ingest.py does this per step). Linux only: elsewhere the reading is empty.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

TASKS = Path("/proc/self/task")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_name(name: str) -> str:
    """A thread's name without the number its pool gave it: "analyze_1" -> "analyze", "mediapipe/3" -> "mediapipe"."""
    return name.rstrip("0123456789").rstrip("_-/") or name


def _python_names(loop_thread: int | None) -> dict[int, str]:
    """Native thread id -> group name of every live Python thread."""
    names = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        if thread.native_id == loop_thread:
            names[thread.native_id] = "event-loop"
        else:
            names[thread.native_id] = group_name(thread.name)
    return names


def _stat(task: Path) -> tuple[str, float] | None:
    """(comm, user + system CPU seconds) of one thread, None when it ended between listing and reading."""
    try:
        raw = (task / "stat").read_bytes()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces or ')': the fields after the last ')' are fixed.
    open_at, close_at = raw.index(b"("), raw.rindex(b")")
    fields = raw[close_at + 2:].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15
    return raw[open_at + 1:close_at].decode(errors="replace"), (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_by_thread(loop_thread: int | None = None) -> dict[str, float]:
    """CPU seconds so far of each group of this process's live threads (see the module doc); `loop_thread` is the
    native id of the thread running the event loop. Threads that ended are not counted: read it twice over an
    interval in which the pools do not shrink."""
    if not TASKS.is_dir():
        return {}
    python = _python_names(loop_thread)
    process_name = _stat(Path("/proc/self"))
    own = process_name[0] if process_name else ""
    out: dict[str, float] = {}
    for task in TASKS.iterdir():
        read = _stat(task)
        if read is None:
            continue
        comm, seconds = read
        tid = int(task.name)
        name = python.get(tid) or ("native" if comm == own else f"native:{group_name(comm)}")
        out[name] = out.get(name, 0.0) + seconds
    return {name: round(seconds, 2) for name, seconds in sorted(out.items())}
