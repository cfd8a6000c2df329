"""Settings override rows: the system level and one row per user."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using


class SettingsRows:
    def __init__(self, pool: Pool):
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

    async def put(
        self,
        scope: str,
        subject: str,
        overrides: dict[str, Any],
        by: str,
        *,
        conn: Conn | None = None,
    ) -> dict[str, Any]:
        """Replace one level's overrides (an empty dict clears them); returns the
        overrides it replaced. Changes of one level are serialised, so what it returns
        is exactly what this call replaced."""
        async with using(self.pool, conn) as c, c.transaction():
            await c.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sac-settings:{scope}:{subject}",)
            )
            cur = await c.execute(
                "SELECT overrides FROM settings_overrides WHERE scope = %s AND subject = %s",
                (scope, subject),
            )
            row = await cur.fetchone()
            if overrides:
                await c.execute(
                    "INSERT INTO settings_overrides (scope, subject, overrides, updated_by)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (scope, subject) DO UPDATE"
                    " SET overrides = EXCLUDED.overrides, updated_at = now(),"
                    " updated_by = EXCLUDED.updated_by",
                    (scope, subject, Jsonb(overrides), by),
                )
            else:
                await c.execute(
                    "DELETE FROM settings_overrides WHERE scope = %s AND subject = %s",
                    (scope, subject),
                )
        return dict(row["overrides"]) if row else {}

    async def list_users(self) -> dict[str, dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT subject, overrides FROM settings_overrides WHERE scope = 'user'"
                " ORDER BY subject"
            )
            return {r["subject"]: dict(r["overrides"]) for r in await cur.fetchall()}
