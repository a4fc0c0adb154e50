"""deploy/k8s/ without a cluster: every document against the Kubernetes schemas that the `kubernetes-validate`
package ships (strict: an unknown or misspelt field fails), plus what a schema cannot know and an operator would
find out only at 3 a.m.: every env var is a real setting, every secret key exists in the Secret template, the
images run the Dockerfile's entrypoint with real sub-commands, probes hit real routes, the media nodes' UDP range
is MEDIA_UDP_PORTS and their grace period outlasts a drain, and the resource requests follow the benchmark."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from proctor.settings import Settings

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still maintained upstream when these were written; HPA v2 and PDB v1 are GA there.
K8S_VERSION = "1.32.0"
SECRET_TEMPLATE = "secret.example.yaml"
ROLES = {"proctor-web": "serve", "proctor-media": "media", "proctor-worker": "worker", "proctor-migrate": "migrate"}


def _load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in _load(path.name)]


DOCS = _documents()


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == kind}


def _workloads() -> dict[str, dict[str, Any]]:
    return {name: doc for kind in ("Deployment", "DaemonSet", "Job") for name, doc in _by_kind(kind).items()}


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, w in _workloads().items() for c in _pod(w)["containers"]]


def _settings_env_names() -> set[str]:
    return {f.metadata["env"] for f in fields(Settings)}


def _config() -> dict[str, str]:
    return dict(_by_kind("ConfigMap")["proctor-settings"]["data"])


def _secret_keys() -> set[str]:
    (secret,) = [doc for doc in _load(SECRET_TEMPLATE) if doc["kind"] == "Secret"]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _env_of(container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment as a pod would see it: the ConfigMap, then `env` entries over it."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        assert source["configMapRef"]["name"] == "proctor-settings"
        env.update(_config())
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


@pytest.mark.parametrize("name,doc", DOCS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCS])
def test_every_document_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace") in ("proctor", None), "one namespace for everything"


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert set(resources) == on_disk
    assert SECRET_TEMPLATE not in resources, "a placeholder secret must never be applied"
    assert kustomization["namespace"] == "proctor"
    # The image name the manifests use is the one kustomize rewrites.
    assert {c["image"] for _, c in _containers()} == {image["name"] for image in kustomization["images"]}


def test_one_deployment_per_role_with_the_dockerfile_entrypoint() -> None:
    """The image's ENTRYPOINT is `proctor`: containers give only the sub-command (args), never a command that
    would replace it, and each is a real sub-command of the CLI."""
    from proctor.cli import build_parser

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["proctor"]' in dockerfile
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    workloads = _workloads()
    assert set(workloads) == set(ROLES)
    assert workloads["proctor-media"]["kind"] == "DaemonSet" and workloads["proctor-migrate"]["kind"] == "Job"
    for name, container in _containers():
        assert "command" not in container, name
        assert container["args"][0] == ROLES[name] and container["args"][0] in subcommands, container["args"]
        user = _pod(workloads[name])["securityContext"]["runAsUser"]
        assert user == 10001 and "--uid 10001" in dockerfile, "the Dockerfile's non-root user"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_env_var_is_a_real_setting() -> None:
    known = _settings_env_names()
    assert set(_config()) <= known, set(_config()) - known
    for name, container in _containers():
        unknown = {e["name"] for e in container.get("env", [])} - known
        assert not unknown, (name, unknown)
    assert _secret_keys() <= known, _secret_keys() - known


def test_every_secret_ref_names_a_key_of_the_secret_template() -> None:
    keys = _secret_keys()
    secret_settings = {f.metadata["env"] for f in fields(Settings) if f.metadata.get("secret")}
    for name, container in _containers():
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["name"] == "proctor-secrets" and ref["key"] in keys, (name, ref)
                assert ref["key"] == entry["name"], "a secret key is named after the setting it fills"
        # No secret ever sits in the ConfigMap or a plain value.
        plain = {k for k, v in _env_of(container).items() if isinstance(v, str)}
        assert not plain & (secret_settings | {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}), (name, plain)
    # Every role gets what it cannot start without.
    for name, container in _containers():
        env = _env_of(container)
        for needed in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
            assert needed in env, (name, needed)
        # Settings refuse TURN_URLS without TURN_SECRET, so everyone who reads TURN_URLS gets the secret.
        assert "TURN_SECRET" in env, name


def test_the_settings_parse_as_each_role_would_read_them() -> None:
    """ConfigMap plus the Secret's keys (valid stand-ins for the placeholders) through the real parser."""
    stand_ins = {"SECRET_KEY": "s" * 48, "DATABASE_URL": "postgresql://u:p@db:5432/proctor",
                 "REDIS_URL": "redis://:p@redis:6379/0", "TURN_SECRET": "t" * 32, "METRICS_TOKEN": "m" * 32}
    for name, container in _containers():
        env = {k: v for k, v in _env_of(container).items() if isinstance(v, str)}
        env.update({k: stand_ins.get(k, "x") for k in _secret_keys()})
        env["MEDIA_NODE_HOST"] = "10.0.0.5"  # the downward API's status.hostIP
        settings = Settings.from_env(env, env_file=None)
        assert settings.storage_backend == "s3" and settings.s3_bucket, name


async def test_probes_hit_real_routes(ctx: Any) -> None:
    from aiohttp import hdrs

    from media_server.node import MediaNode
    from web.app import create_app

    def get_paths(app: Any) -> set[str]:
        return {r.resource.canonical for r in app.router.routes() if r.method in (hdrs.METH_GET, "*")}

    web_paths = get_paths(create_app(ctx.settings))
    media_paths = get_paths(MediaNode(ctx, []).app())
    routes = {"proctor-web": web_paths, "proctor-media": media_paths}
    probed = 0
    for name, container in _containers():
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            action = probe.get("httpGet") or probe.get("tcpSocket")
            port = action["port"]
            assert port in ports or port in ports.values(), (name, kind, port)
            if "httpGet" in probe:
                assert probe["httpGet"]["path"] in routes[name], (name, kind, probe["httpGet"]["path"])
                probed += 1
    assert probed >= 3, "web readiness and the media node's readiness and liveness use /healthz"
    web = dict(_containers())["proctor-web"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "httpGet" not in web["livenessProbe"], "a 503 'starting' web pod must not be restarted for it"


def test_ports_match_the_settings() -> None:
    containers = dict(_containers())
    web, media, worker = containers["proctor-web"], containers["proctor-media"], containers["proctor-worker"]
    web_env, media_env, worker_env = _env_of(web), _env_of(media), _env_of(worker)
    assert web["ports"][0]["containerPort"] == int(web_env["HTTP_PORT"])
    assert web_env["HTTP_HOST"] == "0.0.0.0"
    internal = {p["name"]: p for p in media["ports"]}["internal"]
    assert internal["containerPort"] == internal["hostPort"] == int(media_env["MEDIA_NODE_PORT"])
    assert media_env["MEDIA_NODE_HOST"] == {"fieldRef": {"fieldPath": "status.hostIP"}}, "never 0.0.0.0"
    assert {p["name"]: p for p in worker["ports"]}["metrics"]["containerPort"] == int(worker_env["WORKER_METRICS_PORT"])
    assert worker_env["WORKER_METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes the pod address"
    # Prometheus scrape annotations point at the port each role serves /metrics on.
    for name, port in (("proctor-web", web_env["HTTP_PORT"]), ("proctor-media", media_env["MEDIA_NODE_PORT"]),
                       ("proctor-worker", worker_env["WORKER_METRICS_PORT"])):
        annotations = _workloads()[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    service = _by_kind("Service")["proctor-web"]
    assert service["spec"]["ports"][0]["targetPort"] in ("http", int(web_env["HTTP_PORT"]))


def test_media_nodes_use_the_fixed_udp_range_on_the_host_network() -> None:
    media = _workloads()["proctor-media"]
    pod = _pod(media)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = _env_of(pod["containers"][0])
    settings = Settings.from_env({"MEDIA_UDP_PORTS": env["MEDIA_UDP_PORTS"],
                                  "MEDIA_NODE_CAPACITY": env["MEDIA_NODE_CAPACITY"]}, env_file=None)
    assert settings.media_udp_ports is not None
    first, last = settings.media_udp_ports
    assert media["metadata"]["annotations"]["proctor.example.com/udp-ports"] == f"{first}-{last}"
    # One port per host address per candidate, one more with TURN: the range holds a full node twice over.
    assert last - first + 1 >= 2 * 2 * settings.media_node_capacity
    assert not any(first <= p["containerPort"] <= last for p in pod["containers"][0]["ports"]), \
        "the internal API must not sit inside the ICE range"
    assert f"{first}-{last}" in (ROOT / "docs" / "deploy.md").read_text(), "the port plan names the same range"


def test_media_grace_period_outlasts_the_drain_and_disruptions_take_one_node() -> None:
    media = _workloads()["proctor-media"]
    env = _env_of(_pod(media)["containers"][0])
    grace = _pod(media)["terminationGracePeriodSeconds"]
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)}, env_file=None)
    # The drain, the moves, then a clean stop (Settings.media_stop_grace_s, what `proctor up` waits too).
    assert grace >= settings.media_stop_grace_s > int(env["DRAIN_TIMEOUT_S"]) + int(env["DRAIN_MOVE_TIMEOUT_S"])
    assert int(env["DRAIN_TIMEOUT_S"]) >= 3 * 3600, "DRAIN_TIMEOUT_S is the longest exam: hours, not the default"
    assert media["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    (pdb,) = _by_kind("PodDisruptionBudget").values()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= media["spec"]["template"]["metadata"]["labels"].items()


def test_selectors_match_their_pods() -> None:
    for name, workload in _workloads().items():
        if workload["kind"] == "Job":
            assert _pod(workload)["restartPolicy"] in ("OnFailure", "Never")
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    web_labels = _workloads()["proctor-web"]["spec"]["template"]["metadata"]["labels"]
    assert _by_kind("Service")["proctor-web"]["spec"]["selector"].items() <= web_labels.items()


def test_autoscalers() -> None:
    hpas = _by_kind("HorizontalPodAutoscaler")
    deployments = _by_kind("Deployment")
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (web_metric,) = hpas["proctor-web"]["spec"]["metrics"]
    assert web_metric["resource"]["name"] == "cpu"
    assert "requests" in dict(_containers())["proctor-web"]["resources"], "CPU utilisation needs a request"
    (worker_metric,) = hpas["proctor-worker"]["spec"]["metrics"]
    assert worker_metric["type"] == "External"
    name = worker_metric["external"]["metric"]["name"]
    assert name == "proctor_job_queue_depth"
    assert f'"{name}"' in (ROOT / "proctor" / "metrics.py").read_text(), "the workers export the metric"


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_media_resources_follow_the_benchmark() -> None:
    """The CPU request covers MEDIA_NODE_CAPACITY streams at the per-stream cost bench/results/summary.md
    measured (and the AVX2 figure of issue 14, 16 % of a core, which docs/deploy.md gives)."""
    summary = (ROOT / "bench" / "results" / "summary.md").read_text()
    measured = re.search(r"([\d.]+) % of a core and [\d.]+ MB RSS per stream", summary)
    assert measured, "the benchmark's per-stream CPU figure moved: update this test and media.yaml"
    per_stream = float(measured.group(1)) / 100
    container = dict(_containers())["proctor-media"]
    capacity = int(_env_of(container)["MEDIA_NODE_CAPACITY"])
    cpu = _cpu(container["resources"]["requests"]["cpu"])
    assert cpu >= capacity * per_stream, (cpu, capacity, per_stream)
    assert cpu >= capacity * 0.16, "an AVX2-only machine needs ~16 % of a core per stream"
    assert "limits" not in container["resources"] or "cpu" not in container["resources"]["limits"], \
        "no CPU limit: throttling a media node stalls every stream on it"
