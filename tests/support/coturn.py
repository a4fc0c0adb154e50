"""A real coturn TURN server for tests (Debian package `coturn`), on a free loopback port, with the TURN REST API
shared secret (`--use-auth-secret`): only credentials derived by core/turn.py are accepted.

    with Coturn() as turn:
        settings = replace(settings, turn_urls=(turn.url,), turn_secret=turn.secret)

Loopback only: it listens and relays on 127.0.0.1 (`--allow-loopback-peers`: coturn refuses loopback peers by
default), no TLS/DTLS listeners, no telnet CLI, no config file (`-n`), its own SQLite user db and pid file in a
temporary folder. Relay ports come from a range of our own so two servers do not collide. `log()` reads its log
(allocations show as "... ALLOCATE processed, success", with the username).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.net import free_port

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
_STUN_BINDING_REQUEST = 0x0001
_STUN_MAGIC = 0x2112A442


def have_coturn() -> bool:
    return Path(TURNSERVER).exists()


class CoturnError(RuntimeError):
    """The server could not be started."""


class Coturn:
    def __init__(self, *, realm: str = "proctor.test", relay_ports: tuple[int, int] | None = None) -> None:
        self.port = free_port()
        self.secret = secrets.token_urlsafe(24)
        self.realm = realm
        # A relay range of its own, near the listening port (kept below 65535).
        first = relay_ports[0] if relay_ports else 20000 + (self.port % 20000)
        self.relay_ports = relay_ports or (first, first + 199)
        self.dir = Path(tempfile.mkdtemp(prefix="coturn-"))
        self.log_path = self.dir / "turn.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def command(self) -> list[str]:
        return [TURNSERVER, "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
                "--listening-port", str(self.port), "--min-port", str(self.relay_ports[0]),
                "--max-port", str(self.relay_ports[1]), "--use-auth-secret", "--static-auth-secret", self.secret,
                "--realm", self.realm, "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli",
                "--fingerprint", "--verbose", "--log-file", str(self.log_path), "--simple-log", "--no-stdout-log",
                "--pidfile", str(self.dir / "turn.pid"), "--userdb", str(self.dir / "turndb")]

    def start(self, timeout_s: float = 20.0) -> Coturn:
        with open(self.dir / "stderr.log", "wb") as err:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=err,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CoturnError(f"turnserver exited {self.process.returncode}: {self.log()[-2000:]}")
            if self._answers_stun():
                return self
        self.stop()
        raise CoturnError(f"turnserver did not answer a STUN binding request within {timeout_s} s")

    def _answers_stun(self) -> bool:
        transaction = secrets.token_bytes(12)
        request = struct.pack("!HHI", _STUN_BINDING_REQUEST, 0, _STUN_MAGIC) + transaction
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            try:
                sock.sendto(request, ("127.0.0.1", self.port))
                data = sock.recv(2048)
            except OSError:
                return False
        return data[8:20] == transaction

    def log(self) -> str:
        # --simple-log still may add a date suffix on some builds: read whatever turn*.log exists.
        parts = [p.read_text(errors="replace") for p in sorted(self.dir.glob("turn*.log"))]
        err = self.dir / "stderr.log"
        if err.exists():
            parts.append(err.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
