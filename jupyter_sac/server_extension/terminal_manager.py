"""A terminal manager that reads each PTY in its own thread.

terminado reads PTYs on the event loop, one tty buffer (about 4 KiB) per loop
turn, and forwards each read as its own websocket message. A command printing a
lot then spends its time in per-message overhead, and the PTY is not drained
while the loop is busy sending, so the writer stalls. Here a reader thread per
terminal drains the PTY continuously; the loop forwards everything read since
its last turn as one message. A lone keystroke echo is forwarded as soon as it
is read, so typing latency does not change.

The scrollback kept for reconnecting clients is bounded by size rather than by
read count. And the terminal named ``claude`` is always the agent's Claude
terminal, whoever asks for it (see ``SacTerminalManager.create``); released when
idle, it stays listed under its name and its next websocket starts claude again
(see ``terminal.ClaudeTerminal``). Enabled for
every sandbox by the spawner (``--TerminalsExtensionApp.terminal_manager_class``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from jupyter_server_terminals.terminalmanager import TerminalManager
from traitlets import Float, Integer

from .terminal import TERMINAL_NAME

# A read this long means the PTY's buffer was full (its size is about 4 KiB).
STREAMING_READ = 4000


class _PtyReader:
    """Blocking reads in a thread; hands text to the loop, coalesced."""

    def __init__(self, manager: SacTerminalManager, term: Any, loop: asyncio.AbstractEventLoop):
        self.manager = manager
        self.term = term
        self.loop = loop
        self.lock = threading.Lock()
        self.drained = threading.Condition(self.lock)
        self.pending: list[str] = []
        self.pending_size = 0
        self.scheduled = False

    def run(self) -> None:
        limit = self.manager.coalesce_chars
        while True:
            try:
                text = self.term.ptyproc.read(65536)
            except (EOFError, OSError, ValueError):
                self._call(self.manager.on_eof, self.term)
                return
            with self.lock:
                # Backpressure: don't read further ahead of the loop than one message.
                while self.pending_size >= limit:
                    self.drained.wait(1)
                self.pending.append(text)
                self.pending_size += len(text)
                schedule = not self.scheduled
                self.scheduled = True
            if schedule:
                if len(text) >= STREAMING_READ:
                    # A full tty buffer: a program is streaming output. Let a few
                    # milliseconds of it gather into one message.
                    self._call(self.loop.call_later, self.manager.coalesce_delay, self.flush)
                else:
                    self._call(self.flush)

    def _call(self, fn: Any, *args: Any) -> None:
        # RuntimeError: the loop is closed because the server is shutting down.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)

    def flush(self) -> None:
        with self.lock:
            text = "".join(self.pending)
            self.pending.clear()
            self.pending_size = 0
            self.scheduled = False
            self.drained.notify_all()
        if text:
            self.manager.dispatch(self.term, text)


class SacTerminalManager(TerminalManager):
    coalesce_chars = Integer(
        1024 * 1024,
        help="Most terminal output (characters) forwarded to clients in one message.",
    ).tag(config=True)

    coalesce_delay = Float(
        0.003,
        help="""Seconds output may gather before it is forwarded while a program streams
        (full PTY reads); short reads such as keystroke echo are forwarded at once.""",
    ).tag(config=True)

    replay_chars = Integer(
        4 * 1024 * 1024,
        help="""Scrollback kept per terminal for clients that reconnect (characters;
        terminado itself keeps its last 1,000 reads whatever their size).""",
    ).tag(config=True)

    # The agent's ClaudeTerminal, set by the sandbox extension when it starts.
    claude: Any = None

    def create(self, **kwargs: Any) -> dict[str, Any]:
        # JupyterLab re-creates the terminals of its saved layout by name when a page
        # loads (POST api/terminals {"name": "claude"}). After an agent restart that
        # came before anything had started Claude, and made a plain shell under
        # Claude's name, which the Claude Terminal command then attached to.
        if self.claude is None or kwargs.get("name") != TERMINAL_NAME:
            return super().create(**kwargs)
        model = super().create(**{**kwargs, **self.claude.spawn_options()})
        self.claude.started(self.terminals[TERMINAL_NAME])
        return model

    def get_terminal(self, term_name: str) -> Any:
        # A websocket attaching to the released Claude terminal starts claude again
        # (resuming its conversation) before it is handed the terminal.
        if term_name == TERMINAL_NAME and self.claude is not None and self.claude.released:
            held = self.terminals.get(TERMINAL_NAME)
            if held is None or not held.ptyproc.isalive():
                self.create(name=TERMINAL_NAME)
        return super().get_terminal(term_name)

    def start_reading(self, ptywclients: Any) -> None:
        fd = ptywclients.ptyproc.fd
        self.ptys_by_fd[fd] = ptywclients
        reader = _PtyReader(self, ptywclients, asyncio.get_running_loop())
        threading.Thread(target=reader.run, name=f"pty-reader-{fd}", daemon=True).start()

    def dispatch(self, ptywclients: Any, text: str) -> None:
        self.pre_pty_read_hook(ptywclients)  # last activity, for the culler
        ptywclients._sac_last_output = time.monotonic()  # the Claude terminal's idle release
        # The scrollback's size is kept as a running count: this runs for every
        # keystroke echo, and terminado's buffer holds up to 1,000 reads.
        buffer = ptywclients.read_buffer
        total = getattr(ptywclients, "_sac_buffered", 0)
        if buffer.maxlen is not None and len(buffer) == buffer.maxlen:
            total -= len(buffer[0])  # append() below drops it
        buffer.append(text)
        total += len(text)
        while len(buffer) > 1 and total > self.replay_chars:
            total -= len(buffer.popleft())
        ptywclients._sac_buffered = total
        for client in list(ptywclients.clients):
            client.on_pty_read(text)

    def on_eof(self, ptywclients: Any) -> None:
        # terminado's on_eof also removes an event-loop reader, which we never added.
        self.ptys_by_fd.pop(ptywclients.ptyproc.fd, None)
        ptywclients.ptyproc.close()
        name = ptywclients.term_name
        released = name == TERMINAL_NAME and self.claude is not None and self.claude.released
        if released:
            self._reattach_during_release(ptywclients)
        # A released Claude terminal stays listed (JupyterLab keeps its tab), so that
        # the next websocket to it can start claude again (get_terminal).
        if name is not None and self.terminals.get(name) is ptywclients and not released:
            del self.terminals[name]
        self.log.info("Terminal %s closed", name)
        for client in list(ptywclients.clients):
            client.on_pty_died()

    def _reattach_during_release(self, ptywclients: Any) -> None:
        """Browsers that attached while claude was being released (after the idle
        check, before it exited) get claude again, resumed, instead of a closed
        terminal: they move to the new one."""
        watching = [c for c in ptywclients.clients if getattr(c, "is_browser", True)]
        if not watching:
            return
        ptywclients.clients[:] = [c for c in ptywclients.clients if c not in watching]
        self.create(name=TERMINAL_NAME)
        fresh = self.terminals[TERMINAL_NAME]
        for client in watching:
            client.terminal = fresh
            fresh.clients.append(client)
        fresh.resize_to_smallest()
