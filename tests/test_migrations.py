"""Migrations against a real PostgreSQL: fresh, re-run, two processes at once."""

from __future__ import annotations

import asyncio
import importlib
import sys

import psycopg
import pytest

from jupyter_sac.rules.skills import delivery_checksum
from jupyter_sac.store import Store, list_migrations, migrate

ALL_VERSIONS = [m.version for m in list_migrations()]


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _recorded(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT version FROM schema_migrations ORDER BY version"
            ).fetchall()
        ]


@pytest.mark.asyncio
async def test_fresh_database_gets_every_migration(database_url: str) -> None:
    applied = await migrate(database_url)
    assert applied == ALL_VERSIONS
    assert {
        "agents",
        "settings_overrides",
        "agent_tokens",
        "usage_daily",
        "conversation_events",
        "audit_log",
        "schema_migrations",
    } <= _tables(database_url)
    with psycopg.connect(database_url) as conn:
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'conversation_events'"
            )
        }
    # no TimescaleDB here: a plain table with a time index
    assert "conversation_events_ts" in indexes


@pytest.mark.asyncio
async def test_rerun_applies_nothing(database_url: str) -> None:
    await migrate(database_url)
    assert await migrate(database_url) == []
    assert _recorded(database_url) == ALL_VERSIONS


@pytest.mark.asyncio
async def test_two_processes_at_once(database_url: str) -> None:
    code = (
        "import asyncio, sys; from jupyter_sac.store import migrate;"
        " print(asyncio.run(migrate(sys.argv[1])))"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            database_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outputs = sorted(out.decode().strip() for out, _ in results)
    # exactly one of them applied everything, the other found it done
    assert outputs == sorted(["[]", str(ALL_VERSIONS)])
    assert _recorded(database_url) == ALL_VERSIONS


@pytest.mark.asyncio
async def test_failed_migration_leaves_nothing_half_applied(database_url: str, monkeypatch) -> None:
    migrate_module = importlib.import_module("jupyter_sac.store.migrate")
    from jupyter_sac.store.migrate import Migration

    good = list_migrations()
    bad = Migration(999, "broken", "CREATE TABLE half_done (id int); SELECT * FROM nope;")
    monkeypatch.setattr(migrate_module, "list_migrations", lambda: [*good, bad])
    with pytest.raises(psycopg.errors.UndefinedTable):
        await migrate_module.migrate(database_url)
    assert "half_done" not in _tables(database_url)
    assert _recorded(database_url) == ALL_VERSIONS


@pytest.mark.asyncio
async def test_upgrade_pins_existing_installs_at_their_current_version(
    database_url: str, monkeypatch
) -> None:
    """A database from before pinned installs: each skill's current content becomes
    its first kept version, each install is pinned there, and the service's start
    records the checksum the sandbox will verify."""
    migrate_module = importlib.import_module("jupyter_sac.store.migrate")
    every = list_migrations()
    before = [m for m in every if m.version < 11]
    monkeypatch.setattr(migrate_module, "list_migrations", lambda: before)
    await migrate_module.migrate(database_url)
    with psycopg.connect(database_url) as conn:
        agent = conn.execute(
            "INSERT INTO agents (owner, slug, display_name, provider, model)"
            " VALUES ('bob', 'old', 'old', 'anthropic', 'm') RETURNING id"
        ).fetchone()[0]
        skill = conn.execute(
            "INSERT INTO skills (owner, command, title, description, body, parameters, prompt,"
            " tags, visibility, version, checksum, bundle_sha256, bundle_files, bundle_size)"
            " VALUES ('ann', 'legacy', 'Legacy', 'Old one.', 'Do it.',"
            ' \'[{"name": "file", "type": "text", "required": true}]\', \'On {{file}}.\','
            " '[\"x\"]', 'public', 7, 'c7', %s, '[{\"name\": \"a.txt\", \"size\": 1}]', 1)"
            " RETURNING id",
            ("d" * 64,),
        ).fetchone()[0]
        conn.execute("INSERT INTO skill_installs (agent_id, skill_id) VALUES (%s, %s)",
                     (agent, skill))  # fmt: skip

    monkeypatch.setattr(migrate_module, "list_migrations", lambda: every)
    assert await migrate_module.migrate(database_url) == [
        m.version for m in every if m.version >= 11
    ]
    store = await Store.open(database_url)
    try:
        assert await store.skills.fill_install_checksums() == 1
        assert await store.skills.fill_install_checksums() == 0
        [row] = await store.skills.installed(agent)
        assert (row["version"], row["latest_version"], row["body"]) == (7, 7, "Do it.")
        assert row["bundle_sha256"] == "d" * 64 and row["parameters"][0]["name"] == "file"
        assert row["checksum"] == delivery_checksum(row, "d" * 64)
        assert await store.skills.bundle_used("d" * 64)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_upgrade_makes_the_skills_already_there_searchable(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database from before the search index (migration 015) keeps its skills,
    and the marketplace search finds them by their words once it is migrated."""
    migrate_module = importlib.import_module("jupyter_sac.store.migrate")
    every = list_migrations()
    before = [m for m in every if m.version < 15]
    monkeypatch.setattr(migrate_module, "list_migrations", lambda: before)
    await migrate_module.migrate(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO skills (owner, command, title, description, body, tags, visibility,"
            " checksum) VALUES ('ann', 'legacy-report', 'Legacy report',"
            " 'Writes a weekly summary.', 'Do it.', '[\"finance\"]', 'public', 'c')"
        )

    monkeypatch.setattr(migrate_module, "list_migrations", lambda: every)
    assert 15 in await migrate_module.migrate(database_url)
    store = await Store.open(database_url)
    try:
        for text in ("legacy", "weekly summ", "FINANCE", "/legacy-report"):
            rows = await store.skills.search(
                me="bob", groups=[], admin=False, text=text, tier=None, owner=None,
                group=None, limit=10, offset=0,
            )  # fmt: skip
            assert [r["command"] for r in rows] == ["legacy-report"], text
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_upgrade_dates_the_deletion_of_agents_that_left_workspace_files(
    database_url: str, monkeypatch
) -> None:
    """Agents deleted before deletions were recorded left their workspace behind:
    the upgrade records them (named from their usage when it can), so that the
    maintenance removes their files once the grace period from the upgrade is over."""
    migrate_module = importlib.import_module("jupyter_sac.store.migrate")
    every = list_migrations()
    monkeypatch.setattr(
        migrate_module, "list_migrations", lambda: [m for m in every if m.version < 22]
    )
    await migrate_module.migrate(database_url)
    with psycopg.connect(database_url) as conn:
        live = conn.execute(
            "INSERT INTO agents (owner, slug, display_name, provider, model)"
            " VALUES ('bob', 'live', 'live', 'anthropic', 'm') RETURNING id"
        ).fetchone()[0]
        for space in (f"agent:{live}", "agent:9001", "agent:9002", "public", "group:x"):
            conn.execute(
                "INSERT INTO workspace_files (space, path, size, sha256, mtime, written_by)"
                " VALUES (%s, 'f', 1, 'x', now(), 'bob')",
                (space,),
            )
        conn.execute(
            "INSERT INTO usage_daily (agent_id, owner, agent_slug, day) VALUES (9001, 'ann', 'gone', now())"
        )
    monkeypatch.setattr(migrate_module, "list_migrations", lambda: every)
    await migrate_module.migrate(database_url)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT agent_id, owner, slug, deleted_at > now() - interval '1 minute'"
            " FROM deleted_agents ORDER BY agent_id"
        ).fetchall()
    assert rows == [(9001, "ann", "gone", True), (9002, "", "", True)]
