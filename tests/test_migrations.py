"""Migrations against a real PostgreSQL: fresh, re-run, two processes at once."""

from __future__ import annotations

import asyncio
import importlib
import sys

import psycopg
import pytest

from jupyter_sac.store import list_migrations, migrate

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
