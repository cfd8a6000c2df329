"""Users' webhook subscriptions and their deliveries (``webhooks``,
``webhook_deliveries``, migration 018).

The deliverer (``service/webhooks.py``) moves each enabled subscription's cursor
over its owner's events (``queue_new``): in one transaction it reads the events
after the cursor, queues a delivery for each of a subscribed kind and moves the
cursor past them, so an event is queued once, whatever stops the service. It then
posts what is due (``due``) and records each attempt (``attempted``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using


@dataclass(frozen=True)
class Webhook:
    """A subscription as stored: its secret encrypted, never returned by the API."""

    id: str
    owner: str
    url: str
    format: str
    kinds: tuple[str, ...]
    encrypted_secret: bytes
    enabled: bool
    cursor_event_id: int
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "id::text AS id, owner, url, format, kinds, encrypted_secret, enabled, cursor_event_id,"
    " created_at, updated_at"
)
_DELIVERY = (
    "d.id::text AS id, d.webhook_id::text AS webhook_id, d.event_id, d.kind, d.payload,"
    " d.status, d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.created_at,"
    " d.updated_at"
)
# Columns a change may set.
_CHANGEABLE = ("url", "format", "kinds", "enabled")


def _webhook(row: dict[str, Any]) -> Webhook:
    return Webhook(
        **{
            **row,
            "kinds": tuple(row["kinds"]),
            "encrypted_secret": bytes(row["encrypted_secret"]),
        }
    )


def _valid_id(text: str) -> str | None:
    """``text`` as a UUID, or None (an id that is not one names no webhook)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


class Webhooks:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def create(
        self,
        owner: str,
        url: str,
        format: str,
        kinds: tuple[str, ...],
        encrypted_secret: bytes,
        conn: Conn | None = None,
    ) -> Webhook:
        """A new subscription of ``owner``'s, starting after their newest event (it
        tells what happens from now on)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "INSERT INTO webhooks (id, owner, url, format, kinds, encrypted_secret,"
                " cursor_event_id) VALUES (%s, %s, %s, %s, %s, %s, (SELECT coalesce(max(id), 0)"
                f" FROM user_events WHERE username = %s)) RETURNING {_COLUMNS}",
                (str(uuid.uuid4()), owner, url, format, list(kinds), encrypted_secret, owner),
            )
            row = await cur.fetchone()
        assert row is not None
        return _webhook(row)

    async def of_owner(self, owner: str, conn: Conn | None = None) -> list[Webhook]:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM webhooks WHERE owner = %s ORDER BY created_at, id",
                (owner,),
            )
            return [_webhook(r) for r in await cur.fetchall()]

    async def count(self, owner: str, conn: Conn | None = None) -> int:
        async with using(self.pool, conn) as c:
            cur = await c.execute("SELECT count(*) AS n FROM webhooks WHERE owner = %s", (owner,))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def get(self, owner: str, webhook_id: str, conn: Conn | None = None) -> Webhook | None:
        """``owner``'s subscription ``webhook_id`` (None: none of theirs has it)."""
        wid = _valid_id(webhook_id)
        if wid is None:
            return None
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM webhooks WHERE owner = %s AND id = %s",
                (owner, wid),
            )
            row = await cur.fetchone()
        return _webhook(row) if row else None

    async def update(
        self, owner: str, webhook_id: str, changes: dict[str, Any], conn: Conn | None = None
    ) -> tuple[Webhook, Webhook] | None:
        """Change ``url``, ``format``, ``kinds`` or ``enabled``: (before, after), or
        None when ``owner`` has no such subscription. Enabling a disabled one moves
        its cursor to the owner's newest event: it does not tell what happened
        while it was off."""
        async with using(self.pool, conn) as c:
            before = await self.get(owner, webhook_id, conn=c)
            if before is None:
                return None
            sets = [f"{k} = %({k})s" for k in _CHANGEABLE if k in changes]
            params: dict[str, Any] = {k: changes[k] for k in _CHANGEABLE if k in changes}
            if "kinds" in params:
                params["kinds"] = list(params["kinds"])
            if changes.get("enabled") and not before.enabled:
                sets.append(
                    "cursor_event_id = (SELECT coalesce(max(id), 0) FROM user_events"
                    " WHERE username = %(owner)s)"
                )
            cur = await c.execute(
                f"UPDATE webhooks SET {', '.join([*sets, 'updated_at = now()'])}"
                f" WHERE owner = %(owner)s AND id = %(id)s RETURNING {_COLUMNS}",
                {**params, "owner": owner, "id": before.id},
            )
            row = await cur.fetchone()
        assert row is not None
        return before, _webhook(row)

    async def set_secret(
        self, owner: str, webhook_id: str, encrypted_secret: bytes, conn: Conn | None = None
    ) -> Webhook | None:
        wid = _valid_id(webhook_id)
        if wid is None:
            return None
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "UPDATE webhooks SET encrypted_secret = %s, updated_at = now()"
                f" WHERE owner = %s AND id = %s RETURNING {_COLUMNS}",
                (encrypted_secret, owner, wid),
            )
            row = await cur.fetchone()
        return _webhook(row) if row else None

    async def delete(self, owner: str, webhook_id: str, conn: Conn | None = None) -> Webhook | None:
        """Remove ``owner``'s subscription and its deliveries; the one removed, or None."""
        wid = _valid_id(webhook_id)
        if wid is None:
            return None
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"DELETE FROM webhooks WHERE owner = %s AND id = %s RETURNING {_COLUMNS}",
                (owner, wid),
            )
            row = await cur.fetchone()
        return _webhook(row) if row else None

    async def enabled(self) -> list[Webhook]:
        """Every enabled subscription (the deliverer's round)."""
        async with self.pool.connection() as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM webhooks WHERE enabled ORDER BY created_at, id"
            )
            return [_webhook(r) for r in await cur.fetchall()]

    async def queue_new(self, webhook_id: str, limit: int) -> int:
        """Queue a delivery for each event of the subscription's owner after its
        cursor whose kind it subscribes (at most ``limit`` events read), and move the
        cursor past every event read; how many events were read. One transaction,
        the subscription's row locked: an event is queued once."""
        async with self.pool.connection() as c, c.transaction():
            cur = await c.execute(
                "SELECT owner, kinds, cursor_event_id FROM webhooks"
                " WHERE id = %s AND enabled FOR UPDATE",
                (webhook_id,),
            )
            hook = await cur.fetchone()
            if hook is None:
                return 0
            cur = await c.execute(
                "SELECT id, kind, agent_slug, data, created_at FROM user_events"
                " WHERE username = %s AND id > %s ORDER BY id LIMIT %s",
                (hook["owner"], hook["cursor_event_id"], limit),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            for r in rows:
                if r["kind"] not in hook["kinds"]:
                    continue
                payload = {
                    "id": r["id"],
                    "kind": r["kind"],
                    "user": hook["owner"],
                    "agent": r["agent_slug"],
                    "time": r["created_at"].isoformat(),
                    "data": r["data"],
                }
                await c.execute(
                    "INSERT INTO webhook_deliveries (id, webhook_id, event_id, kind, payload)"
                    " VALUES (gen_random_uuid(), %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (webhook_id, r["id"], r["kind"], Jsonb(payload)),
                )
            await c.execute(
                "UPDATE webhooks SET cursor_event_id = %s WHERE id = %s",
                (rows[-1]["id"], webhook_id),
            )
        return len(rows)

    async def queue(
        self, webhook_id: str, kind: str, payload: dict[str, Any], conn: Conn | None = None
    ) -> str:
        """Queue one delivery that tells no stored event (a test); its id."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, kind, payload)"
                " VALUES (gen_random_uuid(), %s, %s, %s) RETURNING id::text AS id",
                (webhook_id, kind, Jsonb(payload)),
            )
            row = await cur.fetchone()
        assert row is not None
        return str(row["id"])

    async def due(self, limit: int, skip: list[str]) -> list[dict[str, Any]]:
        """Pending deliveries of enabled subscriptions whose next attempt is due,
        oldest first, but those in ``skip`` (being sent now); each with its
        subscription's ``url``, ``format``, ``owner`` and ``encrypted_secret``."""
        async with self.pool.connection() as c:
            cur = await c.execute(
                f"SELECT {_DELIVERY}, w.url, w.format, w.owner, w.encrypted_secret"
                " FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled"
                " AND NOT (d.id::text = ANY(%s)) ORDER BY d.next_attempt_at, d.created_at"
                " LIMIT %s",
                (skip, limit),
            )
            rows = await cur.fetchall()
        return [{**r, "encrypted_secret": bytes(r["encrypted_secret"])} for r in rows]

    async def next_due(self) -> datetime | None:
        """When the soonest pending delivery of an enabled subscription is due."""
        async with self.pool.connection() as c:
            cur = await c.execute(
                "SELECT min(d.next_attempt_at) AS at FROM webhook_deliveries d"
                " JOIN webhooks w ON w.id = d.webhook_id WHERE d.status = 'pending' AND w.enabled"
            )
            row = await cur.fetchone()
        return row["at"] if row else None

    async def attempted(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        last_status: int | None,
        last_error: str | None,
        retry_in: timedelta | None,
    ) -> None:
        """Record an attempt's result (``retry_in``: when the next one is due)."""
        async with self.pool.connection() as c:
            await c.execute(
                "UPDATE webhook_deliveries SET status = %s, attempts = %s, last_status = %s,"
                " last_error = %s, next_attempt_at = now() + %s, updated_at = now()"
                " WHERE id = %s",
                (status, attempts, last_status, last_error, retry_in or timedelta(0), delivery_id),
            )

    async def deliveries(self, webhook_id: str, limit: int) -> list[dict[str, Any]]:
        """A subscription's newest deliveries, newest first."""
        async with self.pool.connection() as c:
            cur = await c.execute(
                f"SELECT {_DELIVERY} FROM webhook_deliveries d WHERE d.webhook_id = %s"
                " ORDER BY d.created_at DESC, d.id LIMIT %s",
                (webhook_id, limit),
            )
            return await cur.fetchall()

    async def prune(self, keep: int, days: float) -> int:
        """Delete finished deliveries beyond each subscription's newest ``keep``,
        and those older than ``days`` days (0: no age limit); how many went."""
        async with self.pool.connection() as c:
            cur = await c.execute(
                "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND (id IN ("
                " SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY webhook_id"
                " ORDER BY created_at DESC) AS n FROM webhook_deliveries) ranked WHERE n > %s)"
                " OR (%s > 0 AND created_at < now() - make_interval(secs => %s)))",
                (keep, days, days * 86400),
            )
            return cur.rowcount
