"""`proctor up` as a user runs it: starts everything, prints the URLs, serves /healthz, stops on Ctrl-C,
and a second start reuses the data."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PROCTOR_DATA_DIR=str(data_dir), MEDIA_NODE_PORT="0")
    return subprocess.Popen([sys.executable, "-m", "proctor", "up", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _staff(url: str, data_dir: Path) -> urllib.request.OpenerDirector:
    """A client logged in as `admin` with the password `proctor up` wrote (/healthz's detail is for staff)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{url}/login", timeout=5) as response:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', response.read().decode())
    assert csrf
    password = (data_dir / "admin_password").read_text().strip()
    form = urllib.parse.urlencode({"name": "admin", "password": password, "csrf_token": csrf.group(1)})
    with opener.open(f"{url}/login", data=form.encode(), timeout=5) as response:
        response.read()
    assert "proctor_session" in {cookie.name for cookie in jar}
    return opener


def _wait_healthy(url: str, proc: subprocess.Popen[str], data_dir: Path, timeout: float = 90) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    staff = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            staff = staff or _staff(url, data_dir)
            with staff.open(f"{url}/healthz", timeout=2) as response:
                body = json.load(response)
                if body["media_nodes"]:
                    return body
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("proctor up did not become healthy")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_up_starts_serves_stops_and_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(data_dir, port)
    try:
        body = _wait_healthy(url, proc, data_dir)
        assert body["status"] == "ok"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # web, media, worker (plus redis)
        # A second `proctor up` on the same data refuses instead of fighting over the servers.
        second = _start(data_dir, free_port())
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1 and "another `proctor up`" in out
    finally:
        out = _stop(proc)
    assert f"Web:          {url}/" in out
    assert "created user `admin`" in out
    password = (data_dir / "admin_password").read_text().strip()
    assert len(password) >= 12
    # Everything it started is gone: no server left holding the data dir.
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    # Second start: same data, the admin account is kept and not created again.
    proc = _start(data_dir, port)
    try:
        _wait_healthy(url, proc, data_dir)
    finally:
        out = _stop(proc)
    assert "created user `admin`" not in out
    assert (data_dir / "admin_password").read_text().strip() == password
