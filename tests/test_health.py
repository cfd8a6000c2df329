"""The service's health checks on the real stack: liveness and readiness for
anyone, the checks' details for administrators only. (Readiness while PostgreSQL
is stopped is in test_faults.py, on a stack of its own.)"""

from __future__ import annotations

import httpx
import pytest
from helpers import HubApi

pytestmark = pytest.mark.stack


def get(admin: HubApi, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.get(admin.service_url + "api/" + path, headers=headers, timeout=30)


def test_liveness_answers_anyone_without_details(admin: HubApi) -> None:
    resp = get(admin, "health")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"


def test_readiness_tells_anyone_ready_and_only_an_administrator_why(
    admin: HubApi, new_user
) -> None:
    anonymous = get(admin, "health/ready")
    assert anonymous.status_code == 200, anonymous.text
    assert anonymous.json() == {"status": "ready"}

    _, person = new_user("hp")
    as_person = get(admin, "health/ready", person.token)
    assert as_person.status_code == 200, as_person.text
    assert as_person.json() == {"status": "ready"}

    as_admin = get(admin, "health/ready", admin.token)
    assert as_admin.status_code == 200, as_admin.text
    body = as_admin.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "object_store", "hub"}
    for name, check in body["checks"].items():
        assert check["status"] == "ok", name
        assert check["error"] is None, name
        assert 0 <= check["latency_ms"] < 3000, name


def test_a_bad_token_gets_readiness_without_details(admin: HubApi) -> None:
    resp = get(admin, "health/ready", "not-a-real-token")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready"}
