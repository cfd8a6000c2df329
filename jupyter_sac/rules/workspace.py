"""Workspace rules shared by the service and the sandbox: paths, spaces, object keys,
what is not synced, and the name a conflicting copy gets. Pure functions.

A sandbox sees ``/workspace`` with four areas:

- ``private/``  this agent's own files                     space ``agent:<id>``
- ``output/``   what this agent produces                   space ``agent:<id>``
- ``public/``   the organisation's, read-only for users    space ``public``
- ``group/<g>/`` one per JupyterHub group of the owner     space ``group:<g>``

A *workspace path* is how the sandbox names a file (``group/analysts/q3.csv``); a
*space path* is how the space stores it (``q3.csv``; agent spaces keep their
``private/`` or ``output/`` prefix).
"""

from __future__ import annotations

import hashlib
import posixpath
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from .archives import ArchiveLimits

AGENT_AREAS = ("private", "output")
AREAS = (*AGENT_AREAS, "public", "group")
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
# Never synced: editor and Python caches, and SAC's own bookkeeping.
IGNORED_SEGMENTS = frozenset({".ipynb_checkpoints", "__pycache__", ".sac-workspace"})
IGNORED_PREFIXES = (".sac-", ".~lock.")
IGNORED_SUFFIXES = (".swp", ".swx", "~", ".sac-part")


class PathError(ValueError):
    """A path that cannot name a workspace file."""


@dataclass(frozen=True)
class Location:
    """Where a workspace path lives."""

    area: str  # private, output, public, group
    space: str  # agent:<id>, public, group:<name>
    path: str  # the path within the space
    group: str | None = None

    @property
    def workspace_path(self) -> str:
        if self.area == "public":
            return f"public/{self.path}"
        if self.area == "group":
            return f"group/{self.group}/{self.path}"
        return self.path


def clean_relative(raw: str) -> str:
    """A relative, normalised, NFC path with no empty, ``.`` or ``..`` segment, no
    NUL or control characters, each segment at most 255 bytes; else ``PathError``."""
    if not isinstance(raw, str) or not raw:
        raise PathError("a path is required")
    path = unicodedata.normalize("NFC", raw)
    if len(path) > MAX_PATH_CHARS:
        raise PathError(f"paths are limited to {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path:
        raise PathError("paths are relative and use '/'")
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise PathError(f"bad path segment {segment!r}")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in segment):
            raise PathError("paths may not contain control characters")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise PathError(f"each part of a path is at most {MAX_SEGMENT_BYTES} bytes")
    return path


def agent_space(agent_id: int) -> str:
    """The space of an agent's own files (private/ and output/)."""
    return f"agent:{agent_id}"


def locate(workspace_path: str, agent_id: int) -> Location:
    """The area, space and space path of a workspace path of agent ``agent_id``."""
    path = clean_relative(workspace_path)
    area, _, rest = path.partition("/")
    if area in AGENT_AREAS:
        if not rest:
            raise PathError(f"a file under {area}/ is required")
        return Location(area, agent_space(agent_id), path)
    if area == "public":
        if not rest:
            raise PathError("a file under public/ is required")
        return Location("public", "public", rest)
    if area == "group":
        group, _, inner = rest.partition("/")
        if not group or not inner:
            raise PathError("expected group/<group>/<file>")
        return Location("group", f"group:{group}", inner, group)
    raise PathError(f"paths start with one of {', '.join(a + '/' for a in AREAS)}")


def ignored(workspace_path: str) -> bool:
    """Files the sync leaves alone (caches, editor swap files, SAC's temp files)."""
    for segment in workspace_path.split("/"):
        if segment in IGNORED_SEGMENTS or segment.startswith(IGNORED_PREFIXES):
            return True
    return workspace_path.endswith(IGNORED_SUFFIXES)


def object_key(space: str, sha256: str) -> str:
    """Content-addressed: a space's objects are named by what they hold, so an
    upload that was stored but not recorded is found (not stored again) on retry."""
    kind, _, name = space.partition(":")
    if kind == "agent":
        return f"workspace/agents/{name}/{sha256}"
    if kind == "group":
        # Group names may hold any character: the key uses a digest of the name.
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
        return f"workspace/groups/{digest}/{sha256}"
    return f"workspace/public/{sha256}"


def space_prefix(space: str) -> str:
    return object_key(space, "x")[:-1]


def conflict_name(workspace_path: str, who: str, when: datetime) -> str:
    """``report.csv`` -> ``report (conflict, alice-helper, 2026-11-22 10.31.05).csv``:
    where a sandbox keeps its own version of a file someone else changed first."""
    folder, name = posixpath.split(workspace_path)
    stem, ext = posixpath.splitext(name)
    if stem == "":  # a dotfile such as ".env": no extension to keep apart
        stem, ext = name, ""
    tag = f" (conflict, {who.replace('/', '-')}, {when.strftime('%Y-%m-%d %H.%M.%S')})"
    return posixpath.join(folder, f"{stem}{tag}{ext}")


# ---- ZIP archives of workspace folders ------------------------------------------------

# A ZIP uploaded into a workspace folder (docs/workspaces.md#archives): the body is
# taken up to MAX_ARCHIVE_UPLOAD_BYTES into a temporary file, then its entries are
# checked against these limits (and the agent's quota) before anything is unpacked.
MAX_ARCHIVE_UPLOAD_BYTES = 2 * 1024**3
ARCHIVE_LIMITS = ArchiveLimits(
    noun="archive",
    max_entries=20_000,
    max_header_bytes=16 * 1024 * 1024,
    max_files=10_000,
    max_file_bytes=4 * 1024**3,
    max_total_bytes=4 * 1024**3,
    max_path_length=MAX_PATH_CHARS,
)


def archive_filename(folder: str) -> str:
    """What a download of ``folder`` ("" for the whole workspace) is called: its
    last segment (``group/analysts/q3`` -> ``q3.zip``)."""
    name = folder.rstrip("/").rsplit("/", 1)[-1] if folder else "workspace"
    return f"{name}.zip"


def content_disposition(filename: str) -> str:
    """An attachment header for any file name: an ASCII fallback with quotes,
    backslashes, separators and control characters replaced, and the name itself in
    RFC 6266's ``filename*`` (UTF-8, percent-encoded), which browsers prefer."""
    folded = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = (
        "".join(ch if ch.isprintable() and ch not in '"\\/;%' else "_" for ch in folded).strip()
        or "download.zip"
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
