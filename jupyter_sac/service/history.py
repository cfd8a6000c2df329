"""Conversation history: batch ingest from sandboxes, sessions, events, search, CSV export.

Sandboxes send transcript entries with their per-agent token; the entries are
always stored under that token's agent. Owners read their agents' history,
admins (and holders of ``custom:sac:history:read-all``) everyone's.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from ..runtimes.transcript import prompt_text, readable_text
from ..store.history import EventFilter, EventKey, IngestEvent, payload_json
from .base import BaseHandler
from .errors import ApiError
from .openapi import _op, _path_params, _resp
from .validation import bad, check_fields, without_nul

READ_ALL_SCOPE = "custom:sac:history:read-all"
MAX_BATCH = 1000
MAX_INGEST_BYTES = 16 * 1024 * 1024
MAX_KEY = 200
MAX_KIND = 64
PAGE = 100
MAX_PAGE = 1000
CSV_COLUMNS = ("owner", "agent", "session_id", "uuid", "ts", "kind", "text", "payload")
CSV_FLUSH_BYTES = 256 * 1024


def _parse_ts(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise bad(field, "expected an ISO 8601 time")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise bad(field, "expected an ISO 8601 time") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _key(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or "\x00" in value:
        raise bad(field, f"expected 1-{max_len} characters")
    return value


def parse_events(body: dict[str, Any], may_contain_nul: bool = True) -> list[IngestEvent]:
    check_fields(body, {"events"})
    events = body.get("events")
    if not isinstance(events, list):
        raise bad("events", "expected a list of events")
    if len(events) > MAX_BATCH:
        raise bad("events", f"at most {MAX_BATCH} events per batch", "too_many")
    out = []
    for i, event in enumerate(events):
        field = f"events[{i}]"
        if not isinstance(event, dict):
            raise bad(field, "expected an object")
        unknown = set(event) - {"session_id", "uuid", "ts", "kind", "payload"}
        if unknown:
            raise bad(f"{field}.{sorted(unknown)[0]}", "unknown field", "unknown_field")
        payload = event.get("payload")
        if not isinstance(payload, dict):
            raise bad(f"{field}.payload", "expected a JSON object")
        kind = _key(event.get("kind"), f"{field}.kind", MAX_KIND)
        clean = without_nul(payload) if may_contain_nul else payload
        out.append(
            IngestEvent(
                session_id=_key(event.get("session_id"), f"{field}.session_id", MAX_KEY),
                uuid=_key(event.get("uuid"), f"{field}.uuid", MAX_KEY),
                ts=_parse_ts(event.get("ts"), f"{field}.ts"),
                kind=kind,
                payload_json=payload_json(clean),
                prompt=prompt_text(kind, clean),
            )
        )
    return out


def event_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": row["owner"],
        "agent": row["agent_slug"],
        "session_id": row["session_id"],
        "uuid": row["entry_uuid"],
        "ts": row["ts"].isoformat(),
        "kind": row["kind"],
        "payload": row["payload"],
    }


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def _decode(value: str, size: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(value.encode()))
    except (ValueError, TypeError):
        raise bad("cursor", "not a cursor returned by this endpoint") from None
    if not isinstance(values, list) or len(values) != size:
        raise bad("cursor", "not a cursor returned by this endpoint")
    return values


def event_cursor(row: dict[str, Any]) -> str:
    return _encode([row["ts"].isoformat(), row["session_id"], row["entry_uuid"]])


def parse_event_cursor(value: str) -> EventKey:
    ts, session_id, entry_uuid = _decode(value, 3)
    return _parse_ts(ts, "cursor"), str(session_id), str(entry_uuid)


class HistoryBaseHandler(BaseHandler):
    def can_read_all(self) -> bool:
        ident = self.require_user()
        return ident.admin or READ_ALL_SCOPE in ident.scopes

    def authorize_owner(self, owner: str) -> None:
        ident = self.require_user()
        if owner != ident.name and not self.can_read_all():
            # 404 as for agents: do not reveal another user's history exists.
            raise ApiError(404, "not_found", "no such agent")

    def int_arg(self, name: str, default: int, high: int) -> int:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise bad(name, f"expected 1-{high}")
        return int(raw)

    def time_arg(self, name: str) -> datetime | None:
        raw = self.get_argument(name, None)
        return _parse_ts(raw, name) if raw else None

    def text_arg(self, name: str, max_len: int = 200) -> str | None:
        raw = self.get_argument(name, None)
        if raw is None or raw == "":
            return None
        if len(raw) > max_len or "\x00" in raw:
            raise bad(name, f"at most {max_len} characters")
        return raw

    def event_filter(self, **fixed: Any) -> EventFilter:
        return EventFilter(
            session_id=self.text_arg("session"),
            since=self.time_arg("since"),
            until=self.time_arg("until"),
            **fixed,
        )

    async def write_page(self, where: EventFilter) -> None:
        order = self.get_argument("order", "asc")
        if order not in ("asc", "desc"):
            raise bad("order", "expected asc or desc")
        limit = self.int_arg("limit", PAGE, MAX_PAGE)
        cursor = self.get_argument("cursor", None)
        rows = await self.sac.store.history.events(
            where,
            limit + 1,
            parse_event_cursor(cursor) if cursor else None,
            descending=order == "desc",
        )
        page = rows[:limit]
        self.write_json(
            {
                "events": [event_model(r) for r in page],
                "next_cursor": event_cursor(page[-1]) if len(rows) > limit else None,
            }
        )

    async def write_csv(self, where: EventFilter, filename: str) -> None:
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        async for row in self.sac.store.history.stream(where):
            writer.writerow(
                (
                    row["owner"],
                    row["agent_slug"],
                    row["session_id"],
                    row["entry_uuid"],
                    row["ts"].isoformat(),
                    row["kind"],
                    readable_text(row["kind"], row["payload"]),
                    json.dumps(row["payload"], ensure_ascii=False),
                )
            )
            if buffer.tell() >= CSV_FLUSH_BYTES:
                self.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
                # Wait for the client to take it: memory stays flat however big the export.
                await self.flush()
        self.write(buffer.getvalue())
        self.finish()


class IngestHandler(HistoryBaseHandler):
    """POST api/history/ingest (agent token): a batch of transcript entries."""

    def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_INGEST_BYTES:
            raise ApiError(413, "too_large", f"batches are limited to {MAX_INGEST_BYTES} bytes")

    async def post(self) -> None:
        agent = await self.require_agent()
        # Only a body that spells a NUL escape can hold one (JSON has no raw NULs).
        events = parse_events(self.json_body(), b"\\u0000" in self.request.body)
        stored = await self.sac.store.history.ingest(agent.id, agent.owner, agent.slug, events)
        self.write_json({"received": len(events), "stored": stored})


class SessionsHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner)
        limit = self.int_arg("limit", PAGE, MAX_PAGE)
        cursor = self.get_argument("cursor", None)
        before = None
        if cursor:
            last_ts, session_id = _decode(cursor, 2)
            before = (_parse_ts(last_ts, "cursor"), str(session_id))
        rows = await self.sac.store.history.sessions(owner, slug, limit + 1, before)
        page = rows[:limit]
        self.write_json(
            {
                "sessions": [
                    {
                        "session_id": r["session_id"],
                        "first_prompt": r["first_prompt"],
                        "events": r["events"],
                        "prompts": r["prompts"],
                        "first_ts": r["first_ts"].isoformat(),
                        "last_ts": r["last_ts"].isoformat(),
                    }
                    for r in page
                ],
                "next_cursor": _encode([page[-1]["last_ts"].isoformat(), page[-1]["session_id"]])
                if len(rows) > limit
                else None,
            }
        )


class EventsHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner)
        await self.write_page(self.event_filter(owner=owner, agent_slug=slug))


class ExportHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner)
        await self.write_csv(
            self.event_filter(owner=owner, agent_slug=slug), f"history-{owner}-{slug}.csv"
        )


class SearchBaseHandler(HistoryBaseHandler):
    def search_filter(self) -> EventFilter:
        ident = self.require_user()
        user = self.text_arg("user")
        if not self.can_read_all():
            if user is not None and user != ident.name:
                raise ApiError(404, "not_found", "no such user")
            user = ident.name
        return self.event_filter(
            owner=user, agent_slug=self.text_arg("agent"), text=self.text_arg("q")
        )


class SearchHandler(SearchBaseHandler):
    """Events across agents (admins: across users), newest first by default."""

    async def get(self) -> None:
        if "order" not in self.request.arguments:
            self.request.arguments["order"] = [b"desc"]
        await self.write_page(self.search_filter())


class SearchExportHandler(SearchBaseHandler):
    async def get(self) -> None:
        await self.write_csv(self.search_filter(), "history.csv")


USER = r"([^/]+)"
SLUG = r"([a-z0-9-]+)"


def routes(prefix: str) -> list[tuple[str, Any]]:
    agent = prefix + f"api/users/{USER}/agents/{SLUG}/history/"
    return [
        (prefix + "api/history/ingest", IngestHandler),
        (prefix + "api/history/search", SearchHandler),
        (prefix + "api/history/export.csv", SearchExportHandler),
        (agent + "sessions", SessionsHandler),
        (agent + "events", EventsHandler),
        (agent + "export.csv", ExportHandler),
    ]


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": "string"}} for n in names]


def openapi_paths() -> dict[str, Any]:
    ua = _path_params("user", "slug")
    filters = _query("session", "since", "until")
    csv_ok = {"200": {"description": "CSV", "content": {"text/csv": {}}}}
    return {
        "/api/history/ingest": {
            "post": _op(
                "Ingest transcript entries (agent token; at most 1,000 per batch, idempotent)",
                {"200": _resp("received and newly stored counts")},
                400,
                413,
                body={
                    "type": "object",
                    "required": ["events"],
                    "properties": {"events": {"type": "array", "maxItems": MAX_BATCH}},
                },
            )
        },
        "/api/history/search": {
            "get": _op(
                "Search events (admins: every user); newest first",
                {"200": _resp("a page of events")},
                400,
                404,
                params=_query("user", "agent", "since", "until", "q", "limit", "cursor", "order"),
            )
        },
        "/api/history/export.csv": {
            "get": _op(
                "Export a search as CSV",
                csv_ok,
                400,
                404,
                params=_query("user", "agent", "since", "until", "q"),
            ),
        },
        "/api/users/{user}/agents/{slug}/history/sessions": {
            "get": _op(
                "An agent's sessions, newest first",
                {"200": _resp("sessions")},
                400,
                404,
                params=ua + _query("limit", "cursor"),
            ),
        },
        "/api/users/{user}/agents/{slug}/history/events": {
            "get": _op(
                "An agent's events (keyset pages)",
                {"200": _resp("events")},
                400,
                404,
                params=ua + filters + _query("order", "limit", "cursor"),
            ),
        },
        "/api/users/{user}/agents/{slug}/history/export.csv": {
            "get": _op("An agent's events as CSV", csv_ok, 400, 404, params=ua + filters),
        },
    }
