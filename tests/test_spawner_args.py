"""A spawner's command line is the same at every start of the same agent.

JupyterHub keeps one spawner object per named server across stops and starts,
and Spawner.get_args returns the `args` trait itself: appending to it would add
the same option again at each start (and a repeated
--ServerApp.terminado_settings stops the server from starting).
"""

from __future__ import annotations

from jupyter_sac.spawner import LocalAgentSpawner


def test_local_spawner_args_do_not_grow() -> None:
    spawner = LocalAgentSpawner()
    first = spawner.get_args()
    assert spawner.get_args() == first
    assert spawner.args == []
