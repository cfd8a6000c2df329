"""The agent's Claude terminal: one named terminado terminal (``claude``).

It lives in Jupyter's own terminal manager, so JupyterLab's Terminal widget
attaches to it by name (``terminals/websocket/claude``) and terminado replays
its scrollback to every new connection: closing the browser or reloading the
page never stops the agent. A prompt watcher rides along as one more client of
the PTY (see ``hitl.TerminalPromptWatcher``).

Released when idle: a Claude terminal nobody has watched (no browser client)
and that printed nothing for ``idle_release`` seconds, with no HITL request
waiting, has its claude process stopped the way a closed terminal stops it
(SIGHUP: claude saves the conversation and runs its SessionEnd hook). The
terminal keeps its name; the next attach (a websocket, ``POST sac/api/terminal``,
JupyterLab re-creating it by name) starts claude again with ``--resume`` of the
same session, and claude redraws the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from .capture import TranscriptCapture

TERMINAL_NAME = "claude"
# The hook mode of the Claude terminal's claude (its environment's SAC_CLAUDE_MODE).
TERMINAL_MODE = "terminal"
# Seconds claude gets to save and exit after SIGHUP before it is killed.
RELEASE_GRACE = 10.0

log = logging.getLogger("jupyter_sac.terminal")


def idle_check_interval(idle_release: float) -> float:
    """How often to look for an idle Claude terminal: a quarter of the idle time
    (so a release is at most that late), between 50 ms and 15 s."""
    return min(max(idle_release / 4, 0.05), 15.0)


class ClaudeTerminal:
    def __init__(
        self,
        terminal_manager: Callable[[], Any],
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        on_start: Callable[[Any], None] | None = None,
        idle_release: float = 0.0,
        busy: Callable[[], bool] = lambda: False,
        capture: TranscriptCapture | None = None,
    ):
        # A getter: jupyter_server_terminals may load after this extension.
        self._manager = terminal_manager
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.on_start = on_start
        self.idle_release = idle_release
        self.busy = busy  # HITL requests waiting: never release then
        self.capture = capture
        self.started_at: float | None = None
        self.restarts = 0
        self.releases = 0
        self.released_at: float | None = None
        # The conversation the terminal's claude runs: given at its first start
        # (--session-id), followed through its hooks (/clear starts a new one, see
        # note_hook), and resumed (--resume) once claude has written its transcript.
        self.session_id: str | None = None
        self.transcript_path: str | None = None
        self.resumed = False
        self._cleared = False  # /clear ended the session; the next one is the terminal's
        self._lock = asyncio.Lock()
        self._started_term: Any = None
        self._unwatched_since: float | None = None
        self._idle_task: asyncio.Task[None] | None = None

    @property
    def manager(self) -> Any:
        return self._manager()

    def _term(self) -> Any | None:
        term = self.manager.terminals.get(TERMINAL_NAME)
        if term is not None and not term.ptyproc.isalive():
            return None
        return term

    @property
    def released(self) -> bool:
        return self.released_at is not None

    async def ensure(self) -> dict[str, Any]:
        """Start the terminal unless it runs (resuming its conversation after an idle
        release); its status either way."""
        async with self._lock:
            if self._term() is None:
                stale = self.manager.terminals.get(TERMINAL_NAME)
                if stale is not None:
                    # The process exited (or was released) but is still listed.
                    await self.manager.terminate(TERMINAL_NAME, force=True)
                    self.manager.terminals.pop(TERMINAL_NAME, None)
            # (again: JupyterLab may have made it by name while that was awaited)
            if self._term() is None:
                self.manager.create(**self.spawn_options())
                self.started(self.manager.terminals[TERMINAL_NAME])
            return self.status()

    def spawn_options(self) -> dict[str, Any]:
        """The terminal manager's ``create`` arguments of the Claude terminal: the
        known conversation resumed if claude wrote it, else a new one whose id is
        ours to know."""
        transcript = self.transcript_path
        if self.session_id and transcript and os.path.exists(transcript):
            session = ["--resume", self.session_id]
            self.resumed = True
        else:
            self.session_id = str(uuid.uuid4())
            self.transcript_path = None
            self._cleared = False
            session = ["--session-id", self.session_id]
            self.resumed = False
        return {
            "name": TERMINAL_NAME,
            "shell_command": [*self.argv, *session],
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
        self.released_at = None
        self._unwatched_since = None
        if self.on_start is not None:
            self.on_start(term)

    def note_hook(self, hook: dict[str, Any], mode: str) -> None:
        """A capture hook of some claude in the terminal's mode: where claude writes
        the terminal's conversation, and the new one after ``/clear``.

        Only ``/clear`` (SessionEnd, reason ``clear``) moves the terminal to another
        session: a ``claude -p`` that the terminal's claude runs as a tool inherits
        its environment, so its hooks come in the same mode, and must not become
        the conversation resumed after a release."""
        if mode != TERMINAL_MODE:
            return
        session_id, path = hook.get("session_id"), hook.get("transcript_path")
        if not (isinstance(session_id, str) and session_id and isinstance(path, str) and path):
            return
        if session_id == self.session_id:
            self.transcript_path = path
            if hook.get("hook_event_name") == "SessionEnd" and hook.get("reason") == "clear":
                self._cleared = True
        elif self._cleared:
            self.session_id, self.transcript_path = session_id, path
            self._cleared = False

    async def restart(self) -> dict[str, Any]:
        """Stop the process and start a fresh one: a new conversation."""
        async with self._lock:
            if TERMINAL_NAME in self.manager.terminals:
                await self.manager.terminate(TERMINAL_NAME, force=True)
                # terminado drops the name when it reads the EOF; don't wait for it.
                self.manager.terminals.pop(TERMINAL_NAME, None)
            self.restarts += 1
            self.session_id = self.transcript_path = None
            self.released_at = None
        return await self.ensure()

    # ---- idle release ------------------------------------------------------------

    def start_idle_release(self) -> None:
        if self.idle_release > 0 and self._idle_task is None:
            self._idle_task = asyncio.create_task(self._watch_idle())

    async def stop_idle_release(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
            self._idle_task = None

    async def _watch_idle(self) -> None:
        interval = idle_check_interval(self.idle_release)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.release_if_idle()
            except Exception:
                log.exception("could not release the idle Claude terminal")

    async def release_if_idle(self) -> bool:
        """Release the Claude terminal if it has been idle long enough; whether it was."""
        term = self._term()
        now = time.monotonic()
        if term is None or _browser_clients(term) or self.busy():
            self._unwatched_since = None
            return False
        if self._unwatched_since is None:
            self._unwatched_since = now
        quiet_since = getattr(term, "_sac_last_output", 0.0)
        if now - max(self._unwatched_since, quiet_since) < self.idle_release:
            return False
        await self.release()
        return True

    async def release(self) -> None:
        """Stop claude as a closed terminal would (SIGHUP: it saves the conversation
        and posts SessionEnd), keep the terminal's name for the next attach, and
        capture what the transcript gained as claude exited."""
        async with self._lock:
            term = self._term()
            if term is None:
                return
            # Marked first: the manager keeps a released terminal listed at its EOF.
            self.released_at = time.time()
            with contextlib.suppress(ProcessLookupError):
                term.ptyproc.kill(signal.SIGHUP)
            for _ in range(int(RELEASE_GRACE / 0.05)):
                if not term.ptyproc.isalive():
                    break
                await asyncio.sleep(0.05)
            if term.ptyproc.isalive():
                await term.terminate(force=True)
            self.releases += 1
            self._unwatched_since = None
            # The old terminal's scrollback (up to 4 Mi characters) and screen model.
            term.read_buffer.clear()
            log.info("released the idle Claude terminal (session %s)", self.session_id)
        if self.capture is not None and self.session_id and self.transcript_path:
            # SessionEnd took these already unless its hook failed; the offset makes
            # a second read find nothing.
            try:
                spooled = await asyncio.to_thread(
                    self.capture.capture, self.transcript_path, self.session_id
                )
            except (OSError, ValueError):
                log.exception("could not capture the released terminal's transcript")
            else:
                if spooled:
                    self.capture.on_spooled()

    def status(self) -> dict[str, Any]:
        term = self._term()
        common = {
            "name": TERMINAL_NAME,
            "restarts": self.restarts,
            "releases": self.releases,
            "session_id": self.session_id,
        }
        if term is None:
            return {
                **common,
                "running": False,
                "released": self.released,
                "released_at": self.released_at,
            }
        rows, cols = term.ptyproc.getwinsize()
        return {
            **common,
            "running": True,
            "released": False,
            "pid": term.ptyproc.pid,
            "rows": rows,
            "cols": cols,
            "clients": _browser_clients(term),
            "started_at": self.started_at,
            "resumed": self.resumed,
        }


def _browser_clients(term: Any) -> int:
    # The prompt watcher is a client too, but nobody's browser.
    return sum(1 for c in term.clients if getattr(c, "is_browser", True))
