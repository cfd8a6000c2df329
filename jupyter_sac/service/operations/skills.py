"""Skills: who may read, author and publish them, and changing and deleting one
(the same rules and audit entries for the API and the skill's page); the bundle
objects they refer to."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from ...errors import ApiError
from ...rules.skills import (
    SkillError,
    SkillSpec,
    Viewer,
    build_spec,
    can_edit,
    can_read,
    check_tier,
    pack_bundle,
)
from ...store.skills import Bundle, SkillExistsError
from ...store.tx import Conn
from ..openapi import CONTRACT
from ..principals import Identity
from ..validation import bad, path_id
from .access import require_person
from .context import Actor, ServiceContext, audit

SPEC_FIELDS = {"command", "title", "description", "body", "parameters", "prompt", "tags"}

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


async def store_bundle(ctx: ServiceContext, files: dict[str, bytes]) -> Bundle:
    """Put a checked bundle's canonical archive in the object store (once per content)."""
    packed = await asyncio.to_thread(pack_bundle, files)
    sha = hashlib.sha256(packed).hexdigest()
    if await ctx.objects.head(bundle_key(sha)) is None:
        await ctx.objects.put(bundle_key(sha), packed, content_type="application/gzip")
    listing = tuple({"name": name, "size": len(files[name])} for name in sorted(files))
    return Bundle(sha, listing)


async def drop_bundle(ctx: ServiceContext, sha256: str | None) -> None:
    """Delete a bundle object no skill (or kept version of one) refers to any more."""
    if sha256 and not await ctx.store.skills.bundle_used(sha256):
        await ctx.objects.delete(bundle_key(sha256))


async def drop_bundles(ctx: ServiceContext, shas: list[str]) -> None:
    for sha in shas:
        await drop_bundle(ctx, sha)


def person_viewer(ident: Identity) -> Viewer:
    """How a caller other than an agent's sandbox sees the marketplace (a sandbox
    sees it as its owner does, with their groups asked of the hub)."""
    return Viewer(ident.name, ident.admin, ident.groups, ident.scopes)


def require_author(
    actor: Actor, tier: tuple[str, str | None], before: dict[str, Any] | None = None
) -> None:
    """Authoring: persons publish at any tier they may; an agent's sandbox (its
    sidebar) writes only its owner's private skills, so a model can never
    publish to other people or change what they installed (sharing is done by a
    person, on the service's own pages or API). Drivers author nothing."""
    ident = actor.identity
    if ident.person:
        return
    private = tier[0] == "private" and (before is None or before["visibility"] == "private")
    if ident.kind == "agent" and private:
        return
    what = "publish or change shared skills" if ident.kind == "agent" else "author skills"
    require_person(actor, what)


def spec_from(body: dict[str, Any]) -> SkillSpec:
    """A skill's content from a body's fields (400 naming the bad one)."""
    meta = {k: body[k] for k in SPEC_FIELDS - {"body"} if k in body}
    try:
        return build_spec(meta, body.get("body"))
    except SkillError as e:
        raise bad(e.field, e.message) from None


def tier_from(
    viewer: Viewer, body: dict[str, Any], default: str = "private"
) -> tuple[str, str | None]:
    """(visibility, group) of a body, if the viewer may publish there (else 403/400)."""
    try:
        return check_tier(viewer, body.get("visibility", default), body.get("group"))
    except SkillError as e:
        denied = "need" in e.message or "member" in e.message
        raise ApiError(
            403 if denied else 400,
            "forbidden" if denied else "invalid_field",
            f"{e.field}: {e.message}",
            field=e.field,
        ) from None


async def readable(ctx: ServiceContext, viewer: Viewer, skill_id: str) -> dict[str, Any]:
    """The skill ``skill_id`` names, if the viewer may read it (else 404)."""
    sid = path_id(skill_id)
    row = await ctx.store.skills.get(sid) if sid is not None else None
    if row is None or not can_read(row, viewer):
        raise ApiError(404, "not_found", "no such skill")
    return row


async def editable(ctx: ServiceContext, viewer: Viewer, skill_id: str) -> dict[str, Any]:
    """The skill, if the viewer may change it (404 unreadable, 403 read-only)."""
    row = await readable(ctx, viewer, skill_id)
    if not can_edit(row, viewer):
        raise ApiError(403, "forbidden", "only the owner or an administrator may change it")
    return row


async def audit_skill(
    ctx: ServiceContext,
    actor: Actor,
    viewer: Viewer,
    verb: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    conn: Conn | None,
) -> None:
    """Log a change to a skill if it is curation of an official skill or a change to
    someone else's skill (a user's changes to their own skills are not logged)."""
    rows = [r for r in (before, after) if r is not None]
    if any(r["visibility"] == "official" for r in rows):
        action = f"skill.official.{verb}"
    elif any(r["owner"] != viewer.name for r in rows):
        action = f"skill.{verb}"
    else:
        return
    await audit(
        ctx,
        actor,
        action,
        str(rows[0]["id"]),
        target_user=rows[0]["owner"] or None,
        before=skill_snapshot(before) if before else None,
        after=skill_snapshot(after) if after else None,
        conn=conn,
    )


async def create_skill(
    *,
    ctx: ServiceContext,
    owner: str,
    spec: SkillSpec,
    tier: tuple[str, str | None],
    parent: int | None = None,
    bundle: Bundle | None = None,
    conn: Conn | None = None,
) -> dict[str, Any]:
    """Store a new skill of ``owner`` (409 when they have one of that command)."""
    try:
        return await ctx.store.skills.create(
            owner, spec, *tier, parent_id=parent, bundle=bundle, conn=conn
        )
    except SkillExistsError:
        raise ApiError(
            409, "conflict", f"you already have a skill {spec.command!r}", field="command"
        ) from None


async def change_skill(
    ctx: ServiceContext, actor: Actor, viewer: Viewer, row: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    """Apply a PATCH body to ``row`` (a skill from ``editable``): content changes
    make a new version; a new visibility must be one the caller may publish at."""
    CONTRACT.check("SkillChange", body)
    if "command" in body and body["command"] != row["command"]:
        raise bad("command", "the command of a skill cannot change (fork it instead)")
    spec = spec_from({**content_fields(row), **body})
    group = body.get("group", row["group_name"] if "visibility" not in body else None)
    tier = tier_from(
        viewer, {"visibility": body.get("visibility", row["visibility"]), "group": group}
    )
    require_author(actor, tier, row)
    skills = ctx.store.skills
    async with ctx.store.transaction() as conn:
        current = await skills.get(row["id"], conn=conn, lock=True)
        if current is None:
            raise ApiError(404, "not_found", "no such skill")
        updated = await skills.update(
            row["id"], spec, *tier, bundle_sha256=current["bundle_sha256"], conn=conn
        )
        unused = await skills.prune_versions(row["id"], conn=conn)
        await audit_skill(ctx, actor, viewer, "update", current, updated, conn)
    await drop_bundles(ctx, unused)
    assert updated is not None
    return updated


async def delete_skill(
    ctx: ServiceContext, actor: Actor, viewer: Viewer, row: dict[str, Any]
) -> None:
    """Delete ``row`` (a skill from ``editable``), its installs, and its bundle
    object once no other skill shares it."""
    require_author(actor, (row["visibility"], row["group_name"]), row)
    async with ctx.store.transaction() as conn:
        current = await ctx.store.skills.get(row["id"], conn=conn, lock=True)
        if current is None:
            raise ApiError(404, "not_found", "no such skill")
        # Its versions (and the installs pinning them) go with it.
        bundles = await ctx.store.skills.version_bundles(row["id"], conn=conn)
        await ctx.store.skills.delete(row["id"], conn=conn)
        await audit_skill(ctx, actor, viewer, "delete", current, None, conn)
    await drop_bundles(ctx, bundles)
