"""Where a media node's CPU goes: `perf` samples of the running process (on-CPU time only), summarised by
shared object (libvpx, libpython, mediapipe, ...) and by symbol.

Used by `bench.ingest --profile S`: at the last step, the first node is sampled for S seconds.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def record(pid: int, seconds: float, out: Path) -> Path:
    if not shutil.which("perf"):
        raise RuntimeError("perf is not installed (apt-get install linux-perf)")
    subprocess.run(["perf", "record", "-F", "499", "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds)],
                   check=True, capture_output=True)
    return out


def _report(data: Path, sort: str, top: int) -> list[tuple[float, str]]:
    text = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                           "--percent-limit", "0.3"], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), " ".join(parts[1].split())))
    return rows[:top]


def summarise(data: Path, top: int = 30) -> str:
    lines = ["| shared object | CPU share % |", "| --- | --- |"]
    lines += [f"| `{name}` | {share:.1f} |" for share, name in _report(data, "dso", top)]
    lines += ["", "| shared object, symbol | CPU share % |", "| --- | --- |"]
    lines += [f"| `{name[:120]}` | {share:.1f} |" for share, name in _report(data, "dso,sym", top)]
    return "\n".join(lines)
