"""Conversation capture end to end: claude's hooks -> extension spool -> `sac` service
-> PostgreSQL, checked against the transcript files claude itself wrote; also while
the service is away and after the single-user server is killed mid-upload."""

from __future__ import annotations

import json
import uuid
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import (
    HubApi,
    allow_all,
    model_agent,
    run_in_terminal,
    running_agent,
    script_model,
    server_url,
    stored_history,
)
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from sac_testing.stack import poll_until, stack_process_paused

pytestmark = pytest.mark.stack

# Read every transcript of the agent: one JSON object per line, as claude wrote them.
TRANSCRIPTS = "cat $CLAUDE_CONFIG_DIR/projects/*/*.jsonl 2>/dev/null"


def _claude(prompt: str, base_url: str | None = None) -> str:
    # A model on this machine's loopback is reached through the sandbox's egress
    # proxy (in the hub, not the service), which NO_PROXY would otherwise bypass.
    env = f"ANTHROPIC_BASE_URL={base_url} NO_PROXY= no_proxy= " if base_url else ""
    return f"cd /workspace && {env}claude -p {json.dumps(prompt)} --output-format text"


def service_paused(stack: dict) -> AbstractContextManager[int]:
    """The `sac` service is unreachable (stopped, not killed) for the block's duration."""
    return stack_process_paused(stack["pid"], b"jupyter_sac.service")


def _transcript_keys(text: str) -> list[tuple[str, str]]:
    keys = []
    for line in text.splitlines():
        entry = json.loads(line)
        if entry.get("uuid"):
            keys.append((entry.get("sessionId"), entry["uuid"]))
    return keys


async def _matches_transcripts(stack: dict, client: HubApi, user: str, slug: str) -> list:
    text = await run_in_terminal(stack["url"], client.token, user, slug, TRANSCRIPTS)
    lines = [line for line in text.splitlines() if line.strip()]
    expected = _transcript_keys(text)
    assert expected, "claude wrote transcript entries"

    def stored_all() -> list | None:
        events = stored_history(client, user, slug)
        return events if len(events) >= len(lines) else None

    try:
        events = poll_until(stored_all, 60, "history rows for every transcript line")
    except TimeoutError:
        status = httpx.get(
            server_url(stack["url"], user, slug) + "sac/api/history/status",
            headers={"Authorization": f"token {client.token}"},
        ).text
        raise AssertionError(
            f"{len(lines)} lines, {len(stored_history(client, user, slug))} stored;"
            f" the sandbox's spool: {status}"
        ) from None
    # Exactly one row per transcript line: nothing lost, nothing doubled.
    assert len(events) == len(lines)
    stored_keys = {(e["session_id"], e["uuid"]) for e in events}
    assert set(expected) <= stored_keys
    return events


# Each capture test's turn: one tool call, then the two answers of two turns.
CAPTURED_TOOL = {"tool_use": {"name": "Bash", "input": {"command": "echo captured"}}}


@pytest.mark.asyncio
async def test_history_rows_equal_transcript_entries(stack: dict, fake: str) -> None:
    user = f"hist{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "rec", **model_agent(fake)) as client:
        allow_all(client, user, "rec")
        script_model(fake, CAPTURED_TOOL, "first answer", "second answer")
        out = await run_in_terminal(
            stack["url"],
            client.token,
            user,
            "rec",
            _claude("run echo") + "; " + _claude("say more"),
            timeout=180,
        )
        assert "first answer" in out and "second answer" in out
        events = await _matches_transcripts(stack, client, user, "rec")
        prompts = [e for e in events if e["kind"] == "user"]
        assert any("run echo" in json.dumps(e["payload"]) for e in prompts)

        sessions = client.sac("GET", f"users/{user}/agents/rec/history/sessions").json()
        assert {s["first_prompt"] for s in sessions["sessions"]} == {"run echo", "say more"}


@pytest.mark.asyncio
async def test_capture_survives_service_outage_and_server_kill(stack: dict, fake: str) -> None:
    user = f"outage{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "rec")
    # The fake model's address may be reached from this user's sandboxes.
    admin: HubApi = stack["admin"]
    admin.create_user(user)
    host = urlsplit(fake).hostname
    resp = admin.sac("PUT", f"users/{user}/settings", json={"egress_allow": [host]})
    assert resp.status_code == 200, resp.text
    with running_agent(admin, user, "rec", **model_agent(fake)) as client:
        allow_all(client, user, "rec")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=30)
        httpx.post(fake + "/_fake/script", json={"replies": ["while away", "still away"]})
        with service_paused(stack):
            # The model is reached directly here: the service (and its proxy) is down.
            await run_in_terminal(
                stack["url"],
                client.token,
                user,
                "rec",
                _claude("during outage", fake) + "; " + _claude("again", fake),
                timeout=180,
            )
            status = api.get(base + "sac/api/history/status").json()
            assert status["backlog"] > 0, status

            # Kill -9 the single-user server while its upload hangs on the paused service.
            ws = base.replace("http", "ws", 1) + "terminals/websocket/killer"
            api.post(base + "api/terminals", json={"name": "killer"})
            conn = await websocket_connect(
                HTTPRequest(ws, headers={"Authorization": f"token {client.token}"})
            )
            conn.write_message(json.dumps(["stdin", "kill -9 $PPID\r"]))
            while await conn.read_message() is not None:
                pass
        client.stop(user, "rec")

        client.start(user, "rec")
        await _matches_transcripts(stack, client, user, "rec")
        status = poll_until(
            lambda: (s := api.get(base + "sac/api/history/status").json())["backlog"] == 0 and s,
            60,
            "the spool to drain",
        )
        assert status["last_error"] is None


@pytest.mark.asyncio
async def test_chat_history_rows_equal_transcript_entries(stack: dict, fake: str) -> None:
    """Chat sessions are captured by the extension itself (no hook process): each
    transcript line of a two-turn chat session is stored once."""
    user = f"chist{uuid.uuid4().hex[:6]}"
    base = server_url(stack["url"], user, "rec")
    with running_agent(stack["admin"], user, "rec", **model_agent(fake)) as client:
        allow_all(client, user, "rec")
        api = httpx.Client(headers={"Authorization": f"token {client.token}"}, timeout=60)
        script_model(fake, CAPTURED_TOOL, "first answer", "second answer")
        events = await websocket_connect(
            HTTPRequest(
                base.replace("http", "ws", 1) + "sac/api/chat/events",
                headers={"Authorization": f"token {client.token}"},
            )
        )
        sid = None
        for message in ("run echo in chat", "say more in chat"):
            resp = api.post(base + "sac/api/chat", json={"message": message, "session_id": sid})
            assert resp.status_code == 202, resp.text
            sid = resp.json()["session_id"]
            while json.loads(await events.read_message())["type"] != "turn_end":
                pass
        events.close()
        stored = await _matches_transcripts(stack, client, user, "rec")
        assert {e["session_id"] for e in stored} == {sid}
        prompts = [e for e in stored if e["kind"] == "user"]
        assert any("run echo in chat" in json.dumps(e["payload"]) for e in prompts)
        assert any("say more in chat" in json.dumps(e["payload"]) for e in prompts)
