"""`proctor models fetch` (analyzers/fetch.py) against a real HTTP server on 127.0.0.1.

The real sources (Ultralytics' GitHub release assets) cannot be reached from here, so a local server plays them,
serving the tiny YOLO-shaped ONNX of tests/support/phone_model.py; everything else — streaming, digest check,
size and time limits, redirects, the onnxruntime check, install with sidecar, the CLI — runs for real. The
`.pt` path needs ultralytics (the optional `export` extra), which is not installed here: its refusal is tested.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from analyzers import fetch
from analyzers import models as models_mod
from analyzers.fetch import FetchError, Source
from analyzers.phone import PhoneDetector
from proctor.settings import Settings
from tests.support.phone_model import build_model

PHONE = 67
PLANTED = ((320, 320, 100, 200), {PHONE: 0.9})  # one phone in the middle of a 640x640 input
OTHER = ((100, 100, 40, 80), {PHONE: 0.8})
HAS_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None


@dataclass
class Served:
    base: str
    bodies: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.served.requests.append(self.path)
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, size limit): expected
            pass

    def _answer(self) -> None:
        if self.path == "/slow.onnx":
            time.sleep(2)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/m.onnx")  # refused before any connection
            self.end_headers()
            return
        body = self.served.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path != "/stream.onnx":  # no Content-Length: only the streamed count can stop it
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served")
    model = build_model(folder / "m.onnx", [PLANTED]).read_bytes()
    other = build_model(folder / "m2.onnx", [OTHER]).read_bytes()
    bodies = {
        "/m.onnx": model,
        "/m2.onnx": other,
        "/slow.onnx": model,
        "/big.onnx": os.urandom(64 * 1024),
        "/stream.onnx": os.urandom(64 * 1024),
        "/junk.onnx": os.urandom(4096),  # the right digest, but not a model
        "/m.pt": b"PK\x03\x04" + os.urandom(100),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    state = Served(f"http://127.0.0.1:{server.server_address[1]}", bodies)
    _Handler.served = state
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.defaults(data_dir=tmp_path / "data", phone_model_path="")


def _source(served: Served, path: str, sha256: str | None = None) -> Source:
    return Source(served.url(path), sha256 or _sha(served.bodies[path]), None)


def _leftovers(settings: Settings) -> list[str]:
    folder = fetch.installed_model(settings).parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _phones(detector: PhoneDetector) -> list[list[float]]:
    return detector.detect(np.full((640, 640, 3), 128, np.uint8))


# --- fetch and install -----------------------------------------------------------------------------------------

def test_fetch_installs_a_verified_model_with_its_sidecar(served: Served, settings: Settings) -> None:
    lines: list[str] = []
    installed = fetch.fetch_phone_model(settings, _source(served, "/m.onnx"), say=lines.append)

    target = settings.models_home / "phone" / "yolo.onnx"
    assert installed.path == target and target.read_bytes() == served.bodies["/m.onnx"]
    assert _leftovers(settings) == ["yolo.json", "yolo.onnx"]  # no .part, no work folder
    record = json.loads((settings.models_home / "phone" / "yolo.json").read_text())
    assert record["source_url"] == served.url("/m.onnx")
    assert record["download_sha256"] == record["onnx_sha256"] == _sha(served.bodies["/m.onnx"])
    assert record["exporter"] is None and record["layout"] == "input 1x3x640x640, output 1x84x8400"
    assert record["fetched_at"].endswith("+00:00") and fetch.provenance(settings) == record
    assert any("SHA-256 verified" in line for line in lines)

    # The real phone detector runs the installed file and sees the planted phone.
    explicit = PhoneDetector(Settings.defaults(phone_model_path=str(target)))
    assert [round(v) for v in _phones(explicit)[0]] == [270, 220, 370, 420, 1]


@pytest.mark.skipif(not hasattr(models_mod, "fetched_phone_model"),
                    reason="analyzers.models.fetched_phone_model (the phone detector's side) is not there yet")
def test_phone_detector_uses_the_fetched_model_when_phone_model_path_is_unset(
        served: Served, settings: Settings) -> None:
    fetch.fetch_phone_model(settings, _source(served, "/m.onnx"))
    assert models_mod.fetched_phone_model(settings) == fetch.installed_model(settings)
    detector = PhoneDetector(settings)  # PHONE_MODEL_PATH unset
    detector.load()
    found = _phones(detector)  # a bundled fallback would see no phone in a blank frame: this is our model
    assert found and found[0][4] == pytest.approx(0.9)


def test_wrong_digest_is_refused_and_leaves_nothing(served: Served, settings: Settings) -> None:
    wrong = "0" * 64
    with pytest.raises(FetchError) as err:
        fetch.fetch_phone_model(settings, _source(served, "/m.onnx", wrong))
    assert wrong in str(err.value) and _sha(served.bodies["/m.onnx"]) in str(err.value)
    assert "mismatch" in str(err.value)
    assert _leftovers(settings) == [] and fetch.provenance(settings) is None


def test_http_404_is_a_clear_error(served: Served, settings: Settings) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch.fetch_phone_model(settings, Source(served.url("/missing.onnx"), "a" * 64, None))
    assert _leftovers(settings) == []


@pytest.mark.parametrize("path", ["/big.onnx", "/stream.onnx"])  # declared length; only counted while streaming
def test_a_body_over_max_bytes_is_refused(served: Served, settings: Settings, path: str) -> None:
    with pytest.raises(FetchError, match="allowed"):
        fetch.fetch_phone_model(settings, _source(served, path), max_bytes=16 * 1024)
    assert _leftovers(settings) == []


def test_a_server_that_does_not_answer_times_out(served: Served, settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch.fetch_phone_model(settings, _source(served, "/slow.onnx"), timeout=0.5)
    assert time.monotonic() - started < 1.8
    assert _leftovers(settings) == []


def test_a_file_with_the_right_digest_that_is_not_a_yolo_onnx_is_refused(
        served: Served, settings: Settings) -> None:
    with pytest.raises(FetchError, match="not a usable ONNX model.*nothing was installed"):
        fetch.fetch_phone_model(settings, _source(served, "/junk.onnx"))
    assert _leftovers(settings) == []


def test_an_onnx_that_is_not_coco_yolo_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["output0"], axes=[1], keepdims=0)], "not-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 640, 640])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "x.onnx"))
    with pytest.raises(FetchError, match="not a COCO YOLO detector: output shape \\[1, 640, 640\\]"):
        fetch.check_yolo_onnx(tmp_path / "x.onnx")


def test_an_installed_model_is_replaced_only_with_force(served: Served, settings: Settings) -> None:
    fetch.fetch_phone_model(settings, _source(served, "/m.onnx"))
    served.requests.clear()
    with pytest.raises(FetchError, match="already exists .from .*/m.onnx.; --force replaces it"):
        fetch.fetch_phone_model(settings, _source(served, "/m2.onnx"))
    assert served.requests == []  # refused before downloading anything
    assert fetch.installed_model(settings).read_bytes() == served.bodies["/m.onnx"]

    # A failed replacement keeps the old model and its sidecar.
    with pytest.raises(FetchError):
        fetch.fetch_phone_model(settings, _source(served, "/junk.onnx"), force=True)
    assert fetch.installed_model(settings).read_bytes() == served.bodies["/m.onnx"]

    fetch.fetch_phone_model(settings, _source(served, "/m2.onnx"), force=True)
    assert fetch.installed_model(settings).read_bytes() == served.bodies["/m2.onnx"]
    assert (fetch.provenance(settings) or {}).get("source_url") == served.url("/m2.onnx")
    assert _leftovers(settings) == ["yolo.json", "yolo.onnx"]


def test_download_alone_renames_only_a_verified_file(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "d" / "m.onnx"
    assert fetch.download(served.url("/m.onnx"), dest, _sha(served.bodies["/m.onnx"])) == dest
    assert dest.read_bytes() == served.bodies["/m.onnx"] and sorted(os.listdir(dest.parent)) == ["m.onnx"]
    with pytest.raises(FetchError, match="mismatch"):
        fetch.download(served.url("/m2.onnx"), tmp_path / "d" / "m2.onnx", "f" * 64)
    assert sorted(os.listdir(dest.parent)) == ["m.onnx"]


# --- which URLs, which digests ---------------------------------------------------------------------------------

def test_urls_are_https_except_to_this_machine(served: Served, tmp_path: Path) -> None:
    for url in ("file:///etc/passwd", "ftp://example.invalid/m.onnx", "http://10.1.2.3/m.onnx", "m.onnx"):
        with pytest.raises(FetchError, match="only https"):
            fetch.check_url(url)
    fetch.check_url("http://10.1.2.3/m.onnx", allow_http=True)
    fetch.check_url("http://localhost:8000/m.onnx")
    fetch.check_url("https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt")
    # A redirect is followed only where check_url allows: never down to plain http elsewhere.
    with pytest.raises(FetchError, match="only https"):
        fetch.download(served.url("/redirect"), tmp_path / "r.onnx", "a" * 64)
    assert not (tmp_path / "r.onnx.part").exists()


def test_digest_policy() -> None:
    default = fetch.resolve_source(None, None, None)
    assert (default.name, default.kind) == ("yolo11n", "pt") and default.url.startswith("https://github.com/")
    assert default.sha256 == fetch.CATALOGUE["yolo11n"].sha256
    pinned = fetch.CATALOGUE["yolov8n"].sha256
    assert fetch.resolve_source("yolov8n", None, pinned.upper()).sha256 == pinned
    mirror = fetch.resolve_source("yolov8n", "https://mirror.example/yolov8n.pt", None)
    assert (mirror.url, mirror.sha256) == ("https://mirror.example/yolov8n.pt", pinned)  # the pin still holds
    with pytest.raises(FetchError, match="differs from the digest pinned for yolov8n"):
        fetch.resolve_source("yolov8n", None, "b" * 64)
    with pytest.raises(FetchError, match="--sha256 is required with --url"):
        fetch.resolve_source(None, "https://example.invalid/m.onnx", None)
    with pytest.raises(FetchError, match="64 hexadecimal"):
        fetch.resolve_source(None, "https://example.invalid/m.onnx", "abc")
    with pytest.raises(FetchError, match="unknown model 'yolo99'"):
        fetch.resolve_source("yolo99", None, None)
    for known in fetch.CATALOGUE.values():  # real pins: 64 hex digits, distinct
        assert fetch.normalise_sha256(known.sha256) == known.sha256
    assert len({known.sha256 for known in fetch.CATALOGUE.values()}) == len(fetch.CATALOGUE)


@pytest.mark.skipif(HAS_ULTRALYTICS, reason="ultralytics is installed: the .pt path would export for real")
def test_a_checkpoint_without_ultralytics_names_the_extra_before_downloading(
        served: Served, settings: Settings) -> None:
    served.requests.clear()
    with pytest.raises(FetchError, match=r"needs ultralytics.*pip install 'proctor\[export\]'"):
        fetch.fetch_phone_model(settings, _source(served, "/m.pt"))
    assert served.requests == [] and _leftovers(settings) == []


def test_a_checkpoint_is_exported_then_checked_then_installed(
        served: Served, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .pt path with a stand-in for ultralytics (not installed here): what reaches the exporter is the
    verified download, under its upstream name; what it writes is checked and installed with the exporter's
    name in the sidecar."""
    calls: list[tuple[str, dict[str, object]]] = []

    class FakeYOLO:
        def __init__(self, checkpoint: str) -> None:
            self.checkpoint = Path(checkpoint)

        def export(self, **kwargs: object) -> str:
            calls.append((self.checkpoint.name, kwargs))
            assert self.checkpoint.read_bytes() == served.bodies["/m.pt"]
            out = self.checkpoint.with_suffix(".onnx")
            out.write_bytes(served.bodies["/m.onnx"])
            return str(out)

    fake = type(sys)("ultralytics")
    fake.YOLO = FakeYOLO  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ultralytics", fake)
    monkeypatch.setattr(fetch, "ultralytics_version", lambda: "0.0-test")

    installed = fetch.fetch_phone_model(settings, _source(served, "/m.pt"))
    assert calls == [("m.pt", {"format": "onnx", "imgsz": 640, "opset": fetch.EXPORT_OPSET, "dynamic": False})]
    assert installed.path.read_bytes() == served.bodies["/m.onnx"]
    assert installed.record["download_sha256"] == _sha(served.bodies["/m.pt"])
    assert installed.record["onnx_sha256"] == _sha(served.bodies["/m.onnx"])
    assert installed.record["exporter"].startswith("ultralytics 0.0-test")
    assert _leftovers(settings) == ["yolo.json", "yolo.onnx"]


# --- the command line ------------------------------------------------------------------------------------------

def _proctor(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PHONE_MODEL_PATH", "DEEPFACE_HOME")}
    env["PROCTOR_DATA_DIR"] = str(data_dir)
    script = Path(sys.executable).with_name("proctor")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "proctor"]
    # cwd: the data dir, so no .env of the checkout leaks in.
    return subprocess.run([*argv, "models", *args], cwd=data_dir, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_fetch_then_status(served: Served, tmp_path: Path) -> None:
    url, digest = served.url("/m.onnx"), _sha(served.bodies["/m.onnx"])
    done = _proctor(tmp_path, "fetch", "--url", url, "--sha256", digest)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "models" / "phone" / "yolo.onnx"
    assert f"installed {target}" in done.stdout and "next start" in done.stdout
    assert target.read_bytes() == served.bodies["/m.onnx"]

    status = _proctor(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["fetched_phone_model"]["source_url"] == url
    assert set(report["detectors"]) == {"faces", "gaze", "identity", "phone"}
    text = _proctor(tmp_path, "status")
    assert f"fetched phone model: {target} from {url}" in text.stdout

    again = _proctor(tmp_path, "fetch", "--url", url, "--sha256", digest)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    wrong = _proctor(tmp_path, "fetch", "--url", served.url("/m2.onnx"), "--sha256", digest, "--force")
    assert wrong.returncode == 2 and "SHA-256 mismatch" in wrong.stderr
    assert target.read_bytes() == served.bodies["/m.onnx"]


@pytest.mark.skipif(HAS_ULTRALYTICS, reason="ultralytics is installed: `--name` would download from GitHub")
def test_cli_named_model_without_ultralytics_names_the_extra(tmp_path: Path) -> None:
    done = _proctor(tmp_path, "fetch", "--name", "yolo11n")
    assert done.returncode == 2
    assert "pip install 'proctor[export]'" in done.stderr and "yolo11n.pt" in done.stderr
    assert not (tmp_path / "models" / "phone" / "yolo.onnx").exists()
