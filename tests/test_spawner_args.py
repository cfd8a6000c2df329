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


def test_jupyterlab_extensions_come_only_from_the_installation() -> None:
    """JupyterLab's extension path and the Jupyter dirs point at the Python
    installation, never the agent's home (tests/test_lab_extensions.py runs it)."""
    import sys

    from jupyter_sac.spawner.mixin import locked_jupyter_env

    args = LocalAgentSpawner().get_args()
    # The plain form: ['…'] would be read as one path string and load nothing.
    assert f"--LabApp.labextensions_path={sys.prefix}/share/jupyter/labextensions" in args
    assert "--LabApp.extra_labextensions_path=[]" in args
    # Nothing can be installed there, so no PyPI extension manager to set up at start.
    assert "--LabApp.extension_manager=readonly" in args
    env = locked_jupyter_env("/usr/local", "/home/sac")
    assert env["JUPYTER_DATA_DIR"] == "/usr/local/share/jupyter"
    assert env["JUPYTER_CONFIG_DIR"] == "/usr/local/etc/jupyter-sac/sandbox"
    assert env["JUPYTER_RUNTIME_DIR"].startswith("/home/sac/")
    assert env["JUPYTERLAB_SETTINGS_DIR"].startswith("/home/sac/")
    assert env["JUPYTERLAB_WORKSPACES_DIR"].startswith("/home/sac/")
    assert env["JUPYTER_PREFER_ENV_PATH"] == env["PYTHONNOUSERSITE"] == "1"
    scrubbed = LocalAgentSpawner.scrub_env({"JUPYTER_PATH": "/home/sac/x", "LANG": "C"})
    assert scrubbed == {"LANG": "C"}
