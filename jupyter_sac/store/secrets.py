"""Users' secrets (encrypted by the caller) and the agents' grants of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using


@dataclass(frozen=True)
class UserSecret:
    """A secret as stored: its value encrypted, never returned by the API."""

    owner: str
    name: str
    encrypted_value: bytes
    description: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


_COLUMNS = "owner, name, encrypted_value, description, created_at, updated_by, updated_at"


def _secret(row: dict) -> UserSecret:
    return UserSecret(**{**row, "encrypted_value": bytes(row["encrypted_value"])})


class UserSecrets:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def of_owner(self, owner: str, conn: Conn | None = None) -> list[UserSecret]:
        """``owner``'s secrets by name."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM user_secrets WHERE owner = %s ORDER BY name", (owner,)
            )
            rows = await cur.fetchall()
        return [_secret(r) for r in rows]

    async def count(self, owner: str, conn: Conn | None = None) -> int:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT count(*) AS n FROM user_secrets WHERE owner = %s", (owner,)
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def put(
        self,
        owner: str,
        name: str,
        encrypted_value: bytes,
        description: str,
        by: str,
        conn: Conn | None = None,
    ) -> tuple[UserSecret, UserSecret | None]:
        """Set ``owner``'s secret ``name``: (the secret now, the one it replaced)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM user_secrets WHERE owner = %s AND name = %s FOR UPDATE",
                (owner, name),
            )
            before = await cur.fetchone()
            cur = await c.execute(
                "INSERT INTO user_secrets (owner, name, encrypted_value, description, updated_by)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, name) DO UPDATE SET"
                " encrypted_value = EXCLUDED.encrypted_value,"
                " description = EXCLUDED.description, updated_by = EXCLUDED.updated_by,"
                f" updated_at = now() RETURNING {_COLUMNS}",
                (owner, name, encrypted_value, description, by),
            )
            row = await cur.fetchone()
        assert row is not None
        return _secret(row), _secret(before) if before else None

    async def delete(
        self, owner: str, name: str, conn: Conn | None = None
    ) -> tuple[UserSecret | None, list[str]]:
        """Remove ``owner``'s secret ``name`` and every grant of it: (the removed
        secret or None, the slugs of the agents that had it)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"DELETE FROM user_secrets WHERE owner = %s AND name = %s RETURNING {_COLUMNS}",
                (owner, name),
            )
            row = await cur.fetchone()
            if row is None:
                return None, []
            cur = await c.execute(
                "UPDATE agents SET secrets = (SELECT coalesce(jsonb_agg(g), '[]')"
                " FROM jsonb_array_elements(secrets) g WHERE g->>'name' <> %(name)s),"
                " updated_at = now()"
                " WHERE owner = %(owner)s AND secrets @> %(match)s RETURNING slug",
                {"owner": owner, "name": name, "match": Jsonb([{"name": name}])},
            )
            slugs = sorted(r["slug"] for r in await cur.fetchall())
        return _secret(row), slugs

    async def granted_to(self, owner: str, conn: Conn | None = None) -> dict[str, list[str]]:
        """For each of ``owner``'s secrets that agents get: the agents' slugs."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT g->>'name' AS name, a.slug FROM agents a,"
                " jsonb_array_elements(a.secrets) g WHERE a.owner = %s ORDER BY a.slug",
                (owner,),
            )
            rows = await cur.fetchall()
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["name"], []).append(r["slug"])
        return out

    async def values_for(
        self, owner: str, names: list[str], conn: Conn | None = None
    ) -> dict[str, bytes]:
        """The encrypted values of ``owner``'s secrets ``names`` that exist, by name."""
        if not names:
            return {}
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT name, encrypted_value FROM user_secrets"
                " WHERE owner = %s AND name = ANY(%s)",
                (owner, names),
            )
            rows = await cur.fetchall()
        return {r["name"]: bytes(r["encrypted_value"]) for r in rows}
