"""`proctor models fetch`: download a stronger phone detector, verify it, install it as models_home/phone/yolo.onnx.

Run on a machine with a network; the media nodes then find the file on their next start (PHONE_MODEL_PATH,
when set, still wins). What gets installed is always an ONNX with YOLO's COCO layout (input 1x3xSxS, output
1x(4+80)xN), checked with onnxruntime and with the phone detector's own decoder before it replaces anything.

Digests — the design decision. Every download is checked against a SHA-256 the operator did not get from the
same response, so a compromised mirror, a hijacked redirect or a truncated file never becomes a model:

* `--name yolo11n` / `--name yolov8n` (the catalogue below) carries the upstream URL *and a pinned digest*. The
  pins are the SHA-256 GitHub publishes for those Ultralytics release assets, recorded identically by many
  independent projects that verify these files; they are not computed from a download made here (this machine
  cannot reach GitHub), so a wrong pin fails safe: the file is refused, nothing is installed. `--sha256` may
  repeat the pin, never override it; `--url` with a `--name` fetches the same file from a mirror.
* `--url` alone must come with `--sha256` (copied from the page the URL came from). There is no "trust on
  first use" path: a digest taken from the bytes just downloaded verifies nothing about them.

The upstream weights are PyTorch checkpoints; turning one into ONNX needs ultralytics, the optional `export` extra
(`pip install 'proctor[export]'`). A `.pt` is a pickle that runs code when loaded, which is one more reason the
digest is checked before ultralytics ever opens it. An `.onnx` URL is installed as it is, without ultralytics.
Ultralytics' weights are AGPL-3.0: the operator fetches them from upstream; this repository ships none.

Beside the model goes `phone/yolo.json`: where it came from, both digests, when, and what exported it, so
`proctor models status` can say which model the phone detector runs (/healthz can too, via provenance()).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from analyzers.models import FETCHED_PHONE_MODEL, fetched_phone_model
from analyzers.phone import decode
from proctor.settings import Settings

COCO_CLASSES = 80
YOLO_ROWS = 4 + COCO_CLASSES  # cx, cy, w, h, then one score per COCO class: class 67 must mean "cell phone"
EXPORT_IMGSZ = 640
EXPORT_OPSET = 12  # old enough for any onnxruntime; YOLOv8 and YOLO11 export cleanly at it
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # yolo11n.pt is 5.6 MB, the largest YOLO11 about 110 MB
CHUNK = 1 << 16
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # plain http is allowed to these only (tests, a local mirror)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


class FetchError(Exception):
    """A download or install that was refused; the message says why and what to do."""


@dataclass(frozen=True)
class KnownModel:
    name: str
    url: str
    sha256: str
    note: str


CATALOGUE: dict[str, KnownModel] = {
    known.name: known
    for known in (
        KnownModel("yolo11n", "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt",
                   "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
                   "YOLO11 nano, COCO (Ultralytics, AGPL-3.0), 5.6 MB"),
        KnownModel("yolov8n", "https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8n.pt",
                   "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36",
                   "YOLOv8 nano, COCO (Ultralytics, AGPL-3.0), 6.5 MB"),
    )
}
DEFAULT_MODEL = "yolo11n"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str
    name: str | None  # the catalogue entry, when the digest is a pin

    @property
    def kind(self) -> str:
        """"pt" (a PyTorch checkpoint to export) or "onnx", from the URL's file name."""
        return "pt" if urlsplit(self.url).path.lower().endswith((".pt", ".pth")) else "onnx"

    @property
    def filename(self) -> str:
        # ultralytics names its export after the checkpoint: keep a plain, recognisable name.
        base = Path(urlsplit(self.url).path).name
        return base if re.fullmatch(r"[A-Za-z0-9._-]{1,100}", base) else f"download.{self.kind}"


@dataclass(frozen=True)
class Installed:
    path: Path
    sidecar: Path
    record: dict[str, Any]


# --- where the model goes ------------------------------------------------------------------------------------

def installed_model(settings: Settings) -> Path:
    return fetched_phone_model(settings)


def sidecar_path(settings: Settings) -> Path:
    return installed_model(settings).with_suffix(".json")


def provenance_of(model: Path) -> dict[str, Any] | None:
    """The sidecar beside a fetched model (source URL, digests, date, exporter), or None."""
    try:
        record = json.loads(model.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def provenance(settings: Settings) -> dict[str, Any] | None:
    return provenance_of(installed_model(settings))


# --- which file, which digest --------------------------------------------------------------------------------

def normalise_sha256(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise FetchError(f"--sha256 must be 64 hexadecimal digits, got {value!r}")
    return digest


def resolve_source(name: str | None, url: str | None, sha256: str | None) -> Source:
    """The digest policy of the module docstring: a catalogue name brings its pin; a bare URL needs --sha256."""
    if name is not None and name not in CATALOGUE:
        raise FetchError(f"unknown model {name!r}: known are {', '.join(sorted(CATALOGUE))} "
                         "(or give --url and --sha256)")
    known = CATALOGUE[name] if name else (CATALOGUE[DEFAULT_MODEL] if url is None else None)
    digest = normalise_sha256(sha256) if sha256 is not None else None
    if known is None:
        if digest is None:
            raise FetchError("--sha256 is required with --url: copy the file's SHA-256 from the page that gives the "
                             "URL (a digest computed from the download itself would verify nothing)")
        return Source(url or "", digest, None)
    if digest is not None and digest != known.sha256:
        raise FetchError(f"--sha256 {digest} differs from the digest pinned for {known.name} ({known.sha256}); "
                         "leave --sha256 out, or fetch another file with --url and its own --sha256")
    return Source(url or known.url, known.sha256, known.name)


def check_url(url: str, allow_http: bool = False) -> None:
    """https only; plain http to this machine (tests, a local mirror) or with --allow-http; nothing else
    (urllib would also read file:// and ftp://)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and (allow_http or parts.hostname in LOCAL_HOSTS):
        return
    raise FetchError(f"refusing {url!r}: only https URLs (plain http only to 127.0.0.1/localhost, "
                     "or with --allow-http)")


# --- download --------------------------------------------------------------------------------------------------

class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub's release assets redirect to a CDN), but never to a URL check_url refuses:
    an https download must not be downgraded to plain http on the way."""

    def __init__(self, allow_http: bool) -> None:
        super().__init__()
        self.allow_http = allow_http

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        check_url(newurl, self.allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _copy_limited(response: IO[bytes], out: IO[bytes], url: str, max_bytes: int, deadline: float) -> str:
    """Stream response into out; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    total = 0
    while chunk := response.read(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"{url} is larger than the {max_bytes} bytes allowed (--max-mb)")
        if time.monotonic() > deadline:
            raise FetchError(f"{url}: download took longer than the timeout")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = DEFAULT_TIMEOUT_S,
             max_bytes: int = DEFAULT_MAX_BYTES, allow_http: bool = False) -> Path:
    """Stream url into dest.part, check its SHA-256, then rename it to dest. On any failure (refused URL, HTTP
    error, timeout, more than max_bytes, wrong digest) nothing is left behind and FetchError says why.
    `timeout` bounds the whole download as well as each wait for the server."""
    check_url(url, allow_http)
    expected = normalise_sha256(sha256)
    opener = urllib.request.build_opener(_CheckedRedirects(allow_http))
    request = urllib.request.Request(url, headers={"User-Agent": "proctor-models-fetch"})
    part = dest.with_name(dest.name + ".part")
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{url} is {int(length)} bytes, more than the {max_bytes} allowed (--max-mb)")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as out:
                actual = _copy_limited(response, out, url, max_bytes, deadline)
        if actual != expected:
            raise FetchError(f"{url}: SHA-256 mismatch: expected {expected}, got {actual}; the file was deleted")
        part.replace(dest)
        return dest
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, TimeoutError) else str(exc.reason)
        raise FetchError(f"{url}: {reason}") from None
    except TimeoutError:
        raise FetchError(f"{url}: timed out after {timeout:g} s") from None
    except OSError as exc:  # a connection reset mid-body, a full disk
        raise FetchError(f"{url}: {exc}") from None
    finally:
        part.unlink(missing_ok=True)


# --- check and export ------------------------------------------------------------------------------------------

def check_yolo_onnx(path: Path) -> str:
    """Refuse anything the phone detector could not use: onnxruntime must load it, one image input, and a run
    on a blank image must give YOLO's 1x(4+80)xN that the detector's decoder accepts. Returns the layout."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a corrupt or non-ONNX file
        raise FetchError(f"not a usable ONNX model: {str(exc)[:300]}") from None
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    channels = shape[1] if len(shape) == 4 else None  # an int, or a name for a dynamic axis
    if len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        raise FetchError(f"not a YOLO detector: expected one 1x3xSxS image input, got "
                         f"{[i.shape for i in inputs]}")
    size = shape[-1] if isinstance(shape[-1], int) else EXPORT_IMGSZ
    try:
        output = np.asarray(session.run(None, {inputs[0].name: np.zeros((1, 3, size, size), np.float32)})[0])
    except Exception as exc:
        raise FetchError(f"the model fails on a blank {size}x{size} image: {str(exc)[:300]}") from None
    if output.ndim != 3 or output.shape[0] != 1 or YOLO_ROWS not in output.shape[1:]:
        raise FetchError(f"not a COCO YOLO detector: output shape {list(output.shape)}, expected "
                         f"1x{YOLO_ROWS}xN (4 box values and {COCO_CLASSES} class scores)")
    decode(output, conf=0.5)  # the detector's own decoder must read it
    return f"input 1x3x{size}x{size}, output {'x'.join(map(str, output.shape))}"


def ultralytics_version() -> str | None:
    if importlib.util.find_spec("ultralytics") is None:
        return None
    return importlib.metadata.version("ultralytics")


def export_onnx(checkpoint: Path) -> Path:
    """A verified ultralytics checkpoint -> ONNX beside it (YOLO's 1x84xN output, fixed 640x640 input)."""
    from ultralytics import YOLO

    try:
        exported = YOLO(str(checkpoint)).export(format="onnx", imgsz=EXPORT_IMGSZ, opset=EXPORT_OPSET,
                                                dynamic=False)
    except Exception as exc:  # ultralytics raises anything from torch, onnx and its own checks
        raise FetchError(f"ultralytics could not export {checkpoint.name} to ONNX: {exc}") from None
    return Path(str(exported))


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- the whole command ---------------------------------------------------------------------------------------

def _refuse_early(target: Path, source: Source, force: bool) -> str | None:
    """Everything that can be refused before a byte is downloaded; returns the exporter's version, if needed."""
    if target.exists() and not force:
        old = provenance_of(target)
        came_from = f" (from {old['source_url']})" if old and "source_url" in old else ""
        raise FetchError(f"{target} already exists{came_from}; --force replaces it")
    if source.kind != "pt":
        return None
    version = ultralytics_version()
    if version is None:
        raise FetchError(f"{source.url} is a PyTorch checkpoint; turning it into ONNX needs ultralytics, which is "
                         "not installed: pip install 'proctor[export]' (in a checkout: pip install -e '.[export]'), "
                         "then run this again; or fetch an .onnx export with --url and --sha256")
    return version


def _install(onnx: Path, target: Path, record: dict[str, Any], work: Path) -> None:
    """Both files are complete in the work folder (same filesystem) before either is renamed into place."""
    sidecar_tmp = work / "yolo.json"
    sidecar_tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(onnx, target)
    os.replace(sidecar_tmp, target.with_suffix(".json"))


def fetch_phone_model(settings: Settings, source: Source, *, force: bool = False,
                      timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                      allow_http: bool = False, say: Callable[[str], None] = lambda _: None) -> Installed:
    """Download source, verify its digest, export a .pt to ONNX, check the ONNX, install it with its sidecar.
    The model in place (if any) is replaced only once the new one has passed every check."""
    check_url(source.url, allow_http)
    target = installed_model(settings)
    exporter = _refuse_early(target, source, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        say(f"downloading {source.url}")
        downloaded = download(source.url, work / source.filename, source.sha256, timeout, max_bytes, allow_http)
        say(f"SHA-256 verified: {source.sha256}")
        onnx = downloaded
        if source.kind == "pt":
            with downloaded.open("rb") as handle:
                is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
            if not is_zip:
                raise FetchError(f"{source.url} is not a PyTorch checkpoint (no zip archive)")
            say(f"exporting to ONNX with ultralytics {exporter} (imgsz {EXPORT_IMGSZ}, opset {EXPORT_OPSET})")
            onnx = export_onnx(downloaded)
        try:
            layout = check_yolo_onnx(onnx)
        except FetchError as exc:
            raise FetchError(f"{source.url}: {exc}; nothing was installed") from None
        record = {
            "model": FETCHED_PHONE_MODEL,
            "name": source.name,
            "source_url": source.url,
            "download_sha256": source.sha256,
            "onnx_sha256": _file_sha256(onnx),
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "exporter": f"ultralytics {exporter} (onnx, imgsz {EXPORT_IMGSZ}, opset {EXPORT_OPSET})"
                        if exporter else None,
            "layout": layout,
        }
        _install(onnx, target, record, work)
        return Installed(target, target.with_suffix(".json"), record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
