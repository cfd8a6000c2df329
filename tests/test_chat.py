"""Chat mode: headless claude turns through the extension's REST API and websocket,
with the real CLI talking to the scripted fake model through the credential proxy."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from helpers import allow_all, model_agent, run_in_terminal, running_agent, server_url
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def _script(fake: str, *replies: Any) -> None:
    assert httpx.post(fake + "/_fake/script", json={"replies": list(replies)}).status_code == 204


def _model_requests(fake: str) -> list[dict[str, Any]]:
    """Bodies of the agent-loop requests (those offering tools) the fake received."""
    requests = httpx.get(fake + "/_fake/requests").json()["requests"]
    return [r["body"] for r in requests if r["body"].get("tools")]


async def _events(base: str, token: str, query: str = "") -> WebSocketClientConnection:
    return await websocket_connect(
        HTTPRequest(
            base.replace("http", "ws", 1) + "sac/api/chat/events" + query,
            headers={"Authorization": f"token {token}"},
        )
    )


async def _until(conn: WebSocketClientConnection, kind: str, timeout: float = 120) -> list[dict]:
    """Events from the socket up to and including the first one of type ``kind``."""
    seen: list[dict] = []
    while not seen or seen[-1]["type"] != kind:
        msg = await asyncio.wait_for(conn.read_message(), timeout)
        assert msg is not None, f"socket closed; events so far: {seen}"
        seen.append(json.loads(msg))
    return seen


@pytest.mark.asyncio
async def test_chat_turn_events_in_order_file_written_and_resumed(stack: dict, fake: str) -> None:
    user = f"chat{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "talk")
    with running_agent(stack["admin"], user, "talk", **model_agent(fake)) as client:
        allow_all(client, user, "talk")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        todos = [
            {"content": "write out.txt", "status": "in_progress", "activeForm": "Writing out.txt"},
            {"content": "say so", "status": "pending", "activeForm": "Saying so"},
        ]
        _script(
            fake,
            {"text": "Planning.", "tool_use": {"name": "TodoWrite", "input": {"todos": todos}}},
            {
                "text": "Writing it now.",
                "tool_use": {
                    "name": "Write",
                    "input": {"file_path": "/workspace/out.txt", "content": "from-chat\n"},
                },
            },
            "The file is written.",
            "You asked me to write out.txt.",
            "Still the same conversation.",
        )
        events = await _events(base, client.token)  # every session
        resp = api.post(
            base + "sac/api/chat", json={"message": "write out.txt", "session_id": None}
        )
        assert resp.status_code == 202, resp.text
        sid, turn_id = resp.json()["session_id"], resp.json()["turn_id"]
        assert str(uuid.UUID(sid)) == sid

        seen = await _until(events, "turn_end")
        assert [e["type"] for e in seen] == [
            "turn_start", "session", "text", "tool_use", "tool_result", "todos",
            "text", "tool_use", "tool_result", "text", "result", "turn_end",
        ]  # fmt: skip
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
        assert {(e["session_id"], e["turn_id"]) for e in seen} == {(sid, turn_id)}
        start, _, planning, todo_call, todo_done, todo_list = seen[:6]
        writing, write, written, final, result, end = seen[6:]
        assert start["message"] == "write out.txt"
        assert planning["text"] == "Planning." and todo_call["name"] == "TodoWrite"
        assert todo_done["tool_use_id"] == todo_call["id"] and todo_done["is_error"] is False
        assert todo_list["todos"] == todos
        assert writing["text"] == "Writing it now."
        assert write["name"] == "Write"
        assert write["input"] == {"file_path": "/workspace/out.txt", "content": "from-chat\n"}
        assert written["tool_use_id"] == write["id"] and written["is_error"] is False
        assert final["text"] == "The file is written."
        assert result["text"] == "The file is written." and result["is_error"] is False
        assert result["usage"]["input_tokens"] > 0 and result["cost_usd"] > 0
        assert result["num_turns"] == 3 and result["duration_ms"] >= 0
        assert end["exit_code"] == 0
        content = api.get(base + "api/contents/out.txt")
        assert content.status_code == 200, content.text
        assert content.json()["content"] == "from-chat\n"

        # Listed, with its log for a reload.
        (listed,) = api.get(base + "sac/api/chat/sessions").json()["sessions"]
        assert listed["session_id"] == sid and listed["title"] == "write out.txt"
        assert listed["turns"] == 1 and listed["running"] is False
        assert listed["last_result"]["text"] == "The file is written."
        assert listed["created_at"] <= listed["updated_at"]
        logged = api.get(base + f"sac/api/chat/sessions/{sid}").json()
        assert logged["session_id"] == sid and logged["events"] == seen

        # The next message continues the same conversation.
        httpx.delete(fake + "/_fake/requests")
        resp = api.post(
            base + "sac/api/chat", json={"message": "what did I ask?", "session_id": sid}
        )
        assert resp.status_code == 202, resp.text
        second = await _until(events, "turn_end")
        assert second[0]["seq"] == seen[-1]["seq"] + 1
        assert [e["type"] for e in second] == [
            "turn_start",
            "session",
            "text",
            "result",
            "turn_end",
        ]
        assert second[3]["text"] == "You asked me to write out.txt."
        history = json.dumps(_model_requests(fake)[0]["messages"])
        assert "write out.txt" in history and "from-chat" in history
        assert "what did I ask?" in history

        # A client that reconnects gets what it missed, then live events.
        late = await _events(base, client.token, f"?session_id={sid}&since={seen[-1]['seq']}")
        replayed = await _until(late, "turn_end")
        assert replayed == second
        late.close()
        events.close()

        # Sessions, logs and conversations survive a restart of the agent's server.
        client.stop(user, "talk")
        client.start(user, "talk")
        (listed,) = api.get(base + "sac/api/chat/sessions").json()["sessions"]
        assert listed["session_id"] == sid and listed["turns"] == 2
        assert api.get(base + f"sac/api/chat/sessions/{sid}").json()["events"] == seen + second
        httpx.delete(fake + "/_fake/requests")
        events = await _events(base, client.token, f"?session_id={sid}&since={second[-1]['seq']}")
        resp = api.post(base + "sac/api/chat", json={"message": "and now?", "session_id": sid})
        assert resp.status_code == 202, resp.text
        third = await _until(events, "turn_end")
        assert third[-2]["type"] == "result"
        assert third[-2]["text"] == "Still the same conversation."
        history = json.dumps(_model_requests(fake)[0]["messages"])
        assert "write out.txt" in history and "and now?" in history
        events.close()


@pytest.mark.asyncio
async def test_cancel_stops_a_long_turn(stack: dict, fake: str) -> None:
    user = f"stop{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "long")
    with running_agent(stack["admin"], user, "long", **model_agent(fake)) as client:
        allow_all(client, user, "long")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        _script(
            fake,
            {
                "text": "This takes a while.",
                "tool_use": {
                    "name": "Bash",
                    "input": {"command": "echo $$ > /workspace/tool.pid && sleep 127"},
                },
            },
            {
                "tool_use": {
                    "name": "Write",
                    "input": {"file_path": "/workspace/after.txt", "content": "too late\n"},
                }
            },
            "finished",
        )
        events = await _events(base, client.token)
        resp = api.post(base + "sac/api/chat", json={"message": "take long"})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["session_id"]
        await _until(events, "tool_use")
        # The tool is running in the sandbox.
        poll_until(
            lambda: api.get(base + "api/contents/tool.pid").status_code == 200, 60, "tool started"
        )
        (listed,) = api.get(base + "sac/api/chat/sessions").json()["sessions"]
        assert listed["running"] is True

        # A second message while the turn runs is refused.
        busy = api.post(base + "sac/api/chat", json={"message": "again", "session_id": sid})
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"] == "turn_running"

        resp = api.post(base + f"sac/api/chat/sessions/{sid}/cancel")
        assert resp.status_code == 200 and resp.json() == {"cancelled": True}
        # The answer comes once the turn is over: its last events are already logged.
        session = api.get(base + f"sac/api/chat/sessions/{sid}").json()
        assert session["running"] is False
        assert [e["type"] for e in session["events"]][-2:] == ["cancelled", "turn_end"]
        tail = await _until(events, "turn_end")
        assert tail[-1] == session["events"][-1]
        results = [e for e in tail if e["type"] == "result"]
        assert all(r["is_error"] for r in results)
        assert api.post(base + f"sac/api/chat/sessions/{sid}/cancel").json() == {"cancelled": False}
        # Neither claude nor its tool is left running, and the later step never ran.
        left = await run_in_terminal(
            stack["url"], client.token, user, "long",
            "pgrep -f 'sleep 127' || echo no-tool; pgrep -f 'stream-json' || echo no-claude",
        )  # fmt: skip
        assert left.split() == ["no-tool", "no-claude"]
        assert api.get(base + "api/contents/after.txt").status_code == 404
        assert len(_model_requests(fake)) == 1

        # The session is still a conversation that can go on.
        httpx.delete(fake + "/_fake/script")
        httpx.delete(fake + "/_fake/requests")
        resp = api.post(
            base + "sac/api/chat", json={"message": "are you there?", "session_id": sid}
        )
        assert resp.status_code == 202, resp.text
        after = await _until(events, "turn_end")
        assert [e["type"] for e in after][-2:] == ["result", "turn_end"]
        assert after[-2]["is_error"] is False and after[-1]["exit_code"] == 0
        history = json.dumps(_model_requests(fake)[0]["messages"])
        assert "take long" in history and "are you there?" in history

        # Cancelled as soon as it starts (before claude has saved anything): the
        # session still takes the next message.
        resp = api.post(base + "sac/api/chat", json={"message": "never mind"})
        quick = resp.json()["session_id"]
        cancel = api.post(base + f"sac/api/chat/sessions/{quick}/cancel")
        assert cancel.status_code == 200, cancel.text
        resp = api.post(base + "sac/api/chat", json={"message": "hello again", "session_id": quick})
        assert resp.status_code == 202, resp.text
        log = await _until(events, "turn_end")
        while log[0]["turn_id"] != resp.json()["turn_id"]:
            log = await _until(events, "turn_end")
        assert [e["type"] for e in log][-2:] == ["result", "turn_end"]
        assert not [e for e in log if e["type"] == "error"]
        events.close()


@pytest.mark.asyncio
async def test_bad_chat_requests(stack: dict, new_user) -> None:
    user, client = new_user("badchat")
    resp = client.sac("POST", "agents", json={"slug": "bad", "api_key": "sk-unused-key"})
    assert resp.status_code == 201, resp.text
    client.start(user, "bad")
    base = server_url(stack["url"], user, "bad")
    api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
    try:
        cases = [
            ({}, 400, "missing_field"),
            ({"message": ""}, 400, "invalid_field"),
            ({"message": " \n\t "}, 400, "invalid_field"),
            ({"message": "x" * 100_001}, 400, "invalid_field"),
            ({"message": 42}, 400, "invalid_field"),
            ({"message": "nul\u0000byte"}, 400, "invalid_field"),
            ({"message": "hi", "session_id": "../../etc"}, 400, "invalid_field"),
            ({"message": "hi", "session_id": "'; DROP TABLE x; --"}, 400, "invalid_field"),
            ({"message": "hi", "session_id": 7}, 400, "invalid_field"),
            ({"message": "hi", "session_id": str(uuid.uuid4())}, 404, "not_found"),
            ({"message": "hi", "extra": 1}, 400, "invalid_field"),
        ]
        for body, status, code in cases:
            resp = api.post(base + "sac/api/chat", json=body)
            assert resp.status_code == status, (body, resp.text)
            assert resp.json()["error"] == code and resp.json()["message"], body
        raw = [
            (b"{nope", 400, "invalid_json"),
            (b"[1, 2]", 400, "invalid_json"),
            (b'{"message": "\\ud800 lone surrogate"}', 400, "invalid_field"),
            (b"\xff\xfe", 400, "invalid_json"),
            (b'{"message": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413, "too_large"),
        ]
        for content, status, code in raw:
            resp = api.post(base + "sac/api/chat", content=content)
            assert resp.status_code == status, (content[:40], resp.text)
            assert resp.json()["error"] == code
        unknown = uuid.uuid4()
        assert api.get(base + f"sac/api/chat/sessions/{unknown}").status_code == 404
        assert api.post(base + f"sac/api/chat/sessions/{unknown}/cancel").status_code == 404
        assert api.get(base + "sac/api/chat/sessions/not-a-uuid").status_code == 400
        # Bad input changed nothing.
        assert api.get(base + "sac/api/chat/sessions").json() == {"sessions": []}

        # Another user's token, or none: no chat, no events.
        _, other = new_user("otherchat")
        for headers in ({"Authorization": f"token {other.token}"}, {}):
            resp = httpx.post(base + "sac/api/chat", json={"message": "hi"}, headers=headers)
            assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.text
            resp = httpx.get(base + "sac/api/chat/sessions", headers=headers)
            assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.text
        for token, query, status in [
            (other.token, "", 403),
            (client.token, "?since=-1", 400),
            (client.token, "?since=abc", 400),
            (client.token, f"?session_id={unknown}", 404),
            (client.token, "?session_id=nope", 400),
        ]:
            with pytest.raises(HTTPClientError) as err:
                await _events(base, token, query)
            assert err.value.code == status, query
    finally:
        client.sac("DELETE", f"users/{user}/agents/bad")


@pytest.mark.asyncio
async def test_manager_survives_a_missing_cli_and_a_crash(tmp_path) -> None:
    """Without the stack: the ChatManager's own bookkeeping on disk."""
    from jupyter_sac.server_extension.chat import ChatManager

    def manager() -> ChatManager:
        return ChatManager(
            tmp_path / "chat", [str(tmp_path / "no-such-claude")], str(tmp_path), tmp_path
        )

    chat = manager()
    _, sub = chat.subscribe(None, 0, lambda: None)
    started = await chat.send("hello", None)
    events = [await asyncio.wait_for(sub.queue.get(), 60) for _ in range(3)]
    assert [e["type"] for e in events] == ["turn_start", "error", "turn_end"]
    assert "could not start the agent" in events[1]["message"]
    assert events[2]["exit_code"] is None
    sid = started["session_id"]
    (listed,) = chat.list()
    assert listed["running"] is False and listed["turns"] == 1
    # Another message is accepted (nothing is left "running").
    await chat.send("again", sid)
    events = [await asyncio.wait_for(sub.queue.get(), 60) for _ in range(3)]
    assert [e["type"] for e in events] == ["turn_start", "error", "turn_end"]
    await chat.stop()

    # A server that stopped during a turn: the next start closes that turn in the log.
    index = json.loads((tmp_path / "chat" / "sessions.json").read_text())
    index[sid]["running_turn"] = "lostturn"
    (tmp_path / "chat" / "sessions.json").write_text(json.dumps(index))
    chat = manager()
    session = await chat.session_with_events(sid)
    assert session["running"] is False and session["turns"] == 2
    tail = session["events"][-2:]
    assert [(e["type"], e["turn_id"]) for e in tail] == [
        ("error", "lostturn"), ("turn_end", "lostturn")
    ]  # fmt: skip
    assert [e["seq"] for e in session["events"]] == list(range(1, 9))
    backlog, _ = chat.subscribe(sid, 6, lambda: None)
    assert [e["seq"] for e in backlog] == [7, 8]
    await chat.stop()
