"""Settings: what applies to a user and to an agent, and the changes
administrators make (validated, stored and audited in one transaction)."""

from __future__ import annotations

from typing import Any

from ...errors import ApiError
from ...rules import settings as sac_settings
from ...store import AgentRecord
from ..validation import valid_settings
from .access import require_admin
from .context import Actor, ServiceContext, audit


async def user_settings(ctx: ServiceContext, user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The system overrides and ``user``'s own."""
    return await ctx.store.settings.for_user(user)


async def settings_for_user(ctx: ServiceContext, user: str) -> dict[str, Any]:
    """What applies to ``user``: the ceiling of their agents' settings, their allowed
    providers and their limits."""
    system, user_overrides = await ctx.store.settings.for_user(user)
    return sac_settings.resolve_user(system, user_overrides)


async def effective_settings_for_agent(ctx: ServiceContext, agent: AgentRecord) -> dict[str, Any]:
    """What applies to ``agent``: system, then its owner's, then its own overrides
    (within its owner's ceiling)."""
    system, user_overrides = await ctx.store.settings.for_user(agent.owner)
    return sac_settings.resolve(system, user_overrides, agent.overrides)


async def replace_system_settings(ctx: ServiceContext, actor: Actor, body: Any) -> dict[str, Any]:
    """Replace the system overrides (administrators); returns them as stored."""
    ident = require_admin(ctx, actor)
    overrides = valid_settings(body, "system")
    async with ctx.store.transaction() as conn:
        before = await ctx.store.settings.put("system", "", overrides, ident.name, conn=conn)
        await audit(
            ctx,
            actor,
            "settings.system.replace",
            "system",
            before=before,
            after=overrides,
            conn=conn,
        )
    return overrides


async def replace_user_settings(
    ctx: ServiceContext, actor: Actor, user: str, body: Any
) -> dict[str, Any]:
    """Replace ``user``'s overrides (administrators; the user must exist on the hub)."""
    ident = require_admin(ctx, actor)
    overrides = valid_settings(body, "user")
    if await ctx.hub.get_user(user) is None:
        raise ApiError(404, "not_found", f"no such user {user!r}")
    async with ctx.store.transaction() as conn:
        before = await ctx.store.settings.put("user", user, overrides, ident.name, conn=conn)
        await audit(
            ctx,
            actor,
            "settings.user.replace",
            user,
            target_user=user,
            before=before,
            after=overrides,
            conn=conn,
        )
    return overrides


async def clear_user_settings(ctx: ServiceContext, actor: Actor, user: str) -> None:
    ident = require_admin(ctx, actor)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.settings.put("user", user, {}, ident.name, conn=conn)
        await audit(
            ctx,
            actor,
            "settings.user.clear",
            user,
            target_user=user,
            before=before,
            after={},
            conn=conn,
        )


async def replace_group_quota(
    ctx: ServiceContext, actor: Actor, group: str, body: Any
) -> dict[str, Any]:
    """Replace a group's quota overrides (administrators); returns them as stored."""
    ident = require_admin(ctx, actor)
    overrides = valid_settings(body, "group")
    async with ctx.store.transaction() as conn:
        before = await ctx.store.settings.put("group", group, overrides, ident.name, conn=conn)
        await audit(
            ctx,
            actor,
            "settings.group.replace",
            group,
            before=before,
            after=overrides,
            conn=conn,
        )
    return overrides
