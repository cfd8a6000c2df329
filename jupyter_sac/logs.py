"""JSON log lines, for log collectors that parse each line as one object.

``SAC_LOG_FORMAT=json`` (or ``c.SacService.log_json`` / ``c.SacExtensionApp.log_json``)
turns them on: each record becomes one line ``{"time", "level", "logger",
"message"}``, with ``"exception"`` (the traceback's text) when one is attached.
Only the format changes, not which records are logged.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

LOG_FORMAT_ENV = "SAC_LOG_FORMAT"


def json_logs_wanted() -> bool:
    """The default of the ``log_json`` traits: $SAC_LOG_FORMAT says json."""
    return os.environ.get(LOG_FORMAT_ENV, "").strip().lower() == "json"


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record, on one line (newlines in the message or the
    traceback are escaped by JSON, so a collector never splits a record):
    python-json-logger's formatter with SAC's field names and UTC times."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
                "stack_info": "stack",
            },
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def use_json_logs(*loggers: logging.Logger) -> None:
    """Format ``loggers``' handlers (an application's own logger) and the root
    logger's as JSON. The root logger gets a handler on stderr if it has none:
    records of other loggers (tornado's, this package's modules') reach it, and
    without one Python's last-resort handler would print them as plain text."""
    formatter = JsonFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for logger in (*loggers, root):
        for handler in logger.handlers:
            handler.setFormatter(formatter)
