"""`sac hitl …`: approvals (human in the loop): list, show, approve, deny."""

from __future__ import annotations

import json
from typing import Any

import click

from ..rules.events import hitl_summary
from ._app import SacGroup, client, json_option, note, sac, show
from .output import fields, table


@sac.group(cls=SacGroup)
def hitl() -> None:
    """Approvals your agents wait for (human in the loop).

    An agent whose policy asks for a human waits for a decision on each such tool
    call or terminal prompt until it times out (then its default applies).
    """


@hitl.command("list")
@click.option(
    "--pending", is_flag=True, help="Only those waiting for a decision (same as --status pending)."
)
@click.option("--status", type=click.Choice(["pending", "decided", "all"]), default="all",
              show_default=True, help="Which requests.")  # fmt: skip
@click.option("--agent", metavar="NAME", help="Only this agent's.")
@click.option("--all", "all_users", is_flag=True, help="Everyone's (administrators).")
@click.option("--user", metavar="NAME", help="One user's (administrators).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
def list_requests(pending: bool, status: str, agent: str | None, all_users: bool,
                  user: str | None, limit: int, as_json: bool) -> None:  # fmt: skip
    """Requests of your agents, newest first."""
    requests = client().hitl_requests("pending" if pending else status, agent, user=user,
                                      all_users=all_users, limit=limit)  # fmt: skip
    columns: list[tuple[str, Any]] = [
        ("id", "id"), ("agent", "agent"), ("asks", hitl_summary), ("status", "status"),
        ("created", "created_at"), ("expires", "expires_at"),
    ]  # fmt: skip
    if all_users or user:
        columns.insert(1, ("user", "user"))
    show(requests, as_json, lambda: table(requests, columns))


def _describe(request: dict[str, Any]) -> str:
    options = request.get("options") or []
    pairs: list[tuple[str, Any]] = [
        ("id", request["id"]),
        ("agent", f"{request['user']}/{request['agent']}"),
        ("kind", request["kind"]),
        ("tool", request.get("tool")),
        ("question", request.get("question")),
        ("input", json.dumps(request.get("input"), indent=2, ensure_ascii=False)),
        ("options", ", ".join(f"{o['key']}: {o['label']}" for o in options) or None),
        (
            "takes text",
            f"up to {request['text_max']} characters" if request.get("text_max") else None,
        ),
        ("status", request["status"]),
        ("created", request.get("created_at")),
        ("expires", request.get("expires_at")),
        ("if nobody decides", request.get("default_decision")),
    ]
    if request["status"] != "pending":
        pairs += [("decided by", request.get("decided_by")), ("decided", request.get("decided_at")),
                  ("option", request.get("option")), ("text", request.get("text")),
                  ("reason", request.get("reason"))]  # fmt: skip
    return fields([(k, v) for k, v in pairs if v is not None])


@hitl.command("show")
@click.argument("request_id", metavar="ID")
@json_option
def show_request(request_id: str, as_json: bool) -> None:
    """One request: what the agent wants to do, and what became of it."""
    request = client().hitl_request(request_id)
    show(request, as_json, lambda: _describe(request))


@hitl.command("approve")
@click.argument("request_id", metavar="ID")
@click.option(
    "--option", metavar="KEY", help="A terminal prompt's choice (its key, see `sac hitl show`)."
)
@click.option("--text", metavar="TEXT", help="The answer to a prompt that takes text.")
@click.option("--reason", metavar="TEXT", help="Why (kept with the decision).")
@json_option
def approve(request_id: str, option: str | None, text: str | None, reason: str | None,
            as_json: bool) -> None:  # fmt: skip
    """Allow a request; the agent goes on."""
    if option and text:
        raise click.UsageError("give either --option or --text, not both")
    decided = client().approve(request_id, option, reason, text=text)
    _decided(decided, as_json)


@hitl.command("deny")
@click.argument("request_id", metavar="ID")
@click.option("--reason", metavar="TEXT", help="Why (the agent is told).")
@json_option
def deny(request_id: str, reason: str | None, as_json: bool) -> None:
    """Deny a request; the agent is told it may not."""
    _decided(client().deny(request_id, reason), as_json)


def _decided(request: dict[str, Any], as_json: bool) -> None:
    if as_json:
        show(request, True, str)
    else:
        note(f"{request['id']}: {request['status']} ({hitl_summary(request)})")
