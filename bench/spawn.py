"""Agent create -> ready time with LocalAgentSpawner, next to a stock
SimpleLocalProcessSpawner measured in the same run, where the time goes, and five
agents created at the same moment.

Each run creates a new agent (a new agent, a new sandbox) and times until its
server answers through the proxy; the stock spawner is timed from its start
request to the same point. Both stacks are started with `sac up` on free ports.
Runs are --interval seconds apart (a modelled arrival rate: users create agents
minutes apart), which is what the warm pool is sized for; each run also waits
until the pool's spare has done its imports (on a busy machine they can take
longer than the interval), so the runs time warm starts.

Each of our runs is split into phases: the service's create request, the hub's
steps before the spawner's start (its bookkeeping, the server's token), the
spawner's own steps (from its `spawn phases` line in the hub log: the agent's
record, settings and token; the sandbox; limits; relays; the server's start
until it answers), the hub's steps after (its readiness check, the proxy's
route), and the first request through the proxy (the server checks the token
with the hub). The median of each is printed as a FIGURE.

Then --burst agents are created at the same moment, twice: first with the pool
at its resting size (`warm_sandboxes`), then once it has grown to the demand it
saw (up to `warm_sandboxes_max`); the slowest agent of each burst is printed.

Prints medians, their ratio, and FIGURE lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.spawner.local import LocalAgentSpawner
from jupyter_sac.spawner.phases import parse_log_line
from jupyter_sac.spawner.sandbox import descendants
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
# Our stack as `sac up` has it, but for the pool's ceiling (the burst's size).
AGENTS_CONFIG = (
    "c.LocalAgentSpawner.warm_sandboxes_max = {burst}\n"
    "c.LocalAgentSpawner.warm_sandboxes = {warm}\n"
)
SPAWNER_PHASES = ("prepare", "sandbox", "limits", "relays", "server")
PHASES = ("service_create", "hub_before_start", *SPAWNER_PHASES, "hub_after_start", "first_request")


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


@dataclass
class AgentStart:
    """Wall-clock instants (time.time()) of one create -> ready, seen from outside."""

    slug: str
    created: float = 0.0  # before the service's create request
    create_answered: float = 0.0
    start_sent: float = 0.0
    start_answered: float = 0.0
    ready: float = 0.0
    spawner: dict[str, float] = field(default_factory=dict)
    # CPU seconds its sandbox used from its start (as a spare) to ready: imports,
    # the server's start, the first requests.
    cpu: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ready - self.created

    def phases(self) -> dict[str, float]:
        s = self.spawner
        found = {
            "service_create": self.create_answered - self.created,
            "hub_before_start": s["started_at"] - self.start_sent,
            **{name: s.get(name, 0.0) for name in SPAWNER_PHASES},
            "hub_after_start": self.start_answered - s["ended_at"],
            "first_request": self.ready - self.start_answered,
        }
        return found


def create_and_start(client: httpx.Client, stack: RunningStack, slug: str) -> AgentStart:
    run = AgentStart(slug, created=time.time())
    resp = client.post(stack.service_url + "api/agents", json={"slug": slug})
    assert resp.status_code == 201, resp.text
    run.create_answered = run.start_sent = time.time()
    resp = client.post(f"hub/api/users/admin/servers/{slug}")
    assert resp.status_code in (201, 202), resp.text
    run.start_answered = time.time()
    wait_status(client, stack.server_url("admin", slug) + "sac/api/status")
    run.ready = time.time()
    return run


def read_spawner_phases(stack: RunningStack, runs: list[AgentStart]) -> None:
    by_slug = {run.slug: run for run in runs}
    for line in stack.log_path.read_text(errors="replace").splitlines():
        found = parse_log_line(line)
        if found is not None:
            slug = found[0].partition(":")[2]
            if slug in by_slug:
                by_slug[slug].spawner = found[1]


def delete_agents(client: httpx.Client, stack: RunningStack, slugs: list[str]) -> None:
    for slug in slugs:
        resp = client.delete(stack.service_url + f"api/users/admin/agents/{slug}")
        assert resp.status_code == 204, resp.text


def spares(stack: RunningStack) -> int:
    path = stack.data_dir / "sandboxes"
    return len(list(path.iterdir())) if path.is_dir() else 0


def burst(client: httpx.Client, stack: RunningStack, size: int, tag: str) -> list[float]:
    """``size`` agents created and started at the same moment, each in a thread."""
    slugs = [f"{tag}{i}" for i in range(size)]
    results: dict[str, AgentStart] = {}
    gate = threading.Barrier(size)

    def one(slug: str) -> None:
        gate.wait()
        results[slug] = create_and_start(client, stack, slug)

    threads = [threading.Thread(target=one, args=(slug,)) for slug in slugs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == size, "an agent of the burst did not start"
    times = sorted(results[s].seconds for s in slugs)
    print("  " + ", ".join(f"{t:.2f} s" for t in times), flush=True)
    read_spawner_phases(stack, list(results.values()))
    slowest = max(results.values(), key=lambda run: run.seconds)
    if slowest.spawner:
        steps = ", ".join(f"{k} {1000 * v:.0f}" for k, v in slowest.phases().items())
        print(f"  the slowest, in ms: {steps}", flush=True)
    delete_agents(client, stack, slugs)
    return times


def cpu_ticks(pid: int) -> int:
    """CPU time (clock ticks) used so far by ``pid`` and its descendants."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


def start_cpu(stack: RunningStack, slug: str) -> float:
    """CPU seconds the agent's sandbox (its process tree) has used so far."""
    (pid_file,) = (stack.data_dir / "agents").glob(f"*-{slug}/sandbox.json")
    pid = int(json.loads(pid_file.read_text())["pid"])
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def wait_for_spares(stack: RunningStack, count: int, quiet: float = 1.0) -> None:
    """Until the pool holds ``count`` spares whose imports are done: their processes
    (named by each spare's pid file) used no CPU for ``quiet`` seconds."""
    poll_until(lambda: spares(stack) >= count, 120, f"{count} spares", interval=0.2)
    pids = []
    for root in (stack.data_dir / "sandboxes").iterdir():
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(int(json.loads((root / "sandbox.json").read_text())["pid"]))
    before = [-1] * len(pids)

    def settled() -> bool:
        now = [cpu_ticks(pid) for pid in pids]
        done = now == before
        before[:] = now
        return done

    poll_until(settled, 180, "the spares' imports", interval=quiet)


def bench_agents(
    runs: int, interval: float, burst_size: int, warm: int
) -> tuple[list[AgentStart], list[float], list[float]]:
    starts = []
    config = AGENTS_CONFIG.format(burst=max(burst_size, warm), warm=warm)
    with stack_client(config) as (client, stack):
        wait_for_spares(stack, warm)
        for i in range(runs):
            run = create_and_start(client, stack, f"bench{i}")
            run.cpu = start_cpu(stack, run.slug)
            starts.append(run)
            print(f"  sac agent {i + 1}/{runs}: {run.seconds:.2f} s", flush=True)
            delete_agents(client, stack, [run.slug])
            time.sleep(interval)
            # On a busy machine a spare's imports can outlast the interval.
            wait_for_spares(stack, warm)
        read_spawner_phases(stack, starts)
        first: list[float] = []
        grown: list[float] = []
        if burst_size:
            print(f"{burst_size} agents at once, the pool at its resting size:")
            first = burst(client, stack, burst_size, "first")
            wait_for_spares(stack, burst_size)
            print(f"{burst_size} agents at once, the pool grown to the demand it saw:")
            grown = burst(client, stack, burst_size, "grown")
    return starts, first, grown


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
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds between two creations (users create agents minutes apart; a new"
        " spare's imports take a few seconds of CPU, more on a busy machine)",
    )
    parser.add_argument("--burst", type=int, default=5, help="agents created at once (0: none)")
    parser.add_argument(
        "--warm",
        type=int,
        default=LocalAgentSpawner.warm_sandboxes.default_value,
        help="spares the pool keeps at rest (c.LocalAgentSpawner.warm_sandboxes;"
        " default: its default)",
    )
    parser.add_argument(
        "--stock-runs", type=int, default=None, help="stock servers to time (default: --runs)"
    )
    args = parser.parse_args()
    print(f"LocalAgentSpawner: {args.runs} new agents (create -> ready), {args.warm} spare(s)")
    ours, first, grown = bench_agents(args.runs, args.interval, args.burst, args.warm)
    stock_runs = args.runs if args.stock_runs is None else args.stock_runs
    print(f"SimpleLocalProcessSpawner (stock): {stock_runs} named servers (start -> ready)")
    stock = bench_stock(stock_runs, args.interval) if stock_runs else [float("nan")]
    times = [run.seconds for run in ours]
    m_ours, m_stock = statistics.median(times), statistics.median(stock)
    print(
        f"median agent create->ready: {m_ours:.2f} s (min {min(times):.2f}, max {max(times):.2f})"
    )
    print(
        f"median stock start->ready:  {m_stock:.2f} s (min {min(stock):.2f}, max {max(stock):.2f})"
    )
    print(
        f"ratio stock/agent: {m_stock / m_ours:.1f}x; target median <= 0.7 s:"
        f" {'met' if m_ours <= 0.7 else 'NOT met'}"
    )
    print("where an agent's start goes (median of each phase):")
    for name in PHASES:
        values = [run.phases()[name] for run in ours if run.spawner]
        if values:
            print(f"FIGURE spawn_phase_{name} {1000 * statistics.median(values):.0f} ms")
    print(f"FIGURE spawn_ready_median {m_ours:.3f} s")
    print(f"FIGURE spawn_ready_median_baseline {m_stock:.3f} s")
    print(f"FIGURE spawn_speedup_ratio {m_stock / m_ours:.2f} x")
    cpu = statistics.median(run.cpu for run in ours)
    print(f"FIGURE spawn_start_cpu {cpu:.2f} s")
    if first:
        # The pool at rest holds warm_sandboxes spares: the rest of a burst starts
        # cold, and its CPU alone, shared by this machine's cores, takes at least this.
        floor = max(0, args.burst - args.warm) * cpu / (os.cpu_count() or 1)
        print(f"FIGURE spawn_concurrent{args.burst}_first_cpu_floor {floor:.3f} s")
        print(f"FIGURE spawn_concurrent{args.burst}_first_max {max(first):.3f} s")
    if grown:
        print(f"FIGURE spawn_concurrent{args.burst}_max {max(grown):.3f} s")


if __name__ == "__main__":
    main()
