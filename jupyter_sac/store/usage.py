"""Model usage per agent per UTC day, written by the credential proxy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from psycopg_pool import AsyncConnectionPool

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass
class UsageDelta:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Usage:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def record(self, agent_id: int, owner: str, slug: str, delta: UsageDelta) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO usage_daily (agent_id, owner, agent_slug, day, requests,"
                " input_tokens, output_tokens, cache_creation_input_tokens,"
                " cache_read_input_tokens)"
                " VALUES (%s, %s, %s, (now() AT TIME ZONE 'UTC')::date, %s, %s, %s, %s, %s)"
                " ON CONFLICT (agent_id, day) DO UPDATE SET"
                " requests = usage_daily.requests + EXCLUDED.requests,"
                " input_tokens = usage_daily.input_tokens + EXCLUDED.input_tokens,"
                " output_tokens = usage_daily.output_tokens + EXCLUDED.output_tokens,"
                " cache_creation_input_tokens = usage_daily.cache_creation_input_tokens"
                "   + EXCLUDED.cache_creation_input_tokens,"
                " cache_read_input_tokens = usage_daily.cache_read_input_tokens"
                "   + EXCLUDED.cache_read_input_tokens",
                (
                    agent_id,
                    owner,
                    slug,
                    delta.requests,
                    delta.input_tokens,
                    delta.output_tokens,
                    delta.cache_creation_input_tokens,
                    delta.cache_read_input_tokens,
                ),
            )

    async def for_agent(self, agent_id: int) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT day, requests, input_tokens, output_tokens, cache_creation_input_tokens,"
                " cache_read_input_tokens FROM usage_daily WHERE agent_id = %s ORDER BY day",
                (agent_id,),
            )
            rows = await cur.fetchall()
        return [{**r, "day": r["day"].isoformat()} for r in rows]

    async def month_tokens(self, agent_id: int, owner: str) -> tuple[int, int]:
        """Tokens used this calendar month (UTC) by one agent, and by all of its
        owner's agents (deleted ones too: usage outlives them)."""
        tokens = " + ".join(USAGE_FIELDS)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT coalesce(sum({tokens}) FILTER (WHERE agent_id = %s), 0) AS agent,"
                f" coalesce(sum({tokens}), 0) AS owner FROM usage_daily"
                " WHERE owner = %s"
                " AND day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date",
                (agent_id, owner),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["agent"]), int(row["owner"])

    async def daily(
        self, since: date, until: date, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """Usage per (UTC day, user, agent) with since <= day < until, newest day first
        (deleted agents too: usage outlives them)."""
        where, params = ["day >= %s", "day < %s"], [since, until]
        if owner is not None:
            where.append("owner = %s")
            params.append(owner)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT day, owner, agent_slug, sum(requests) AS requests,"
                + ", ".join(f" sum({f}) AS {f}" for f in USAGE_FIELDS)
                + f" FROM usage_daily WHERE {' AND '.join(where)}"
                " GROUP BY day, owner, agent_slug ORDER BY day DESC, owner, agent_slug",
                params,
            )
            rows = await cur.fetchall()
        return [{**r, **{k: int(r[k]) for k in ("requests", *USAGE_FIELDS)}} for r in rows]

    async def month_by_agent(self) -> dict[int, dict[str, int]]:
        """Requests and tokens of every agent this calendar month (UTC), by agent id."""
        tokens = " + ".join(USAGE_FIELDS)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT agent_id, sum(requests) AS requests, sum({tokens}) AS tokens"
                " FROM usage_daily"
                " WHERE day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date"
                " GROUP BY agent_id"
            )
            rows = await cur.fetchall()
        return {
            r["agent_id"]: {"requests": int(r["requests"]), "tokens": int(r["tokens"])}
            for r in rows
        }
