"""Memory and process limits for local sandboxes, through cgroups where writable.

Best effort by design: the embedded stack runs on laptops and in containers
where cgroups may be read-only. What was applied is reported in the spawn
progress so an operator can see it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("jupyter_sac.limits")
CGROUP_ROOT = Path("/sys/fs/cgroup")


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
    groups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(self.notes) if self.notes else "no memory/process limits enforced"


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
        if "memory" not in controllers and "pids" not in controllers:
            continue
        group = parent / f"jupyter-sac-{name}"
        try:
            group.mkdir(exist_ok=True)
        except OSError:
            continue
        return group
    return None


def apply_limits(name: str, pids: list[int], mem_limit: int, max_processes: int) -> AppliedLimits:
    """Put ``pids`` into cgroups named ``name`` with the given limits."""
    applied = AppliedLimits()
    v2 = _v2_group(name)
    if v2 is not None:
        with contextlib.suppress(OSError):
            (v2 / "memory.max").write_text(str(mem_limit))
            applied.notes.append(f"memory {mem_limit // 2**20} MiB (cgroup v2)")
        with contextlib.suppress(OSError):
            (v2 / "pids.max").write_text(str(max_processes))
            applied.notes.append(f"{max_processes} processes (cgroup v2)")
        if _join(v2, pids):
            applied.groups.append(v2)
            return applied
        applied.notes.clear()
    for controller, knob, value, label in (
        ("memory", "memory.limit_in_bytes", mem_limit, f"memory {mem_limit // 2**20} MiB"),
        ("pids", "pids.max", max_processes, f"{max_processes} processes"),
    ):
        group = _v1_group(controller, name)
        if group is None:
            continue
        try:
            (group / knob).write_text(str(value))
        except OSError as e:
            log.warning("cannot set %s for %s: %s", knob, name, e)
            continue
        if _join(group, pids):
            applied.groups.append(group)
            applied.notes.append(f"{label} (cgroup v1)")
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
