"""Agent spawners: the shared AgentSpawnerMixin, LocalAgentSpawner and KubeAgentSpawner."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kube import KubeAgentSpawner
    from .local import LocalAgentSpawner
    from .mixin import AgentSpawnerMixin, AgentSpawnError

__all__ = ["AgentSpawnError", "AgentSpawnerMixin", "KubeAgentSpawner", "LocalAgentSpawner"]

# Each imported on first use: a local hub need not load the Kubernetes client, and
# the sandbox's launcher (jupyter_sac.spawner.launcher, which imports this package
# first) must not load the hub's spawner, its database models and the store: about
# 0.5 s of CPU and tens of MiB in every sandbox, for nothing it uses.
_HOMES = {
    "AgentSpawnError": ".mixin",
    "AgentSpawnerMixin": ".mixin",
    "KubeAgentSpawner": ".kube",
    "LocalAgentSpawner": ".local",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
