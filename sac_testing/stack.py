"""Run the embedded stack exactly as `sac up` starts it, on free ports (tests, bench)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from jupyter_sac.rules.urls import PublicUrls, via_proxy
from jupyter_sac.stack import INTERNAL_PORTS, free_port, stop_left_agents

T = TypeVar("T")


def poll_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def http_status(url: str, **kwargs: object) -> int | None:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None


def stop_process(proc: subprocess.Popen, timeout: float = 90) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# "…[ConfigProxy] error: 503 GET /path Error: read ECONNRESET" (not its 404s for
# requests no route takes, such as the hub's API polled before the hub is up).
PROXY_5XX = re.compile(r"error\S*: 5\d\d ")


def proxy_errors(log_path: Path) -> list[str]:
    """The proxy's error lines in a stack's log (configurable-http-proxy names the
    request and why it answered 503 itself: ECONNRESET, EPIPE, ECONNREFUSED…), for
    the message of a test that saw a 503 page."""
    if not log_path.exists():
        return []
    with open(log_path, errors="replace") as log:
        return [line.rstrip() for line in log if "[ConfigProxy]" in line and PROXY_5XX.search(line)]


@dataclass
class RunningStack:
    url: str  # the hub's public URL (http://localhost:<port>/); its pages under hub/
    admin_token: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    public: PublicUrls  # the service's and users' hosts (subdomains, as `sac up` has them)
    proxy_url: str  # the proxy's own address (http://127.0.0.1:<port>/)

    # A token of the test harness's own hub service (a hub admin): it stands
    # in for people making their API tokens at /hub/token, which the administrator
    # may not do for them (docs/security.md#operators).
    harness_token: str = ""
    # Leave the agents running when `sac up` stops (a restart), as `sac up` does;
    # by default the harness then stops them as `sac down` would.
    keep_agents: bool = False

    @property
    def service_url(self) -> str:
        """The `sac` service's public URL (http://sac--service.localhost:<port>/services/sac/)."""
        return self.public.service()

    def server_url(self, user: str, server: str) -> str:
        """A user's named server's public URL, on the user's host."""
        return self.public.server(user, server)


HARNESS_SERVICE = "sac-test-harness"
HARNESS_CONFIG = """
# Written by sac_testing.stack: the test harness's service, which makes
# users' API tokens as each user would at /hub/token. (A subconfig starts from an
# empty config that is merged into the hub's: append, don't assign, to lists.)
import os
# admin: it may also make a user a JupyterHub admin (to test that the flag gives
# nothing in SAC), which only admins may.
c.JupyterHub.services.append(
    {{"name": {name!r}, "api_token": os.environ.get("SAC_TEST_HARNESS_TOKEN", ""),
      "admin": True}}
)
# Tests do not wait a minute for the access audit's next look, nor for a sample of
# what a sandbox uses.
c.SacService.access_audit_interval = 2
c.LocalAgentSpawner.usage_interval = 1
c.LocalAgentSpawner.disk_usage_interval = 1
{extra}
"""


def harness_config(path: Path, extra_config: Path | None) -> Path:
    """A config file that adds the harness service, then loads ``extra_config``."""
    extra = f"load_subconfig({str(extra_config)!r})" if extra_config is not None else ""
    path.write_text(HARNESS_CONFIG.format(name=HARNESS_SERVICE, extra=extra))
    return path


def proxied(url: str, proxy_url: str) -> tuple[str, dict[str, str]]:
    """(URL, headers) reaching a public URL through the proxy's own address, for
    processes that do not resolve *.localhost (Python does not)."""
    target, host = via_proxy(url, proxy_url)
    return target, ({"Host": host} if host else {})


@contextmanager
def embedded_stack(
    workdir: Path,
    admin_password: str,
    extra_config: Path | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningStack]:
    """`sac up` in a subprocess; yields once the hub and the `sac` service answer.

    ``env`` adds variables to `sac up`'s environment (e.g. KUBECONFIG, or fixed
    SAC_*_PORT values so a restarted stack keeps its addresses); ``port`` fixes the
    public port (default: a free one). Starting again with the same ``workdir``
    reuses the data dir: that is a hub restart.
    """
    data_dir = workdir / "data"
    log_path = workdir / "sac-up.log"
    extra_env = env or {}
    env = dict(os.environ, SAC_ADMIN_PASSWORD=admin_password, SAC_DATA_DIR=str(data_dir))
    env.pop("SAC_DATABASE_URL", None)
    harness_token = (workdir / "harness.token").read_text() if (
        workdir / "harness.token").exists() else secrets.token_hex(32)  # fmt: skip
    (workdir / "harness.token").write_text(harness_token)
    env["SAC_TEST_HARNESS_TOKEN"] = harness_token
    env.update(extra_env)
    env["SAC_EXTRA_CONFIG"] = str(harness_config(workdir / "harness_config.py", extra_config))
    port = port or free_port()
    public = PublicUrls(f"http://localhost:{port}")
    url = public.hub
    proxy_url = f"http://127.0.0.1:{port}/"
    running = None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_sac.cli", "up", "--port", str(port),
             "--data-dir", str(data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def hub_up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"`sac up` exited with {proc.returncode}; see {log_path}")
            return http_status(url + "hub/api") == 200

        poll_until(hub_up, 120, "JupyterHub", interval=0.2)
        credentials = {"username": "admin", "password": admin_password}
        resp = httpx.post(
            url + "hub/api/users/admin/tokens", timeout=30, json={"auth": credentials}
        )
        resp.raise_for_status()
        token = resp.json()["token"]
        headers = {"Authorization": f"token {token}"}
        # The service starts beside the hub, on its own host: wait for it too.
        agents, host = proxied(public.service() + "api/agents", proxy_url)
        poll_until(lambda: http_status(agents, headers={**headers, **host}) == 200,
                   60, "the sac service", interval=0.2)  # fmt: skip
        running = RunningStack(
            url, token, data_dir, log_path, proc, public, proxy_url, harness_token
        )
        yield running
    finally:
        stop_process(proc)
        if running is None or not running.keep_agents:
            stop_left_agents(data_dir, grace=5)


class RestartableStack:
    """`sac up` on one data dir and fixed ports, which a test stops and starts again
    (an upgrade): what runs in it must survive that."""

    def __init__(
        self,
        workdir: Path,
        admin_password: str,
        extra_config: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.admin_password = admin_password
        self.extra_config = extra_config
        # Fixed addresses, so agents started before a restart still reach the hub.
        self.env = {name: str(free_port()) for name in INTERNAL_PORTS} | (env or {})
        self.port = free_port()
        self._exits = ExitStack()
        self.running: RunningStack | None = None

    def start(self) -> RunningStack:
        self.running = self._exits.enter_context(
            embedded_stack(
                self.workdir, self.admin_password, self.extra_config, self.env, self.port
            )
        )
        return self.running

    def stop(self) -> None:
        """Stop `sac up`; its agents keep running, as they do for a person."""
        assert self.running is not None
        self.running.keep_agents = True
        self._exits.close()

    def restart(self) -> RunningStack:
        """Stop `sac up` (agents keep running) and start it again on the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self._exits.close()


def process_children() -> dict[int, list[int]]:
    """Every process's children on this machine, by parent pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int, children: dict[int, list[int]]) -> list[int]:
    """``root`` and all its descendants, from ``process_children()``'s map."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def proc_kib(pid: int, field: str, file: str = "status") -> int:
    """A KiB figure of a process from /proc (``VmRSS`` in status, ``Pss`` in
    smaps_rollup); 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def read_terminal_until(conn: Any, marker: str, timeout: float = 60) -> str:
    """Read a Jupyter terminal's websocket ``conn`` until its output holds ``marker``;
    the output read. Raises ConnectionError when the terminal closes first."""
    out = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while marker not in out:
        msg = await asyncio.wait_for(conn.read_message(), deadline - loop.time())
        if msg is None:
            raise ConnectionError("terminal closed")
        kind, *rest = json.loads(msg)
        if kind == "stdout":
            out += rest[0]
    return out


def find_descendant(root: int, marker: bytes) -> int:
    """The first process under ``root`` whose command line contains ``marker``
    (e.g. the `sac` service of one `sac up`, among several stacks on this machine)."""
    children = process_children()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
            todo.append(child)
    raise LookupError(f"no process under {root} runs {marker!r}")


@contextmanager
def stack_process_paused(root: int, marker: bytes) -> Iterator[int]:
    """The process under ``root`` that runs ``marker`` (find_descendant) stopped
    (SIGSTOP) for the block, and its pid: the kernel still accepts connections to it
    and takes requests' bytes, but nothing answers them, as with a process stuck
    or restarting."""
    pid = find_descendant(root, marker)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def bare_lab(workdir: Path) -> Iterator[subprocess.Popen]:
    """A JupyterLab server without the jupyter-sac extension (a same-run baseline of
    what an agent's server costs), once it has served /lab as an agent's has."""
    port = free_port()
    root = workdir / "bare-lab"
    root.mkdir(exist_ok=True)
    config = root / "bare_config.py"
    config.write_text('c.ServerApp.jpserver_extensions = {"jupyter_sac": False}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--port={port}", "--ServerApp.token=", f"--ServerApp.root_dir={root}",
         f"--config={config}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        poll_until(lambda: http_status(f"http://127.0.0.1:{port}/api/status") == 200, 120, "lab")
        httpx.get(f"http://127.0.0.1:{port}/lab", timeout=60)
        yield proc
    finally:
        stop_process(proc)


@dataclass
class ServiceReplica:
    """Another process of a stack's `sac` service (another replica, as on
    Kubernetes): the same command, configuration, database and keys as the one the
    hub started, listening on its own port."""

    proc: subprocess.Popen
    url: str  # its own address and prefix (http://127.0.0.1:<port>/services/sac/)
    log_path: Path


def process_environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with (/proc/<pid>/environ)."""
    return dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in entry
    )


def service_address(pid: int) -> str:
    """The address and prefix a running `sac` service process listens on."""
    environ = process_environ(pid)
    return environ["JUPYTERHUB_SERVICE_URL"].rstrip("/") + environ["JUPYTERHUB_SERVICE_PREFIX"]


@contextmanager
def service_replica(stack_pid: int, workdir: Path) -> Iterator[ServiceReplica]:
    """Start a second `sac` service process beside the one under ``stack_pid`` (`sac
    up`'s pid): its environment (database URL, Fernet keys, the hub's API token)
    and command line, with only the listening address changed; yields once it
    answers, stops it afterwards."""
    first = find_descendant(stack_pid, b"jupyter_sac.service")
    environ = process_environ(first)
    command = [a for a in Path(f"/proc/{first}/cmdline").read_text().split("\0") if a]
    port = free_port()
    environ["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{port}"
    url = f"http://127.0.0.1:{port}{environ['JUPYTERHUB_SERVICE_PREFIX']}"
    log_path = workdir / f"sac-service-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command,
            env=environ,
            cwd=os.readlink(f"/proc/{first}/cwd"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the second service exited with {proc.returncode}; see {log_path}"
                )
            return http_status(url + "api/") is not None

        poll_until(up, 60, "the second sac service process", interval=0.2)
        yield ServiceReplica(proc, url, log_path)
    finally:
        stop_process(proc, timeout=30)
