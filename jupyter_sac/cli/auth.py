"""`sac login`, `sac logout`, `sac whoami`: a hub's token, kept for the other commands."""

from __future__ import annotations

import os
import socket
import sys

import click

from ..client.errors import SacError
from . import credentials
from ._app import Session, json_option, make_client, note, pass_session, sac, show
from .output import fields

ADMIN_SCOPE = "custom:sac:admin"


def _read_secret(prompt: str, from_stdin: bool) -> str:
    """A token or password: one line of stdin, or typed at a hidden prompt."""
    if from_stdin:
        secret = sys.stdin.readline().strip()
    else:
        secret = click.prompt(prompt, hide_input=True, err=True).strip()
    if not secret:
        raise click.UsageError("nothing was given")
    return secret


@sac.command()
@click.argument("hub_url", required=False, metavar="[HUB_URL]")
@click.option("--token-stdin", is_flag=True, help="Read the token from stdin (for scripts).")
@click.option(
    "--username",
    metavar="NAME",
    help="Get a new token with your user name and password instead of pasting one"
    " (the hub's own login checks them).",
)
@click.option(
    "--password-stdin", is_flag=True, help="With --username: read the password from stdin."
)
@click.option(
    "--service-url",
    metavar="URL",
    help="The `sac` service's URL, where it is not beside the hub"
    " (default: sac--service.<hub host>, or <hub>/services/sac/ for a hub reached by address).",
)
def login(hub_url: str | None, token_stdin: bool, username: str | None,
          password_stdin: bool, service_url: str | None) -> None:  # fmt: skip
    """Log in to a hub and keep its token for the other commands.

    Paste an API token from the hub's token page (HUB_URL/hub/token) at the hidden
    prompt, pipe one in with --token-stdin, or give --username to get a new token
    with your password. The token is checked with the hub first: a refused one is
    not kept. It is stored in $XDG_CONFIG_HOME/jupyter-sac/credentials.json
    (~/.config/… by default), readable by you only, and this hub becomes the
    default one.

    HUB_URL defaults to $SAC_HUB_URL, else http://localhost:8000 (`sac up`).
    """
    if token_stdin and username:
        raise click.UsageError("give either --token-stdin or --username, not both")
    if password_stdin and not username:
        raise click.UsageError("--password-stdin goes with --username")
    raw = hub_url or os.environ.get("SAC_HUB_URL") or "http://localhost:8000"
    try:
        url = credentials.hub_url(raw)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="HUB_URL") from None
    if username:
        from ..client import request_token

        password = _read_secret("Password", password_stdin)
        note_text = f"sac CLI on {socket.gethostname()}"
        token = request_token(url, username, password, note_text)
    else:
        if not token_stdin:
            note(f"Make a token at {url}hub/token and paste it here (it is not shown).")
        token = _read_secret("Token", token_stdin)
    with make_client(credentials.Login(url, token, service_url=service_url)) as client:
        identity = client.identity()  # a refused token raises here: nothing is kept
        scopes = set(identity.get("scopes") or ())
    user = identity["name"]
    credentials.store(
        credentials.credentials_path(), credentials.Login(url, token, user, service_url)
    )
    note(
        f"Logged in to {url} as {user}" + (" (SAC administrator)" if ADMIN_SCOPE in scopes else "")
    )
    if not scopes & {"custom:sac:user", ADMIN_SCOPE}:
        note("This token has no SAC scope: most commands will be refused (make one at hub/token).")


@sac.command()
@click.argument("hub_url", required=False, metavar="[HUB_URL]")
@click.option(
    "--keep-token", is_flag=True, help="Only forget it here; do not revoke it on the hub."
)
@pass_session
def logout(session: Session, hub_url: str | None, keep_token: bool) -> None:
    """Forget a hub's token and revoke it.

    HUB_URL defaults to the default hub. The token is revoked on the hub too, so
    it works nowhere any more (--keep-token: only forget it here).
    """
    path = credentials.credentials_path()
    try:
        stored = credentials.find(path, hub_url or session.hub)
    except (ValueError, credentials.CredentialsError) as e:
        raise click.ClickException(str(e)) from None
    if stored is None:
        note("Not logged in there: nothing to do.")
        return
    if not keep_token:
        try:
            with make_client(stored) as client:
                client.revoke_token()
        except SacError as e:
            note(f"Could not revoke the token on the hub ({e.message}); forgetting it here.")
    credentials.forget(path, stored.url)
    note(f"Logged out of {stored.url}")


@sac.command()
@json_option
@pass_session
def whoami(session: Session, as_json: bool) -> None:
    """Who you are on which hub (the stored token's user, or $SAC_TOKEN's)."""
    login = session.login()
    client = session.client()
    identity = client.identity()
    scopes = set(identity.get("scopes") or ())
    show(identity, as_json, lambda: fields([
        ("user", identity["name"]),
        ("hub", login.url),
        ("service", client.aio.service_url),
        ("SAC administrator", ADMIN_SCOPE in scopes),
    ]))  # fmt: skip
