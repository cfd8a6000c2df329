"""The maintenance loop, its dry run for administrators (``GET api/maintenance/preview``
and the admin Maintenance page) and nothing else: what is removed and when is
operations/maintenance.py, on rules/retention.py.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from . import metrics
from .base import BaseHandler
from .operations import maintenance as ops
from .operations.context import ServiceContext
from .pages import PageHandler, admin_page

log = logging.getLogger("jupyter_sac.maintenance")


async def maintainer(ctx: ServiceContext, interval: float, batch: int = ops.BATCH) -> None:
    """Run the maintenance at start and every ``interval`` seconds, until a run
    removes nothing (each bounded to ``batch`` rows of each kind)."""
    while True:
        try:
            removed = await ops.run_until_done(ctx, datetime.now(UTC), batch)
            if removed.total:
                log.info("maintenance removed %s", removed)
        except Exception:
            metrics.MAINTENANCE_RUNS.labels("failed").inc()
            log.exception("the maintenance run failed; trying again in %g s", interval)
        await asyncio.sleep(interval)


class MaintenancePreviewHandler(BaseHandler):
    """GET api/maintenance/preview: what the next run would remove (administrators)."""

    async def get(self) -> None:
        self.write_json(await ops.preview(self.ctx, self.actor, datetime.now(UTC)))


class MaintenancePage(PageHandler):
    """admin/maintenance: the same numbers, with the settings that decide them."""

    @admin_page
    async def get(self) -> None:
        due = await ops.preview(self.ctx, self.actor, datetime.now(UTC))
        self.render_page("admin/maintenance.html", active="maintenance", due=due)


def routes(prefix: str) -> list[tuple[str, Any]]:
    return [
        (prefix + "api/maintenance/preview", MaintenancePreviewHandler),
        (prefix + "admin/maintenance", MaintenancePage),
    ]
