"""The terminal manager's scrollback stays bounded by size, however output arrives."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace

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
