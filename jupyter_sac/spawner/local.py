"""LocalAgentSpawner: agents as bubblewrap-confined processes on the hub's machine.

No system users are needed: every agent gets its own home and workspace under the
data dir and runs confined by bubblewrap (see sandbox.py). Starting is fast
because a warm, pre-imported sandbox is usually waiting (WarmPool).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Enum, Float, Integer, List, Unicode, default

import jupyter_sac

from ..runtimes.claude import claude_binary
from ..urls import PublicUrls
from .limits import AppliedLimits, apply_limits, release
from .mixin import AgentContext, AgentSpawnerMixin, AgentSpawnError, locked_jupyter_env
from .sandbox import (
    SANDBOX_HOME,
    SANDBOX_WORKSPACE,
    Sandbox,
    SandboxLayout,
    WarmPool,
    adopt_layout,
    bwrap_argv,
    descendants,
    launcher_command,
    recover_layouts,
    sandbox_hosts,
    write_in_place,
)

_pools: dict[tuple, WarmPool] = {}


def default_data_dir() -> str:
    return os.environ.get("SAC_DATA_DIR") or os.path.expanduser("~/.local/share/jupyter-sac")


class LocalAgentSpawner(AgentSpawnerMixin, LocalProcessSpawner):
    """Runs each agent in a bubblewrap sandbox on this machine."""

    data_dir = Unicode(
        help="SAC data dir; agents live in <data_dir>/agents (default: $SAC_DATA_DIR"
        " or ~/.local/share/jupyter-sac).",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return default_data_dir()

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

    hidden_paths = List(
        Unicode(),
        default_value=["/root", "/home", "/var/tmp", "/run", "/mnt", "/media", "/srv"],
        help="""Directories replaced by an empty tmpfs inside a sandbox (the data dir
        and /tmp always are). Paths a sandbox needs inside them (Python, the venv) are re-exposed
        read-only through `readonly_paths`.""",
    ).tag(config=True)

    readonly_paths = List(
        Unicode(),
        help="""Paths re-exposed read-only inside hidden directories (default: this
        Python's prefix and base prefix and the jupyter_sac package's source tree).""",
    ).tag(config=True)

    @default("readonly_paths")
    def _default_readonly_paths(self) -> list[str]:
        package_root = str(Path(jupyter_sac.__file__).resolve().parent.parent)
        paths = {sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), package_root}
        return sorted(p for p in paths if not p.startswith(self.data_dir))

    warm_sandboxes = Integer(
        1,
        help="""Pre-started sandboxes kept waiting with the single-user server's modules
        imported, so an agent starts in about a second. 0 disables the pool.""",
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

    ready_poll_interval = Float(
        0.05, help="Seconds between checks that a starting sandbox listens on its port."
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
        write_in_place(layout.hosts, sandbox_hosts(base, names, self.proxy_ip, public.domain))
        return True

    def _bwrap_argv(
        self, layout: SandboxLayout, hostname: str = "sac-agent", owner: str | None = None
    ) -> list[str]:
        hosts = layout.hosts if self._write_hosts(layout, owner) else None
        return bwrap_argv(
            self.bwrap_path,
            layout,
            hidden_paths=self.hidden_paths,
            reexposed_paths=self.readonly_paths,
            data_dir=self.data_dir,
            hostname=hostname,
            command=launcher_command(),
            hosts_file=hosts,
        )

    def _pool(self) -> WarmPool | None:
        if self.warm_sandboxes <= 0 or not self.bwrap_path or self.sandbox == "none":
            return None
        key = (
            self.data_dir,
            self.bwrap_path,
            tuple(self.hidden_paths),
            tuple(self.readonly_paths),
            self.warm_sandboxes,
            self.proxy_ip,
        )
        pool = _pools.get(key)
        if pool is None:
            recover_layouts(self.spares_dir)
            pool = WarmPool(self.spares_dir, self.warm_sandboxes, self._bwrap_argv)
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

    async def start(self) -> tuple[str, int]:
        self.reset_progress()
        started = time.monotonic()
        self.report("Preparing agent", 0)
        mode = self.confinement()
        ctx = await self.prepare_agent()
        self._sac_agent_id = ctx.agent.id
        resolved = ctx.resolved
        self.report(
            f"Agent {ctx.agent.display_name!r}: {ctx.agent.provider} / {ctx.agent.model},"
            f" {resolved['cpu_limit']:g} CPU, {resolved['mem_limit'] // 2**20} MiB",
            10,
        )
        layout = self.agent_layout(ctx.agent.id, ctx.agent.slug)
        if self.port == 0:
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
        argv = [*self.cmd, *self.get_args()]

        pool = self._pool() if mode == "bubblewrap" else None
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
            self._write_hosts(layout, self.user.name)
        else:
            layout.create()
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
        self._limits = self._apply_limits(ctx, sandbox)
        try:
            sandbox.assign(env, argv, workspace)
        except OSError:
            raise AgentSpawnError(
                f"The sandbox exited before it could start (code {sandbox.proc.poll()})"
            ) from None
        self.report("Starting JupyterLab in the sandbox", 60)
        await self._wait_listening(sandbox)
        self.report(f"Agent ready in {time.monotonic() - started:.1f} s", 95)
        if pool is not None:
            # Refill only now: a new spare's imports would otherwise compete for CPU.
            pool.fill()
        return (self.ip or "127.0.0.1", self.port)

    def _apply_limits(self, ctx: AgentContext, sandbox: Sandbox) -> AppliedLimits:
        if not self.enforce_limits:
            return AppliedLimits()
        resolved = ctx.resolved
        applied = apply_limits(
            f"{ctx.agent.id}-{ctx.agent.slug}",
            [sandbox.pid, *descendants(sandbox.pid)],
            int(resolved["mem_limit"]),
            int(resolved["max_processes"]),
        )
        self.report(f"Limits: {applied.describe()}", 40)
        return applied

    async def _wait_listening(self, sandbox: Sandbox) -> None:
        deadline = time.monotonic() + self.http_timeout
        host = self.ip or "127.0.0.1"
        while time.monotonic() < deadline:
            if not sandbox.alive():
                raise AgentSpawnError(
                    f"The agent's server exited while starting (code {sandbox.proc.poll()});"
                    " see the hub log"
                )
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, self.port), 1)
            except (OSError, TimeoutError):
                await asyncio.sleep(self.ready_poll_interval)
                continue
            writer.close()
            return
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
        await super().stop(now=now)
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
