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


async def _put_overrides(
    ctx: ServiceContext,
    actor: Actor,
    scope: str,
    subject: str,
    overrides: dict[str, Any],
    action: str,
    *,
    target_user: str | None = None,
) -> dict[str, Any]:
    """Store one level's overrides and the audit entry for it in one transaction
    (the caller has checked ``actor`` is an administrator); the entry's target is
    the subject (``system`` for the system level)."""
    async with ctx.store.transaction() as conn:
        before = await ctx.store.settings.put(scope, subject, overrides, actor.name, conn=conn)
        await audit(ctx, actor, action, subject or scope, target_user=target_user,
                    before=before, after=overrides, conn=conn)  # fmt: skip
    return overrides


async def replace_system_settings(ctx: ServiceContext, actor: Actor, body: Any) -> dict[str, Any]:
    """Replace the system overrides (administrators); returns them as stored."""
    require_admin(ctx, actor)
    overrides = valid_settings(body, "system")
    return await _put_overrides(ctx, actor, "system", "", overrides, "settings.system.replace")


async def replace_user_settings(
    ctx: ServiceContext, actor: Actor, user: str, body: Any
) -> dict[str, Any]:
    """Replace ``user``'s overrides (administrators; the user must exist on the hub)."""
    require_admin(ctx, actor)
    overrides = valid_settings(body, "user")
    if await ctx.hub.get_user(user) is None:
        raise ApiError(404, "not_found", f"no such user {user!r}")
    return await _put_overrides(
        ctx, actor, "user", user, overrides, "settings.user.replace", target_user=user
    )


async def clear_user_settings(ctx: ServiceContext, actor: Actor, user: str) -> None:
    require_admin(ctx, actor)
    await _put_overrides(ctx, actor, "user", user, {}, "settings.user.clear", target_user=user)


async def replace_group_quota(
    ctx: ServiceContext, actor: Actor, group: str, body: Any
) -> dict[str, Any]:
    """Replace a group's quota overrides (administrators); returns them as stored."""
    require_admin(ctx, actor)
    overrides = valid_settings(body, "group")
    return await _put_overrides(ctx, actor, "group", group, overrides, "settings.group.replace")
