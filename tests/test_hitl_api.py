"""The HITL API of the `sac` service, driven with an agent's own sandbox token (as the
extension does) and with users' tokens (as the sidebar and notebooks do)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
from helpers import HubApi, run_in_terminal, running_agent
from prometheus_client.parser import text_string_to_metric_families

from sac_testing.stack import poll_until

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def agent(stack: dict) -> Iterator[dict]:
    user = f"hitlapi{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "gate", api_key="sk-unused-key") as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "gate", "echo $SAC_AGENT_TOKEN")
        )
        sandbox = httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=90,
        )
        yield {"user": user, "client": client, "sandbox": sandbox, "stack": stack}


def _waiting(stack: dict) -> float:
    """The service's ``sac_hitl_waiting`` gauge: long-polls parked on the server."""
    resp = stack["admin"].client.get(stack["service_url"] + "metrics")
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        if family.name == "sac_hitl_waiting":
            return family.samples[0].value
    raise AssertionError("no sac_hitl_waiting gauge")


class Waiter:
    """The sandbox's long-poll for the decision on ``rid``, in a thread, parked on the
    server before the test goes on; the test checks what it answered."""

    def __init__(self, stack: dict, sandbox: httpx.Client, rid: str):
        self.answers: list[httpx.Response | BaseException] = []
        before = _waiting(stack)

        def wait() -> None:
            try:
                self.answers.append(sandbox.get(f"hitl/requests/{rid}/wait?timeout=60"))
            except BaseException as e:  # handed to the test, which fails on it
                self.answers.append(e)

        self.thread = threading.Thread(target=wait)
        self.thread.start()

        def parked() -> bool:
            if self.answers:
                raise AssertionError(f"the wait returned before any decision: {self.answers}")
            return _waiting(stack) > before

        poll_until(parked, 60, "the sandbox's wait parked on the server")

    def answer(self) -> dict:
        """What the wait answered (a 60 s wait, so a wait that was never woken answers
        the pending request)."""
        self.thread.join(120)
        assert not self.thread.is_alive(), "the wait never answered"
        (resp,) = self.answers
        assert isinstance(resp, httpx.Response), resp
        assert resp.status_code == 200, resp.text
        return resp.json()


def _file(agent: dict, **body: object) -> httpx.Response:
    return agent["sandbox"].post(
        "hitl/requests",
        json={"kind": "tool", "tool": "Bash", "input": {"command": "ls"}, **body},
    )


def test_policy_info_and_validation(agent: dict) -> None:
    client, user, sandbox = agent["client"], agent["user"], agent["sandbox"]
    info = sandbox.get("agent/hitl").json()
    assert info["policy"]["default"] == "ask" and "Read" in info["policy"]["allow"]
    assert info["timeout"] == 600 and info["default"] == "deny"
    bad = client.sac(
        "PUT", f"users/{user}/agents/gate/hitl-policy", json={"policy": {"allow": ["Bash("]}}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "policy.allow[0]"
    policy = {"default": "ask", "allow": ["Read"], "ask": [], "deny": ["Bash(rm *)"]}
    ok = client.sac("PUT", f"users/{user}/agents/gate/hitl-policy", json={"policy": policy})
    assert ok.status_code == 200 and ok.json()["policy"] == policy
    assert sandbox.get("agent/hitl").json()["policy"] == policy


def test_file_dedupe_wait_decide(agent: dict) -> None:
    client, user = agent["client"], agent["user"]
    key = f"prompt-{uuid.uuid4().hex[:6]}"
    options = [{"key": "1", "label": "Yes"}, {"key": "3", "label": "No"}]
    first = _file(agent, kind="terminal", tool="claude", options=options, dedupe_key=key,
                  question="Do you want to proceed?", input={"screen": "…"})  # fmt: skip
    assert first.status_code == 201, first.text
    again = _file(agent, kind="terminal", tool="claude", options=options, dedupe_key=key,
                  question="Do you want to proceed?", input={"screen": "…"})  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    rid = first.json()["id"]

    # The sandbox waits on the server first, so its answer can only be the decision
    # waking it (not a request already decided when the wait arrived).
    waiter = Waiter(agent["stack"], agent["sandbox"], rid)
    pending = client.sac("GET", "hitl/requests").json()["requests"]
    assert rid in [r["id"] for r in pending]
    bad = client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "allow",
                                                                    "option": "9"})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["field"] == "option"
    resp = client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "deny"})
    assert resp.status_code == 200, resp.text
    answered = waiter.answer()
    assert answered["status"] == "denied" and answered["option"] == "3"
    assert answered["decided_by"] == user
    again = client.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "allow"})
    assert again.status_code == 409 and again.json()["error"] == "already_decided"
    history = client.sac("GET", "hitl/requests", params={"status": "decided"}).json()
    assert rid in [r["id"] for r in history["requests"]]


def test_cancel_and_admin_queue(agent: dict, admin: HubApi) -> None:
    rid = _file(agent).json()["id"]
    assert agent["sandbox"].post(f"hitl/requests/{rid}/cancel").json()["status"] == "cancelled"
    assert agent["sandbox"].post(f"hitl/requests/{rid}/cancel").status_code == 409
    rid = _file(agent, input={"command": "make deploy"}).json()["id"]
    queue = admin.sac("GET", "hitl/requests", params={"all": "1"}).json()["requests"]
    assert rid in [r["id"] for r in queue]
    mine = admin.sac("GET", "hitl/requests").json()["requests"]
    assert rid not in [r["id"] for r in mine], "without ?all=1 an admin sees their own"
    decided = admin.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "allow"})
    assert decided.status_code == 200 and decided.json()["decided_by"] == "admin"


def test_paging(agent: dict) -> None:
    ids = [_file(agent, input={"command": f"echo {i}"}).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"status": "all", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = agent["client"].sac("GET", "hitl/requests", params=params).json()
        seen += [r["id"] for r in page["requests"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert seen[:5] == list(reversed(ids)), "newest first"
    forged = [
        base64.urlsafe_b64encode(json.dumps(v).encode()).decode()
        for v in (["2026-01-01T00:00:00+00:00", 123], {"a": 1}, [None, None], "x")
    ]
    for params in [
        *({"cursor": c} for c in [*forged, "%%%", "not base64 ☃"]),
        {"limit": "0"},
        {"limit": "10000"},
        {"limit": "ten"},
        {"status": "maybe"},
    ]:
        resp = agent["client"].sac("GET", "hitl/requests", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["field"] == next(iter(params))


def test_others_and_bad_input(agent: dict, stack: dict, new_user) -> None:
    rid = _file(agent).json()["id"]
    _, stranger = new_user("hitlnosy")
    assert stranger.sac("GET", f"hitl/requests/{rid}").status_code == 404
    resp = stranger.sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "allow"})
    assert resp.status_code == 404
    user = agent["user"]
    assert stranger.sac("GET", "hitl/requests", params={"user": user}).status_code == 404
    assert stranger.sac("GET", f"users/{user}/agents/gate/hitl-policy").status_code == 404
    base = stack["service_url"] + "api/"
    forged = httpx.post(
        base + "hitl/requests",
        json={"kind": "tool", "input": {}},
        headers={"Authorization": "Bearer sac-agent-nope"},
    )
    assert forged.status_code == 401
    # A user's token is not an agent token: users cannot file requests as an agent.
    assert stranger.sac("POST", "hitl/requests", json={"kind": "tool"}).status_code == 401
    before = len(agent["client"].sac("GET", "hitl/requests").json()["requests"])
    for body, field in [
        ({"kind": "shell"}, "kind"),
        ({"kind": "tool", "input": "ls"}, "input"),
        ({"kind": "terminal", "input": {}}, "options"),
        ({"kind": "terminal", "options": [{"key": "", "label": "x"}]}, "options[0].key"),
        ({"kind": "terminal", "options": [{"key": "\x00", "label": "x"}]}, "options[0].key"),
        ({"kind": "terminal", "options": ["1"]}, "options[0]"),
        ({"kind": "terminal", "options": [{"key": "1", "label": "a"}] * 2}, "options[1].key"),
        ({"kind": "tool", "session_id": 7}, "session_id"),
        ({"kind": "tool", "input": {"blob": "x" * 300_000}}, "input"),
        ({"kind": "tool", "question": "q" * 2001}, "question"),
        ({"kind": "tool", "agent": "other"}, "agent"),
    ]:
        resp = agent["sandbox"].post("hitl/requests", json=body)
        assert resp.status_code == 400 and resp.json()["field"] == field, (body, resp.text)
    assert len(agent["client"].sac("GET", "hitl/requests").json()["requests"]) == before
    assert agent["client"].sac("GET", "hitl/requests/not-a-uuid").status_code == 404
    bad = agent["client"].sac("POST", f"hitl/requests/{rid}/decision", json={"decision": "ok"})
    assert bad.status_code == 400 and bad.json()["field"] == "decision"
    nul = _file(agent, input={"command": "echo a\x00b"})
    assert nul.status_code == 201 and nul.json()["input"]["command"] == "echo ab"


def test_approve_wakes_the_waiting_sandbox(agent: dict) -> None:
    rid = _file(agent, session_id="s-1", input={"command": "make test"}).json()["id"]
    waiter = Waiter(agent["stack"], agent["sandbox"], rid)  # parked before the decision
    resp = agent["client"].sac(
        "POST", f"hitl/requests/{rid}/decision", json={"decision": "allow", "reason": "ok ✓"}
    )
    assert resp.status_code == 200, resp.text
    answered = waiter.answer()
    assert answered["status"] == "approved" and answered["decision"] == "allow"
    assert answered["reason"] == "ok ✓" and answered["option"] is None
    assert answered["session_id"] == "s-1" and answered["decided_at"]
    # A finished request answers a wait at once, whatever the timeout.
    again = agent["sandbox"].get(f"hitl/requests/{rid}/wait", params={"timeout": 60}).json()
    assert again == answered
    assert agent["sandbox"].get(f"hitl/requests/{rid}/wait?timeout=61").status_code == 400
    # An unanswered wait returns the pending request after its timeout; the caller loops.
    other = _file(agent).json()["id"]
    pending = agent["sandbox"].get(f"hitl/requests/{other}/wait", params={"timeout": 0})
    assert pending.status_code == 200 and pending.json()["status"] == "pending"


def test_timeout_applies_the_resolved_default(agent: dict) -> None:
    client, user = agent["client"], agent["user"]
    path = f"users/{user}/agents/gate"
    resp = client.sac(
        "PATCH", path, json={"overrides": {"hitl_timeout": 5, "hitl_default": "approve"}}
    )
    assert resp.status_code == 200, resp.text
    try:
        info = agent["sandbox"].get("agent/hitl").json()
        assert info["timeout"] == 5 and info["default"] == "allow"
        options = [{"key": "1", "label": "Yes"}, {"key": "2", "label": "No (esc)"}]
        waited = _file(agent, kind="terminal", options=options).json()
        assert waited["default_decision"] == "allow"
        unwatched = _file(agent, input={"command": "make deploy"}).json()["id"]

        def decided() -> dict | None:
            # The sandbox loops on wait until the request is no longer pending.
            resp = agent["sandbox"].get(f"hitl/requests/{waited['id']}/wait")
            return resp.json() if resp.json()["status"] != "pending" else None

        done = poll_until(decided, 60, "the request timed out")
        assert done["status"] == "timed_out" and done["decision"] == "allow"
        assert done["option"] is None and done["decided_by"] is None
        # Nobody waits on the other one: it times out all the same.
        poll_until(
            lambda: client.sac("GET", f"hitl/requests/{unwatched}").json()["status"] == "timed_out",
            60,
            "the unwatched request timed out",
        )
        late = client.sac("POST", f"hitl/requests/{unwatched}/decision", json={"decision": "deny"})
        assert late.status_code == 409 and late.json()["error"] == "already_decided"
        assert agent["sandbox"].post(f"hitl/requests/{unwatched}/cancel").status_code == 409
        assert client.sac("GET", f"hitl/requests/{unwatched}").json()["decision"] == "allow"
    finally:
        client.sac("PATCH", path, json={"overrides": {}})
    assert agent["sandbox"].get("agent/hitl").json()["timeout"] == 600


def test_another_agents_token_cannot_touch_a_request(agent: dict, stack: dict) -> None:
    rid = _file(agent).json()["id"]
    user = f"hitlother{uuid.uuid4().hex[:6]}"
    with running_agent(stack["admin"], user, "other", api_key="sk-unused-key") as client:
        token = asyncio.run(
            run_in_terminal(stack["url"], client.token, user, "other", "echo $SAC_AGENT_TOKEN")
        )
        other = httpx.Client(
            base_url=stack["service_url"] + "api/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=90,
        )
        assert other.get(f"hitl/requests/{rid}/wait?timeout=0").status_code == 404
        assert other.post(f"hitl/requests/{rid}/cancel").status_code == 404
        # Its own key space: the same dedupe key files its own request.
        key = f"k-{uuid.uuid4().hex[:6]}"
        mine = _file(agent, dedupe_key=key).json()["id"]
        theirs = other.post(
            "hitl/requests", json={"kind": "tool", "dedupe_key": key, "input": None}
        )
        assert theirs.status_code == 201 and theirs.json()["id"] != mine
        assert theirs.json()["user"] == user and theirs.json()["agent"] == "other"
        # Another user's agent cannot even see the request.
        assert other.get(f"hitl/requests/{rid}").status_code == 404
    # Its own sandbox shows it (the sidebar hands it over) but can never decide it.
    assert agent["sandbox"].get(f"hitl/requests/{rid}").json()["status"] == "pending"
    decided = agent["sandbox"].post(f"hitl/requests/{rid}/decision", json={"decision": "allow"})
    assert decided.status_code == 403, decided.text
    assert agent["client"].sac("GET", f"hitl/requests/{rid}").json()["status"] == "pending"


def test_odd_text_is_stored_as_sent(agent: dict) -> None:
    odd = {"command": "echo 'a; b' && printf '%s' \"$(id)\" -- 漢字 🙂 \u202e", "n": [1, None]}
    resp = _file(agent, input=odd, question="Robert'); DROP TABLE hitl_requests;--")
    assert resp.status_code == 201, resp.text
    got = agent["client"].sac("GET", f"hitl/requests/{resp.json()['id']}").json()
    assert got["input"] == odd and got["question"].endswith("DROP TABLE hitl_requests;--")
    # A lone surrogate is valid JSON but not Unicode: stored as U+FFFD, not a 500.
    raw = b'{"kind": "tool", "tool": "Bash", "input": {"command": "echo \\ud800"}}'
    resp = agent["sandbox"].post(
        "hitl/requests", content=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["input"]["command"] == "echo \ufffd"


def test_a_text_answer_to_a_prompt_that_takes_text(agent: dict) -> None:
    """A terminal prompt that takes text is answered with one line of printable
    text, no longer than it asked for; anything else is refused and changes nothing."""
    options = [{"key": "\r", "label": "Press Enter"}]
    filed = _file(agent, kind="terminal", options=options, text_max=20, question="Enter a name:")
    assert filed.status_code == 201 and filed.json()["text_max"] == 20, filed.text
    rid = filed.json()["id"]
    person = agent["client"]
    decide = f"hitl/requests/{rid}/decision"
    for body, message in [
        ({"decision": "allow", "text": "x" * 21}, "at most 20 characters"),
        ({"decision": "allow", "text": "ok\rrm -rf ~\r"}, "U+000D"),
        ({"decision": "allow", "text": "a\x1b[2J"}, "U+001B"),
        ({"decision": "allow", "text": "evil\u202eexe.txt"}, "U+202E"),
        ({"decision": "allow", "text": "\x03"}, "U+0003"),
        ({"decision": "deny", "text": "Ada"}, "goes with allow"),
        ({"decision": "allow", "text": "Ada", "option": "\r"}, "not both"),
    ]:
        resp = person.sac("POST", decide, json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["field"] == "text" and message in resp.json()["message"], resp.text
    assert person.sac("POST", decide, json={"decision": "allow", "text": ""}).status_code == 400
    assert person.sac("GET", f"hitl/requests/{rid}").json()["status"] == "pending"
    waiter = Waiter(agent["stack"], agent["sandbox"], rid)
    resp = person.sac("POST", decide, json={"decision": "allow", "text": "Ada Lovelace ✓"})
    assert resp.status_code == 200, resp.text
    answered = waiter.answer()
    assert answered["text"] == "Ada Lovelace ✓" and answered["option"] is None
    late = person.sac("POST", decide, json={"decision": "allow", "text": "again"})
    assert late.status_code == 409

    # A prompt that takes no text, and a tool call, refuse one.
    menu = _file(agent, kind="terminal", options=[{"key": "1", "label": "Yes"}]).json()
    resp = person.sac("POST", f"hitl/requests/{menu['id']}/decision",
                      json={"decision": "allow", "text": "yes"})  # fmt: skip
    assert resp.status_code == 400 and "takes no text" in resp.json()["message"]
    tool = _file(agent).json()
    resp = person.sac("POST", f"hitl/requests/{tool['id']}/decision",
                      json={"decision": "allow", "text": "yes"})  # fmt: skip
    assert resp.status_code == 400 and resp.json()["field"] == "text"
    for text_max in (0, 2001, "20"):
        bad = _file(agent, kind="terminal", options=options, text_max=text_max)
        assert bad.status_code == 400 and bad.json()["field"] == "text_max", bad.text
    bad = _file(agent, text_max=20)
    assert bad.status_code == 400 and bad.json()["field"] == "text_max", bad.text
