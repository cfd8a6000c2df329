"""Organisation provider keys: set by administrators (settings page or API), kept
encrypted in the database, used by the credential proxy for agents without a key
of their own. A key set here wins over one from the service's configuration
(``c.SacService.organisation_api_keys``). A key is never shown again: only its
last four characters."""

from __future__ import annotations

from typing import Any

from ...errors import ApiError
from ...rules.providers import PRESETS
from ..openapi import CONTRACT
from .access import require_admin
from .context import Actor, ServiceContext, audit


def key_hint(key: str) -> str:
    return "…" + key[-4:]


def valid_provider(provider: str) -> str:
    if provider not in PRESETS:
        raise ApiError(404, "not_found", f"no provider preset {provider!r}; known: {list(PRESETS)}")
    return provider


async def list_org_keys(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every provider preset and where its organisation key comes from, if any."""
    rows = await ctx.store.org_keys.list()
    out = []
    for provider in PRESETS:
        row = rows.get(provider)
        configured = ctx.org_keys.configured.get(provider)
        out.append(
            {
                "provider": provider,
                "source": "service" if row else "configuration" if configured else None,
                "hint": row.hint if row else key_hint(configured) if configured else None,
                "updated_by": row.updated_by if row else None,
                "updated_at": row.updated_at.isoformat() if row else None,
            }
        )
    return out


async def set_org_key(ctx: ServiceContext, actor: Actor, provider: str, value: Any) -> None:
    """Set ``provider``'s organisation key (administrators; audited, never its value)."""
    ident = require_admin(ctx, actor)
    valid_provider(provider)
    CONTRACT.check("ApiKey", value, within="api_key")
    key = str(value)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.org_keys.put(
            provider, ctx.keybox.encrypt(key), key_hint(key), ident.name, conn=conn
        )
        await audit(
            ctx,
            actor,
            "org_key.set",
            provider,
            before={"key_set": True, "hint": before} if before else None,
            after={"key_set": True, "hint": key_hint(key)},
            conn=conn,
        )
    await ctx.org_keys.reload(ctx.store, ctx.keybox)


async def clear_org_key(ctx: ServiceContext, actor: Actor, provider: str) -> None:
    """Remove the key set in the service (the configured one, if any, applies again)."""
    require_admin(ctx, actor)
    valid_provider(provider)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.org_keys.delete(provider, conn=conn)
        if before is None:
            raise ApiError(404, "not_found", f"no {provider} key was set in the service")
        await audit(
            ctx,
            actor,
            "org_key.clear",
            provider,
            before={"key_set": True, "hint": before},
            after=None,
            conn=conn,
        )
    await ctx.org_keys.reload(ctx.store, ctx.keybox)
