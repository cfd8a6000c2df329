"""The object store, both kinds, through its public interface: LocalStore on disk
and S3Store against a real S3-compatible HTTP server."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from jupyter_sac.objects import (
    BadKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    S3Store,
    check_key,
    store_from_config,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(root=str(tmp_path / "objects"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(**endpoint.store_config("sac-objects", prefix=f"t-{uuid.uuid4().hex[:8]}/"))


@pytest.mark.asyncio
async def test_put_get_head_list_delete_round_trip(store: ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    info = await store.put("skill-bundles/abc.tar.gz", data, content_type="application/gzip")
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()

    assert await store.get("skill-bundles/abc.tar.gz") == data
    chunks = [c async for c in store.stream("skill-bundles/abc.tar.gz", chunk_size=1 << 20)]
    assert len(chunks) >= 3 and b"".join(chunks) == data

    head = await store.head("skill-bundles/abc.tar.gz")
    assert head is not None and (head.size, head.sha256) == (len(data), info.sha256)
    await store.put("other/x.bin", b"x")
    assert [i.key for i in await store.list("skill-bundles/")] == ["skill-bundles/abc.tar.gz"]
    assert sorted(i.key for i in await store.list()) == ["other/x.bin", "skill-bundles/abc.tar.gz"]

    # Overwrite replaces whole: the new bytes and the new checksum.
    info2 = await store.put("skill-bundles/abc.tar.gz", b"second")
    assert await store.get("skill-bundles/abc.tar.gz") == b"second"
    assert (await store.head("skill-bundles/abc.tar.gz")).sha256 == info2.sha256 != info.sha256

    assert await store.delete("skill-bundles/abc.tar.gz") is True
    assert await store.delete("skill-bundles/abc.tar.gz") is False
    assert await store.head("skill-bundles/abc.tar.gz") is None
    assert await store.delete_prefix("other/") == 1
    assert await store.list() == []


@pytest.mark.asyncio
async def test_missing_objects_raise_before_any_bytes(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("nothing/here")
    stream = store.stream("nothing/here")
    with pytest.raises(ObjectNotFound):
        await stream.__anext__()
    assert await store.head("nothing/here") is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a/../b",
        "../x",
        "a//b",
        "./a",
        "a/.",
        "with space",
        "ü-nicode",
        "a\x00b",
        "a\\b",
        "x" * 1000,
        ".hidden",
    ],
)
@pytest.mark.asyncio
async def test_bad_keys_are_refused_and_write_nothing(store: ObjectStore, key: str) -> None:
    with pytest.raises(BadKey):
        await store.put(key, b"data")
    with pytest.raises(BadKey):
        await store.get(key)
    assert await store.list() == []


def test_check_key_accepts_prefixes_only_when_asked() -> None:
    assert check_key("skill-bundles/0f.tar.gz") == "skill-bundles/0f.tar.gz"
    assert check_key("skill-bundles/", prefix=True) == "skill-bundles/"
    assert check_key("", prefix=True) == ""
    with pytest.raises(BadKey):
        check_key("skill-bundles/")


@pytest.mark.asyncio
async def test_local_store_refuses_symlinks_out_of_its_root(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = LocalStore(root=str(root))
    with pytest.raises(BadKey):
        await store.get("link/secret")
    with pytest.raises(BadKey):
        await store.put("link/planted", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.asyncio
async def test_local_store_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(root=str(tmp_path))
    await store.put("a/b", b"old")

    # The disk fills up while the new bytes are written: the old object stays
    # whole, its checksum still matches, and no temporary file is left behind.
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    os.fsync = disk_full
    try:
        with pytest.raises(OSError):
            await store.put("a/b", b"new and longer")
    finally:
        os.fsync = real_fsync
    assert await store.get("a/b") == b"old"
    assert (await store.head("a/b")).sha256 == hashlib.sha256(b"old").hexdigest()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "b.sha256"]

    # A crash after the bytes landed but before the checksum: head hashes the bytes.
    (tmp_path / "a" / "b.sha256").unlink()
    assert (await store.head("a/b")).sha256 == hashlib.sha256(b"old").hexdigest()


@pytest.mark.asyncio
async def test_presigned_urls_work_over_plain_http_without_credentials(s3_endpoint) -> None:
    store = S3Store(**s3_endpoint.store_config("sac-objects", prefix="presign/"))
    await store.put("bundle.tar.gz", b"bundle bytes")
    url = store.presign_get("bundle.tar.gz", expires=60)
    assert url and s3_endpoint.secret_access_key not in url
    async with httpx.AsyncClient() as client:
        got = await client.get(url)
        assert got.status_code == 200 and got.content == b"bundle bytes"
        put_url = store.presign_put("uploaded.bin", content_type="application/octet-stream")
        sent = await client.put(
            put_url, content=b"up", headers={"Content-Type": "application/octet-stream"}
        )
        assert sent.status_code == 200
    assert await store.get("uploaded.bin") == b"up"
    assert LocalStore(root="/tmp").presign_get("x") is None


def test_store_from_config_prefers_config_over_defaults(tmp_path: Path) -> None:
    c = Config()
    c.LocalStore.root = str(tmp_path / "configured")
    store = store_from_config("local", c, root=str(tmp_path / "default"))
    assert isinstance(store, LocalStore) and store.root == str(tmp_path / "configured")
    assert store_from_config("LOCAL", Config(), root="/x").root == "/x"
    c2 = Config()
    c2.S3Store.bucket = "b-1"
    s3 = store_from_config("s3", c2)
    assert isinstance(s3, S3Store) and s3.bucket == "b-1"
    with pytest.raises(ValueError, match="unknown object store"):
        store_from_config("ftp", c)


@pytest.mark.asyncio
async def test_check_passes_for_a_usable_store(store: ObjectStore) -> None:
    await store.check()  # before any object exists (the folder is made by the first write)
    await store.put("a/b", b"x")
    await store.check()


@pytest.mark.asyncio
async def test_check_fails_where_nothing_can_be_stored(tmp_path: Path, s3_endpoint) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ObjectStoreError):
        await LocalStore(root=str(blocker / "objects")).check()
    with pytest.raises(ObjectStoreError):
        await LocalStore(root="").check()
    config = s3_endpoint.store_config(f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ObjectStoreError):
        await S3Store(**{**config, "create_bucket": False}).check()
