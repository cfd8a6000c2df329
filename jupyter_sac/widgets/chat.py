"""AgentChat: talk to an agent, watching what it does as it does it."""

from __future__ import annotations

import json
import threading
from typing import Any

import ipywidgets as w

from ..client import Agent
from ._base import (
    MUTED_STYLE,
    OK_STYLE,
    SacWidget,
    describe_input,
    error_html,
    error_text,
    esc,
    muted_html,
    shorten,
)

TEXT_STYLE = "white-space: pre-wrap; margin: 0.2em 0"
# How much of a tool's input and result the chat shows (the event log keeps all).
SHOW_CHARS = 20_000
TODO_MARKS = {"completed": "☑", "in_progress": "◐", "pending": "☐"}


def _pre(text: str) -> str:
    if len(text) > SHOW_CHARS:
        text = text[:SHOW_CHARS] + f"\n… ({len(text) - SHOW_CHARS} more characters)"
    return f'<pre style="white-space: pre-wrap; margin: 0">{esc(text)}</pre>'


class ChatItem:
    """One entry of the transcript: ``kind`` (``prompt``, ``text``, ``thinking``,
    ``tool``, ``todos``, ``result``, ``error``, ``cancelled``), ``text`` (plain
    text) and ``widget`` (what is shown)."""

    def __init__(self, kind: str, text: str, widget: w.Widget):
        self.kind, self.text, self.widget = kind, text, widget

    def __repr__(self) -> str:
        return f"<{self.kind}: {shorten(self.text, 60)}>"


class ToolCall(ChatItem):
    """A tool call: a collapsible item (``widget``, an Accordion) titled with the
    tool and a short form of its input, holding ``input_view`` and ``result_view``
    (HTML). ``id``, ``name``, ``input``, ``result`` (None until it comes) and
    ``is_error``."""

    def __init__(self, event: dict[str, Any]):
        self.id: str = event.get("id", "")
        self.name: str = event.get("name", "?")
        self.input: Any = event.get("input")
        self.result: str | None = None
        self.is_error = False
        self.subagent = bool(event.get("parent_tool_use_id"))
        self.input_view = w.HTML(
            "<b>Input</b>" + _pre(json.dumps(self.input, indent=2, ensure_ascii=False))
        )
        self.result_view = w.HTML(muted_html("running…"))
        accordion = w.Accordion(children=[w.VBox([self.input_view, self.result_view])])
        accordion.selected_index = None
        super().__init__("tool", self._line(), accordion)
        self._title()

    def _line(self) -> str:
        line = f"{self.name}: {describe_input(self.name, self.input, 100)}"
        return ("↳ " if self.subagent else "") + line

    def _title(self) -> None:
        mark = "…" if self.result is None else ("✗" if self.is_error else "✓")
        self.widget.set_title(0, f"{mark} {shorten(self._line(), 110)}")

    def set_result(self, content: str, is_error: bool) -> None:
        self.result, self.is_error = content, is_error
        label = "<b>Error</b>" if is_error else "<b>Result</b>"
        self.result_view.value = label + _pre(content)
        self.text = self._line() + ("\n  ✗ " if is_error else "\n  → ") + shorten(content, 200)
        self._title()


class AgentChat(SacWidget):
    """A chat with one agent: type a prompt, press Send, and watch the answer come.

    >>> chat = AgentChat(Client().agent("helper"))
    >>> chat                              # the prompt box, Send, and the transcript

    The transcript shows the assistant's text, each tool call as a collapsible item
    (its input and, when it comes, its result), the agent's todo list, errors, and
    at the end of each turn its cost, tokens and duration. Follow-ups continue the
    same conversation (``session_id``); New conversation starts another. Cancel
    stops a running turn. The turn runs in a background thread.

    Attributes for code: ``prompt`` (Textarea), ``send_button``, ``cancel_button``
    (shown while a turn runs), ``new_button``, ``status`` (HTML), ``transcript``
    (VBox), ``items`` (``ChatItem`` list; tool calls are ``ToolCall``),
    ``running``, ``session_id``, ``last_result`` (the last ``result`` event).
    ``submit(prompt)`` sends from code."""

    def __init__(self, agent: Agent, session_id: str | None = None) -> None:
        self.agent = agent
        super().__init__(agent.client, layout=w.Layout(width="100%"))
        self.session_id: str | None = session_id
        self.running = False
        self.items: list[ChatItem] = []
        self.last_result: dict[str, Any] | None = None
        self._tools: dict[str, ToolCall] = {}
        self._todos: ChatItem | None = None
        self._cancel_wanted = threading.Event()
        self.prompt = w.Textarea(
            placeholder=f"Ask {agent.slug}…", layout=w.Layout(width="100%", height="5em")
        )
        self.send_button = w.Button(description="Send", icon="paper-plane", button_style="primary")
        self.cancel_button = w.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            layout=w.Layout(display="none"),
        )
        self.new_button = w.Button(
            description="New conversation", icon="plus", layout=w.Layout(width="auto")
        )
        self.status = w.HTML()
        self.transcript = w.VBox(layout=w.Layout(width="100%"))
        self.send_button.on_click(lambda _: self.submit())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.new_button.on_click(lambda _: self.new_conversation())
        self.children = (
            w.HTML(f"<b>Chat with {esc(agent.slug)}</b>"),
            self.transcript,
            self.prompt,
            w.HBox([self.send_button, self.cancel_button, self.new_button, self.status]),
        )

    def _wants_client(self) -> bool:
        return False  # the agent's client is the caller's

    # ---- sending ---------------------------------------------------------------------

    def submit(self, prompt: str | None = None) -> None:
        """Send ``prompt`` (default: the prompt box's text) as the next turn."""
        text = self.prompt.value if prompt is None else prompt
        if not text.strip():
            self.status.value = error_html("type a message first")
            return
        if self.running:
            self.status.value = error_html("a turn is running: wait for it or cancel it")
            return
        if prompt is None:
            self.prompt.value = ""
        self.running = True
        self._cancel_wanted.clear()
        self._todos = None
        self._buttons()
        self.status.value = muted_html("sending…")
        self._block("prompt", text, f"<b>You:</b> {esc(text)}")
        self._spawn("chat", self._turn, text, self.session_id)

    def _turn(self, text: str, session_id: str | None) -> None:
        cancel_sent = False
        try:
            for event in self.agent.stream(text, session_id):
                if self.session_id != event.get("session_id") and event.get("session_id"):
                    self.session_id = event["session_id"]
                if self._cancel_wanted.is_set() and not cancel_sent:
                    cancel_sent = True
                    self._spawn("cancel", self._cancel_now)
                self._later(self._render, event)
        except Exception as e:
            self._later(self._error, error_text(e))
        finally:
            self._later(self._finished)

    def cancel(self) -> None:
        """Stop the running turn (like Ctrl-C); its ``cancelled`` event follows."""
        if not self.running:
            return
        self._cancel_wanted.set()
        self.status.value = muted_html("cancelling…")
        self.cancel_button.disabled = True
        if self.session_id:
            self._spawn("cancel", self._cancel_now)

    def _cancel_now(self) -> None:
        if self.session_id is None:
            return
        try:
            self.agent.cancel(self.session_id)
        except Exception as e:
            self._later(self._error, f"cancel failed: {error_text(e)}")

    def new_conversation(self) -> None:
        """The next prompt starts a new session (the transcript stays)."""
        if self.running:
            self.status.value = error_html("a turn is running: wait for it or cancel it")
            return
        self.session_id = None
        self.status.value = muted_html("the next message starts a new conversation")
        self._add(ChatItem("note", "— new conversation —", w.HTML("<hr>")))

    def _buttons(self) -> None:
        self.send_button.disabled = self.running
        self.new_button.disabled = self.running
        self.cancel_button.disabled = False
        self.cancel_button.layout.display = "" if self.running else "none"

    # ---- drawing events ----------------------------------------------------------------

    def _add(self, item: ChatItem) -> None:
        self.items.append(item)
        self.transcript.children = (*self.transcript.children, item.widget)

    def _block(self, kind: str, text: str, inner: str, style: str = "") -> None:
        self._add(ChatItem(kind, text, w.HTML(f'<div style="{TEXT_STYLE}; {style}">{inner}</div>')))

    def _render(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "turn_start":
            self.status.value = muted_html("working…")
        elif kind == "session":
            model = event.get("model")
            self.status.value = muted_html(f"working… ({model})" if model else "working…")
        elif kind == "text":
            text = event.get("text", "")
            self._block("text", text, f"<b>{esc(self.agent.slug)}:</b> {esc(text)}")
        elif kind == "thinking":
            text = event.get("text", "")
            self._block("thinking", text, f"<i>{esc(text)}</i>", MUTED_STYLE)
        elif kind == "tool_use":
            call = ToolCall(event)
            self._tools[call.id] = call
            self._add(call)
        elif kind == "tool_result":
            call = self._tools.get(event.get("tool_use_id", ""))
            content = str(event.get("content", ""))
            if call is None:  # its call came before this widget listened
                self._add(ChatItem("text", content, w.HTML(_pre(content))))
            else:
                call.set_result(content, bool(event.get("is_error")))
        elif kind == "todos":
            self._show_todos(event.get("todos") or [])
        elif kind == "result":
            self.last_result = {
                k: v
                for k, v in event.items()
                if k not in ("seq", "session_id", "turn_id", "time", "type")
            }
            text = _result_line(self.last_result)
            style = "" if self.last_result.get("is_error") else OK_STYLE
            self._block("result", text, esc(text), f"{style}; font-size: 0.9em")
        elif kind == "error":
            self._error(_error_line(event))
        elif kind == "cancelled":
            self._add(ChatItem("cancelled", "cancelled", w.HTML(muted_html("⏹ cancelled"))))
        elif kind == "turn_end":
            for call in self._tools.values():
                if call.result is None:
                    call.result_view.value = muted_html("no result (the turn ended)")

    def _show_todos(self, todos: list[dict[str, Any]]) -> None:
        lines = []
        html = []
        for todo in todos:
            status = todo.get("status", "pending")
            mark = TODO_MARKS.get(status, "☐")
            label = todo.get("activeForm") if status == "in_progress" else todo.get("content")
            label = label or todo.get("content", "")
            lines.append(f"{mark} {label}")
            style = "text-decoration: line-through;" if status == "completed" else ""
            html.append(f'<div style="{style}">{mark} {esc(label)}</div>')
        text = "Todo:\n" + "\n".join(lines)
        body = "<b>Todo</b>" + "".join(html)
        if self._todos is None:
            self._todos = ChatItem("todos", text, w.HTML(body))
            self._add(self._todos)
        else:  # one list per turn, kept current
            self._todos.text = text
            self._todos.widget.value = body

    def _error(self, message: str) -> None:
        self._add(ChatItem("error", message, w.HTML(error_html(message))))

    def _finished(self) -> None:
        self.running = False
        self._buttons()
        self.status.value = ""

    # ---- text ------------------------------------------------------------------------

    def summary(self) -> str:
        head = f"Chat with {self.agent.slug}"
        if self.session_id:
            head += f" (session {self.session_id})"
        if self.running:
            head += " — working…"
        lines = [head]
        for item in self.items:
            prefix = {
                "prompt": "You: ",
                "text": f"{self.agent.slug}: ",
                "tool": "[tool] ",
                "error": "error: ",
                "thinking": "(thinking) ",
            }.get(item.kind, "")
            for i, line in enumerate(item.text.splitlines() or [""]):
                lines.append(("  " + prefix if i == 0 else "    ") + line)
        return "\n".join(lines)


def _result_line(result: dict[str, Any]) -> str:
    parts = []
    if result.get("is_error"):
        parts.append(f"failed ({result.get('subtype') or 'error'})")
    else:
        parts.append("done")
    if result.get("duration_ms") is not None:
        parts.append(f"{result['duration_ms'] / 1000:.1f} s")
    if result.get("num_turns") is not None:
        parts.append(f"{result['num_turns']} model call(s)")
    usage = result.get("usage") or {}
    if usage:
        tokens = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens"
        cached = usage.get("cache_read_input_tokens")
        parts.append(tokens + (f" ({cached} cached)" if cached else ""))
    if result.get("cost_usd") is not None:
        parts.append(f"${result['cost_usd']:.4f}")
    return " · ".join(parts)


def _error_line(event: dict[str, Any]) -> str:
    message = str(event.get("message") or "error")
    retry = event.get("retry")
    if isinstance(retry, dict):
        status = f" (HTTP {retry['status']})" if retry.get("status") else ""
        return (
            f"model API error{status}: {message} — retrying "
            f"({retry.get('attempt', '?')}/{retry.get('max_retries', '?')})"
        )
    if event.get("status"):
        return f"{message} (HTTP {event['status']})"
    return message
