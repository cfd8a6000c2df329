"""What a terminal shows right now: a thin wrapper around pyte's VT100 screen.

Full-screen programs (Claude Code's TUI, pagers, apt's progress line) draw with
cursor movement and erase sequences, so the raw PTY byte stream says little
about what a user sees. The prompt detector reads this screen model instead.

- Bytes may arrive split anywhere, including inside a UTF-8 sequence; an
  incremental decoder keeps the unfinished tail for the next chunk.
- Wide (East Asian, emoji) characters take two cells; ``lines()`` renders each
  once, as a user reads it.
- No scrollback: what scrolled off the top is gone, like a prompt a user can no
  longer see without scrolling.
"""

from __future__ import annotations

import codecs

import pyte
from wcwidth import wcwidth

DEFAULT_ROWS = 24
DEFAULT_COLS = 80


class TerminalScreen:
    """A screen model fed with PTY output (``bytes`` or already-decoded ``str``)."""

    def __init__(self, rows: int = DEFAULT_ROWS, cols: int = DEFAULT_COLS) -> None:
        self._screen = pyte.Screen(max(1, cols), max(1, rows))
        # pyte.Stream, not ByteStream: decoding is ours, so bytes and str chunks
        # can be mixed and a split UTF-8 sequence is finished by the next chunk.
        self._stream = pyte.Stream(self._screen)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def rows(self) -> int:
        return int(self._screen.lines)

    @property
    def cols(self) -> int:
        return int(self._screen.columns)

    @property
    def cursor_row(self) -> int:
        return int(self._screen.cursor.y)

    @property
    def cursor_col(self) -> int:
        return int(self._screen.cursor.x)

    @property
    def cursor_hidden(self) -> bool:
        return bool(self._screen.cursor.hidden)

    def feed(self, data: bytes | str) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            text = self._decoder.decode(bytes(data))
        else:
            # A str chunk after a bytes chunk that ended mid-sequence: the
            # dangling bytes can never be completed, so show them as U+FFFD.
            text = self._decoder.decode(b"", final=True) + data
            self._decoder.reset()
        if text:
            self._stream.feed(text)

    def resize(self, rows: int, cols: int) -> None:
        """Follow the PTY's new size (content is kept, clipped like a terminal)."""
        self._screen.resize(max(1, rows), max(1, cols))

    def lines(self) -> list[str]:
        """Every display line, right-stripped, wide characters shown once."""
        buffer = self._screen.buffer
        return [self._render(buffer[y]) for y in range(self._screen.lines)]

    def text(self) -> str:
        return "\n".join(self.lines()).rstrip("\n")

    def _render(self, line: object) -> str:
        out: list[str] = []
        skip_stub = False
        for x in range(self._screen.columns):
            data = line[x].data  # type: ignore[index]
            if skip_stub:
                skip_stub = False
                # The right half of a wide character holds "" (or a stale
                # character when an application overwrote half of it).
                if data in ("", " "):
                    continue
            if not data:
                out.append(" ")
                continue
            out.append(data)
            skip_stub = wcwidth(data[0]) == 2
        return "".join(out).rstrip()
