"""Both APIs fuzzed from their own OpenAPI documents (schemathesis, sac_testing/fuzz.py)
against a real stack of their own (the fuzzer changes settings and keys at random,
which the session's shared stack must not see), with the real token of each
principal: an administrator, a person, an agent's sandbox; the extension of a
running agent with its owner's token; the credential proxy with the agent's key and
with wrong ones; starting, stopping and restarting a real agent; and the chat
WebSocket with generated frames (sac_testing/fuzz_socket.py). No answer may be a
5xx or outside the document, no schema-valid request may be refused, and no
request answered 4xx may have changed anything (the audit log).

Bounded for CI: a few examples per operation (SAC_FUZZ_EXAMPLES); bench/fuzz.py
runs the long campaign."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, run_in_terminal

from jupyter_sac.server_extension.openapi import CONTRACT as EXTENSION
from jupyter_sac.service.openapi import CONTRACT as SERVICE
from sac_testing.fuzz import FuzzRun, fuzz
from sac_testing.fuzz_socket import fuzz_chat_socket
from sac_testing.stack import embedded_stack, proxy_errors

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("SAC_FUZZ_EXAMPLES", "3"))
# Operations that would end what the other runs of the first round need (the
# running agent whose extension, socket and key they use), fuzzed in the second:
# the credential proxy (a key of its own), starting, stopping and restarting
# agents, and deleting one. The chat events are a WebSocket (fuzz_socket).
LLM = r"^/llm/"
LIFECYCLE = r"^/api/users/\{user\}/agents/\{slug\}/(start|restart|stop)$"
AGENT = r"^/api/users/\{user\}/agents/\{slug\}$"
# The event stream stays open (Server-Sent Events) until its client leaves, and the
# fuzzer would wait for its end; its parameters are tested in tests/test_events_api.py.
EVENTS = r"^/api/events$"
# Exec runs what it is given in the running agent's sandbox (a generated "vi" would
# wait there for its hour) and its WebSocket needs a client of its own; both are
# tested with real commands and refusals in tests/test_exec.py and test_exec_units.py.
EXEC = r"^/api/users/\{user\}/agents/\{slug\}/exec(/ws)?$"
FIRST_ROUND_EXCLUDED = f"{LLM}|{LIFECYCLE}|{EVENTS}|{EXEC}"
# A workspace archive's upload is a ZIP (application/zip), which the fuzzer cannot
# make; its refusals (paths, links, bombs, quotas: 20 hostile archives) and the
# download's are tested in tests/test_workspace_archive.py.
EXTENSION_EXCLUDED = r"/chat/events$|/terminal(/restart)?$|/workspace/archive$"
# Each start spawns a sandbox: the lifecycle runs take one example per operation
# (with the coverage phase, still a dozen real starts, stops and restarts).
LIFECYCLE_EXAMPLES = 1
SOCKET_EXAMPLES = max(10, 10 * EXAMPLES)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, fake_anthropic: str) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("fuzz")
    config = workdir / "fuzz.py"
    # The tasks the fuzzer submits stay queued: their API is what is fuzzed here, and
    # running each (a real claude turn, a checkout) would only load the machine
    # (tests/test_tasks.py runs them).
    config.write_text("c.SacService.task_interval = 0\n")
    with embedded_stack(workdir, ADMIN_PASSWORD, extra_config=config) as running:
        yield {
            "url": running.url,
            "admin": HubApi(running.url, running.admin_token, running.harness_token),
            "service_url": running.service_url,
            "log": running.log_path,
            "fake": fake_anthropic,
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


def _in_parallel(runs: dict[str, Callable[[], FuzzRun]]) -> FuzzRun:
    """Run independent fuzzing runs side by side (each is its own schemathesis
    process, mostly waiting on the stack: about twice as fast on two cores as one
    after the other), with each failure titled by its run."""
    total = FuzzRun()
    with ThreadPoolExecutor(len(runs)) as pool:
        done = {what: pool.submit(run) for what, run in runs.items()}
        for what, future in done.items():
            run = future.result()
            for failure in run.failures:
                failure["title"] = f"{what}: {failure['title']}"
            total.add(run)
    return total


def _restore(admin: HubApi, person: HubApi, fake: str) -> None:
    """Undo what the fuzzers changed at random that the next round relies on: the
    settings (a limit of 0 agents, a spent budget) and the running agent's provider."""
    for path in ("settings/system", "users/fuzzer/settings"):
        assert admin.sac("PUT", path, json={}).status_code == 200
    agent = {"provider": "custom", "base_url": fake, "api_key": "sk-fuzz-provider-key"}
    resp = person.sac("PATCH", "users/fuzzer/agents/f1", json=agent)
    assert resp.status_code == 200, resp.text


def campaign(stack: dict, examples: int) -> tuple[FuzzRun, list[dict]]:
    """Fuzz both APIs on ``stack`` (url, admin, service_url, log, fake) with every
    principal's token, ``examples`` per operation: what schemathesis and the socket
    fuzzer found, and the audit entries written by requests that were answered 4xx
    (there should be none)."""
    admin: HubApi = stack["admin"]
    person = admin.create_user("fuzzer")
    for slug in ("f1", "f2"):
        resp = person.sac("POST", "agents", json={"slug": slug, "api_key": "sk-unused-key"})
        assert resp.status_code == 201, resp.text
    _restore(admin, person, stack["fake"])
    person.start("fuzzer", "f1")
    agent_token = asyncio.run(
        run_in_terminal(stack["url"], person.token, "fuzzer", "f1", 'echo "$SAC_AGENT_TOKEN"')
    ).strip()
    assert agent_token.startswith("sac-agent-"), agent_token

    service = SERVICE.served(stack["service_url"])
    url = stack["service_url"]
    agent_url = person.server_url("fuzzer", "f1")

    def service_run(token: str | None, **options: Any) -> Callable[[], FuzzRun]:
        return lambda: fuzz(service, url, token, **{"max_examples": examples, **options})

    # Round 1: everything that leaves the running agent f1 running (schemathesis
    # reuses names it reads in answers, so a person's or an administrator's run
    # would find f1 to delete).
    first_excluded = f"{FIRST_ROUND_EXCLUDED}|{AGENT}"
    first = {
        "service, administrator": service_run(admin.token, exclude_paths=first_excluded),
        "service, person": service_run(person.token, exclude_paths=first_excluded),
        "service, agent": service_run(agent_token, exclude_paths=FIRST_ROUND_EXCLUDED),
        "extension, owner": lambda: fuzz(
            EXTENSION.served(agent_url),
            agent_url,
            person.token,
            max_examples=examples,
            exclude_paths=EXTENSION_EXCLUDED,
        ),
        "chat socket, owner": lambda: fuzz_chat_socket(
            agent_url.replace("http", "ws", 1) + "sac/api/chat/events",
            person.token,
            max_examples=SOCKET_EXAMPLES,
            log_path=Path(stack["log"]),
        ),
    }
    started = time.monotonic()
    total = _in_parallel(first)
    print(f"fuzzing round 1: {time.monotonic() - started:.0f} s")
    # Round 2: the credential proxy with f1's key and wrong ones, then real starts,
    # stops and restarts of f2 (half the cases name it), then deleting agents.
    _restore(admin, person, stack["fake"])
    real = {"path_values": {"user": ["fuzzer"], "slug": ["f2"]}}
    total.add(
        _in_parallel(
            {
                "credential proxy, agent's key": service_run(
                    None, include_paths=LLM, headers={"x-api-key": agent_token}
                ),
                "credential proxy, wrong key": service_run(
                    None, include_paths=LLM, headers={"x-api-key": "sac-agent-not-a-key"}
                ),
                "credential proxy, person's hub token": service_run(
                    None, include_paths=LLM, headers={"Authorization": f"Bearer {person.token}"}
                ),
                "lifecycle, agent": service_run(
                    agent_token, include_paths=LIFECYCLE, max_examples=LIFECYCLE_EXAMPLES, **real
                ),
                "lifecycle, administrator": service_run(
                    admin.token, include_paths=LIFECYCLE, max_examples=LIFECYCLE_EXAMPLES
                ),
            }
        )
    )
    lifecycle = service_run(
        person.token, include_paths=LIFECYCLE, max_examples=LIFECYCLE_EXAMPLES, **real
    )
    total.add(_in_parallel({"lifecycle, person (owner)": lifecycle}))
    total.add(
        _in_parallel(
            {
                "agents, administrator": service_run(admin.token, include_paths=AGENT),
                "agents, person": service_run(person.token, include_paths=AGENT),
            }
        )
    )
    print(f"fuzzing rounds 1 and 2: {time.monotonic() - started:.0f} s")
    return total, _audited(admin, set(total.refused_request_ids))


# Some 17,000 generated requests through both APIs: about 4 minutes of CPU here, with
# the task and exec routes. The suite's 300 s per test would cut it off on a slower
# or busier machine; this is how long it may take, not a figure it must meet.
@pytest.mark.timeout(900)
def test_both_apis_hold_their_contracts_under_fuzzing(fuzz_stack: dict) -> None:
    total, changed = campaign(fuzz_stack, EXAMPLES)
    print(f"FIGURE fuzz_cases {total.cases} cases")
    assert total.cases > 500, total.output
    # A 503 page is the proxy's: its log says which request and why.
    proxied = "\n".join(proxy_errors(Path(fuzz_stack["log"]))[-20:])
    assert not total.failures, f"{total.summary()}\nthe proxy's errors:\n{proxied}"
    assert not changed, f"requests answered 4xx changed something: {changed}"
