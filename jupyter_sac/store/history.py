"""Conversation history: batch ingest from sandboxes, sessions, events, search, export.

One row per transcript entry, keyed by (agent, session, entry uuid, ts). The
time is part of the key because a TimescaleDB hypertable needs it in every
unique index; the sender always sends an entry with the same timestamp (it is
derived from the transcript line alone), so re-sending a batch stores nothing
twice. A per-session summary (first prompt, counts, first/last time) is kept in
the same transaction as the events it counts.

Reads go by (owner, agent slug), not agent id: history outlives a deleted agent.
Pagination is keyset-based on (ts, session_id, entry_uuid), which stays correct
while rows are inserted: no row is returned twice and no row that existed when
paging began is skipped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .tx import Pool


@dataclass(frozen=True)
class IngestEvent:
    session_id: str
    uuid: str
    ts: datetime
    kind: str
    prompt: str | None


@dataclass(frozen=True)
class IngestBatch:
    """Validated events and the JSON text they were read from.

    ``document`` is ``{"events": [{..., "payload": {...}}, ...]}`` whose i-th
    element's ``payload`` belongs to ``events[i]``. PostgreSQL reads the payloads
    straight out of that text, so a 1,000-event batch is not re-encoded in Python
    (that was most of the service's time per event). The caller guarantees that
    the text is valid for ``jsonb`` (no NUL characters, no lone surrogates, no
    NaN) and that its session_id/uuid/kind match ``events``.
    """

    events: list[IngestEvent]
    document: str


@dataclass(frozen=True)
class EventFilter:
    owner: str | None = None
    agent_slug: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("owner", self.owner),
            ("agent_slug", self.agent_slug),
            ("session_id", self.session_id),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        if self.since is not None:
            clauses.append("ts >= %s")
            params.append(self.since)
        if self.until is not None:
            clauses.append("ts < %s")
            params.append(self.until)
        if self.text:
            clauses.append(_TEXT_MATCH)
            params += text_match_params(self.text)
        return clauses, params


# Text search matches inside the string values of an entry (not its key names:
# "message" or "content" would otherwise match every entry). The jsonpath test
# is exact but slow, so a cheaper necessary condition runs first: the value's
# JSON-escaped form must occur in the entry's JSON text. Both are
# case-insensitive and literal (LIKE's % _ \ are escaped; like_regex flag "q"
# quotes the whole pattern). CASE fixes the order of evaluation.
_TEXT_MATCH = (
    "CASE WHEN payload::text ILIKE %s ESCAPE '\\' THEN payload @? %s::jsonpath ELSE false END"
)


def text_match_params(text: str) -> list[str]:
    as_json = json.dumps(text, ensure_ascii=False)
    like = as_json[1:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # A JSON string literal is also a valid jsonpath string literal.
    path = f'strict $.** ? (@ like_regex {as_json} flag "iq")'
    return [f"%{like}%", path]


EventKey = tuple[datetime, str, str]  # (ts, session_id, entry_uuid): the keyset order

# Pages and exports carry the payload as JSON text (``payload_json``), ready to be sent on.
_PAGE_COLUMNS = "owner, agent_slug, session_id, entry_uuid, ts, kind, payload::text AS payload_json"

# Rows are inserted in key order: two requests carrying the same entries (a
# sender retrying while its first attempt is still running) then wait for each
# other instead of deadlocking. Sessions are upserted in session order likewise.
_INGEST = """
WITH src AS (
    SELECT d.ev ->> 'session_id' AS session_id, d.ev ->> 'uuid' AS entry_uuid, a.ts,
           d.ev ->> 'kind' AS kind, d.ev -> 'payload' AS payload, a.prompt
    FROM jsonb_array_elements(%(document)s::jsonb -> 'events') WITH ORDINALITY AS d (ev, i)
    JOIN unnest(%(ts)s::text[]::timestamptz[], %(prompt)s::text[], %(keep)s::bool[])
         WITH ORDINALITY AS a (ts, prompt, keep, i) USING (i)
    WHERE a.keep
), ins AS (
    INSERT INTO conversation_events
        (agent_id, owner, agent_slug, session_id, entry_uuid, ts, kind, payload)
    SELECT %(agent_id)s, %(owner)s, %(slug)s, session_id, entry_uuid, ts, kind, payload
    FROM src
    ORDER BY session_id COLLATE "C", entry_uuid COLLATE "C"
    ON CONFLICT DO NOTHING
    RETURNING session_id, entry_uuid
), agg AS (
    SELECT session_id,
           count(*) AS n,
           count(src.prompt) AS prompts,
           -- Entries written before the transcript's first timestamp carry the epoch
           -- (see runtimes/transcript.py): they don't date the session.
           coalesce(min(src.ts) FILTER (WHERE src.ts > 'epoch'), min(src.ts)) AS first_ts,
           max(src.ts) AS last_ts,
           (array_agg(src.prompt ORDER BY src.ts) FILTER (WHERE src.prompt IS NOT NULL))[1]
               AS first_prompt,
           min(src.ts) FILTER (WHERE src.prompt IS NOT NULL) AS first_prompt_ts
    FROM ins JOIN src USING (session_id, entry_uuid)
    GROUP BY session_id
), up AS (
    INSERT INTO conversation_sessions AS s
        (agent_id, owner, agent_slug, session_id, first_prompt, first_prompt_ts,
         events, prompts, first_ts, last_ts)
    SELECT %(agent_id)s, %(owner)s, %(slug)s, session_id, first_prompt, first_prompt_ts,
           n, prompts, first_ts, last_ts
    FROM agg
    ORDER BY session_id COLLATE "C"
    ON CONFLICT (agent_id, session_id) DO UPDATE SET
        events = s.events + EXCLUDED.events,
        prompts = s.prompts + EXCLUDED.prompts,
        first_ts = CASE
            WHEN s.first_ts <= 'epoch' THEN EXCLUDED.first_ts
            WHEN EXCLUDED.first_ts <= 'epoch' THEN s.first_ts
            ELSE least(s.first_ts, EXCLUDED.first_ts) END,
        last_ts = greatest(s.last_ts, EXCLUDED.last_ts),
        first_prompt = CASE
            WHEN EXCLUDED.first_prompt_ts IS NOT NULL AND
                 (s.first_prompt_ts IS NULL OR EXCLUDED.first_prompt_ts < s.first_prompt_ts)
            THEN EXCLUDED.first_prompt ELSE s.first_prompt END,
        first_prompt_ts = CASE
            WHEN EXCLUDED.first_prompt_ts IS NOT NULL AND
                 (s.first_prompt_ts IS NULL OR EXCLUDED.first_prompt_ts < s.first_prompt_ts)
            THEN EXCLUDED.first_prompt_ts ELSE s.first_prompt_ts END
    RETURNING 1
)
SELECT (SELECT sum(n) FROM agg) AS stored, (SELECT count(*) FROM up) AS sessions
"""


def first_occurrences(events: list[IngestEvent]) -> list[bool]:
    """Which events to store: a batch may repeat an entry, and one INSERT must not
    touch the same key twice (the first one is kept)."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for e in events:
        key = (e.session_id, e.uuid)
        keep.append(key not in seen)
        seen.add(key)
    return keep


class History:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def ingest(self, agent_id: int, owner: str, slug: str, batch: IngestBatch) -> int:
        """Store a batch in one statement (so one transaction); returns how many rows were new."""
        events = batch.events
        if not events:
            return 0
        params = {
            "document": batch.document,
            # as text: psycopg adapts a list of datetimes element by element in Python
            "ts": [e.ts.isoformat() for e in events],
            "prompt": [e.prompt for e in events],
            "keep": first_occurrences(events),
            "agent_id": agent_id,
            "owner": owner,
            "slug": slug,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(_INGEST, params)
            row = await cur.fetchone()
        return int(row["stored"] or 0) if row else 0

    async def known(self, owner: str, slug: str) -> bool:
        """An agent row exists for (owner, slug), or history stored under that name does
        (the agent was deleted; its history stays readable)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM agents WHERE owner = %s AND slug = %s)"
                " OR EXISTS (SELECT 1 FROM conversation_events"
                "            WHERE owner = %s AND agent_slug = %s) AS known",
                (owner, slug, owner, slug),
            )
            row = await cur.fetchone()
        return bool(row and row["known"])

    async def sessions(
        self, owner: str, slug: str, limit: int, before: tuple[datetime, str] | None
    ) -> list[dict[str, Any]]:
        params: list[Any] = [owner, slug]
        keyset = ""
        if before is not None:
            keyset = " AND (last_ts, session_id) < (%s, %s)"
            params += list(before)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT session_id, first_prompt, events, prompts, first_ts, last_ts"
                " FROM conversation_sessions WHERE owner = %s AND agent_slug = %s"
                f"{keyset} ORDER BY last_ts DESC, session_id DESC LIMIT %s",
                (*params, limit),
            )
            return await cur.fetchall()

    async def events(
        self, where: EventFilter, limit: int, after: EventKey | None, descending: bool
    ) -> list[dict[str, Any]]:
        """A page of events in keyset order, each with its payload as ``payload_json``."""
        clauses, params = where.where()
        op = "<" if descending else ">"
        if after is not None and where.session_id is not None:
            # Within one session the key is (ts, entry_uuid): the same columns, in the
            # same order, as the session index, so each page starts with an index seek
            # instead of re-reading the session from its beginning.
            clauses.append(f"(ts, entry_uuid) {op} (%s, %s)")
            params += [after[0], after[2]]
        elif after is not None:
            clauses.append(f"(ts, session_id, entry_uuid) {op} (%s, %s, %s)")
            params += list(after)
        order = "DESC" if descending else "ASC"
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_PAGE_COLUMNS} FROM conversation_events {clause}"
                f" ORDER BY ts {order}, session_id {order}, entry_uuid {order} LIMIT %s",
                (*params, limit),
            )
            return await cur.fetchall()

    async def stream(self, where: EventFilter, batch: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching event in time order, through a server-side cursor (flat memory),
        each with its payload as ``payload_json``.

        Use it inside ``contextlib.aclosing`` so that a client going away mid-export
        closes the cursor and returns the connection at once.
        """
        clauses, params = where.where()
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="sac_history_export") as cur,
        ):
            cur.itersize = batch
            await cur.execute(
                f"SELECT {_PAGE_COLUMNS} FROM conversation_events {clause}"
                " ORDER BY ts, session_id, entry_uuid",
                params,
            )
            async for row in cur:
                yield row
