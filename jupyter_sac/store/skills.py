"""Skills and their installs into agents.

Visibility is applied in SQL for listings (``visible`` below) and by the service's
pure rules (``jupyter_sac.skills.can_read``) for single reads, so one rule governs
both. Shipped official skills belong to no user (owner ``''``) and are upserted by
command: an unchanged skill keeps its version, a changed one gets the next
version, and installs survive either way (same row).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ..skills import SkillSpec
from .tx import using

OFFICIAL_OWNER = ""

_COLUMNS = (
    "s.id, s.owner, s.command, s.title, s.description, s.body, s.parameters, s.prompt,"
    " s.tags, s.visibility, s.group_name, s.version, s.parent_id, s.bundle_sha256,"
    " s.bundle_files, s.bundle_size, s.checksum, s.created_at, s.updated_at,"
    " s.installs"
)


@dataclass(frozen=True)
class Bundle:
    """A stored attachment bundle: its sha256 and what it holds (empty: none)."""

    sha256: str | None = None
    files: tuple[dict[str, Any], ...] = ()

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.files)

    def values(self) -> dict[str, Any]:
        return {"sha": self.sha256, "files": Jsonb(list(self.files)), "size": self.size}

    @classmethod
    def of(cls, row: dict[str, Any]) -> Bundle:
        return cls(row["bundle_sha256"], tuple(row["bundle_files"]))


async def _bundle_used(conn: Any, sha256: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM skills WHERE bundle_sha256 = %s LIMIT 1", (sha256,))
    return await cur.fetchone() is not None


class SkillExistsError(Exception):
    pass


class CommandTakenError(Exception):
    """The agent already has another installed skill with this command."""


def checksum(spec: SkillSpec, bundle_sha256: str | None = None) -> str:
    content = {
        "title": spec.title,
        "description": spec.description,
        "body": spec.body,
        "parameters": [p.to_json() for p in spec.parameters],
        "prompt": spec.prompt,
        "tags": list(spec.tags),
        "bundle": bundle_sha256,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _values(spec: SkillSpec) -> dict[str, Any]:
    return {
        "command": spec.command,
        "title": spec.title,
        "description": spec.description,
        "body": spec.body,
        "parameters": Jsonb([p.to_json() for p in spec.parameters]),
        "prompt": spec.prompt,
        "tags": Jsonb(list(spec.tags)),
    }


VISIBLE = (
    "(%(admin)s OR s.visibility IN ('official', 'public') OR s.owner = %(me)s"
    " OR (s.visibility = 'group' AND s.group_name = ANY(%(groups)s)))"
)


class Skills:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def upsert_official(self, specs: list[SkillSpec], bundles: dict[str, Bundle]) -> int:
        """Shipped skills, by command; returns how many were new or changed."""
        changed = 0
        async with self.pool.connection() as conn, conn.transaction():
            for spec in specs:
                bundle = bundles.get(spec.command) or Bundle()
                sha = bundle.sha256
                cur = await conn.execute(
                    "INSERT INTO skills (owner, command, title, description, body, parameters,"
                    " prompt, tags, visibility, bundle_sha256, bundle_files, bundle_size,"
                    " checksum)"
                    " VALUES (%(owner)s, %(command)s, %(title)s, %(description)s, %(body)s,"
                    " %(parameters)s, %(prompt)s, %(tags)s, 'official', %(sha)s, %(files)s,"
                    " %(size)s, %(checksum)s)"
                    " ON CONFLICT (owner, command) DO UPDATE SET title = EXCLUDED.title,"
                    " description = EXCLUDED.description, body = EXCLUDED.body,"
                    " parameters = EXCLUDED.parameters, prompt = EXCLUDED.prompt,"
                    " tags = EXCLUDED.tags, bundle_sha256 = EXCLUDED.bundle_sha256,"
                    " bundle_files = EXCLUDED.bundle_files, bundle_size = EXCLUDED.bundle_size,"
                    " checksum = EXCLUDED.checksum, version = skills.version + 1,"
                    " updated_at = now() WHERE skills.checksum <> EXCLUDED.checksum"
                    " RETURNING id",
                    {
                        **_values(spec),
                        **bundle.values(),
                        "owner": OFFICIAL_OWNER,
                        "checksum": checksum(spec, sha),
                    },
                )
                changed += cur.rowcount
        return changed

    async def create(
        self,
        owner: str,
        spec: SkillSpec,
        visibility: str,
        group: str | None,
        parent_id: int | None = None,
        bundle: Bundle | None = None,
        *,
        conn: AsyncConnection[Any] | None = None,
    ) -> dict[str, Any]:
        """A new skill; a fork passes its parent's bundle (content-addressed, shared)."""
        bundle = bundle or Bundle()
        async with using(self.pool, conn) as c:
            try:
                cur = await c.execute(
                    "INSERT INTO skills (owner, command, title, description, body, parameters,"
                    " prompt, tags, visibility, group_name, parent_id, bundle_sha256,"
                    " bundle_files, bundle_size, checksum)"
                    " VALUES (%(owner)s, %(command)s, %(title)s, %(description)s, %(body)s,"
                    " %(parameters)s, %(prompt)s, %(tags)s, %(visibility)s, %(group)s,"
                    " %(parent)s, %(sha)s, %(files)s, %(size)s, %(checksum)s) RETURNING id",
                    {
                        **_values(spec),
                        **bundle.values(),
                        "owner": owner,
                        "visibility": visibility,
                        "group": group,
                        "parent": parent_id,
                        "checksum": checksum(spec, bundle.sha256),
                    },
                )
            except UniqueViolation:
                raise SkillExistsError(spec.command) from None
            row = await cur.fetchone()
            assert row is not None
            created = await self.get(row["id"], conn=c)
        assert created is not None
        return created

    async def get(
        self, skill_id: int, *, conn: AsyncConnection[Any] | None = None, lock: bool = False
    ) -> dict[str, Any] | None:
        """A skill; with ``lock`` (inside a transaction) its row stays locked until the
        transaction ends, so the caller changes exactly the version it read."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM skills s WHERE s.id = %s"
                + (" FOR NO KEY UPDATE" if lock else ""),
                (skill_id,),
            )
            return await cur.fetchone()

    async def update(
        self,
        skill_id: int,
        spec: SkillSpec,
        visibility: str,
        group: str | None,
        bundle_sha256: str | None = None,
        *,
        conn: AsyncConnection[Any] | None = None,
    ) -> dict[str, Any] | None:
        """Replace a skill's content; the version goes up when the content changed."""
        async with using(self.pool, conn) as c:
            await c.execute(
                "UPDATE skills SET title = %(title)s, description = %(description)s,"
                " body = %(body)s, parameters = %(parameters)s, prompt = %(prompt)s,"
                " tags = %(tags)s, visibility = %(visibility)s, group_name = %(group)s,"
                " version = version + CASE WHEN checksum <> %(checksum)s THEN 1 ELSE 0 END,"
                # "recently changed" in the marketplace means changed: a PATCH that
                # changes nothing does not move the skill up the list.
                " updated_at = CASE WHEN checksum <> %(checksum)s"
                "   OR visibility <> %(visibility)s OR group_name IS DISTINCT FROM %(group)s"
                "   THEN now() ELSE updated_at END,"
                " checksum = %(checksum)s WHERE id = %(id)s",
                {
                    **_values(spec),
                    "visibility": visibility,
                    "group": group,
                    "checksum": checksum(spec, bundle_sha256),
                    "id": skill_id,
                },
            )
            return await self.get(skill_id, conn=c)

    async def set_bundle(
        self,
        skill_id: int,
        spec: SkillSpec,
        bundle: Bundle,
        *,
        conn: AsyncConnection[Any] | None = None,
    ) -> str | None:
        """Attach (or with an empty Bundle, remove) a skill's bundle: a new version.
        Returns the sha256 of the bundle it replaced when no skill uses it any more
        (the caller deletes that object, once the transaction has committed)."""
        async with using(self.pool, conn) as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT bundle_sha256 FROM skills WHERE id = %s FOR UPDATE", (skill_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            old = row["bundle_sha256"]
            await conn.execute(
                "UPDATE skills SET bundle_sha256 = %(sha)s, bundle_files = %(files)s,"
                " bundle_size = %(size)s,"
                " version = version + CASE WHEN checksum <> %(checksum)s THEN 1 ELSE 0 END,"
                " updated_at = CASE WHEN checksum <> %(checksum)s THEN now() ELSE updated_at END,"
                " checksum = %(checksum)s WHERE id = %(id)s",
                {**bundle.values(), "checksum": checksum(spec, bundle.sha256), "id": skill_id},
            )
            if old and old != bundle.sha256 and not await _bundle_used(conn, old):
                return old
        return None

    async def bundle_used(self, sha256: str) -> bool:
        async with self.pool.connection() as conn:
            return await _bundle_used(conn, sha256)

    async def delete(self, skill_id: int, *, conn: AsyncConnection[Any] | None = None) -> bool:
        async with using(self.pool, conn) as c:
            cur = await c.execute("DELETE FROM skills WHERE id = %s", (skill_id,))
            return cur.rowcount > 0

    async def search(
        self,
        *,
        me: str,
        groups: list[str],
        admin: bool,
        text: str | None,
        tier: str | None,
        owner: str | None,
        group: str | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        """Visible skills, most installed first, then most recently changed."""
        where = [VISIBLE]
        params: dict[str, Any] = {"admin": admin, "me": me, "groups": groups}
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(
                "(s.command ILIKE %(q)s OR s.title ILIKE %(q)s OR s.description ILIKE %(q)s)"
            )
            params["q"] = f"%{escaped}%"
        if tier:
            where.append("s.visibility = %(tier)s")
            params["tier"] = tier
        if owner is not None:
            where.append("s.owner = %(owner)s")
            params["owner"] = owner
        if group:
            where.append("s.group_name = %(group)s")
            params["group"] = group
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM skills s WHERE {' AND '.join(where)}"
                " ORDER BY s.installs DESC, s.updated_at DESC, s.id DESC"
                " LIMIT %(limit)s OFFSET %(offset)s",
                {**params, "limit": limit, "offset": offset},
            )
            return await cur.fetchall()

    async def install(
        self, agent_id: int, skill: dict[str, Any], *, conn: AsyncConnection[Any] | None = None
    ) -> None:
        async with using(self.pool, conn) as conn, conn.transaction():
            # One installed skill per command inside an agent (the slash command name).
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (agent_id,))
            cur = await conn.execute(
                "SELECT s.id FROM skill_installs i JOIN skills s ON s.id = i.skill_id"
                " WHERE i.agent_id = %s AND s.command = %s AND s.id <> %s",
                (agent_id, skill["command"], skill["id"]),
            )
            if await cur.fetchone():
                raise CommandTakenError(skill["command"])
            await conn.execute(
                "INSERT INTO skill_installs (agent_id, skill_id) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (agent_id, skill["id"]),
            )

    async def uninstall(
        self, agent_id: int, skill_id: int, *, conn: AsyncConnection[Any] | None = None
    ) -> bool:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM skill_installs WHERE agent_id = %s AND skill_id = %s",
                (agent_id, skill_id),
            )
            return cur.rowcount > 0

    async def installed(
        self,
        agent_id: int,
        *,
        visible_to: tuple[str, list[str], bool] | None = None,
        skill_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """An agent's installed skills by command; with ``visible_to`` (owner, groups,
        admin) only those its owner may still read (a skill made private or moved to
        another group drops out of the agent until it is visible again)."""
        where = ["i.agent_id = %(agent)s"]
        params: dict[str, Any] = {"agent": agent_id}
        if visible_to is not None:
            where.append(VISIBLE)
            params.update(me=visible_to[0], groups=visible_to[1], admin=visible_to[2])
        if skill_id is not None:
            where.append("s.id = %(skill)s")
            params["skill"] = skill_id
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM skills s JOIN skill_installs i ON i.skill_id = s.id"
                f" WHERE {' AND '.join(where)} ORDER BY s.command",
                params,
            )
            return await cur.fetchall()
