"""A user's event stream (``GET api/events``): the kinds of event, what each
carries, where a stream starts, and how one event is written on the wire
(Server-Sent Events). Pure functions: the service and its tests share them.

An event's data says what happened and where to look, never more than the API
already shows its reader: a HITL request's event names the request, its agent,
its tool and a one-line summary; the request itself (its input) is read with
``GET api/hitl/requests/{id}``, where who may read it is settled again.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from .budgets import next_month

HITL_REQUESTED = "hitl.requested"
HITL_DECIDED = "hitl.decided"
BUDGET_EXHAUSTED = "budget.exhausted"
# Written by the hub's spawners (another process: the streams and the webhook
# deliverer see it at their next re-read, within seconds).
AGENT_FAILED = "agent.failed"
# Reported by the agent's own sandbox (its chat runs there), with its agent token.
CHAT_TURN_FINISHED = "chat.turn_finished"
KINDS = (HITL_REQUESTED, HITL_DECIDED, BUDGET_EXHAUSTED, AGENT_FAILED, CHAT_TURN_FINISHED)
# A sandbox reports at most this many finished turns a minute: a hostile one could
# otherwise flood its owner's stream and webhooks (each turn is a model call, so a
# real agent stays far below it).
TURNS_PER_MINUTE = 20

# The largest event id a client may name: what a query's integer may spell (the
# contract reads at most 18 digits), far beyond any bigserial this table reaches.
MAX_EVENT_ID = 10**18 - 1
# A summary is one line of at most this many characters.
SUMMARY_CHARS = 200
# Input fields that say in a few words what a tool call does, by preference.
_SUMMARY_FIELDS = ("command", "file_path", "path", "url", "pattern", "notebook_path", "query")


def parse_event_id(raw: str) -> int:
    """The event id a client resumes after (``Last-Event-ID`` or ``?after=``): a
    decimal integer within [0, MAX_EVENT_ID]; ValueError for anything else
    (negative, signed, spaced, too long, not a number)."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_EVENT_ID))):
        raise ValueError(f"expected an event id, 0-{MAX_EVENT_ID}")
    return int(text)


def one_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    """``text`` on one line (whitespace runs made one space), cut to ``limit``
    characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def hitl_summary(request: dict[str, Any]) -> str:
    """What a HITL request asks, in one line: the terminal prompt's question, or
    the tool and the input field that says what it does (``Bash: make deploy``)."""
    if request.get("kind") == "terminal" and request.get("question"):
        return one_line(str(request["question"]))
    tool = request.get("tool") or "a tool"
    tool_input = request.get("input") or {}
    for name in _SUMMARY_FIELDS:
        value = tool_input.get(name) if isinstance(tool_input, dict) else None
        if isinstance(value, str) and value.strip():
            return one_line(f"{tool}: {value}")
    if request.get("question"):
        return one_line(str(request["question"]))
    return one_line(str(tool))


def hitl_requested(request: dict[str, Any]) -> dict[str, Any]:
    """The data of ``hitl.requested`` for a request (its API model, ``request_model``)."""
    return {
        "id": request["id"],
        "agent": request["agent"],
        "kind": request["kind"],
        "tool": request["tool"],
        "summary": hitl_summary(request),
        "expires_at": request["expires_at"],
    }


def hitl_decided(request: dict[str, Any]) -> dict[str, Any]:
    """The data of ``hitl.decided``: the request is no longer pending (approved,
    denied, timed out, or cancelled by its sandbox), and how it ended."""
    return {
        "id": request["id"],
        "agent": request["agent"],
        "tool": request["tool"],
        "status": request["status"],
        "decision": request["decision"],
        "decided_by": request["decided_by"],
        "decided_at": request["decided_at"],
    }


def agent_failed(phase: str, message: str, exit_code: int | None = None) -> dict[str, Any]:
    """The data of ``agent.failed``: the agent did not start (``phase`` ``start``,
    the reason its spawn page showed) or its sandbox exited while it ran (``exit``,
    with the exit code)."""
    data: dict[str, Any] = {"phase": phase, "message": one_line(message, 500)}
    if exit_code is not None:
        data["exit_code"] = exit_code
    return data


def chat_turn_finished(report: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The data of ``chat.turn_finished`` from a sandbox's report (checked against
    the contract: session and turn ids, whether it ended in an error, the answer's
    first words) and its dedupe key: one event per turn, however often reported."""
    data = {
        "session_id": report["session_id"],
        "turn_id": report["turn_id"],
        "is_error": bool(report.get("is_error", False)),
        "summary": one_line(str(report.get("summary", ""))),
    }
    return data, f"{CHAT_TURN_FINISHED}:{report['turn_id']}"


def budget_exhausted(
    scope: str, agent: str, used: int, limit: int, today: date
) -> tuple[dict[str, Any], str]:
    """The data of ``budget.exhausted`` and its dedupe key: the ``scope``'s budget
    (``user``: all the owner's agents; ``agent``: that one) is spent this month,
    and a model call of ``agent`` was refused for it. Told once a month per budget
    (the key names the month, and the agent for an agent's budget)."""
    month = today.strftime("%Y-%m")
    data = {
        "scope": scope,
        "agent": agent,
        "used": used,
        "limit": limit,
        "month": month,
        "resets_on": next_month(today).isoformat(),
    }
    whose = agent if scope == "agent" else ""
    return data, f"{BUDGET_EXHAUSTED}:{scope}:{whose}:{month}"


def sse_event(event_id: int, kind: str, data: Any) -> str:
    """One event as Server-Sent Events write it: ``id``, ``event`` and ``data``
    lines and a blank line. The data is JSON on one line (json.dumps escapes
    newlines inside strings), so it never ends the event early."""
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def sse_comment(text: str) -> str:
    """A comment line (a keep-alive): clients ignore it; proxies see traffic."""
    return f": {one_line(text)}\n\n"
