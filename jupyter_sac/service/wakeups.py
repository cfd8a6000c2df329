"""Wake-ups from the other processes of the service (PostgreSQL LISTEN).

Waiters are parked in one process: a sandbox's HITL long-poll (``Waiters``) and a
user's event streams (``Bells``). The change that should wake them may be made
through any process; its transaction NOTIFYs (store/notifications.py) and this
relay, one per process on a connection of its own, turns each notification into
the same in-process wake-up the deciding process gives its own waiters. While the
connection is down (reconnected with backoff), waiters still re-read the
database every few seconds: slower, never stuck. An organisation key set through
another process is reloaded here too (the credential proxy of every process
uses it at once), and once more after each reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psycopg import OperationalError

from ..store.notifications import HITL_RESOLVED, ORG_KEYS_CHANGED, USER_EVENTS, Listener
from . import metrics
from .operations.context import ServiceContext

log = logging.getLogger("jupyter_sac.service")

# Seconds without a notification after which the connection is checked (a round trip).
IDLE_CHECK_SECONDS = 30.0
# Delays before reconnecting after the connection failed, doubling up to the last.
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 15.0


class Relay:
    """Turns notifications into this process's wake-ups (and key reloads)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # The reload under way, if any (a task: wake-ups must not wait for it).
        self._reloading: asyncio.Task[None] | None = None

    def deliver(self, channel: str, payload: str) -> None:
        """Wake what waits here on the change a notification announces."""
        if channel == HITL_RESOLVED:
            self.ctx.hitl_waiters.notify(payload)
        elif channel == USER_EVENTS:
            self.ctx.event_bells.ring(payload)
        elif channel == ORG_KEYS_CHANGED:
            self.reload_org_keys()

    def wake_everyone(self) -> None:
        """After (re)connecting: notifications sent while the connection was down are
        lost, so every parked waiter re-reads the database now, and the keys are
        reloaded."""
        self.ctx.hitl_waiters.notify_all()
        self.ctx.event_bells.ring_all()
        self.reload_org_keys()

    def reload_org_keys(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()  # a newer change: read again from the start
        self._reloading = asyncio.create_task(self._reload())

    async def _reload(self) -> None:
        try:
            await self.ctx.org_keys.reload(self.ctx.store, self.ctx.keybox)
        except Exception:
            log.exception("could not reload the organisation keys")

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()


async def relay(ctx: ServiceContext, conninfo: str) -> None:
    """Listen for ever (until cancelled), reconnecting with backoff."""
    relaying = Relay(ctx)
    try:
        await _listen(relaying, conninfo)
    finally:
        await relaying.close()


async def _listen(relaying: Relay, conninfo: str) -> None:
    delay = RECONNECT_FIRST_SECONDS
    while True:
        listener: Listener | None = None
        try:
            listener = await Listener.connect(conninfo)
            metrics.WAKEUPS_CONNECTED.set(1)
            delay = RECONNECT_FIRST_SECONDS
            relaying.wake_everyone()
            async for channel, payload in listener.notifications(IDLE_CHECK_SECONDS):
                relaying.deliver(channel, payload)
        except OperationalError as e:
            log.warning(
                "wake-ups from other service processes: connection lost (%s); again in %g s",
                e,
                delay,
            )
        except Exception:
            # Whatever it was, a process that stops listening only re-reads.
            log.exception("wake-ups from other service processes failed; again in %g s", delay)
        finally:
            metrics.WAKEUPS_CONNECTED.set(0)
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)
