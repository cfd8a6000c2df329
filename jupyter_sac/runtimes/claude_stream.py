"""claude's headless output (``--output-format stream-json --verbose``) as chat events.

Pure: one stream-json message in, zero or more structured events out. The
event types are the chat API's (see docs/agent-runtime.md): ``text``,
``tool_use``, ``tool_result``, ``todos``, ``result``, ``error``, plus
``session`` for the CLI's init message.
"""

from __future__ import annotations

import json
from typing import Any

MAX_RESULT_CHARS = 64 * 1024


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'content')}]")
        text = "\n".join(parts)
    else:
        text = json.dumps(content) if content is not None else ""
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n… ({len(text) - MAX_RESULT_CHARS} more characters)"
    return text


def events_from_message(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return []
    kind = message.get("type")
    if kind == "system" and message.get("subtype") == "init":
        return [
            {
                "type": "session",
                "claude_session_id": message.get("session_id"),
                "model": message.get("model"),
                "tools": message.get("tools") or [],
                "cwd": message.get("cwd"),
            }
        ]
    if kind in ("assistant", "user"):
        content = (message.get("message") or {}).get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if kind == "assistant" else []
        events: list[dict[str, Any]] = []
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text" and kind == "assistant" and block.get("text"):
                events.append({"type": "text", "text": block["text"]})
            elif btype == "thinking" and block.get("thinking"):
                events.append({"type": "thinking", "text": block["thinking"]})
            elif btype == "tool_use":
                tool_input = block.get("input") if isinstance(block.get("input"), dict) else {}
                events.append(
                    {
                        "type": "tool_use",
                        "id": block.get("id"),
                        "name": block.get("name"),
                        "input": tool_input,
                    }
                )
                if block.get("name") == "TodoWrite" and isinstance(tool_input.get("todos"), list):
                    events.append({"type": "todos", "todos": tool_input["todos"]})
            elif btype == "tool_result":
                events.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": block.get("tool_use_id"),
                        "content": _tool_result_text(block.get("content")),
                        "is_error": bool(block.get("is_error")),
                    }
                )
        return events
    if kind == "result":
        return [
            {
                "type": "result",
                "is_error": bool(message.get("is_error")),
                "subtype": message.get("subtype"),
                "text": message.get("result") if isinstance(message.get("result"), str) else "",
                "usage": message.get("usage") or {},
                "cost_usd": message.get("total_cost_usd"),
                "duration_ms": message.get("duration_ms"),
                "num_turns": message.get("num_turns"),
            }
        ]
    return []
