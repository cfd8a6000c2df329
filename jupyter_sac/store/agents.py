"""Agent rows: who owns which agent, its provider, model and overrides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using


class AgentExistsError(Exception):
    pass


class AgentLimitError(Exception):
    def __init__(self, owner: str, limit: int):
        super().__init__(f"{owner} already has the maximum of {limit} agents")
        self.owner = owner
        self.limit = limit


@dataclass(frozen=True)
class AgentRecord:
    id: int
    owner: str
    slug: str
    display_name: str
    runtime: str
    provider: str
    model: str
    base_url: str | None
    encrypted_key: bytes | None
    overrides: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    # May its sandbox's JupyterHub token drive the owner's other agents?
    drive_agents: bool = False
    # The owner's secrets its sandbox gets at start (rules/secrets.py: Grant.to_json).
    secrets: tuple[dict[str, Any], ...] = ()
    # The template (and version) it was made from (docs/templates.md), if any.
    template_id: int | None = None
    template_version: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AgentRecord:
        fields = {k: row[k] for k in cls.__dataclass_fields__}
        if fields["encrypted_key"] is not None:
            fields["encrypted_key"] = bytes(fields["encrypted_key"])
        fields["secrets"] = tuple(fields["secrets"] or ())
        return cls(**fields)


_COLUMNS = (
    "id, owner, slug, display_name, runtime, provider, model, base_url, encrypted_key,"
    " overrides, created_at, updated_at, drive_agents, secrets, template_id, template_version"
)


def agent_columns(alias: str) -> str:
    """The agent columns qualified by a table alias, for queries that join agents."""
    return ", ".join(f"{alias}.{c.strip()}" for c in _COLUMNS.split(","))


# Fields an update may change (slug and owner are the identity, never updated).
UPDATABLE = (
    "display_name",
    "provider",
    "model",
    "base_url",
    "encrypted_key",
    "overrides",
    "drive_agents",
    "secrets",
    "template_id",
    "template_version",
)


def _owner_lock_key(owner: str) -> str:
    return f"sac-agents:{owner}"


class Agents:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def create(self, *, limit: int, **fields: Any) -> AgentRecord:
        """Insert an agent unless its owner already has ``limit`` agents (atomic per owner)."""
        fields["overrides"] = Jsonb(fields.get("overrides") or {})
        if "secrets" in fields:
            fields["secrets"] = Jsonb(list(fields["secrets"]))
        columns = ", ".join(fields)
        placeholders = ", ".join(f"%({k})s" for k in fields)
        async with self.pool.connection() as conn, conn.transaction():
            # Serialise creations of one owner so two concurrent requests cannot both
            # pass the count check.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (_owner_lock_key(fields["owner"]),)
            )
            cur = await conn.execute(
                "SELECT count(*) AS n FROM agents WHERE owner = %s", (fields["owner"],)
            )
            row = await cur.fetchone()
            assert row is not None
            if row["n"] >= limit:
                raise AgentLimitError(fields["owner"], limit)
            try:
                cur = await conn.execute(
                    f"INSERT INTO agents ({columns}) VALUES ({placeholders}) RETURNING {_COLUMNS}",
                    fields,
                )
            except UniqueViolation:
                raise AgentExistsError(fields["slug"]) from None
            row = await cur.fetchone()
            assert row is not None
            return AgentRecord.from_row(row)

    async def get(
        self,
        owner: str,
        slug: str,
        *,
        conn: Conn | None = None,
        lock: bool = False,
    ) -> AgentRecord | None:
        """An agent; with ``lock`` (inside a transaction) its row is locked until the
        transaction ends, so the caller changes exactly the version it read."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE owner = %s AND slug = %s"
                + (" FOR NO KEY UPDATE" if lock else ""),
                (owner, slug),
            )
            row = await cur.fetchone()
        return AgentRecord.from_row(row) if row else None

    async def list(self, owner: str | None = None) -> list[AgentRecord]:
        """Agents of one owner (or of everyone), oldest first."""
        async with self.pool.connection() as conn:
            if owner is None:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM agents ORDER BY owner, created_at, id"
                )
            else:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM agents WHERE owner = %s ORDER BY created_at, id",
                    (owner,),
                )
            rows = await cur.fetchall()
        return [AgentRecord.from_row(r) for r in rows]

    async def rank(self, owner: str, slug: str) -> int | None:
        """1-based position of an agent among its owner's agents by creation."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT n FROM (SELECT slug, row_number() OVER (ORDER BY created_at, id) AS n"
                " FROM agents WHERE owner = %s) ranked WHERE slug = %s",
                (owner, slug),
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else None

    async def update(
        self,
        owner: str,
        slug: str,
        changes: dict[str, Any],
        *,
        conn: Conn | None = None,
    ) -> AgentRecord | None:
        changes = {k: v for k, v in changes.items() if k in UPDATABLE}
        if not changes:
            return await self.get(owner, slug, conn=conn)
        if "overrides" in changes:
            changes["overrides"] = Jsonb(changes["overrides"])
        if "secrets" in changes:
            changes["secrets"] = Jsonb(list(changes["secrets"]))
        assignments = ", ".join(f"{k} = %({k})s" for k in changes)
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"UPDATE agents SET {assignments}, updated_at = now()"
                f" WHERE owner = %(_owner)s AND slug = %(_slug)s RETURNING {_COLUMNS}",
                {**changes, "_owner": owner, "_slug": slug},
            )
            row = await cur.fetchone()
        return AgentRecord.from_row(row) if row else None

    async def count(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM agents")
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def delete(self, owner: str, slug: str, *, conn: Conn | None = None) -> bool:
        """Delete the agent's row (its tokens, skill installs and HITL policy go with
        it) and remember when (deleted_agents): its stored workspace files stay for
        deleted_agent_grace_days, then the maintenance removes them."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "WITH gone AS (DELETE FROM agents WHERE owner = %s AND slug = %s"
                " RETURNING id, owner, slug)"
                " INSERT INTO deleted_agents (agent_id, owner, slug)"
                " SELECT id, owner, slug FROM gone",
                (owner, slug),
            )
            return cur.rowcount > 0


def may_drive_agents(database_url: str, owner: str, slug: str) -> bool:
    """Whether ``owner``'s agent ``slug`` may drive its owner's other agents, read
    with a short synchronous connection: JupyterHub asks for a server token's scopes
    in the middle of a spawn (c.Spawner.server_token_scopes), where awaiting other
    work lets the hub's shared database session be rolled back under the spawn."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT drive_agents FROM agents WHERE owner = %s AND slug = %s", (owner, slug)
        ).fetchone()
    return bool(row and row[0])
