"""Who may do what, applied to an operation's actor: the rules of
``principals`` turned into the 4xx ``ApiError`` the caller gets."""

from __future__ import annotations

from ...errors import ApiError
from ...store import AgentRecord
from ..principals import Denial, Identity, agent_access, needs_admin, needs_person, user_access
from .context import Actor, ServiceContext


def deny_if(denial: Denial | None) -> None:
    if denial is not None:
        raise ApiError(denial.status, denial.code, denial.message)


def require_person(actor: Actor, what: str = "do this") -> Identity:
    """A person acting as themselves (or an administrator)."""
    deny_if(needs_person(actor.identity, what))
    return actor.identity


def require_admin(ctx: ServiceContext, actor: Actor) -> Identity:
    deny_if(needs_admin(actor.identity, ctx.admin_scope))
    return actor.identity


def authorize_user(
    actor: Actor, target: str, what: str = "do this", *, driver_may: bool = False,
    agent_may: bool = False,
) -> Identity:  # fmt: skip
    """The actor may act on user ``target``'s resources (else 404 or 403)."""
    deny_if(user_access(actor.identity, target, what, driver_may=driver_may, agent_may=agent_may))
    return actor.identity


async def get_agent(
    ctx: ServiceContext, actor: Actor, owner: str, slug: str, what: str = "do this", *,
    driver_may: bool = False, agent_may: bool = False,
) -> AgentRecord:  # fmt: skip
    """``owner``'s agent ``slug``, if the actor may do ``what`` on it (else 404/403).

    Persons act on their own agents, administrators on all; ``driver_may`` lets
    a driver of the owner, ``agent_may`` the agent's own sandbox."""
    ident = actor.identity
    # Checked before the lookup too, so other users' agents are not probed.
    deny_if(user_access(ident, owner, what, driver_may=driver_may, agent_may=agent_may))
    agent = await ctx.store.agents.get(owner, slug)
    if agent is None:
        raise ApiError(404, "not_found", "no such agent")
    deny_if(agent_access(ident, owner, agent.id, what, driver_may=driver_may, agent_may=agent_may))
    return agent
