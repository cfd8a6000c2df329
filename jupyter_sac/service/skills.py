"""The skill marketplace API: skills in four tiers, forks, installs into agents.

Thin handlers over ``store.skills`` and the pure rules in ``jupyter_sac.skills``
(model, parameters, visibility). A skill the caller may not read answers 404,
as if it did not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tarfile
import time
import unicodedata
import zipfile
import zlib
from pathlib import Path
from typing import Any

from tornado import web

from ..objects import ObjectNotFound
from ..skills import (
    MAX_BUNDLE_BYTES,
    SkillError,
    SkillSpec,
    Viewer,
    build_spec,
    can_edit,
    can_read,
    check_tier,
    load_official_skills,
    pack_bundle,
    read_bundle,
)
from ..store.skills import Bundle, CommandTakenError, SkillExistsError
from .base import BaseHandler
from .errors import ApiError
from .openapi import _op, _path_params, _resp
from .validation import bad, check_fields

log = logging.getLogger("jupyter_sac.skills")

SPEC_FIELDS = {"command", "title", "description", "body", "parameters", "prompt", "tags"}
PAGE = 50
MAX_PAGE = 200


BUNDLE_PREFIX = "skill-bundles/"
# What a damaged or unsupported archive raises from zipfile/tarfile while it is read
# (an encrypted or wrongly checksummed zip member, a name that is not UTF-8...).
ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    UnicodeError,
)
# Bidirectional embedding, override and isolate controls: a name holding one shows
# differently from what it is ("invoice\u202etxt.sh" reads as "invoicehs.txt").
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
OWNER_CACHE_SECONDS = 30
_OWNER_VIEWS: dict[str, tuple[float, tuple[str, list[str], bool]]] = {}


def bundle_key(sha256: str) -> str:
    # Content-addressed: forks and re-uploads of the same files share one object.
    return f"{BUNDLE_PREFIX}{sha256}.tar.gz"


def bundle_model(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row["bundle_sha256"]:
        return None
    return {
        "sha256": row["bundle_sha256"],
        "size": row["bundle_size"],
        "files": row["bundle_files"],
    }


def skill_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "owner": row["owner"] or None,
        **_content(row),
        "visibility": row["visibility"],
        "group": row["group_name"],
        "version": row["version"],
        "parent_id": row["parent_id"],
        "bundle": bundle_model(row),
        "installs": row["installs"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def manifest_entry(row: dict[str, Any]) -> dict[str, Any]:
    """What a sandbox needs to materialise one installed skill."""
    return {
        "id": row["id"],
        **_content(row),
        "version": row["version"],
        "checksum": row["checksum"],
        "bundle": bundle_model(row),
    }


def manifest_etag(rows: list[dict[str, Any]]) -> str:
    # The checksum covers content and bundle; id and command cover installs and renames.
    keys = [(r["id"], r["command"], r["checksum"]) for r in rows]
    return '"' + hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:32] + '"'


def _content(row: dict[str, Any]) -> dict[str, Any]:
    """A stored skill's content fields, as a create body would give them."""
    return {key: row[key] for key in SPEC_FIELDS}


def spec_of(row: dict[str, Any]) -> SkillSpec:
    return build_spec({k: row[k] for k in SPEC_FIELDS - {"body"}}, row["body"])


def check_file_names(files: dict[str, bytes]) -> None:
    """Refuse bundle file names a listing, a terminal or the database cannot show
    faithfully: not UTF-8 (a tar name of raw bytes), control characters, bidi
    controls. (A rule for ``check_bundle``; here until it moves there.)"""
    for name in files:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise SkillError(f"bundle: {name!r}", "file names must be UTF-8") from None
        if any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in name):
            raise SkillError(
                f"bundle: {name!r}", "control and bidirectional characters are not allowed"
            )


async def store_bundle(sac: Any, files: dict[str, bytes]) -> Bundle:
    """Put a checked bundle's canonical archive in the object store (once per content)."""
    packed = await asyncio.to_thread(pack_bundle, files)
    sha = hashlib.sha256(packed).hexdigest()
    if await sac.objects.head(bundle_key(sha)) is None:
        await sac.objects.put(bundle_key(sha), packed, content_type="application/gzip")
    listing = tuple({"name": name, "size": len(files[name])} for name in sorted(files))
    return Bundle(sha, listing)


async def drop_bundle(sac: Any, sha256: str | None) -> None:
    """Delete a bundle object no skill refers to any more."""
    if sha256 and not await sac.store.skills.bundle_used(sha256):
        await sac.objects.delete(bundle_key(sha256))


async def upsert_official(sac: Any, directory: str) -> None:
    """Load the shipped official skills at service start (idempotent)."""
    if not directory:
        log.warning("no official skills folder")
        return
    # Reading the folder happens once at start; a thread keeps the loop free anyway.
    specs = await asyncio.to_thread(load_official_skills, Path(directory))
    bundles = {s.command: await store_bundle(sac, s.files) for s in specs if s.files}
    changed = await sac.store.skills.upsert_official(specs, bundles)
    log.info("official skills: %d shipped, %d new or changed", len(specs), changed)


class SkillBaseHandler(BaseHandler):
    @property
    def viewer(self) -> Viewer:
        ident = self.require_user()
        return Viewer(ident.name, ident.admin, ident.groups, ident.scopes)

    def spec(self, body: dict[str, Any]) -> Any:
        meta = {k: body[k] for k in SPEC_FIELDS - {"body"} if k in body}
        try:
            return build_spec(meta, body.get("body"))
        except SkillError as e:
            raise bad(e.field, e.message) from None

    def tier(self, body: dict[str, Any], default: str = "private") -> tuple[str, str | None]:
        try:
            return check_tier(self.viewer, body.get("visibility", default), body.get("group"))
        except SkillError as e:
            raise ApiError(
                403 if "need" in e.message or "member" in e.message else 400,
                "forbidden" if "need" in e.message or "member" in e.message else "invalid_field",
                f"{e.field}: {e.message}",
                field=e.field,
            ) from None

    async def readable(self, skill_id: str) -> dict[str, Any]:
        row = await self.sac.store.skills.get(int(skill_id)) if skill_id.isdigit() else None
        if row is None or not can_read(row, self.viewer):
            raise ApiError(404, "not_found", "no such skill")
        return row

    async def editable(self, skill_id: str) -> dict[str, Any]:
        row = await self.readable(skill_id)
        if not can_edit(row, self.viewer):
            raise ApiError(403, "forbidden", "only the owner or an administrator may change it")
        return row

    async def create(
        self,
        owner: str,
        spec: Any,
        tier: tuple[str, str | None],
        parent: int | None = None,
        bundle: Bundle | None = None,
    ) -> dict[str, Any]:
        try:
            return await self.sac.store.skills.create(
                owner, spec, *tier, parent_id=parent, bundle=bundle
            )
        except SkillExistsError:
            raise ApiError(
                409, "conflict", f"you already have a skill {spec.command!r}", field="command"
            ) from None


class SkillsHandler(SkillBaseHandler):
    async def get(self) -> None:
        viewer = self.viewer
        tier = self.get_argument("tier", None)
        if tier is not None and tier not in ("official", "public", "group", "private"):
            raise bad("tier", "one of official, public, group, private")
        limit = self.int_arg("limit", PAGE, 1, MAX_PAGE)
        offset = self.int_arg("cursor", 0, 0, 999_999_999)  # the cursor is an offset
        q = self.get_argument("q", None)
        if q is not None and (len(q) > 200 or "\x00" in q):
            raise bad("q", "at most 200 characters")
        rows = await self.sac.store.skills.search(
            me=viewer.name,
            groups=list(viewer.groups),
            admin=viewer.admin,
            text=q,
            tier=tier,
            owner=self.get_argument("owner", None),
            group=self.get_argument("group", None),
            limit=limit + 1,
            offset=offset,
        )
        self.write_json(
            {
                "skills": [skill_model(r) for r in rows[:limit]],
                "next_cursor": str(offset + limit) if len(rows) > limit else None,
            }
        )

    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, SPEC_FIELDS | {"visibility", "group"})
        spec = self.spec(body)
        tier = self.tier(body)
        row = await self.create(self.viewer.name, spec, tier)
        self.write_json(skill_model(row), 201)


class SkillHandler(SkillBaseHandler):
    async def get(self, skill_id: str) -> None:
        self.write_json(skill_model(await self.readable(skill_id)))

    async def patch(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        body = self.json_body()
        check_fields(body, SPEC_FIELDS | {"visibility", "group"})
        if "command" in body and body["command"] != row["command"]:
            raise bad("command", "the command of a skill cannot change (fork it instead)")
        spec = self.spec({**_content(row), **body})
        group = body.get("group", row["group_name"] if "visibility" not in body else None)
        tier = self.tier({"visibility": body.get("visibility", row["visibility"]), "group": group})
        updated = await self.sac.store.skills.update(
            row["id"], spec, *tier, bundle_sha256=row["bundle_sha256"]
        )
        assert updated is not None
        self.write_json(skill_model(updated))

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        await self.sac.store.skills.delete(row["id"])
        await drop_bundle(self.sac, row["bundle_sha256"])
        self.set_status(204)
        self.finish()


class ForkHandler(SkillBaseHandler):
    """POST: a private copy under the caller's name, recording its parent."""

    async def post(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        body = self.json_body() if self.request.body else {}
        check_fields(body, {"command"})
        spec = self.spec({**_content(row), **body})
        forked = await self.create(
            self.viewer.name, spec, ("private", None), parent=row["id"], bundle=Bundle.of(row)
        )
        self.write_json(skill_model(forked), 201)


class AgentSkillsHandler(SkillBaseHandler):
    """GET: skills installed in an agent; POST {"skill_id"}: install one."""

    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug)
        rows = await self.sac.store.skills.installed(agent.id)
        self.write_json({"skills": [skill_model(r) for r in rows]})

    async def post(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug)
        body = self.json_body()
        check_fields(body, {"skill_id"})
        skill_id = body.get("skill_id")
        if not isinstance(skill_id, int) or isinstance(skill_id, bool):
            raise bad("skill_id", "expected a skill id")
        row = await self.readable(str(skill_id))
        try:
            await self.sac.store.skills.install(agent.id, row)
        except CommandTakenError:
            raise ApiError(
                409,
                "conflict",
                f"the agent already has another skill named {row['command']!r}",
                field="skill_id",
            ) from None
        self.write_json(skill_model(row), 201)


class AgentSkillHandler(AgentSkillsHandler):
    async def delete(self, owner: str, slug: str, skill_id: str) -> None:
        agent = await self.get_agent(owner, slug)
        removed = skill_id.isdigit() and await self.sac.store.skills.uninstall(
            agent.id, int(skill_id)
        )
        if not removed:
            raise ApiError(404, "not_found", "that skill is not installed in this agent")
        self.set_status(204)
        self.finish()


@web.stream_request_body
class BundleHandler(SkillBaseHandler):
    """A skill's attachment bundle: GET downloads it, PUT replaces it with an
    uploaded tar/tar.gz/zip (checked entry by entry, stored as a canonical tar.gz),
    DELETE removes it. A bundle change is a new version."""

    def prepare(self) -> None:
        if self.request.method != "PUT":
            super().prepare()  # the JSON body limit; an upload has its own below
        self._chunks: list[bytes] = []
        self._received = 0
        if self.request.method == "PUT":
            declared = self.request.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_BUNDLE_BYTES:
                raise ApiError(413, "too_large", f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")
            self.request.connection.set_max_body_size(MAX_BUNDLE_BYTES + 1)

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= MAX_BUNDLE_BYTES:
            self._chunks.append(chunk)

    async def get(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        if not row["bundle_sha256"]:
            raise ApiError(404, "not_found", "this skill has no bundle")
        name = f"{row['command']}-v{row['version']}.tar.gz"
        await stream_object(self, bundle_key(row["bundle_sha256"]), name)

    async def put(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        if self._received > MAX_BUNDLE_BYTES:
            raise ApiError(413, "too_large", f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")
        data = b"".join(self._chunks)
        if not data:
            raise bad("bundle", "the request body must be a tar, tar.gz or zip archive")
        try:
            files = await asyncio.to_thread(read_bundle, data)
            check_file_names(files)
        except SkillError as e:
            raise ApiError(
                400, "invalid_bundle", f"{e.field}: {e.message}", field="bundle"
            ) from None
        except ARCHIVE_ERRORS as e:
            raise ApiError(
                400,
                "invalid_bundle",
                f"bundle: not a readable tar or zip archive ({e})",
                field="bundle",
            ) from None
        if not files:
            raise bad("bundle", "the archive holds no files (DELETE removes a bundle)")
        bundle = await store_bundle(self.sac, files)
        await self._replace(row, bundle)

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        await self._replace(row, Bundle())

    async def _replace(self, row: dict[str, Any], bundle: Bundle) -> None:
        unused = await self.sac.store.skills.set_bundle(row["id"], spec_of(row), bundle)
        await drop_bundle(self.sac, unused)
        updated = await self.sac.store.skills.get(row["id"])
        if updated is None:  # deleted meanwhile: do not keep the new bundle
            await drop_bundle(self.sac, bundle.sha256)
            raise ApiError(404, "not_found", "no such skill")
        self.write_json(skill_model(updated))


async def stream_object(handler: BaseHandler, key: str, filename: str) -> None:
    try:
        chunks = handler.sac.objects.stream(key)
        first = await anext(chunks)
    except (ObjectNotFound, StopAsyncIteration):
        raise ApiError(404, "not_found", "the bundle is missing from the object store") from None
    handler.set_header("Content-Type", "application/gzip")
    handler.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    handler.write(first)
    async for chunk in chunks:
        handler.write(chunk)
        await handler.flush()
    handler.finish()


class AgentManifestHandler(BaseHandler):
    """GET api/agent/skills (agent token): what the sandbox should have installed.

    Answers 304 to a matching If-None-Match, so polling costs one small query."""

    async def get(self) -> None:
        agent = await self.require_agent()
        rows = await self.sac.store.skills.installed(
            agent.id, visible_to=await owner_view(self.sac, agent.owner)
        )
        etag = manifest_etag(rows)
        self.set_header("ETag", etag)
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        entries = [manifest_entry(r) for r in rows]
        for entry in entries:
            if entry["bundle"]:
                # S3: the sandbox fetches straight from the store, without credentials.
                entry["bundle"]["url"] = self.sac.objects.presign_get(
                    bundle_key(entry["bundle"]["sha256"]), expires=300
                )
        self.write_json({"skills": entries, "etag": etag})


class AgentBundleHandler(BaseHandler):
    """GET api/agent/skills/{id}/bundle (agent token): an installed skill's bundle,
    for stores that cannot presign (the local store)."""

    async def get(self, skill_id: str) -> None:
        agent = await self.require_agent()
        rows = skill_id.isdigit() and await self.sac.store.skills.installed(
            agent.id, visible_to=await owner_view(self.sac, agent.owner), skill_id=int(skill_id)
        )
        if not rows or not rows[0]["bundle_sha256"]:
            raise ApiError(404, "not_found", "no such installed skill with a bundle")
        row = rows[0]
        await stream_object(self, bundle_key(row["bundle_sha256"]), f"{row['command']}.tar.gz")


async def owner_view(sac: Any, owner: str) -> tuple[str, list[str], bool]:
    """(name, groups, admin) of an agent's owner, from the hub, briefly cached: the
    visibility of installed skills follows group membership."""
    cache = _OWNER_VIEWS
    hit = cache.get(owner)
    if hit and time.monotonic() - hit[0] < OWNER_CACHE_SECONDS:
        return hit[1]
    user = await sac.hub.get_user(owner) or {}
    view = (owner, list(user.get("groups") or []), bool(user.get("admin")))
    cache[owner] = (time.monotonic(), view)
    return view


def routes(prefix: str) -> list[tuple[str, Any]]:
    agent = prefix + r"api/users/([^/]+)/agents/([a-z0-9-]+)/skills"
    return [
        (prefix + "api/skills", SkillsHandler),
        (prefix + r"api/skills/([^/]+)", SkillHandler),
        (prefix + r"api/skills/([^/]+)/fork", ForkHandler),
        (prefix + r"api/skills/([^/]+)/bundle", BundleHandler),
        (prefix + "api/agent/skills", AgentManifestHandler),
        (prefix + r"api/agent/skills/([^/]+)/bundle", AgentBundleHandler),
        (agent, AgentSkillsHandler),
        (agent + r"/([^/]+)", AgentSkillHandler),
    ]


def openapi_paths() -> dict[str, Any]:
    sid = _path_params("id")
    ua = _path_params("user", "slug")
    obj = {"type": "object"}
    return {
        "/api/skills": {
            "get": _op("Skills I may see (?q=&tier=&owner=&group=&limit=&cursor=)",
                       {"200": _resp("skills")}, 400),
            "post": _op("Create a skill", {"201": _resp("created")}, 400, 403, 409, body=obj),
        },
        "/api/skills/{id}": {
            "get": _op("One skill", {"200": _resp("skill")}, 404, params=sid),
            "patch": _op("Change a skill (a content change is a new version)",
                         {"200": _resp("skill")}, 400, 403, 404, body=obj, params=sid),
            "delete": _op("Delete a skill (and its installs)", {"204": _resp("deleted")},
                          403, 404, params=sid),
        },
        "/api/skills/{id}/fork": {
            "post": _op("Fork a skill into a private copy", {"201": _resp("created")},
                        400, 404, 409, params=sid),
        },
        "/api/skills/{id}/bundle": {
            "get": _op("Download a skill's bundle (tar.gz)", {"200": _resp("the archive")},
                       404, params=sid),
            "put": _op("Replace a skill's bundle with a tar, tar.gz or zip body",
                       {"200": _resp("skill")}, 400, 403, 404, 413, params=sid,
                       body={"type": "string", "format": "binary"}),
            "delete": _op("Remove a skill's bundle", {"200": _resp("skill")}, 403, 404,
                          params=sid),
        },
        "/api/agent/skills": {
            "get": _op("The calling agent's installed skills, for sync (agent token; ETag)",
                       {"200": _resp("manifest"), "304": _resp("unchanged")}, 401),
        },
        "/api/agent/skills/{id}/bundle": {
            "get": _op("An installed skill's bundle (agent token)",
                       {"200": _resp("the archive")}, 401, 404, params=sid),
        },
        "/api/users/{user}/agents/{slug}/skills": {
            "get": _op("Skills installed in an agent", {"200": _resp("skills")}, 404, params=ua),
            "post": _op("Install a skill ({skill_id})", {"201": _resp("installed")},
                        400, 404, 409, body=obj, params=ua),
        },
        "/api/users/{user}/agents/{slug}/skills/{id}": {
            "delete": _op("Uninstall a skill", {"204": _resp("removed")}, 404,
                          params=_path_params("user", "slug", "id")),
        },
    }  # fmt: skip
