"""What the Claude terminal shows now, and what the prompt detector makes of it
(``GET sac/api/terminal/screen``; the `sac` service relays it to the agent's owner).

The prompt watcher keeps a live screen model of the terminal (hitl.py); when it
runs, that very model is read, so the answer is the detector's own view. Without a
watcher (prompt watching turned off) the terminal's scrollback is replayed into a
fresh model of the PTY's size."""

from __future__ import annotations

from typing import Any

from ..runtimes.prompt_detector import PromptMatch, detect
from ..runtimes.screen import TerminalScreen
from .hitl import TerminalPromptWatcher
from .terminal import ClaudeTerminal


def screen_snapshot(terminal: ClaudeTerminal, watcher: TerminalPromptWatcher | None
                    ) -> dict[str, Any]:  # fmt: skip
    """The screen of the running Claude terminal, or ``{"running": false}`` (it is not
    started for this: reading a screen must not start an agent's claude)."""
    term = terminal._term()
    if term is None:
        return {"running": False, "released": terminal.released}
    if watcher is not None and watcher.term is term:
        watcher._follow_size()
        screen = watcher.screen
    else:
        rows, cols = term.ptyproc.getwinsize()
        screen = TerminalScreen(rows, cols)
        for chunk in list(term.read_buffer):
            screen.feed(chunk)
    lines = screen.lines()
    match = detect(lines, screen.cursor_row)
    return {
        "running": True,
        "size": {"rows": screen.rows, "cols": screen.cols},
        "rows": lines,
        "cursor": {
            "row": screen.cursor_row,
            "col": screen.cursor_col,
            "hidden": screen.cursor_hidden,
        },
        "prompt": None if match is None else prompt_model(match),
    }


def prompt_model(match: PromptMatch) -> dict[str, Any]:
    return {
        "kind": match.kind,
        "question": match.question,
        "context": match.context,
        "options": [{"key": o.key, "label": o.label} for o in match.options],
        "takes_text": match.text_key is not None,
        "score": round(match.score, 3),
    }
