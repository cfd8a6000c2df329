"""Local sandboxes: bubblewrap command lines, sandbox processes and the warm pool.

A sandbox is a bubblewrap-confined process tree: the whole system read-only,
the data dir (database, secrets, other agents) and other sensitive trees hidden
behind empty tmpfs mounts, only the agent's own home and workspace writable,
its own PID/IPC/UTS namespaces, a new session (no terminal injection into the
hub's tty) and death with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("jupyter_sac.sandbox")

SANDBOX_HOME = "/home/sac"
SANDBOX_WORKSPACE = "/workspace"
LAUNCHER = ["-m", "jupyter_sac.spawner.launcher"]
# Files that stay unreadable even though the system is visible read-only.
MASKED_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers")


@dataclass(frozen=True)
class SandboxLayout:
    """Host paths of one sandbox's writable directories."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def hosts(self) -> Path:
        """The sandbox's /etc/hosts (outside its writable directories)."""
        return self.root / "hosts"

    def create(self) -> None:
        for path in (self.root, self.home, self.workspace):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _under(name: str, domain: str) -> bool:
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


def sandbox_hosts(base: str, names: Sequence[str], ip: str, domain: str) -> str:
    """A sandbox's /etc/hosts: the machine's ``base`` without any name in the hub's
    ``domain``, then exactly ``names`` (the hub's, the service's and the owner's
    host) on the proxy's address ``ip``.

    Python and most tools do not resolve ``*.localhost`` as browsers do; with this
    file, code in the sandbox (jupyter_sac.client, curl) finds the hub, the
    service and its own user's servers by their public names, and no other name
    under the domain. It is name resolution, not a boundary: the sandbox can still
    send any Host header to the proxy, and every server checks its own tokens.
    """
    lines = ["# Written by jupyter-sac for this sandbox (read-only inside it)."]
    for line in base.splitlines():
        fields = line.partition("#")[0].split()
        if not fields:
            if line.strip():
                lines.append(line)  # a comment
            continue
        address, *aliases = fields
        kept = [a for a in aliases if not _under(a, domain) and a not in names]
        if kept:
            lines.append(" ".join([address, *kept]))
    if names:
        lines.append(" ".join([ip, *dict.fromkeys(names)]))
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Replace a file's content keeping its inode: a running sandbox has it bound
    (as /etc/hosts), and a bind mount follows the inode, not the name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def bwrap_argv(
    bwrap: str,
    layout: SandboxLayout,
    *,
    hidden_paths: Iterable[str],
    reexposed_paths: Iterable[str],
    data_dir: str,
    hostname: str,
    command: Sequence[str],
    hosts_file: Path | None = None,
) -> list[str]:
    """The bubblewrap command line for one sandbox (pure: no I/O beyond existence checks).

    Mount order matters: system read-only, then tmpfs over hidden trees, then the
    read-only paths the sandbox needs from inside them (Python, the venv), then a
    tmpfs over the data dir, and last the agent's own directories.
    """
    argv = [bwrap]
    # The sandbox root is bubblewrap's own tmpfs (so /workspace and /home/sac can be
    # created in it) holding read-only binds of the host's top-level directories.
    for name in sorted(os.listdir("/")):
        path = "/" + name
        if name in ("proc", "dev", "tmp", SANDBOX_WORKSPACE.strip("/")):
            continue
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    # A private /tmp first, so that paths re-exposed below may live under /tmp.
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in hidden_paths:
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
    for path in reexposed_paths:
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--tmpfs", data_dir]
    for path in MASKED_FILES:
        if os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    if hosts_file is not None:
        # Its own name resolution (sandbox_hosts), read-only like the rest of /etc.
        argv += ["--ro-bind", str(hosts_file), "/etc/hosts"]
    argv += [
        "--bind",
        str(layout.home),
        SANDBOX_HOME,
        "--bind",
        str(layout.workspace),
        SANDBOX_WORKSPACE,
        "--remount-ro",
        "/",
        "--chdir",
        SANDBOX_WORKSPACE,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        hostname,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--",
        *command,
    ]
    return argv


def launcher_command(python: str = sys.executable) -> list[str]:
    return [python, *LAUNCHER]


def descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (from /proc children lists), parents first."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop(0)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


@dataclass
class Sandbox:
    """One sandbox process: started, pre-imported, then assigned to exactly one agent."""

    proc: subprocess.Popen[bytes]
    layout: SandboxLayout
    confined: bool
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _ready_fd: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def launch(
        cls,
        argv: list[str],
        layout: SandboxLayout,
        *,
        confined: bool,
        cwd: str | None = None,
    ) -> Sandbox:
        read_fd, write_fd = os.pipe()
        # Until assigned, a sandbox knows nothing of any agent: a bare environment.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        # Python decides at start whether ~/.local is on its paths: never, in a
        # sandbox (the agent could put modules, or Jupyter data, there).
        env["PYTHONNOUSERSITE"] = "1"
        # The launcher writes "ready" to this inherited pipe once its imports are done.
        env["SAC_READY_FD"] = str(write_fd)
        # Every confined sandbox sees the same paths, so anything cached at import
        # time (under HOME) is right for whichever agent it later serves.
        env["HOME"] = SANDBOX_HOME if confined else str(layout.home)

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            cwd=cwd,
            env=env,
            pass_fds=(write_fd,),
            start_new_session=not confined,  # bwrap --new-session does it when confined
        )
        os.close(write_fd)
        sandbox = cls(proc=proc, layout=layout, confined=confined, _ready_fd=read_fd)
        asyncio.get_running_loop().add_reader(read_fd, sandbox._on_ready_fd)
        return sandbox

    def _on_ready_fd(self) -> None:
        assert self._ready_fd is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._ready_fd)
        with contextlib.suppress(OSError):
            os.read(self._ready_fd, 64)
        os.close(self._ready_fd)
        self._ready_fd = None
        # EOF without "ready" means the launcher died; alive() tells which.
        self.ready.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return self.alive()

    def assign(self, env: dict[str, str], argv: list[str], cwd: str) -> None:
        """Hand this sandbox its agent: one JSON line on its stdin, then EOF."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"env": env, "argv": argv, "cwd": cwd}).encode() + b"\n")
        self.proc.stdin.close()

    def server_pid(self) -> int:
        """The pid to signal for a graceful stop: the launcher inside bubblewrap."""
        if not self.confined:
            return self.pid
        for pid in descendants(self.pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "bwrap":
                        return pid
            except OSError:
                continue
        return self.pid

    def discard(self) -> None:
        if self._ready_fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._ready_fd)
            os.close(self._ready_fd)
            self._ready_fd = None
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
        shutil.rmtree(self.layout.root, ignore_errors=True)


def adopt_layout(spare: SandboxLayout, target: SandboxLayout) -> None:
    """Make a warm sandbox's directories become an agent's directories.

    Bind mounts follow the directory, not its path, so renaming the spare's root
    to the agent's root moves the sandbox's view along with it. An existing agent
    keeps its files: they are moved (renamed, not copied) into the spare first.
    A marker names the target until the move is complete, so a crash half way is
    repaired by ``recover_layouts``.
    """
    marker = spare.root / ".adopting"
    marker.write_text(str(target.root))
    if target.root.exists():
        for sub in ("home", "workspace"):
            src, dst = target.root / sub, spare.root / sub
            if src.is_dir():
                for entry in os.listdir(src):
                    os.rename(src / entry, dst / entry)
        shutil.rmtree(target.root)
    target.root.parent.mkdir(parents=True, exist_ok=True)
    marker.unlink()
    os.rename(spare.root, target.root)


def recover_layouts(spares_dir: Path) -> None:
    """Finish or undo adoptions interrupted by a crash; remove unused spares."""
    if not spares_dir.is_dir():
        return
    for spare_root in spares_dir.iterdir():
        marker = spare_root / ".adopting"
        if marker.exists():
            target = Path(marker.read_text())
            log.warning("finishing an interrupted sandbox adoption into %s", target)
            adopt_layout(SandboxLayout(spare_root), SandboxLayout(target))
        else:
            shutil.rmtree(spare_root, ignore_errors=True)


class WarmPool:
    """Pre-started, pre-imported sandboxes waiting for an agent (per hub process)."""

    def __init__(self, spares_dir: Path, size: int, make_argv):
        self.spares_dir = spares_dir
        self.size = size
        self._make_argv = make_argv
        self._spares: list[Sandbox] = []

    def _launch_one(self) -> None:
        layout = SandboxLayout(self.spares_dir / uuid.uuid4().hex)
        layout.create()
        argv = self._make_argv(layout)
        self._spares.append(Sandbox.launch(argv, layout, confined=True))

    def fill(self) -> None:
        """Top the pool up. Called when no sandbox is starting, so that the imports of a
        new spare do not compete for CPU with an agent that is being started."""
        live = []
        for spare in self._spares:
            if spare.alive():
                live.append(spare)
            else:
                spare.discard()
        self._spares = live
        while len(self._spares) < self.size:
            self._launch_one()

    def take(self) -> Sandbox | None:
        """The oldest live spare (possibly still importing), or None."""
        while self._spares:
            candidate = self._spares.pop(0)
            if candidate.alive():
                return candidate
            candidate.discard()
        return None

    def close(self) -> None:
        for spare in self._spares:
            spare.discard()
        self._spares = []
