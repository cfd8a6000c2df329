"""The person's pages on the service (approvals, an agent's settings, a skill), which
the JupyterLab sidebar and the notebook widgets hand over to: only a person acting
as themselves may use them, every token an agent holds gets 403, other users' things
404, forms need the page's XSRF token, and changes go through the API's operations
(validation, audit log). A browser walk is at the end."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    HubApi,
    browser_client,
    greeting_skill,
    log_in,
    run_in_terminal,
    sign_up,
    xsrf_of,
)

from jupyter_sac.rules.urls import default_service_url
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

SLUG = "desk"
NO_FRAMING = "frame-ancestors 'none'"


@pytest.fixture(scope="module")
def person(stack: dict) -> Iterator[dict]:
    """A person who signed up (with a password, for the browser), a member of a group,
    with a running agent that may drive their other agents (so its sandbox's hub token
    reaches the service, as a driver)."""
    admin: HubApi = stack["admin"]
    name, password = f"pp{uuid.uuid4().hex[:8]}", "a-long-enough-password-1"
    group = f"team{uuid.uuid4().hex[:6]}"
    sign_up(stack["url"], name, password, ADMIN_PASSWORD)
    client = admin.create_user(name)  # the hub's user (before its first login) and a token
    assert admin.hub("POST", f"groups/{group}").status_code == 201
    assert admin.hub("POST", f"groups/{group}/users", json={"users": [name]}).status_code == 200
    resp = client.sac("POST", "agents", json={"slug": SLUG, "api_key": "sk-unused-key-0000",
                                              "drive_agents": True})  # fmt: skip
    assert resp.status_code == 201, resp.text
    try:
        client.start(name, SLUG)
        browser = browser_client(stack["url"], name, password)
        yield {"name": name, "password": password, "client": client, "browser": browser,
               "group": group}  # fmt: skip
        browser.close()
    finally:
        client.sac("DELETE", f"users/{name}/agents/{SLUG}")
        admin.hub("DELETE", f"groups/{group}")


def sandbox_tokens(stack: dict, person: dict) -> tuple[str, str]:
    """The agent's own token for the service and its server's hub token, read inside
    the sandbox (a restart replaces both, so each test reads them afresh)."""
    out = asyncio.run(
        run_in_terminal(stack["url"], person["client"].token, person["name"], SLUG,
                        "echo $SAC_AGENT_TOKEN; echo $JUPYTERHUB_API_TOKEN")
    )  # fmt: skip
    agent_token, hub_token = out.split()
    return agent_token, hub_token


def sac(client: httpx.Client | HubApi, path: str = "") -> str:
    """A page of the service, on its own host beside the hub the client talks to."""
    base = client.url if isinstance(client, HubApi) else str(client.base_url)
    return default_service_url(base) + path


def sandbox_api(stack: dict, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack["service_url"],
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def file_request(sandbox: httpx.Client, **body: object) -> str:
    resp = sandbox.post("api/hitl/requests", json={"kind": "tool", "tool": "Bash", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def page(client: httpx.Client | HubApi, path: str) -> httpx.Response:
    http = client.client if isinstance(client, HubApi) else client
    return http.get(sac(http, path))


def submit(
    browser: httpx.Client, path: str, form: dict[str, str], from_page: str | None = None
) -> httpx.Response:
    """Post a page's form as a browser does: with the XSRF token of the page (or of
    ``from_page``, a page opened earlier in the same session)."""
    token = xsrf_of(page(browser, path if from_page is None else from_page).text)
    return browser.post(sac(browser, path), data={**form, "_xsrf": token}, follow_redirects=False)


def error_of(text: str) -> str:
    found = re.search(r'id="error">([^<]*)<', text)
    return html.unescape(found.group(1)) if found else ""


def audit(admin: HubApi, user: str) -> list[dict]:
    return admin.sac("GET", "audit", params={"user": user, "limit": 50}).json()["entries"]


def test_a_person_decides_a_request_on_its_page_and_the_sandbox_sees_it(
    stack: dict, person: dict, new_user
) -> None:
    name, browser, client = person["name"], person["browser"], person["client"]
    agent_token, _ = sandbox_tokens(stack, person)
    sandbox = sandbox_api(stack, agent_token)
    command = f"make deploy <b>{uuid.uuid4().hex[:6]}</b>"
    rid = file_request(sandbox, input={"command": command}, question="Deploy now?")
    answered: dict = {}
    waiter = threading.Thread(
        target=lambda: answered.update(
            sandbox.get(f"api/hitl/requests/{rid}/wait?timeout=30").json()
        )
    )
    waiter.start()

    home = page(browser, "")
    assert home.status_code == 200 and 'href="/services/sac/approvals"' in home.text
    # The New agent form's redirects end on the agent's own host (the hub's spawn
    # page sends a ready agent straight there): CSP's form-action must allow it.
    policy = home.headers["content-security-policy"]
    form_action = next(d for d in policy.split(";") if d.strip().startswith("form-action"))
    assert re.search(r"http://\*\.localhost:\d+", form_action), form_action
    assert re.search(r"<strong>\d+</strong> approvals? waiting", home.text)
    listed = page(browser, "approvals")
    assert listed.status_code == 200 and NO_FRAMING in listed.headers["content-security-policy"]
    assert f'id="request-{rid}"' in listed.text
    one = page(browser, f"approvals/{rid}")
    assert one.status_code == 200 and NO_FRAMING in one.headers["content-security-policy"]
    # What is asked, escaped: the input is pretty-printed JSON, never markup.
    assert "Deploy now?" in one.text and "&lt;b&gt;" in one.text and "<b>" not in one.text
    assert f"{name}/{SLUG}" in one.text and "times out" in one.text

    # Another user: as if it did not exist.
    _, stranger = new_user("stranger")
    assert page(stranger, f"approvals/{rid}").status_code == 404
    assert (
        stranger.client.post(
            sac(browser, f"approvals/{rid}"), data={"decision": "allow"}
        ).status_code
        == 404
    )
    assert f"request-{rid}" not in page(stranger, "approvals").text
    # A form posted without the page's XSRF token (another site's form): refused.
    forged = browser.post(sac(browser, f"approvals/{rid}"), data={"decision": "allow"},
                          follow_redirects=False)  # fmt: skip
    assert forged.status_code == 403, forged.text[:300]
    assert client.sac("GET", f"hitl/requests/{rid}").json()["status"] == "pending"

    decided = submit(browser, f"approvals/{rid}", {"decision": "allow", "reason": "checked"})
    assert decided.status_code == 303, decided.text[:300]
    assert decided.headers["location"].endswith(f"approvals/{rid}?done=hitl-allow")
    waiter.join(30)
    assert answered["status"] == "approved" and answered["decided_by"] == name
    assert answered["reason"] == "checked"
    shown = page(browser, f"approvals/{rid}?done=hitl-allow").text
    assert "Allowed. You can close this window." in shown
    assert f"Decided: allowed by {name} at" in shown and 'name="decision"' not in shown

    # Decided already: the page shows what became of it, not an error page.
    # (posted from a window opened before the decision)
    again = submit(browser, f"approvals/{rid}", {"decision": "deny"}, from_page="")
    assert again.status_code == 409 and "already approved" in error_of(again.text)
    assert f"Decided: allowed by {name}" in again.text and 'id="message"' not in again.text
    assert f'id="decided-row-{rid}"' in page(browser, "approvals").text

    # A terminal prompt: its options are offered, and the one chosen is what is typed.
    options = [{"key": "1", "label": "Yes"}, {"key": "2", "label": "No, and tell Claude"}]
    tid = file_request(sandbox, kind="terminal", tool="claude", options=options,
                       question="Do you want to proceed?",
                       input={"screen": "rm <b>x</b>\n❯ 1. Yes\n  2. No"})  # fmt: skip
    asked = page(browser, f"approvals/{tid}").text
    assert "2. No, and tell Claude" in asked
    # The screen as a person saw it: its lines, escaped, not a JSON string.
    assert "rm &lt;b&gt;x&lt;/b&gt;\n❯ 1. Yes\n  2. No</pre>" in asked
    chose = submit(browser, f"approvals/{tid}", {"decision": "deny", "option": "2"})
    assert chose.status_code == 303 and chose.headers["location"].endswith("done=hitl-deny")
    got = sandbox.get(f"api/hitl/requests/{tid}/wait?timeout=0").json()
    assert got["status"] == "denied" and got["option"] == "2"
    back = chose.headers["location"].split("services/sac/", 1)[1]
    assert "Denied. You can close this window." in page(browser, back).text

    # A prompt that takes text: a field for it, and the text is the answer.
    xid = file_request(sandbox, kind="terminal", tool="claude", text_max=40,
                       options=[{"key": "\r", "label": "Press Enter"}],
                       question="Enter a name:", input={"screen": "…"})  # fmt: skip
    asked = page(browser, f"approvals/{xid}").text
    assert 'name="text"' in asked and 'maxlength="40"' in asked
    bad = submit(browser, f"approvals/{xid}", {"decision": "allow", "text": "a\x1b[2J"})
    assert bad.status_code == 400 and "control character" in error_of(bad.text)
    typed = submit(browser, f"approvals/{xid}", {"decision": "allow", "text": "Ada <Lovelace>"})
    assert typed.status_code == 303, typed.text[:300]
    got = sandbox.get(f"api/hitl/requests/{xid}/wait?timeout=0").json()
    assert got["status"] == "approved" and got["text"] == "Ada <Lovelace>"
    shown = page(browser, f"approvals/{xid}").text
    assert "answered with the text “Ada &lt;Lovelace&gt;”" in shown


def test_every_token_an_agent_holds_gets_403_on_every_page_and_changes_nothing(
    stack: dict, person: dict
) -> None:
    name, client = person["name"], person["client"]
    agent_token, hub_token = sandbox_tokens(stack, person)
    rid = file_request(sandbox_api(stack, agent_token), input={"command": "rm -rf /tmp/x"})
    skill = client.sac("POST", "skills", json=greeting_skill(f"mine-{uuid.uuid4().hex[:6]}"))
    assert skill.status_code == 201, skill.text
    sid = skill.json()["id"]
    agent_before = client.sac("GET", f"users/{name}/agents/{SLUG}").json()
    policy_before = client.sac("GET", f"users/{name}/agents/{SLUG}/hitl-policy").json()
    template = client.sac(
        "POST", "templates", json={"name": f"t{uuid.uuid4().hex[:6]}",
                                   "definition": {"display_name": "Mine"}}
    )  # fmt: skip
    assert template.status_code == 201, template.text
    tid = template.json()["id"]
    agent_page = f"agents/{name}/{SLUG}"
    gets = ["", "approvals", f"approvals/{rid}", agent_page, f"skills/{sid}", "templates",
            "templates/new", f"templates/{tid}"]  # fmt: skip
    posts = [
        (f"approvals/{rid}", {"decision": "allow"}),
        (agent_page, {"action": "save", "model": "stolen-model", "api_key": "sk-stolen-key-1"}),
        (agent_page, {"action": "policy", "policy": '{"default": "allow"}'}),
        (agent_page, {"action": "restart"}),
        (f"skills/{sid}", {"action": "share", "visibility": "public"}),
        (f"skills/{sid}", {"action": "delete", "confirm": "1"}),
        ("", {"slug": "spawned"}),
        (f"templates/{tid}", {"action": "save", "display_name": "Stolen"}),
        (f"templates/{tid}", {"action": "delete"}),
        ("templates/new", {"name": "stolen", "display_name": "Stolen"}),
    ]
    # The sandbox's agent token, and its server's hub token (a driver: drive_agents).
    for token in (agent_token, hub_token):
        http = sandbox_api(stack, token)
        for path in gets:
            resp = http.get(path)
            assert resp.status_code == 403, (path, resp.status_code, resp.text[:200])
            assert "a person does this" in html.unescape(resp.text), path
            assert NO_FRAMING in resp.headers["content-security-policy"]
        for path, form in posts:
            resp = http.post(path, data=form)
            assert resp.status_code == 403, (path, form, resp.status_code)
    assert client.sac("GET", f"hitl/requests/{rid}").json()["status"] == "pending"
    agent_after = client.sac("GET", f"users/{name}/agents/{SLUG}").json()
    assert agent_after["model"] == agent_before["model"]
    assert agent_after["updated_at"] == agent_before["updated_at"]
    assert agent_after["server"]["started"] == agent_before["server"]["started"]
    assert client.sac("GET", f"users/{name}/agents/{SLUG}/hitl-policy").json() == policy_before
    assert client.sac("GET", f"skills/{sid}").json()["visibility"] == "private"
    assert client.sac("GET", f"users/{name}/agents/spawned").status_code == 404
    kept = client.sac("GET", f"templates/{tid}").json()
    assert (kept["version"], kept["definition"]) == (1, {"display_name": "Mine"})
    assert "stolen" not in {t["name"] for t in client.sac("GET", "templates").json()["templates"]}
    # The person's own token may (a token made at /hub/token acts as them).
    assert page(client, f"skills/{sid}").status_code == 200
    client.sac("DELETE", f"skills/{sid}")
    client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "deny"})
    client.sac("DELETE", f"templates/{tid}")


def test_the_settings_page_changes_model_key_drive_and_policy_through_the_api_rules(
    stack: dict, person: dict, admin: HubApi, new_user
) -> None:
    name, browser, client = person["name"], person["browser"], person["client"]
    path = f"agents/{name}/{SLUG}"
    key = f"sk-ant-page-{uuid.uuid4().hex}"
    shown = page(browser, path)
    assert shown.status_code == 200 and NO_FRAMING in shown.headers["content-security-policy"]
    assert 'name="drive_agents" value="1" id="s-drive" checked' in shown.text
    current = client.sac("GET", f"users/{name}/agents/{SLUG}").json()
    form = {"action": "save", "display_name": current["display_name"],
            "provider": current["provider"], "model": current["model"]}  # fmt: skip

    # Others: 404, as if it did not exist. An administrator may, audited.
    _, stranger = new_user("stranger")
    assert page(stranger, path).status_code == 404
    assert stranger.client.post(sac(stranger, path), data={**form, "model": "x"}
                                ).status_code == 404  # fmt: skip
    assert page(admin, path).status_code == 200

    # A bad model: the API's 400 names the field; the key typed is never echoed.
    bad = submit(browser, path, {**form, "model": "has spaces", "api_key": key})
    assert bad.status_code == 400 and error_of(bad.text).startswith("model:")
    assert key not in bad.text and 'value="has spaces"' in bad.text
    both = submit(browser, path, {**form, "api_key": key, "use_organisation_key": "1"})
    assert both.status_code == 400 and error_of(both.text).startswith("api_key:")

    # The model and the key; drive_agents turned off then on again (audited each time).
    saved = submit(browser, path, {**form, "model": "claude-opus-4-1", "api_key": key})
    assert saved.status_code == 303, saved.text[:300]
    # Running, and the model reaches the sandbox at its start: say so, offer Restart.
    assert saved.headers["location"].endswith(f"{path}?done=agent-saved-restart")
    after = page(browser, saved.headers["location"].split("services/sac/", 1)[1]).text
    assert "restart it to apply them" in after and 'id="restart-now"' in after
    assert 'id="s-drive"' in after and 'id="s-drive" checked' not in after
    model = client.sac("GET", f"users/{name}/agents/{SLUG}").json()
    assert model["model"] == "claude-opus-4-1" and model["key_set"] is True
    assert model["drive_agents"] is False
    again = submit(browser, path, {**form, "model": "claude-opus-4-1", "drive_agents": "1"})
    assert again.status_code == 303
    assert client.sac("GET", f"users/{name}/agents/{SLUG}").json()["drive_agents"] is True
    unchanged = submit(browser, path, {**form, "model": "claude-opus-4-1", "drive_agents": "1"})
    assert unchanged.headers["location"].endswith("done=agent-unchanged")
    drives = [e for e in audit(admin, name) if e["action"] == "agent.drive_agents"]
    assert [e["after"] for e in drives[:2]] == [{"drive_agents": True}, {"drive_agents": False}]
    assert drives[0]["actor"] == name and drives[0]["target"] == SLUG

    # The HITL policy: refused with the field named (the text kept), then stored.
    wrong = submit(browser, path, {"action": "policy", "policy": '{"allow": ["Bash("]}'})
    assert wrong.status_code == 400 and error_of(wrong.text).startswith("policy.allow[0]:")
    assert "Bash(" in wrong.text
    garbled = submit(browser, path, {"action": "policy", "policy": "{allow"})
    assert garbled.status_code == 400 and error_of(garbled.text).startswith(
        "policy: not valid JSON"
    )
    policy = {"default": "ask", "allow": ["Read", "Bash(git status:*)"], "ask": [],
              "deny": ["Bash(rm *)"]}  # fmt: skip
    stored = submit(browser, path, {"action": "policy", "policy": json.dumps(policy)})
    assert stored.status_code == 303 and stored.headers["location"].endswith("done=policy-saved")
    got = client.sac("GET", f"users/{name}/agents/{SLUG}/hitl-policy").json()["policy"]
    assert got == policy
    # An administrator's change of someone's policy is audited, as through the API.
    by_admin = admin.client.post(
        sac(browser, path), data={"action": "policy", "policy": json.dumps(policy)}
    )
    assert by_admin.status_code == 303
    assert audit(admin, name)[0]["action"] == "hitl.policy.replace"

    # The key appears on no page.
    for shown_path in ("", "approvals", path):
        assert key not in page(browser, shown_path).text, shown_path

    # Restart: the new model is in the sandbox.
    started = client.server(name, SLUG)["started"]
    restart = submit(browser, path, {"action": "restart"})
    assert restart.status_code == 303
    assert restart.headers["location"].endswith("done=agent-restarting")

    def restarted() -> bool:
        server = client.server(name, SLUG) or {}
        return bool(server.get("ready")) and server.get("started") != started

    poll_until(restarted, 120, "the agent restarted")
    env = asyncio.run(run_in_terminal(stack["url"], client.token, name, SLUG,
                                      "echo $ANTHROPIC_MODEL"))  # fmt: skip
    assert env == "claude-opus-4-1"


def test_the_skill_page_shares_a_private_skill_and_only_its_owner_may(
    stack: dict, person: dict, new_user
) -> None:
    browser, client, group = (person[k] for k in ("browser", "client", "group"))
    command = f"greet-{uuid.uuid4().hex[:6]}"
    created = client.sac("POST", "skills", json=greeting_skill(command))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    path = f"skills/{sid}"
    shown = page(browser, path)
    assert shown.status_code == 200 and NO_FRAMING in shown.headers["content-security-policy"]
    for text in (f"/{command}", f"Skill {command}", "Greets someone.", "Say hello to {{who}}.",
                 "<code>who</code>", 'id="share"', f'value="group:{group}"'):  # fmt: skip
        assert text in shown.text, text
    _, stranger = new_user("stranger")
    assert page(stranger, path).status_code == 404
    share = {"action": "share", "visibility": "public"}
    assert stranger.client.post(sac(stranger, path), data=share).status_code == 404

    # To a group of mine, then a group I am not in (refused), then public.
    grouped = submit(browser, path, {"action": "share", "visibility": f"group:{group}"})
    assert grouped.status_code == 303 and grouped.headers["location"].endswith("done=skill-saved")
    assert client.sac("GET", path).json()["group"] == group
    elsewhere = submit(browser, path, {"action": "share", "visibility": "group:not-mine"})
    assert elsewhere.status_code == 403 and "not a member" in error_of(elsewhere.text)
    official = submit(browser, path, {"action": "share", "visibility": "official"})
    assert official.status_code == 403 and error_of(official.text).startswith("visibility:")
    public = submit(browser, path, share)
    assert public.status_code == 303
    assert client.sac("GET", path).json()["visibility"] == "public"

    # Now others read it, and still may not change or delete it.
    theirs = page(stranger, path)
    assert theirs.status_code == 200 and 'id="share"' not in theirs.text
    for form in (
        {"action": "share", "visibility": "private"},
        {"action": "delete", "confirm": "1"},
    ):
        assert stranger.client.post(sac(stranger, path), data=form).status_code == 403
    assert client.sac("GET", path).json()["visibility"] == "public"

    unconfirmed = submit(browser, path, {"action": "delete"})
    assert unconfirmed.status_code == 400 and "tick the box" in error_of(unconfirmed.text)
    deleted = submit(browser, path, {"action": "delete", "confirm": "1"})
    assert deleted.status_code == 303
    assert deleted.headers["location"].endswith(f"?done=skill-deleted&target=%2F{command}")
    assert (
        f"Skill /{command} deleted." in page(browser, "?done=skill-deleted&target=/" + command).text
    )
    assert client.sac("GET", path).status_code == 404
    assert page(browser, path).status_code == 404


def test_a_person_approves_in_a_browser_from_the_pop_up_page(
    stack: dict, person: dict, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    name, client = person["name"], person["client"]
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "person"
    artifacts.mkdir(parents=True, exist_ok=True)
    agent_token, _ = sandbox_tokens(stack, person)
    command = f"publish-{uuid.uuid4().hex[:6]}"
    rid = file_request(sandbox_api(stack, agent_token), input={"command": command})
    skill = client.sac("POST", "skills", json=greeting_skill(f"shown-{uuid.uuid4().hex[:6]}"))
    base = stack["service_url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            tab = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            log_in(tab, stack["url"], name, person["password"])
            # The home page says a request waits, and links to it.
            tab.goto(base)
            tab.get_by_role("link", name=re.compile("approvals? waiting")).click()
            expect(tab.locator(f"#request-{rid}")).to_contain_text(command)
            tab.screenshot(path=str(artifacts / "1-approvals.png"), full_page=True)
            # The pop-up the sidebar or a widget opens: one request.
            tab.goto(base + f"approvals/{rid}")
            card = tab.locator(f"#request-{rid}")
            card.get_by_label("Reason (optional)").fill("looks right")
            card.get_by_role("button", name="Approve").click()
            expect(tab.locator("#done")).to_have_text("Allowed. You can close this window.")
            expect(tab.locator(f"#decided-{rid}")).to_contain_text(f"Decided: allowed by {name}")
            tab.screenshot(path=str(artifacts / "2-approved.png"), full_page=True)
            tab.get_by_role("link", name="Approvals", exact=True).click()
            expect(tab.locator(f"#decided-row-{rid}")).to_be_visible()
            # The agent's settings, from the home page.
            tab.goto(base)
            tab.get_by_role("link", name=f"Settings of {SLUG}").click()
            expect(tab.get_by_label("Display name")).to_have_value(SLUG)
            tab.screenshot(path=str(artifacts / "3-agent.png"), full_page=True)
            tab.goto(base + f"skills/{skill.json()['id']}")
            expect(tab.locator("#skill-body")).to_contain_text("Say hello to {{who}}.")
            tab.screenshot(path=str(artifacts / "4-skill.png"), full_page=True)
        finally:
            browser.close()
            client.sac("DELETE", f"skills/{skill.json()['id']}")
    decided = client.sac("GET", f"hitl/requests/{rid}").json()
    assert decided["status"] == "approved" and decided["reason"] == "looks right"
