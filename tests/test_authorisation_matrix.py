"""The authorisation matrix: every route of the `sac` service and of the sandbox
extension, called by every kind of principal, with the real tokens read inside
running sandboxes (docs/security.md#who-may-do-what).

One table says, for each route and method, who may call it; everyone else must be
refused (401, 403, or 404 for another user's things) and nothing may change. The
table is checked against the running service's own route table: a route without a
row, or a row without a route, fails the test.

Probes are chosen so that an allowed call proves it passed authorisation without
doing harm: reads, or writes with an invalid body (authorisation comes before the
body is read, so the allowed get a 400 and the refused their 401/403/404), or, for
what cannot be probed that way (deletes, starts, stops), a throwaway resource made
for that one call.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from helpers import HubApi, model_agent, run_in_terminal
from tornado import web

from jupyter_sac.server_extension.app import ROUTES as EXTENSION_ROUTES
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

# ---- who ---------------------------------------------------------------------------

PRINCIPALS = (
    "anonymous",
    "owner",  # alice, a person: her full token
    "other",  # bob, another user
    "member",  # carol, in a group with alice
    "admin",  # the stack's first administrator (operator role): full token
    "admin_narrow",  # the same administrator's token narrowed to the service's access
    "hub_admin",  # a user with JupyterHub's admin flag but no SAC role
    "auditor",  # custom:sac:history:read-all
    "curator",  # custom:sac:skills:official
    "agent",  # alice/a1's agent token (SAC_AGENT_TOKEN), read in its sandbox
    "server",  # alice/a1's JUPYTERHUB_API_TOKEN (drive_agents off)
    "sibling_agent",  # alice/a2's agent token
    "sibling_server",  # alice/a2's JUPYTERHUB_API_TOKEN (drive_agents on)
    "foreign_agent",  # bob/b1's agent token
    "foreign_server",  # bob/b1's JUPYTERHUB_API_TOKEN
    "admins_agent",  # admin/x1's agent token
    "admins_server",  # admin/x1's JUPYTERHUB_API_TOKEN (drive_agents on)
    "expired",  # alice's token, expired
)
EVERYONE = frozenset(PRINCIPALS)
# Persons act as themselves (custom:sac:user): a user's own full token.
PERSONS = frozenset({"owner", "other", "member", "admin", "hub_admin", "auditor", "curator"})
AGENT_TOKENS = frozenset({"agent", "sibling_agent", "foreign_agent", "admins_agent"})
# Servers' tokens of agents whose owner let them drive the others.
DRIVERS = frozenset({"sibling_server", "admins_server"})
# Everyone the service knows (server tokens without drive_agents cannot use it at all).
SIGNED_IN = PERSONS | AGENT_TOKENS | DRIVERS | {"admin_narrow"}
ADMIN = frozenset({"admin"})
OWNER = frozenset({"owner", "admin"})  # alice's things: alice and the administrator
NOBODY: frozenset[str] = frozenset()
HUB_TOKENS = EVERYONE - AGENT_TOKENS - {"anonymous"}


def who(*names: str | frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        out |= {name} if isinstance(name, str) else set(name)
    unknown = out - EVERYONE
    assert not unknown, unknown
    return frozenset(out)


# ---- the table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """``method`` on ``path`` (placeholders filled from the world) may be called by
    ``allowed``. ``body``: JSON sent (an invalid one keeps allowed calls harmless);
    ``fresh``: a function of (world, principal) that makes a throwaway target and
    returns the path to call (for deletes, starts and stops); ``ok``: the statuses
    an allowed call may answer (default: anything but a refusal or a 5xx)."""

    method: str
    path: str
    allowed: frozenset[str]
    body: Any = None
    raw: bytes | None = None
    form: dict[str, str] | None = None
    fresh: Callable[[World, str], str] | None = None
    ok: frozenset[int] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # After a refused call on a fresh target: the target is still there (GET 200).
    intact: bool = False


NO_BODY = {}  # an empty JSON object: misses the required fields
P = "services/sac/"
A = P + "api/"
AGENT = A + "users/{user}/agents/{slug}"


def fresh_agent(world: World, principal: str) -> str:
    slug = f"t{uuid.uuid4().hex[:8]}"
    resp = world.owner.sac("POST", "agents", json={"slug": slug, **world.model})
    assert resp.status_code == 201, resp.text
    world.throwaway.append(slug)
    return AGENT.format(user=world.user, slug=slug)


def skill_spec(body: str) -> dict[str, str]:
    return {"title": "Matrix", "description": "A skill of the authorisation matrix.", "body": body}


def fresh_skill(world: World, principal: str) -> str:
    command = f"t{uuid.uuid4().hex[:8]}"
    resp = world.owner.sac("POST", "skills", json={"command": command, **skill_spec("Throwaway.")})
    assert resp.status_code == 201, resp.text
    return A + f"skills/{resp.json()['id']}"


def fresh_install(world: World, principal: str) -> str:
    resp = world.owner.sac(
        "POST", f"users/{world.user}/agents/a1/skills", json={"skill_id": world.spare_skill}
    )
    assert resp.status_code in (201, 409), resp.text
    return AGENT.format(user=world.user, slug="a1") + f"/skills/{world.spare_skill}"


def fresh_request(world: World, principal: str) -> str:
    resp = world.agent_api.post(
        "hitl/requests", json={"kind": "tool", "tool": "Bash", "input": {"command": "ls"}}
    )
    assert resp.status_code == 201, resp.text
    return A + f"hitl/requests/{resp.json()['id']}/cancel"


def fresh_agent_file(world: World, principal: str) -> str:
    path = f"output/t{uuid.uuid4().hex[:8]}.txt"
    resp = world.owner.sac(
        "PUT", f"users/{world.user}/agents/a1/workspace/files/{path}", content=b"throwaway"
    )
    assert resp.status_code == 200, resp.text
    return AGENT.format(user=world.user, slug="a1") + f"/workspace/files/{path}"


def fresh_own_file(world: World, principal: str) -> str:
    """A file in the calling agent's own workspace (the sync API acts on its own)."""
    path = f"output/t{uuid.uuid4().hex[:8]}.txt"
    api = world.sync_clients.get(principal)
    if api is not None:
        assert api.put(f"agent/workspace/files/{path}", content=b"x").status_code == 200
    return A + f"agent/workspace/files/{path}"


def fresh_public_file(world: World, principal: str) -> str:
    path = f"t{uuid.uuid4().hex[:8]}.txt"
    assert world.admin.sac("PUT", f"workspace/public/files/{path}", content=b"x").status_code == 200
    return A + f"workspace/public/files/{path}"


def fresh_group_file(world: World, principal: str) -> str:
    path = f"t{uuid.uuid4().hex[:8]}.txt"
    resp = world.owner.sac("PUT", f"groups/{world.group}/workspace/files/{path}", content=b"x")
    assert resp.status_code == 200, resp.text
    return A + f"groups/{world.group}/workspace/files/{path}"


def fresh_org_key(world: World, principal: str) -> str:
    resp = world.admin.sac(
        "PUT", "organisation-keys/openrouter", json={"api_key": "sk-matrix-1234"}
    )
    assert resp.status_code == 200, resp.text
    return A + "organisation-keys/openrouter"


def fresh_secret(world: World, principal: str) -> str:
    """One of alice's secrets, named in the path with its owner (as an admin names it)."""
    name = f"T{uuid.uuid4().hex[:8]}"
    resp = world.owner.sac("PUT", f"secrets/{name}", json={"value": "matrix-secret-value"})
    assert resp.status_code == 201, resp.text
    return A + f"secrets/{name}?user={world.user}"


# A receiver nothing listens on: the allow-list names it (world), and the
# deliveries the table's calls queue are refused and retried, harmlessly.
WEBHOOK_URL = "http://127.0.0.1:9/matrix"


def fresh_webhook(world: World, principal: str) -> str:
    """One of alice's webhooks, named with its owner (as an admin removes it)."""
    resp = world.owner.sac(
        "POST", "webhooks", json={"url": WEBHOOK_URL, "kinds": ["budget.exhausted"]}
    )
    assert resp.status_code == 201, resp.text
    return A + f"webhooks/{resp.json()['id']}?user={world.user}"


def fresh_template(world: World, principal: str) -> str:
    """One of alice's personal templates."""
    name = f"t{uuid.uuid4().hex[:8]}"
    resp = world.owner.sac(
        "POST", "templates", json={"name": name, "definition": {"display_name": "Throwaway"}}
    )
    assert resp.status_code == 201, resp.text
    return A + f"templates/{resp.json()['id']}"


def fresh_settings(world: World, principal: str) -> str:
    """alice's overrides (room for the throwaway agents), to be cleared."""
    resp = world.admin.sac("PUT", f"users/{world.user}/settings", json={"max_agents_per_user": 10})
    assert resp.status_code == 200, resp.text
    return A + f"users/{world.user}/settings"


def fresh_stopped_agent(world: World, principal: str) -> str:
    return fresh_agent(world, principal) + "/stop"


def fresh_started_agent(world: World, principal: str) -> str:
    return fresh_agent(world, principal) + "/start"


def fresh_restarted_agent(world: World, principal: str) -> str:
    return fresh_agent(world, principal) + "/restart"


# The one policy an agent may read but never change, and a request of a1 it filed.
INVALID_POLICY = {"policy": {"default": "sometimes"}}
OWN_READERS = who(OWNER, "agent")  # alice's a1: alice, admins, a1's own sandbox
DRIVEN_READERS = who(OWN_READERS, "sibling_server")  # ... and alice's drivers
HISTORY_READERS = who(OWN_READERS, "auditor")
MEMBERS = who("owner", "member", "admin")  # of alice and carol's group
MEMBER_AGENTS = who(MEMBERS, "agent", "sibling_agent")  # alice's agents see her groups'
SKILL_READERS = who(OWNER, "agent", "sibling_agent", "sibling_server")  # alice's private skill
SKILL_AUTHORS = who(OWNER, "agent", "sibling_agent")  # alice's private skill, as hers
PUBLIC_READERS = who(PERSONS, AGENT_TOKENS)

SERVICE_ROWS: list[Row] = [
    # pages and public documents
    Row("GET", P, PERSONS, ok=frozenset({200})),
    Row("POST", P, PERSONS, body=None, raw=b"", ok=frozenset({400})),
    Row("GET", P + "static/sac.css", EVERYONE, ok=frozenset({200})),
    Row("GET", A, EVERYONE, ok=frozenset({200})),
    Row("GET", A + "openapi.json", EVERYONE, ok=frozenset({200})),
    # health checks for probes: anyone (details only for an administrator: test_health.py)
    Row("GET", A + "health", EVERYONE, ok=frozenset({200})),
    Row("GET", A + "health/ready", EVERYONE, ok=frozenset({200})),
    # the person's pages (never any token an agent holds)
    Row("GET", P + "approvals", PERSONS, ok=frozenset({200})),
    Row("GET", P + "approvals/{rid}", OWNER, ok=frozenset({200})),
    Row("POST", P + "approvals/{rid}", OWNER, form={"decision": "maybe"}, ok=frozenset({400})),
    Row("GET", P + "agents/{user}/{slug}", OWNER, ok=frozenset({200})),
    Row("POST", P + "agents/{user}/{slug}", OWNER, form={"action": "nope"}, ok=frozenset({400})),
    Row("GET", P + "notifications", PERSONS, ok=frozenset({200})),
    Row("POST", P + "notifications", PERSONS, form={"action": "nope"}, ok=frozenset({400})),
    Row("GET", P + "secrets", PERSONS, ok=frozenset({200})),
    Row("POST", P + "secrets", PERSONS, form={"action": "nope"}, ok=frozenset({400})),
    # the templates pages: persons; changing alice's personal template is hers alone (an
    # administrator sees it, but the save is refused before the form's invalid definition)
    Row("GET", P + "templates", PERSONS, ok=frozenset({200})),
    Row("GET", P + "templates/new", PERSONS, ok=frozenset({200})),
    Row("POST", P + "templates/new", PERSONS, form={"name": "Not A Name"}, ok=frozenset({400})),
    Row("GET", P + "templates/{template}", OWNER, ok=frozenset({200})),
    Row(
        "POST",
        P + "templates/{template}",
        who("owner"),
        form={"action": "save", "display_name": ""},
        ok=frozenset({400}),
    ),
    Row("GET", P + "skills/{skill}", OWNER, ok=frozenset({200})),
    Row("POST", P + "skills/{skill}", OWNER, form={"action": "nope"}, ok=frozenset({400})),
    # OAuth's callback: without the state of a login under way, everyone gets a 400.
    Row("GET", P + "oauth_callback", EVERYONE, ok=frozenset({400})),
    # agents
    Row("GET", A + "agents", SIGNED_IN - {"admin_narrow"}, ok=frozenset({200})),
    Row("POST", A + "agents", who(PERSONS, DRIVERS), body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "users/{user}/agents", who(OWNER, "agent", "sibling_agent", "sibling_server")),
    Row(
        "POST",
        A + "users/{user}/agents",
        who(OWNER, "sibling_server"),
        body=NO_BODY,
        ok=frozenset({400}),
    ),
    Row("GET", AGENT, DRIVEN_READERS, ok=frozenset({200})),
    Row("PATCH", AGENT, OWNER, body={"drive_agents": "yes"}, ok=frozenset({400})),
    Row("DELETE", AGENT, OWNER, fresh=fresh_agent, ok=frozenset({204}), intact=True),
    Row("GET", AGENT + "/usage", DRIVEN_READERS, ok=frozenset({200})),
    # Exec and screen: the owner or an administrator as persons; no token a sandbox
    # holds (not even a driver's). An empty request is refused once they are let in;
    # a plain GET of the socket is not an upgrade (400).
    Row("POST", AGENT + "/exec", OWNER, body=NO_BODY, ok=frozenset({400})),
    Row("GET", AGENT + "/exec/ws", OWNER, ok=frozenset({400})),
    Row("GET", AGENT + "/terminal/screen", OWNER, ok=frozenset({200})),
    Row(
        "POST",
        AGENT + "/start",
        who(OWNER, "sibling_server"),
        fresh=fresh_started_agent,
        ok=frozenset({202}),
    ),
    Row(
        "POST",
        AGENT + "/stop",
        who(OWNER, "sibling_server"),
        fresh=fresh_stopped_agent,
        ok=frozenset({200}),
    ),
    Row(
        "POST",
        AGENT + "/restart",
        who(OWNER, "sibling_server"),
        fresh=fresh_restarted_agent,
        ok=frozenset({202}),
    ),
    # settings and keys
    Row("GET", A + "settings", PERSONS, ok=frozenset({200})),
    Row("GET", A + "settings/system", ADMIN, ok=frozenset({200})),
    Row("PUT", A + "settings/system", ADMIN, body={"no_such_setting": 1}, ok=frozenset({400})),
    Row("GET", A + "users/{user}/settings", OWNER, ok=frozenset({200})),
    Row(
        "PUT", A + "users/{user}/settings", ADMIN, body={"no_such_setting": 1}, ok=frozenset({400})
    ),
    Row("DELETE", A + "users/{user}/settings", ADMIN, fresh=fresh_settings, ok=frozenset({204})),
    Row("GET", A + "providers", SIGNED_IN, ok=frozenset({200})),
    Row("GET", A + "organisation-keys", ADMIN, ok=frozenset({200})),
    Row("PUT", A + "organisation-keys/anthropic", ADMIN, body=NO_BODY, ok=frozenset({400})),
    Row(
        "DELETE",
        A + "organisation-keys/openrouter",
        ADMIN,
        fresh=fresh_org_key,
        ok=frozenset({204}),
    ),
    # users' secrets: persons only, each their own (administrators list and remove)
    Row("GET", A + "secrets", PERSONS, ok=frozenset({200})),
    Row("GET", A + "secrets?user={user}", OWNER, ok=frozenset({200})),
    Row("PUT", A + "secrets/MATRIX", PERSONS, body=NO_BODY, ok=frozenset({400})),
    Row("DELETE", A + "secrets/{secret}", OWNER, fresh=fresh_secret, ok=frozenset({204})),
    # tasks: the owner, the owner's drivers and administrators (never an agent's own
    # token, not even for itself); the task is an ended one
    Row("POST", AGENT + "/tasks", who(OWNER, "sibling_server"), body=NO_BODY, ok=frozenset({400})),
    Row("GET", AGENT + "/tasks", who(OWNER, "sibling_server"), ok=frozenset({200})),
    Row("GET", A + "tasks", who(PERSONS, DRIVERS), ok=frozenset({200})),
    Row("GET", A + "tasks?user={user}", who(OWNER, "sibling_server"), ok=frozenset({200})),
    Row("GET", A + "tasks/{task}", who(OWNER, "sibling_server"), ok=frozenset({200})),
    Row("POST", A + "tasks/{task}/cancel", who(OWNER, "sibling_server"), ok=frozenset({409})),
    # users' webhooks: persons only, each their own (administrators list and remove)
    Row("GET", A + "webhooks", PERSONS, ok=frozenset({200})),
    Row("GET", A + "webhooks?user={user}", OWNER, ok=frozenset({200})),
    Row("POST", A + "webhooks", PERSONS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "webhooks/{webhook}", who("owner"), ok=frozenset({200})),
    Row("PATCH", A + "webhooks/{webhook}", who("owner"), body=NO_BODY, ok=frozenset({400})),
    Row("DELETE", A + "webhooks/{webhook}", OWNER, fresh=fresh_webhook, ok=frozenset({204})),
    Row("GET", A + "webhooks/{webhook}/deliveries", who("owner"), ok=frozenset({200})),
    Row("POST", A + "webhooks/{webhook}/test", who("owner"), ok=frozenset({202})),
    Row("POST", A + "webhooks/{webhook}/secret", who("owner"), ok=frozenset({200})),
    # agent templates (alice's personal one): persons write, drivers read too
    Row("GET", A + "templates", who(PERSONS, DRIVERS), ok=frozenset({200})),
    Row("POST", A + "templates", PERSONS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "templates/{template}", who(OWNER, "sibling_server"), ok=frozenset({200})),
    Row("PATCH", A + "templates/{template}", who("owner"), body=NO_BODY, ok=frozenset({400})),
    Row(
        "DELETE",
        A + "templates/{template}",
        who("owner"),
        fresh=fresh_template,
        ok=frozenset({204}),
        intact=True,
    ),
    Row(
        "POST",
        A + "templates/{template}/fork",
        OWNER,
        body={"name": "Not A Name"},
        ok=frozenset({400}),
    ),
    # a1 was not made from a template: those who may update it hear so
    Row("POST", AGENT + "/template-update", OWNER, ok=frozenset({409})),
    # the credential proxy: agent tokens only (each its own agent)
    Row("POST", P + "llm/v1/messages", AGENT_TOKENS, body=NO_BODY),
    # history
    Row("POST", A + "history/ingest", AGENT_TOKENS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "history/search", PERSONS, ok=frozenset({200})),
    Row("GET", A + "history/export.csv", PERSONS, ok=frozenset({200})),
    Row("GET", AGENT + "/history/sessions", HISTORY_READERS, ok=frozenset({200, 404})),
    Row("GET", AGENT + "/history/events", HISTORY_READERS, ok=frozenset({200, 404})),
    Row("GET", AGENT + "/history/export.csv", HISTORY_READERS, ok=frozenset({200, 404})),
    # human in the loop
    Row("GET", A + "hitl/default-policy", PERSONS, ok=frozenset({200})),
    Row("PUT", A + "hitl/default-policy", ADMIN, body=INVALID_POLICY, ok=frozenset({400})),
    Row("DELETE", A + "hitl/default-policy", ADMIN, ok=frozenset({204})),
    Row("POST", A + "hitl/policy-check", PERSONS, body=INVALID_POLICY, ok=frozenset({400})),
    Row("POST", A + "agent/events", AGENT_TOKENS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "agent/hitl", AGENT_TOKENS, ok=frozenset({200})),
    Row("POST", A + "hitl/requests", AGENT_TOKENS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "hitl/requests", SIGNED_IN - {"admin_narrow"}, ok=frozenset({200})),
    Row("GET", A + "hitl/requests/{rid}", DRIVEN_READERS, ok=frozenset({200})),
    Row("GET", A + "hitl/requests/{rid}/wait?timeout=0", who("agent"), ok=frozenset({200})),
    Row(
        "POST",
        A + "hitl/requests/{rid}/cancel",
        who("agent"),
        fresh=fresh_request,
        ok=frozenset({200}),
    ),
    # Deciding: a person, never a token any agent holds.
    Row("POST", A + "hitl/requests/{rid}/decision", OWNER, body=NO_BODY, ok=frozenset({400})),
    # the caller's event stream: wait=0 ends it once what is there is sent
    Row("GET", A + "events?wait=0", who(PERSONS, DRIVERS), ok=frozenset({200})),
    Row("GET", AGENT + "/hitl-policy", OWN_READERS, ok=frozenset({200})),
    Row("PUT", AGENT + "/hitl-policy", OWNER, body=INVALID_POLICY, ok=frozenset({400})),
    # skills (alice's private skill; a throwaway one to delete)
    Row("GET", A + "skills", SIGNED_IN, ok=frozenset({200})),
    Row("POST", A + "skills", who(PERSONS, AGENT_TOKENS), body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "skills/{skill}", SKILL_READERS, ok=frozenset({200})),
    Row("PATCH", A + "skills/{skill}", SKILL_AUTHORS, body={"title": 7}, ok=frozenset({400})),
    Row(
        "DELETE",
        A + "skills/{skill}",
        SKILL_AUTHORS,
        fresh=fresh_skill,
        ok=frozenset({204}),
        intact=True,
    ),
    Row(
        "POST",
        A + "skills/{skill}/fork",
        SKILL_AUTHORS,
        body={"command": "Not A Command"},
        ok=frozenset({400}),
    ),
    Row("GET", A + "skills/{skill}/bundle", SKILL_READERS, ok=frozenset({200})),
    Row(
        "PUT",
        A + "skills/{skill}/bundle",
        SKILL_AUTHORS,
        raw=b"not an archive",
        ok=frozenset({400}),
    ),
    Row(
        "DELETE",
        A + "skills/{skill}/bundle",
        SKILL_AUTHORS,
        fresh=fresh_skill,
        ok=frozenset({204, 404}),
    ),
    Row("GET", AGENT + "/skills", DRIVEN_READERS, ok=frozenset({200})),
    Row("POST", AGENT + "/skills", OWN_READERS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", AGENT + "/skills/{pskill}", DRIVEN_READERS, ok=frozenset({200})),
    Row(
        "POST",
        AGENT + "/skills/{pskill}/update",
        OWN_READERS,
        body={"version": "newest"},
        ok=frozenset({400}),
    ),
    Row(
        "DELETE",
        AGENT + "/skills/{pskill}",
        OWN_READERS,
        fresh=fresh_install,
        ok=frozenset({204}),
        intact=True,
    ),
    Row("GET", A + "agent/skills", AGENT_TOKENS, ok=frozenset({200})),
    Row("POST", A + "agent/skills/bundles", AGENT_TOKENS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "agent/skills/{pskill}/bundle", who("agent"), ok=frozenset({200})),
    # workspaces
    Row("GET", A + "agent/workspace", AGENT_TOKENS, ok=frozenset({200})),
    Row("POST", A + "agent/workspace/batch", AGENT_TOKENS, body=NO_BODY, ok=frozenset({400})),
    Row("GET", A + "agent/workspace/files/output/shared.txt", who("agent"), ok=frozenset({200})),
    Row(
        "PUT",
        A + "agent/workspace/files/public/nope.txt",
        AGENT_TOKENS,
        raw=b"x",
        ok=frozenset({403}),
    ),
    Row(
        "DELETE",
        A + "agent/workspace/files/output/x.txt",
        AGENT_TOKENS,
        fresh=fresh_own_file,
        ok=frozenset({204}),
    ),
    Row("GET", AGENT + "/workspace", OWN_READERS, ok=frozenset({200})),
    Row("GET", AGENT + "/workspace/files/output/shared.txt", OWN_READERS, ok=frozenset({200})),
    Row(
        "PUT",
        AGENT + "/workspace/files/private/x.txt",
        OWNER,
        headers={"X-Sac-Base-Version": "no"},
        raw=b"x",
        ok=frozenset({400}),
    ),
    Row(
        "DELETE",
        AGENT + "/workspace/files/output/x.txt",
        OWNER,
        fresh=fresh_agent_file,
        ok=frozenset({204}),
        intact=True,
    ),
    Row("GET", A + "workspace/public", PUBLIC_READERS, ok=frozenset({200})),
    Row("GET", A + "workspace/public/files/shared.txt", PUBLIC_READERS, ok=frozenset({200})),
    Row(
        "PUT",
        A + "workspace/public/files/x.txt",
        ADMIN,
        headers={"X-Sac-Base-Version": "no"},
        raw=b"x",
        ok=frozenset({400}),
    ),
    Row(
        "DELETE",
        A + "workspace/public/files/x.txt",
        ADMIN,
        fresh=fresh_public_file,
        ok=frozenset({204}),
        intact=True,
    ),
    Row("GET", A + "groups/{group}/workspace", MEMBER_AGENTS, ok=frozenset({200})),
    Row("GET", A + "groups/{group}/workspace/files/shared.txt", MEMBER_AGENTS, ok=frozenset({200})),
    Row(
        "PUT",
        A + "groups/{group}/workspace/files/x.txt",
        MEMBERS,
        headers={"X-Sac-Base-Version": "no"},
        raw=b"x",
        ok=frozenset({400}),
    ),
    Row(
        "DELETE",
        A + "groups/{group}/workspace/files/x.txt",
        MEMBERS,
        fresh=fresh_group_file,
        ok=frozenset({204}),
        intact=True,
    ),
    Row("GET", A + "groups/{group}/workspace/quota", MEMBER_AGENTS, ok=frozenset({200})),
    Row("PUT", A + "groups/{group}/workspace/quota", ADMIN, body={"nope": 1}, ok=frozenset({400})),
    # operations
    Row("GET", A + "culler", ADMIN, ok=frozenset({200})),
    Row("GET", A + "maintenance/preview", ADMIN, ok=frozenset({200})),
    # metrics: administrators, and holders of JupyterHub's read:metrics (the admin flag)
    Row("GET", P + "metrics", who(ADMIN, "hub_admin"), ok=frozenset({200})),
    Row("GET", A + "audit", ADMIN, ok=frozenset({200})),
    Row("GET", A + "audit/export.csv", ADMIN, ok=frozenset({200})),
    # the admin pages (the Conversations page also for auditors)
    Row("GET", P + "admin/", ADMIN, ok=frozenset({302})),
    Row("GET", P + "admin/settings", ADMIN, ok=frozenset({200})),
    Row(
        "POST",
        P + "admin/settings",
        ADMIN,
        form={"max_agents_per_user": "lots"},
        ok=frozenset({400}),
    ),
    Row("GET", P + "admin/settings/keys/anthropic", ADMIN, ok=frozenset({200, 303})),
    Row("POST", P + "admin/settings/keys/anthropic", ADMIN, raw=b"", ok=frozenset({400})),
    Row("GET", P + "admin/users", ADMIN, ok=frozenset({200})),
    Row("GET", P + "admin/users/{user}", ADMIN, ok=frozenset({200})),
    Row(
        "POST",
        P + "admin/users/{user}",
        ADMIN,
        form={"max_agents_per_user": "lots"},
        ok=frozenset({400}),
    ),
    Row("GET", P + "admin/agents", ADMIN, ok=frozenset({200})),
    Row("GET", P + "admin/agents/{user}/{slug}", ADMIN, ok=frozenset({200})),
    Row("POST", P + "admin/agents/{user}/{slug}", ADMIN, raw=b"", ok=frozenset({400})),
    Row("GET", P + "admin/conversations", who(ADMIN, "auditor"), ok=frozenset({200})),
    Row("GET", P + "admin/hitl", ADMIN, ok=frozenset({200})),
    Row("GET", P + "admin/hitl/{rid}", ADMIN, ok=frozenset({200})),
    Row("POST", P + "admin/hitl/{rid}", ADMIN, raw=b"", ok=frozenset({400})),
    Row(
        "POST", P + "admin/hitl/default-policy", ADMIN, form={"action": "nope"}, ok=frozenset({400})
    ),
    Row("GET", P + "admin/usage", ADMIN, ok=frozenset({200})),
    Row("GET", P + "admin/workspaces", ADMIN, ok=frozenset({200})),
    Row("POST", P + "admin/workspaces", ADMIN, raw=b"", ok=frozenset({400})),
    Row("GET", P + "admin/audit", ADMIN, ok=frozenset({200})),
    Row("GET", P + "admin/maintenance", ADMIN, ok=frozenset({200})),
]

# The sandbox extension of alice/a1 (jupyter_server with JupyterHub's auth): whoever
# JupyterHub lets into that server. Not the administrator (the operator role has no
# access:servers); the JupyterHub admin flag has it (an operator's explicit grant).
LAB = "{server}sac/api/"
INTO_A1 = who("owner", "server", "sibling_server", "hub_admin")
EXTENSION_ROWS: list[Row] = [
    Row("GET", LAB + "openapi.json", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "status", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "activity", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "terminal", INTO_A1, ok=frozenset({200})),
    Row("POST", LAB + "terminal", INTO_A1, ok=frozenset({200})),
    Row("POST", LAB + "terminal/restart", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "terminal/screen", INTO_A1, ok=frozenset({200})),
    # Only this server's own token runs commands here: the sac service calls with it
    # (it audits them and applies exec_enabled), and the sandbox holds it anyway.
    # Whoever else may open the server is refused, another agent's server too. (The
    # matrix's GET is no WebSocket upgrade: 400 once let in.)
    Row("GET", LAB + "exec", who("server"), ok=frozenset({400})),
    Row("GET", LAB + "history/status", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "hitl", INTO_A1, ok=frozenset({200})),
    # Claude Code's hooks also need the server's secret, which only its processes hold.
    Row(
        "POST",
        LAB + "hooks/transcript",
        INTO_A1,
        body=NO_BODY,
        ok=frozenset({400}),
        headers={"X-Sac-Hook-Secret": "{hook_secret}"},
    ),
    Row(
        "POST",
        LAB + "hooks/pre-tool-use",
        INTO_A1,
        body=NO_BODY,
        ok=frozenset({400}),
        headers={"X-Sac-Hook-Secret": "{hook_secret}"},
    ),
    Row("POST", LAB + "chat", INTO_A1, body=NO_BODY, ok=frozenset({400})),
    Row("GET", LAB + "chat/sessions", INTO_A1, ok=frozenset({200})),
    Row(
        "GET",
        LAB + "chat/sessions/6f1c0000-0000-4000-8000-000000000000",
        INTO_A1,
        ok=frozenset({404}),
    ),
    Row(
        "POST",
        LAB + "chat/sessions/6f1c0000-0000-4000-8000-000000000000/cancel",
        INTO_A1,
        ok=frozenset({404}),
    ),
    Row("GET", LAB + "chat/events", INTO_A1, ok=frozenset({400})),
    Row("POST", LAB + "tasks/run", INTO_A1, body=NO_BODY, ok=frozenset({400})),
    Row("GET", LAB + "skills", INTO_A1, ok=frozenset({200})),
    Row("POST", LAB + "skills/sync", INTO_A1, ok=frozenset({200})),
    Row("POST", LAB + "skills/nope/run", INTO_A1, body=NO_BODY, ok=frozenset({400, 404})),
    Row("GET", LAB + "workspace", INTO_A1, ok=frozenset({200})),
    Row("POST", LAB + "workspace", INTO_A1, ok=frozenset({200})),
    Row("GET", LAB + "workspace/preview", INTO_A1, ok=frozenset({400})),
    Row("GET", LAB + "workspace/archive?path=private/none", INTO_A1, ok=frozenset({404})),
    Row("POST", LAB + "workspace/archive?path=output", INTO_A1, raw=b"", ok=frozenset({400})),
    # The relay: the sidebar's way to the service, with a1's own agent token.
    Row("GET", LAB + "service/users/{user}/agents/{slug}", INTO_A1, ok=frozenset({200})),
    Row(
        "POST",
        LAB + "service/hitl/requests/{rid}/decision",
        INTO_A1,
        body={"decision": "allow"},
        ok=frozenset({403}),
    ),
    Row(
        "PUT",
        LAB + "service/users/{user}/agents/{slug}/hitl-policy",
        INTO_A1,
        body={"policy": {"default": "allow"}},
        ok=frozenset({403}),
    ),
    Row(
        "PATCH",
        LAB + "service/users/{user}/agents/{slug}",
        INTO_A1,
        body={"drive_agents": True},
        ok=frozenset({403}),
    ),
    Row("DELETE", LAB + "service/users/{user}/agents/{slug}", INTO_A1, ok=frozenset({403})),
]

# Fill the extension's hooks rows: no principal's token opens them (the secret does,
# which only the server's own processes inherit).
EXTENSION_ROWS = [
    Row(r.method, r.path, NOBODY, body=r.body, ok=r.ok) if "hooks/" in r.path else r
    for r in EXTENSION_ROWS
] + [Row("PUT", LAB + "workspace/preview", INTO_A1, body=NO_BODY, ok=frozenset({400}))]


# ---- the world the table is played in ------------------------------------------------


@dataclass
class World:
    url: str  # the hub's (http://localhost:<port>/)
    service_origin: str  # the service's host (http://sac--service.localhost:<port>/)
    user_origin: str  # alice's host, where her agents' servers are
    user: str  # alice
    group: str
    model: dict[str, str]
    owner: HubApi
    admin: HubApi
    tokens: dict[str, str]  # principal -> Authorization header value
    values: dict[str, str]  # placeholder -> value
    agent_api: httpx.Client  # a1's agent token on the service API
    sync_clients: dict[str, httpx.Client]
    spare_skill: int
    throwaway: list[str] = field(default_factory=list)

    def fill(self, template: str) -> str:
        return template.format(**self.values)

    def origin(self, path: str) -> str:
        """Where a site-relative path is served: the service's host, the agent owner's
        host, or the hub's."""
        if path.startswith(P):
            return self.service_origin
        if path.startswith("user/"):
            return self.user_origin
        return self.url

    def clean(self) -> None:
        """Delete the throwaway agents made for one call (stopping any it started)."""
        while self.throwaway:
            self.owner.sac("DELETE", f"users/{self.user}/agents/{self.throwaway.pop()}")


def _sandbox_tokens(url: str, client: HubApi, user: str, slug: str) -> tuple[str, str, str]:
    """(agent token, JupyterHub token, hook secret) as the agent's own shell sees them."""
    out = asyncio.run(
        run_in_terminal(
            url,
            client.token,
            user,
            slug,
            'echo "$SAC_AGENT_TOKEN $JUPYTERHUB_API_TOKEN $SAC_HOOK_SECRET"',
        )
    )
    agent, hub, secret = out.split()
    assert agent.startswith("sac-agent-") and hub and secret
    return agent, hub, secret


def _bundle() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('hello')\n"
        info = tarfile.TarInfo("scripts/hello.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(stack: dict, fake_anthropic: str) -> Iterator[World]:
    admin: HubApi = stack["admin"]
    tag = uuid.uuid4().hex[:6]
    alice, bob, carol = f"alice{tag}", f"bob{tag}", f"carol{tag}"
    owner = admin.create_user(alice)
    other = admin.create_user(bob)
    member = admin.create_user(carol)
    auditor = admin.create_user(f"aud{tag}")
    curator = admin.create_user(f"cur{tag}")
    hub_admin = admin.create_user(f"hadm{tag}", hub_admin=True)
    harness = HubApi(admin.url, admin.harness, admin.harness)
    for group, name in (("sac-history-auditors", f"aud{tag}"), ("sac-skill-curators", f"cur{tag}")):
        assert harness.hub("POST", f"groups/{group}/users", json={"users": [name]}).is_success
    group = f"g{tag}"
    assert harness.hub("POST", f"groups/{group}").status_code == 201
    assert harness.hub("POST", f"groups/{group}/users", json={"users": [alice, carol]}).is_success
    # Groups reach tokens through the hub's cache: new clients see them.
    owner, member = harness.token_for(alice), harness.token_for(carol)
    auditor, curator = harness.token_for(f"aud{tag}"), harness.token_for(f"cur{tag}")
    narrow = admin.hub(
        "POST",
        "users/admin/tokens",
        json={"note": "narrow", "scopes": ["access:services!service=sac"]},
    )
    assert narrow.status_code == 201, narrow.text
    expired = harness.hub("POST", f"users/{alice}/tokens", json={"expires_in": 1})
    assert expired.status_code == 201, expired.text

    # Throwaway agents are made one at a time (and deleted after each call).
    limit = admin.sac("PUT", f"users/{alice}/settings", json={"max_agents_per_user": 10})
    assert limit.status_code == 200, limit.text
    model = model_agent(fake_anthropic)
    agents = (
        (owner, alice, "a1", False),
        (owner, alice, "a2", True),
        (other, bob, "b1", False),
        (admin, "admin", f"x{tag}", True),
    )
    for client, _user, slug, drive in agents:
        resp = client.sac("POST", "agents", json={"slug": slug, "drive_agents": drive, **model})
        assert resp.status_code == 201, resp.text
    sandbox: dict[str, tuple[str, str, str]] = {}
    saved_system: dict[str, Any] | None = None
    throwaway: list[str] = []
    try:
        for client, user, slug, _ in agents:
            admin.start(user, slug)
            sandbox[slug] = _sandbox_tokens(stack["url"], client, user, slug)
        a1, a2, b1, x1 = (sandbox[s] for s in ("a1", "a2", "b1", f"x{tag}"))
        tokens = {
            "owner": f"token {owner.token}",
            "other": f"token {other.token}",
            "member": f"token {member.token}",
            "admin": f"token {admin.token}",
            "admin_narrow": f"token {narrow.json()['token']}",
            "hub_admin": f"token {hub_admin.token}",
            "auditor": f"token {auditor.token}",
            "curator": f"token {curator.token}",
            "expired": f"token {expired.json()['token']}",
            "agent": f"Bearer {a1[0]}",
            "server": f"token {a1[1]}",
            "sibling_agent": f"Bearer {a2[0]}",
            "sibling_server": f"token {a2[1]}",
            "foreign_agent": f"Bearer {b1[0]}",
            "foreign_server": f"token {b1[1]}",
            "admins_agent": f"Bearer {x1[0]}",
            "admins_server": f"token {x1[1]}",
        }
        sync_clients = {
            name: httpx.Client(
                base_url=admin.service_url + "api/",
                timeout=60,
                headers={"Authorization": tokens[name]},
            )
            for name in AGENT_TOKENS
        }
        agent_api = sync_clients["agent"]
        # The things the table acts on: a1's pending request, alice's private skill
        # with a bundle, a public skill of hers installed in a1, files in a1's, the
        # public and the group's workspace.
        rid = agent_api.post(
            "hitl/requests", json={"kind": "tool", "tool": "Bash", "input": {"command": "ls"}}
        )
        assert rid.status_code == 201, rid.text
        skill = owner.sac("POST", "skills", json={"command": f"m{tag}", **skill_spec("Private.")})
        assert skill.status_code == 201, skill.text
        bundle = owner.sac("PUT", f"skills/{skill.json()['id']}/bundle", content=_bundle())
        assert bundle.status_code == 200, bundle.text
        public = owner.sac(
            "POST",
            "skills",
            json={"command": f"p{tag}", **skill_spec("Public."), "visibility": "public"},
        )
        assert public.status_code == 201, public.text
        assert (
            owner.sac("PUT", f"skills/{public.json()['id']}/bundle", content=_bundle()).status_code
            == 200
        )
        assert (
            owner.sac(
                "POST", f"users/{alice}/agents/a1/skills", json={"skill_id": public.json()["id"]}
            ).status_code
            == 201
        )
        spare = owner.sac(
            "POST",
            "skills",
            json={"command": f"s{tag}", **skill_spec("Spare."), "visibility": "public"},
        )
        assert spare.status_code == 201, spare.text
        template = owner.sac(
            "POST", "templates", json={"name": f"m{tag}", "definition": {"display_name": "M"}}
        )
        assert template.status_code == 201, template.text
        for path, client in (
            (f"users/{alice}/agents/a1/workspace/files/output/shared.txt", owner),
            ("workspace/public/files/shared.txt", admin),
            (f"groups/{group}/workspace/files/shared.txt", owner),
        ):
            assert client.sac("PUT", path, content=b"shared").status_code == 200, path
        # Webhooks need a host on the allow-list (restored afterwards).
        saved_system = admin.sac("GET", "settings/system").json()["overrides"]
        allow = {**saved_system, "webhook_allowed_hosts": ["127.0.0.1"]}
        assert admin.sac("PUT", "settings/system", json=allow).status_code == 200
        webhook = owner.sac(
            "POST", "webhooks", json={"url": WEBHOOK_URL, "kinds": ["budget.exhausted"]}
        )
        assert webhook.status_code == 201, webhook.text
        # An ended task of a1's (cancelled as soon as queued, or its turn interrupted).
        task = owner.sac("POST", f"users/{alice}/agents/a1/tasks", json={"prompt": "matrix"})
        assert task.status_code == 201, task.text
        assert owner.sac("POST", f"tasks/{task.json()['id']}/cancel").status_code == 202
        poll_until(
            lambda: owner.sac("GET", f"tasks/{task.json()['id']}").json()["status"] != "running",
            120,
            "the matrix's task ended",
        )
        service_url = admin.service_url
        server = admin.server_url(alice, "a1")
        world = World(
            url=stack["url"],
            service_origin=service_url[: -len(P)],
            user_origin=server[: -len(f"user/{alice}/a1/")],
            user=alice,
            group=group,
            model=model,
            owner=owner,
            admin=admin,
            tokens=tokens,
            values={
                "user": alice,
                "slug": "a1",
                "group": group,
                "rid": rid.json()["id"],
                "skill": str(skill.json()["id"]),
                "template": str(template.json()["id"]),
                "pskill": str(public.json()["id"]),
                "server": f"user/{alice}/a1/",
                "hook_secret": a1[2],
                "hub_admin": f"hadm{tag}",
                "webhook": webhook.json()["id"],
                "task": task.json()["id"],
            },
            agent_api=agent_api,
            sync_clients=sync_clients,
            spare_skill=spare.json()["id"],
            throwaway=throwaway,
        )
        yield world
    finally:
        # Leave the stack as found for the tests after this one: no organisation key
        # the table set, no agents.
        admin.sac("DELETE", "organisation-keys/openrouter")
        if saved_system is not None:
            admin.sac("PUT", "settings/system", json=saved_system)
        for client, user, slug, _ in agents:
            client.sac("DELETE", f"users/{user}/agents/{slug}")
        for slug in throwaway:
            owner.sac("DELETE", f"users/{alice}/agents/{slug}")


# ---- playing it ---------------------------------------------------------------------


def refused(resp: httpx.Response) -> bool:
    """401, 403 or 404, or a page's redirect to the hub's login."""
    if resp.status_code in (302, 303):
        location = resp.headers.get("location", "")
        return "oauth2/authorize" in location or "/hub/login" in location
    return resp.status_code in (401, 403, 404)


def call(world: World, row: Row, path: str, principal: str, client: httpx.Client) -> httpx.Response:
    headers = {k: world.fill(v) for k, v in row.headers.items()}
    token = world.tokens.get(principal)
    if token:
        headers["Authorization"] = token
    if row.raw is not None:
        return client.request(row.method, path, content=row.raw, headers=headers)
    if row.form is not None:
        return client.request(row.method, path, data=row.form, headers=headers)
    if row.body is not None:
        return client.request(row.method, path, json=row.body, headers=headers)
    return client.request(row.method, path, headers=headers)


def play(world: World, rows: list[Row]) -> list[str]:
    failures = []
    with httpx.Client(timeout=120, follow_redirects=False) as client:
        for row in rows:
            for principal in PRINCIPALS:
                allowed = principal in row.allowed
                path = row.fresh(world, principal) if row.fresh else world.fill(row.path)
                resp = call(world, row, world.origin(path) + path, principal, client)
                cell = f"{row.method} {row.path} as {principal}: {resp.status_code}"
                if row.intact and not allowed:
                    still = client.get(
                        world.origin(path) + path, headers={"Authorization": world.tokens["admin"]}
                    )
                    if still.status_code != 200:
                        failures.append(f"{cell}: refused, but its target is gone")
                world.clean()
                if allowed:
                    wanted = row.ok
                    good = resp.status_code in wanted if wanted else not refused(resp)
                    good = good and resp.status_code < 500
                else:
                    good = refused(resp)
                if not good:
                    want = "allowed" if allowed else "refused"
                    failures.append(f"{cell}, expected {want} ({resp.text[:160]!r})")
    return failures


def test_every_service_route_answers_each_principal_as_the_table_says(world: World) -> None:
    failures = play(world, SERVICE_ROWS)
    assert not failures, f"{len(failures)} cells differ:\n" + "\n".join(failures)


def test_every_extension_route_answers_each_principal_as_the_table_says(world: World) -> None:
    failures = play(world, EXTENSION_ROWS)
    assert not failures, f"{len(failures)} cells differ:\n" + "\n".join(failures)


# ---- the table covers the route tables -----------------------------------------------

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SAMPLE = {
    "user": "alice",
    "slug": "a1",
    "group": "g",
    "rid": "6f1c0000-0000-0000-0000-000000000000",
    "skill": "7",
    "pskill": "8",
    "server": "user/alice/a1/",
    "hook_secret": "s",
    "secret": "T0",
    "webhook": "6f1c0000-0000-0000-0000-000000000001",
    "template": "9",
    "task": "6f1c0000-0000-0000-0000-000000000002",
}


def implemented(handler: type) -> set[str]:
    return {
        m
        for m in METHODS
        if getattr(handler, m.lower(), None) is not getattr(web.RequestHandler, m.lower())
    }


def service_routes() -> list[tuple[re.Pattern[str], type]]:
    import os

    from jupyter_sac.service.app import SacService

    os.environ.setdefault("JUPYTERHUB_API_TOKEN", "unused")
    app = SacService().make_app()
    rules = app.default_router.rules[0].target.rules
    return [(rule.matcher.regex, rule.target) for rule in rules]


def check_coverage(
    routes: list[tuple[re.Pattern[str], type]], rows: list[Row], strip: str
) -> list[str]:
    problems = []
    covered: set[tuple[str, str]] = set()
    for row in rows:
        path = "/" + row.path.format(**SAMPLE).split("?")[0]
        path = path.replace("/" + strip, "/", 1) if strip else path
        first = next(((rx, h) for rx, h in routes if rx.fullmatch(path)), None)
        if first is None or not implemented(first[1]):
            problems.append(f"{row.method} {row.path}: no such route")
            continue
        if row.method not in implemented(first[1]):
            problems.append(f"{row.method} {row.path}: the route has no {row.method}")
        covered.add((first[0].pattern, row.method))
    for rx, handler in routes:
        for method in sorted(implemented(handler)):
            if (rx.pattern, method) not in covered:
                problems.append(f"{method} {rx.pattern} ({handler.__name__}): no row in the table")
    return problems


def test_the_table_has_a_row_for_every_service_route_and_no_other() -> None:
    problems = check_coverage(service_routes(), SERVICE_ROWS, "")
    assert not problems, "\n".join(problems)


def test_the_table_has_a_row_for_every_extension_route_and_no_other() -> None:
    routes = [(re.compile(pattern + "$"), handler) for pattern, handler in EXTENSION_ROUTES]
    problems = check_coverage(routes, EXTENSION_ROWS, "user/alice/a1/")
    assert not problems, "\n".join(problems)


# ---- the security review's findings, each as it was reproduced ------------------------


def api(world: World, principal: str) -> httpx.Client:
    return httpx.Client(
        base_url=world.service_origin + A,
        timeout=60,
        headers={"Authorization": world.tokens[principal]},
    )


def test_an_agents_workspace_holds_only_its_own_files(world: World) -> None:
    """Finding 1: the agent file endpoints took public/ and group/<g>/ paths and wrote
    the organisation's public tree and any group's files."""
    owner = api(world, "owner")
    base = f"users/{world.user}/agents/a1/workspace/files/"
    public_before = owner.get("workspace/public").json()["files"]
    group_before = owner.get(f"groups/{world.group}/workspace").json()["files"]
    for path in ("public/shared.txt", "public/new.txt", f"group/{world.group}/shared.txt",
                 "group/someone-elses/x.txt"):  # fmt: skip
        for method in ("PUT", "DELETE", "GET"):
            resp = owner.request(method, base + path, content=b"x" if method == "PUT" else None)
            assert resp.status_code == 400, (method, path, resp.text)
            assert resp.json()["field"] == "path"
    assert owner.get("workspace/public").json()["files"] == public_before
    assert owner.get(f"groups/{world.group}/workspace").json()["files"] == group_before


def test_sac_admin_comes_only_from_the_admin_scope(world: World) -> None:
    """Finding 2: a token counted as SAC admin when its *user* was a JupyterHub admin,
    whatever its scopes: an admin's narrowed token, or the token in an admin's agent."""
    admin_only = ("settings/system", "audit", "organisation-keys", "culler")
    for principal in ("hub_admin", "admin_narrow", "admins_server", "admins_agent"):
        client = api(world, principal)
        for path in admin_only:
            resp = client.get(path)
            assert resp.status_code in (401, 403), (principal, path, resp.status_code)
        # and nobody else's things
        resp = client.get(f"users/{world.user}/agents/a1/history/events")
        assert resp.status_code in (401, 403, 404), (principal, resp.status_code)
        listed = client.get("hitl/requests", params={"all": "1", "status": "all"})
        if listed.status_code == 200:
            assert all(r["user"] != world.user for r in listed.json()["requests"]), principal
    # The administrator's own full token still is one.
    assert api(world, "admin").get("settings/system").status_code == 200


def test_no_token_an_agent_holds_decides_or_changes_its_policy(world: World) -> None:
    """Finding 3: a sibling agent's JupyterHub token decided a request, and an agent's
    own sandbox token rewrote its HITL policy to allow everything."""
    rid = world.values["rid"]
    policy_path = f"users/{world.user}/agents/a1/hitl-policy"
    before = api(world, "owner").get(policy_path).json()
    for principal in ("agent", "server", "sibling_agent", "sibling_server", "foreign_server"):
        client = api(world, principal)
        decided = client.post(f"hitl/requests/{rid}/decision", json={"decision": "allow"})
        assert decided.status_code in (401, 403, 404), (principal, decided.text)
        changed = client.put(policy_path, json={"policy": {"default": "allow"}})
        assert changed.status_code in (401, 403, 404), (principal, changed.text)
        # drive_agents is a person's choice too
        more = client.patch(f"users/{world.user}/agents/a1", json={"drive_agents": True})
        assert more.status_code in (401, 403, 404), (principal, more.text)
    assert api(world, "owner").get(f"hitl/requests/{rid}").json()["status"] == "pending"
    assert api(world, "owner").get(policy_path).json() == before
    # Nor can a sandbox's token start or make the user's servers on the hub any more.
    hub = httpx.Client(base_url=world.url + "hub/api/", timeout=60)
    for principal in ("server", "sibling_server"):
        headers = {"Authorization": world.tokens[principal]}
        made = hub.post(f"users/{world.user}/servers/sneaky", headers=headers)
        assert made.status_code == 403, (principal, made.text)
        dropped = hub.request("DELETE", f"users/{world.user}/servers/a1", headers=headers,
                              json={"remove": True})  # fmt: skip
        assert dropped.status_code == 403, (principal, dropped.text)


def test_admins_get_into_no_agent_and_whoever_is_let_in_is_audited(world: World) -> None:
    """Admins do not get silent access to other users' agents: the operator role has no
    access:servers (nor tokens or shares to get it); a JupyterHub admin flag given by an
    operator does, and each token it opens someone's agent with is in the audit log."""
    scope = f"access:servers!server={world.user}/a1"
    status = world.user_origin + f"{world.values['server']}sac/api/status"
    hub = httpx.Client(base_url=world.url, timeout=60)
    admin = {"Authorization": world.tokens["admin"]}
    assert hub.get(status, headers=admin).status_code == 403
    minted = hub.post("hub/api/users/admin/tokens", headers=admin, json={"scopes": [scope]})
    assert minted.status_code in (400, 403), minted.text
    for_alice = hub.post(f"hub/api/users/{world.user}/tokens", headers=admin, json={})
    assert for_alice.status_code == 403, for_alice.text

    flagged = world.values["hub_admin"]
    made = hub.post(f"hub/api/users/{flagged}/tokens",
                    headers={"Authorization": world.tokens["hub_admin"]},
                    json={"note": "looking in", "scopes": [scope]})  # fmt: skip
    assert made.status_code == 201, made.text
    token = made.json()
    looked = hub.get(status, headers={"Authorization": f"token {token['token']}"})
    assert looked.status_code == 200, looked.text

    def recorded() -> list[dict[str, Any]]:
        resp = hub.get(world.service_origin + A + "audit", headers=admin,
                       params={"action": "server.access", "target_user": world.user})  # fmt: skip
        return [e for e in resp.json()["entries"] if e["actor"] == flagged]

    # Within a look at the holder's moved activity, or the next full look (20 s here).
    entries = poll_until(recorded, 60, "the access audit's entry")
    assert entries[0]["target"] == f"{world.user}/a1#{token['id']}"
    assert entries[0]["after"]["note"] == "looking in"
