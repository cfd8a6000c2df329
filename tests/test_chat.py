"""Chat mode: headless claude turns through the extension's REST API and websocket,
with the real CLI talking to the scripted fake model through the credential proxy."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from helpers import HubApi, running_agent
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_sac.testing.stack import poll_until

pytestmark = pytest.mark.stack


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


async def _events(base: str, token: str, query: str = "") -> WebSocketClientConnection:
    return await websocket_connect(
        HTTPRequest(
            base.replace("http", "ws", 1) + "sac/api/chat/events" + query,
            headers={"Authorization": f"token {token}"},
        )
    )


async def _until(conn: WebSocketClientConnection, kind: str, timeout: float = 90) -> list[dict]:
    seen: list[dict] = []
    while not seen or seen[-1]["type"] != kind:
        msg = await asyncio.wait_for(conn.read_message(), timeout)
        assert msg is not None, f"socket closed; events so far: {seen}"
        seen.append(json.loads(msg))
    return seen


@pytest.mark.asyncio
async def test_chat_turns_stream_events_in_order_and_resume(stack: dict, fake: str) -> None:
    user = f"chat{uuid.uuid4().hex[:6]}"
    base = f"{stack['url']}user/{user}/talk/"
    with running_agent(stack["admin"], user, "talk", **_agent_fields(fake)) as client:
        _allow_all(client, user, "talk")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        todos = [{"content": "write the file", "status": "in_progress", "activeForm": "Writing"}]
        httpx.post(
            fake + "/_fake/script",
            json={
                "replies": [
                    {"tool_use": {"name": "TodoWrite", "input": {"todos": todos}}},
                    {
                        "text": "Writing it now.",
                        "tool_use": {
                            "name": "Bash",
                            "input": {"command": "echo from-chat > /workspace/chat.txt"},
                        },
                    },
                    "The file is written.",
                    "You asked me to write a file.",
                ]
            },
        )
        events = await _events(base, client.token)
        resp = api.post(base + "sac/api/chat", json={"message": "write chat.txt"})
        assert resp.status_code == 202, resp.text
        sid = resp.json()["session_id"]
        seen = await _until(events, "turn_end")
        kinds = [e["type"] for e in seen]
        assert kinds[0] == "turn_start" and kinds[-1] == "turn_end"
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
        assert all(e["session_id"] == sid for e in seen)
        order = [k for k in kinds if k in ("todos", "tool_use", "tool_result", "text", "result")]
        assert order.index("todos") < order.index("text") < order.index("result")
        bash = next(e for e in seen if e["type"] == "tool_use" and e["name"] == "Bash")
        assert bash["input"]["command"] == "echo from-chat > /workspace/chat.txt"
        result_of_bash = next(
            e for e in seen if e["type"] == "tool_result" and e["tool_use_id"] == bash["id"]
        )
        assert result_of_bash["is_error"] is False
        assert seen.index(bash) < seen.index(result_of_bash)
        todo_event = next(e for e in seen if e["type"] == "todos")
        assert todo_event["todos"][0]["content"] == "write the file"
        result = next(e for e in seen if e["type"] == "result")
        assert result["text"] == "The file is written." and result["is_error"] is False
        assert result["usage"]["input_tokens"] > 0 and "cost_usd" in result
        content = api.get(base + "api/contents/chat.txt").json()
        assert content["content"].strip() == "from-chat"

        # Listed, replayable, and resumable as one conversation.
        sessions = api.get(base + "sac/api/chat/sessions").json()["sessions"]
        assert [(s["session_id"], s["title"], s["turns"]) for s in sessions] == [
            (sid, "write chat.txt", 1)
        ]
        logged = api.get(base + f"sac/api/chat/sessions/{sid}").json()["events"]
        assert [e["seq"] for e in logged] == [e["seq"] for e in seen]
        httpx.delete(fake + "/_fake/requests")
        resp = api.post(
            base + "sac/api/chat", json={"message": "what did I ask?", "session_id": sid}
        )
        assert resp.status_code == 202, resp.text
        second = await _until(events, "turn_end")
        assert next(e for e in second if e["type"] == "result")["text"] == (
            "You asked me to write a file."
        )
        sent = [r["body"] for r in httpx.get(fake + "/_fake/requests").json()["requests"]]
        history = json.dumps(next(b for b in sent if b.get("tools"))["messages"])
        assert "write chat.txt" in history and "what did I ask?" in history
        # A reconnecting client replays what it missed.
        late = await _events(base, client.token, f"?session_id={sid}&since={seen[-1]['seq']}")
        replayed = await _until(late, "turn_end")
        assert [e["seq"] for e in replayed] == [e["seq"] for e in second]
        late.close()
        events.close()


@pytest.mark.asyncio
async def test_cancel_stops_a_long_turn(stack: dict, fake: str) -> None:
    user = f"stop{uuid.uuid4().hex[:6]}"
    base = f"{stack['url']}user/{user}/long/"
    with running_agent(stack["admin"], user, "long", **_agent_fields(fake)) as client:
        _allow_all(client, user, "long")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        command = "sleep 120 && echo late > /workspace/late.txt"
        httpx.post(
            fake + "/_fake/script",
            json={"replies": [{"tool_use": {"name": "Bash", "input": {"command": command}}}]},
        )
        events = await _events(base, client.token)
        sid = api.post(base + "sac/api/chat", json={"message": "take long"}).json()["session_id"]
        await _until(events, "tool_use")
        # A second message while the turn runs is refused.
        busy = api.post(base + "sac/api/chat", json={"message": "again", "session_id": sid})
        assert busy.status_code == 409 and "already running" in busy.json()["message"]

        resp = api.post(base + f"sac/api/chat/sessions/{sid}/cancel")
        assert resp.status_code == 200 and resp.json() == {"cancelled": True}
        tail = await _until(events, "turn_end", timeout=30)
        assert "cancelled" in [e["type"] for e in tail]
        session = api.get(base + f"sac/api/chat/sessions/{sid}").json()
        assert session["running"] is False
        assert api.get(base + "api/contents/late.txt").status_code == 404
        # Nothing of the turn is left running in the sandbox.
        status = poll_until(
            lambda: (
                api.post(base + f"sac/api/chat/sessions/{sid}/cancel").json()
                == {"cancelled": False}
            ),
            10,
            "no running turn",
        )
        assert status
        events.close()


def test_bad_chat_requests(stack: dict, new_user) -> None:
    user, client = new_user("badchat")
    resp = client.sac("POST", "agents", json={"slug": "bad", "api_key": "sk-unused-key"})
    assert resp.status_code == 201, resp.text
    client.start(user, "bad")
    base = f"{stack['url']}user/{user}/bad/"
    api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
    try:
        cases = [
            ({"message": ""}, 400),
            ({"message": "x" * 100_001}, 400),
            ({"message": "hi", "session_id": "../../etc"}, 400),
            ({"message": "hi", "session_id": str(uuid.uuid4())}, 404),
            ({"message": "hi", "extra": 1}, 400),
        ]
        for body, status in cases:
            resp = api.post(base + "sac/api/chat", json=body)
            assert resp.status_code == status, (body, resp.text)
            assert "message" in resp.json()
        assert api.post(base + "sac/api/chat", content=b"{nope").status_code == 400
        assert api.get(base + f"sac/api/chat/sessions/{uuid.uuid4()}").status_code == 404
        assert api.get(base + "sac/api/chat/sessions").json() == {"sessions": []}
        # Without the user's token: no chat.
        assert httpx.post(base + "sac/api/chat", json={"message": "hi"}).status_code in (
            302,
            401,
            403,
        )
    finally:
        client.sac("DELETE", f"users/{user}/agents/bad")
