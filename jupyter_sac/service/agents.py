"""Agent endpoints: /api/agents and /api/users/<user>/agents[/<slug>]."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .. import settings as sac_settings
from ..budgets import budgets
from ..errors import ApiError
from ..store import AgentExistsError, AgentLimitError, AgentRecord, SandboxUsage
from ..urls import PublicUrls
from .base import BaseHandler, Identity
from .hub import HubError
from .validation import CREATE_FIELDS, UPDATE_FIELDS, agent_fields, check_fields, valid_slug


def agent_model(
    agent: AgentRecord,
    resolved: dict[str, Any],
    hub_user: dict[str, Any] | None,
    public: PublicUrls,
    org_keys: dict[str, str],
    sandbox_usage: SandboxUsage | None = None,
) -> dict[str, Any]:
    server = (hub_user or {}).get("servers", {}).get(agent.slug)
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
    }


class AgentBaseHandler(BaseHandler):
    async def ceiling_for(self, owner: str) -> tuple[dict[str, Any], dict[str, Any], dict]:
        system, user = await self.sac.store.settings.for_user(owner)
        return system, user, sac_settings.resolve_user(system, user)

    async def models(self, agents: list[AgentRecord]) -> list[dict[str, Any]]:
        out, hub_users, settings_cache = [], {}, {}
        usage = await self.sac.store.sandbox_usage.for_agents(a.id for a in agents)
        for agent in agents:
            if agent.owner not in hub_users:
                try:
                    hub_users[agent.owner] = await self.sac.hub.get_user(agent.owner)
                except HubError:
                    hub_users[agent.owner] = None
                settings_cache[agent.owner] = await self.sac.store.settings.for_user(agent.owner)
            system, user = settings_cache[agent.owner]
            resolved = sac_settings.resolve(system, user, agent.overrides)
            out.append(
                agent_model(
                    agent,
                    resolved,
                    hub_users[agent.owner],
                    self.sac.public,
                    self.sac.org_keys,
                    usage.get(agent.id),
                )
            )
        return out


class AgentOps(AgentBaseHandler):
    """Changes to an agent, shared by the API and the admin pages. Acting on another
    user's agent (an admin) is recorded in the audit log."""

    async def create_agent(self, ident: Identity, owner: Any, body: dict[str, Any]) -> AgentRecord:
        """Create ``owner``'s agent from an API body (or a form turned into one): the
        record, then its JupyterHub named server; nothing is left if either refuses."""
        if not isinstance(owner, str):
            raise ApiError(400, "invalid_field", "user: expected a user name", field="user")
        self.authorize_user(owner, "create agents", driver_may=True)
        check_fields(body, CREATE_FIELDS)
        if owner != ident.name and await self.sac.hub.get_user(owner) is None:
            raise ApiError(404, "not_found", f"no such user {owner!r}")
        if "slug" not in body:
            raise ApiError(400, "missing_field", "slug: required", field="slug")
        slug = valid_slug(body["slug"])
        _, _, ceiling = await self.ceiling_for(owner)
        fields = agent_fields(body, ceiling)
        if fields.get("drive_agents"):
            # An agent that drives others is a person's choice, not a driver's.
            self.require_person("create agents that drive others")
        api_key = fields.pop("api_key", None)
        fields.setdefault("display_name", slug)
        try:
            agent = await self.sac.store.agents.create(
                limit=int(ceiling["max_agents_per_user"]),
                owner=owner,
                slug=slug,
                encrypted_key=self.sac.keybox.encrypt(api_key) if api_key else None,
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
            await self.sac.hub.create_server(owner, slug, agent.display_name)
        except HubError as e:
            # Keep the two in step: no agent without its named server.
            await self.sac.store.agents.delete(owner, slug)
            raise ApiError(
                e.status if 400 <= e.status < 500 else 502,
                "hub_refused",
                f"JupyterHub refused the named server: {e.message}",
            ) from None
        if owner != ident.name:
            # After the hub took the server: an agent that never came to be is not logged.
            await self.audit("agent.create", slug, target_user=owner, after=agent_snapshot(agent))
        return agent

    async def update_agent(self, owner: str, slug: str, body: dict[str, Any]) -> AgentRecord:
        ident = self.identity
        agent = await self.get_agent(owner, slug, "change an agent")
        check_fields(body, UPDATE_FIELDS)
        _, _, ceiling = await self.ceiling_for(owner)
        current = {"provider": agent.provider, "base_url": agent.base_url}
        changes = agent_fields(body, ceiling, current=current)
        if "api_key" in changes:
            key = changes.pop("api_key")
            changes["encrypted_key"] = self.sac.keybox.encrypt(key) if key else None
        agents = self.sac.store.agents
        async with self.sac.store.transaction() as conn:
            before = await agents.get(owner, slug, conn=conn, lock=True)
            updated = await agents.update(owner, slug, changes, conn=conn) if before else None
            if before is None or updated is None:
                raise ApiError(404, "not_found", "no such agent")
            if owner != ident.name:
                await self.audit(
                    "agent.update",
                    slug,
                    target_user=owner,
                    before=agent_snapshot(before),
                    after=agent_snapshot(updated),
                    conn=conn,
                )
            elif updated.overrides != before.overrides:
                # An owner's own agent edits are not logged, but settings changes are.
                await self.audit(
                    "settings.agent.replace",
                    slug,
                    target_user=owner,
                    before=before.overrides,
                    after=updated.overrides,
                    conn=conn,
                )
            if owner == ident.name and updated.drive_agents != before.drive_agents:
                # Letting an agent drive the others widens what its sandbox can reach:
                # always on the record, whoever does it.
                await self.audit(
                    "agent.drive_agents",
                    slug,
                    target_user=owner,
                    before={"drive_agents": before.drive_agents},
                    after={"drive_agents": updated.drive_agents},
                    conn=conn,
                )
        return updated

    async def delete_agent(self, owner: str, slug: str) -> None:
        ident = self.identity
        await self.get_agent(owner, slug, "delete an agent")
        try:
            await self.sac.hub.remove_server(owner, slug)
        except HubError as e:
            raise hub_refused("could not stop and remove the agent's server", e) from None
        agents = self.sac.store.agents
        async with self.sac.store.transaction() as conn:
            before = await agents.get(owner, slug, conn=conn, lock=True)
            deleted = before is not None and await agents.delete(owner, slug, conn=conn)
            if deleted and owner != ident.name:
                await self.audit(
                    "agent.delete",
                    slug,
                    target_user=owner,
                    before=agent_snapshot(before),
                    conn=conn,
                )

    async def stop_agent(self, owner: str, slug: str) -> None:
        """Stop the agent's sandbox and wait until the hub reports it stopped."""
        await self.get_agent(owner, slug, "stop an agent", driver_may=True)
        try:
            await self.sac.hub.stop_server_and_wait(owner, slug)
        except HubError as e:
            raise hub_refused("could not stop the agent", e) from None
        if owner != self.identity.name:
            await self.audit("agent.stop", slug, target_user=owner)

    async def start_agent(self, owner: str, slug: str) -> None:
        """Ask the hub to start the agent's sandbox (in the background; the hub's
        progress API follows it). Starting a running agent changes nothing."""
        await self.get_agent(owner, slug, "start an agent", driver_may=True)
        try:
            await self.sac.hub.start_server(owner, slug)
        except HubError as e:
            if not (e.status == 400 and "already" in e.message):
                raise hub_refused("could not start the agent", e) from None
        if owner != self.identity.name:
            await self.audit("agent.start", slug, target_user=owner)

    async def restart_agent(self, owner: str, slug: str) -> None:
        """Stop the agent's sandbox if it runs, then start it (the spawn goes on in
        the background; the hub's progress API follows it). New settings, provider
        and model reach a sandbox only this way. An agent's own sandbox may restart
        it (its sidebar's Restart), not a sibling."""
        await self.get_agent(owner, slug, "restart an agent", driver_may=True, agent_may=True)
        try:
            await self.sac.hub.stop_server_and_wait(owner, slug)
            await self.sac.hub.start_server(owner, slug)
        except HubError as e:
            raise hub_refused("could not restart the agent", e) from None
        if owner != self.identity.name:
            await self.audit("agent.restart", slug, target_user=owner)


class AgentsHandler(AgentOps):
    """GET: the caller's agents (admins: ?user=NAME, or ?all=1). POST: create."""

    async def get(self, user: str | None = None) -> None:
        ident = self.require_signed_in()
        if user is None:
            if self.get_argument("all", "") in ("1", "true") and ident.admin:
                owner = None
            else:
                owner = self.get_argument("user", ident.name)
        else:
            owner = user
        if owner is not None:
            # The sidebar of an agent lists its owner's agents (to switch between them).
            self.authorize_user(owner, "list agents", driver_may=True, agent_may=True)
        agents = await self.sac.store.agents.list(owner)
        self.write_json({"agents": await self.models(agents)})

    async def post(self, user: str | None = None) -> None:
        ident = self.require_signed_in()
        self.authorize_user(user or ident.name, "create agents", driver_may=True)
        body = self.json_body()
        owner = user or body.get("user") or ident.name
        agent = await self.create_agent(ident, owner, body)
        self.set_header(
            "Location", f"{self.sac.prefix}api/users/{quote(owner, safe='')}/agents/{agent.slug}"
        )
        self.write_json((await self.models([agent]))[0], status=201)


def hub_refused(what: str, e: HubError) -> ApiError:
    return ApiError(502 if e.status >= 500 else 409, "hub_refused", f"{what}: {e.message}")


class AgentHandler(AgentOps):
    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "read an agent", driver_may=True, agent_may=True)
        self.write_json((await self.models([agent]))[0])

    async def patch(self, owner: str, slug: str) -> None:
        await self.get_agent(owner, slug, "change an agent")
        updated = await self.update_agent(owner, slug, self.json_body())
        model = (await self.models([updated]))[0]
        # Provider, model and resources reach a sandbox through its environment.
        model["restart_required"] = bool(model["server"] and model["server"]["ready"])
        self.write_json(model)

    async def delete(self, owner: str, slug: str) -> None:
        await self.delete_agent(owner, slug)
        self.set_status(204)
        self.finish()


class AgentActionHandler(AgentOps):
    """POST .../agents/<slug>/start, /stop or /restart: the agent's model afterwards."""

    def initialize(self, action: str) -> None:
        self.action = action

    async def post(self, owner: str, slug: str) -> None:
        if self.action == "stop":
            await self.stop_agent(owner, slug)
        elif self.action == "start":
            await self.start_agent(owner, slug)
        else:
            await self.restart_agent(owner, slug)
        agent = await self.get_agent(owner, slug, driver_may=True, agent_may=True)
        self.write_json(
            (await self.models([agent]))[0], status=200 if self.action == "stop" else 202
        )


class AgentUsageHandler(AgentBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(
            owner, slug, "read an agent's usage", driver_may=True, agent_may=True
        )
        days = await self.sac.store.usage.for_agent(agent.id)
        totals = {
            k: sum(d[k] for d in days)
            for k in (
                "requests",
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            )
        }
        system, user = await self.sac.store.settings.for_user(agent.owner)
        resolved = sac_settings.resolve(system, user, agent.overrides)
        month = await self.sac.store.usage.month_budget(agent.id, agent.owner)
        found = budgets(
            resolved, month.agent_used, month.owner_used, month.agent_reserved, month.owner_reserved
        )
        self.write_json(
            {
                "owner": owner,
                "slug": slug,
                "days": days,
                "totals": totals,
                # this calendar month (UTC): the agent's and its owner's token budgets
                "budget": {name: b.model() for name, b in found.items()},
            }
        )
