"""Approval policies people edit: the organisation's default (administrators) that
agents without their own follow, the check as a policy is typed, and a policy
edited in Chromium on the agent's settings page, opened from the JupyterLab
sidebar's Settings…, governing the agent's next tool call, with the real claude CLI
against the fake model."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    agent_token,
    browser_client,
    chat_turn,
    model_agent,
    script_model,
    server_url,
    service_url,
    sign_up,
    xsrf_of,
)

pytestmark = pytest.mark.stack

ORG_DEFAULT = {"default": "deny", "allow": ["Read", "Bash(echo:*)"], "ask": [], "deny": []}


def test_the_organisation_default_governs_agents_without_their_own(
    stack: dict, admin, new_user
) -> None:
    user, client = new_user("dflt")
    builtin = client.sac("GET", "hitl/default-policy")
    assert builtin.status_code == 200 and builtin.json()["custom"] is False
    assert builtin.json()["policy"]["default"] == "ask"

    # Only an administrator sets it; a bad one is refused with the field named.
    assert client.sac("PUT", "hitl/default-policy", json={"policy": ORG_DEFAULT}).status_code == 403
    bad = admin.sac("PUT", "hitl/default-policy", json={"policy": {"default": "perhaps"}})
    assert bad.status_code == 400 and "default" in bad.json()["field"]
    assert client.sac("GET", "hitl/default-policy").json()["custom"] is False
    put = admin.sac("PUT", "hitl/default-policy", json={"policy": ORG_DEFAULT})
    assert put.status_code == 200, put.text
    try:
        assert client.sac("GET", "hitl/default-policy").json() == {
            "policy": ORG_DEFAULT,
            "custom": True,
        }
        # An agent without a policy of its own follows it; one with its own does not.
        for slug in ("plain", "own"):
            resp = client.sac("POST", "agents", json={"slug": slug, "api_key": "sk-unused-key-1"})
            assert resp.status_code == 201, resp.text
        own = {"default": "allow", "allow": [], "ask": [], "deny": []}
        resp = client.sac("PUT", f"users/{user}/agents/own/hitl-policy", json={"policy": own})
        assert resp.status_code == 200
        assert client.sac("GET", f"users/{user}/agents/plain/hitl-policy").json() == {
            "policy": ORG_DEFAULT
        }
        client.start(user, "plain")
        token = asyncio.run(agent_token(stack["url"], client, user, "plain"))
        seen = httpx.get(
            service_url(stack["url"]) + "api/agent/hitl",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert seen.status_code == 200 and seen.json()["policy"] == ORG_DEFAULT
        assert client.sac("GET", f"users/{user}/agents/own/hitl-policy").json()["policy"] == own
        entries = admin.sac("GET", "audit", params={"action": "hitl.default_policy.replace"}).json()
        assert entries["entries"][0]["after"] == ORG_DEFAULT
    finally:
        assert admin.sac("DELETE", "hitl/default-policy").status_code == 204
        client.sac("DELETE", f"users/{user}/agents/plain")
        client.sac("DELETE", f"users/{user}/agents/own")
    assert client.sac("GET", "hitl/default-policy").json()["custom"] is False


def test_a_policy_is_checked_without_being_stored(stack: dict, new_user) -> None:
    _, client = new_user("chk")
    ok = client.sac("POST", "hitl/policy-check", json={"policy": {"default": "allow"}})
    assert ok.status_code == 200
    assert ok.json()["policy"] == {"default": "allow", "allow": [], "ask": [], "deny": []}
    bad = client.sac(
        "POST", "hitl/policy-check", json={"policy": {"default": "ask", "deny": ["Bash(("]}}
    )
    assert bad.status_code == 400 and bad.json()["field"].startswith("policy.deny")


@pytest.mark.asyncio
async def test_a_policy_edited_in_the_browser_governs_the_next_tool_call(
    stack: dict, fake: str, admin
) -> None:
    from playwright.async_api import async_playwright, expect

    name, password = f"ed{uuid.uuid4().hex[:8]}", "a-long-enough-password-1"
    sign_up(stack["url"], name, password, ADMIN_PASSWORD)
    client = admin.create_user(name)
    resp = client.sac("POST", "agents", json={"slug": "edit", **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    allow = {"policy": {"default": "allow", "allow": [], "ask": [], "deny": []}}
    assert client.sac("PUT", f"users/{name}/agents/edit/hitl-policy", json=allow).is_success
    client.start(name, "edit")
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = await browser.new_page()
            await page.goto(stack["url"] + "hub/login")
            await page.fill("input[name=username]", name)
            await page.fill("input[name=password]", password)
            await page.click("input[type=submit], button[type=submit]")
            await page.wait_for_url("**/hub/**")
            # From the agent's JupyterLab: the SAC sidebar's Settings… opens the
            # agent's page on the service (its own origin: a sandbox's page must not
            # change what needs its person), where the policy is edited.
            await page.goto(server_url(stack["url"], name, "edit") + "lab")
            await page.locator(".jp-SideBar .lm-TabBar-tab[data-id=jp-sac-sidebar]").click()
            agent_section = page.locator("#jp-sac-sidebar [data-section=agent]")
            async with page.context.expect_page() as opened:
                await agent_section.get_by_role(
                    "button", name=re.compile("approvals policy")
                ).click(timeout=120_000)
            page = await opened.value
            await page.wait_for_load_state()
            assert page.url.startswith(service_url(stack["url"]) + f"agents/{name}/edit")
            editor = page.locator("#d-policy")
            status = page.locator("#d-policy-check")
            # As typed: a broken rule is named before anything is sent.
            await editor.fill('{"default": "allow", "deny": ["Bash(("]}')
            await expect(status).to_contain_text("policy.deny")
            await expect(editor).to_have_attribute("aria-invalid", "true")
            await editor.fill('{"default": "allow", "deny": ["Bash"')
            await expect(status).to_contain_text("Not valid JSON")
            await editor.fill('{"default": "allow", "deny": ["Bash"]}')
            await expect(status).to_have_text("Valid policy.")
            await page.click("#policy button[type=submit]")
            await expect(page.locator("#done")).to_contain_text("HITL policy saved")
            await browser.close()
        saved = client.sac("GET", f"users/{name}/agents/edit/hitl-policy").json()["policy"]
        assert saved["deny"] == ["Bash"]

        # The agent's next tool call follows it: its Bash is refused, not run.
        script_model(
            fake,
            {"tool_use": {"name": "Bash", "input": {"command": "touch /workspace/ran.txt"}}},
            "done",
        )
        base = server_url(stack["url"], name, "edit")
        seen = await chat_turn(base, client.token, "touch it")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        (result,) = [e for e in seen if e["type"] == "tool_result"]
        assert result["is_error"] is True, seen
        assert api.get(base + "api/contents/ran.txt").status_code == 404
    finally:
        client.sac("DELETE", f"users/{name}/agents/edit")


def test_an_administrator_edits_the_default_on_the_approvals_page(stack: dict, admin) -> None:
    browser = browser_client(stack["url"], "admin", ADMIN_PASSWORD)
    page_url = service_url(stack["url"]) + "admin/hitl"

    def submit(form: dict[str, str]) -> httpx.Response:
        token = xsrf_of(browser.get(page_url).text)
        return browser.post(
            page_url + "/default-policy", data={**form, "_xsrf": token}, follow_redirects=False
        )

    shown = browser.get(page_url)
    assert 'id="default-policy"' in shown.text and "How a policy reads" in shown.text
    refused = submit({"action": "save", "policy": '{"default": "never"}'})
    assert refused.status_code == 400 and "never" in refused.text  # what was typed stays
    assert admin.sac("GET", "hitl/default-policy").json()["custom"] is False
    saved = submit({"action": "save", "policy": json.dumps(ORG_DEFAULT)})
    assert saved.status_code == 303, saved.text
    try:
        assert admin.sac("GET", "hitl/default-policy").json()["policy"] == ORG_DEFAULT
        assert "Back to the built-in default" in browser.get(page_url).text
    finally:
        assert submit({"action": "reset"}).status_code == 303
    assert admin.sac("GET", "hitl/default-policy").json()["custom"] is False
