"""A new user's walk through JupyterLab with the SAC extension, in headless Chromium,
against the real stack (hub, proxy, service, PostgreSQL, a local sandbox) with the
real claude CLI answered by the fake Anthropic API:

sign up and log in -> create an agent on the SAC home page -> its JupyterLab opens
with the Claude terminal -> a prompt typed there is answered -> the chat panel sends
a message and shows the todo list and the tool timeline -> the tool needs approval,
which shows in the sidebar's Approvals and is approved on the service's page -> the tool runs, the
turn's cost and the month's usage show -> a slow turn is cancelled -> the file shows
under the workspace's new output -> History lists the session and shows its
transcript -> an official skill is installed and run with its form -> a skill of
one's own is made with the parameter editor and shared -> the folder shortcuts, the
command palette and the dark theme -> a restart reopens the page with the new model
and the Claude terminal -> switching to another agent opens its JupyterLab.

Screenshots of each step are kept as test artifacts ($SAC_TEST_ARTIFACTS/lab).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyte
import pytest
from conftest import ADMIN_PASSWORD
from helpers import CHROMIUM_ARGS, HubApi, script_model, sign_up_and_log_in
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


PASSWORD = "a-long-enough-password-1"


def terminal_shows(lab: str, token: str, text: str, timeout: float = 90) -> None:
    """Wait until the agent's `claude` terminal (the one the browser shows; xterm.js
    draws on a canvas, so its text is read from the terminal's own stream) has
    printed ``text``. A viewer that attaches gets the scrollback first, and sends
    nothing (no resize), so the browser's terminal is left as it is."""

    async def watch() -> None:
        url = lab.replace("http", "ws", 1) + "terminals/websocket/claude"
        conn = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {token}"})
        )
        # Wider and taller than the browser's terminal, so nothing wraps differently.
        screen = pyte.Screen(250, 120)
        stream = pyte.Stream(screen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def shown() -> str:
            return "\n".join(line.rstrip() for line in screen.display if line.strip())

        try:
            while text not in shown():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(
                        f"the terminal never showed {text!r}; it shows:\n{shown()}"
                    )
                try:
                    msg = await asyncio.wait_for(conn.read_message(), remaining)
                except TimeoutError:
                    continue
                if msg is None:
                    raise AssertionError("the terminal closed")
                kind, *rest = json.loads(msg)
                if kind == "stdout":
                    stream.feed(rest[0])
        finally:
            conn.close()

    # Playwright's sync API runs an event loop in this thread: watch from another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, watch()).result()


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield p, browser
        finally:
            browser.close()


def test_a_new_user_works_with_an_agent_in_jupyterlab(
    stack: dict, fake: str, browser_page: tuple, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    _, browser = browser_page
    base = stack["url"]
    admin: HubApi = stack["admin"]
    name = f"lab{uuid.uuid4().hex[:6]}"
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "lab"
    artifacts.mkdir(parents=True, exist_ok=True)
    word = uuid.uuid4().hex[:8]

    page = sign_up_and_log_in(
        browser, base, name, PASSWORD, ADMIN_PASSWORD,
        viewport={"width": 1500, "height": 950}, accept_downloads=True,
    )  # fmt: skip
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    # Chromium logs each 4xx page as a console error: the refused form's 400 is
    # expected (and asserted), so only other errors count.
    page.on(
        "console",
        lambda m: (
            m.type == "error"
            and "responded with a status of 400" not in m.text
            and problems.append(f"console: {m.text}")
        ),
    )

    def shot(step: str) -> None:
        page.screenshot(path=str(artifacts / f"{step}.png"))

    def section(sid: str):
        return page.locator(f"#jp-sac-sidebar [data-section={sid}]")

    try:
        # 1. Create an agent on the SAC home page; its JupyterLab opens.
        page.goto(stack["service_url"])
        expect(page.get_by_text("You have no agents yet.")).to_be_visible()
        form = page.locator("#new-agent")
        form.get_by_label("Name", exact=True).fill("desk")
        # A provider without an organisation key needs the person's own key.
        form.get_by_label("Model provider").select_option("openrouter")
        form.get_by_role("button", name="Create and open").click()
        expect(page.locator("#error")).to_contain_text("has no organisation key here")
        assert admin.sac("GET", f"users/{name}/agents").json()["agents"] == []
        expect(form.get_by_label("Name", exact=True)).to_have_value("desk")
        form.get_by_label("Model provider").select_option("custom")
        form.get_by_label("Base URL (custom provider only)").fill(fake)
        form.get_by_label("Your API key (optional)").fill("sk-ant-real-provider-key-42")
        shot("1-new-agent")
        form.get_by_role("button", name="Create and open").click()
        page.wait_for_url(f"**/user/{name}/desk/lab**", timeout=180_000)
        made = admin.harness_api().hub("POST", f"users/{name}/tokens", json={"note": "test"})
        token = made.json()["token"]
        client = HubApi(base, token)
        lab = admin.server_url(name, "desk")
        # JupyterLab is on the user's own host, not the hub's or the service's.
        assert page.url.startswith(lab), page.url
        api = httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60)

        # 2. The Claude terminal opened by itself: the agent's one `claude` terminal.
        terminal = page.locator(".jp-Terminal")
        expect(terminal).to_be_visible(timeout=60_000)
        expect(page.locator("#jp-sac-sidebar")).to_be_attached()
        assert [t["name"] for t in api.get(lab + "api/terminals").json()] == ["claude"]
        terminal_shows(lab, token, "for shortcuts", 60)
        shot("2-terminal")

        # 3. A prompt typed in the terminal is answered.
        script_model(fake, f"Terminal answer {word}")
        terminal.click()
        page.keyboard.type("say something")
        # Enter only once the text is echoed: Ink takes text+Enter in one chunk as a paste.
        terminal_shows(lab, token, "say something", 30)
        page.keyboard.press("Enter")
        terminal_shows(lab, token, f"Terminal answer {word}", 90)
        shot("3-terminal-answer")

        # 4. Chat: a message whose tool call needs approval.
        todos = [
            {
                "content": "write the report",
                "status": "in_progress",
                "activeForm": "Writing the report",
            },
            {"content": "say where it is", "status": "pending", "activeForm": "Saying where"},
        ]
        script_model(
            fake,
            {"text": "Planning.", "tool_use": {"name": "TodoWrite", "input": {"todos": todos}}},
            {
                "text": "Writing the report.",
                "tool_use": {
                    "name": "Bash",
                    "input": {"command": f"echo {word} > /workspace/output/report-{word}.txt"},
                },
            },
            f"Report written: report-{word}.txt",
        )
        # The SAC sidebar, from its tab in the left area.
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id=jp-sac-sidebar]").click()
        expect(section("agent").locator("[data-fact=model]")).to_have_text("claude-sonnet-4-5")
        expect(section("agent").locator("[data-fact=status]")).to_contain_text("running")
        expect(section("agent").locator("[data-fact=usage]")).to_contain_text("requests")
        shot("3b-sidebar")
        # The agent's settings are the person's to change: the sidebar opens the
        # service's own page (its own origin, the person's own login) in a new window.
        agent_section = section("agent")
        with page.context.expect_page() as opened:
            agent_section.get_by_role("button", name=re.compile("on the SAC service")).click()
        settings = opened.value
        settings.wait_for_load_state()
        assert settings.url.startswith(stack["service_url"] + f"agents/{name}/desk")
        assert not settings.url.startswith(base)  # another origin than the agent's page
        settings.get_by_label("Model", exact=True).fill("claude-opus-4-1")
        settings.get_by_role("button", name="Save", exact=True).click()
        expect(settings.locator("#done")).to_contain_text("restart")
        settings.screenshot(path=str(artifacts / "3c-settings-page.png"))
        settings.close()
        # Another agent, from a template: the person's home page on the service,
        # whose form offers the templates.
        with page.context.expect_page() as opened:
            agent_section.get_by_role("button", name=re.compile("Create another agent")).click()
        home = opened.value
        home.wait_for_load_state()
        assert home.url.split("#")[0] == stack["service_url"]
        expect(home.locator("#new-agent")).to_contain_text("notebook-analyst")
        home.close()
        agent_section.get_by_role("button", name="Refresh").click()
        expect(agent_section.locator("[data-fact=model]")).to_have_text("claude-opus-4-1")
        assert client.sac("GET", f"users/{name}/agents/desk").json()["model"] == "claude-opus-4-1"
        section("agent").get_by_role("button", name="Chat").click()
        chat = page.locator(".jp-SacChat")
        expect(chat).to_be_visible()
        box = chat.get_by_label("Message to Claude")
        box.fill("write the report")
        box.press("Shift+Enter")
        box.type("please")
        expect(box).to_have_value("write the report\nplease")
        box.press("Enter")
        expect(chat.locator(".jp-SacChat-user")).to_contain_text("write the report")
        # The agent's todo list (TodoWrite is allowed without asking) shows beside the answer.
        expect(chat.locator(".jp-SacChat-todos")).to_contain_text(
            "Writing the report", timeout=90_000
        )
        expect(chat.locator(".jp-SacChat-todos li")).to_have_count(2)
        tool = chat.locator(".jp-SacChat-tool[data-tool=Bash]")
        expect(tool).to_contain_text(f"report-{word}.txt", timeout=90_000)
        expect(tool).to_contain_text("running")

        # 5. The request shows in Approvals, live, with a badge. The sidebar only shows
        # it: the person decides on the service's page, which it opens.
        approvals = section("approvals")
        card = approvals.locator(".jp-SacApproval")
        expect(card).to_have_count(1, timeout=30_000)
        expect(card).to_contain_text(f"report-{word}.txt")
        expect(approvals.locator(".jp-SacBadge")).to_have_text("1")
        expect(card.get_by_text("Approve", exact=True)).to_have_count(0)
        shot("5-approval")
        expect(page.locator(".Toastify__toast").filter(has_text="Claude asks")).to_have_count(1)
        with page.context.expect_page() as opened:
            card.get_by_role("button", name=re.compile("where you approve or deny it")).click()
        decide = opened.value
        decide.wait_for_load_state()
        assert decide.url.startswith(stack["service_url"] + "approvals/")
        expect(decide.locator(".sac-request")).to_contain_text(f"report-{word}.txt")
        decide.get_by_role("button", name="Approve").click()
        expect(decide.locator("#done")).to_contain_text("Allowed")
        decide.screenshot(path=str(artifacts / "5b-approved-on-the-service.png"))
        decide.close()
        expect(card).to_have_count(0, timeout=30_000)
        # its notification goes with it
        expect(page.locator(".Toastify__toast").filter(has_text="Claude asks")).to_have_count(0)
        decided = client.sac("GET", "hitl/requests", params={"status": "decided"}).json()
        assert decided["requests"][0]["status"] == "approved"
        assert decided["requests"][0]["decided_by"] == name

        # The tool ran; the answer, the tool result and the turn's cost show.
        expect(chat.locator(".jp-SacChat-answer").last).to_contain_text(
            f"Report written: report-{word}.txt", timeout=90_000
        )
        expect(tool).not_to_contain_text("running")
        tool.locator("summary").click()
        expect(tool.locator(".jp-SacChat-toolInput")).to_contain_text("echo")
        expect(chat.locator("[data-cost]")).to_contain_text("in /")
        # The turn's model calls are metered, and the sidebar's usage follows.
        expect(section("agent").locator("[data-fact=usage]")).to_have_text(
            re.compile(r"^[1-9][0-9.]*[kM]? requests")
        )
        shot("4-chat")
        stored = api.get(lab + f"api/contents/output/report-{word}.txt")
        assert stored.status_code == 200 and stored.json()["content"].strip() == word

        # A slow answer is cancelled; the conversation stays usable.
        script_model(fake, {"text": "a very slow answer " * 40, "delay": 0.5})
        box.fill("take your time")
        box.press("Enter")
        cancel = chat.get_by_role("button", name="Cancel")
        expect(cancel).to_be_visible()
        cancel.click()
        expect(chat.get_by_text("Cancelled.")).to_be_visible(timeout=30_000)
        expect(chat.get_by_role("button", name="Send")).to_be_visible()

        # 6. The new file shows under the workspace's output, live.
        workspace = section("workspace")
        artifact = workspace.get_by_role("button", name=f"report-{word}.txt")
        expect(artifact).to_be_visible(timeout=30_000)
        # usage against the quota, as the store has it once the file is uploaded
        expect(workspace.get_by_role("progressbar", name="Files")).not_to_have_attribute(
            "aria-valuenow", "0", timeout=30_000
        )
        workspace.scroll_into_view_if_needed()
        shot("6-workspace")
        artifact.click()
        expect(page.get_by_role("tab", name=f"report-{word}.txt")).to_be_visible()
        expect(page.locator(".jp-FileEditor .cm-content")).to_contain_text(word)

        # 7. History lists the chat's session and shows its transcript.
        history = section("history")
        history.get_by_role("button", name="History").click()

        def listed() -> bool:
            history.get_by_role("button", name="Refresh").click()
            return history.get_by_role("button", name="write the report").count() > 0

        poll_until(listed, 60, "the chat session in History")
        history.get_by_role("button", name="write the report").first.click()
        transcript = history.locator(".jp-SacTranscript")
        expect(transcript.locator(".jp-SacTurn.jp-mod-prompt").first).to_contain_text(
            "write the report"
        )
        answers = transcript.locator(".jp-SacTurn.jp-mod-answer")
        expect(answers.filter(has_text="Writing the report.")).to_have_count(1)
        expect(transcript.locator("details summary").filter(has_text="Bash")).to_have_count(1)
        history.scroll_into_view_if_needed()
        shot("7-history")

        # 7b. Another tool call, denied on the service's page opened from the sidebar:
        # the tool does not run, and the turn goes on without it.
        denied = f"output/denied-{word}.txt"
        script_model(
            fake,
            {"tool_use": {"name": "Bash", "input": {"command": f"echo no > /workspace/{denied}"}}},
            f"Not written: denied-{word}.txt",
        )
        section("agent").get_by_role("button", name="Chat").click()  # back to the chat
        expect(chat).to_be_visible()
        box.fill("write another file")
        box.press("Enter")
        expect(card).to_have_count(1, timeout=90_000)
        expect(card).to_contain_text(f"denied-{word}.txt")
        with page.context.expect_page() as opened:
            card.get_by_role("button", name=re.compile("where you approve or deny it")).click()
        decide = opened.value
        decide.wait_for_load_state()
        expect(decide.locator(".sac-request")).to_contain_text(f"denied-{word}.txt")
        decide.get_by_role("button", name="Deny").click()
        expect(decide.locator("#done")).to_contain_text("Denied")
        decide.close()
        expect(card).to_have_count(0, timeout=30_000)
        expect(chat.locator(".jp-SacChat-answer").last).to_contain_text(
            f"Not written: denied-{word}.txt", timeout=90_000
        )
        newest = client.sac("GET", "hitl/requests", params={"status": "decided"}).json()
        assert newest["requests"][0]["status"] == "denied"
        assert newest["requests"][0]["input"]["command"] == f"echo no > /workspace/{denied}"
        assert api.get(lab + f"api/contents/{denied}").status_code == 404

        # 8. An official skill: installed, then run with its form (in chat).
        skills = section("skills")
        skills.get_by_label("Tier").select_option("official")
        row = skills.locator("[data-command=summarise-csv]")
        expect(row).to_be_visible()
        row.get_by_role("button", name="Install").click()
        expect(row.get_by_role("button", name="Run")).to_be_visible()
        installed = client.sac("GET", f"users/{name}/agents/desk/skills").json()["skills"]
        assert [s["command"] for s in installed] == ["summarise-csv"]
        skills.get_by_label("Tier").select_option("installed")
        expect(skills.locator(".jp-SacSkill")).to_have_count(1)
        expect(row).to_contain_text("Summarise a CSV")
        row.get_by_role("button", name="Run").click()
        run_form = skills.get_by_role("form", name="Run summarise-csv")
        run_form.get_by_role("button", name="Run").click()
        expect(run_form.locator(".jp-SacError")).to_contain_text("required")
        run_form.locator("input[name=file]").fill("output/sales.csv")
        run_form.locator("input[name=max_plots]").fill("3")
        skills.scroll_into_view_if_needed()
        shot("8-skill-form")
        script_model(fake, f"Summary of sales {word}")
        run_form.get_by_role("button", name="Run").click()
        expect(chat.locator(".jp-SacChat-user").last).to_contain_text("/summarise-csv")
        expect(chat.locator(".jp-SacChat-user").last).to_contain_text("output/sales.csv")
        expect(chat.locator(".jp-SacChat-answer").last).to_contain_text(
            f"Summary of sales {word}", timeout=90_000
        )
        shot("9-skill-run")

        # 9. A skill of one's own: made with the parameter editor, then shared.
        skills.get_by_role("button", name="Create a skill").click()
        editor = skills.get_by_role("form", name="Edit skill")
        editor.locator("input[name=command]").fill(f"tidy-{word}")
        editor.locator("input[name=title]").fill("Tidy a folder")
        editor.locator("input[name=description]").fill("Sorts a folder's files into subfolders.")
        editor.locator("textarea[name=body]").fill("Tidy the folder the user names.")
        editor.locator("textarea[name=prompt]").fill("Tidy {{folder}} in {{style}} style.")
        editor.get_by_role("button", name="+ Parameter").click()
        editor.get_by_label("Parameter name").nth(0).fill("folder")
        editor.get_by_role("button", name="+ Parameter").click()
        editor.get_by_label("Parameter name").nth(1).fill("style")
        editor.get_by_label("Parameter type").nth(1).select_option("select")
        editor.get_by_label("Options").fill("short, thorough")
        shot("10-skill-editor")
        editor.get_by_role("button", name="Save").click()
        skills.get_by_label("Tier").select_option("private")
        mine = skills.locator(f"[data-command=tidy-{word}]")
        expect(mine).to_contain_text("private")
        created = client.sac("GET", "skills", params={"q": f"tidy-{word}"}).json()["skills"][0]
        assert [p["name"] for p in created["parameters"]] == ["folder", "style"]
        assert created["parameters"][1]["options"] == ["short", "thorough"]
        mine.get_by_role("button", name="Install").click()
        expect(mine).to_contain_text("v1 installed")
        mine.get_by_role("button", name="Edit").click()
        editor.locator("input[name=description]").fill("Sorts a folder's files, by type.")
        editor.get_by_role("button", name="Save").click()
        # Sharing it is the person's act, on the skill's page on the service.
        with page.context.expect_page() as opened:
            mine.get_by_text("Share…").click()
        skill_page = opened.value
        skill_page.wait_for_load_state()
        assert skill_page.url.startswith(stack["service_url"] + "skills/")
        skill_page.get_by_label("Who may see and install it").select_option("public")
        skill_page.locator("#share").get_by_role("button", name="Save").click()
        expect(skill_page.locator("#done")).to_be_visible()
        skill_page.close()
        skills.get_by_label("Tier").select_option("public")
        shared = skills.locator(f"[data-command=tidy-{word}]")
        expect(shared).to_contain_text("public")
        # The edit is version 2; this agent keeps version 1 until it is updated. The
        # installed view lists version 1, but editing starts from the newest.
        expect(shared).to_contain_text("v1 installed")
        skills.get_by_label("Tier").select_option("installed")
        expect(shared).to_contain_text("v1 installed")
        # A shared skill is not edited in the sidebar any more: Manage… opens its page.
        expect(shared.get_by_role("button", name="Edit")).to_have_count(0)
        expect(shared.get_by_text("Manage…")).to_have_count(1)
        shared.get_by_role("button", name="Update to v2").click()
        expect(shared).to_contain_text("v2 installed")
        expect(shared.get_by_role("button", name="Update to v2")).to_have_count(0)
        pins = client.sac("GET", f"users/{name}/agents/desk/skills").json()["skills"]
        assert {s["command"]: s["installed_version"] for s in pins}[f"tidy-{word}"] == 2

        # 10. The workspace's folder shortcuts open the file browser there.
        # (exact: "Download /workspace/output as ZIP" is a button of its own)
        section("workspace").get_by_role("button", name="/workspace/output", exact=True).click()
        browser_list = page.locator("#filebrowser .jp-DirListing-content")
        expect(page.locator("#filebrowser .jp-BreadCrumbs")).to_contain_text("output")
        expect(browser_list).to_contain_text(f"report-{word}.txt")

        # 11. The commands are in the palette; the sidebar follows the dark theme.
        page.keyboard.press("Control+Shift+C")
        palette = page.locator("#modal-command-palette")
        palette.locator("input").fill("Claude Terminal")
        expect(palette.get_by_text("Claude Terminal", exact=True)).to_be_visible()
        palette.locator("input").fill("Use Theme: JupyterLab Dark")
        palette.locator("input").press("Enter")
        expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id=jp-sac-sidebar]").click()
        page.locator("#jp-sac-sidebar").screenshot(path=str(artifacts / "11-dark.png"))

        # 12. Restart, confirmed: the page goes by the hub's start page and reopens
        # JupyterLab; the sandbox now runs the model chosen in step 3, and the
        # terminal tab JupyterLab restores (by name, before anything else starts
        # the terminal) is Claude again, not a shell.
        # While the old server stops, the old page's JupyterLab logs its lost kernel
        # and terminal connections: expected of a restart, so only the messages from
        # the click until the page leaves are set aside.
        before = len(problems)
        left: list[int] = []
        page.on(
            "framenavigated",
            lambda frame: frame == page.main_frame and not left and left.append(len(problems)),
        )
        section("agent").get_by_role("button", name="Restart").click()
        with page.expect_navigation(url=f"**/user/{name}/desk/lab**", timeout=180_000):
            page.locator(".jp-Dialog").get_by_role("button", name="Restart").click()
        del problems[before : left[0]]
        expect(page.locator("#jp-sac-sidebar h2")).to_have_text("Agent desk", timeout=120_000)
        status = api.get(lab + "sac/api/status").json()
        assert status["agent"]["model"] == "claude-opus-4-1"
        poll_until(
            lambda: [t["name"] for t in api.get(lab + "api/terminals").json()] == ["claude"],
            60,
            "the restored Claude terminal",
        )
        terminal_shows(lab, token, "for shortcuts", 90)
        shot("12-restarted")

        # 13. Switch to another of my agents: its JupyterLab opens.
        made = client.sac("POST", "agents", json={"slug": "spare", **{"provider": "custom",
                          "base_url": fake, "api_key": "sk-ant-real-provider-key-42"}})  # fmt: skip
        assert made.status_code == 201, made.text
        section("agent").get_by_role("button", name="Refresh").click()
        switch = section("agent").get_by_label("Switch to another agent")
        expect(switch.locator("option")).to_have_count(2)
        switch.select_option("spare")
        page.wait_for_url(f"**/user/{name}/spare/**", timeout=180_000)
        expect(page.locator("#jp-sac-sidebar h2")).to_have_text("Agent spare", timeout=120_000)
    finally:
        shot("last")
        client_token = locals().get("token")
        if client_token:
            for slug in ("desk", "spare"):
                HubApi(base, client_token).sac("DELETE", f"users/{name}/agents/{slug}")
    assert not problems, problems
