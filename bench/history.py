"""Conversation history at scale, through the real `sac` service of a `sac up` stack.

1. Ingest: transcript-like events (about 700 bytes each) sent to
   POST api/history/ingest in 1,000-event batches by 4 concurrent senders (the
   way many sandboxes upload at once), with an agent token. Baseline: the same
   rows COPY'd straight into PostgreSQL (the database's own ceiling).
2. Newest page with --events stored (default 5 million, bulk-loaded with COPY):
   GET .../history/events?order=desc&limit=100 through the proxy, N requests,
   p50/p99. Baseline: the same SQL query run directly.
3. CSV export of --export-events (default 1 million) events through the proxy:
   the service's resident memory sampled during the export (peak) against
   before it (the baseline).

Prints FIGURE lines (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from jupyter_sac.store import Store
from jupyter_sac.testing.stack import embedded_stack

PASSWORD = "bench-admin-password"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def payload(session: str, n: int) -> dict:
    """A transcript entry shaped like Claude Code's (assistant text plus a tool call)."""
    return {
        "type": "assistant",
        "uuid": f"{session}-{n}",
        "sessionId": session,
        "timestamp": (T0 + timedelta(milliseconds=n)).isoformat(),
        "message": {
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": f"Step {n}: reading the data and checking the columns."},
                {
                    "type": "tool_use",
                    "id": f"toolu_{n:012d}",
                    "name": "Bash",
                    "input": {"command": f"python analyse.py --part {n} --out /workspace/output"},
                },
            ],
            "usage": {"input_tokens": 1200, "output_tokens": 85},
        },
    }


def event(session: str, n: int) -> dict:
    return {
        "session_id": session,
        "uuid": f"{session}-{n}",
        "ts": (T0 + timedelta(milliseconds=n)).isoformat(),
        "kind": "assistant",
        "payload": payload(session, n),
    }


def database_url(data_dir: Path) -> str:
    import pgserver

    # Attach to the stack's running embedded PostgreSQL (never stop it from here).
    return pgserver.get_server(data_dir / "postgres", cleanup_mode=None).get_uri()


def copy_rows(url: str, agent_id: int, owner: str, slug: str, sessions: int, per: int) -> float:
    """COPY sessions x per events straight into the table; returns seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY conversation_events (agent_id, owner, agent_slug, session_id, entry_uuid,"
            " ts, kind, payload) FROM STDIN"
        ) as copy:
            for s in range(sessions):
                session = f"bulk-{uuid.uuid4().hex[:12]}-{s}"
                for n in range(per):
                    copy.write_row(
                        (
                            agent_id,
                            owner,
                            slug,
                            session,
                            f"{session}-{n}",
                            T0 + timedelta(milliseconds=s * per + n),
                            "assistant",
                            json.dumps(payload(session, n)),
                        )
                    )
        conn.commit()
    return time.perf_counter() - t0


def bench_ingest(base: str, token: str, total: int, senders: int) -> float:
    batches = [[event(f"ing-{b}", b * 1000 + i) for i in range(1000)] for b in range(total // 1000)]
    bodies = [json.dumps({"events": batch}).encode() for batch in batches]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    clients = [httpx.Client(timeout=120, headers=headers) for _ in range(senders)]

    def send(i: int) -> int:
        resp = clients[i % senders].post(base + "history/ingest", content=bodies[i])
        resp.raise_for_status()
        return resp.json()["stored"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        stored = sum(pool.map(send, range(len(bodies))))
    elapsed = time.perf_counter() - t0
    assert stored == total, (stored, total)
    return total / elapsed


def service_pid(root: int) -> int:
    """The `sac` service process of this stack (a descendant of `sac up`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if b"jupyter_sac.service" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
            todo.append(child)
    raise RuntimeError("sac service process not found")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(events: int, ingest_events: int, export_events: int, queries: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
        embedded_stack(Path(tmp), PASSWORD) as stack,
    ):
        headers = {"Authorization": f"token {stack.admin_token}"}
        api = httpx.Client(base_url=stack.url + "services/sac/api/", headers=headers,
                           timeout=600)  # fmt: skip
        assert api.post("agents", json={"slug": "bench"}).status_code == 201
        url = database_url(stack.data_dir)

        async def setup() -> tuple[int, str]:
            store = await Store.open(url, run_migrations=False)
            agent = await store.agents.get("admin", "bench")
            assert agent is not None
            token = await store.tokens.issue(agent.id)
            await store.close()
            return agent.id, token

        agent_id, token = asyncio.run(setup())

        # 1. ingest through the service vs COPY
        per = 1000
        copy_s = copy_rows(url, agent_id, "admin", "copy-baseline", ingest_events // per, per)
        copy_rate = ingest_events / copy_s
        ingest_rate = bench_ingest(stack.url + "services/sac/api/", token, ingest_events, 4)
        print(f"ingest {ingest_events} events: service {ingest_rate:,.0f} events/s,"
              f" COPY baseline {copy_rate:,.0f} events/s")  # fmt: skip

        # 2. bulk load to --events, then the newest page
        missing = max(0, events - ingest_events)
        t0 = time.perf_counter()
        copy_rows(url, agent_id, "admin", "bench", missing // 5000, 5000)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE conversation_events")
            stored = conn.execute(
                "SELECT count(*) FROM conversation_events WHERE owner = 'admin'"
                " AND agent_slug = 'bench'"
            ).fetchone()[0]
        print(f"bulk-loaded {missing} events in {time.perf_counter() - t0:.0f} s;"
              f" the agent has {stored} events")  # fmt: skip

        page = "users/admin/agents/bench/history/events"
        for _ in range(20):  # warm caches and connections
            api.get(page, params={"order": "desc", "limit": 100})
        lat = []
        for _ in range(queries):
            t = time.perf_counter()
            resp = api.get(page, params={"order": "desc", "limit": 100})
            lat.append(time.perf_counter() - t)
            assert resp.status_code == 200 and len(resp.json()["events"]) == 100
        sql_lat = []
        with psycopg.connect(url) as conn:
            for _ in range(queries):
                t = time.perf_counter()
                conn.execute(
                    "SELECT owner, agent_slug, session_id, entry_uuid, ts, kind, payload"
                    " FROM conversation_events WHERE owner = 'admin' AND agent_slug = 'bench'"
                    " ORDER BY ts DESC, session_id DESC, entry_uuid DESC LIMIT 101"
                ).fetchall()
                sql_lat.append(time.perf_counter() - t)

        def pct(values: list[float], q: float) -> float:
            values = sorted(values)
            return values[max(0, int(len(values) * q) - 1)] * 1000

        p50, p99 = statistics.median(lat) * 1000, pct(lat, 0.99)
        sql_p50, sql_p99 = statistics.median(sql_lat) * 1000, pct(sql_lat, 0.99)
        print(f"newest page (100 events) with {stored:,} stored, {queries} requests:"
              f" service p50 {p50:.2f} ms p99 {p99:.2f} ms;"
              f" SQL alone p50 {sql_p50:.2f} ms p99 {sql_p99:.2f} ms")  # fmt: skip

        # 3. CSV export of --export-events with the service's memory sampled
        pid = service_pid(stack.proc.pid)
        before = rss_kib(pid)
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        # Past the ingested events' times: exactly --export-events bulk-loaded rows.
        since = (T0 + timedelta(milliseconds=ingest_events)).isoformat()
        until = (T0 + timedelta(milliseconds=ingest_events + export_events)).isoformat()
        received = rows = 0
        marker = b"\nadmin,bench,"  # every row starts so; cells may hold newlines
        tail = b""
        t0 = time.perf_counter()
        with api.stream(
            "GET",
            "users/admin/agents/bench/history/export.csv",
            params={"since": since, "until": until},
        ) as resp:
            for chunk in resp.iter_bytes():
                received += len(chunk)
                window = tail + chunk
                rows += window.count(marker)
                tail = window[-(len(marker) - 1) :]
        export_s = time.perf_counter() - t0
        done.set()
        sampler.join()
        print(f"CSV export: {received / 1e6:.0f} MB, {rows:,} events in"
              f" {export_s:.1f} s; service RSS before {before / 1024:.0f} MiB,"
              f" peak during {peak / 1024:.0f} MiB")  # fmt: skip

    print(f"FIGURE history_ingest {ingest_rate:.0f} events/s")
    print(f"FIGURE history_ingest_baseline {copy_rate:.0f} events/s")
    print(f"FIGURE history_newest_page_p99 {p99:.2f} ms")
    print(f"FIGURE history_newest_page_p99_baseline {sql_p99:.2f} ms")
    print(f"FIGURE history_newest_page_p50 {p50:.2f} ms")
    print(f"FIGURE history_newest_page_p50_baseline {sql_p50:.2f} ms")
    print(f"FIGURE history_export_peak_rss {peak / 1024:.0f} MiB")
    print(f"FIGURE history_export_peak_rss_baseline {before / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--ingest-events", type=int, default=200_000)
    parser.add_argument("--export-events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    run(args.events, args.ingest_events, args.export_events, args.queries)


if __name__ == "__main__":
    main()
