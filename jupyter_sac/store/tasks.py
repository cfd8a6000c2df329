"""Agents' tasks (migration 024): a prompt run in the background as one chat turn.

A task is ``queued`` until the leader's runner claims it (``running``), then ends
``succeeded``, ``failed``, ``cancelled`` or ``timed-out``; an ended task never
changes again (every write below says which states it moves from)."""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using

OPEN = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled", "timed-out")


@dataclass(frozen=True)
class TaskRecord:
    id: uuid.UUID
    agent_id: int
    owner: str
    agent_slug: str
    prompt: str
    timeout_seconds: int
    repository: dict[str, Any] | None
    status: str
    result: str | None
    error: str | None
    session_id: str | None
    artifacts: list[dict[str, Any]]
    cancel_requested: bool
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_COLUMNS = ", ".join(TaskRecord.__dataclass_fields__)


def _task(row: dict[str, Any]) -> TaskRecord:
    return TaskRecord(**row)


class Tasks:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def create(
        self,
        *,
        agent_id: int,
        owner: str,
        agent_slug: str,
        prompt: str,
        timeout_seconds: int,
        repository: dict[str, Any] | None,
        created_by: str,
        conn: Conn | None = None,
    ) -> TaskRecord:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "INSERT INTO agent_tasks (id, agent_id, owner, agent_slug, prompt,"
                " timeout_seconds, repository, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    uuid.uuid4(),
                    agent_id,
                    owner,
                    agent_slug,
                    prompt,
                    timeout_seconds,
                    None if repository is None else Jsonb(repository),
                    created_by,
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return _task(row)

    async def get(self, task_id: uuid.UUID, conn: Conn | None = None) -> TaskRecord | None:
        async with using(self.pool, conn) as c:
            cur = await c.execute(f"SELECT {_COLUMNS} FROM agent_tasks WHERE id = %s", (task_id,))
            row = await cur.fetchone()
        return _task(row) if row else None

    async def list(
        self,
        *,
        owner: str | None,
        agent_slug: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> builtins.list[TaskRecord]:
        """Newest first; ``owner`` None: everyone's (administrators)."""
        where, args = ["true"], []
        for column, value in (("owner", owner), ("agent_slug", agent_slug), ("status", status)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        async with using(self.pool) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM agent_tasks WHERE {' AND '.join(where)}"
                " ORDER BY created_at DESC, id LIMIT %s",
                (*args, limit),
            )
            rows = await cur.fetchall()
        return [_task(r) for r in rows]

    async def claim(self, conn: Conn) -> TaskRecord | None:
        """The oldest queued task of an agent running none, now ``running`` (in the
        caller's transaction, so its audit entry goes with it); another runner
        skips the locked row. An agent runs its tasks one at a time, in order."""
        cur = await conn.execute(
            "UPDATE agent_tasks SET status = 'running', started_at = now() WHERE id = ("
            " SELECT q.id FROM agent_tasks q WHERE q.status = 'queued'"
            " AND NOT q.cancel_requested AND NOT EXISTS (SELECT 1 FROM agent_tasks r"
            " WHERE r.agent_id = q.agent_id AND r.status = 'running')"
            " ORDER BY q.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}"
        )
        row = await cur.fetchone()
        return _task(row) if row else None

    async def set_session(self, task_id: uuid.UUID, session_id: str) -> None:
        async with using(self.pool) as c:
            await c.execute(
                "UPDATE agent_tasks SET session_id = %s WHERE id = %s AND status = 'running'",
                (session_id, task_id),
            )

    async def finish(
        self,
        task_id: uuid.UUID,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        artifacts: builtins.list[dict[str, Any]] | None = None,
        from_states: tuple[str, ...] = OPEN,
        conn: Conn | None = None,
    ) -> TaskRecord | None:
        """End an open task (None: it had ended already, or is gone)."""
        assert status in ENDED
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "UPDATE agent_tasks SET status = %s, result = %s, error = %s,"
                " artifacts = %s, finished_at = now()"
                " WHERE id = %s AND status = ANY(%s)"
                f" RETURNING {_COLUMNS}",
                (status, result, error, Jsonb(artifacts or []), task_id, list(from_states)),
            )
            row = await cur.fetchone()
        return _task(row) if row else None

    async def request_cancel(self, task_id: uuid.UUID, conn: Conn) -> TaskRecord | None:
        """Flag a running task for its runner to cancel (None: it is not running)."""
        cur = await conn.execute(
            "UPDATE agent_tasks SET cancel_requested = true"
            f" WHERE id = %s AND status = 'running' RETURNING {_COLUMNS}",
            (task_id,),
        )
        row = await cur.fetchone()
        return _task(row) if row else None

    async def running(self, conn: Conn | None = None) -> builtins.list[TaskRecord]:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM agent_tasks WHERE status = 'running' ORDER BY created_at"
            )
            rows = await cur.fetchall()
        return [_task(r) for r in rows]
