"""`sac templates`, `sac usage`, `sac settings`, `sac users` and `sac completion`."""

from __future__ import annotations

import json
from typing import Any

import click
from click.shell_completion import get_completion_class

from ._app import SacGroup, client, json_option, note, sac, show
from .agents import USAGE_COLUMNS, budget_lines
from .output import fields, parse_value, table

# ---- templates ---------------------------------------------------------------------


@sac.group(cls=SacGroup)
def templates() -> None:
    """Agent templates to create agents from.

    `sac agents create NAME --template TEMPLATE` makes an agent from one.
    """


@templates.command("list")
@json_option
def list_templates(as_json: bool) -> None:
    """The organisation's templates and your own."""
    found = client().templates()
    show(found, as_json, lambda: table(found, [
        ("id", "id"), ("name", "name"), ("scope", "scope"), ("owner", "owner"),
        ("version", "version"), ("preset", "builtin"), ("updated", "updated_at"),
    ]))  # fmt: skip


@templates.command("show")
@click.argument("template", metavar="TEMPLATE")
@json_option
def show_template(template: str, as_json: bool) -> None:
    """One template (by id or name), its latest version."""
    if not (template.isascii() and template.isdigit()):
        matches = [t for t in client().templates() if t["name"] == template]
        if not matches:
            raise click.ClickException(f"no template named {template!r} (see `sac templates list`)")
        template = str(matches[0]["id"])
    found = client().template(template)
    definition = found.get("definition") or {}
    show(found, as_json, lambda: fields([
        ("id", found["id"]), ("name", found["name"]), ("scope", found["scope"]),
        ("owner", found.get("owner")), ("version", found["version"]),
        ("preset", found.get("builtin")), ("you may change it", found.get("editable")),
        ("definition", json.dumps(definition, indent=2, ensure_ascii=False)),
    ]))  # fmt: skip


# ---- usage -------------------------------------------------------------------------


@sac.command()
@json_option
def usage(as_json: bool) -> None:
    """Model use of all your agents, and your budget.

    Tokens and requests through the credential proxy, totals per agent, and your
    token budget this month (UTC).
    `sac agents usage AGENT` shows one agent's use per day.
    """
    c = client()
    found = [c.agent(a["slug"]).usage() for a in c.agents()]

    def render() -> str:
        lines = table(found, [("agent", "slug"), *[(h, _total(k)) for h, k in USAGE_COLUMNS]])
        user_budget: dict[str, Any] = next((u["budget"] for u in found if u.get("budget")), {})
        owner = {"user": user_budget["user"]} if "user" in user_budget else {}
        return lines + ("\n\n" + budget_lines(owner) if owner else "")

    show(found, as_json, render)


def _total(key: str) -> Any:
    return lambda u: u["totals"].get(key)


# ---- settings ----------------------------------------------------------------------


@sac.group(cls=SacGroup)
def settings() -> None:
    """Settings: limits, timeouts, providers.

    Settings have a system level, a user level and an agent level.
    Values resolve system → user → agent; see docs/configuration.md. Changing them
    needs an administrator.
    """


# Host lists can be long: a table shows their start (all of it with --json).
SETTING_WIDTH = 40

LEVEL = [
    click.option("--user", metavar="NAME", help="A user's level (default: yours)."),
    click.option("--system", is_flag=True, help="The system level (administrators)."),
]


def level_options(f: Any) -> Any:
    for option in reversed(LEVEL):
        f = option(f)
    return f


@settings.command("show")
@level_options
@json_option
def show_settings(user: str | None, system: bool, as_json: bool) -> None:
    """The settings that apply, and the overrides at one level.

    Without options: what applies to you, with each setting's default.
    """
    c = client()
    if system and user:
        raise click.UsageError("give either --user or --system")
    if system or user:
        found = c.system_settings() if system else c.user_settings(user or "")
        overrides = found.get("overrides") or {}
        rows = [{"name": k, "value": v, "set here": k in overrides}
                for k, v in (found.get("resolved") or {}).items()]  # fmt: skip
        columns = [("name", "name"), ("value", "value"), ("set here", "set here")]
        show(found, as_json, lambda: table(rows, columns, width=SETTING_WIDTH))
        return
    found = c.settings()
    specs = {s["name"]: s for s in found.get("specs") or []}
    rows = [{"name": k, "value": v, "default": specs.get(k, {}).get("default")}
            for k, v in (found.get("resolved") or {}).items()]  # fmt: skip
    columns = [("name", "name"), ("value", "value"), ("default", "default")]
    # Each setting's meaning is in --json ("specs") and docs/configuration.md.
    show(found, as_json, lambda: table(rows, columns, width=SETTING_WIDTH))


def _change(user: str | None, system: bool, change: Any) -> dict[str, Any]:
    """Read the level's overrides, change them, write them back (the API replaces
    the whole object)."""
    c = client()
    if system and user:
        raise click.UsageError("give either --user or --system")
    if system:
        return c.set_system_settings(change(dict(c.system_settings().get("overrides") or {})))
    name = user or c.whoami()
    current = dict(c.user_settings(name).get("overrides") or {})
    return c.set_user_settings(name, change(current))


@settings.command("set")
@click.argument("name")
@click.argument("value")
@level_options
@json_option
def set_setting(name: str, value: str, user: str | None, system: bool, as_json: bool) -> None:
    """Set NAME to VALUE at a level (administrators).

    VALUE is JSON where it parses (10, true, ["anthropic", "glm"]), else text (2Gi).
    """
    changed = _change(user, system, lambda o: {**o, name: parse_value(value)})
    if as_json:
        show(changed, True, str)
    else:
        note(f"{name} = {json.dumps((changed.get('resolved') or {}).get(name))}")


@settings.command("unset")
@click.argument("name")
@level_options
@json_option
def unset_setting(name: str, user: str | None, system: bool, as_json: bool) -> None:
    """Remove NAME's override at a level (administrators): the level above applies."""

    def drop(overrides: dict[str, Any]) -> dict[str, Any]:
        if name not in overrides:
            raise click.ClickException(f"{name} is not set at this level")
        return {k: v for k, v in overrides.items() if k != name}

    changed = _change(user, system, drop)
    if as_json:
        show(changed, True, str)
    else:
        note(f"{name} = {json.dumps((changed.get('resolved') or {}).get(name))} (inherited)")


# ---- users -------------------------------------------------------------------------


@sac.group(cls=SacGroup)
def users() -> None:
    """The hub's users (administrators)."""


@users.command("list")
@json_option
def list_users(as_json: bool) -> None:
    """Every user of the hub (needs the hub's permission to list users)."""
    found = client().users()
    show(found, as_json, lambda: table(found, [
        ("name", "name"), ("hub admin", "admin"), ("groups", "groups"),
        ("servers", lambda u: len(u.get("servers") or {})), ("last activity", "last_activity"),
    ]))  # fmt: skip


# ---- completion --------------------------------------------------------------------


@sac.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  eval "$(sac completion bash)"        (e.g. in ~/.bashrc)
    zsh:   eval "$(sac completion zsh)"         (e.g. in ~/.zshrc)
    fish:  sac completion fish > ~/.config/fish/completions/sac.fish
    """
    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(sac, {}, "sac", "_SAC_COMPLETE").source())
