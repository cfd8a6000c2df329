"""Everything at once on one machine, through the real `sac up` stack, for --duration s.

- --agents running agents (LocalAgentSpawner sandboxes), all the administrator's;
- --terminals open terminals spread over them, each typing one key every
  --type-interval s and timing its echo (JupyterLab's terminal websocket, through
  the proxy); baseline: one terminal of a bare terminado server on this machine
  typing at the same rate at the same time (bench/terminal.py --serve-bare);
- --chats concurrent chat turns (each on its own agent: POST sac/api/chat, timed
  until its turn_end on the chat events websocket) with the real claude CLI
  against the scripted fake model (sac_testing/fake_anthropic.py) through the
  credential proxy; baseline: the same CLI turn run bare on the host (no sandbox,
  no extension, no proxy) against the same fake, one at a time, at the same time;
- history ingest: 100-event batches to POST api/history/ingest every 0.5 s with
  an agent token, through the proxy;
- workspace sync: every --sync-interval s a 10 KiB file is written into the next
  agent's workspace on the host; its sandbox's sync uploads it, and at the end
  every file must be listed by the service.

Errors (FIGURE load_errors, target 0): any request answered other than expected,
a websocket closed or timed out, a chat turn that fails, a batch not stored, a
file not synced within a minute of the end, and every 5xx configurable-http-proxy
logged during the run. Sampled every 2 s: the service's resident memory and
PostgreSQL's client connections (maxima). Every 10 s and at the end: proportional
memory (PSS) of each running agent's processes, split into the single-user server,
claude (medians over the samples where a claude process ran: it runs during turns)
and the rest; the extension's share is the server's beyond a bare JupyterLab
server started by this script without it (so: approximate).

A short run: ``bench/load.py --agents 4 --terminals 8 --chats 2 --duration 60``.
Prints one FIGURE line per figure (``FIGURE <name> <value> <unit>``; baselines are
``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.runtimes.claude import claude_binary
from jupyter_sac.stack import free_port
from jupyter_sac.store import Store
from sac_testing.stack import (
    RunningStack,
    bare_lab,
    embedded_stack,
    find_descendant,
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


class Load:
    """What the run counts and measures, shared by its tasks."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.echo: list[float] = []
        self.echo_bare: list[float] = []
        self.turns: list[float] = []
        self.turns_bare: list[float] = []
        self.batches = 0
        self.synced: list[tuple[str, str]] = []  # (slug, workspace path) written
        self.service_rss: list[int] = []  # KiB
        self.pg_connections: list[int] = []
        self.memory: list[dict[str, list[int]]] = []  # memory_breakdown samples

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, detail[:300])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


# ---- terminals ----------------------------------------------------------------------


async def typist(
    load: Load, ws_url: str, headers: dict[str, str], interval: float, until: float, bare: bool
) -> None:
    """One terminal: a key every ``interval`` s into bash's line editor, echo timed."""
    try:
        conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
        conn.write_message(json.dumps(["set_size", 40, 120, 640, 960]))
        conn.write_message(json.dumps(["stdin", "\x15stty -echoctl; PS1='$ '; echo READY''X\r"]))
        await read_terminal_until(conn, "READYX")
    except Exception as e:
        load.error("terminal_connect", f"{ws_url}: {e!r}")
        return
    loop = asyncio.get_running_loop()
    i = 0
    try:
        while loop.time() < until:
            if i and i % 60 == 0:
                conn.write_message(json.dumps(["stdin", "\x15"]))  # clear the line (untimed)
            key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            t0 = time.perf_counter()
            conn.write_message(json.dumps(["stdin", key]))
            await read_terminal_until(conn, key, timeout=30)
            (load.echo_bare if bare else load.echo).append(time.perf_counter() - t0)
            i += 1
            await asyncio.sleep(interval)
    except Exception as e:
        load.error("terminal_echo", f"{ws_url}: {e!r}")
    finally:
        conn.close()


# ---- chat turns -----------------------------------------------------------------------


async def chatter(load: Load, base: str, headers: dict[str, str], until: float) -> None:
    """Chat turns one after another on one agent, each timed until its turn_end."""
    async with httpx.AsyncClient(headers=headers, timeout=120) as api:
        try:
            events = await websocket_connect(
                HTTPRequest(base.replace("http", "ws", 1) + "sac/api/chat/events", headers=headers)
            )
        except Exception as e:
            load.error("chat_connect", f"{base}: {e!r}")
            return
        loop = asyncio.get_running_loop()
        session = None
        try:
            while loop.time() < until:
                t0 = time.perf_counter()
                resp = await api.post(
                    base + "sac/api/chat", json={"message": "hello", "session_id": session}
                )
                if resp.status_code != 202:
                    load.error("chat_start", f"{resp.status_code} {resp.text}")
                    await asyncio.sleep(1)
                    continue
                session, turn = resp.json()["session_id"], resp.json()["turn_id"]
                failed = ""
                while True:
                    msg = await asyncio.wait_for(events.read_message(), 180)
                    if msg is None:
                        raise ConnectionError("chat events closed")
                    event = json.loads(msg)
                    if event.get("turn_id") != turn:
                        continue
                    if event["type"] == "error" or (
                        event["type"] == "result" and event.get("is_error")
                    ):
                        failed = json.dumps(event)
                    if event["type"] == "turn_end":
                        if event.get("exit_code") != 0:
                            failed = failed or json.dumps(event)
                        break
                if failed:
                    load.error("chat_turn", failed)
                else:
                    load.turns.append(time.perf_counter() - t0)
        except Exception as e:
            load.error("chat_events", f"{base}: {e!r}")
        finally:
            events.close()


async def bare_chatter(load: Load, fake: str, workdir: Path, until: float) -> None:
    """The same turn by the claude CLI straight on the host, one at a time."""
    binary = claude_binary()
    if binary is None:
        return
    home = workdir / "bare-claude"
    home.mkdir(exist_ok=True)
    # IS_SANDBOX: the CLI refuses bypassPermissions as root elsewhere.
    env = dict(os.environ, ANTHROPIC_BASE_URL=fake, ANTHROPIC_API_KEY="sk-ant-bench-key",
               IS_SANDBOX="1",
               CLAUDE_CONFIG_DIR=str(home), CLAUDE_CODE_ENABLE_TASKS="0",
               DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1")  # fmt: skip
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            binary, "-p", "--output-format", "stream-json", "--verbose",
            "--permission-mode", "bypassPermissions", "--session-id", str(uuid.uuid4()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=home, env=env,
        )  # fmt: skip
        out, _ = await proc.communicate(b"hello")
        if proc.returncode == 0 and b'"type":"result"' in out:
            load.turns_bare.append(time.perf_counter() - t0)
        else:
            print(f"  (bare claude turn failed: exit {proc.returncode})", flush=True)
            await asyncio.sleep(1)


# ---- history ingest and workspace sync ----------------------------------------------------


async def ingester(load: Load, base: str, token: str, until: float) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    n = 0
    async with httpx.AsyncClient(headers=headers, timeout=120) as api:
        while loop.time() < until:
            session = f"load-{uuid.uuid4().hex[:8]}"
            events = [
                {"session_id": session, "uuid": f"{session}-{i}", "kind": "assistant",
                 "ts": f"2026-01-01T00:{(n // 60) % 60:02d}:{n % 60:02d}.{i:03d}Z",
                 "payload": {"type": "assistant", "message": {"content": f"step {i}"}}}
                for i in range(100)
            ]  # fmt: skip
            n += 1
            try:
                resp = await api.post(base + "api/history/ingest", json={"events": events})
                if resp.status_code == 200 and resp.json().get("stored") == 100:
                    load.batches += 1
                else:
                    load.error("history_ingest", f"{resp.status_code} {resp.text}")
            except httpx.HTTPError as e:
                load.error("history_ingest", repr(e))
            await asyncio.sleep(0.5)


async def writer(load: Load, homes: dict[str, Path], interval: float, until: float) -> None:
    """A file into the next agent's workspace on the host, as a program in it would."""
    loop = asyncio.get_running_loop()
    slugs = sorted(homes)
    i = 0
    while loop.time() < until:
        slug = slugs[i % len(slugs)]
        home = homes[slug]
        name = f"private/load/f{i:05d}.txt"
        path = home / "workspace" / name
        owner = home.stat()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chown(path.parent, owner.st_uid, owner.st_gid)
        path.write_bytes(os.urandom(5 * 1024).hex().encode())
        os.chown(path, owner.st_uid, owner.st_gid)
        load.synced.append((slug, name))
        i += 1
        await asyncio.sleep(interval)


async def sampler(
    load: Load,
    service_pid: int,
    database_url: str,
    until: float,
    memory: Callable[[], dict[str, list[int]]],
) -> None:
    loop = asyncio.get_running_loop()
    rounds = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while loop.time() < until:
            if rounds % 5 == 0:  # every 10 s: the agents' processes (claude runs in turns)
                load.memory.append(await asyncio.to_thread(memory))
            rounds += 1
            load.service_rss.append(proc_kib(service_pid, "VmRSS"))
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                )
            ).fetchone()
            # This sampler's own connection is not the stack's.
            load.pg_connections.append(int(row[0]) - 1 if row else 0)
            await asyncio.sleep(2)


# ---- memory ---------------------------------------------------------------------------------


def memory_breakdown(stack: RunningStack, slugs: list[str]) -> dict[str, list[int]]:
    """Per running agent, PSS (KiB) of its single-user server (the sandbox's launcher
    process, which becomes the server), of its claude processes, and of the rest."""
    # The spawner's state (its sandbox's pid) is for hub administrators: the harness.
    harness = httpx.Client(
        base_url=stack.url, timeout=60, headers={"Authorization": f"token {stack.harness_token}"}
    )
    servers = harness.get("hub/api/users/admin").json()["servers"]
    children = process_children()
    parts: dict[str, list[int]] = {"server": [], "claude": [], "other": [], "total": []}
    for slug in slugs:
        pid = (servers.get(slug) or {}).get("state", {}).get("pid")
        if not pid:
            continue
        server = claude = other = 0
        for proc in process_tree(pid, children):
            try:
                comm = Path(f"/proc/{proc}/comm").read_text().strip()
                cmdline = Path(f"/proc/{proc}/cmdline").read_bytes()
            except OSError:
                continue
            if b"jupyter_sac.spawner.launcher" in cmdline:
                server += proc_kib(proc, "Pss", "smaps_rollup")
            elif comm.startswith("claude"):
                claude += proc_kib(proc, "Pss", "smaps_rollup")
            else:
                other += proc_kib(proc, "Pss", "smaps_rollup")
        parts["server"].append(server)
        parts["claude"].append(claude)
        parts["other"].append(other)
        parts["total"].append(server + claude + other)
    return parts


def bare_lab_pss(workdir: Path) -> int:
    """PSS (KiB) of a JupyterLab server without the jupyter-sac extension, once up."""
    with bare_lab(workdir) as proc:
        return proc_kib(proc.pid, "Pss", "smaps_rollup")


# ---- the run --------------------------------------------------------------------------------


def start_agents(stack: RunningStack, api: httpx.Client, fake: str, count: int) -> list[str]:
    sac = stack.service_url + "api/"
    resp = api.put(sac + "settings/system", json={"max_agents_per_user": count + 1})
    assert resp.status_code == 200, resp.text
    slugs = [f"load{i:02d}" for i in range(count)]
    fields = {"provider": "custom", "base_url": fake, "api_key": "sk-ant-bench-provider-key"}
    for slug in slugs:
        resp = api.post(sac + "agents", json={"slug": slug, **fields})
        assert resp.status_code == 201, resp.text
        resp = api.put(sac + f"users/admin/agents/{slug}/hitl-policy",
                       json={"policy": {"default": "allow"}})  # fmt: skip
        assert resp.status_code == 200, resp.text
    t0 = time.perf_counter()
    # A few at a time: what people starting agents on a busy morning do.
    for first in range(0, count, 4):
        batch = slugs[first : first + 4]
        for slug in batch:
            resp = api.post(f"hub/api/users/admin/servers/{slug}")
            assert resp.status_code in (201, 202), resp.text
        for slug in batch:
            server = stack.server_url("admin", slug)
            poll_until(lambda s=server: api.get(s + "sac/api/status").status_code == 200,
                       300, f"agent {slug}")  # fmt: skip
        print(f"  {min(first + 4, count)}/{count} agents running"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return slugs


def agent_token(database_url: str, slug: str) -> str:
    async def issue() -> str:
        store = await Store.open(database_url, run_migrations=False)
        agent = await store.agents.get("admin", slug)
        assert agent is not None
        token = await store.tokens.issue(agent.id)
        await store.close()
        return token

    return asyncio.run(issue())


def proxy_errors(log: Path, offset: int) -> list[str]:
    """configurable-http-proxy's 5xx lines logged after ``offset`` bytes of the log."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines()
            if "[ConfigProxy]" in line and re.search(r"error\S*: 5\d\d ", line)]  # fmt: skip


def run(args: argparse.Namespace) -> None:
    load = Load()
    fake_port, bare_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    helpers = [
        subprocess.Popen([sys.executable, "-m", "sac_testing.fake_anthropic", "--port",
                          str(fake_port)], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(BENCH / "terminal.py"), "--serve-bare",
                          str(bare_port)]),
    ]  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp:
            workdir = Path(tmp)
            with embedded_stack(workdir, PASSWORD) as stack:
                poll_until(lambda: http_status(fake + "/_fake/requests") == 200, 60, "fake")
                poll_until(lambda: http_status(f"http://127.0.0.1:{bare_port}/new") == 405, 60,
                           "bare terminado")  # fmt: skip
                headers = {"Authorization": f"token {stack.admin_token}"}
                api = httpx.Client(base_url=stack.url, headers=headers, timeout=120)
                print(f"starting {args.agents} agents", flush=True)
                slugs = start_agents(stack, api, fake, args.agents)
                import pgserver

                database_url = pgserver.get_server(
                    stack.data_dir / "postgres", cleanup_mode=None
                ).get_uri()
                # Issuing a token replaces the agent's: an agent of its own, never started.
                created = api.post(stack.service_url + "api/agents", json={"slug": "ingest"})
                assert created.status_code == 201, created.text
                token = agent_token(database_url, "ingest")
                homes = {
                    slug: next((stack.data_dir / "agents").glob(f"*-{slug}")) for slug in slugs
                }
                terminals = []
                for i in range(args.terminals):
                    server = stack.server_url("admin", slugs[i % len(slugs)])
                    resp = api.post(server + "api/terminals")
                    assert resp.status_code == 200, resp.text
                    ws = server.replace("http", "ws", 1)
                    terminals.append(ws + f"terminals/websocket/{resp.json()['name']}")
                bare_name = httpx.post(f"http://127.0.0.1:{bare_port}/new", content=b"").json()
                bare_ws = f"ws://127.0.0.1:{bare_port}/websocket/{bare_name['name']}"
                service_pid = find_descendant(stack.proc.pid, b"jupyter_sac.service")
                log_offset = stack.log_path.stat().st_size

                async def everything() -> None:
                    loop = asyncio.get_running_loop()
                    until = loop.time() + args.duration
                    tasks = [typist(load, url, headers, args.type_interval, until, False)
                             for url in terminals]  # fmt: skip
                    tasks.append(typist(load, bare_ws, {}, args.type_interval, until, True))
                    tasks += [chatter(load, stack.server_url("admin", slug), headers, until)
                              for slug in slugs[: args.chats]]  # fmt: skip
                    if args.chats:
                        tasks.append(bare_chatter(load, fake, workdir, until))
                    tasks.append(ingester(load, stack.service_url, token, until))
                    tasks.append(writer(load, homes, args.sync_interval, until))
                    tasks.append(sampler(load, service_pid, database_url, until,
                                         lambda: memory_breakdown(stack, slugs)))  # fmt: skip
                    await asyncio.gather(*tasks)

                print(f"load for {args.duration:.0f} s: {args.terminals} terminals typing,"
                      f" {args.chats} chats, history ingest, workspace sync",
                      flush=True)  # fmt: skip
                asyncio.run(everything())
                load.memory.append(memory_breakdown(stack, slugs))

                # Every written file reaches the service (its sandbox's sync uploads it).
                def unsynced() -> list[tuple[str, str]]:
                    listed: dict[str, set[str]] = {}
                    for slug in {s for s, _ in load.synced}:
                        url = stack.service_url + f"api/users/admin/agents/{slug}/workspace"
                        resp = api.get(url, params={"prefix": "private/load/"})
                        listed[slug] = {f["path"] for f in resp.json().get("files", [])}
                    return [(s, p) for s, p in load.synced if p not in listed[s]]

                deadline = time.monotonic() + 60
                while (missing := unsynced()) and time.monotonic() < deadline:
                    time.sleep(1)
                for slug, path in missing:
                    load.error("workspace_sync", f"{slug}: {path} not listed after 60 s")
                for line in proxy_errors(stack.log_path, log_offset):
                    load.error("proxy_5xx", line)
            bare_pss = bare_lab_pss(Path(tmp))
    finally:
        for proc in helpers:
            stop_process(proc)
    report(args, load, bare_pss)


def report(args: argparse.Namespace, load: Load, bare_pss: int) -> None:
    errors = sum(load.errors.values())
    print(f"errors: {errors}")
    for kind, count in load.errors.most_common():
        print(f"  {kind}: {count} (e.g. {load.examples[kind]})")
    echo_p99, echo_bare_p99 = pct(load.echo, 0.99) * 1000, pct(load.echo_bare, 0.99) * 1000
    echo_p50 = statistics.median(load.echo) * 1000 if load.echo else float("nan")
    print(f"terminal echo: {len(load.echo)} keys, p50 {echo_p50:.1f} ms, p99 {echo_p99:.1f} ms"
          f" (bare terminado p99 {echo_bare_p99:.1f} ms); target p99 <= 20 ms:"
          f" {'met' if echo_p99 <= 20 else 'NOT met'}")  # fmt: skip
    turn_p99, bare_turn_p99 = pct(load.turns, 0.99), pct(load.turns_bare, 0.99)
    turn_p50 = statistics.median(load.turns) if load.turns else float("nan")
    bare_p50 = statistics.median(load.turns_bare) if load.turns_bare else float("nan")
    print(f"chat turns: {len(load.turns)}, p50 {turn_p50:.2f} s, p99 {turn_p99:.2f} s;"
          f" bare CLI turns: {len(load.turns_bare)}, p50 {bare_p50:.2f} s,"
          f" p99 {bare_turn_p99:.2f} s")  # fmt: skip
    print(f"history: {load.batches} batches of 100 events stored;"
          f" workspace: {len(load.synced)} files written")  # fmt: skip
    rss_max = max(load.service_rss, default=0) / 1024
    pg_max = max(load.pg_connections, default=0)
    print(f"service RSS max {rss_max:.0f} MiB; PostgreSQL client connections max {pg_max}")
    # Per agent and sample; claude only where a claude process ran (a turn, or
    # claude in a terminal), as it is there only then.
    values: dict[str, list[int]] = {"server": [], "claude": [], "other": [], "total": []}
    for sample in load.memory:
        for part, per_agent in sample.items():
            values[part] += [v for v in per_agent if v or part != "claude"]
    med = {k: statistics.median(v) / 1024 if v else 0.0 for k, v in values.items()}
    med["total"] = med["server"] + med["claude"] + med["other"]
    extension = med["server"] - bare_pss / 1024
    agents = max((len(sample["total"]) for sample in load.memory), default=0)
    print(f"memory per running agent ({agents} agents, {len(load.memory)} samples, median PSS):"
          f" {med['total']:.0f} MiB = single-user server {med['server']:.0f} MiB"
          f" (of which the extension about {extension:.0f} MiB beside a bare JupyterLab"
          f" server's {bare_pss / 1024:.0f} MiB) + claude {med['claude']:.0f} MiB"
          f" + other {med['other']:.0f} MiB")  # fmt: skip
    print(f"FIGURE load_errors {errors} count")
    print(f"FIGURE load_echo_p99 {echo_p99:.2f} ms")
    print(f"FIGURE load_echo_p99_baseline {echo_bare_p99:.2f} ms")
    print(f"FIGURE load_chat_turn_p99 {turn_p99:.3f} s")
    print(f"FIGURE load_chat_turn_p99_baseline {bare_turn_p99:.3f} s")
    print(f"FIGURE load_chat_turn_overhead_p99 {turn_p99 - bare_turn_p99:.3f} s")
    print(f"FIGURE load_service_rss_max {rss_max:.0f} MiB")
    print(f"FIGURE load_pg_connections_max {pg_max} count")
    print(f"FIGURE load_agent_memory {med['total']:.0f} MiB")
    print(f"FIGURE load_agent_memory_server {med['server']:.0f} MiB")
    print(f"FIGURE load_agent_memory_server_baseline {bare_pss / 1024:.0f} MiB")
    print(f"FIGURE load_agent_memory_extension {extension:.0f} MiB")
    print(f"FIGURE load_agent_memory_claude {med['claude']:.0f} MiB")
    print(f"FIGURE load_agent_memory_other {med['other']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--terminals", type=int, default=100)
    parser.add_argument("--chats", type=int, default=10, help="concurrent chat turns")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--type-interval", type=float, default=1.0,
                        help="seconds between two keys in each terminal")  # fmt: skip
    parser.add_argument("--sync-interval", type=float, default=1.0,
                        help="seconds between two files written into workspaces")  # fmt: skip
    args = parser.parse_args()
    if args.chats > args.agents:
        parser.error("--chats: at most one chat per agent")
    if shutil.which("bwrap") is None:
        print("note: no bubblewrap; agents run without a sandbox", flush=True)
    run(args)


if __name__ == "__main__":
    main()
