"""`sac agents …`: list, show, create, start, stop, restart, logs, delete, usage, exec, screen."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..client.errors import SacError
from ._app import (
    ERROR,
    OK,
    SacGroup,
    agent_ref,
    client,
    complete_agents,
    json_option,
    note,
    sac,
    show,
)
from .output import fields, json_line, parse_value, safe_text, table

AGENT = click.argument("agent", metavar="AGENT", shell_complete=complete_agents)
TIMEOUT = click.option(
    "--timeout",
    type=float,
    default=300,
    show_default=True,
    help="Seconds to wait for it to be ready.",
)


@sac.group(cls=SacGroup)
def agents() -> None:
    """Your agents: create, start, stop, delete.

    AGENT is an agent's name (its slug); administrators may write USER/NAME for
    someone else's.
    """


def _list_columns(with_owner: bool) -> list[tuple[str, Any]]:
    columns: list[tuple[str, Any]] = [("name", "slug"), ("display name", "display_name"),
                                      ("state", "state"), ("provider", "provider"),
                                      ("model", "model"), ("created", "created_at")]  # fmt: skip
    return [("owner", "owner"), *columns] if with_owner else columns


@agents.command("list")
@click.option("--all", "all_users", is_flag=True, help="Everyone's agents (administrators).")
@click.option("--user", metavar="NAME", help="One user's agents (administrators).")
@json_option
def list_agents(all_users: bool, user: str | None, as_json: bool) -> None:
    """Your agents and whether they run."""
    listed = client().agents(user=user, all_users=all_users)
    show(listed, as_json, lambda: table(listed, _list_columns(all_users or bool(user))))


def _agent(ref: str) -> Any:
    owner, slug = agent_ref(ref)
    return client().agent(slug, owner)


def _describe(record: dict[str, Any]) -> str:
    template = record.get("template") or {}
    usage = record.get("sandbox_usage") or {}
    pairs: list[tuple[str, Any]] = [
        ("agent", f"{record['owner']}/{record['slug']}"),
        ("display name", record.get("display_name")),
        ("state", record.get("state")),
        ("provider", record.get("provider")),
        ("model", record.get("model")),
        ("base URL", record.get("base_url")),
        ("key", "organisation's" if record.get("uses_organisation_key") else "its own"),
        ("template", f"{template['name']} v{template['version']}" if template else None),
        ("url", record.get("url")),
        ("created", record.get("created_at")),
        ("updated", record.get("updated_at")),
    ]
    if usage.get("running"):
        cpu = usage.get("cpu_percent")
        pairs += [("cpu", None if cpu is None else f"{cpu:.1f} % of a core"),
                  ("memory", _bytes(usage.get("memory_bytes"))),
                  ("processes", usage.get("processes"))]  # fmt: skip
    overrides = record.get("overrides") or {}
    if overrides:
        pairs.append(("own settings", ", ".join(f"{k}={v}" for k, v in overrides.items())))
    return fields(pairs)


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@agents.command("show")
@AGENT
@json_option
def show_agent(agent: str, as_json: bool) -> None:
    """One agent: provider, model, state, settings."""
    record = _agent(agent).info()
    show(record, as_json, lambda: _describe(record))


def _settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--set")
        overrides[name.strip()] = parse_value(value)
    return overrides


@agents.command("create")
@click.argument("name")
@click.option(
    "--template", metavar="TEMPLATE", help="An agent template's name or id (`sac templates list`)."
)
@click.option("--display-name", metavar="TEXT", help="The name people see (default: NAME).")
@click.option(
    "--provider",
    help="anthropic, openrouter, glm, qwen or custom (default: your first allowed one).",
)
@click.option("--model", help="The model (default: the provider's).")
@click.option("--base-url", metavar="URL", help="The endpoint of a `custom` provider.")
@click.option(
    "--api-key-stdin",
    is_flag=True,
    help="Read the agent's own provider key from stdin (default: the organisation's key).",
)
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="An agent-level setting, e.g. --set mem_limit=2Gi (repeatable).")  # fmt: skip
@click.option("--user", metavar="NAME", help="Create it for another user (administrators).")
@click.option("--start", is_flag=True, help="Start it once created, and wait until it is ready.")
@TIMEOUT
@json_option
def create_agent(name: str, template: str | None, display_name: str | None, provider: str | None,
                 model: str | None, base_url: str | None, api_key_stdin: bool,
                 settings: tuple[str, ...], user: str | None, start: bool, timeout: float,
                 as_json: bool) -> None:  # fmt: skip
    """Create an agent called NAME.

    NAME: 1-30 lowercase letters, digits and single hyphens, starting with a
    letter. The agent is not started unless --start is given.
    """
    body: dict[str, Any] = {"template": template, "display_name": display_name,
                            "provider": provider, "model": model, "base_url": base_url,
                            "user": user}  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}
    if api_key_stdin:
        body["api_key"] = sys.stdin.readline().strip()
    if settings:
        body["overrides"] = _settings(settings)
    agent = client().create_agent(name, **body)
    note(f"Created agent {agent.slug}")
    if start:
        _start(agent, timeout)
    record = agent.info()
    show(record, as_json, lambda: _describe(record))


def _progress(event: dict[str, Any]) -> None:
    message = event.get("message")
    if message:
        note(f"  {message}")


def _start(agent: Any, timeout: float) -> None:
    note(f"Starting {agent.slug}…")
    agent.start(progress=_progress, timeout=timeout)
    note(f"{agent.slug} is running")


@agents.command("start")
@AGENT
@TIMEOUT
@json_option
def start_agent(agent: str, timeout: float, as_json: bool) -> None:
    """Start an agent and wait until it is ready.

    The hub's progress messages go to stderr.
    """
    handle = _agent(agent)
    _start(handle, timeout)
    if as_json:
        show(handle.info(), True, str)


@agents.command("stop")
@AGENT
@json_option
def stop_agent(agent: str, as_json: bool) -> None:
    """Stop an agent's sandbox.

    Its files stay; start it again any time.
    """
    handle = _agent(agent)
    handle.stop()
    note(f"{handle.slug} is stopped")
    if as_json:
        show(handle.info(), True, str)


@agents.command("restart")
@AGENT
@TIMEOUT
@json_option
def restart_agent(agent: str, timeout: float, as_json: bool) -> None:
    """Stop an agent and start it again.

    How changed settings, provider or model reach a running agent.
    """
    handle = _agent(agent)
    note(f"Restarting {handle.slug}…")
    handle.restart(progress=_progress, timeout=timeout)
    note(f"{handle.slug} is running")
    if as_json:
        show(handle.info(), True, str)


@agents.command("logs")
@AGENT
@json_option
def spawn_log(agent: str, as_json: bool) -> int:
    """What the hub says of an agent's start.

    While it starts: every step so far, then each as it comes, until it is
    ready. Once it runs: where. After a failed start: why (exit code 1). The hub
    keeps nothing more of a start; the agent's own logs are in its JupyterLab.
    With --json, one progress event per line.
    """
    handle = _agent(agent)
    failed = False
    try:
        for event in handle.spawn_log():
            failed = failed or bool(event.get("failed"))
            click.echo(json_line(event) if as_json else safe_text(str(event.get("message"))))
    except SacError as e:
        if e.code != "not_starting":
            raise
        note(f"{handle.slug} is stopped: the hub keeps no log of its earlier starts")
    return ERROR if failed else OK


@agents.command("delete")
@AGENT
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
def delete_agent(agent: str, yes: bool) -> None:
    """Delete an agent and its files.

    It is stopped first. Its conversation history and usage stay readable.
    Asks first unless --yes is given (and refuses to run without --yes when
    not at a terminal).
    """
    handle = _agent(agent)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("not at a terminal: pass --yes to delete without asking")
        click.confirm(f"Delete agent {agent} and its files?", abort=True, err=True)
    handle.delete()
    note(f"Deleted {handle.slug}")


USAGE_COLUMNS = [("requests", "requests"), ("input", "input_tokens"), ("output", "output_tokens"),
                 ("cache write", "cache_creation_input_tokens"),
                 ("cache read", "cache_read_input_tokens")]  # fmt: skip


def budget_lines(budget: dict[str, Any]) -> str:
    """This month's budgets (tokens), one line each."""
    lines = []
    for name, b in budget.items():
        limit = "no limit" if b.get("limit") is None else f"{b['limit']:,}"
        lines.append(f"{name} budget this month: {b.get('used', 0):,} used,"
                     f" {b.get('reserved', 0):,} reserved, limit {limit}")  # fmt: skip
    return "\n".join(lines)


@agents.command("usage")
@AGENT
@json_option
def agent_usage(agent: str, as_json: bool) -> None:
    """An agent's model use per day.

    Requests and tokens per UTC day, the totals, and this month's budgets.
    """
    usage = _agent(agent).usage()

    def render() -> str:
        days = table(usage["days"], [("day", "day"), *USAGE_COLUMNS])
        totals = table([usage["totals"]], [("", lambda _: "total"), *USAGE_COLUMNS])
        return f"{days}\n\n{totals}\n\n{budget_lines(usage.get('budget') or {})}"

    show(usage, as_json, render)


@agents.command("exec", context_settings={"ignore_unknown_options": True})
@AGENT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", metavar="DIR", help="Working directory (relative to the workspace).")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="A variable (repeat).")  # fmt: skip
@click.option("--stdin", "with_stdin", is_flag=True, help="Send this command's stdin to it.")
@click.option("--timeout", type=float, default=60, show_default=True,
              help="Seconds before it is killed (at most 3600).")  # fmt: skip
@json_option
def exec_command(agent: str, command: tuple[str, ...], cwd: str | None, env_pairs: tuple[str, ...],
                 with_stdin: bool, timeout: float, as_json: bool) -> int:  # fmt: skip
    """Run a command in an agent's sandbox.

    COMMAND runs as given (put `--` before it when it has options of its own),
    in the agent's workspace, as the agent; its output streams here and `sac`
    exits with its exit code (124 when it was killed at the timeout). One word
    with spaces runs through /bin/sh. The agent must be running and its owner
    must not have turned exec off (exec_enabled); every command is audited.
    --json prints the API's frames, one JSON object per line.
    """
    env: dict[str, str] = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--env")
        env[name] = value
    argv: str | list[str] = command[0] if len(command) == 1 else list(command)
    stdin = sys.stdin.read() if with_stdin else None
    last: dict[str, Any] = {}
    for frame in _agent(agent).exec_stream(argv, cwd=cwd, env=env or None, stdin=stdin,
                                           timeout=timeout):  # fmt: skip
        if as_json:
            click.echo(json_line(frame))
        elif frame.get("stream") in ("stdout", "stderr"):
            out = sys.stdout if frame["stream"] == "stdout" else sys.stderr
            # Piped, the output as the command wrote it; at a terminal, what would act
            # on the terminal (escapes: clear, retitle, write the clipboard) is shown,
            # since the sandbox chose those bytes.
            out.write(printable_lines(frame["data"]) if out.isatty() else frame["data"])
            out.flush()
        last = frame
    if last.get("error") == "timeout":
        note(f"killed after {timeout:g} s")
        return 124
    if last.get("error"):
        note(f"{last['error']}: {last.get('message') or ''}".rstrip(": "))
    code = last.get("exit_code")
    return code if isinstance(code, int) and 0 <= code < 256 else ERROR


@agents.command("screen")
@AGENT
@json_option
def screen(agent: str, as_json: bool) -> None:
    """The agent's Claude terminal as it looks now.

    Its text rows, and whether a prompt waits for an answer (the HITL detector's
    verdict). Reading it is audited.
    """
    shown = _agent(agent).screen()

    def render() -> str:
        if not shown.get("running", True):
            return "The Claude terminal is not running."
        rows = "\n".join(safe_text(r) for r in shown.get("rows") or [])
        prompt = shown.get("prompt")
        what = (prompt or {}).get("summary") or (prompt or {}).get("kind") or "a prompt"
        verdict = f"\n\nwaiting: {safe_text(what)}" if prompt else ""
        return rows.rstrip() + verdict

    show(shown, as_json, render)


def printable_lines(text: str) -> str:
    """``text`` safe for a terminal (output.safe_text), its line breaks kept."""
    return "\n".join(safe_text(line) for line in text.split("\n"))
