"""The skill marketplace API: skills in four tiers, forks, installs into agents.

Thin handlers over ``store.skills`` and the pure rules in ``jupyter_sac.skills``
(model, parameters, visibility). A skill the caller may not read answers 404,
as if it did not exist.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ..skills import (
    SkillError,
    Viewer,
    build_spec,
    can_edit,
    can_read,
    check_tier,
    load_official_skills,
)
from ..store.skills import CommandTakenError, SkillExistsError
from .base import BaseHandler
from .errors import ApiError
from .openapi import _op, _path_params, _resp
from .validation import bad, check_fields

log = logging.getLogger("jupyter_sac.skills")

SPEC_FIELDS = {"command", "title", "description", "body", "parameters", "prompt", "tags"}
PAGE = 50
MAX_PAGE = 200


def skill_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "owner": row["owner"] or None,
        **_content(row),
        "visibility": row["visibility"],
        "group": row["group_name"],
        "version": row["version"],
        "parent_id": row["parent_id"],
        "installs": row["installs"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _content(row: dict[str, Any]) -> dict[str, Any]:
    """A stored skill's content fields, as a create body would give them."""
    return {key: row[key] for key in SPEC_FIELDS}


async def upsert_official(sac: Any, directory: str) -> None:
    """Load the shipped official skills at service start (idempotent)."""
    if not directory:
        log.warning("no official skills folder")
        return
    # Reading the folder happens once at start; a thread keeps the loop free anyway.
    specs = await asyncio.to_thread(load_official_skills, Path(directory))
    changed = await sac.store.skills.upsert_official(specs, {})
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

    async def create(self, owner: str, spec: Any, tier: tuple[str, str | None], parent=None):
        try:
            return await self.sac.store.skills.create(owner, spec, *tier, parent_id=parent)
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
        updated = await self.sac.store.skills.update(row["id"], spec, *tier)
        assert updated is not None
        self.write_json(skill_model(updated))

    async def delete(self, skill_id: str) -> None:
        row = await self.editable(skill_id)
        await self.sac.store.skills.delete(row["id"])
        self.set_status(204)
        self.finish()


class ForkHandler(SkillBaseHandler):
    """POST: a private copy under the caller's name, recording its parent."""

    async def post(self, skill_id: str) -> None:
        row = await self.readable(skill_id)
        body = self.json_body() if self.request.body else {}
        check_fields(body, {"command"})
        spec = self.spec({**_content(row), **body})
        forked = await self.create(self.viewer.name, spec, ("private", None), parent=row["id"])
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


def routes(prefix: str) -> list[tuple[str, Any]]:
    agent = prefix + r"api/users/([^/]+)/agents/([a-z0-9-]+)/skills"
    return [
        (prefix + "api/skills", SkillsHandler),
        (prefix + r"api/skills/([^/]+)", SkillHandler),
        (prefix + r"api/skills/([^/]+)/fork", ForkHandler),
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
