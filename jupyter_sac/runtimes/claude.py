"""The claude runtime: where its CLI lives and what version it is."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path


def claude_binary() -> str | None:
    """The pinned CLI bundled in the claude-agent-sdk wheel, else `claude` on PATH.

    Found without importing the package (its imports take about a second of CPU,
    which the hub's first agent start paid on its event loop; the server needs it
    only for chat)."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "_bundled" / "claude"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("claude")


async def claude_version(timeout: float = 20) -> str | None:
    binary = claude_binary()
    if binary is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError):
        return None
    text = out.decode(errors="replace").strip()
    return text.split()[0] if text else None
