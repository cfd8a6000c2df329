"""jupyter_sac.client against the real stack: agents, chat turns with the real claude
CLI and the fake model, skills, history, and approvals answered from another
thread; then from inside a sandbox, where it finds the hub by itself."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import HubApi, allow_all, model_agent, run_in_terminal, running_agent, script_model

from jupyter_sac.client import (
    Agent,
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    SacError,
    Unauthorized,
)
from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


def bash(command: str) -> dict[str, Any]:
    return {"tool_use": {"name": "Bash", "input": {"command": command}}}


def workspace(stack: dict, slug: str) -> Path:
    (root,) = (stack["data_dir"] / "agents").glob(f"*-{slug}")
    return root / "workspace"


@pytest.fixture(scope="module")
def driven(stack: dict, fake_anthropic: str) -> Iterator[dict[str, Any]]:
    """A user, their client (from outside, with URL and token) and a started agent."""
    user = f"cli{uuid.uuid4().hex[:6]}"
    hub: HubApi = stack["admin"].create_user(user)
    client = Client(url=stack["url"], token=hub.token)
    progress: list[dict[str, Any]] = []
    agent = client.create_agent("driven", display_name="Driven", **model_agent(fake_anthropic))
    agent.start(progress=progress.append)
    try:
        yield {"user": user, "hub": hub, "client": client, "agent": agent, "progress": progress}
    finally:
        agent.delete()
        client.close()


def test_agents_start_and_answer(driven: dict[str, Any], stack: dict, fake: str) -> None:
    client: Client = driven["client"]
    agent: Agent = driven["agent"]
    assert client.whoami() == driven["user"]
    # Start reported the hub's progress up to ready.
    messages = [e.get("message", "") for e in driven["progress"]]
    assert driven["progress"][-1].get("ready") and any("Agent" in m for m in messages), messages
    listed = {a["slug"]: a for a in client.agents()}
    assert listed["driven"]["state"] == "running" and listed["driven"]["display_name"] == "Driven"
    assert agent.status() == "running"

    script_model(fake, "The answer is 42.")
    answer = agent.ask("What is the answer?")
    assert answer.text == "The answer is 42." and not answer.is_error
    assert answer.events[0]["type"] == "turn_start"
    assert answer.events[-1]["type"] == "turn_end" and answer.result is not None

    # stream: the same turn structure, event by event; the session continues.
    allow_all(driven["hub"], driven["user"], "driven")
    script_model(fake, bash("echo streamed > /workspace/streamed.txt"), "Wrote it.")
    events = list(agent.stream("write a file", session_id=answer.session_id))
    types = [e["type"] for e in events]
    assert types[0] == "turn_start" and types[-1] == "turn_end"
    assert "tool_use" in types and "tool_result" in types and "result" in types
    assert {e["session_id"] for e in events} == {answer.session_id}
    assert (workspace(stack, "driven") / "streamed.txt").read_text() == "streamed\n"
    sessions = agent.sessions()
    assert sessions[0]["session_id"] == answer.session_id and sessions[0]["turns"] == 2


def test_an_approval_from_another_thread_lets_the_turn_go_on(
    driven: dict[str, Any], stack: dict, fake: str
) -> None:
    client: Client = driven["client"]
    # A fresh agent: its policy is the default one (Bash needs a human). (The
    # extension caches an agent's policy for 5 s, so changing the other agent's
    # policy here would race with its cache.)
    agent = client.create_agent("gated", **model_agent(fake))
    agent.start()
    script_model(fake, bash("echo approved > /workspace/approved.txt"), "Done after approval.")

    seen: list[dict[str, Any]] = []

    def decide(request: dict[str, Any]) -> None:
        seen.append(request)
        client.approve(request["id"], reason="looks fine")

    subscription = client.on_request(decide, interval=0.2)
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.append(agent.ask("write approved.txt")))
    worker.start()
    worker.join(180)
    subscription.stop()
    assert answers and answers[0].text == "Done after approval.", answers
    assert [r["tool"] for r in seen] == ["Bash"] and seen[0]["agent"] == "gated"
    assert (workspace(stack, "gated") / "approved.txt").read_text() == "approved\n"
    assert client.pending() == []
    agent.delete()


def test_skills_history_and_errors(driven: dict[str, Any], stack: dict, fake: str) -> None:
    client: Client = driven["client"]
    agent: Agent = driven["agent"]
    allow_all(driven["hub"], driven["user"], "driven")
    assert "summarise-csv" in {s["command"] for s in client.skills(q="csv")}
    agent.install("summarise-csv")
    assert [s["command"] for s in agent.installed()] == ["summarise-csv"]

    with pytest.raises(BadRequest) as bad:
        agent.run_skill("summarise-csv", file="sales.csv", max_plots=99)
    assert bad.value.field == "values.max_plots" and "at most 40" in bad.value.message
    with pytest.raises(BadRequest) as missing:
        agent.run_skill("summarise-csv")
    assert missing.value.field == "values.file"

    script_model(fake, "Summary written.")
    answer = agent.run_skill("summarise-csv", file="sales.csv", max_plots=3)
    assert answer.text == "Summary written."
    sent = httpx.get(fake + "/_fake/requests").json()["requests"][-1]["body"]
    assert "Summarise sales.csv with at most 3 plots." in json.dumps(sent["messages"])
    agent.uninstall("summarise-csv")
    assert agent.installed() == []

    # History: what a turn of this test said, recorded by the service.
    question = f"What is {uuid.uuid4().hex[:8]}?"
    script_model(fake, "Recorded.")
    recorded = agent.ask(question)
    assert recorded.text == "Recorded."
    session = poll_until(
        lambda: next((s for s in agent.history_sessions() if s["first_prompt"] == question), None),
        60,
        "the turn's session recorded",
    )
    frame = agent.history_frame(session["session_id"])  # recorded, so are its events
    assert len(frame) > 0 and set(frame["session_id"]) == {session["session_id"]}
    assert {"session_id", "ts", "kind", "payload"} <= set(frame.columns)
    assert str(frame["ts"].dtype).startswith("datetime64")

    # Typed errors carrying the service's message.
    with pytest.raises(NotFound):
        client.agent("no-such-agent").info()
    with pytest.raises(Unauthorized):
        Client(url=stack["url"], token="not-a-token").agents()


def test_without_url_and_token_it_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAC_HUB_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(SacError, match="no hub URL or token: pass url= and token="):
        Client()


def test_the_async_client_streams_too(driven: dict[str, Any], stack: dict, fake: str) -> None:
    async def main() -> list[str]:
        async with AsyncClient(stack["url"], driven["hub"].token) as client:
            agent = client.agent("driven")
            return [e["type"] async for e in agent.stream("hello again")]

    script_model(fake, "Hello.")
    types = asyncio.run(main())
    assert types[0] == "turn_start" and "text" in types and types[-1] == "turn_end"


INSIDE = r"""
import json
from jupyter_sac.client import Client, Forbidden
c = Client()
out = {"user": c.whoami(), "can_decide": c.can_decide(), "service": c.aio.service_url}
try:
    out["agents"] = sorted(a["slug"] for a in c.agents())
    # Another agent's server, on the user's own host (the sandbox's /etc/hosts names
    # it): a chat turn over HTTP and its events over a websocket.
    out["answer"] = c.agent("driven").ask("from a notebook").text
except Forbidden as e:
    out["agents"] = "forbidden: " + e.message
for rid in __IDS__:
    out["page:" + rid] = c.service_page(f"approvals/{rid}")
    try:
        c.approve(rid)
        out[rid] = "approved"
    except Forbidden as e:
        out[rid] = "forbidden: " + e.message
print("RESULT" + json.dumps(out))
"""


def run_inside(stack: dict, hub: HubApi, user: str, slug: str, ids: list[str]) -> dict[str, Any]:
    code = INSIDE.replace("__IDS__", json.dumps(ids))
    out = asyncio.run(
        run_in_terminal(
            stack["url"], hub.token, user, slug, f"python3 - <<'EOF'\n{code}\nEOF", timeout=90
        )
    )
    return json.loads(out[out.index("RESULT") + len("RESULT") :].splitlines()[0])


def test_inside_a_sandbox_it_drives_agents_only_when_allowed_and_never_decides(
    driven: dict[str, Any], stack: dict, fake: str
) -> None:
    """A notebook in an agent uses the sandbox's own token: it drives the owner's other
    agents only if the owner let this agent do so, and decides no approval, not even
    another agent's (docs/security.md#principals); it links to the service's page."""
    user, hub = driven["user"], driven["hub"]
    script_model(fake, "Answered inside.")
    with running_agent(stack["admin"], user, "notebook", api_key="sk-unused-key",
                       drive_agents=True):  # fmt: skip
        ids = {}
        for slug in ("notebook", "driven"):
            token = asyncio.run(
                run_in_terminal(stack["url"], hub.token, user, slug, "echo $SAC_AGENT_TOKEN")
            )
            filed = httpx.post(
                stack["service_url"] + "api/hitl/requests",
                headers={"Authorization": f"Bearer {token}"},
                json={"kind": "tool", "tool": "Bash", "input": {"command": f"ls {slug}"}},
            )
            assert filed.status_code == 201, filed.text
            ids[slug] = filed.json()["id"]
        wanted = [ids["notebook"], ids["driven"]]
        result = run_inside(stack, hub, user, "notebook", wanted)
        assert result["user"] == user and result["agents"] == ["driven", "notebook"]
        assert result["service"] == stack["service_url"]
        assert result["answer"] == "Answered inside."
        assert result["can_decide"] is False
        for rid in wanted:
            assert result[rid].startswith("forbidden: ") and "a person does this" in result[rid]
            assert result["page:" + rid] == f"{stack['service_url']}approvals/{rid}"
        # Without drive_agents, the sandbox's token cannot use the service at all.
        plain = run_inside(stack, hub, user, "driven", [ids["driven"]])
        assert plain["agents"].startswith("forbidden: this agent (driven) may not drive")
        assert plain[ids["driven"]].startswith("forbidden: this agent (driven)")
        states = {r["id"]: r["status"] for r in driven["client"].pending()}
        assert states == {ids["notebook"]: "pending", ids["driven"]: "pending"}
        for rid in wanted:
            driven["client"].deny(rid, reason="cleanup")


def test_history_frame_reads_times_with_and_without_a_fraction() -> None:
    from jupyter_sac.client._async import events_frame

    events = [
        {"user": "u", "agent": "a", "session_id": "s", "uuid": str(i), "ts": ts,
         "kind": "user", "payload": {}}
        for i, ts in enumerate(["2026-12-05T21:57:22.123456+00:00", "2026-12-05T21:57:23+00:00"])
    ]  # fmt: skip
    frame = events_frame(events)
    assert [t.isoformat() for t in frame["ts"]] == [
        "2026-12-05T21:57:22.123456+00:00", "2026-12-05T21:57:23+00:00",
    ]  # fmt: skip


def test_a_person_reads_checks_and_sets_an_agents_policy(driven: dict[str, Any]) -> None:
    client, agent = driven["client"], driven["agent"]
    default = client.default_policy()
    assert default["custom"] is False and default["policy"]["default"] == "ask"
    # The module's earlier tests let this agent run every tool.
    before = agent.policy()
    with pytest.raises(BadRequest) as refused:
        client.check_policy({"default": "ask", "allow": ["Bash(("]})
    assert refused.value.field and refused.value.field.startswith("policy.allow")
    wanted = {"default": "ask", "allow": ["Read", "Bash(git status:*)"]}
    assert client.check_policy(wanted) == {**wanted, "ask": [], "deny": []}
    try:
        assert agent.set_policy(wanted) == {**wanted, "ask": [], "deny": []}
        assert agent.policy()["allow"] == ["Read", "Bash(git status:*)"]
    finally:
        agent.set_policy(before)
    assert agent.policy() == before


def test_exec_and_screen_from_the_client(driven: dict[str, Any], stack: dict) -> None:
    """agent.exec runs a command and says how it ended; exec_stream yields its frames
    as they come; agent.screen reads the Claude terminal (not running here)."""
    agent: Agent = driven["agent"]
    result = agent.exec("cat; echo err >&2; exit 4", stdin="in\n", env={"X_Y": "z"})
    assert (result.stdout, result.stderr, result.exit_code) == ("in\n", "err\n", 4)
    assert not result.ok and result.error is None
    assert agent.exec(["printenv", "X_Y"], env={"X_Y": "z"}).stdout == "z\n"
    frames = list(agent.exec_stream("echo one; echo two", cwd="."))
    assert "".join(f.get("data", "") for f in frames) == "one\ntwo\n"
    assert frames[-1]["exit_code"] == 0
    slow = agent.exec("sleep 30", timeout=1)
    assert slow.error == "timeout" and not slow.ok
    with pytest.raises(BadRequest) as bad:
        agent.exec("pwd", cwd="../..")
    assert bad.value.field == "cwd"
    assert agent.screen() == {"running": False, "released": False}

    async def streamed() -> list[dict[str, Any]]:
        async with AsyncClient(url=stack["url"], token=driven["hub"].token) as aio:
            return [f async for f in aio.agent("driven").exec_stream("echo async")]

    assert asyncio.run(streamed())[0]["data"] == "async\n"
