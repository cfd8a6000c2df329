"""The Claude terminal: the real claude CLI in a named terminado terminal, driven
through the terminals websocket exactly as JupyterLab's Terminal widget does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from helpers import (
    HubApi,
    TerminalClient,
    allow_all,
    claude_ready,
    model_agent,
    run_in_terminal,
    running_agent,
    script_model,
    server_url,
    stored_history,
)

from sac_testing.stack import embedded_stack, poll_until

pytestmark = pytest.mark.stack


@pytest.mark.asyncio
async def test_claude_terminal_runs_tools_survives_reconnects_and_restarts(
    stack: dict, fake: str
) -> None:
    user = f"term{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "coder", **model_agent(fake)) as client:
        allow_all(client, user, "coder")
        base = server_url(stack["url"], user, "coder")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)

        started = api.post(base + "sac/api/terminal")
        assert started.status_code == 200, started.text
        status = started.json()
        assert status["name"] == "claude" and status["running"] is True
        # Asking again does not start a second copy of the agent.
        assert api.post(base + "sac/api/terminal").json()["pid"] == status["pid"]
        assert [t["name"] for t in api.get(base + "api/terminals").json()] == ["claude"]

        httpx.post(
            fake + "/_fake/script",
            json={
                "replies": [
                    {
                        "tool_use": {
                            "name": "Bash",
                            "input": {
                                "command": "echo 漢字-ok > /workspace/from-claude.txt",
                                "description": "Write the file",
                            },
                        }
                    },
                    "All done: 完了 written",
                ]
            },
        )
        term = await TerminalClient.connect(base, client.token)
        await term.wait_for(claude_ready, 60, "claude's input box")
        term.type("please write the file")
        # Enter only once the text is echoed: Ink takes text+Enter in one chunk as a paste.
        await term.wait_for(lambda t: "please write the file" in t.text(), 20, "the typed prompt")
        term.type("\r")
        await term.wait_for(lambda t: "All done: 完了 written" in t.text(), 90, "the answer")
        content = api.get(base + "api/contents/from-claude.txt").json()
        assert content["content"].strip() == "漢字-ok"
        term.close()

        # Reconnect: the same process, its scrollback replayed (CJK intact).
        again = await TerminalClient.connect(base, client.token)
        await again.wait_for(lambda t: "完了 written" in t.text(), 30, "replayed scrollback")
        assert api.get(base + "sac/api/terminal").json()["pid"] == status["pid"]

        # Resize follows the (smallest) attached client.
        again.send(["set_size", 30, 100, 480, 800])
        await again.wait_for(
            lambda t: api.get(base + "sac/api/terminal").json()["cols"] == 100, 10, "resize"
        )
        assert api.get(base + "sac/api/terminal").json()["rows"] == 30
        again.close()

        restarted = api.post(base + "sac/api/terminal/restart").json()
        assert restarted["running"] is True and restarted["pid"] != status["pid"]
        assert restarted["restarts"] == 1
        fresh = await TerminalClient.connect(base, client.token)
        await fresh.wait_for(claude_ready, 60, "claude's input box after restart")
        fresh.close()


@pytest.mark.asyncio
async def test_a_terminal_made_by_the_name_claude_runs_claude(stack: dict, fake: str) -> None:
    """JupyterLab re-creates the terminals of its saved layout by name when a page
    loads (after an agent restart, before anything started Claude): the terminal it
    makes under the name "claude" is the Claude terminal, and the Claude Terminal
    command attaches to that one instead of leaving a plain shell there."""
    user = f"named{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "coder", **model_agent(fake)) as client:
        base = server_url(stack["url"], user, "coder")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        assert api.get(base + "sac/api/terminal").json()["running"] is False

        made = api.post(base + "api/terminals", json={"name": "claude", "cwd": ""})
        assert made.status_code == 200, made.text
        term = await TerminalClient.connect(base, client.token)
        await term.wait_for(claude_ready, 60, "claude's input box")
        pid = api.get(base + "sac/api/terminal").json()["pid"]
        status = api.post(base + "sac/api/terminal").json()
        assert status["running"] is True and status["pid"] == pid
        assert [t["name"] for t in api.get(base + "api/terminals").json()] == ["claude"]
        term.close()


@pytest.mark.asyncio
async def test_claude_config_is_seeded_with_hooks(stack: dict, fake: str) -> None:
    user = f"seed{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "cfg", **model_agent(fake)) as client:
        doc = httpx.get(
            server_url(stack["url"], user, "cfg") + "sac/api/openapi.json",
            headers={"Authorization": f"token {client.token}"},
        )
        assert doc.status_code == 200 and "/sac/api/terminal" in doc.json()["paths"]
        assert doc.json()["servers"] == [{"url": f"/user/{user}/cfg"}]
        out = await run_in_terminal(
            stack["url"],
            client.token,
            user,
            "cfg",
            "cat $CLAUDE_CONFIG_DIR/settings.json; echo; cat $CLAUDE_CONFIG_DIR/.claude.json",
        )
        settings_text, _, state_text = out.partition("\n{")
        settings = json.loads(settings_text)
        state = json.loads("{" + state_text)
        for event in ("PreToolUse", "UserPromptSubmit", "Stop", "SubagentStop", "SessionEnd"):
            (hook,) = settings["hooks"][event][0]["hooks"]
            assert hook["type"] == "http", hook
            assert hook["url"].endswith(f"/user/{user}/cfg/sac/api/hooks/" + (
                "pre-tool-use" if event == "PreToolUse" else "transcript"))  # fmt: skip
        assert settings["hooks"]["PreToolUse"][0]["hooks"][0]["onFailure"] == "block"
        assert state["hasCompletedOnboarding"] is True
        assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A stack of its own whose agents release an unwatched Claude terminal at once."""
    workdir = tmp_path_factory.mktemp("sac-idle")
    config = workdir / "idle.py"
    config.write_text('c.Spawner.args = ["--SacExtensionApp.terminal_idle_release=0.2"]\n')
    with embedded_stack(workdir, "idle-admin-password", extra_config=config) as running:
        yield {
            "url": running.url,
            "admin": HubApi(running.url, running.admin_token, running.harness_token),
        }


def _sent_with(fake: str, text: str) -> list[dict]:
    """The model requests whose messages contain ``text``."""
    sent = httpx.get(fake + "/_fake/requests").json()["requests"]
    return [r["body"] for r in sent if text in json.dumps(r["body"].get("messages", []))]


@pytest.mark.asyncio
async def test_an_unwatched_claude_terminal_is_released_and_resumed_on_attach(
    idle_stack: dict, fake: str
) -> None:
    """Nobody attached and nothing printed: claude is stopped (its memory freed).
    The next websocket starts it again on the same conversation: the screen shows
    it, the model gets the earlier turn, and the history holds every line once."""
    user = f"idle{uuid.uuid4().hex[:6]}"
    with running_agent(idle_stack["admin"], user, "coder", **model_agent(fake)) as client:
        base = server_url(idle_stack["url"], user, "coder")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        first = api.post(base + "sac/api/terminal").json()
        assert first["running"] is True and first["resumed"] is False
        # (Released again at once if no browser attached in time, the websocket
        # below then starts it again: a new conversation, as none was had yet.)

        script_model(fake, "Noted: the word is apricot")
        term = await TerminalClient.connect(base, client.token)
        await term.wait_for(claude_ready, 60, "claude's input box")
        term.type("remember the word apricot")
        await term.wait_for(lambda t: "the word apricot" in t.text(), 20, "the typed prompt")
        term.type("\r")
        await term.wait_for(lambda t: "Noted: the word is apricot" in t.text(), 90, "the answer")
        watched = api.get(base + "sac/api/terminal").json()
        assert watched["running"] is True and watched["clients"] == 1
        term.close()

        # Unwatched and quiet: released. The process is gone, the name stays listed.
        released = poll_until(
            lambda: (s := api.get(base + "sac/api/terminal").json())["released"] and s, 60,
            "the Claude terminal's release",
        )  # fmt: skip
        assert released["running"] is False and released["releases"] > watched["releases"]
        assert released["session_id"] == watched["session_id"]
        assert [t["name"] for t in api.get(base + "api/terminals").json()] == ["claude"]

        # Attaching (the terminal websocket, as JupyterLab does) starts claude again.
        script_model(fake, "Still here: apricot, then banana")
        again = await TerminalClient.connect(base, client.token)
        await again.wait_for(
            lambda t: "Noted: the word is apricot" in t.text() and claude_ready(t), 60,
            "the conversation redrawn",
        )  # fmt: skip
        resumed = api.get(base + "sac/api/terminal").json()
        assert resumed["running"] is True and resumed["resumed"] is True
        assert resumed["pid"] != watched["pid"]
        assert resumed["session_id"] == watched["session_id"]
        again.type("and now banana")
        await again.wait_for(lambda t: "now banana" in t.text(), 20, "the second prompt")
        again.type("\r")
        await again.wait_for(lambda t: "apricot, then banana" in t.text(), 90, "the answer")
        again.close()
        # The model was given the earlier turn with the new one.
        (asked, *_) = _sent_with(fake, "and now banana")
        assert "remember the word apricot" in json.dumps(asked["messages"])
        assert "Noted: the word is apricot" in json.dumps(asked["messages"])

        # Every transcript line stored exactly once, across the releases (the second:
        # nobody attached again; claude's last lines as it exits are in the history).
        poll_until(
            lambda: api.get(base + "sac/api/terminal").json()["releases"] > released["releases"],
            60, "the second release",
        )  # fmt: skip
        transcripts = "cat $CLAUDE_CONFIG_DIR/projects/*/*.jsonl 2>/dev/null"
        text = await run_in_terminal(idle_stack["url"], client.token, user, "coder", transcripts)
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert {e.get("sessionId") for e in lines if e.get("uuid")} == {watched["session_id"]}
        keys = {(e["sessionId"], e["uuid"]) for e in lines if e.get("uuid")}

        def stored_all() -> list | None:
            events = stored_history(client, user, "coder")
            return events if len(events) >= len(lines) else None

        events = poll_until(stored_all, 60, "history rows for every transcript line")
        assert len(events) == len(lines)
        assert keys <= {(e["session_id"], e["uuid"]) for e in events}
