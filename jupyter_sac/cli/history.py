"""`sac history …`: recorded conversations: sessions, events, search, CSV export."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..rules.events import one_line
from ..runtimes.transcript import readable_text
from ._app import (
    SacGroup,
    agent_ref,
    client,
    complete_agents,
    iterate_to,
    json_option,
    note,
    sac,
    show,
)
from .output import table

AGENT = click.argument("agent", metavar="AGENT", shell_complete=complete_agents)
SINCE = click.option(
    "--since",
    metavar="TIME",
    help="From this time on (ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00Z).",
)
UNTIL = click.option("--until", metavar="TIME", help="Before this time (ISO 8601).")
TEXT_WIDTH = 100


@sac.group(cls=SacGroup)
def history() -> None:
    """Your agents' recorded conversations.

    Terminal and chat sessions, as the service recorded them.

    History outlives a deleted agent: it stays readable by its name until the
    retention period ends.
    """


def _event_text(event: dict[str, Any]) -> str:
    return one_line(readable_text(event.get("kind", ""), event.get("payload")), TEXT_WIDTH)


EVENT_COLUMNS: list[tuple[str, Any]] = [("time", "ts"), ("kind", "kind"), ("text", _event_text)]


@history.command("list")
@AGENT
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def list_sessions(agent: str, limit: int, as_json: bool) -> None:
    """An agent's recorded sessions, most recently active first."""
    owner, slug = agent_ref(agent)
    sessions = client().agent(slug, owner).history_sessions(limit)
    show(sessions, as_json, lambda: table(sessions, [
        ("session", "session_id"), ("first prompt", "first_prompt"), ("events", "events"),
        ("prompts", "prompts"), ("first", "first_ts"), ("last", "last_ts"),
    ]))  # fmt: skip


@history.command("show")
@AGENT
@click.argument("session")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many events.")
@json_option
def show_session(agent: str, session: str, limit: int | None, as_json: bool) -> None:
    """A session's events, oldest first (the text of each, cut to one line)."""
    owner, slug = agent_ref(agent)
    events = client().agent(slug, owner).history_events(session, limit)
    show(events, as_json, lambda: table(events, EVENT_COLUMNS, width=TEXT_WIDTH))


@history.command("search")
@click.argument("query", required=False)
@click.option("--agent", metavar="NAME", help="Only this agent's.")
@click.option(
    "--user", metavar="NAME", help="One user's (administrators and auditors; default: yours)."
)
@SINCE
@UNTIL
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@json_option
def search(query: str | None, agent: str | None, user: str | None, since: str | None,
           until: str | None, oldest_first: bool, limit: int, as_json: bool) -> None:  # fmt: skip
    """Events whose text contains QUERY (case-insensitive, literal), newest first."""
    order = "asc" if oldest_first else None
    events = client().search_history(
        query, user=user, agent=agent, since=since, until=until, order=order, limit=limit
    )
    columns = [("agent", lambda e: f"{e['user']}/{e['agent']}"), ("session", "session_id"),
               *EVENT_COLUMNS]  # fmt: skip
    show(events, as_json, lambda: table(events, columns, width=TEXT_WIDTH))


@history.command("export")
@click.argument("query", required=False)
@click.option(
    "--agent",
    metavar="NAME",
    help="Only this agent's (USER/NAME for another user's with --session).",
)
@click.option("--session", metavar="ID", help="Only this session (needs --agent).")
@click.option("--user", metavar="NAME", help="One user's (administrators and auditors).")
@SINCE
@UNTIL
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", help="Write to this file (default: stdout).")  # fmt: skip
def export(query: str | None, agent: str | None, session: str | None, user: str | None,
           since: str | None, until: str | None, output: str) -> None:  # fmt: skip
    """Export events as CSV (oldest first): everything matching QUERY and the
    filters, or one session of an agent.

    Columns: owner, agent, session_id, uuid, ts, kind, text, payload. A cell a
    spreadsheet would run as a formula starts with a ' (the service writes it so).
    """
    if session:
        if not agent:
            raise click.UsageError("--session needs --agent")
        if query or user:
            raise click.UsageError("--session exports one whole session: no QUERY or --user")
        owner, slug = agent_ref(agent)
        chunks = client().agent(slug, owner).export_history(session, since, until)
    else:
        chunks = client().export_history(query, user=user, agent=agent, since=since, until=until)
    if output == "-":
        iterate_to(sys.stdout.buffer, chunks)
        return
    with open(output, "wb") as f:
        written = iterate_to(f, chunks)
    note(f"Wrote {written:,} bytes to {output}")
