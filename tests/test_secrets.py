"""Users' secrets: write-only values kept encrypted by the service, granted to
agents, delivered to their sandboxes at start (a variable, a file), and scrubbed
from the history the sandbox captures. Real stack, real claude CLI, fake model."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import psycopg
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    ChatTurn,
    agent_token,
    browser_client,
    chat_turn,
    model_agent,
    pending_requests,
    run_in_terminal,
    script_model,
    server_url,
    service_url,
    sign_up,
    stack_database_url,
    stored_history,
    xsrf_of,
)

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

VALUE = "ghp_s3cret-Value-" + uuid.uuid4().hex
OTHER_VALUE = "gcp-key-" + uuid.uuid4().hex


def _audit(admin, user: str) -> list[dict]:
    resp = admin.sac("GET", "audit", params={"user": user})
    assert resp.status_code == 200, resp.text
    return resp.json()["entries"]


def test_secrets_are_write_only_validated_and_audited(stack: dict, new_user, admin) -> None:
    user, client = new_user("sec")
    other, stranger = new_user("secx")

    resp = client.sac("PUT", "secrets/GIT_TOKEN", json={"value": VALUE, "description": "GitHub"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "GIT_TOKEN" and resp.json()["agents"] == []
    assert VALUE not in resp.text
    changed = client.sac("PUT", "secrets/GIT_TOKEN", json={"value": VALUE + "-2"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["description"] == ""

    listed = client.sac("GET", "secrets")
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()["secrets"]] == ["GIT_TOKEN"]
    assert VALUE not in listed.text

    # Bad input: a clear 400, nothing stored.
    for name, body in [
        ("1ABC", {"value": VALUE}),
        ("A-B", {"value": VALUE}),
        ("X" * 65, {"value": VALUE}),
        ("SHORT", {"value": "1234567"}),
        ("NUL", {"value": "abcdefgh\u0000ijk"}),
        ("EXTRA", {"value": VALUE, "shown": True}),
        ("NOVALUE", {"description": "x"}),
    ]:
        bad = client.sac("PUT", f"secrets/{name}", json=body)
        assert bad.status_code == 400, (name, bad.text)
        assert bad.json()["error"]
    assert [s["name"] for s in client.sac("GET", "secrets").json()["secrets"]] == ["GIT_TOKEN"]

    # Others see none of it; an administrator sees the names, never a value.
    assert stranger.sac("GET", "secrets").json()["secrets"] == []
    assert stranger.sac("GET", "secrets", params={"user": user}).status_code in (403, 404)
    assert stranger.sac("DELETE", "secrets/GIT_TOKEN", params={"user": user}).status_code in (
        403,
        404,
    )
    assert stranger.sac("DELETE", "secrets/GIT_TOKEN").status_code == 404
    seen = admin.sac("GET", "secrets", params={"user": user})
    assert seen.status_code == 200 and [s["name"] for s in seen.json()["secrets"]] == ["GIT_TOKEN"]
    assert VALUE not in seen.text

    # Granting: only existing secrets, not onto the platform's variables, only by the owner.
    resp = client.sac("POST", "agents", json={"slug": "box", "api_key": "sk-unused-key-1"})
    assert resp.status_code == 201, resp.text
    for grants, code in [
        ([{"name": "NOPE"}], "invalid_grant"),
        ([{"name": "GIT_TOKEN", "env": "PATH"}], "invalid_grant"),
        ([{"name": "GIT_TOKEN", "env": "ANTHROPIC_API_KEY"}], "invalid_grant"),
        ([{"name": "GIT_TOKEN", "env": "https_proxy"}], "invalid_grant"),
        ([{"name": "GIT_TOKEN", "file": "../x"}], "invalid_field"),
        ([{"name": "GIT_TOKEN"}, {"name": "GIT_TOKEN"}], "invalid_grant"),
    ]:
        bad = client.sac("PATCH", f"users/{user}/agents/box", json={"secrets": grants})
        assert bad.status_code == 400, (grants, bad.text)
        assert bad.json()["error"] == code, bad.text
    by_admin = admin.sac(
        "PATCH", f"users/{user}/agents/box", json={"secrets": [{"name": "GIT_TOKEN"}]}
    )
    assert by_admin.status_code == 403, by_admin.text
    grants = [{"name": "GIT_TOKEN", "env": "GITHUB_TOKEN", "file": "github-token"}]
    ok = client.sac("PATCH", f"users/{user}/agents/box", json={"secrets": grants})
    assert ok.status_code == 200, ok.text
    assert ok.json()["secrets"] == grants
    assert client.sac("GET", "secrets").json()["secrets"][0]["agents"] == ["box"]

    # Removing a secret removes its grants.
    assert admin.sac("DELETE", "secrets/GIT_TOKEN", params={"user": user}).status_code == 204
    assert client.sac("DELETE", "secrets/GIT_TOKEN").status_code == 404
    assert client.sac("GET", f"users/{user}/agents/box").json()["secrets"] == []

    entries = _audit(admin, user)
    actions = [e["action"] for e in entries]
    assert actions.count("secret.set") == 2
    assert actions.count("agent.secrets") == 1
    (deleted,) = [e for e in entries if e["action"] == "secret.delete"]
    # The grants it took away are on its entry.
    assert deleted["before"]["agents"] == ["box"] and deleted["actor"] != user
    assert VALUE not in json.dumps(entries)
    assert _audit(admin, other) == []
    client.sac("DELETE", f"users/{user}/agents/box")


def test_a_secret_grant_cannot_be_made_by_the_agent_itself(stack: dict, new_user) -> None:
    user, client = new_user("secag")
    assert client.sac("PUT", "secrets/TOKEN_A", json={"value": VALUE}).status_code == 201
    resp = client.sac("POST", "agents", json={"slug": "one", "api_key": "sk-unused-key-1"})
    assert resp.status_code == 201, resp.text
    client.start(user, "one")
    try:
        token = asyncio.run(agent_token(stack["url"], client, user, "one"))
        agent = httpx.Client(
            base_url=client.service_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert agent.get("api/secrets").status_code == 403
        assert agent.put("api/secrets/TOKEN_B", json={"value": VALUE}).status_code == 403
        grant = agent.patch(f"api/users/{user}/agents/one", json={"secrets": [{"name": "TOKEN_A"}]})
        assert grant.status_code == 403, grant.text
        assert client.sac("GET", f"users/{user}/agents/one").json()["secrets"] == []
    finally:
        client.sac("DELETE", f"users/{user}/agents/one")


@pytest.mark.asyncio
async def test_a_granted_secret_reaches_the_sandbox_and_never_the_history(
    stack: dict, fake: str, new_user
) -> None:
    user, client = new_user("secrun")
    for name, value in (("DEMO_TOKEN", VALUE), ("CLOUD_KEY", OTHER_VALUE)):
        assert client.sac("PUT", f"secrets/{name}", json={"value": value}).status_code == 201
    grants = [{"name": "DEMO_TOKEN"}, {"name": "CLOUD_KEY", "file": "cloud.json"}]
    resp = client.sac(
        "POST", "agents", json={"slug": "run", "secrets": grants, **model_agent(fake)}
    )
    assert resp.status_code == 201, resp.text
    try:
        client.start(user, "run")
        # Everything runs, but a curl asks a human (below).
        policy = {"policy": {"default": "allow", "ask": ["Bash(curl:*)"]}}
        assert client.sac("PUT", f"users/{user}/agents/run/hitl-policy", json=policy).is_success
        out = await run_in_terminal(
            stack["url"], client.token, user, "run",
            'echo "env=$DEMO_TOKEN"; echo "file=$(cat $SAC_SECRETS_DIR/cloud.json)";'
            " stat -c '%a' $SAC_SECRETS_DIR/cloud.json; echo \"cloudenv=${CLOUD_KEY:-none}\"",
        )  # fmt: skip
        lines = out.splitlines()
        assert f"env={VALUE}" in lines and f"file={OTHER_VALUE}" in lines, out
        # A file only its user reads; a secret granted as a file only is no variable.
        assert "400" in lines and "cloudenv=none" in lines, out

        # A tool call that prints both secrets: the sandbox's own transcript has them,
        # the history the service stores has their names instead.
        script_model(
            fake,
            {
                "tool_use": {
                    "name": "Bash",
                    "input": {"command": 'echo "$DEMO_TOKEN"; cat "$SAC_SECRETS_DIR/cloud.json"'},
                }
            },
            "printed",
        )
        base = server_url(stack["url"], user, "run")
        seen = await chat_turn(base, client.token, "print my token")
        results = [e for e in seen if e["type"] == "tool_result"]
        assert results and VALUE in json.dumps(results), seen  # the tool did print it

        def stored() -> list | None:
            events = stored_history(client, user, "run")
            text = json.dumps(events)
            return events if "printed" in text else None

        history = json.dumps(poll_until(stored, 60, "the turn's history stored"))
        assert VALUE not in history and OTHER_VALUE not in history
        assert "[secret DEMO_TOKEN]" in history and "[secret cloud.json]" in history

        # Nor anywhere in the database or the stack's log.
        with psycopg.connect(stack_database_url(stack["data_dir"])) as conn:
            for table in ("conversation_events", "audit_log", "user_secrets", "agents"):
                rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                assert VALUE not in str(rows) and OTHER_VALUE not in str(rows), table
        assert VALUE not in stack["log"].read_text(errors="replace")

        # A tool call that holds a value (a model that read it and uses it): what the
        # approver is shown has the name instead.
        command = f"curl -s -H 'Authorization: token {VALUE}' https://example.org/"
        script_model(fake, {"tool_use": {"name": "Bash", "input": {"command": command}}}, "ok")
        turn = await ChatTurn.start(base, client.token, "use it")
        request = poll_until(
            lambda: (p := pending_requests(client, user)) and p[0], 60, "a pending request"
        )
        assert VALUE not in json.dumps(request)
        assert "Authorization: token [secret DEMO_TOKEN]" in json.dumps(request)
        decided = client.sac(
            "POST", f"hitl/requests/{request['id']}/decision", json={"decision": "deny"}
        )
        assert decided.status_code == 200, decided.text
        await turn.finish()
    finally:
        client.sac("DELETE", f"users/{user}/agents/run")


def test_secrets_and_grants_from_the_pages(stack: dict, admin) -> None:
    """A person keeps a secret on the Secrets page and ticks it on an agent's
    settings page; the pages never show its value, and an administrator's view of
    the agent shows the grant but offers no way to change it."""
    name, password = f"sp{uuid.uuid4().hex[:8]}", "a-long-enough-password-1"
    sign_up(stack["url"], name, password, ADMIN_PASSWORD)
    client = admin.create_user(name)
    resp = client.sac("POST", "agents", json={"slug": "pg", "api_key": "sk-unused-key-0000"})
    assert resp.status_code == 201, resp.text
    browser = browser_client(stack["url"], name, password)
    service = service_url(stack["url"])

    def submit(path: str, form: dict[str, str]) -> httpx.Response:
        token = xsrf_of(browser.get(service + path).text)
        return browser.post(service + path, data={**form, "_xsrf": token}, follow_redirects=False)

    empty = browser.get(service + "secrets")
    assert empty.status_code == 200 and 'id="no-secrets"' in empty.text
    saved = submit(
        "secrets", {"action": "set", "name": "PAGE_TOKEN", "value": VALUE, "description": "CI"}
    )
    assert saved.status_code == 303, saved.text
    listed = browser.get(service + "secrets")
    assert "PAGE_TOKEN" in listed.text and VALUE not in listed.text
    refused = submit("secrets", {"action": "set", "name": "1BAD", "value": VALUE})
    assert refused.status_code == 400 and VALUE not in refused.text

    settings = browser.get(service + f"agents/{name}/pg")
    assert 'id="agent-secrets"' in settings.text and 'value="PAGE_TOKEN"' in settings.text
    ticked = submit(f"agents/{name}/pg", {"action": "secrets", "grant": "PAGE_TOKEN"})
    assert ticked.status_code == 303, ticked.text
    agent = client.sac("GET", f"users/{name}/agents/pg").json()
    assert agent["secrets"] == [{"name": "PAGE_TOKEN", "env": "PAGE_TOKEN"}]
    seen_by_admin = admin.client.get(service + f"agents/{name}/pg")
    assert seen_by_admin.status_code == 200
    assert (
        'id="agent-grants"' in seen_by_admin.text and 'id="agent-secrets"' not in seen_by_admin.text
    )

    # Untick: the agent gets none; remove the secret from the page.
    assert submit(f"agents/{name}/pg", {"action": "secrets"}).status_code == 303
    assert client.sac("GET", f"users/{name}/agents/pg").json()["secrets"] == []
    assert submit("secrets", {"action": "delete", "name": "PAGE_TOKEN"}).status_code == 303
    assert client.sac("GET", "secrets").json()["secrets"] == []
    client.sac("DELETE", f"users/{name}/agents/pg")
