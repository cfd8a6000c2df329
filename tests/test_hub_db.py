"""The embedded hub's database commits without waiting for the disk (write-ahead
log, synchronous=NORMAL): several commits make each agent start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from jupyterhub import orm
from sqlalchemy import text

from jupyter_sac.hub_db import hub_db_kwargs


def test_the_hub_opens_its_database_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "jupyterhub.sqlite")
    db = orm.new_session_factory("sqlite:///" + path, **hub_db_kwargs(path))()
    db.add(orm.User(name="ann"))
    db.commit()
    assert db.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert db.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    assert db.execute(text("PRAGMA foreign_keys")).scalar() == 1, "JupyterHub's own pragma"
    assert [u.name for u in db.query(orm.User)] == ["ann"]
    db.close()


@pytest.mark.stack
def test_sac_up_runs_the_hub_on_a_write_ahead_log(stack: dict) -> None:
    with sqlite3.connect(stack["data_dir"] / "jupyterhub.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
