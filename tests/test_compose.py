"""The deployment files: docker-compose.yml renders with `docker-compose config` (no engine needed) and the
Dockerfile builds the one-image-per-role layout the compose file expects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"postgres", "redis", "s3", "migrate", "app", "media", "worker", "coturn", "prometheus"}
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TURN_SECRET, METRICS_TOKEN = "turn-secret-for-the-test", "metrics-token-for-the-test"


def _compose_env(**extra: str) -> dict[str, str]:
    # A clean environment: settings exported in the caller's shell (STORAGE_BACKEND, S3_*, ...) must not change
    # what is checked.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env.update({"SECRET_KEY": "k" * 40, "POSTGRES_PASSWORD": "test-password", "REDIS_PASSWORD": "redis-password",
                "TURN_SECRET": TURN_SECRET, "METRICS_TOKEN": METRICS_TOKEN})
    env.update(extra)
    return env


def _run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (v1) is not on PATH; it validates docker-compose.yml without a Docker engine")
    # An empty --env-file: a developer's .env next to the compose file must not change what is checked.
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.env"
        empty.write_text("")
        return subprocess.run(
            [exe, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    result = _run_config(_compose_env())
    assert result.returncode == 0, result.stderr
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def _ports(service: dict[str, Any]) -> list[str]:
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append(f"{port.get('published', '')}:{port.get('target', '')}")
        else:
            out.append(str(port))
    return out


def test_compose_has_every_role(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert SERVICES <= set(services), sorted(services)
    for role in ("migrate", "app", "media", "worker"):
        assert services[role]["command"][0] == {"app": "serve"}.get(role, role)
        assert services[role]["image"] == services["app"]["image"], "one image for every role"


def test_app_publishes_8080_and_waits_for_migrations(rendered: dict[str, Any]) -> None:
    app = rendered["services"]["app"]
    assert any(re.search(r"(^|:)8080:8080(/tcp)?$", port) for port in _ports(app)), _ports(app)
    assert app["environment"]["HTTP_HOST"] == "0.0.0.0"
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthz" in " ".join(app["healthcheck"]["test"])
    assert rendered["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_media_uses_host_network_and_scales(rendered: dict[str, Any]) -> None:
    media = rendered["services"]["media"]
    assert media["network_mode"] == "host"
    assert "ports" not in media, "network_mode: host cannot publish ports"
    env = media["environment"]
    assert str(env["MEDIA_NODE_PORT"]) == "0", "scaled replicas must pick free internal API ports"
    assert "@127.0.0.1:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://:redis-password@127.0.0.1:6379")
    assert env["S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"


@pytest.mark.parametrize("name", ["media", "worker"])
def test_scalable_services_have_no_fixed_names_or_host_ports(rendered: dict[str, Any], name: str) -> None:
    service = rendered["services"][name]
    assert "container_name" not in service
    assert not service.get("ports")


def test_backing_services_published_on_loopback_only(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    for name, port in (("postgres", "5432"), ("redis", "6379"), ("s3", "8333")):
        ports = services[name].get("ports", [])
        assert ports, f"{name} must be published for the host-networked media nodes"
        for entry in ports:
            host_ip = entry.get("host_ip") if isinstance(entry, dict) else str(entry).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} published beyond loopback: {entry}"
        assert any(port in str(entry) for entry in ports)
        assert "healthcheck" in services[name]


def test_redis_requires_a_password_every_role_uses(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    command = [str(part) for part in services["redis"]["command"]]
    assert command[command.index("--requirepass") + 1] == "redis-password"
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "redis-password", "the healthcheck must log in"
    for role in ("migrate", "app", "media", "worker"):
        assert services[role]["environment"]["REDIS_URL"].startswith("redis://:redis-password@"), role


def test_media_node_internal_api_is_not_published(rendered: dict[str, Any]) -> None:
    """Offers, close and stats are for signaling only: no published port, never a wildcard bind (the calls are
    signed too, media_server/node.py), and the node signs with the SECRET_KEY every role shares."""
    media = rendered["services"]["media"]
    assert not media.get("ports") and not media.get("expose")
    host = str(media["environment"]["MEDIA_NODE_HOST"])
    assert host not in ("0.0.0.0", "::", ""), host
    assert media["environment"]["SECRET_KEY"] == rendered["services"]["app"]["environment"]["SECRET_KEY"]
    assert "ICE_ALLOW_PRIVATE_CANDIDATES" not in media["environment"], "production keeps the default (off)"


def test_shared_environment_and_storage_defaults(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    for role in ("migrate", "app", "media", "worker"):
        env = services[role]["environment"]
        assert env["SECRET_KEY"] == "k" * 40
        assert env["STORAGE_BACKEND"] == "s3"
        assert env["S3_BUCKET"]
        assert env["DATABASE_URL"].startswith("postgresql://proctor:test-password@")
    assert services["worker"]["environment"]["S3_ENDPOINT_URL"] == "http://s3:8333"


def test_r2_endpoint_reaches_every_role() -> None:
    r2 = "https://acct.r2.cloudflarestorage.com"
    result = _run_config(_compose_env(S3_ENDPOINT_URL=r2, S3_REGION="auto"))
    assert result.returncode == 0, result.stderr
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(result.stdout)["services"]
    for role in ("migrate", "app", "media", "worker"):
        assert services[role]["environment"]["S3_ENDPOINT_URL"] == r2, role


@pytest.mark.parametrize("missing", ["SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "TURN_SECRET",
                                     "METRICS_TOKEN"])
def test_required_secrets_are_enforced(missing: str) -> None:
    env = _compose_env()
    env.pop(missing)
    result = _run_config(env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any(line.startswith("FROM python:3.11-slim-bookworm") for line in lines)
    assert 'ENTRYPOINT ["proctor"]' in lines
    assert "COPY requirements.lock" in text
    assert "pip install --no-deps -r requirements.lock" in text
    # Dependencies are installed before the source is copied, so source edits keep the dependency layer.
    assert text.index("pip install --no-deps -r requirements.lock") < text.index("COPY . .")
    users = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must run as a non-root user"
    for package in ("libgl1", "libglib2.0-0", "ffmpeg"):
        assert package in text


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env", ".data"} <= entries


# --- issue 15: what the internet reaches, TURN, Prometheus ----------------------------------------------------

def _host_ip(entry: Any) -> str:
    return str(entry.get("host_ip", "")) if isinstance(entry, dict) else str(entry).split(":")[0]


def test_nothing_but_the_app_is_published_and_only_on_loopback_by_default(rendered: dict[str, Any]) -> None:
    """Published ports: loopback only (the app too, behind a TLS proxy, until APP_BIND says otherwise). What the
    internet reaches directly is the host-networked media UDP range and coturn, and nothing else is on the host
    network."""
    services = rendered["services"]
    for name, service in services.items():
        for entry in service.get("ports", []):
            assert _host_ip(entry) == "127.0.0.1", f"{name} published beyond loopback: {entry}"
    assert {name for name, s in services.items() if s.get("network_mode") == "host"} == {"media", "coturn"}
    public = _run_config(_compose_env(APP_BIND="0.0.0.0"))
    assert public.returncode == 0, public.stderr
    yaml = pytest.importorskip("yaml")
    published = {name: [_host_ip(e) for e in s.get("ports", [])]
                 for name, s in yaml.safe_load(public.stdout)["services"].items()}
    assert {name for name, ips in published.items() if any(ip != "127.0.0.1" for ip in ips)} == {"app"}


def _drain_budget(env: dict[str, Any]) -> int:
    """The drain, the moves, then a clean stop: what whoever stops a node must wait (Settings.media_stop_grace_s)."""
    from proctor.settings import Settings

    return Settings.from_env({k: str(v) for k, v in env.items()}, env_file=None).media_stop_grace_s


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(h|m(?!s)|s)", duration))


def test_media_nodes_bind_the_fixed_udp_range_and_outlast_a_drain(rendered: dict[str, Any]) -> None:
    from proctor.settings import Settings

    media = rendered["services"]["media"]
    settings = Settings.from_env({k: str(v) for k, v in media["environment"].items()}, env_file=None)
    assert settings.media_udp_ports == (50000, 50999)
    first, last = settings.media_udp_ports
    assert last - first + 1 >= 2 * 2 * settings.media_node_capacity, "room for a full node, TURN included"
    assert _seconds(str(media["stop_grace_period"])) >= _drain_budget(media["environment"]), media["stop_grace_period"]
    assert "50000-50999" in (ROOT / "docs" / "deploy.md").read_text(), "the port plan names the range"


def test_coturn_hands_out_short_lived_credentials_and_guards_its_relay(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    coturn = services["coturn"]
    assert coturn["image"].startswith("coturn/coturn:")
    args = [str(a) for a in coturn["command"]]
    assert "--use-auth-secret" in args and f"--static-auth-secret={TURN_SECRET}" in args
    assert not any(a.startswith(("--user=", "--lt-cred-mech")) for a in args), "no static TURN password"
    denied = {a.split("=", 1)[1] for a in args if a.startswith("--denied-peer-ip=")}
    # The relay must not reach loopback, cloud metadata or Docker's networks (the internal API on docker0).
    assert {"127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "172.16.0.0-172.31.255.255"} <= denied
    relay = [int(a.split("=", 1)[1]) for a in args if a.startswith(("--min-port=", "--max-port="))]
    assert len(relay) == 2 and relay[0] <= relay[1]
    assert relay[1] < 50000 or relay[0] > 50999, "TURN relays and media ICE ports are separate ranges"
    for role in ("app", "media", "worker", "migrate"):
        assert services[role]["environment"]["TURN_SECRET"] == TURN_SECRET, role


def test_prometheus_scrapes_the_app_every_worker_and_every_media_node(rendered: dict[str, Any]) -> None:
    yaml = pytest.importorskip("yaml")
    from web.app import MEDIA_TARGETS_PATH

    services = rendered["services"]
    prometheus = services["prometheus"]
    mounts = [str(v) if not isinstance(v, dict) else f"{v['source']}:{v['target']}" for v in prometheus["volumes"]]
    assert any(m.startswith(f"{PROMETHEUS_FILE}:/etc/prometheus/prometheus.yml") for m in mounts), mounts
    assert prometheus["environment"]["METRICS_TOKEN"] == METRICS_TOKEN
    for role in ("app", "media", "worker"):
        assert services[role]["environment"]["METRICS_TOKEN"] == METRICS_TOKEN, role
    script = " ".join(str(part) for part in prometheus["entrypoint"])
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"proctor-web", "proctor-worker", "proctor-media"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        auths = [job["authorization"]] + [sd["authorization"] for sd in job.get("http_sd_configs", [])]
        for auth in auths:
            assert auth["type"] == "Bearer"
            # The file the entrypoint writes from METRICS_TOKEN, in the one place this container may write.
            assert f"> {auth['credentials_file']}" in script and "/etc/prometheus/prometheus.yml" in script
    app_port = services["app"]["environment"]["HTTP_PORT"]
    assert jobs["proctor-web"]["static_configs"][0]["targets"] == [f"app:{app_port}"]
    worker_env = services["worker"]["environment"]
    assert worker_env["WORKER_METRICS_HOST"] == "0.0.0.0" and not services["worker"].get("ports")
    (dns,) = jobs["proctor-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and str(dns["port"]) == str(worker_env["WORKER_METRICS_PORT"])
    (http_sd,) = jobs["proctor-media"]["http_sd_configs"]
    assert http_sd["url"] == f"http://app:{app_port}{MEDIA_TARGETS_PATH}"


def test_every_environment_variable_is_a_real_setting(rendered: dict[str, Any]) -> None:
    from dataclasses import fields

    from proctor.settings import Settings

    known = {f.metadata["env"] for f in fields(Settings)}
    for role in ("migrate", "app", "media", "worker"):
        unknown = set(rendered["services"][role]["environment"]) - known
        assert not unknown, (role, unknown)
