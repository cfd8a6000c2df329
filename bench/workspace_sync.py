"""Workspace sync through the real `sac` service of a `sac up` stack (local store).

1. Pull at start: --files files of --size bytes (default 1,000 x 100 KiB = 100 MiB)
   stored in an agent's workspace, pulled into an empty folder by the extension's
   own WorkspaceSync (the code a sandbox runs: manifest, 8 parallel downloads
   through the service, sha256 checked, written, recorded), --rounds times.
   Baseline: the raw store: the same objects read with LocalStore.get and written to
   an empty folder, no network, no checks.
2. Steady-state upload latency: with the sync's watcher running (debounce
   --debounce ms), a file of --size bytes is written and the time until the
   service lists it is measured, --writes times. Baselines: a raw LocalStore.put of
   the same bytes, and the same upload as one HTTP PUT with no watcher.

Prints one FIGURE line per figure (``FIGURE <name> <value> <unit>``; baselines are
``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.objects import LocalStore
from jupyter_sac.rules.workspace import object_key
from jupyter_sac.server_extension.service_client import ServiceClient
from jupyter_sac.server_extension.workspace_sync import WorkspaceSync
from jupyter_sac.stack import free_port
from jupyter_sac.store import Store
from sac_testing.stack import embedded_stack

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"


def database_url(data_dir: Path) -> str:
    import pgserver

    return pgserver.get_server(data_dir / "postgres", cleanup_mode=None).get_uri()


async def agent_token_and_id(url: str) -> tuple[str, int]:
    store = await Store.open(url, run_migrations=False)
    agent = await store.agents.get("admin", "bench")
    assert agent is not None
    token = await store.tokens.issue(agent.id)
    await store.close()
    return token, agent.id


async def raw_pull(store: LocalStore, keys: dict[str, str], target: Path) -> float:
    started = time.perf_counter()
    for path, key in keys.items():
        data = await store.get(key)
        out = target / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return time.perf_counter() - started


async def sync_pull(service: str, token: str, target: Path, state: Path) -> float:
    client = ServiceClient(service, token)
    sync = WorkspaceSync(client, target, state, who="admin/bench")
    started = time.perf_counter()
    await sync.pull()
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def upload_latency(
    service: str, token: str, api: httpx.Client, root: Path, size: int, writes: int, debounce: int
) -> list[float]:
    client = ServiceClient(service, token)
    sync = WorkspaceSync(client, root, root.parent / "latency-state.json", who="x/y")
    await sync.pull()
    sync.start(0, debounce)
    out = []
    try:
        for i in range(writes):
            name = f"output/latency-{i}.bin"
            data = os.urandom(size)
            started = time.perf_counter()
            (root / name).write_bytes(data)
            while True:
                listed = await asyncio.to_thread(
                    api.get, "users/admin/agents/bench/workspace", params={"prefix": name}
                )
                if listed.json()["files"]:
                    break
                await asyncio.sleep(0.005)
            out.append(time.perf_counter() - started)
    finally:
        await sync.stop()
        await client.close()
    return out


def run(files: int, size: int, rounds: int, writes: int, debounce: int) -> None:
    # Sandboxes reach the service directly (SAC_SERVICE_URL), not through the proxy.
    port = os.environ.setdefault("SAC_SERVICE_PORT", str(free_port()))
    with (
        tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
        embedded_stack(Path(tmp), PASSWORD) as stack,
    ):
        root = Path(tmp)
        service = f"http://127.0.0.1:{port}/services/sac/"
        api = httpx.Client(
            base_url=stack.service_url + "api/",
            headers={"Authorization": f"token {stack.admin_token}"},
            timeout=600,
        )
        quota = {"storage_quota_bytes": 10 * files * size, "storage_quota_files": files + 1000}
        assert api.put("users/admin/settings", json=quota).status_code == 200
        resp = api.post("agents", json={"slug": "bench"})
        assert resp.status_code == 201, resp.text
        token, agent_id = asyncio.run(agent_token_and_id(database_url(stack.data_dir)))

        print(f"setup: {files} files of {size} bytes ({files * size / 2**20:.0f} MiB)")
        keys = {}
        for i in range(files):
            data = os.urandom(size)
            path = f"private/data/{i // 100:02d}/file-{i:04d}.bin"
            resp = api.put(f"users/admin/agents/bench/workspace/files/{path}", content=data)
            assert resp.status_code == 200, resp.text
            keys[path] = object_key(f"agent:{agent_id}", resp.json()["sha256"])
        store = LocalStore(root=str(stack.data_dir / "objects"))

        pulls, raws = [], []
        for r in range(rounds):
            raw_dir, sync_dir = root / f"raw{r}", root / f"pull{r}"
            raws.append(asyncio.run(raw_pull(store, keys, raw_dir)))
            pulls.append(asyncio.run(sync_pull(service, token, sync_dir, root / f"state{r}.json")))
            assert sum(1 for p in sync_dir.rglob("*") if p.is_file()) == files
            shutil.rmtree(raw_dir)
            shutil.rmtree(sync_dir)
            print(f"  round {r}: pull {pulls[-1]:.2f} s, raw store {raws[-1]:.2f} s")

        latencies = asyncio.run(
            upload_latency(service, token, api, root / "live", size, writes, debounce)
        )
        puts, https = [], []
        for i in range(writes):
            data = os.urandom(size)
            started = time.perf_counter()
            asyncio.run(store.put(f"bench-raw/{i}", data))
            puts.append(time.perf_counter() - started)
            started = time.perf_counter()
            resp = api.put(f"users/admin/agents/bench/workspace/files/output/direct-{i}.bin",
                           content=data)  # fmt: skip
            assert resp.status_code == 200
            https.append(time.perf_counter() - started)

    mib = files * size / 2**20
    pull, raw = statistics.median(pulls), statistics.median(raws)
    lat, put, http = (statistics.median(v) * 1000 for v in (latencies, puts, https))
    print(f"pull {files} files / {mib:.0f} MiB: median {pull:.2f} s ({mib / pull:.0f} MiB/s);"
          f" raw store {raw:.2f} s ({mib / raw:.0f} MiB/s); ratio {pull / raw:.2f}x")  # fmt: skip
    print(f"upload latency (write -> listed, debounce {debounce} ms): median {lat:.0f} ms;"
          f" one HTTP PUT {http:.1f} ms; raw store put {put:.1f} ms")  # fmt: skip
    print(f"FIGURE workspace_pull_seconds {pull:.3f} s")
    print(f"FIGURE workspace_pull_seconds_baseline {raw:.3f} s")
    print(f"FIGURE workspace_pull_ratio {pull / raw:.2f} x")
    print(f"FIGURE workspace_upload_latency {lat:.1f} ms")
    print(f"FIGURE workspace_upload_latency_http_put {http:.1f} ms")
    print(f"FIGURE workspace_upload_latency_baseline {put:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=15)
    parser.add_argument("--debounce", type=int, default=300)
    args = parser.parse_args()
    run(args.files, args.size, args.rounds, args.writes, args.debounce)


if __name__ == "__main__":
    main()
