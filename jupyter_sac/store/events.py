"""A user's events (``user_events``): appended where a change happens, in its
transaction, and read in id order by the event stream (``GET api/events``).

The id is a bigserial, so it grows with each append. Two transactions appending
for one user at once could commit in the other order than their ids, and a
reader that saw id 8 before id 7 committed would skip 7 when it resumes after 8.
So appends for one user take a lock held until their transaction ends (an
advisory lock on the user's name): a user's events commit in id order, and
"after the last id seen" is exactly what a reader has not seen.

Each append NOTIFYs ``USER_EVENTS`` with the user's name, delivered at commit,
which wakes the user's streams in every process of the service."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from .notifications import USER_EVENTS, notify
from .tx import Conn, Pool, using

_COLUMNS = "id, username, kind, agent_slug, data, created_at"
# The advisory lock's key: this prefix and the user's name, hashed.
_LOCK = "sac.user_events:"


class UserEvents:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def append(
        self,
        user: str,
        kind: str,
        data: dict[str, Any],
        *,
        agent: str | None = None,
        dedupe_key: str | None = None,
        conn: Conn | None = None,
    ) -> int | None:
        """Record event ``kind`` for ``user`` (joining the caller's transaction when
        given ``conn``, so the event is stored with the change or not at all); its id.
        With ``dedupe_key``, only the first event of the user with that key is
        stored (while it is kept): None for the others."""
        # Without the caller's transaction, one of its own: the lock and the insert
        # must be in the same one (the lock ends with it).
        async with using(self.pool, conn) as c, c.transaction():
            await c.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK + user,)
            )
            cur = await c.execute(
                "INSERT INTO user_events (username, kind, agent_slug, data, dedupe_key)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (username, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING"
                " RETURNING id",
                (user, kind, agent, Jsonb(data), dedupe_key),
            )
            row = await cur.fetchone()
            if row is not None:
                # Sent when the transaction commits: every process of the service
                # wakes the user's streams (store/notifications.py).
                await notify(c, USER_EVENTS, user)
        return int(row["id"]) if row is not None else None

    async def after(self, user: str, after: int, limit: int) -> list[dict[str, Any]]:
        """``user``'s events with an id above ``after``, oldest first, at most ``limit``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM user_events WHERE username = %s AND id > %s"
                f" ORDER BY id LIMIT %s",
                (user, after, limit),
            )
            return await cur.fetchall()

    async def latest(self, user: str) -> int:
        """The id of ``user``'s newest event (0: none), where a stream without a
        position starts."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(max(id), 0) AS id FROM user_events WHERE username = %s",
                (user,),
            )
            row = await cur.fetchone()
        return int(row["id"]) if row else 0

    async def recent(self, user: str, kind: str, agent: str, seconds: float) -> int:
        """How many events ``kind`` of ``user``'s ``agent`` were stored in the last
        ``seconds`` (a sandbox's reports are limited by it)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM user_events WHERE username = %s AND kind = %s"
                " AND agent_slug = %s AND created_at > now() - make_interval(secs => %s)",
                (user, kind, agent, seconds),
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def prune(self, days: float) -> int:
        """Delete events older than ``days`` days; how many went."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM user_events WHERE created_at < now() - make_interval(secs => %s)",
                (days * 86400,),
            )
            return cur.rowcount
