"""What a media node's CPU serves first when it has too little: the media, then the analysis.

On an overloaded node every thread competes for two cores. The event loop carries RTP (and the archive's copy of
it): when it waits for a core, UDP buffers overflow, packets are lost, the archive gets holes and connections drop
(measured at 12 streams on a 2-core AVX2 machine: the first streams lost their connections). The analysis threads
(decoding for the detectors, the detectors, audio decoding and VAD, the identity embedder's process) can give way:
a slot that falls behind drops frames and the node reports a lower analysis rate, which admission by load reads.
So those threads run at a lower scheduling priority (a higher nice value; on Linux each thread has its own).
Nothing changes while the machine has cores to spare.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# Nice value of analysis threads (0: no change). 10 gives a nice-0 thread ~10x their share of a contended core.
# Applied once `configure` is called with the ANALYSIS_NICE setting (`proctor media` does, proctor/cli.py): a
# program that embeds a node without it (the tests' in-process nodes) keeps every thread at its priority.
ANALYSIS_NICE = 10
_nice = 0


def configure(nice: int) -> None:
    """Set the niceness later calls of `lower_this_thread` apply (from the ANALYSIS_NICE setting)."""
    global _nice
    _nice = max(0, min(19, nice))


def lower_this_thread(nice: int | None = None) -> bool:
    """Lower the calling thread's priority (a thread pool's initializer, or a thread's first line). Only raises
    the nice value, never lowers it (that needs privileges). True when applied."""
    value = _nice if nice is None else nice
    if value <= 0 or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < value:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        return True
    except OSError as exc:  # a container may forbid it: run at normal priority
        log.debug("could not lower thread priority: %s", exc)
        return False
