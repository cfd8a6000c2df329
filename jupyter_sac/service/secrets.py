"""Users' secrets' endpoints (the rules: operations/secrets.py)."""

from __future__ import annotations

from typing import Any

from .base import BaseHandler
from .operations import secrets as ops
from .routes import NAME


class SecretsHandler(BaseHandler):
    async def get(self) -> None:
        secrets = await ops.list_secrets(self.ctx, self.actor, self.get_argument("user", None))
        self.write_json({"secrets": secrets})


class SecretHandler(BaseHandler):
    async def put(self, name: str) -> None:
        # Who before what: a refused caller learns nothing of the body's rules.
        self.require_person("set secrets")
        model, created = await ops.set_secret(self.ctx, self.actor, name, self.json_body())
        self.write_json(model, status=201 if created else 200)

    async def delete(self, name: str) -> None:
        await ops.delete_secret(self.ctx, self.actor, self.get_argument("user", None), name)
        self.set_status(204)
        self.finish()


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/secrets", SecretsHandler),
        (prefix + f"api/secrets/{NAME}", SecretHandler),
    ]
