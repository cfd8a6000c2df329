"""What the service's maintenance removes (operations/maintenance.py decides when).

Every delete is bounded (``limit`` rows, oldest first) so that one statement
never holds many locks or writes a huge WAL burst; the caller repeats until
nothing is left. Times come from the caller (never ``now()`` here), so a test
chooses the moment the rules are applied at.

conversation_events is a TimescaleDB hypertable where that extension is
installed (migration 002); these batched DELETEs work on it as on the plain
table, only without dropping whole chunks at once.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .tx import Conn, Pool, using


@dataclass(frozen=True)
class OwnerFilter:
    """Whose history a statement touches: exactly ``owner``, or every owner but
    ``except_owners`` (those with a retention of their own)."""

    owner: str | None = None
    except_owners: tuple[str, ...] = ()

    def sql(self) -> tuple[str, dict[str, Any]]:
        if self.owner is not None:
            return "owner = %(owner)s", {"owner": self.owner}
        return "NOT (owner = ANY(%(except_owners)s))", {"except_owners": list(self.except_owners)}


@dataclass(frozen=True)
class DeletedAgent:
    agent_id: int
    owner: str
    slug: str
    deleted_at: datetime


class Maintenance:
    def __init__(self, pool: Pool):
        self.pool = pool

    # ---- conversation history ------------------------------------------------------

    async def delete_history_events(
        self, before: datetime, whose: OwnerFilter, limit: int, *, conn: Conn | None = None
    ) -> int:
        """Delete up to ``limit`` events older than ``before`` (oldest first)."""
        where, params = whose.sql()
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM conversation_events e USING ("
                "  SELECT agent_id, session_id, entry_uuid, ts FROM conversation_events"
                f"  WHERE ts < %(before)s AND {where} ORDER BY ts LIMIT %(limit)s"
                ") old WHERE e.agent_id = old.agent_id AND e.session_id = old.session_id"
                " AND e.entry_uuid = old.entry_uuid AND e.ts = old.ts",
                {**params, "before": before, "limit": limit},
            )
            return cur.rowcount

    async def delete_history_sessions(
        self, before: datetime, whose: OwnerFilter, limit: int, *, conn: Conn | None = None
    ) -> int:
        """Delete up to ``limit`` session summaries whose last event is older than
        ``before``: their events are all past the cutoff (a session that straddles
        it keeps its summary until its last event is past too)."""
        where, params = whose.sql()
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM conversation_sessions s USING ("
                "  SELECT agent_id, session_id FROM conversation_sessions"
                f"  WHERE last_ts < %(before)s AND {where} ORDER BY last_ts LIMIT %(limit)s"
                ") old WHERE s.agent_id = old.agent_id AND s.session_id = old.session_id",
                {**params, "before": before, "limit": limit},
            )
            return cur.rowcount

    async def history_due(self, before: datetime, whose: OwnerFilter) -> dict[str, Any]:
        """What ``delete_history_*`` would remove: counts and the oldest times."""
        where, params = whose.sql()
        params = {**params, "before": before}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS events, min(ts) AS oldest FROM conversation_events"
                f" WHERE ts < %(before)s AND {where}",
                params,
            )
            events = await cur.fetchone()
            cur = await conn.execute(
                "SELECT count(*) AS sessions FROM conversation_sessions"
                f" WHERE last_ts < %(before)s AND {where}",
                params,
            )
            sessions = await cur.fetchone()
        assert events is not None and sessions is not None
        return {
            "events": int(events["events"]),
            "oldest": events["oldest"],
            "sessions": int(sessions["sessions"]),
        }

    # ---- deleted agents' stored files ---------------------------------------------

    async def deleted_agents(self, before: datetime, limit: int) -> builtins.list[DeletedAgent]:
        """Agents deleted before ``before`` whose leftovers are not all removed yet,
        earliest deletion first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT agent_id, owner, slug, deleted_at FROM deleted_agents"
                " WHERE deleted_at < %s ORDER BY deleted_at, agent_id LIMIT %s",
                (before, limit),
            )
            return [DeletedAgent(**row) for row in await cur.fetchall()]

    async def delete_space_files(self, space: str, limit: int, *, conn: Conn | None = None) -> int:
        """Delete up to ``limit`` workspace index rows of ``space`` (a deleted agent's:
        nothing writes to it any more, so no lock is needed against uploads)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM workspace_files f USING ("
                "  SELECT space, path FROM workspace_files WHERE space = %s LIMIT %s"
                ") old WHERE f.space = old.space AND f.path = old.path",
                (space, limit),
            )
            return cur.rowcount

    async def forget_deleted_agent(
        self, agent_id: int, space: str, *, conn: Conn | None = None
    ) -> bool:
        """Forget a deleted agent once no file of its space is left (its counter
        too); False while files remain."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM deleted_agents WHERE agent_id = %s"
                " AND NOT EXISTS (SELECT 1 FROM workspace_files WHERE space = %s)",
                (agent_id, space),
            )
            if cur.rowcount == 0:
                return False
            await c.execute("DELETE FROM workspace_spaces WHERE space = %s", (space,))
            return True

    async def deleted_agents_due(self, before: datetime) -> dict[str, Any]:
        """What the purge of agents deleted before ``before`` would remove (their
        count, the earliest deletion, their files and bytes), and how many deleted
        agents are still within their grace period."""
        async with self.pool.connection() as conn:
            # 'agent:' || id is an agent's space (rules/workspace.py: locate).
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE d.deleted_at < %(before)s) AS agents,"
                " min(d.deleted_at) FILTER (WHERE d.deleted_at < %(before)s) AS oldest,"
                " coalesce(sum(f.files) FILTER (WHERE d.deleted_at < %(before)s), 0) AS files,"
                " coalesce(sum(f.bytes) FILTER (WHERE d.deleted_at < %(before)s), 0) AS bytes,"
                " count(*) FILTER (WHERE d.deleted_at >= %(before)s) AS waiting"
                " FROM deleted_agents d LEFT JOIN LATERAL ("
                "   SELECT count(*) AS files, sum(size) AS bytes FROM workspace_files"
                "   WHERE space = 'agent:' || d.agent_id) f ON true",
                {"before": before},
            )
            row = await cur.fetchone()
        assert row is not None
        return {
            "agents": int(row["agents"]),
            "oldest": row["oldest"],
            "files": int(row["files"]),
            "bytes": int(row["bytes"]),
            "waiting": int(row["waiting"]),
        }
