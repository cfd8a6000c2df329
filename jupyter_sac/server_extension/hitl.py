"""Human-in-the-loop inside the sandbox.

Two ways a human gets asked:

- **Tool calls** (any mode): Claude Code's PreToolUse hook asks the extension,
  which applies the agent's policy (``jupyter_sac.rules.hitl.decide``). ``allow`` and
  ``deny`` answer at once. ``ask`` in a headless chat turn files a request at
  the `sac` service and waits for the decision (or its timeout default). In an
  interactive terminal ``ask`` is left to Claude Code's own permission menu,
  which the prompt watcher below turns into a request.
- **Terminal prompts**: ``TerminalPromptWatcher`` reads the Claude terminal's
  output into a screen model, and when the prompt detector sees a prompt
  waiting for input it files one request per prompt; the chosen answer is typed
  into the PTY. A prompt that takes text (Claude Code's "Type something.", a
  line asking for a value) can be answered with text instead, typed only while
  that very prompt is still on screen. A prompt answered in the terminal itself
  cancels its request.

New and decided requests are emitted as jupyter_events
(``HITL_EVENT_SCHEMA_ID``) so JupyterLab and notebooks learn of them live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..rules import hitl as policy_rules
from ..runtimes.prompt_detector import KIND_TEXT, TEXT_ANSWER_LIMIT, PromptMatch, detect
from ..runtimes.screen import TerminalScreen
from .service_client import ServiceClient, ServiceError

log = logging.getLogger("jupyter_sac.rules.hitl")

HITL_EVENT_SCHEMA_ID = "https://events.jupyter-sac.org/hitl"
HITL_EVENT_SCHEMA: dict[str, Any] = {
    "$id": HITL_EVENT_SCHEMA_ID,
    "version": "1",
    "title": "Human-in-the-loop requests",
    "description": "A HITL request of this agent was filed, decided or cancelled.",
    "type": "object",
    "required": ["action", "request"],
    "properties": {
        "action": {"enum": ["requested", "decided", "cancelled"]},
        "request": {"type": "object"},
    },
}

POLICY_CACHE_SECONDS = 5
QUIET_SECONDS = 0.15  # the screen is read once output pauses this long
RETYPE_AFTER = 2.0  # seconds before an answer the prompt ignored is typed again
TEXT_FIELD_POLL = 0.05  # how often the screen is looked at while a text field opens


class HitlBridge:
    def __init__(self, client: ServiceClient, emit: Callable[[str, dict[str, Any]], None]):
        self.client = client
        self._emit = emit
        self._policy: tuple[float, dict[str, Any]] | None = None
        self.pending: dict[str, dict[str, Any]] = {}
        self.watcher: TerminalPromptWatcher | None = None

    def emit(self, action: str, request: dict[str, Any]) -> None:
        try:
            self._emit(action, request)
        except Exception:
            log.exception("could not emit the HITL %s event", action)

    async def info(self) -> dict[str, Any]:
        """Policy, timeout and default of this agent (briefly cached; stale if the
        service is away, so known rules still apply)."""
        now = time.monotonic()
        if self._policy and now - self._policy[0] < POLICY_CACHE_SECONDS:
            return self._policy[1]
        try:
            info = await self.client.hitl_info()
        except ServiceError:
            if self._policy:
                return self._policy[1]
            raise
        self._policy = (now, info)
        return info

    async def file_and_wait(self, body: dict[str, Any]) -> dict[str, Any]:
        """File a request and wait until it is decided, times out or is cancelled."""
        request = await self.client.file_request(body)
        return await self.wait(request)

    async def wait(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = request["id"]
        self.pending[rid] = request
        self.emit("requested", request)
        try:
            while request.get("status") == "pending":
                try:
                    request = await self.client.wait(rid)
                except ServiceError as e:
                    log.warning("waiting for HITL request %s: %s", rid, e)
                    await asyncio.sleep(2)
            self.emit("decided" if request.get("status") != "cancelled" else "cancelled", request)
            return request
        except asyncio.CancelledError:
            # The hook went away (turn cancelled) or the prompt left the screen.
            with contextlib.suppress(ServiceError):
                request = await self.client.cancel(rid)
            self.emit("cancelled", {**request, "status": "cancelled"})
            raise
        finally:
            self.pending.pop(rid, None)

    async def decide_tool(self, hook: dict[str, Any], mode: str) -> dict[str, Any]:
        """The PreToolUse answer: ``{"decision": "allow"|"deny"|None, "reason": str}``."""
        tool = str(hook.get("tool_name") or "")
        tool_input = hook.get("tool_input")
        try:
            info = await self.info()
        except ServiceError as e:
            if mode == "chat":
                return {"decision": "deny", "reason": f"no HITL policy available ({e})"}
            return {"decision": None, "reason": str(e)}
        verdict = policy_rules.decide(info.get("policy") or {}, tool, tool_input)
        if verdict.action in ("allow", "deny"):
            return {"decision": verdict.action, "reason": verdict.reason}
        if mode != "chat":
            # Interactive: Claude Code shows its own menu; the watcher files it.
            return {"decision": None, "reason": verdict.reason}
        try:
            decided = await self.file_and_wait(
                {
                    "session_id": hook.get("session_id"),
                    "kind": "tool",
                    "tool": tool,
                    "input": tool_input if isinstance(tool_input, dict) else {"value": tool_input},
                    "question": f"Allow {tool}?",
                }
            )
        except ServiceError as e:
            return {"decision": "deny", "reason": f"could not ask a human ({e})"}
        return {"decision": decided.get("decision") or "deny", "reason": _reason(decided)}


def _reason(request: dict[str, Any]) -> str:
    status = request.get("status")
    who = request.get("decided_by")
    reason = request.get("reason") or ""
    if status == "timed_out":
        return f"no decision within the timeout; the default ({request.get('decision')}) applied"
    if status == "cancelled":
        return "the request was cancelled"
    text = f"{status} by {who}" if who else str(status)
    return f"{text}: {reason}" if reason else text


def text_answer(match: PromptMatch, request: dict[str, Any]) -> str | None:
    """The text a decided request answers ``match`` with, or None (it chose an
    option, or was denied). The service checked it; it is checked again here,
    where it becomes keystrokes: one line of printable text, so it can only ever
    be the answer."""
    text = request.get("text")
    if text is None or match.text_key is None or request.get("decision") != "allow":
        return None
    return text if policy_rules.answer_text_problem(text, TEXT_ANSWER_LIMIT) is None else None


def keys_for(match: PromptMatch, request: dict[str, Any]) -> str | None:
    """What to type into the PTY for a decided terminal request."""
    decision = request.get("decision") or "deny"
    text = text_answer(match, request)
    if text is not None:
        return f"{match.text_key}{text}\r"
    if request.get("text") is not None:
        decision = "deny"  # a text that failed the check answers nothing
    if request.get("option") in {o.key for o in match.options}:
        return request["option"]
    options = [{"key": o.key, "label": o.label} for o in match.options]
    key = policy_rules.default_option(options, decision)
    if key is not None:
        return key
    if decision == "allow":
        return "\r"  # no options (a bare "Press Enter"): go on
    if match.kind == KIND_TEXT:
        return "\x03"  # a line prompt refused: interrupt what asks (Escape would be typed in)
    # Nothing that reads like "no": Escape dismisses Claude Code's menus (and most
    # TUIs) without choosing.
    return "\x1b"


class TerminalPromptWatcher:
    """A silent client of the Claude terminal's PTY that files its prompts as requests."""

    is_browser = False
    size = (None, None)  # never constrains the PTY size (terminado resizes to clients)

    def __init__(self, term: Any, bridge: HitlBridge, terminal_name: str):
        self.term = term
        self.bridge = bridge
        self.terminal_name = terminal_name
        rows, cols = term.ptyproc.getwinsize()
        self.screen = TerminalScreen(rows, cols)
        self.current: PromptMatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The prompt we just answered stays on screen until the program redraws;
        # it must not be filed a second time.
        self._answered: str | None = None
        self.filed = 0
        self.reads = 0  # how often the screen was read (GET sac/api/hitl: terminal_reads)

    def attach(self) -> None:
        self.term.clients.append(self)
        # What the terminal printed before we attached (a restart replays nothing).
        for chunk in list(self.term.read_buffer):
            self.screen.feed(chunk)

    # terminado client interface
    def on_pty_read(self, text: str) -> None:
        # Follow the PTY's size before feeding: a browser that attaches resizes the
        # PTY and Claude redraws at the new width at once; fed into the old width,
        # that redraw wrapped and overwrote the menu (seen as a flaky HITL test).
        self._follow_size()
        self.screen.feed(text)
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(QUIET_SECONDS, self.check)

    def _follow_size(self) -> None:
        rows, cols = self.term.ptyproc.getwinsize()
        if (rows, cols) != (self.screen.rows, self.screen.cols):
            self.screen.resize(rows, cols)

    def on_pty_died(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._cancel_task()
        self.current = None

    def _cancel_task(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def check(self) -> None:
        """Read the screen now that output has paused."""
        self.reads += 1
        self._follow_size()
        match = detect(self.screen.lines(), self.screen.cursor_row)
        if match is None:
            self._answered = None
            if self.current is not None:
                # Answered in the terminal itself (or gone): withdraw the request.
                self.current = None
                self._cancel_task()
            return
        if match.fingerprint == self._answered or (
            self.current is not None and match.fingerprint == self.current.fingerprint
        ):
            return
        self._cancel_task()
        self.current = match
        self._task = asyncio.create_task(self._ask(match))

    async def _ask(self, match: PromptMatch) -> None:
        body: dict[str, Any] = {
            "session_id": None,
            "kind": "terminal",
            "tool": self.terminal_name,
            "input": {"screen": "\n".join(self.screen.lines()[-40:]).strip()},
            "question": match.question,
            "options": [{"key": o.key, "label": o.label} for o in match.options],
            "dedupe_key": f"{self.terminal_name}:{match.fingerprint}",
        }
        if match.text_key is not None:
            body["text_max"] = TEXT_ANSWER_LIMIT
        try:
            self.filed += 1
            decided = await self.bridge.file_and_wait(body)
        except ServiceError as e:
            log.warning("could not file the terminal prompt: %s", e)
            return
        if decided.get("status") == "cancelled":
            return
        # Type the answer only if the very same prompt still waits for it.
        if self.current is None or self.current.fingerprint != match.fingerprint:
            return
        self._answered = match.fingerprint
        self.current = None
        text = text_answer(match, decided)
        if text is not None:
            await self._type_text(match, text)
            return
        keys = keys_for(match, decided)
        if not keys:
            return
        # Claude Code drops keys typed in the instant a dialog first appears: if the
        # same prompt is still on screen a moment later, type the answer once more.
        for attempt in range(2):
            if not self.term.ptyproc.isalive():
                return
            self.term.ptyproc.write(keys)
            if attempt:
                return
            await asyncio.sleep(RETYPE_AFTER)
            still = detect(self.screen.lines(), self.screen.cursor_row)
            if still is None or still.fingerprint != match.fingerprint:
                return
            log.info("the terminal prompt is still waiting; typing the answer again")

    async def _type_text(self, match: PromptMatch, text: str) -> None:
        """Type a text answer: first the key that opens the prompt's text field, and
        the text only once the cursor is in it. Were that key dropped (as Claude
        Code drops keys in the instant a dialog appears), the text and its Enter
        would land in the menu and choose whatever is selected there."""
        if match.text_key:
            for _ in range(2):
                if not self.term.ptyproc.isalive():
                    return
                self.term.ptyproc.write(match.text_key)
                if await self._cursor_reaches(match.text_row, RETYPE_AFTER):
                    break
            else:
                log.warning("the prompt's text field did not open; the answer was not typed")
                return
        if self.term.ptyproc.isalive():
            self.term.ptyproc.write(f"{text}\r")

    async def _cursor_reaches(self, row: int | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(TEXT_FIELD_POLL)
            if row is None or self.screen.cursor_row == row:
                return True
        return False
