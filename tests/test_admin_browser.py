"""An operator walks through the admin pages in headless Chromium: logs in to the hub,
changes a system setting, sets a user's override, restarts that user's agent,
searches the conversations and downloads them as CSV, answers an approval, reads
the usage and the audit log. A user who signed up in the browser gets a 403 page.
Screenshots of each step are kept as test artifacts ($SAC_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    HubApi,
    log_in,
    model_agent,
    run_in_terminal,
    running_agent,
    script_model,
    sign_up_and_log_in,
)

from jupyter_sac.client import Client
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


@pytest.fixture
def operated(stack: dict, fake: str) -> Iterator[dict]:
    """A user whose running agent has a conversation, a model call (usage) and a
    request waiting for a human."""
    user = f"ops{uuid.uuid4().hex[:6]}"
    word = f"zebrafish{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "desk", **model_agent(fake)) as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "desk", "echo $SAC_AGENT_TOKEN")
        )
        sac = httpx.Client(
            base_url=stack["service_url"],
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        session = str(uuid.uuid4())
        event = {
            "session_id": session,
            "uuid": f"{session}-1",
            "ts": datetime.now(UTC).isoformat(),
            "kind": "user",
            "payload": {"type": "user", "message": {"role": "user", "content": f"map {word}"}},
        }
        assert sac.post("api/history/ingest", json={"events": [event]}).status_code == 200
        call = sac.post(
            "llm/v1/messages",
            json={"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user",
                  "content": "hi"}]},
        )  # fmt: skip
        assert call.status_code == 200, call.text
        command = f"deploy-{uuid.uuid4().hex[:6]}"
        filed = sac.post(
            "api/hitl/requests",
            json={"kind": "tool", "tool": "Bash", "input": {"command": command}},
        )
        assert filed.status_code == 201, filed.text
        yield {"user": user, "client": client, "word": word, "command": command,
               "request": filed.json()["id"]}  # fmt: skip


def test_an_operator_runs_sac_from_the_admin_pages(
    stack: dict, operated: dict, fake: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    admin: HubApi = stack["admin"]
    user, client = operated["user"], operated["client"]
    base = stack["service_url"]
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "admin"
    artifacts.mkdir(parents=True, exist_ok=True)
    saved_system = admin.sac("GET", "settings/system").json()["overrides"]
    started = client.server(user, "desk")["started"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000},
                                      accept_downloads=True)  # fmt: skip
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        # Chromium also logs each 4xx page as a console error: the refused form's
        # 400 is expected (and asserted), so only other errors count.
        page.on(
            "console",
            lambda m: (
                m.type == "error"
                and "responded with a status of 400" not in m.text
                and problems.append(m.text)
            ),
        )

        def tab(name: str) -> None:
            page.get_by_label("SAC administration").get_by_role("link", name=name).click()

        def shot(name: str) -> None:
            page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

        try:
            log_in(page, stack["url"], "admin", ADMIN_PASSWORD)
            # The hub's Services menu leads to the service, on its own host with the
            # hub's port (JupyterHub's own link drops it); OAuth logs the admin in.
            page.goto(stack["url"] + "hub/home")
            page.get_by_role("button", name="Services").click()
            page.get_by_role("link", name="sac", exact=True).click()
            page.wait_for_url(base + "**")
            expect(page.locator("#sac-user")).to_have_text("admin")
            tab("Settings")
            expect(page.get_by_role("heading", name="System settings")).to_be_visible()

            # 1. A system setting.
            page.fill("#f-hitl_timeout", "1200")
            page.select_option("#f-hitl_default", "deny")
            page.get_by_role("button", name="Save").click()
            expect(page.locator("#done")).to_have_text("System settings saved.")
            expect(page.locator("#setting-hitl_timeout .sac-resolved")).to_have_text("20 min")
            shot("1-settings")
            system = admin.sac("GET", "settings/system").json()["overrides"]
            assert system["hitl_timeout"] == 1200 and system["hitl_default"] == "deny"
            page.fill("#f-cpu_limit", "lots")
            page.get_by_role("button", name="Save").click()
            expect(page.locator("#error")).to_contain_text("cpu_limit: expected a number")
            assert admin.sac("GET", "settings/system").json()["overrides"] == system

            # 2. A user's override, shown resolved.
            tab("Users")
            page.get_by_role("link", name=user, exact=True).click()
            page.fill("#f-max_agents_per_user", "3")
            page.get_by_role("button", name="Save", exact=True).click()
            expect(page.locator("#done")).to_have_text(f"Overrides saved for {user}.")
            expect(page.locator("#setting-max_agents_per_user .sac-resolved")).to_have_text("3")
            shot("2-user")
            assert client.sac("GET", "settings").json()["resolved"]["max_agents_per_user"] == 3

            # 3. The user's agent in the list of all agents; restart it.
            tab("Agents")
            row = page.locator(f"#agent-{user}-desk")
            expect(row).to_have_attribute("data-status", "running")
            expect(row).to_contain_text("custom")
            shot("3-agents")
            row.get_by_role("button", name="Restart").click()
            expect(page.locator("#done")).to_have_text(f"{user}/desk is restarting.")

            def restarted() -> bool:
                server = client.server(user, "desk") or {}
                return bool(server.get("ready")) and server.get("started") != started

            poll_until(restarted, 120, "the agent restarted")
            page.reload()
            expect(page.locator(f"#agent-{user}-desk")).to_have_attribute("data-status", "running")

            # 4. Conversations: search, then the CSV of what was found.
            tab("Conversations")
            page.fill("#s-q", operated["word"])
            page.get_by_role("button", name="Search").click()
            results = page.locator("#events tbody tr")
            expect(results).to_have_count(1)
            expect(results).to_contain_text(user)
            expect(results).to_contain_text(f"map {operated['word']}")
            shot("4-conversations")
            with page.expect_download() as download:
                page.locator("#export").click()
            csv_text = Path(download.value.path()).read_text()
            assert csv_text.startswith("owner,agent,session_id")
            assert operated["word"] in csv_text and len(csv_text.strip().splitlines()) == 2

            # 5. The waiting request, answered from the page.
            tab("Approvals")
            card = page.locator(f"#request-{operated['request']}")
            expect(card).to_contain_text(operated["command"])
            expect(card).to_contain_text(f"{user}/desk")
            shot("5-approvals")
            card.get_by_label("Reason (optional)").fill("checked by ops")
            card.get_by_role("button", name="Approve").click()
            expect(page.locator("#done")).to_have_text("Request allowed.")
            expect(page.locator(f"#request-{operated['request']}")).to_have_count(0)
            decided = admin.sac("GET", f"hitl/requests/{operated['request']}").json()
            assert decided["status"] == "approved" and decided["decided_by"] == "admin"
            assert decided["reason"] == "checked by ops"

            # 5b. A real tool call of the agent, denied from the page: it does not run,
            # and the model is told why.
            (home,) = (stack["data_dir"] / "agents").glob("*-desk")
            denied_file = home / "workspace" / "denied-by-ops.txt"
            write = {"tool_use": {"name": "Bash",
                                  "input": {"command": f"echo no > /workspace/{denied_file.name}"}}}  # fmt: skip
            script_model(fake, write, "Stopped by the operator.")
            answers: list[Any] = []
            with Client(url=stack["url"], token=client.token) as agent_client:
                turn = threading.Thread(
                    target=lambda: answers.append(agent_client.agent("desk").ask("write it"))
                )
                turn.start()

                def asked() -> dict | None:
                    queue = admin.sac("GET", "hitl/requests", params={"all": "1"}).json()
                    mine = [r for r in queue["requests"] if r["user"] == user]
                    return mine[0] if mine else None

                tool_request = poll_until(asked, 90, "the tool call waiting for a human")
                assert tool_request["input"]["command"] == write["tool_use"]["input"]["command"]
                page.reload()
                card = page.locator(f"#request-{tool_request['id']}")
                card.get_by_label("Reason (optional)").fill("not on a Friday")
                card.get_by_role("button", name="Deny").click()
                expect(page.locator("#done")).to_have_text("Request denied.")
                expect(page.locator(f"#request-{tool_request['id']}")).to_have_count(0)
                turn.join(180)
                assert not turn.is_alive(), "the turn never ended"
            assert answers and answers[0].text == "Stopped by the operator.", answers
            assert not denied_file.exists(), "the denied tool ran"
            decided = admin.sac("GET", f"hitl/requests/{tool_request['id']}").json()
            assert decided["status"] == "denied" and decided["decided_by"] == "admin"
            sent = httpx.get(fake + "/_fake/requests").json()["requests"][-1]["body"]
            assert "not on a Friday" in json.dumps(sent["messages"])

            # 6. Usage from the credential proxy.
            tab("Usage")
            usage_row = page.locator("#usage-days tbody tr").filter(has_text=user)
            expect(usage_row).to_have_count(1)
            expect(usage_row).to_contain_text("desk")
            shot("6-usage")

            # 6b. Workspaces: upload a file to the public tree from the page.
            tab("Workspaces")
            expect(page.get_by_role("heading", name="Public workspace")).to_be_visible()
            upload = page.locator("#public-upload")
            notice = {
                "name": f"notice-{operated['word']}.txt",
                "mimeType": "text/plain",
                "buffer": b"Office closed on Friday.\n",
            }
            upload.get_by_label("File (up to 32 MiB)").set_input_files(files=[notice])
            upload.get_by_label("Into folder (optional)").fill("notices")
            upload.get_by_role("button", name="Upload").click()
            expect(page.locator("#done")).to_have_text(
                f"public/notices/notice-{operated['word']}.txt stored in the public workspace."
            )
            expect(page.locator("#public-files")).to_contain_text(f"notice-{operated['word']}.txt")
            shot("6b-workspaces")
            page.get_by_role("button", name=f"Delete notices/notice-{operated['word']}.txt").click()
            expect(page.locator("#done")).to_contain_text("deleted from the public workspace")

            # 7. The audit log has each of these actions.
            tab("Audit log")
            entries = page.locator("#entries tbody")
            for action in ("settings.system.replace", "settings.user.replace",
                           "agent.restart", "hitl.decide"):  # fmt: skip
                expect(entries).to_contain_text(action)
            page.fill("#a-user", user)
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("#entries tbody tr")).to_have_count(4)
            shot("7-audit")

            # A form posted without the page's XSRF token (another site's form) is refused,
            # though it carries the browser's cookies for the service. (Sent from here:
            # Playwright's own request context does not resolve *.localhost.)
            cookies = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies(base))
            forged = httpx.post(
                base + "admin/settings", data={"hitl_timeout": "5"}, headers={"Cookie": cookies}
            )
            assert forged.status_code == 403
            assert admin.sac("GET", "settings/system").json()["overrides"] == system
        finally:
            context.close()
            browser.close()
            admin.sac("PUT", "settings/system", json=saved_system)
            admin.sac("DELETE", f"users/{user}/settings")
    assert not problems, problems


def test_a_user_who_signed_up_gets_403_pages_and_their_home(stack: dict, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    name, password = f"newbie{uuid.uuid4().hex[:6]}", "a-long-enough-password-1"
    base = stack["url"]
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "admin"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            # Signed up, authorised by an admin (NativeAuthenticator), logged in.
            person = sign_up_and_log_in(browser, base, name, password, ADMIN_PASSWORD)
            for path in ("admin/settings", "admin/agents", "admin/conversations",
                         "admin/hitl", "admin/usage", "admin/audit", "admin/users"):  # fmt: skip
                response = person.goto(stack["service_url"] + path)
                assert response is not None and response.status == 403, path
                expect(person.locator("#message")).to_contain_text("for SAC administrators")
            person.screenshot(path=str(artifacts / "8-forbidden.png"))
            response = person.goto(stack["service_url"])
            assert response is not None and response.status == 200
            expect(person.locator("#sac-user")).to_have_text(name)
            expect(person.get_by_text("You have no agents yet.")).to_be_visible()
            expect(person.get_by_label("SAC administration")).to_have_count(0)
        finally:
            browser.close()
