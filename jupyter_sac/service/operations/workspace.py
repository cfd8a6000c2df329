"""Workspace files: quotas, storing an upload (content-addressed, quota and
version checked), deleting, and sweeping objects no file refers to. The handlers
stream a body into an ``Upload`` and say where it goes; the rules are here."""

from __future__ import annotations

import hashlib
import tempfile
import time
from datetime import datetime
from typing import Any

from ...errors import ApiError
from ...rules import settings as sac_settings
from ...rules.workspace import Location, PathError, clean_relative, locate, object_key, space_prefix
from ...store import AgentRecord
from ...store.workspace import Quota, QuotaExceeded, VersionConflict
from ..validation import bad
from .context import Actor, ServiceContext, audit
from .settings import effective_settings_for_agent

# Unreferenced objects older than this are swept (an upload in flight is younger).
ORPHAN_SECONDS = 600
UNLIMITED = Quota(10**18, 10**12)
SPOOL_BYTES = 8 * 1024 * 1024


def file_model(row: dict[str, Any], workspace_path: str | None = None) -> dict[str, Any]:
    return {
        "path": workspace_path or row["path"],
        "size": row["size"],
        "sha256": row["sha256"],
        "version": row["version"],
        "mtime": row["mtime"].isoformat(),
        "written_by": row["written_by"],
        "updated_at": row["updated_at"].isoformat(),
    }


class Upload:
    """An uploaded file as it arrives: spooled (to disk past SPOOL_BYTES) and hashed.
    The handler that takes the body owns it and closes it when the request ends."""

    def __init__(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Another piece of the upload (from the body, or a form's file part)."""
        self._spool.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def content(self) -> bytes:
        self._spool.seek(0)
        return self._spool.read()

    def close(self) -> None:
        self._spool.close()


def location(space: str, raw: str, agent: AgentRecord | None) -> Location:
    """Where ``raw`` (a path a user gave) lies in ``space`` (400 naming ``path``)."""
    try:
        if agent is not None:
            loc = locate(raw, agent.id)
            if loc.space != space:
                # An agent's files are its private/ and output/; the public and
                # group trees have their own endpoints and rules (admins write
                # the public tree, members their groups').
                raise PathError(
                    "an agent's workspace holds private/ and output/; use"
                    " api/workspace/public or api/groups/<group>/workspace"
                )
            return loc
        path = clean_relative(raw)
    except PathError as e:
        raise bad("path", str(e)) from None
    kind, _, name = space.partition(":")
    return Location("group" if kind == "group" else "public", space, path, name or None)


async def quota_of(ctx: ServiceContext, space: str, agent: AgentRecord | None = None) -> Quota:
    """The quota of a space: its agent's settings, its group's, or none (public)."""
    kind, _, name = space.partition(":")
    if kind == "agent":
        assert agent is not None
        resolved = await effective_settings_for_agent(ctx, agent)
        return Quota(int(resolved["storage_quota_bytes"]), int(resolved["storage_quota_files"]))
    if kind == "group":
        system = await ctx.store.settings.get("system")
        group = await ctx.store.settings.get("group", name)
        resolved = sac_settings.resolve_group(system, group)
        return Quota(int(resolved["group_quota_bytes"]), int(resolved["group_quota_files"]))
    return UNLIMITED


def quota_message(loc: Location, detail: str) -> str:
    where = {
        "group": f"the {loc.group} group's workspace",
        "public": "the public workspace",
    }.get(loc.area, "this agent's workspace")
    return f"over quota: {where} is full ({detail}); nothing was stored"


def over_quota(
    loc: Location, used_bytes: int, used_files: int, size: int, quota: Quota
) -> ApiError:
    if used_bytes + size > quota.max_bytes:
        what = f"{size:,} bytes would take it to {used_bytes + size:,} of {quota.max_bytes:,}"
    else:
        what = f"it already holds {used_files:,} of {quota.max_files:,} files"
    return ApiError(413, "quota_exceeded", quota_message(loc, what))


def conflict(loc: Location, e: VersionConflict) -> ApiError:
    current = e.current
    return ApiError(
        409,
        "conflict",
        f"{loc.workspace_path} changed since it was read",
        current=None if current is None else file_model(current, loc.workspace_path),
    )


async def store_upload(
    ctx: ServiceContext,
    upload: Upload,
    loc: Location,
    written_by: str,
    agent: AgentRecord | None = None,
    *,
    base_version: int | None,
    mtime: datetime,
) -> dict[str, Any]:
    """Store ``upload`` as ``loc`` (quota and ``base_version`` checked); its row.
    ``agent``: the agent whose space it is."""
    sha, size = upload.sha256, upload.size
    quota = await quota_of(ctx, loc.space, agent)
    current = await ctx.store.workspace.get(loc.space, loc.path)
    if (
        current is not None
        and current["sha256"] == sha
        and base_version
        in (
            None,
            current["version"],
        )
    ):
        return current  # unchanged: nothing to store or record
    # Refuse before storing anything: an upload over quota leaves nothing behind.
    used_bytes, used_files = await ctx.store.workspace.usage(loc.space)
    freed = current["size"] if current else 0
    if used_bytes - freed + size > quota.max_bytes or (
        current is None and used_files + 1 > quota.max_files
    ):
        raise over_quota(loc, used_bytes - freed, used_files, size, quota)
    key = object_key(loc.space, sha)
    stored_here = await put_object(ctx, upload, key)
    try:
        row, before = await ctx.store.workspace.commit(
            loc.space,
            loc.path,
            size=size,
            sha256=sha,
            mtime=mtime,
            written_by=written_by,
            quota=quota,
            base_version=base_version,
        )
    except QuotaExceeded as e:
        if stored_here:
            await release(ctx, loc.space, sha)
        raise ApiError(413, "quota_exceeded", quota_message(loc, str(e))) from None
    except VersionConflict as e:
        if stored_here:
            await release(ctx, loc.space, sha)
        raise conflict(loc, e) from None
    # Another upload may have released this content in between: store it again.
    if not stored_here and await ctx.objects.head(key) is None:
        await put_object(ctx, upload, key)
    if before is not None and before["sha256"] != sha:
        await release(ctx, loc.space, before["sha256"])
    return row


async def put_object(ctx: ServiceContext, upload: Upload, key: str) -> bool:
    """Store the upload under ``key`` unless it is there; True if stored."""
    if await ctx.objects.head(key) is not None:
        return False
    await ctx.objects.put(key, upload.content())
    return True


async def release(ctx: ServiceContext, space: str, sha256: str) -> None:
    """Delete the object of ``sha256`` in ``space`` once no file refers to it."""
    key = object_key(space, sha256)

    async def delete() -> None:
        await ctx.objects.delete(key)

    await ctx.store.workspace.release_if_unused(space, sha256, delete)


async def remove_file(ctx: ServiceContext, loc: Location, base_version: int | None) -> None:
    try:
        before = await ctx.store.workspace.delete(loc.space, loc.path, base_version)
    except VersionConflict as e:
        raise conflict(loc, e) from None
    if before is None:
        raise ApiError(404, "not_found", f"no file {loc.workspace_path}")
    await release(ctx, loc.space, before["sha256"])


async def sweep(ctx: ServiceContext, space: str) -> int:
    """Delete objects of ``space`` no file refers to, once they are old enough
    not to be an upload in flight (a crash between storing and recording)."""
    shas = await ctx.store.workspace.shas(space)
    removed = 0
    cutoff = time.time() - ORPHAN_SECONDS
    for info in await ctx.objects.list(space_prefix(space)):
        sha = info.key.rsplit("/", 1)[-1]
        if sha not in shas and info.modified.timestamp() < cutoff:
            await release(ctx, space, sha)
            removed += 1
    return removed


async def put_file(
    ctx: ServiceContext,
    actor: Actor,
    upload: Upload,
    loc: Location,
    agent: AgentRecord | None,
    *,
    base_version: int | None,
    mtime: datetime,
) -> dict[str, Any]:
    """A person's (or administrator's) upload to ``loc``; a change of the public
    tree (administrators only) is an admin action and goes in the audit log."""
    row = await store_upload(
        ctx, upload, loc, actor.name, agent, base_version=base_version, mtime=mtime
    )
    if loc.area == "public":
        await audit(ctx, actor, "workspace.public.put", loc.workspace_path,
                    after={k: row[k] for k in ("size", "sha256", "version")})  # fmt: skip
    return row


async def delete_file(
    ctx: ServiceContext, actor: Actor, loc: Location, base_version: int | None
) -> None:
    await remove_file(ctx, loc, base_version)
    if loc.area == "public":
        await audit(ctx, actor, "workspace.public.delete", loc.workspace_path)
