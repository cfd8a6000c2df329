"""Pre-importing launcher for a local sandbox: the first process inside bubblewrap.

It imports the single-user server's heavy modules (about 3 s of CPU on a small
machine) *before* it knows which agent it will serve, tells the spawner so on
the inherited pipe named by $SAC_READY_FD, then waits on stdin for one JSON
line: the agent's environment, argv and working directory. A warm sandbox
therefore starts serving in well under a second once assigned. Each launcher
serves exactly one agent, once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

# Modules a server's start imports that _preimport's own imports do not (found by diffing
# sys.modules across a start): each left out costs its import after the assignment,
# on the agent's clock (IPython alone, through notebook_shim, about 0.4 s).
START_MODULES = (
    "IPython",
    "notebook_shim.nbserver",
    "jupyter_lsp.serverextension",
    "jupyterhub.singleuser",
    "jupyterhub.singleuser.extension",
    "jupyter_core.migrate",
    "jinja2.ext",
    "httpcore",
    "h11",
    "tornado.platform.asyncio",
)


def _skip_yarn_config() -> None:
    """jupyterlab.labapp asks node for yarn's configuration as it is imported (a node
    process, about 0.2 s of CPU: a fifth of a sandbox's start), for the npm registry
    that building or installing extensions would use. A sandbox does neither (its
    extension manager is read-only: spawner/mixin.py), so yarn's configuration is
    taken to be empty, as jupyterlab itself takes it where node is missing."""
    import jupyterlab.commands

    if hasattr(jupyterlab.commands, "_yarn_config"):
        jupyterlab.commands._yarn_config = lambda logger: {"yarn config": {}, "npm config": {}}


def _preimport() -> None:
    # jsonschema's "iri" format checker builds a grammar of about 20 MiB (and 1.6 s
    # of CPU) when rfc3987_syntax is importable; nothing a sandbox validates uses
    # that format, so every agent would carry it for nothing (bench/density.py:
    # 163 -> 145 MiB per idle agent).
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    _skip_yarn_config()
    import jupyter_server.serverapp  # noqa: F401
    import jupyter_server_terminals  # noqa: F401
    import jupyterlab.labapp  # noqa: F401
    import terminado  # noqa: F401
    from jupyter_server.serverapp import JUPYTER_SERVICE_HANDLERS

    import jupyter_sac.server_extension  # noqa: F401
    from jupyter_sac.server_extension.service_client import tls_context

    try:  # optional server extensions that jupyter_server would load anyway
        import jupyter_lsp  # noqa: F401
        import notebook_shim  # noqa: F401
    except ImportError:
        pass
    handlers = [m for found in JUPYTER_SERVICE_HANDLERS.values() for m in found or ()]
    for name in [*handlers, *START_MODULES]:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Loading the CA bundle takes tens of milliseconds; the extension's clients
    # reuse this context when the assignment leaves the CA settings unchanged.
    tls_context()


def _signal_ready() -> None:
    fd = os.environ.pop("SAC_READY_FD", "")
    if not fd.isdigit():
        return  # started by hand: nobody to tell
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:
        pass


def _start_relays(net: dict | None) -> None:
    """Inside a sandbox's own network namespace: its endpoints, relayed (netrelay.py)."""
    if not net:
        return
    from jupyter_sac.spawner.netrelay import SandboxRelays

    SandboxRelays.from_assignment(net).start()


def _keep_server_socket(server_fd: str) -> dict[str, str]:
    """The listening socket the hub reaches the server through, for the server itself
    to accept on (jupyter_sac.server_extension.app): a relay inside the sandbox would
    add a copy of every byte and a hop to each keystroke's echo. Not inherited by
    what the server starts (a terminal holding it could accept the hub's connections)."""
    from jupyter_sac.server_extension import SERVER_SOCKET_FD_ENV

    if not server_fd.isdigit():
        return {}
    os.set_inheritable(int(server_fd), False)
    return {SERVER_SOCKET_FD_ENV: server_fd}


def _write_secret_files(secret_files: dict | None) -> None:
    """The secrets granted as files, written before the server starts, readable by
    the sandbox's user only (0400). In bubblewrap the directory is a tmpfs of the
    sandbox's own, so the values never reach a disk."""
    if not secret_files:
        return
    directory = secret_files["dir"]
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # Ours when the launcher made it (an unconfined sandbox); bubblewrap's tmpfs is
    # not, and is new at each start.
    owned = os.stat(directory).st_uid == os.getuid()
    if owned:
        os.chmod(directory, 0o700)
        for old in os.listdir(directory):  # an unconfined sandbox's earlier start
            os.unlink(os.path.join(directory, old))
    for name, value in secret_files["files"].items():
        if "/" in name or name.startswith("."):
            continue  # the service never grants such a name (rules/secrets.py)
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, value.encode("utf-8"))
        finally:
            os.close(fd)
    if owned:
        os.chmod(directory, 0o500)


def main() -> None:
    server_fd = os.environ.pop("SAC_SERVER_FD", "")
    _preimport()
    _signal_ready()
    line = sys.stdin.buffer.readline()
    if not line:
        # The spawner went away before assigning us: nothing to serve.
        sys.exit(0)
    assignment = json.loads(line)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    _start_relays(assignment.get("net"))
    _write_secret_files(assignment.get("secret_files"))
    os.environ.clear()
    os.environ.update(assignment["env"])
    os.environ.update(_keep_server_socket(server_fd))
    os.chdir(assignment["cwd"])
    sys.argv = list(assignment["argv"])

    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
