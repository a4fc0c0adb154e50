"""The composition root, with proctor/cli.py: the only modules that put the rooms together.

`proctor up`: the whole system as one process tree on a laptop. Starts embedded Postgres and Redis where no URL
is set, migrates, places bundled model weights, then runs `proctor serve`, `proctor media` and `proctor worker`
as child processes, restarting any that dies, until Ctrl-C or SIGTERM; then stops the children first and the
servers last, so nothing is cut off mid-write.

`proctor worker`: the archive's job consumers (archiver/), the session sweeper (lifecycle/) and the webhook
dispatcher and deliverers (webhooks/) in one process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from proctor import loop as event_loop
from proctor.embedded import EmbeddedPostgres, EmbeddedRedis
from proctor.settings import Settings, mask_url_password

log = logging.getLogger("proctor.up")

ROLES = (("web", ["serve"]), ("media", ["media"]), ("worker", ["worker"]))


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proctor", *self.argv], env=self.env)
        self.started_at = time.monotonic()

    def stop(self, timeout: float, signum: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait()


def _wait_healthy(url: str, timeout: float, children: list[Child]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.proc is not None and c.proc.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _ensure_admin(settings: Settings) -> str | None:
    """On a first start with no accounts, create `admin` with a random password kept in the data dir."""
    import asyncpg

    from proctor import accounts

    async def run() -> str | None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            if await conn.fetchval("SELECT count(*) FROM users"):
                return None
            password = secrets.token_urlsafe(12)
            from proctor.db import _init_connection

            await _init_connection(conn)
            await accounts.create_user(conn, "admin", "admin", password)
            return password
        finally:
            await conn.close()

    password = asyncio.run(run())
    if password:
        path = settings.data_dir / "admin_password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
    return password


def run_up(settings: Settings) -> int:
    from analyzers.models import install_bundled_weights
    from proctor import migrate

    stopping = False
    # SIGTERM (a service manager, docker) drains the media node; SIGINT (Ctrl-C) stops it at once.
    drain = True
    children: list[Child] = []

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping, drain
        if not stopping:
            log.info("stopping (signal %d)", signum)
            drain = signum == signal.SIGTERM
        else:
            # Asked again while the media node drains: stop it now (SIGINT stops a node at once; a Ctrl-C at the
            # terminal reaches the node itself, as every child shares the terminal's process group).
            for child in children:
                if child.name == "media" and child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGINT)
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(settings)
    if lock is None:
        print(f"proctor up: another `proctor up` is using {settings.data_dir} (PROCTOR_DATA_DIR)", file=sys.stderr)
        return 1
    env = dict(os.environ, PROCTOR_DATA_DIR=str(settings.data_dir), HTTP_PORT=str(settings.http_port),
               HTTP_HOST=settings.http_host)
    postgres = EmbeddedPostgres(settings.data_dir / "postgres") if not settings.database_url else None
    redis = EmbeddedRedis(settings.data_dir / "redis") if not settings.redis_url else None
    try:
        if postgres is not None:
            env["DATABASE_URL"] = postgres.start()
        if redis is not None:
            env["REDIS_URL"] = redis.start()
        settings = Settings.from_env(env)
        migrate.upgrade(settings.database_url)
        install_bundled_weights(settings)
        password = _ensure_admin(settings)
        children[:] = [Child(name, argv, env=env) for name, argv in ROLES]
        for child in children:
            child.start()
        healthy = _wait_healthy(settings.base_url, 60, children)
        _print_banner(settings, env, password, healthy)
        while not stopping:
            for child in children:
                _keep_alive(child)
            if not healthy:
                # A slow first start (models loading on a busy machine) or a child that was restarted: print the
                # banner again once /healthz says a candidate can be taken.
                healthy = _wait_healthy(settings.base_url, 1, children)
                if healthy:
                    _print_banner(settings, env, password, healthy)
            time.sleep(0.2)
        return 0
    finally:
        # Web stops last, so a draining media node's candidates can still move to another node (one that shares
        # this Redis); SIGTERM drains the node, which may take DRAIN_TIMEOUT_S + DRAIN_MOVE_TIMEOUT_S; after
        # SIGINT the node stops at once (its candidates reconnect to another node as after a crash).
        for child in reversed(children):
            if child.name == "media" and drain:
                child.stop(timeout=settings.media_stop_grace_s)
            else:
                child.stop(timeout=15, signum=signal.SIGINT if child.name == "media" else signal.SIGTERM)
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        log.info("stopped")


def _lock_data_dir(settings: Settings) -> int | None:
    """An exclusive lock on the data dir for this process's lifetime (released by the kernel on any exit)."""
    import fcntl

    fd = os.open(settings.data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _keep_alive(child: Child) -> None:
    """Restart a child that died; back off when it keeps dying right after start."""
    assert child.proc is not None
    code = child.proc.poll()
    if code is None:
        return
    if code == 0 and child.name == "media":  # drained (`proctor node drain`): start a fresh node at once
        log.info("media node drained and exited; starting a new one")
        child.restarts = 0
        child.start()
        return
    quick = time.monotonic() - child.started_at < 10
    child.restarts = child.restarts + 1 if quick else 1
    delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6)) if quick else 0.5
    log.error("%s exited with %s; restarting in %.1fs", child.name, code, delay)
    time.sleep(delay)
    child.start()


def _print_banner(settings: Settings, env: dict[str, str], password: str | None, healthy: bool) -> None:
    lines = [
        "",
        f"  Proctoring server {'running' if healthy else 'STARTED BUT NOT HEALTHY (see the log above)'}",
        f"  Web:          {settings.base_url}/",
        f"  Health:       {settings.base_url}/healthz",
        f"  Data:         {settings.data_dir}",
        # Embedded servers have no password, so these stay copyable; a configured password is not echoed.
        f"  DATABASE_URL={mask_url_password(env['DATABASE_URL'])}",
        f"  REDIS_URL={mask_url_password(env['REDIS_URL'])}",
    ]
    if password:
        lines.append(f"  First start: created user `admin`, password in {settings.data_dir / 'admin_password'}")
    lines += ["  Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


WORKER_ROLES = ("merge", "finalize", "sweep", "webhooks")


def parse_worker_roles(roles: str) -> list[str]:
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in WORKER_ROLES]
    if unknown or not wanted:
        raise SystemExit(f"proctor worker: unknown role(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(WORKER_ROLES)}")
    return wanted


async def _run_worker(settings: Settings, roles: list[str]) -> None:
    from archiver.jobs import JobQueue, consumer_name
    from archiver.worker import consume
    from lifecycle.sweep import run_sweeper
    from proctor import metrics
    from proctor.context import Context
    from proctor.redis import FINALIZE_STREAM, MERGE_STREAM
    from webhooks.worker import CONSUMERS, WEBHOOK_STREAM
    from webhooks.worker import run as run_webhooks

    # The webhook consumers hold a connection only around each attempt's bookkeeping, never during the request.
    ctx = await Context.open(settings, pool_size=4 + (CONSUMERS if "webhooks" in roles else 0))
    stop = asyncio.Event()
    sweeper = asyncio.create_task(run_sweeper(ctx)) if "sweep" in roles else None
    tasks = [asyncio.create_task(consume(ctx, kind, stop)) for kind in ("merge", "finalize") if kind in roles]
    if "webhooks" in roles:
        # Webhook jobs ride the archive's job queue (archiver.jobs): at-least-once, reclaimed from dead workers.
        tasks.append(asyncio.create_task(run_webhooks(
            ctx, stop, lambda stream: JobQueue(ctx.redis, stream, consumer=consumer_name()))))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # /metrics on WORKER_METRICS_PORT (proctor/metrics.py): every job queue, whichever roles this worker runs.
    queues = metrics.QueueCollector(ctx.redis, {"merge": MERGE_STREAM, "finalize": FINALIZE_STREAM,
                                                "webhooks": WEBHOOK_STREAM})
    metrics_server = await metrics.serve(settings, metrics.worker_registry(queues), refresh=[queues])
    log.info("worker running roles: %s", ", ".join(roles))
    try:
        await stop.wait()
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        # The sweeper holds no job and never returns by itself: cancelled at once (waiting for it with the consumers
        # made every stop take the full 30 s). A consumer interrupts the job in hand once stop is set and leaves it
        # pending for another worker (archiver/jobs.py); every handler is idempotent, so the job is redone, not lost.
        if sweeper is not None:
            sweeper.cancel()
            tasks.append(sweeper)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctx.close()


def run_worker(settings: Settings, roles: str) -> int:
    event_loop.run(_run_worker(settings, parse_worker_roles(roles)), settings.event_loop)
    return 0
