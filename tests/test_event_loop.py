"""EVENT_LOOP: the server processes' event loop (proctor/loop.py), uvloop by default, the standard library's on
request; the suite runs on the configured one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proctor import loop as event_loop
from proctor.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def _which() -> str:
    await asyncio.sleep(0)
    return event_loop.loop_name(asyncio.get_running_loop())


@pytest.mark.parametrize("kind", event_loop.LOOPS)
def test_run_gives_a_loop_of_the_kind_asked_for(kind: str) -> None:
    assert event_loop.run(_which(), kind) == kind


def test_run_waits_for_the_default_executors_threads() -> None:
    """Like asyncio.run: work handed to a thread is finished before run returns (the node's shutdown relies on
    it to finish spooling), on uvloop too."""
    done: list[int] = []

    def slow() -> None:
        import time

        time.sleep(0.2)
        done.append(1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, slow)  # not awaited on purpose
        await asyncio.sleep(0)

    event_loop.run(main(), "uvloop")
    assert done == [1]


def test_an_unknown_loop_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="uvloop, asyncio"):
        event_loop.loop_factory("trio")
    with pytest.raises(ValueError, match="EVENT_LOOP"):
        Settings.from_env({"EVENT_LOOP": "trio"}, env_file=None)


def test_cli_refuses_an_unknown_loop_with_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "proctor", "migrate"], capture_output=True, text=True,
                            env={"EVENT_LOOP": "gevent", "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "EVENT_LOOP" in result.stderr


async def test_the_suite_runs_on_the_configured_loop() -> None:
    """tests/conftest.py's pytest_asyncio_loop_factories: the in-process nodes and web apps of the suite run on
    the loop the server processes run on."""
    expected = os.environ.get("EVENT_LOOP", "").strip() or Settings.from_env().event_loop
    assert await _which() == expected

