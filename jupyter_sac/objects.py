"""The object store: skill bundles (and, later, workspace snapshots) as immutable blobs.

Two stores speak one async interface: ``LocalStore`` (a folder, for the embedded
stack) and ``S3Store`` (any S3-compatible service). Only the ``sac`` service holds
a store and its credentials; sandboxes download through presigned URLs (S3) or
through the service (local), so a sandbox never holds S3 credentials.

Keys are relative, slash-separated paths checked by ``check_key``; each object
carries the sha256 of its bytes, recorded at write time, so readers can verify
what they fetched without a second pass over the data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, CaselessStrEnum, Unicode
from traitlets.config import Config, LoggingConfigurable

from .rules.urls import is_ip

# Letters, digits and a few separators per segment: a key names a blob this
# service chose (for example ``skill-bundles/<sha256>.tar.gz``), never a user's
# file name, so nothing outside this alphabet has a reason to appear.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
MAX_KEY_LENGTH = 900


class ObjectStoreError(Exception):
    """The store could not complete an operation (I/O, network, permissions)."""


class ObjectNotFound(ObjectStoreError, KeyError):
    """No object under that key."""


class BadKey(ObjectStoreError, ValueError):
    """A key that is not a relative, clean, slash-separated path."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    modified: datetime


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a clean relative path; raise ``BadKey`` otherwise.

    With ``prefix=True`` an empty key or one ending in "/" is allowed (list and
    delete_prefix take prefixes)."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        raise BadKey(f"object key must be a string of at most {MAX_KEY_LENGTH} characters")
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key
    for segment in body.split("/"):
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            raise BadKey(f"bad object key {key!r}: segment {segment!r}")
    return key


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(LoggingConfigurable):
    """The interface both stores implement; every method is a coroutine except
    ``stream`` (an async iterator) and the presigners (pure computation)."""

    async def put(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        raise NotImplementedError

    async def get(self, key: str) -> bytes:
        raise NotImplementedError

    async def get_many(self, keys: list[str]) -> list[bytes]:
        """Several small objects, in order (ObjectNotFound for the first missing)."""
        return [await self.get(key) for key in keys]

    def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    async def delete(self, key: str) -> bool:
        raise NotImplementedError

    async def delete_prefix(self, prefix: str) -> int:
        removed = 0
        for info in await self.list(prefix):
            removed += await self.delete(info.key)
        return removed

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        raise NotImplementedError

    async def check(self) -> None:
        """Raise ObjectStoreError unless the store can be reached (the readiness
        check): one cheap call, never a listing of its objects."""
        raise NotImplementedError

    def presign_get(self, key: str, expires: int = 300) -> str | None:
        """A URL anyone holding it may GET for ``expires`` seconds, or None when
        this store cannot presign (then the service streams the object)."""
        return None

    def presign_put(
        self, key: str, expires: int = 300, *, content_type: str = "application/octet-stream"
    ) -> str | None:
        return None

    def presign_hosts(self) -> list[tuple[str, int]]:
        """The (host, port) pairs this store's presigned URLs name: what a sandbox must
        reach to use them. Empty when the store cannot presign."""
        return []


class LocalStore(ObjectStore):
    """Objects as files under ``root``; the sha256 sits beside each in ``<name>.sha256``.

    Writes go to a temporary file in the same folder and are renamed into place, so
    a reader sees the old object or the new one, never half of one."""

    root = Unicode(
        "",
        help="""Folder holding the objects. Default: $SAC_DATA_DIR/objects (set by the
        service). Must be on a filesystem that supports atomic rename.""",
    ).tag(config=True)

    _SIDE = ".sha256"

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        check_key(key, prefix=prefix)
        if not self.root:
            raise ObjectStoreError("LocalStore.root is not set")
        root = Path(self.root).resolve()
        path = root / key
        # check_key already excludes "..", but a symlink planted inside root could
        # still lead out of it: refuse any path whose real location is elsewhere.
        real = path.resolve()
        if real != root and root not in real.parents:
            raise BadKey(f"object key {key!r} leaves the store")
        return path

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        side = path.with_name(path.name + self._SIDE)
        try:
            sha = side.read_text().strip()
        except FileNotFoundError:
            sha = _sha256(path.read_bytes())
        return ObjectInfo(key, st.st_size, sha, datetime.fromtimestamp(st.st_mtime, UTC))

    def _put(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        if key.endswith(self._SIDE):
            raise BadKey(f"object keys may not end in {self._SIDE}")
        path.parent.mkdir(parents=True, exist_ok=True)
        sha = _sha256(data)
        side = path.with_name(path.name + self._SIDE)
        # The old checksum goes before the new bytes land and the new one after:
        # a crash in between leaves no side file, and _info then hashes the bytes,
        # so a checksum never describes the wrong content.
        tmp = self._write_temp(path.parent, data)
        with _suppress_missing():
            os.unlink(side)
        os.replace(tmp, path)
        os.replace(self._write_temp(path.parent, sha.encode()), side)
        return self._info(key, path)

    @staticmethod
    def _write_temp(folder: Path, payload: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with _suppress_missing():
                os.unlink(tmp)
            raise
        return tmp

    async def put(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        return await asyncio.to_thread(self._put, key, bytes(data))

    def _get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    async def get_many(self, keys: list[str]) -> list[bytes]:
        # One trip to a worker thread for all of them: for many small files the
        # hops, not the reads, were the cost.
        return await asyncio.to_thread(lambda: [self._get(key) for key in keys])

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        finally:
            f.close()

    def _head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return self._info(key, path)

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._head, key)

    def _delete(self, key: str) -> bool:
        path = self._path(key)
        with _suppress_missing():
            os.unlink(path.with_name(path.name + self._SIDE))
        try:
            os.unlink(path)
            return True
        except (FileNotFoundError, IsADirectoryError):
            return False

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        check_key(prefix, prefix=True)
        if not self.root or not os.path.isdir(self.root):
            return []
        root = Path(self.root).resolve()
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(self._SIDE) or name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix) and not path.is_symlink():
                    found.append(self._info(key, path))
        return found

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _check(self) -> None:
        if not self.root:
            raise ObjectStoreError("LocalStore.root is not set")
        # The folder is made by the first write; until then its parent must be there
        # to make it in (a missing or unwritable volume is what this should catch).
        folder = Path(self.root)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ObjectStoreError(f"{folder} is not a folder this service may write to")

    async def check(self) -> None:
        await asyncio.to_thread(self._check)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError)


class S3Store(ObjectStore):
    """Objects in an S3 bucket (AWS, MinIO, Ceph RGW, …) through boto3.

    boto3 is synchronous, so every call runs in a worker thread; the sha256 of an
    object travels as ``x-amz-meta-sha256`` so ``head`` needs no download."""

    endpoint_url = Unicode(
        "", help="S3 endpoint URL, for example https://minio.example.org. Empty: AWS's default."
    ).tag(config=True)
    bucket = Unicode("", help="Bucket holding SAC's objects (required).").tag(config=True)
    prefix = Unicode(
        "",
        help='Key prefix inside the bucket, for example "sac/" (one bucket, several installs).',
    ).tag(config=True)
    region = Unicode("us-east-1", help="Region used to sign requests.").tag(config=True)
    access_key_id = Unicode(
        "",
        help="Access key id. Empty: boto3's usual chain (environment, instance role).",
    ).tag(config=True)
    secret_access_key = Unicode(
        "", help="Secret access key, held only by the service; never passed to sandboxes."
    ).tag(config=True)
    addressing_style = CaselessStrEnum(
        ["auto", "path", "virtual"],
        "path",
        help="""Bucket addressing in URLs. "path" (endpoint/bucket/key) works with
        every S3-compatible server; "virtual" (bucket.endpoint/key) is AWS's preference.""",
    ).tag(config=True)
    create_bucket = Bool(
        False, help="Create the bucket at first use if it does not exist (test and dev setups)."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: Any = None
        self._ready = False

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            if not self.bucket:
                raise ObjectStoreError("S3Store.bucket is not set")
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region or None,
                aws_access_key_id=self.access_key_id or None,
                aws_secret_access_key=self.secret_access_key or None,
                config=BotoConfig(
                    signature_version="s3v4",
                    s3={"addressing_style": self.addressing_style},
                    retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=20,
                ),
            )
        return self._client

    def _full(self, key: str, *, prefix: bool = False) -> str:
        return self.prefix + check_key(key, prefix=prefix)

    def _ensure_bucket(self) -> None:
        if self._ready or not self.create_bucket:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
        self._ready = True

    async def _call(self, fn: Any, *args: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            self._ensure_bucket()
            return fn(*args)

        try:
            return await asyncio.to_thread(run)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(args[0][len(self.prefix) :] if args else "") from None
            raise ObjectStoreError(f"S3 {code or 'error'}: {e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"S3 unreachable: {e}") from e

    async def put(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        full = self._full(key)
        sha = _sha256(data)
        # One PutObject is atomic in S3: readers see the old object or the new one.
        await self._call(
            lambda k: self.client.put_object(
                Bucket=self.bucket,
                Key=k,
                Body=data,
                ContentType=content_type,
                Metadata={"sha256": sha},
            ),
            full,
        )
        return ObjectInfo(key, len(data), sha, datetime.now(UTC))

    async def get(self, key: str) -> bytes:
        full = self._full(key)
        return await self._call(
            lambda k: self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read(), full
        )

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        full = self._full(key)
        body = await self._call(
            lambda k: self.client.get_object(Bucket=self.bucket, Key=k)["Body"], full
        )
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        finally:
            body.close()

    async def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            meta = await self._call(
                lambda k: self.client.head_object(Bucket=self.bucket, Key=k), full
            )
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key,
            int(meta["ContentLength"]),
            meta.get("Metadata", {}).get("sha256", ""),
            meta["LastModified"],
        )

    async def delete(self, key: str) -> bool:
        if await self.head(key) is None:
            return False
        full = self._full(key)
        await self._call(lambda k: self.client.delete_object(Bucket=self.bucket, Key=k), full)
        return True

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self._full(prefix, prefix=True)

        def pages(p: str) -> list[dict]:
            paginator = self.client.get_paginator("list_objects_v2")
            return [
                obj
                for page in paginator.paginate(Bucket=self.bucket, Prefix=p)
                for obj in page.get("Contents", [])
            ]

        found = []
        for obj in await self._call(pages, full):
            info = await self.head(obj["Key"][len(self.prefix) :])
            if info is not None:
                found.append(info)
        return found

    async def check(self) -> None:
        # One request that proves the endpoint answers, the credentials work and
        # the bucket exists (head_bucket: no listing, no object read).
        await self._call(lambda: self.client.head_bucket(Bucket=self.bucket))

    def presign_hosts(self) -> list[tuple[str, int]]:
        """From the configuration alone (no request, no credentials): the endpoint's
        host, with the bucket in front of it for virtual addressing ("auto" may use
        either), or AWS's global and regional S3 names when no endpoint is set."""
        if self.endpoint_url:
            url = urlsplit(self.endpoint_url)
            bases = [url.hostname or ""]
            port = url.port or (443 if url.scheme == "https" else 80)
        else:
            bases = ["s3.amazonaws.com", f"s3.{self.region or 'us-east-1'}.amazonaws.com"]
            port = 443
        names = []
        if self.addressing_style != "virtual":
            names += bases
        if self.addressing_style != "path":
            # An address has no subdomains: boto3 uses path addressing for it.
            names += [f"{self.bucket}.{base}" for base in bases if not is_ip(base)]
        return [(name, port) for name in dict.fromkeys(names) if name]

    def presign_get(self, key: str, expires: int = 300) -> str | None:
        self._ensure_bucket()
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires
        )

    def presign_put(
        self, key: str, expires: int = 300, *, content_type: str = "application/octet-stream"
    ) -> str | None:
        self._ensure_bucket()
        return self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._full(key), "ContentType": content_type},
            ExpiresIn=expires,
        )


STORES: dict[str, type[ObjectStore]] = {"local": LocalStore, "s3": S3Store}


def store_from_config(kind: str, config: Config | None = None, **overrides: Any) -> ObjectStore:
    """The store named ``kind`` ("local" or "s3"), configured from ``config``
    (c.LocalStore.* / c.S3Store.*); ``overrides`` fill traits the config leaves unset."""
    try:
        cls = STORES[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown object store {kind!r}; choose one of {sorted(STORES)}") from None
    section = (config or Config()).get(cls.__name__, {})
    unset = {name: value for name, value in overrides.items() if name not in section}
    return cls(config=config or Config(), **unset)
