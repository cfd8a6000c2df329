"""``GET /services/sac/metrics``: the service's Prometheus metrics (metrics.py).

Who may scrape: administrators, or any JupyterHub token with ``read:metrics``
(the scope JupyterHub's own /hub/metrics asks for), so one scraper token serves
both.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from ..errors import ApiError
from .base import BaseHandler
from .metrics import AGENTS, EVENT_STREAMS, HITL_PENDING, HITL_WAITING, REGISTRY


def may_scrape(admin: bool, scopes: frozenset[str]) -> bool:
    return admin or "read:metrics" in scopes


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        ident = self.identity
        if not may_scrape(ident.admin, ident.scopes):
            raise ApiError(403, "forbidden", "metrics need an administrator or read:metrics")
        await self._refresh_gauges()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))

    async def _refresh_gauges(self) -> None:
        store = self.ctx.store
        HITL_PENDING.set(await store.hitl.count_pending())
        HITL_WAITING.set(self.ctx.hitl_waiters.waiting())
        EVENT_STREAMS.set(self.ctx.event_bells.streams)
        total = await store.agents.count()
        servers = [server for _, _, server in await self.ctx.hub.named_servers()]
        running = sum(1 for s in servers if s.get("ready"))
        pending = sum(1 for s in servers if not s.get("ready") and s.get("pending"))
        AGENTS.labels("running").set(running)
        AGENTS.labels("pending").set(pending)
        AGENTS.labels("stopped").set(max(total - running - pending, 0))


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [(prefix + "metrics", MetricsHandler)]
