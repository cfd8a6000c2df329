"""Agent spawners: the shared AgentSpawnerMixin and LocalAgentSpawner."""

from .local import LocalAgentSpawner
from .mixin import AgentSpawnerMixin, AgentSpawnError

__all__ = ["AgentSpawnError", "AgentSpawnerMixin", "LocalAgentSpawner"]
