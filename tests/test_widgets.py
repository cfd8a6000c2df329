"""jupyter_sac.widgets in a real IPython kernel against the running stack.

Each test starts a kernel (nbclient) whose environment carries the hub's URL and
a test user's token, exactly as an agent's own server does; the widgets are made
and driven there the way a user would (setting values, clicking buttons), and
what they show is read back from the widget models as JSON. The agents run the
real claude CLI against the scripted fake model."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from helpers import HubApi, allow_all, model_agent, run_in_terminal, running_agent, script_model
from nbclient import NotebookClient

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack

# How long a widget may take to show something that needs the agent (a start, a
# turn of the real CLI): generous, since the machine may be busy; never a measure.
WAIT = 180

# Run once in every kernel: the widgets, and small readers for the assertions.
SETUP = """
import html, json, re, threading
# This kernel runs on the host, not in a sandbox (whose /etc/hosts names the hub's,
# the service's and the user's hosts): resolve *.localhost as a browser would.
from jupyter_sac.localhost import resolve_localhost
resolve_localhost()
from jupyter_sac.client import Client
from jupyter_sac.widgets import AgentChat, AgentsPanel, ApprovalsPanel, SkillRunner

def text(widget):
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))

def sac_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("sac-"))
"""


class Kernel:
    """A running IPython kernel; code runs in it cell by cell."""

    def __init__(self, client: NotebookClient, nb: Any):
        self.client, self.nb = client, nb

    def run(self, code: str) -> str:
        """Execute a cell (an exception in it fails the test); its stdout."""
        cell = nbformat.v4.new_code_cell(code)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return "".join(
            out.get("text", "")
            for out in cell.outputs
            if out.get("output_type") == "stream" and out.get("name") == "stdout"
        )

    def value(self, expr: str) -> Any:
        """The value of a Python expression in the kernel, through JSON."""
        out = self.run(f"print('@@' + json.dumps({expr}, default=str))")
        return json.loads(out[out.rindex("@@") + 2 :])

    def until(self, expr: str, what: str, timeout: float = WAIT) -> Any:
        """Evaluate ``expr`` cell by cell (the kernel applies widget updates between
        cells) until it is truthy; its value."""
        last: list[Any] = []

        def check() -> Any:
            last[:] = [self.value(expr)]
            return last[0]

        try:
            return poll_until(check, timeout, what)
        except TimeoutError as e:
            raise AssertionError(f"{e}; last value of {expr!r}: {last!r}") from None


@contextmanager
def kernel(stack: dict, token: str, cwd: Path) -> Iterator[Kernel]:
    env = {**os.environ, "SAC_HUB_URL": stack["url"], "JUPYTERHUB_API_TOKEN": token}
    nb = nbformat.v4.new_notebook()
    client = NotebookClient(
        nb, kernel_name="python3", timeout=WAIT, resources={"metadata": {"path": str(cwd)}}
    )
    with client.setup_kernel(env=env):
        running = Kernel(client, nb)
        running.run(SETUP)
        yield running


def bash(command: str, text: str = "") -> dict[str, Any]:
    return {"text": text, "tool_use": {"name": "Bash", "input": {"command": command}}}


def workspace(stack: dict, slug: str) -> Path:
    (root,) = (stack["data_dir"] / "agents").glob(f"*-{slug}")
    return root / "workspace"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


# ---- AgentsPanel ---------------------------------------------------------------------


def test_agents_panel_lists_stops_starts_and_creates(stack: dict, tmp_path: Path) -> None:
    user, slug = unique("wpanel"), unique("panel-")
    admin: HubApi = stack["admin"]
    with running_agent(admin, user, slug, api_key="sk-unused-key") as hub:
        # The kernel's own token, to be revoked at the end.
        made = admin.harness_api().hub("POST", f"users/{user}/tokens", json={"note": "kernel"})
        token = made.json()
        with kernel(stack, token["token"], tmp_path) as k:
            check_agents_panel(stack, hub, user, slug, k, token["id"])


def check_agents_panel(stack: dict, hub: HubApi, user: str, slug: str, k: Kernel,
                       token_id: str) -> None:  # fmt: skip
    k.run("panel = AgentsPanel()")
    k.until(f"[(r.slug, r.state.value) for r in panel.rows] == [({slug!r}, 'running')]",
            "the started agent listed as running")  # fmt: skip
    k.run(f"row = panel.row({slug!r})")
    shown = k.value(
        "{'model': row.model.value, 'link': row.open_link.value, 'name': text(row.name),"
        " 'start': row.start_button.disabled, 'stop': row.stop_button.disabled}"
    )
    assert shown["model"].startswith("anthropic/") and shown["name"] == slug
    assert f'href="{stack["url"]}user/{user}/{slug}/lab"' in shown["link"]
    assert shown["start"] is True and shown["stop"] is False
    console = k.value("repr(panel)")
    assert slug in console and "running" in console and "VBox" not in console

    # Stop, as a user clicks it: the hub stops the server, the row says so.
    k.run("row.stop_button.click()")
    k.until("row.state.value == 'stopped' and not row.working", "the agent stopped")
    assert hub.server(user, slug) is None
    assert k.value("[row.start_button.disabled, row.stop_button.disabled]") == [False, True]

    # Start again: pending at once, the hub's progress in the row, then running.
    k.run("row.start_button.click()")
    assert k.value("row.state.value") == "pending"
    k.until("row.state.value == 'running' and not row.working", "the agent started")
    assert hub.server(user, slug)["ready"]
    progress = k.value("row.progress")
    # (After a stop the hub forgets the server until the start request is taken in:
    # its progress stream answers 404 before that, which the client must wait out.)
    assert progress and any("Agent" in message for message in progress), k.value("text(row.status)")
    assert k.value("text(row.status)") == "started"

    # Create: a refused slug shows the service's message; a good one is listed.
    k.run("panel.slug_input.value = 'Not A Slug'\npanel.create_button.click()")
    refused = k.until("not panel.create_button.disabled and text(panel.create_status)",
                      "the refusal")  # fmt: skip
    assert "HTTP 400, invalid_slug" in refused and "Traceback" not in refused
    second = unique("second-")
    k.run(
        f"panel.slug_input.value = {second!r}\n"
        "panel.model_input.value = 'claude-test-model'\n"
        "panel.create_button.click()"
    )
    k.until(f"panel.row({second!r}) is not None", "the new agent listed")
    assert k.value(f"[panel.row({second!r}).state.value, panel.row({second!r}).model.value]") == [
        "stopped", "anthropic/claude-test-model"
    ]  # fmt: skip
    assert k.value("[panel.slug_input.value, text(panel.create_status)]") == [
        "", f"created {second}"
    ]  # fmt: skip

    # From a template: the shipped ones are offered; the agent records it.
    assert "code-assistant" in k.value("[v for _, v in panel.template_input.options]")
    third = unique("third-")
    k.run(
        f"panel.slug_input.value = {third!r}\n"
        "panel.template_input.value = 'code-assistant'\n"
        "panel.create_button.click()"
    )
    k.until(f"panel.row({third!r}) is not None", "the agent from a template listed")
    made = hub.sac("GET", f"users/{user}/agents/{third}").json()
    assert made["template"]["name"] == "code-assistant"
    assert k.value("panel.template_input.value") == ""
    assert hub.sac("DELETE", f"users/{user}/agents/{third}").status_code == 204

    # Refresh: an agent deleted elsewhere goes.
    assert hub.sac("DELETE", f"users/{user}/agents/{second}").status_code == 204
    k.run("panel.refresh_button.click()")
    k.until(f"[r.slug for r in panel.rows] == [{slug!r}]", "the list without it")

    # A refusal shows in the row as the service's message, not a traceback (here the
    # agent was deleted elsewhere meanwhile); the row keeps the agent's last state.
    assert hub.sac("DELETE", f"users/{user}/agents/{slug}").status_code == 204
    k.run("row.stop_button.click()")
    failed = k.until("not row.working and text(row.status)", "the refused stop")
    assert failed == "no such agent (HTTP 404, not_found)", failed
    assert k.value("[row.state.value, row.stop_button.disabled]") == ["running", False]
    # A revoked token: the hub refuses it at once (the service may go on trusting it
    # for up to its identity cache's minute; docs/security.md).
    resp = stack["admin"].harness_api().hub("DELETE", f"users/{user}/tokens/{token_id}")
    assert resp.status_code == 204, resp.text
    k.run("panel.refresh_button.click()")
    listing = k.until("text(panel.status)", "the refused listing")
    assert "HTTP 403" in listing, listing


# ---- AgentChat -----------------------------------------------------------------------


def test_agent_chat_streams_text_tools_todos_and_cost(
    stack: dict, fake: str, tmp_path: Path
) -> None:
    user, slug = unique("wchat"), unique("talk-")
    todos = [
        {"content": "write chat.txt", "status": "in_progress", "activeForm": "Writing chat.txt"},
        {"content": "say so", "status": "pending", "activeForm": "Saying so"},
    ]
    with (
        running_agent(stack["admin"], user, slug, **model_agent(fake)) as hub,
        kernel(stack, hub.token, tmp_path) as k,
    ):
        allow_all(hub, user, slug)
        script_model(
            fake,
            {"text": "Planning.", "tool_use": {"name": "TodoWrite", "input": {"todos": todos}}},
            bash("echo from-widget | tee /workspace/chat.txt", "Writing it."),
            "The file is written.",
            "You asked me to write chat.txt.",
        )
        k.run(
            f"chat = AgentChat(Client().agent({slug!r}))\n"
            "chat.prompt.value = 'write chat.txt'\n"
            "chat.send_button.click()"
        )
        # Sent: the box is cleared, Send is off and Cancel shows while the turn runs.
        assert k.value(
            "[chat.running, chat.prompt.value, chat.send_button.disabled,"
            " chat.cancel_button.layout.display]"
        ) == [True, "", True, ""]  # fmt: skip
        k.until("not chat.running", "the turn to end")
        items = k.value("[[i.kind, i.text] for i in chat.items]")
        assert [kind for kind, _ in items] == [
            "prompt", "text", "tool", "todos", "text", "tool", "text", "result"
        ], items  # fmt: skip
        assert items[0][1] == "write chat.txt" and items[1][1] == "Planning."
        assert items[6][1] == "The file is written."
        assert k.value("chat.cancel_button.layout.display") == "none"

        # Each tool call: collapsed, titled with the tool and its input; input and result.
        call = k.value(
            "(lambda c: {'name': c.name, 'title': c.widget.titles[0], 'input': text(c.input_view),"
            " 'result': text(c.result_view), 'collapsed': c.widget.selected_index is None,"
            " 'error': c.is_error})(chat.items[5])"
        )
        assert call["name"] == "Bash" and call["collapsed"] and call["error"] is False
        assert call["title"].startswith("✓ Bash: echo from-widget")
        assert "echo from-widget | tee /workspace/chat.txt" in call["input"]
        assert call["result"].startswith("Result") and "from-widget" in call["result"]
        assert k.value("chat.items[2].name") == "TodoWrite"
        assert (workspace(stack, slug) / "chat.txt").read_text() == "from-widget\n"

        # The todo list, and the turn's cost and tokens from its result event.
        assert items[3][1] == "Todo:\n◐ Writing chat.txt\n☐ say so"
        assert "◐ Writing chat.txt" in k.value("text(chat.items[3].widget)")
        result = k.value("chat.last_result")
        assert result["cost_usd"] > 0 and result["usage"]["input_tokens"] > 0
        line = items[7][1]
        assert line.startswith("done · ") and f"${result['cost_usd']:.4f}" in line
        assert f"{result['usage']['input_tokens']} in / " in line and "tokens" in line

        # A follow-up continues the same conversation.
        session = k.value("chat.session_id")
        k.run("chat.prompt.value = 'what did I ask?'\nchat.send_button.click()")
        k.until("not chat.running", "the second turn to end")
        assert k.value("chat.session_id") == session
        assert k.value("[i.text for i in chat.items[-3:]]")[:2] == [
            "what did I ask?", "You asked me to write chat.txt."
        ]  # fmt: skip
        console = k.value("repr(chat)")
        assert "You: write chat.txt" in console and f"{slug}: The file is written." in console
        assert "[tool] Bash: echo from-widget" in console and "VBox" not in console

        # Cancel stops a running turn.
        # Not a standalone sleep: Claude Code refuses those under the SDK.
        script_model(fake, bash("echo waiting; sleep 600", "Waiting."))
        count = len(k.value("chat.items"))
        k.run("chat.prompt.value = 'wait'\nchat.send_button.click()")
        k.until(
            f"any(i.kind == 'tool' and 'sleep 600' in i.text for i in chat.items[{count}:])",
            "the long tool call",
        )
        k.run("chat.cancel_button.click()")
        k.until("not chat.running", "the cancelled turn to end")
        kinds = k.value(f"[i.kind for i in chat.items[{count}:]]")
        assert "cancelled" in kinds, k.value(f"[[i.kind, i.text] for i in chat.items[{count}:]]")

        # A new conversation, and a failure shown as the service's message.
        k.run("chat.new_button.click()")
        assert k.value("chat.session_id") is None
        k.run("lost = AgentChat(Client().agent('no-such-agent'))\nlost.submit('hello')")
        k.until("not lost.running", "the failed turn")
        errors = k.value("[i.text for i in lost.items if i.kind == 'error']")
        assert len(errors) == 1 and "HTTP 4" in errors[0] and "Traceback" not in errors[0]


# ---- ApprovalsPanel ------------------------------------------------------------------


def sandbox_tokens(stack: dict, hub: HubApi, user: str, slug: str) -> tuple[str, str]:
    """The agent's own token for the service, and its server's hub token."""
    out = asyncio.run(
        run_in_terminal(stack["url"], hub.token, user, slug,
                        "echo $SAC_AGENT_TOKEN; echo $JUPYTERHUB_API_TOKEN")
    )  # fmt: skip
    agent_token, hub_token = out.split()
    return agent_token, hub_token


def test_approvals_panel_decides_live(stack: dict, fake: str, tmp_path: Path) -> None:
    user, slug = unique("wgate"), unique("gate-")
    with (
        running_agent(stack["admin"], user, slug, drive_agents=True, **model_agent(fake)) as hub,
        kernel(stack, hub.token, tmp_path) as k,
    ):
        policy = {"policy": {"default": "ask", "allow": [], "ask": [], "deny": []}}
        resp = hub.sac("PUT", f"users/{user}/agents/{slug}/hitl-policy", json=policy)
        assert resp.status_code == 200, resp.text
        script_model(fake, bash("echo approved > /workspace/approved.txt"), "Done after approval.")

        # A chat turn whose tool needs a human; the panel shows the request.
        k.run(f"chat = AgentChat(Client().agent({slug!r}))\nbefore = set(threading.enumerate())")
        k.run("panel = ApprovalsPanel(interval=0.2)\nchat.submit('write approved.txt')")
        k.until("len(panel.rows) == 1", "the request in the panel")
        shown = k.value(
            "(lambda r: {'id': r.id, 'agent': r.agent.value, 'tool': r.tool.value,"
            " 'input': text(r.input_view), 'option': r.option is None})(panel.rows[0])"
        )
        assert shown["agent"] == slug and shown["tool"] == "Bash" and shown["option"]
        assert shown["input"] == "echo approved > /workspace/approved.txt"
        assert "Bash" in k.value("repr(panel)") and "echo approved" in k.value("repr(panel)")

        # Approve: the tool runs, the turn completes, the row goes.
        k.run("panel.rows[0].approve_button.click()")
        k.until("not chat.running", "the approved turn to end")
        assert k.value("[i.text for i in chat.items if i.kind == 'text']") == [
            "Done after approval."
        ]
        assert (workspace(stack, slug) / "approved.txt").read_text() == "approved\n"
        decided = hub.sac("GET", f"hitl/requests/{shown['id']}").json()
        assert decided["status"] == "approved" and decided["decided_by"] == user
        k.until("panel.rows == []", "the decided request dropped")

        # Its policy section: the agent's policy, checked by the service as it is
        # typed, and saved with the person's token.
        k.run("ed = panel.policies\nimport json")
        k.until(f"ed.agent.value == {slug!r} and ed.policy is not None", "the policy loaded")
        assert k.value("json.loads(ed.text.value)") == policy["policy"]
        k.run("ed.text.value = json.dumps({'default': 'ask', 'allow': ['Bash(git *']})")
        broken = k.until("'HTTP' in text(ed.check) and text(ed.check)", "the broken rule reported")
        assert "allow" in broken and "HTTP 400" in broken, broken
        k.run("ed.text.value = '{\"default\": '")
        assert "not JSON" in k.until("'JSON' in text(ed.check) and text(ed.check)", "bad JSON")
        k.run("ed.text.value = json.dumps({'default': 'ask', 'allow': ['Read', 'Bash(ls:*)']})")
        k.until("'valid policy' in text(ed.check)", "the valid policy")
        # Checking stored nothing.
        stored = hub.sac("GET", f"users/{user}/agents/{slug}/hitl-policy").json()["policy"]
        assert stored == policy["policy"]
        k.run("ed.save()")
        k.until("'saved' in text(ed.status)", "the policy saved")
        stored = hub.sac("GET", f"users/{user}/agents/{slug}/hitl-policy").json()["policy"]
        assert stored["allow"] == ["Read", "Bash(ls:*)"] and stored["default"] == "ask"

        # The refresher stops; refresh() still polls once.
        k.run("panel.stop()")
        k.until("not panel.refreshing", "the refresher to end")
        agent_token, sandbox_hub_token = sandbox_tokens(stack, hub, user, slug)
        sandbox = httpx.Client(base_url=stack["service_url"] + "api/", timeout=60,
                               headers={"Authorization": f"Bearer {agent_token}"})  # fmt: skip

        def file(**body: Any) -> str:
            filed = sandbox.post("hitl/requests", json={"kind": "tool", "tool": "Bash", **body})
            assert filed.status_code == 201, filed.text
            return filed.json()["id"]

        # A terminal prompt: its question, its options, and the one picked.
        options = [{"key": "1", "label": "Yes"},
                   {"key": "2", "label": "Yes, allow all edits during this session"},
                   {"key": "3", "label": "No"}]  # fmt: skip
        prompt_id = file(kind="terminal", tool="claude", options=options,
                         question="Do you want to make this edit to notes.md?",
                         input={"screen": "…"})  # fmt: skip
        k.run("panel.refresh()")
        k.until(f"panel.row({prompt_id!r}) is not None", "the terminal prompt")
        k.run(f"row = panel.row({prompt_id!r})")
        assert k.value("[list(o) for o in row.option.options]") == [
            ["1. Yes", "1"], ["2. Yes, allow all edits during this session", "2"], ["3. No", "3"]
        ]  # fmt: skip
        view = k.value("text(row.input_view)")
        assert "Do you want to make this edit to notes.md?" in view and "No" in view
        k.run("row.option.value = '2'\nrow.reason.value = 'fine'\nrow.approve_button.click()")
        assert k.until("row.decision", "the decision") == "approved"
        decided = hub.sac("GET", f"hitl/requests/{prompt_id}").json()
        assert [decided["status"], decided["option"], decided["reason"]] == [
            "approved",
            "2",
            "fine",
        ]

        # A prompt that takes text: an answer field, and what is typed there is the answer.
        text_id = file(kind="terminal", tool="claude", text_max=60, question="Enter a name:",
                       options=[{"key": "\r", "label": "Press Enter"}],
                       input={"screen": "…"})  # fmt: skip
        k.run("panel.refresh()")
        k.until(f"panel.row({text_id!r}) is not None", "the prompt that takes text")
        k.run(f"row = panel.row({text_id!r})\nrow.answer.value = 'Q4 report'")
        k.run("row.approve_button.click()")
        assert k.until("row.decision", "the decision") == "approved"
        assert "Q4 report" in k.value("text(row.status)")
        decided = hub.sac("GET", f"hitl/requests/{text_id}").json()
        assert [decided["text"], decided["option"]] == ["Q4 report", None]

        # Decided elsewhere first: the 409 shows in the row, which stays until dismissed.
        late_id = file(input={"command": "make deploy"})
        k.run("panel.refresh()")
        k.until(f"panel.row({late_id!r}) is not None", "the second request")
        resp = hub.sac("POST", f"hitl/requests/{late_id}/decision", json={"decision": "deny"})
        assert resp.status_code == 200, resp.text
        k.run(f"late = panel.row({late_id!r})\nlate.approve_button.click()")
        refused = k.until("late.settled and text(late.status)", "the 409")
        assert refused == "the request is already denied (HTTP 409, already_decided)"
        assert k.value("[late.approve_button.disabled, late.dismiss_button.layout.display]") == [
            True, ""
        ]  # fmt: skip
        k.run("late.dismiss_button.click()")
        assert k.value(f"panel.row({late_id!r}) is None") is True

        # The token of the agent's own sandbox (which may drive the owner's agents) never
        # decides: its rows have no buttons but a link to decide on the service's page,
        # and deciding anyway is refused.
        own_id = file(input={"command": "curl example.org"})
        k.run(
            f"own_client = Client(url={stack['url']!r}, token={sandbox_hub_token!r})\n"
            "own = ApprovalsPanel(own_client, interval=0.2)"
        )
        k.until(f"own.row({own_id!r}) is not None", "the request in the sandbox's panel")
        k.run(f"mine = own.row({own_id!r})")
        assert k.value("own.can_decide") is False
        assert k.value("[mine.approve_button.layout.display, mine.deny_button.layout.display]"
                       ) == ["none", "none"]  # fmt: skip
        link = k.value("mine.review.value")
        assert f'/services/sac/approvals/{own_id}"' in link and 'target="_blank"' in link
        assert "Review and decide on SAC" in link
        # Nor may it change a policy (an agent must not loosen its own): no Save, a
        # link to the agent's page where its person does.
        k.until("own.policies.agent.value is not None", "the sandbox's policy editor")
        k.until("'by a person' in text(own.policies.status)", "the hand-over")
        assert k.value("own.policies.save_button.layout.display") == "none"
        assert k.value("own.policies.text.layout.display") == "none"
        assert f"/services/sac/agents/{user}/" in k.value("own.policies.link.value")
        k.run("mine.approve()")
        refused = k.until("text(mine.status) if mine.settled else ''", "the 403")
        assert "may not decide approvals" in refused and "HTTP 403" in refused
        assert hub.sac("GET", f"hitl/requests/{own_id}").json()["status"] == "pending"
        hub.sac("POST", f"hitl/requests/{own_id}/decision", json={"decision": "deny"})
        # Closed, the panels leave no thread behind (the refresher, the work, the
        # client the first panel made for itself).
        assert k.value("own.refreshing") is True
        k.run("own.close()\nown_client.close()\npanel.close()")
        k.until(
            "[t.name for t in threading.enumerate() if t not in before"
            " and t.name.startswith('sac-')] == []",
            "the panels' threads to end",
        )
        assert k.value("own.refreshing") is False


# ---- SkillRunner ---------------------------------------------------------------------

BODY = "---\nname: x\ndescription: x\n---\n\n# Plot a column\n\nRead the file and plot it.\n"


def test_skill_runner_builds_the_form_and_runs(stack: dict, fake: str, tmp_path: Path) -> None:
    user, slug = unique("wskill"), unique("skills-")
    command = unique("plot-")
    skill = {
        "command": command,
        "title": "Plot a column",
        "description": "Plots one column of a CSV.",
        "body": BODY,
        "parameters": [
            {"name": "file", "type": "text", "required": True, "help": "CSV path"},
            {"name": "since", "type": "date", "help": "First day"},
            {"name": "style", "type": "select", "options": ["bar", "line"], "default": "bar"},
            {"name": "bins", "type": "number", "default": 10, "min": 1, "max": 100},
            {"name": "scale", "type": "number", "min": 0.5, "max": 2.5},
        ],
        "prompt": "Plot {{file}} as a {{style}} chart with {{bins}} bins since {{since}}"
        " at scale {{scale}}.",
    }
    with (
        running_agent(stack["admin"], user, slug, **model_agent(fake)) as hub,
        kernel(stack, hub.token, tmp_path) as k,
    ):
        allow_all(hub, user, slug)
        created = hub.sac("POST", "skills", json=skill)
        assert created.status_code == 201, created.text
        installed = hub.sac("POST", f"users/{user}/agents/{slug}/skills",
                            json={"skill_id": created.json()["id"]})  # fmt: skip
        assert installed.status_code == 201, installed.text

        k.run(f"runner = SkillRunner(Client().agent({slug!r}))")
        k.until("list(runner.fields)", "the form of the first skill")
        assert k.value("runner.skill_picker.value") == command
        assert k.value("text(runner.description)") == "Plots one column of a CSV. (version 1)"
        form = k.value(
            "{n: {'widget': type(f.input).__name__, 'label': f.input.description,"
            " 'value': f.input.value, 'tooltip': f.input.tooltip,"
            " 'options': list(getattr(f.input, 'options', [])),"
            " 'min': getattr(f.input, 'min', None), 'max': getattr(f.input, 'max', None)}"
            " for n, f in runner.fields.items()}"
        )
        assert form["file"] == {"widget": "Text", "label": "file *", "value": "",
                                "tooltip": "CSV path", "options": [], "min": None,
                                "max": None}  # fmt: skip
        assert form["since"]["widget"] == "DatePicker" and form["since"]["value"] is None
        assert form["since"]["tooltip"] == "First day" and form["since"]["label"] == "since"
        assert form["style"]["widget"] == "Dropdown"
        assert form["style"]["options"] == ["bar", "line"] and form["style"]["value"] == "bar"
        assert form["bins"]["widget"] == "BoundedIntText"
        assert [form["bins"]["value"], form["bins"]["min"], form["bins"]["max"]] == [10, 1, 100]
        assert form["scale"]["widget"] == "BoundedFloatText"
        assert [form["scale"]["min"], form["scale"]["max"]] == [0.5, 2.5]
        # The number box keeps to the skill's range, as the browser's would.
        k.run("runner.fields['bins'].input.value = 1000")
        assert k.value("runner.fields['bins'].input.value") == 100
        console = k.value("repr(runner)")
        assert f"/{command} (v1): file* (text), since (date)" in console and "VBox" not in console

        # The required file left empty: the agent's refusal shows beside that input.
        k.run("runner.run_button.click()")
        k.until("not runner.running", "the refused run")
        errors = k.value("{n: text(f.error) for n, f in runner.fields.items()}")
        assert errors == {"file": "required", "since": "", "style": "", "bins": "",
                          "scale": ""}  # fmt: skip
        assert k.value("text(runner.status)") == "file: required"

        # Good values: the run's answer.
        script_model(fake, "Plotted data.csv.")
        httpx.delete(fake + "/_fake/requests")
        k.run(
            "import datetime\n"
            "runner.fields['file'].input.value = 'data.csv'\n"
            "runner.fields['since'].input.value = datetime.date(2026, 3, 1)\n"
            "runner.fields['style'].input.value = 'line'\n"
            "runner.fields['bins'].input.value = 20\n"
            "runner.run_button.click()"
        )
        assert k.value("text(runner.fields['file'].error)") == ""
        k.until("not runner.running", "the run")
        assert k.value("runner.values()") == {
            "file": "data.csv", "since": "2026-03-01", "style": "line", "bins": 20
        }  # fmt: skip
        answer = k.value("text(runner.answer_view)")
        assert answer.startswith("Plotted data.csv."), answer
        assert k.value("text(runner.status)").startswith("done")
        sent = [r["body"] for r in httpx.get(fake + "/_fake/requests").json()["requests"]
                if r["body"].get("tools")]  # fmt: skip
        wanted = "Plot data.csv as a line chart with 20 bins since 2026-03-01 at scale (not given)."
        assert any(wanted in json.dumps(body["messages"]) for body in sent)
        assert "Answer: Plotted data.csv." in k.value("repr(runner)")

        # The skill is changed: the runner keeps the installed version and offers the
        # new one; taking it brings the new version's form.
        assert k.value("runner.update_button.layout.display") == "none"
        changed = hub.sac("PATCH", f"skills/{created.json()['id']}",
                          json={"description": "Plots a column, better.", "prompt": "Plot {{file}}.",
                                "parameters": skill["parameters"][:1]})  # fmt: skip
        assert changed.status_code == 200 and changed.json()["version"] == 2, changed.text
        k.run("runner.refresh()")
        k.until("runner.update_button.layout.display != 'none'", "the update offer")
        assert k.value("runner.update_button.description") == "Update to v2"
        assert k.value("text(runner.description)") == (
            "Plots one column of a CSV. (version 1, v2 available)"
        )
        assert len(k.value("list(runner.fields)")) == 5
        assert f"/{command} (v1, v2 available):" in k.value("repr(runner)")
        k.run("runner.update_button.click()")
        k.until("list(runner.fields) == ['file']", "the new version's form")
        assert k.value("text(runner.description)") == "Plots a column, better. (version 2)"
        assert k.value("runner.update_button.layout.display") == "none"
        [now] = hub.sac("GET", f"users/{user}/agents/{slug}/skills").json()["skills"]
        assert (now["installed_version"], now["update_available"]) == (2, False)


# ---- a plain console -----------------------------------------------------------------

CONSOLE = """
import json, sys, threading
from IPython.lib.pretty import pretty
from jupyter_sac.localhost import resolve_localhost
resolve_localhost()  # on the host, not in a sandbox: *.localhost as a browser has it
from jupyter_sac.client import Client
from jupyter_sac.widgets import AgentChat, AgentsPanel, ApprovalsPanel, SkillRunner

client = Client()
agent = client.agent(sys.argv[1])
panel, approvals = AgentsPanel(), ApprovalsPanel(client)
chat, runner = AgentChat(agent), SkillRunner(agent)
chat.submit("hello")
chat.wait()
out = {name: repr(widget) for name, widget in
       [("agents", panel), ("approvals", approvals), ("chat", chat), ("skills", runner)]}
out["pretty"] = pretty(panel) == out["agents"]
out["bundle"] = panel._repr_mimebundle_()["text/plain"] == out["agents"]
for widget in (panel, approvals, chat, runner):
    widget.close()
client.close()
for thread in threading.enumerate():
    if thread.name.startswith("sac-"):
        thread.join(60)
out["threads"] = [t.name for t in threading.enumerate() if t.name.startswith("sac-")]
print(json.dumps(out))
"""


def test_widgets_print_readable_text_in_a_plain_console(stack: dict, fake: str) -> None:
    import subprocess
    import sys

    user, slug = unique("wcons"), unique("console-")
    with running_agent(stack["admin"], user, slug, **model_agent(fake)) as hub:
        assert hub.sac("POST", f"users/{user}/agents/{slug}/skills",
                       json={"skill_id": skill_id(hub, "summarise-csv")}).status_code == 201  # fmt: skip
        agent_token, _ = sandbox_tokens(stack, hub, user, slug)
        filed = httpx.post(
            stack["service_url"] + "api/hitl/requests",
            headers={"Authorization": f"Bearer {agent_token}"},
            json={"kind": "tool", "tool": "Bash", "input": {"command": "make deploy"}},
        )
        assert filed.status_code == 201, filed.text
        script_model(fake, "Hello from the console.")
        env = {**os.environ, "SAC_HUB_URL": stack["url"], "JUPYTERHUB_API_TOKEN": hub.token}
        done = subprocess.run([sys.executable, "-c", CONSOLE, slug], env=env, timeout=WAIT,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
    assert out["agents"].splitlines() == [
        f"SAC agents at {stack['url']}",
        f"  {'agent':<20} {'state':<8} provider/model",
        f"  {slug:<20} {'running':<8} custom/claude-sonnet-4-5",
    ]
    assert out["approvals"].splitlines() == [
        "Waiting for approval (1):",
        f"  {slug:<16} {'Bash':<10} make deploy",
    ]
    chat = out["chat"].splitlines()
    assert chat[0].startswith(f"Chat with {slug} (session ")
    assert chat[1:3] == ["  You: hello", f"  {slug}: Hello from the console."]
    assert chat[3].startswith("  done · ") and len(chat) == 4
    assert out["skills"].splitlines() == [
        f"Skills of {slug}",
        " */summarise-csv (v1): file* (text), target (text), max_plots (number)",
    ]
    assert out["pretty"] and out["bundle"]
    assert out["threads"] == []


def skill_id(hub: HubApi, command: str) -> int:
    found = hub.sac("GET", "skills", params={"q": command}).json()["skills"]
    return next(s["id"] for s in found if s["command"] == command)
