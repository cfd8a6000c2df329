"""Budget reservations against a real PostgreSQL: calls reserving at once are
admitted one after the other (never more than fit), settling turns a reservation
into usage, and a reservation nobody settles stops counting after its time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio

from jupyter_sac.store import Store
from jupyter_sac.store.usage import UsageDelta


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    # A pool as large as the concurrency below, so the reservations really race.
    store = await Store.open(database_url, max_size=12)
    yield store
    await store.close()


def reservations(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM usage_reservations").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.asyncio
async def test_reservations_made_at_once_never_pass_the_budget(
    store: Store, database_url: str
) -> None:
    usage = store.usage
    # 4 of 12 reservations of 1,000 fit in a user budget of 4,500.
    made = await asyncio.gather(
        *(
            usage.reserve(i % 3, "ann", 1_000, agent_limit=0, user_limit=4_500, ttl=60)
            for i in range(12)
        )
    )
    admitted = [m for m in made if m.id is not None]
    assert len(admitted) == 4
    refused = [m for m in made if m.id is None]
    assert all(m.seen.owner_reserved == 4_000 and m.seen.owner_used == 0 for m in refused)
    # Per agent too: agent 7 may take 2 of 2,500; another agent of ann's is not held.
    both = await asyncio.gather(
        *(usage.reserve(7, "bob", 1_000, agent_limit=2_500, user_limit=0, ttl=60) for _ in range(5))
    )
    assert sum(m.id is not None for m in both) == 2
    other = await usage.reserve(8, "bob", 1_000, agent_limit=2_500, user_limit=0, ttl=60)
    assert other.id is not None and other.seen.owner_reserved == 2_000

    # Settling records the real usage and frees the rest of the reservation.
    for m in admitted:
        assert m.id is not None
        await usage.settle(m.id, 0, "ann", "a", UsageDelta(requests=1, input_tokens=150))
    month = await usage.month_budget(0, "ann")
    assert (month.owner_used, month.owner_reserved) == (600, 0)
    again = await usage.reserve(1, "ann", 3_900, agent_limit=0, user_limit=4_500, ttl=60)
    assert again.id is not None
    assert (await usage.reserve(1, "ann", 1, agent_limit=0, user_limit=4_500, ttl=60)).id is None
    # A call without a reservation (no budget applied when it began) still records.
    await usage.settle(None, 2, "ann", "c", UsageDelta(requests=1, output_tokens=5))
    assert (await usage.month_budget(2, "ann")).agent_used == 5


@pytest.mark.asyncio
async def test_unsettled_reservations_lapse_and_renewed_ones_stay(
    store: Store, database_url: str
) -> None:
    usage = store.usage
    kept = await usage.reserve(1, "cat", 900, agent_limit=0, user_limit=1_000, ttl=1)
    dead = await usage.reserve(2, "dan", 900, agent_limit=0, user_limit=1_000, ttl=1)
    assert kept.id is not None and dead.id is not None
    for _ in range(3):  # kept's call is still running: it renews
        await asyncio.sleep(0.5)
        await usage.extend(kept.id, 1)
    # dan's call died without settling: after its time it no longer counts, and the
    # next reservation of dan's removes it.
    assert (await usage.month_budget(2, "dan")).owner_reserved == 0
    assert (await usage.reserve(2, "dan", 900, agent_limit=0, user_limit=1_000, ttl=60)).id
    assert (await usage.reserve(1, "cat", 900, agent_limit=0, user_limit=1_000, ttl=60)).id is None
    assert reservations(database_url) == 2  # kept and dan's new one
