"""Organisation provider keys: set by administrators (settings page or API), kept
encrypted in the database, used by the credential proxy for agents without a key
of their own. A key set here wins over one from the service's configuration
(``c.SacService.organisation_api_keys``). A key is never shown again: only its
last four characters."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ApiError
from ..providers import PRESETS
from .base import BaseHandler
from .openapi import _op, _path_params, _resp
from .validation import bad, check_fields

# Printable ASCII without spaces: what provider keys are made of.
_KEY = re.compile(r"[\x21-\x7e]{8,1000}")


def key_hint(key: str) -> str:
    return "…" + key[-4:]


def valid_provider(provider: str) -> str:
    if provider not in PRESETS:
        raise ApiError(404, "not_found", f"no provider preset {provider!r}; known: {list(PRESETS)}")
    return provider


def valid_key(value: Any) -> str:
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise bad("api_key", "expected 8-1000 printable ASCII characters without spaces")
    return value


def keys_model(sac: Any, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every provider preset and where its organisation key comes from, if any."""
    out = []
    for provider in PRESETS:
        row = rows.get(provider)
        configured = sac.organisation_api_keys.get(provider)
        out.append(
            {
                "provider": provider,
                "source": "service" if row else "configuration" if configured else None,
                "hint": row["hint"] if row else key_hint(configured) if configured else None,
                "updated_by": row["updated_by"] if row else None,
                "updated_at": row["updated_at"].isoformat() if row else None,
            }
        )
    return out


class OrgKeyOps(BaseHandler):
    """Setting and removing keys, shared by the API and the settings page; audited."""

    async def set_org_key(self, provider: str, value: Any) -> None:
        ident = self.require_admin()
        valid_provider(provider)
        key = valid_key(value)
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.org_keys.put(
                provider, self.sac.keybox.encrypt(key), key_hint(key), ident.name, conn=conn
            )
            await self.audit(
                "org_key.set",
                provider,
                before={"key_set": True, "hint": before} if before else None,
                after={"key_set": True, "hint": key_hint(key)},
                conn=conn,
            )
        await self.sac.reload_org_keys()

    async def clear_org_key(self, provider: str) -> None:
        self.require_admin()
        valid_provider(provider)
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.org_keys.delete(provider, conn=conn)
            if before is None:
                raise ApiError(404, "not_found", f"no {provider} key was set in the service")
            await self.audit(
                "org_key.clear",
                provider,
                before={"key_set": True, "hint": before},
                after=None,
                conn=conn,
            )
        await self.sac.reload_org_keys()


class OrgKeysHandler(BaseHandler):
    async def get(self) -> None:
        self.require_admin()
        rows = await self.sac.store.org_keys.list()
        self.write_json({"keys": keys_model(self.sac, rows)})


class OrgKeyHandler(OrgKeyOps):
    async def put(self, provider: str) -> None:
        self.require_admin()
        body = self.json_body()
        check_fields(body, {"api_key"})
        await self.set_org_key(provider, body.get("api_key"))
        rows = await self.sac.store.org_keys.list()
        self.write_json(next(k for k in keys_model(self.sac, rows) if k["provider"] == provider))

    async def delete(self, provider: str) -> None:
        self.require_admin()
        await self.clear_org_key(provider)
        self.set_status(204)
        self.finish()


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/organisation-keys", OrgKeysHandler),
        (prefix + r"api/organisation-keys/([a-z0-9-]+)", OrgKeyHandler),
    ]


def openapi_paths() -> dict[str, Any]:
    one = _path_params("provider")
    return {
        "/api/organisation-keys": {
            "get": _op(
                "Each provider preset's organisation key: source and hint (admin)",
                {"200": _resp("keys")},
                403,
            )
        },
        "/api/organisation-keys/{provider}": {
            "put": _op(
                "Set a provider's organisation key (admin; audited; never shown again)",
                {"200": _resp("the key's source and hint")},
                400,
                403,
                404,
                body={
                    "type": "object",
                    "required": ["api_key"],
                    "properties": {"api_key": {"type": "string", "minLength": 8}},
                },
                params=one,
            ),
            "delete": _op(
                "Remove the key set in the service (admin; audited)",
                {"204": _resp("removed")},
                403,
                404,
                params=one,
            ),
        },
    }
