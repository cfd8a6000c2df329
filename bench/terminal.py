"""Terminal latency and throughput: an agent's terminal through the whole stack
(browser-side websocket -> the proxy (`--proxy chp|traefik`) -> single-user server in its
sandbox -> PTY -> back), next to a bare terminado server measured in the same run.

- Keystroke echo: one key at a time into bash's line editor, timed until the
  echo comes back; N keys (default 1,000); p50 and p99.
- Output throughput: the terminal prints M MB (default 200) of text; bytes
  received over the websocket per second.

The bare baseline is terminado's own TermSocket on a tornado server on
localhost (no proxy, no auth, no sandbox), started by this script.
Prints FIGURE lines (see the README of bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.rules.proxies import PROXIES
from jupyter_sac.stack import free_port
from sac_testing.stack import (
    embedded_stack,
    http_status,
    poll_until,
    read_terminal_until,
    stop_process,
)

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"


# ---- the bare terminado baseline ------------------------------------------------


def serve_bare(port: int) -> None:
    import tornado.web
    from terminado import NamedTermManager, TermSocket

    async def main() -> None:
        manager = NamedTermManager(shell_command=["bash", "--norc", "--noprofile"])
        app = tornado.web.Application(
            [
                (r"/new", NewTerminal, {"manager": manager}),
                (r"/websocket/(\w+)", TermSocket, {"term_manager": manager}),
            ]
        )
        app.listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    class NewTerminal(tornado.web.RequestHandler):
        def initialize(self, manager: NamedTermManager) -> None:
            self.manager = manager

        def post(self) -> None:
            name, _ = self.manager.new_named_terminal()
            self.finish({"name": name})

    asyncio.run(main())


# ---- measuring ------------------------------------------------------------------


async def _drain(conn: WebSocketClientConnection, quiet: float) -> None:
    while True:
        try:
            await asyncio.wait_for(conn.read_message(), quiet)
        except TimeoutError:
            return


async def echo_latencies(conn: WebSocketClientConnection, keys: int) -> list[float]:
    conn.write_message(json.dumps(["stdin", "\x15stty -echoctl; PS1='$ '; echo READY''X\r"]))
    await read_terminal_until(conn, "READYX")
    await _drain(conn, 0.3)
    times = []
    for i in range(keys):
        if i and i % 60 == 0:
            conn.write_message(json.dumps(["stdin", "\x15"]))  # clear the line (untimed)
            await _drain(conn, 0.05)
        key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
        t0 = time.perf_counter()
        conn.write_message(json.dumps(["stdin", key]))
        await read_terminal_until(conn, key)
        times.append(time.perf_counter() - t0)
    return times


async def throughput(conn: WebSocketClientConnection, megabytes: int) -> float:
    """Bytes per second of terminal output received over the websocket."""
    total = megabytes * 1_000_000
    # Text lines of 99 characters, written in blocks like `cat` of a big file.
    await _drain(conn, 0.1)
    command = f"\x15base64 -w 99 /dev/zero | head -c {total}; echo DONE''MARK\r"
    conn.write_message(json.dumps(["stdin", command]))
    received = messages = 0
    t0 = time.perf_counter()
    tail = ""
    while "DONEMARK" not in tail:
        msg = await asyncio.wait_for(conn.read_message(), 120)
        if msg is None:
            raise RuntimeError("terminal closed")
        kind, *rest = json.loads(msg)
        if kind == "stdout":
            received += len(rest[0])
            messages += 1
            tail = (tail + rest[0])[-64:]
    rate = received / (time.perf_counter() - t0)
    print(f"  ({messages} messages, {received // max(messages, 1)} characters each on average)")
    return rate


async def connect(ws_url: str, headers: dict[str, str]) -> WebSocketClientConnection:
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers), max_message_size=1 << 30)
    conn.write_message(json.dumps(["set_size", 40, 120, 640, 960]))
    return conn


def summary(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
    }


async def measure(
    agent_ws: str, headers: dict[str, str], bare_ws: str, keys: int, megabytes: int
) -> tuple[dict, dict]:
    """Both sides in alternating blocks, so machine noise falls on both alike."""
    agent, bare = await connect(agent_ws, headers), await connect(bare_ws, {})
    lat: dict[str, list[float]] = {"agent": [], "bare": []}
    block = 100
    for start in range(0, keys, block):
        n = min(block, keys - start)
        lat["agent"] += await echo_latencies(agent, n)
        lat["bare"] += await echo_latencies(bare, n)
    rates: dict[str, list[float]] = {"agent": [], "bare": []}
    for _ in range(2):
        rates["agent"].append(await throughput(agent, megabytes // 2))
        rates["bare"].append(await throughput(bare, megabytes // 2))
    agent.close()
    bare.close()
    if os.environ.get("SAC_BENCH_DEBUG"):
        for side, values in lat.items():
            worst = sorted(range(len(values)), key=values.__getitem__)[-12:]
            print(side, [(i, round(values[i] * 1000, 2)) for i in sorted(worst)])
    return (
        {**summary(lat["agent"]), "mb_per_s": statistics.median(rates["agent"]) / 1e6},
        {**summary(lat["bare"]), "mb_per_s": statistics.median(rates["bare"]) / 1e6},
    )


# The warm pool's next spare imports JupyterLab right after an agent is ready;
# this measures terminals, not spawning, so the pool is off.
EXTRA_CONFIG = "c.LocalAgentSpawner.warm_sandboxes = 0\n"


def run(keys: int, megabytes: int, proxy: str | None = None) -> None:
    port = free_port()
    bare_proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)])
    try:
        with (
            tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
            embedded_stack(
                Path(tmp),
                PASSWORD,
                _write(Path(tmp), EXTRA_CONFIG),
                env={"SAC_PROXY": proxy} if proxy else None,
            ) as stack,
        ):
            poll_until(lambda: http_status(f"http://127.0.0.1:{port}/new") == 405, 30, "bare")
            bare_name = httpx.post(f"http://127.0.0.1:{port}/new", content=b"").json()["name"]
            bare_ws = f"ws://127.0.0.1:{port}/websocket/{bare_name}"

            headers = {"Authorization": f"token {stack.admin_token}"}
            api = httpx.Client(base_url=stack.url, headers=headers, timeout=120)
            created = api.post(stack.service_url + "api/agents", json={"slug": "bench"})
            assert created.status_code == 201, created.text
            assert api.post("hub/api/users/admin/servers/bench").status_code in (201, 202)
            server = stack.server_url("admin", "bench")
            poll_until(
                lambda: api.get(server + "sac/api/status").status_code == 200,
                120,
                "agent",
            )
            name = api.post(server + "api/terminals").json()["name"]
            agent_ws = server.replace("http", "ws", 1) + f"terminals/websocket/{name}"
            if os.environ.get("SAC_BENCH_DEBUG"):
                # The same agent server without the proxy hop (its route's target).
                routes = api.get("hub/api/proxy").json()
                (target,) = [
                    r["target"] for k, r in routes.items() if k.endswith("/user/admin/bench/")
                ]
                direct_ws = target.replace("http", "ws", 1) + (
                    f"/user/admin/bench/terminals/websocket/{name}"
                )
                direct, _ = asyncio.run(measure(direct_ws, headers, bare_ws, keys, 2))
                print("direct to the agent server (no proxy):", direct)
            agent, baseline = asyncio.run(measure(agent_ws, headers, bare_ws, keys, megabytes))
    finally:
        stop_process(bare_proc)

    print(f"keystroke echo over {keys} keys each (p50 / p99):")
    print(f"  agent terminal via proxy: {agent['p50_ms']:.2f} / {agent['p99_ms']:.2f} ms")
    print(f"  bare terminado:           {baseline['p50_ms']:.2f} / {baseline['p99_ms']:.2f} ms")
    print(f"  p99 ratio: {agent['p99_ms'] / baseline['p99_ms']:.2f}x")
    print(f"output throughput (median of 2 x {megabytes // 2} MB):")
    print(f"  agent terminal via proxy: {agent['mb_per_s']:.1f} MB/s")
    print(f"  bare terminado:           {baseline['mb_per_s']:.1f} MB/s")
    print(f"FIGURE terminal_echo_p99 {agent['p99_ms']:.3f} ms")
    print(f"FIGURE terminal_echo_p99_baseline {baseline['p99_ms']:.3f} ms")
    print(f"FIGURE terminal_echo_p50 {agent['p50_ms']:.3f} ms")
    print(f"FIGURE terminal_echo_p50_baseline {baseline['p50_ms']:.3f} ms")
    print(f"FIGURE terminal_throughput {agent['mb_per_s']:.1f} MB/s")
    print(f"FIGURE terminal_throughput_baseline {baseline['mb_per_s']:.1f} MB/s")


def _write(directory: Path, text: str) -> Path:
    path = directory / "extra_config.py"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--proxy", choices=PROXIES, help="the stack's proxy (default: `sac up`'s)")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    run(args.keys, args.megabytes, args.proxy)


if __name__ == "__main__":
    main()
