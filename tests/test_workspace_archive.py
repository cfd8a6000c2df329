"""Workspace folders as ZIP archives, through the sandbox extension's HTTP API in
this process (pytest-jupyter, as tests/test_extension_inprocess.py): downloads
(contents, links never followed, names, a 1 GiB folder in flat memory) and
uploads (checked before anything is written: traversal, links, bombs, duplicates,
odd names, existing files, the quota)."""

# The fixtures are imported from the in-process module by name: tests take them as
# parameters, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from helpers import PeakMemory

# pytest-jupyter's fixtures and this suite's in-process server (fixtures by name).
from pytest_jupyter.jupyter_server import *  # noqa: F403
from test_extension_inprocess import (  # noqa: F401
    Fetch,
    ReadOnly,
    authorizer,
    error_of,
    fetch,
    jp_server_config,
)

ARCHIVE = "sac/api/workspace/archive"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (files with their bytes, folders and links None)."""
    out: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


def test_a_folder_downloads_as_a_zip_without_following_links(
    fetch: Fetch, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    folder = workspace / "output" / "Résumé ‮txt.exe"
    (folder / "data" / "empty").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "data" / "b.csv").write_bytes(b"x,y\n1,2\n")
    (folder / "data" / "__pycache__").mkdir()
    (folder / "data" / "__pycache__" / "m.pyc").write_bytes(b"cache")
    (folder / "c.txt.sac-part").write_bytes(b"half")
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "linked").symlink_to(outside)
    wpath = folder.relative_to(workspace).as_posix()

    resp = fetch(ARCHIVE + "?path=" + wpath)
    assert resp.code == 200, resp.body
    assert resp.headers["Content-Type"] == "application/zip"
    assert int(resp.headers["Content-Length"]) == len(resp.body)
    disposition = resp.headers["Content-Disposition"]
    # The fallback is plain ASCII, quoted, with no bidi override; filename* is exact.
    fallback = disposition.split('filename="')[1].split('"')[0]
    assert fallback.isascii() and fallback.isprintable() and fallback.endswith(".zip")
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == "Résumé ‮txt.exe.zip"
    with zipfile.ZipFile(io.BytesIO(resp.body)) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["a.txt", "data/b.csv", "data/empty/"]
        assert z.read("a.txt") == b"alpha" and z.read("data/b.csv") == b"x,y\n1,2\n"

    whole = fetch(ARCHIVE)  # no path: the whole workspace
    assert whole.code == 200 and "workspace.zip" in whole.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(whole.body)) as z:
        assert f"{wpath}/a.txt" in z.namelist()
        assert not [n for n in z.namelist() if "secret" in n or "linked" in n]

    (workspace / "private").mkdir(exist_ok=True)
    (workspace / "private" / "out").symlink_to(outside)
    for path, status, code in [
        ("private/none", 404, "not_found"),
        (f"{wpath}/a.txt", 404, "not_found"),  # a file is not a folder
        ("../outside", 400, "invalid_field"),
        ("/etc", 400, "invalid_field"),
        ("private/out", 400, "invalid_field"),  # a link out of the workspace
    ]:
        resp = fetch(ARCHIVE + "?path=" + path)
        assert resp.code == status, (path, resp.code, resp.body)
        assert error_of(resp)["error"] == code, path


def test_a_zip_unpacks_into_a_folder(fetch: Fetch, workspace: Path) -> None:
    body = make_zip(
        {
            "report.md": b"# Q3\n",
            "data/ünï.csv": b"a,b\n",
            "empty/": b"",
            "__pycache__/x.pyc": b"cache",
        }
    )
    resp = fetch(ARCHIVE + "?path=output/q3", "POST", body)
    assert resp.code == 200, resp.body
    result = __import__("json").loads(resp.body)
    assert sorted(result["files"]) == ["output/q3/data/ünï.csv", "output/q3/report.md"]
    assert result["skipped"] == ["__pycache__/x.pyc"] and result["replaced"] == []
    assert (workspace / "output/q3/report.md").read_bytes() == b"# Q3\n"
    assert (workspace / "output/q3/data/ünï.csv").read_bytes() == b"a,b\n"
    assert (workspace / "output/q3/empty").is_dir()
    assert not (workspace / "output/q3/__pycache__").exists()

    # The same again: the files are there, so nothing is written without overwrite.
    changed = make_zip({"report.md": b"# Q3, revised\n", "new.txt": b"new"})
    before = tree(workspace)
    again = fetch(ARCHIVE + "?path=output/q3", "POST", changed)
    assert again.code == 409, again.body
    assert error_of(again)["paths"] == ["output/q3/report.md"]
    assert tree(workspace) == before
    replaced = fetch(ARCHIVE + "?path=output/q3&overwrite=true", "POST", changed)
    assert replaced.code == 200, replaced.body
    assert __import__("json").loads(replaced.body)["replaced"] == ["output/q3/report.md"]
    assert (workspace / "output/q3/report.md").read_bytes() == b"# Q3, revised\n"
    assert (workspace / "output/q3/new.txt").read_bytes() == b"new"
    assert not [p for p in workspace.iterdir() if p.name.startswith(".sac-archive-")]


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.txt", b"ok")
        info = zipfile.ZipInfo("evil")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _duplicate_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning, match="Duplicate"):
        z.writestr("a.txt", b"first")
        z.writestr("a.txt", b"second")
    return buf.getvalue()


def _bad_archives() -> Iterator[tuple[str, str, bytes, int, str, str]]:
    """(what, folder, body, status, error code, text the message holds)."""
    ok = {"fine.txt": b"fine"}
    yield "not a zip", "output", b"just text", 400, "invalid_archive", "not a readable ZIP"
    yield "an empty body", "output", b"", 400, "invalid_archive", "not a readable ZIP"
    for name, says in [
        ("../escape.txt", "'..'"),
        ("a/../../escape.txt", "'..'"),
        ("/etc/cron.d/x", "absolute"),
        ("a\\..\\b.txt", "acceptable"),
        ("report\u202egnp.exe", "acceptable"),
        ("bell\x07.txt", "acceptable"),
        ("x" * 300 + ".txt", "255 bytes"),
    ]:
        yield (
            f"the name {name[:20]!r}",
            "output",
            make_zip({**ok, name: b"x"}),
            400,
            ("invalid_archive"),
            says,
        )
    yield "a symlink entry", "output", _symlink_zip(), 400, "invalid_archive", "symlink found"
    yield "a duplicate name", "output", _duplicate_zip(), 400, "invalid_archive", "duplicate"
    yield (
        "a file and a folder",
        "output",
        make_zip({"a": b"1", "a/b": b"2"}),
        400,
        ("invalid_archive"),
        "a file and a folder",
    )
    # NFC and NFD spellings of one name are one file in the workspace.
    yield (
        "one name twice in two spellings",
        "output",
        make_zip({"caf\u00e9.txt": b"1", "cafe\u0301.txt": b"2"}),
        400,
        "invalid_archive",
        "duplicate",
    )
    zeros = bytes(64 * 1024 * 1024)
    yield "a zip bomb", "output", make_zip({"bomb.bin": zeros}), 400, "invalid_archive", "bomb"
    yield "into public/", "public/docs", make_zip(ok), 403, "forbidden", "read-only"
    yield "into group/", "group", make_zip(ok), 400, "invalid_field", "group/<group>/"
    yield "through ..", "output/../private", make_zip(ok), 400, "invalid_field", "segment"
    yield "a file in the way", "output/taken.txt", make_zip(ok), 409, "conflict", "not a folder"
    yield "a link in the way", "output/link", make_zip(ok), 409, "conflict", "is a link"
    yield (
        "a folder entry on a file",
        "output",
        make_zip({"new/": b"", "taken.txt/": b""}),
        409,
        ("conflict"),
        "not a folder",
    )


def test_bad_archives_are_refused_and_change_nothing(
    fetch: Fetch, workspace: Path, tmp_path: Path
) -> None:
    (workspace / "output").mkdir(parents=True)
    (workspace / "output" / "taken.txt").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (workspace / "output" / "link").symlink_to(tmp_path / "elsewhere")
    before = tree(workspace)
    wrong = []
    for what, folder, body, status, code, says in _bad_archives():
        resp = fetch(ARCHIVE + "?path=" + folder, "POST", body)
        error = error_of(resp) if resp.code >= 400 else {}
        if (resp.code, error.get("error")) != (status, code) or says not in error["message"]:
            wrong.append(f"{what}: {resp.code} {resp.body[:300]!r}")
        if tree(workspace) != before:
            wrong.append(f"{what}: the workspace changed")
            before = tree(workspace)
    assert not wrong, "\n".join(wrong)
    assert not list((tmp_path / "elsewhere").iterdir())


def test_the_agents_quota_is_kept(fetch: Fetch, jp_serverapp: Any, workspace: Path) -> None:
    sync = jp_serverapp.web_app.settings["sac_workspace_sync"]
    # What the service's manifest last said of the agent's own space.
    sync.usage = {"bytes": 900, "files": 3, "max_bytes": 1000, "max_files": 10}
    body = make_zip({"big.txt": b"x" * 200})
    resp = fetch(ARCHIVE + "?path=private", "POST", body)
    assert resp.code == 413 and error_of(resp)["error"] == "quota_exceeded", resp.body
    assert not (workspace / "private" / "big.txt").exists()
    many = make_zip({f"f{i}.txt": b"1" for i in range(8)})
    resp = fetch(ARCHIVE + "?path=private", "POST", many)
    assert resp.code == 413 and "adds 8 files" in error_of(resp)["message"], resp.body
    small = fetch(ARCHIVE + "?path=private", "POST", make_zip({"small.txt": b"x" * 50}))
    assert small.code == 200, small.body


@pytest.mark.parametrize("authorizer", [ReadOnly])
def test_read_only_access_downloads_but_does_not_upload(fetch: Fetch, workspace: Path) -> None:
    (workspace / "output").mkdir(parents=True, exist_ok=True)
    (workspace / "output" / "a.txt").write_text("a")
    assert fetch(ARCHIVE + "?path=output").code == 200
    resp = fetch(ARCHIVE + "?path=output", "POST", make_zip({"b.txt": b"b"}))
    assert resp.code == 403 and error_of(resp)["error"] == "forbidden", resp.body
    assert not (workspace / "output" / "b.txt").exists()


# ---- a 1 GiB folder in flat memory --------------------------------------------------------

GIB_FILES = 10
FILE_BYTES = 100 * 1024 * 1024
# What the server may grow by while it sends 1 GiB: a few blocks in flight, the
# client's own buffers, Python's allocator. Holding the archive (or a file) in
# memory would be 100 MiB to 1 GiB.
RSS_GROWTH_MIB = 64


def test_a_gib_folder_downloads_in_flat_memory(
    fetch: Fetch,
    workspace: Path,
    tmp_path: Path,
    jp_asyncio_loop: Any,
    jp_http_port: int,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
) -> None:
    """The server is this process: its peak RSS (VmHWM, reset first) may grow by a
    bounded amount while the client streams 1 GiB to disk."""
    folder = workspace / "output" / "big"
    folder.mkdir(parents=True)
    block = os.urandom(1024 * 1024)  # real bytes that do not compress, written quickly
    for i in range(GIB_FILES):
        with (folder / f"part{i}.bin").open("wb") as f:
            for _ in range(FILE_BYTES // len(block)):
                f.write(block)
    (workspace / "output" / "small").mkdir()
    (workspace / "output" / "small" / "a.bin").write_bytes(block)
    # warm: imports, first allocations
    assert fetch(ARCHIVE + "?path=output/small").code == 200
    url = f"http://localhost:{jp_http_port}{jp_base_url}{ARCHIVE}?path=output/big"
    target = tmp_path / "big.zip"

    def download() -> int:
        with (
            httpx.stream("GET", url, headers=jp_auth_header, timeout=300) as resp,
            target.open("wb") as f,
        ):
            assert resp.status_code == 200, resp.read()
            for chunk in resp.iter_bytes(1024 * 1024):
                f.write(chunk)
            return int(resp.headers["Content-Length"])

    with PeakMemory(os.getpid()) as peak:
        length = jp_asyncio_loop.run_until_complete(asyncio.to_thread(download))
    assert peak.growth < RSS_GROWTH_MIB, f"peak RSS grew by {peak.growth} MiB"
    assert target.stat().st_size == length > GIB_FILES * FILE_BYTES
    with zipfile.ZipFile(target) as z:
        assert sorted(z.namelist()) == [f"part{i}.bin" for i in range(GIB_FILES)]
        assert z.testzip() is None  # every CRC checked
        with z.open("part3.bin") as member:
            assert member.read(len(block)) == block
