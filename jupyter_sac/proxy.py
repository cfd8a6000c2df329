"""`sac up --proxy traefik`: JupyterHub's Traefik proxy (file provider), made to
answer as configurable-http-proxy does when a server does not answer.

configurable-http-proxy shows JupyterHub's error page (503) only for the errors it
makes itself. Traefik's errors middleware goes by status code alone, so it is put on
the hub's and servers' routes, not on services': the `sac` service's own 502 and
504 answers (a model provider or the hub unreachable) are JSON its clients read.
"""

from __future__ import annotations

from typing import Any

from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

from .hubconfig import TRAEFIK_UPSTREAM_DOWN


class SacTraefikProxy(TraefikFileProviderProxy):
    """TraefikFileProviderProxy whose hub and server routes show JupyterHub's 503
    page when their target cannot be reached (configured by hubconfig.configure_proxy)."""

    def _dynamic_config_for_route(
        self, routespec: str, target: str, data: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        traefik_config, jupyterhub_config = super()._dynamic_config_for_route(
            routespec, target, data
        )
        if "service" not in (data or {}):
            for router in traefik_config["http"]["routers"].values():
                router["middlewares"] = [TRAEFIK_UPSTREAM_DOWN]
        return traefik_config, jupyterhub_config
