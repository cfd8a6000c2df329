"""Conversation history: batch ingest from sandboxes, sessions, events, search, CSV export.

Sandboxes send transcript entries with their per-agent token; the entries are
always stored under that token's agent. Owners read their agents' history,
admins (and holders of ``custom:sac:history:read-all``) everyone's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tornado import web

from ..errors import ApiError
from ..runtimes.transcript import prompt_text, readable_text
from ..store.history import EventFilter, EventKey, IngestBatch, IngestEvent
from . import metrics
from .base import BaseHandler
from .csv_export import stream_csv
from .operations.access import require_person
from .operations.context import Actor
from .routes import SLUG, USER
from .validation import bad, check_fields, decode_cursor, encode_cursor, utf8_encodable

MAX_BATCH = 1000
MAX_INGEST_BYTES = 16 * 1024 * 1024
MAX_KEY = 200
MAX_KIND = 64
PAGE = 100
MAX_PAGE = 1000
CSV_COLUMNS = ("owner", "agent", "session_id", "uuid", "ts", "kind", "text", "payload")
# Times outside this range are refused: PostgreSQL would store them, but reading
# them back into Python (year 1 to 9999 in the session's time zone) would fail.
MIN_TS = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TS = datetime(9000, 1, 1, tzinfo=UTC)
EVENT_FIELDS = frozenset({"session_id", "uuid", "ts", "kind", "payload"})

# What jsonb cannot store but a JSON body can carry: NUL (only ever written as the
# escape \u0000), lone UTF-16 surrogates (escaped, or raw bytes that Python's JSON
# reader lets through). A body without any of these is stored as it came.
_NEEDS_SCRUB = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


_UNENCODED_PLUS = re.compile(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$")


def _parse_ts(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise bad(field, "expected an ISO 8601 time")
    try:
        # RFC 3339 (the documents' date-time) allows "t" and "z"; fromisoformat does not.
        ts = datetime.fromisoformat(value.upper())
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad(field, "expected an ISO 8601 time") from None
    if not MIN_TS <= ts < MAX_TS:
        raise bad(field, "expected a time between the years 1900 and 9000")
    return ts


def _key(value: Any, field: str, max_len: int, check_unicode: bool) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or "\x00" in value:
        raise bad(field, f"expected 1-{max_len} characters")
    if check_unicode and not utf8_encodable(value):
        raise bad(field, "expected valid Unicode (no lone surrogates)")
    return value


def clean_text(text: str) -> str:
    """``text`` as jsonb can store it: NUL characters dropped, lone surrogates replaced
    by U+FFFD (a surrogate pair that arrived as two halves becomes its character)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not utf8_encodable(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean(value: Any) -> Any:
    """``value`` with :func:`clean_text` applied to every string, keys included."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def load_json(raw: bytes) -> tuple[Any, str, bool]:
    """The body, its text, and whether that text needs scrubbing before PostgreSQL.

    Stricter than ``json.loads``: UTF-8 only, no NaN/Infinity (jsonb has neither),
    and nesting beyond Python's recursion limit is a 400, not a 500.
    """
    dirty = _NEEDS_SCRUB.search(raw) is not None
    try:
        text = raw.decode("utf-8", "surrogatepass" if dirty else "strict")
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON (UTF-8)") from None
    return body, text, dirty


def parse_batch(raw: bytes) -> IngestBatch:
    """Validate an ingest body; any invalid event refuses the whole batch (400)."""
    body, text, dirty = load_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    # Not the document's validator: this body is streamed (up to 16 MiB, not
    # json_body's 1 MiB) and its events are checked one by one below, so its one
    # top-level rule (additionalProperties: false) is checked here by hand.
    check_fields(body, {"events"})
    items = body.get("events")
    if not isinstance(items, list):
        raise bad("events", "expected a list of events")
    if len(items) > MAX_BATCH:
        raise bad("events", f"at most {MAX_BATCH} events per batch", "too_many")
    events = []
    for i, item in enumerate(items):
        field = f"events[{i}]"
        if not isinstance(item, dict):
            raise bad(field, "expected an object")
        if not item.keys() <= EVENT_FIELDS:
            raise bad(f"{field}.{sorted(item.keys() - EVENT_FIELDS)[0]}", "unknown field",
                      "unknown_field")  # fmt: skip
        payload = item.get("payload")
        if not isinstance(payload, dict):
            raise bad(f"{field}.payload", "expected a JSON object")
        session_id = _key(item.get("session_id"), f"{field}.session_id", MAX_KEY, dirty)
        uuid = _key(item.get("uuid"), f"{field}.uuid", MAX_KEY, dirty)
        kind = _key(item.get("kind"), f"{field}.kind", MAX_KIND, dirty)
        ts = _parse_ts(item.get("ts"), f"{field}.ts")
        if dirty:
            try:
                item["payload"] = payload = clean(payload)
            except RecursionError:
                raise bad(f"{field}.payload", "nested too deeply") from None
        events.append(IngestEvent(session_id, uuid, ts, kind, prompt_text(kind, payload)))
    if dirty:
        text = json.dumps({"events": items}, ensure_ascii=False)
    return IngestBatch(events, text)


def event_json(row: dict[str, Any]) -> str:
    """An event as JSON text. The payload is spliced in as PostgreSQL wrote it: parsing
    it into Python only to encode it again was most of the time of a page."""
    head = json.dumps(
        {
            "user": row["owner"],
            "agent": row["agent_slug"],
            "session_id": row["session_id"],
            "uuid": row["entry_uuid"],
            "ts": row["ts"].isoformat(),
            "kind": row["kind"],
        },
        ensure_ascii=False,
    )
    return f'{head[:-1]}, "payload": {row["payload_json"]}}}'


def event_cursor(row: dict[str, Any]) -> str:
    return encode_cursor([row["ts"].isoformat(), row["session_id"], row["entry_uuid"]])


def parse_event_cursor(value: str) -> EventKey:
    ts, session_id, entry_uuid = decode_cursor(value, 3)
    return _parse_ts(ts, "cursor"), session_id, entry_uuid


def _filename(*parts: str) -> str:
    name = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] + ".csv"


def csv_row(row: dict[str, Any]) -> tuple[str, ...]:
    payload_json = row["payload_json"]
    return (
        row["owner"],
        row["agent_slug"],
        row["session_id"],
        row["entry_uuid"],
        row["ts"].isoformat(),
        row["kind"],
        readable_text(row["kind"], json.loads(payload_json)),
        payload_json,
    )


# A request's query argument by name (None when absent): handlers pass
# ``self.query_arg``, so the API and the pages parse the same query the same way.
QueryArg = Callable[[str], str | None]


def time_arg(arg: QueryArg, name: str) -> datetime | None:
    raw = arg(name)
    if not raw:
        return None
    # An offset's "+" typed into a URL unencoded arrives as a space.
    return _parse_ts(_UNENCODED_PLUS.sub(r"\1+\2", raw), name)


def text_arg(arg: QueryArg, name: str, max_len: int = 200) -> str | None:
    # tornado has already refused invalid UTF-8 and dropped control characters
    raw = arg(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise bad(name, f"at most {max_len} characters")
    return raw


def event_filter(arg: QueryArg, **fixed: Any) -> EventFilter:
    return EventFilter(
        session_id=text_arg(arg, "session"),
        since=time_arg(arg, "since"),
        until=time_arg(arg, "until"),
        **fixed,
    )


def search_filter(actor: Actor, arg: QueryArg) -> EventFilter:
    """A history search's filters (the API's and the Conversations page's): a
    person searches their own agents; auditors and administrators anyone's."""
    ident = require_person(actor, "search history")
    user = text_arg(arg, "user")
    if not ident.auditor:
        if user is not None and user != ident.name:
            # As for another user's agents: 404, whether or not that user exists.
            raise ApiError(404, "not_found", "no such user")
        user = ident.name
    return event_filter(arg, owner=user, agent_slug=text_arg(arg, "agent"), text=text_arg(arg, "q"))


class HistoryBaseHandler(BaseHandler):
    def can_read_all(self) -> bool:
        return self.identity.auditor

    def authorize_owner(self, owner: str, slug: str | None = None) -> None:
        """The caller may read ``owner``'s history (of agent ``slug``): they are that
        user acting as themselves, an admin, a holder of the read-all scope, or the
        sandbox of that very agent (its sidebar's History)."""
        ident = self.identity
        if ident.auditor:
            return
        if ident.kind == "agent" and slug is not None:
            if owner != ident.name or slug != ident.agent.slug:
                raise ApiError(403, "forbidden", f"{ident.describe()} reads only its own history")
            return
        self.authorize_user(owner, "read history")

    async def require_known(self, owner: str, slug: str) -> None:
        """There is an agent or history under that name (a deleted agent's history
        stays readable). Called when a page comes back empty: rows prove it already."""
        if not await self.ctx.store.history.known(owner, slug):
            raise ApiError(404, "not_found", "no such agent")

    def event_filter(self, **fixed: Any) -> EventFilter:
        return event_filter(self.query_arg, **fixed)

    async def write_page(self, where: EventFilter, default_order: str = "asc") -> None:
        """A page of events; for one agent (``where.agent_slug``), 404 if it is unknown."""
        order = self.get_argument("order", default_order)
        if order not in ("asc", "desc"):
            raise bad("order", "expected asc or desc")
        limit = self.int_arg("limit", PAGE, 1, MAX_PAGE)
        cursor = self.get_argument("cursor", None)
        rows = await self.ctx.store.history.events(
            where,
            limit + 1,
            parse_event_cursor(cursor) if cursor else None,
            descending=order == "desc",
        )
        if not rows and where.owner is not None and where.agent_slug is not None:
            await self.require_known(where.owner, where.agent_slug)
        page = rows[:limit]
        next_cursor = event_cursor(page[-1]) if len(rows) > limit else None
        events = ",".join(event_json(r) for r in page)
        self.finish(f'{{"events": [{events}], "next_cursor": {json.dumps(next_cursor)}}}')

    async def write_csv(self, where: EventFilter, filename: str) -> None:
        await stream_csv(self, filename, CSV_COLUMNS, self.ctx.store.history.stream(where),
                         csv_row)  # fmt: skip


@web.stream_request_body
class IngestHandler(HistoryBaseHandler):
    """POST api/history/ingest (agent token): a batch of transcript entries, up to
    16 MiB (more than the JSON limit), taken only from an agent's own token."""

    def upload_limit(self) -> int:
        return MAX_INGEST_BYTES

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        # A refusal here is answered once a small body is in (StreamedBody.finish),
        # so the hub's proxy delivers it rather than a 503.
        await self.authenticate()
        self._agent = await self.require_agent()
        if not self.accept_body(self._chunks.append):
            raise _batch_too_large()

    async def post(self) -> None:
        agent = self._agent
        if self.body_too_large:
            raise _batch_too_large()
        body = b"".join(self._chunks)
        self._chunks.clear()
        if not body:
            raise ApiError(400, "invalid_json", "a JSON object body is required")
        batch = parse_batch(body)
        stored = await self.ctx.store.history.ingest(agent.id, agent.owner, agent.slug, batch)
        metrics.HISTORY_EVENTS.inc(stored)
        self.write_json({"received": len(batch.events), "stored": stored})

    def on_finish(self) -> None:
        status = self.get_status()
        if status == 200 or (400 <= status < 500 and status not in (401, 403)):
            metrics.HISTORY_BATCHES.labels("stored" if status == 200 else "rejected").inc()


def _batch_too_large() -> ApiError:
    return ApiError(413, "too_large", f"batches are limited to {MAX_INGEST_BYTES} bytes")


def session_model(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "session_id": row["session_id"],
        "first_prompt": row["first_prompt"],
        "events": row["events"],
        "prompts": row["prompts"],
        "first_ts": row["first_ts"].isoformat(),
        "last_ts": row["last_ts"].isoformat(),
    }


class SessionsHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner, slug)
        limit = self.int_arg("limit", PAGE, 1, MAX_PAGE)
        cursor = self.get_argument("cursor", None)
        before = None
        if cursor:
            last_ts, session_id = decode_cursor(cursor, 2)
            before = (_parse_ts(last_ts, "cursor"), session_id)
        rows = await self.ctx.store.history.sessions(owner, slug, limit + 1, before)
        if not rows:
            await self.require_known(owner, slug)
        page = rows[:limit]
        last = page[-1] if len(rows) > limit else None
        self.write_json(
            {
                "sessions": [session_model(r) for r in page],
                "next_cursor": encode_cursor([last["last_ts"].isoformat(), last["session_id"]])
                if last
                else None,
            }
        )


class EventsHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner, slug)
        await self.write_page(self.event_filter(owner=owner, agent_slug=slug))


class ExportHandler(HistoryBaseHandler):
    async def get(self, owner: str, slug: str) -> None:
        self.authorize_owner(owner, slug)
        where = self.event_filter(owner=owner, agent_slug=slug)
        await self.require_known(owner, slug)
        await self.write_csv(where, _filename("history", owner, slug))


class SearchBaseHandler(HistoryBaseHandler):
    def search_filter(self) -> EventFilter:
        return search_filter(self.actor, self.query_arg)


class SearchHandler(SearchBaseHandler):
    """Events across agents (admins: across users), newest first by default."""

    async def get(self) -> None:
        await self.write_page(self.search_filter(), default_order="desc")


class SearchExportHandler(SearchBaseHandler):
    async def get(self) -> None:
        await self.write_csv(self.search_filter(), "history.csv")


def routes(prefix: str) -> list[tuple[str, Any]]:
    agent = prefix + f"api/users/{USER}/agents/{SLUG}/history/"
    return [
        (prefix + "api/history/ingest", IngestHandler),
        (prefix + "api/history/search", SearchHandler),
        (prefix + r"api/history/export\.csv", SearchExportHandler),
        (agent + "sessions", SessionsHandler),
        (agent + "events", EventsHandler),
        (agent + r"export\.csv", ExportHandler),
    ]
