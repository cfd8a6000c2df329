"""The history store against a real PostgreSQL: the ingest statement (dedupe, the
session summary, overlapping batches), keyset pages and the text match."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from jupyter_sac.service.history import parse_batch
from jupyter_sac.store import Store
from jupyter_sac.store.history import EventFilter, IngestBatch

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url)
    yield store
    await store.close()


def entry(session: str, n: int, kind: str = "assistant", content: object = None) -> dict:
    return {
        "session_id": session,
        "uuid": f"u{n}",
        "ts": (T0 + timedelta(seconds=n)).isoformat(),
        "kind": kind,
        "payload": {"type": kind, "message": {"role": kind, "content": content or f"step {n}"}},
    }


def batch(*events: dict) -> IngestBatch:
    return parse_batch(json.dumps({"events": list(events)}).encode())


async def summary(store: Store, session: str) -> dict:
    rows = await store.history.sessions("ann", "bot", 100, None)
    return next(r for r in rows if r["session_id"] == session)


@pytest.mark.asyncio
async def test_ingest_dedupes_and_keeps_the_session_summary(store: Store) -> None:
    h = store.history
    first = batch(entry("s", 3), entry("s", 2, "user", "second prompt"), entry("s", 3))
    assert await h.ingest(1, "ann", "bot", first) == 2  # the repeated entry counts once
    assert await h.ingest(1, "ann", "bot", first) == 0
    row = await summary(store, "s")
    assert (row["events"], row["prompts"], row["first_prompt"]) == (2, 1, "second prompt")

    # An earlier prompt arriving later becomes the first prompt; tool results and
    # meta entries are not prompts.
    tool_result = [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]
    meta = entry("s", 0, "user", "<command-name>/clear</command-name>")
    meta["payload"]["isMeta"] = True
    late = batch(
        entry("s", 1, "user", [{"type": "text", "text": "  first prompt  "}]),
        entry("s", 4, "user", tool_result),
        meta,
    )
    assert await h.ingest(1, "ann", "bot", late) == 3
    row = await summary(store, "s")
    assert row["first_prompt"] == "first prompt"
    assert (row["events"], row["prompts"]) == (5, 2)
    assert (row["first_ts"], row["last_ts"]) == (T0, T0 + timedelta(seconds=4))


@pytest.mark.asyncio
async def test_overlapping_batches_at_once_store_each_entry_once(store: Store) -> None:
    """A sender retrying while its first attempt still runs: the same entries, in
    different orders, in concurrent transactions (no deadlock, no double count)."""
    events = [entry(f"s{n % 3}", n) for n in range(300)]
    batches = [batch(*events), batch(*reversed(events)), batch(*events[::2], *events[1::2])]
    stored = await asyncio.gather(*(store.history.ingest(1, "ann", "bot", b) for b in batches))
    assert sum(stored) == 300
    rows = await store.history.sessions("ann", "bot", 10, None)
    assert sorted(r["events"] for r in rows) == [100, 100, 100]


@pytest.mark.asyncio
async def test_keyset_pages_with_equal_times(store: Store) -> None:
    # Many entries share one timestamp: the key (ts, session, uuid) still orders them.
    same = [{**entry(f"s{n % 4}", n), "ts": T0.isoformat()} for n in range(50)]
    await store.history.ingest(1, "ann", "bot", batch(*same))
    for where in (EventFilter(owner="ann", agent_slug="bot"), EventFilter(session_id="s1")):
        for descending in (False, True):
            seen: list[str] = []
            after = None
            while True:
                rows = await store.history.events(where, 7, after, descending)
                seen += [f"{r['session_id']}/{r['entry_uuid']}" for r in rows]
                if len(rows) < 7:
                    break
                last = rows[-1]
                after = (last["ts"], last["session_id"], last["entry_uuid"])
            assert len(seen) == len(set(seen))
            expected = (
                50
                if where.session_id is None
                else len([e for e in same if e["session_id"] == "s1"])
            )
            assert len(seen) == expected


@pytest.mark.asyncio
async def test_text_match_is_literal_and_ignores_key_names(store: Store) -> None:
    odd = "50% off_now 'quoted' \\back\\slash \"dq\" Ünïcödé 🧪 tab\there"
    events = [entry("s", 1, content=odd), entry("s", 2, content="nothing special")]
    await store.history.ingest(1, "ann", "bot", batch(*events))

    async def found(text: str) -> list[str]:
        rows = await store.history.events(EventFilter(text=text), 10, None, False)
        return [r["entry_uuid"] for r in rows]

    for q in ("50% off_now", "'QUOTED' \\back", '"dq"', "ünïcÖdé", "🧪", "tab\there"):
        assert await found(q) == ["u1"], q
    for q in ("50%%", "off%now", "%_", "o_f", "message", "role", "content", "\\\\"):
        assert await found(q) == [], q
    assert await found("STEP") == []  # "step 1"/"step 2" were replaced by the contents
    assert await found("special") == ["u2"]


@pytest.mark.asyncio
async def test_history_is_read_by_owner_and_name(store: Store) -> None:
    assert not await store.history.known("ann", "bot")
    await store.history.ingest(7, "ann", "bot", batch(entry("s", 1)))
    # No agent row (it was deleted, or never in this database): the history is known.
    assert await store.history.known("ann", "bot")
    assert not await store.history.known("bob", "bot")


def test_parse_batch_makes_text_storable() -> None:
    """What jsonb cannot hold is scrubbed in the text PostgreSQL reads, however it came:
    NUL escapes, escaped lone surrogates, raw surrogate bytes (a pair sent as two
    halves becomes its character)."""
    event = {**entry("s", 1), "payload": {"a\x00b": "x\x00y", "cut": "\ud83d", "pair": "PAIR"}}
    raw = json.dumps({"events": [event]}, ensure_ascii=False)
    raw = raw.replace("PAIR", "\ud83e\uddea").encode("utf-8", "surrogatepass")
    parsed = parse_batch(raw)
    assert json.loads(parsed.document)["events"][0]["payload"] == {
        "ab": "xy",
        "cut": "\ufffd",
        "pair": "🧪",
    }
    parsed.document.encode()  # valid UTF-8 all through
    # A clean body is passed on as it came.
    clean = json.dumps({"events": [entry("s", 2)]}).encode()
    assert parse_batch(clean).document == clean.decode()


@pytest.mark.asyncio
async def test_untimed_leading_entries_do_not_date_the_session(store: Store) -> None:
    # Markers before the transcript's first timestamp arrive with the epoch
    # (runtimes/transcript.py); the session still starts at its first real time.
    marker = {**entry("m", 0), "ts": "1970-01-01T00:00:00Z", "uuid": "marker"}
    await store.history.ingest(1, "ann", "bot", batch(marker))
    assert (await summary(store, "m"))["first_ts"] == datetime(1970, 1, 1, tzinfo=UTC)
    await store.history.ingest(1, "ann", "bot", batch(entry("m", 5), entry("m", 9)))
    row = await summary(store, "m")
    assert (row["first_ts"], row["last_ts"], row["events"]) == (
        T0 + timedelta(seconds=5),
        T0 + timedelta(seconds=9),
        3,
    )
