"""Human-in-the-loop: reading and deciding requests, and agents' HITL policies
(the same rules for the API, the approvals pages and the admin queue)."""

from __future__ import annotations

from typing import Any

from ...errors import ApiError
from ...rules import events
from ...rules.hitl import (
    DEFAULT_POLICY,
    PolicyError,
    answer_text_problem,
    default_option,
    validate_policy,
)
from ...store import AgentRecord
from ...store.hitl import PENDING, request_model
from ...store.tx import Conn
from .. import metrics
from ..openapi import CONTRACT
from ..validation import bad, optional_text
from .access import authorize_user, get_agent, require_admin, require_person
from .context import Actor, ServiceContext, audit
from .events import record, ring

MAX_REASON = 2000


async def record_decided(ctx: ServiceContext, conn: Conn, row: dict[str, Any]) -> None:
    """``hitl.decided`` on the owner's stream for a request that is no longer pending."""
    model = request_model(row)
    await record(
        ctx, conn, row["owner"], events.HITL_DECIDED, events.hitl_decided(model),
        agent=row["agent_slug"],
    )  # fmt: skip


async def file_request(
    ctx: ServiceContext, agent: AgentRecord, **fields: Any
) -> tuple[dict[str, Any], bool]:
    """File a request for ``agent`` (its sandbox asks; the fields of
    ``store.hitl.file``): (the request, whether it is new). A new one is on its
    owner's event stream (``hitl.requested``) with it, in one transaction."""
    async with ctx.store.transaction() as conn:
        row, created = await ctx.store.hitl.file(
            agent_id=agent.id, owner=agent.owner, agent_slug=agent.slug, conn=conn, **fields
        )
        if created:
            model = request_model(row)
            await record(
                ctx, conn, agent.owner, events.HITL_REQUESTED, events.hitl_requested(model),
                agent=agent.slug,
            )  # fmt: skip
    if created:
        metrics.HITL_REQUESTS.labels(row["kind"]).inc()
        ring(ctx, agent.owner)
    return row, created


async def expire_due(ctx: ServiceContext) -> None:
    """Resolve every request past its expiry (the default decision), tell each
    owner's stream, and wake the requests' waiters."""
    async with ctx.store.transaction() as conn:
        expired = await ctx.store.hitl.expire_due(conn=conn)
        # One owner after another, in one order: appends lock the owner's stream
        # until the transaction ends, and two transactions locking several owners
        # in different orders could deadlock.
        for row in sorted(expired, key=lambda r: (r["owner"], r["created_at"], str(r["id"]))):
            await record_decided(ctx, conn, row)
    for row in expired:
        metrics.observe_decision("timeout")
        ctx.hitl_waiters.notify(str(row["id"]))
    ring(ctx, *{row["owner"] for row in expired})


async def cancel_request(
    ctx: ServiceContext, agent: AgentRecord, request_id: str
) -> dict[str, Any] | None:
    """The sandbox of ``agent`` withdraws its request (the prompt went away): the
    cancelled request, or None when it was no longer pending."""
    async with ctx.store.transaction() as conn:
        cancelled = await ctx.store.hitl.cancel(request_id, agent.id, conn=conn)
        if cancelled is not None:
            await record_decided(ctx, conn, cancelled)
    if cancelled is not None:
        ctx.hitl_waiters.notify(request_id)
        ring(ctx, agent.owner)
    return cancelled


def decision_snapshots(
    pending: dict[str, Any], decided: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A decided request before and after, as the audit log records it."""
    asked = ("kind", "tool", "input", "question", "options")
    before = {"agent": pending["agent_slug"], **{k: pending[k] for k in asked}, "status": PENDING}
    if pending["text_max"] is not None:
        before["text_max"] = pending["text_max"]
    after = {k: decided[k] for k in ("status", "decision", "option", "reason")}
    if decided["answer_text"] is not None:
        after["text"] = decided["answer_text"]  # what was typed at the prompt
    return before, after


async def own_request(
    ctx: ServiceContext, actor: Actor, request_id: str, *, readers: bool = False
) -> dict[str, Any]:
    """A request the actor may see: its owner's (as a person), any for admins;
    with ``readers`` also its owner's drivers and the sandbox of the agent that
    filed it (they show requests and hand over; they never decide them)."""
    ident = actor.identity
    row = await ctx.store.hitl.get(request_id)
    if row is None or (row["owner"] != ident.name and not ident.admin):
        raise ApiError(404, "not_found", "no such request")
    if ident.kind == "agent" and readers and row["agent_id"] != ident.agent.id:
        raise ApiError(404, "not_found", "no such request")
    authorize_user(actor, row["owner"], "see approvals", driver_may=readers, agent_may=readers)
    return row


async def decide_request(
    ctx: ServiceContext, actor: Actor, request_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Allow or deny a pending request: its owner or an administrator, as a
    person. No token an agent holds can (its agent token, its server token, a
    sibling's): their scripts and their model are indistinguishable."""
    row = await own_request(ctx, actor, request_id, readers=True)
    ident = require_person(actor, "decide approvals")
    CONTRACT.check("HitlDecision", body)
    decision = body["decision"]
    reason = optional_text(body, "reason", MAX_REASON)
    option = body.get("option")
    text = body.get("text")
    if text is not None:
        problem = answer_text_problem(text, row["text_max"])
        if problem is None and decision != "allow":
            problem = "a text answer goes with allow"
        if problem is None and option is not None:
            problem = "either an option or a text answer, not both"
        if problem is not None:
            raise bad("text", problem)
    elif row["kind"] == "terminal":
        keys = [o["key"] for o in row["options"] or []]
        if option is None:
            option = default_option(row["options"], decision)
        elif option not in keys:
            raise bad("option", f"expected one of {keys}")
    elif option is not None:
        raise bad("option", "only terminal prompts have options")
    if row["status"] != PENDING:
        raise ApiError(409, "already_decided", f"the request is already {row['status']}")
    async with ctx.store.transaction() as conn:
        decided = await ctx.store.hitl.decide(
            request_id, decision, option, reason, ident.name, text=text, conn=conn
        )
        if decided is not None:
            await record_decided(ctx, conn, decided)
        if decided is not None and row["owner"] != ident.name:
            before, after = decision_snapshots(row, decided)
            await audit(
                ctx,
                actor,
                "hitl.decide",
                request_id,
                target_user=row["owner"],
                before=before,
                after=after,
                conn=conn,
            )
    if decided is None:
        current = await ctx.store.hitl.get(request_id)
        status = current["status"] if current else "gone"
        if status == PENDING:  # past its expiry, not yet reaped
            status = "timed out"
        raise ApiError(409, "already_decided", f"the request is already {status}")
    metrics.observe_decision(decision, row["created_at"])
    ctx.hitl_waiters.notify(request_id)
    ring(ctx, row["owner"])
    return decided


async def default_policy(ctx: ServiceContext) -> dict[str, Any]:
    """What an agent without a policy of its own follows: the organisation's
    default (set by an administrator), else the built-in one."""
    policy = await ctx.store.hitl.get_default_policy()
    return policy if policy is not None else DEFAULT_POLICY


async def agent_policy(ctx: ServiceContext, agent_id: int) -> dict[str, Any]:
    """The agent's HITL policy (the organisation's default when it has none)."""
    policy = await ctx.store.hitl.get_policy(agent_id)
    return policy if policy is not None else await default_policy(ctx)


def checked_policy(raw: Any) -> dict[str, Any]:
    """``raw`` as a valid, normalised policy, or the 400 naming the faulty field
    (``policy.deny[2]``): the check every editor of a policy runs, as typed too."""
    try:
        return validate_policy(raw)
    except PolicyError as e:
        raise bad(e.field, e.message) from None


async def replace_default_policy(ctx: ServiceContext, actor: Actor, raw: Any) -> dict[str, Any]:
    """Set the organisation's default policy (administrators; audited); ``None``
    returns to the built-in one. Returns the default that now applies."""
    ident = require_admin(ctx, actor)
    policy = None if raw is None else checked_policy(raw)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.hitl.put_default_policy(policy, ident.name, conn=conn)
        await audit(
            ctx,
            actor,
            "hitl.default_policy.replace",
            "default",
            before=before,
            after=policy,
            conn=conn,
        )
    return policy if policy is not None else DEFAULT_POLICY


async def replace_policy(
    ctx: ServiceContext, actor: Actor, owner: str, slug: str, raw: Any
) -> dict[str, Any]:
    """Validate ``raw`` (400 naming the field, e.g. ``policy.deny[2]``) and store it
    as the agent's policy; returns the normalised policy. Persons and administrators
    only: a policy decides what the agent may do without asking them."""
    agent = await get_agent(ctx, actor, owner, slug, "change a HITL policy")
    policy = checked_policy(raw)
    async with ctx.store.transaction() as conn:
        before = await ctx.store.hitl.put_policy(agent.id, policy, actor.name, conn=conn)
        if owner != actor.name:
            await audit(
                ctx,
                actor,
                "hitl.policy.replace",
                slug,
                target_user=owner,
                before=before,
                after=policy,
                conn=conn,
            )
    return policy
