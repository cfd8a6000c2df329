"""claude's headless output (``-p --output-format stream-json --verbose``) as chat events.

Pure: no I/O. ``ClaudeStream.feed`` takes one decoded stream-json message and
returns the chat events it means (the chat API's types, see docs/api.md):

- ``system``/``init`` → ``session`` (model, tools, CLI version);
- ``system``/``api_retry`` (the CLI retrying a failed model call) → ``error``
  with ``retry`` details; the turn goes on;
- ``assistant`` content blocks → ``text``, ``thinking``, ``tool_use``; an
  assistant message the CLI synthesised from a failed API call
  (``is_api_error_message``) → ``error``;
- ``user`` ``tool_result`` blocks → ``tool_result``, and after a successful
  ``TodoWrite`` → ``todos`` with the whole new list;
- ``result`` → ``error`` for each reported error, then ``result``.

Everything else (partial stream events, hook and status notices) is dropped.
The only state is the input of ``TodoWrite`` calls awaiting their result: the
list is announced once the tool has succeeded (a denied call changes nothing).
"""

from __future__ import annotations

import json
from typing import Any

# Tool results and long string inputs (a Write of a big file) are cut to this many
# characters: the event log and the websocket carry what a chat view shows.
MAX_RESULT_CHARS = 64 * 1024
MAX_INPUT_STRING_CHARS = 64 * 1024
TODO_TOOL = "TodoWrite"
TODO_STATUSES = ("pending", "in_progress", "completed")
# The CLI adds internal diagnostics to ``errors`` of an interrupted turn; not for users.
DIAGNOSTIC_PREFIX = "[ede_diagnostic]"


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters)"


def tool_result_text(content: Any) -> str:
    """A tool result's content as text: text blocks joined, other blocks named."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'content')}]")
            else:
                parts.append(str(block))
        text = "\n".join(parts)
    elif content is None:
        text = ""
    else:
        text = json.dumps(content, ensure_ascii=False)
    return clip(text, MAX_RESULT_CHARS)


def clip_input(value: Any) -> Any:
    """A tool input with overlong strings cut (keys and structure kept)."""
    if isinstance(value, str):
        return clip(value, MAX_INPUT_STRING_CHARS)
    if isinstance(value, dict):
        return {k: clip_input(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clip_input(v) for v in value]
    return value


def normalize_todos(todos: Any) -> list[dict[str, str]] | None:
    """TodoWrite's list as ``[{content, status, activeForm?}]``; None if not a list."""
    if not isinstance(todos, list):
        return None
    out: list[dict[str, str]] = []
    for item in todos:
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            continue
        status = item.get("status")
        todo = {
            "content": item["content"],
            "status": status if status in TODO_STATUSES else "pending",
        }
        if isinstance(item.get("activeForm"), str):
            todo["activeForm"] = item["activeForm"]
        out.append(todo)
    return out


def _retry_message(message: dict[str, Any]) -> str:
    status = message.get("error_status")
    what = f"model API error {status}" if status else "model API error"
    if isinstance(message.get("error"), str):
        what += f" ({message['error']})"
    delay = message.get("retry_delay_ms")
    when = f" in {delay / 1000:.1f} s" if isinstance(delay, int | float) else ""
    attempt, most = message.get("attempt"), message.get("max_retries")
    count = f" (attempt {attempt} of {most})" if attempt and most else ""
    return f"{what}; retrying{when}{count}"


class ClaudeStream:
    """Turns one claude process's stream-json messages into chat events."""

    def __init__(self) -> None:
        self._todo_inputs: dict[str, list[dict[str, str]]] = {}

    def feed(self, message: Any) -> list[dict[str, Any]]:
        if not isinstance(message, dict):
            return []
        kind = message.get("type")
        if kind == "system":
            return self._system(message)
        if kind in ("assistant", "user"):
            events = self._content(kind, message)
            parent = message.get("parent_tool_use_id")
            if isinstance(parent, str) and parent:
                # A subagent's step (Task tool): the chat view nests it under that call.
                for event in events:
                    event["parent_tool_use_id"] = parent
            return events
        if kind == "result":
            return self._result(message)
        return []

    def _system(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        subtype = message.get("subtype")
        if subtype == "init":
            tools = message.get("tools")
            return [
                {
                    "type": "session",
                    "model": message.get("model"),
                    "tools": [t for t in tools if isinstance(t, str)]
                    if isinstance(tools, list)
                    else [],
                    "claude_code_version": message.get("claude_code_version"),
                    "permission_mode": message.get("permissionMode"),
                }
            ]
        if subtype == "api_retry":
            return [
                {
                    "type": "error",
                    "message": _retry_message(message),
                    "retry": {
                        "attempt": message.get("attempt"),
                        "max_retries": message.get("max_retries"),
                        "delay_ms": message.get("retry_delay_ms"),
                        "status": message.get("error_status"),
                    },
                }
            ]
        return []

    def _content(self, kind: str, message: dict[str, Any]) -> list[dict[str, Any]]:
        content = (message.get("message") or {}).get("content")
        if kind == "assistant" and message.get("is_api_error_message"):
            # The CLI gave up on a model call and says why as a synthetic answer.
            text = content if isinstance(content, str) else tool_result_text(content)
            return [
                {
                    "type": "error",
                    "message": text or "model API error",
                    "status": message.get("api_error_status"),
                }
            ]
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if kind == "assistant" and content else []
        events: list[dict[str, Any]] = []
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if kind == "assistant" and btype == "text" and block.get("text"):
                events.append({"type": "text", "text": str(block["text"])})
            elif kind == "assistant" and btype == "thinking" and block.get("thinking"):
                events.append({"type": "thinking", "text": str(block["thinking"])})
            elif kind == "assistant" and btype == "tool_use":
                events.append(self._tool_use(block))
            elif kind == "user" and btype == "tool_result":
                events.extend(self._tool_result(block, message.get("tool_use_result")))
        return events

    def _tool_use(self, block: dict[str, Any]) -> dict[str, Any]:
        raw_input = block.get("input")
        tool_input = raw_input if isinstance(raw_input, dict) else {}
        tool_id = block.get("id") if isinstance(block.get("id"), str) else None
        if block.get("name") == TODO_TOOL and tool_id is not None:
            todos = normalize_todos(tool_input.get("todos"))
            if todos is not None:
                self._todo_inputs[tool_id] = todos
        return {
            "type": "tool_use",
            "id": tool_id,
            "name": block.get("name"),
            "input": clip_input(tool_input),
        }

    def _tool_result(self, block: dict[str, Any], structured: Any) -> list[dict[str, Any]]:
        tool_use_id = block.get("tool_use_id")
        is_error = bool(block.get("is_error"))
        events: list[dict[str, Any]] = [
            {
                "type": "tool_result",
                "tool_use_id": tool_use_id,
                "content": tool_result_text(block.get("content")),
                "is_error": is_error,
            }
        ]
        requested = self._todo_inputs.pop(tool_use_id, None) if tool_use_id else None
        if requested is not None and not is_error:
            # The CLI reports the list it now holds; the call's input is the fallback.
            done = structured.get("newTodos") if isinstance(structured, dict) else None
            todos = normalize_todos(done)
            events.append({"type": "todos", "todos": todos if todos is not None else requested})
        return events

    def _result(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        errors = message.get("errors")
        errors = [e for e in errors if isinstance(e, str)] if isinstance(errors, list) else []
        events: list[dict[str, Any]] = [
            {"type": "error", "message": e} for e in errors if not e.startswith(DIAGNOSTIC_PREFIX)
        ]
        usage = message.get("usage")
        events.append(
            {
                "type": "result",
                "is_error": bool(message.get("is_error")),
                "subtype": message.get("subtype"),
                "text": message.get("result") if isinstance(message.get("result"), str) else "",
                "usage": usage if isinstance(usage, dict) else {},
                "cost_usd": message.get("total_cost_usd"),
                "duration_ms": message.get("duration_ms"),
                "num_turns": message.get("num_turns"),
            }
        )
        return events
