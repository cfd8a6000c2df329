"""REST handlers of the sandbox extension (thin: authorise, call, serialise)."""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from tornado import web


class StatusHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        info = self.settings["sac_runtime_info"]
        self.finish(json.dumps(await info.status()))
