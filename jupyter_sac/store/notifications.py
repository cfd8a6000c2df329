"""Wake-ups between the `sac` service's processes: PostgreSQL NOTIFY and LISTEN.

Each process of the service keeps parked waiters in memory (a sandbox's HITL
long-poll, a user's event stream). A change made through another process must
wake them, so the change's transaction also NOTIFYs a channel, and every process
LISTENs on one dedicated connection (``Listener``) and wakes its own waiters
(or, for the organisation keys, reloads what it keeps in memory).
NOTIFY inside a transaction is delivered when it commits (never if it rolls
back), so a woken waiter always finds the change. Payloads are small (a request
id, a user's name): PostgreSQL refuses payloads of 8000 bytes or more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from psycopg import AsyncConnection, sql

from .tx import Conn

# A HITL request was decided, cancelled or timed out; payload: the request's id.
HITL_RESOLVED = "sac_hitl_resolved"
# An event was appended to a user's stream (user_events); payload: the user's name.
USER_EVENTS = "sac_user_events"
# An organisation key was set or removed; payload: the provider.
ORG_KEYS_CHANGED = "sac_org_keys_changed"
CHANNELS = (HITL_RESOLVED, USER_EVENTS, ORG_KEYS_CHANGED)

# How the connection shows in pg_stat_activity.
APPLICATION_NAME = "sac-service wake-ups"

# PostgreSQL's limit is 8000 bytes; a longer payload is not sent (waiters then
# find the change at their periodic re-read, as when no process listens).
MAX_PAYLOAD_BYTES = 7999


def _sendable(payloads: Iterable[str]) -> list[str]:
    return [p for p in payloads if len(p.encode()) <= MAX_PAYLOAD_BYTES]


async def notify(conn: Conn, channel: str, *payloads: str) -> None:
    """NOTIFY ``channel`` once per payload on ``conn`` (in its transaction: sent at
    commit; PostgreSQL folds identical notifications of one transaction into one)."""
    sendable = _sendable(payloads)
    if sendable:
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
            (channel, sendable),
        )


class Listener:
    """A dedicated connection LISTENing on ``CHANNELS`` (not one of the pool's: a
    pooled connection is handed to other work and its notifications would be
    lost)."""

    def __init__(self, conn: AsyncConnection[tuple[object, ...]]) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, conninfo: str, channels: Iterable[str] = CHANNELS) -> Listener:
        # TCP keepalives: a connection whose peer vanished without closing it
        # fails within about a minute instead of waiting for ever.
        conn = await AsyncConnection.connect(
            conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            for channel in channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def notifications(self, idle: float) -> AsyncIterator[tuple[str, str]]:
        """(channel, payload) as they arrive, for ever; after ``idle`` quiet seconds a
        round trip checks that the connection is alive. Raises psycopg's
        OperationalError once it is lost."""
        while True:
            async for note in self._conn.notifies(timeout=idle):
                yield note.channel, note.payload
            await self._conn.execute("SELECT 1")

    async def close(self) -> None:
        await self._conn.close()
