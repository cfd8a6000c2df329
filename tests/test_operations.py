"""The service's operations in-process, on a real PostgreSQL: no hub, no proxy, no
tornado. Each asserts what an operation returns, what it stored and the audit
entry it wrote in the same transaction (or that it wrote none).

The context's hub client points at a port nothing listens on: these operations do
not ask the hub, and one that did would fail the test loudly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from helpers import close_service_context, service_context

from jupyter_sac.crypto import KeyBox, generate_key
from jupyter_sac.errors import ApiError
from jupyter_sac.rules.hitl import DEFAULT_POLICY
from jupyter_sac.rules.workspace import object_key
from jupyter_sac.service.operations import (
    agents,
    events,
    hitl,
    org_keys,
    settings,
    skills,
    workspace,
)
from jupyter_sac.service.operations.context import (
    Actor,
    OrganisationKeys,
    ServiceContext,
)
from jupyter_sac.service.principals import ADMIN_SCOPE, DRIVE_SCOPE, USER_SCOPE, Identity
from jupyter_sac.store import AgentRecord, Store
from jupyter_sac.store.audit import AuditFilter

ADMIN = Actor(
    Identity(name="root", kind="user", scopes=frozenset({ADMIN_SCOPE, USER_SCOPE})),
    request_id="req-1",
    ip="192.0.2.7",
)
ANN = Actor(Identity(name="ann", kind="user", scopes=frozenset({USER_SCOPE})), ip="192.0.2.8")
ANN_DRIVER = Actor(Identity(name="ann", kind="user", scopes=frozenset({DRIVE_SCOPE})))
BOB = Actor(Identity(name="bob", kind="user", scopes=frozenset({USER_SCOPE})))


@pytest_asyncio.fixture
async def ctx(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceContext]:
    store = await Store.open(database_url)
    keybox = KeyBox([generate_key()])
    keys = OrganisationKeys({"anthropic": "sk-ant-configured-0000"})
    await keys.reload(store, keybox)
    context = service_context(store, tmp_path / "objects", keybox=keybox, org_keys=keys)
    yield context
    await close_service_context(context)
    await store.close()


async def audit_entries(ctx: ServiceContext, action: str) -> list[dict]:
    return await ctx.store.audit.list(AuditFilter(action=action), limit=10)


async def make_agent(ctx: ServiceContext, owner: str = "ann", slug: str = "helper") -> AgentRecord:
    return await ctx.store.agents.create(
        limit=10, owner=owner, slug=slug, display_name=slug, provider="anthropic", model="m"
    )


@pytest.mark.asyncio
async def test_system_settings_are_validated_stored_and_audited_together(
    ctx: ServiceContext,
) -> None:
    stored = await settings.replace_system_settings(
        ctx, ADMIN, {"max_agents_per_user": 3, "allowed_providers": ["anthropic"]}
    )
    assert stored == {"max_agents_per_user": 3, "allowed_providers": ["anthropic"]}
    assert (await settings.settings_for_user(ctx, "ann"))["max_agents_per_user"] == 3
    [entry] = await audit_entries(ctx, "settings.system.replace")
    assert (entry["actor"], entry["actor_admin"], entry["target"]) == ("root", True, "system")
    assert (entry["request_id"], str(entry["ip"])) == ("req-1", "192.0.2.7")
    assert entry["before"] == {} and entry["after"] == stored

    with pytest.raises(ApiError) as refused:
        await settings.replace_system_settings(ctx, ADMIN, {"max_agents_per_user": "many"})
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_setting")
    assert refused.value.extra["field"] == "max_agents_per_user"
    assert len(await audit_entries(ctx, "settings.system.replace")) == 1

    with pytest.raises(ApiError) as denied:
        await settings.replace_system_settings(ctx, ANN, {})
    assert denied.value.status_code == 403


@pytest.mark.asyncio
async def test_an_agents_settings_are_system_then_owner_then_its_own(ctx: ServiceContext) -> None:
    await settings.replace_system_settings(ctx, ADMIN, {"idle_timeout": 600})
    agent = await make_agent(ctx)
    assert (await settings.effective_settings_for_agent(ctx, agent))["idle_timeout"] == 600
    updated = await agents.update_agent(
        ctx, ANN, "ann", "helper", {"overrides": {"idle_timeout": 120}}
    )
    assert (await settings.effective_settings_for_agent(ctx, updated))["idle_timeout"] == 120
    # The owner's own settings change is on the record; their other edits are not.
    [entry] = await audit_entries(ctx, "settings.agent.replace")
    assert (entry["actor"], entry["target_user"], entry["target"]) == ("ann", "ann", "helper")
    assert entry["after"] == {"idle_timeout": 120}
    await agents.update_agent(ctx, ANN, "ann", "helper", {"display_name": "Helper"})
    assert await audit_entries(ctx, "agent.update") == []


@pytest.mark.asyncio
async def test_an_admin_changing_someone_elses_agent_is_audited_without_its_key(
    ctx: ServiceContext,
) -> None:
    await make_agent(ctx)
    updated = await agents.update_agent(
        ctx, ADMIN, "ann", "helper", {"model": "claude-x", "api_key": "sk-ant-secret-1234"}
    )
    assert updated.model == "claude-x"
    assert ctx.keybox.decrypt(updated.encrypted_key) == "sk-ant-secret-1234"
    [entry] = await audit_entries(ctx, "agent.update")
    assert (entry["actor"], entry["target_user"]) == ("root", "ann")
    assert entry["before"]["key_set"] is False and entry["after"]["key_set"] is True
    assert "sk-ant-secret-1234" not in str(entry)


@pytest.mark.asyncio
async def test_who_may_change_an_agent(ctx: ServiceContext) -> None:
    await make_agent(ctx)
    with pytest.raises(ApiError) as other_user:
        await agents.update_agent(ctx, BOB, "ann", "helper", {"display_name": "x"})
    assert other_user.value.status_code == 404  # another user's agent is not revealed
    with pytest.raises(ApiError) as driver:
        await agents.update_agent(ctx, ANN_DRIVER, "ann", "helper", {"display_name": "x"})
    assert driver.value.status_code == 403
    with pytest.raises(ApiError) as missing:
        await agents.update_agent(ctx, ANN, "ann", "nobody", {"display_name": "x"})
    assert missing.value.status_code == 404


@pytest.mark.asyncio
async def test_drive_agents_is_always_on_the_record(ctx: ServiceContext) -> None:
    await make_agent(ctx)
    await agents.update_agent(ctx, ANN, "ann", "helper", {"drive_agents": True})
    [entry] = await audit_entries(ctx, "agent.drive_agents")
    assert entry["before"] == {"drive_agents": False}
    assert entry["after"] == {"drive_agents": True}


@pytest.mark.asyncio
async def test_organisation_keys_one_rule_and_the_keys_in_use(ctx: ServiceContext) -> None:
    listed = {k["provider"]: k for k in await org_keys.list_org_keys(ctx)}
    assert listed["anthropic"]["source"] == "configuration"
    assert listed["anthropic"]["hint"] == "…0000"

    await org_keys.set_org_key(ctx, ADMIN, "anthropic", "sk-ant-from-service-9999")
    assert ctx.org_keys["anthropic"] == "sk-ant-from-service-9999"
    listed = {k["provider"]: k for k in await org_keys.list_org_keys(ctx)}
    assert (listed["anthropic"]["source"], listed["anthropic"]["hint"]) == ("service", "…9999")
    [entry] = await audit_entries(ctx, "org_key.set")
    assert entry["after"] == {"key_set": True, "hint": "…9999"}
    assert "sk-ant-from-service-9999" not in str(entry)

    # The same rule as an agent's own key: 8-1000 printable ASCII without spaces.
    for bad_key in ("short", "has a space in it", "ключ-ключ-ключ", "x" * 1001):
        with pytest.raises(ApiError) as refused:
            await org_keys.set_org_key(ctx, ADMIN, "anthropic", bad_key)
        assert refused.value.extra["field"] == "api_key"
    with pytest.raises(ApiError) as unknown:
        await org_keys.set_org_key(ctx, ADMIN, "no-such-provider", "sk-ant-whatever-1")
    assert unknown.value.status_code == 404

    await org_keys.clear_org_key(ctx, ADMIN, "anthropic")
    assert ctx.org_keys["anthropic"] == "sk-ant-configured-0000"
    [cleared] = await audit_entries(ctx, "org_key.clear")
    assert cleared["before"] == {"key_set": True, "hint": "…9999"}
    with pytest.raises(ApiError) as again:
        await org_keys.clear_org_key(ctx, ADMIN, "anthropic")
    assert again.value.status_code == 404


@pytest.mark.asyncio
async def test_group_quota_and_user_overrides_cleared(ctx: ServiceContext) -> None:
    stored = await settings.replace_group_quota(ctx, ADMIN, "lab", {"group_quota_files": 50})
    assert stored == {"group_quota_files": 50}
    [entry] = await audit_entries(ctx, "settings.group.replace")
    assert (entry["target"], entry["after"]) == ("lab", stored)

    await settings.clear_user_settings(ctx, ADMIN, "ann")
    [cleared] = await audit_entries(ctx, "settings.user.clear")
    assert (cleared["target_user"], cleared["after"]) == ("ann", {})


@pytest.mark.asyncio
async def test_deciding_a_request_wakes_its_waiters_and_audits_an_admins_decision(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    row, _ = await ctx.store.hitl.file(
        agent_id=agent.id, owner="ann", agent_slug="helper", session_id=None, kind="tool",
        tool="Bash", input={"command": "rm -rf build"}, question=None, options=[],
        dedupe_key=None, timeout=300, default_decision="deny",
    )  # fmt: skip
    request_id = str(row["id"])
    with pytest.raises(ApiError) as driver:
        await hitl.decide_request(ctx, ANN_DRIVER, request_id, {"decision": "allow"})
    assert driver.value.status_code == 403
    with pytest.raises(ApiError) as bad_body:
        await hitl.decide_request(ctx, ANN, request_id, {"decision": "maybe"})
    assert bad_body.value.extra["field"] == "decision"

    waiting = ctx.hitl_waiters.wait(request_id, timeout=5)
    waiter = asyncio.create_task(waiting)
    await asyncio.sleep(0)
    decided = await hitl.decide_request(ctx, ADMIN, request_id, {"decision": "allow"})
    await asyncio.wait_for(waiter, 1)  # woken at once, not after its timeout
    assert (decided["status"], decided["decision"]) == ("approved", "allow")
    [entry] = await audit_entries(ctx, "hitl.decide")
    assert entry["before"]["tool"] == "Bash" and entry["after"]["decision"] == "allow"

    with pytest.raises(ApiError) as twice:
        await hitl.decide_request(ctx, ANN, request_id, {"decision": "deny"})
    assert (twice.value.status_code, twice.value.code) == (409, "already_decided")


@pytest.mark.asyncio
async def test_a_hitl_policy_is_validated_and_an_admins_change_audited(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    assert await hitl.agent_policy(ctx, agent.id) == DEFAULT_POLICY
    with pytest.raises(ApiError) as refused:
        await hitl.replace_policy(ctx, ANN, "ann", "helper", {"deny": "everything"})
    assert refused.value.status_code == 400
    policy = await hitl.replace_policy(ctx, ANN, "ann", "helper", {"deny": ["Bash(rm *)"]})
    assert await hitl.agent_policy(ctx, agent.id) == policy
    assert await audit_entries(ctx, "hitl.policy.replace") == []  # the owner's own
    await hitl.replace_policy(ctx, ADMIN, "ann", "helper", {"allow": ["Read"]})
    [entry] = await audit_entries(ctx, "hitl.policy.replace")
    assert (entry["actor"], entry["before"], entry["after"]["allow"]) == (
        "root",
        policy,
        ["Read"],
    )


def upload_of(data: bytes) -> workspace.Upload:
    upload = workspace.Upload()
    upload.write(data)
    return upload


@pytest.mark.asyncio
async def test_public_workspace_changes_are_admin_actions_and_quotas_hold(
    ctx: ServiceContext,
) -> None:
    loc = workspace.location("public", "docs/readme.txt", None)
    upload = upload_of(b"hello")
    row = await workspace.put_file(
        ctx, ADMIN, upload, loc, None, base_version=None, mtime=datetime.now(UTC)
    )
    upload.close()
    assert (row["size"], row["version"]) == (5, 1)
    assert await ctx.objects.get(object_key("public", row["sha256"])) == b"hello"
    [put] = await audit_entries(ctx, "workspace.public.put")
    assert (put["target"], put["after"]["size"]) == ("public/docs/readme.txt", 5)

    # A group over its file quota: refused before anything is stored.
    await settings.replace_group_quota(ctx, ADMIN, "lab", {"group_quota_files": 1})
    first = workspace.location("group:lab", "a.txt", None)
    second = workspace.location("group:lab", "b.txt", None)
    await workspace.store_upload(ctx, upload_of(b"a"), first, "ann", base_version=None,
                                 mtime=datetime.now(UTC))  # fmt: skip
    with pytest.raises(ApiError) as full:
        await workspace.store_upload(ctx, upload_of(b"bb"), second, "ann", base_version=None,
                                     mtime=datetime.now(UTC))  # fmt: skip
    assert (full.value.status_code, full.value.code) == (413, "quota_exceeded")
    assert await ctx.store.workspace.usage("group:lab") == (1, 1)

    with pytest.raises(ApiError) as stale:
        await workspace.delete_file(ctx, ADMIN, loc, base_version=7)
    assert stale.value.status_code == 409
    await workspace.delete_file(ctx, ADMIN, loc, base_version=None)
    assert await ctx.store.workspace.get("public", "docs/readme.txt") is None
    assert len(await audit_entries(ctx, "workspace.public.delete")) == 1


@pytest.mark.asyncio
async def test_skill_changes_by_others_are_audited_and_sandboxes_publish_nothing(
    ctx: ServiceContext,
) -> None:
    spec = skills.spec_from({"command": "tidy", "title": "Tidy", "description": "d", "body": "b"})
    row = await skills.create_skill(ctx=ctx, owner="ann", spec=spec, tier=("private", None))
    ann_view = skills.person_viewer(ANN.identity)
    changed = await skills.change_skill(ctx, ANN, ann_view, row, {"title": "Tidy up"})
    assert (changed["title"], changed["version"]) == ("Tidy up", 2)
    assert await audit_entries(ctx, "skill.update") == []  # one's own skill

    sandbox = Actor(Identity(name="ann", kind="agent", agent=await make_agent(ctx)))
    with pytest.raises(ApiError) as publish:
        await skills.change_skill(ctx, sandbox, ann_view, changed, {"visibility": "public"})
    assert publish.value.status_code == 403

    with pytest.raises(ApiError) as hidden:
        await skills.readable(ctx, skills.person_viewer(BOB.identity), str(row["id"]))
    assert hidden.value.status_code == 404

    admin_view = skills.person_viewer(ADMIN.identity)
    await skills.delete_skill(ctx, ADMIN, admin_view, changed)
    [deleted] = await audit_entries(ctx, "skill.delete")
    assert (deleted["target"], deleted["target_user"]) == (str(row["id"]), "ann")
    assert await ctx.store.skills.get(row["id"]) is None


def _tool_request(agent: AgentRecord, command: str = "make deploy", **over: object) -> dict:
    fields: dict = {
        "session_id": None, "kind": "tool", "tool": "Bash", "input": {"command": command},
        "question": None, "options": [], "dedupe_key": None, "timeout": 300,
        "default_decision": "deny",
    }  # fmt: skip
    return {**fields, **over}


async def _kinds(ctx: ServiceContext, user: str, after: int = 0) -> list[tuple[str, str, str]]:
    rows = await ctx.store.events.after(user, after, 100)
    return [(r["kind"], r["data"]["id"], r["data"].get("status", "")) for r in rows]


@pytest.mark.asyncio
async def test_hitl_requests_and_their_ends_are_on_the_owners_stream_only(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    await make_agent(ctx, owner="bob", slug="other")
    filed, created = await hitl.file_request(ctx, agent, **_tool_request(agent))
    assert created
    rid = str(filed["id"])
    [event] = await ctx.store.events.after("ann", 0, 10)
    assert (event["kind"], event["agent_slug"]) == ("hitl.requested", "helper")
    # What the request asks, in one line; its input is read from the HITL API.
    assert event["data"] == {
        "id": rid, "agent": "helper", "kind": "tool", "tool": "Bash",
        "summary": "Bash: make deploy", "expires_at": filed["expires_at"].isoformat(),
    }  # fmt: skip
    assert await ctx.store.events.after("bob", 0, 10) == []

    # Filing the same prompt again finds the pending request: no second event.
    keyed = _tool_request(agent, "ls", dedupe_key="k")
    first, _ = await hitl.file_request(ctx, agent, **keyed)
    again, created = await hitl.file_request(ctx, agent, **keyed)
    assert not created and again["id"] == first["id"]

    await hitl.decide_request(ctx, ANN, rid, {"decision": "deny", "reason": "not today"})
    assert await hitl.cancel_request(ctx, agent, str(first["id"])) is not None
    expiring, _ = await hitl.file_request(ctx, agent, **_tool_request(agent, timeout=0))
    await hitl.expire_due(ctx)
    assert await _kinds(ctx, "ann") == [
        ("hitl.requested", rid, ""),
        ("hitl.requested", str(first["id"]), ""),
        ("hitl.decided", rid, "denied"),
        ("hitl.decided", str(first["id"]), "cancelled"),
        ("hitl.requested", str(expiring["id"]), ""),
        ("hitl.decided", str(expiring["id"]), "timed_out"),
    ]
    decided = (await ctx.store.events.after("ann", 0, 10))[2]["data"]
    assert (decided["decision"], decided["decided_by"]) == ("deny", "ann")
    assert await ctx.store.events.after("bob", 0, 10) == []


@pytest.mark.asyncio
async def test_a_decision_refused_leaves_no_event(ctx: ServiceContext) -> None:
    agent = await make_agent(ctx)
    filed, _ = await hitl.file_request(ctx, agent, **_tool_request(agent))
    rid = str(filed["id"])
    await hitl.decide_request(ctx, ANN, rid, {"decision": "allow"})
    with pytest.raises(ApiError):
        await hitl.decide_request(ctx, ANN, rid, {"decision": "deny"})
    assert [k for k, _, _ in await _kinds(ctx, "ann")] == ["hitl.requested", "hitl.decided"]


@pytest.mark.asyncio
async def test_the_event_stream_is_the_callers_and_never_an_agent_tokens(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    sandbox = Actor(Identity(name="ann", kind="agent", agent=agent))
    with pytest.raises(ApiError) as refused:
        await events.open_stream(ctx, sandbox, None)
    assert refused.value.status_code == 403
    await hitl.file_request(ctx, agent, **_tool_request(agent))
    newest = (await ctx.store.events.after("ann", 0, 10))[-1]["id"]
    # Without a position a stream starts at the newest event; a driver may follow it.
    assert await events.open_stream(ctx, ANN_DRIVER, None) == ("ann", newest)
    assert await events.open_stream(ctx, ANN, 0) == ("ann", 0)
    # An administrator follows their own events, not everybody's.
    assert await events.open_stream(ctx, ADMIN, None) == ("root", 0)


@pytest.mark.asyncio
async def test_a_stream_resumed_after_an_id_gets_exactly_what_followed(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    ids = []
    for n in range(5):
        row, _ = await hitl.file_request(ctx, agent, **_tool_request(agent, f"echo {n}"))
        ids.append(str(row["id"]))
    rows = await ctx.store.events.after("ann", 0, 100)
    seen = rows[1]["id"]
    stream = events.follow(ctx, "ann", seen, wait=0)
    got = [row async for batch in stream for row in batch]
    assert [r["data"]["id"] for r in got] == ids[2:]
    # More than a batch behind: every one, in order, in several batches.
    for n in range(events.BATCH + 3):
        await ctx.store.events.append("ann", "test.event", {"n": n})
    batches = [batch async for batch in events.follow(ctx, "ann", seen, wait=0)]
    got = [row for batch in batches for row in batch]
    assert len(batches) == 2 and len(got) == 3 + events.BATCH + 3
    assert [r["id"] for r in got] == sorted(r["id"] for r in got)
    assert [r["data"]["n"] for r in got[3:]] == list(range(events.BATCH + 3))


@pytest.mark.asyncio
async def test_a_waiting_stream_is_woken_by_an_event_committed_in_this_process(
    ctx: ServiceContext,
) -> None:
    agent = await make_agent(ctx)
    # Re-reads and keep-alives an hour apart: only the bell can bring the event.
    stream = events.follow(ctx, "ann", 0, recheck=3600, keepalive=3600)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    assert not first.done()
    row, _ = await hitl.file_request(ctx, agent, **_tool_request(agent))
    [event] = await asyncio.wait_for(first, 30)
    assert event["data"]["id"] == str(row["id"])
    await stream.aclose()


@pytest.mark.asyncio
async def test_a_quiet_stream_yields_keep_alives_and_ends_after_its_wait(
    ctx: ServiceContext,
) -> None:
    # Nothing to tell: a keep-alive (an empty batch) comes, however long a read takes.
    stream = events.follow(ctx, "ann", 0, keepalive=0.01)
    assert await asyncio.wait_for(anext(stream), 30) == []
    await stream.aclose()
    # With wait=0, what is there (nothing) and the end.
    assert [batch async for batch in events.follow(ctx, "ann", 0, wait=0)] == []


@pytest.mark.asyncio
async def test_old_events_are_pruned(ctx: ServiceContext) -> None:
    await ctx.store.events.append("ann", "test.event", {})
    assert await ctx.store.events.prune(days=1) == 0
    assert await ctx.store.events.prune(days=0) == 1
    assert await ctx.store.events.after("ann", 0, 10) == []


@pytest.mark.asyncio
async def test_a_spent_budget_is_told_once_a_month_per_budget(ctx: ServiceContext) -> None:
    from datetime import date

    from jupyter_sac.rules.budgets import Budget

    spent = {"user": Budget(1000, 1200), "agent": Budget(500, 600)}
    await events.budget_spent(ctx, "ann", "helper", spent, date(2026, 12, 7))
    # The next refused calls this month: nothing more; another agent's budget is its own.
    await events.budget_spent(ctx, "ann", "helper", spent, date(2026, 12, 8))
    await events.budget_spent(ctx, "ann", "other", {"agent": Budget(10, 10)}, date(2026, 12, 8))
    # A new month: told again.
    await events.budget_spent(ctx, "ann", "helper", {"user": Budget(1000, 1000)}, date(2027, 1, 2))
    rows = await ctx.store.events.after("ann", 0, 10)
    told = [(r["data"]["scope"], r["agent_slug"], r["data"]["month"]) for r in rows]
    assert told == [
        ("agent", "helper", "2026-12"),
        ("user", "helper", "2026-12"),
        ("agent", "other", "2026-12"),
        ("user", "helper", "2027-01"),
    ]
    assert all(r["kind"] == "budget.exhausted" for r in rows)
    assert rows[1]["data"] == {
        "scope": "user", "agent": "helper", "used": 1200, "limit": 1000,
        "month": "2026-12", "resets_on": "2027-01-01",
    }  # fmt: skip
    assert await ctx.store.events.after("bob", 0, 10) == []


@pytest.mark.asyncio
async def test_templates_organisation_ones_need_a_curator_and_are_audited(
    ctx: ServiceContext,
) -> None:
    from jupyter_sac.rules.templates import TEMPLATES_SCOPE
    from jupyter_sac.service.operations import templates

    curator = Actor(
        Identity(name="cur", kind="user", scopes=frozenset({USER_SCOPE, TEMPLATES_SCOPE}))
    )
    name = f"org-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "scope": "organisation", "definition": {"display_name": "Org"}}
    for refused in (ANN, ANN_DRIVER):
        with pytest.raises(ApiError) as e:
            await templates.create_template(ctx, refused, body)
        assert e.value.status_code == 403
    made = await templates.create_template(ctx, curator, body)
    assert made["version"] == 1 and made["editable"] is True
    changed = await templates.update_template(
        ctx, curator, str(made["id"]), {"definition": {"display_name": "Org 2"}}
    )
    assert changed["version"] == 2
    assert await ctx.store.templates.version(made["id"], 1) == {"display_name": "Org"}
    entries = [e for e in await audit_entries(ctx, "template.*") if e["target"] == name]
    assert [e["action"] for e in entries] == ["template.update", "template.create"]
    assert entries[0]["after"]["version"] == 2

    # A personal template is its owner's: not audited, invisible (404) to others.
    mine = await templates.create_template(
        ctx, ANN, {"name": f"p-{uuid.uuid4().hex[:8]}", "definition": {"display_name": "P"}}
    )
    assert not [e for e in await audit_entries(ctx, "template.*") if e["target"] == mine["name"]]
    with pytest.raises(ApiError) as e:
        await templates.get_template(ctx, BOB, str(mine["id"]))
    assert e.value.status_code == 404
    assert (await templates.get_template(ctx, ADMIN, str(mine["id"])))["editable"] is False
