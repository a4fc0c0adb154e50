"""Object storage: a local folder (default) or S3 / Cloudflare R2 through boto3.

Keys are slash-separated relative paths such as `sessions/<id>/segments/000001.webm`. Both backends refuse
keys that could escape their root (`..`, absolute paths, backslashes, control characters). boto3 is
blocking, so the S3 backend runs every call in a thread and never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.settings import Settings

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class StorageError(RuntimeError):
    """Storage refused or failed an operation."""


class InvalidKey(StorageError, ValueError):
    """A key that is not a plain relative path."""


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in 1-MiB chunks (stored with every segment, batch, master)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or len(key) > 1000 or not all(_KEY_PART.fullmatch(part) for part in parts):
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class Storage(ABC):
    name: str

    @abstractmethod
    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream",
                       *, move: bool = False) -> int:
        """Upload a local file; returns its size. With `move` the caller gives the file up: a backend on the
        same filesystem may rename it into place instead of copying (a 1-GB master in milliseconds)."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    async def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    async def download(self, key: str, path: Path) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete a key; deleting a missing key is not an error (handlers are idempotent)."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def list(self, prefix: str) -> list[StoredObject]: ...

    @abstractmethod
    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A short-lived GET URL the browser can play directly, or None where the app must serve the bytes."""

    @abstractmethod
    async def check(self) -> None:
        """Raise StorageError when the backend cannot be reached or written."""

    def local_path(self, key: str) -> Path | None:
        """The file behind a key when the backend is a local folder (for HTTP Range streaming)."""
        return None

    def scratch_dir(self) -> Path | None:
        """A folder on the storage's own filesystem for files about to be stored with move=True, if any."""
        return None


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _put_file(self, key: str, path: Path, move: bool = False) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if move and path.stat().st_dev == target.parent.stat().st_dev:
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(path, target)
            return target.stat().st_size
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.part")  # unique per write
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)  # readers never see half a file
        return target.stat().st_size

    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream",
                       *, move: bool = False) -> int:
        return await asyncio.to_thread(self._put_file, key, path, move)

    def scratch_dir(self) -> Path:
        """Where to build files that will be stored with move=True (same filesystem as the storage)."""
        path = self.root / ".scratch"
        path.mkdir(exist_ok=True)
        return path

    def _put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.part")  # unique per write
        tmp.write_bytes(data)
        os.replace(tmp, target)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await asyncio.to_thread(self._put_bytes, key, data)

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    async def download(self, key: str, path: Path) -> None:
        try:
            await asyncio.to_thread(shutil.copyfile, self._path(key), path)
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _list(self, prefix: str) -> list[StoredObject]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        found = [
            StoredObject(str(p.relative_to(self.root)), p.stat().st_size)
            for p in base.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        ]
        return sorted(found, key=lambda o: o.key)

    async def list(self, prefix: str) -> list[StoredObject]:
        return await asyncio.to_thread(self._list, prefix)

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None

    async def check(self) -> None:
        def probe() -> None:
            probe_path = self.root / f".health.{os.getpid()}"
            probe_path.write_bytes(b"ok")
            probe_path.unlink()

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageError(f"local storage {self.root} is not writable: {exc}") from exc


class S3Storage(Storage):
    """S3 or Cloudflare R2. Multipart uploads above 16 MiB through boto3's transfer manager."""

    name = "s3"

    def __init__(self, *, bucket: str, endpoint_url: str | None, region: str, access_key_id: str,
                 secret_access_key: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=5, read_timeout=60, s3={"addressing_style": "path"}),
        )
        self._transfer = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        # Boto3Error: the transfer manager (upload_file, download_file) turns a ClientError into its own
        # S3UploadFailedError / RetriesExceededError, e.g. a 500 from a server going down (measured on SeaweedFS).
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StorageError(f"s3 {getattr(fn, '__name__', fn)}: {exc}") from exc

    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream",
                       *, move: bool = False) -> int:
        await self._call(self._client.upload_file, str(path), self.bucket, check_key(key),
                         ExtraArgs={"ContentType": content_type}, Config=self._transfer)
        return (await asyncio.to_thread(path.stat)).st_size

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._call(self._client.put_object, Bucket=self.bucket, Key=check_key(key), Body=data,
                         ContentType=content_type)

    async def get_bytes(self, key: str) -> bytes:
        response = await self._call(self._client.get_object, Bucket=self.bucket, Key=check_key(key))
        return await asyncio.to_thread(response["Body"].read)

    async def download(self, key: str, path: Path) -> None:
        await self._call(self._client.download_file, self.bucket, check_key(key), str(path), Config=self._transfer)

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete_object, Bucket=self.bucket, Key=check_key(key))

    async def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=check_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"s3 head_object: {exc}") from exc

    async def list(self, prefix: str) -> list[StoredObject]:
        def run() -> list[StoredObject]:
            paginator = self._client.get_paginator("list_objects_v2")
            out: list[StoredObject] = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(StoredObject(o["Key"], int(o["Size"])) for o in page.get("Contents", []))
            return sorted(out, key=lambda o: o.key)

        return await self._call(run)

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        return await self._call(self._client.generate_presigned_url, "get_object",
                                Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=expires_s)

    async def check(self) -> None:
        await self._call(self._client.head_bucket, Bucket=self.bucket)

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing (SeaweedFS/dev servers; on R2 create it in the dashboard)."""
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self.bucket)
        except ClientError:
            await self._call(self._client.create_bucket, Bucket=self.bucket)


def open_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                         access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key)
    return LocalStorage(settings.local_storage_path)
