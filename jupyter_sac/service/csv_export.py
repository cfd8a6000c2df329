"""CSV downloads (history, audit): streamed a chunk at a time, safe to open in a
spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any

from tornado import web

# Bytes gathered before a chunk goes to the client.
CSV_FLUSH_BYTES = 256 * 1024
# A cell starting with one of these is a formula to Excel, LibreOffice and Sheets
# (OWASP "CSV injection"): conversation text and audit snapshots are written by
# agents and users, so such a cell is prefixed with ' and opens as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


async def stream_csv(
    handler: web.RequestHandler,
    filename: str,
    columns: Iterable[str],
    rows: AsyncIterator[dict[str, Any]],
    to_cells: Callable[[dict[str, Any]], Iterable[Any]],
) -> None:
    """Send ``rows`` as CSV; memory stays flat however many there are (each chunk
    waits for the client to take it), and a client that goes away closes ``rows``."""
    handler.set_header("Content-Type", "text/csv; charset=utf-8")
    handler.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    async with aclosing(rows) as stream:
        async for row in stream:
            writer.writerow([safe_cell(cell) for cell in to_cells(row)])
            if buffer.tell() >= CSV_FLUSH_BYTES:
                handler.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
                await handler.flush()
    handler.finish(buffer.getvalue())
