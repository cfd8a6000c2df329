"""Retention: what the service's maintenance may remove, as of a given time.

Pure functions of the settings (rules/settings.py) and a clock the caller passes,
so that the rule can be tested at any moment: conversation history older than
``history_retention_days`` (the system's value, or a user's own for that user's
agents; 0 keeps it for ever), and a deleted agent's stored files once
``deleted_agent_grace_days`` have passed since its deletion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .settings import resolve_user


@dataclass(frozen=True)
class HistoryCutoffs:
    """History older than its owner's cutoff is removed; None keeps it for ever.

    ``default`` applies to every owner not in ``by_user`` (those whose own
    overrides set ``history_retention_days``)."""

    default: datetime | None
    by_user: Mapping[str, datetime | None] = field(default_factory=dict)

    @property
    def removes_anything(self) -> bool:
        return self.default is not None or any(c is not None for c in self.by_user.values())


def _cutoff(now: datetime, days: int) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


def history_cutoffs(
    now: datetime,
    system: Mapping[str, Any],
    users: Mapping[str, Mapping[str, Any]],
) -> HistoryCutoffs:
    """The cutoffs at ``now`` from the system overrides and every user's own."""
    default = _cutoff(now, int(resolve_user(system, {})["history_retention_days"]))
    by_user = {
        user: _cutoff(now, int(resolve_user(system, overrides)["history_retention_days"]))
        for user, overrides in users.items()
        if overrides.get("history_retention_days") is not None
    }
    return HistoryCutoffs(default, by_user)


def deleted_agent_cutoff(now: datetime, system: Mapping[str, Any]) -> datetime:
    """Agents deleted before this have had their grace period: their files go."""
    days = int(resolve_user(system, {})["deleted_agent_grace_days"])
    return now - timedelta(days=days)
