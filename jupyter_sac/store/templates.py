"""Agent templates and their immutable version snapshots (docs/templates.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from .tx import Conn, Pool, using


class TemplateExistsError(Exception):
    pass


@dataclass(frozen=True)
class Template:
    id: int
    scope: str  # organisation | personal
    owner: str  # '' for organisation templates
    name: str
    version: int
    definition: dict[str, Any]
    builtin: bool
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


_COLUMNS = (
    "id, scope, owner, name, version, definition, builtin, created_by, created_at,"
    " updated_by, updated_at"
)


class Templates:
    def __init__(self, pool: Pool):
        self.pool = pool

    async def visible_to(self, user: str, conn: Conn | None = None) -> list[Template]:
        """Organisation templates and ``user``'s personal ones, by scope and name."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM templates WHERE scope = 'organisation' OR owner = %s"
                " ORDER BY scope, name",
                (user,),
            )
            rows = await cur.fetchall()
        return [Template(**r) for r in rows]

    async def get(
        self, template_id: int, *, conn: Conn | None = None, lock: bool = False
    ) -> Template | None:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM templates WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                (template_id,),
            )
            row = await cur.fetchone()
        return Template(**row) if row else None

    async def by_name(
        self, scope: str, owner: str, name: str, conn: Conn | None = None
    ) -> Template | None:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"SELECT {_COLUMNS} FROM templates WHERE scope = %s AND owner = %s AND name = %s",
                (scope, owner, name),
            )
            row = await cur.fetchone()
        return Template(**row) if row else None

    async def count_personal(self, owner: str, conn: Conn | None = None) -> int:
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT count(*) AS n FROM templates WHERE scope = 'personal' AND owner = %s",
                (owner,),
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def create(
        self,
        *,
        scope: str,
        owner: str,
        name: str,
        definition: dict[str, Any],
        by: str,
        builtin: bool = False,
        conn: Conn | None = None,
    ) -> Template:
        """A new template at version 1, with its first snapshot."""
        async with using(self.pool, conn) as c:
            try:
                async with c.transaction():
                    cur = await c.execute(
                        "INSERT INTO templates (scope, owner, name, definition, builtin,"
                        " created_by, updated_by) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        f" RETURNING {_COLUMNS}",
                        (scope, owner, name, Jsonb(definition), builtin, by, by),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    template = Template(**row)
                    await self._snapshot(c, template)
            except UniqueViolation:
                raise TemplateExistsError(name) from None
        return template

    async def update(
        self,
        template_id: int,
        *,
        definition: dict[str, Any],
        by: str,
        name: str | None = None,
        conn: Conn | None = None,
    ) -> Template:
        """The next version of a template (its definition and maybe its name)."""
        async with using(self.pool, conn) as c:
            try:
                async with c.transaction():
                    cur = await c.execute(
                        "UPDATE templates SET version = version + 1, definition = %s,"
                        " name = coalesce(%s, name), updated_by = %s, updated_at = now()"
                        f" WHERE id = %s RETURNING {_COLUMNS}",
                        (Jsonb(definition), name, by, template_id),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    template = Template(**row)
                    await self._snapshot(c, template)
            except UniqueViolation:
                raise TemplateExistsError(name) from None
        return template

    async def _snapshot(self, conn: Conn, template: Template) -> None:
        await conn.execute(
            "INSERT INTO template_versions (template_id, version, definition, created_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (template.id, template.version, Jsonb(template.definition), template.updated_by),
        )

    async def delete(self, template_id: int, conn: Conn | None = None) -> Template | None:
        """Remove a template (its snapshots stay: agents made from it still start)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                f"DELETE FROM templates WHERE id = %s RETURNING {_COLUMNS}", (template_id,)
            )
            row = await cur.fetchone()
        return Template(**row) if row else None

    async def version(
        self, template_id: int, version: int, conn: Conn | None = None
    ) -> dict[str, Any] | None:
        """The definition of one version (kept after the template is deleted)."""
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT definition FROM template_versions WHERE template_id = %s AND version = %s",
                (template_id, version),
            )
            row = await cur.fetchone()
        return dict(row["definition"]) if row else None

    async def latest_versions(
        self, ids: list[int], conn: Conn | None = None
    ) -> dict[int, tuple[str, int]]:
        """(name, version) of the templates ``ids`` that still exist."""
        if not ids:
            return {}
        async with using(self.pool, conn) as c:
            cur = await c.execute(
                "SELECT id, name, version FROM templates WHERE id = ANY(%s)", (ids,)
            )
            rows = await cur.fetchall()
        return {r["id"]: (r["name"], r["version"]) for r in rows}
