"""Workspaces (docs/workspaces.md): files that outlive sandboxes, with quotas.

Sandboxes (their agent token) read a manifest of every file they may see, download
through presigned URLs (S3) or this service (local store), and upload through this
service, which hashes what it receives: objects are content-addressed per space, so
a key always holds what its name says, even in a group's space that several
people's agents write. A row is written only after its object is stored; a file
whose upload was stored but not recorded is recorded when the sandbox retries.

Users (their own tokens or browser) list, download, upload and delete their agents'
files, the public tree (admins write it) and their groups' trees (members write).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from tornado import web

from ..errors import ApiError
from ..objects import ObjectNotFound
from ..rules import settings as sac_settings
from ..rules.workspace import Location, PathError, locate, object_key
from ..store import AgentRecord
from ..store.workspace import Quota
from .base import BaseHandler
from .operations import workspace as ws_ops
from .operations.settings import replace_group_quota
from .operations.workspace import UNLIMITED, file_model
from .routes import FILE, GROUP, SLUG, USER
from .validation import bad, whole_number

# Presigned download URLs in a manifest stay valid this long.
URL_SECONDS = 900
BATCH_MAX_FILES = 1000


def usage_model(used: tuple[int, int], quota: Quota) -> dict[str, Any]:
    return {
        "bytes": used[0],
        "files": used[1],
        "max_bytes": quota.max_bytes if quota is not UNLIMITED else None,
        "max_files": quota.max_files if quota is not UNLIMITED else None,
    }


def _mtime(raw: str | None) -> datetime:
    if not raw:
        return datetime.now(UTC)
    try:
        value = float(raw)
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise bad("X-Sac-Mtime", "expected seconds since the epoch") from None


def _base_version(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise bad("X-Sac-Base-Version", "expected a version number (0: a new file)")
    return int(raw)


class WorkspaceBase(BaseHandler):
    """Quotas, membership, upload, download and delete, shared by every endpoint."""

    _upload: ws_ops.Upload | None = None

    def upload_limit(self) -> int:
        return self.ctx.workspace_max_file_bytes

    async def quota_of(self, space: str, agent: AgentRecord | None = None) -> Quota:
        return await ws_ops.quota_of(self.ctx, space, agent)

    # ---- uploads: the body is streamed to a spooled file while it is hashed -------

    def begin_upload(self) -> None:
        """Take the request body as the upload; call once the caller may write."""
        upload = self.start_spool()
        if not self.accept_body(upload.write):
            raise self.file_too_large()

    def file_too_large(self) -> ApiError:
        limit = self.ctx.workspace_max_file_bytes
        return ApiError(413, "too_large", f"workspace files are limited to {limit} bytes")

    def start_spool(self) -> ws_ops.Upload:
        # Closed in on_finish (a handler's body outlives any with-block here).
        self._upload = ws_ops.Upload()
        return self._upload

    def on_finish(self) -> None:
        if self._upload is not None:
            self._upload.close()

    def received(self) -> ws_ops.Upload:
        """The upload this request carried (413 when it was too large)."""
        if self.body_too_large:
            raise self.file_too_large()
        assert self._upload is not None
        return self._upload

    def base_version(self) -> int | None:
        return _base_version(self.request.headers.get("X-Sac-Base-Version"))

    async def store_upload(
        self,
        loc: Location,
        written_by: str,
        agent: AgentRecord | None = None,
        *,
        sandbox: bool = False,
    ) -> dict[str, Any]:
        """Store the received body as ``loc`` (quota and version checked); its row.
        ``agent``: the agent whose space it is; ``sandbox``: sent by a sandbox."""
        if loc.area == "public" and sandbox:
            raise ApiError(403, "forbidden", "the public workspace is read-only for agents")
        upload = self.received()
        base = self.base_version()
        mtime = _mtime(self.request.headers.get("X-Sac-Mtime"))
        return await ws_ops.store_upload(
            self.ctx, upload, loc, written_by, agent, base_version=base, mtime=mtime
        )

    # ---- downloads and deletes ----------------------------------------------------

    async def send_file(self, loc: Location) -> None:
        row = await self.ctx.store.workspace.get(loc.space, loc.path)
        if row is None:
            raise ApiError(404, "not_found", f"no file {loc.workspace_path}")
        try:
            chunks = self.ctx.objects.stream(object_key(loc.space, row["sha256"]))
            first = await anext(chunks, b"")
        except ObjectNotFound:
            raise ApiError(404, "not_found", "the file is missing from the object store") from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Sac-Version", str(row["version"]))
        self.set_header("X-Sac-Sha256", row["sha256"])
        self.set_header("Content-Length", str(row["size"]))
        self.write(first)
        async for chunk in chunks:
            self.write(chunk)
            await self.flush()
        self.finish()

    async def remove_file(self, loc: Location) -> None:
        await ws_ops.remove_file(self.ctx, loc, self.base_version())

    async def sweep(self, space: str) -> int:
        return await ws_ops.sweep(self.ctx, space)


# ---- the sandbox's side (its agent token) -----------------------------------------


class AgentWorkspaceBase(WorkspaceBase):
    async def agent_location(self, raw: str) -> tuple[AgentRecord, Location]:
        agent = await self.require_agent()
        try:
            loc = locate(raw, agent.id)
        except PathError as e:
            raise bad("path", str(e)) from None
        if loc.area == "group" and loc.group not in await self.groups_of(agent.owner):
            raise ApiError(404, "not_found", f"no group workspace {loc.group!r}")
        return agent, loc


class AgentManifestHandler(AgentWorkspaceBase):
    """GET api/agent/workspace: every file the agent may see (ETag'd)."""

    async def get(self) -> None:
        agent = await self.require_agent()
        groups = await self.groups_of(agent.owner)
        own = f"agent:{agent.id}"
        spaces = [own, "public", *(f"group:{g}" for g in groups)]
        generations = await self.ctx.store.workspace.generations(spaces)
        etag = (
            '"'
            + hashlib.sha256(
                json.dumps([[s, generations.get(s, 0)] for s in spaces]).encode()
            ).hexdigest()[:32]
            + '"'
        )
        if self.request.headers.get("If-None-Match") == etag:
            self.set_status(304)
            return self.finish()
        await self.sweep(own)
        files = []
        for space in spaces:
            for row in await self.ctx.store.workspace.list(space):
                kind, _, name = space.partition(":")
                path = {"agent": row["path"], "public": f"public/{row['path']}"}.get(
                    kind, f"group/{name}/{row['path']}"
                )
                model = file_model(row, path)
                model["url"] = self.ctx.objects.presign_get(
                    object_key(space, row["sha256"]), URL_SECONDS
                )
                files.append(model)
        quota = await self.quota_of(own, agent)
        self.set_header("ETag", etag)
        self.write_json(
            {
                "groups": groups,
                "files": files,
                "usage": usage_model(await self.ctx.store.workspace.usage(own), quota),
            }
        )


class AgentBatchHandler(AgentWorkspaceBase):
    """POST api/agent/workspace/batch {"files": [{"path", "version"}, ...]}: the
    files' bytes one after the other, in the order asked (the manifest gave their
    sizes and sha256). One request instead of one per file: a sandbox's pull of many
    small files is otherwise all request overhead. 409 if any file is no longer at
    the version asked (the sandbox then fetches those one by one)."""

    async def post(self) -> None:
        agent = await self.require_agent()
        body = self.json_body()
        wanted = body.get("files")
        if not isinstance(wanted, list) or not 0 < len(wanted) <= BATCH_MAX_FILES:
            raise bad("files", f"expected 1-{BATCH_MAX_FILES} files")
        groups = set(await self.groups_of(agent.owner))
        locations = []
        for item in wanted:
            version = whole_number(item.get("version")) if isinstance(item, dict) else None
            if version is None:
                raise bad("files", 'expected {"path", "version"} objects')
            try:
                loc = locate(item.get("path"), agent.id)
            except PathError as e:
                raise bad("files", str(e)) from None
            if loc.area == "group" and loc.group not in groups:
                raise ApiError(404, "not_found", f"no group workspace {loc.group!r}")
            locations.append((loc, version))
        keys = [(loc.space, loc.path) for loc, _ in locations]
        rows = await self.ctx.store.workspace.get_many(keys)
        plan = []
        for loc, version in locations:
            row = rows.get((loc.space, loc.path))
            if row is None or row["version"] != version:
                raise ApiError(409, "conflict", f"{loc.workspace_path} changed; fetch it alone")
            plan.append((object_key(loc.space, row["sha256"]), row["size"]))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(sum(size for _, size in plan)))
        try:
            for group in read_groups(plan):
                if len(group) == 1 and group[0][1] > SMALL_OBJECT_BYTES:
                    async for chunk in self.ctx.objects.stream(group[0][0]):
                        self.write(chunk)
                        await self.flush()  # a MiB at a time to the socket
                else:
                    for data in await self.ctx.objects.get_many([key for key, _ in group]):
                        self.write(data)
                    await self.flush()
        except ObjectNotFound as e:
            # Headers are out: all the client can be told is a short body.
            self.log.error("workspace object %s is missing from the store", e)
            self.request.connection.close()
            return
        self.finish()


SMALL_OBJECT_BYTES = 1 << 20  # read whole, several at a time; bigger ones are streamed
READ_GROUP_BYTES = 4 << 20


def read_groups(plan: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The batch's objects in order, as groups to read at once: runs of small ones
    up to READ_GROUP_BYTES together, each big one alone."""
    groups: list[list[tuple[str, int]]] = []
    run: list[tuple[str, int]] = []
    run_bytes = 0
    for key, size in plan:
        if size > SMALL_OBJECT_BYTES:
            if run:
                groups.append(run)
                run, run_bytes = [], 0
            groups.append([(key, size)])
            continue
        if run and run_bytes + size > READ_GROUP_BYTES:
            groups.append(run)
            run, run_bytes = [], 0
        run.append((key, size))
        run_bytes += size
    if run:
        groups.append(run)
    return groups


@web.stream_request_body
class AgentFileHandler(AgentWorkspaceBase):
    """GET, PUT, DELETE api/agent/workspace/files/<workspace path>."""

    async def prepare(self) -> None:
        if self.request.method != "PUT":
            return await super().prepare()
        # The agent's token and the path are checked before the body is read.
        await self.authenticate()
        self._target = await self.agent_location(self.path_args[0])
        if self._target[1].area == "public":
            raise ApiError(403, "forbidden", "the public workspace is read-only for agents")
        self.begin_upload()

    async def get(self, raw: str) -> None:
        _, loc = await self.agent_location(raw)
        await self.send_file(loc)

    async def put(self, raw: str) -> None:
        agent, loc = self._target
        row = await self.store_upload(loc, f"{agent.owner}/{agent.slug}", agent, sandbox=True)
        self.write_json(file_model(row, loc.workspace_path))

    async def delete(self, raw: str) -> None:
        _, loc = await self.agent_location(raw)
        if loc.area == "public":
            raise ApiError(403, "forbidden", "the public workspace is read-only for agents")
        await self.remove_file(loc)
        self.set_status(204)
        self.finish()


# ---- users' side --------------------------------------------------------------------


class UserWorkspaceBase(WorkspaceBase):
    async def space_of(self, kind: str, name: str | None, slug: str | None, write: bool):
        """(space, agent or None, path prefix in workspace paths) the caller may use.

        Persons read and write their agents' spaces and their groups' (admins: all);
        administrators write the public tree. An agent's sandbox may read its own
        agent's, the public and its owner's groups' spaces here (its sidebar); it
        writes only through the sync API (api/agent/workspace), under its rules."""
        what = "change workspace files" if write else "read workspace files"
        if kind == "agent":
            assert name is not None and slug is not None
            agent = await self.get_agent(name, slug, what, agent_may=not write)
            return f"agent:{agent.id}", agent, ""
        ident = self.identity
        if ident.kind != "agent" or write:
            self.require_person(what)
        if kind == "public":
            if write and not ident.admin:
                raise ApiError(403, "forbidden", "only administrators change the public workspace")
            return "public", None, "public/"
        assert name is not None
        if not ident.admin and name not in await self.groups_of(ident.name):
            raise ApiError(404, "not_found", f"no group workspace {name!r}")
        return f"group:{name}", None, f"group/{name}/"

    async def put_file(self, loc: Location, agent: AgentRecord | None) -> dict[str, Any]:
        """Store the upload at ``loc`` (operations.workspace.put_file)."""
        return await ws_ops.put_file(
            self.ctx,
            self.actor,
            self.received(),
            loc,
            agent,
            base_version=self.base_version(),
            mtime=_mtime(self.request.headers.get("X-Sac-Mtime")),
        )

    async def delete_file(self, loc: Location) -> None:
        await ws_ops.delete_file(self.ctx, self.actor, loc, self.base_version())

    def location(self, space: str, raw: str, agent: AgentRecord | None) -> Location:
        return ws_ops.location(space, raw, agent)


class UserListingHandler(UserWorkspaceBase):
    """GET: files and usage of an agent's, the public or a group's workspace."""

    def initialize(self, kind: str) -> None:
        self.kind = kind

    async def get(self, *args: str) -> None:
        name, slug = [*args, None, None][:2]
        space, agent, prefix = await self.space_of(self.kind, name, slug, write=False)
        sub = self.get_argument("prefix", "")
        rows = await self.ctx.store.workspace.list(space, sub)
        quota = await self.quota_of(space, agent)
        self.write_json(
            {
                "files": [file_model(r, prefix + r["path"]) for r in rows],
                "usage": usage_model(await self.ctx.store.workspace.usage(space), quota),
            }
        )


@web.stream_request_body
class UserFileHandler(UserWorkspaceBase):
    """GET, PUT, DELETE of one file of an agent's, the public or a group's workspace."""

    def initialize(self, kind: str) -> None:
        self.kind = kind

    def _split(self, args: tuple[str, ...]) -> tuple[str | None, str | None, str]:
        if self.kind == "agent":
            return args[0], args[1], args[2]
        if self.kind == "group":
            return args[0], None, args[1]
        return None, None, args[0]

    async def prepare(self) -> None:
        if self.request.method != "PUT":
            return await super().prepare()
        await self.authenticate()
        name, slug, _ = self._split(tuple(self.path_args))
        # Who may write is settled before the body is read.
        await self.space_of(self.kind, name, slug, write=True)
        self.begin_upload()

    async def get(self, *args: str) -> None:
        name, slug, raw = self._split(args)
        space, agent, _ = await self.space_of(self.kind, name, slug, write=False)
        await self.send_file(self.location(space, raw, agent))

    async def put(self, *args: str) -> None:
        name, slug, raw = self._split(args)
        space, agent, _ = await self.space_of(self.kind, name, slug, write=True)
        loc = self.location(space, raw, agent)
        row = await self.put_file(loc, agent)
        self.write_json(file_model(row, loc.workspace_path))

    async def delete(self, *args: str) -> None:
        name, slug, raw = self._split(args)
        space, agent, _ = await self.space_of(self.kind, name, slug, write=True)
        await self.delete_file(self.location(space, raw, agent))
        self.set_status(204)
        self.finish()


class GroupQuotaHandler(BaseHandler):
    """GET (members, admins) and PUT (admins) a group's quota overrides."""

    async def get(self, group: str) -> None:
        # Members (and their agents' sidebars) see their group's quota.
        ident = self.require_signed_in()
        if not ident.admin:
            if ident.kind != "agent":
                self.require_person("read a group's quota")
            if group not in await self.groups_of(ident.name):
                raise ApiError(404, "not_found", f"no group workspace {group!r}")
        await self._write(group)

    async def put(self, group: str) -> None:
        self.require_admin()
        await replace_group_quota(self.ctx, self.actor, group, self.json_body())
        await self._write(group)

    async def _write(self, group: str) -> None:
        system = await self.ctx.store.settings.get("system")
        overrides = await self.ctx.store.settings.get("group", group)
        resolved = sac_settings.resolve_group(system, overrides)
        self.write_json(
            {
                "group": group,
                "overrides": overrides,
                "resolved": {k: resolved[k] for k in ("group_quota_bytes", "group_quota_files")},
            }
        )


def routes(prefix: str) -> list[tuple[str, Any, dict[str, Any]] | tuple[str, Any]]:
    api = prefix + "api/"
    agent = api + f"users/{USER}/agents/{SLUG}/workspace"
    return [
        (api + "agent/workspace", AgentManifestHandler),
        (api + "agent/workspace/batch", AgentBatchHandler),
        (api + f"agent/workspace/files/{FILE}", AgentFileHandler),
        (agent, UserListingHandler, {"kind": "agent"}),
        (agent + f"/files/{FILE}", UserFileHandler, {"kind": "agent"}),
        (api + "workspace/public", UserListingHandler, {"kind": "public"}),
        (api + f"workspace/public/files/{FILE}", UserFileHandler, {"kind": "public"}),
        (api + f"groups/{GROUP}/workspace", UserListingHandler, {"kind": "group"}),
        (api + f"groups/{GROUP}/workspace/files/{FILE}", UserFileHandler, {"kind": "group"}),
        (api + f"groups/{GROUP}/workspace/quota", GroupQuotaHandler),
    ]
