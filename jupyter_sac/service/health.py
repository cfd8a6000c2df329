"""Health checks for load balancers and Kubernetes probes (docs/operator-guide.md).

``GET api/health`` (liveness) answers 200 whenever this process serves requests:
it asks nothing of PostgreSQL, the object store or the hub, so a dependency that
is away never gets the service restarted. ``GET api/health/ready`` (readiness)
checks them (operations/health.py): 200 when all pass, 503 otherwise.

Neither needs a token. Anonymous callers learn only ready or not ready; an
administrator's token also gets each check's status, latency and error, which
may name hosts, buckets or paths.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .base import BaseHandler
from .operations import health


class HealthHandler(BaseHandler):
    """GET api/health: the process answers."""

    async def prepare(self) -> None:
        # No authentication: a token sent anyway is not checked with the hub, so
        # liveness never depends on it.
        self.check_json_length()

    async def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadinessHandler(BaseHandler):
    """GET api/health/ready: PostgreSQL, the object store and the hub answer."""

    async def prepare(self) -> None:
        self.check_json_length()

    async def caller_is_admin(self) -> bool:
        """Whether the caller's token is an administrator's; False for anyone the
        service cannot identify right now (no token, or the hub or the database
        away): readiness is answered either way, only without its details."""
        if not self.bearer_token() and not self.get_cookie(self.hub_auth.cookie_name):
            return False
        try:
            async with asyncio.timeout(health.CHECK_TIMEOUT):
                await self.authenticate()
            return self.identity.admin
        except Exception:
            self._hub_auth_user_cache = None  # never asked again, synchronously
            return False

    async def get(self) -> None:
        admin, readiness = await asyncio.gather(self.caller_is_admin(), health.readiness(self.ctx))
        body: dict[str, Any] = {"status": "ready" if readiness.ready else "not ready"}
        if admin:
            body["checks"] = {check.name: check.to_json() for check in readiness.checks}
        self.write_json(body, 200 if readiness.ready else 503)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/health", HealthHandler),
        (prefix + "api/health/ready", ReadinessHandler),
    ]
