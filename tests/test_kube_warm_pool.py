"""Spare pods on Kubernetes (issue 21): the real stack with KubeAgentSpawner and
``warm_pods = 1``, on the test cluster (API emulator, scheduler, kubelets).

A new agent's start takes a running, pre-imported spare of its shape: the
agent's NetworkPolicy is made and the spare labelled as the agent's before its
assignment (tokens included) is written to the spare's stdin through
pods/attach; the spare's fresh PVC becomes the agent's workspace. Spares hold
no identity and no credential, and a policy lets nothing reach them or leave
them. Everything is checked as a user (the hub's progress, the agent's API) or
an operator (the cluster's objects) sees it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi, run_in_terminal, spawn_with_progress

from sac_testing.kube_cluster import KubeApi, checkout_image, hub_config, kube_cluster
from sac_testing.stack import RestartableStack, poll_until

pytestmark = pytest.mark.stack

NAMESPACE = "sac-warm"
IMAGE = "sac-sandbox:test"
WARM = "sac.jupyter.org/warm"

HUB_CONFIG = hub_config(NAMESPACE, IMAGE, "c.KubeAgentSpawner.warm_pods = 1\n")


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("kube-warm")
    with kube_cluster(workdir, {IMAGE: checkout_image()}, namespace=NAMESPACE) as cluster:
        config = workdir / "warm_hub_config.py"
        config.write_text(HUB_CONFIG)
        stack = RestartableStack(
            workdir, ADMIN_PASSWORD, config, {"KUBECONFIG": str(cluster.kubeconfig)}
        )
        running = stack.start()
        try:
            yield {
                "url": running.url,
                "admin": HubApi(running.url, running.admin_token, running.harness_token),
                "cluster": KubeApi(cluster.url, NAMESPACE),
            }
        finally:
            stack.close()


def spawn(client: HubApi, user: str, agent: str) -> list[str]:
    """Start an agent, reading the hub's progress to its end; the messages."""
    events = spawn_with_progress(client, user, agent)
    assert events[-1].get("ready"), events
    return [e.get("message", "") for e in events]


def running_spares(cluster: KubeApi) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.list("pods", WARM)
        if p.get("status", {}).get("phase") == "Running"
        and "deletionTimestamp" not in p["metadata"]
    ]


def test_a_new_agent_takes_a_spare_pod_which_holds_nobodys_identity(
    warm: dict[str, Any],
) -> None:
    cluster: KubeApi = warm["cluster"]
    user = f"w{uuid.uuid4().hex[:8]}"
    client = warm["admin"].create_user(user)
    for slug in ("first", "second"):
        resp = client.sac("POST", "agents", json={"slug": slug})
        assert resp.status_code == 201, resp.text

    # The first agent of its shape starts cold; its pod becomes the spares' template.
    messages = spawn(client, user, "first")
    assert any("No spare pod of this shape" in m for m in messages), messages
    (spare,) = poll_until(lambda: running_spares(cluster), 120, "a spare pod")
    name = spare["metadata"]["name"]

    # A spare is nobody's: no user or agent in its labels, no token in its environment
    # or anywhere in it, its own fresh volume, and a policy that lets nothing in or out.
    labels = spare["metadata"]["labels"]
    assert not {"hub.jupyter.org/username", "sac.jupyter.org/user", "sac.jupyter.org/agent"} & set(
        labels
    ), labels
    container = spare["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {"JUPYTERHUB_API_TOKEN", "SAC_AGENT_TOKEN", "ANTHROPIC_API_KEY"} & set(env)
    assert all("valueFrom" not in e for e in container["env"])
    assert user not in json.dumps(spare)
    assert container["stdin"] is True and "jupyter_sac.spawner.launcher" in container["command"]
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in spare["spec"]["volumes"]
                if "persistentVolumeClaim" in v]  # fmt: skip
    assert cluster.get("persistentvolumeclaims", claim) is not None
    policy = cluster.get("networkpolicies", "sac-warm-pods")
    assert policy is not None
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["key"] == WARM

    # The second agent takes it: same pod, now the agent's, and the agent works.
    messages = spawn(client, user, "second")
    assert any(f"Taking spare pod {NAMESPACE}/{name}" in m for m in messages), messages
    taken = cluster.get("pods", name)
    assert taken is not None
    assert WARM not in taken["metadata"]["labels"]
    assert taken["metadata"]["labels"]["sac.jupyter.org/agent"] == "second"
    assert taken["metadata"]["labels"]["hub.jupyter.org/username"] == user
    resp = client.agent(user, "second", "GET", "sac/api/status")
    assert resp.status_code == 200, resp.text
    assert resp.json()["agent"]["name"] == "second"
    # Its own policy selects the pod; its workspace is the spare's volume, now its own.
    agent_policy = cluster.get("networkpolicies", name)
    assert agent_policy is not None
    assert agent_policy["spec"]["podSelector"]["matchLabels"] == {"sac.jupyter.org/sandbox": name}
    pvc = cluster.get("persistentvolumeclaims", claim)
    assert pvc is not None and pvc["metadata"]["labels"]["sac.jupyter.org/agent"] == "second"
    # The tokens reached the server through the assignment, never a Secret or the spec.
    output = asyncio.run(
        run_in_terminal(
            warm["url"], client.token, user, "second",
            'case "$SAC_AGENT_TOKEN" in sac-agent-*) echo agent-token;; esac;'
            " echo kept > /workspace/notes.txt; pwd",
        )
    )  # fmt: skip
    assert output.split() == ["agent-token", "/workspace"], output
    token_values = [
        base64.b64decode(v).decode()
        for s in cluster.list("secrets", "sac.jupyter.org/agent=second")
        for v in s["data"].values()
    ]
    assert token_values == []
    assert "sac-agent-" not in json.dumps(cluster.get("pods", name))

    # The pool made a new spare for the next agent.
    poll_until(
        lambda: [p for p in running_spares(cluster) if p["metadata"]["name"] != name],
        120,
        "a new spare pod",
    )

    # Stopped and started again, the agent has a volume: a cold pod, the same files.
    client.stop(user, "second")
    messages = spawn(client, user, "second")
    assert not any("Taking spare pod" in m for m in messages), messages
    output = asyncio.run(
        run_in_terminal(warm["url"], client.token, user, "second", "cat /workspace/notes.txt")
    )
    assert output == "kept"
    client.stop(user, "second")
    client.stop(user, "first")
    # Deleting the agent deletes the volume it took from the spare.
    resp = client.sac("DELETE", f"users/{user}/agents/second")
    assert resp.status_code == 204, resp.text
    assert cluster.get("persistentvolumeclaims", claim) is None
