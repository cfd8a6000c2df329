"""Prometheus metrics of the `sac` service: the exposition parses with
prometheus_client's own parser, counts move with activity, and only admins or
read:metrics tokens may scrape."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from helpers import HubApi, model_agent, run_in_terminal, running_agent
from prometheus_client.parser import text_string_to_metric_families

from jupyter_sac.client import Client
from jupyter_sac.service.metrics_handler import may_scrape
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def scrape(stack: dict, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(stack["service_url"] + "metrics",
                     headers={"Authorization": f"token {token}"}, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(resp.text))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    # A family with no samples yet (a labelled counter never used) is listed too.
    samples.update({(f"family:{family.name}", ()): 0.0 for family in families})
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_activity(stack: dict, fake: str) -> None:
    admin: HubApi = stack["admin"]
    before = scrape(stack, admin.token)
    for name in ("sac_agents", "sac_hitl_pending", "sac_hitl_waiting", "sac_proxy_requests", "sac_proxy_tokens",
                 "sac_proxy_request_duration_seconds", "sac_hitl_requests", "sac_hitl_decisions",
                 "sac_hitl_decision_latency_seconds", "sac_history_events_ingested",
                 "sac_history_ingest_batches", "sac_agents_culled"):  # fmt: skip
        assert (f"family:{name}", ()) in before, name

    user = f"met{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "measured", **model_agent(fake)) as hub:
        running = scrape(stack, admin.token)
        assert value(running, "sac_agents", status="running") >= 1
        # One chat turn: its model calls go through the proxy and are metered.
        httpx.post(fake + "/_fake/script", json={"replies": ["Measured."]})
        with Client(url=stack["url"], token=hub.token) as client:
            assert client.agent("measured").ask("hi").text == "Measured."
        calls = len(httpx.get(fake + "/_fake/requests").json()["requests"])
        after = scrape(stack, admin.token)
        grew = value(after, "sac_proxy_requests_total", provider="custom", status="2xx") - value(
            before, "sac_proxy_requests_total", provider="custom", status="2xx"
        )
        assert grew == calls >= 1
        # The tokens counted are the ones the proxy recorded for the agent.
        totals = hub.sac("GET", f"users/{user}/agents/measured/usage").json()["totals"]
        for field, kind in (("input_tokens", "input"), ("output_tokens", "output")):
            moved = value(after, "sac_proxy_tokens_total", provider="custom", kind=kind) - value(
                before, "sac_proxy_tokens_total", provider="custom", kind=kind
            )
            assert moved == totals[field] > 0, field
        assert value(after, "sac_proxy_request_duration_seconds_count", provider="custom") >= calls

        # The turn's transcript reaches history ingest (uploaded shortly after).
        poll_until(
            lambda: value(scrape(stack, admin.token), "sac_history_events_ingested_total")
            > value(before, "sac_history_events_ingested_total"),
            60, "history events counted",
        )  # fmt: skip
        assert value(scrape(stack, admin.token), "sac_history_ingest_batches_total",
                     outcome="stored") > value(before, "sac_history_ingest_batches_total",
                                               outcome="stored")  # fmt: skip

        # A HITL request filed and decided: counted, its latency observed, not pending.
        token = asyncio.run(
            run_in_terminal(stack["url"], hub.token, user, "measured", "echo $SAC_AGENT_TOKEN")
        )
        filed = httpx.post(stack["service_url"] + "api/hitl/requests",
                           headers={"Authorization": f"Bearer {token}"},
                           json={"kind": "tool", "tool": "Bash", "input": {"command": "ls"}})  # fmt: skip
        assert filed.status_code == 201, filed.text
        waiting = scrape(stack, admin.token)
        assert value(waiting, "sac_hitl_pending") >= 1
        decided = hub.sac("POST", f"hitl/requests/{filed.json()['id']}/decision",
                          json={"decision": "deny"})  # fmt: skip
        assert decided.status_code == 200, decided.text
        done = scrape(stack, admin.token)
        for name, labels in (("sac_hitl_requests_total", {"kind": "tool"}),
                             ("sac_hitl_decisions_total", {"decision": "deny"}),
                             ("sac_hitl_decision_latency_seconds_count", {})):  # fmt: skip
            assert value(done, name, **labels) - value(before, name, **labels) >= 1, name
        assert value(done, "sac_hitl_pending") == value(waiting, "sac_hitl_pending") - 1


def test_who_may_scrape(stack: dict, new_user: Any) -> None:
    admin: HubApi = stack["admin"]
    _, someone = new_user("nometrics")
    refused = httpx.get(stack["service_url"] + "metrics",
                        headers={"Authorization": f"token {someone.token}"}, timeout=30)  # fmt: skip
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    anonymous = httpx.get(stack["service_url"] + "metrics", timeout=30)
    assert anonymous.status_code in (401, 403)
    # A scraper token: only read:metrics (the scope JupyterHub's /hub/metrics asks for).
    made = admin.hub("POST", "users/admin/tokens",
                     json={"scopes": ["read:metrics", "access:services!service=sac"],
                           "note": "prometheus"})  # fmt: skip
    assert made.status_code == 201, made.text
    assert ("family:sac_agents", ()) in scrape(stack, made.json()["token"])
    assert may_scrape(True, frozenset()) and not may_scrape(False, frozenset({"read:users"}))
