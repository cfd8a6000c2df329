"""Exec and screen through the `sac` service, on the real stack: commands run in a
real sandbox (NDJSON and WebSocket), the owner's exec_enabled setting, who may,
what the audit log keeps, and the Claude terminal's screen with the prompt
detector's verdict on a real claude's permission menu."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    CHROMIUM_ARGS,
    HubApi,
    TerminalClient,
    claude_ready,
    model_agent,
    running_agent,
    server_url,
    sign_up_and_log_in,
)
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from sac_testing.stack import find_descendant, poll_until, process_environ

pytestmark = pytest.mark.stack


def run(client: HubApi, user: str, slug: str, **body: Any) -> list[dict[str, Any]]:
    """POST .../exec: every frame of the NDJSON answer."""
    resp = client.sac("POST", f"users/{user}/agents/{slug}/exec", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


def output(frames: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(f["data"] for f in frames if f.get("stream") == stream)


def audit(admin: HubApi, user: str, action: str) -> list[dict[str, Any]]:
    resp = admin.sac("GET", "audit", params={"user": user, "action": action})
    assert resp.status_code == 200, resp.text
    return resp.json()["entries"]


def alive(client: HubApi, user: str, slug: str, pid: str) -> bool:
    """Whether process ``pid`` still runs in the sandbox (asked with exec itself)."""
    return output(run(client, user, slug, command=f"kill -0 {pid} && echo alive || true")) == (
        "alive\n"
    )


async def exec_socket(client: HubApi, user: str, slug: str, token: str | None = None
                      ) -> WebSocketClientConnection:  # fmt: skip
    url = client.service_url + f"api/users/{user}/agents/{slug}/exec/ws"
    headers = {"Authorization": f"token {token or client.token}"}
    return await websocket_connect(HTTPRequest(url.replace("http", "ws", 1), headers=headers))


async def frames_until_end(conn: WebSocketClientConnection) -> list[dict[str, Any]]:
    frames = []
    while (message := await asyncio.wait_for(conn.read_message(), 60)) is not None:
        frames.append(json.loads(message))
    return frames


def test_exec_runs_commands_and_streams_their_output_as_ndjson(stack: dict, fake: str) -> None:
    user = f"ex{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "box", **model_agent(fake)) as client:
        frames = run(client, user, "box", command="echo hello; echo oops >&2; exit 3")
        assert output(frames) == "hello\n" and output(frames, "stderr") == "oops\n"
        assert [f["seq"] for f in frames[:-1]] == list(range(len(frames) - 1))
        assert frames[-1]["exit_code"] == 3 and "error" not in frames[-1]

        # A list is the program and its arguments, run as they are (no shell).
        frames = run(client, user, "box", command=["printf", "%s|", "a b", "$HOME"])
        assert output(frames) == "a b|$HOME|" and frames[-1]["exit_code"] == 0

        # The workspace by default; a directory in it; stdin; variables.
        assert output(run(client, user, "box", command="pwd")) == "/workspace\n"
        run(client, user, "box", command="mkdir -p sub/dir")
        assert output(run(client, user, "box", command="pwd", cwd="sub/dir")) == (
            "/workspace/sub/dir\n"
        )
        frames = run(client, user, "box", command="tr a-z A-Z", stdin="piped in\n")
        assert output(frames) == "PIPED IN\n"
        frames = run(client, user, "box", command='echo "$GREETING"', env={"GREETING": "hush-4711"})
        assert output(frames) == "hush-4711\n"
        # Output that is not UTF-8 arrives as text, replaced, not as an error.
        frames = run(client, user, "box", command=r"printf 'ok\377\n'")
        assert output(frames) == "ok\ufffd\n"

        # Refused before anything runs, with the field at fault.
        for body, field in (
            ({"command": "pwd", "cwd": "../../etc"}, "cwd"),
            ({"command": "pwd", "cwd": "/etc"}, "cwd"),
            ({"command": "pwd", "cwd": "no/such/dir"}, "cwd"),
            ({"command": "env", "env": {"SAC_AGENT_TOKEN": "forged"}}, "env"),
            ({"command": ""}, "command"),
            ({"command": "pwd", "timeout": 0}, "timeout"),
        ):
            resp = client.sac("POST", f"users/{user}/agents/box/exec", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["field"] == field, resp.text

        # Audited: the command, where, the variables' names; never their values.
        # What was refused never ran, and is not in the log.
        started = audit(stack["admin"], user, "agent.exec")
        assert not [e for e in started if e["after"]["cwd"] in ("../../etc", "/etc", "no/such/dir")]
        greeting = next(e for e in started if "GREETING" in e["after"]["command"])
        assert greeting["actor"] == user and greeting["target"] == "box"
        assert greeting["after"]["env"] == ["GREETING"] and greeting["after"]["cwd"] is None
        ended = audit(stack["admin"], user, "agent.exec.end")
        assert {e["after"]["exit_code"] for e in ended if "exit 3" in e["after"]["command"]} == {3}
        everything = json.dumps(audit(stack["admin"], user, "agent.*"))
        assert "hush-4711" not in everything and "piped in" not in everything


def test_a_timeout_kills_the_commands_whole_process_group(stack: dict, fake: str) -> None:
    user = f"ex{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "box", **model_agent(fake)) as client:
        frames = run(
            client,
            user,
            "box",
            command="sleep 300 & echo $! > child.pid; echo started; wait",
            timeout=2,
        )
        assert output(frames) == "started\n"
        assert frames[-1]["error"] == "timeout" and "killed" in frames[-1]["message"]
        pid = output(run(client, user, "box", command="cat child.pid")).strip()
        assert pid.isdigit()
        assert not alive(client, user, "box", pid)
        ended = audit(stack["admin"], user, "agent.exec.end")
        assert any(e["after"].get("error") == "timeout" for e in ended)


@pytest.mark.asyncio
async def test_exec_over_a_websocket_takes_stdin_and_a_disconnect_kills_it(
    stack: dict, fake: str
) -> None:
    user = f"ex{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "box", **model_agent(fake)) as client:
        conn = await exec_socket(client, user, "box")
        conn.write_message(json.dumps({"command": "cat", "stdin_open": True}))
        conn.write_message(json.dumps({"stdin": "line one\n"}))
        first = json.loads(await asyncio.wait_for(conn.read_message(), 60))
        assert first == {"seq": 0, "stream": "stdout", "data": "line one\n"}
        conn.write_message(json.dumps({"stdin": "line two\n"}))
        conn.write_message(json.dumps({"eof": True}))
        frames = await frames_until_end(conn)
        assert output(frames) == "line two\n" and frames[-1]["exit_code"] == 0

        # A refused request is one frame saying why, and the socket closes.
        conn = await exec_socket(client, user, "box")
        conn.write_message(json.dumps({"command": "pwd", "cwd": "../.."}))
        frames = await frames_until_end(conn)
        assert [(f["error"], f["status"], f["field"]) for f in frames] == [
            ("invalid_field", 400, "cwd")
        ]

        # The caller goes away: the command and what it started are killed.
        conn = await exec_socket(client, user, "box")
        conn.write_message(
            json.dumps({"command": "sleep 300 & echo $! > bg.pid; echo started; wait"})
        )
        started = json.loads(await asyncio.wait_for(conn.read_message(), 60))
        assert started["data"] == "started\n"
        conn.close()
        pid = output(run(client, user, "box", command="cat bg.pid")).strip()
        poll_until(lambda: not alive(client, user, "box", pid), 30, "the command killed")
        ended = poll_until(
            lambda: [
                e
                for e in audit(stack["admin"], user, "agent.exec.end")
                if "bg.pid" in e["after"]["command"]
            ],
            30,
            "the command's end audited",
        )
        assert "exit_code" in ended[0]["after"] or ended[0]["after"]["error"] == "disconnected"


@pytest.mark.asyncio
async def test_only_the_owner_and_administrators_may_exec_and_never_a_sandbox(
    stack: dict, fake: str, new_user
) -> None:
    user = f"ex{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "box", **model_agent(fake)) as client:
        path = f"users/{user}/agents/box/exec"
        body = {"command": "id -un"}
        # An administrator may (audited as themselves).
        frames = run(stack["admin"], user, "box", **body)
        assert frames[-1]["exit_code"] == 0
        assert any(e["actor_admin"] for e in audit(stack["admin"], user, "agent.exec"))

        # Another user: no such agent.
        _, other = new_user()
        assert other.sac("POST", path, json=body).status_code == 404
        assert other.sac("GET", f"users/{user}/agents/box/terminal/screen").status_code == 404

        # The sandbox's own tokens: the agent's, and its server's (even if it drives).
        agent_token = output(run(client, user, "box", command="echo $SAC_AGENT_TOKEN")).strip()
        server_token = output(
            run(client, user, "box", command="echo $JUPYTERHUB_API_TOKEN")
        ).strip()
        assert agent_token.startswith("sac-agent-") and server_token
        # (A server's token without drive_agents is not let into the service at all.)
        for token, status in ((agent_token, 403), (server_token, 401)):
            resp = httpx.post(
                client.service_url + "api/" + path,
                json=body,
                headers={"Authorization": f"token {token}"},
                timeout=30,
            )
            assert resp.status_code == status, resp.text
            with pytest.raises(HTTPClientError) as refused:
                await exec_socket(client, user, "box", token=token)
            assert refused.value.code == status

        # Nobody but the service runs commands in the sandbox directly: not its owner
        # (that would skip exec_enabled and the audit log). The service calls with the
        # server's own token (which the sandbox holds anyway) ...
        base = server_url(stack["url"], user, "box")
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(
                HTTPRequest(
                    base.replace("http", "ws", 1) + "sac/api/exec",
                    headers={"Authorization": f"token {client.token}"},
                )
            )
        assert refused.value.code == 403
        own = await websocket_connect(
            HTTPRequest(
                base.replace("http", "ws", 1) + "sac/api/exec",
                headers={"Authorization": f"token {server_token}"},
            )
        )
        own.close()
        # ... never its own, which opens no agent's server at all: a sandbox that
        # answered in its server's place would capture nothing of use elsewhere.
        environ = process_environ(find_descendant(stack["pid"], b"jupyter_sac.service"))
        resp = httpx.get(
            base + "api/status",
            headers={"Authorization": f"token {environ['JUPYTERHUB_API_TOKEN']}"},
            timeout=30,
        )
        assert resp.status_code == 403, resp.text


def test_exec_enabled_turned_off_refuses_and_a_sandbox_cannot_turn_it_on(
    stack: dict, fake: str
) -> None:
    user = f"ex{uuid.uuid4().hex[:6]}"
    admin: HubApi = stack["admin"]
    with running_agent(admin, user, "box", **model_agent(fake)) as client:
        agent_token = output(run(client, user, "box", command="echo $SAC_AGENT_TOKEN")).strip()
        resp = client.sac(
            "PATCH", f"users/{user}/agents/box", json={"overrides": {"exec_enabled": False}}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["resolved"]["exec_enabled"] is False

        for caller in (client, admin):
            resp = caller.sac("POST", f"users/{user}/agents/box/exec", json={"command": "true"})
            assert resp.status_code == 403 and resp.json()["error"] == "exec_disabled", resp.text
        refusals = audit(admin, user, "agent.exec.refused")
        assert len(refusals) == 2 and refusals[0]["after"]["reason"] == "exec_enabled is off"

        # The agent's own token cannot turn it back on, directly or through its relay.
        resp = httpx.patch(
            client.service_url + f"api/users/{user}/agents/box",
            json={"overrides": {"exec_enabled": True}},
            headers={"Authorization": f"token {agent_token}"},
            timeout=30,
        )
        assert resp.status_code == 403, resp.text
        assert client.sac("GET", f"users/{user}/agents/box").json()["resolved"]["exec_enabled"] is (
            False
        )

        # Turned off by an administrator for the user: the owner cannot turn it on.
        resp = client.sac(
            "PATCH", f"users/{user}/agents/box", json={"overrides": {"exec_enabled": True}}
        )
        assert resp.status_code == 200, resp.text
        assert run(client, user, "box", command="true")[-1]["exit_code"] == 0
        resp = admin.sac("PUT", f"users/{user}/settings", json={"exec_enabled": False})
        assert resp.status_code == 200, resp.text
        resp = client.sac("POST", f"users/{user}/agents/box/exec", json={"command": "true"})
        assert resp.status_code == 403, resp.text
        resp = client.sac(
            "PATCH", f"users/{user}/agents/box", json={"overrides": {"exec_enabled": True}}
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["field"] == "overrides.exec_enabled", resp.text
        assert "turned off for this user" in resp.json()["message"]


@pytest.mark.asyncio
async def test_the_screen_shows_the_claude_terminal_and_the_detectors_verdict(
    stack: dict, fake: str
) -> None:
    user = f"scr{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "tty", **model_agent(fake)) as client:
        screen_path = f"users/{user}/agents/tty/terminal/screen"
        base = server_url(stack["url"], user, "tty")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
        # Not running: said so, and reading it does not start claude.
        resp = client.sac("GET", screen_path)
        assert resp.status_code == 200 and resp.json() == {"running": False, "released": False}
        assert api.get(base + "sac/api/terminal").json()["running"] is False

        assert api.post(base + "sac/api/terminal").status_code == 200
        httpx.post(
            fake + "/_fake/script",
            json={
                "replies": [
                    {"tool_use": {"name": "Bash", "input": {"command": "echo yes > /tmp/x"}}},
                    "after the menu",
                ]
            },
        )
        term = await TerminalClient.connect(base, client.token)
        await term.wait_for(claude_ready, 60, "claude's input box")
        term.type("screen me")
        await term.wait_for(lambda t: "screen me" in t.text(), 20, "the typed prompt")

        def screen() -> dict[str, Any]:
            resp = client.sac("GET", screen_path)
            assert resp.status_code == 200, resp.text
            return resp.json()

        shown = poll_until(
            lambda: (s := screen()) and any("screen me" in row for row in s["rows"]) and s,
            30,
            "the typed prompt on the screen",
        )
        assert shown["running"] is True and shown["prompt"] is None
        assert shown["size"] == {"rows": 40, "cols": 120} and len(shown["rows"]) == 40
        assert 0 <= shown["cursor"]["row"] < 40

        term.type("\r")
        await term.wait_for(lambda t: "Do you want to proceed?" in t.text(), 60, "the menu")
        menu = poll_until(lambda: (s := screen())["prompt"] and s, 30, "the detector's verdict")
        assert "proceed" in menu["prompt"]["question"].lower()
        assert [o["key"] for o in menu["prompt"]["options"]][:1] == ["1"]
        assert any("Do you want to proceed?" in row for row in menu["rows"])
        term.close()
        assert audit(stack["admin"], user, "agent.screen")


def test_the_agent_page_shows_the_terminal_screen_in_a_browser(
    stack: dict, fake: str, tmp_path: Path
) -> None:
    """The owner, logged in in Chromium, reads the Claude terminal on the agent's page:
    "not running" before it starts; its text once claude shows its input box."""
    from playwright.sync_api import expect, sync_playwright

    name, password = f"scr{uuid.uuid4().hex[:6]}", "a-long-enough-password-1"
    artifacts = Path(os.environ.get("SAC_TEST_ARTIFACTS", tmp_path)) / "exec"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = sign_up_and_log_in(browser, stack["url"], name, password, ADMIN_PASSWORD)
            client = stack["admin"].harness_api().token_for(name)
            resp = client.sac("POST", "agents", json={"slug": "seen", **model_agent(fake)})
            assert resp.status_code == 201, resp.text
            client.start(name, "seen")
            page.goto(stack["service_url"] + f"agents/{name}/seen")
            page.get_by_role("button", name="Show the screen").click()
            expect(page.locator("#screen-state")).to_have_text(
                "The Claude terminal is not running."
            )
            expect(page.locator("#screen-rows")).to_be_hidden()

            base = server_url(stack["url"], name, "seen")
            api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
            assert api.post(base + "sac/api/terminal").status_code == 200
            poll_until(
                lambda: (
                    "for shortcuts"
                    in "\n".join(
                        client.sac("GET", f"users/{name}/agents/seen/terminal/screen").json()[
                            "rows"
                        ]
                    )
                ),
                60,
                "claude's input box",
            )
            page.get_by_role("button", name="Refresh").click()
            expect(page.locator("#screen-rows")).to_contain_text("for shortcuts")
            expect(page.locator("#screen-prompt")).to_have_text(
                "No prompt is waiting for an answer."
            )
            expect(page.locator("#screen-state")).to_contain_text("cursor at row")
            page.screenshot(path=str(artifacts / "terminal-screen.png"), full_page=True)
            client.sac("DELETE", f"users/{name}/agents/seen")
        finally:
            browser.close()


PROBE = r"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
server = int(os.environ["SERVER_PID"])
taken = []
pidfd = os.pidfd_open(server)
for number in range(64):  # (its fd directory may not be listable: every low number)
    if libc.syscall(438, pidfd, number, 0) >= 0:  # pidfd_getfd
        taken.append(number)
try:
    open(f"/proc/{server}/mem", "rb").close()
    mem = "readable"
except OSError as e:
    mem = e.strerror
print("taken", taken, "mem", mem)
"""


def test_a_command_cannot_take_the_servers_sockets(stack: dict, fake: str) -> None:
    """What runs in the sandbox (as the server's user) cannot duplicate the server's
    file descriptors or read its memory: with its listening socket it could accept
    the connections meant for the server, and read the tokens they carry (the
    owner's, and the `sac` service's own, which the culler, exec and screen send)."""
    user = f"ex{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "box", **model_agent(fake)) as client:
        server = output(run(client, user, "box", command="echo $PPID")).strip()
        # (exec's /bin/sh is the server's child)
        frames = run(
            client, user, "box", command=["python3", "-c", PROBE], env={"SERVER_PID": server}
        )
        assert frames[-1]["exit_code"] == 0, frames
        assert output(frames).strip() == "taken [] mem Permission denied", output(frames)
