"""Skill sync and marketplace listing at scale, through the real `sac` service of a
`sac up` stack.

1. Cold sync of --installed skills (default 200, each with a small bundle of two
   files) into an empty Claude config folder: the extension's own SkillSync (the
   code a sandbox runs) against the service through the proxy with an agent
   token, --rounds times. Baseline: writing the same files (SKILL.md plus bundle
   files, same bytes) straight into a folder, no network, no staging: the
   filesystem's own floor for that output.
2. No-change re-sync: the same SkillSync again (its conditional GET answers 304),
   and a re-sync without the ETag (the whole manifest compared, nothing written).
   Baseline: an authenticated GET of api/agent/hitl (the smallest agent-token
   request through the proxy).
3. List and search with --catalogue skills in the marketplace (default 10,000,
   the bulk inserted straight into PostgreSQL for setup speed): GET api/skills
   (first page, most installed first), GET api/skills?q=<word> with a common
   word and with a word only one skill has, through the proxy, --queries each,
   p50/p99. Baseline: the same store query called directly.
4. Search through its index: what people type (a word only one skill has, a
   common word, the start of one, a skill's command, one letter every skill's
   words start with) through the proxy, --queries each in rounds; the figure is
   the worst query's p99. Baseline, in the same rounds: the same requests with
   the search index dropped (what the index serves is then read from every row,
   as before migration 015), and put back for the next round.

Prints one FIGURE line per figure (``FIGURE <name> <value> <unit>``; baselines are
``<name>_baseline``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from jupyter_sac.localhost import resolve_localhost
from jupyter_sac.rules.skills import read_bundle, skill_markdown
from jupyter_sac.server_extension.service_client import ServiceClient
from jupyter_sac.server_extension.skills_sync import SkillSync, entry_spec
from jupyter_sac.store import Store
from sac_testing.stack import embedded_stack

# The stack serves the hub, the service and each user on *.localhost hosts.
resolve_localhost()

PASSWORD = "bench-admin-password"
BODY = (
    "---\nname: x\ndescription: x\n---\n\n# Summarise\n\n"
    + "Read the data, describe every column, and write a short report. " * 20
    + "\n"
)
# Search figures alternate with and without the index, so that other load on the
# machine falls on both alike.
SEARCH_ROUNDS = 3
WORDS = ["sales", "churn", "forecast", "notebook", "pipeline", "report", "schema", "plots"]


def skill_body(i: int) -> dict:
    word = WORDS[i % len(WORDS)]
    return {
        "command": f"bench-{word}-{i}",
        "title": f"{word.title()} helper {i}",
        "description": f"Helps with {word} work, variant {i}.",
        "body": BODY,
        "parameters": [
            {"name": "file", "type": "text", "required": True},
            {"name": "style", "type": "select", "options": ["bar", "line"], "default": "bar"},
        ],
        "prompt": "Work on {{file}} in {{style}} style.",
    }


def bundle(i: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("template.md", b"# Template %d\n" % i), ("ref.csv", b"a,b\n1,2\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def database_url(data_dir: Path) -> str:
    import pgserver

    return pgserver.get_server(data_dir / "postgres", cleanup_mode=None).get_uri()


def bulk_catalogue(url: str, count: int) -> None:
    """``count`` public skills owned by bench users, straight into the table."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY skills (owner, command, title, description, body, parameters, prompt,"
            " visibility, checksum) FROM STDIN"
        ) as copy:
            for i in range(count):
                word = WORDS[i % len(WORDS)]
                copy.write_row(
                    (f"author{i % 50}", f"cat-{word}-{i}", f"{word.title()} {i}",
                     f"Catalogue skill about {word}, number {i}.", BODY, "[]", "",
                     "public", f"c{i}")
                )  # fmt: skip
        # Each version's content is kept (installs pin one): the first version.
        cur.execute(
            "INSERT INTO skill_versions (skill_id, version, title, description, body,"
            " parameters, prompt, tags, checksum)"
            " SELECT id, version, title, description, body, parameters, prompt, tags, checksum"
            " FROM skills WHERE owner LIKE 'author%'"
        )
        # Installs spread over the catalogue so "most installed first" has work to do.
        # They are never synced (the sync figures are taken before), so their checksum
        # is a stand-in, not the sha256 a sandbox would verify.
        cur.execute(
            "INSERT INTO skill_installs (agent_id, skill_id, version, checksum)"
            " SELECT a.id, s.id, s.version, s.checksum FROM skills s CROSS JOIN agents a"
            " WHERE s.owner LIKE 'author%' AND s.id % 7 = 0"
        )
    # A marketplace grows a skill at a time and autovacuum keeps its statistics;
    # after this bulk load the first queries would otherwise be planned blind.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE skills")


def write_plain(folder: Path, files: dict[str, dict[str, bytes]]) -> float:
    """The filesystem's floor: the same files written straight into place (folders
    first, then files, the faster order here), no network, no staging, no rename."""
    started = time.perf_counter()
    writes = [
        (folder / c / rel, data) for c, content in files.items() for rel, data in content.items()
    ]
    for parent in sorted({target.parent for target, _ in writes}):
        parent.mkdir(parents=True, exist_ok=True)
    for target, data in writes:
        target.write_bytes(data)
    return time.perf_counter() - started


def run(installed: int, catalogue: int, queries: int, rounds: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="sac-bench-") as tmp,
        embedded_stack(Path(tmp), PASSWORD) as stack,
    ):
        root = Path(tmp)
        base = stack.service_url + "api/"
        headers = {"Authorization": f"token {stack.admin_token}"}
        api = httpx.Client(base_url=base, headers=headers, timeout=600)
        assert api.post("agents", json={"slug": "bench"}).status_code == 201
        url = database_url(stack.data_dir)

        print(f"setup: {installed} skills with bundles, installed in one agent")
        for i in range(installed):
            created = api.post("skills", json=skill_body(i))
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            assert api.put(f"skills/{sid}/bundle", content=bundle(i)).status_code == 200
            resp = api.post("users/admin/agents/bench/skills", json={"skill_id": sid})
            assert resp.status_code == 201, resp.text

        async def agent_token() -> str:
            store = await Store.open(url, run_migrations=False)
            agent = await store.agents.get("admin", "bench")
            assert agent is not None
            token = await store.tokens.issue(agent.id)
            await store.close()
            return token

        token = asyncio.run(agent_token())

        async def sync_rounds() -> dict[str, list[float]]:
            client = ServiceClient(base.removesuffix("api/"), token)
            out: dict[str, list[float]] = {"cold": [], "plain": [], "etag": [], "full": [],
                                           "floor": []}  # fmt: skip
            manifest = await client.skills_manifest(None)
            assert manifest is not None and len(manifest[1]) == installed
            files = {}
            for entry in manifest[1]:
                data = await client.skill_bundle(entry["id"], entry["bundle"].get("url"))
                files[entry["command"]] = {
                    **read_bundle(data),
                    "SKILL.md": skill_markdown(entry_spec(entry)).encode(),
                }
            for r in range(rounds):
                config = root / f"cold{r}"
                sync = SkillSync(client, config)
                started = time.perf_counter()
                status = await sync.sync()
                out["cold"].append(time.perf_counter() - started)
                assert status["written"] == installed and status["last_error"] is None
                written = sorted(p.name for p in (config / "skills").iterdir())
                assert len([w for w in written if not w.startswith(".")]) == installed
                out["plain"].append(write_plain(root / f"plain{r}", files))
                for _ in range(10):
                    started = time.perf_counter()
                    await sync.sync()
                    out["etag"].append(time.perf_counter() - started)
                    sync.etag = None
                    started = time.perf_counter()
                    await sync.sync()
                    out["full"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await client.hitl_info()
                    out["floor"].append(time.perf_counter() - started)
                shutil.rmtree(config)
                shutil.rmtree(root / f"plain{r}")
            await client.close()
            return out

        sync_times = asyncio.run(sync_rounds())
        cold, plain = statistics.median(sync_times["cold"]), statistics.median(sync_times["plain"])
        etag, full = statistics.median(sync_times["etag"]), statistics.median(sync_times["full"])
        floor = statistics.median(sync_times["floor"])
        print(f"1. cold sync of {installed} skills: median {cold * 1000:.1f} ms"
              f" (plain file writes {plain * 1000:.1f} ms, {cold / plain:.1f}x)")  # fmt: skip
        print(f"2. no-change re-sync: {etag * 1000:.2f} ms with ETag (304),"
              f" {full * 1000:.2f} ms comparing the whole manifest;"
              f" smallest agent request {floor * 1000:.2f} ms")  # fmt: skip

        print(f"setup: {catalogue:,} marketplace skills")
        bulk_catalogue(url, catalogue)
        api.get("skills")  # warm the hub's token cache

        def timed(path: str, params: dict[str, str], count: int = queries) -> list[float]:
            out = []
            for _ in range(count):
                started = time.perf_counter()
                resp = api.get(path, params=params)
                out.append(time.perf_counter() - started)
                assert resp.status_code == 200 and resp.json()["skills"], resp.text
            return out

        # A common word (one skill in eight) and a word one skill has: without an
        # index the second made PostgreSQL read every row.
        cases = {"list": None, "search": "forecast", "search_rare": f"number {catalogue - 1}."}
        through = {name: timed("skills", {"q": q} if q else {}) for name, q in cases.items()}

        async def direct() -> dict[str, list[float]]:
            store = await Store.open(url, run_migrations=False)
            args = {"me": "admin", "groups": [], "admin": True, "tier": None, "owner": None,
                    "group": None, "limit": 51, "offset": 0}  # fmt: skip
            out: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(queries):
                for name, q in cases.items():
                    started = time.perf_counter()
                    await store.skills.search(text=q, **args)
                    out[name].append(time.perf_counter() - started)
            await store.close()
            return out

        alone = asyncio.run(direct())

        last = catalogue - 1
        typed = {
            "rare_word": f"number {last}.",
            "common_word": "forecast",
            "word_start": "fore",
            "command": f"/cat-{WORDS[last % len(WORDS)]}-{last}",
            "one_letter": "c",  # cat-…, Catalogue: every skill
        }
        indexed: dict[str, list[float]] = {name: [] for name in typed}
        unindexed: dict[str, list[float]] = {name: [] for name in typed}
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'skills_search'"
            ).fetchone()
            assert row, "no search index: is migration 015 applied?"
            for _ in range(SEARCH_ROUNDS):
                for name, q in typed.items():
                    indexed[name] += timed("skills", {"q": q}, queries // SEARCH_ROUNDS)
                conn.execute("DROP INDEX skills_search")
                for name, q in typed.items():
                    unindexed[name] += timed("skills", {"q": q}, queries // SEARCH_ROUNDS)
                conn.execute(row[0])
        for name in cases:
            values, baseline = through[name], alone[name]
            print(f"3. {name} of {catalogue:,} skills: p50 {pct(values, 0.5) * 1000:.2f} ms,"
                  f" p99 {pct(values, 0.99) * 1000:.2f} ms through the proxy; the store query"
                  f" alone p99 {pct(baseline, 0.99) * 1000:.2f} ms")  # fmt: skip

        # p99 on a shared machine is mostly other work: say how busy it was.
        one, five, fifteen = os.getloadavg()
        print(f"4. load average (1, 5, 15 min): {one:.1f} {five:.1f} {fifteen:.1f}")
        for name, q in typed.items():
            print(f"4. search {q!r} ({name}): p50 {pct(indexed[name], 0.5) * 1000:.2f} ms,"
                  f" p99 {pct(indexed[name], 0.99) * 1000:.2f} ms through the proxy; without"
                  f" the index p50 {pct(unindexed[name], 0.5) * 1000:.2f} ms,"
                  f" p99 {pct(unindexed[name], 0.99) * 1000:.2f} ms")  # fmt: skip

        print(f"FIGURE skills_cold_sync_{installed} {cold * 1000:.1f} ms")
        print(f"FIGURE skills_cold_sync_{installed}_baseline {plain * 1000:.1f} ms")
        print(f"FIGURE skills_resync_unchanged {etag * 1000:.2f} ms")
        print(f"FIGURE skills_resync_unchanged_full_manifest {full * 1000:.2f} ms")
        print(f"FIGURE skills_resync_unchanged_baseline {floor * 1000:.2f} ms")
        for name in cases:
            print(f"FIGURE skills_{name}_p99 {pct(through[name], 0.99) * 1000:.2f} ms")
            print(f"FIGURE skills_{name}_p99_baseline {pct(alone[name], 0.99) * 1000:.2f} ms")
        worst = max(pct(v, 0.99) for v in indexed.values())
        worst_unindexed = max(pct(v, 0.99) for v in unindexed.values())
        print(f"FIGURE skill_search_p99 {worst * 1000:.2f} ms")
        print(f"FIGURE skill_search_p99_baseline {worst_unindexed * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--installed", type=int, default=200)
    parser.add_argument("--catalogue", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run(args.installed, args.catalogue, args.queries, args.rounds)


if __name__ == "__main__":
    main()
