"""The audit log API (administrators only): list and export the entries that
settings changes and administrators' actions on other users' resources leave.

Handlers record entries with ``BaseHandler.audit`` (see docs/audit.md for what is
recorded); this module reads them back: ``GET api/audit`` pages newest first,
``GET api/audit/export.csv`` streams every matching entry in the same order.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..store.audit import AuditFilter, AuditKey
from .base import BaseHandler
from .csv_export import stream_csv
from .history import QueryArg, _parse_ts, text_arg, time_arg
from .validation import bad, decode_cursor, encode_cursor

PAGE = 100
MAX_PAGE = 500
MAX_TEXT = 200
CSV_COLUMNS = ("at", "actor", "action", "target_user", "target", "before", "after")
# An exact action ("agent.update") or every action under a prefix ("settings.*").
_ACTION = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*(\.\*)?")


def entry_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "actor_admin": row["actor_admin"],
        "action": row["action"],
        "target_user": row["target_user"],
        "target": row["target"],
        "before": row["before"],
        "after": row["after"],
        "request_id": row["request_id"],
        "ip": row["ip"],
    }


def _json_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def csv_row(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        row["at"].isoformat(),
        row["actor"],
        row["action"],
        row["target_user"] or "",
        row["target"],
        _json_cell(row["before"]),
        _json_cell(row["after"]),
    )


def entry_cursor(row: dict[str, Any]) -> str:
    return encode_cursor([row["at"].isoformat(), str(row["id"])])


def parse_entry_cursor(value: str) -> AuditKey:
    at, entry_id = decode_cursor(value, 2)
    if not (entry_id.isascii() and entry_id.isdigit() and len(entry_id) < 19):
        raise bad("cursor", "not a cursor returned by this endpoint")
    return _parse_ts(at, "cursor"), int(entry_id)


def audit_filter(arg: QueryArg) -> AuditFilter:
    """The filters of an audit query (the API's and the Audit log page's): actor,
    user, target, action (exact, or a prefix ending in ``.*``), since and until."""
    action = text_arg(arg, "action")
    if action is not None and not _ACTION.fullmatch(action):
        raise bad("action", "expected an action such as agent.update, or a prefix: settings.*")
    since, until = time_arg(arg, "since"), time_arg(arg, "until")
    if since is not None and until is not None and until <= since:
        raise bad("until", "must be after since")
    return AuditFilter(
        actor=text_arg(arg, "actor"),
        target_user=text_arg(arg, "user"),
        target=text_arg(arg, "target"),
        action=action,
        since=since,
        until=until,
    )


class AuditBaseHandler(BaseHandler):
    def audit_filter(self) -> AuditFilter:
        """The query's filters, for an administrator (else 403 before any is read)."""
        self.require_admin()
        return audit_filter(self.query_arg)


class AuditHandler(AuditBaseHandler):
    """GET api/audit: a page of entries, newest first."""

    async def get(self) -> None:
        where = self.audit_filter()
        limit = self.int_arg("limit", PAGE, 1, MAX_PAGE)
        cursor = self.get_argument("cursor", None)
        rows = await self.ctx.store.audit.list(
            where, limit + 1, parse_entry_cursor(cursor) if cursor else None
        )
        page = rows[:limit]
        self.write_json(
            {
                "entries": [entry_model(r) for r in page],
                "next_cursor": entry_cursor(page[-1]) if len(rows) > limit else None,
            }
        )


class AuditExportHandler(AuditBaseHandler):
    """GET api/audit/export.csv: every matching entry as CSV, newest first, streamed
    from a server-side cursor a chunk at a time (as the history export)."""

    async def get(self) -> None:
        where = self.audit_filter()
        await stream_csv(self, "audit.csv", CSV_COLUMNS, self.ctx.store.audit.stream(where),
                         csv_row)  # fmt: skip


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/audit", AuditHandler),
        (prefix + r"api/audit/export\.csv", AuditExportHandler),
    ]
