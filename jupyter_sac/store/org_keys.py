"""Organisation provider keys kept in the database (encrypted by the caller).

Setting or removing one NOTIFYs ``ORG_KEYS_CHANGED`` (sent at commit), so that
every process of the service reloads the keys it proxies model calls with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .notifications import ORG_KEYS_CHANGED, notify
from .tx import Conn, Pool, using


@dataclass(frozen=True)
class OrganisationKey:
    """A provider's organisation key as stored: encrypted, with the hint shown
    instead of it (its last four characters), who set it and when."""

    provider: str
    encrypted_key: bytes
    hint: str
    updated_by: str
    updated_at: datetime


class OrganisationKeys:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def list(self) -> dict[str, OrganisationKey]:
        """Every key set in the service, by provider."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT provider, encrypted_key, hint, updated_by, updated_at"
                " FROM organisation_keys ORDER BY provider"
            )
            rows = await cur.fetchall()
        return {
            r["provider"]: OrganisationKey(**{**r, "encrypted_key": bytes(r["encrypted_key"])})
            for r in rows
        }

    async def put(
        self,
        provider: str,
        encrypted_key: bytes,
        hint: str,
        by: str,
        conn: Conn | None = None,
    ) -> str | None:
        """Set a provider's key; the hint of the key it replaced (None: there was none)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT hint FROM organisation_keys WHERE provider = %s FOR UPDATE", (provider,)
            )
            before = await cur.fetchone()
            await c.execute(
                "INSERT INTO organisation_keys (provider, encrypted_key, hint, updated_by)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (provider) DO UPDATE SET"
                " encrypted_key = EXCLUDED.encrypted_key, hint = EXCLUDED.hint,"
                " updated_by = EXCLUDED.updated_by, updated_at = now()",
                (provider, encrypted_key, hint, by),
            )
            await notify(c, ORG_KEYS_CHANGED, provider)
        return before["hint"] if before else None

    async def delete(self, provider: str, conn: Conn | None = None) -> str | None:
        """Remove a provider's key; the hint of the removed key (None: there was none)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM organisation_keys WHERE provider = %s RETURNING hint", (provider,)
            )
            row = await cur.fetchone()
            if row is not None:
                await notify(c, ORG_KEYS_CHANGED, provider)
        return row["hint"] if row else None
