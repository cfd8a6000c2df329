"""One long-lived claude CLI per chat conversation, driven over the SDK's control protocol.

``ClaudeProcess.start`` runs the pinned CLI through claude-agent-sdk's
``ClaudeSDKClient`` (``--input-format stream-json``): the process stays up
between turns, and each turn is one user message written to its stdin
(``turn``), read back as stream-json messages up to the turn's ``result``. A
turn in a warm process skips the CLI's start-up, which is most of a bare
``claude -p`` turn.

Hooks are answered in this process (SDK callbacks, a few ms each), not by a
process started per event. The callbacks are SAC's only hooks here: the flag
settings layer sets ``disableAllHooks``, so the hooks in ``settings.json``
(those SAC installs for the terminal, and any a user added) do not fire in chat
sessions, which would ask a human twice and capture history twice. Setting
sources stay the CLI's defaults (user, project, local), so the user's
permissions, environment, skills and CLAUDE.md still apply. SDK callbacks are
not settings hooks; ``disableAllHooks`` leaves them alone (checked against the
pinned CLI by tests/test_chat_session.py).

The PreToolUse matcher fails closed twice over: its callback turns any error
into a deny, and it is registered with ``on_failure="block"``, so a callback
the CLI cannot get an answer from blocks the tool too.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeSDKClient

# One stream-json line can hold a whole file (a Write's input, an Edit's original).
MAX_LINE_BYTES = 64 * 1024 * 1024
STDERR_TAIL_LINES = 40
# The flag settings layer outranks the user's and the project's settings.
CHAT_FLAG_SETTINGS = json.dumps({"disableAllHooks": True})
# As `claude -p` runs: the SDK's own default is an empty system prompt.
SYSTEM_PROMPT = {"type": "preset", "preset": "claude_code"}

HookCallback = Callable[[dict[str, Any], str | None, Any], Awaitable[dict[str, Any]]]


def cli_flags(args: list[str]) -> dict[str, str | None]:
    """``["--model", "x", "--verbose"]`` as the SDK's ``extra_args`` (pure).

    A token after a flag that does not itself start with ``-`` is that flag's
    value; a flag without one is a switch.
    """
    flags: dict[str, str | None] = {}
    key: str | None = None
    for token in args:
        if token.startswith("-"):
            key = token.lstrip("-")
            if "=" in key:
                key, value = key.split("=", 1)
                flags[key] = value
                key = None
            else:
                flags[key] = None
        elif key is not None:
            flags[key] = token
            key = None
    return flags


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ClaudeProcess:
    """A connected CLI: its pid, when it started, how many turns it served."""

    client: ClaudeSDKClient
    pid: int
    started_at: str
    resumed: bool
    turns: int = 0
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    @classmethod
    async def start(
        cls,
        *,
        cli: str,
        args: list[str],
        cwd: str,
        env: dict[str, str],
        session_id: str,
        resume: bool,
        pre_tool_use: HookCallback,
        pre_tool_timeout: float,
        subagent_stop: HookCallback,
    ) -> ClaudeProcess:
        """Start the CLI for conversation ``session_id`` (resumed if it exists)."""
        # Imported at the first chat session, not with the server: the SDK and what
        # it brings (mcp, pydantic, starlette, …) are ~40 MiB an agent that is only
        # used from its terminal, or idle, never needs (see load_sdk).
        from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, HookMatcher

        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        options = ClaudeAgentOptions(
            cli_path=cli,
            cwd=cwd,
            env=env,
            extra_args=cli_flags(args),
            permission_mode="bypassPermissions",
            system_prompt=SYSTEM_PROMPT,  # type: ignore[arg-type]
            settings=CHAT_FLAG_SETTINGS,
            resume=session_id if resume else None,
            session_id=None if resume else session_id,
            max_buffer_size=MAX_LINE_BYTES,
            stderr=tail.append,
            hooks={
                # Every tool; the timeout outlasts any wait for a human (the
                # CLI's default is 60 s), and a timeout blocks the tool.
                "PreToolUse": [
                    HookMatcher(
                        matcher=None,
                        hooks=[pre_tool_use],
                        timeout=pre_tool_timeout,
                        on_failure="block",
                    )
                ],
                "SubagentStop": [HookMatcher(matcher=None, hooks=[subagent_stop])],
            },
        )
        client = ClaudeSDKClient(options)
        try:
            await client.connect()
            info = await client.get_server_info() or {}
            pid = info.get("pid")
            if not isinstance(pid, int):
                raise RuntimeError("the CLI did not say its process id")
        except BaseException:
            await client.disconnect()
            raise
        return cls(client, pid, now_iso(), resume, stderr=tail)

    async def turn(self, message: str) -> AsyncIterator[dict[str, Any]]:
        """Send ``message``; the CLI's stream-json messages up to the turn's ``result``.

        Raw messages, as ``claude -p`` prints them (``runtimes.claude_stream``
        reads those): the SDK's parsed types drop fields the chat shows. The
        SDK's ``_query`` is the one non-public piece used; the SDK is pinned.
        """
        self.turns += 1
        await self.client.query(message)
        query = self.client._query
        assert query is not None
        async for data in query.receive_messages():
            yield data
            if isinstance(data, dict) and data.get("type") == "result":
                return

    async def disconnect(self) -> None:
        """Close stdin and let the CLI exit (it flushes its transcript); the SDK
        terminates it after a grace period."""
        await self.client.disconnect()

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr).strip()

    def model(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "resumed": self.resumed,
            "turns": self.turns,
        }


def load_sdk() -> None:
    """Import claude-agent-sdk (blocking: about a second of CPU on a small machine),
    so that a chat session about to start does not wait for it."""
    import claude_agent_sdk  # noqa: F401
