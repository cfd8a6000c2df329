"""Conversation history at scale, through the real `sac` service of a `sac up` stack.

1. Ingest, sustained: --ingest-events transcript-like events (about 700 bytes
   each: assistant text plus a Bash tool call, the shape Claude Code writes)
   sent to POST api/history/ingest in 1,000-event batches by 4 concurrent
   senders with an agent token, through the proxy, as many sandboxes upload at
   once. Baseline: the same rows (the same payload bytes) in one COPY straight
   into conversation_events, with its indexes: the database's own ceiling on
   this machine. Rounds alternate service/COPY (--rounds); medians are compared.
2. Newest page with --events stored (default 5 million; the bulk is COPY'd in
   directly for setup speed): GET .../history/events?order=desc&limit=100
   through the proxy, --queries sequential requests, p50/p99. Baseline: the
   same SQL query run directly on PostgreSQL.
3. CSV export of --export-events (default 1 million) events through the
   proxy, parsed with the csv module as it arrives. The service's peak resident
   memory (VmHWM, reset through /proc/<pid>/clear_refs just before) against its
   resident memory before the export (the baseline).

Prints one FIGURE line per figure (``FIGURE <name> <value> <unit>``; baselines are
``<name>_baseline``). Needs a few GB in the temporary directory for 5M events.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.store import Store
from sac_testing.stack import embedded_stack, find_descendant, proc_kib

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
# Bulk rows (read and exported) from T0 on, one per millisecond; ingested rows
# a year earlier, so an export by time holds exactly the bulk rows.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
INGEST_T0 = T0 - timedelta(days=365)
COPY_COLUMNS = "agent_id, owner, agent_slug, session_id, entry_uuid, ts, kind, payload"

# A Claude Code assistant entry. No tabs, newlines or backslashes: the text is
# valid as-is in a JSON body and in COPY's text format.
PAYLOAD = (
    '{{"type":"assistant","uuid":"{uuid}","sessionId":"{session}","timestamp":"{ts}",'
    '"parentUuid":"{session}-{prev}","cwd":"/workspace","version":"2.0.14",'
    '"message":{{"role":"assistant","model":"claude-sonnet-4-5","id":"msg_{n:016d}",'
    '"content":[{{"type":"text","text":"Step {n}: reading the data and checking the'
    ' columns before the next transformation."}},{{"type":"tool_use","id":"toolu_{n:012d}",'
    '"name":"Bash","input":{{"command":"python analyse.py --part {n} --out'
    ' /workspace/output","description":"Run part {n} of the analysis"}}}}],'
    '"stop_reason":"tool_use","usage":{{"input_tokens":1200,"output_tokens":85,'
    '"cache_read_input_tokens":24000}}}}}}'
)


def rows(session: str, count: int, start: datetime, first: int = 0) -> Iterator[tuple]:
    """(session_id, uuid, ts ISO, payload JSON text) for ``count`` entries, 1 ms apart."""
    for n in range(first, first + count):
        ts = (start + timedelta(milliseconds=n)).isoformat()
        entry = f"{session}-{n}"
        yield (
            session,
            entry,
            ts,
            PAYLOAD.format(uuid=entry, session=session, ts=ts, n=n, prev=n - 1),
        )


def ingest_body(batch: list[tuple]) -> bytes:
    events = ",".join(
        f'{{"session_id":"{s}","uuid":"{u}","ts":"{ts}","kind":"assistant","payload":{p}}}'
        for s, u, ts, p in batch
    )
    return f'{{"events":[{events}]}}'.encode()


def copy_batches(
    url: str, agent_id: int, owner: str, slug: str, batches: Iterable[list[tuple]]
) -> float:
    """One COPY of all the rows straight into conversation_events; returns seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY conversation_events ({COPY_COLUMNS}) FROM STDIN") as copy:
            for batch in batches:
                copy.write(
                    "".join(
                        f"{agent_id}\t{owner}\t{slug}\t{s}\t{u}\t{ts}\tassistant\t{p}\n"
                        for s, u, ts, p in batch
                    )
                )
        conn.commit()
    return time.perf_counter() - t0


def bulk_load(url: str, agent_id: int, owner: str, slug: str, total: int, per: int) -> None:
    """``total`` events in sessions of ``per``, one per ms from T0, in 1M-row COPYs."""

    def sessions(start: int, end: int) -> Iterator[list[tuple]]:
        for first in range(start, end, per):
            session = f"bulk-{uuid.uuid4().hex[:12]}"
            yield list(rows(session, min(per, end - first), T0, first))

    done = 0
    while done < total:
        chunk = min(1_000_000, total - done)
        copy_batches(url, agent_id, owner, slug, sessions(done, done + chunk))
        done += chunk
        print(f"  bulk-loaded {done:,}/{total:,}", flush=True)


def make_batches(tag: str, total: int) -> list[list[tuple]]:
    """1,000-event batches, 10 sessions of 100 entries each (sandboxes interleave)."""
    out = []
    for b in range(total // 1000):
        batch = []
        for s in range(10):
            session = f"{tag}-{b}-{s}"
            batch += rows(session, 100, INGEST_T0, (b * 10 + s) * 100)
        out.append(batch)
    return out


def ingest(base: str, token: str, bodies: list[bytes], senders: int) -> float:
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
    for c in clients:
        c.close()
    assert stored == len(bodies) * 1000, stored
    return elapsed


def database_url(data_dir: Path) -> str:
    import pgserver

    # Attach to the stack's running embedded PostgreSQL (never stop it from here).
    return pgserver.get_server(data_dir / "postgres", cleanup_mode=None).get_uri()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def run(events: int, ingest_events: int, export_events: int, queries: int, rounds: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
        embedded_stack(Path(tmp), PASSWORD) as stack,
    ):
        base = stack.service_url + "api/"
        headers = {"Authorization": f"token {stack.admin_token}"}
        api = httpx.Client(base_url=base, headers=headers, timeout=600)
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

        # 1. ingest through the service vs the same rows COPY'd in
        print(f"1. ingest: {rounds} rounds of {ingest_events:,} events, service and COPY")
        service_rates, copy_rates = [], []
        for r in range(rounds):
            batches = make_batches(f"ing{r}", ingest_events)
            bodies = [ingest_body(b) for b in batches]
            service_rates.append(ingest_events / ingest(base, token, bodies, 4))
            copy_batch = make_batches(f"copy{r}", ingest_events)
            copy_s = copy_batches(url, agent_id, "admin", "copy-baseline", copy_batch)
            copy_rates.append(ingest_events / copy_s)
            print(f"  round {r + 1}: service {service_rates[-1]:,.0f} events/s,"
                  f" COPY {copy_rates[-1]:,.0f} events/s", flush=True)  # fmt: skip
        ingest_rate = statistics.median(service_rates)
        copy_rate = statistics.median(copy_rates)
        print(f"  median: service {ingest_rate:,.0f} events/s, COPY {copy_rate:,.0f} events/s"
              f" (service/COPY {ingest_rate / copy_rate:.2f});"
              f" target >= 20,000: {'met' if ingest_rate >= 20_000 else 'NOT met'}")  # fmt: skip

        # 2. the newest page with --events stored for the agent
        with psycopg.connect(url) as conn:
            have = conn.execute(
                "SELECT count(*) FROM conversation_events"
                " WHERE owner = 'admin' AND agent_slug = 'bench'"
            ).fetchone()[0]
        missing = max(0, events - have, export_events)
        print(f"2. newest page: bulk-loading {missing:,} events (the agent has {have:,})")
        t0 = time.perf_counter()
        bulk_load(url, agent_id, "admin", "bench", missing, 5000)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE conversation_events")
            stored = conn.execute(
                "SELECT count(*) FROM conversation_events"
                " WHERE owner = 'admin' AND agent_slug = 'bench'"
            ).fetchone()[0]
        print(f"  loaded in {time.perf_counter() - t0:.0f} s; the agent has {stored:,} events")

        page = "users/admin/agents/bench/history/events"
        params = {"order": "desc", "limit": 100}
        for _ in range(20):  # warm caches and connections
            api.get(page, params=params)
        lat = []
        for _ in range(queries):
            t = time.perf_counter()
            resp = api.get(page, params=params)
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
        p50, p99 = statistics.median(lat) * 1000, pct(lat, 0.99) * 1000
        sql_p50, sql_p99 = statistics.median(sql_lat) * 1000, pct(sql_lat, 0.99) * 1000
        print(f"  {queries} requests with {stored:,} stored: service p50 {p50:.2f} ms,"
              f" p99 {p99:.2f} ms; SQL alone p50 {sql_p50:.2f} ms, p99 {sql_p99:.2f} ms;"
              f" target p99 <= 20 ms: {'met' if p99 <= 20 else 'NOT met'}")  # fmt: skip

        # 3. CSV export of --export-events with the service's peak memory
        pid = find_descendant(stack.proc.pid, b"jupyter_sac.service")
        rss_before = proc_kib(pid, "VmRSS")
        hwm_before = proc_kib(pid, "VmHWM")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        hwm_reset = proc_kib(pid, "VmHWM")
        until = (T0 + timedelta(milliseconds=export_events)).isoformat()
        received = 0

        def lines(resp: httpx.Response) -> Iterator[str]:
            """The response as lines with their line ends, as the csv module wants them."""
            nonlocal received
            rest = ""
            for chunk in resp.iter_text():
                received += len(chunk)
                *complete, rest = (rest + chunk).split("\n")
                for line in complete:
                    yield line + "\n"
            if rest:
                yield rest

        t0 = time.perf_counter()
        with api.stream(
            "GET",
            "users/admin/agents/bench/history/export.csv",
            params={"since": T0.isoformat(), "until": until},
        ) as resp:
            assert resp.status_code == 200, resp.read()
            reader = csv.reader(lines(resp))
            header = next(reader)
            exported = sum(1 for _ in reader)
        export_s = time.perf_counter() - t0
        hwm_after = proc_kib(pid, "VmHWM")
        rss_after = proc_kib(pid, "VmRSS")
        assert header[0] == "owner" and exported == export_events, (header, exported)
        print(f"3. CSV export: {exported:,} events, {received / 1e6:.0f} M characters in"
              f" {export_s:.1f} s ({exported / export_s:,.0f} rows/s); service RSS before"
              f" {rss_before / 1024:.0f} MiB (peak since start {hwm_before / 1024:.0f} MiB),"
              f" peak during the export {hwm_after / 1024:.0f} MiB"
              f" (+{(hwm_after - hwm_reset) / 1024:.0f} MiB),"
              f" after {rss_after / 1024:.0f} MiB")  # fmt: skip

    print(f"FIGURE history_ingest {ingest_rate:.0f} events/s")
    print(f"FIGURE history_ingest_baseline {copy_rate:.0f} events/s")
    print(f"FIGURE history_ingest_ratio {ingest_rate / copy_rate:.2f} x")
    print(f"FIGURE history_newest_page_p99 {p99:.2f} ms")
    print(f"FIGURE history_newest_page_p99_baseline {sql_p99:.2f} ms")
    print(f"FIGURE history_newest_page_p50 {p50:.2f} ms")
    print(f"FIGURE history_newest_page_p50_baseline {sql_p50:.2f} ms")
    print(f"FIGURE history_export_peak_rss {hwm_after / 1024:.0f} MiB")
    print(f"FIGURE history_export_peak_rss_baseline {rss_before / 1024:.0f} MiB")
    print(f"FIGURE history_export_rate {exported / export_s:.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000, help="events stored for step 2")
    parser.add_argument("--ingest-events", type=int, default=200_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds (medians)")
    parser.add_argument("--export-events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500, help="newest-page requests")
    args = parser.parse_args()
    run(args.events, args.ingest_events, args.export_events, args.queries, args.rounds)


if __name__ == "__main__":
    main()
