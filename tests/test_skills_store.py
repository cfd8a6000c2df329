"""The skills store against a real PostgreSQL: the installs counter the marketplace
sorts by follows installs, uninstalls and deletions of skills and agents; installs
pin a version, which only moving the pin changes, and old versions are kept while
pinned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from jupyter_sac.rules.skills import SkillSpec, delivery_checksum
from jupyter_sac.store import Store
from jupyter_sac.store.skills import Bundle, VersionChangedError


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


async def _agent(store: Store, slug: str) -> int:
    agent = await store.agents.create(
        limit=10, owner="bob", slug=slug, display_name=slug, provider="anthropic", model="m"
    )
    return agent.id


def _pinned(rows: list[dict], command: str) -> tuple[int, int, str]:
    row = next(r for r in rows if r["command"] == command)
    return row["version"], row["latest_version"], row["body"]


@pytest.mark.asyncio
async def test_installs_pin_a_version_until_moved_and_old_versions_go_when_unpinned(
    store: Store,
) -> None:
    first, second = await _agent(store, "p1"), await _agent(store, "p2")
    skill = await store.skills.create("ann", spec("pinned"), "public", None)
    await store.skills.install(first, skill)
    [row] = await store.skills.installed(first)
    assert row["checksum"] == delivery_checksum(row, None)

    # The owner's edit is a new version; the install keeps the one it pinned.
    await store.skills.update(skill["id"], replace(spec("pinned"), body="v2"), "public", None)
    assert await store.skills.prune_versions(skill["id"]) == []
    assert _pinned(await store.skills.installed(first), "pinned") == (1, 2, "b")
    await store.skills.install(first, skill)  # installing again moves nothing
    assert _pinned(await store.skills.installed(first), "pinned") == (1, 2, "b")
    await store.skills.install(second, skill)  # a new install gets the latest
    assert _pinned(await store.skills.installed(second), "pinned") == (2, 2, "v2")

    # Bundles: the pinned version's bundle stays in use after the skill replaced it.
    old, new = Bundle("a" * 64), Bundle("b" * 64)
    await store.skills.set_bundle(skill["id"], replace(spec("pinned"), body="v2"), old)
    assert await store.skills.update_install(second, skill["id"]) == (2, 3)
    await store.skills.set_bundle(skill["id"], replace(spec("pinned"), body="v2"), new)
    assert await store.skills.prune_versions(skill["id"]) == []  # v2 and v3 are pinned
    assert await store.skills.bundle_used(old.sha256)
    [row] = await store.skills.installed(second)
    assert (row["version"], row["bundle_sha256"]) == (3, old.sha256)
    assert row["checksum"] == delivery_checksum(row, old.sha256)

    # An update names the version it expects: a newer one is refused, not installed.
    with pytest.raises(VersionChangedError):
        await store.skills.update_install(first, skill["id"], expected=3)
    assert await store.skills.update_install(first, skill["id"], expected=4) == (1, 4)
    assert await store.skills.update_install(first, skill["id"]) == (4, 4)
    assert await store.skills.update_install(first, 999_999) is None
    # v1 lost its last pin: pruned. v3 goes when its install moves; then its bundle
    # is free (the caller deletes the object).
    assert await store.skills.prune_versions(skill["id"]) == []
    assert await store.skills.update_install(second, skill["id"]) == (3, 4)
    assert await store.skills.prune_versions(skill["id"]) == [old.sha256]
    assert not await store.skills.bundle_used(old.sha256)
    assert await store.skills.version_bundles(skill["id"]) == [new.sha256]

    # Deleting the skill removes its versions with its installs.
    assert await store.skills.delete(skill["id"])
    assert await store.skills.installed(first) == []
    assert not await store.skills.bundle_used(new.sha256)


@pytest.mark.asyncio
async def test_a_changed_official_skill_is_offered_not_pushed(store: Store) -> None:
    agent = await _agent(store, "o1")
    shipped = replace(spec("official-one"), body="shipped 1")
    assert (await store.skills.upsert_official([shipped], {}))[0] == 1
    [skill] = await store.skills.search(me="bob", groups=[], admin=False, text="official-one",
                                        tier="official", owner=None, group=None, limit=5,
                                        offset=0)  # fmt: skip
    await store.skills.install(agent, skill)
    # The same package again: no new version. An upgrade with a change: the next one.
    assert (await store.skills.upsert_official([shipped], {}))[0] == 0
    upgraded, bundles = replace(shipped, body="shipped 2"), {"official-one": Bundle("c" * 64)}
    assert (await store.skills.upsert_official([upgraded], bundles))[0] == 1
    assert _pinned(await store.skills.installed(agent), "official-one") == (1, 2, "shipped 1")
    assert await store.skills.update_install(agent, skill["id"]) == (1, 2)
    assert _pinned(await store.skills.installed(agent), "official-one") == (2, 2, "shipped 2")
