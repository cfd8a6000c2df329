"""The caller's event stream, GET api/events (Server-Sent Events), on the real stack:
HITL requests filed by an agent's sandbox reach its owner's stream and nobody
else's, a stream resumed with Last-Event-ID gets exactly what it missed, bad
positions are refused, and the client's watch_pending follows the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import ChatTurn, HubApi, run_in_terminal, running_agent

from jupyter_sac.client import AsyncClient

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world(stack: dict) -> Iterator[dict[str, Any]]:
    """Ann with a running agent (its sandbox files requests with its own token) and
    Bob, another user."""
    ann = f"evann{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], ann, "gate", api_key="sk-unused-key") as owner:
        token = asyncio.run(
            run_in_terminal(stack["url"], owner.token, ann, "gate", "echo $SAC_AGENT_TOKEN")
        ).strip()
        assert token.startswith("sac-agent-"), token
        sandbox = httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        bob = stack["admin"].create_user(f"evbob{uuid.uuid4().hex[:6]}")
        yield {"ann": ann, "owner": owner, "sandbox": sandbox, "bob": bob, "stack": stack}
        sandbox.close()


def file(world: dict[str, Any], command: str) -> str:
    resp = world["sandbox"].post(
        "hitl/requests", json={"kind": "tool", "tool": "Bash", "input": {"command": command}}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def decide(world: dict[str, Any], request_id: str, decision: str = "deny") -> None:
    resp = world["owner"].sac(
        "POST", f"hitl/requests/{request_id}/decision", json={"decision": decision}
    )
    assert resp.status_code == 200, resp.text


class Stream:
    """One connection to the stream: its messages read one at a time, as
    ``(id, event, data)``; the comments (keep-alives) skipped."""

    def __init__(self, api: HubApi, after: int | None = None, query: str = "") -> None:
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        self._context = api.client.stream(
            "GET", api.service_url + "api/events" + query, headers=headers
        )
        self.response = self._context.__enter__()
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines()

    def next(self) -> tuple[int, str, Any]:
        import json

        event_id, kind, data = None, "message", []
        for line in self._lines:
            if line.startswith(":") or line.startswith("retry:"):
                continue
            if line:
                name, _, value = line.partition(": ")
                if name == "id":
                    event_id = int(value)
                elif name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                continue
            if data:
                assert event_id is not None
                return event_id, kind, json.loads("\n".join(data))
        raise EOFError("the stream ended")

    def rest(self) -> list[tuple[int, str, Any]]:
        """Every message until the stream ends (``wait=0``)."""
        out = []
        while True:
            try:
                out.append(self.next())
            except EOFError:
                return out

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def ready(stream: Stream) -> int:
    event_id, kind, data = stream.next()
    assert kind == "ready" and data == {"after": event_id}
    return event_id


def test_a_request_reaches_its_owners_stream_as_it_is_filed_and_nobody_elses(
    world: dict[str, Any],
) -> None:
    stream = Stream(world["owner"])
    start = ready(stream)  # from now on: nothing before it is replayed
    rid = file(world, "make deploy")
    event_id, kind, data = stream.next()
    stream.close()
    assert event_id > start and kind == "hitl.requested"
    assert data["id"] == rid and data["agent"] == "gate" and data["tool"] == "Bash"
    assert data["summary"] == "Bash: make deploy" and data["kind"] == "tool"
    # The event names the request; its input is the HITL API's to show.
    assert "input" not in data

    for other in (world["bob"], world["stack"]["admin"]):
        seen = Stream(other, query="?after=0&wait=0").rest()
        assert [kind for _, kind, _ in seen] == ["ready"], seen
        assert rid not in str(seen)
    decide(world, rid)


def test_a_stream_resumed_with_last_event_id_gets_exactly_what_it_missed(
    world: dict[str, Any],
) -> None:
    stream = Stream(world["owner"])
    ready(stream)
    first = file(world, "echo one")
    last_seen, _, data = stream.next()
    assert data["id"] == first
    stream.close()  # the client goes away...

    # ...and meanwhile requests are filed and decided.
    second, third = file(world, "echo two"), file(world, "echo three")
    decide(world, first, "allow")

    resumed = Stream(world["owner"], after=last_seen, query="?wait=0").rest()
    assert resumed[0] == (last_seen, "ready", {"after": last_seen})
    missed = [(kind, data["id"], data.get("status")) for _, kind, data in resumed[1:]]
    assert missed == [
        ("hitl.requested", second, None),
        ("hitl.requested", third, None),
        ("hitl.decided", first, "approved"),
    ]
    ids = [event_id for event_id, _, _ in resumed[1:]]
    assert ids == sorted(set(ids)) and ids[0] > last_seen

    # Live again from there: the next event is the next one, nothing repeated.
    live = Stream(world["owner"], after=ids[-1])
    assert ready(live) == ids[-1]
    decide(world, second)
    event_id, kind, data = live.next()
    live.close()
    assert event_id > ids[-1] and (kind, data["id"], data["status"]) == (
        "hitl.decided",
        second,
        "denied",
    )
    decide(world, third)


def test_after_in_the_query_and_the_header_winning_over_it(world: dict[str, Any]) -> None:
    rid = file(world, "echo query")
    everything = Stream(world["owner"], query="?after=0&wait=0").rest()
    mine = [e for e in everything if e[2].get("id") == rid]
    assert [kind for _, kind, _ in mine] == ["hitl.requested"]
    position = mine[0][0]
    # EventSource keeps the URL it was opened with and sends the header on reconnects.
    later = Stream(world["owner"], after=position, query="?after=0&wait=0").rest()
    assert later[0][0] == position and all(e[0] > position for e in later[1:])
    decide(world, rid)


@pytest.mark.parametrize(
    ("header", "query", "field"),
    [
        ("abc", "", "Last-Event-ID"),
        ("-1", "", "Last-Event-ID"),
        ("1" * 19, "", "Last-Event-ID"),
        ("", "", "Last-Event-ID"),
        (None, "?after=-1", "after"),
        (None, "?after=twelve", "after"),
        (None, "?after=" + "9" * 19, "after"),
        (None, "?wait=-1", "wait"),
        (None, "?wait=3601", "wait"),
    ],
)
def test_a_bad_position_is_refused(
    world: dict[str, Any], header: str | None, query: str, field: str
) -> None:
    headers = {"Last-Event-ID": header} if header is not None else {}
    resp = world["owner"].sac("GET", "events" + query, headers=headers)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == "invalid_field" and resp.json()["field"] == field


def test_an_agents_own_token_may_not_follow_its_owners_stream(world: dict[str, Any]) -> None:
    resp = world["sandbox"].get("events?wait=0")
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "forbidden"


def test_watch_pending_follows_the_stream_rather_than_polling(world: dict[str, Any]) -> None:
    owner: HubApi = world["owner"]
    listed = owner.sac("GET", "hitl/requests?status=pending").json()["requests"]
    for request in listed:
        decide(world, request["id"])
    before = file(world, "echo before")
    asked: list[str] = []

    async def main() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with AsyncClient(url=world["stack"]["url"], token=owner.token) as client:

            async def record(request: httpx.Request) -> None:
                asked.append(request.url.path)

            client.http.event_hooks["request"].append(record)
            # A poll an hour apart would never see the second request.
            watch = client.watch_pending(interval=3600)
            first = await asyncio.wait_for(anext(watch), 60)
            later = await asyncio.to_thread(file, world, "echo later")
            second = await asyncio.wait_for(anext(watch), 60)
            await watch.aclose()
            return first, second, later

    first, second, later = asyncio.run(main())
    assert first["id"] == before and first["status"] == "pending"
    assert second["id"] == later and second["input"] == {"command": "echo later"}
    # One stream, one listing of what was pending when it opened, one read of the
    # request the stream told of.
    assert [p.rsplit("/api/", 1)[1] for p in asked] == [
        "events",
        "hitl/requests",
        f"hitl/requests/{later}",
    ]
    decide(world, before)
    decide(world, later)


def _streams(stack: dict) -> float:
    """The service's ``sac_event_streams`` gauge: streams open in its process."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = stack["admin"].client.get(stack["service_url"] + "metrics")
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        if family.name == "sac_event_streams":
            return family.samples[0].value
    raise AssertionError("no sac_event_streams gauge")


def test_a_stream_ends_on_the_server_when_its_client_leaves(world: dict[str, Any]) -> None:
    from sac_testing.stack import poll_until

    stack = world["stack"]
    before = _streams(stack)
    stream = Stream(world["owner"])
    ready(stream)
    assert _streams(stack) == before + 1
    stream.close()
    # Its keep-alive would come after 15 s; the close wakes it at once. (The poll's
    # limit only keeps a broken server from hanging the test.)
    poll_until(lambda: _streams(stack) == before, 60, "the stream to end on the server")


def test_the_approvals_panel_follows_the_stream_rather_than_polling(
    world: dict[str, Any],
) -> None:
    from jupyter_sac.client import Client
    from jupyter_sac.widgets import ApprovalsPanel
    from sac_testing.stack import poll_until

    stack = world["stack"]
    before = _streams(stack)
    client = Client(url=stack["url"], token=world["owner"].token)
    # A poll an hour apart would never see the request filed below.
    panel = ApprovalsPanel(client, interval=3600)
    try:
        poll_until(lambda: _streams(stack) == before + 1, 60, "the panel's stream open")
        poll_until(lambda: panel.requests is not None, 60, "the panel's first listing")
        rid = file(world, "echo panel")
        poll_until(lambda: panel.row(rid) is not None, 60, "the request in the panel")
        decide(world, rid)
        poll_until(lambda: panel.row(rid) is None, 60, "the decided request dropped")
    finally:
        panel.close()
        client.close()


def test_an_agent_that_dies_while_running_is_on_its_owners_stream(stack: dict) -> None:
    """The hub's spawner tells the owner (``agent.failed``) when the sandbox of a
    running agent exits without being stopped: the stream and webhooks read it."""
    import json

    from sac_testing.stack import poll_until

    owner_name = f"evdie{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], owner_name, "frail", api_key="sk-unused-key") as owner:

        def failures() -> list[dict[str, Any]]:
            with owner.client.stream(
                "GET", owner.service_url + "api/events?after=0&wait=0"
            ) as resp:
                assert resp.status_code == 200
                out, kind = [], None
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        kind = line[len("event: ") :]
                    elif line.startswith("data: ") and kind == "agent.failed":
                        out.append(json.loads(line[len("data: ") :]))
                return out

        assert failures() == []
        # A stop that was asked for is no failure.
        owner.stop(owner_name, "frail")
        owner.start(owner_name, "frail")
        assert failures() == []
        # The server killed from inside, as a crash or the OOM killer would.
        asyncio.run(
            run_in_terminal(
                stack["url"], owner.token, owner_name, "frail",
                # $PPID is the terminal's shell; its parent, the agent's server. In a
                # session of its own, so that closing the terminal does not end it.
                "server=$(ps -o ppid= -p $PPID);"
                ' setsid sh -c "sleep 2; kill -9 $server" </dev/null >/dev/null 2>&1 &'
                " echo killing",
            )
        )  # fmt: skip
        # The hub notices at its next poll of the server (JupyterHub's poll_interval).
        (failed,) = poll_until(failures, 120, "agent.failed on the owner's stream")
        assert failed["phase"] == "exit" and failed["agent"] == "frail"
        assert isinstance(failed["exit_code"], int)


@pytest.mark.asyncio
async def test_a_finished_chat_turn_is_on_its_owners_stream(stack: dict, fake: str) -> None:
    """The sandbox reports each chat turn that ends (the service does not see chat):
    once per turn, with the answer's first words, and only with the agent's own
    token, a limited number a minute."""
    import json

    from helpers import agent_token, allow_all, model_agent, script_model, server_url

    from sac_testing.stack import poll_until

    name = f"evchat{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], name, "talk", **model_agent(fake)) as owner:
        allow_all(owner, name, "talk")

        def finished() -> list[dict[str, Any]]:
            with owner.client.stream("GET", owner.service_url + "api/events?after=0&wait=0") as r:
                out, kind = [], None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[len("event: ") :]
                    elif line.startswith("data: ") and kind == "chat.turn_finished":
                        out.append(json.loads(line[len("data: ") :]))
                return out

        script_model(fake, "All three files are tidy now.")
        base = server_url(stack["url"], name, "talk")
        turn = await ChatTurn.start(base, owner.token, "tidy up")
        sid, tid = turn.accepted["session_id"], turn.accepted["turn_id"]
        await turn.finish()
        (told,) = poll_until(finished, 30, "chat.turn_finished on the owner's stream")
        assert (told["session_id"], told["turn_id"], told["agent"]) == (sid, tid, "talk")
        assert told["is_error"] is False and told["summary"] == "All three files are tidy now."

        # Only the agent's own token reports, each turn once, and not without end.
        token = await agent_token(stack["url"], owner, name, "talk")
        sandbox = httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        again = sandbox.post("agent/events", json={"session_id": sid, "turn_id": tid})
        assert again.status_code == 200 and again.json() == {"recorded": False}
        assert owner.sac(
            "POST", "agent/events", json={"session_id": sid, "turn_id": "x"}
        ).status_code in (401, 403)
        bad = sandbox.post("agent/events", json={"session_id": sid, "turn_id": "a/b"})
        assert bad.status_code == 400
        codes = [
            sandbox.post("agent/events", json={"session_id": sid, "turn_id": f"t{i}"}).status_code
            for i in range(25)
        ]
        assert codes.count(201) == 19 and codes[-1] == 429, codes
        assert len(finished()) == 20
