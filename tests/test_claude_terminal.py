"""The Claude terminal: the real claude CLI in a named terminado terminal, driven
through the terminals websocket exactly as JupyterLab's Terminal widget does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import httpx
import pyte
import pytest
from helpers import HubApi, run_in_terminal, running_agent
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

pytestmark = pytest.mark.stack


class TerminalClient:
    """A terminals-websocket client with a screen model, like xterm.js in the browser."""

    def __init__(self, conn: WebSocketClientConnection, rows: int = 40, cols: int = 120):
        self.conn = conn
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self.closed = False

    @classmethod
    async def connect(
        cls, base: str, token: str, name: str = "claude", rows: int = 40, cols: int = 120
    ) -> TerminalClient:
        ws = base.replace("http", "ws", 1) + f"terminals/websocket/{name}"
        conn = await websocket_connect(HTTPRequest(ws, headers={"Authorization": f"token {token}"}))
        client = cls(conn, rows, cols)
        client.send(["set_size", rows, cols, rows * 16, cols * 8])
        return client

    def send(self, message: list) -> None:
        self.conn.write_message(json.dumps(message))

    def type(self, text: str) -> None:
        self.send(["stdin", text])

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    async def wait_for(
        self, predicate: Callable[[TerminalClient], bool], timeout: float, what: str
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closed:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{self.text()}")
            try:
                msg = await asyncio.wait_for(self.conn.read_message(), remaining)
            except TimeoutError:
                continue
            if msg is None:
                self.closed = True
                continue
            kind, *rest = json.loads(msg)
            if kind == "stdout":
                self.raw += rest[0]
                self.stream.feed(rest[0])

    def close(self) -> None:
        self.conn.close()


def _ready(t: TerminalClient) -> bool:
    # Claude Code's idle input box shows its shortcuts hint under the prompt line.
    return "? for shortcuts" in t.text() or "for shortcuts" in t.raw


@pytest.fixture
def fake(fake_anthropic: str) -> str:
    httpx.delete(fake_anthropic + "/_fake/requests")
    httpx.delete(fake_anthropic + "/_fake/script")
    return fake_anthropic


def _agent_fields(fake: str) -> dict[str, str]:
    return {"provider": "custom", "base_url": fake, "api_key": "sk-ant-real-provider-key-42"}


def _allow_all(client: HubApi, user: str, slug: str) -> None:
    resp = client.sac(
        "PUT", f"users/{user}/agents/{slug}/hitl-policy", json={"policy": {"default": "allow"}}
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.asyncio
async def test_claude_terminal_runs_tools_survives_reconnects_and_restarts(
    stack: dict, fake: str
) -> None:
    user = f"term{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "coder", **_agent_fields(fake)) as client:
        _allow_all(client, user, "coder")
        base = f"{stack['url']}user/{user}/coder/"
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
        await term.wait_for(_ready, 60, "claude's input box")
        term.type("please write the file")
        await asyncio.sleep(0.3)  # Ink treats text+Enter in one chunk as a paste
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
        await fresh.wait_for(_ready, 60, "claude's input box after restart")
        fresh.close()


@pytest.mark.asyncio
async def test_claude_config_is_seeded_with_hooks(stack: dict, fake: str) -> None:
    user = f"seed{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "cfg", **_agent_fields(fake)) as client:
        doc = httpx.get(
            f"{stack['url']}user/{user}/cfg/sac/api/openapi.json",
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
            assert "jupyter_sac.runtimes.claude_hook" in json.dumps(settings["hooks"][event])
        assert state["hasCompletedOnboarding"] is True
        assert state["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
