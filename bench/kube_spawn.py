"""Kubernetes: a new agent's start on a spare pod (the warm pool) against a cold pod,
in the same run, on the test cluster (API emulator, scheduler, test kubelets).

The hub runs KubeAgentSpawner with ``warm_pods = 1``, exactly as `sac up` starts
it. Each round creates two new agents: the first while no spare runs (the spares
are deleted first: a cold pod), the second once a spare of its shape runs (it
takes the spare). Both are timed from the start request to the hub's "ready"
(the server answers the hub), reading the hub's progress stream as the spawn page
does, and the warm start's phases are timed from its progress messages:

- ``assignment``: request -> the spawner took a spare (the agent's record,
  settings and token; the spare claimed);
- ``env_delivery``: -> the agent's NetworkPolicy, labels and assignment written to
  the spare's stdin (pods/attach);
- ``server_ready``: -> the server, started by the launcher in the spare, answers
  the hub (the hub's readiness check).

Prints medians and FIGURE lines (kube_claim_to_ready with its cold-pod baseline).
The test cluster's kubelets run containers as local processes, so a real
cluster's image pull and container start (seconds) are not in the cold figure:
on a cluster the difference is larger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from jupyter_sac.localhost import resolve_localhost
from sac_testing.kube_cluster import KubeApi, checkout_image, hub_config, kube_cluster
from sac_testing.stack import embedded_stack, poll_until

NAMESPACE = "sac-bench"
IMAGE = "sac-sandbox:bench"
PASSWORD = "bench-admin-password"
WARM = "sac.jupyter.org/warm"
# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()
HUB_CONFIG = hub_config(
    NAMESPACE, IMAGE, "c.KubeAgentSpawner.warm_pods = 1\nc.KubeAgentSpawner.usage_interval = 0\n"
)


def timed_start(hub: httpx.Client, user: str, agent: str) -> tuple[float, dict[str, float]]:
    """Seconds from the start request to ready, and when each progress message came."""
    begun = time.perf_counter()
    resp = hub.post(f"hub/api/users/{user}/servers/{agent}")
    resp.raise_for_status()
    marks: dict[str, float] = {}
    with hub.stream("GET", f"hub/api/users/{user}/servers/{agent}/progress", timeout=300) as s:
        for line in s.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:") :])
            message = event.get("message", "")
            at = time.perf_counter() - begun
            for mark in ("Taking spare pod", "Agent assigned", "Creating pod"):
                if message.startswith(mark):
                    marks.setdefault(mark, at)
            if event.get("failed"):
                raise RuntimeError(f"{agent} failed to start: {message}")
            if event.get("ready"):
                return at, marks
    raise RuntimeError(f"{agent}: the progress stream ended before ready")


def spares(kube: KubeApi, running: bool) -> list[dict]:
    items = [p for p in kube.list("pods", WARM) if "deletionTimestamp" not in p["metadata"]]
    return [p for p in items if p["status"].get("phase") == "Running"] if running else items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--interval", type=float, default=3.0,
        help="seconds between a spare running and the next new agent: an arrival rate"
        " (people create agents minutes apart), in which the spare's imports finish",
    )  # fmt: skip
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    phases: dict[str, list[float]] = {"assignment": [], "env_delivery": [], "server_ready": []}
    with tempfile.TemporaryDirectory(prefix="sac-kube-bench-") as tmp:
        workdir = Path(tmp)
        with kube_cluster(workdir, {IMAGE: checkout_image()}, namespace=NAMESPACE) as cluster:
            config = workdir / "bench_hub_config.py"
            config.write_text(HUB_CONFIG)
            env = {"KUBECONFIG": str(cluster.kubeconfig)}
            with embedded_stack(workdir, PASSWORD, config, env) as stack:
                headers = {"Authorization": f"token {stack.admin_token}"}
                hub = httpx.Client(base_url=stack.url, headers=headers, timeout=60)
                kube = KubeApi(cluster.url, NAMESPACE)
                service = stack.service_url + "api/"
                user = f"bench{uuid.uuid4().hex[:6]}"
                hub.post(f"hub/api/users/{user}").raise_for_status()
                for n in range(args.rounds):
                    for pod in spares(kube, running=False):
                        kube.force_delete("pods", pod["metadata"]["name"])
                    poll_until(lambda: not spares(kube, running=False), 60, "no spares")
                    for slug in (f"cold{n}", f"warm{n}"):
                        resp = hub.post(service + f"users/{user}/agents", json={"slug": slug})
                        resp.raise_for_status()
                    seconds, marks = timed_start(hub, user, f"cold{n}")
                    assert "Taking spare pod" not in marks, marks
                    cold.append(seconds)
                    poll_until(lambda: spares(kube, running=True), 120, "a running spare")
                    # The next person comes --interval seconds later.
                    time.sleep(args.interval)
                    seconds, marks = timed_start(hub, user, f"warm{n}")
                    assert "Taking spare pod" in marks, marks
                    warm.append(seconds)
                    phases["assignment"].append(marks["Taking spare pod"])
                    phases["env_delivery"].append(
                        marks["Agent assigned"] - marks["Taking spare pod"]
                    )
                    phases["server_ready"].append(seconds - marks["Agent assigned"])
                    print(f"round {n}: cold {cold[-1]:.3f} s, warm {warm[-1]:.3f} s",
                          flush=True)  # fmt: skip
                    for slug in (f"cold{n}", f"warm{n}"):  # within max_agents_per_user
                        hub.delete(service + f"users/{user}/agents/{slug}").raise_for_status()
    m_warm, m_cold = statistics.median(warm), statistics.median(cold)
    print(f"claim to ready: spare pod {m_warm:.3f} s, cold pod {m_cold:.3f} s (medians)")
    for name, values in phases.items():
        print(f"FIGURE kube_phase_{name} {1000 * statistics.median(values):.0f} ms")
    print(f"FIGURE kube_claim_to_ready {m_warm:.3f} s")
    print(f"FIGURE kube_claim_to_ready_baseline {m_cold:.3f} s")
    print(f"FIGURE kube_claim_speedup_ratio {m_cold / m_warm:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
