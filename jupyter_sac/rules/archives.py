"""Checks for archives that users hand in (pure; the zip reader only lists entries).

Shared by skill bundles (``rules/skills.py``) and ZIPs uploaded into a workspace
(``rules/workspace.py``): each passes its own ``ArchiveLimits``. An archive is
checked entry by entry before anything is unpacked: names (absolute, ``..``,
backslashes, control and bidi characters, non-UTF-8), kinds (only regular files and
folders: no links or devices), duplicates and file/folder clashes, the number of
entries, the size of each file and of all, and the compression ratio (a bomb).

A zip is opened through ``open_zip``, which bounds what zipfile reads to find its
entries (the central directory, read in one go, and the entries counted) before
zipfile makes an object of each.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

# Below this many unpacked bytes a high compression ratio is harmless (a page of
# blank lines compresses 1000:1); above it, over ``max_ratio`` is treated as a bomb.
RATIO_CHECK_BYTES = 1024 * 1024
# Control characters and bidi overrides let a name display as another
# (``report\u202egnp.exe``) in listings and terminals.
UNSAFE_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class ArchiveError(ValueError):
    """An archive refused; ``field`` names the entry (``bundle: 'a/b.txt'``) or the
    archive itself (``bundle``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ArchiveEntry:
    name: str
    kind: str  # file | dir | symlink | hardlink | device | other
    size: int
    compressed: int | None = None


@dataclass(frozen=True)
class ArchiveLimits:
    """What one kind of archive may hold. ``noun`` names it in errors ("bundle")."""

    noun: str
    max_entries: int  # files, folders, links and (tar) extended headers all count
    max_header_bytes: int  # a zip's central directory, a tar's headers
    max_files: int
    max_file_bytes: int
    max_total_bytes: int
    max_path_length: int = 255
    max_ratio: int = 100
    # Names a file may not take, with why (a skill's body is SKILL.md).
    reserved: Mapping[str, str] = field(default_factory=dict)

    @property
    def too_many_entries(self) -> str:
        return (
            f"archives hold at most {self.max_entries} entries"
            " (files, folders, links and extended headers all count)"
        )

    @property
    def headers_too_large(self) -> str:
        return f"archive headers are limited to {self.max_header_bytes} bytes"


def check_entries(
    entries: Iterable[ArchiveEntry], limits: ArchiveLimits, compressed: int | None = None
) -> list[ArchiveEntry]:
    """The regular files of an archive, or ArchiveError naming the first bad entry.

    ``entries`` may be a lazy listing: checking stops at the first bad entry, so a
    bomb is refused before the rest of it is read. ``compressed``: the archive's
    size, against which the files' total is held to ``max_ratio``."""
    noun = limits.noun
    files, total = [], 0
    seen: set[str] = set()
    folders: set[str] = set()
    for count, entry in enumerate(entries, 1):
        field = f"{noun}: {entry.name!r}"
        if count > limits.max_entries:
            raise ArchiveError(field, limits.too_many_entries)
        if entry.kind not in ("file", "dir"):
            raise ArchiveError(field, f"only regular files and folders ({entry.kind} found)")
        name = entry.name
        if (
            not name
            or len(name) > limits.max_path_length
            or "\\" in name
            or UNSAFE_NAME.search(name)
        ):
            raise ArchiveError(field, "not an acceptable file name")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # a tar name of raw bytes arrives as lone surrogates: no JSON, no database
            raise ArchiveError(field, "file names must be UTF-8") from None
        path = PurePosixPath(name)
        if path.is_absolute() or name.startswith("/"):
            raise ArchiveError(field, "absolute paths are not allowed")
        if any(part in ("..", ".") for part in path.parts) or not path.parts:
            raise ArchiveError(field, "'..' and '.' are not allowed in paths")
        if entry.kind == "dir":
            continue
        key = str(path)
        if key in seen or key in limits.reserved:
            why = limits.reserved.get(key)
            raise ArchiveError(field, f"duplicate file ({why})" if why else "duplicate file")
        # A file cannot also be a folder on disk ("data" and "data/a.csv").
        parents = {str(p) for p in path.parents if str(p) != "."}
        if key in folders or parents & seen:
            raise ArchiveError(field, "a file and a folder of the same name")
        seen.add(key)
        folders |= parents
        if entry.size > limits.max_file_bytes:
            raise ArchiveError(field, f"files are limited to {limits.max_file_bytes} bytes")
        if (
            entry.compressed is not None
            and entry.size > RATIO_CHECK_BYTES
            and entry.size > limits.max_ratio * max(entry.compressed, 1)
        ):
            raise ArchiveError(
                field, f"compressed more than {limits.max_ratio}:1 (a decompression bomb?)"
            )
        total += entry.size
        files.append(entry)
        if len(files) > limits.max_files:
            raise ArchiveError(field, f"{noun}s hold at most {limits.max_files} files")
        if total > limits.max_total_bytes:
            raise ArchiveError(field, f"{noun}s are limited to {limits.max_total_bytes} bytes")
        # Checked on the running total (sizes from the headers), so a bomb is refused
        # before its bytes are unpacked, not after.
        if (
            compressed is not None
            and total > RATIO_CHECK_BYTES
            and total > limits.max_ratio * max(compressed, 1)
        ):
            raise ArchiveError(
                field, f"compressed more than {limits.max_ratio}:1 (a decompression bomb?)"
            )
    return files


def zip_entry(info: zipfile.ZipInfo) -> ArchiveEntry:
    mode = (info.external_attr >> 16) & 0o170000
    if info.is_dir():
        kind = "dir"
    elif mode in (0, 0o100000):
        kind = "file"
    elif mode == 0o120000:
        kind = "symlink"
    else:
        kind = "other"
    return ArchiveEntry(info.filename, kind, info.file_size, info.compress_size)


def open_zip(fileobj: IO[bytes], limits: ArchiveLimits) -> zipfile.ZipFile:
    """A zip (any seekable binary file) opened within ``limits``. zipfile reads the
    whole central directory (one header per entry) in one read when it opens the
    archive and makes an object of each entry: that read is held to
    ``max_header_bytes``, and its entries are counted before zipfile sees them."""
    raw = _ZipHeaders(fileobj, limits)
    archive = zipfile.ZipFile(raw)
    raw.opened = True  # the members' own bytes are bounded by their checked sizes
    return archive


# What zipfile reads to find the central directory besides it: the end record (22
# bytes), searched for in the last 64 KiB (its comment) when it is not last, and
# the zip64 locator and end record (20 + 56 bytes).
_ZIP_END_SEARCH_BYTES = 2 * (22 + 65535) + 20 + 56
_ZIP_CENTRAL = b"PK\x01\x02"


class _ZipHeaders:
    """A seekable file that, until ``opened``, refuses zipfile any read over
    ``max_header_bytes`` (and more than that plus the end-record search in all),
    and a central directory of more than ``max_entries`` entries."""

    def __init__(self, fileobj: IO[bytes], limits: ArchiveLimits):
        self._file = fileobj
        self._limits = limits
        self.opened = False
        self._given = 0

    def read(self, size: int | None = -1, /) -> bytes:
        if self.opened:
            return self._file.read(-1 if size is None else size)
        limits = self._limits
        if size is None or size < 0:
            here = self._file.tell()
            size = self._file.seek(0, io.SEEK_END) - here
            self._file.seek(here)
        # The central directory comes in one read: no read may exceed the limit.
        if (
            size > limits.max_header_bytes
            or self._given + size > limits.max_header_bytes + _ZIP_END_SEARCH_BYTES
        ):
            raise ArchiveError(limits.noun, limits.headers_too_large)
        data = self._file.read(size)
        self._given += len(data)
        if data.startswith(_ZIP_CENTRAL) and _zip_records(data, limits.max_entries) > (
            limits.max_entries
        ):
            raise ArchiveError(limits.noun, limits.too_many_entries)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


def _zip_records(data: bytes, most: int) -> int:
    """How many central-directory records ``data`` starts with (counting stops just
    past ``most``): 46 fixed bytes, then a name, an extra field and a comment whose
    lengths are at offsets 28, 30 and 32."""
    count = at = 0
    while count <= most and data.startswith(_ZIP_CENTRAL, at):
        if at + 46 > len(data):
            break
        name, extra, comment = struct.unpack_from("<3H", data, at + 28)
        at += 46 + name + extra + comment
        count += 1
    return count
