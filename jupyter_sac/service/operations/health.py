"""Readiness: whether this process can serve requests that need its dependencies.

Three checks run at once, each bounded by a short timeout so that a dependency
that hangs (a paused PostgreSQL, a hub that accepts connections and never
answers) fails its check quickly instead of holding the probe past the load
balancer's own timeout: PostgreSQL (one trivial query), the object store (one
cheap call: LocalStore's folder, S3's head_bucket) and the hub's API (its root).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .context import ServiceContext

# Seconds each check may take: well under the few seconds probes usually allow
# (Kubernetes' default timeoutSeconds is 1, and charts raise it to a few).
CHECK_TIMEOUT = 3.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    # Why it failed (None when it passed): the exception's type and message, shown
    # to administrators only (it may name hosts, buckets or paths).
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "failed",
            "latency_ms": round(self.latency_ms, 1),
            "error": self.error,
        }


@dataclass(frozen=True)
class Readiness:
    checks: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)


async def _timed(name: str, check: Callable[[], Awaitable[None]], timeout: float) -> CheckResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        error: str | None = f"no answer within {timeout:g} s"
    except Exception as e:  # any failure of a dependency is the check's answer
        error = f"{type(e).__name__}: {e}"[:500]
    else:
        error = None
    return CheckResult(name, error is None, (time.monotonic() - started) * 1000, error)


async def readiness(ctx: ServiceContext, timeout: float = CHECK_TIMEOUT) -> Readiness:
    """Check PostgreSQL, the object store and the hub's API, concurrently."""
    results = await asyncio.gather(
        _timed("database", lambda: ctx.store.ping(timeout), timeout),
        _timed("object_store", ctx.objects.check, timeout),
        _timed("hub", ctx.hub.ping, timeout),
    )
    return Readiness(tuple(results))
