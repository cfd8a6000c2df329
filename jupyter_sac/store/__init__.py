"""The one owner of SQL. The hub (spawner) and the `sac` service share this module.

``Store`` wraps a psycopg AsyncConnectionPool and exposes one object per domain
(agents, settings, tokens, usage, history, hitl, skills, audit, org_keys,
workspace, sandbox_usage, secrets, events, webhooks, templates, maintenance, tasks); nothing outside
``store/`` writes SQL. ``Store.transaction()`` gives a connection in a transaction
that the methods taking ``conn`` join (see ``tx.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection, OperationalError
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from .agents import AgentExistsError, AgentLimitError, AgentRecord, Agents
from .audit import Audit
from .events import UserEvents
from .history import History
from .hitl import HitlRequests
from .maintenance import Maintenance
from .migrate import list_migrations, migrate
from .org_keys import OrganisationKeys
from .sandbox_usage import SandboxUsage, SandboxUsageRows
from .secrets import UserSecrets
from .server_tokens import ServerTokens
from .settings import SettingsRows
from .skills import Skills
from .tasks import Tasks
from .templates import Templates
from .tokens import AgentTokens
from .tx import Conn, Pool
from .usage import Usage
from .webhooks import Webhooks
from .workspace import WorkspaceFiles

__all__ = [
    "AgentExistsError",
    "AgentLimitError",
    "AgentRecord",
    "SandboxUsage",
    "Store",
    "database_unavailable",
    "list_migrations",
    "migrate",
]


# Seconds a caller waits for a connection (psycopg_pool's default is 30): while
# PostgreSQL is away the pool has none to give, and a request should learn so
# (a 503 to retry) in seconds, not hang half a minute.
WAIT_FOR_CONNECTION = 10.0
# Seconds the pool keeps retrying one lost connection, its delay doubling each
# time (psycopg_pool's default is 300: after a two-minute outage the next try
# could be a minute after PostgreSQL is back, and the service answered 503 all
# that while). When it gives up, the next request that needs a connection starts
# a new attempt at once, so the pool is back within seconds of the database.
RECONNECT_FOR = 10.0


def database_unavailable(exc: BaseException | None) -> bool:
    """``exc`` says PostgreSQL cannot be reached (stopped, restarting, the network
    gone) rather than that a query was wrong: a connection lost mid-query or
    refused, or the pool waiting in vain for one (psycopg_pool's PoolTimeout is an
    OperationalError too). Callers answer 503, as for any dependency that is away."""
    return isinstance(exc, OperationalError)


class Store:
    def __init__(self, pool: Pool):
        self.pool = pool
        self.agents = Agents(pool)
        self.settings = SettingsRows(pool)
        self.tokens = AgentTokens(pool)
        self.usage = Usage(pool)
        self.history = History(pool)
        self.hitl = HitlRequests(pool)
        self.skills = Skills(pool)
        self.audit = Audit(pool)
        self.org_keys = OrganisationKeys(pool)
        self.workspace = WorkspaceFiles(pool)
        self.sandbox_usage = SandboxUsageRows(pool)
        self.secrets = UserSecrets(pool)
        self.events = UserEvents(pool)
        self.webhooks = Webhooks(pool)
        self.templates = Templates(pool)
        self.maintenance = Maintenance(pool)
        self.server_tokens = ServerTokens(pool)
        self.tasks = Tasks(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A connection in a transaction, committed when the block ends (rolled back
        if it raises). Keep the block short: no HTTP calls inside it."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        run_migrations: bool = True,
        wait_timeout: float = WAIT_FOR_CONNECTION,
    ) -> Store:
        if run_migrations:
            await migrate(database_url)
        pool: Pool = AsyncConnectionPool(
            database_url,
            connection_class=AsyncConnection[DictRow],
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
            timeout=wait_timeout,
            reconnect_timeout=RECONNECT_FOR,
            # A connection is checked as it is handed out: after PostgreSQL restarts
            # (an upgrade, a failover) the pool's idle connections are dead, and
            # without the check each one failed its next request once (the hub
            # answered 500 to an agent's start).
            check=AsyncConnectionPool.check_connection,
            name="sac",
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def ping(self, timeout: float) -> None:
        """One trivial query within ``timeout`` seconds (waiting for a connection
        included): the readiness check's proof that PostgreSQL answers. Raises
        what the pool or the query raised, or TimeoutError."""
        async with asyncio.timeout(timeout):
            async with self.pool.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")

    async def close(self) -> None:
        await self.pool.close()
