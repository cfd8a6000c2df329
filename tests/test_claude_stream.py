"""claude's stream-json messages as chat events (pure)."""

from __future__ import annotations

from jupyter_sac.runtimes.claude_stream import MAX_RESULT_CHARS, events_from_message


def test_assistant_blocks_become_text_tool_use_and_todos() -> None:
    todos = [{"content": "plot", "status": "pending", "activeForm": "Plotting"}]
    message = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "t2", "name": "TodoWrite", "input": {"todos": todos}},
            ]
        },
    }
    events = events_from_message(message)
    assert [e["type"] for e in events] == ["text", "tool_use", "tool_use", "todos"]
    assert events[1] == {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}
    assert events[3]["todos"] == todos


def test_tool_results_are_text_and_truncated() -> None:
    big = "x" * (MAX_RESULT_CHARS + 10)
    message = {
        "type": "user",
        "message": {
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": big, "is_error": True},
                {"type": "tool_result", "tool_use_id": "t2",
                 "content": [{"type": "text", "text": "a"}, {"type": "image"}]},
            ]
        },
    }  # fmt: skip
    first, second = events_from_message(message)
    assert first["is_error"] is True and first["content"].endswith("(10 more characters)")
    assert second == {"type": "tool_result", "tool_use_id": "t2", "content": "a\n[image]",
                      "is_error": False}  # fmt: skip


def test_result_and_init_and_noise() -> None:
    result = events_from_message(
        {"type": "result", "subtype": "success", "is_error": False, "result": "done",
         "usage": {"input_tokens": 3}, "total_cost_usd": 0.01, "duration_ms": 5, "num_turns": 2}
    )  # fmt: skip
    assert result == [
        {"type": "result", "is_error": False, "subtype": "success", "text": "done",
         "usage": {"input_tokens": 3}, "cost_usd": 0.01, "duration_ms": 5, "num_turns": 2}
    ]  # fmt: skip
    init = events_from_message({"type": "system", "subtype": "init", "session_id": "s"})
    assert init[0]["type"] == "session" and init[0]["claude_session_id"] == "s"
    for noise in (None, "text", [], {"type": "stream_event"}, {"type": "user", "message": {}}):
        assert events_from_message(noise) == []
