"""The maintenance (operations/maintenance.py) in-process on a real PostgreSQL and a
real local object store, at moments the test chooses: history past its retention
goes and younger history stays, a user's own retention wins over the system's, a
deleted agent's files stay through the grace period and go after it, usage rows
always stay, and each run that removed something has its audit entry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from helpers import close_service_context, service_context

from jupyter_sac.errors import ApiError
from jupyter_sac.rules.retention import history_cutoffs
from jupyter_sac.rules.settings import SettingsError, validate_overrides
from jupyter_sac.rules.workspace import agent_space, object_key
from jupyter_sac.service import metrics
from jupyter_sac.service.history import parse_batch
from jupyter_sac.service.operations import maintenance, settings
from jupyter_sac.service.operations.context import (
    Actor,
    ServiceContext,
)
from jupyter_sac.service.principals import ADMIN_SCOPE, USER_SCOPE, Identity
from jupyter_sac.store import AgentRecord, Store
from jupyter_sac.store.audit import AuditFilter
from jupyter_sac.store.usage import UsageDelta
from jupyter_sac.store.workspace import Quota

ADMIN = Actor(Identity(name="root", kind="user", scopes=frozenset({ADMIN_SCOPE, USER_SCOPE})))
ANN = Actor(Identity(name="ann", kind="user", scopes=frozenset({USER_SCOPE})))
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def ctx(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceContext]:
    store = await Store.open(database_url)
    context = service_context(store, tmp_path / "objects")
    yield context
    await close_service_context(context)
    await store.close()


async def make_agent(ctx: ServiceContext, owner: str, slug: str) -> AgentRecord:
    return await ctx.store.agents.create(
        limit=10, owner=owner, slug=slug, display_name=slug, provider="anthropic", model="m"
    )


async def say(ctx: ServiceContext, agent: AgentRecord, session: str, at: datetime) -> None:
    """One history event at ``at``, in a session of its own."""
    event = {"session_id": session, "uuid": session, "ts": at.isoformat(), "kind": "user",
             "payload": {"type": "user", "message": {"role": "user", "content": "hi"}}}  # fmt: skip
    batch = parse_batch(json.dumps({"events": [event]}).encode())
    assert await ctx.store.history.ingest(agent.id, agent.owner, agent.slug, batch) == 1


def rows(database_url: str, sql: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql).fetchall()


def sessions_left(database_url: str) -> set[str]:
    found = rows(database_url, "SELECT session_id FROM conversation_events")
    summaries = rows(database_url, "SELECT session_id FROM conversation_sessions")
    assert {r[0] for r in found} == {r[0] for r in summaries}  # events and summaries agree
    return {r[0] for r in found}


async def purges(ctx: ServiceContext) -> list[dict]:
    return await ctx.store.audit.list(AuditFilter(action="maintenance.purge"), limit=100)


def removed_metric(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("sac_maintenance_removed_total", {"kind": kind}) or 0.0


async def store_file(ctx: ServiceContext, agent_id: int, path: str, content: bytes) -> str:
    """A workspace file of the agent's, as an upload leaves it: object, then row."""
    space = agent_space(agent_id)
    sha = hashlib.sha256(content).hexdigest()
    await ctx.objects.put(object_key(space, sha), content)
    await ctx.store.workspace.commit(
        space, path, size=len(content), sha256=sha, mtime=NOW, written_by="ann",
        quota=Quota(10**9, 1000),
    )  # fmt: skip
    return object_key(space, sha)


def test_the_settings_and_their_cutoffs() -> None:
    assert validate_overrides({"history_retention_days": 30}, "user") == {
        "history_retention_days": 30
    }
    with pytest.raises(SettingsError):
        validate_overrides({"deleted_agent_grace_days": 3}, "user")  # system only
    with pytest.raises(SettingsError):
        validate_overrides({"history_retention_days": -1}, "system")
    cutoffs = history_cutoffs(
        NOW,
        {"history_retention_days": 30},
        {"bob": {"history_retention_days": 90}, "cat": {"history_retention_days": 0},
         "dan": {"idle_timeout": 60}},
    )  # fmt: skip
    assert cutoffs.default == NOW - timedelta(days=30)
    # Only users whose own overrides set it have a cutoff of their own; 0: for ever.
    assert cutoffs.by_user == {"bob": NOW - timedelta(days=90), "cat": None}
    assert not history_cutoffs(NOW, {}, {}).removes_anything  # the default keeps for ever


@pytest.mark.asyncio
async def test_history_past_retention_goes_and_a_users_own_retention_wins(
    ctx: ServiceContext, database_url: str
) -> None:
    ann = await make_agent(ctx, "ann", "a")
    bob = await make_agent(ctx, "bob", "b")
    cat = await make_agent(ctx, "cat", "c")
    days = timedelta(days=1)
    await say(ctx, ann, "ann-40d", NOW - 40 * days)
    await say(ctx, ann, "ann-29d", NOW - 29 * days)
    await say(ctx, bob, "bob-100d", NOW - 100 * days)
    await say(ctx, bob, "bob-40d", NOW - 40 * days)
    await say(ctx, cat, "cat-400d", NOW - 400 * days)
    await ctx.store.usage.record(ann.id, "ann", "a", UsageDelta(requests=1, input_tokens=5))
    everything = {"ann-40d", "ann-29d", "bob-100d", "bob-40d", "cat-400d"}

    # The default keeps history for ever: nothing is due, nothing removed, no entry.
    assert (await maintenance.run_until_done(ctx, NOW)).total == 0
    assert sessions_left(database_url) == everything
    assert await purges(ctx) == []

    await settings.replace_system_settings(ctx, ADMIN, {"history_retention_days": 30})
    # (The user level as the settings operation stores it; that one asks the hub
    # whether the user exists, and these tests run without one.)
    await ctx.store.settings.put("user", "bob", {"history_retention_days": 90}, "root")
    await ctx.store.settings.put("user", "cat", {"history_retention_days": 0}, "root")

    due = await maintenance.preview(ctx, ADMIN, NOW)
    assert due["history"]["events"] == due["history"]["sessions"] == 2
    assert due["history"]["oldest_event"] == (NOW - 100 * days).isoformat()
    assert due["history"]["users_with_own_retention"] == 2
    assert sessions_left(database_url) == everything  # the preview removes nothing

    before = removed_metric("history_events")
    removed = await maintenance.run_until_done(ctx, NOW)
    assert (removed.history_events, removed.history_sessions) == (2, 2)
    # ann: the system's 30 days; bob: his own 90; cat: his own "for ever".
    assert sessions_left(database_url) == {"ann-29d", "bob-40d", "cat-400d"}
    assert removed_metric("history_events") == before + 2
    [entry] = await purges(ctx)
    assert entry["actor"] == "sac-service"
    assert entry["after"]["removed"]["history_events"] == 2
    assert entry["after"]["history_before"] == (NOW - 30 * days).isoformat()
    # Usage is the accounting: never removed.
    assert [r["requests"] for r in await ctx.store.usage.for_agent(ann.id)] == [1]

    # Nothing younger than the limit is touched, however often it runs.
    assert (await maintenance.run_until_done(ctx, NOW)).total == 0
    assert len(await purges(ctx)) == 1
    assert (await maintenance.preview(ctx, ADMIN, NOW))["history"]["events"] == 0


@pytest.mark.asyncio
async def test_runs_are_bounded_batches_each_with_its_audit_entry(
    ctx: ServiceContext, database_url: str
) -> None:
    agent = await make_agent(ctx, "ann", "a")
    for n in range(5):
        await say(ctx, agent, f"old-{n}", NOW - timedelta(days=10, minutes=n))
    await settings.replace_system_settings(ctx, ADMIN, {"history_retention_days": 1})

    first = await maintenance.run_once(ctx, NOW, batch=2)
    assert (first.history_events, first.history_sessions) == (2, 2)
    # Oldest first.
    assert sessions_left(database_url) == {"old-0", "old-1", "old-2"}
    rest = await maintenance.run_until_done(ctx, NOW, batch=2)
    assert rest.history_events == 3 and sessions_left(database_url) == set()
    assert [e["after"]["removed"]["history_events"] for e in await purges(ctx)] == [1, 2, 2]


@pytest.mark.asyncio
async def test_a_deleted_agents_files_stay_through_the_grace_period_and_go_after_it(
    ctx: ServiceContext, database_url: str
) -> None:
    gone = await make_agent(ctx, "ann", "gone")
    kept = await make_agent(ctx, "ann", "kept")
    gone_key = await store_file(ctx, gone.id, "output/report.csv", b"a,b\n1,2\n")
    # An object no row names (an upload that never committed): removed with the rest.
    orphan_key = object_key(agent_space(gone.id), "0" * 64)
    await ctx.objects.put(orphan_key, b"orphan")
    kept_key = await store_file(ctx, kept.id, "output/report.csv", b"kept\n")
    await ctx.store.tokens.issue(gone.id)
    await ctx.store.usage.record(gone.id, "ann", "gone", UsageDelta(requests=3))
    await say(ctx, gone, "history-of-gone", NOW - timedelta(days=2))

    deleted_at = datetime.now(UTC)
    assert await ctx.store.agents.delete("ann", "gone")
    # Its token goes with it at once (a deleted agent's token must never work).
    assert rows(database_url, f"SELECT 1 FROM agent_tokens WHERE agent_id = {gone.id}") == []

    # Within the grace period (7 days by default) nothing of it is removed.
    within = deleted_at + timedelta(days=6)
    due = await maintenance.preview(ctx, ADMIN, within)
    assert due["deleted_agents"]["agents"] == 0 and due["deleted_agents"]["within_grace"] == 1
    assert (await maintenance.run_until_done(ctx, within)).total == 0
    assert await ctx.objects.head(gone_key) is not None
    assert len(await ctx.store.workspace.list(agent_space(gone.id))) == 1

    after = deleted_at + timedelta(days=8)
    due = (await maintenance.preview(ctx, ADMIN, after))["deleted_agents"]
    assert (due["agents"], due["workspace_files"], due["workspace_bytes"]) == (1, 1, 8)
    assert due["within_grace"] == 0

    removed = await maintenance.run_until_done(ctx, after)
    assert (removed.workspace_files, removed.objects, removed.deleted_agents) == (1, 2, 1)
    assert await ctx.objects.head(gone_key) is None
    assert await ctx.objects.head(orphan_key) is None
    assert await ctx.store.workspace.list(agent_space(gone.id)) == []
    assert rows(database_url, "SELECT agent_id FROM deleted_agents") == []
    space = agent_space(gone.id)
    assert rows(database_url, f"SELECT 1 FROM workspace_spaces WHERE space = '{space}'") == []
    # The live agent's files, the usage and (retention 0: for ever) the history stay.
    assert await ctx.objects.head(kept_key) is not None
    assert len(await ctx.store.workspace.list(agent_space(kept.id))) == 1
    assert [r["requests"] for r in await ctx.store.usage.for_agent(gone.id)] == [3]
    assert sessions_left(database_url) == {"history-of-gone"}
    [entry] = await purges(ctx)
    assert entry["after"]["deleted_agents"] == [f"ann/gone (id {gone.id})"]
    assert entry["after"]["removed"]["objects"] == 2

    # The grace period is the system's setting.
    again = await make_agent(ctx, "ann", "again")
    await store_file(ctx, again.id, "private/x.txt", b"x")
    await ctx.store.agents.delete("ann", "again")
    await settings.replace_system_settings(ctx, ADMIN, {"deleted_agent_grace_days": 0})
    removed = await maintenance.run_until_done(ctx, datetime.now(UTC) + timedelta(seconds=1))
    assert (removed.workspace_files, removed.deleted_agents) == (1, 1)


@pytest.mark.asyncio
async def test_only_administrators_see_the_preview(ctx: ServiceContext) -> None:
    with pytest.raises(ApiError) as refused:
        await maintenance.preview(ctx, ANN, NOW)
    assert refused.value.status_code == 403
