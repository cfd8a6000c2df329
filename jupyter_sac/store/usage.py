"""Model usage per agent per UTC day, written by the credential proxy, and the token
reservations of model calls under way that keep budgets from being passed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from .tx import Conn, Pool, using

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


@dataclass(frozen=True)
class MonthBudget:
    """This calendar month (UTC), as one reservation saw it: tokens used by the agent
    and by all of its owner's agents, and tokens reserved by their calls under way
    (not counting the reservation being made)."""

    agent_used: int
    agent_reserved: int
    owner_used: int
    owner_reserved: int


@dataclass(frozen=True)
class Reservation:
    """The outcome of ``Usage.reserve``: ``id`` of the reservation, or None when the
    tokens did not fit; ``seen`` is what the decision was made on."""

    id: int | None
    seen: MonthBudget


# Sums of this month's usage and live reservations, of one agent and of its owner.
_MONTH_SQL = f"""
    SELECT coalesce(sum(used) FILTER (WHERE agent_id = %(agent)s), 0) AS agent_used,
           coalesce(sum(reserved) FILTER (WHERE agent_id = %(agent)s), 0) AS agent_reserved,
           coalesce(sum(used), 0) AS owner_used,
           coalesce(sum(reserved), 0) AS owner_reserved
    FROM (
        SELECT agent_id, {" + ".join(USAGE_FIELDS)} AS used, 0 AS reserved FROM usage_daily
        WHERE owner = %(owner)s
          AND day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date
        UNION ALL
        SELECT agent_id, 0, tokens FROM usage_reservations
        WHERE owner = %(owner)s AND expires_at > now()
    ) month"""


class Usage:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def reserve(
        self,
        agent_id: int,
        owner: str,
        tokens: int,
        *,
        agent_limit: int,
        user_limit: int,
        ttl: float,
    ) -> Reservation:
        """Reserve ``tokens`` for one model call if they fit in both monthly budgets
        (a limit of 0: none) next to this month's usage and the live reservations.

        The check and the insert are one statement, run under a lock per owner (the
        user budget spans all their agents), so calls made at once are admitted one
        after the other, each seeing the reservations of those before it. The
        reservation counts until ``settle`` or, for a call that never settles,
        until ``ttl`` seconds pass without ``extend``.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sac-budget:{owner}",)
            )
            # Reservations of calls that died with an earlier service process.
            await conn.execute(
                "DELETE FROM usage_reservations WHERE owner = %s AND expires_at <= now()",
                (owner,),
            )
            cur = await conn.execute(
                f"WITH month AS ({_MONTH_SQL}),"
                " made AS (INSERT INTO usage_reservations (agent_id, owner, tokens, expires_at)"
                "  SELECT %(agent)s, %(owner)s, %(tokens)s,"
                "   now() + make_interval(secs => %(ttl)s) FROM month"
                "  WHERE (%(agent_limit)s = 0"
                "         OR agent_used + agent_reserved + %(tokens)s <= %(agent_limit)s)"
                "    AND (%(user_limit)s = 0"
                "         OR owner_used + owner_reserved + %(tokens)s <= %(user_limit)s)"
                "  RETURNING id)"
                " SELECT (SELECT id FROM made) AS id, month.* FROM month",
                {
                    "agent": agent_id,
                    "owner": owner,
                    "tokens": tokens,
                    "ttl": ttl,
                    "agent_limit": agent_limit,
                    "user_limit": user_limit,
                },
            )
            row = await cur.fetchone()
        assert row is not None
        seen = MonthBudget(
            int(row["agent_used"]),
            int(row["agent_reserved"]),
            int(row["owner_used"]),
            int(row["owner_reserved"]),
        )
        return Reservation(row["id"], seen)

    async def extend(self, reservation_id: int, ttl: float) -> None:
        """Keep a running call's reservation counting for ``ttl`` more seconds."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE usage_reservations SET expires_at = now() + make_interval(secs => %s)"
                " WHERE id = %s",
                (ttl, reservation_id),
            )

    async def settle(
        self,
        reservation_id: int | None,
        agent_id: int,
        owner: str,
        slug: str,
        delta: UsageDelta,
    ) -> None:
        """A call ended: record what it used and drop its reservation, in one
        transaction, so its tokens count exactly once at every moment."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.record(agent_id, owner, slug, delta, conn=conn)
            if reservation_id is not None:
                await conn.execute(
                    "DELETE FROM usage_reservations WHERE id = %s", (reservation_id,)
                )

    async def month_budget(self, agent_id: int, owner: str) -> MonthBudget:
        """This month's usage and live reservations of an agent and of its owner."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_MONTH_SQL, {"agent": agent_id, "owner": owner})
            row = await cur.fetchone()
        assert row is not None
        return MonthBudget(
            int(row["agent_used"]),
            int(row["agent_reserved"]),
            int(row["owner_used"]),
            int(row["owner_reserved"]),
        )

    async def record(
        self,
        agent_id: int,
        owner: str,
        slug: str,
        delta: UsageDelta,
        *,
        conn: Conn | None = None,
    ) -> None:
        async with using(self.pool, conn) as conn:
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

    async def daily(
        self, since: date, until: date, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """Usage per (UTC day, user, agent) with since <= day < until, newest day first
        (deleted agents too: usage outlives them)."""
        where = ["day >= %s", "day < %s"]
        params: list[Any] = [since, until]
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
