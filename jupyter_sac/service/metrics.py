"""Prometheus metrics of the `sac` service: ``GET /services/sac/metrics``.

Counters and histograms are updated where things happen (the credential proxy,
HITL filing and decisions, history ingest, the idle culler); gauges that describe
state (agents by status, pending HITL requests) are read when scraped. Labels
stay low-cardinality: providers, kinds, outcomes — never users or agents.
Who may scrape: administrators, or any JupyterHub token with ``read:metrics``
(the scope JupyterHub's own /hub/metrics asks for), so one scraper token serves
both.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from ..errors import ApiError
from .base import BaseHandler
from .openapi import _op, _resp

REGISTRY = CollectorRegistry(auto_describe=True)

AGENTS = Gauge("sac_agents", "Agents by server status.", ["status"], registry=REGISTRY)
AGENTS_CULLED = Counter(
    "sac_agents_culled", "Agents stopped by the idle culler.", registry=REGISTRY
)
PROXY_REQUESTS = Counter(
    "sac_proxy_requests",
    "Model API calls through the credential proxy, by provider and HTTP status class.",
    ["provider", "status"],
    registry=REGISTRY,
)
PROXY_TOKENS = Counter(
    "sac_proxy_tokens",
    "Model tokens metered by the credential proxy.",
    ["provider", "kind"],
    registry=REGISTRY,
)
PROXY_DURATION = Histogram(
    "sac_proxy_request_duration_seconds",
    "Time from a proxied call's arrival to the end of its (streamed) answer.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
HITL_PENDING = Gauge("sac_hitl_pending", "HITL requests waiting for a decision.", registry=REGISTRY)
HITL_REQUESTS = Counter(
    "sac_hitl_requests", "HITL requests filed, by kind.", ["kind"], registry=REGISTRY
)
HITL_DECISIONS = Counter(
    "sac_hitl_decisions",
    "HITL requests resolved: allow, deny (by a person), or timeout (the default applied).",
    ["decision"],
    registry=REGISTRY,
)
HITL_LATENCY = Histogram(
    "sac_hitl_decision_latency_seconds",
    "From a HITL request being filed to its decision by a person.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
HISTORY_EVENTS = Counter(
    "sac_history_events_ingested",
    "Conversation events stored by history ingest (repeats not counted).",
    registry=REGISTRY,
)
HISTORY_BATCHES = Counter(
    "sac_history_ingest_batches",
    "History ingest batches, by outcome (stored, rejected).",
    ["outcome"],
    registry=REGISTRY,
)

TOKEN_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
}


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def observe_proxy(provider: str, status: int, started: float, usage: Any | None) -> None:
    PROXY_REQUESTS.labels(provider, status_class(status)).inc()
    PROXY_DURATION.labels(provider).observe(time.monotonic() - started)
    if usage is not None:
        for field, kind in TOKEN_KINDS.items():
            value = getattr(usage, field, 0)
            if value:
                PROXY_TOKENS.labels(provider, kind).inc(value)


def observe_decision(decision: str, created_at: datetime | None = None) -> None:
    HITL_DECISIONS.labels(decision).inc()
    if created_at is not None:
        HITL_LATENCY.observe(max((datetime.now(UTC) - created_at).total_seconds(), 0))


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
        store = self.sac.store
        HITL_PENDING.set(await store.hitl.count_pending())
        total = await store.agents.count()
        servers = [server for _, _, server in await self.sac.hub.named_servers()]
        running = sum(1 for s in servers if s.get("ready"))
        pending = sum(1 for s in servers if not s.get("ready") and s.get("pending"))
        AGENTS.labels("running").set(running)
        AGENTS.labels("pending").set(pending)
        AGENTS.labels("stopped").set(max(total - running - pending, 0))


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [(prefix + "metrics", MetricsHandler)]


def openapi_paths() -> dict[str, Any]:
    return {
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format); admins or a token with read:metrics",
                {"200": _resp("metrics")},
                403,
            )
        }
    }
