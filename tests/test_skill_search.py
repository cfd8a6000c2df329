"""Marketplace text search (docs/skills.md#search): what people typing in the search
box find, in what order, and that PostgreSQL finds it through the index instead of
reading every skill."""

from __future__ import annotations

import random
import string
import uuid
from typing import Any

import psycopg
import pytest
from helpers import HubApi, greeting_skill

from jupyter_sac.store import Store
from jupyter_sac.store import skills as skills_store

# How the marketplace page asks: a signed-in user, no tier/owner/group filter.
AS_ANN: dict[str, Any] = {
    "me": "ann",
    "groups": [],
    "admin": False,
    "tier": None,
    "owner": None,
    "group": None,
}


def _catalogue(url: str, count: int, rare: str) -> None:
    """A skill named ``catalogue`` (the least installed), then ``count`` public skills
    named ``cat-<i>``, "Catalogue <i>"; the last one's description has ``rare``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO skills (owner, command, title, description, body, visibility, checksum)"
            " VALUES ('author', 'catalogue', 'The index', 'Lists things.', '', 'public', 'c')"
        )
        conn.execute(
            "INSERT INTO skills (owner, command, title, description, body, visibility, checksum)"
            " SELECT 'author', 'cat-' || i, 'Catalogue ' || i,"
            "  'Skill number ' || i || ' of the catalogue' || CASE WHEN i = %(n)s"
            "   THEN ', the only one about ' || %(rare)s ELSE '' END || '.',"
            "  'Read the data and write a report.', 'public', 'c' || i"
            " FROM generate_series(1, %(n)s) AS i",
            {"n": count, "rare": rare},
        )
        conn.execute("ANALYZE skills")


async def _commands(store: Store, text: str, **criteria: Any) -> list[str]:
    rows = await store.skills.search(**{**AS_ANN, "limit": 50, "offset": 0, **criteria}, text=text)
    return [r["command"] for r in rows]


def _read_index(plan: str) -> bool:
    """Whether a search, as EXPLAIN ANALYZE tells, read the search index."""
    scans = [line for line in plan.splitlines() if "Index Scan on skills_search " in line]
    return any("never executed" not in line for line in scans)


@pytest.mark.asyncio
async def test_a_word_only_one_skill_has_is_found_through_the_index(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(database_url)
    try:
        _catalogue(database_url, 5000, "zanzibar")
        assert await _commands(store, "zanzibar") == ["cat-5000"]
        assert await _commands(store, "Zanz") == ["cat-5000"]
        assert _read_index(await store.skills.search_plan(**AS_ANN, text="zanzibar"))

        # A word most skills have is served from the most installed ones, in the
        # order the index would give: first the skill it names (not among those),
        # then every name with it; or, in no name, every description.
        for text in ("catalogue", "skill", "number 4"):
            assert not _read_index(await store.skills.search_plan(**AS_ANN, text=text))
        served = {
            (text, offset): await _commands(store, text, offset=offset)
            for text in ("catalogue", "skill", "number 4", "cat 49")
            for offset in (0, 480)
        }
        assert served["catalogue", 0][:3] == ["catalogue", "cat-5000", "cat-4999"]
        monkeypatch.setattr(skills_store, "SEARCH_HEAD", 0)
        for (text, offset), commands in served.items():
            assert await _commands(store, text, offset=offset) == commands, (text, offset)
        monkeypatch.undo()

        # Without the index the same search reads every row: the check above is
        # what tells the two apart.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP INDEX skills_search")
        assert not _read_index(await store.skills.search_plan(**AS_ANN, text="zanzibar"))
        assert await _commands(store, "zanzibar") == ["cat-5000"]
    finally:
        await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("head", [skills_store.SEARCH_HEAD, 0], ids=["head", "index"])
async def test_the_command_named_first_then_name_words_then_the_rest(
    database_url: str, monkeypatch: pytest.MonkeyPatch, head: int
) -> None:
    """Within each rank the marketplace's own order: most installed first; the same
    whether the page comes from the most installed skills or from the index."""
    monkeypatch.setattr(skills_store, "SEARCH_HEAD", head)
    store = await Store.open(database_url)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for command, title, description, installs in [
                ("tidy-data", "Tidy data", "Tidies a frame.", 5),
                ("tidy", "Tidy", "Tidies anything.", 0),
                ("clean-frames", "Clean frames", "Makes data tidy.", 9),
                ("tidy-plots", "Tidy plots", "Tidies charts.", 1),
                ("charts", "Charts", "Draws charts.", 20),
            ]:
                conn.execute(
                    "INSERT INTO skills (owner, command, title, description, body, visibility,"
                    " checksum, installs) VALUES ('bob', %s, %s, %s, '', 'public', 'c', %s)",
                    (command, title, description, installs),
                )
        assert await _commands(store, "tidy") == ["tidy", "tidy-data", "tidy-plots", "clean-frames"]
        assert await _commands(store, "/tidy") == await _commands(store, "TIDY")
        assert await _commands(store, "Tidy plots") == ["tidy-plots"]
        # A start of a word is no name: every name with it, most installed first.
        assert await _commands(store, "tid") == ["tidy-data", "tidy-plots", "tidy", "clean-frames"]
        assert await _commands(store, "data tidy") == ["tidy-data", "clean-frames"]
        # A command is named as people write it: with its slash, blanks or underscores.
        for named in ("/tidy-data", "Tidy data", "tidy_data", " TIDY-DATA "):
            assert (await _commands(store, named))[0] == "tidy-data", named
        # Blanks only: no text to search for, the whole marketplace.
        assert (await _commands(store, "  "))[0] == "charts"
    finally:
        await store.close()


# ---- through the service, as the marketplace page asks ------------------------------


def _search(client: HubApi, q: str) -> list[str]:
    resp = client.sac("GET", "skills", params={"q": q, "limit": "200"})
    assert resp.status_code == 200, (q, resp.text)
    return [s["command"] for s in resp.json()["skills"]]


def test_what_people_type_finds_what_they_mean(admin: HubApi, new_user) -> None:
    name, ann = new_user("srch")
    # Letters only: a word the parser keeps whole wherever it stands.
    m = "w" + "".join(random.choices(string.ascii_lowercase, k=9))

    def create(command: str, **extra: Any) -> dict[str, Any]:
        resp = ann.sac("POST", "skills", json=greeting_skill(command, visibility="public", **extra))
        assert resp.status_code == 201, resp.text
        return resp.json()

    exact = create(m, title=f"Skill {m}")
    named = create(f"{m}-charts", title="Charts", tags=["plots"])
    described = create(f"other-{m[:6]}", title="Other", description=f"Works with {m} files.")
    create(f"lone-{m}", title="Lone", description=f"Météo et 数据 {m}q.")
    for skill in (described, described, named):
        agent = ann.sac("POST", "agents", json={"slug": f"a{uuid.uuid4().hex[:8]}"}).json()
        resp = ann.sac(
            "POST",
            f"users/{name}/agents/{agent['slug']}/skills",
            json={"skill_id": skill["id"]},
        )
        assert resp.status_code == 201, resp.text

    # An exact name first, then every word in the name, then the rest.
    assert _search(ann, m) == [m, f"{m}-charts", f"lone-{m}", f"other-{m[:6]}"]
    assert _search(ann, f"/{m.upper()}")[0] == m
    # The start of words, in any order; a word only one skill has.
    assert _search(ann, f"files {m[:5]}") == [f"other-{m[:6]}"]
    assert _search(ann, f"{m}q") == [f"lone-{m}"]
    assert _search(ann, f"MÉTÉO {m}") == [f"lone-{m}"] and _search(ann, f"数据 {m}") == [
        f"lone-{m}"
    ]
    assert _search(ann, f"{m} plots") == [f"{m}-charts"]  # tags count
    # A change is searchable at once.
    changed = ann.sac("PATCH", f"skills/{exact['id']}", json={"title": f"Renamed {m}x"})
    assert changed.status_code == 200, changed.text
    assert _search(ann, f"renamed {m}x") == [m]

    # What SQL or the search syntax would read as operators is punctuation here:
    # harmless, 200, the words around it still count.
    assert _search(ann, f"%{m}%") == _search(ann, m)
    assert sorted(_search(ann, f"'{m}' & !({m}:*) | --")) == sorted(_search(ann, m))
    odd = ["%", "_", "\\", "'", "' OR 1=1 --", "<->", ":*", "\x00", "\u200b", "🙂", "ﬁ", "İ"]
    for text in odd:
        assert _search(ann, text + m + "zz") == [], text
        _search(ann, text)  # 200, whatever it finds
    assert _search(ann, f"{m}\x00{m[:3]}") == _search(ann, f"{m} {m[:3]}")
    resp = ann.sac("GET", "skills", params={"q": "x" * 201})
    assert resp.status_code == 400 and resp.json()["field"] == "q", resp.text
