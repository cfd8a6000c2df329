"""Human-in-the-loop requests: filed by sandboxes, decided by owners and admins."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


class HitlRequests:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
