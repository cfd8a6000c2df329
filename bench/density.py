"""Idle agents per 8 GiB: what an agent whose Claude terminal was opened, used and
left holds once idle, on the real `sac up` stack.

Each agent, one after another: created (custom provider at the scripted fake
model), started, its Claude terminal opened through the terminals websocket as
JupyterLab opens it (claude's input box on screen), then left. With
`--idle-release` s (SacExtensionApp.terminal_idle_release, set for every agent
through the spawner's args) the terminal has its claude process released; the
agent is measured once that happened (or at once with --idle-release 0, claude
kept). Agents are started until their resident memory reaches 8 GiB, or
`--max-agents` (on a shared machine: a short run, the figure extrapolated).

Per idle agent: RSS summed over its sandbox's processes (bubblewrap, the launcher
that became the single-user server, claude if it runs, anything else), and the
split. Baseline, same run: a bare JupyterLab server's RSS (no jupyter-sac
extension, after serving /lab), started by this script. At the end, with every
agent idle, one agent's shell terminal (through the proxy) and a bare terminado
server's take turns typing a key and timing its echo: p99 of both.

A short run: ``bench/density.py --max-agents 4``. Prints FIGURE lines
(``FIGURE <name> <value> <unit>``; baselines are ``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.stack import free_port
from sac_testing.stack import (
    RunningStack,
    bare_lab,
    embedded_stack,
    http_status,
    poll_until,
    proc_kib,
    process_children,
    process_tree,
    read_terminal_until,
    stop_process,
)

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
BENCH = Path(__file__).resolve().parent
BUDGET_MIB = 8 * 1024
READY_HINT = "for shortcuts"  # claude's idle input box


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rollup_kib(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup's sizes (KiB) by name: Rss, Pss, Anonymous, …"""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value, *_ = line.split()
            out[name.rstrip(":")] = int(value)
    except (OSError, ValueError):
        pass
    return out


def agent_rss(stack: RunningStack, slug: str) -> dict[str, int]:
    """RSS (KiB) of one agent's sandbox processes: the server, claude, the rest;
    and of all of them, the anonymous part (the process's own: heap, stacks)
    and PSS (shared pages, e.g. of libraries every agent maps, divided among
    the processes sharing them)."""
    harness = httpx.Client(
        base_url=stack.url, timeout=60, headers={"Authorization": f"token {stack.harness_token}"}
    )
    server = harness.get("hub/api/users/admin").json()["servers"][slug]
    parts = {"server": 0, "claude": 0, "other": 0}
    shares = {"anonymous": 0, "pss": 0}
    root = server["state"]["pid"]
    # bubblewrap's own processes above the launcher belong to the agent too.
    sandbox = []
    parent = ppid(root)
    while parent and comm(parent) == "bwrap":
        sandbox.append(parent)
        parent = ppid(parent)
    for proc in [*sandbox, *process_tree(root, process_children())]:
        try:
            cmdline = Path(f"/proc/{proc}/cmdline").read_bytes()
        except OSError:
            continue
        name = comm(proc)
        # (bubblewrap's own command line names the launcher too)
        if name.startswith("claude"):
            kind = "claude"
        elif name != "bwrap" and b"jupyter_sac.spawner.launcher" in cmdline:
            kind = "server"
        else:
            kind = "other"
        rollup = rollup_kib(proc)
        parts[kind] += rollup.get("Rss", 0)
        shares["anonymous"] += rollup.get("Anonymous", 0)
        shares["pss"] += rollup.get("Pss", 0)
    return {**parts, **shares}


def bare_lab_rss(workdir: Path) -> int:
    """RSS (KiB) of a JupyterLab server without the jupyter-sac extension, once up."""
    with bare_lab(workdir) as proc:
        return proc_kib(proc.pid, "VmRSS")


async def open_claude_terminal(base: str, headers: dict[str, str]) -> None:
    """Open the Claude terminal as JupyterLab does, until claude's input box shows."""
    async with httpx.AsyncClient(headers=headers, timeout=120) as api:
        resp = await api.post(base + "sac/api/terminal")
        assert resp.status_code == 200, resp.text
    ws = base.replace("http", "ws", 1) + "terminals/websocket/claude"
    conn = await websocket_connect(HTTPRequest(ws, headers=headers))
    conn.write_message(json.dumps(["set_size", 40, 120, 640, 960]))
    await read_terminal_until(conn, READY_HINT, timeout=120)
    conn.close()


def start_idle_agent(
    stack: RunningStack, api: httpx.Client, fake: str, slug: str, idle_release: float
) -> dict[str, int]:
    sac = stack.service_url + "api/"
    fields = {"provider": "custom", "base_url": fake, "api_key": "sk-ant-bench-provider-key"}
    resp = api.post(sac + "agents", json={"slug": slug, **fields})
    assert resp.status_code == 201, resp.text
    resp = api.post(f"hub/api/users/admin/servers/{slug}")
    assert resp.status_code in (201, 202), resp.text
    base = stack.server_url("admin", slug)
    poll_until(lambda: api.get(base + "sac/api/status").status_code == 200, 300, slug)
    asyncio.run(open_claude_terminal(base, dict(api.headers)))
    if idle_release > 0:
        poll_until(
            lambda: api.get(base + "sac/api/terminal").json().get("released"),
            idle_release + 120, f"{slug}'s Claude terminal released",
        )  # fmt: skip
    # Let start-up garbage settle as it would on an agent left alone.
    time.sleep(2)
    return agent_rss(stack, slug)


async def echo_times(
    urls: list[tuple[str, dict[str, str]]], keys: int, interval: float
) -> list[list[float]]:
    """Seconds from each key sent to its echo, one key at a time into bash, in
    each terminal of ``urls`` (websocket URL, headers) in turn: the terminals see
    the same moments of this machine's load without competing with each other."""
    conns = []
    for url, headers in urls:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        conn.write_message(json.dumps(["set_size", 40, 120, 640, 960]))
        conn.write_message(json.dumps(["stdin", "\x15stty -echoctl; PS1='$ '; echo READY''X\r"]))
        await read_terminal_until(conn, "READYX")
        conns.append(conn)
    times: list[list[float]] = [[] for _ in conns]
    for i in range(keys):
        key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
        for conn, timed in zip(conns, times, strict=True):
            if i and i % 60 == 0:
                conn.write_message(json.dumps(["stdin", "\x15"]))  # clear the line (untimed)
            t0 = time.perf_counter()
            conn.write_message(json.dumps(["stdin", key]))
            await read_terminal_until(conn, key, timeout=30)
            timed.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)
    for conn in conns:
        conn.close()
    return times


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def run(args: argparse.Namespace) -> None:
    fake_port, bare_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    helpers = [
        subprocess.Popen([sys.executable, "-m", "sac_testing.fake_anthropic", "--port",
                          str(fake_port)], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(BENCH / "terminal.py"), "--serve-bare",
                          str(bare_port)]),
    ]  # fmt: skip
    samples: list[dict[str, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp:
            workdir = Path(tmp)
            config = workdir / "density.py"
            config.write_text(
                "c.Spawner.args = ['--SacExtensionApp.terminal_idle_release="
                f"{args.idle_release}']\n"
            )
            with embedded_stack(workdir, PASSWORD, extra_config=config) as stack:
                poll_until(lambda: http_status(fake + "/_fake/requests") == 200, 60, "fake")
                headers = {"Authorization": f"token {stack.admin_token}"}
                api = httpx.Client(base_url=stack.url, headers=headers, timeout=120)
                resp = api.put(stack.service_url + "api/settings/system",
                               json={"max_agents_per_user": args.max_agents + 1})  # fmt: skip
                assert resp.status_code == 200, resp.text
                used = 0.0
                while len(samples) < args.max_agents and used < BUDGET_MIB:
                    slug = f"idle{len(samples):03d}"
                    samples.append(start_idle_agent(stack, api, fake, slug, args.idle_release))
                    last = sum(samples[-1][k] for k in ("server", "claude", "other")) / 1024
                    used += last
                    print(f"  {len(samples)} idle agents, {used:.0f} MiB RSS (last: {last:.0f}"
                          f" MiB, of which anonymous {samples[-1]['anonymous'] / 1024:.0f} MiB;"
                          f" PSS {samples[-1]['pss'] / 1024:.0f} MiB)", flush=True)  # fmt: skip
                # Every agent idle: one of them in use again, a shell terminal typing.
                server = stack.server_url("admin", "idle000")
                name = api.post(server + "api/terminals").json()["name"]
                ws = server.replace("http", "ws", 1) + f"terminals/websocket/{name}"
                bare_name = httpx.post(f"http://127.0.0.1:{bare_port}/new", content=b"").json()
                bare_ws = f"ws://127.0.0.1:{bare_port}/websocket/{bare_name['name']}"

                echo, echo_bare = asyncio.run(
                    echo_times([(ws, headers), (bare_ws, {})], args.keys, args.type_interval)
                )
            bare_rss = bare_lab_rss(workdir) / 1024
    finally:
        for proc in helpers:
            stop_process(proc)
    rss_parts = ("server", "claude", "other")
    totals = [sum(s[k] for k in rss_parts) / 1024 for s in samples]
    median = statistics.median(totals)
    part = {k: statistics.median(s[k] for s in samples) / 1024 for k in samples[0]}
    per_8gib = int(BUDGET_MIB // median)
    reached = sum(totals) >= BUDGET_MIB
    print(
        f"{len(samples)} idle agents (terminal released after {args.idle_release} s):"
        f" median {median:.0f} MiB RSS each = server {part['server']:.0f}"
        f" + claude {part['claude']:.0f} + other {part['other']:.0f};"
        f" bare JupyterLab server {bare_rss:.0f} MiB; {sum(totals):.0f} MiB in all"
        + ("" if reached else f" (capped by --max-agents; {per_8gib} per 8 GiB extrapolated)")
    )
    print(f"echo with every agent idle: p99 {p99(echo) * 1000:.2f} ms through the stack,"
          f" {p99(echo_bare) * 1000:.2f} ms bare terminado ({len(echo)} keys each)")  # fmt: skip
    print(f"FIGURE idle_agent_rss {median:.0f} MiB")
    print(f"FIGURE idle_agent_rss_baseline {bare_rss:.0f} MiB")
    print(f"FIGURE idle_agent_rss_server {part['server']:.0f} MiB")
    print(f"FIGURE idle_agent_rss_claude {part['claude']:.0f} MiB")
    print(f"FIGURE idle_agent_rss_other {part['other']:.0f} MiB")
    print(f"FIGURE idle_agent_anonymous {part['anonymous']:.0f} MiB")
    print(f"FIGURE idle_agent_pss {part['pss']:.0f} MiB")
    print(f"FIGURE agents_per_8gib {per_8gib} agents")
    print(f"FIGURE density_echo_p99 {p99(echo) * 1000:.2f} ms")
    print(f"FIGURE density_echo_p99_baseline {p99(echo_bare) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-agents", type=int, default=1000,
                        help="stop after this many agents even below 8 GiB")  # fmt: skip
    parser.add_argument("--idle-release", type=float, default=2.0,
                        help="the agents' terminal_idle_release (0: keep claude)")  # fmt: skip
    parser.add_argument("--keys", type=int, default=300, help="keys typed at the end")
    parser.add_argument("--type-interval", type=float, default=0.05,
                        help="seconds between two keys")  # fmt: skip
    run(parser.parse_args())


if __name__ == "__main__":
    main()
