"""The terminal manager's scrollback stays bounded by size, however output arrives;
the Claude terminal knows which conversation to resume."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace

from jupyter_sac.server_extension.terminal import TERMINAL_MODE, ClaudeTerminal
from jupyter_sac.server_extension.terminal_manager import SacTerminalManager


def test_scrollback_is_bounded_by_characters_and_counted_exactly() -> None:
    manager = SacTerminalManager(replay_chars=50)
    received: list[str] = []
    client = SimpleNamespace(on_pty_read=received.append)
    # terminado's own buffer also drops its oldest read past maxlen.
    term = SimpleNamespace(read_buffer=deque(maxlen=5), clients=[client], last_activity=None)
    rng = random.Random(7)
    for _ in range(2000):
        manager.dispatch(term, "x" * rng.randint(1, 30))
        kept = sum(map(len, term.read_buffer))
        assert kept <= 50 or len(term.read_buffer) == 1
        assert term._sac_buffered == kept
    assert len(received) == 2000


def test_the_claude_terminal_follows_its_own_conversation_and_clear_only() -> None:
    """What the Claude terminal resumes after a release: its own session, the next
    one after /clear, never a `claude -p` that claude ran as a tool (whose hooks
    come in the terminal's mode, as it inherits the environment)."""
    terminal = ClaudeTerminal(lambda: None, ["claude"], "/workspace", {})
    first = terminal.spawn_options()["shell_command"]
    mine = terminal.session_id
    assert first == ["claude", "--session-id", mine]

    def hook(session: str, event: str = "Stop", **extra: str) -> dict[str, str]:
        return {"session_id": session, "transcript_path": f"/t/{session}.jsonl",
                "hook_event_name": event, **extra}  # fmt: skip

    terminal.note_hook(hook(mine), TERMINAL_MODE)
    assert terminal.transcript_path == f"/t/{mine}.jsonl"
    terminal.note_hook(hook("nested-claude-p", "UserPromptSubmit"), TERMINAL_MODE)
    terminal.note_hook(hook("a-chat-session"), "chat")
    assert terminal.session_id == mine
    terminal.note_hook(hook(mine, "SessionEnd", reason="clear"), TERMINAL_MODE)
    terminal.note_hook(hook("after-clear", "UserPromptSubmit"), TERMINAL_MODE)
    assert (terminal.session_id, terminal.transcript_path) == (
        "after-clear",
        "/t/after-clear.jsonl",
    )
    terminal.note_hook(hook("nested-again"), TERMINAL_MODE)
    assert terminal.session_id == "after-clear"
