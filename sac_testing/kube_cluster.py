"""A test "cluster": the Kubernetes API emulator, a scheduler and test kubelets.

``python -m sac_testing.kube_cluster --port P --root DIR --image NAME=DIR ... [--nodes N]``
serves the API on 127.0.0.1:P (plain HTTP, no authentication), with the metrics
API (``metrics.k8s.io``: what each kubelet measures of its pods; ``PUT
/_emulator/metrics {"served": false}`` removes it), and runs the scheduler and
N kubelets (nodes) against it over HTTP. Each node has a disk of
its own (``DIR/<node>``: emptyDirs, logs); PVCs live in ``DIR/storage``, which
every node reaches, as network volumes are. ``kube_cluster()`` starts it in a
subprocess and writes a kubeconfig for clients (KubeSpawner loads it through
kubernetes_asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from jupyter_sac.stack import free_port

from .stack import http_status, poll_until, stop_process


def parse_images(specs: list[str]) -> dict[str, list[str]]:
    """``name=dir1:dir2`` -> {name: [dir1, dir2]} (the image's PATH directories)."""
    images = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        images[name] = [p for p in path.split(os.pathsep) if p]
    return images


def node_names(count: int) -> list[str]:
    """sac-test-node, or sac-test-node-1 … -N for several."""
    return ["sac-test-node"] if count == 1 else [f"sac-test-node-{i}" for i in range(1, count + 1)]


async def serve(
    port: int, root: Path, images: dict[str, list[str]], backoff: float, nodes: int = 1
) -> None:
    from aiohttp import web

    from .kube_api import make_app
    from .kubelet import Kubelet, Scheduler

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("the test kubelet needs bubblewrap (apt-get install bubblewrap)")
    url = f"http://127.0.0.1:{port}"
    used_ips: set[str] = set()
    kubelets = [
        Kubelet(url, root / name, images, node=name, backoff=backoff, bwrap=bwrap,
                storage=root / "storage", used_ips=used_ips)
        for name in node_names(nodes)
    ]  # fmt: skip

    def pod_metrics(namespace: str, name: str) -> dict[str, Any] | None:
        # metrics-server's answer: what the kubelet running the pod measures.
        found = (k.pod_metrics(namespace, name) for k in kubelets)
        return next((m for m in found if m is not None), None)

    def attach_stdin(namespace: str, name: str) -> asyncio.StreamWriter | None:
        found = (k.attach_stdin(namespace, name) for k in kubelets)
        return next((w for w in found if w is not None), None)

    runner = web.AppRunner(make_app(pod_metrics, attach_stdin))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.gather(Scheduler(url).run(), *(k.run() for k in kubelets))
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--image", action="append", default=[])
    parser.add_argument("--backoff", type=float, default=0.5)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # asyncio.run then cancels the kubelet, which stops its pods

    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.root, parse_images(args.image), args.backoff, args.nodes))


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sac-test", "cluster": {"server": server}}],
        "users": [{"name": "sac-test", "user": {}}],
        "contexts": [
            {
                "name": "sac-test",
                "context": {"cluster": "sac-test", "user": "sac-test", "namespace": namespace},
            }
        ],
        "current-context": "sac-test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def checkout_image() -> list[str]:
    """The test "image" of an agent's sandbox: this checkout's venv commands first on
    PATH, the checkout itself bound in (the venv's libraries and the editable
    jupyter_sac live there, also when it sits under a folder a container gets its
    own of: a clone in /tmp), and the pinned claude CLI, as images/sandbox has it."""
    from jupyter_sac.runtimes.claude import claude_binary

    checkout = str(Path(__file__).resolve().parent.parent)
    return [
        str(Path(sys.executable).parent),
        checkout,
        str(Path(claude_binary() or "claude").parent),
    ]


def hub_config(namespace: str, image: str, extra: str = "") -> str:
    """A hub config running KubeAgentSpawner on the test cluster, as `sac up` starts it
    (``extra``: more config lines)."""
    return (
        f"""
c.JupyterHub.spawner_class = "jupyter_sac.spawner.KubeAgentSpawner"
# Pods outlive the hub, as in a cluster: a restarted hub re-attaches to them.
c.JupyterHub.cleanup_servers = False
# Answer a spawn request at once (202), so the caller reads progress as the spawn page does.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.KubeAgentSpawner.namespace = {namespace!r}
c.KubeAgentSpawner.image = {image!r}
c.KubeAgentSpawner.workspace_storage = "pvc"
# The test "image" is this checkout's venv: its Python's prefix holds the extensions.
c.KubeAgentSpawner.sandbox_python_prefix = {sys.prefix!r}
"""
        + extra
    )


class KubeApi:
    """Reads the cluster's objects over the Kubernetes REST API, as kubectl would."""

    def __init__(self, url: str, namespace: str):
        self.client = httpx.Client(base_url=url, timeout=10)
        self.namespace = namespace

    def _path(self, plural: str) -> str:
        group = "apis/networking.k8s.io/v1" if plural == "networkpolicies" else "api/v1"
        return f"/{group}/namespaces/{self.namespace}/{plural}"

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        resp = self.client.get(f"{self._path(plural)}/{name}")
        return resp.json() if resp.status_code == 200 else None

    def list(self, plural: str, selector: str = "") -> list[dict[str, Any]]:
        resp = self.client.get(self._path(plural), params={"labelSelector": selector})
        resp.raise_for_status()
        return resp.json()["items"]

    def cordon(self, node: str, cordoned: bool = True) -> None:
        """kubectl cordon / uncordon: whether new pods may be scheduled to ``node``."""
        resp = self.client.patch(
            f"/api/v1/nodes/{node}",
            json={"spec": {"unschedulable": cordoned or None}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()

    def nodes(self) -> list[str]:
        resp = self.client.get("/api/v1/nodes")
        resp.raise_for_status()
        return [n["metadata"]["name"] for n in resp.json()["items"]]

    def serve_metrics(self, served: bool) -> None:
        """Install or remove the metrics API (metrics-server) in the test cluster."""
        resp = self.client.put("/_emulator/metrics", json={"served": served})
        resp.raise_for_status()

    def force_delete(self, plural: str, name: str) -> None:
        """kubectl delete --force --grace-period=0: no SIGTERM, no time to save."""
        resp = self.client.delete(f"{self._path(plural)}/{name}", params={"gracePeriodSeconds": 0})
        resp.raise_for_status()


@dataclass
class RunningCluster:
    url: str
    kubeconfig: Path
    root: Path
    log_path: Path


@contextlib.contextmanager
def kube_cluster(
    workdir: Path, images: dict[str, list[str]], namespace: str = "sac", nodes: int = 1
) -> Iterator[RunningCluster]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = workdir / "node"
    log_path = workdir / "kube-cluster.log"
    argv = [sys.executable, "-m", "sac_testing.kube_cluster", "--port", str(port),
            "--root", str(root), "--nodes", str(nodes)]  # fmt: skip
    for name, dirs in images.items():
        argv += ["--image", f"{name}={os.pathsep.join(dirs)}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        poll_until(lambda: http_status(url + "/version") == 200, 60, "Kubernetes API emulator")
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", url, namespace)
        yield RunningCluster(url, kubeconfig, root, log_path)
    finally:
        stop_process(proc, timeout=30)


if __name__ == "__main__":
    main()
