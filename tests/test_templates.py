"""Agent templates (docs/templates.md): the API (versions, forks, who may write
which), agents created from a template and explicitly updated to its latest
version, and, for every shipped preset, a chat turn of the real claude CLI against
the fake model showing that the template's system prompt, tool limits, sub-agents
and MCP server reach what the model is sent."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    TerminalClient,
    allow_all,
    browser_client,
    chat_turn,
    model_agent,
    script_model,
    server_url,
    service_url,
    sign_up,
    stored_history,
    xsrf_of,
)

from jupyter_sac.client.errors import SacError
from jupyter_sac.service.operations.templates import shipped_presets
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

PRESETS = shipped_presets()
DEFINITION = {
    "display_name": "Mine",
    "description": "A personal template.",
    "system_prompt": "Answer in haiku.",
    "disallowed_tools": ["WebSearch"],
}


def _audit_actions(admin: Any, target: str) -> list[str]:
    entries = admin.sac("GET", "audit", params={"target": target}).json()["entries"]
    return [e["action"] for e in entries if e["target"] == target]


def test_template_api_versions_forks_and_who_may_write(stack: dict, new_user, admin) -> None:
    user, client = new_user("tpl")
    _other, stranger = new_user("tplx")

    # The shipped presets are organisation templates everyone sees; nobody edits them.
    listed = client.sac("GET", "templates").json()["templates"]
    presets = {t["name"]: t for t in listed if t["builtin"]}
    assert set(presets) == set(PRESETS) >= {
        "code-assistant", "research-agent", "data-analysis", "fullstack-team",
        "notebook-analyst", "data-pipeline-reviewer",
    }  # fmt: skip
    assert all(t["scope"] == "organisation" and not t["editable"] for t in presets.values())
    code = presets["code-assistant"]
    assert code["definition"] == PRESETS["code-assistant"]
    # Not even an administrator, whom the API tells so before trying.
    assert admin.sac("GET", f"templates/{code['id']}").json()["editable"] is False
    refused = admin.sac("PATCH", f"templates/{code['id']}", json={"definition": DEFINITION})
    assert refused.status_code == 409 and refused.json()["error"] == "template_builtin"

    # A personal template: created at version 1, each change a new version.
    made = client.sac("POST", "templates", json={"name": "haiku", "definition": DEFINITION})
    assert made.status_code == 201, made.text
    mine = made.json()
    assert (mine["scope"], mine["owner"], mine["version"], mine["editable"]) == (
        "personal", user, 1, True,
    )  # fmt: skip
    assert (
        client.sac("POST", "templates", json={"name": "haiku", "definition": DEFINITION}).json()[
            "error"
        ]
        == "template_exists"
    )
    changed = client.sac(
        "PATCH",
        f"templates/{mine['id']}",
        json={"definition": {**DEFINITION, "system_prompt": "Answer in limericks."}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    renamed = client.sac("PATCH", f"templates/{mine['id']}", json={"name": "limerick"})
    assert renamed.json()["version"] == 3 and renamed.json()["name"] == "limerick"
    assert renamed.json()["definition"]["system_prompt"] == "Answer in limericks."

    # Bad definitions: a clear 400 naming the field; nothing stored.
    for body in [
        {"name": "Bad Name", "definition": DEFINITION},
        {"name": "x", "definition": {"description": "no display name"}},
        {"name": "x", "definition": {**DEFINITION, "surprise": 1}},
        {"name": "x", "definition": {**DEFINITION, "permission_mode": "bypassPermissions"}},
        {"name": "x", "definition": {**DEFINITION, "allowed_tools": ["Bash(unclosed"]}},
        {"name": "x", "definition": {**DEFINITION, "workspace_files": {"../escape": "x"}}},
        {"name": "x", "definition": {**DEFINITION, "provider": "nope"}},
        {
            "name": "x",
            "definition": {
                **DEFINITION,
                "mcp_servers": {
                    "s": {"type": "stdio", "command": "x", "env": {"K": {"secret": "PATH"}}}
                },
            },
        },
        {"name": "x", "definition": {**DEFINITION, "mcp_servers": {"s": {"type": "ftp"}}}},
        {"name": "x", "definition": {**DEFINITION, "skills": ["no-such-official-skill"]}},
    ]:
        bad = client.sac("POST", "templates", json=body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["error"] and bad.json()["message"]
    names = {t["name"] for t in client.sac("GET", "templates").json()["templates"]}
    assert "x" not in names and "limerick" in names

    # Others never see a personal template (404, as for none), nor change it.
    assert stranger.sac("GET", f"templates/{mine['id']}").status_code == 404
    assert (
        stranger.sac("PATCH", f"templates/{mine['id']}", json={"name": "mine"}).status_code == 404
    )
    assert stranger.sac("DELETE", f"templates/{mine['id']}").status_code == 404
    assert "limerick" not in {
        t["name"] for t in stranger.sac("GET", "templates").json()["templates"]
    }
    assert client.sac("GET", "templates/nope").status_code == 404

    # Organisation templates: administrators (and template curators) only; audited.
    org = {"name": f"org-{uuid.uuid4().hex[:6]}", "scope": "organisation", "definition": DEFINITION}
    assert client.sac("POST", "templates", json=org).status_code == 403
    made = admin.sac("POST", "templates", json=org)
    assert made.status_code == 201, made.text
    org_id = made.json()["id"]
    assert client.sac("GET", f"templates/{org_id}").json()["editable"] is False
    assert client.sac("PATCH", f"templates/{org_id}", json={"name": "mine"}).status_code == 403
    assert (
        admin.sac("PATCH", f"templates/{org_id}", json={"definition": DEFINITION}).json()["version"]
        == 2
    )
    # A fork is a personal copy at version 1.
    fork = client.sac("POST", f"templates/{org_id}/fork", json={"name": "my-copy"})
    assert fork.status_code == 201, fork.text
    assert (fork.json()["scope"], fork.json()["version"]) == ("personal", 1)
    assert fork.json()["definition"] == DEFINITION
    assert admin.sac("DELETE", f"templates/{org_id}").status_code == 204
    assert _audit_actions(admin, org["name"]) == [
        "template.delete", "template.update", "template.create",
    ]  # fmt: skip
    assert client.sac("DELETE", f"templates/{fork.json()['id']}").status_code == 204
    assert client.sac("GET", f"templates/{fork.json()['id']}").status_code == 404


def test_agent_from_a_template_records_its_version_and_updates_explicitly(
    stack: dict, new_user, admin
) -> None:
    user, client = new_user("tpla")
    mine = client.sac(
        "POST",
        "templates",
        json={"name": "helper", "definition": {**DEFINITION, "model": "claude-haiku-4-5"}},
    ).json()

    # By name; the body's own fields win over the template's.
    resp = client.sac("POST", "agents", json={"slug": "h1", "template": "helper"})
    assert resp.status_code == 201, resp.text
    agent = resp.json()
    assert agent["display_name"] == "Mine" and agent["model"] == "claude-haiku-4-5"
    assert agent["template"] == {"id": mine["id"], "name": "helper", "version": 1,
                                 "latest_version": 1}  # fmt: skip
    resp = client.sac(
        "POST", "agents", json={"slug": "h2", "template": mine["id"], "display_name": "Own"}
    )
    assert resp.status_code == 201 and resp.json()["display_name"] == "Own"
    assert client.sac("POST", "agents", json={"slug": "h3", "template": "nope"}).status_code == 404
    # An id written as 7.0 is JSON Schema's integer too (it was a 500), known or not.
    as_float = client.sac("POST", "agents", json={"slug": "h5", "template": float(mine["id"])})
    assert as_float.status_code == 201 and as_float.json()["template"]["id"] == mine["id"]
    client.sac("DELETE", f"users/{user}/agents/h5")
    unknown = client.sac("POST", "agents", json={"slug": "h6", "template": 987654321.0})
    assert unknown.status_code == 404 and unknown.json()["field"] == "template", unknown.text
    # An administrator creating the user's agent names the user's own template.
    by_admin = admin.sac("POST", f"users/{user}/agents", json={"slug": "h4", "template": "helper"})
    assert by_admin.status_code == 201, by_admin.text
    assert by_admin.json()["template"]["id"] == mine["id"]
    client.sac("DELETE", f"users/{user}/agents/h4")

    # A template's new version changes no agent until asked.
    client.sac(
        "PATCH",
        f"templates/{mine['id']}",
        json={"definition": {**DEFINITION, "model": "claude-sonnet-4-5"}},
    )
    agent = client.sac("GET", f"users/{user}/agents/h1").json()
    assert agent["template"]["version"] == 1 and agent["template"]["latest_version"] == 2
    assert agent["model"] == "claude-haiku-4-5"
    updated = client.sac("POST", f"users/{user}/agents/h1/template-update")
    assert updated.status_code == 200, updated.text
    assert updated.json()["template"]["version"] == 2
    assert updated.json()["model"] == "claude-sonnet-4-5"

    # A template's HITL policy and settings: the agent's from its creation.
    governed = {
        **DEFINITION,
        "hitl_policy": {"default": "deny", "allow": ["Read"]},
        "overrides": {"max_processes": 64},
    }
    made = client.sac("POST", "templates", json={"name": "governed", "definition": governed})
    assert made.status_code == 201, made.text
    resp = client.sac("POST", "agents", json={"slug": "g1", "template": "governed"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["overrides"] == {"max_processes": 64}
    policy = client.sac("GET", f"users/{user}/agents/g1/hitl-policy").json()["policy"]
    assert policy["default"] == "deny" and policy["allow"] == ["Read"]
    bad = client.sac(
        "POST",
        "templates",
        json={"name": "bad-policy", "definition": {**DEFINITION, "hitl_policy": {"allow": ["("]}}},
    )
    assert bad.status_code == 400, bad.text

    # A template naming a secret: the agent is granted it as a variable (and it must exist).
    refs = {
        **DEFINITION,
        "mcp_servers": {
            "gh": {"type": "stdio", "command": "true", "env": {"TOKEN": {"secret": "GH_TOKEN"}}}
        },
    }
    client.sac("POST", "templates", json={"name": "with-secret", "definition": refs})
    missing = client.sac("POST", "agents", json={"slug": "s1", "template": "with-secret"})
    assert missing.status_code == 400 and "GH_TOKEN" in missing.json()["message"]
    client.sac("PUT", "secrets/GH_TOKEN", json={"value": "ghp_templated-value-1"})
    granted = client.sac("POST", "agents", json={"slug": "s1", "template": "with-secret"})
    assert granted.status_code == 201, granted.text
    assert granted.json()["secrets"] == [{"name": "GH_TOKEN", "env": "GH_TOKEN"}]

    # Deleting the template leaves its agents; they cannot be updated any more.
    assert client.sac("DELETE", f"templates/{mine['id']}").status_code == 204
    gone = client.sac("GET", f"users/{user}/agents/h1").json()["template"]
    assert gone == {"id": mine["id"], "name": None, "version": 2, "latest_version": None}
    refused = client.sac("POST", f"users/{user}/agents/h1/template-update")
    assert refused.status_code == 409 and refused.json()["error"] == "template_gone"
    none = client.sac("POST", "agents", json={"slug": "plain"})
    assert client.sac("POST", f"users/{user}/agents/plain/template-update").json()["error"] == (
        "no_template"
    )
    assert none.json()["template"] is None
    for slug in ("h1", "h2", "g1", "s1", "plain"):
        client.sac("DELETE", f"users/{user}/agents/{slug}")


def test_the_python_client_lists_templates_and_creates_from_one(stack: dict, new_user) -> None:
    from jupyter_sac.client import Client

    user, hub = new_user("tplp")
    client = Client(url=stack["url"], token=hub.token)
    try:
        names = {t["name"] for t in client.templates()}
        assert set(PRESETS) <= names
        agent = client.create_agent("analyst", template="data-analysis")
        made = hub.sac("GET", f"users/{user}/agents/analyst").json()
        assert made["template"]["name"] == "data-analysis"
        assert made["display_name"] == "Data analysis"
        agent.delete()

        # Templates of one's own: fork a preset, change it, make an agent from it.
        preset = next(t for t in client.templates() if t["name"] == "code-assistant")
        assert client.template(preset["id"])["editable"] is False
        mine = client.fork_template(preset["id"], name="my-coder")
        assert (mine["scope"], mine["version"], mine["editable"]) == ("personal", 1, True)
        changed = client.update_template(
            mine["id"], definition={**mine["definition"], "system_prompt": "Answer in haiku."}
        )
        assert changed["version"] == 2
        assert client.template(mine["id"])["definition"]["system_prompt"] == "Answer in haiku."
        made = client.create_template("notes", {"display_name": "Notes", "max_turns": 3})
        assert made["version"] == 1 and made["definition"]["max_turns"] == 3
        poet = client.create_agent("poet", template="my-coder")
        assert hub.sac("GET", f"users/{user}/agents/poet").json()["template"]["version"] == 2
        poet.delete()
        with pytest.raises(SacError) as refused:
            client.update_template(preset["id"], definition=DEFINITION)
        assert refused.value.status == 409
        client.delete_template(mine["id"])
        assert "my-coder" not in {t["name"] for t in client.templates()}
    finally:
        client.close()


def test_the_home_page_creates_an_agent_from_a_template(stack: dict, fake: str, admin) -> None:
    name, password = f"tplh{uuid.uuid4().hex[:6]}", "template-page-pw-1"
    sign_up(stack["url"], name, password, ADMIN_PASSWORD)
    browser = browser_client(stack["url"], name, password)
    service = service_url(stack["url"])
    home = browser.get(service)
    assert home.status_code == 200
    code = next(
        t
        for t in admin.sac("GET", "templates").json()["templates"]
        if t["name"] == "code-assistant"
    )
    # Every template the person may use is offered.
    assert (
        f'<option value="{code["id"]}"' in home.text
        and "Code assistant (code-assistant)" in home.text
    )
    resp = browser.post(
        service,
        data={"slug": "coder", "template": str(code["id"]), **model_agent(fake),
              "_xsrf": xsrf_of(home.text)},
        follow_redirects=False,
    )  # fmt: skip
    assert resp.status_code == 303, re.sub(r"(?s).*<main", "", resp.text)[:1500]
    agent = admin.sac("GET", f"users/{name}/agents/coder").json()
    assert (
        agent["template"]["name"] == "code-assistant" and agent["display_name"] == "Code assistant"
    )
    # An unknown one re-shows the form with the error.
    again = browser.post(
        service, data={"slug": "other", "template": "nope", "_xsrf": xsrf_of(home.text)}
    )
    assert again.status_code == 404 and "no template" in again.text
    admin.sac("DELETE", f"users/{name}/agents/coder")


def _tool_names(rules: list[str]) -> set[str]:
    """The plain tool names of permission rules (``Bash(git:*)`` limits Bash, it
    does not remove or add it)."""
    return {r for r in rules if "(" not in r}


def _offered(body: dict[str, Any]) -> set[str]:
    """The tools a model request offers: those in ``tools``, and the deferred ones
    claude lists in a reminder for ToolSearch to load (MCP tools among them)."""
    names = {t["name"] for t in body["tools"]}
    for message in body["messages"]:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            text = block.get("text", "") if isinstance(block, dict) else ""
            if "deferred tools are now available" in text:
                names |= {line.strip() for line in text.splitlines()[1:] if line.strip()}
    return names


async def _chat_turn(base: str, token: str) -> None:
    seen = await chat_turn(base, token, "hello", session_id=None)
    assert not [e for e in seen if e["type"] == "error"], seen


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(PRESETS))
async def test_each_preset_reaches_claude(stack: dict, fake: str, new_user, name: str) -> None:
    definition = PRESETS[name]
    user, client = new_user("tplc")
    slug = "p1"
    resp = client.sac("POST", "agents", json={"slug": slug, "template": name, **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    assert resp.json()["template"]["name"] == name
    try:
        client.start(user, slug)
        allow_all(client, user, slug)
        httpx.post(fake + "/_fake/script", json={"replies": ["Ready."]})
        base = server_url(stack["url"], user, slug)
        await _chat_turn(base, client.token)

        bodies = [
            b
            for b in httpx.get(fake + "/_fake/requests").json()["requests"]
            if b["body"].get("tools")
        ]
        assert bodies, "claude sent no agent-loop request"
        body = bodies[-1]["body"]
        system = json.dumps(body["system"])
        # The appended system prompt (as JSON text, like the request's).
        assert json.dumps(definition["system_prompt"])[1:80] in system
        offered = _offered(body)
        for denied in _tool_names(definition.get("disallowed_tools", [])):
            assert denied not in offered, (denied, sorted(offered))
        for allowed in _tool_names(definition.get("allowed_tools", [])):
            assert allowed in offered, (allowed, sorted(offered))
        # Each sub-agent is offered to the model among the agent tool's agent types.
        context = json.dumps(body["messages"]) + json.dumps(body["tools"])
        for sub, spec in definition.get("subagents", {}).items():
            assert json.dumps(f"- {sub}: {spec['description']}")[1:-1] in context, sub
        # The MCP server was started and its tools are the model's.
        for server in definition.get("mcp_servers", {}):
            assert any(n.startswith(f"mcp__{server}__") for n in offered), sorted(offered)
        # Its official skills are installed (pinned) and synced to where claude finds them.
        installed = client.sac("GET", f"users/{user}/agents/{slug}/skills").json()["skills"]
        assert {s["command"] for s in installed} == set(definition.get("skills", []))
        for command in definition.get("skills", []):
            assert command in context, command
        # The project CLAUDE.md is in the workspace, where claude reads it.
        if definition.get("claude_md"):
            api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
            content = api.get(base + "api/contents/CLAUDE.md")
            assert content.status_code == 200, content.text
            assert content.json()["content"] == definition["claude_md"]
            assert definition["claude_md"].splitlines()[0] in json.dumps(body["messages"])
    finally:
        client.sac("DELETE", f"users/{user}/agents/{slug}")


@pytest.mark.asyncio
async def test_the_claude_terminal_runs_with_the_template(stack: dict, fake: str, new_user) -> None:
    """The terminal's claude gets the same template as chat, and its permission mode."""
    user, client = new_user("tplt")
    definition = {
        "display_name": "Planner",
        "system_prompt": "Terminal template prompt: plan before acting.",
        "disallowed_tools": ["WebSearch", "WebFetch"],
        "permission_mode": "plan",
    }
    made = client.sac("POST", "templates", json={"name": "planner", "definition": definition})
    assert made.status_code == 201, made.text
    resp = client.sac(
        "POST", "agents", json={"slug": "t1", "template": "planner", **model_agent(fake)}
    )
    assert resp.status_code == 201, resp.text
    try:
        client.start(user, "t1")
        allow_all(client, user, "t1")
        httpx.post(fake + "/_fake/script", json={"replies": ["Planned it."]})
        base = server_url(stack["url"], user, "t1")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        assert api.post(base + "sac/api/terminal").status_code == 200
        term = await TerminalClient.connect(base, client.token)
        # The input box's footer says the template's mode (not the shortcuts hint).
        await term.wait_for(lambda t: "plan mode on" in t.text(), 60, "plan mode's input box")
        term.type("make a plan")
        await term.wait_for(lambda t: "make a plan" in t.text(), 20, "the typed prompt")
        term.type("\r")
        await term.wait_for(lambda t: "Planned it." in t.text(), 90, "the answer")
        term.close()
        bodies = [
            r["body"]
            for r in httpx.get(fake + "/_fake/requests").json()["requests"]
            if r["body"].get("tools")
        ]
        body = bodies[-1]
        assert definition["system_prompt"] in json.dumps(body["system"])
        offered = _offered(body)
        assert "WebSearch" not in offered and "WebFetch" not in offered
        assert "Read" in offered
    finally:
        client.sac("DELETE", f"users/{user}/agents/t1")


# A stdio MCP server in a few lines: one tool that says which token it was started with.
PROBE_SERVER = r"""
import json, os, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, result = msg.get("method"), None
    if method == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "probe", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "token", "description": "The token this server was given.",
                             "inputSchema": {"type": "object", "properties": {}}}]}
    elif method == "tools/call":
        text = "token=" + os.environ.get("PROBE_TOKEN", "none")
        result = {"content": [{"type": "text", "text": text}]}
    reply = {"result": result} if result is not None else {
        "error": {"code": -32601, "message": "unknown method"}}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], **reply}), flush=True)
"""


@pytest.mark.asyncio
async def test_a_secret_named_by_an_mcp_server_reaches_it_through_claude(
    stack: dict, fake: str, new_user
) -> None:
    """A template's MCP server names one of the owner's secrets: claude (the real
    CLI) expands the ``${NAME}`` the extension wrote into its --mcp-config from the
    agent's environment, so the server gets the value; the history keeps the name."""
    user, client = new_user("tplm")
    value = "probe-" + uuid.uuid4().hex
    assert client.sac("PUT", "secrets/PROBE_SECRET", json={"value": value}).status_code == 201
    definition = {
        **DEFINITION,
        "mcp_servers": {
            "probe": {
                "type": "stdio",
                "command": "python3",
                "args": ["-c", PROBE_SERVER],
                "env": {"PROBE_TOKEN": {"secret": "PROBE_SECRET"}},
            }
        },
        "hitl_policy": {"default": "allow"},
    }
    made = client.sac("POST", "templates", json={"name": "probe", "definition": definition})
    assert made.status_code == 201, made.text
    resp = client.sac(
        "POST", "agents", json={"slug": "m1", "template": "probe", **model_agent(fake)}
    )
    assert resp.status_code == 201, resp.text
    try:
        client.start(user, "m1")
        script_model(fake, {"tool_use": {"name": "mcp__probe__token", "input": {}}}, "probed")
        seen = await chat_turn(server_url(stack["url"], user, "m1"), client.token, "probe it")
        results = [e for e in seen if e["type"] == "tool_result"]
        assert results and f"token={value}" in json.dumps(results), seen

        def stored() -> list | None:
            events = stored_history(client, user, "m1")
            return events if "probed" in json.dumps(events) else None

        history = json.dumps(poll_until(stored, 60, "the turn's history stored"))
        assert value not in history and "token=[secret PROBE_SECRET]" in history
    finally:
        client.sac("DELETE", f"users/{user}/agents/m1")
