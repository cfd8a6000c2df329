"""Human-in-the-loop requests: filed by sandboxes, decided by owners and admins."""

from __future__ import annotations

from typing import Any


def routes(prefix: str) -> list[tuple[str, Any]]:
    return []


def openapi_paths() -> dict[str, Any]:
    return {}
