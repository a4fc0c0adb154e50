"""proctor/threadcpu.py: CPU per group of threads, as a media node's /stats reports it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from proctor import threadcpu

pytestmark = pytest.mark.skipif(not threadcpu.TASKS.is_dir(), reason="reads /proc (Linux)")


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_busy_pool_shows_under_its_name_and_the_loop_thread_under_event_loop() -> None:
    loop_thread = threading.get_native_id()
    before = threadcpu.cpu_by_thread(loop_thread)
    done = threading.Event()
    spun = threading.Barrier(3)

    def crunch() -> None:
        _spin(0.3)
        spun.wait()
        done.wait()  # alive when read: a thread that ended is no longer in /proc

    workers = [threading.Thread(target=crunch, name=f"crunch_{i}") for i in range(2)]
    idle = threading.Thread(target=done.wait, name="idle_0")
    for thread in (*workers, idle):
        thread.start()
    try:
        _spin(0.2)
        spun.wait(timeout=30)
        during = threadcpu.cpu_by_thread(loop_thread)
    finally:
        done.set()
        for thread in (*workers, idle):
            thread.join()
    # Two threads of one pool are one group, named without their numbers (clock ticks: 10 ms each).
    assert during["crunch"] >= 0.55, during
    assert not any(name.startswith("crunch_") for name in during)
    assert during.get("idle", 0.0) < 0.05, during  # a thread that only waits costs nothing
    assert during["event-loop"] - before.get("event-loop", 0.0) >= 0.15, (before, during)


def test_names_lose_their_pool_numbers() -> None:
    assert threadcpu.group_name("analyze_12") == "analyze"
    assert threadcpu.group_name("mediapipe/3") == "mediapipe"
    assert threadcpu.group_name("vp8-decode") == "vp8-decode"
    assert threadcpu.group_name("1234") == "1234"


def test_a_thread_name_with_parentheses_and_spaces_is_read(tmp_path: Path) -> None:
    task = tmp_path / "42"
    task.mkdir()
    # comm may hold ") (": the fields are counted from the last ')'
    (task / "stat").write_bytes(b"42 (odd ) (name 7) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 0 0 0")
    read = threadcpu._stat(task)
    assert read is not None and read[0] == "odd ) (name 7" and read[1] == pytest.approx(300 / threadcpu._TICKS)
    assert threadcpu._stat(tmp_path / "gone") is None  # a thread that ended between listing and reading
