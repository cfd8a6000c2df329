"""Agent templates (docs/templates.md): organisation templates (administrators and
holders of ``custom:sac:templates`` write them; every change is audited) and
personal ones (their owner's); listing, reading, creating, changing (each change
a new version), deleting and forking; the shipped presets upserted at start; and
what an agent created from a template gets."""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from typing import Any

from ...errors import ApiError
from ...rules import templates as rules
from ...store.templates import Template, TemplateExistsError
from ..openapi import CONTRACT
from ..principals import Identity
from ..validation import path_id, storable
from .access import require_person
from .context import Actor, ServiceContext, audit, log

ORGANISATION = "organisation"
PERSONAL = "personal"


def may_curate(ident: Identity) -> bool:
    """May write organisation templates: administrators, and persons holding the
    curator scope (an agent's or a driver's token never)."""
    return ident.admin or (ident.person and rules.TEMPLATES_SCOPE in ident.scopes)


def template_model(template: Template, ident: Identity) -> dict[str, Any]:
    return {
        "id": template.id,
        "scope": template.scope,
        "owner": template.owner or None,
        "name": template.name,
        "version": template.version,
        "builtin": template.builtin,
        "definition": template.definition,
        # A shipped preset is never changed (it is replaced at each start): forked.
        "editable": _may_write(ident, template) and not template.builtin,
        "created_by": template.created_by,
        "created_at": template.created_at.isoformat(),
        "updated_by": template.updated_by,
        "updated_at": template.updated_at.isoformat(),
    }


def _may_write(ident: Identity, template: Template) -> bool:
    if template.scope == ORGANISATION:
        return may_curate(ident)
    return ident.person and template.owner == ident.name


def _visible(ident: Identity, template: Template) -> bool:
    """Organisation templates are everyone's; a personal one its owner's (and
    administrators', who see every user's things)."""
    return template.scope == ORGANISATION or template.owner == ident.name or ident.admin


def _require_reader(actor: Actor) -> Identity:
    """Persons and drivers (code creating agents from templates) read templates;
    an agent's own sandbox does not need to (its template reaches it at start)."""
    ident = actor.identity
    if ident.kind == "agent" or not ident.driver:
        raise ApiError(403, "forbidden", f"{ident.describe()} may not read templates")
    return ident


def check_definition(definition: Any, field: str = "definition") -> dict[str, Any]:
    """A definition as stored: the document's shape, then the rules it cannot say."""
    CONTRACT.check("TemplateDefinition", definition, within=field)
    # What PostgreSQL can store (no NUL, no lone surrogate) before it is measured.
    definition = storable(definition)
    try:
        rules.check_definition(definition)
    except rules.TemplateError as e:
        raise ApiError(400, "invalid_template", str(e), field=f"{field}/{e.field}") from None
    return definition


async def _check_skills(ctx: ServiceContext, definition: dict[str, Any], field: str) -> None:
    """A template's skills are official ones that exist now (by command)."""
    wanted = list(definition.get("skills") or [])
    found = await ctx.store.skills.official_by_command(wanted)
    for i, command in enumerate(wanted):
        if command not in found:
            raise ApiError(
                400,
                "invalid_template",
                f"no official skill {command!r}",
                field=f"{field}/skills/{i}",
            )


async def _get(
    ctx: ServiceContext, ident: Identity, raw_id: str, *, lock: bool = False, conn: Any = None
) -> Template:
    template_id = path_id(raw_id)
    template = (
        await ctx.store.templates.get(template_id, lock=lock, conn=conn)
        if template_id is not None
        else None
    )
    # Another user's personal template is not revealed: 404 as for none.
    if template is None or not _visible(ident, template):
        raise ApiError(404, "not_found", "no such template")
    return template


def _snapshot(template: Template) -> dict[str, Any]:
    return {"name": template.name, "version": template.version, "definition": template.definition}


async def list_templates(ctx: ServiceContext, actor: Actor) -> list[dict[str, Any]]:
    ident = _require_reader(actor)
    return [template_model(t, ident) for t in await ctx.store.templates.visible_to(ident.name)]


async def get_template(ctx: ServiceContext, actor: Actor, raw_id: str) -> dict[str, Any]:
    ident = _require_reader(actor)
    return template_model(await _get(ctx, ident, raw_id), ident)


async def _create(
    ctx: ServiceContext, actor: Actor, scope: str, name: str, definition: dict[str, Any]
) -> Template:
    ident = actor.identity
    if scope == ORGANISATION and not may_curate(ident):
        raise ApiError(
            403,
            "forbidden",
            f"organisation templates need an administrator or the {rules.TEMPLATES_SCOPE} scope",
            field="scope",
        )
    owner = ident.name if scope == PERSONAL else ""
    async with ctx.store.transaction() as conn:
        if scope == PERSONAL:
            count = await ctx.store.templates.count_personal(owner, conn=conn)
            if count >= rules.MAX_TEMPLATES_PER_USER:
                raise ApiError(
                    403,
                    "template_limit_reached",
                    f"{owner} already has the maximum of {rules.MAX_TEMPLATES_PER_USER} templates",
                )
        try:
            template = await ctx.store.templates.create(
                scope=scope, owner=owner, name=name, definition=definition, by=ident.name, conn=conn
            )
        except TemplateExistsError:
            raise ApiError(
                409, "template_exists", f"a {scope} template {name!r} exists", field="name"
            ) from None
        if scope == ORGANISATION:
            await audit(ctx, actor, "template.create", name, after=_snapshot(template), conn=conn)
    return template


async def create_template(
    ctx: ServiceContext, actor: Actor, body: dict[str, Any]
) -> dict[str, Any]:
    """A new template from ``{"name", "scope"?, "definition"}`` (personal by default)."""
    require_person(actor, "create templates")
    CONTRACT.check("TemplateCreate", body)
    definition = check_definition(body["definition"])
    await _check_skills(ctx, definition, "definition")
    template = await _create(ctx, actor, body.get("scope", PERSONAL), body["name"], definition)
    return template_model(template, actor.identity)


async def update_template(
    ctx: ServiceContext, actor: Actor, raw_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """The next version of a template from ``{"name"?, "definition"?}`` (a definition
    given replaces the whole definition)."""
    ident = await may_change(ctx, actor, raw_id)
    CONTRACT.check("TemplateUpdate", body)
    definition = check_definition(body["definition"]) if "definition" in body else None
    if definition is not None:
        await _check_skills(ctx, definition, "definition")
    async with ctx.store.transaction() as conn:
        before = await _get(ctx, ident, raw_id, lock=True, conn=conn)
        _check_writable(ident, before)
        try:
            after = await ctx.store.templates.update(
                before.id,
                definition=definition if definition is not None else before.definition,
                name=body.get("name"),
                by=ident.name,
                conn=conn,
            )
        except TemplateExistsError:
            raise ApiError(
                409, "template_exists", f"a template {body.get('name')!r} exists", field="name"
            ) from None
        if after.scope == ORGANISATION:
            await audit(
                ctx, actor, "template.update", after.name,
                before=_snapshot(before), after=_snapshot(after), conn=conn,
            )  # fmt: skip
    return template_model(after, ident)


async def may_change(ctx: ServiceContext, actor: Actor, raw_id: str) -> Identity:
    """Refuse a caller who may not change template ``raw_id`` (404 when it may not
    see it): asked before the body is read, so a refused caller learns nothing of
    the body's rules."""
    ident = require_person(actor, "change templates")
    _check_writable(ident, await _get(ctx, ident, raw_id))
    return ident


def _check_writable(ident: Identity, template: Template) -> None:
    if template.builtin:
        raise ApiError(
            409,
            "template_builtin",
            f"{template.name!r} ships with SAC and is replaced at each start; fork it instead",
        )
    if not _may_write(ident, template):
        raise ApiError(
            403,
            "forbidden",
            f"organisation templates need an administrator or the {rules.TEMPLATES_SCOPE} scope",
        )


async def delete_template(ctx: ServiceContext, actor: Actor, raw_id: str) -> None:
    """Remove a template; agents made from it keep their version (docs/templates.md)."""
    ident = require_person(actor, "delete templates")
    async with ctx.store.transaction() as conn:
        template = await _get(ctx, ident, raw_id, lock=True, conn=conn)
        _check_writable(ident, template)
        await ctx.store.templates.delete(template.id, conn=conn)
        if template.scope == ORGANISATION:
            await audit(
                ctx, actor, "template.delete", template.name, before=_snapshot(template), conn=conn
            )


async def fork_template(
    ctx: ServiceContext, actor: Actor, raw_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A personal copy of a template the caller sees (``{"name"?}``: its name,
    else the original's)."""
    ident = require_person(actor, "fork templates")
    source = await _get(ctx, ident, raw_id)
    CONTRACT.check("TemplateFork", body)
    template = await _create(ctx, actor, PERSONAL, body.get("name", source.name), source.definition)
    return template_model(template, ident)


async def resolve(
    ctx: ServiceContext, actor: Actor, ref: int | float | str, owner: str | None = None
) -> Template:
    """The template ``owner``'s (default: the caller's) agent is to be created
    from: an id, or a name (the owner's personal template of that name first, else
    the organisation's). An administrator creating someone's agent uses what that
    person could: the organisation's templates and theirs."""
    owner = owner or actor.name
    if isinstance(ref, float) and ref.is_integer():
        # JSON Schema's integer takes 7.0 too (the fuzzer found the 500 it made).
        ref = int(ref)
    if isinstance(ref, int):
        template = await visible_template(ctx, owner, ref)
        if template is not None:
            return template
    elif isinstance(ref, str):
        for scope, name in ((PERSONAL, owner), (ORGANISATION, "")):
            template = await ctx.store.templates.by_name(scope, name, ref)
            if template is not None:
                return template
    raise ApiError(404, "not_found", f"no template {ref!r}", field="template")


def agent_body(template: Template, body: dict[str, Any]) -> dict[str, Any]:
    """An agent's create body with a template's record fields beneath the body's
    own (the body wins) and its secret references granted as variables."""
    definition = template.definition
    out: dict[str, Any] = {
        k: definition[k] for k in ("display_name", "provider", "model") if k in definition
    }
    out.update({k: v for k, v in body.items() if k != "template"})
    if definition.get("overrides"):
        # The template's settings (resources, limits) beneath the body's own; the
        # owner's ceilings hold for both (validation.agent_fields).
        out["overrides"] = {**definition["overrides"], **(body.get("overrides") or {})}
    refs = rules.secret_refs(definition)
    if refs:
        grants = list(out.get("secrets") or [])
        given = {g.get("name") for g in grants}
        grants += [{"name": n, "env": n} for n in refs if n not in given]
        out["secrets"] = grants
    return out


async def visible_template(ctx: ServiceContext, owner: str, template_id: int) -> Template | None:
    """Template ``template_id`` if ``owner`` (an agent's owner) may use it."""
    template = await ctx.store.templates.get(template_id)
    if template is None or not (template.scope == ORGANISATION or template.owner == owner):
        return None
    return template


PRESETS_PACKAGE = "jupyter_sac.agent_templates"


def shipped_presets() -> dict[str, dict[str, Any]]:
    """The presets in the package (``agent_templates/<name>.json``), by name."""
    out = {}
    for entry in resources.files(PRESETS_PACKAGE).iterdir():
        if entry.name.endswith(".json"):
            out[entry.name.removesuffix(".json")] = json.loads(entry.read_text("utf-8"))
    return out


async def upsert_presets(ctx: ServiceContext) -> None:
    """Load the shipped presets as organisation templates at start: created when
    new, a new version when the package's definition changed."""
    for name, definition in sorted(shipped_presets().items()):
        CONTRACT.check("TemplateDefinition", definition, within=name)
        rules.check_definition(definition)
        current = await ctx.store.templates.by_name(ORGANISATION, "", name)
        if current is None:
            # Another process of the service may have made it first.
            with contextlib.suppress(TemplateExistsError):
                await ctx.store.templates.create(
                    scope=ORGANISATION, owner="", name=name, definition=definition,
                    by="sac", builtin=True,
                )  # fmt: skip
            log.info("template preset %s loaded", name)
        elif current.definition != definition:
            await ctx.store.templates.update(current.id, definition=definition, by="sac")
            log.info("template preset %s updated to version %d", name, current.version + 1)
