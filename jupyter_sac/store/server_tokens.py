"""Each running agent's own server token, encrypted (the caller encrypts and decrypts:
the store never sees it in the clear)."""

from __future__ import annotations

from .tx import Pool


class ServerTokens:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def set(self, agent_id: int, encrypted: bytes) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO agent_server_tokens (agent_id, token_encrypted) VALUES (%s, %s)"
                " ON CONFLICT (agent_id) DO UPDATE SET token_encrypted = excluded.token_encrypted,"
                " updated_at = now()",
                (agent_id, encrypted),
            )

    async def get(self, agent_id: int) -> bytes | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT token_encrypted FROM agent_server_tokens WHERE agent_id = %s", (agent_id,)
            )
            row = await cur.fetchone()
        return bytes(row["token_encrypted"]) if row else None

    async def clear(self, agent_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM agent_server_tokens WHERE agent_id = %s", (agent_id,))
