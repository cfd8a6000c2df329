"""What this sandbox is: agent identity, runtime and versions (read once, cached)."""

from __future__ import annotations

import asyncio
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import jupyter_server

from .. import __version__
from ..runtimes.claude import claude_version


@dataclass
class RuntimeInfo:
    runtime: str
    _runtime_version: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def runtime_version(self) -> str | None:
        async with self._lock:
            if self._runtime_version is None:
                self._runtime_version = await claude_version()
            return self._runtime_version

    async def status(self) -> dict[str, Any]:
        return {
            "agent": {
                "user": os.environ.get("JUPYTERHUB_USER"),
                "name": os.environ.get("JUPYTERHUB_SERVER_NAME") or os.environ.get("SAC_AGENT"),
                "display_name": os.environ.get("SAC_AGENT_DISPLAY_NAME"),
                "provider": os.environ.get("SAC_AGENT_PROVIDER"),
                "model": os.environ.get("ANTHROPIC_MODEL"),
            },
            "runtime": {"name": self.runtime, "version": await self.runtime_version()},
            "workspace": os.environ.get("SAC_WORKSPACE"),
            # Where the browser finds the `sac` service's pages: on a host of its own
            # with subdomains, never this server's origin.
            "service_url": os.environ.get("SAC_SERVICE_PUBLIC_URL") or None,
            "versions": {
                "jupyter_sac": __version__,
                "jupyter_server": jupyter_server.__version__,
                "python": platform.python_version(),
            },
        }
