"""Skills, their versions, and their installs into agents.

Visibility is applied in SQL for listings (``visible`` below) and by the service's
pure rules (``jupyter_sac.rules.skills.can_read``) for single reads, so one rule governs
both. Shipped official skills belong to no user (owner ``''``) and are upserted by
command: an unchanged skill keeps its version, a changed one gets the next
version, and installs survive either way (same row).

Versions and pins: ``skills`` holds each skill's current content (the head, what
listings read); every version's content is also in ``skill_versions``, written when
the version is made. An install pins a version and records the checksum of what
its sandbox receives (``jupyter_sac.rules.skills.delivery_checksum``); the agent gets
that version until its installer moves the pin (``update_install``). A version
that is neither current nor pinned is deleted by ``prune_versions``, which the
service calls after each change that can leave one behind.

Whatever pins a version locks the skill's row ``FOR SHARE`` first and pins its
current version; a content change holds the same row for update. So a version is
never pruned while an install of it is being written, and only old (non-current)
versions are ever pruned.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from ..rules.skills import SkillSpec, delivery_checksum
from .tx import Conn, Pool, using

OFFICIAL_OWNER = ""

_COLUMNS = (
    "s.id, s.owner, s.command, s.title, s.description, s.body, s.parameters, s.prompt,"
    " s.tags, s.visibility, s.group_name, s.version, s.parent_id, s.bundle_sha256,"
    " s.bundle_files, s.bundle_size, s.checksum, s.created_at, s.updated_at,"
    " s.installs"
)
# An installed skill: the pinned version's content under the head's identity and
# tier; ``version`` and ``checksum`` are the install's, ``latest_version`` the head's.
_INSTALLED_COLUMNS = (
    "s.id, s.owner, s.command, v.title, v.description, v.body, v.parameters, v.prompt,"
    " v.tags, s.visibility, s.group_name, i.version, s.parent_id, v.bundle_sha256,"
    " v.bundle_files, v.bundle_size, i.checksum, s.created_at, s.updated_at, s.installs,"
    " s.version AS latest_version, i.installed_at"
)
_INSTALLED_FROM = (
    "skill_installs i JOIN skills s ON s.id = i.skill_id"
    " JOIN skill_versions v ON v.skill_id = i.skill_id AND v.version = i.version"
)
# The head's content as a version row; the same (skill, version) is the same
# content, so writing it again is a no-op.
_SNAPSHOT = (
    "INSERT INTO skill_versions (skill_id, version, title, description, body, parameters,"
    " prompt, tags, bundle_sha256, bundle_files, bundle_size, checksum)"
    " SELECT id, version, title, description, body, parameters, prompt, tags, bundle_sha256,"
    " bundle_files, bundle_size, checksum FROM skills WHERE id = %s"
    " ON CONFLICT (skill_id, version) DO NOTHING"
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
    # A version an install still pins keeps its bundle after the skill moved on.
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM skills WHERE bundle_sha256 = %(sha)s)"
        " OR EXISTS (SELECT 1 FROM skill_versions WHERE bundle_sha256 = %(sha)s) AS used",
        {"sha": sha256},
    )
    row = await cur.fetchone()
    return bool(row and row["used"])


async def _pin_target(conn: Any, skill_id: int) -> dict[str, Any] | None:
    """The skill's current version and the checksum an install of it records, with
    the skill's row locked FOR SHARE until the transaction ends (a concurrent edit
    waits, so the version pinned here is still current, hence never pruned)."""
    cur = await conn.execute(
        "SELECT s.command, v.* FROM skills s JOIN skill_versions v"
        " ON v.skill_id = s.id AND v.version = s.version WHERE s.id = %s FOR SHARE OF s",
        (skill_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return {"version": row["version"], "checksum": delivery_checksum(row, row["bundle_sha256"])}


class SkillExistsError(Exception):
    pass


class CommandTakenError(Exception):
    """The agent already has another installed skill with this command."""


class SkillGoneError(Exception):
    """The skill was deleted while it was being installed."""


class VersionChangedError(Exception):
    """An update asked for a version that is no longer the skill's latest."""

    def __init__(self, latest: int):
        super().__init__(f"the skill is at version {latest}")
        self.latest = latest


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


def command_named(text: str) -> str:
    """The command a search names if it names one: people type ``/tidy-data``,
    ``Tidy data`` or ``tidy_data`` for the skill ``/tidy-data``."""
    return "-".join(word for word in re.split(r"[\W_]+", text.lower()) if word)


# A text search looks at this many of the most installed skills first (below).
SEARCH_HEAD = 500
_POPULAR = "installs DESC, updated_at DESC, id DESC"


def _popular(alias: str) -> str:
    return ", ".join(f"{alias}.{key}" for key in _POPULAR.split(", "))


def _search_query(
    me: str,
    groups: list[str],
    admin: bool,
    text: str | None,
    tier: str | None,
    owner: str | None,
    group: str | None,
    limit: int,
    offset: int,
) -> tuple[str, dict[str, Any]]:
    """The marketplace listing's SQL and parameters."""
    where = [VISIBLE]
    params: dict[str, Any] = {
        "admin": admin, "me": me, "groups": groups, "limit": limit, "offset": offset,
    }  # fmt: skip
    if tier:
        where.append("s.visibility = %(tier)s")
        params["tier"] = tier
    if owner is not None:
        where.append("s.owner = %(owner)s")
        params["owner"] = owner
    if group:
        where.append("s.group_name = %(group)s")
        params["group"] = group
    visible = " AND ".join(where)
    if not (text and text.strip()):
        return (
            f"SELECT {_COLUMNS} FROM skills s WHERE {visible} ORDER BY {_popular('s')}"
            " LIMIT %(limit)s OFFSET %(offset)s",
            params,
        )
    params.update(q=text, command=command_named(text), head=SEARCH_HEAD, end=offset + limit)
    query = "skills_search_query(%(q)s)"
    # 0: the skill whose command the text names, 1: every word in its name (command
    # and title), 2: the rest, 3: no match; each rank most installed first.
    rank = (
        f"CASE WHEN NOT s.search @@ {query} THEN 3 WHEN s.command = %(command)s THEN 0"
        f" WHEN s.search_name @@ {query} THEN 1 ELSE 2 END"
    )
    # Two ways to the page; the statement takes one. A word many skills have is
    # served from the SEARCH_HEAD most installed (the head), when nothing outside
    # it can come before what it holds: it is every skill there is; or it holds a
    # page's worth of ranks 0 and 1 (rank 1 outside comes after those, rank 0 is
    # looked up by command); or it holds a page's worth of matches and no skill
    # outside has every word in its name. Otherwise the index gives every match:
    # few, or the head would have been enough. Ranking every match of a word
    # most skills have was the slow part, and the planner cannot choose for us: it
    # guesses 2 % for any prefix.
    sql = (
        "WITH head AS MATERIALIZED ("
        f" SELECT s.id, {rank} AS rank, s.installs, s.updated_at FROM ("
        "  SELECT s.id, s.command, s.search, s.search_name, s.installs, s.updated_at"
        f"  FROM skills s WHERE {visible} ORDER BY {_popular('s')} LIMIT %(head)s) s),"
        " enough AS (SELECT count(*) < %(head)s"
        "  OR count(*) FILTER (WHERE rank <= 1) >= %(end)s"
        "  OR (count(*) FILTER (WHERE rank <= 2) >= %(end)s AND NOT EXISTS ("
        f"   SELECT FROM skills s WHERE s.search_name @@ {query} AND {visible}"
        "    AND s.id NOT IN (SELECT id FROM head))) AS yes FROM head),"
        " found AS ("
        "  SELECT id, rank, installs, updated_at FROM head"
        "  WHERE rank < 3 AND (SELECT yes FROM enough)"
        " UNION ALL"
        "  SELECT s.id, 0, s.installs, s.updated_at FROM skills s"
        "  WHERE (SELECT yes FROM enough) AND s.command = %(command)s"
        f"  AND {visible} AND s.search @@ {query} AND s.id NOT IN (SELECT id FROM head)"
        " UNION ALL"
        f"  SELECT s.id, {rank}, s.installs, s.updated_at FROM skills s"
        f"  WHERE NOT (SELECT yes FROM enough) AND {visible} AND s.search @@ {query})"
        f" SELECT {_COLUMNS} FROM (SELECT * FROM found ORDER BY rank, {_POPULAR}"
        "  LIMIT %(limit)s OFFSET %(offset)s) page JOIN skills s ON s.id = page.id"
        f" ORDER BY page.rank, {_popular('page')}"
    )
    return sql, params


class Skills:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def upsert_official(
        self, specs: list[SkillSpec], bundles: dict[str, Bundle]
    ) -> tuple[int, list[str]]:
        """Shipped skills, by command: (how many were new or changed, bundles no
        longer used). A changed skill is a new version; its installs stay pinned
        where they were, so a package upgrade offers the change, it never pushes it."""
        changed = 0
        unused: list[str] = []
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
                for row in await cur.fetchall():
                    changed += 1
                    await conn.execute(_SNAPSHOT, (row["id"],))
                    unused += await self.prune_versions(row["id"], conn=conn)
        return changed, unused

    async def create(
        self,
        owner: str,
        spec: SkillSpec,
        visibility: str,
        group: str | None,
        parent_id: int | None = None,
        bundle: Bundle | None = None,
        *,
        conn: Conn | None = None,
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
            await c.execute(_SNAPSHOT, (row["id"],))
            created = await self.get(row["id"], conn=c)
        assert created is not None
        return created

    async def official_by_command(
        self, commands: list[str], conn: Conn | None = None
    ) -> dict[str, dict[str, Any]]:
        """The official skills with these commands (every user may read them), by
        command: how a template names the skills its agents get."""
        if not commands:
            return {}
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM skills s WHERE s.visibility = 'official'"
                " AND s.command = ANY(%s) ORDER BY s.id DESC",
                (commands,),
            )
            rows = await cur.fetchall()
        return {r["command"]: r for r in rows}

    async def get(
        self, skill_id: int, *, conn: Conn | None = None, lock: bool = False
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
        conn: Conn | None = None,
    ) -> dict[str, Any] | None:
        """Replace a skill's content; the version goes up when the content changed
        (and is kept in ``skill_versions``; call ``prune_versions`` afterwards)."""
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
            await c.execute(_SNAPSHOT, (skill_id,))
            return await self.get(skill_id, conn=c)

    async def set_bundle(
        self,
        skill_id: int,
        spec: SkillSpec,
        bundle: Bundle,
        *,
        conn: Conn | None = None,
    ) -> bool:
        """Attach (or with an empty Bundle, remove) a skill's bundle: a new version.
        The replaced bundle stays with the old version until ``prune_versions``
        (which says when its object may go). False if there is no such skill."""
        async with using(self.pool, conn) as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM skills WHERE id = %s FOR UPDATE", (skill_id,))
            if await cur.fetchone() is None:
                return False
            await conn.execute(
                "UPDATE skills SET bundle_sha256 = %(sha)s, bundle_files = %(files)s,"
                " bundle_size = %(size)s,"
                " version = version + CASE WHEN checksum <> %(checksum)s THEN 1 ELSE 0 END,"
                " updated_at = CASE WHEN checksum <> %(checksum)s THEN now() ELSE updated_at END,"
                " checksum = %(checksum)s WHERE id = %(id)s",
                {**bundle.values(), "checksum": checksum(spec, bundle.sha256), "id": skill_id},
            )
            await conn.execute(_SNAPSHOT, (skill_id,))
        return True

    async def prune_versions(self, skill_id: int, *, conn: Conn | None = None) -> list[str]:
        """Delete the skill's versions that are neither current nor pinned by any
        install. Returns the sha256 of bundles that nothing refers to any more: the
        caller deletes those objects once the transaction has committed."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "DELETE FROM skill_versions v USING skills s"
                " WHERE s.id = %s AND v.skill_id = s.id AND v.version <> s.version"
                " AND NOT EXISTS (SELECT 1 FROM skill_installs i"
                "   WHERE i.skill_id = v.skill_id AND i.version = v.version)"
                " RETURNING v.bundle_sha256",
                (skill_id,),
            )
            shas = {r["bundle_sha256"] for r in await cur.fetchall() if r["bundle_sha256"]}
            return [sha for sha in sorted(shas) if not await _bundle_used(c, sha)]

    async def version_bundles(self, skill_id: int, *, conn: Conn | None = None) -> list[str]:
        """The bundles of every kept version of a skill (what deleting it may free)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT DISTINCT bundle_sha256 FROM skill_versions"
                " WHERE skill_id = %s AND bundle_sha256 IS NOT NULL",
                (skill_id,),
            )
            return sorted(r["bundle_sha256"] for r in await cur.fetchall())

    async def bundle_used(self, sha256: str) -> bool:
        async with self.pool.connection() as conn:
            return await _bundle_used(conn, sha256)

    async def delete(self, skill_id: int, *, conn: Conn | None = None) -> bool:
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
        """Visible skills, most installed first, then most recently changed. With
        ``text``, those with every word of it as the start of a word in their name,
        tags or description (migration 015): the skill whose command it names
        first, then those with every word in their name, then the rest."""
        sql, params = _search_query(me, groups, admin, text, tier, owner, group, limit, offset)
        async with self.pool.connection() as conn:
            # Never a prepared (generic) plan: in a plan made for the words, the
            # query built from them is a constant, not rebuilt for every row ranked.
            cur = await conn.execute(sql, params, prepare=False)
            return await cur.fetchall()

    async def search_plan(self, **criteria: Any) -> str:
        """How PostgreSQL ran ``search`` with these arguments (EXPLAIN ANALYZE, no
        timings): the proof that a text search reads the index, not every row."""
        sql, params = _search_query(**{"limit": 50, "offset": 0, **criteria})
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}",
                params,
                prepare=False,
            )
            return "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())

    async def install(
        self, agent_id: int, skill: dict[str, Any], *, conn: Conn | None = None
    ) -> None:
        """Install the skill's current version, pinned. Installing it again changes
        nothing (``update_install`` moves a pin)."""
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
            target = await _pin_target(conn, skill["id"])
            if target is None:
                raise SkillGoneError(skill["id"])
            await conn.execute(
                "INSERT INTO skill_installs (agent_id, skill_id, version, checksum)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (agent_id, skill["id"], target["version"], target["checksum"]),
            )

    async def update_install(
        self,
        agent_id: int,
        skill_id: int,
        expected: int | None = None,
        *,
        conn: Conn | None = None,
    ) -> tuple[int, int] | None:
        """Move an install's pin to the skill's current version: (from, to), equal
        when it was there already; None when the skill is not installed in the agent.
        With ``expected``, only if that is the current version (VersionChangedError
        otherwise): the installer gets the version they were shown, not a newer one
        they have not seen."""
        async with using(self.pool, conn) as conn, conn.transaction():
            target = await _pin_target(conn, skill_id)
            if target is None:
                return None
            cur = await conn.execute(
                "SELECT version FROM skill_installs WHERE agent_id = %s AND skill_id = %s"
                " FOR UPDATE",
                (agent_id, skill_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if expected is not None and expected != target["version"]:
                raise VersionChangedError(target["version"])
            if row["version"] != target["version"]:
                await conn.execute(
                    "UPDATE skill_installs SET version = %s, checksum = %s"
                    " WHERE agent_id = %s AND skill_id = %s",
                    (target["version"], target["checksum"], agent_id, skill_id),
                )
            return row["version"], target["version"]

    async def fill_install_checksums(self) -> int:
        """Record the checksum of installs that have none (those pinned by migration
        011, which cannot compute it in SQL); returns how many. The service runs
        this at start, before it serves a manifest."""
        filled = 0
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT i.agent_id, s.command, v.* FROM skill_installs i"
                " JOIN skills s ON s.id = i.skill_id"
                " JOIN skill_versions v ON v.skill_id = i.skill_id AND v.version = i.version"
                " WHERE i.checksum IS NULL FOR UPDATE OF i"
            )
            for row in await cur.fetchall():
                await conn.execute(
                    "UPDATE skill_installs SET checksum = %(checksum)s"
                    " WHERE agent_id = %(agent_id)s AND skill_id = %(skill_id)s",
                    {**row, "checksum": delivery_checksum(row, row["bundle_sha256"])},
                )
                filled += 1
        return filled

    async def uninstall(self, agent_id: int, skill_id: int, *, conn: Conn | None = None) -> bool:
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
        conn: Conn | None = None,
    ) -> list[dict[str, Any]]:
        """An agent's installed skills by command, each with the content of the
        version it pins (``version``, ``checksum``: the install's; ``latest_version``:
        the skill's). With ``visible_to`` (owner, groups, admin) only those its owner
        may still read (a skill made private or moved to another group drops out of
        the agent until it is visible again)."""
        where = ["i.agent_id = %(agent)s"]
        params: dict[str, Any] = {"agent": agent_id}
        if visible_to is not None:
            where.append(VISIBLE)
            params.update(me=visible_to[0], groups=visible_to[1], admin=visible_to[2])
        if skill_id is not None:
            where.append("s.id = %(skill)s")
            params["skill"] = skill_id
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_INSTALLED_COLUMNS} FROM {_INSTALLED_FROM}"
                f" WHERE {' AND '.join(where)} ORDER BY s.command",
                params,
            )
            return await cur.fetchall()
