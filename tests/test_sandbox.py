"""Sandboxes: what an agent can see and touch, checked from inside through a terminal."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
from helpers import HubApi, run_in_terminal, running_agent

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def two_agents(stack: dict):
    admin: HubApi = stack["admin"]
    with ExitStack() as agents:
        yield [
            (name, agents.enter_context(
                running_agent(admin, name, "box", api_key="sk-real-provider-key")))
            for name in ("annsandbox", "bensandbox")
        ]  # fmt: skip


@pytest.mark.asyncio
async def test_agent_cannot_see_other_agents_files_or_processes(stack: dict, two_agents) -> None:
    (ann, ann_api), (ben, ben_api) = two_agents
    url = stack["url"]
    # ben writes a file in his workspace
    out = await run_in_terminal(
        url,
        ben_api.token,
        ben,
        "box",
        "echo ben-secret > /workspace/mine.txt && cat /workspace/mine.txt",
    )
    assert out == "ben-secret"
    ben_dir = next((stack["data_dir"] / "agents").glob("*-box"), None)
    host_files = [p for p in (stack["data_dir"] / "agents").rglob("mine.txt")]
    assert len(host_files) == 1 and host_files[0].read_text().strip() == "ben-secret"
    assert ben_dir is not None

    # ann cannot reach it by its host path, nor list the data dir or other agents
    host_path = str(host_files[0])
    out = await run_in_terminal(
        url,
        ann_api.token,
        ann,
        "box",
        f"cat {host_path} 2>&1; ls -A {stack['data_dir']} 2>/dev/null | wc -l; ls /workspace",
    )
    lines = out.splitlines()
    assert "No such file or directory" in lines[0]
    assert lines[1].strip() == "0", "the data dir is hidden (empty or absent) in the sandbox"
    assert "mine.txt" not in lines[2:], "ann's workspace is her own"

    # ann sees only her own processes: no hub, no postgres, no other sandbox
    out = await run_in_terminal(
        url,
        ann_api.token,
        ann,
        "box",
        "for p in /proc/[0-9]*; do cat $p/comm; done | sort -u | tr '\\n' ' '",
    )
    assert "jupyterhub" not in out and "postgres" not in out and "node" not in out
    out = await run_in_terminal(url, ann_api.token, ann, "box", "ls /proc | grep -c '^[0-9]'")
    assert int(out) < 30


@pytest.mark.asyncio
async def test_system_is_read_only_and_secrets_masked(stack: dict, two_agents) -> None:
    (ann, ann_api), _ = two_agents
    out = await run_in_terminal(
        stack["url"],
        ann_api.token,
        ann,
        "box",
        "touch /usr/x 2>&1 | grep -c Read-only; touch /etc/x 2>&1 | grep -c Read-only;"
        " cat /etc/shadow 2>/dev/null | wc -c; touch /workspace/ok && echo writable",
    )
    assert out.splitlines() == ["1", "1", "0", "writable"]


@pytest.mark.asyncio
async def test_sandbox_environment_holds_no_credentials(stack: dict, two_agents) -> None:
    (ann, ann_api), _ = two_agents
    out = await run_in_terminal(stack["url"], ann_api.token, ann, "box", "env | sort")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["ANTHROPIC_API_KEY"].startswith("sac-agent-")
    assert env["ANTHROPIC_BASE_URL"].endswith("/services/sac/llm")
    assert "sk-real-provider-key" not in out
    for name in (
        "SAC_DATABASE_URL",
        "SAC_FERNET_KEY",
        "SAC_ADMIN_PASSWORD",
        "PGHOST",
        "ANTHROPIC_AUTH_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert name not in env
    assert env["HOME"] == "/home/sac" and env["IS_SANDBOX"] == "1"


@pytest.mark.asyncio
async def test_a_sandbox_resolves_the_hub_the_service_and_its_owner_only(
    stack: dict, two_agents
) -> None:
    """Subdomains: a sandbox's own read-only /etc/hosts names the hub's, the service's
    and its owner's hosts (named in any way JupyterHub allows), and no other user's;
    code inside reaches the hub and the service by their public URLs."""
    admin: HubApi = stack["admin"]
    (_, _), (ben, _) = two_agents
    name = f"ann.lee_{uuid.uuid4().hex[:4]}"
    with running_agent(admin, name, "box", api_key="sk-real-provider-key") as client:
        server = admin.server(name, "box")
        assert server is not None and server["url"] == client.server_url(name, "box")
        own = urlsplit(server["url"]).hostname
        assert own is not None and own.startswith("u-annlee") and own.endswith(".localhost")
        service = urlsplit(stack["service_url"]).hostname
        out = await run_in_terminal(
            stack["url"], client.token, name, "box",
            f"for h in localhost {service} {own} {ben}.localhost other.localhost; do"
            " getent hosts $h >/dev/null && echo $h yes || echo $h no; done;"
            " touch /etc/hosts 2>&1 | grep -c -E 'Read-only|Permission denied';"
            ' A="Authorization: token $JUPYTERHUB_API_TOKEN";'
            ' B="Authorization: Bearer $SAC_AGENT_TOKEN";'
            " curl -s -o /dev/null -w '%{http_code}\\n' -H \"$A\" ${SAC_HUB_URL}hub/api/user;"
            " curl -s -o /dev/null -w '%{http_code}\\n' -H \"$B\""
            " ${SAC_SERVICE_PUBLIC_URL}api/agents",
        )  # fmt: skip
    assert out.splitlines() == [
        "localhost yes",
        f"{service} yes",
        f"{own} yes",
        f"{ben}.localhost no",
        "other.localhost no",
        "1",
        "200",
        "200",
    ]
