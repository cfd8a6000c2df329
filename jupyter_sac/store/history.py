"""Conversation history: batch ingest from sandboxes, sessions, events, search, export.

One row per transcript entry, keyed by (agent, session, entry uuid) — the sender
always sends an entry with the same timestamp, so re-sending a batch stores
nothing twice. A per-session summary (first prompt, counts, first/last time) is
kept in the same transaction as the events it counts.

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

from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class IngestEvent:
    session_id: str
    uuid: str
    ts: datetime
    kind: str
    payload_json: str
    prompt: str | None


@dataclass(frozen=True)
class EventFilter:
    owner: str | None = None
    agent_slug: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
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
            # Matched against the JSON text of the entry, so the query is escaped the way
            # JSON writes strings (quotes, backslashes); then LIKE's metacharacters are
            # escaped, so the search text is literal.
            as_json = json.dumps(self.text, ensure_ascii=False)[1:-1]
            escaped = as_json.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("payload::text ILIKE %s ESCAPE '\\'")
            params.append(f"%{escaped}%")
        return clauses, params


EventKey = tuple[datetime, str, str]  # (ts, session_id, entry_uuid): the keyset order

_EVENT_COLUMNS = "owner, agent_slug, session_id, entry_uuid, ts, kind, payload"

_INGEST = """
WITH ins AS (
    INSERT INTO conversation_events
        (agent_id, owner, agent_slug, session_id, entry_uuid, ts, kind, payload)
    SELECT %(agent_id)s, %(owner)s, %(slug)s, session_id, entry_uuid, ts, kind, payload
    FROM _sac_ingest
    ON CONFLICT DO NOTHING
    RETURNING session_id, entry_uuid, ts
), agg AS (
    SELECT ins.session_id,
           count(*) AS n,
           count(g.prompt) AS prompts,
           min(ins.ts) AS first_ts,
           max(ins.ts) AS last_ts,
           (array_agg(g.prompt ORDER BY ins.ts) FILTER (WHERE g.prompt IS NOT NULL))[1]
               AS first_prompt,
           min(ins.ts) FILTER (WHERE g.prompt IS NOT NULL) AS first_prompt_ts
    FROM ins JOIN _sac_ingest g USING (session_id, entry_uuid)
    GROUP BY ins.session_id
), up AS (
    INSERT INTO conversation_sessions AS s
        (agent_id, owner, agent_slug, session_id, first_prompt, first_prompt_ts,
         events, prompts, first_ts, last_ts)
    SELECT %(agent_id)s, %(owner)s, %(slug)s, session_id, first_prompt, first_prompt_ts,
           n, prompts, first_ts, last_ts
    FROM agg
    ON CONFLICT (agent_id, session_id) DO UPDATE SET
        events = s.events + EXCLUDED.events,
        prompts = s.prompts + EXCLUDED.prompts,
        first_ts = least(s.first_ts, EXCLUDED.first_ts),
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
SELECT (SELECT count(*) FROM ins) AS stored, (SELECT count(*) FROM up) AS sessions
"""


class History:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def ingest(self, agent_id: int, owner: str, slug: str, events: list[IngestEvent]) -> int:
        """Store a batch in one transaction; returns how many rows were new."""
        if not events:
            return 0
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _sac_ingest (session_id text, entry_uuid text,"
                " ts timestamptz, kind text, payload jsonb, prompt text) ON COMMIT DELETE ROWS"
            )
            cur = conn.cursor()
            async with cur.copy(
                "COPY _sac_ingest (session_id, entry_uuid, ts, kind, payload, prompt) FROM STDIN"
            ) as copy:
                for e in events:
                    await copy.write_row(
                        (e.session_id, e.uuid, e.ts, e.kind, e.payload_json, e.prompt)
                    )
            # A batch may repeat an entry: keep one (the key must be unique per statement).
            await conn.execute(
                "DELETE FROM _sac_ingest a USING _sac_ingest b WHERE a.ctid > b.ctid"
                " AND a.session_id = b.session_id AND a.entry_uuid = b.entry_uuid"
            )
            cur = await conn.execute(_INGEST, {"agent_id": agent_id, "owner": owner, "slug": slug})
            row = await cur.fetchone()
        return int(row["stored"]) if row else 0

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
        clauses, params = where.where()
        if after is not None:
            clauses.append(
                f"(ts, session_id, entry_uuid) {'<' if descending else '>'} (%s, %s, %s)"
            )
            params += list(after)
        order = "DESC" if descending else "ASC"
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM conversation_events {clause}"
                f" ORDER BY ts {order}, session_id {order}, entry_uuid {order} LIMIT %s",
                (*params, limit),
            )
            return await cur.fetchall()

    async def stream(self, where: EventFilter, batch: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching event in time order, through a server-side cursor (flat memory)."""
        clauses, params = where.where()
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="sac_history_export") as cur,
        ):
            cur.itersize = batch
            await cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM conversation_events {clause}"
                " ORDER BY ts, session_id, entry_uuid",
                params,
            )
            async for row in cur:
                yield row


def payload_json(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
