"""Conversation history: batch ingest from sandboxes, sessions, events, search, CSV export."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


class History:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
