"""Settings endpoints: resolved values, system and per-user overrides, provider presets."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .. import settings as sac_settings
from ..errors import ApiError
from ..providers import PRESETS
from .base import BaseHandler


def specs_model() -> list[dict]:
    out = []
    for spec in sac_settings.SPECS.values():
        item = asdict(spec)
        item["levels"] = sorted(spec.levels)
        item["default"] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        item["choices"] = list(spec.choices)
        out.append(item)
    return out


def _validated(body: dict, level: str) -> dict:
    try:
        return sac_settings.validate_overrides(body, level)  # type: ignore[arg-type]
    except sac_settings.SettingsError as e:
        raise ApiError(400, "invalid_setting", f"{e.field}: {e.message}", field=e.field) from None


class SettingsOps(BaseHandler):
    """Settings changes, shared by the API and the admin pages: validated, stored and
    audited in one transaction."""

    async def replace_system_settings(self, body: dict[str, Any]) -> None:
        ident = self.require_admin()
        overrides = sac_settings.jsonable(_validated(body, "system"))
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.settings.put(
                "system", "", overrides, ident.name, conn=conn
            )
            await self.audit(
                "settings.system.replace", "system", before=before, after=overrides, conn=conn
            )

    async def replace_user_settings(self, user: str, body: dict[str, Any]) -> None:
        ident = self.require_admin()
        overrides = sac_settings.jsonable(_validated(body, "user"))
        if await self.sac.hub.get_user(user) is None:
            raise ApiError(404, "not_found", f"no such user {user!r}")
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.settings.put(
                "user", user, overrides, ident.name, conn=conn
            )
            await self.audit(
                "settings.user.replace",
                user,
                target_user=user,
                before=before,
                after=overrides,
                conn=conn,
            )

    async def clear_user_settings(self, user: str) -> None:
        ident = self.require_admin()
        async with self.sac.store.transaction() as conn:
            before = await self.sac.store.settings.put("user", user, {}, ident.name, conn=conn)
            await self.audit(
                "settings.user.clear", user, target_user=user, before=before, after={}, conn=conn
            )


class MySettingsHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.require_person("read settings")
        system, user = await self.sac.store.settings.for_user(ident.name)
        self.write_json(
            {
                "user": ident.name,
                "resolved": sac_settings.jsonable(sac_settings.resolve_user(system, user)),
                "specs": specs_model(),
            }
        )


class SystemSettingsHandler(SettingsOps):
    async def get(self) -> None:
        self.require_admin()
        overrides = await self.sac.store.settings.get("system")
        self.write_json(
            {
                "overrides": sac_settings.jsonable(overrides),
                "resolved": sac_settings.jsonable(sac_settings.resolve_user(overrides, {})),
                "specs": specs_model(),
            }
        )

    async def put(self) -> None:
        self.require_admin()
        await self.replace_system_settings(self.json_body())
        await self.get()


class UserSettingsHandler(SettingsOps):
    async def get(self, user: str) -> None:
        self.authorize_user(user, "read settings")
        system, overrides = await self.sac.store.settings.for_user(user)
        self.write_json(
            {
                "user": user,
                "overrides": sac_settings.jsonable(overrides),
                "resolved": sac_settings.jsonable(sac_settings.resolve_user(system, overrides)),
            }
        )

    async def put(self, user: str) -> None:
        self.require_admin()
        await self.replace_user_settings(user, self.json_body())
        await self.get(user)

    async def delete(self, user: str) -> None:
        self.require_admin()
        await self.clear_user_settings(user)
        self.set_status(204)
        self.finish()


class ProvidersHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.require_signed_in()
        system, user = await self.sac.store.settings.for_user(ident.name)
        allowed = sac_settings.resolve_user(system, user)["allowed_providers"]
        self.write_json(
            {
                "providers": [
                    {
                        **asdict(p),
                        "allowed": p.name in allowed,
                        "organisation_key_available": p.name in self.sac.org_keys,
                    }
                    for p in PRESETS.values()
                ]
            }
        )
