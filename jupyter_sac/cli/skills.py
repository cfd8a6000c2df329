"""`sac skills …`: the marketplace and agents' installed skills."""

from __future__ import annotations

from typing import Any

import click

from ._app import SacGroup, agent_ref, client, complete_agents, json_option, note, sac, show
from .output import fields, table

AGENT = click.argument("agent", metavar="AGENT", shell_complete=complete_agents)
COLUMNS: list[tuple[str, Any]] = [
    ("id", "id"), ("command", "command"), ("title", "title"), ("tier", "visibility"),
    ("owner", "owner"), ("version", "version"), ("installs", "installs"),
]  # fmt: skip


@sac.group(cls=SacGroup)
def skills() -> None:
    """Skills: the marketplace, and your agents' installs.

    SKILL is a skill's id, or its command (e.g. summarise-csv).
    """


@skills.command("list")
@click.option("--tier", type=click.Choice(["official", "public", "group", "private"]),
              help="Only skills of this tier.")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@json_option
def list_skills(tier: str | None, limit: int, as_json: bool) -> None:
    """Skills you may install, most installed first."""
    found = client().skills(tier=tier, limit=limit)
    show(found, as_json, lambda: table(found, COLUMNS))


@skills.command("search")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@json_option
def search_skills(query: str, limit: int, as_json: bool) -> None:
    """Skills whose command, title, description or tags match QUERY."""
    found = client().skills(q=query, limit=limit)
    show(found, as_json, lambda: table(found, COLUMNS))


@skills.command("show")
@click.argument("skill_id", metavar="ID", type=int)
@json_option
def show_skill(skill_id: int, as_json: bool) -> None:
    """One skill: what it does, its parameters and its prompt."""
    skill = client().skill(skill_id)
    params = skill.get("parameters") or []
    show(skill, as_json, lambda: fields([
        ("id", skill["id"]), ("command", skill.get("command")), ("title", skill.get("title")),
        ("description", skill.get("description")), ("tier", skill.get("visibility")),
        ("owner", skill.get("owner")), ("version", skill.get("version")),
        ("tags", skill.get("tags")), ("installs", skill.get("installs")),
        ("parameters", ", ".join(str(p.get("name")) for p in params) or None),
        ("prompt", skill.get("prompt") or None),
    ]))  # fmt: skip


@skills.command("installed")
@AGENT
@json_option
def installed(agent: str, as_json: bool) -> None:
    """The skills an agent has, each at its pinned version."""
    owner, slug = agent_ref(agent)
    found = client().agent(slug, owner).installed()
    show(found, as_json, lambda: table(found, [
        ("id", "id"), ("command", "command"), ("installed", "installed_version"),
        ("latest", "latest_version"), ("update", "update_available"), ("available", "available"),
    ]))  # fmt: skip


def _skill(text: str) -> int | str:
    return int(text) if text.isascii() and text.isdigit() else text


@skills.command("install")
@AGENT
@click.argument("skill", metavar="SKILL")
@json_option
def install(agent: str, skill: str, as_json: bool) -> None:
    """Install a skill in an agent (pinned at its current version)."""
    owner, slug = agent_ref(agent)
    entry = client().agent(slug, owner).install(_skill(skill))
    if as_json:
        show(entry, True, str)
    else:
        note(f"Installed {entry['command']} v{entry['installed_version']} in {slug}")


@skills.command("uninstall")
@AGENT
@click.argument("skill", metavar="SKILL")
def uninstall(agent: str, skill: str) -> None:
    """Remove a skill from an agent."""
    owner, slug = agent_ref(agent)
    client().agent(slug, owner).uninstall(_skill(skill))
    note(f"Uninstalled {skill} from {slug}")
