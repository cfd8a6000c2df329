"""What `sac` prints for people: aligned tables and field lists (pure, no I/O).

Everything shown comes from the service, and much of it from sandboxes (agents'
names, tool inputs, conversation text): hostile text. Control and bidirectional
control characters are shown escaped (``\\x1b``), never sent to the terminal,
where they could move the cursor, rewrite earlier lines or hide text.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# The widest a cell is shown in a table (the rest is cut with an ellipsis).
CELL_WIDTH = 60
# An ISO 8601 time as the service writes it: shown to the minute, in UTC.
_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2}(\.\d+)?)?(Z|[+-]00:00)$")

Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def safe_text(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape:
    C0 and C1 controls (ESC, CR, BEL...), bidirectional controls and other format
    characters (``Cc``, ``Cf``), and lone surrogates (``Cs``)."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn") or char in "\u2028\u2029":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def cell(value: Any) -> str:
    """One value as a table shows it: times to the minute, lists joined, absent as
    ``-``, everything on one line and safe to print."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    match = _ISO_TIME.match(text)
    if match:
        return f"{match[1]} {match[2]}"
    return safe_text(" ".join(text.split()))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column],
          width: int = CELL_WIDTH) -> str:  # fmt: skip
    """Rows as an aligned table under upper-case headers; a column is (header,
    key) or (header, function of the row). No rows: the headers alone."""
    grid = [[h.upper() for h, _ in columns]]
    for row in rows:
        grid.append(
            [_cut(cell(get(row) if callable(get) else row.get(get)), width) for _, get in columns]
        )
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in grid]  # fmt: skip
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``name: value`` lines, the values aligned (a multi-line value is indented)."""
    width = max((len(name) for name, _ in pairs), default=0) + 1
    lines = []
    for name, value in pairs:
        text = value if isinstance(value, str) and "\n" in value else cell(value)
        if "\n" in text:
            body = "\n".join(" " * (width + 1) + safe_text(line) for line in text.splitlines())
            lines.append(f"{name + ':':<{width}}\n{body}")
        else:
            lines.append(f"{name + ':':<{width}} {text}")
    return "\n".join(lines)


def to_json(data: Any) -> str:
    """The API's JSON as `--json` prints it: indented, keys in the API's order,
    non-ASCII as is (json escapes control characters itself)."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def json_line(data: Any) -> str:
    """One JSON document on one line (a stream of events, one per line)."""
    return json.dumps(data, ensure_ascii=False)


def parse_value(text: str) -> Any:
    """A setting's value as typed: JSON where it parses (``10``, ``true``,
    ``["a", "b"]``, ``null``), else the text itself (``2Gi``, ``anthropic``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
