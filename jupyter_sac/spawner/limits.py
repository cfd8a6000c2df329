"""CPU, memory and process limits for local sandboxes, through cgroups where writable,
and what a sandbox uses (read from the same cgroups).

The embedded stack runs on laptops and in containers where cgroups may be
read-only, so each limit is applied where this machine allows it and the spawn
progress says exactly which hold; an operator who needs all of them sets
``LocalAgentSpawner.require_limits`` and agents are refused otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("jupyter_sac.limits")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1's CPU quota is per period; 100 ms is the kernel's default period.
CPU_PERIOD_US = 100_000
KINDS = ("CPU", "memory", "process")


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path for a v1 controller, or the v2 path when None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",") if controllers else []
        if (controller is None and not controllers) or (controller and controller in names):
            return path
    return None


@dataclass
class AppliedLimits:
    """The cgroups a sandbox was put in and the limits that hold there."""

    groups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Which of KINDS hold, and where to read usage: kind -> the cgroup holding it.
    held: dict[str, Path] = field(default_factory=dict)

    def missing(self) -> list[str]:
        return [kind for kind in KINDS if kind not in self.held]

    def describe(self) -> str:
        text = "; ".join(self.notes) if self.notes else "none enforced"
        missing = self.missing()
        if self.notes and missing:
            text += f" (not enforced here: {', '.join(missing)})"
        elif not self.notes:
            text += " (this machine's cgroups are not writable by the hub)"
        return text


def cpu_max(cpu_limit: float) -> str:
    """cgroup v2 ``cpu.max`` for a limit in cores: quota and period in microseconds."""
    return f"{max(1000, round(cpu_limit * CPU_PERIOD_US))} {CPU_PERIOD_US}"


def _v1_group(controller: str, name: str) -> Path | None:
    own = _own_cgroup(controller)
    base = CGROUP_ROOT / controller
    if own is None or not base.is_dir():
        return None
    group = base / own.lstrip("/") / "jupyter-sac" / name
    try:
        group.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return group


def _v2_group(name: str) -> Path | None:
    own = _own_cgroup(None)
    for base in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if own is None or not (base / "cgroup.controllers").exists():
            continue
        parent = base / own.lstrip("/")
        try:
            controllers = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if not {"cpu", "memory", "pids"} & set(controllers):
            continue
        group = parent / f"jupyter-sac-{name}"
        try:
            group.mkdir(exist_ok=True)
        except OSError:
            continue
        return group
    return None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError as e:
        log.warning("cannot write %s: %s", path, e)
        return False
    return True


def apply_limits(
    name: str, pids: list[int], *, cpu_limit: float, mem_limit: int, max_processes: int
) -> AppliedLimits:
    """Put ``pids`` into cgroups named ``name`` with the given limits."""
    applied = AppliedLimits()
    v2 = _v2_group(name)
    if v2 is not None:
        for kind, knob, value, note in (
            ("CPU", "cpu.max", cpu_max(cpu_limit), f"{cpu_limit:g} CPU"),
            ("memory", "memory.max", str(mem_limit), f"memory {mem_limit // 2**20} MiB"),
            ("process", "pids.max", str(max_processes), f"{max_processes} processes"),
        ):
            if _write(v2 / knob, value):
                applied.held[kind] = v2
                applied.notes.append(f"{note} (cgroup v2)")
        if applied.held and _join(v2, pids):
            applied.groups.append(v2)
            return applied
        applied = AppliedLimits()
    quota = max(1000, round(cpu_limit * CPU_PERIOD_US))
    for kind, controller, knobs, note in (
        (
            "CPU",
            "cpu",
            (("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))),
            f"{cpu_limit:g} CPU",
        ),
        (
            "memory",
            "memory",
            (("memory.limit_in_bytes", str(mem_limit)),),
            f"memory {mem_limit // 2**20} MiB",
        ),
        ("process", "pids", (("pids.max", str(max_processes)),), f"{max_processes} processes"),
    ):
        group = _v1_group(controller, name)
        if group is None:
            continue
        if all(_write(group / knob, value) for knob, value in knobs) and _join(group, pids):
            applied.groups.append(group)
            applied.held[kind] = group
            applied.notes.append(f"{note} (cgroup v1)")
    # CPU time is counted by cpuacct on v1 (cpu.stat on v2), whatever the CPU limit.
    if not any((group / "cpuacct.usage").exists() for group in applied.groups):
        acct = _v1_group("cpuacct", name)
        if acct is not None and _join(acct, pids):
            applied.groups.append(acct)
    return applied


def _join(group: Path, pids: list[int]) -> bool:
    ok = False
    for pid in pids:
        try:
            (group / "cgroup.procs").write_text(str(pid))
            ok = True
        except OSError:
            continue  # a process that exited meanwhile
    return ok


def release(applied: AppliedLimits) -> None:
    """Remove the sandbox's cgroups once its processes are gone."""
    for group in applied.groups:
        with contextlib.suppress(OSError):
            os.rmdir(group)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class CgroupUsage:
    """What a sandbox's processes use, from its cgroups (None: not measurable here)."""

    cpu_seconds: float | None
    memory_bytes: int | None
    processes: int | None


def read_usage(applied: AppliedLimits) -> CgroupUsage:
    cpu = None
    memory = None
    processes = None
    for group in applied.groups:
        stat = group / "cpu.stat"
        if stat.exists() and (group / "cgroup.controllers").exists():  # v2
            with contextlib.suppress(OSError, ValueError):
                for line in stat.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        cpu = int(value) / 1e6
            memory = _read_int(group / "memory.current") if memory is None else memory
            processes = _read_int(group / "pids.current") if processes is None else processes
            continue
        if (group / "cpuacct.usage").exists():
            ns = _read_int(group / "cpuacct.usage")
            cpu = ns / 1e9 if ns is not None else cpu
        if (group / "memory.usage_in_bytes").exists():
            memory = _read_int(group / "memory.usage_in_bytes")
        if (group / "pids.current").exists():
            processes = _read_int(group / "pids.current")
    return CgroupUsage(cpu, memory, processes)
