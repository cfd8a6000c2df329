"""``*.localhost`` resolves to the loopback in this process, as browsers resolve it.

`sac up` serves the hub on ``localhost``, the `sac` service on
``sac--service.localhost`` and each user on ``<user>.localhost``. Chromium
resolves those names itself; Python's resolver asks the system, which usually
knows only ``localhost``. Tests, benchmarks and notebooks run on the host (not
in a sandbox, whose /etc/hosts names them) call ``resolve_localhost()`` first;
it covers everything that resolves through ``socket.getaddrinfo`` (httpx,
tornado's HTTP and websocket clients, urllib).
"""

from __future__ import annotations

import socket
from typing import Any

_original = socket.getaddrinfo


def _is_localhost(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if _is_localhost(host):
        host = "127.0.0.1"
    return _original(host, *args, **kwargs)


def resolve_localhost() -> None:
    """Resolve ``localhost`` and ``*.localhost`` to 127.0.0.1 in this process (idempotent)."""
    socket.getaddrinfo = _getaddrinfo
