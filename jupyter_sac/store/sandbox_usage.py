"""What agents' sandboxes use now (written by spawners, read by the service)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .tx import Pool

COLUMNS = (
    "running",
    "cpu_seconds",
    "cpu_percent",
    "memory_bytes",
    "processes",
    "disk_bytes",
    "net_sent_bytes",
    "net_received_bytes",
    "unavailable",
    "restarts",
)


@dataclass(frozen=True)
class SandboxUsage:
    """One sample. ``cpu_percent`` is of one core since the previous sample; ``limits``
    maps cpu (cores), memory and disk (bytes) and processes to what holds, None where
    nothing enforces it. None anywhere else: not measurable where the agent runs;
    ``unavailable`` then says why where the figures exist but could not be read
    (a cluster without a metrics API). ``restarts``: how often the agent's server
    was restarted in place since the agent started (a crash loop)."""

    running: bool
    cpu_seconds: float | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    processes: int | None = None
    disk_bytes: int | None = None
    net_sent_bytes: int | None = None
    net_received_bytes: int | None = None
    unavailable: str | None = None
    restarts: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    sampled_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sampled_at"] = self.sampled_at.isoformat() if self.sampled_at else None
        return data


class SandboxUsageRows:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def record(self, agent_id: int, usage: SandboxUsage) -> None:
        values = {name: getattr(usage, name) for name in COLUMNS}
        names = ", ".join(COLUMNS)
        placeholders = ", ".join(f"%({name})s" for name in COLUMNS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in COLUMNS)
        async with self.pool.connection() as conn:
            await conn.execute(
                f"INSERT INTO sandbox_usage (agent_id, sampled_at, limits, {names})"
                f" VALUES (%(agent_id)s, now(), %(limits)s, {placeholders})"
                f" ON CONFLICT (agent_id) DO UPDATE SET sampled_at = now(),"
                f" limits = excluded.limits, {updates}",
                {"agent_id": agent_id, "limits": Jsonb(usage.limits), **values},
            )

    async def stopped(self, agent_id: int) -> None:
        """The agent stopped: nothing runs, its disk use stays."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE sandbox_usage SET running = false, cpu_percent = NULL,"
                " memory_bytes = NULL, processes = NULL, unavailable = NULL, restarts = NULL"
                " WHERE agent_id = %s",
                (agent_id,),
            )

    async def for_agents(self, agent_ids: Iterable[int]) -> dict[int, SandboxUsage]:
        ids = list(agent_ids)
        if not ids:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT agent_id, sampled_at, limits, {', '.join(COLUMNS)}"
                " FROM sandbox_usage WHERE agent_id = ANY(%s)",
                (ids,),
            )
            rows = await cur.fetchall()
        return {row.pop("agent_id"): SandboxUsage(**row) for row in rows}

    async def get(self, agent_id: int) -> SandboxUsage | None:
        return (await self.for_agents([agent_id])).get(agent_id)
