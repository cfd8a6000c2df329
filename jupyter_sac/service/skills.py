"""The skill marketplace API: skills in four tiers, forks, installs into agents.

Thin handlers over ``store.skills`` and the pure rules in ``jupyter_sac.rules.skills``
(model, parameters, visibility). A skill the caller may not read answers 404,
as if it did not exist.

Installs are pinned: an agent runs the version its installer installed (or last
updated to), whoever edits the skill afterwards, and the installed-skills listing
says when a newer version exists. Moving the pin is the installer's explicit
``POST .../skills/{id}/update``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from tornado import web

from ..errors import ApiError
from ..objects import ObjectNotFound
from ..rules.skills import (
    MAX_BUNDLE_BYTES,
    SkillError,
    SkillSpec,
    Viewer,
    build_spec,
    can_read,
    load_official_skills,
    read_bundle,
)
from ..store.skills import (
    Bundle,
    CommandTakenError,
    SkillGoneError,
    VersionChangedError,
)
from .base import BaseHandler
from .operations import skills as ops
from .operations.context import ServiceContext
from .operations.skills import (
    SPEC_FIELDS,
    bundle_key,
    content_fields,
    drop_bundle,
    drop_bundles,
    skill_model,
    store_bundle,
)
from .routes import NAME, SLUG, USER
from .validation import bad, path_id, whole_number

log = logging.getLogger("jupyter_sac.rules.skills")

PAGE = 50
MAX_PAGE = 200


def installed_model(row: dict[str, Any], available: bool) -> dict[str, Any]:
    """An installed skill as its agent has it: the pinned version's content, and
    whether a newer version exists. ``available``: the agent's owner may still read
    the skill (else it is not in the sandbox, and no newer version is announced:
    that would tell them about a skill they may no longer see)."""
    latest = row["latest_version"] if available else None
    return {
        **skill_model(row),
        "installed_version": row["version"],
        "latest_version": latest,
        "update_available": latest is not None and latest > row["version"],
        "checksum": row["checksum"],
        "available": available,
        "installed_at": row["installed_at"].isoformat(),
    }


def spec_of(row: dict[str, Any]) -> SkillSpec:
    return build_spec({k: row[k] for k in SPEC_FIELDS - {"body"}}, row["body"])


# How long the owner's groups and admin flag (from the hub) are reused.
OWNER_CACHE_SECONDS = 30
_OWNER_VIEWS: dict[str, tuple[float, tuple[str, list[str], bool]]] = {}


async def owner_view(ctx: ServiceContext, owner: str) -> tuple[str, list[str], bool]:
    """(name, groups, admin) of an agent's owner, from the hub, briefly cached: the
    visibility of installed skills follows group membership."""
    cache = _OWNER_VIEWS
    hit = cache.get(owner)
    if hit and time.monotonic() - hit[0] < OWNER_CACHE_SECONDS:
        return hit[1]
    user = await ctx.hub.get_user(owner) or {}
    view = (owner, list(user.get("groups") or []), bool(user.get("admin")))
    cache[owner] = (time.monotonic(), view)
    return view


async def upsert_official(ctx: ServiceContext, directory: str) -> None:
    """Load the shipped official skills at service start (idempotent)."""
    if not directory:
        log.warning("no official skills folder")
        return
    # Reading the folder happens once at start; a thread keeps the loop free anyway.
    specs = await asyncio.to_thread(load_official_skills, Path(directory))
    bundles = {s.command: await store_bundle(ctx, s.files) for s in specs if s.files}
    # A changed official skill is a new version: agents keep the version they have
    # and are offered the new one.
    changed, unused = await ctx.store.skills.upsert_official(specs, bundles)
    await drop_bundles(ctx, unused)
    log.info("official skills: %d shipped, %d new or changed", len(specs), changed)


class SkillBaseHandler(BaseHandler):
    _viewer: Viewer | None = None

    async def prepare(self) -> None:
        await super().prepare()
        await self.settle_viewer()

    async def settle_viewer(self) -> None:
        """An agent's sandbox sees the marketplace as its owner does: their groups
        come from the hub (an agent token carries none)."""
        if self.signed_in and self.identity.kind == "agent":
            ident = self.identity
            self._viewer = Viewer(ident.name, False, tuple(await self.groups_of(ident.name)))

    @property
    def viewer(self) -> Viewer:
        if self._viewer is not None:
            return self._viewer
        return ops.person_viewer(self.require_signed_in())

    def require_author(
        self, tier: tuple[str, str | None], before: dict[str, Any] | None = None
    ) -> None:
        ops.require_author(self.actor, tier, before)

    def spec(self, body: dict[str, Any]) -> SkillSpec:
        return ops.spec_from(body)

    def tier(self, body: dict[str, Any], default: str = "private") -> tuple[str, str | None]:
        return ops.tier_from(self.viewer, body, default)

    async def readable(self, skill_id: str) -> dict[str, Any]:
        return await ops.readable(self.ctx, self.viewer, skill_id)

    async def editable(self, skill_id: str) -> dict[str, Any]:
        return await ops.editable(self.ctx, self.viewer, skill_id)

    async def audit_skill(
        self, verb: str, before: dict[str, Any] | None, after: dict[str, Any] | None, conn: Any
    ) -> None:
        await ops.audit_skill(self.ctx, self.actor, self.viewer, verb, before, after, conn)

    async def create(
        self,
        owner: str,
        spec: SkillSpec,
        tier: tuple[str, str | None],
        parent: int | None = None,
        bundle: Bundle | None = None,
        conn: Any = None,
    ) -> dict[str, Any]:
        return await ops.create_skill(
            ctx=self.ctx, owner=owner, spec=spec, tier=tier, parent=parent, bundle=bundle, conn=conn
        )

    def may_author(self) -> None:
        """Checked before a body is read: persons and agents' sandboxes author skills
        (the sandboxes only private ones, see require_author); nobody else does."""
        ident = self.identity
        if not (ident.person or ident.kind == "agent"):
            self.require_person("author skills")


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
        rows = await self.ctx.store.skills.search(
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
        self.may_author()
        body = self.json_body()
        spec = self.spec(body)
        tier = self.tier(body)
        self.require_author(tier)
        async with self.ctx.store.transaction() as conn:
            row = await self.create(self.viewer.name, spec, tier, conn=conn)
            await self.audit_skill("create", None, row, conn)
        self.write_json(skill_model(row), 201)


class SkillHandler(SkillBaseHandler):
    async def get(self, skill_id: str) -> None:
        self.write_json(skill_model(await self.readable(skill_id)))

    async def patch(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        # Who may author is settled before the body is read (docs/security.md).
        self.may_author()
        if row["visibility"] != "private" and self.identity.kind == "agent":
            self.require_author((row["visibility"], row["group_name"]), row)
        updated = await ops.change_skill(self.ctx, self.actor, self.viewer, row, self.json_body())
        self.write_json(skill_model(updated))

    async def delete(self, skill_id: str) -> None:
        await ops.delete_skill(self.ctx, self.actor, self.viewer, await self.editable(skill_id))
        self.set_status(204)
        self.finish()


class ForkHandler(SkillBaseHandler):
    """POST: a private copy under the caller's name, recording its parent."""

    async def post(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        self.require_author(("private", None))
        body = self.json_body() if self.request.body else {}
        spec = self.spec({**content_fields(row), **body})
        forked = await self.create(
            self.viewer.name, spec, ("private", None), parent=row["id"], bundle=Bundle.of(row)
        )
        self.write_json(skill_model(forked), 201)


class AgentSkillsHandler(SkillBaseHandler):
    """GET: skills installed in an agent, as pinned; POST {"skill_id"}: install one
    (its current version)."""

    async def installed_models(
        self, agent: Any, skill_id: int | None = None
    ) -> list[dict[str, Any]]:
        rows = await self.ctx.store.skills.installed(agent.id, skill_id=skill_id)
        # Readable by the agent's owner (not the caller, who may be an admin): that is
        # what decides whether the skill reaches the sandbox.
        if agent.owner == self.viewer.name:
            reader = self.viewer
        else:
            name, groups, admin = await owner_view(self.ctx, agent.owner)
            reader = Viewer(name, admin, tuple(groups))
        return [installed_model(r, can_read(r, reader)) for r in rows]

    async def installed_model(self, agent: Any, skill_id: int) -> dict[str, Any]:
        found = await self.installed_models(agent, skill_id)
        if not found:
            raise ApiError(404, "not_found", "that skill is not installed in this agent")
        return found[0]

    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(
            owner, slug, "read installed skills", driver_may=True, agent_may=True
        )
        self.write_json({"skills": await self.installed_models(agent)})

    async def post(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "install skills", agent_may=True)
        body = self.json_body()
        skill_id = whole_number(body.get("skill_id"))
        if skill_id is None:
            raise bad("skill_id", "expected a skill id")
        row = await self.readable(str(skill_id))
        skills = self.ctx.store.skills
        try:
            async with self.ctx.store.transaction() as conn:
                await skills.install(agent.id, row, conn=conn)
                if owner != self.viewer.name:
                    pinned = await skills.installed(agent.id, skill_id=row["id"], conn=conn)
                    installed = {
                        "skill_id": row["id"],
                        "command": row["command"],
                        "version": pinned[0]["version"],
                    }
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
        except SkillGoneError:
            raise ApiError(404, "not_found", "no such skill") from None
        self.write_json(await self.installed_model(agent, row["id"]), 201)


class AgentSkillHandler(AgentSkillsHandler):
    """GET: one skill installed in an agent, as pinned; DELETE: uninstall it."""

    async def get(self, owner: str, slug: str, skill_id: str) -> None:  # type: ignore[override]
        agent = await self.get_agent(
            owner, slug, "read installed skills", driver_may=True, agent_may=True
        )
        sid = path_id(skill_id)
        if sid is None:
            raise ApiError(404, "not_found", "that skill is not installed in this agent")
        self.write_json(await self.installed_model(agent, sid))

    post = web.RequestHandler.post  # type: ignore[assignment]

    async def delete(self, owner: str, slug: str, skill_id: str) -> None:
        agent = await self.get_agent(owner, slug, "uninstall skills", agent_may=True)
        unused: list[str] = []
        sid = path_id(skill_id)
        async with self.ctx.store.transaction() as conn:
            removed = sid is not None and await self.ctx.store.skills.uninstall(
                agent.id, sid, conn=conn
            )
            if removed:
                # The version it pinned may have been the last pin of an old version.
                unused = await self.ctx.store.skills.prune_versions(sid, conn=conn)
            if removed and owner != self.viewer.name:
                await self.audit(
                    "agent.skill.uninstall",
                    slug,
                    target_user=owner,
                    before={"skill_id": sid},
                    conn=conn,
                )
        if not removed:
            raise ApiError(404, "not_found", "that skill is not installed in this agent")
        await drop_bundles(self.ctx, unused)
        self.set_status(204)
        self.finish()


class AgentSkillUpdateHandler(AgentSkillsHandler):
    """POST {"version"?}: move an installed skill's pin to the skill's latest version.

    Nothing else moves a pin: not the owner's edits, not a package upgrade of an
    official skill, not installing it again. ``version`` (optional) is the version
    the installer was shown; if the skill has moved on since, the answer is 409
    ``version_changed`` and nothing changes, so what lands is what they looked at."""

    get = web.RequestHandler.get  # type: ignore[assignment]

    async def post(self, owner: str, slug: str, skill_id: str) -> None:  # type: ignore[override]
        # Like installing (an agent's sandbox may update its own agent's skills: it can
        # write skill files itself anyway); drivers may not change another agent.
        agent = await self.get_agent(owner, slug, "update installed skills", agent_may=True)
        body = self.json_body() if self.request.body else {}
        expected = body.get("version")
        if expected is not None:
            expected = whole_number(expected)
            if expected is None or expected < 1:
                raise bad("version", "expected a version number")
        # Updating is installing the newer version: the caller must be able to read it.
        row = await self.readable(skill_id)
        skills = self.ctx.store.skills
        unused: list[str] = []
        try:
            async with self.ctx.store.transaction() as conn:
                moved = await skills.update_install(agent.id, row["id"], expected, conn=conn)
                if moved is None:
                    raise ApiError(404, "not_found", "that skill is not installed in this agent")
                before, after = moved
                if before != after:
                    unused = await skills.prune_versions(row["id"], conn=conn)
                    if owner != self.viewer.name:
                        pin = {"skill_id": row["id"], "command": row["command"]}
                        await self.audit(
                            "agent.skill.update",
                            slug,
                            target_user=owner,
                            before={**pin, "version": before},
                            after={**pin, "version": after},
                            conn=conn,
                        )
        except VersionChangedError as e:
            raise ApiError(
                409,
                "version_changed",
                f"the skill is at version {e.latest} now, not {expected}: look at it and"
                " update again",
                field="version",
            ) from None
        await drop_bundles(self.ctx, unused)
        self.write_json(await self.installed_model(agent, row["id"]))


@web.stream_request_body
class BundleHandler(SkillBaseHandler):
    """A skill's attachment bundle: GET downloads it, PUT replaces it with an
    uploaded tar/tar.gz/zip (checked entry by entry, stored as a canonical tar.gz),
    DELETE removes it. A bundle change is a new version."""

    def upload_limit(self) -> int:
        return MAX_BUNDLE_BYTES

    async def prepare(self) -> None:
        if self.request.method != "PUT":
            return await super().prepare()
        # Who may upload is settled before the body is read: a caller who may not
        # change the skill is answered 401/403/404 at once, and the service reads
        # (and drops) at most SERVER_BODY_BYTES of what they send.
        await self.authenticate()
        await self.settle_viewer()
        self._row = await self.editable(self.path_args[0])
        self.require_author((self._row["visibility"], self._row["group_name"]), self._row)
        self._chunks: list[bytes] = []
        if not self.accept_body(self._chunks.append):
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
        bundle = await store_bundle(self.ctx, files)
        try:
            await self._replace(row, bundle)
        except Exception:
            # The object went in first; without its row it would be an orphan.
            await drop_bundle(self.ctx, bundle.sha256)
            raise

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        self.require_author((row["visibility"], row["group_name"]), row)
        await self._replace(row, Bundle())

    async def _replace(self, row: dict[str, Any], bundle: Bundle) -> None:
        skills = self.ctx.store.skills
        updated = None
        unused: list[str] = []
        async with self.ctx.store.transaction() as conn:
            current = await skills.get(row["id"], conn=conn, lock=True)
            if current is not None:
                await skills.set_bundle(row["id"], spec_of(current), bundle, conn=conn)
                # The old bundle stays while an install pins the version that has it.
                unused = await skills.prune_versions(row["id"], conn=conn)
                updated = await skills.get(row["id"], conn=conn)
                verb = "bundle.replace" if bundle.sha256 else "bundle.delete"
                await self.audit_skill(verb, current, updated, conn)
        # Objects go only once the rows that stopped using them are committed.
        await drop_bundles(self.ctx, unused)
        if updated is None:  # deleted meanwhile: do not keep the new bundle
            await drop_bundle(self.ctx, bundle.sha256)
            raise ApiError(404, "not_found", "no such skill")
        self.write_json(skill_model(updated))


def _bundle_too_large() -> ApiError:
    return ApiError(413, "too_large", f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")


async def stream_object(handler: BaseHandler, key: str, filename: str) -> None:
    try:
        chunks = handler.ctx.objects.stream(key)
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
    agent = prefix + f"api/users/{USER}/agents/{SLUG}/skills"
    return [
        (prefix + "api/skills", SkillsHandler),
        (prefix + f"api/skills/{NAME}", SkillHandler),
        (prefix + f"api/skills/{NAME}/fork", ForkHandler),
        (prefix + f"api/skills/{NAME}/bundle", BundleHandler),
        (agent, AgentSkillsHandler),
        (agent + f"/{NAME}", AgentSkillHandler),
        (agent + f"/{NAME}/update", AgentSkillUpdateHandler),
    ]
