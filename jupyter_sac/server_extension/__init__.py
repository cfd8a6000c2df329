"""The Jupyter server extension that runs inside each sandbox."""

from .app import SERVER_SOCKET_FD_ENV, SacExtensionApp

__all__ = ["SERVER_SOCKET_FD_ENV", "SacExtensionApp"]


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    return [{"module": "jupyter_sac.server_extension", "app": SacExtensionApp}]
