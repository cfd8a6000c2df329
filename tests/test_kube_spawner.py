"""KubeAgentSpawner end to end: the real stack, the real spawner, a test cluster.

The hub (started exactly as `sac up` starts it) runs KubeAgentSpawner, which talks
through kubernetes_asyncio to the Kubernetes API emulator; the test kubelet runs
each pod's real command (jupyterhub-singleuser with the jupyter_sac extension)
under bubblewrap on its own 127.0.0.N address. Everything is checked the way a
user or an operator would see it: the hub's progress API, the agent's own API
through the hub's proxy, and the objects in the cluster. The cluster has two
nodes, with PVCs on storage both reach, so an agent can be moved as a drain
moves it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from helpers import (
    ChatTurn,
    HubApi,
    claude_direct,
    kill_server,
    largest_request_waiting,
    model_agent,
    run_in_terminal,
    script_model,
    spawn_with_progress,
    spool_status,
    stored_history,
)

from jupyter_sac.spawner.kube import NO_METRICS_API
from sac_testing.kube_cluster import (
    KubeApi,
    RunningCluster,
    checkout_image,
    hub_config,
    kube_cluster,
)
from sac_testing.stack import RestartableStack, poll_until, stack_process_paused

pytestmark = pytest.mark.stack

NAMESPACE = "sac-agents"
IMAGE = "sac-sandbox:test"
BROKEN_IMAGE = "sac-sandbox:broken"
MISSING_IMAGE = "registry.example.invalid/sac-sandbox:missing"
ANALYSIS_IMAGE = "sac-sandbox:analysis"

HUB_CONFIG = hub_config(
    NAMESPACE,
    IMAGE,
    f"""
# What a running agent uses, sampled often enough for a test to see it change.
c.KubeAgentSpawner.usage_interval = 0.5


def choose_image(spawner):
    # Agents named crash-* get an image whose server exits at once; pull-* one
    # that no registry has.
    if spawner.name.startswith("crash"):
        spawner.image = {BROKEN_IMAGE!r}
    elif spawner.name.startswith("pull"):
        spawner.image = {MISSING_IMAGE!r}


c.KubeAgentSpawner.pre_spawn_hook = choose_image
# The profiles an administrator offers: the default changes nothing; "analysis" is
# another image, labelled, and asks for more memory than any agent's settings allow.
c.KubeAgentSpawner.profile_list = [
    {{"display_name": "Standard", "slug": "standard", "default": True}},
    {{
        "display_name": "Analysis",
        "slug": "analysis",
        "kubespawner_override": {{
            "image": {ANALYSIS_IMAGE!r},
            "extra_labels": {{"sac.jupyter.org/profile": "analysis"}},
            "mem_limit": "64G",
        }},
    }},
]
""",
)

BROKEN_SERVER = """#!/bin/sh
echo "jupyterhub-singleuser: cannot import jupyter_sac.server_extension" >&2
echo "ModuleNotFoundError: No module named 'pyte'" >&2
exit 3
"""


class KubeStack:
    """The embedded stack on Kubernetes; restart() stops and starts the hub on the same data."""

    def __init__(self, workdir: Path, cluster: RunningCluster):
        self.workdir = workdir
        self.cluster = cluster
        self.config = workdir / "kube_hub_config.py"
        self.config.write_text(HUB_CONFIG)
        # Fixed addresses (RestartableStack), so pods started before a restart
        # still reach the hub.
        env = {"KUBECONFIG": str(cluster.kubeconfig)}
        self.stack = RestartableStack(workdir, ADMIN_PASSWORD, self.config, env)
        self.service_port = int(self.stack.env["SAC_SERVICE_PORT"])
        self.kube = KubeApi(cluster.url, NAMESPACE)

    def start(self) -> None:
        running = self.stack.start()
        self.url = running.url
        self.log = running.log_path
        self.pid = running.proc.pid
        self.admin = HubApi(running.url, running.admin_token, running.harness_token)

    def stop(self) -> None:
        self.stack.close()

    def restart(self) -> None:
        self.stack.stop()
        self.start()

    def new_user(self) -> tuple[str, HubApi]:
        name = f"k{uuid.uuid4().hex[:8]}"
        return name, self.admin.create_user(name)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStack]:
    workdir = tmp_path_factory.mktemp("kube")
    broken = workdir / "broken-image-bin"
    broken.mkdir()
    (broken / "jupyterhub-singleuser").write_text(BROKEN_SERVER)
    (broken / "jupyterhub-singleuser").chmod(0o755)
    image = checkout_image()
    images = {IMAGE: image, ANALYSIS_IMAGE: image, BROKEN_IMAGE: [str(broken), *image]}
    with kube_cluster(workdir, images, namespace=NAMESPACE, nodes=2) as cluster:
        stack = KubeStack(workdir, cluster)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def create_agent(client: HubApi, slug: str) -> None:
    resp = client.sac("POST", "agents", json={"slug": slug})
    assert resp.status_code == 201, resp.text


def agent_objects(kube: KubeStack, user: str) -> dict[str, list[dict[str, Any]]]:
    selector = f"sac.jupyter.org/user={user}"
    return {
        plural: kube.kube.list(plural, selector)
        for plural in ("pods", "secrets", "persistentvolumeclaims", "networkpolicies")
    }


def test_agent_lifecycle_as_a_pod(kube: KubeStack) -> None:
    user, client = kube.new_user()
    create_agent(client, "lab")

    events = spawn_with_progress(client, user, "lab")
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), messages
    # The spawner's own steps and the kubelet's pod events reach the spawn page.
    assert any("Preparing agent" in m for m in messages), messages
    assert any("Successfully assigned" in m for m in messages), messages
    assert any("Started container notebook" in m for m in messages), messages

    # The agent's server answers through the hub's proxy, from inside its pod.
    resp = client.agent(user, "lab", "GET", "sac/api/status")
    assert resp.status_code == 200, resp.text
    status = resp.json()
    assert status["agent"]["user"] == user
    assert status["agent"]["name"] == "lab"
    assert status["workspace"] == "/workspace"

    objects = agent_objects(kube, user)
    (pod,) = objects["pods"]
    (secret,) = objects["secrets"]
    (pvc,) = objects["persistentvolumeclaims"]
    (policy,) = objects["networkpolicies"]
    assert pod["metadata"]["name"] == f"sac-{user}-lab"
    assert pod["status"]["podIP"].startswith("127.0.0.")
    assert pod["metadata"]["annotations"]["sac.jupyter.org/agent"] == "lab"
    # Every credential came from the Secret: none of its values is in the pod.
    pod_text = json.dumps(pod)
    for value in secret["data"].values():
        assert base64.b64decode(value).decode() not in pod_text
    assert set(secret["data"]) == {"jupyterhub-api-token", "sac-agent-token"}
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volume = {v["name"]: v for v in pod["spec"]["volumes"]}["sac-workspace"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "sac.jupyter.org/sandbox": pod["metadata"]["name"]
    }

    # Inside the pod: the sandbox user, a read-only root, the token from the Secret,
    # and a writable workspace on the agent's volume.
    output = asyncio.run(
        run_in_terminal(
            kube.url, client.token, user, "lab",
            "id -u; touch /probe 2>/dev/null || echo read-only;"
            ' case "$ANTHROPIC_API_KEY" in sac-agent-*) echo agent-token;; esac;'
            " echo kept > /workspace/notes.txt && pwd",
        )
    )  # fmt: skip
    assert output.split() == ["1000", "read-only", "agent-token", "/workspace"], output

    # Stopping removes the pod, its Secret and its NetworkPolicy; the workspace stays.
    client.stop(user, "lab")
    objects = agent_objects(kube, user)
    assert objects["pods"] == [] and objects["secrets"] == []
    assert objects["networkpolicies"] == []
    assert [p["metadata"]["name"] for p in objects["persistentvolumeclaims"]] == [
        pvc["metadata"]["name"]
    ]

    # Started again, the agent finds its workspace as it left it.
    assert spawn_with_progress(client, user, "lab")[-1].get("ready")
    output = asyncio.run(
        run_in_terminal(kube.url, client.token, user, "lab", "cat /workspace/notes.txt")
    )
    assert output == "kept"
    client.stop(user, "lab")

    # Deleting the agent deletes its workspace volume too.
    resp = client.sac("DELETE", f"users/{user}/agents/lab")
    assert resp.status_code == 204, resp.text
    assert agent_objects(kube, user) == {
        "pods": [],
        "secrets": [],
        "persistentvolumeclaims": [],
        "networkpolicies": [],
    }


def assert_spawn_failed(
    kube: KubeStack, client: HubApi, user: str, agent: str, *expected: str
) -> str:
    events = spawn_with_progress(client, user, agent)
    final = events[-1]
    assert final.get("failed"), events
    for text in expected:
        assert text in final["message"], final["message"]
    # Nothing is left running or holding the agent's token.
    poll_until(lambda: not client.server(user, agent), 60, "the failed server to clear")
    objects = agent_objects(kube, user)
    assert objects["pods"] == [] and objects["secrets"] == [], objects
    return final["message"]


def test_image_pull_error_is_a_clear_spawn_failure(kube: KubeStack) -> None:
    user, client = kube.new_user()
    create_agent(client, "pull-me")
    assert_spawn_failed(
        kube, client, user, "pull-me", "could not be pulled", MISSING_IMAGE, "not found"
    )


def test_crash_loop_is_a_clear_spawn_failure(kube: KubeStack) -> None:
    user, client = kube.new_user()
    create_agent(client, "crash-me")
    message = assert_spawn_failed(kube, client, user, "crash-me", "keeps crashing", "exit code 3")
    # The server's last output (the pod's termination message) tells why.
    assert "No module named 'pyte'" in message


def test_an_agent_runs_with_the_profile_its_template_names(kube: KubeStack) -> None:
    """A template names one of the profiles the administrator offers: its agents'
    pods take that profile's image and labels, while CPU and memory stay the
    agent's settings. A profile nobody offers fails the start, saying which are."""
    user, client = kube.new_user()
    definition = {"display_name": "Analysis", "overrides": {"profile": "analysis"}}
    made = client.sac("POST", "templates", json={"name": "big-data", "definition": definition})
    assert made.status_code == 201, made.text
    resp = client.sac("POST", "agents", json={"slug": "crunch", "template": "big-data"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["overrides"] == {"profile": "analysis"}

    assert spawn_with_progress(client, user, "crunch")[-1].get("ready")
    (pod,) = agent_objects(kube, user)["pods"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == ANALYSIS_IMAGE
    assert pod["metadata"]["labels"]["sac.jupyter.org/profile"] == "analysis"
    limit = client.sac("GET", f"users/{user}/agents/crunch").json()["resolved"]["mem_limit"]
    assert container["resources"]["limits"]["memory"] in (str(limit), limit), container
    assert client.agent(user, "crunch", "GET", "sac/api/status").status_code == 200
    client.stop(user, "crunch")

    # The default profile for an agent that names none; a bad slug is a 400.
    create_agent(client, "plain")
    assert spawn_with_progress(client, user, "plain")[-1].get("ready")
    (pod,) = agent_objects(kube, user)["pods"]
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    client.stop(user, "plain")
    bad = client.sac("PATCH", f"users/{user}/agents/plain", json={"overrides": {"profile": "GPU!"}})
    assert bad.status_code == 400 and bad.json()["field"] == "overrides.profile", bad.text

    # A profile this hub does not offer.
    resp = client.sac("PATCH", f"users/{user}/agents/plain", json={"overrides": {"profile": "gpu"}})
    assert resp.status_code == 200, resp.text
    assert_spawn_failed(kube, client, user, "plain", "'gpu' is not offered", "standard, analysis")


def test_hub_restart_reattaches_to_running_agent(kube: KubeStack) -> None:
    user, client = kube.new_user()
    create_agent(client, "steady")
    events = spawn_with_progress(client, user, "steady")
    assert events[-1].get("ready"), events
    (pod,) = kube.kube.list("pods", f"sac.jupyter.org/user={user}")

    kube.restart()

    # The restarted hub loaded the saved state and found the same pod running.
    server = client.server(user, "steady")
    assert server and server["ready"], server
    resp = client.agent(user, "steady", "GET", "sac/api/status")
    assert resp.status_code == 200, resp.text
    (after,) = kube.kube.list("pods", f"sac.jupyter.org/user={user}")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0

    client.stop(user, "steady")
    assert kube.kube.list("pods", f"sac.jupyter.org/user={user}") == []


def test_a_pod_calls_the_model_asks_for_approval_and_keeps_history(
    kube: KubeStack, fake: str
) -> None:
    """An agent in a pod does what a local one does: a chat turn's model calls go
    through the credential proxy, its Bash call waits for a person's approval at the
    service, and the conversation reaches the service's history (issue 18: no pod
    had ever made a model call, filed a request or uploaded history)."""
    user, client = kube.new_user()
    resp = client.sac("POST", "agents", json={"slug": "asker", **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    assert spawn_with_progress(client, user, "asker")[-1].get("ready")
    script = [{"tool_use": {"name": "Bash", "input": {"command": "echo yes > /workspace/ok.txt"}}},
              "written from the pod"]  # fmt: skip
    assert httpx.post(fake + "/_fake/script", json={"replies": script}).status_code == 204
    started = client.agent(user, "asker", "POST", "sac/api/chat", json={"message": "write ok"})
    assert started.status_code == 202, started.text
    session = started.json()["session_id"]

    def pending() -> dict | None:
        found = client.sac("GET", "hitl/requests", params={"status": "pending"}).json()
        return next((r for r in found["requests"] if r["user"] == user), None)

    request = poll_until(pending, 120, "the pod's approval request at the service")
    assert request["agent"] == "asker" and request["tool"] == "Bash"
    decided = client.sac("POST", f"hitl/requests/{request['id']}/decision",
                         json={"decision": "allow"})  # fmt: skip
    assert decided.status_code == 200, decided.text

    def finished() -> dict | None:
        got = client.agent(user, "asker", "GET", f"sac/api/chat/sessions/{session}").json()
        return got if not got["running"] and got["last_result"] else None

    poll_until(finished, 120, "the chat turn over")
    written = client.agent(user, "asker", "GET", "api/contents/ok.txt", params={"content": 1})
    assert written.status_code == 200 and written.json()["content"] == "yes\n"
    calls = httpx.get(fake + "/_fake/requests").json()["requests"]
    assert {c["headers"].get("X-Api-Key") or c["headers"].get("x-api-key") for c in calls} == {
        model_agent(fake)["api_key"]
    }

    def in_history() -> list | None:
        found = client.sac("GET", f"users/{user}/agents/asker/history/sessions").json()
        return [s for s in found["sessions"] if s["first_prompt"] == "write ok"] or None

    poll_until(in_history, 120, "the conversation in the service's history")
    client.stop(user, "asker")


def pod_node(kube: KubeStack, user: str) -> str:
    (pod,) = kube.kube.list("pods", f"sac.jupyter.org/user={user}")
    return pod["spec"]["nodeName"]


def move_off(kube: KubeStack, node: str) -> str:
    """Cordon ``node`` (and only it), as a drain does: the next pod goes elsewhere."""
    (other,) = [n for n in kube.kube.nodes() if n != node]
    kube.kube.cordon(node)
    kube.kube.cordon(other, False)
    return other


def test_agent_state_moves_with_its_volume_to_another_node(kube: KubeStack, fake: str) -> None:
    """Issue 21: an agent's home lives on its volume, not on a node. Stopped and
    started on another node, the chat session goes on with claude's own --resume
    (its transcript was in ~/.claude), its files and the user's Claude settings are
    there; killed outright with history not yet uploaded, its spool is uploaded
    from the volume at the next start, on yet another node, each entry once."""
    user, client = kube.new_user()
    slug = "mover"
    resp = client.sac("POST", "agents", json={"slug": slug, **model_agent(fake)})
    assert resp.status_code == 201, resp.text
    assert spawn_with_progress(client, user, slug)[-1].get("ready")
    first_node = pod_node(kube, user)
    base = client.server_url(user, slug)

    script_model(fake, "Noted: the code word is heliotrope.")
    turn = asyncio.run(chat_in(base, client.token, "Remember the code word heliotrope."))
    session = turn.accepted["session_id"]
    asyncio.run(
        run_in_terminal(
            kube.url, client.token, user, slug,
            "echo kept > /workspace/top.txt && mkdir -p ~/.claude"
            " && echo '{\"cleanupPeriodDays\": 99}' > ~/.claude/settings.json && echo ok",
        )
    )  # fmt: skip

    client.stop(user, slug)
    second_node = move_off(kube, first_node)
    assert spawn_with_progress(client, user, slug)[-1].get("ready")
    assert pod_node(kube, user) == second_node

    # The same session goes on: claude resumed it and sent the model the first turn.
    httpx.delete(fake + "/_fake/requests")
    script_model(fake, "The code word was heliotrope.")
    asyncio.run(chat_in(base, client.token, "What was the code word?", session_id=session))
    (call, *_) = httpx.get(fake + "/_fake/requests").json()["requests"]
    assert "Remember the code word heliotrope." in json.dumps(call["body"]["messages"])
    output = asyncio.run(
        run_in_terminal(kube.url, client.token, user, slug,
                        "cat /workspace/top.txt ~/.claude/settings.json")
    )  # fmt: skip
    # The user's own setting, beside the hooks the extension adds at each start.
    kept, settings = output.split("\n", 1)
    assert kept == "kept" and json.loads(settings)["cleanupPeriodDays"] == 99, output

    # A crash with history still in the spool: the service stopped (an upload of the
    # first claude run waits at it), a second run spooled behind it, then the pod
    # killed without a chance to save anything.
    script_model(fake, "first answer", "second answer")
    with stack_process_paused(kube.pid, b"jupyter_sac.service"):
        asyncio.run(
            run_in_terminal(kube.url, client.token, user, slug, claude_direct("spooled one", fake),
                            timeout=180)
        )  # fmt: skip
        poll_until(lambda: largest_request_waiting(kube.service_port) > 2000, 120,
                   "an upload waiting at the stopped service")  # fmt: skip
        before = spool_status(client, user, slug)["backlog"]
        asyncio.run(
            run_in_terminal(kube.url, client.token, user, slug, claude_direct("spooled two", fake),
                            timeout=180)
        )  # fmt: skip
        assert spool_status(client, user, slug)["backlog"] > before
        (pod,) = kube.kube.list("pods", f"sac.jupyter.org/user={user}")
        kube.kube.force_delete("pods", pod["metadata"]["name"])
    # The batch that waited is stored now; the second run's entries only the spool holds.
    client.stop(user, slug)
    third_node = move_off(kube, second_node)
    assert spawn_with_progress(client, user, slug)[-1].get("ready")
    assert pod_node(kube, user) == third_node

    def with_spooled_run() -> list[dict[str, Any]] | None:
        events = stored_history(client, user, slug)
        return events if "spooled two" in json.dumps([e["payload"] for e in events]) else None

    events = poll_until(with_spooled_run, 120, "the spooled run's history at the service")
    stored = [(e["session_id"], e["uuid"]) for e in events if e["uuid"]]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    kube.kube.cordon(third_node, False)
    client.stop(user, slug)


async def chat_in(base: str, token: str, message: str, **body: Any) -> ChatTurn:
    """A whole chat turn; the turn (with its session) once it ended."""
    turn = await ChatTurn.start(base, token, message, **body)
    events = await turn.finish()
    assert events[-1]["type"] == "turn_end", events
    return turn


def test_a_pod_shows_what_it_uses_and_a_crash_of_its_server(kube: KubeStack) -> None:
    """Issue 21: a running agent's CPU and memory come from the cluster's metrics
    API, with the pod's limits; without a metrics API the agent says so instead of
    blanks; a server that crashes and is restarted in its pod is counted, shown on
    the admin Agents page and told to its owner."""
    user, client = kube.new_user()
    create_agent(client, "gauge")
    assert spawn_with_progress(client, user, "gauge")[-1].get("ready")

    def usage(check) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        def sampled() -> dict[str, Any] | None:
            agent = client.sac("GET", f"users/{user}/agents/gauge").json()
            found = agent.get("sandbox_usage") or {}
            return found if found.get("running") and check(found) else None

        return poll_until(sampled, 60, "a sample of the agent's pod")

    now = usage(lambda u: u["memory_bytes"])
    assert now["unavailable"] is None and now["restarts"] == 0
    assert now["memory_bytes"] > 10 * 2**20 and now["cpu_percent"] is not None
    agent = client.sac("GET", f"users/{user}/agents/gauge").json()
    assert now["limits"]["memory"] == agent["resolved"]["mem_limit"]
    assert now["limits"]["cpu"] == agent["resolved"]["cpu_limit"]

    kube.kube.serve_metrics(False)
    try:
        gone = usage(lambda u: u["unavailable"])
        assert gone["unavailable"] == NO_METRICS_API
        assert gone["memory_bytes"] is None and gone["cpu_percent"] is None
    finally:
        kube.kube.serve_metrics(True)

    asyncio.run(kill_server(client.server_url(user, "gauge"), client.token))
    crashed = usage(lambda u: u["restarts"])
    assert crashed["restarts"] == 1
    # The server is back in the same pod, and the owner was told.
    poll_until(
        lambda: client.agent(user, "gauge", "GET", "sac/api/status").status_code == 200,
        60, "the restarted server",
    )  # fmt: skip
    events = client.client.get(client.service_url + "api/events", params={"after": 0, "wait": 0})
    assert events.status_code == 200, events.text
    failed = [
        json.loads(line[len("data: ") :])
        for block in events.text.split("\n\n")
        if "event: agent.failed" in block
        for line in block.splitlines()
        if line.startswith("data: ")
    ]
    assert [e["phase"] for e in failed] == ["restart"], failed
    assert failed[0]["exit_code"] not in (None, 0), failed
    page = kube.admin.client.get(kube.admin.service_url + "admin/agents", params={"user": user})
    assert "its server crashed and was restarted once since it started" in page.text
    client.stop(user, "gauge")
    stopped = client.sac("GET", f"users/{user}/agents/gauge").json()["sandbox_usage"]
    assert stopped["running"] is False and stopped["restarts"] is None
