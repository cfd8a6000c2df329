"""Settings endpoints: resolved values, system and per-user overrides, provider presets."""

from __future__ import annotations

from dataclasses import asdict

from ..rules import settings as sac_settings
from ..rules.providers import PRESETS
from .base import BaseHandler
from .operations import settings as ops


def specs_model() -> list[dict]:
    out = []
    for spec in sac_settings.SPECS.values():
        item = asdict(spec)
        item["levels"] = sorted(spec.levels)
        item["default"] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        item["choices"] = list(spec.choices)
        out.append(item)
    return out


class MySettingsHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.require_person("read settings")
        resolved = await ops.settings_for_user(self.ctx, ident.name)
        self.write_json(
            {
                "user": ident.name,
                "resolved": sac_settings.jsonable(resolved),
                "specs": specs_model(),
            }
        )


class SystemSettingsHandler(BaseHandler):
    async def get(self) -> None:
        self.require_admin()
        overrides = await self.ctx.store.settings.get("system")
        self.write_json(
            {
                "overrides": sac_settings.jsonable(overrides),
                "resolved": sac_settings.jsonable(sac_settings.resolve_user(overrides, {})),
                "specs": specs_model(),
            }
        )

    async def put(self) -> None:
        self.require_admin()
        await ops.replace_system_settings(self.ctx, self.actor, self.json_body())
        await self.get()


class UserSettingsHandler(BaseHandler):
    async def get(self, user: str) -> None:
        self.authorize_user(user, "read settings")
        system, overrides = await ops.user_settings(self.ctx, user)
        self.write_json(
            {
                "user": user,
                "overrides": sac_settings.jsonable(overrides),
                "resolved": sac_settings.jsonable(sac_settings.resolve_user(system, overrides)),
            }
        )

    async def put(self, user: str) -> None:
        self.require_admin()
        await ops.replace_user_settings(self.ctx, self.actor, user, self.json_body())
        await self.get(user)

    async def delete(self, user: str) -> None:
        self.require_admin()
        await ops.clear_user_settings(self.ctx, self.actor, user)
        self.set_status(204)
        self.finish()


class ProvidersHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.require_signed_in()
        allowed = (await ops.settings_for_user(self.ctx, ident.name))["allowed_providers"]
        self.write_json(
            {
                "providers": [
                    {
                        **asdict(p),
                        "allowed": p.name in allowed,
                        "organisation_key_available": p.name in self.ctx.org_keys,
                    }
                    for p in PRESETS.values()
                ]
            }
        )
