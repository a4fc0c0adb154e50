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

SERVICES = {"postgres", "redis", "s3", "migrate", "app", "media", "worker"}


def _compose_env(**extra: str) -> dict[str, str]:
    # A clean environment: settings exported in the caller's shell (STORAGE_BACKEND, S3_*, ...) must not change
    # what is checked.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env.update({"SECRET_KEY": "k" * 40, "POSTGRES_PASSWORD": "test-password", "REDIS_PASSWORD": "redis-password"})
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


@pytest.mark.parametrize("missing", ["SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"])
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
