"""Agent spawners: the shared AgentSpawnerMixin, LocalAgentSpawner and KubeAgentSpawner."""

from typing import Any

from .local import LocalAgentSpawner
from .mixin import AgentSpawnerMixin, AgentSpawnError

__all__ = ["AgentSpawnError", "AgentSpawnerMixin", "KubeAgentSpawner", "LocalAgentSpawner"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a local hub need not load the Kubernetes client.
    if name == "KubeAgentSpawner":
        from .kube import KubeAgentSpawner

        return KubeAgentSpawner
    raise AttributeError(name)
