"""Token budgets: once a user's or an agent's monthly budget is spent, the credential
proxy answers model calls with a clear Anthropic-style 429 that the real claude
CLI shows to the user (and does not retry), and nothing reaches the provider.
Calls made at once reserve their tokens first, so together they cannot pass a
budget either."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date

import httpx
import pytest
from helpers import HubApi, agent_token, model_agent, run_in_terminal, running_agent, script_model

from jupyter_sac.client import Client
from jupyter_sac.rules import settings as sac_settings
from jupyter_sac.rules.budgets import (
    RESERVE_OVERHEAD_TOKENS,
    next_month,
    refusal,
    reservation_tokens,
)
from sac_testing.fake_anthropic import CACHE_READ_TOKENS, INPUT_TOKENS
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def model_calls(fake: str) -> int:
    return len(httpx.get(fake + "/_fake/requests").json()["requests"])


def test_a_spent_user_budget_refuses_model_calls_until_raised(stack: dict, fake: str) -> None:
    admin: HubApi = stack["admin"]
    user = f"bud{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "spender", **model_agent(fake)) as hub:
        client = Client(url=stack["url"], token=hub.token)
        agent = client.agent("spender")
        script_model(fake, "First answer.")
        first = agent.ask("hello")
        assert first.text == "First answer." and not first.is_error
        # The budget becomes what was used: it is spent.
        used = hub.sac("GET", f"users/{user}/agents/spender/usage").json()["budget"]["user"]
        assert used["used"] >= 1 and used["limit"] is None
        put = admin.sac("PUT", f"users/{user}/settings", json={"user_monthly_tokens": used["used"]})
        assert put.status_code == 200, put.text
        usage = hub.sac("GET", f"users/{user}/agents/spender/usage").json()
        assert usage["budget"]["user"]["limit"] == used["used"]
        assert usage["budget"]["user"]["left"] == 0 and usage["budget"]["user"]["reserved"] == 0
        assert usage["budget"]["agent"]["limit"] is None

        before = model_calls(fake)
        refused = agent.ask("and again", session_id=first.session_id, timeout=120)
        assert refused.is_error
        assert "Monthly token budget spent" in refused.text, refused.events
        assert "user_monthly_tokens" in refused.text
        assert model_calls(fake) == before  # nothing reached the provider
        # The owner's stream tells of it once, however many calls were refused.
        token = asyncio.run(agent_token(stack["url"], hub, user, "spender"))
        again = httpx.post(
            stack["service_url"] + "llm/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={"model": "claude-test", "max_tokens": 16, "messages": [
                {"role": "user", "content": "hi"}]},
            timeout=60,
        )  # fmt: skip
        assert again.status_code == 429, again.text
        stream = hub.sac("GET", "events?after=0&wait=0")
        assert stream.status_code == 200, stream.text
        told = [line for line in stream.text.splitlines() if line == "event: budget.exhausted"]
        assert len(told) == 1, stream.text
        assert '"scope": "user"' in stream.text and f'"used": {used["used"]}' in stream.text

        # An administrator lifts the limit: the same conversation goes on.
        assert admin.sac("DELETE", f"users/{user}/settings").status_code in (200, 204)
        script_model(fake, "Back in business.")
        again = agent.ask("once more", session_id=first.session_id)
        assert again.text == "Back in business." and not again.is_error
        client.close()


def test_an_owner_can_cap_one_agent(stack: dict, fake: str) -> None:
    admin: HubApi = stack["admin"]
    user = f"cap{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "capped", **model_agent(fake)) as hub:
        path = f"users/{user}/agents/capped"
        client = Client(url=stack["url"], token=hub.token)
        agent = client.agent("capped")
        script_model(fake, "Only one.")
        assert agent.ask("one").text == "Only one."
        used = hub.sac("GET", f"{path}/usage").json()["budget"]["agent"]["used"]
        capped = hub.sac("PATCH", path, json={"overrides": {"agent_monthly_tokens": used}})
        assert capped.status_code == 200, capped.text
        assert capped.json()["resolved"]["agent_monthly_tokens"] == used
        refused = agent.ask("two", timeout=120)
        assert refused.is_error and "this agent has used" in refused.text
        assert "agent_monthly_tokens" in refused.text
        client.close()

        # An owner may lower an agent's budget, never lift it above theirs.
        put = admin.sac("PUT", f"users/{user}/settings", json={"agent_monthly_tokens": 1000})
        assert put.status_code == 200, put.text
        above = hub.sac("PATCH", path, json={"overrides": {"agent_monthly_tokens": 0}})
        assert above.status_code == 400
        assert above.json()["field"] == "overrides.agent_monthly_tokens"
        assert "0 (no limit) is above" in above.json()["message"]


ONE_CALL = {"model": "claude-test", "max_tokens": 64,
            "tools": [{"name": "noop", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip


@pytest.mark.asyncio
async def test_a_user_budget_counts_every_agent_of_the_user(stack: dict, fake: str) -> None:
    """The user's monthly budget is what all their agents used together: once the sum
    reaches it, an agent that itself used less is refused too."""
    admin: HubApi = stack["admin"]
    user = f"sum{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "first", **model_agent(fake)) as hub:
        made = hub.sac("POST", "agents", json={"slug": "second", **model_agent(fake)})
        assert made.status_code == 201, made.text
        hub.start(user, "second")
        proxy = stack["service_url"] + "llm/v1/messages"
        tokens = {
            slug: await agent_token(stack["url"], hub, user, slug) for slug in ("first", "second")
        }
        for slug in ("first", "first", "second"):
            resp = httpx.post(proxy, headers={"x-api-key": tokens[slug]}, json=ONE_CALL, timeout=30)
            assert resp.status_code == 200, resp.text

        def budget(slug: str) -> dict:
            return hub.sac("GET", f"users/{user}/agents/{slug}/usage").json()["budget"]

        first, second = budget("first"), budget("second")
        assert second["agent"]["used"] < first["agent"]["used"]  # one call against two
        assert first["user"]["used"] == second["user"]["used"]
        assert first["user"]["used"] == first["agent"]["used"] + second["agent"]["used"]

        put = admin.sac("PUT", f"users/{user}/settings",
                        json={"user_monthly_tokens": first["user"]["used"]})  # fmt: skip
        assert put.status_code == 200, put.text
        before = model_calls(fake)
        refused = httpx.post(
            proxy, headers={"x-api-key": tokens["second"]}, json=ONE_CALL, timeout=30
        )
        assert refused.status_code == 429
        message = refused.json()["error"]["message"]
        assert "your agents have used" in message and "user_monthly_tokens" in message
        assert model_calls(fake) == before


BURST_BODY = json.dumps(
    {
        "model": "claude-test",
        "max_tokens": 10_000,
        "stream": True,
        "tools": [{"name": "noop", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "hello"}],
    }
).encode()


def test_calls_made_at_once_cannot_pass_a_budget(stack: dict, fake: str) -> None:
    """Six slow calls at once with room for two: two go out, four get the budget's
    429, and what is recorded stays within the budget; a call whose client leaves
    mid-answer gives its reservation back."""
    admin: HubApi = stack["admin"]
    user = f"par{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "burst", **model_agent(fake)) as hub:
        out = asyncio.run(
            run_in_terminal(stack["url"], hub.token, user, "burst", "echo $ANTHROPIC_API_KEY")
        )
        token = out.strip().splitlines()[-1]
        assert token.startswith("sac-agent-")
        url = stack["service_url"] + "llm/v1/messages"
        headers = {"x-api-key": token, "content-type": "application/json",
                   "anthropic-version": "2023-06-01"}  # fmt: skip
        each = reservation_tokens(BURST_BODY)
        limit = 2 * each + each // 2
        put = admin.sac("PUT", f"users/{user}/settings", json={"user_monthly_tokens": limit})
        assert put.status_code == 200, put.text
        # Each answer streams for about 6 s, so all six calls overlap.
        script_model(fake, *[{"text": "one two three", "delay": 2.0}] * 6)
        before = model_calls(fake)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as http:
                calls = (http.post(url, content=BURST_BODY, headers=headers) for _ in range(6))
                return await asyncio.gather(*calls)

        answers = asyncio.run(burst())
        seen = [(r.status_code, r.text[:300]) for r in answers]
        assert sorted(r.status_code for r in answers) == [200] * 2 + [429] * 4, seen
        for refused in (r for r in answers if r.status_code == 429):
            error = refused.json()["error"]
            assert error["type"] == "rate_limit_error"
            assert "too low for this call" in error["message"], error
            assert "user_monthly_tokens" not in error["message"]  # room comes back
            assert refused.headers["x-should-retry"] == "true"
        assert model_calls(fake) - before == 2, httpx.get(fake + "/_fake/requests").json()
        budget = hub.sac("GET", f"users/{user}/agents/burst/usage").json()["budget"]["user"]
        answer_tokens = INPUT_TOKENS + CACHE_READ_TOKENS + 3
        assert budget["used"] == 2 * answer_tokens <= budget["limit"]
        assert budget["reserved"] == 0

        # A client that leaves mid-answer: the reservation holds while the call
        # runs and is settled (with what was metered) once the proxy notices.
        script_model(fake, {"text": "a slow answer of many words", "delay": 1.5})
        with httpx.stream("POST", url, content=BURST_BODY, headers=headers, timeout=60) as resp:
            assert resp.status_code == 200
            next(resp.iter_raw())
            during = hub.sac("GET", f"users/{user}/agents/burst/usage").json()["budget"]
            assert during["user"]["reserved"] == each
        poll_until(
            lambda: (
                hub.sac("GET", f"users/{user}/agents/burst/usage").json()["budget"]["user"][
                    "reserved"
                ]
                == 0
            ),
            30,
            "the reservation of the abandoned call settled",
        )
        budget = hub.sac("GET", f"users/{user}/agents/burst/usage").json()["budget"]["user"]
        assert 2 * answer_tokens < budget["used"] <= budget["limit"]


def test_budget_rules() -> None:
    resolved = sac_settings.resolve({"user_monthly_tokens": 100}, {}, {})
    today = date(2026, 12, 31)
    assert next_month(today) == date(2027, 1, 1) and next_month(date(2026, 2, 3)) == date(
        2026, 3, 1
    )
    assert refusal(resolved, 10, 99, today, tokens=1) is None
    spent = refusal(resolved, 10, 100, today, tokens=1)
    assert spent is not None and not spent.retry
    assert "spent" in spent.message and "100 of 100" in spent.message
    assert "2027-01-01" in spent.message and "user_monthly_tokens" in spent.message
    # A call must fit with what is used and what calls under way reserved.
    assert refusal(resolved, 0, 60, today, tokens=40) is None
    too_big = refusal(resolved, 0, 60, today, tokens=41)
    assert too_big is not None and not too_big.retry and "up to 41 tokens" in too_big.message
    held = refusal(resolved, 0, 10, today, tokens=50, user_reserved=50)
    assert held is not None and held.retry and "calls under way hold 50" in held.message
    agent_capped = sac_settings.resolve({"agent_monthly_tokens": 30}, {}, {})
    capped = refusal(agent_capped, 0, 0, today, tokens=31)
    assert capped is not None and "this agent has used" in capped.message
    both = sac_settings.resolve({"agent_monthly_tokens": 30, "user_monthly_tokens": 100}, {}, {})
    final = refusal(both, 30, 60, today, tokens=20, user_reserved=30)
    assert final is not None and not final.retry and "agent_monthly_tokens" in final.message
    unlimited = sac_settings.resolve({}, {}, {})
    assert refusal(unlimited, 10**12, 10**12, today, tokens=10**12) is None
    # What a call reserves: max_tokens, a token per byte of the body, the overhead.
    body = json.dumps({"max_tokens": 64, "messages": []}).encode()
    assert reservation_tokens(body) == 64 + len(body) + RESERVE_OVERHEAD_TOKENS
    for odd in (b"not json", b'{"max_tokens": "64"}', b'{"max_tokens": true}', b"[1]"):
        assert reservation_tokens(odd) == len(odd) + RESERVE_OVERHEAD_TOKENS
    assert reservation_tokens(b'{"max_tokens": 1e400}') == 21 + RESERVE_OVERHEAD_TOKENS
    # 0 is "no limit": an agent may go below its owner's unlimited budget, and an
    # agent cap stays when the owner's is lowered below it.
    assert sac_settings.resolve({}, {}, {"agent_monthly_tokens": 5})["agent_monthly_tokens"] == 5
    capped = sac_settings.resolve({"agent_monthly_tokens": 3}, {}, {"agent_monthly_tokens": 5})
    assert capped["agent_monthly_tokens"] == 3
    never = sac_settings.resolve({"idle_timeout": 0}, {}, {"idle_timeout": 600})
    assert never["idle_timeout"] == 600
