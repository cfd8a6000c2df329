"""The `sac` command group, how its commands reach a hub, and its exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__
from ..client.errors import Conflict, Forbidden, NotFound, SacError, Unauthorized
from . import credentials
from .output import safe_text, to_json

if TYPE_CHECKING:
    from ..client import Client

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes scripts can rely on (also in the epilog below and the operator guide).
OK, ERROR, USAGE, AUTH, NOT_FOUND, FORBIDDEN, CONFLICT = 0, 1, 2, 3, 4, 5, 6

EPILOG = """\b
First steps:
  sac login http://localhost:8000    log in to a hub (paste a token from its token page)
  sac agents list                    your agents and whether they run
  sac agents create helper --start   a new agent, started
  sac hitl list --pending            approvals waiting for you

Commands that show something print tables for people; --json prints the
API's JSON instead, for scripts. Messages and progress go to stderr.

SAC_HUB_URL and SAC_TOKEN (a hub API token) override the stored login (for CI);
SAC_SERVICE_URL names a `sac` service that is not beside its hub.

\b
Exit codes:
  0  done
  1  the hub or the service refused or failed (message on stderr)
  2  usage error (a wrong command, option or value)
  3  not logged in, or the token was refused
  4  not found (or not yours to see)
  5  forbidden (needs an administrator or another permission)
  6  conflict (already exists, already decided, busy)
"""


class NotLoggedIn(click.ClickException):
    exit_code = AUTH


@dataclass
class Session:
    """What a command needs to reach the hub: the ``--hub`` asked for, and the
    client, made on first use and closed when the command ends."""

    hub: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def login(self) -> credentials.Login:
        """The hub URL and token to use: ``$SAC_TOKEN`` with ``--hub``/``$SAC_HUB_URL``,
        else the stored login for that hub (or for the default one)."""
        url = self.hub or os.environ.get("SAC_HUB_URL") or None
        token = os.environ.get("SAC_TOKEN")
        service = os.environ.get("SAC_SERVICE_URL") or None
        try:
            if url and token:
                return credentials.Login(credentials.hub_url(url), token, service_url=service)
            stored = credentials.find(credentials.credentials_path(), url)
        except (ValueError, credentials.CredentialsError) as e:
            raise click.ClickException(str(e)) from None
        if stored is None:
            where = f" to {url}" if url else ""
            raise NotLoggedIn(
                f"not logged in{where}: run `sac login HUB_URL`, or set SAC_HUB_URL and SAC_TOKEN"
            )
        if service:
            stored = credentials.Login(stored.url, stored.token, stored.user, service)
        return stored

    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.login())
            click.get_current_context().call_on_close(self._close)
        return self._client

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def make_client(login: credentials.Login) -> Client:
    from ..client import Client
    from ..localhost import resolve_localhost

    # `sac up` serves the hub on localhost and the service on sac--service.localhost;
    # browsers resolve *.localhost to the loopback (RFC 6761), the system's resolver
    # often does not.
    resolve_localhost()
    return Client(url=login.url, token=login.token, service_url=login.service_url)


pass_session = click.make_pass_decorator(Session, ensure=True)


def client() -> Client:
    """The client of the command running now."""
    return click.get_current_context().ensure_object(Session).client()


def json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table."
    )(f)


def show(data: Any, as_json: bool, render: Callable[[], str]) -> None:
    """``data`` as JSON, or ``render()`` for people."""
    click.echo(to_json(data) if as_json else render())


def note(message: str) -> None:
    """A line for people on stderr (progress, confirmations), never in the way of
    what a script reads from stdout."""
    click.echo(safe_text(message), err=True)


def agent_ref(ref: str) -> tuple[str | None, str]:
    """``helper`` (mine) or ``alice/helper`` (an administrator's view of alice's)."""
    owner, _, slug = ref.rpartition("/")
    if not slug or (owner == "" and "/" in ref):
        raise click.BadParameter(f"{ref!r}: expected NAME or USER/NAME")
    return owner or None, slug


def complete_agents(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of an agent's name: my agents' slugs (nothing if the hub
    cannot be reached or I am not logged in)."""
    session = ctx.find_object(Session) or Session()
    try:
        with make_client(session.login()) as c:
            return [a["slug"] for a in c.agents() if a["slug"].startswith(incomplete)]
    except Exception:
        return []


def exit_code(error: SacError) -> int:
    if isinstance(error, Unauthorized) or error.code == "not_configured":
        return AUTH
    if isinstance(error, NotFound):
        return NOT_FOUND
    if isinstance(error, Forbidden):
        return FORBIDDEN
    if isinstance(error, Conflict):
        return CONFLICT
    return ERROR


def describe(error: SacError) -> str:
    message = error.message
    if error.field and error.field not in message:
        message += f" (field: {error.field})"
    if isinstance(error, Unauthorized):
        message += " — log in again with `sac login`"
    return message


class SacGroup(click.Group):
    """Commands listed in the order they were added (most used first), not A-Z;
    ``sections`` groups them under headings in the help."""

    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            return super().format_commands(ctx, formatter)
        width = max(len(name) for name in self.commands)
        for title, names in self.sections:
            rows = []
            for name in names:
                command = self.commands[name]
                limit = formatter.width - 6 - width
                rows.append((name, command.get_short_help_str(limit)))
            with formatter.section(title):
                formatter.write_dl(rows)
        return None


class RootGroup(SacGroup):
    sections = (
        ("Log in", ("login", "logout", "whoami")),
        ("Work with a hub", ("agents", "hitl", "history", "skills", "templates", "usage",
                             "settings", "users")),
        ("Run the stack on this machine", ("up", "down", "doctor")),
        ("Shell", ("completion",)),
    )  # fmt: skip


@click.group(cls=RootGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
             "max_content_width": 100})  # fmt: skip
@click.option(
    "--hub",
    metavar="URL",
    help="The hub to talk to (default: $SAC_HUB_URL, else the hub of your last `sac login`).",
)
@click.version_option(__version__, "--version", prog_name="sac", message="%(version)s")
@click.pass_context
def sac(ctx: click.Context, hub: str | None) -> None:
    """jupyter-sac: Sandbox Agent Cluster.

    Manage your agents, their approvals, history, skills and settings on a hub
    from the shell, and run the whole stack on this machine (`sac up`).
    `sac COMMAND --help` says more about each command.
    """
    ctx.ensure_object(Session).hub = hub


def main(argv: list[str] | None = None) -> int:
    """The `sac` entry point: the command's exit code (see EPILOG)."""
    try:
        result = sac.main(args=argv, prog_name="sac", standalone_mode=False)
    except click.UsageError as e:
        e.show()
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"sac: {e.format_message()}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return ERROR
    except SacError as e:
        click.echo(f"sac: {safe_text(describe(e))}", err=True)
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else OK


def iterate_to(out: Any, chunks: Iterator[bytes]) -> int:
    """Write each chunk to ``out`` as it comes; the bytes written."""
    total = 0
    for chunk in chunks:
        out.write(chunk)
        total += len(chunk)
    out.flush()
    return total


if __name__ == "__main__":
    sys.exit(main())
