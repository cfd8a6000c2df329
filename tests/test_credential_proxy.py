"""The credential proxy: sandbox -> `sac` service -> provider, with the real key injected."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from helpers import FAKED_PRESETS, agent_token, run_in_terminal, running_agent

from jupyter_sac.service.llm_proxy import MAX_REQUEST_BYTES

pytestmark = pytest.mark.stack

REAL_KEY = "sk-ant-real-provider-key-42"

CALL = r"""python3 - <<'PY'
import json, os, urllib.request
req = urllib.request.Request(
    os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages?beta=true",
    data=json.dumps({"model": os.environ["ANTHROPIC_MODEL"], "max_tokens": 64, "stream": True,
                     "tools": [{"name": "noop", "input_schema": {"type": "object"}}],
                     "messages": [{"role": "user", "content": "hello"}]}).encode(),
    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json",
             "anthropic-version": "2023-06-01"})
with urllib.request.urlopen(req) as resp:
    body = resp.read().decode()
text = "".join(json.loads(l[5:])["delta"].get("text", "") for l in body.splitlines()
               if l.startswith("data:") and '"content_block_delta"' in l)
print("ANSWER:" + text)
PY"""


def _requests(fake: str) -> list[dict]:
    return httpx.get(fake + "/_fake/requests").json()["requests"]


def _custom_agent(fake: str, **fields: str) -> dict[str, str]:
    """Agent fields for a custom provider pointing at the fake, with the real key."""
    return {"provider": "custom", "base_url": fake, "api_key": REAL_KEY, **fields}


@pytest.mark.asyncio
async def test_sandbox_call_reaches_provider_with_real_key(stack: dict, fake: str) -> None:
    httpx.post(fake + "/_fake/script", json={"replies": ["hello from the fake model"]})
    name = "proxyuser"
    with running_agent(
        stack["admin"], name, "caller", **_custom_agent(fake, model="claude-test-model")
    ) as user:
        out = await run_in_terminal(stack["url"], user.token, name, "caller", CALL)
        assert "ANSWER:hello from the fake model" in out, out
        requests = _requests(fake)
        assert len(requests) == 1
        seen = {k.lower(): v for k, v in requests[0]["headers"].items()}
        assert seen["x-api-key"] == REAL_KEY  # injected by the proxy
        assert seen["authorization"] == f"Bearer {REAL_KEY}"  # custom: both styles
        assert seen["anthropic-version"] == "2023-06-01"
        assert requests[0]["query"] == "beta=true"
        assert requests[0]["body"]["model"] == "claude-test-model"

        usage = user.sac("GET", f"users/{name}/agents/caller/usage").json()["totals"]
        assert usage["requests"] == 1
        assert usage["input_tokens"] == 17 and usage["output_tokens"] == 5
        assert usage["cache_read_input_tokens"] == 3


def test_proxy_rejects_unknown_tokens(stack: dict, fake: str) -> None:
    url = stack["service_url"] + "llm/v1/messages"
    for headers in (
        {},
        {"x-api-key": "sac-agent-forged"},
        {"x-api-key": REAL_KEY},
        {"Authorization": "Bearer sac-agent-nope"},
    ):
        resp = httpx.post(url, headers=headers, json={"model": "m", "messages": []})
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
    resp = httpx.post(stack["service_url"] + "llm/v1/files", json={})
    assert resp.status_code == 404
    # Another method: a 405 that says which one it takes, in the Anthropic shape.
    for method in ("GET", "TRACE", "PUT"):
        resp = httpx.request(method, url, headers={"x-api-key": "sac-agent-forged"})
        assert (resp.status_code, resp.headers.get("Allow")) == (405, "POST"), resp.text
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert _requests(fake) == []


@pytest.mark.asyncio
async def test_stopped_agent_token_stops_working(stack: dict, fake: str) -> None:
    name = "tokenuser"
    with running_agent(stack["admin"], name, "short", **_custom_agent(fake)) as user:
        out = await run_in_terminal(
            stack["url"], user.token, name, "short", "echo $ANTHROPIC_API_KEY"
        )
        token = out.strip().splitlines()[-1]
        assert token.startswith("sac-agent-")
        url = stack["service_url"] + "llm/v1/messages"
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url, headers={"x-api-key": token}, json=body).status_code == 200
        # A request of tens of MiB (images, documents) goes through whole, though the
        # service takes at most 1 MiB from anyone it does not know; over 32 MiB is
        # refused before anything reaches the provider.
        text = "A" * (20 * 1024 * 1024)
        big = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
        resp = httpx.post(url, headers={"x-api-key": token}, json=big, timeout=60)
        assert resp.status_code == 200, resp.text[:300]
        calls = _requests(fake)
        assert calls[-1]["body"]["messages"][0]["content"][0]["text"] == text
        over = httpx.post(
            url, headers={"x-api-key": token}, content=bytes(MAX_REQUEST_BYTES + 1), timeout=60
        )
        assert over.status_code == 413, over.text[:300]
        assert over.json()["error"]["type"] == "request_too_large"
        assert len(_requests(fake)) == len(calls)
        user.stop(name, "short")
        resp = httpx.post(url, headers={"x-api-key": token}, json=body)
        assert resp.status_code == 401


@pytest.mark.asyncio
async def test_claude_cli_in_sandbox_talks_through_the_proxy(stack: dict, fake: str) -> None:
    """The real claude CLI, inside the sandbox, gets its answer via the credential proxy."""
    httpx.post(fake + "/_fake/script", json={"replies": ["four"] * 5})
    name = "clauderunner"
    with running_agent(stack["admin"], name, "cli", **_custom_agent(fake)) as user:
        out = await run_in_terminal(
            stack["url"],
            user.token,
            name,
            "cli",
            "claude -p 'what is 2+2' 2>&1 | tail -3",
            timeout=120,
        )
        assert "four" in out, out
        keys = {
            r["headers"].get("X-Api-Key") or r["headers"].get("x-api-key") for r in _requests(fake)
        }
        assert keys == {REAL_KEY}


MESSAGE = {"model": "m", "max_tokens": 5, "tools": [{"name": "noop", "input_schema": {"type": "object"}}],
           "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


@pytest.mark.asyncio
async def test_each_preset_reaches_its_endpoint_with_its_header_style(
    stack: dict, fake: str
) -> None:
    """OpenRouter, GLM and Qwen take the key as a bearer token only (Anthropic's own
    x-api-key would leak it to a second header they do not read), at their own base
    URL; the sandbox's x-api-key (the agent token) never goes upstream."""
    name = "presetuser"
    with running_agent(stack["admin"], name, "shifty", **_custom_agent(fake)) as user:
        token = await agent_token(stack["url"], user, name, "shifty", "ANTHROPIC_API_KEY")
        url = stack["service_url"] + "llm/v1/messages"
        for provider in FAKED_PRESETS:
            key = f"sk-{provider}-real-key-0042"
            changed = user.sac("PATCH", f"users/{name}/agents/shifty",
                               json={"provider": provider, "api_key": key, "base_url": None})  # fmt: skip
            assert changed.status_code == 200, changed.text
            httpx.delete(fake + "/_fake/requests")
            resp = httpx.post(url, headers={"x-api-key": token}, json=MESSAGE, timeout=30)
            assert resp.status_code == 200, resp.text
            [seen] = _requests(fake)
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert seen["path"] == f"/{provider}/v1/messages"
            assert headers["authorization"] == f"Bearer {key}"
            assert "x-api-key" not in headers
            assert token not in json.dumps(seen["headers"])


@pytest.mark.asyncio
async def test_provider_errors_and_an_unreachable_provider(stack: dict, fake: str) -> None:
    """A provider's error reaches the sandbox as the provider said it (claude reads
    its type and retries overloads itself) and counts one request, no tokens; a
    provider that cannot be reached is a 502 in the Messages API's error shape."""
    name = "erroruser"
    with running_agent(stack["admin"], name, "unlucky", **_custom_agent(fake)) as user:
        token = await agent_token(stack["url"], user, name, "unlucky", "ANTHROPIC_API_KEY")
        url = stack["service_url"] + "llm/v1/messages"
        overloaded = {"type": "overloaded_error", "message": "Overloaded"}
        httpx.post(fake + "/_fake/script", json={"replies": [{"status": 529, "error": overloaded}]})
        resp = httpx.post(url, headers={"x-api-key": token}, json=MESSAGE, timeout=30)
        assert resp.status_code == 529
        assert resp.json() == {"type": "error", "error": overloaded}
        totals = user.sac("GET", f"users/{name}/agents/unlucky/usage").json()["totals"]
        assert totals["requests"] == 1 and totals["input_tokens"] == 0

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        moved = user.sac("PATCH", f"users/{name}/agents/unlucky", json={"base_url": closed})
        assert moved.status_code == 200, moved.text
        resp = httpx.post(url, headers={"x-api-key": token}, json=MESSAGE, timeout=60)
        assert resp.status_code == 502
        error = resp.json()
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "could not be reached" in error["error"]["message"]
