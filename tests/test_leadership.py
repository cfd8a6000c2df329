"""The service's processes on one PostgreSQL, in one test process: the
leadership's lock (one leader, a takeover when its connection ends) and the
wake-ups between processes (NOTIFY delivered at commit, the relay waking this
process's waiters and coming back after its connection is cut). No hub, no
tornado; the stack-level version is tests/test_service_replicas.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from helpers import close_service_context, service_context

from jupyter_sac.crypto import KeyBox, generate_key
from jupyter_sac.service import leadership as leadership_module
from jupyter_sac.service import metrics, wakeups
from jupyter_sac.service.leadership import Leadership
from jupyter_sac.store import Store, notifications
from jupyter_sac.store import leadership as lock_module
from jupyter_sac.store.notifications import HITL_RESOLVED, USER_EVENTS, Listener


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``check`` (state of other tasks, which signal nothing) until it holds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(0.02)


async def cut(database_url: str, application_name: str) -> int:
    """End the server side of the connections named ``application_name``, as a
    network failure or a database restart would; how many."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (application_name,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


@pytest.mark.asyncio
async def test_one_process_leads_and_another_takes_over_when_its_connection_ends(
    database_url: str, store: Store, monkeypatch
) -> None:
    monkeypatch.setattr(leadership_module, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(leadership_module, "CHECK_SECONDS", 0.05)
    running: dict[str, int] = {"first": 0, "second": 0}

    def loop(name: str):
        async def run() -> None:
            running[name] += 1
            try:
                await asyncio.Event().wait()
            finally:
                running[name] -= 1

        return run

    first = Leadership(database_url, [loop("first")])
    leading_first = asyncio.create_task(first.run())
    await until(lambda: first.leader and running["first"] == 1)
    assert metrics.SERVICE_LEADER._value.get() == 1
    second = Leadership(database_url, [loop("second")])
    leading_second = asyncio.create_task(second.run())
    await asyncio.sleep(0.5)  # several of its tries
    assert not second.leader and running == {"first": 1, "second": 0}

    # The leader's connection ends (its process died, or the network): the lock is
    # released, the other takes it, and the old leader's loops stop.
    assert await cut(database_url, lock_module.APPLICATION_NAME) == 2
    await until(lambda: running["first"] == 0 and not first.leader)
    await until(lambda: first.leader or second.leader)
    await asyncio.sleep(0.3)
    assert [first.leader, second.leader].count(True) == 1
    assert sum(running.values()) == 1

    # A leader stopping (a rolling update) releases it at once.
    old, new = (leading_first, leading_second) if first.leader else (leading_second, leading_first)
    old.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await old
    await until(lambda: (second if old is leading_first else first).leader)
    new.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await new
    assert running == {"first": 0, "second": 0}


@pytest.mark.asyncio
async def test_a_notification_is_heard_at_commit_and_never_for_a_rollback(
    database_url: str, store: Store
) -> None:
    listener = await Listener.connect(database_url)
    heard: list[tuple[str, str]] = []

    async def listen() -> None:
        async for note in listener.notifications(idle=0.2):
            heard.append(note)

    listening = asyncio.create_task(listen())
    try:
        with contextlib.suppress(RuntimeError):
            async with store.transaction() as conn:
                await store.events.append("ann", "hitl.requested", {"n": 1}, conn=conn)
                raise RuntimeError("rolled back")
        async with store.transaction() as conn:
            await store.events.append("bob", "hitl.requested", {"n": 2}, conn=conn)
            await asyncio.sleep(0.3)
            assert heard == []  # not before the commit
        await until(lambda: heard == [(USER_EVENTS, "bob")])
        # A payload PostgreSQL would refuse is not sent (the re-read finds the change).
        async with store.pool.connection() as conn:
            await notifications.notify(conn, USER_EVENTS, "x" * 8000, "carol")
        await until(lambda: heard[-1] == (USER_EVENTS, "carol"))
        assert len(heard) == 2
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await listener.close()


@pytest.mark.asyncio
async def test_the_relay_wakes_this_process_and_reconnects_when_cut(
    database_url: str, store: Store, tmp_path: Path
) -> None:
    keybox = KeyBox([generate_key()])
    ctx = service_context(store, tmp_path / "objects", keybox=keybox)
    relaying = asyncio.create_task(wakeups.relay(ctx, database_url))
    loop = asyncio.get_running_loop()
    try:
        await until(lambda: metrics.WAKEUPS_CONNECTED._value.get() == 1)
        for attempt in range(2):
            # A decision committed by "another process" (here: a pooled connection).
            waiting = asyncio.create_task(ctx.hitl_waiters.wait("r-1", 30))
            await until(lambda: ctx.hitl_waiters.waiting() == 1)
            started = loop.time()
            async with store.transaction() as conn:
                await notifications.notify(conn, HITL_RESOLVED, "r-1")
            await waiting
            assert loop.time() - started < 5, "woken by the notification, not the timeout"
            if attempt == 0:
                # The relay's connection is cut: it reconnects (0.5 s) and hears again.
                assert await cut(database_url, notifications.APPLICATION_NAME) == 1
                await until(lambda: metrics.WAKEUPS_CONNECTED._value.get() == 0)
                await until(lambda: metrics.WAKEUPS_CONNECTED._value.get() == 1)

        # An organisation key set by another process is reloaded here.
        await store.org_keys.put("anthropic", keybox.encrypt("sk-ant-set-elsewhere"), "…here", "x")
        await until(lambda: ctx.org_keys.get("anthropic") == "sk-ant-set-elsewhere")
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await close_service_context(ctx)
