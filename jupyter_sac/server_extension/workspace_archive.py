"""Workspace folders as ZIP archives (docs/workspaces.md#archives).

- ``folder_archive`` makes the ZIP of a folder as it is sent (zipstream-ng: stored,
  ZIP64 where needed, its length known before the first byte): each file is read
  a block at a time as the client takes it, so a download holds one block, whatever
  the folder's size. Symbolic links are never followed: links are left out, folders
  behind them are not entered, and a file is opened with O_NOFOLLOW and checked to
  be inside the folder once open.
- ``unpack`` extracts an uploaded ZIP into a folder after checking all of it first
  (rules/archives.py, the limits of rules/workspace.py, the agent's quota, what is
  there already); it unpacks into a staging folder next to the files (ignored by
  the sync) and only then moves the files into place, so a refused or broken
  archive changes nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from zipstream import ZipStream

from ..errors import ApiError
from ..rules.archives import ArchiveError, check_entries, open_zip, zip_entry
from ..rules.workspace import (
    AGENT_AREAS,
    ARCHIVE_LIMITS,
    AREAS,
    PathError,
    clean_relative,
    ignored,
)

READ_BLOCK = 1024 * 1024
# The staging folder of an upload: its ".sac-" prefix keeps the sync away from it.
STAGING_PREFIX = ".sac-archive-"
READ_ONLY_AREA = "public"


def inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def folder_of(root: Path, wpath: str) -> Path:
    """The real folder ``wpath`` names ("" for the workspace itself); 400 when it
    leads out of the workspace (through a link), 404 when there is no such folder."""
    path = (root / wpath).resolve() if wpath else root
    if not inside(root, path):
        raise ApiError(400, "invalid_field", "path: leaves the workspace", field="path")
    if not path.is_dir():
        raise ApiError(404, "not_found", f"no folder {wpath or '/'}")
    return path


# ---- download ---------------------------------------------------------------------------


def folder_archive(top: Path) -> ZipStream:
    """The ZIP of the folder ``top`` (a real path), sized, to be iterated for its
    bytes. Files the sync ignores (caches, SAC's own) are left out; empty folders
    are kept."""
    archive = ZipStream(sized=True)
    for folder, dirs, files in os.walk(top):  # followlinks=False: links are not entered
        here = Path(folder)
        rel = here.relative_to(top).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = sorted(d for d in dirs if not ignored(prefix + d) and _is_folder(here / d))
        kept = 0
        for name in sorted(files):
            arcname = prefix + name
            if ignored(arcname):
                continue
            try:
                st = os.lstat(here / name)
            except OSError:
                continue  # gone meanwhile
            if not stat.S_ISREG(st.st_mode):
                continue  # links, sockets, fifos: never followed, never read
            archive.add(_file_blocks(here / name, st.st_size, top), arcname, size=st.st_size)
            kept += 1
        if prefix and not kept and not dirs:
            archive.add(None, prefix)  # an empty folder
    return archive


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _file_blocks(path: Path, size: int, top: Path) -> Iterator[bytes]:
    """The bytes of one file, a block at a time, opened when the archive reaches it:
    never through a link (O_NOFOLLOW for the file, and the opened file's real path
    must be in the folder, so a folder swapped for a link meanwhile is refused).
    At most ``size`` bytes (what the ZIP's header promised)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        real = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
        if not inside(top, real):
            raise OSError(f"{path} is no longer inside the folder")
        left = size
        while left > 0:
            block = f.read(min(READ_BLOCK, left))
            if not block:
                break
            left -= len(block)
            yield block


# ---- upload -----------------------------------------------------------------------------


@dataclass
class UnpackPlan:
    files: list[tuple[zipfile.ZipInfo, str]] = field(default_factory=list)  # (entry, wpath)
    folders: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # names the sync ignores
    replaced: list[str] = field(default_factory=list)
    total_bytes: int = 0
    new_bytes: int = 0  # what the quota counts: new files, and growth of replaced ones
    new_files: int = 0


def check_target_folder(wpath: str) -> None:
    """Uploads go into a folder of an area the agent may write (``private/...``,
    ``output/...``, ``group/<group>/...``), never ``public/``."""
    area, _, rest = wpath.partition("/")
    if area == READ_ONLY_AREA:
        raise ApiError(403, "forbidden", "the public workspace is read-only")
    if area not in AREAS or (area == "group" and not rest):
        where = ", ".join(f"{a}/" for a in AGENT_AREAS) + " or group/<group>/"
        raise ApiError(400, "invalid_field", f"path: archives unpack under {where}", field="path")


def plan_unpack(
    archive: zipfile.ZipFile, compressed: int, root: Path, wpath: str, overwrite: bool
) -> UnpackPlan:
    """Every entry checked (names, kinds, sizes, bombs: rules/archives.py) and
    placed: where each file goes, and what is there already. Raises ApiError."""
    try:
        check_entries(map(zip_entry, archive.infolist()), ARCHIVE_LIMITS, compressed)
    except ArchiveError as e:
        raise ApiError(400, "invalid_archive", str(e)) from None
    plan = UnpackPlan()
    conflicts: list[str] = []
    seen: set[str] = set()
    for info in archive.infolist():
        name = str(PurePosixPath(info.filename))
        try:
            # NFC, segment lengths: as every workspace path (two names that are one
            # once normalised are one file, and refused as duplicates)
            target = clean_relative(f"{wpath}/{name}")
        except PathError as e:
            raise ApiError(400, "invalid_archive", f"archive: {name!r}: {e}") from None
        if target in seen:
            raise ApiError(
                400, "invalid_archive", f"archive: {name!r}: a duplicate (or a file and a folder)"
            )
        seen.add(target)
        if ignored(target):
            plan.skipped.append(name)
            continue
        if info.is_dir():
            there = _existing(root, target)
            if there is not None and not stat.S_ISDIR(there.st_mode):
                raise ApiError(409, "conflict", f"{target} is a file, not a folder", path=target)
            plan.folders.append(target)
            continue
        existing = _existing(root, target)
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode) or not stat.S_ISREG(existing.st_mode):
                raise ApiError(
                    409, "conflict", f"{target} is there already and is not a file", path=target
                )
            if not overwrite:
                conflicts.append(target)
            plan.replaced.append(target)
            plan.new_bytes += max(info.file_size - existing.st_size, 0)
        else:
            plan.new_files += 1
            plan.new_bytes += info.file_size
        plan.files.append((info, target))
        plan.total_bytes += info.file_size
    if conflicts:
        raise ApiError(
            409,
            "conflict",
            f"{len(conflicts)} file(s) exist already, e.g. {conflicts[0]}"
            " (send overwrite=true to replace them)",
            paths=conflicts[:20],
        )
    return plan


def _existing(root: Path, wpath: str) -> os.stat_result | None:
    """What is at ``wpath`` now (not following links), or None. A link, or a file,
    on the way there is a conflict: nothing is written through a link."""
    at = root
    parts = wpath.split("/")
    for i, part in enumerate(parts):
        at = at / part
        try:
            st = os.lstat(at)
        except FileNotFoundError:
            return None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise ApiError(409, "conflict", f"{'/'.join(parts[: i + 1])} is a link", path=wpath)
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ApiError(
                409, "conflict", f"{'/'.join(parts[: i + 1])} is a file, not a folder", path=wpath
            )
        if last:
            return st
    return None


def check_quota(plan: UnpackPlan, wpath: str, usage: dict[str, Any]) -> None:
    """The agent's own space (private/, output/) against its quota as the service
    last told it (a group's quota is the service's to enforce when the files sync)."""
    if wpath.partition("/")[0] not in AGENT_AREAS:
        return
    max_bytes, max_files = usage.get("max_bytes"), usage.get("max_files")
    used_bytes, used_files = usage.get("bytes", 0), usage.get("files", 0)
    if max_bytes is not None and used_bytes + plan.new_bytes > max_bytes:
        raise ApiError(
            413,
            "quota_exceeded",
            f"the archive unpacks to {plan.new_bytes:,} new bytes; the workspace holds"
            f" {used_bytes:,} of {max_bytes:,}",
        )
    if max_files is not None and used_files + plan.new_files > max_files:
        raise ApiError(
            413,
            "quota_exceeded",
            f"the archive adds {plan.new_files:,} files; the workspace holds"
            f" {used_files:,} of {max_files:,}",
        )


def unpack(
    upload: IO[bytes], root: Path, wpath: str, overwrite: bool, usage: dict[str, Any]
) -> dict[str, Any]:
    """Check, then extract the ZIP ``upload`` (a seekable file) into the folder
    ``wpath``; what was written. ApiError, and nothing changed, on any refusal."""
    check_target_folder(wpath)
    compressed = upload.seek(0, os.SEEK_END)
    upload.seek(0)
    try:
        archive = open_zip(upload, ARCHIVE_LIMITS)
    except ArchiveError as e:
        raise ApiError(400, "invalid_archive", str(e)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise ApiError(400, "invalid_archive", f"not a readable ZIP archive ({e})") from None
    with archive:
        plan = plan_unpack(archive, compressed, root, wpath, overwrite)
        check_quota(plan, wpath, usage)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        try:
            staged = _extract(archive, plan, staging)
            for folder in plan.folders:
                _make_folders(root, folder)
            for target, part in staged:
                _make_folders(root, target.rpartition("/")[0])
                _existing(root, target)  # again: no link may have appeared meanwhile
                os.replace(part, root / target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "path": wpath,
        "files": [target for _, target in plan.files],
        "bytes": plan.total_bytes,
        "replaced": plan.replaced,
        "skipped": plan.skipped,
    }


def _extract(archive: zipfile.ZipFile, plan: UnpackPlan, staging: Path) -> list[tuple[str, Path]]:
    """Each planned file unpacked into ``staging``, its CRC checked by zipfile and
    its size held to what its header declared (a lying header is refused)."""
    staged = []
    for n, (info, target) in enumerate(plan.files):
        part = staging / f"{n}.part"
        written = 0
        try:
            with archive.open(info) as src, part.open("wb") as dst:
                while block := src.read(READ_BLOCK):
                    written += len(block)
                    if written > info.file_size:
                        raise ArchiveError("archive", "an entry is larger than it says")
                    dst.write(block)
        except (ArchiveError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError,
                ValueError) as e:  # fmt: skip
            raise ApiError(
                400, "invalid_archive", f"archive: {info.filename!r}: unreadable ({e})"
            ) from None
        staged.append((target, part))
    return staged


def _make_folders(root: Path, wpath: str) -> None:
    at = root
    for part in wpath.split("/") if wpath else []:
        at = at / part
        try:
            st = os.lstat(at)
        except FileNotFoundError:
            at.mkdir()
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ApiError(409, "conflict", f"{at.relative_to(root)} is not a folder")
