"""The service's maintenance: conversation history past its retention, and what
deleted agents left in the workspace once their grace period is over.

Each run removes at most ``batch`` rows of each kind (and ``batch`` objects) and
writes its audit entry in the same transaction as its deletes; the loop
(service/maintenance.py) runs again at once while a run removed something, so a
large backlog goes in bounded steps with the event loop free between them.

Objects are deleted before their index rows, outside the transaction: a failure
in between leaves rows pointing at nothing of a deleted agent (nobody reads
them), which the next run removes; the other order could leave objects no row
names, found by nobody.

Usage rows (usage_daily) are never touched: they are the accounting.
Tokens, skill installs and the HITL policy of an agent go when it is deleted
(ON DELETE CASCADE): nothing of them waits for the grace period.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ...rules.retention import HistoryCutoffs, deleted_agent_cutoff, history_cutoffs
from ...rules.settings import resolve_user
from ...rules.workspace import agent_space, space_prefix
from ...store.maintenance import DeletedAgent, OwnerFilter
from .. import metrics
from .access import require_admin
from .context import Actor, ServiceContext

# Rows (or objects) of each kind one run removes at most.
BATCH = 1000
# Deleted agents one run looks at (their files share the batch).
AGENTS_PER_RUN = 20
# Who the audit log names for what the service does on its own (as the culler).
MAINTENANCE_ACTOR = "sac-service"


@dataclass
class Removed:
    history_events: int = 0
    history_sessions: int = 0
    workspace_files: int = 0
    objects: int = 0
    deleted_agents: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def add(self, other: Removed) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Plan:
    """What a run applies: the history cutoffs and the end of the grace period."""

    history: HistoryCutoffs
    deleted_before: datetime
    system: dict[str, Any] = field(default_factory=dict)

    def history_filters(self) -> list[tuple[datetime, OwnerFilter]]:
        """(cutoff, whose history) for each statement: every owner without a
        retention of their own at the system's, then each that has one at theirs."""
        filters = []
        if self.history.default is not None:
            filters.append(
                (self.history.default, OwnerFilter(except_owners=tuple(self.history.by_user)))
            )
        for user, cutoff in sorted(self.history.by_user.items()):
            if cutoff is not None:
                filters.append((cutoff, OwnerFilter(owner=user)))
        return filters


async def plan_at(ctx: ServiceContext, now: datetime) -> Plan:
    system = await ctx.store.settings.get("system")
    users = await ctx.store.settings.list_users()
    return Plan(history_cutoffs(now, system, users), deleted_agent_cutoff(now, system), system)


async def _delete_objects(
    ctx: ServiceContext, agents: list[DeletedAgent], budget: int
) -> tuple[int, set[int]]:
    """Delete up to ``budget`` objects of the agents' spaces (orphans too: every
    object under the space's prefix); (how many were deleted, the agents none of
    whose objects is left)."""
    spent = removed = 0
    emptied: set[int] = set()
    for agent in agents:
        if spent >= budget:
            break  # the rest waits for the next run
        objects = await ctx.objects.list(space_prefix(agent_space(agent.agent_id)))
        taken = objects[: budget - spent]
        for info in taken:
            removed += await ctx.objects.delete(info.key)
        spent += len(taken)
        if len(taken) == len(objects):
            emptied.add(agent.agent_id)
    return removed, emptied


async def run_once(ctx: ServiceContext, now: datetime, batch: int = BATCH) -> Removed:
    """One bounded run at ``now`` (the loop passes the real time; tests choose it)."""
    plan = await plan_at(ctx, now)
    expired = await ctx.store.maintenance.deleted_agents(plan.deleted_before, AGENTS_PER_RUN)
    removed = Removed()
    removed.objects, emptied = await _delete_objects(ctx, expired, batch)
    forgotten: list[str] = []
    async with ctx.store.transaction() as conn:
        for cutoff, whose in plan.history_filters():
            left = batch - removed.history_events
            if left > 0:
                removed.history_events += await ctx.store.maintenance.delete_history_events(
                    cutoff, whose, left, conn=conn
                )
            left = batch - removed.history_sessions
            if left > 0:
                removed.history_sessions += await ctx.store.maintenance.delete_history_sessions(
                    cutoff, whose, left, conn=conn
                )
        for agent in expired:
            space = agent_space(agent.agent_id)
            left = batch - removed.workspace_files
            if left > 0:
                removed.workspace_files += await ctx.store.maintenance.delete_space_files(
                    space, left, conn=conn
                )
            if agent.agent_id in emptied and await ctx.store.maintenance.forget_deleted_agent(
                agent.agent_id, space, conn=conn
            ):
                removed.deleted_agents += 1
                forgotten.append(f"{agent.owner}/{agent.slug} (id {agent.agent_id})")
        if removed.total:
            await ctx.store.audit.record(
                "maintenance.purge",
                actor=MAINTENANCE_ACTOR,
                actor_admin=True,
                target="maintenance",
                after={
                    "removed": asdict(removed),
                    "history_before": _iso(plan.history.default),
                    "history_before_by_user": {
                        user: _iso(cutoff) for user, cutoff in plan.history.by_user.items()
                    },
                    "agents_deleted_before": plan.deleted_before.isoformat(),
                    "deleted_agents": forgotten,
                },
                conn=conn,
            )
    for kind, count in asdict(removed).items():
        if count:
            metrics.MAINTENANCE_REMOVED.labels(kind).inc(count)
    metrics.MAINTENANCE_RUNS.labels("removed" if removed.total else "idle").inc()
    return removed


async def run_until_done(ctx: ServiceContext, now: datetime, batch: int = BATCH) -> Removed:
    """Runs at ``now`` until one removes nothing, yielding to other work between them."""
    total = Removed()
    while True:
        removed = await run_once(ctx, now, batch)
        if not removed.total:
            return total
        total.add(removed)
        await asyncio.sleep(0)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


async def preview(ctx: ServiceContext, actor: Actor, now: datetime) -> dict[str, Any]:
    """What the next run at ``now`` would remove, counted (administrators)."""
    require_admin(ctx, actor)
    plan = await plan_at(ctx, now)
    events = sessions = 0
    oldest: datetime | None = None
    for cutoff, whose in plan.history_filters():
        due = await ctx.store.maintenance.history_due(cutoff, whose)
        events += due["events"]
        sessions += due["sessions"]
        if due["oldest"] is not None and (oldest is None or due["oldest"] < oldest):
            oldest = due["oldest"]
    agents = await ctx.store.maintenance.deleted_agents_due(plan.deleted_before)
    resolved = resolve_user(plan.system, {})
    return {
        "as_of": now.isoformat(),
        "history": {
            "retention_days": resolved["history_retention_days"],
            "users_with_own_retention": len(plan.history.by_user),
            "before": _iso(plan.history.default),
            "events": events,
            "sessions": sessions,
            "oldest_event": _iso(oldest),
        },
        "deleted_agents": {
            "grace_days": resolved["deleted_agent_grace_days"],
            "deleted_before": plan.deleted_before.isoformat(),
            "agents": agents["agents"],
            "oldest_deletion": _iso(agents["oldest"]),
            "workspace_files": agents["files"],
            "workspace_bytes": agents["bytes"],
            "within_grace": agents["waiting"],
        },
    }
