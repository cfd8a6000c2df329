"""Users' webhooks' endpoints (the rules: operations/webhooks.py; the deliverer:
webhook_delivery.py)."""

from __future__ import annotations

from typing import Any

from .base import BaseHandler
from .operations import webhooks as ops
from .routes import NAME


class WebhooksHandler(BaseHandler):
    async def get(self) -> None:
        hooks = await ops.list_webhooks(self.ctx, self.actor, self.get_argument("user", None))
        self.write_json({"webhooks": hooks})

    async def post(self) -> None:
        # Who before what: a refused caller learns nothing of the body's rules.
        self.require_person("create webhooks")
        self.write_json(await ops.create_webhook(self.ctx, self.actor, self.json_body()), 201)


class WebhookHandler(BaseHandler):
    async def get(self, webhook_id: str) -> None:
        self.write_json(await ops.get_webhook(self.ctx, self.actor, webhook_id))

    async def patch(self, webhook_id: str) -> None:
        # Who before what: another user's id is not found, whatever the body says.
        await ops.get_webhook(self.ctx, self.actor, webhook_id)
        body = self.json_body()
        self.write_json(await ops.change_webhook(self.ctx, self.actor, webhook_id, body))

    async def delete(self, webhook_id: str) -> None:
        user = self.get_argument("user", None)
        await ops.delete_webhook(self.ctx, self.actor, user, webhook_id)
        self.set_status(204)
        self.finish()


class WebhookDeliveriesHandler(BaseHandler):
    async def get(self, webhook_id: str) -> None:
        deliveries = await ops.list_deliveries(self.ctx, self.actor, webhook_id)
        self.write_json({"deliveries": deliveries})


class WebhookTestHandler(BaseHandler):
    async def post(self, webhook_id: str) -> None:
        self.write_json(await ops.test_webhook(self.ctx, self.actor, webhook_id), 202)


class WebhookSecretHandler(BaseHandler):
    async def post(self, webhook_id: str) -> None:
        self.write_json(await ops.new_webhook_secret(self.ctx, self.actor, webhook_id))


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/webhooks", WebhooksHandler),
        (prefix + f"api/webhooks/{NAME}", WebhookHandler),
        (prefix + f"api/webhooks/{NAME}/deliveries", WebhookDeliveriesHandler),
        (prefix + f"api/webhooks/{NAME}/test", WebhookTestHandler),
        (prefix + f"api/webhooks/{NAME}/secret", WebhookSecretHandler),
    ]
