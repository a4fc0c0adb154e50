"""Run a command while N busy processes compete with it for the CPUs: "a machine that had other work running".

    python3 tests/support/hog.py [--procs N] [--max-seconds S] -- COMMAND [ARG...]

`make test-under-load` runs `make test` this way (issue 19: a 2-core machine with other work on it failed tests
that passed on an idle one). N defaults to one per CPU, so the command gets about half of the machine.

The busy processes never outlive the run: they are stopped when the command ends, fails, or is interrupted
(Ctrl-C, SIGTERM, SIGHUP), and each one also stops by itself when its parent disappears (this runner killed
with SIGKILL) or after --max-seconds, whichever comes first. Standard library only: it needs no virtualenv.
Exits with the command's status (128 + signal number when a signal stopped the run).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

# Each busy process: spin, and every ~100k iterations make sure it is still wanted (its parent alive, the
# deadline not passed). Runs as `python -c`, so it imports nothing of ours.
_SPIN = """
import os, sys, time
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
n = 0
try:
    while True:
        n += 1
        if n % 100_000 == 0 and (os.getppid() != parent or time.monotonic() > deadline):
            break
except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: stop quietly
    pass
"""


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def start_hogs(procs: int, max_seconds: float) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid()), str(max_seconds)],
                             stdin=subprocess.DEVNULL) for _ in range(procs)]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        if hog.poll() is None:
            hog.kill()
    for hog in hogs:
        hog.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command while busy processes compete with it for the CPUs.",
                                     usage="%(prog)s [--procs N] [--max-seconds S] -- COMMAND [ARG...]")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="busy processes (default: one per CPU)")
    parser.add_argument("--max-seconds", type=float, default=3 * 3600,
                        help="the busy processes stop by themselves after this long (default: 3 hours)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if args.procs < 0 or args.max_seconds <= 0:
        parser.error("--procs must be >= 0 and --max-seconds > 0")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    hogs: list[subprocess.Popen[bytes]] = []
    child: subprocess.Popen[bytes] | None = None
    try:
        hogs = start_hogs(args.procs, args.max_seconds)
        print(f"hog: {len(hogs)} busy process(es) (pids {' '.join(str(h.pid) for h in hogs)}) "
              f"on {os.cpu_count()} CPUs while running: {' '.join(command)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        child = subprocess.Popen(command)
        status = child.wait()
        print(f"hog: command exited with {status} after {time.monotonic() - started:.0f} s; stopping the busy "
              "processes", file=sys.stderr, flush=True)
        return status if status >= 0 else 128 - status
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the command too (same process group): let it clean up (pytest tears its
        # fixtures down) before anything harsher; a SIGINT sent to this process alone is passed on after a while.
        stop_hogs(hogs)
        return _stop_child(child, signal.SIGINT, forward_after_s=10)
    except _Stopped as stopped:
        stop_hogs(hogs)
        return _stop_child(child, stopped.signum, forward_after_s=0)
    finally:
        stop_hogs(hogs)


def _stop_child(child: subprocess.Popen[bytes] | None, signum: int, forward_after_s: float) -> int:
    """Stop the command (signal `signum` passed on after forward_after_s, SIGKILL 30 s later); 128 + signum."""
    if child is None:
        return 128 + signum
    for sig, wait_s in ((None, forward_after_s), (signum, 30.0)):
        try:
            if sig is not None and child.poll() is None:
                child.send_signal(sig)
            child.wait(wait_s)
            return 128 + signum
        except subprocess.TimeoutExpired:
            continue
        except (KeyboardInterrupt, _Stopped):  # asked again: no more waiting
            break
    child.kill()
    child.wait()
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
