"""The `sac` command: `sac up` runs the stack; the other commands drive a hub's
agents, approvals, history, skills and settings over the public APIs, through
``jupyter_sac.client`` (docs/operator-guide.md#the-sac-command)."""

from __future__ import annotations

# Each module adds its commands to the group, in the order `sac --help` lists them.
from . import (  # noqa: F401
    agents,
    auth,
    history,
    hitl,
    misc,
    skills,
    stack,
)
from ._app import main, sac

__all__ = ["main", "sac"]
