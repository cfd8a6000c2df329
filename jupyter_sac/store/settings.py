"""Settings override rows: the system level and one row per user."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool


class SettingsRows:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def get(self, scope: str, subject: str = "") -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT overrides FROM settings_overrides WHERE scope = %s AND subject = %s",
                (scope, subject),
            )
            row = await cur.fetchone()
        return dict(row["overrides"]) if row else {}

    async def for_user(self, user: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(system overrides, this user's overrides) in one round trip."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT scope, overrides FROM settings_overrides"
                " WHERE (scope = 'system' AND subject = '') OR (scope = 'user' AND subject = %s)",
                (user,),
            )
            rows = await cur.fetchall()
        found = {r["scope"]: dict(r["overrides"]) for r in rows}
        return found.get("system", {}), found.get("user", {})

    async def put(self, scope: str, subject: str, overrides: dict[str, Any], by: str) -> None:
        """Replace one level's overrides (an empty dict clears them)."""
        async with self.pool.connection() as conn:
            if overrides:
                await conn.execute(
                    "INSERT INTO settings_overrides (scope, subject, overrides, updated_by)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (scope, subject) DO UPDATE"
                    " SET overrides = EXCLUDED.overrides, updated_at = now(),"
                    " updated_by = EXCLUDED.updated_by",
                    (scope, subject, Jsonb(overrides), by),
                )
            else:
                await conn.execute(
                    "DELETE FROM settings_overrides WHERE scope = %s AND subject = %s",
                    (scope, subject),
                )

    async def list_users(self) -> dict[str, dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT subject, overrides FROM settings_overrides WHERE scope = 'user'"
                " ORDER BY subject"
            )
            return {r["subject"]: dict(r["overrides"]) for r in await cur.fetchall()}
