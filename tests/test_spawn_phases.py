"""A start's steps and their durations, as the hub log records them (bench/spawn.py
reads them back to show where an agent's start goes)."""

from __future__ import annotations

from jupyter_sac.spawner.phases import SpawnPhases, parse_log_line


def test_each_step_is_timed_from_where_the_previous_one_ended() -> None:
    phases = SpawnPhases()
    for name in ("prepare", "sandbox", "server"):
        phases.mark(name)
    phases.mark("sandbox")  # a step met again adds to its time
    record = phases.record()
    assert list(record) == ["started_at", "ended_at", "prepare", "sandbox", "server"]
    assert all(record[name] >= 0 for name in ("prepare", "sandbox", "server"))
    assert record["ended_at"] >= record["started_at"]
    assert abs(phases.elapsed() - (record["ended_at"] - record["started_at"])) < 1e-3


def test_the_log_line_reads_back() -> None:
    phases = SpawnPhases()
    phases.mark("prepare")
    line = "[I 2026-12-07 00:41:07.835 JupyterHub local:501] " + phases.log_line("ann:box")
    assert parse_log_line(line) == ("ann:box", phases.record())
    assert parse_log_line("[I JupyterHub] Agent ready in 0.4 s") is None
