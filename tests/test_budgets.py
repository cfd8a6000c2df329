"""Token budgets: once a user's or an agent's monthly budget is spent, the credential
proxy answers model calls with a clear Anthropic-style 429 that the real claude
CLI shows to the user (and does not retry), and nothing reaches the provider."""

from __future__ import annotations

import uuid
from datetime import date

import httpx
import pytest
from helpers import HubApi, model_agent, running_agent, script_model

from jupyter_sac import settings as sac_settings
from jupyter_sac.budgets import next_month, refusal
from jupyter_sac.client import Client

pytestmark = pytest.mark.stack


def model_calls(fake: str) -> int:
    return len(httpx.get(fake + "/_fake/requests").json()["requests"])


def test_a_spent_user_budget_refuses_model_calls_until_raised(stack: dict, fake: str) -> None:
    admin: HubApi = stack["admin"]
    user = f"bud{uuid.uuid4().hex[:6]}"
    with running_agent(admin, user, "spender", **model_agent(fake)) as hub:
        # One token: the first call goes out (nothing used yet), then the budget is spent.
        put = admin.sac("PUT", f"users/{user}/settings", json={"user_monthly_tokens": 1})
        assert put.status_code == 200, put.text
        client = Client(url=stack["url"], token=hub.token)
        agent = client.agent("spender")
        script_model(fake, "First answer.")
        first = agent.ask("hello")
        assert first.text == "First answer." and not first.is_error
        usage = hub.sac("GET", f"users/{user}/agents/spender/usage").json()
        assert usage["budget"]["user"]["limit"] == 1 and usage["budget"]["user"]["left"] == 0
        assert usage["budget"]["user"]["used"] >= 1 and usage["budget"]["agent"]["limit"] is None

        before = model_calls(fake)
        refused = agent.ask("and again", session_id=first.session_id, timeout=120)
        assert refused.is_error
        assert "Monthly token budget spent" in refused.text, refused.events
        assert "user_monthly_tokens" in refused.text
        assert model_calls(fake) == before  # nothing reached the provider

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
        capped = hub.sac("PATCH", path, json={"overrides": {"agent_monthly_tokens": 1}})
        assert capped.status_code == 200, capped.text
        assert capped.json()["resolved"]["agent_monthly_tokens"] == 1
        client = Client(url=stack["url"], token=hub.token)
        agent = client.agent("capped")
        script_model(fake, "Only one.")
        assert agent.ask("one").text == "Only one."
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


def test_budget_rules() -> None:
    resolved = sac_settings.resolve({"user_monthly_tokens": 100}, {}, {})
    today = date(2026, 12, 31)
    assert next_month(today) == date(2027, 1, 1) and next_month(date(2026, 2, 3)) == date(
        2026, 3, 1
    )
    assert refusal(resolved, 10, 99, today) is None
    message = refusal(resolved, 10, 100, today)
    assert message is not None and "100 of 100" in message and "2027-01-01" in message
    unlimited = sac_settings.resolve({}, {}, {})
    assert refusal(unlimited, 10**12, 10**12, today) is None
    # 0 is "no limit": an agent may go below its owner's unlimited budget, and an
    # agent cap stays when the owner's is lowered below it.
    assert sac_settings.resolve({}, {}, {"agent_monthly_tokens": 5})["agent_monthly_tokens"] == 5
    capped = sac_settings.resolve({"agent_monthly_tokens": 3}, {}, {"agent_monthly_tokens": 5})
    assert capped["agent_monthly_tokens"] == 3
    never = sac_settings.resolve({"idle_timeout": 0}, {}, {"idle_timeout": 600})
    assert never["idle_timeout"] == 600
