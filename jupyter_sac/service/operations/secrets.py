"""Users' secrets: set and removed by their owner (an administrator may list their
names and remove them), kept encrypted, never shown again; granted to the owner's
agents, whose sandboxes get them at start (spawner/mixin.py). Setting, changing,
removing and granting are audited, never with a value (docs/secrets.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import ApiError
from ...rules import secrets as rules
from ...store import AgentRecord
from ...store.secrets import UserSecret
from ...store.tx import Conn
from ..openapi import CONTRACT
from .access import authorize_user, require_person
from .context import Actor, ServiceContext, audit


def secret_model(secret: UserSecret, agents: Sequence[str]) -> dict[str, Any]:
    """A secret as the API shows it: everything but its value."""
    return {
        "name": secret.name,
        "description": secret.description,
        "created_at": secret.created_at.isoformat(),
        "updated_at": secret.updated_at.isoformat(),
        "updated_by": secret.updated_by,
        "agents": list(agents),
    }


def _owner_of(actor: Actor, user: str | None, what: str) -> str:
    """Whose secrets: the caller's own, or (administrators) ``user``'s. Agents and
    their drivers never reach secrets, not even their owner's names."""
    require_person(actor, what)
    owner = user or actor.name
    authorize_user(actor, owner, what)
    return owner


async def list_secrets(ctx: ServiceContext, actor: Actor, user: str | None) -> list[dict[str, Any]]:
    owner = _owner_of(actor, user, "list secrets")
    granted = await ctx.store.secrets.granted_to(owner)
    return [
        secret_model(s, granted.get(s.name, [])) for s in await ctx.store.secrets.of_owner(owner)
    ]


async def set_secret(
    ctx: ServiceContext, actor: Actor, name: str, body: Any
) -> tuple[dict[str, Any], bool]:
    """Set the caller's secret ``name`` from ``{"value", "description"?}``: (its
    model, whether it is new). Only its owner sets a secret, administrators too."""
    require_person(actor, "set secrets")
    CONTRACT.check("SecretName", name, within="name")
    CONTRACT.check("SecretPut", body)
    owner = actor.name
    description = str(body.get("description", ""))
    async with ctx.store.transaction() as conn:
        if await ctx.store.secrets.count(owner, conn=conn) >= rules.MAX_SECRETS_PER_USER:
            existing = {s.name for s in await ctx.store.secrets.of_owner(owner, conn=conn)}
            if name not in existing:
                raise ApiError(
                    403,
                    "secret_limit_reached",
                    f"{owner} already has the maximum of {rules.MAX_SECRETS_PER_USER} secrets",
                )
        secret, before = await ctx.store.secrets.put(
            owner, name, ctx.keybox.encrypt(body["value"]), description, actor.name, conn=conn
        )
        await audit(
            ctx,
            actor,
            "secret.set",
            name,
            target_user=owner,
            before={"description": before.description, "value_changed": True} if before else None,
            after={"description": secret.description},
            conn=conn,
        )
        granted = await ctx.store.secrets.granted_to(owner, conn=conn)
    return secret_model(secret, granted.get(name, [])), before is None


async def delete_secret(ctx: ServiceContext, actor: Actor, user: str | None, name: str) -> None:
    """Remove a secret and every grant of it (the agents that had it lose it at
    their next start)."""
    owner = _owner_of(actor, user, "remove secrets")
    async with ctx.store.transaction() as conn:
        removed, agents = await ctx.store.secrets.delete(owner, name, conn=conn)
        if removed is None:
            raise ApiError(404, "not_found", f"{owner} has no secret {name!r}")
        await audit(
            ctx,
            actor,
            "secret.delete",
            name,
            target_user=owner,
            before={"description": removed.description, "agents": agents},
            after=None,
            conn=conn,
        )


async def grants_from_body(
    ctx: ServiceContext, actor: Actor, owner: str, items: Any
) -> list[dict[str, Any]]:
    """An agent's grants from an API body's ``secrets`` (already checked against
    the contract): only the owner grants their own secrets, in person."""
    require_person(actor, "grant secrets to an agent")
    if owner != actor.name:
        raise ApiError(
            403, "forbidden", "only the owner grants their secrets to their agents", field="secrets"
        )
    known = [s.name for s in await ctx.store.secrets.of_owner(owner)]
    try:
        grants = rules.parse_grants(items, known)
    except rules.GrantError as e:
        field = "secrets" if e.index is None else f"secrets/{e.index}"
        raise ApiError(400, "invalid_grant", str(e), field=field) from None
    return [g.to_json() for g in grants]


async def audit_grants(
    ctx: ServiceContext,
    actor: Actor,
    before: AgentRecord | None,
    after: AgentRecord,
    conn: Conn | None = None,
) -> None:
    """Record a change of which secrets an agent gets (names and targets only)."""
    old = list(before.secrets) if before else []
    if old == list(after.secrets):
        return
    await audit(
        ctx,
        actor,
        "agent.secrets",
        after.slug,
        target_user=after.owner,
        before={"grants": old} if before else None,
        after={"grants": list(after.secrets)},
        conn=conn,
    )
