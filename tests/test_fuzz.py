"""Both APIs fuzzed from their own OpenAPI documents (schemathesis, sac_testing/fuzz.py)
against a real stack of their own (the fuzzer changes settings and keys at random,
which the session's shared stack must not see), with the real token of each
principal: an administrator, a person, an agent's sandbox; and the extension of a
running agent with its owner's token. No answer may be a 5xx or outside the
document, and no request answered 4xx may have changed anything (the audit log).

Bounded for CI: a few examples per operation (SAC_FUZZ_EXAMPLES); bench/fuzz.py
runs the long campaign."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, run_in_terminal

from jupyter_sac.server_extension.openapi import CONTRACT as EXTENSION
from jupyter_sac.service.openapi import CONTRACT as SERVICE
from sac_testing.fuzz import FuzzRun, fuzz
from sac_testing.stack import embedded_stack

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("SAC_FUZZ_EXAMPLES", "3"))
# The credential proxy streams a provider's answers (not this document's); the
# chat events are a WebSocket; starting agents spawns sandboxes (each a minute of
# a CPU), so the fuzzer may not, and a stop of the one running agent would end the
# extension's run.
SERVICE_EXCLUDED = r"^/llm/|/(start|restart|stop)$"
EXTENSION_EXCLUDED = r"/chat/events$|/terminal(/restart)?$"


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with embedded_stack(tmp_path_factory.mktemp("fuzz"), ADMIN_PASSWORD) as running:
        yield {
            "url": running.url,
            "admin": HubApi(running.url, running.admin_token, running.harness_token),
            "service_url": running.service_url,
        }


def _audited(admin: HubApi, request_ids: set[str]) -> list[dict]:
    """The audit entries written by requests with these ids."""
    found, cursor, fuzzed = [], None, 0
    while True:
        page = admin.sac(
            "GET", "audit", params={"limit": 500, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        found += [e for e in body["entries"] if e.get("request_id") in request_ids]
        fuzzed += sum(1 for e in body["entries"] if (e.get("request_id") or "").startswith("fuzz-"))
        cursor = body.get("next_cursor")
        if not cursor:
            # The fuzzer's accepted writes are there under its ids: else this check
            # could not fail (the ids would not reach the audit log).
            assert fuzzed > 0, "no audit entry carries a fuzzer's X-Request-Id"
            return found


def campaign(stack: dict, examples: int) -> tuple[FuzzRun, list[dict]]:
    """Fuzz both APIs on ``stack`` (url, admin, service_url) with every principal's
    token, ``examples`` per operation: what schemathesis found, and the audit
    entries written by requests that were answered 4xx (there should be none)."""
    admin: HubApi = stack["admin"]
    person = admin.create_user("fuzzer")
    resp = person.sac("POST", "agents", json={"slug": "f1", "api_key": "sk-unused-key"})
    assert resp.status_code == 201, resp.text
    person.start("fuzzer", "f1")
    agent_token = asyncio.run(
        run_in_terminal(stack["url"], person.token, "fuzzer", "f1", 'echo "$SAC_AGENT_TOKEN"')
    ).strip()
    assert agent_token.startswith("sac-agent-"), agent_token

    service = SERVICE.served(stack["service_url"])
    agent_url = person.server_url("fuzzer", "f1")
    runs = {
        "service, administrator": (service, stack["service_url"], admin.token, SERVICE_EXCLUDED),
        "service, person": (service, stack["service_url"], person.token, SERVICE_EXCLUDED),
        "service, agent": (service, stack["service_url"], agent_token, SERVICE_EXCLUDED),
        "extension, owner": (
            EXTENSION.served(agent_url),
            agent_url,
            person.token,
            EXTENSION_EXCLUDED,
        ),
    }
    total = FuzzRun()
    for what, (document, url, token, excluded) in runs.items():
        run = fuzz(document, url, token, max_examples=examples, exclude_paths=excluded)
        for failure in run.failures:
            failure["title"] = f"{what}: {failure['title']}"
        total.add(run)
    return total, _audited(admin, set(total.refused_request_ids))


def test_both_apis_hold_their_contracts_under_fuzzing(fuzz_stack: dict) -> None:
    total, changed = campaign(fuzz_stack, EXAMPLES)
    print(f"FIGURE fuzz_cases {total.cases} cases")
    assert total.cases > 500, total.output
    assert not total.failures, total.summary()
    assert not changed, f"requests answered 4xx changed something: {changed}"
