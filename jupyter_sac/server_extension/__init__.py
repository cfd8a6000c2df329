"""The Jupyter server extension that runs inside each sandbox."""

from .app import SacExtensionApp

__all__ = ["SacExtensionApp"]


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    return [{"module": "jupyter_sac.server_extension", "app": SacExtensionApp}]
