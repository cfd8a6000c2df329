"""The skills store against a real PostgreSQL: the installs counter the marketplace
sorts by follows installs, uninstalls and deletions of skills and agents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from jupyter_sac.skills import SkillSpec
from jupyter_sac.store import Store


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url)
    yield store
    await store.close()


def spec(command: str) -> SkillSpec:
    return SkillSpec(command=command, title=command, description="d", body="b")


async def installs(store: Store, skill_id: int) -> int:
    row = await store.skills.get(skill_id)
    return -1 if row is None else row["installs"]


@pytest.mark.asyncio
async def test_installs_counter_follows_every_change(store: Store) -> None:
    agents = [
        await store.agents.create(
            limit=10,
            owner="ann",
            slug=f"a{i}",
            display_name=f"a{i}",
            provider="anthropic",
            model="m",
        )
        for i in range(3)
    ]
    popular = await store.skills.create("ann", spec("popular"), "public", None)
    quiet = await store.skills.create("ann", spec("quiet"), "public", None)
    for agent in agents:
        await store.skills.install(agent.id, popular)
    await store.skills.install(agents[0].id, popular)  # again: no double count
    await store.skills.install(agents[0].id, quiet)
    assert (await installs(store, popular["id"]), await installs(store, quiet["id"])) == (3, 1)

    listed = await store.skills.search(me="bob", groups=[], admin=False, text=None, tier=None,
                                       owner=None, group=None, limit=10, offset=0)  # fmt: skip
    assert [r["command"] for r in listed] == ["popular", "quiet"]

    assert await store.skills.uninstall(agents[1].id, popular["id"])
    assert not await store.skills.uninstall(agents[1].id, popular["id"])
    assert await installs(store, popular["id"]) == 2
    assert await store.agents.delete("ann", "a2")  # its installs go with it
    assert await installs(store, popular["id"]) == 1
    assert await store.skills.delete(quiet["id"])  # cascades to its installs
    assert await installs(store, quiet["id"]) == -1
    assert await installs(store, popular["id"]) == 1
