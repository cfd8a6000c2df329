"""Local sandboxes: bubblewrap command lines, sandbox processes and the warm pool.

A sandbox sees a minimal filesystem: the system's programs and libraries
(``/usr``, ``/etc`` and the top-level links into them) and this Python's
installation read-only, its own home and workspace writable, private ``/tmp`` and
``/run``, nothing else of the machine (no ``/var``, ``/opt``, ``/srv``, ``/root``,
``/home``, no data dir). It runs as uid 1000 ("sac") inside a user namespace of
its own; when the hub runs as root, that uid is an unprivileged uid of this
machine (``sandbox_uid``), so files only root may read stay unreadable even where
the system is visible. It has its own network namespace with nothing but a
loopback interface (what it may reach is relayed: netrelay.py), its own PID, IPC
and UTS namespaces and a new session (no terminal injection into the hub's tty).

A sandbox serving an agent outlives the hub: a restarted hub finds it again
through the pid file in its directory (``Sandbox.attach``) and serves its relays
anew. A spare nobody assigned exits when the hub's end of its stdin closes.
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
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..rules.secrets import SANDBOX_SECRETS_DIR
from .netrelay import SERVER_SOCKET, HostRelays, listening_unix_socket

log = logging.getLogger("jupyter_sac.sandbox")

SANDBOX_HOME = "/home/sac"
SANDBOX_WORKSPACE = "/workspace"
# The sandbox's own user, inside its user namespace.
SANDBOX_USER = "sac"
SANDBOX_UID = 1000
# What of the machine a sandbox sees (read-only): programs, libraries, configuration.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
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

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        return self.root / "group"

    @property
    def net(self) -> Path:
        """The relays' sockets: the hub's, read-only inside (netrelay.py)."""
        return self.root / "net"

    @property
    def pid_file(self) -> Path:
        """Which process is this sandbox (``SandboxProcess``), for a restarted hub."""
        return self.root / "sandbox.json"

    def create(self, uid: int | None = None) -> None:
        """Make the directories; ``uid``: the machine's uid the sandbox runs as, which
        must own what it writes (files an older sandbox left are handed over once)."""
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.net.mkdir(mode=0o755, exist_ok=True)
        for path in (self.home, self.workspace):
            path.mkdir(mode=0o700, exist_ok=True)
        if uid is not None:
            hand_over(self, uid)
        write_identity(self)


def hand_over(layout: SandboxLayout, uid: int) -> None:
    """Give the sandbox's uid its home and workspace (and everything in them), once:
    a marker outside the sandbox's reach records the uid they belong to."""
    marker = layout.root / ".uid"
    with contextlib.suppress(OSError):
        if marker.read_text() == str(uid):
            return
    for top in (layout.home, layout.workspace):
        os.chown(top, uid, uid)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
    marker.write_text(str(uid))


def identity_files(passwd: str, group: str) -> tuple[str, str]:
    """The sandbox's /etc/passwd and /etc/group: the machine's, with uid and gid
    1000 (someone of this machine's, often) named ``sac``, at home in /home/sac."""

    def keep(line: str) -> bool:
        fields = line.split(":")
        return len(fields) > 2 and fields[0] != SANDBOX_USER and fields[2] != str(SANDBOX_UID)

    users = [line for line in passwd.splitlines() if keep(line)]
    users.append(f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:SAC agent:{SANDBOX_HOME}:/bin/bash")
    groups = [line for line in group.splitlines() if keep(line)]
    groups.append(f"{SANDBOX_USER}:x:{SANDBOX_UID}:")
    return "\n".join(users) + "\n", "\n".join(groups) + "\n"


def write_identity(layout: SandboxLayout) -> None:
    texts = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            texts.append("")
    passwd, group = identity_files(*texts)
    layout.passwd.write_text(passwd)
    layout.group.write_text(group)


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


def _covered(path: str, by: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


def _readable_parents(path: str, made: set[str], exposed: list[str]) -> list[str]:
    """``--dir`` for each parent of ``path`` not made or exposed yet, outermost first:
    bubblewrap would otherwise make them unreadable (0700) for the sandbox.
    Records them in ``made``."""
    parents = []
    parent = os.path.dirname(path)
    while parent not in ("/", "") and parent not in made and not _covered(parent, exposed):
        parents.append(parent)
        parent = os.path.dirname(parent)
    argv = []
    for p in reversed(parents):
        argv += ["--dir", p]
        made.add(p)
    return argv


def bwrap_argv(
    bwrap: str,
    layout: SandboxLayout,
    *,
    system_paths: Iterable[str] = SYSTEM_PATHS,
    readonly_paths: Iterable[str],
    hidden_paths: Iterable[str] = (),
    hostname: str,
    command: Sequence[str],
    hosts_file: Path | None = None,
    sandbox_uid: int | None = None,
    setpriv: str = "setpriv",
    isolate_network: bool = True,
    mounted_readonly: Mapping[str, str] | None = None,
) -> list[str]:
    """The bubblewrap command line for one sandbox (pure: no I/O beyond existence checks).

    ``sandbox_uid`` (the hub runs as root): an outer bubblewrap, as root, builds the
    filesystem and the PID, IPC and UTS namespaces; ``setpriv`` becomes that
    unprivileged uid with no capabilities; an inner bubblewrap, unprivileged, makes
    the user and network namespaces. Without it (the hub is not root) one bubblewrap
    does all of it, the sandbox's uid outside being the hub's own.
    Mount order matters: the system read-only, the Python installation (possibly
    inside a directory that is otherwise absent), hidden trees under those,
    ``mounted_readonly`` (path inside -> directory of the machine), the agent's own
    directories, then everything read-only but those.
    """
    argv = [bwrap]
    exposed: list[str] = []
    # bubblewrap's root is its own tmpfs; only these of the machine appear in it.
    for path in system_paths:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            exposed.append(path)
    argv += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
    argv += ["--tmpfs", "/run", "--dir", "/var", "--perms", "1777", "--tmpfs", "/var/tmp"]
    # Where the launcher writes the secrets granted as files: memory of this sandbox
    # only. bubblewrap cannot give a tmpfs to the sandbox's uid, hence the sticky
    # bit (one uid runs in a sandbox; the files themselves are 0400).
    argv += ["--perms", "1777", "--tmpfs", SANDBOX_SECRETS_DIR]
    made: set[str] = set()
    for path in sorted(dict.fromkeys(readonly_paths)):
        if not os.path.exists(path) or _covered(path, exposed):
            continue
        argv += _readable_parents(path, made, exposed)
        argv += ["--ro-bind", path, path]
        exposed.append(path)
    for path in hidden_paths:
        if os.path.isdir(path) and _covered(path, exposed):
            argv += ["--tmpfs", path]
    for path in MASKED_FILES:
        if os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    if hosts_file is not None:
        # Its own name resolution (sandbox_hosts), read-only like the rest of /etc.
        argv += ["--ro-bind", str(hosts_file), "/etc/hosts"]
    for inside, outside in sorted((mounted_readonly or {}).items()):
        # A machine's directory at another path inside (the shared package cache).
        if os.path.isdir(outside):
            argv += [*_readable_parents(inside, made, exposed), "--ro-bind", outside, inside]
    argv += ["--ro-bind", str(layout.passwd), "/etc/passwd"]
    argv += ["--ro-bind", str(layout.group), "/etc/group"]
    argv += [
        "--dir", "/home",
        "--bind", str(layout.home), SANDBOX_HOME,
        "--bind", str(layout.workspace), SANDBOX_WORKSPACE,
        "--ro-bind", str(layout.net), "/run/sac",
        "--remount-ro", "/",
        "--chdir", SANDBOX_WORKSPACE,
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", hostname,
        # No --die-with-parent here: an agent's sandbox outlives a hub restart.
        "--new-session",
    ]  # fmt: skip
    own_namespaces = [
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        *(["--unshare-net"] if isolate_network else []),
        "--cap-drop", "ALL",
        "--chdir", SANDBOX_WORKSPACE,
    ]  # fmt: skip
    if sandbox_uid is None:
        return [*argv, *own_namespaces, "--", *command]
    return [
        *argv,
        "--",
        setpriv,
        f"--reuid={sandbox_uid}",
        f"--regid={sandbox_uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        # The inner one binds the tree the outer one made, devices included.
        bwrap,
        "--dev-bind", "/", "/",
        # The inner one goes with the outer one (its parent), never on its own.
        "--die-with-parent",
        *own_namespaces,
        "--",
        *command,
    ]  # fmt: skip


def disk_usage(paths: Iterable[Path]) -> int:
    """Bytes the files under ``paths`` take on disk (allocated blocks, as ``du``
    counts them; links not followed, each inode once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(p) for p in paths]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


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


def process_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None.
    The start time tells a process from a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` and runs
    (a zombie nobody reaped, or a new process with a recycled pid, is not it)."""
    found = process_start(pid)
    return found is not None and found[0] not in ("Z", "X") and found[1] == start_time


class AttachedProcess:
    """A sandbox process this hub did not start (it outlived the hub that did), with
    the part of Popen's interface a Sandbox and LocalProcessSpawner use."""

    stdin = None

    def __init__(self, pid: int, start_time: int):
        self.pid = pid
        self.start_time = start_time
        self.returncode: int | None = None

    def poll(self) -> int | None:
        # Not our child: its exit code belongs to whoever reaps it.
        if self.returncode is None and not process_alive(self.pid, self.start_time):
            self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return 0

    def __enter__(self) -> AttachedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class Sandbox:
    """One sandbox process: started, pre-imported, then assigned to exactly one agent."""

    proc: subprocess.Popen[bytes] | AttachedProcess
    layout: SandboxLayout
    confined: bool
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _ready_fd: int | None = None
    # The hub's side of its relays, once it serves an agent (netrelay.py).
    relays: HostRelays | None = None

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
        """Start ``argv``; a confined sandbox gets the listening socket its server is
        reached through (made here, in the hub's directory, so that the hub connects
        to a socket the sandbox cannot replace)."""
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
        pass_fds = [write_fd]
        server = None
        if confined:
            server = listening_unix_socket(layout.net / SERVER_SOCKET, mode=0o600)
            env["SAC_SERVER_FD"] = str(server.fileno())
            pass_fds.append(server.fileno())

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            cwd=cwd,
            env=env,
            pass_fds=pass_fds,
            start_new_session=not confined,  # bwrap --new-session does it when confined
        )
        os.close(write_fd)
        if server is not None:
            server.close()  # the sandbox accepts on it; the hub only connects
        found = process_start(proc.pid)
        # Written where the sandbox cannot write (its root), moved along on adoption.
        layout.pid_file.write_text(
            json.dumps(
                {"pid": proc.pid, "start_time": found[1] if found else None, "confined": confined}
            )
        )
        sandbox = cls(proc=proc, layout=layout, confined=confined, _ready_fd=read_fd)
        asyncio.get_running_loop().add_reader(read_fd, sandbox._on_ready_fd)
        return sandbox

    @classmethod
    def attach(cls, layout: SandboxLayout) -> Sandbox | None:
        """The sandbox still running in ``layout`` since an earlier hub started it
        (its pid file names the process and when it started), or None."""
        try:
            recorded = json.loads(layout.pid_file.read_text())
            pid, start_time = int(recorded["pid"]), int(recorded["start_time"])
            confined = bool(recorded["confined"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not process_alive(pid, start_time):
            return None
        sandbox = cls(proc=AttachedProcess(pid, start_time), layout=layout, confined=confined)
        sandbox.ready.set()
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

    def assign(
        self,
        env: dict[str, str],
        argv: list[str],
        cwd: str,
        net: dict | None = None,
        secret_files: dict | None = None,
    ) -> None:
        """Hand this sandbox its agent: one JSON line on its stdin, then EOF
        (``net``: what its relays serve, netrelay.SandboxRelays; ``secret_files``:
        ``{"dir", "files": {name: value}}``, the secrets granted as files, which the
        launcher writes there)."""
        assert self.proc.stdin is not None
        assignment = {
            "env": env,
            "argv": argv,
            "cwd": cwd,
            "net": net,
            "secret_files": secret_files,
        }
        self.proc.stdin.write(json.dumps(assignment).encode() + b"\n")
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
        if self.relays is not None:
            self.relays.close()
            self.relays = None
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


def running_sandboxes(agents_dir: Path) -> list[Sandbox]:
    """Agents' sandboxes still running under ``agents_dir`` (e.g. after a hub stop)."""
    if not agents_dir.is_dir():
        return []
    found = []
    for root in sorted(agents_dir.iterdir()):
        sandbox = Sandbox.attach(SandboxLayout(root)) if root.is_dir() else None
        if sandbox is not None:
            found.append(sandbox)
    return found


def stop_sandboxes(sandboxes: Sequence[Sandbox], grace: float) -> None:
    """Stop sandboxes as their spawner would: TERM to each server inside (so it
    flushes what it can), then KILL whatever is left after ``grace`` seconds."""
    for sandbox in sandboxes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sandbox.server_pid(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    for sandbox in sandboxes:
        try:
            sandbox.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                sandbox.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sandbox.proc.wait(timeout=5)


class WarmPool:
    """Pre-started, pre-imported sandboxes waiting for an agent (per hub process).

    It keeps ``size`` spares at rest and grows to the demand it sees: after several
    agents started at the same moment, it keeps as many spares as there were starts
    at once (never more than ``ceiling``) for ``demand_window`` seconds, then goes
    back to ``size``. It is topped up only when no start is in progress (a new
    spare's imports would compete for CPU with the agents being started), and then
    prefers spares whose imports are done.
    """

    # Seconds after the last start ends before the pool is topped up: the hub's
    # readiness check, the proxy's route and the agent's first requests come right
    # after a start, and a new spare's imports would take their CPU.
    refill_delay = 0.5

    def __init__(
        self,
        spares_dir: Path,
        size: int,
        make_argv,
        uid: int | None = None,
        *,
        ceiling: int = 0,
        demand_window: float = 600.0,
    ):
        self.spares_dir = spares_dir
        self.size = size
        self.ceiling = max(size, ceiling)
        self.demand_window = demand_window
        self._make_argv = make_argv
        self._uid = uid
        self._spares: list[Sandbox] = []
        self._starting = 0
        # (when, how many starts were in progress at once), within demand_window.
        self._demand: list[tuple[float, int]] = []
        self._trim: asyncio.TimerHandle | None = None

    @property
    def starting(self) -> int:
        """Starts in progress (between ``start_began`` and ``start_ended``)."""
        return self._starting

    def target(self, now: float | None = None) -> int:
        """How many spares to keep: the most starts at once within the demand window,
        at least ``size``, at most ``ceiling``."""
        now = time.monotonic() if now is None else now
        self._demand = [(t, n) for t, n in self._demand if now - t < self.demand_window]
        peak = max((n for _, n in self._demand), default=0)
        return min(self.ceiling, max(self.size, peak))

    def start_began(self) -> None:
        self._starting += 1
        self._demand.append((time.monotonic(), self._starting))

    def start_ended(self) -> None:
        """A start is over (ready or failed): top the pool up once none is left."""
        self._starting = max(0, self._starting - 1)
        if self._starting == 0:
            asyncio.get_running_loop().call_later(self.refill_delay, self._fill_when_idle)

    def _fill_when_idle(self) -> None:
        if self._starting == 0:
            self.fill()

    def _launch_one(self) -> None:
        layout = SandboxLayout(self.spares_dir / uuid.uuid4().hex)
        layout.create(self._uid)
        argv = self._make_argv(layout)
        self._spares.append(Sandbox.launch(argv, layout, confined=True))

    def fill(self) -> None:
        """Bring the pool to its target: launch spares, or stop those beyond it (each
        holds memory) once the demand that grew it is past."""
        live = []
        for spare in self._spares:
            if spare.alive():
                live.append(spare)
            else:
                spare.discard()
        self._spares = live
        target = self.target()
        while len(self._spares) > target:
            # The youngest first: the oldest are the likeliest to be ready.
            self._spares.pop().discard()
        while len(self._spares) < target:
            self._launch_one()
        if target > self.size and self._trim is None:
            # Come back when the demand has passed, to shrink to the resting size.
            self._trim = asyncio.get_running_loop().call_later(
                self.demand_window, self._trim_when_idle
            )

    def _trim_when_idle(self) -> None:
        self._trim = None
        if self._starting == 0:
            self.fill()
        elif self.target() > self.size:
            self._trim = asyncio.get_running_loop().call_later(
                self.demand_window, self._trim_when_idle
            )

    def take(self) -> Sandbox | None:
        """A live spare, one whose imports are done if there is one (else the oldest,
        still importing), or None."""
        live = [spare for spare in self._spares if spare.alive()]
        for spare in self._spares:
            if spare not in live:
                spare.discard()
        ready = [spare for spare in live if spare.ready.is_set()]
        chosen = (ready or live or [None])[0]
        self._spares = [spare for spare in live if spare is not chosen]
        return chosen

    def close(self) -> None:
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        for spare in self._spares:
            spare.discard()
        self._spares = []
