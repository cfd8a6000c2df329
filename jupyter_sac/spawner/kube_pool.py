"""Spare pods for KubeAgentSpawner: the Kubernetes warm pool.

A spare is a pod with the shape of an agent's pod (image, resources, security,
node selection: kube_manifests.warm_pod_manifest) and nobody's identity, whose
pre-importing launcher (launcher.py) waits on its stdin. A start that finds a
spare of its shape takes it: the agent's NetworkPolicy first, then the agent's
labels, then its assignment (environment with its tokens, argv, working
directory, secret files) written to the spare's stdin through ``pods/attach``,
which only the hub's ServiceAccount may use. The assignment thus never touches
a Secret volume (slow to update) or the network (a spare has none: its policy
denies everything), and no other pod can read it.

Spares of a shape exist once an agent of that shape has started (its pod is the
template); the pool keeps ``warm_pods`` spares for each of the
``warm_pod_shapes`` shapes used last, and finds the spares a previous hub left by
their label. This module holds the pool's bookkeeping; the Kubernetes calls are
the spawner's (kube.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .kube_manifests import WARM_LABEL


class SpareAllocator(Protocol):
    """What KubeAgentSpawner asks of whatever keeps its spares: the interface another
    backend implements (kubernetes-sigs/agent-sandbox's SandboxWarmPool and
    SandboxClaim, once a claim can carry its own environment, secrets and an
    existing volume without a cold start: docs/kubernetes.md). The spawner makes
    and deletes spares itself (``refill``); an allocator whose backend makes them
    would do nothing there."""

    shapes: OrderedDict[str, Shape]

    def remember(self, key: str, shape: Shape, max_shapes: int) -> list[str]: ...

    async def claim(
        self, key: str, list_spares: Callable[[str], Awaitable[list[dict[str, Any]]]]
    ) -> dict[str, Any] | None: ...

    def release(self, name: str) -> None: ...

    def refill_soon(self, key: str, refill: Callable[[], Awaitable[None]]) -> None: ...


@dataclass
class Shape:
    """What spares of one shape are made from: the spare pod (with a placeholder
    name and claim) and, for a PVC workspace, its claim."""

    pod: dict[str, Any]
    pvc: dict[str, Any] | None


def spare_name() -> str:
    return f"sac-warm-{secrets.token_hex(5)}"


class WarmPool:
    """The spares of one namespace, in one hub process (the default SpareAllocator)."""

    _pools: ClassVar[dict[str, WarmPool]] = {}

    @classmethod
    def for_namespace(cls, namespace: str) -> WarmPool:
        pool = cls._pools.get(namespace)
        if pool is None:
            pool = cls._pools[namespace] = cls(namespace)
        return pool

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.shapes: OrderedDict[str, Shape] = OrderedDict()
        # Spares handed to a start, until their labels say so.
        self.claimed: set[str] = set()
        self.lock = asyncio.Lock()
        self._refills: dict[str, asyncio.Task[None]] = {}

    def remember(self, key: str, shape: Shape, max_shapes: int) -> list[str]:
        """``key``'s shape, used now; the keys of shapes no longer kept (their spares
        are to be deleted)."""
        self.shapes[key] = shape
        self.shapes.move_to_end(key)
        dropped = []
        while len(self.shapes) > max(1, max_shapes):
            old, _ = self.shapes.popitem(last=False)
            dropped.append(old)
        return dropped

    @staticmethod
    def usable(pod: dict[str, Any]) -> bool:
        """A spare that can take an assignment now: running, with an address."""
        status = pod.get("status") or {}
        return (
            "deletionTimestamp" not in (pod.get("metadata") or {})
            and status.get("phase") == "Running"
            and bool(status.get("podIP"))
        )

    async def claim(
        self, key: str, list_spares: Callable[[str], Awaitable[list[dict[str, Any]]]]
    ) -> dict[str, Any] | None:
        """A running spare of ``key``'s shape for one start (the oldest), or None."""
        async with self.lock:
            spares = await list_spares(key)
            spares.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
            for pod in spares:
                name = pod["metadata"]["name"]
                if name not in self.claimed and self.usable(pod):
                    self.claimed.add(name)
                    return pod
        return None

    def release(self, name: str) -> None:
        self.claimed.discard(name)

    def refill_soon(self, key: str, refill: Callable[[], Awaitable[None]]) -> None:
        """Top ``key``'s spares up in the background (one refill per shape at a time)."""
        running = self._refills.get(key)
        if running is not None and not running.done():
            return
        self._refills[key] = asyncio.ensure_future(refill())

    async def close(self) -> None:
        for task in self._refills.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def spare_selector(key: str | None = None) -> str:
    return f"{WARM_LABEL}={key}" if key else WARM_LABEL
