"""Agent endpoints: /api/agents and /api/users/<user>/agents[/<slug>]
(the operations are in operations/agents.py)."""

from __future__ import annotations

from urllib.parse import quote

from .base import BaseHandler
from .operations import agents as ops


class AgentsHandler(BaseHandler):
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
        agents = await self.ctx.store.agents.list(owner)
        self.write_json({"agents": await ops.agent_models(self.ctx, agents)})

    async def post(self, user: str | None = None) -> None:
        ident = self.require_signed_in()
        self.authorize_user(user or ident.name, "create agents", driver_may=True)
        body = self.json_body()
        owner = user or body.get("user") or ident.name
        agent = await ops.create_agent(self.ctx, self.actor, owner, body)
        self.set_header(
            "Location", f"{self.ctx.prefix}api/users/{quote(owner, safe='')}/agents/{agent.slug}"
        )
        self.write_json((await ops.agent_models(self.ctx, [agent]))[0], status=201)


class AgentHandler(BaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(owner, slug, "read an agent", driver_may=True, agent_may=True)
        self.write_json((await ops.agent_models(self.ctx, [agent]))[0])

    async def patch(self, owner: str, slug: str) -> None:
        await self.get_agent(owner, slug, "change an agent")
        updated = await ops.update_agent(self.ctx, self.actor, owner, slug, self.json_body())
        model = (await ops.agent_models(self.ctx, [updated]))[0]
        # Provider, model and resources reach a sandbox through its environment.
        model["restart_required"] = bool(model["server"] and model["server"]["ready"])
        self.write_json(model)

    async def delete(self, owner: str, slug: str) -> None:
        await ops.delete_agent(self.ctx, self.actor, owner, slug)
        self.set_status(204)
        self.finish()


class AgentActionHandler(BaseHandler):
    """POST .../agents/<slug>/start, /stop or /restart: the agent's model afterwards."""

    def initialize(self, action: str) -> None:
        self.action = action

    async def post(self, owner: str, slug: str) -> None:
        if self.action == "stop":
            await ops.stop_agent(self.ctx, self.actor, owner, slug)
        elif self.action == "start":
            await ops.start_agent(self.ctx, self.actor, owner, slug)
        else:
            await ops.restart_agent(self.ctx, self.actor, owner, slug)
        agent = await self.get_agent(owner, slug, driver_may=True, agent_may=True)
        self.write_json(
            (await ops.agent_models(self.ctx, [agent]))[0],
            status=200 if self.action == "stop" else 202,
        )


class AgentUsageHandler(BaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        agent = await self.get_agent(
            owner, slug, "read an agent's usage", driver_may=True, agent_may=True
        )
        self.write_json(await ops.agent_usage(self.ctx, agent))
