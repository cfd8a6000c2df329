"""The warm pool grows to the demand it sees: agents started at the same moment
each find a warm sandbox once the pool has seen such a burst, within its ceiling,
and the pool is topped up again after the starts (docs/architecture.md#the-warm-pool-and-the-pre-importing-launcher)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_PASSWORD
from helpers import HubApi

from jupyter_sac.spawner.sandbox import Sandbox, SandboxLayout, WarmPool
from sac_testing.stack import embedded_stack, poll_until

BURST = 3
POOL_CONFIG = f"""
c.LocalAgentSpawner.warm_sandboxes = 1
c.LocalAgentSpawner.warm_sandboxes_max = {BURST}
"""


def test_the_pool_keeps_as_many_spares_as_starts_came_at_once_within_its_ceiling() -> None:
    pool = WarmPool(Path("/nonexistent"), 1, lambda layout: [], ceiling=3, demand_window=60)
    assert pool.target() == 1
    pool.start_began()
    pool.start_began()
    assert pool.starting == 2 and pool.target() == 2
    for _ in range(3):
        pool.start_began()
    assert pool.target() == 3, "never beyond its ceiling"
    assert pool.target(now=time.monotonic() + 61) == 1, "back to its size once the burst is past"


def test_a_start_takes_a_spare_whose_imports_are_done(tmp_path: Path) -> None:
    pool = WarmPool(tmp_path, 2, lambda layout: [])
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    importing, ready = (
        Sandbox(proc=p, layout=SandboxLayout(tmp_path / str(i)), confined=False)
        for i, p in enumerate(procs)
    )
    ready.ready.set()
    pool._spares = [importing, ready]
    try:
        assert pool.take() is ready
        assert pool.take() is importing, "else the oldest, still importing"
        assert pool.take() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("sac-pool")
    config = workdir / "pool.py"
    config.write_text(POOL_CONFIG)
    with embedded_stack(workdir, ADMIN_PASSWORD, extra_config=config) as running:
        yield {
            "admin": HubApi(running.url, running.admin_token, running.harness_token),
            "data_dir": running.data_dir,
            "log": running.log_path,
        }


def spares(stack: dict[str, Any]) -> int:
    path = stack["data_dir"] / "sandboxes"
    return len(list(path.iterdir())) if path.is_dir() else 0


def start_at_once(client: HubApi, user: str, slugs: list[str]) -> None:
    gate = threading.Barrier(len(slugs))
    failures: list[BaseException] = []

    def start(slug: str) -> None:
        gate.wait()
        try:
            client.start(user, slug)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=start, args=(slug,)) for slug in slugs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def spawn_messages(stack: dict[str, Any], offset: int, user: str, slug: str) -> list[str]:
    """What the agent's spawn page said (the hub logs the same lines), after ``offset``."""
    text = stack["log"].read_text(errors="replace")[offset:]
    prefix = f"[{user}:{slug}] "
    return [line.split(prefix, 1)[1] for line in text.splitlines() if prefix in line]


@pytest.mark.stack
def test_agents_started_at_once_each_get_a_warm_sandbox_once_the_pool_saw_the_demand(
    pool_stack: dict[str, Any],
) -> None:
    admin: HubApi = pool_stack["admin"]
    user = f"pool{uuid.uuid4().hex[:6]}"
    client = admin.create_user(user)
    slugs = [f"a{i}" for i in range(BURST)]
    for slug in slugs:
        assert client.sac("POST", "agents", json={"slug": slug}).status_code == 201
    poll_until(lambda: spares(pool_stack) == 1, 120, "the pool at its resting size")

    offset = len(pool_stack["log"].read_text(errors="replace"))
    start_at_once(client, user, slugs)
    warm = [
        s for s in slugs if "Using a warm sandbox" in spawn_messages(pool_stack, offset, user, s)
    ]
    assert len(warm) >= 1, "the one spare served one of them"
    # It grows to the demand it saw (three at once), within its ceiling.
    poll_until(lambda: spares(pool_stack) == BURST, 180, f"{BURST} spares")

    for slug in slugs:
        client.stop(user, slug)
    offset = len(pool_stack["log"].read_text(errors="replace"))
    start_at_once(client, user, slugs)
    for slug in slugs:
        said = spawn_messages(pool_stack, offset, user, slug)
        assert "Using a warm sandbox" in said, (slug, said)
        assert not any("Starting a new bubblewrap sandbox" in m for m in said)
    # And it is topped up again once the starts are over.
    poll_until(lambda: spares(pool_stack) == BURST, 180, f"{BURST} spares again")
    for slug in slugs:
        client.sac("DELETE", f"users/{user}/agents/{slug}")
