"""The `sac` service's leadership: one PostgreSQL session advisory lock.

Background loops that must run once in the whole installation (the idle culler,
HITL expiry, event and webhook pruning, webhook deliveries, the access audit)
run only in the process holding this lock, on a connection of its own
(``LeaderLock``). PostgreSQL releases a session lock when its connection ends,
so when the leader dies (or loses the database) another process's next try
takes it. This is the one place the lock's key is defined.
"""

from __future__ import annotations

from psycopg import AsyncConnection

# The lock's key, in the two-integer form of PostgreSQL's advisory locks: that
# form never conflicts with the one-bigint form (the per-user locks of
# store/events.py hash names into that one), whatever the values.
LEADER_LOCK_KEY = (0x5AC, 1)  # (jupyter-sac's class of locks, the service's leadership)
# How the lock's connection shows in pg_stat_activity (the leader's holds it:
# pg_locks, locktype 'advisory', classid 1452, objid 1).
APPLICATION_NAME = "sac-service leadership"


class LeaderLock:
    """A dedicated connection that tries to take, and then holds, the leadership."""

    def __init__(self, conn: AsyncConnection[tuple[object, ...]]) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, conninfo: str) -> LeaderLock:
        # TCP keepalives: a leader whose database vanished without closing the
        # connection notices (a failed check) instead of leading for ever.
        conn = await AsyncConnection.connect(
            conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        return cls(conn)

    async def try_acquire(self) -> bool:
        """Take the lock if no other session holds it; True if this one holds it
        now. (Taking it again while holding it stacks a second hold: only ask
        until it answers True.)"""
        cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LEADER_LOCK_KEY)
        row = await cur.fetchone()
        return bool(row and row[0])

    async def check(self) -> None:
        """A round trip: raises psycopg's OperationalError if the connection (and so
        the lock) is lost."""
        await self._conn.execute("SELECT 1")

    async def close(self) -> None:
        """Close the connection, which releases the lock."""
        await self._conn.close()
