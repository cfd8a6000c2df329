"""Token budgets: the rule the credential proxy applies before each model call.

Pure functions: the resolved settings (``agent_monthly_tokens``,
``user_monthly_tokens``; 0 means no limit), what was used this calendar month
(UTC) and what calls under way hold in, a refusal (or None) out. The admission
itself is decided atomically in the store (``Usage.reserve``) by the same rule,
``used + reserved + this call's reservation <= limit``; this module words it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

# What a provider adds to a request beyond what the request carries: the prompt
# that introduces tools (a few hundred tokens on Anthropic's models), message
# framing. Part of every call's reservation.
RESERVE_OVERHEAD_TOKENS = 1_000
# A max_tokens past this is treated as this (a reservation must fit in bigint; no
# budget is that large anyway, so such a call is refused as too big).
MAX_RESERVED_OUTPUT = 10**15


def reservation_tokens(body: bytes) -> int:
    """The tokens reserved against the budgets for a ``v1/messages`` call before it
    goes out: what it may use at most, as far as the request tells.

    Output: the request's ``max_tokens`` (which includes extended thinking). Input:
    one token per byte of the request body, because every token of text a request
    carries covers at least one byte of it (tokenizers work on bytes); JSON syntax
    makes the body longer still. Plus RESERVE_OVERHEAD_TOKENS for what the provider
    adds. Attachments (base64 images, PDFs) count by their encoded size, far above
    what they use, so calls carrying them reserve more than they will spend. Real
    usage replaces the reservation when the call ends.
    """
    max_tokens = 0
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None  # the provider will refuse it; reserve what it carries
    if isinstance(payload, dict):
        value = payload.get("max_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            max_tokens = min(value, MAX_RESERVED_OUTPUT)
    return max_tokens + len(body) + RESERVE_OVERHEAD_TOKENS


def next_month(today: date) -> date:
    return date(today.year + today.month // 12, today.month % 12 + 1, 1)


@dataclass(frozen=True)
class Budget:
    """One limit this month (``limit`` 0: none): tokens used by calls that ended, and
    tokens reserved by calls under way."""

    limit: int
    used: int
    reserved: int = 0

    @property
    def spent(self) -> bool:
        return self.limit > 0 and self.used >= self.limit

    @property
    def left(self) -> int | None:
        """Not yet used (calls under way may still use part of it)."""
        return None if self.limit == 0 else max(self.limit - self.used, 0)

    def fits(self, tokens: int) -> bool:
        return self.limit == 0 or self.used + self.reserved + tokens <= self.limit

    def model(self) -> dict[str, Any]:
        return {
            "limit": self.limit or None,
            "used": self.used,
            "reserved": self.reserved,
            "left": self.left,
        }


def budgets(
    resolved: dict[str, Any],
    agent_used: int,
    user_used: int,
    agent_reserved: int = 0,
    user_reserved: int = 0,
) -> dict[str, Budget]:
    return {
        "agent": Budget(int(resolved["agent_monthly_tokens"]), agent_used, agent_reserved),
        "user": Budget(int(resolved["user_monthly_tokens"]), user_used, user_reserved),
    }


@dataclass(frozen=True)
class Refusal:
    """Why a model call may not go out. ``retry``: only calls under way stand in its
    way (it would fit without their reservations), so it may go once they end."""

    message: str
    retry: bool


def refusal(
    resolved: dict[str, Any],
    agent_used: int,
    user_used: int,
    today: date,
    *,
    tokens: int,
    agent_reserved: int = 0,
    user_reserved: int = 0,
) -> Refusal | None:
    """Why a call reserving ``tokens`` must not go out, or None when both budgets
    have room for it next to what is used and reserved."""
    found = budgets(resolved, agent_used, user_used, agent_reserved, user_reserved)
    resets = f"it resets on {next_month(today).isoformat()} (UTC)"
    refusals: list[Refusal] = []
    for name, whose, setting in (
        ("user", "your agents have", "user_monthly_tokens"),
        ("agent", "this agent has", "agent_monthly_tokens"),
    ):
        b = found[name]
        if b.fits(tokens):
            continue
        if b.spent:
            refusals.append(
                Refusal(
                    f"Monthly token budget spent: {whose} used {b.used:,} of {b.limit:,}"
                    f" tokens this month; {resets}. Ask an administrator to raise {setting}.",
                    retry=False,
                )
            )
            continue
        under_way = (
            f", and calls under way hold {b.reserved:,} more until they end" if b.reserved else ""
        )
        retry = b.used + tokens <= b.limit
        refusals.append(
            Refusal(
                f"Monthly token budget too low for this call: it may use up to {tokens:,}"
                f" tokens (its max_tokens and its size), and {whose} used {b.used:,} of"
                f" {b.limit:,} tokens this month{under_way}; {resets}."
                + (
                    " Try again when the calls under way have ended."
                    if retry
                    else f" Send a smaller request, or ask an administrator to raise {setting}."
                ),
                retry=retry,
            )
        )
    # A refusal that waiting cannot lift wins: retrying would only meet it later.
    return min(refusals, key=lambda r: r.retry, default=None)
