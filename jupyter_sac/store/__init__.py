"""The one owner of SQL. The hub (spawner) and the `sac` service share this module.

``Store`` wraps a psycopg AsyncConnectionPool and exposes one object per domain
(agents, settings, tokens, usage, history, hitl); nothing outside ``store/`` writes SQL.
"""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .agents import AgentExistsError, AgentLimitError, AgentRecord, Agents
from .history import History
from .hitl import HitlRequests
from .migrate import list_migrations, migrate
from .settings import SettingsRows
from .skills import Skills
from .tokens import AgentTokens
from .usage import Usage

__all__ = [
    "AgentExistsError",
    "AgentLimitError",
    "AgentRecord",
    "Store",
    "list_migrations",
    "migrate",
]


class Store:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
        self.agents = Agents(pool)
        self.settings = SettingsRows(pool)
        self.tokens = AgentTokens(pool)
        self.usage = Usage(pool)
        self.history = History(pool)
        self.hitl = HitlRequests(pool)
        self.skills = Skills(pool)

    @classmethod
    async def open(
        cls, database_url: str, *, min_size: int = 1, max_size: int = 8, run_migrations: bool = True
    ) -> Store:
        if run_migrations:
            await migrate(database_url)
        pool = AsyncConnectionPool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
            name="sac",
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()
