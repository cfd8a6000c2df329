"""What a sandbox uses, as the admin pages show it (pure)."""

from __future__ import annotations

from typing import Any

from ..store import SandboxUsage

NOT_ENFORCED = "not enforced"


def human_bytes(value: int | None) -> str:
    """``1536`` -> ``1.5 KiB``: short, for people (the API keeps exact numbers). The
    same rule as the sidebar's ``formatBytes``, so both say the same figure."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def usage_notes(usage: SandboxUsage | None) -> list[str]:
    """What a person should know beside a running agent's figures: why they are
    missing (``unavailable``), and restarts of its server since it started (the
    same words as the sidebar's ``usageNotes``)."""
    if usage is None or not usage.running:
        return []
    notes = []
    if usage.restarts:
        times = "once" if usage.restarts == 1 else f"{usage.restarts} times"
        notes.append(f"its server crashed and was restarted {times} since it started")
    if usage.unavailable:
        notes.append(f"live figures unavailable: {usage.unavailable}")
    return notes


def usage_cells(usage: SandboxUsage | None, resolved: dict[str, Any]) -> dict[str, Any]:
    """One agent's CPU, memory, processes, disk and network cells: what it uses now
    and the limit that holds (``not enforced`` where nothing enforces it). A stopped
    agent shows the limits it will be asked for and its last measured disk use."""
    running = usage is not None and usage.running
    limits = usage.limits if running and usage is not None else {}

    def limit(kind: str, asked: Any, show) -> str:
        if not running:
            return show(asked) if asked else "no limit"
        held = limits.get(kind)
        return show(held) if held is not None else NOT_ENFORCED

    def now(value: Any, show) -> str:
        return show(value) if running and value is not None else "—"

    cpu = usage.cpu_percent if usage else None
    disk = usage.disk_bytes if usage else None
    disk_limit = int(resolved.get("disk_limit") or 0)
    disk_text = f"{human_bytes(disk) if disk is not None else '—'} / "
    disk_text += human_bytes(disk_limit) if disk_limit else "no limit"
    if disk is not None and disk_limit and disk > disk_limit:
        disk_text += " (over: will not start)"
    sent = usage.net_sent_bytes if running and usage else None
    received = usage.net_received_bytes if running and usage else None
    return {
        "notes": usage_notes(usage),
        "cpu": f"{now(cpu, lambda v: f'{v:g}%')} / "
        + limit("cpu", resolved.get("cpu_limit"), lambda v: f"{v:g} CPU"),
        "memory": f"{now(usage.memory_bytes if usage else None, human_bytes)} / "
        + limit("memory", resolved.get("mem_limit"), human_bytes),
        "processes": f"{now(usage.processes if usage else None, str)} / "
        + limit("processes", resolved.get("max_processes"), str),
        "disk": disk_text,
        "network": "—"
        if sent is None or received is None
        else f"↑ {human_bytes(sent)} ↓ {human_bytes(received)}",
    }
