"""Organisation provider keys' endpoints (the rules: operations/org_keys.py)."""

from __future__ import annotations

from typing import Any

from .base import BaseHandler
from .operations import org_keys as ops
from .routes import PROVIDER


class OrgKeysHandler(BaseHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json({"keys": await ops.list_org_keys(self.ctx)})


class OrgKeyHandler(BaseHandler):
    async def put(self, provider: str) -> None:
        self.require_admin()
        body = self.json_body()
        await ops.set_org_key(self.ctx, self.actor, provider, body.get("api_key"))
        keys = await ops.list_org_keys(self.ctx)
        self.write_json(next(k for k in keys if k["provider"] == provider))

    async def delete(self, provider: str) -> None:
        self.require_admin()
        await ops.clear_org_key(self.ctx, self.actor, provider)
        self.set_status(204)
        self.finish()


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/organisation-keys", OrgKeysHandler),
        (prefix + f"api/organisation-keys/{PROVIDER}", OrgKeyHandler),
    ]
