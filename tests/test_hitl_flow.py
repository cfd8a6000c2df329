"""Human-in-the-loop end to end: the real claude CLI's PreToolUse hook and the
Claude terminal's permission menu become requests at the `sac` service; decisions
made through the service API reach the agent; jupyter_events announce them."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from helpers import (
    HubApi,
    TerminalClient,
    TerminalCommand,
    claude_ready,
    model_agent,
    pending_requests,
    running_agent,
    server_url,
)
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def _chat_turn(prompt: str) -> str:
    # A headless turn in a terminal, bypass mode, the settings.json hook deciding as
    # for a chat turn (SAC_CLAUDE_MODE=chat: fail closed). Chat sessions themselves
    # decide in the extension's process (test_a_chat_turn_asks_once_...).
    return (
        f"cd /workspace && SAC_CLAUDE_MODE=chat claude -p {json.dumps(prompt)}"
        " --permission-mode bypassPermissions --output-format text"
    )


def _one_pending(client: HubApi, user: str) -> dict:
    return poll_until(
        lambda: (p := pending_requests(client, user)) and p[0], 60, "a pending request"
    )


async def _events(base: str, token: str) -> WebSocketClientConnection:
    return await websocket_connect(
        HTTPRequest(
            base.replace("http", "ws", 1) + "api/events/subscribe",
            headers={"Authorization": f"token {token}"},
        )
    )


async def _next_hitl_event(conn: WebSocketClientConnection, action: str) -> dict:
    while True:
        msg = await asyncio.wait_for(conn.read_message(), 60)
        assert msg is not None
        event = json.loads(msg)
        if event.get("schema_id", "").endswith("/hitl") and event.get("action") == action:
            return event


def _write_tool(path: str) -> dict:
    return {"tool_use": {"name": "Bash", "input": {"command": f"echo yes > {path}"}}}


@pytest.mark.asyncio
async def test_tool_call_waits_for_approval_and_deny_blocks_it(stack: dict, fake: str) -> None:
    user = f"hitl{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "ask")
    with running_agent(stack["admin"], user, "ask", **model_agent(fake)) as client:
        contents = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
        events = await _events(base, client.token)

        # approve -> the tool runs
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [_write_tool("/workspace/approved.txt"), "tool finished"]},
        )
        turn = await TerminalCommand.start(base, client.token, _chat_turn("write it"))
        request = _one_pending(client, user)
        assert request["kind"] == "tool" and request["tool"] == "Bash"
        assert request["input"]["command"] == "echo yes > /workspace/approved.txt"
        assert request["agent"] == "ask" and request["status"] == "pending"
        announced = await _next_hitl_event(events, "requested")
        assert announced["request"]["id"] == request["id"]
        assert contents.get(base + "api/contents/approved.txt").status_code == 404

        resp = client.sac(
            "POST", f"hitl/requests/{request['id']}/decision", json={"decision": "allow"}
        )
        assert resp.status_code == 200, resp.text
        decided = await _next_hitl_event(events, "decided")
        assert decided["request"]["status"] == "approved"
        assert "tool finished" in await turn.finish()
        assert contents.get(base + "api/contents/approved.txt").status_code == 200

        # deny -> it does not, and the model is told why
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [_write_tool("/workspace/denied.txt"), "gave up"]},
        )
        turn = await TerminalCommand.start(base, client.token, _chat_turn("write another"))
        request = _one_pending(client, user)
        resp = client.sac(
            "POST",
            f"hitl/requests/{request['id']}/decision",
            json={"decision": "deny", "reason": "not today"},
        )
        assert resp.status_code == 200, resp.text
        assert "gave up" in await turn.finish()
        assert contents.get(base + "api/contents/denied.txt").status_code == 404
        sent = httpx.get(fake + "/_fake/requests").json()["requests"][-1]["body"]
        assert "not today" in json.dumps(sent["messages"])
        events.close()


@pytest.mark.asyncio
async def test_unanswered_request_times_out_to_the_default(stack: dict, fake: str) -> None:
    user = f"tmo{uuid.uuid4().hex[:6]}"
    admin: HubApi = stack["admin"]
    base = server_url(stack["url"], user, "slow")
    with running_agent(admin, user, "slow", **model_agent(fake)) as client:
        resp = admin.sac("PUT", f"users/{user}/settings", json={"hitl_timeout": 5})
        assert resp.status_code == 200, resp.text
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [_write_tool("/workspace/late.txt"), "no answer came"]},
        )
        turn = await TerminalCommand.start(base, client.token, _chat_turn("write late"))
        request = _one_pending(client, user)
        assert "no answer came" in await turn.finish()
        done = client.sac("GET", f"hitl/requests/{request['id']}").json()
        assert done["status"] == "timed_out" and done["decision"] == "deny"
        files = httpx.get(
            base + "api/contents/late.txt", headers={"Authorization": f"token {client.token}"}
        )
        assert files.status_code == 404


@pytest.mark.asyncio
async def test_terminal_permission_menu_is_answered_from_the_api(stack: dict, fake: str) -> None:
    user = f"menu{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "tty")
    with running_agent(stack["admin"], user, "tty", **model_agent(fake)) as client:
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
        assert api.post(base + "sac/api/terminal").status_code == 200
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [_write_tool("/workspace/menu.txt"), "menu answered"]},
        )
        term = await TerminalClient.connect(base, client.token)
        await term.wait_for(claude_ready, 60, "claude's input box")
        term.type("write via the menu")
        await term.wait_for(lambda t: "write via the menu" in t.text(), 20, "the typed prompt")
        term.type("\r")
        await term.wait_for(lambda t: "Do you want to proceed?" in t.text(), 60, "the menu")

        request = _one_pending(client, user)
        assert request["kind"] == "terminal" and "proceed" in request["question"].lower()
        assert [o["key"] for o in request["options"]][:1] == ["1"]

        # Only one request for one prompt, however often the screen redraws: make it
        # redraw (a widened terminal is drawn again at its new width: its rules span
        # it; widened, as narrowing would cut the old rules to the new width here),
        # twice, each redraw seen here and then read by the extension's watcher.
        def redrawn(t: TerminalClient, cols: int) -> bool:
            lines = t.text().splitlines()
            return "─" * cols in lines and "Do you want to proceed?" in t.text()

        def reads() -> int:
            resp = api.get(base + "sac/api/hitl")
            assert resp.status_code == 200, resp.text
            return resp.json()["terminal_reads"]

        for cols in (140, 160):
            term.send(["set_size", 40, cols, 40 * 16, cols * 8])
            term.screen.resize(40, cols)
            await term.wait_for(
                lambda t, c=cols: redrawn(t, c), 60, f"the menu redrawn at {cols} columns"
            )
            # The watcher got that output before this client did; a read counted
            # from now on saw it.
            seen = reads()
            poll_until(lambda n=seen: reads() > n, 30, "the watcher reading the redrawn screen")
        assert [r["id"] for r in pending_requests(client, user)] == [request["id"]]
        resp = client.sac(
            "POST",
            f"hitl/requests/{request['id']}/decision",
            json={"decision": "allow", "option": "1"},
        )
        assert resp.status_code == 200, resp.text
        await term.wait_for(lambda t: "menu answered" in t.text(), 60, "the answer")
        assert api.get(base + "api/contents/menu.txt").status_code == 200
        # Nothing else was ever filed for it (a request filed again after a redraw
        # and then cancelled, or one filed after the decision, would be listed here).
        filed = client.sac("GET", "hitl/requests", params={"status": "all"}).json()["requests"]
        assert [(r["id"], r["status"]) for r in filed if r["user"] == user] == [
            (request["id"], "approved")
        ]
        term.close()


@pytest.mark.asyncio
async def test_other_users_cannot_see_or_answer(stack: dict, fake: str, new_user) -> None:
    user = f"own{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "mine")
    _, stranger = new_user("stranger")
    with running_agent(stack["admin"], user, "mine", **model_agent(fake)) as client:
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [_write_tool("/workspace/x.txt"), "stranger denied"]},
        )
        turn = await TerminalCommand.start(base, client.token, _chat_turn("write x"))
        request = _one_pending(client, user)
        assert pending_requests(stranger, user) == []
        rid = request["id"]
        assert stranger.sac("GET", f"hitl/requests/{rid}").status_code == 404
        resp = stranger.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "allow"})
        assert resp.status_code == 404
        assert client.sac("GET", f"hitl/requests/{rid}").json()["status"] == "pending"
        client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "deny"})
        await turn.finish()


def _assert_cancelled_for_good(client: HubApi, request: dict, late_decision: str) -> None:
    """The request settles as cancelled, and a decision posted after is refused."""
    rid = request["id"]
    done = poll_until(
        lambda: (
            (r := client.sac("GET", f"hitl/requests/{rid}").json())["status"] != "pending" and r
        ),
        30,
        "the request settled",
    )
    assert done["status"] == "cancelled", done
    late = client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": late_decision})
    assert late.status_code == 409 and late.json()["error"] == "already_decided"


async def _claude_shows(stack: dict, fake: str, client: HubApi, user: str, slug: str,
                        replies: list, shown: str) -> tuple[TerminalClient, dict]:  # fmt: skip
    """Claude in the agent's terminal, given a prompt while the model answers with
    ``replies``, showing ``shown``; and the one request that filed."""
    base = server_url(stack["url"], user, slug)
    api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
    assert api.post(base + "sac/api/terminal").status_code == 200
    httpx.post(fake + "/_fake/script", json={"replies": replies})
    term = await TerminalClient.connect(base, client.token)
    await term.wait_for(claude_ready, 60, "claude's input box")
    term.type("do it")
    await term.wait_for(lambda t: "do it" in t.text(), 20, "the typed prompt")
    term.type("\r")
    await term.wait_for(lambda t: shown in t.text(), 60, repr(shown))
    return term, _one_pending(client, user)


async def _menu_waiting(stack: dict, fake: str, client: HubApi, user: str, slug: str,
                        target: str) -> tuple[TerminalClient, dict]:  # fmt: skip
    """Claude in the agent's terminal showing its permission menu for a Write of
    ``target``, and the one request the menu filed."""
    replies = [_write_tool(target), "after the menu"]
    return await _claude_shows(stack, fake, client, user, slug, replies, "Do you want to proceed?")


@pytest.mark.asyncio
async def test_a_menu_answered_by_hand_cancels_its_request(stack: dict, fake: str) -> None:
    """The person at the terminal answers Claude's menu themselves: the request
    filed for it is cancelled, and nobody can decide it any more."""
    user = f"hand{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "tty", **model_agent(fake)) as client:
        term, request = await _menu_waiting(stack, fake, client, user, "tty", "/workspace/hand.txt")
        term.type("1")  # "Yes", typed by the person
        await term.wait_for(lambda t: "after the menu" in t.text(), 60, "the turn going on")
        _assert_cancelled_for_good(client, request, "deny")
        assert pending_requests(client, user) == []
        term.close()


@pytest.mark.asyncio
async def test_a_timed_out_menu_gets_its_default_key(stack: dict, fake: str) -> None:
    """Nobody decides a terminal prompt in time: the default (deny) is typed into
    the terminal for it, the menu goes and the tool does not run."""
    user = f"tmk{uuid.uuid4().hex[:6]}"
    admin: HubApi = stack["admin"]
    with running_agent(admin, user, "tty", **model_agent(fake)) as client:
        resp = admin.sac("PUT", f"users/{user}/settings", json={"hitl_timeout": 5})
        assert resp.status_code == 200, resp.text
        term, request = await _menu_waiting(stack, fake, client, user, "tty", "/workspace/late.txt")
        await term.wait_for(
            lambda t: "Do you want to proceed?" not in t.text(), 60, "the menu answered by default"
        )
        done = client.sac("GET", f"hitl/requests/{request['id']}").json()
        assert done["status"] == "timed_out" and done["decision"] == "deny", done
        base = server_url(stack["url"], user, "tty")
        files = httpx.get(base + "api/contents/late.txt",
                          headers={"Authorization": f"token {client.token}"})  # fmt: skip
        assert files.status_code == 404
        term.close()


@pytest.mark.asyncio
async def test_a_cancelled_chat_turn_cancels_its_waiting_request(stack: dict, fake: str) -> None:
    """A chat turn waiting on an approval is cancelled: the request goes with it
    (status cancelled, no longer decidable) and the tool never runs."""
    user = f"cct{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "chatty")
    with running_agent(stack["admin"], user, "chatty", **model_agent(fake)) as client:
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        httpx.post(fake + "/_fake/script",
                   json={"replies": [_write_tool("/workspace/never.txt"), "too late"]})  # fmt: skip
        resp = api.post(base + "sac/api/chat", json={"message": "write it"})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["session_id"]
        request = _one_pending(client, user)
        cancel = api.post(base + f"sac/api/chat/sessions/{sid}/cancel")
        assert cancel.status_code == 200 and cancel.json() == {"cancelled": True}
        _assert_cancelled_for_good(client, request, "allow")
        assert api.get(base + "api/contents/never.txt").status_code == 404


@pytest.mark.asyncio
async def test_a_chat_turn_asks_once_and_runs_the_approved_tool(stack: dict, fake: str) -> None:
    """A chat session decides tool calls in the extension (no hook process): one
    request per call (the terminal's settings.json hook does not ask again), and
    the approved tool runs."""
    user = f"cha{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "chatty")
    with running_agent(stack["admin"], user, "chatty", **model_agent(fake)) as client:
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        httpx.post(fake + "/_fake/script",
                   json={"replies": [_write_tool("/workspace/asked.txt"), "approved"]})  # fmt: skip
        resp = api.post(base + "sac/api/chat", json={"message": "write it"})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["session_id"]
        request = _one_pending(client, user)
        assert request["kind"] == "tool" and request["tool"] == "Bash"
        assert request["session_id"] == sid
        resp = client.sac(
            "POST", f"hitl/requests/{request['id']}/decision", json={"decision": "allow"}
        )
        assert resp.status_code == 200, resp.text
        poll_until(
            lambda: api.get(base + f"sac/api/chat/sessions/{sid}").json()["running"] is False,
            60,
            "the turn to end",
        )
        assert api.get(base + "api/contents/asked.txt").status_code == 200
        filed = client.sac("GET", "hitl/requests", params={"status": "all"}).json()["requests"]
        assert [(r["id"], r["status"]) for r in filed if r["user"] == user] == [
            (request["id"], "approved")
        ]


@pytest.mark.asyncio
async def test_a_question_in_the_terminal_is_answered_with_text(stack: dict, fake: str) -> None:
    """Claude asks a question (its AskUserQuestion tool) in the agent's Claude
    terminal; the request offers a text answer; a person answers with text through
    the API; the text reaches claude's question, and claude's next request to the
    model carries it. A text that would act on the terminal is refused first."""
    user = f"txt{uuid.uuid4().hex[:6]}"
    question = {
        "question": "What should the new file be called?",
        "header": "Name",
        "multiSelect": False,
        "options": [
            {"label": "notes.txt", "description": "Plain text"},
            {"label": "todo.md", "description": "Markdown"},
        ],
    }
    with running_agent(stack["admin"], user, "tty", **model_agent(fake)) as client:
        httpx.delete(fake + "/_fake/requests")
        ask = {"tool_use": {"name": "AskUserQuestion", "input": {"questions": [question]}}}
        term, request = await _claude_shows(
            stack, fake, client, user, "tty", [ask, "named it"], "new file be called?"
        )
        assert request["kind"] == "terminal" and request["text_max"] == 500
        labels = [o["label"] for o in request["options"]]
        assert labels[:2] == ["notes.txt Plain text", "todo.md Markdown"]
        assert not any(label.startswith("Type something") for label in labels)
        decide = f"hitl/requests/{request['id']}/decision"
        refused = client.sac("POST", decide, json={"decision": "allow", "text": "x\r1"})
        assert refused.status_code == 400 and refused.json()["field"] == "text"
        assert "new file be called?" in term.text()

        resp = client.sac("POST", decide, json={"decision": "allow", "text": "release notes.md"})
        assert resp.status_code == 200, resp.text
        await term.wait_for(lambda t: "named it" in t.text(), 60, "claude going on")
        assert "→ release notes.md" in term.text()
        turns = [r["body"] for r in httpx.get(fake + "/_fake/requests").json()["requests"]]
        assert any("release notes.md" in json.dumps(b["messages"][-1]) for b in turns), turns
        done = client.sac("GET", f"hitl/requests/{request['id']}").json()
        assert done["status"] == "approved" and done["text"] == "release notes.md"
        term.close()
