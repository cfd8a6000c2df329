"""Chat sessions' live claude processes, without the stack: the real pinned CLI
against the scripted fake model, driven by the ChatManager as the extension
drives it, with the HITL policy read from a small stand-in of the `sac`
service's one endpoint it needs (``GET api/agent/hitl``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from tornado import web
from tornado.httpserver import HTTPServer

from jupyter_sac.errors import ApiError
from jupyter_sac.runtimes.claude import claude_binary
from jupyter_sac.runtimes.claude_config import merge_state
from jupyter_sac.runtimes.claude_session import cli_flags
from jupyter_sac.server_extension.capture import TranscriptCapture
from jupyter_sac.server_extension.chat import ChatManager, Subscription
from jupyter_sac.server_extension.hitl import HitlBridge
from jupyter_sac.server_extension.service_client import ServiceClient
from jupyter_sac.server_extension.spool import HistorySpool
from jupyter_sac.spawner.sandbox import process_start
from jupyter_sac.stack import free_port
from sac_testing.stack import poll_until

CLI = claude_binary()
pytestmark = pytest.mark.skipif(CLI is None, reason="the pinned claude CLI is not installed")


class PolicyHandler(web.RequestHandler):
    """GET api/agent/hitl: the agent's policy, or (``broken``) an answer that is no JSON."""

    def get(self) -> None:
        if self.settings["broken"]:
            self.finish("<html>a proxy's error page</html>")
        else:
            self.finish({"policy": {"default": "allow"}, "timeout": 60, "default": "deny"})


@pytest_asyncio.fixture
async def world(tmp_path: Path, fake: str) -> AsyncIterator[dict[str, Any]]:
    """A workspace, a Claude config whose settings.json has a hook of its own, the
    stand-in service, and a factory of ChatManagers wired as the extension wires them."""
    workspace, config = tmp_path / "workspace", tmp_path / "claude"
    workspace.mkdir()
    config.mkdir()
    (config / ".claude.json").write_text(json.dumps(merge_state({}, str(workspace), None, None)))
    # A settings.json hook, as SAC installs for the terminal: chat sessions must not run it.
    marker = tmp_path / "settings-hook-ran"
    hook = {"type": "command", "command": f"touch {marker}"}
    settings = {"hooks": {e: [{"matcher": "*", "hooks": [hook]}] for e in ("PreToolUse", "Stop")}}
    (config / "settings.json").write_text(json.dumps(settings))
    port = free_port()
    app = web.Application([(r"/api/agent/hitl", PolicyHandler)], broken=False)
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    client = ServiceClient(f"http://127.0.0.1:{port}", "agent-token")
    spool = HistorySpool(tmp_path / "spool")
    managers: list[ChatManager] = []

    def manager(**kwargs: Any) -> ChatManager:
        chat = ChatManager(
            tmp_path / "chat",
            [str(CLI)],
            str(workspace),
            config,
            env={
                "ANTHROPIC_BASE_URL": fake,
                "ANTHROPIC_API_KEY": "sk-test",
                "CLAUDE_CONFIG_DIR": str(config),
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "IS_SANDBOX": "1",
            },
            decide_tool=HitlBridge(client, lambda action, request: None).decide_tool,
            capture=TranscriptCapture(spool, tmp_path / "transcripts", config),
            **kwargs,
        )
        managers.append(chat)
        return chat

    yield {"manager": manager, "app": app, "workspace": workspace, "config": config,
           "marker": marker, "spool": spool}  # fmt: skip
    for chat in managers:
        await chat.stop()
    server.stop()
    await client.close()


def script(fake: str, *replies: Any) -> None:
    assert httpx.post(fake + "/_fake/script", json={"replies": list(replies)}).status_code == 204


def model_requests(fake: str) -> list[dict[str, Any]]:
    requests = httpx.get(fake + "/_fake/requests").json()["requests"]
    return [r["body"] for r in requests if r["body"].get("tools")]


async def turn(chat: ChatManager, message: str, session_id: str | None = None) -> list[dict]:
    """Send ``message`` and wait for its turn to end; the turn's events."""
    _, sub = chat.subscribe(session_id, 0, lambda: None)
    try:
        started = await chat.send(message, session_id)
        return await until_end(sub, started["turn_id"])
    finally:
        chat.unsubscribe(sub)


async def until_end(sub: Subscription, turn_id: str) -> list[dict]:
    seen: list[dict] = []
    while not seen or seen[-1]["type"] != "turn_end":
        event = await asyncio.wait_for(sub.queue.get(), 120)
        if event["turn_id"] == turn_id:
            seen.append(event)
    return seen


async def released(chat: ChatManager, session_id: str) -> None:
    for _ in range(600):
        if (await chat.session_with_events(session_id))["process"] is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session's process was not released")


def three_tools(workspace: Path, name: str) -> list[Any]:
    """Write, Bash and Read, then a final answer: the bench's turn."""
    path = str(workspace / name)
    return [
        {"tool_use": {"name": "Write", "input": {"file_path": path, "content": "a\nb\nc\n"}}},
        {"tool_use": {"name": "Bash", "input": {"command": f"wc -l < {path} > {path}.count"}}},
        {"tool_use": {"name": "Read", "input": {"file_path": f"{path}.count"}}},
        f"{name} counted",
    ]


def spooled(spool: HistorySpool) -> list[dict[str, Any]]:
    events = []
    for segment in sorted(spool.dir.glob("*.jsonl")):
        events += [json.loads(line) for line in segment.read_text().splitlines()]
    return events


def transcript_lines(config: Path, session_id: str) -> list[str]:
    (path,) = config.glob(f"projects/*/{session_id}.jsonl")
    return [line for line in path.read_text().splitlines() if line.strip()]


def process_gone(pid: int) -> bool:
    found = process_start(pid)
    return found is None or found[0] in ("Z", "X")


@pytest.mark.asyncio
async def test_turns_of_a_session_share_one_process_and_a_dead_one_is_resumed(
    world: dict[str, Any], fake: str
) -> None:
    chat = world["manager"]()
    script(fake, *three_tools(world["workspace"], "one"), "second answer", "third answer")
    first = await turn(chat, "count one")
    assert [e["type"] for e in first][-2:] == ["result", "turn_end"], first
    assert first[-1]["exit_code"] == 0
    assert (world["workspace"] / "one.count").read_text().strip() == "3"
    sid = first[0]["session_id"]
    process = (await chat.session_with_events(sid))["process"]
    assert process["turns"] == 1 and process["resumed"] is False

    httpx.delete(fake + "/_fake/requests")
    second = await turn(chat, "and again?", sid)
    assert second[-2]["text"] == "second answer"
    again = (await chat.session_with_events(sid))["process"]
    # The same claude process served both turns.
    assert again["pid"] == process["pid"] and again["turns"] == 2
    sent = json.dumps(model_requests(fake)[0]["messages"])
    assert "count one" in sent and "and again?" in sent
    # settings.json's hooks are the terminal's: they never ran in the chat session.
    assert not world["marker"].exists()

    # The process dies between turns: the next turn resumes the conversation in a new one.
    os.kill(process["pid"], signal.SIGKILL)
    # Gone (a kill takes effect a moment after the call returns), so the next turn
    # comes between turns, not during the process's last moments.
    await asyncio.to_thread(poll_until, lambda: process_gone(process["pid"]), 30, "gone")
    httpx.delete(fake + "/_fake/requests")
    third = await turn(chat, "still there?", sid)
    assert third[-2]["text"] == "third answer" and not [e for e in third if e["type"] == "error"]
    resumed = (await chat.session_with_events(sid))["process"]
    assert resumed["pid"] != process["pid"] and resumed["resumed"] is True
    sent = json.dumps(model_requests(fake)[0]["messages"])
    assert "count one" in sent and "and again?" in sent and "still there?" in sent
    assert [p.name for p in world["config"].glob("projects/*/*.jsonl")] == [f"{sid}.jsonl"]

    # History: every transcript line spooled once, also those written as it exits.
    await chat.stop()
    lines = transcript_lines(world["config"], sid)
    events = spooled(world["spool"])
    assert len(events) == len(lines)
    assert len({(e["session_id"], e["uuid"]) for e in events}) == len(events)
    uuids = {json.loads(line).get("uuid") for line in lines} - {None}
    assert uuids <= {e["uuid"] for e in events}


@pytest.mark.asyncio
async def test_a_process_dying_during_a_turn_ends_it_and_the_next_turn_resumes(
    world: dict[str, Any], fake: str
) -> None:
    chat = world["manager"]()
    started = world["workspace"] / "started"
    script(
        fake,
        {"tool_use": {"name": "Bash", "input": {"command": f"touch {started}; sleep 20"}}},
        "never sent",
    )
    _, sub = chat.subscribe(None, 0, lambda: None)
    sent = await chat.send("take a while", None)
    sid = sent["session_id"]
    for _ in range(1200):
        if started.exists():
            break
        await asyncio.sleep(0.05)
    pid = (await chat.session_with_events(sid))["process"]["pid"]
    os.kill(pid, signal.SIGKILL)
    events = await until_end(sub, sent["turn_id"])
    chat.unsubscribe(sub)
    assert [e["type"] for e in events][-2:] == ["error", "turn_end"], events
    assert "the agent stopped during the turn" in events[-2]["message"]
    assert events[-1]["exit_code"] is None
    assert (await chat.session_with_events(sid))["process"] is None

    httpx.delete(fake + "/_fake/script")
    httpx.delete(fake + "/_fake/requests")
    script(fake, "back again")
    after = await turn(chat, "are you back?", sid)
    assert after[-2]["text"] == "back again" and after[-1]["exit_code"] == 0
    assert (await chat.session_with_events(sid))["process"]["resumed"] is True
    assert "take a while" in json.dumps(model_requests(fake)[0]["messages"])


@pytest.mark.asyncio
async def test_an_idle_session_is_released_and_resumed_with_its_conversation(
    world: dict[str, Any], fake: str
) -> None:
    chat = world["manager"](idle_release=0)  # released as soon as a turn ends
    script(fake, "noted: the word is heron", "the word was heron")
    first = await turn(chat, "remember the word heron")
    sid = first[0]["session_id"]
    await released(chat, sid)

    httpx.delete(fake + "/_fake/requests")
    second = await turn(chat, "which word?", sid)
    assert second[-2]["text"] == "the word was heron"
    # The model saw the earlier turn: the conversation was resumed, not started anew.
    sent = json.dumps(model_requests(fake)[0]["messages"])
    assert "remember the word heron" in sent and "noted: the word is heron" in sent
    # One session, one transcript file.
    assert [p.name for p in world["config"].glob("projects/*/*.jsonl")] == [f"{sid}.jsonl"]
    listed = chat.list()[0]
    assert listed["turns"] == 2 and listed["running"] is False


@pytest.mark.asyncio
async def test_idle_processes_are_bounded(world: dict[str, Any], fake: str) -> None:
    """Sessions opened one after another keep at most max_idle_processes idle claude
    processes: the least recently used one is released (its next turn resumes),
    where each would have held ~200 MiB for idle_release (found by the fuzzer: its
    chat sessions filled the agent's memory until the server died)."""
    chat = world["manager"](max_idle_processes=1)
    script(fake, "first", "second")
    older = (await turn(chat, "one"))[0]["session_id"]
    newer = (await turn(chat, "two"))[0]["session_id"]
    await released(chat, older)
    assert (await chat.session_with_events(newer))["process"] is not None


@pytest.mark.asyncio
async def test_chat_processes_are_bounded(world: dict[str, Any], fake: str) -> None:
    """At most max_processes claude processes, running or idle: a new session's
    turn while that many turns run is refused (409 chat_busy) and creates nothing;
    an idle process is released to make room for it (sixty sessions opened in
    three seconds once started sixty processes, and the sandbox's memory limit
    killed the agent's server)."""
    chat = world["manager"](max_processes=1)
    started = world["workspace"] / "started"
    script(
        fake,
        {"tool_use": {"name": "Bash", "input": {"command": f"touch {started}; sleep 600"}}},
        "back again",
        "a second session",
    )
    busy = await chat.send("run something long", None)
    await asyncio.to_thread(poll_until, started.exists, 60, "the long tool")
    with pytest.raises(ApiError) as refused:
        await chat.send("and another thing", None)
    assert (refused.value.status_code, refused.value.code) == (409, "chat_busy")
    assert [s["session_id"] for s in chat.list()] == [busy["session_id"]]
    assert await chat.cancel(busy["session_id"])

    # The first session's next turn leaves it an idle process; a new session's
    # turn takes its room.
    first = await turn(chat, "are you there?", busy["session_id"])
    assert first[-2]["text"] == "back again"
    assert (await chat.session_with_events(busy["session_id"]))["process"] is not None
    second = await turn(chat, "hello")
    assert second[-2]["text"] == "a second session"
    assert (await chat.session_with_events(busy["session_id"]))["process"] is None
    assert (await chat.session_with_events(second[0]["session_id"]))["process"] is not None


@pytest.mark.asyncio
async def test_a_failing_hitl_decision_blocks_the_tool(world: dict[str, Any], fake: str) -> None:
    """The service answers garbage where the policy should be: the decision fails,
    so the tool is denied, never run, and the model is told."""
    world["app"].settings["broken"] = True
    chat = world["manager"]()
    target = world["workspace"] / "never.txt"
    script(
        fake,
        {"tool_use": {"name": "Bash", "input": {"command": f"echo ran > {target}"}}},
        "could not run it",
    )
    events = await turn(chat, "run it")
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert result["is_error"] is True and "human-in-the-loop failed" in result["content"]
    assert events[-2]["text"] == "could not run it"
    assert not target.exists()
    (told,) = [
        block
        for message in model_requests(fake)[-1]["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert told["is_error"] is True


def test_chat_args_become_the_sdks_extra_args() -> None:
    assert cli_flags(["--model", "sonnet", "--verbose", "--max-turns=5", "-x", "v"]) == {
        "model": "sonnet",
        "verbose": None,
        "max-turns": "5",
        "x": "v",
    }
    assert cli_flags([]) == {}
