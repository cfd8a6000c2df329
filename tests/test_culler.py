"""Idle culling against a stack whose culler runs every half second: idle agents
stop after their idle_timeout; never while a HITL request is pending or a chat
turn runs; never with idle_timeout 0."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, allow_all, model_agent, run_in_terminal, server_url

from jupyter_sac.service.culler import idle_verdict
from sac_testing.stack import embedded_stack, poll_until

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def culling_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("sac-cull")
    config = workdir / "cull.py"
    config.write_text("c.SacService.cull_interval = 0.5\n")
    with embedded_stack(workdir, ADMIN_PASSWORD, extra_config=config) as running:
        yield {"url": running.url, "service_url": running.service_url,
               "admin": HubApi(running.url, running.admin_token, running.harness_token)}  # fmt: skip


def culler(admin: HubApi) -> dict[str, Any]:
    resp = admin.sac("GET", "culler")
    assert resp.status_code == 200, resp.text
    return resp.json()


def running(admin: HubApi, user: str, slug: str) -> bool:
    server = admin.server(user, slug) or {}
    return bool(server.get("ready"))


def one_second(hub: HubApi, user: str, slug: str) -> None:
    resp = hub.sac("PATCH", f"users/{user}/agents/{slug}", json={"overrides": {"idle_timeout": 1}})
    assert resp.status_code == 200, resp.text


def kept_because(admin: HubApi, key: str, passes: int = 3) -> str:
    """Why the culler kept ``key``, once it has made ``passes`` more passes."""
    start = culler(admin)["passes"]
    status = poll_until(
        lambda: (s := culler(admin))["passes"] >= start + passes and s, 30, "culler passes"
    )
    assert key in status["kept"], status
    return status["kept"][key]


def test_idle_agents_stop_but_not_while_waiting_on_a_human_or_working(
    culling_stack: dict[str, Any], fake: str
) -> None:
    admin: HubApi = culling_stack["admin"]
    user = f"idle{uuid.uuid4().hex[:6]}"
    hub = admin.create_user(user)
    # The user's agents never idle out, unless an agent asks for less (1 s).
    put = admin.sac("PUT", f"users/{user}/settings", json={"idle_timeout": 0})
    assert put.status_code == 200, put.text
    # Set up with an hour to spare; each agent drops to 1 s once its case is in place.
    hour = {"overrides": {"idle_timeout": 3600}}
    for slug, fields in (
        ("forever", {}),
        ("waiting", hour),
        ("working", {**hour, **model_agent(fake)}),
    ):
        created = hub.sac("POST", "agents", json={"slug": slug, "api_key": "sk-unused-key",
                                                  **fields})  # fmt: skip
        assert created.status_code == 201, created.text
    # "waiting" files a HITL request before anything else can cull it.
    hub.start(user, "waiting")
    token = asyncio.run(
        run_in_terminal(culling_stack["url"], hub.token, user, "waiting", "echo $SAC_AGENT_TOKEN")
    )
    filed = httpx.post(
        culling_stack["service_url"] + "api/hitl/requests",
        headers={"Authorization": f"Bearer {token}"},
        json={"kind": "tool", "tool": "Bash", "input": {"command": "ls"}},
    )
    assert filed.status_code == 201, filed.text
    one_second(hub, user, "waiting")
    assert "HITL request(s) pending" in kept_because(admin, f"{user}/waiting")
    assert running(admin, user, "waiting")

    # "working" runs a long chat turn (its tool sleeps): kept while it runs.
    hub.start(user, "working")
    allow_all(hub, user, "working")
    httpx.post(fake + "/_fake/script", json={"replies": [
        {"tool_use": {"name": "Bash", "input": {"command": "echo busy && sleep 127"}}},
        "done"]})  # fmt: skip
    base = server_url(culling_stack["url"], user, "working") + "sac/api/"
    auth = {"Authorization": f"token {hub.token}"}
    turn = httpx.post(base + "chat", json={"message": "sleep"}, headers=auth, timeout=30)
    assert turn.status_code == 202, turn.text
    sid = turn.json()["session_id"]
    one_second(hub, user, "working")
    poll_until(
        lambda: culler(admin)["kept"].get(f"{user}/working") == "a chat turn is running",
        60, "the running turn seen by the culler",
    )  # fmt: skip
    why = kept_because(admin, f"{user}/working")
    events = httpx.get(base + f"chat/sessions/{sid}", headers=auth, timeout=30).json()["events"]
    assert why == "a chat turn is running", [
        (e["type"], e.get("text") or e.get("name") or e.get("content") or e.get("message"))
        for e in events
    ]

    # idle_timeout 0: never.
    hub.start(user, "forever")
    assert kept_because(admin, f"{user}/forever") == "no idle timeout"

    # The human answers, the turn is cancelled: both agents go idle and are stopped.
    assert hub.sac("POST", f"hitl/requests/{filed.json()['id']}/decision",
                   json={"decision": "deny"}).status_code == 200  # fmt: skip
    assert httpx.post(base + f"chat/sessions/{sid}/cancel", headers=auth, timeout=60).json()[
        "cancelled"
    ]
    for slug in ("waiting", "working"):
        poll_until(lambda s=slug: not running(admin, user, s), 60, f"{slug} culled")
    culled = {c["agent"]: c["reason"] for c in culler(admin)["culled"]}
    assert culled[f"{user}/waiting"].startswith("idle for")
    assert f"{user}/working" in culled
    # ... and each stop is in the audit log, by the service.
    log = admin.sac("GET", "audit", params={"action": "agent.cull", "user": user}).json()
    assert sorted(e["target"] for e in log["entries"]) == ["waiting", "working"]
    assert {e["actor"] for e in log["entries"]} == {"sac-service"}
    assert running(admin, user, "forever")
    # A culled agent is only stopped: it starts again.
    one = hub.sac(
        "PATCH", f"users/{user}/agents/waiting", json={"overrides": {"idle_timeout": 3600}}
    )
    assert one.status_code == 200, one.text
    hub.start(user, "waiting")
    assert running(admin, user, "waiting")
    for slug in ("forever", "waiting", "working"):
        assert hub.sac("DELETE", f"users/{user}/agents/{slug}").status_code == 204


def test_non_admins_cannot_read_the_culler(culling_stack: dict[str, Any]) -> None:
    admin: HubApi = culling_stack["admin"]
    someone = admin.create_user(f"nc{uuid.uuid4().hex[:6]}")
    resp = someone.sac("GET", "culler")
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"


def test_the_rule() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    old = now - timedelta(hours=2)
    quiet = {"busy": False, "chat_turns_running": 0, "hitl_waiting": 0,
             "last_activity": old.isoformat()}  # fmt: skip
    assert idle_verdict(now, old, 3600, 0, quiet).cull
    assert not idle_verdict(now, old, 0, 0, quiet).cull
    assert not idle_verdict(now, old, 3600, 1, quiet).cull
    assert not idle_verdict(now, old, 3600, 0, None).cull  # could not ask: keep
    assert not idle_verdict(now, old, 3600, 0, {**quiet, "chat_turns_running": 1}).cull
    recent = {**quiet, "last_activity": (now - timedelta(minutes=5)).isoformat()}
    verdict = idle_verdict(now, old, 3600, 0, recent)
    assert not verdict.cull and verdict.reason == "active 300 s ago"
    assert idle_verdict(now, None, 3600, 0, quiet).reason.startswith("idle for 7200 s")
