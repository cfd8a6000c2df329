"""SacExtensionApp: the sandbox side of SAC, mounted under ``<base_url>sac/``."""

from __future__ import annotations

import os

from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode, default

from .handlers import StatusHandler
from .runtime_info import RuntimeInfo


class SacExtensionApp(ExtensionApp):
    name = "jupyter_sac"
    load_other_extensions = True

    runtime = Unicode(help="Agent runtime in this sandbox (default: $SAC_RUNTIME).").tag(
        config=True
    )

    @default("runtime")
    def _default_runtime(self) -> str:
        return os.environ.get("SAC_RUNTIME", "claude")

    def initialize_settings(self) -> None:
        self.settings["sac_runtime_info"] = RuntimeInfo(runtime=self.runtime)

    def initialize_handlers(self) -> None:
        self.handlers.extend([(r"/sac/api/status", StatusHandler)])
