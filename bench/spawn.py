"""Agent create -> ready time with LocalAgentSpawner, next to a stock
SimpleLocalProcessSpawner measured in the same run.

Each run creates a new agent (cold: a new agent, a new sandbox) and times until
its server answers through the proxy; the stock spawner is timed from its start
request to the same point. Both stacks are started with `sac up` on free ports.
Runs are --interval seconds apart (a modelled arrival rate: users create agents
minutes apart), which is what the warm pool is sized for; the first run comes as
soon as the stack answers, so it may wait for the pool's first spare.

Prints the median of N runs of each, their ratio, and FIGURE lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from jupyter_sac.localhost import resolve_localhost
from sac_testing.stack import RunningStack, embedded_stack, poll_until

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
STOCK_CONFIG = """
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.Spawner.args = ["--allow-root"]
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
"""


@contextmanager
def stack_client(
    extra_config: str | None = None,
) -> Iterator[tuple[httpx.Client, RunningStack]]:
    """`sac up` on free ports (the same launcher the tests use); an admin client for it."""
    with tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp:
        workdir = Path(tmp)
        extra = None
        if extra_config:
            extra = workdir / "extra.py"
            extra.write_text(
                extra_config.format(
                    home=str(workdir / "homes"),
                    singleuser=str(Path(sys.executable).parent / "jupyterhub-singleuser"),
                )
            )
        with (
            embedded_stack(workdir, PASSWORD, extra) as stack,
            httpx.Client(
                base_url=stack.url,
                timeout=120,
                headers={"Authorization": f"token {stack.admin_token}"},
            ) as client,
        ):
            yield client, stack


def wait_status(client: httpx.Client, path: str) -> None:
    poll_until(
        lambda: client.get(path, follow_redirects=False).status_code == 200,
        120,
        path,
        interval=0.02,
    )


def bench_agents(runs: int, interval: float) -> list[float]:
    times = []
    with stack_client() as (client, stack):
        for i in range(runs):
            slug = f"bench{i}"
            t0 = time.perf_counter()
            sac = stack.service_url
            assert client.post(sac + "api/agents", json={"slug": slug}).status_code == 201
            assert client.post(f"hub/api/users/admin/servers/{slug}").status_code in (
                201,
                202,
            )
            wait_status(client, stack.server_url("admin", slug) + "sac/api/status")
            times.append(time.perf_counter() - t0)
            print(f"  sac agent {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
            assert client.delete(sac + f"api/users/admin/agents/{slug}").status_code == 204
            time.sleep(interval)
    return times


def bench_stock(runs: int, interval: float) -> list[float]:
    times = []
    with stack_client(STOCK_CONFIG) as (client, stack):
        for i in range(runs):
            name = f"stock{i}"
            t0 = time.perf_counter()
            resp = client.post(f"hub/api/users/admin/servers/{name}")
            assert resp.status_code in (201, 202), resp.text
            wait_status(client, stack.server_url("admin", name) + "api/status")
            times.append(time.perf_counter() - t0)
            print(f"  stock server {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
            client.request("DELETE", f"hub/api/users/admin/servers/{name}", json={"remove": True})
            time.sleep(interval)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="seconds between two creations (users create agents minutes apart)",
    )
    args = parser.parse_args()
    print(f"LocalAgentSpawner: {args.runs} new agents (create -> ready)")
    ours = bench_agents(args.runs, args.interval)
    print(f"SimpleLocalProcessSpawner (stock): {args.runs} named servers (start -> ready)")
    stock = bench_stock(args.runs, args.interval)
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
