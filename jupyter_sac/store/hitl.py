"""Human-in-the-loop requests and policies: filed by sandboxes, decided by owners and admins.

Deciding, cancelling or timing out a request NOTIFYs ``HITL_RESOLVED`` with its
id (in the caller's transaction: sent at commit), which wakes its waiters in
every process of the service (store/notifications.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .notifications import HITL_RESOLVED, notify
from .tx import Conn, Pool, using

PENDING = "pending"
DECIDED_STATUSES = ("approved", "denied", "timed_out", "cancelled")

_COLUMNS = (
    "id, agent_id, owner, agent_slug, session_id, kind, tool, input, question, options,"
    " dedupe_key, status, decision, option, reason, decided_by, default_decision,"
    " created_at, decided_at, expires_at, text_max, answer_text"
)


def request_model(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of a request everywhere (API, events)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row["id"]),
        "user": row["owner"],
        "agent": row["agent_slug"],
        "session_id": row["session_id"],
        "kind": row["kind"],
        "tool": row["tool"],
        "input": row["input"],
        "question": row["question"],
        "options": row["options"],
        "text_max": row["text_max"],
        "status": row["status"],
        "decision": row["decision"],
        "option": row["option"],
        "text": row["answer_text"],
        "reason": row["reason"],
        "decided_by": row["decided_by"],
        "default_decision": row["default_decision"],
        "created_at": iso(row["created_at"]),
        "decided_at": iso(row["decided_at"]),
        "expires_at": iso(row["expires_at"]),
    }


class HitlRequests:
    def __init__(self, pool: Pool):
        self.pool = pool

    # ---- policies -----------------------------------------------------------------

    async def get_policy(self, agent_id: int) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT policy FROM hitl_policies WHERE agent_id = %s", (agent_id,)
            )
            row = await cur.fetchone()
        return dict(row["policy"]) if row else None

    async def put_policy(
        self,
        agent_id: int,
        policy: dict[str, Any],
        by: str,
        *,
        conn: Conn | None = None,
    ) -> dict[str, Any] | None:
        """Replace an agent's policy; returns the one it replaced (None: the default).
        The agent's row lock orders replacements, so that is exactly what was replaced."""
        async with using(self.pool, conn) as c, c.transaction():
            await c.execute("SELECT 1 FROM agents WHERE id = %s FOR NO KEY UPDATE", (agent_id,))
            cur = await c.execute(
                "SELECT policy FROM hitl_policies WHERE agent_id = %s", (agent_id,)
            )
            row = await cur.fetchone()
            await c.execute(
                "INSERT INTO hitl_policies (agent_id, policy, updated_by) VALUES (%s, %s, %s)"
                " ON CONFLICT (agent_id) DO UPDATE SET policy = EXCLUDED.policy,"
                " updated_at = now(), updated_by = EXCLUDED.updated_by",
                (agent_id, Jsonb(policy), by),
            )
        return dict(row["policy"]) if row else None

    async def get_default_policy(self) -> dict[str, Any] | None:
        """The organisation's default policy (None: the built-in one applies)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT policy FROM hitl_default_policy")
            row = await cur.fetchone()
        return dict(row["policy"]) if row else None

    async def put_default_policy(
        self, policy: dict[str, Any] | None, by: str, *, conn: Conn | None = None
    ) -> dict[str, Any] | None:
        """Replace the organisation's default policy (None: back to the built-in
        one); returns the one it replaced (None: the built-in one)."""
        async with using(self.pool, conn) as c, c.transaction():
            cur = await c.execute("SELECT policy FROM hitl_default_policy FOR UPDATE")
            row = await cur.fetchone()
            if policy is None:
                await c.execute("DELETE FROM hitl_default_policy")
            else:
                await c.execute(
                    "INSERT INTO hitl_default_policy (policy, updated_by) VALUES (%s, %s)"
                    " ON CONFLICT (only_row) DO UPDATE SET policy = EXCLUDED.policy,"
                    " updated_at = now(), updated_by = EXCLUDED.updated_by",
                    (Jsonb(policy), by),
                )
        return dict(row["policy"]) if row else None

    # ---- requests -----------------------------------------------------------------

    async def file(
        self,
        *,
        agent_id: int,
        owner: str,
        agent_slug: str,
        session_id: str | None,
        kind: str,
        tool: str | None,
        input: dict[str, Any],
        question: str | None,
        options: list[dict[str, str]],
        dedupe_key: str | None,
        timeout: float,
        text_max: int | None = None,
        default_decision: str,
        conn: Conn | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """(the request, whether it is new). A pending request of the same agent with
        the same dedupe key is returned instead of filing a second one."""
        params = (
            agent_id,
            owner,
            agent_slug,
            session_id,
            kind,
            tool,
            Jsonb(input),
            question,
            Jsonb(options),
            dedupe_key,
            default_decision,
            text_max,
            timeout,
        )
        async with using(self.pool, conn) as c:
            # The twin found by the conflict may be decided before we read it; then
            # the slot is free again and the next round files. (Read committed: each
            # statement sees what committed before it, also inside a transaction.)
            for _ in range(5):
                cur = await c.execute(
                    f"INSERT INTO hitl_requests (id, agent_id, owner, agent_slug, session_id,"
                    f" kind, tool, input, question, options, dedupe_key, default_decision,"
                    f" text_max, expires_at)"
                    f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    f"         now() + make_interval(secs => %s))"
                    f" ON CONFLICT (agent_id, dedupe_key)"
                    f"   WHERE status = 'pending' AND dedupe_key IS NOT NULL DO NOTHING"
                    f" RETURNING {_COLUMNS}",
                    (uuid.uuid4(), *params),
                )
                row = await cur.fetchone()
                if row is not None:
                    return row, True
                cur = await c.execute(
                    f"SELECT {_COLUMNS} FROM hitl_requests WHERE agent_id = %s"
                    f" AND dedupe_key = %s AND status = 'pending'",
                    (agent_id, dedupe_key),
                )
                row = await cur.fetchone()
                if row is not None:
                    return row, False
        raise RuntimeError(f"could not file a HITL request with dedupe key {dedupe_key!r}")

    async def count_pending(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM hitl_requests WHERE status = 'pending'"
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def count_waiting(self, owner: str) -> int:
        """How many of ``owner``'s requests still wait for a decision (pending and not
        past their expiry), for the home page."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM hitl_requests"
                " WHERE owner = %s AND status = 'pending' AND expires_at > now()",
                (owner,),
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def get(self, request_id: str) -> dict[str, Any] | None:
        try:
            rid = uuid.UUID(request_id)
        except ValueError:
            return None
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM hitl_requests WHERE id = %s", (rid,))
            return await cur.fetchone()

    async def expire_due(self, *, conn: Conn | None = None) -> list[dict[str, Any]]:
        """Resolve every pending request past its expiry with its default decision."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"UPDATE hitl_requests SET status = 'timed_out', decision = default_decision,"
                f" decided_at = now(),"
                f" reason = 'no decision within the timeout; the default applied'"
                f" WHERE status = 'pending' AND expires_at <= now() RETURNING {_COLUMNS}"
            )
            expired = await cur.fetchall()
            await notify(c, HITL_RESOLVED, *(str(row["id"]) for row in expired))
            return expired

    async def decide(
        self,
        request_id: str,
        decision: str,
        option: str | None,
        reason: str | None,
        by: str,
        *,
        text: str | None = None,
        conn: Conn | None = None,
    ) -> dict[str, Any] | None:
        """Decide a pending request; None if it is no longer pending (or past expiry)."""
        status = "approved" if decision == "allow" else "denied"
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"UPDATE hitl_requests SET status = %s, decision = %s, option = %s, reason = %s,"
                f" answer_text = %s, decided_by = %s, decided_at = now()"
                f" WHERE id = %s AND status = 'pending' AND expires_at > now()"
                f" RETURNING {_COLUMNS}",
                (status, decision, option, reason, text, by, uuid.UUID(request_id)),
            )
            decided = await cur.fetchone()
            if decided is not None:
                await notify(c, HITL_RESOLVED, str(decided["id"]))
            return decided

    async def cancel(
        self, request_id: str, agent_id: int, *, conn: Conn | None = None
    ) -> dict[str, Any] | None:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"UPDATE hitl_requests SET status = 'cancelled', decided_at = now()"
                f" WHERE id = %s AND agent_id = %s AND status = 'pending' RETURNING {_COLUMNS}",
                (uuid.UUID(request_id), agent_id),
            )
            cancelled = await cur.fetchone()
            if cancelled is not None:
                await notify(c, HITL_RESOLVED, str(cancelled["id"]))
            return cancelled

    async def list(
        self,
        *,
        owner: str | None,
        agent_slug: str | None,
        status: str,
        limit: int,
        before: tuple[datetime, uuid.UUID] | None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the keyset cursor (created_at, id) of the last row."""
        where: list[str] = []
        params: list[Any] = []
        if owner is not None:
            where.append("owner = %s")
            params.append(owner)
        if agent_slug is not None:
            where.append("agent_slug = %s")
            params.append(agent_slug)
        if status == PENDING:
            where.append("status = 'pending'")
        elif status == "decided":
            where.append("status <> 'pending'")
        if before is not None:
            where.append("(created_at, id) < (%s, %s)")
            params += list(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM hitl_requests {clause}"
                f" ORDER BY created_at DESC, id DESC LIMIT %s",
                (*params, limit),
            )
            return await cur.fetchall()
