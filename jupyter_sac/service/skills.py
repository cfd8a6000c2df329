"""The skill marketplace API: skills in four tiers, forks, installs into agents.

Thin handlers over ``store.skills`` and the pure rules in ``jupyter_sac.skills``
(model, parameters, visibility). A skill the caller may not read answers 404,
as if it did not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
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
        **content_fields(row),
        "visibility": row["visibility"],
        "group": row["group_name"],
        "version": row["version"],
        "parent_id": row["parent_id"],
        "bundle": bundle_model(row),
        "installs": row["installs"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def skill_snapshot(row: dict[str, Any]) -> dict[str, Any]:
    """A skill as the audit log records it (its content, tier, version and bundle)."""
    model = skill_model(row)
    return {k: v for k, v in model.items() if k not in ("installs", "created_at", "updated_at")}


def content_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A stored skill's content fields, as a create body would give them."""
    return {key: row[key] for key in SPEC_FIELDS}


def spec_of(row: dict[str, Any]) -> SkillSpec:
    return build_spec({k: row[k] for k in SPEC_FIELDS - {"body"}}, row["body"])


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

    async def audit_skill(
        self, verb: str, before: dict[str, Any] | None, after: dict[str, Any] | None, conn: Any
    ) -> None:
        """Log a change to a skill if it is curation of an official skill or a change to
        someone else's skill (a user's changes to their own skills are not logged)."""
        rows = [r for r in (before, after) if r is not None]
        if any(r["visibility"] == "official" for r in rows):
            action = f"skill.official.{verb}"
        elif any(r["owner"] != self.viewer.name for r in rows):
            action = f"skill.{verb}"
        else:
            return
        await self.audit(
            action,
            str(rows[0]["id"]),
            target_user=rows[0]["owner"] or None,
            before=skill_snapshot(before) if before else None,
            after=skill_snapshot(after) if after else None,
            conn=conn,
        )

    async def create(
        self,
        owner: str,
        spec: Any,
        tier: tuple[str, str | None],
        parent: int | None = None,
        bundle: Bundle | None = None,
        conn: Any = None,
    ) -> dict[str, Any]:
        try:
            return await self.sac.store.skills.create(
                owner, spec, *tier, parent_id=parent, bundle=bundle, conn=conn
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
        async with self.sac.store.transaction() as conn:
            row = await self.create(self.viewer.name, spec, tier, conn=conn)
            await self.audit_skill("create", None, row, conn)
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
        spec = self.spec({**content_fields(row), **body})
        group = body.get("group", row["group_name"] if "visibility" not in body else None)
        tier = self.tier({"visibility": body.get("visibility", row["visibility"]), "group": group})
        skills = self.sac.store.skills
        async with self.sac.store.transaction() as conn:
            current = await skills.get(row["id"], conn=conn, lock=True)
            if current is None:
                raise ApiError(404, "not_found", "no such skill")
            updated = await skills.update(
                row["id"], spec, *tier, bundle_sha256=current["bundle_sha256"], conn=conn
            )
            await self.audit_skill("update", current, updated, conn)
        assert updated is not None
        self.write_json(skill_model(updated))

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        async with self.sac.store.transaction() as conn:
            current = await self.sac.store.skills.get(row["id"], conn=conn, lock=True)
            if current is None:
                raise ApiError(404, "not_found", "no such skill")
            await self.sac.store.skills.delete(row["id"], conn=conn)
            await self.audit_skill("delete", current, None, conn)
        await drop_bundle(self.sac, current["bundle_sha256"])
        self.set_status(204)
        self.finish()


class ForkHandler(SkillBaseHandler):
    """POST: a private copy under the caller's name, recording its parent."""

    async def post(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        body = self.json_body() if self.request.body else {}
        check_fields(body, {"command"})
        spec = self.spec({**content_fields(row), **body})
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
            async with self.sac.store.transaction() as conn:
                await self.sac.store.skills.install(agent.id, row, conn=conn)
                if owner != self.viewer.name:
                    installed = {"skill_id": row["id"], "command": row["command"]}
                    await self.audit(
                        "agent.skill.install", slug, target_user=owner, after=installed, conn=conn
                    )
        except CommandTakenError:
            raise ApiError(
                409,
                "conflict",
                f"the agent already has another skill named {row['command']!r}",
                field="skill_id",
            ) from None
        self.write_json(skill_model(await self.readable(str(skill_id))), 201)


class AgentSkillHandler(AgentSkillsHandler):
    async def delete(self, owner: str, slug: str, skill_id: str) -> None:
        agent = await self.get_agent(owner, slug)
        async with self.sac.store.transaction() as conn:
            removed = skill_id.isdigit() and await self.sac.store.skills.uninstall(
                agent.id, int(skill_id), conn=conn
            )
            if removed and owner != self.viewer.name:
                await self.audit(
                    "agent.skill.uninstall",
                    slug,
                    target_user=owner,
                    before={"skill_id": int(skill_id)},
                    conn=conn,
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

    async def prepare(self) -> None:
        if self.request.method != "PUT":
            return super().prepare()
        # Who may upload is settled before the body is read: a caller who may not
        # change the skill is answered 401/403/404 at once, and the service reads
        # (and drops) at most SERVER_BODY_BYTES of what they send.
        self._row = await self.editable(self.path_args[0])
        self._chunks: list[bytes] = []
        if not self.accept_body(MAX_BUNDLE_BYTES, self._chunks.append):
            raise _bundle_too_large()

    async def get(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        if not row["bundle_sha256"]:
            raise ApiError(404, "not_found", "this skill has no bundle")
        name = f"{row['command']}-v{row['version']}.tar.gz"
        await stream_object(self, bundle_key(row["bundle_sha256"]), name)

    async def put(self, skill_id: str) -> None:
        row = self._row
        if self.body_too_large:
            raise _bundle_too_large()
        data = b"".join(self._chunks)
        self._chunks.clear()
        if not data:
            raise bad("bundle", "the request body must be a tar, tar.gz or zip archive")
        try:
            files = await asyncio.to_thread(read_bundle, data)
        except SkillError as e:
            raise ApiError(
                400, "invalid_bundle", f"{e.field}: {e.message}", field="bundle"
            ) from None
        if not files:
            raise bad("bundle", "the archive holds no files (DELETE removes a bundle)")
        bundle = await store_bundle(self.sac, files)
        try:
            await self._replace(row, bundle)
        except Exception:
            # The object went in first; without its row it would be an orphan.
            await drop_bundle(self.sac, bundle.sha256)
            raise

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        await self._replace(row, Bundle())

    async def _replace(self, row: dict[str, Any], bundle: Bundle) -> None:
        skills = self.sac.store.skills
        unused = updated = None
        async with self.sac.store.transaction() as conn:
            current = await skills.get(row["id"], conn=conn, lock=True)
            if current is not None:
                unused = await skills.set_bundle(row["id"], spec_of(current), bundle, conn=conn)
                updated = await skills.get(row["id"], conn=conn)
                verb = "bundle.replace" if bundle.sha256 else "bundle.delete"
                await self.audit_skill(verb, current, updated, conn)
        # Objects go only once the rows that stopped using them are committed.
        await drop_bundle(self.sac, unused)
        if updated is None:  # deleted meanwhile: do not keep the new bundle
            await drop_bundle(self.sac, bundle.sha256)
            raise ApiError(404, "not_found", "no such skill")
        self.write_json(skill_model(updated))


def _bundle_too_large() -> ApiError:
    return ApiError(413, "too_large", f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")


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


def routes(prefix: str) -> list[tuple[str, Any]]:
    agent = prefix + r"api/users/([^/]+)/agents/([a-z0-9-]+)/skills"
    return [
        (prefix + "api/skills", SkillsHandler),
        (prefix + r"api/skills/([^/]+)", SkillHandler),
        (prefix + r"api/skills/([^/]+)/fork", ForkHandler),
        (prefix + r"api/skills/([^/]+)/bundle", BundleHandler),
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
