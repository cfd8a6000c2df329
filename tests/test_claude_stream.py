"""claude's stream-json messages as chat events (pure).

The files in tests/data/claude_stream/ are the real CLI's stdout (the version
bundled in claude-agent-sdk), recorded against the fake Anthropic API:
- tool_turn: text, a TodoWrite call, a Write call, a final answer (with
  CLAUDE_CODE_ENABLE_TASKS=0, as chat turns run);
- interrupted: a Bash call interrupted by SIGINT while it ran;
- api_error: the model API answering 401 (CLAUDE_CODE_MAX_RETRIES=1);
- no_conversation: ``--resume`` of a session the CLI does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jupyter_sac.runtimes.claude_stream import (
    MAX_INPUT_STRING_CHARS,
    MAX_RESULT_CHARS,
    ClaudeStream,
)

DATA = Path(__file__).parent / "data" / "claude_stream"


def replay(name: str) -> list[dict[str, Any]]:
    stream = ClaudeStream()
    events: list[dict[str, Any]] = []
    for line in (DATA / f"{name}.jsonl").read_text().splitlines():
        events.extend(stream.feed(json.loads(line)))
    return events


def test_recorded_tool_turn() -> None:
    events = replay("tool_turn")
    assert [e["type"] for e in events] == [
        "session", "text", "tool_use", "tool_result", "todos",
        "tool_use", "tool_result", "text", "result",
    ]  # fmt: skip
    session, plan, todo_call, todo_result, todos, write, written, done, result = events
    assert session["model"] == "claude-sonnet-4-5" and "TodoWrite" in session["tools"]
    assert plan["text"] == "Planning."
    assert todo_call["name"] == "TodoWrite"
    assert todo_result["tool_use_id"] == todo_call["id"] and not todo_result["is_error"]
    assert todos["todos"] == [
        {"content": "write the file", "status": "in_progress", "activeForm": "Writing the file"},
        {"content": "check", "status": "pending", "activeForm": "Checking"},
    ]
    assert write["name"] == "Write"
    assert write["input"] == {"file_path": "/tmp/chatexp/ws/out.txt", "content": "hello\n"}
    assert written["tool_use_id"] == write["id"]
    assert written["content"].startswith("File created successfully")
    assert done["text"] == "done"
    assert result["is_error"] is False and result["text"] == "done"
    assert result["num_turns"] == 3 and result["cost_usd"] > 0 and result["duration_ms"] >= 0
    assert result["usage"]["input_tokens"] == 51 and result["usage"]["output_tokens"] == 3


def test_recorded_interrupted_turn() -> None:
    events = replay("interrupted")
    assert [e["type"] for e in events] == [
        "session", "text", "tool_use", "tool_result", "result"
    ]  # fmt: skip
    rejected, result = events[3], events[4]
    assert rejected["is_error"] is True
    # The CLI's internal diagnostic is not shown as an error; the result says it failed.
    assert result["is_error"] is True and result["subtype"] == "error_during_execution"


def test_recorded_api_error() -> None:
    events = replay("api_error")
    assert [e["type"] for e in events] == ["session", "error", "error", "result"]
    retry, final, result = events[1:]
    assert retry["retry"] == {"attempt": 1, "max_retries": 1, "delay_ms": 575, "status": 401}
    assert retry["message"].startswith("model API error 401 (authentication_failed); retrying")
    assert final == {"type": "error", "message": "Invalid API key · Fix external API key",
                     "status": 401}  # fmt: skip
    assert result["is_error"] is True


def test_recorded_unknown_conversation() -> None:
    events = replay("no_conversation")
    assert [e["type"] for e in events] == ["error", "result"]
    assert events[0]["message"].startswith("No conversation found with session ID")


def test_tool_results_are_text_and_truncated() -> None:
    big = "x" * (MAX_RESULT_CHARS + 10)
    message = {
        "type": "user",
        "message": {
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": big, "is_error": True},
                {"type": "tool_result", "tool_use_id": "t2",
                 "content": [{"type": "text", "text": "a"}, {"type": "image"}]},
                {"type": "text", "text": "user text is not an event"},
            ]
        },
    }  # fmt: skip
    first, second = ClaudeStream().feed(message)
    assert first["is_error"] is True and first["content"].endswith("(10 more characters)")
    assert len(first["content"]) < MAX_RESULT_CHARS + 100
    assert second == {"type": "tool_result", "tool_use_id": "t2", "content": "a\n[image]",
                      "is_error": False}  # fmt: skip


def test_long_tool_inputs_are_cut() -> None:
    content = "y" * (MAX_INPUT_STRING_CHARS * 2)
    message = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "id": "w", "name": "Write",
                                 "input": {"file_path": "/a", "content": content}}]},
    }  # fmt: skip
    (event,) = ClaudeStream().feed(message)
    assert event["input"]["file_path"] == "/a"
    assert event["input"]["content"].endswith(f"({MAX_INPUT_STRING_CHARS} more characters)")


def test_todos_only_after_the_call_succeeds() -> None:
    stream = ClaudeStream()
    todos = [{"content": "plot", "status": "pending", "activeForm": "Plotting"},
             {"content": 3}, "junk", {"content": "odd status", "status": "weird"}]  # fmt: skip
    call = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "id": "t1", "name": "TodoWrite",
                                 "input": {"todos": todos}},
                                {"type": "thinking", "thinking": "hmm"}]},
    }  # fmt: skip
    assert [e["type"] for e in stream.feed(call)] == ["tool_use", "thinking"]
    denied = {
        "type": "user",
        "message": {
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "denied", "is_error": True}
            ]
        },
    }
    assert [e["type"] for e in stream.feed(denied)] == ["tool_result"]
    stream.feed(call)
    # Without the CLI's structured result, the call's input is the list.
    ok = {
        "type": "user",
        "message": {"content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    }
    _, listed = stream.feed(ok)
    assert listed["todos"] == [
        {"content": "plot", "status": "pending", "activeForm": "Plotting"},
        {"content": "odd status", "status": "pending"},
    ]


def test_subagent_steps_name_their_parent() -> None:
    message = {
        "type": "assistant",
        "parent_tool_use_id": "task1",
        "message": {"content": [{"type": "text", "text": "inside"}]},
    }
    assert ClaudeStream().feed(message) == [
        {"type": "text", "text": "inside", "parent_tool_use_id": "task1"}
    ]


def test_noise_and_odd_shapes_are_ignored() -> None:
    stream = ClaudeStream()
    for noise in (
        None, "text", [], 3, {"type": "stream_event"}, {"type": "user", "message": {}},
        {"type": "system", "subtype": "hook_response"}, {"type": "assistant", "message": None},
        {"type": "assistant", "message": {"content": [None, 1, {"type": "text", "text": ""}]}},
    ):  # fmt: skip
        assert stream.feed(noise) == []
    (odd,) = stream.feed({"type": "result", "usage": "?", "result": 5, "errors": "no"})
    assert odd["usage"] == {} and odd["text"] == "" and odd["is_error"] is False
