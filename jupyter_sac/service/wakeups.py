"""Wake-ups from the other processes of the service (PostgreSQL LISTEN).

Waiters are parked in one process: a sandbox's HITL long-poll (``Waiters``) and a
user's event streams (``Bells``). The change that should wake them may be made
through any process; its transaction NOTIFYs (store/notifications.py) and this
relay, one per process on a connection of its own, turns each notification into
the same in-process wake-up the deciding process gives its own waiters. While the
connection is down (reconnected with backoff), waiters still re-read the
database every few seconds: slower, never stuck.
"""

from __future__ import annotations

import asyncio
import logging

from psycopg import OperationalError

from ..store.notifications import HITL_RESOLVED, USER_EVENTS, Listener
from . import metrics
from .operations.context import ServiceContext

log = logging.getLogger("jupyter_sac.service")

# Seconds without a notification after which the connection is checked (a round trip).
IDLE_CHECK_SECONDS = 30.0
# Delays before reconnecting after the connection failed, doubling up to the last.
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 15.0


def deliver(ctx: ServiceContext, channel: str, payload: str) -> None:
    """Wake what waits here on the change a notification announces."""
    if channel == HITL_RESOLVED:
        ctx.hitl_waiters.notify(payload)
    elif channel == USER_EVENTS:
        ctx.event_bells.ring(payload)


def wake_everyone(ctx: ServiceContext) -> None:
    """After (re)connecting: notifications sent while the connection was down are
    lost, so every parked waiter re-reads the database now."""
    ctx.hitl_waiters.notify_all()
    ctx.event_bells.ring_all()


async def relay(ctx: ServiceContext, conninfo: str) -> None:
    """Listen for ever (until cancelled), reconnecting with backoff."""
    delay = RECONNECT_FIRST_SECONDS
    while True:
        listener: Listener | None = None
        try:
            listener = await Listener.connect(conninfo)
            metrics.WAKEUPS_CONNECTED.set(1)
            delay = RECONNECT_FIRST_SECONDS
            wake_everyone(ctx)
            async for channel, payload in listener.notifications(IDLE_CHECK_SECONDS):
                deliver(ctx, channel, payload)
        except OperationalError as e:
            log.warning(
                "wake-ups from other service processes: connection lost (%s); again in %g s",
                e,
                delay,
            )
        finally:
            metrics.WAKEUPS_CONNECTED.set(0)
            if listener is not None:
                await listener.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)
