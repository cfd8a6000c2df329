"""Leadership among the service's processes: who runs the cluster-wide loops.

On Kubernetes the service may run as several replicas behind one Service. Each
serves requests, but loops that must run once in the installation (the idle
culler, HITL expiry, event pruning, webhook deliveries, the access audit, the
retention maintenance) run only in the leader: the process holding the
PostgreSQL session advisory lock of store/leadership.py. The others try to take
it every few seconds; when the leader dies its connection ends, PostgreSQL
releases the lock, and the next try of another process takes over. A leader
that loses its connection (and so the lock) stops its loops at its next check,
within ``CHECK_SECONDS``: for at most that long two processes may both run
them, which each loop tolerates (an expiry or a delivery is recorded once in
the database; see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from psycopg import OperationalError

from ..store.leadership import LeaderLock
from . import metrics

log = logging.getLogger("jupyter_sac.service")

# Seconds between a follower's tries to take the lock.
RETRY_SECONDS = 3.0
# Seconds between a leader's checks that its connection, and so the lock, is alive.
CHECK_SECONDS = 2.0

# A loop the leader runs: called when leadership is taken, cancelled when it is lost.
Loop = Callable[[], Coroutine[Any, Any, None]]


class Leadership:
    """Takes the leadership when it can and runs ``loops`` while holding it."""

    def __init__(
        self,
        conninfo: str,
        loops: Sequence[Loop],
        *,
        retry: float = RETRY_SECONDS,
        check: float = CHECK_SECONDS,
    ) -> None:
        self.conninfo = conninfo
        self.loops = list(loops)
        self.retry = retry
        self.check = check
        self.leader = False
        self._running: list[asyncio.Task[None]] = []
        metrics.SERVICE_LEADER.set(0)

    async def run(self) -> None:
        """Until cancelled: try to lead, lead while the lock holds, step down if lost."""
        while True:
            lock: LeaderLock | None = None
            try:
                lock = await LeaderLock.connect(self.conninfo)
                await self._acquire(lock)
                self._lead()
                while True:
                    await asyncio.sleep(self.check)
                    await lock.check()
            except OperationalError as e:
                log.warning("service leadership: database connection lost (%s)", e)
            except Exception:
                # Whatever it was, a process that stops trying would never lead.
                log.exception("service leadership: unexpected failure; trying again")
            finally:
                await self._step_down()
                if lock is not None:
                    with contextlib.suppress(Exception):
                        await lock.close()
            await asyncio.sleep(self.retry)

    async def _acquire(self, lock: LeaderLock) -> None:
        """Until ``lock`` is taken: another process leads meanwhile, and nothing
        tells a follower when it stops but trying again (a poll by design)."""
        for _attempt in itertools.count():
            if await lock.try_acquire():
                return
            await asyncio.sleep(self.retry)

    def _lead(self) -> None:
        log.info("this process leads the service: it runs the cluster-wide loops")
        self.leader = True
        metrics.SERVICE_LEADER.set(1)
        self._running = [asyncio.create_task(loop()) for loop in self.loops]

    async def _step_down(self) -> None:
        if self.leader:
            log.warning("this process no longer leads the service: its loops stop")
        self.leader = False
        metrics.SERVICE_LEADER.set(0)
        running, self._running = self._running, []
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
