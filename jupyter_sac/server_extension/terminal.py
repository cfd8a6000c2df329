"""The agent's Claude terminal: one named terminado terminal (``claude``).

It lives in Jupyter's own terminal manager, so JupyterLab's Terminal widget
attaches to it by name (``terminals/websocket/claude``) and terminado replays
its scrollback to every new connection: closing the browser or reloading the
page never stops the agent. A prompt watcher rides along as one more client of
the PTY (see ``hitl.TerminalPromptWatcher``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

TERMINAL_NAME = "claude"


class ClaudeTerminal:
    def __init__(
        self,
        terminal_manager: Callable[[], Any],
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        on_start: Callable[[Any], None] | None = None,
    ):
        # A getter: jupyter_server_terminals may load after this extension.
        self._manager = terminal_manager
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.on_start = on_start
        self.started_at: float | None = None
        self.restarts = 0
        self._lock = asyncio.Lock()
        self._started_term: Any = None

    @property
    def manager(self) -> Any:
        return self._manager()

    def _term(self) -> Any | None:
        term = self.manager.terminals.get(TERMINAL_NAME)
        if term is not None and not term.ptyproc.isalive():
            return None
        return term

    async def ensure(self) -> dict[str, Any]:
        """Start the terminal unless it runs; its status either way."""
        async with self._lock:
            if self._term() is None:
                stale = self.manager.terminals.get(TERMINAL_NAME)
                if stale is not None:
                    # The process exited but terminado has not read its EOF yet.
                    await self.manager.terminate(TERMINAL_NAME, force=True)
                    self.manager.terminals.pop(TERMINAL_NAME, None)
            # (again: JupyterLab may have made it by name while that was awaited)
            if self._term() is None:
                self.manager.create(**self.spawn_options())
                self.started(self.manager.terminals[TERMINAL_NAME])
            return self.status()

    def spawn_options(self) -> dict[str, Any]:
        """The terminal manager's ``create`` arguments of the Claude terminal."""
        return {
            "name": TERMINAL_NAME,
            "shell_command": self.argv,
            "cwd": self.cwd,
            "extra_env": self.env,
        }

    def started(self, term: Any) -> None:
        """Note a new Claude terminal (once each, whoever created it): its start
        time, and the ``on_start`` hook (the prompt watcher)."""
        if term is self._started_term:
            return
        self._started_term = term
        self.started_at = time.time()
        if self.on_start is not None:
            self.on_start(term)

    async def restart(self) -> dict[str, Any]:
        async with self._lock:
            if TERMINAL_NAME in self.manager.terminals:
                await self.manager.terminate(TERMINAL_NAME, force=True)
                # terminado drops the name when it reads the EOF; don't wait for it.
                self.manager.terminals.pop(TERMINAL_NAME, None)
            self.restarts += 1
        return await self.ensure()

    def status(self) -> dict[str, Any]:
        term = self._term()
        if term is None:
            return {"name": TERMINAL_NAME, "running": False, "restarts": self.restarts}
        rows, cols = term.ptyproc.getwinsize()
        return {
            "name": TERMINAL_NAME,
            "running": True,
            "pid": term.ptyproc.pid,
            "rows": rows,
            "cols": cols,
            "clients": sum(1 for c in term.clients if getattr(c, "is_browser", True)),
            "started_at": self.started_at,
            "restarts": self.restarts,
        }
