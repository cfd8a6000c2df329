"""Token budgets: the rule the credential proxy applies before each model call.

Pure functions: the resolved settings (``agent_monthly_tokens``,
``user_monthly_tokens``; 0 means no limit) and what was used this calendar month
(UTC) in, a refusal message (or None) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any


def next_month(today: date) -> date:
    return date(today.year + today.month // 12, today.month % 12 + 1, 1)


@dataclass(frozen=True)
class Budget:
    """One limit and its use this month (``limit`` 0: none)."""

    limit: int
    used: int

    @property
    def spent(self) -> bool:
        return self.limit > 0 and self.used >= self.limit

    @property
    def left(self) -> int | None:
        return None if self.limit == 0 else max(self.limit - self.used, 0)

    def model(self) -> dict[str, Any]:
        return {"limit": self.limit or None, "used": self.used, "left": self.left}


def budgets(resolved: dict[str, Any], agent_used: int, user_used: int) -> dict[str, Budget]:
    return {
        "agent": Budget(int(resolved["agent_monthly_tokens"]), agent_used),
        "user": Budget(int(resolved["user_monthly_tokens"]), user_used),
    }


def refusal(resolved: dict[str, Any], agent_used: int, user_used: int,
            today: date) -> str | None:  # fmt: skip
    """Why a model call must not go out, or None when both budgets have room."""
    found = budgets(resolved, agent_used, user_used)
    resets = f"it resets on {next_month(today).isoformat()} (UTC)"
    if found["user"].spent:
        b = found["user"]
        return (
            f"Monthly token budget spent: your agents have used {b.used:,} of {b.limit:,}"
            f" tokens this month; {resets}. Ask an administrator to raise"
            " user_monthly_tokens."
        )
    if found["agent"].spent:
        b = found["agent"]
        return (
            f"Monthly token budget spent: this agent has used {b.used:,} of {b.limit:,}"
            f" tokens this month; {resets}. Ask an administrator to raise"
            " agent_monthly_tokens."
        )
    return None
