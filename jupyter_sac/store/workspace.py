"""Workspace file metadata: which files each space holds, their size, sha256, mtime,
version and who wrote them. Content is in the object store (``objects.py``)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .tx import Conn, Pool, using

_COLUMNS = "space, path, size, sha256, mtime, version, written_by, updated_at"


class QuotaExceeded(Exception):
    def __init__(self, what: str, used: int, adding: int, limit: int):
        super().__init__(f"{what}: {used:,} used + {adding:,} would exceed the quota of {limit:,}")
        self.what, self.used, self.adding, self.limit = what, used, adding, limit


class VersionConflict(Exception):
    def __init__(self, current: dict[str, Any] | None):
        super().__init__("the file changed since it was read")
        self.current = current


@dataclass(frozen=True)
class Quota:
    max_bytes: int
    max_files: int


class WorkspaceFiles:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def list(self, space: str, prefix: str = "") -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM workspace_files WHERE space = %s"
                " AND starts_with(path, %s) ORDER BY path",
                (space, prefix),
            )
            return await cur.fetchall()

    async def get(self, space: str, path: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM workspace_files WHERE space = %s AND path = %s",
                (space, path),
            )
            return await cur.fetchone()

    async def get_many(
        self, keys: builtins.list[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Rows of many (space, path) pairs in one query."""
        if not keys:
            return {}
        spaces, paths = zip(*keys, strict=True)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM workspace_files"
                " WHERE (space, path) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                (list(spaces), list(paths)),
            )
            return {(r["space"], r["path"]): r for r in await cur.fetchall()}

    async def usage(self, space: str) -> tuple[int, int]:
        """(bytes, files) a space holds."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(size), 0) AS bytes, count(*) AS files"
                " FROM workspace_files WHERE space = %s",
                (space,),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["bytes"]), int(row["files"])

    async def generations(self, spaces: builtins.list[str]) -> dict[str, int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT space, generation FROM workspace_spaces WHERE space = ANY(%s)", (spaces,)
            )
            return {r["space"]: int(r["generation"]) for r in await cur.fetchall()}

    async def referenced(self, space: str, sha256: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM workspace_files WHERE space = %s AND sha256 = %s LIMIT 1",
                (space, sha256),
            )
            return await cur.fetchone() is not None

    async def _lock(self, conn: Conn, space: str) -> None:
        # Writes to one space are serialised, so the quota check sees every row.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sac-ws:{space}",))

    async def _bump(self, conn: Conn, space: str) -> None:
        await conn.execute(
            "INSERT INTO workspace_spaces (space, generation) VALUES (%s, 1)"
            " ON CONFLICT (space) DO UPDATE SET generation = workspace_spaces.generation + 1",
            (space,),
        )

    async def commit(
        self,
        space: str,
        path: str,
        *,
        size: int,
        sha256: str,
        mtime: datetime,
        written_by: str,
        quota: Quota,
        base_version: int | None = None,
        conn: Conn | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Record a file whose content is stored; (the new row, the row it replaced).

        ``base_version`` (0: the file must not exist yet) makes it conditional:
        ``VersionConflict`` if the file is not at that version. ``QuotaExceeded``
        if the space would go over ``quota`` (a replaced file's size is freed)."""
        async with using(self.pool, conn) as c, c.transaction():
            await self._lock(c, space)
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM workspace_files WHERE space = %s AND path = %s",
                (space, path),
            )
            before = await cur.fetchone()
            if base_version is not None and (before["version"] if before else 0) != base_version:
                raise VersionConflict(before)
            cur = await c.execute(
                "SELECT coalesce(sum(size), 0) AS bytes, count(*) AS files"
                " FROM workspace_files WHERE space = %s",
                (space,),
            )
            used = await cur.fetchone()
            assert used is not None
            used_bytes = int(used["bytes"]) - (before["size"] if before else 0)
            used_files = int(used["files"]) - (1 if before else 0)
            if used_bytes + size > quota.max_bytes:
                raise QuotaExceeded("bytes", used_bytes, size, quota.max_bytes)
            if used_files + 1 > quota.max_files:
                raise QuotaExceeded("files", used_files, 1, quota.max_files)
            cur = await c.execute(
                "INSERT INTO workspace_files (space, path, size, sha256, mtime, written_by)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (space, path) DO UPDATE SET"
                " size = EXCLUDED.size, sha256 = EXCLUDED.sha256, mtime = EXCLUDED.mtime,"
                " written_by = EXCLUDED.written_by, version = workspace_files.version + 1,"
                f" updated_at = now() RETURNING {_COLUMNS}",
                (space, path, size, sha256, mtime, written_by),
            )
            row = await cur.fetchone()
            await self._bump(c, space)
        assert row is not None
        return row, before

    async def delete(
        self,
        space: str,
        path: str,
        base_version: int | None = None,
        conn: Conn | None = None,
    ) -> dict[str, Any] | None:
        """Forget a file (or every file under ``path/``); the removed row of ``path``."""
        async with using(self.pool, conn) as c, c.transaction():
            await self._lock(c, space)
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM workspace_files WHERE space = %s AND path = %s",
                (space, path),
            )
            before = await cur.fetchone()
            if base_version is not None and (before["version"] if before else 0) != base_version:
                raise VersionConflict(before)
            if before is None:
                return None
            await c.execute(
                "DELETE FROM workspace_files WHERE space = %s AND path = %s", (space, path)
            )
            await self._bump(c, space)
        return before

    async def release_if_unused(self, space: str, sha256: str, release: Any) -> bool:
        """Call ``release()`` (delete the object) when no file of the space holds
        ``sha256`` any more, under the space's lock: an upload of the same content
        commits before (and keeps it) or after (and finds it gone, and stores it
        again)."""
        async with self.pool.connection() as conn, conn.transaction():
            await self._lock(conn, space)
            cur = await conn.execute(
                "SELECT 1 FROM workspace_files WHERE space = %s AND sha256 = %s LIMIT 1",
                (space, sha256),
            )
            if await cur.fetchone() is not None:
                return False
            await release()
            return True

    async def shas(self, space: str) -> set[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT sha256 FROM workspace_files WHERE space = %s", (space,)
            )
            return {r["sha256"] for r in await cur.fetchall()}
