"""Per-agent credential-proxy tokens. The store only ever sees their SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from .agents import AgentRecord, agent_columns
from .tx import Pool

TOKEN_PREFIX = "sac-agent-"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AgentTokens:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def issue(self, agent_id: int) -> str:
        """A fresh token for one sandbox start; earlier tokens of the agent stop working."""
        token = new_token()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM agent_tokens WHERE agent_id = %s", (agent_id,))
            await conn.execute(
                "INSERT INTO agent_tokens (token_hash, agent_id) VALUES (%s, %s)",
                (token_hash(token), agent_id),
            )
        return token

    async def agent(self, token: str) -> AgentRecord | None:
        """The agent a token belongs to, in one query (every model call and every
        sandbox request asks this)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {agent_columns('a')} FROM agent_tokens t"
                " JOIN agents a ON a.id = t.agent_id WHERE t.token_hash = %s",
                (token_hash(token),),
            )
            row = await cur.fetchone()
        return AgentRecord.from_row(row) if row else None

    async def revoke(self, agent_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM agent_tokens WHERE agent_id = %s", (agent_id,))
