"""Agent templates' endpoints (the rules: operations/templates.py)."""

from __future__ import annotations

from typing import Any

from .base import BaseHandler
from .operations import agents as agent_ops
from .operations import templates as ops
from .routes import NAME, SLUG, USER


class TemplatesHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json({"templates": await ops.list_templates(self.ctx, self.actor)})

    async def post(self) -> None:
        # Who before what: a refused caller learns nothing of the body's rules.
        self.require_person("create templates")
        model = await ops.create_template(self.ctx, self.actor, self.json_body())
        self.set_header("Location", f"{self.ctx.prefix}api/templates/{model['id']}")
        self.write_json(model, status=201)


class TemplateHandler(BaseHandler):
    async def get(self, template_id: str) -> None:
        self.write_json(await ops.get_template(self.ctx, self.actor, template_id))

    async def patch(self, template_id: str) -> None:
        # Who before what: a refused caller learns nothing of the body's rules.
        await ops.may_change(self.ctx, self.actor, template_id)
        body = self.json_body()
        self.write_json(await ops.update_template(self.ctx, self.actor, template_id, body))

    async def delete(self, template_id: str) -> None:
        await ops.delete_template(self.ctx, self.actor, template_id)
        self.set_status(204)
        self.finish()


class TemplateForkHandler(BaseHandler):
    async def post(self, template_id: str) -> None:
        self.require_person("fork templates")
        await ops.get_template(self.ctx, self.actor, template_id)  # who before what
        model = await ops.fork_template(self.ctx, self.actor, template_id, self.json_body())
        self.set_header("Location", f"{self.ctx.prefix}api/templates/{model['id']}")
        self.write_json(model, status=201)


class AgentTemplateUpdateHandler(BaseHandler):
    """POST .../agents/<slug>/template-update: the agent at its template's latest."""

    async def post(self, owner: str, slug: str) -> None:
        agent = await agent_ops.update_agent_template(self.ctx, self.actor, owner, slug)
        model = (await agent_ops.agent_models(self.ctx, [agent]))[0]
        model["restart_required"] = bool(model["server"] and model["server"]["ready"])
        self.write_json(model)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/templates", TemplatesHandler),
        (prefix + f"api/templates/{NAME}", TemplateHandler),
        (prefix + f"api/templates/{NAME}/fork", TemplateForkHandler),
        (prefix + f"api/users/{USER}/agents/{SLUG}/template-update", AgentTemplateUpdateHandler),
    ]
