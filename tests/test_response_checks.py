"""The session's response checks (conftest.py) can fail: an answer outside its
operation's declared statuses or schema, whoever receives it (an httpx client,
sync or async, or a browser page), fails the test that received it. Answers
come from stand-ins here (httpx's MockTransport, Playwright's route), since the
real APIs are meant to keep to their documents."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from helpers import CHROMIUM_ARGS, RESPONSE_PROBLEMS

SERVICE = "http://sac--service.localhost:1/services/sac/api/"
EXTENSION = "http://alice.localhost:1/user/alice/agent/sac/api/"


def answering(status: int, body: object) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


@pytest.fixture
def taken_problems() -> Iterator[list[str]]:
    """The problems the checks recorded, taken away so that this test's deliberate
    ones do not fail it at teardown."""
    taken: list[str] = []
    yield taken
    taken += RESPONSE_PROBLEMS
    RESPONSE_PROBLEMS.clear()


def test_a_body_outside_its_schema_fails_the_request(taken_problems: list[str]) -> None:
    bad = answering(200, {"agents": "not a list"})
    with httpx.Client(transport=bad) as client, pytest.raises(AssertionError) as failed:
        client.get(SERVICE + "agents")
    assert "GET /api/agents breaks its schema at agents" in str(failed.value)
    assert len(RESPONSE_PROBLEMS) == 1


def test_an_undeclared_status_fails_the_request(taken_problems: list[str]) -> None:
    teapot = answering(418, {"error": "teapot", "message": "no"})
    with httpx.Client(transport=teapot) as client, pytest.raises(AssertionError) as failed:
        client.get(EXTENSION + "history/status")
    assert "418 is not a documented answer" in str(failed.value)


def test_the_relay_is_held_to_the_services_operation(taken_problems: list[str]) -> None:
    """sac/api/service/<path> answers as the service's api/<path> does."""
    bad = answering(200, {"agents": "not a list"})
    with httpx.Client(transport=bad) as client, pytest.raises(AssertionError) as failed:
        client.get(EXTENSION + "service/agents")
    assert "GET /api/agents breaks its schema at agents" in str(failed.value)
    RESPONSE_PROBLEMS.clear()  # the deliberate one above
    with httpx.Client(transport=answering(200, {"agents": []})) as client:
        client.get(EXTENSION + "service/agents")
    assert RESPONSE_PROBLEMS == []


def test_an_answer_inside_its_schema_passes(taken_problems: list[str]) -> None:
    with httpx.Client(transport=answering(200, {"agents": []})) as client:
        assert client.get(SERVICE + "agents").status_code == 200
    # Not an answer of either API: not checked.
    with httpx.Client(transport=answering(418, [])) as client:
        assert client.get("http://localhost:1/hub/api/users").status_code == 418
    assert RESPONSE_PROBLEMS == []


@pytest.mark.asyncio
async def test_an_async_client_is_checked_too(taken_problems: list[str]) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"agents": [{"slug": 5}]})
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(AssertionError, match="breaks its schema"):
            await client.get(SERVICE + "agents")


def test_a_browser_page_is_checked_too(taken_problems: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.fulfill(
                status=200, content_type="application/json", body='{"agents": 7}'))  # fmt: skip
            page.goto(SERVICE + "agents")
        finally:
            browser.close()
    assert len(RESPONSE_PROBLEMS) == 1, RESPONSE_PROBLEMS
    assert "breaks its schema at agents" in RESPONSE_PROBLEMS[0]
