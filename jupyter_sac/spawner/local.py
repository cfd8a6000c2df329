"""LocalAgentSpawner: agents as bubblewrap-confined processes on the hub's machine.

No system users are needed: every agent gets its own home and workspace under the
data dir and runs confined by bubblewrap (see sandbox.py). Starting is fast
because a warm, pre-imported sandbox is usually waiting (WarmPool).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Enum, Float, Integer, List, Unicode, default

import jupyter_sac

from ..data_dir import default_data_dir
from ..objects import store_from_config
from ..rules.egress import is_loopback_host
from ..rules.secrets import SANDBOX_SECRETS_DIR, SECRETS_DIR_VAR
from ..rules.urls import PublicUrls
from ..runtimes.claude import claude_binary
from ..store import SandboxUsage
from .limits import AppliedLimits, apply_limits, read_usage, release
from .mixin import (
    SHARED_PACKAGES_DIR,
    AgentContext,
    AgentLimitSpawnError,
    AgentSpawnerMixin,
    AgentSpawnError,
    locked_jupyter_env,
)
from .netrelay import EGRESS_PORT, HostRelays, egress_env
from .phases import SpawnPhases
from .sandbox import (
    SANDBOX_HOME,
    SANDBOX_WORKSPACE,
    SYSTEM_PATHS,
    Sandbox,
    SandboxLayout,
    WarmPool,
    adopt_layout,
    bwrap_argv,
    descendants,
    disk_usage,
    hand_over,
    launcher_command,
    recover_layouts,
    sandbox_hosts,
    write_in_place,
)

_pools: dict[tuple, WarmPool] = {}


def _local_port_range() -> range:
    """The ports the kernel gives outgoing connections (ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


# Where an isolated sandbox's server listens: below the ports of outgoing
# connections. Inside its own network every connection the sandbox makes goes to its
# loopback (the relays), so a server port among those could be taken by one of them
# between jupyter_server's check and its bind, and the server exits ("The port 55605
# is already in use", seen once in a test run).
SERVER_PORTS = range(10000, min(_local_port_range().start, 32768))


def server_port(reserved: set[int]) -> int:
    """A port of SERVER_PORTS that is free on this machine (the hub's side of the
    sandbox listens on it too) and none of ``reserved``."""
    while True:
        port = secrets.choice(SERVER_PORTS)
        if port in reserved:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        return port


async def http_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers at ``host:port`` (any status)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"HEAD / HTTP/1.0\r\nHost: sac-probe\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.read(5), timeout)
        return first == b"HTTP/"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class LocalAgentSpawner(AgentSpawnerMixin, LocalProcessSpawner):
    """Runs each agent in a bubblewrap sandbox on this machine."""

    data_dir = Unicode(
        help="SAC data dir; agents live in <data_dir>/agents (default: $SAC_DATA_DIR"
        " or ~/.local/share/jupyter-sac).",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(default_data_dir())

    sandbox = Enum(
        ["auto", "bubblewrap", "none"],
        default_value="auto",
        help="""How to confine agents: 'bubblewrap', 'none' (needs allow_unconfined),
        or 'auto' (bubblewrap when installed, else refuse unless allow_unconfined).""",
    ).tag(config=True)

    allow_unconfined = Bool(
        False,
        help="""Allow agents to run without bubblewrap, with the hub's privileges and
        full view of this machine. Only for development on machines without bubblewrap.""",
    ).tag(config=True)

    bwrap_path = Unicode(
        help="Path of the bubblewrap executable (default: bwrap on PATH).",
    ).tag(config=True)

    @default("bwrap_path")
    def _default_bwrap_path(self) -> str:
        return shutil.which("bwrap") or ""

    system_paths = List(
        Unicode(),
        default_value=list(SYSTEM_PATHS),
        help="""What of this machine a sandbox sees, read-only: the system's programs,
        libraries and configuration. Nothing else appears (no /var, /opt, /srv, /root,
        /home, /mnt, no data dir) but `readonly_paths`.""",
    ).tag(config=True)

    readonly_paths = List(
        Unicode(),
        help="""Further paths a sandbox sees read-only (default: this Python's prefix and
        base prefix and the jupyter_sac package's source tree).""",
    ).tag(config=True)

    hidden_paths = List(
        Unicode(),
        help="""Directories inside `system_paths` or `readonly_paths` replaced by an empty
        tmpfs (the data dir always is, when it lies inside one of them).""",
    ).tag(config=True)

    shared_packages_path = Unicode(
        "",
        help="""A directory of this machine holding the organisation's package cache (a
        `wheels` folder of Python wheels, filled by an administrator: `pip wheel -w
        <dir>/wheels -r requirements.txt`). Every sandbox sees it read-only at
        /opt/sac/packages, and pip and uv take wheels from it (PIP_FIND_LINKS,
        UV_FIND_LINKS) before downloading. Empty: none. Each agent's own caches stay
        in its home.""",
    ).tag(config=True)

    sandbox_uid = Integer(
        1_000_000,
        help="""When the hub runs as root: the unprivileged uid (and gid) of this machine
        that sandboxes run as (uid 1000, "sac", inside their user namespace). It owns the
        agents' home and workspace directories and nothing else; files only root may read
        stay unreadable. When the hub is not root, sandboxes run as the hub's own uid.""",
    ).tag(config=True)

    isolate_network = Bool(
        True,
        help="""Give each sandbox a network namespace of its own: it reaches only
        `host_endpoints` and, through the egress proxy, the hosts its settings allow
        (egress_allow, egress_deny); never this machine's other ports, the link-local
        metadata address or private ranges that are not allowed.""",
    ).tag(config=True)

    host_endpoints = List(
        Unicode(),
        help="""`host:port` endpoints of this machine a sandbox reaches at 127.0.0.1:<port>
        on its own loopback (the hub config sets the proxy's and the `sac` service's).""",
    ).tag(config=True)

    require_limits = Bool(
        False,
        help="""Refuse to start an agent whose CPU, memory and process limits this machine
        cannot enforce (cgroups not writable by the hub), with a message saying so.
        Off: such agents start, and the spawn page says which limits hold.""",
    ).tag(config=True)

    @default("readonly_paths")
    def _default_readonly_paths(self) -> list[str]:
        package_root = str(Path(jupyter_sac.__file__).resolve().parent.parent)
        paths = {sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), package_root}
        return sorted(p for p in paths if not p.startswith(self.data_dir))

    warm_sandboxes = Integer(
        2,
        help="""Pre-started sandboxes kept waiting with the single-user server's modules
        imported, so an agent starts in well under a second. 0 disables the pool.
        This is the pool's resting size; it grows to demand up to warm_sandboxes_max.
        Two, so that five agents created at the same moment on a 2-core machine are
        all ready within 2 s before the pool has learned that demand (the three that
        start cold share the cores); each spare holds about 120 MiB.""",
    ).tag(config=True)

    warm_sandboxes_max = Integer(
        5,
        help="""The most spares the warm pool keeps when agents start at the same moment:
        after N starts at once it keeps N spares (at most this many, at least
        warm_sandboxes) for warm_demand_window seconds, so the next such burst finds a
        warm sandbox for each. Each spare holds about 120 MiB.""",
    ).tag(config=True)

    warm_demand_window = Float(
        600.0,
        help="""Seconds the warm pool remembers a burst of starts (see warm_sandboxes_max)
        before it shrinks back to warm_sandboxes.""",
    ).tag(config=True)

    enforce_limits = Bool(
        True,
        help="Apply memory and process limits from the resolved settings through cgroups"
        " where this machine lets the hub create them.",
    ).tag(config=True)

    proxy_ip = Unicode(
        "",
        help="""The proxy's address as a sandbox reaches it. With subdomains (the hub
        config sets this then), each sandbox gets its own read-only /etc/hosts that
        maps the hub's, the `sac` service's and its owner's public host names to it.
        Empty: sandboxes resolve names as this machine does.""",
    ).tag(config=True)

    usage_interval = Float(
        10.0,
        help="""Seconds between samples of what a running sandbox uses (CPU, memory and
        processes from its cgroups, bytes through its network relays), stored for the
        API, the admin Agents page and the JupyterLab sidebar.""",
    ).tag(config=True)

    disk_usage_interval = Float(
        60.0,
        help="""Seconds between measures of a running agent's home and workspace on disk
        (a walk of its files). An agent over its disk_limit does not start again.""",
    ).tag(config=True)

    ready_poll_interval = Float(
        0.02, help="Seconds between checks that a starting sandbox listens on its port."
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return ["jupyterhub-singleuser"]

    @default("default_url")
    def _default_default_url(self) -> str:
        return "/lab"

    # ---- paths -----------------------------------------------------------------

    def agent_layout(self, agent_id: int, slug: str) -> SandboxLayout:
        return SandboxLayout(Path(self.data_dir) / "agents" / f"{agent_id}-{slug}")

    @property
    def spares_dir(self) -> Path:
        return Path(self.data_dir) / "sandboxes"

    def confinement(self) -> str:
        """'bubblewrap' or 'none', or raise with what to do."""
        if self.sandbox in ("auto", "bubblewrap") and self.bwrap_path:
            return "bubblewrap"
        if self.sandbox == "bubblewrap":
            raise AgentSpawnError(
                "bubblewrap is required but not installed (apt-get install"
                " bubblewrap), see `sac doctor`"
            )
        if not self.allow_unconfined:
            raise AgentSpawnError(
                "Refusing to start an agent without a sandbox: bubblewrap is not installed."
                " Install it (apt-get install bubblewrap) or set"
                " c.LocalAgentSpawner.allow_unconfined = True for development."
            )
        self.log.warning(
            "!!! Agent %s runs UNCONFINED: it can read every file the hub can read. !!!",
            self._log_name,
        )
        return "none"

    def _write_hosts(self, layout: SandboxLayout, owner: str | None) -> bool:
        """Write the sandbox's /etc/hosts (in place: a running sandbox has it bound);
        a warm sandbox's names only the hub and the service until it gets its owner."""
        if not self.proxy_ip:
            return False
        public = PublicUrls.from_config(self.config)
        try:
            with open("/etc/hosts") as f:
                base = f.read()
        except OSError:
            base = "127.0.0.1 localhost\n"
        names = public.host_names(owner)
        # With a network of its own, the proxy is on the sandbox's loopback (relayed).
        ip = "127.0.0.1" if self.isolate_network else self.proxy_ip
        write_in_place(layout.hosts, sandbox_hosts(base, names, ip, public.domain))
        return True

    def machine_uid(self) -> int | None:
        """The uid of this machine sandboxes run as, when the hub may choose one."""
        return self.sandbox_uid if os.geteuid() == 0 else None

    def object_store_hosts(self) -> list[tuple[str, int]]:
        """Where the service's presigned URLs point (the same configuration file
        configures the hub and the service): sandboxes download and upload there."""
        kind = str(self.config.SacService.get("object_store", "local"))
        try:
            return store_from_config(kind, self.config).presign_hosts()
        except ValueError:
            return []

    def endpoints(self) -> list[tuple[str, int]]:
        """Host endpoints relayed onto the same port of the sandbox's loopback: the
        configured ones, and an object store on this machine's loopback (its presigned
        URLs then work unchanged inside)."""
        found = []
        for endpoint in self.host_endpoints:
            host, _, port = endpoint.rpartition(":")
            found.append((host or "127.0.0.1", int(port)))
        found += [(h, p) for h, p in self.object_store_hosts() if is_loopback_host(h)]
        return list(dict.fromkeys(found))

    def egress_allowed(self, resolved: dict) -> tuple[str, ...]:
        """The agent's egress_allow, plus an object store elsewhere than this machine's
        loopback: presigned URLs are how a sandbox moves workspace files and skill
        bundles, so the store's host is reachable whatever the settings say."""
        stores = [h for h, _ in self.object_store_hosts() if not is_loopback_host(h)]
        return tuple(dict.fromkeys([*resolved.get("egress_allow", ()), *stores]))

    def _bwrap_argv(
        self, layout: SandboxLayout, hostname: str = "sac-agent", owner: str | None = None
    ) -> list[str]:
        hosts = layout.hosts if self._write_hosts(layout, owner) else None
        return bwrap_argv(
            self.bwrap_path,
            layout,
            system_paths=self.system_paths,
            readonly_paths=self.readonly_paths,
            hidden_paths=[*self.hidden_paths, self.data_dir],
            hostname=hostname,
            command=launcher_command(),
            hosts_file=hosts,
            sandbox_uid=self.machine_uid(),
            setpriv=shutil.which("setpriv") or "setpriv",
            isolate_network=self.isolate_network,
            mounted_readonly=(
                {SHARED_PACKAGES_DIR: self.shared_packages_path}
                if self.shared_packages_path
                else None
            ),
        )

    def _pool(self) -> WarmPool | None:
        if self.warm_sandboxes <= 0 or not self.bwrap_path or self.sandbox == "none":
            return None
        key = (
            self.data_dir,
            self.bwrap_path,
            tuple(self.system_paths),
            tuple(self.hidden_paths),
            tuple(self.readonly_paths),
            self.shared_packages_path,
            self.warm_sandboxes,
            self.warm_sandboxes_max,
            self.warm_demand_window,
            self.proxy_ip,
            self.machine_uid(),
            self.isolate_network,
        )
        pool = _pools.get(key)
        if pool is None:
            recover_layouts(self.spares_dir)
            pool = WarmPool(
                self.spares_dir,
                self.warm_sandboxes,
                self._bwrap_argv,
                self.machine_uid(),
                ceiling=self.warm_sandboxes_max,
                demand_window=self.warm_demand_window,
            )
            _pools[key] = pool
            pool.fill()
        return pool

    def prewarm(self) -> None:
        """Start filling the warm pool (called by the hub config at startup)."""
        with contextlib.suppress(Exception):
            self._pool()

    # ---- JupyterHub Spawner API ---------------------------------------------------

    def get_args(self) -> list[str]:
        # A copy: Spawner.get_args returns the `args` trait itself, which appending
        # would grow at every start of the same agent.
        args = list(super().get_args())
        if os.geteuid() == 0:
            args.append("--allow-root")
        # A non-login shell: login shells reset PATH from /etc/profile, losing the
        # sandbox's tools (this Python, the pinned claude CLI).
        args.append('--ServerApp.terminado_settings={"shell_command": ["/bin/bash"]}')
        home = getattr(self, "_home", SANDBOX_HOME)
        return [*args, *self.sac_server_args(sys.prefix, home)]

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["USER"] = self.user.name
        env["SHELL"] = "/bin/bash"
        return env

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        sandbox = getattr(self, "_sandbox", None)
        if sandbox is not None:
            # Enough for a restarted hub to find the sandbox again (Sandbox.attach).
            state["sandbox"] = {
                "root": str(sandbox.layout.root),
                "relayed": sandbox.relays is not None,
            }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._saved_sandbox = state.get("sandbox")

    def clear_state(self) -> None:
        super().clear_state()
        self._saved_sandbox = None

    async def poll(self) -> int | None:
        sandbox = getattr(self, "_sandbox", None)
        if sandbox is None and getattr(self, "_saved_sandbox", None):
            return await self._reattach(self._saved_sandbox)
        if self.proc is None and sandbox is not None:
            # Re-attached: not this hub's child, so no Popen to ask (and pid reuse or
            # an unreaped zombie would fool a bare kill(pid, 0)).
            if sandbox.alive():
                return None
            self.clear_state()
            return 0
        status = await super().poll()
        if status is not None and getattr(self, "_running_since_start", False):
            # It was running and nobody stopped it: the owner hears of it once.
            self._running_since_start = False
            await self.tell_owner_failed(
                "exit", "the agent's sandbox exited while it was running", status
            )
        return status

    async def _reattach(self, saved: dict[str, Any]) -> int | None:
        """Take over a sandbox an earlier hub started and that kept running through the
        hub's restart: serve its relays again (they lived in that hub), put it back
        under its limits and sample it again. None: it runs; 0: it is gone."""
        self._saved_sandbox = None
        sandbox = Sandbox.attach(SandboxLayout(Path(saved["root"])))
        if sandbox is None:
            self.clear_state()
            return 0
        ctx = await self.running_agent_context()
        if ctx is None:
            self.log.warning("%s: its agent is gone; stopping its sandbox", self._log_name)
            sandbox.discard()
            self.clear_state()
            return 0
        self._sac_agent_id = ctx.agent.id
        self._sandbox = sandbox
        self.pid = sandbox.pid
        if self.server is not None:
            self.port = self.server.port
        if saved.get("relayed"):
            await self._serve_relays(ctx, sandbox)
        self._limits = self._apply_limits(ctx, sandbox)
        self._sampler = asyncio.create_task(self._sample_usage(ctx, sandbox))
        self.log.info("Re-attached %s to its running sandbox (pid %d)", self._log_name, self.pid)
        return None

    async def start(self) -> tuple[str, int]:
        self._running_since_start = False
        try:
            url = await self._start_agent()
        except AgentLimitSpawnError:
            raise  # a refusal, not a failure
        except Exception as e:
            await self.tell_owner_failed("start", str(e))
            raise
        self._running_since_start = True
        return url

    async def _start_agent(self) -> tuple[str, int]:
        self.reset_progress()
        phases = SpawnPhases()
        self.report("Preparing agent", 0)
        mode = self.confinement()
        pool = self._pool() if mode == "bubblewrap" else None
        if pool is None:
            return await self._start(mode, None, phases)
        # The pool counts the starts in progress: how many at once is the demand it
        # grows to, and it is topped up only when none is left.
        pool.start_began()
        try:
            return await self._start(mode, pool, phases)
        finally:
            pool.start_ended()

    async def _start(
        self, mode: str, pool: WarmPool | None, phases: SpawnPhases
    ) -> tuple[str, int]:
        ctx = await self.prepare_agent()
        self._sac_agent_id = ctx.agent.id
        self.report(
            f"Agent {ctx.agent.display_name!r}: {ctx.agent.provider} / {ctx.agent.model}", 10
        )
        layout = self.agent_layout(ctx.agent.id, ctx.agent.slug)
        await self._check_disk(ctx, layout)
        phases.mark("prepare")
        isolated = mode == "bubblewrap" and self.isolate_network
        reserved = {EGRESS_PORT, *(port for _, port in self.endpoints())}
        if isolated and (self.port in reserved or self.port not in SERVER_PORTS):
            # Inside its namespace the sandbox listens on the endpoints' ports itself.
            self.port = server_port(reserved)
        elif self.port == 0:
            self.port = random_port()

        if mode == "bubblewrap":
            home, workspace = SANDBOX_HOME, SANDBOX_WORKSPACE
        else:
            home, workspace = str(layout.home), str(layout.workspace)
        self.notebook_dir = workspace
        self._home = home
        env = self.scrub_env(self.get_env())
        env.update(self.agent_env(ctx))
        # JupyterLab's extensions and the server's config only from this Python's
        # installation, which every sandbox mounts read-only.
        env.update(locked_jupyter_env(sys.prefix, home))
        env["HOME"] = home
        env["SAC_WORKSPACE"] = workspace
        env["CLAUDE_CONFIG_DIR"] = f"{home}/.claude"
        # This Python's tools (jupyter, python) and the pinned claude CLI come first.
        tool_dirs = [os.path.dirname(sys.executable)]
        claude = claude_binary()
        if claude:
            tool_dirs.append(os.path.dirname(claude))
        env["PATH"] = os.pathsep.join([*tool_dirs, env.get("PATH", "/usr/bin:/bin")])
        if self.shared_packages_path:
            # Unconfined, the sandbox sees the machine's own path.
            where = SHARED_PACKAGES_DIR if mode == "bubblewrap" else self.shared_packages_path
            env.update(self.shared_packages_env(where))
        if isolated:
            env.update(egress_env(PublicUrls.from_config(self.config).domain))
        secret_files = None
        if ctx.secret_files:
            # In bubblewrap /run is the sandbox's own tmpfs: the files live in its
            # memory only and are gone when it stops.
            secrets_dir = (
                SANDBOX_SECRETS_DIR if mode == "bubblewrap" else str(layout.root / "secrets")
            )
            env[SECRETS_DIR_VAR] = secrets_dir
            secret_files = {"dir": secrets_dir, "files": ctx.secret_files}
        argv = [*self.cmd, *self.get_args()]

        sandbox = pool.take() if pool else None
        if sandbox is not None and not await sandbox.wait_ready(self.start_timeout):
            sandbox.discard()
            sandbox = None
        if sandbox is not None:
            # Ready means bubblewrap has mounted the spare's directories, so renaming
            # them into the agent's place is now safe.
            self.report("Using a warm sandbox", 30)
            adopt_layout(sandbox.layout, layout)
            sandbox.layout = layout
            if self.machine_uid() is not None:
                hand_over(layout, self.machine_uid())
            self._write_hosts(layout, self.user.name)
        else:
            layout.create(self.machine_uid())
            if mode == "bubblewrap":
                self.report("Starting a new bubblewrap sandbox", 30)
                confined = self._bwrap_argv(layout, f"sac-{ctx.agent.slug}", self.user.name)
                sandbox = Sandbox.launch(confined, layout, confined=True)
            else:
                self.report("Starting an UNCONFINED agent process", 30)
                sandbox = Sandbox.launch(launcher_command(), layout, confined=False, cwd=workspace)
        self._sandbox = sandbox
        self.proc = sandbox.proc
        self.pid = sandbox.pid

        if not await sandbox.wait_ready(self.start_timeout):
            raise AgentSpawnError(f"The sandbox exited while starting (code {sandbox.proc.poll()})")
        phases.mark("sandbox")
        self._limits = self._apply_limits(ctx, sandbox)
        phases.mark("limits")
        net = None
        if isolated:
            net = await self._serve_relays(ctx, sandbox)
        phases.mark("relays")
        try:
            sandbox.assign(env, argv, workspace, net, secret_files)
        except OSError:
            raise AgentSpawnError(
                f"The sandbox exited before it could start (code {sandbox.proc.poll()})"
            ) from None
        self.report("Starting JupyterLab in the sandbox", 60)
        await self._wait_listening(sandbox)
        phases.mark("server")
        self.report(f"Agent ready in {phases.elapsed():.1f} s", 95)
        self.log.info(phases.log_line(self._log_name))
        self._sampler = asyncio.create_task(self._sample_usage(ctx, sandbox))
        return (self.ip or "127.0.0.1", self.port)

    async def _serve_relays(self, ctx: AgentContext, sandbox: Sandbox) -> dict:
        """The hub's side of the sandbox's network: its server on our port, the host's
        endpoints, and the egress proxy with the agent's allow and deny lists."""
        from ..egress import handle_client

        relays = HostRelays(sandbox.layout.net)
        sandbox.relays = relays
        try:
            await relays.serve_inbound(self.ip or "127.0.0.1", self.port)
        except OSError as e:
            raise AgentSpawnError(f"Cannot listen on port {self.port} for the agent: {e}") from e
        endpoints = self.endpoints()
        for host, port in endpoints:
            await relays.serve_forward(port, host, port)
        allow = self.egress_allowed(ctx.resolved)
        deny = tuple(ctx.resolved.get("egress_deny", ()))
        label = f"{self.user.name}/{ctx.agent.slug}"
        await relays.serve_egress(
            lambda reader, writer, traffic: handle_client(
                reader, writer, lambda: (allow, deny), traffic, label
            )
        )
        return {
            "forwards": [port for _, port in endpoints],
            "egress": True,
        }

    def _apply_limits(self, ctx: AgentContext, sandbox: Sandbox) -> AppliedLimits:
        if not self.enforce_limits and not self.require_limits:
            self.report("Limits: none enforced (enforce_limits is off)", 40)
            return AppliedLimits()
        resolved = ctx.resolved
        applied = apply_limits(
            f"{ctx.agent.id}-{ctx.agent.slug}",
            [sandbox.pid, *descendants(sandbox.pid)],
            cpu_limit=float(resolved["cpu_limit"]),
            mem_limit=int(resolved["mem_limit"]),
            max_processes=int(resolved["max_processes"]),
        )
        missing = applied.missing()
        if missing and self.require_limits:
            release(applied)
            raise AgentSpawnError(
                f"This machine cannot enforce the agent's {', '.join(missing)} limit"
                f"{'s' if len(missing) > 1 else ''} (the hub cannot write the cgroups they"
                " need), and the operator requires limits (c.LocalAgentSpawner.require_limits)."
                " Run the hub where it may create cgroups (as root, or with a delegated"
                " cgroup v2 subtree)."
            )
        self.report(f"Limits: {applied.describe()}", 40)
        return applied

    async def _check_disk(self, ctx: AgentContext, layout: SandboxLayout) -> None:
        """Refuse an agent whose home and workspace were over its disk limit when last
        measured (and still are: they are measured again then)."""
        limit = int(ctx.resolved.get("disk_limit") or 0)
        if not limit:
            return
        store = await self.sac_store()
        last = await store.sandbox_usage.get(ctx.agent.id)
        if last is None or last.disk_bytes is None or last.disk_bytes <= limit:
            return
        used = await asyncio.to_thread(disk_usage, [layout.home, layout.workspace])
        await store.sandbox_usage.record(
            ctx.agent.id, SandboxUsage(running=False, disk_bytes=used, limits=last.limits)
        )
        if used > limit:
            raise AgentSpawnError(
                f"Agent {ctx.agent.slug!r} holds {used / 2**20:.0f} MiB in its home and"
                f" workspace, over its disk limit of {limit / 2**20:.0f} MiB, so it does not"
                " start. Raise the agent's disk_limit within your own limit, or ask an"
                " administrator to raise yours."
            )

    def _limit_values(self, ctx: AgentContext) -> dict[str, Any]:
        """The limits that hold on this sandbox (None: nothing enforces it)."""
        held = getattr(self, "_limits", None)
        held_kinds = held.held if held is not None else {}
        resolved = ctx.resolved
        return {
            "cpu": float(resolved["cpu_limit"]) if "CPU" in held_kinds else None,
            "memory": int(resolved["mem_limit"]) if "memory" in held_kinds else None,
            "processes": int(resolved["max_processes"]) if "process" in held_kinds else None,
            "disk": int(resolved.get("disk_limit") or 0) or None,
        }

    async def _sample_usage(self, ctx: AgentContext, sandbox: Sandbox) -> None:
        """Record what the sandbox uses every usage_interval until it stops."""
        store = await self.sac_store()
        limits = self._limit_values(ctx)
        previous: tuple[float, float] | None = None
        disk: int | None = None
        disk_at = 0.0
        while sandbox.alive():
            now = time.monotonic()
            if disk is None or now - disk_at >= self.disk_usage_interval:
                layout = sandbox.layout
                disk = await asyncio.to_thread(disk_usage, [layout.home, layout.workspace])
                disk_at = now
            applied = getattr(self, "_limits", None)
            cgroup = read_usage(applied) if applied is not None else None
            cpu = cgroup.cpu_seconds if cgroup else None
            percent = None
            if cpu is not None and previous is not None and now > previous[0]:
                percent = round(100 * (cpu - previous[1]) / (now - previous[0]), 1)
            if cpu is not None:
                previous = (now, cpu)
            traffic = sandbox.relays.traffic if sandbox.relays is not None else None
            sample = SandboxUsage(
                running=True,
                cpu_seconds=round(cpu, 3) if cpu is not None else None,
                cpu_percent=percent,
                memory_bytes=cgroup.memory_bytes if cgroup else None,
                processes=cgroup.processes if cgroup else None,
                disk_bytes=disk,
                net_sent_bytes=traffic.sent if traffic else None,
                net_received_bytes=traffic.received if traffic else None,
                limits=limits,
            )
            try:
                await store.sandbox_usage.record(ctx.agent.id, sample)
            except Exception as e:  # a database hiccup must not end the sampling
                self.log.warning("Could not record the sandbox usage of %s: %s", self._log_name, e)
            await asyncio.sleep(self.usage_interval)

    async def _wait_listening(self, sandbox: Sandbox) -> None:
        """Until the agent's server answers HTTP on our port (with a relayed network
        the port always accepts; only an answer says the server is up)."""
        deadline = time.monotonic() + self.http_timeout
        host = self.ip or "127.0.0.1"
        while time.monotonic() < deadline:
            if not sandbox.alive():
                raise AgentSpawnError(
                    f"The agent's server exited while starting (code {sandbox.proc.poll()});"
                    " see the hub log"
                )
            if await http_answers(host, self.port):
                return
            await asyncio.sleep(self.ready_poll_interval)
        raise AgentSpawnError(f"The agent's server did not listen within {self.http_timeout} s")

    async def _signal(self, sig: int) -> bool:
        if sig == 0 or getattr(self, "_sandbox", None) is None:
            return await super()._signal(sig)
        # Signal the server inside bubblewrap so it can shut down cleanly; bubblewrap
        # itself would just die and take the tree down with SIGKILL.
        try:
            os.kill(self._sandbox.server_pid(), sig)
        except ProcessLookupError:
            return False
        return True

    async def stop(self, now: bool = False) -> None:
        self._running_since_start = False  # an exit from here on was asked for
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            sampler.cancel()
            self._sampler = None
        await super().stop(now=now)
        agent_id = getattr(self, "_sac_agent_id", None)
        if agent_id is not None and self.database_url:
            with contextlib.suppress(Exception):
                await (await self.sac_store()).sandbox_usage.stopped(agent_id)
        sandbox = getattr(self, "_sandbox", None)
        if sandbox is not None and sandbox.relays is not None:
            sandbox.relays.close()
            sandbox.relays = None
        limits = getattr(self, "_limits", None)
        if limits is not None:
            release(limits)
            self._limits = None
        self._sandbox = None
        with contextlib.suppress(Exception):
            await self.revoke_agent_token()

    async def delete_forever(self) -> None:
        """Called by JupyterHub when the named server is removed: delete the agent's files.

        The `sac` service removes the named server before the agent's record, so the
        record still says which directory is this agent's.
        """
        if not self.name or not self.database_url:
            return
        store = await self.sac_store()
        agent = await store.agents.get(self.user.name, self.name)
        if agent is not None:
            # A workspace can be large: delete it off the hub's event loop.
            root = self.agent_layout(agent.id, agent.slug).root
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)
