"""The shape of the code: one import direction (import-linter contracts in pyproject.toml) and one owner for each
piece of shared state (proctor/store). Fast, no servers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "proctor", "signaling", "media_server", "analyzers", "archiver", "lifecycle", "lti", "webhooks",
            "web")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _sources(*exclude: str) -> list[Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    return [p for p in files if not any(p.relative_to(ROOT).as_posix().startswith(e) for e in exclude)]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("core/leak.py", "import proctor.settings", "The domain imports nothing of ours"),
    ("proctor/leak.py", "import signaling.api", "imports no room above it"),
    ("proctor/store/leak.py", "import web.app", "One direction"),
    ("media_server/leak.py", "import archiver.segmenter", "One direction"),
    ("signaling/leak.py", "import media_server.node", "never a media node's code"),
    ("archiver/leak.py", "import analyzers.live", "One direction"),
    ("analyzers/leak.py", "import media_server.stream", "only through its outlets"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts are not vacuous: one import against the direction, in a copy of the tree, fails them."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(f"{line}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in " ".join(broken.split()), result.stdout


# What writes each piece of shared state: the store's modules, and nothing else.
OWNED = {
    r"UPDATE\s+sessions\b|INSERT\s+INTO\s+sessions\b|DELETE\s+FROM\s+sessions\b": "proctor/store/sessions.py",
    r"INSERT\s+INTO\s+events\b|UPDATE\s+events\b|DELETE\s+FROM\s+events\b": "proctor/store/events.py",
    r"\.publish\(\s*LIVE_CHANNEL": "proctor/store/live.py",
    r"NODE_KEY\.format": "proctor/store/nodes.py",
    r"(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(cases|case_history)\b": "proctor/store/cases.py",
    r"(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+lti_\w+": "proctor/store/lti.py",
    r"(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+webhook_\w+": "proctor/store/webhooks.py",
}


@pytest.mark.parametrize("pattern", list(OWNED))
def test_one_owner_writes_each_piece_of_shared_state(pattern: str) -> None:
    writers = sorted({p.relative_to(ROOT).as_posix() for p in _sources()
                      if re.search(pattern, p.read_text(), re.IGNORECASE)})
    assert writers == [OWNED[pattern]]


def test_live_messages_are_built_from_the_typed_classes_only() -> None:
    """A live-monitor message is a core.live class; nobody writes {"type": "event", ...} by hand."""
    kinds = ("event", "session", "connection", "ack", "hub", "overflow")  # "hello" is also a page signal
    pattern = re.compile(r"""["']type["']\s*:\s*["'](""" + "|".join(kinds) + r""")["']""")
    builders = sorted({p.relative_to(ROOT).as_posix() for p in _sources("core/live.py")
                       if pattern.search(p.read_text())})
    assert builders == []


def test_no_function_level_import_of_our_own_packages_outside_the_composition_root() -> None:
    """An import inside a function is how a cycle gets dodged; only the CLI imports rooms late (for start-up time:
    `proctor user add` must not load mediapipe)."""
    late = re.compile(r"^[ \t]+(?:from|import)[ \t]+(" + "|".join(PACKAGES) + r")\b", re.MULTILINE)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}"
                 for p in _sources("proctor/cli.py", "proctor/supervisor.py")
                 for m in late.finditer(re.sub(r"if TYPE_CHECKING:.*?\n(?=\S)", "", p.read_text(), flags=re.DOTALL))]
    assert offenders == []
