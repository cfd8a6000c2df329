"""The proxy hop: configurable-http-proxy and Traefik side by side, against a bare
terminado server, in the same run (docs/architecture.md#the-proxy).

Both proxies are JupyterHub's own proxy classes, configured as `sac up` configures
them (jupyter_sac.hubconfig.configure_proxy), started here with host routing, and
given one route each to the same terminado server (the bare baseline, reached
directly). Measured, interleaved in blocks so machine noise falls on all alike:

- keystroke echo: one key at a time into bash's line editor, timed until the echo
  comes back (N keys each, default 1,000); p50 and p99;
- output throughput: the terminal prints M MB (default 100) of text; bytes
  received over the websocket per second (median of two rounds);
- route-add latency: `Proxy.add_route` as the hub calls it when a server starts,
  until the proxy routes it (Traefik's class waits until its API shows the route);
  median and worst of R routes (default 20);
- memory: the proxy process's RSS after all that.

Prints FIGURE lines (see the README of bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from jupyterhub.proxy import ConfigurableHTTPProxy, Proxy
from terminal import connect, echo_latencies, summary, throughput  # bench/, beside this
from traitlets.config import Config

from jupyter_sac.hubconfig import configure_proxy
from jupyter_sac.proxy import SacTraefikProxy
from jupyter_sac.rules.proxies import PROXIES
from jupyter_sac.stack import find_chp, find_traefik, free_port
from sac_testing.stack import http_status, poll_until, stop_process

HOST = "bench.localhost"  # the route's host, as a user's host under subdomains


def make_proxy(kind: str, workdir: Path, hub_port: int) -> tuple[Proxy, int]:
    """A proxy of ``kind`` configured as `sac up` does, not yet started; its port."""
    c = Config()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SAC_CHP_COMMAND"] = find_chp() or "configurable-http-proxy"
    os.environ["SAC_TRAEFIK_COMMAND"] = find_traefik() or "traefik"
    hub_url = f"http://127.0.0.1:{hub_port}"
    configure_proxy(c, kind, str(workdir), api_port=free_port(), hub_api_url=hub_url)
    port = free_port()
    # What JupyterHub hands its proxy: the app (subdomain_host, internal_ssl) and the hub.
    app = SimpleNamespace(subdomain_host=f"http://localhost:{port}", internal_ssl=False)
    hub = SimpleNamespace(url=f"{hub_url}/hub/", host=hub_url)
    cls: type[Proxy] = ConfigurableHTTPProxy if kind == "chp" else SacTraefikProxy
    kwargs: dict[str, Any] = dict(
        config=c, app=app, hub=hub, public_url=f"http://127.0.0.1:{port}/", host_routing=True
    )
    if kind == "chp":
        kwargs["auth_token"] = "bench-proxy-token"
    return cls(**kwargs), port


def proxy_pid(kind: str, proxy: Proxy) -> int:
    process = proxy.proxy_process if kind == "chp" else proxy.traefik_process  # type: ignore[attr-defined]
    return process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def route_add_latencies(proxy: Proxy, target: str, routes: int) -> list[float]:
    """Seconds for each of ``routes`` new routes, added one after another."""
    times = []
    for i in range(routes):
        t0 = time.perf_counter()
        await proxy.add_route(f"{HOST}/user/bench/route-{i}/", target, {"user": "bench"})
        times.append(time.perf_counter() - t0)
    for i in range(routes):
        await proxy.delete_route(f"{HOST}/user/bench/route-{i}/")
    return times


async def run(kinds: list[str], keys: int, megabytes: int, routes: int, bare_port: int) -> None:
    bare = f"http://127.0.0.1:{bare_port}"
    workdir = Path(tempfile.mkdtemp(prefix="sac-bench-proxy-"))
    proxies: dict[str, tuple[Proxy, int]] = {}
    try:
        for kind in kinds:
            proxy, port = make_proxy(kind, workdir / kind, hub_port=free_port())
            await proxy.start()
            proxies[kind] = (proxy, port)
        route_add: dict[str, list[float]] = {kind: [] for kind in kinds}
        # Route adds interleaved too, a few at a time.
        for _ in range(max(1, routes // 5)):
            for kind, (proxy, _) in proxies.items():
                route_add[kind] += await route_add_latencies(proxy, bare, 5)
        for proxy, _ in proxies.values():
            await proxy.add_route(f"{HOST}/", bare, {"user": "bench"})

        async def new_terminal(base: str, headers: dict[str, str]) -> str:
            async with httpx.AsyncClient() as client:
                resp = await client.post(base + "/new", content=b"", headers=headers)
            return resp.json()["name"]

        sides: dict[str, tuple[str, dict[str, str]]] = {"bare": (bare, {})}
        for kind, (_, port) in proxies.items():
            sides[kind] = (f"http://127.0.0.1:{port}", {"Host": HOST})
        conns = {}
        for side, (base, headers) in sides.items():
            name = await new_terminal(base, headers)
            ws = base.replace("http", "ws", 1) + f"/websocket/{name}"
            conns[side] = await connect(ws, headers)
        lat: dict[str, list[float]] = {side: [] for side in sides}
        block = 100
        for start in range(0, keys, block):
            for side, conn in conns.items():
                lat[side] += await echo_latencies(conn, min(block, keys - start))
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(2):
            for side, conn in conns.items():
                rates[side].append(await throughput(conn, megabytes // 2))
        for conn in conns.values():
            conn.close()
        memory = {kind: rss_mib(proxy_pid(kind, proxy)) for kind, (proxy, _) in proxies.items()}
    finally:
        for proxy, _ in proxies.values():
            stopped = proxy.stop()  # ConfigurableHTTPProxy's is not a coroutine
            if inspect.isawaitable(stopped):
                await stopped

    echo = {side: summary(values) for side, values in lat.items()}
    mbps = {side: statistics.median(values) / 1e6 for side, values in rates.items()}
    print(f"keystroke echo over {keys} keys each (p50 / p99), output MB/s:")
    for side in sides:
        ratio = echo[side]["p99_ms"] / echo["bare"]["p99_ms"]
        print(
            f"  {side:8} {echo[side]['p50_ms']:6.2f} / {echo[side]['p99_ms']:6.2f} ms"
            f"  (p99 {ratio:.2f}x bare)   {mbps[side]:7.1f} MB/s"
        )
    for kind in kinds:
        adds = sorted(route_add[kind])
        print(
            f"  {kind:8} route add: median {statistics.median(adds) * 1000:.1f} ms,"
            f" worst {adds[-1] * 1000:.1f} ms over {len(adds)}; RSS {memory[kind]:.1f} MiB"
        )
    print(f"FIGURE echo_p99_bare {echo['bare']['p99_ms']:.3f} ms")
    print(f"FIGURE echo_p50_bare {echo['bare']['p50_ms']:.3f} ms")
    print(f"FIGURE throughput_bare {mbps['bare']:.1f} MB/s")
    for kind in kinds:
        print(f"FIGURE echo_p99_{kind} {echo[kind]['p99_ms']:.3f} ms")
        print(f"FIGURE echo_p50_{kind} {echo[kind]['p50_ms']:.3f} ms")
        print(f"FIGURE echo_p99_ratio_{kind} {echo[kind]['p99_ms'] / echo['bare']['p99_ms']:.2f} x")
        print(f"FIGURE throughput_{kind} {mbps[kind]:.1f} MB/s")
        print(f"FIGURE route_add_{kind} {statistics.median(route_add[kind]) * 1000:.1f} ms")
        print(f"FIGURE proxy_rss_{kind} {memory[kind]:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--proxy", action="append", choices=PROXIES, help="default: both")
    args = parser.parse_args()
    bare_port = free_port()
    terminal = Path(__file__).resolve().parent / "terminal.py"
    bare = subprocess.Popen([sys.executable, str(terminal), "--serve-bare", str(bare_port)])
    try:
        poll_until(lambda: http_status(f"http://127.0.0.1:{bare_port}/new") == 405, 30, "bare")
        kinds = args.proxy or list(PROXIES)
        asyncio.run(run(kinds, args.keys, args.megabytes, args.routes, bare_port))
    finally:
        stop_process(bare)


if __name__ == "__main__":
    main()
