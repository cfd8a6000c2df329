"""Agent create -> ready time with LocalAgentSpawner, next to a stock
SimpleLocalProcessSpawner measured in the same run.

Each run creates a new agent (cold: a new agent, a new sandbox) and times until
its server answers through the proxy; the stock spawner is timed from its start
request to the same point. Both stacks are started with `sac up` on free ports.
Between runs the script waits a few seconds, as users create agents minutes
apart; that lets the warm pool refill (which is what it is for).

Prints the median of N runs of each, their ratio, and FIGURE lines.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-admin-password"
STOCK_CONFIG = """
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.Spawner.args = ["--allow-root"]
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackRun:
    def __init__(self, extra_config: str | None = None):
        self.tmp = tempfile.TemporaryDirectory(prefix="sac-bench-")
        data = Path(self.tmp.name) / "data"
        env = dict(os.environ, SAC_ADMIN_PASSWORD=PASSWORD)
        env.pop("SAC_DATABASE_URL", None)
        if extra_config:
            path = Path(self.tmp.name) / "extra.py"
            path.write_text(
                extra_config.format(
                    home=str(Path(self.tmp.name) / "homes"),
                    singleuser=str(Path(sys.executable).parent / "jupyterhub-singleuser"),
                )
            )
            env["SAC_EXTRA_CONFIG"] = str(path)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.log = open(Path(self.tmp.name) / "sac-up.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_sac.cli",
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(data),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "hub/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("stack did not start; see " + str(self.log.name))
            time.sleep(0.3)
        token = httpx.post(
            self.url + "hub/api/users/admin/tokens",
            json={"auth": {"username": "admin", "password": PASSWORD}},
        ).json()["token"]
        self.client = httpx.Client(
            base_url=self.url, timeout=120, headers={"Authorization": f"token {token}"}
        )
        while self.client.get("services/sac/api/agents").status_code != 200:
            time.sleep(0.3)

    def wait_status(self, path: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get(path, follow_redirects=False).status_code == 200:
                return
            time.sleep(0.02)
        raise SystemExit(f"{path} not ready after {timeout} s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(90)
        self.log.close()
        self.tmp.cleanup()


def bench_agents(runs: int, pause: float) -> list[float]:
    stack = StackRun()
    times = []
    try:
        time.sleep(pause)  # let the pool's first spare finish importing
        for i in range(runs):
            slug = f"bench{i}"
            t0 = time.perf_counter()
            assert (
                stack.client.post("services/sac/api/agents", json={"slug": slug}).status_code == 201
            )
            assert stack.client.post(f"hub/api/users/admin/servers/{slug}").status_code in (
                201,
                202,
            )
            stack.wait_status(f"user/admin/{slug}/sac/api/status")
            times.append(time.perf_counter() - t0)
            print(f"  sac agent {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
            assert (
                stack.client.delete(f"services/sac/api/users/admin/agents/{slug}").status_code
                == 204
            )
            time.sleep(pause)
    finally:
        stack.close()
    return times


def bench_stock(runs: int, pause: float) -> list[float]:
    stack = StackRun(STOCK_CONFIG)
    times = []
    try:
        for i in range(runs):
            name = f"stock{i}"
            t0 = time.perf_counter()
            resp = stack.client.post(f"hub/api/users/admin/servers/{name}")
            assert resp.status_code in (201, 202), resp.text
            stack.wait_status(f"user/admin/{name}/api/status")
            times.append(time.perf_counter() - t0)
            print(f"  stock server {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
            stack.client.request(
                "DELETE", f"hub/api/users/admin/servers/{name}", json={"remove": True}
            )
            time.sleep(pause)
    finally:
        stack.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause", type=float, default=5.0)
    args = parser.parse_args()
    print(f"LocalAgentSpawner: {args.runs} new agents (create -> ready)")
    ours = bench_agents(args.runs, args.pause)
    print(f"SimpleLocalProcessSpawner (stock): {args.runs} named servers (start -> ready)")
    stock = bench_stock(args.runs, args.pause)
    m_ours, m_stock = statistics.median(ours), statistics.median(stock)
    print(f"median agent create->ready: {m_ours:.2f} s (min {min(ours):.2f}, max {max(ours):.2f})")
    print(
        f"median stock start->ready:  {m_stock:.2f} s (min {min(stock):.2f}, max {max(stock):.2f})"
    )
    print(
        f"ratio stock/agent: {m_stock / m_ours:.1f}x; target median <= 2.0 s:"
        f" {'met' if m_ours <= 2.0 else 'NOT met'}"
    )
    print(f"FIGURE spawn_create_to_ready_median {m_ours:.3f} s")
    print(f"FIGURE spawn_create_to_ready_median_baseline {m_stock:.3f} s")
    print(f"FIGURE spawn_speedup_ratio {m_stock / m_ours:.2f} x")


if __name__ == "__main__":
    main()
