"""The embedded hub's own database, ``jupyterhub.sqlite``, in write-ahead-log mode.

JupyterHub commits several times per agent start (the server's record, its
token, its OAuth client, its state) and when an agent's first request checks its
token. In SQLite's default rollback-journal mode every commit waits for the disk
(twice): about 25 ms each on a busy machine, over 100 ms of each start. With a
write-ahead log and ``synchronous=NORMAL`` a commit waits for no disk; the
database stays consistent whatever happens, and only the last commits before a
power failure (not a crash of the hub) can be lost: a server or token made in
that instant, which JupyterHub makes again.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection to the hub's database as JupyterHub opens it (usable from its
    threads), in write-ahead-log mode (kept in the file) without a disk wait per
    commit (set on every connection)."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def hub_db_kwargs(path: str) -> dict[str, Any]:
    """``c.JupyterHub.db_kwargs`` for a SQLite database at ``path`` (SQLAlchemy's
    ``creator``: the URL still names the database and its dialect)."""
    return {"creator": functools.partial(sqlite_connection, path)}
