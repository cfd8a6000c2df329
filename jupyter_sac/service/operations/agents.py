"""Agents: their models, and creating, changing, deleting, starting, stopping and
restarting them. An administrator acting on another user's agent is recorded in
the audit log; an owner's own changes only where they widen what the agent may do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ApiError
from ...rules import settings as sac_settings
from ...rules.budgets import budgets
from ...rules.hitl import validate_policy
from ...rules.urls import PublicUrls
from ...store import AgentExistsError, AgentLimitError, AgentRecord, SandboxUsage
from ...store.skills import CommandTakenError, SkillGoneError
from ..hub import HubError, HubUnavailable
from ..openapi import CONTRACT
from ..validation import agent_fields
from .access import authorize_user, get_agent, require_person
from .context import Actor, ServiceContext, audit
from .secrets import audit_grants, grants_from_body
from .settings import effective_settings_for_agent, settings_for_user, user_settings
from .templates import agent_body, resolve, visible_template

USAGE_TOTALS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def agent_model(
    agent: AgentRecord,
    resolved: Mapping[str, Any],
    hub_user: Mapping[str, Any] | None,
    public: PublicUrls,
    org_keys: Mapping[str, str],
    sandbox_usage: SandboxUsage | None = None,
    latest_templates: Mapping[int, tuple[str, int]] | None = None,
) -> dict[str, Any]:
    server = (hub_user or {}).get("servers", {}).get(agent.slug)
    template = None
    if agent.template_id is not None:
        # The template it was made from (name and latest version null once deleted).
        latest = (latest_templates or {}).get(agent.template_id)
        template = {
            "id": agent.template_id,
            "name": latest[0] if latest else None,
            "version": agent.template_version,
            "latest_version": latest[1] if latest else None,
        }
    return {
        "owner": agent.owner,
        "slug": agent.slug,
        **agent_snapshot(agent),
        "uses_organisation_key": agent.encrypted_key is None,
        "organisation_key_available": agent.provider in org_keys,
        "resolved": sac_settings.jsonable(resolved),
        "created_at": agent.created_at.isoformat(),
        "updated_at": agent.updated_at.isoformat(),
        # The agent's server on its owner's host (with subdomains), as the hub has it.
        "url": public.server(agent.owner, agent.slug),
        "server": None
        if server is None
        else {
            "ready": server.get("ready", False),
            "pending": server.get("pending"),
            "started": server.get("started"),
            "last_activity": server.get("last_activity"),
        },
        # What its sandbox uses now and the limits that hold there, as its spawner
        # last sampled them (null: never sampled).
        "sandbox_usage": sandbox_usage.to_json() if sandbox_usage else None,
        "template": template,
    }


def agent_snapshot(agent: AgentRecord) -> dict[str, Any]:
    """An agent as the audit log records it: never its key, only whether one is set."""
    return {
        "display_name": agent.display_name,
        "runtime": agent.runtime,
        "provider": agent.provider,
        "model": agent.model,
        "base_url": agent.base_url,
        "key_set": agent.encrypted_key is not None,
        "overrides": agent.overrides,
        "drive_agents": agent.drive_agents,
        "secrets": list(agent.secrets),
        "template": None
        if agent.template_id is None
        else {"id": agent.template_id, "version": agent.template_version},
    }


async def hub_refused(
    ctx: ServiceContext, owner: str, slug: str, what: str, e: HubError
) -> ApiError:
    """The answer to a start, stop or delete the hub refused: 409 when it refused
    the request (or the server was busy starting or stopping for someone else: the
    hub answers that race 500), 503 when it did not answer, 502 only for a failure of
    the hub or the spawn."""
    if isinstance(e, HubUnavailable):
        return ApiError(503, "hub_unavailable", f"{what}: {e.message}")
    if e.status >= 500:
        try:
            user = await ctx.hub.get_user(owner)
        except HubError:
            user = None
        server = ((user or {}).get("servers") or {}).get(slug) or {}
        if server.get("pending"):
            return ApiError(
                409,
                "agent_busy",
                f"{what}: agent {slug!r} of {owner} is busy ({server['pending']} pending);"
                " try again once that is done",
            )
    return ApiError(502 if e.status >= 500 else 409, "hub_refused", f"{what}: {e.message}")


async def agent_models(ctx: ServiceContext, agents: list[AgentRecord]) -> list[dict[str, Any]]:
    """The API's model of each agent: its record, resolved settings, server state
    (asked of the hub once per owner) and what its sandbox uses."""
    out = []
    hub_users: dict[str, dict[str, Any] | None] = {}
    settings_cache: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    usage = await ctx.store.sandbox_usage.for_agents(a.id for a in agents)
    latest = await ctx.store.templates.latest_versions(
        sorted({a.template_id for a in agents if a.template_id is not None})
    )
    for agent in agents:
        if agent.owner not in hub_users:
            try:
                hub_users[agent.owner] = await ctx.hub.get_user(agent.owner)
            except HubError:
                hub_users[agent.owner] = None
            settings_cache[agent.owner] = await user_settings(ctx, agent.owner)
        system, user = settings_cache[agent.owner]
        resolved = sac_settings.resolve(system, user, agent.overrides)
        out.append(
            agent_model(
                agent,
                resolved,
                hub_users[agent.owner],
                ctx.public,
                ctx.org_keys,
                usage.get(agent.id),
                latest,
            )
        )
    return out


async def create_agent(
    ctx: ServiceContext, actor: Actor, owner: Any, body: dict[str, Any]
) -> AgentRecord:
    """Create ``owner``'s agent from an API body (or a form turned into one): the
    record, then its JupyterHub named server; nothing is left if either refuses."""
    if not isinstance(owner, str):
        raise ApiError(400, "invalid_field", "user: expected a user name", field="user")
    authorize_user(actor, owner, "create agents", driver_may=True)
    # The API's own rules for the body, whether it came through the API or a form.
    CONTRACT.check("AgentCreate", body)
    if owner != actor.name and await ctx.hub.get_user(owner) is None:
        raise ApiError(404, "not_found", f"no such user {owner!r}")
    template = None
    if "template" in body:
        # The template's provider, model, name and secret grants beneath the body's
        # own; the rest of it reaches the sandbox at each start (docs/templates.md).
        template = await resolve(ctx, actor, body["template"], owner)
        body = agent_body(template, body)
        CONTRACT.check("AgentCreate", body)
    slug = str(body["slug"])
    ceiling = await settings_for_user(ctx, owner)
    fields = agent_fields(body, ceiling)
    if template is not None:
        fields["template_id"], fields["template_version"] = template.id, template.version
    if fields.get("drive_agents"):
        # An agent that drives others is a person's choice, not a driver's.
        require_person(actor, "create agents that drive others")
    if "secrets" in body:
        fields["secrets"] = await grants_from_body(ctx, actor, owner, body["secrets"])
    api_key = fields.pop("api_key", None)
    fields.setdefault("display_name", slug)
    try:
        agent = await ctx.store.agents.create(
            limit=int(ceiling["max_agents_per_user"]),
            owner=owner,
            slug=slug,
            encrypted_key=ctx.keybox.encrypt(api_key) if api_key else None,
            **fields,
        )
    except AgentExistsError:
        raise ApiError(
            409, "agent_exists", f"{owner} already has an agent {slug!r}", field="slug"
        ) from None
    except AgentLimitError as e:
        raise ApiError(
            403, "agent_limit_reached", f"{owner} already has the maximum of {e.limit} agents"
        ) from None
    try:
        await ctx.hub.create_server(owner, slug, agent.display_name)
    except HubError as e:
        # Keep the two in step: no agent without its named server.
        await ctx.store.agents.delete(owner, slug)
        if isinstance(e, HubUnavailable):
            raise ApiError(503, "hub_unavailable", e.message) from None
        raise ApiError(
            e.status if 400 <= e.status < 500 else 502,
            "hub_refused",
            f"JupyterHub refused the named server: {e.message}",
        ) from None
    if owner != actor.name:
        # After the hub took the server: an agent that never came to be is not logged.
        await audit(
            ctx, actor, "agent.create", slug, target_user=owner, after=agent_snapshot(agent)
        )
    if agent.secrets:
        await audit_grants(ctx, actor, None, agent)
    if template is not None and "hitl_policy" in template.definition:
        await _template_policy(ctx, actor, agent, template.definition["hitl_policy"])
    if template is not None and template.definition.get("skills"):
        await _template_skills(ctx, actor, agent, template.definition["skills"])
    return agent


async def _template_skills(
    ctx: ServiceContext, actor: Actor, agent: AgentRecord, commands: list[str]
) -> None:
    """Install a template's official skills, each pinned at its current version
    (the sandbox's skill sync brings them in). One removed since the template was
    written, or whose command the agent already has, is left out."""
    found = await ctx.store.skills.official_by_command(list(commands))
    for command in commands:
        row = found.get(command)
        if row is None:
            continue
        try:
            async with ctx.store.transaction() as conn:
                await ctx.store.skills.install(agent.id, row, conn=conn)
                if agent.owner != actor.name:
                    await audit(
                        ctx, actor, "agent.skill.install", agent.slug, target_user=agent.owner,
                        after={"skill_id": row["id"], "command": command}, conn=conn,
                    )  # fmt: skip
        except (CommandTakenError, SkillGoneError):
            continue


async def _template_policy(ctx: ServiceContext, actor: Actor, agent: AgentRecord, raw: Any) -> None:
    """Give an agent its template's HITL policy (checked when the template was
    stored), audited as a policy change when someone else's agent gets it."""
    policy = validate_policy(raw)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.hitl.put_policy(agent.id, policy, actor.name, conn=conn)
        if agent.owner != actor.name:
            await audit(
                ctx, actor, "hitl.policy.replace", agent.slug, target_user=agent.owner,
                before=before, after=policy, conn=conn,
            )  # fmt: skip


async def update_agent(
    ctx: ServiceContext, actor: Actor, owner: str, slug: str, body: dict[str, Any]
) -> AgentRecord:
    """Change an agent from an API body (persons and administrators)."""
    agent = await get_agent(ctx, actor, owner, slug, "change an agent")
    CONTRACT.check("AgentUpdate", body)
    ceiling = await settings_for_user(ctx, owner)
    current = {"provider": agent.provider, "base_url": agent.base_url}
    changes = agent_fields(body, ceiling, current=current)
    if "api_key" in changes:
        key = changes.pop("api_key")
        changes["encrypted_key"] = ctx.keybox.encrypt(key) if key else None
    if "secrets" in body:
        changes["secrets"] = await grants_from_body(ctx, actor, owner, body["secrets"])
    agents = ctx.store.agents
    async with ctx.store.transaction() as conn:
        before = await agents.get(owner, slug, conn=conn, lock=True)
        updated = await agents.update(owner, slug, changes, conn=conn) if before else None
        if before is None or updated is None:
            raise ApiError(404, "not_found", "no such agent")
        if owner != actor.name:
            await audit(
                ctx,
                actor,
                "agent.update",
                slug,
                target_user=owner,
                before=agent_snapshot(before),
                after=agent_snapshot(updated),
                conn=conn,
            )
        elif updated.overrides != before.overrides:
            # An owner's own agent edits are not logged, but settings changes are.
            await audit(
                ctx,
                actor,
                "settings.agent.replace",
                slug,
                target_user=owner,
                before=before.overrides,
                after=updated.overrides,
                conn=conn,
            )
        # Which secrets a sandbox gets is always on the record.
        await audit_grants(ctx, actor, before, updated, conn=conn)
        if owner == actor.name and updated.drive_agents != before.drive_agents:
            # Letting an agent drive the others widens what its sandbox can reach:
            # always on the record, whoever does it.
            await audit(
                ctx,
                actor,
                "agent.drive_agents",
                slug,
                target_user=owner,
                before={"drive_agents": before.drive_agents},
                after={"drive_agents": updated.drive_agents},
                conn=conn,
            )
    return updated


async def update_agent_template(
    ctx: ServiceContext, actor: Actor, owner: str, slug: str
) -> AgentRecord:
    """Move an agent to its template's latest version (explicit: a template's new
    version never changes the agents made from it by itself). Its provider and
    model follow the template where the template sets them, its grants gain the
    secrets the new version refers to; the rest reaches the sandbox at its next
    start."""
    agent = await get_agent(ctx, actor, owner, slug, "update an agent to its template")
    if agent.template_id is None:
        raise ApiError(409, "no_template", f"agent {slug!r} was not made from a template")
    template = await visible_template(ctx, owner, agent.template_id)
    if template is None:
        raise ApiError(409, "template_gone", f"the template agent {slug!r} was made from is gone")
    body = agent_body(template, {"secrets": list(agent.secrets)} if agent.secrets else {})
    current = {"provider": agent.provider, "base_url": agent.base_url}
    ceiling = await settings_for_user(ctx, owner)
    if template.definition.get("overrides"):
        # The template's settings over the agent's own (its other ones stay).
        body["overrides"] = {**agent.overrides, **template.definition["overrides"]}
    changes = agent_fields(
        {k: v for k, v in body.items() if k in ("provider", "model", "overrides")},
        ceiling,
        current=current,
    )
    if body.get("secrets") and list(body["secrets"]) != list(agent.secrets):
        changes["secrets"] = await grants_from_body(ctx, actor, owner, body["secrets"])
    changes["template_version"] = template.version
    async with ctx.store.transaction() as conn:
        updated = await ctx.store.agents.update(owner, slug, changes, conn=conn)
        if updated is None:
            raise ApiError(404, "not_found", "no such agent")
        await audit(
            ctx, actor, "agent.template_update", slug, target_user=owner,
            before=agent_snapshot(agent), after=agent_snapshot(updated), conn=conn,
        )  # fmt: skip
        await audit_grants(ctx, actor, agent, updated, conn=conn)
    if "hitl_policy" in template.definition:
        await _template_policy(ctx, actor, updated, template.definition["hitl_policy"])
    if template.definition.get("skills"):
        await _template_skills(ctx, actor, updated, template.definition["skills"])
    return updated


async def set_resources(
    ctx: ServiceContext,
    actor: Actor,
    owner: str,
    slug: str,
    resources: Mapping[str, Any],
    names: tuple[str, ...],
) -> AgentRecord:
    """Replace the agent's overrides named ``names`` by ``resources`` (a name left
    out: inherit), keeping its other overrides."""
    agent = await get_agent(ctx, actor, owner, slug)
    kept = {k: v for k, v in agent.overrides.items() if k not in names}
    return await update_agent(ctx, actor, owner, slug, {"overrides": {**kept, **resources}})


async def delete_agent(ctx: ServiceContext, actor: Actor, owner: str, slug: str) -> None:
    """Remove the agent's named server (stopping it), then its record."""
    await get_agent(ctx, actor, owner, slug, "delete an agent")
    with ctx.agent_transitions.hold(owner, slug, "being deleted"):
        try:
            await ctx.hub.remove_server(owner, slug)
        except HubError as e:
            raise await hub_refused(
                ctx, owner, slug, "could not stop and remove the agent's server", e
            ) from None
    agents = ctx.store.agents
    async with ctx.store.transaction() as conn:
        before = await agents.get(owner, slug, conn=conn, lock=True)
        deleted = before is not None and await agents.delete(owner, slug, conn=conn)
        if deleted and before is not None and owner != actor.name:
            await audit(
                ctx,
                actor,
                "agent.delete",
                slug,
                target_user=owner,
                before=agent_snapshot(before),
                conn=conn,
            )


async def stop_agent(ctx: ServiceContext, actor: Actor, owner: str, slug: str) -> None:
    """Stop the agent's sandbox and wait until the hub reports it stopped."""
    await get_agent(ctx, actor, owner, slug, "stop an agent", driver_may=True)
    with ctx.agent_transitions.hold(owner, slug, "stopping"):
        try:
            await ctx.hub.stop_server_and_wait(owner, slug)
        except HubError as e:
            raise await hub_refused(ctx, owner, slug, "could not stop the agent", e) from None
    if owner != actor.name:
        await audit(ctx, actor, "agent.stop", slug, target_user=owner)


async def start_agent(ctx: ServiceContext, actor: Actor, owner: str, slug: str) -> None:
    """Ask the hub to start the agent's sandbox (in the background; the hub's
    progress API follows it). Starting a running agent changes nothing."""
    await get_agent(ctx, actor, owner, slug, "start an agent", driver_may=True)
    with ctx.agent_transitions.hold(owner, slug, "starting"):
        try:
            await ctx.hub.start_server(owner, slug)
        except HubError as e:
            if not (e.status == 400 and "already" in e.message):
                raise await hub_refused(ctx, owner, slug, "could not start the agent", e) from None
    if owner != actor.name:
        await audit(ctx, actor, "agent.start", slug, target_user=owner)


async def restart_agent(ctx: ServiceContext, actor: Actor, owner: str, slug: str) -> None:
    """Stop the agent's sandbox if it runs, then start it (the spawn goes on in
    the background; the hub's progress API follows it). New settings, provider
    and model reach a sandbox only this way. An agent's own sandbox may restart
    it (its sidebar's Restart), not a sibling."""
    await get_agent(ctx, actor, owner, slug, "restart an agent", driver_may=True, agent_may=True)
    with ctx.agent_transitions.hold(owner, slug, "restarting"):
        try:
            await ctx.hub.stop_server_and_wait(owner, slug)
            await ctx.hub.start_server(owner, slug)
        except HubError as e:
            raise await hub_refused(ctx, owner, slug, "could not restart the agent", e) from None
    if owner != actor.name:
        await audit(ctx, actor, "agent.restart", slug, target_user=owner)


async def agent_usage(ctx: ServiceContext, agent: AgentRecord) -> dict[str, Any]:
    """The agent's token use by day, its totals, and this calendar month's (UTC)
    token budgets of the agent and of its owner."""
    days = await ctx.store.usage.for_agent(agent.id)
    totals = {k: sum(d[k] for d in days) for k in USAGE_TOTALS}
    resolved = await effective_settings_for_agent(ctx, agent)
    month = await ctx.store.usage.month_budget(agent.id, agent.owner)
    found = budgets(
        resolved, month.agent_used, month.owner_used, month.agent_reserved, month.owner_reserved
    )
    return {
        "owner": agent.owner,
        "slug": agent.slug,
        "days": days,
        "totals": totals,
        # this calendar month (UTC): the agent's and its owner's token budgets
        "budget": {name: b.model() for name, b in found.items()},
    }
