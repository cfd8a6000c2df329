"""Conversation history: batch ingest from sandboxes, sessions, events, search, CSV export."""

from __future__ import annotations

from typing import Any


def routes(prefix: str) -> list[tuple[str, Any]]:
    return []


def openapi_paths() -> dict[str, Any]:
    return {}
