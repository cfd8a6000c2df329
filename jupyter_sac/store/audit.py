"""The audit log: who did what to whose resource, before and after, and when.

Entries are only inserted, never changed. ``record`` takes the caller's
connection so that an entry is written in the same transaction as the change it
describes (see ``store/tx.py``): a change is never stored without its entry, nor
an entry without its change. Whatever is recorded passes through ``redact``
first, so no secret reaches the table even if a caller forgets.

Listing is newest first, keyset-paged on (at, id): correct while rows are
inserted (no row twice, none skipped that existed when paging began).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using

REDACTED = "[redacted]"
# An agent's provider key is recorded as whether one is set, never as its value.
_KEY_FIELDS = frozenset({"api_key", "encrypted_key"})
_SECRET_FIELDS = frozenset(
    {"token", "api_token", "access_token", "password", "secret", "authorization", "x-api-key"}
)

_COLUMNS = "id, at, actor, actor_admin, action, target_user, target, before, after, request_id, ip"

_dumps = partial(json.dumps, default=str, ensure_ascii=False)


def redact(value: Any) -> Any:
    """``value`` with secrets taken out: ``api_key``/``encrypted_key`` become
    ``key_set: true|false``, other secret-named fields ``"[redacted]"``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key).lower()
            if name in _KEY_FIELDS:
                out.setdefault("key_set", item is not None and item not in ("", b""))
            elif name in _SECRET_FIELDS:
                out[key] = None if item is None else REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    target_user: str | None = None
    target: str | None = None
    action: str | None = None  # exact, or a prefix when it ends with ".*"
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("actor", self.actor),
            ("target_user", self.target_user),
            ("target", self.target),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        if self.action is not None:
            if self.action.endswith(".*"):
                prefix = self.action[:-1]  # keeps the dot: "agent.*" is not "agents…"
                escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append("action LIKE %s ESCAPE '\\'")
                params.append(escaped + "%")
            else:
                clauses.append("action = %s")
                params.append(self.action)
        if self.since is not None:
            clauses.append("at >= %s")
            params.append(self.since)
        if self.until is not None:
            clauses.append("at < %s")
            params.append(self.until)
        return clauses, params


AuditKey = tuple[datetime, int]  # (at, id): the keyset order, newest first


class Audit:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def record(
        self,
        action: str,
        *,
        actor: str,
        actor_admin: bool,
        target: str,
        target_user: str | None = None,
        before: Any = None,
        after: Any = None,
        request_id: str | None = None,
        ip: str | None = None,
        conn: Conn | None = None,
    ) -> int:
        """Insert one entry (in ``conn``'s transaction when given); returns its id."""
        snapshots = [None if v is None else Jsonb(redact(v), dumps=_dumps) for v in (before, after)]
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "INSERT INTO audit_log (actor, actor_admin, action, target_user, target,"
                " before, after, request_id, ip) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (actor, actor_admin, action, target_user, target, *snapshots, request_id, ip),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["id"])

    async def list(
        self, where: AuditFilter, limit: int, cursor: AuditKey | None = None
    ) -> list[dict[str, Any]]:
        """A page of entries, newest first; ``cursor`` is the (at, id) of the last row
        of the previous page."""
        clauses, params = where.where()
        if cursor is not None:
            clauses.append("(at, id) < (%s, %s)")
            params += list(cursor)
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log {clause} ORDER BY at DESC, id DESC LIMIT %s",
                (*params, limit),
            )
            return await cur.fetchall()

    async def stream(self, where: AuditFilter, batch: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Every matching entry, newest first (the listing's order), through a
        server-side cursor (flat memory). Use it inside ``contextlib.aclosing``."""
        clauses, params = where.where()
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="sac_audit_export") as cur,
        ):
            cur.itersize = batch
            await cur.execute(
                f"SELECT {_COLUMNS} FROM audit_log {clause} ORDER BY at DESC, id DESC", params
            )
            async for row in cur:
                yield row
