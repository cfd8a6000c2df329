"""Letting a store method join its caller's transaction.

A method that takes ``conn`` runs on that connection (inside the caller's
transaction, e.g. ``Store.transaction()``) when given one, else on a connection
of its own from the pool. The service uses this to write a change and its audit
entry (``store/audit.py``) in one transaction: both are stored, or neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

# Every connection of the store's pool returns rows as dicts (Store.open sets
# dict_row); these say so to the type checker.
Conn: TypeAlias = AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Conn]


@asynccontextmanager
async def using(pool: Pool, conn: Conn | None = None) -> AsyncIterator[Conn]:
    """``conn`` if the caller passed one, else a connection from ``pool``."""
    if conn is not None:
        yield conn
    else:
        async with pool.connection() as own:
            yield own
