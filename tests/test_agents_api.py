"""Agents through the public interfaces: the `sac` service API and the hub REST API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import HubApi

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def test_agent_lifecycle(stack: dict, admin: HubApi, new_user) -> None:
    name, alice = new_user("alice")
    resp = alice.sac(
        "POST",
        "agents",
        json={
            "slug": "helper",
            "display_name": "Data helper ✨",
            "provider": "anthropic",
            "api_key": "sk-ant-secret-123456",
        },
    )
    assert resp.status_code == 201, resp.text
    agent = resp.json()
    assert agent["owner"] == name and agent["key_set"] is True
    assert "sk-ant" not in resp.text  # the key is never returned
    assert agent["resolved"]["max_agents_per_user"] == 5
    # the named server exists on the hub (shown on the home page) but is not running
    servers = admin.hub("GET", f"users/{name}?include_stopped_servers=1").json()["servers"]
    assert servers["helper"]["display_name"] == "Data helper ✨"

    alice.start(name, "helper")
    status = alice.agent(name, "helper", "GET", "sac/api/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["agent"]["user"] == name and body["agent"]["name"] == "helper"
    assert body["runtime"]["name"] == "claude" and body["runtime"]["version"]
    assert body["workspace"] == "/workspace"
    # Where the sidebar opens the service's pages: on the service's own host.
    assert body["service_url"] == stack["service_url"]
    assert body["service_url"].startswith("http://sac--service.localhost:")

    listed = alice.sac("GET", "agents").json()["agents"]
    assert [a["slug"] for a in listed] == ["helper"]
    assert listed[0]["server"]["ready"] is True

    alice.stop(name, "helper")
    files = list((stack["data_dir"] / "agents").glob("*-helper"))
    assert files, "the agent has its own directory in the data dir"
    resp = alice.sac("DELETE", f"users/{name}/agents/helper")
    assert resp.status_code == 204, resp.text
    assert alice.sac("GET", f"users/{name}/agents/helper").status_code == 404
    user_model = admin.hub("GET", f"users/{name}?include_stopped_servers=1").json()
    assert "helper" not in user_model["servers"]
    assert not any(p.exists() for p in files), "deleting an agent deletes its files"


def test_delete_running_agent_stops_it(admin: HubApi, new_user) -> None:
    name, bob = new_user("bob")
    assert bob.sac("POST", "agents", json={"slug": "runner"}).status_code == 201
    bob.start(name, "runner")
    assert bob.sac("DELETE", f"users/{name}/agents/runner").status_code == 204
    assert "runner" not in admin.hub("GET", f"users/{name}").json()["servers"]
    # The hub answers for it now: no such server (not the agent, not a crash).
    gone = bob.agent(name, "runner", "GET", "sac/api/status")
    assert gone.status_code == 404 and gone.headers["content-type"].startswith("text/html")


def test_a_second_start_or_stop_while_one_is_under_way_is_a_plain_409(new_user) -> None:
    """Two restarts of one agent at once (a double click, two people): JupyterHub
    cancels one of them halfway, which the service answered 502 `hub_refused:
    Internal Server Error` (found by fuzzing the lifecycle). The second is told the
    agent is busy, and the first goes through."""
    name, dana = new_user("dana")
    assert dana.sac("POST", "agents", json={"slug": "twice"}).status_code == 201
    dana.start(name, "twice")
    path = f"users/{name}/agents/twice"
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(dana.sac, "POST", f"{path}/restart")
        # Under way: the hub says the server is stopping (a graceful stop: seconds).
        poll_until(lambda: (dana.server(name, "twice") or {}).get("pending"), 60,
                   "the first restart under way", interval=0.02)  # fmt: skip
        others = [
            pool.submit(dana.sac, "POST", f"{path}/{action}") for action in ("restart", "stop")
        ]
        answers = [first.result(), *(o.result() for o in others)]
    assert answers[0].status_code == 202, answers[0].text
    for refused in answers[1:]:
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "agent_busy", refused.text
        assert "restarting" in refused.json()["message"]
    assert dana.wait_ready(name, "twice")["ready"] is True
    assert dana.sac("DELETE", path).status_code == 204


def test_update_agent(new_user) -> None:
    name, carol = new_user("carol")
    assert carol.sac("POST", "agents", json={"slug": "x1"}).status_code == 201
    resp = carol.sac(
        "PATCH",
        f"users/{name}/agents/x1",
        json={
            "provider": "custom",
            "base_url": "http://127.0.0.1:9/llm/",
            "model": "my-model",
            "api_key": "k-12345678",
            "overrides": {"mem_limit": "1Gi"},
        },
    )
    assert resp.status_code == 200, resp.text
    agent = resp.json()
    assert agent["base_url"] == "http://127.0.0.1:9/llm" and agent["model"] == "my-model"
    assert agent["key_set"] and agent["resolved"]["mem_limit"] == 2**30
    resp = carol.sac("PATCH", f"users/{name}/agents/x1", json={"api_key": None, "provider": "glm"})
    agent = resp.json()
    assert agent["key_set"] is False and agent["base_url"] is None
    assert agent["model"] == "glm-4.6"


def _snapshot(client: HubApi) -> list:
    return client.sac("GET", "agents").json()["agents"]


BAD_CREATES = [
    ({"slug": "Bad Slug"}, 400, "invalid_slug"),
    ({"slug": "1abc"}, 400, "invalid_slug"),
    ({"slug": "a--b"}, 400, "invalid_slug"),
    ({"slug": "../etc"}, 400, "invalid_slug"),
    ({"slug": "x" * 31}, 400, "invalid_slug"),
    ({"slug": "agent'; DROP TABLE agents;--"}, 400, "invalid_slug"),
    ({"slug": 42}, 400, "invalid_slug"),
    ({}, 400, "missing_field"),
    ({"slug": "ok1", "provider": "nope"}, 400, "unknown_provider"),
    ({"slug": "ok1", "provider": "custom"}, 400, "missing_field"),
    ({"slug": "ok1", "provider": "custom", "base_url": "ftp://x"}, 400, "invalid_field"),
    ({"slug": "ok1", "provider": "custom", "base_url": "http://u:p@h"}, 400, "invalid_field"),
    ({"slug": "ok1", "base_url": "http://h"}, 400, "invalid_field"),
    ({"slug": "ok1", "provider": "custom", "base_url": "http://[x"}, 400, "invalid_field"),
    ({"slug": "ok1", "display_name": ""}, 400, "invalid_field"),
    ({"slug": "ok1", "display_name": "a\u202eb"}, 400, "invalid_field"),
    ({"slug": "ok1", "display_name": ["x"]}, 400, "invalid_field"),
    ({"slug": "ok1", "model": "has space"}, 400, "invalid_field"),
    ({"slug": "ok1", "api_key": "short"}, 400, "invalid_field"),
    ({"slug": "ok1", "api_key": "ключ-ключ-ключ"}, 400, "invalid_field"),
    ({"slug": "ok1", "overrides": {"cpu_limit": 999}}, 400, "invalid_setting"),
    ({"slug": "ok1", "overrides": {"max_agents_per_user": 50}}, 400, "invalid_setting"),
    ({"slug": "ok1", "overrides": "big"}, 400, "invalid_setting"),
    ({"slug": "ok1", "surprise": 1}, 400, "unknown_field"),
]


@pytest.mark.parametrize("body, status, code", BAD_CREATES)
def test_bad_create_is_a_clear_4xx_and_writes_nothing(
    admin: HubApi, new_user, body, status, code
) -> None:
    name, dave = new_user("dave")
    resp = dave.sac("POST", "agents", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == code and resp.json()["message"]
    assert _snapshot(dave) == []
    servers = admin.hub("GET", f"users/{name}?include_stopped_servers=1").json()["servers"]
    assert [k for k in servers if k] == []  # no named server either


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b"", '"\ud800"'.encode("utf-8", "surrogatepass")]
)
def test_malformed_bodies(new_user, raw: bytes) -> None:
    _, erin = new_user("erin")
    resp = erin.sac("POST", "agents", content=raw)
    assert resp.status_code == 400 and resp.json()["error"] in ("invalid_json", "invalid_slug")
    assert _snapshot(erin) == []


def test_oversized_body(new_user) -> None:
    _, fay = new_user("fay")
    resp = fay.sac("POST", "agents", content=b'{"slug": "a", "x": "' + b"a" * 2_000_000 + b'"}')
    assert resp.status_code == 413 and resp.json()["error"] == "too_large"
    assert _snapshot(fay) == []


def test_duplicate_slug_conflicts(new_user) -> None:
    _, gus = new_user("gus")
    assert gus.sac("POST", "agents", json={"slug": "twin"}).status_code == 201
    resp = gus.sac("POST", "agents", json={"slug": "twin", "display_name": "other"})
    assert resp.status_code == 409 and resp.json()["error"] == "agent_exists"
    assert [a["display_name"] for a in _snapshot(gus)] == ["twin"]


def test_agent_limit_at_api_and_at_spawn(admin: HubApi, new_user) -> None:
    name, hal = new_user("hal")
    resp = admin.sac("PUT", f"users/{name}/settings", json={"max_agents_per_user": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["resolved"]["max_agents_per_user"] == 1
    assert hal.sac("POST", "agents", json={"slug": "first"}).status_code == 201
    resp = hal.sac("POST", "agents", json={"slug": "second"})
    assert resp.status_code == 403 and resp.json()["error"] == "agent_limit_reached"
    # Going around the service: a named server created on the hub directly
    resp = hal.hub("POST", f"users/{name}/servers/sneaky")
    assert resp.status_code == 400 and "maximum of 1" in resp.json()["message"]
    # ...and an admin lowering the limit below what exists stops the extra agent's spawn
    assert admin.sac("PUT", f"users/{name}/settings", json={"max_agents_per_user": 2}).is_success
    assert hal.sac("POST", "agents", json={"slug": "second"}).status_code == 201
    assert admin.sac("PUT", f"users/{name}/settings", json={"max_agents_per_user": 1}).is_success
    resp = hal.hub("POST", f"users/{name}/servers/second")
    # A refusal with the reason, as the hub's own limit above (not a 500).
    assert resp.status_code == 400, resp.text
    assert "beyond" in resp.json()["message"] and "limit of 1 agents" in resp.json()["message"]
    progress = hal.hub("GET", f"users/{name}").json()["servers"].get("second")
    assert not (progress or {}).get("ready")
    assert [a["slug"] for a in _snapshot(hal)] == ["first", "second"]


def test_other_users_agents_are_invisible(admin: HubApi, new_user) -> None:
    ivy_name, ivy = new_user("ivy")
    _, jon = new_user("jon")
    assert ivy.sac("POST", "agents", json={"slug": "mine", "api_key": "sk-ivy-12345"}).is_success
    for method, path, body in [
        ("GET", f"users/{ivy_name}/agents/mine", None),
        ("PATCH", f"users/{ivy_name}/agents/mine", {"model": "stolen"}),
        ("DELETE", f"users/{ivy_name}/agents/mine", None),
        ("GET", f"users/{ivy_name}/agents", None),
        ("GET", f"users/{ivy_name}/agents/mine/usage", None),
    ]:
        resp = jon.sac(method, path, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
    resp = jon.sac("POST", "agents", json={"slug": "planted", "user": ivy_name})
    assert resp.status_code == 404
    assert jon.sac("GET", "settings/system").status_code == 403
    assert (
        jon.sac("PUT", f"users/{ivy_name}/settings", json={"max_agents_per_user": 99}).status_code
        == 403
    )
    assert [a["model"] for a in _snapshot(ivy)] == ["claude-sonnet-4-5"]
    # admins see and manage everyone's agents
    assert admin.sac("GET", f"users/{ivy_name}/agents/mine").status_code == 200
    assert any(a["owner"] == ivy_name for a in admin.sac("GET", "agents?all=1").json()["agents"])


def test_unauthenticated_and_bad_tokens(stack: dict) -> None:
    import httpx

    for headers in ({}, {"Authorization": "token not-a-real-token"}):
        resp = httpx.get(stack["service_url"] + "api/agents", headers=headers)
        assert resp.status_code in (401, 403), resp.text
        assert resp.json()["error"]


def test_disallowed_provider(admin: HubApi, new_user) -> None:
    name, kim = new_user("kim")
    assert admin.sac(
        "PUT", f"users/{name}/settings", json={"allowed_providers": ["glm"]}
    ).is_success
    resp = kim.sac("POST", "agents", json={"slug": "a1", "provider": "anthropic"})
    assert resp.status_code == 403 and resp.json()["error"] == "provider_not_allowed"
    resp = kim.sac("POST", "agents", json={"slug": "a1"})
    assert resp.status_code == 201 and resp.json()["provider"] == "glm"


def test_settings_validation(admin: HubApi) -> None:
    before = admin.sac("GET", "settings/system").json()["overrides"]
    resp = admin.sac("PUT", "settings/system", json={"mem_limit": "lots"})
    assert resp.status_code == 400 and resp.json()["field"] == "mem_limit"
    assert admin.sac("GET", "settings/system").json()["overrides"] == before
    assert admin.sac("GET", "openapi.json").json()["openapi"].startswith("3.")


def test_an_undeclared_method_is_answered_405_with_allow(admin: HubApi) -> None:
    """RFC 9110: a 405 names the methods the resource takes (tornado's named none)."""
    for method, path, allowed in (("DELETE", "providers", {"GET"}),
                                  ("PUT", "agents", {"GET", "POST"})):  # fmt: skip
        resp = admin.sac(method, path)
        assert resp.status_code == 405, resp.text
        assert resp.json()["error"] == "method_not_allowed"
        allow = {m.strip() for m in resp.headers.get("Allow", "").split(",")}
        assert allowed <= allow and method not in allow, resp.headers
