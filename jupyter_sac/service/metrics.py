"""Prometheus metrics of the `sac` service (served by metrics_handler.py at
``GET /services/sac/metrics``).

Counters and histograms are updated where things happen (the credential proxy,
HITL filing and decisions, history ingest, the idle culler); gauges that describe
state (agents by status, pending HITL requests) are read when scraped. Labels
stay low-cardinality: providers, kinds, outcomes — never users or agents.
Operations update them, so this module is plain metric objects, no handler.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
HITL_WAITING = Gauge(
    "sac_hitl_waiting",
    "Sandboxes' long-polls parked in this process, waiting on a HITL decision.",
    registry=REGISTRY,
)
EVENT_STREAMS = Gauge(
    "sac_event_streams",
    "Event streams (GET api/events) open in this process.",
    registry=REGISTRY,
)
SERVICE_LEADER = Gauge(
    "sac_service_leader",
    "1 while this process leads the service (runs the idle culler, HITL expiry, event"
    " pruning, webhook deliveries and the access audit for the installation), else 0.",
    registry=REGISTRY,
)
WAKEUPS_CONNECTED = Gauge(
    "sac_service_wakeups_connected",
    "1 while this process listens for wake-ups from the service's other processes"
    " (PostgreSQL LISTEN), else 0 (waiters then re-read every few seconds).",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "sac_webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered, retry (to be tried again) or failed.",
    ["outcome"],
    registry=REGISTRY,
)
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
MAINTENANCE_REMOVED = Counter(
    "sac_maintenance_removed",
    "What the maintenance removed, by kind: history_events, history_sessions (past"
    " history_retention_days), workspace_files, objects and deleted_agents (of agents"
    " deleted longer than deleted_agent_grace_days ago).",
    ["kind"],
    registry=REGISTRY,
)
MAINTENANCE_RUNS = Counter(
    "sac_maintenance_runs",
    "Maintenance runs (each removes at most one batch of each kind), by outcome:"
    " removed (something), idle (nothing was due) or failed.",
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
