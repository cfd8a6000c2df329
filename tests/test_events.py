"""The event stream's pure rules (jupyter_sac/rules/events.py): where a stream
starts, what a HITL request's event says, and how an event is written."""

from __future__ import annotations

import json

import pytest

from jupyter_sac.rules.events import (
    MAX_EVENT_ID,
    hitl_decided,
    hitl_requested,
    hitl_summary,
    parse_event_id,
    sse_comment,
    sse_event,
)


@pytest.mark.parametrize("raw", ["0", "42", " 7 ", str(MAX_EVENT_ID)])
def test_an_event_id_is_a_decimal_integer_in_range(raw: str) -> None:
    assert parse_event_id(raw) == int(raw)


@pytest.mark.parametrize(
    "raw", ["", "-1", "+1", "1.0", "1e3", "abc", "²", "1 2", str(MAX_EVENT_ID + 1), "9" * 40]
)
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(raw)


def request(**over: object) -> dict:
    base = {
        "id": "5b0c", "agent": "helper", "kind": "tool", "tool": "Bash",
        "input": {"command": "make deploy", "env": {"TOKEN": "s3cret"}}, "question": None,
        "status": "pending", "decision": None, "decided_by": None, "decided_at": None,
        "expires_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    return {**base, **over}


def test_a_request_is_summed_up_in_one_line_from_what_says_what_it_does() -> None:
    assert hitl_summary(request()) == "Bash: make deploy"
    assert hitl_summary(request(tool="Read", input={"file_path": "/etc/hosts"})) == (
        "Read: /etc/hosts"
    )
    multi = hitl_summary(request(input={"command": "echo a\n\n  echo b"}))
    assert multi == "Bash: echo a echo b"
    long = hitl_summary(request(input={"command": "x" * 500}))
    assert len(long) == 200 and long.endswith("…")
    terminal = request(kind="terminal", tool="claude", question="Do you want\nto proceed?")
    assert hitl_summary(terminal) == "Do you want to proceed?"
    assert hitl_summary(request(tool="mcp__x", input={"blob": 1})) == "mcp__x"


def test_the_events_carry_no_input_beyond_the_summary() -> None:
    requested = hitl_requested(request())
    assert set(requested) == {"id", "agent", "kind", "tool", "summary", "expires_at"}
    assert "s3cret" not in json.dumps(requested)
    decided = hitl_decided(request(status="denied", decision="deny", decided_by="ann"))
    assert (decided["status"], decided["decision"], decided["decided_by"]) == (
        "denied", "deny", "ann"
    )  # fmt: skip
    assert "s3cret" not in json.dumps(decided)


def test_an_event_is_written_as_server_sent_events_on_one_data_line() -> None:
    text = sse_event(7, "hitl.requested", {"summary": "a\nb\n\nid: 9"})
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text.rstrip("\n").split("\n")
    assert lines[:2] == ["id: 7", "event: hitl.requested"]
    assert json.loads(lines[2].removeprefix("data: ")) == {"summary": "a\nb\n\nid: 9"}
    assert sse_comment("keep\nalive") == ": keep alive\n\n"


def test_a_spent_budget_is_keyed_by_its_month_and_for_an_agent_its_agent() -> None:
    from datetime import date

    from jupyter_sac.rules.events import budget_exhausted

    data, key = budget_exhausted("agent", "helper", 600, 500, date(2026, 12, 31))
    assert data == {"scope": "agent", "agent": "helper", "used": 600, "limit": 500,
                    "month": "2026-12", "resets_on": "2027-01-01"}  # fmt: skip
    assert key == "budget.exhausted:agent:helper:2026-12"
    # A user's budget is one for all their agents.
    _, user_key = budget_exhausted("user", "other", 1, 1, date(2026, 12, 1))
    assert user_key == "budget.exhausted:user::2026-12"
