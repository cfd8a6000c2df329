"""jupyter-sac: Sandbox Agent Cluster for Jupyter."""

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    from .server_extension import SacExtensionApp

    return [{"module": "jupyter_sac.server_extension", "app": SacExtensionApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    # For `jupyter labextension develop` and tools that find extensions through
    # the package; wheels install it as shared data (hatch_build.py).
    return [{"src": "labextension", "dest": "jupyter-sac"}]
